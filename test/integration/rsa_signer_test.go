package integration

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// An uploaded RSA certificate terminates full handshakes in the agent
// binary with its key signing through OpenSSL: /metrics counts each
// handshake signature as OpenSSL's, none as Go's, and the key appears in
// no output.
func TestRSACertificateSignsWithOpenSSL(t *testing.T) {
	t.Parallel()
	token := newToken(t)
	a := startAgent(t, agentOptions{token: token})
	b := startBackend(t, "rsa-backend", nil)

	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "rsa.test"},
		DNSNames:     []string{"rsa.test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(90 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	roots := x509.NewCertPool()
	roots.AddCert(leaf)
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})

	if code := a.api(token, "POST", "/api/certificates/upload", map[string]any{"certificate": string(certPEM), "private_key": string(keyPEM)}, nil); code != http.StatusCreated {
		t.Fatalf("upload: %d", code)
	}
	if code := a.api(token, "POST", "/api/pools", map[string]any{"name": "rsa", "ssl_mode": "flexible", "ssl_domain": "rsa.test"}, nil); code != http.StatusCreated {
		t.Fatalf("create pool: %d", code)
	}
	if code := a.api(token, "POST", "/api/pools/rsa/backends", map[string]any{"url": b.url()}, nil); code != http.StatusCreated {
		t.Fatalf("add backend: %d", code)
	}

	// A new transport per request and no session cache: every request is
	// a full handshake.
	get := func(version uint16) (int, error) {
		tr := &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: "rsa.test", MinVersion: version, MaxVersion: version},
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, network, a.https)
			},
			DisableKeepAlives: true,
		}
		defer tr.CloseIdleConnections()
		resp, err := (&http.Client{Timeout: 5 * time.Second, Transport: tr}).Get("https://rsa.test/")
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, resp.Body)
		return resp.StatusCode, nil
	}
	waitFor(t, 10*time.Second, "HTTPS through the RSA certificate", func() bool {
		code, err := get(tls.VersionTLS13)
		return err == nil && code == http.StatusOK
	})

	signatures := func(engine string) int {
		t.Helper()
		code, _, body := a.apiRaw(token, "GET", "/metrics", nil)
		if code != http.StatusOK {
			t.Fatalf("/metrics: %d", code)
		}
		m := regexp.MustCompile(`(?m)^singularity_edge_tls_signatures_total\{engine="` + engine + `"\} (\d+)$`).FindStringSubmatch(body)
		if m == nil {
			t.Fatalf("/metrics has no tls_signatures_total for %s", engine)
		}
		n, _ := strconv.Atoi(m[1])
		return n
	}
	before := signatures("openssl")
	if before < 1 {
		t.Fatalf("%d OpenSSL signatures after a full handshake", before)
	}
	for _, v := range []uint16{tls.VersionTLS13, tls.VersionTLS12, tls.VersionTLS13} {
		if code, err := get(v); err != nil || code != http.StatusOK {
			t.Fatalf("TLS %x: %d %v", v, code, err)
		}
	}
	if got := signatures("openssl") - before; got != 3 {
		t.Errorf("%d OpenSSL signatures for 3 full handshakes", got)
	}
	if n := signatures("go"); n != 0 {
		t.Errorf("%d handshake signatures made by Go's crypto", n)
	}
	if keyBody := pemBody(keyPEM); strings.Contains(a.log.String(), keyBody) || strings.Contains(a.log.String(), "PRIVATE KEY") {
		t.Fatal("private key material in the agent's log")
	}
}
