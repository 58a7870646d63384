package proxy

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/singularity-ng/singularity-edge/internal/osslsign"
	"github.com/singularity-ng/singularity-edge/storage"
)

// issueRSA returns an RSA-2048 leaf for name.
func (ca *testCA) issueRSA(t testing.TB, name string) tls.Certificate {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(100 + serialCounter.Add(1)),
		Subject:      pkix.Name{CommonName: name},
		DNSNames:     []string{name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// TestHandshakeSignedByOpenSSL terminates full handshakes (TLS 1.3 with
// RSA-PSS, TLS 1.2 with PKCS #1 v1.5 and with PSS; HTTP/1.1 and HTTP/2)
// with an RSA certificate whose key the OpenSSL signer wraps, as the
// certificate cache does: each client verifies the server's signature,
// and each signature is counted as OpenSSL's.
func TestHandshakeSignedByOpenSSL(t *testing.T) {
	ca := newTestCA(t)
	cert := ca.issueRSA(t, "rsa.example.test")
	var counts osslsign.Counters
	signer, err := osslsign.New(cert.PrivateKey.(*rsa.PrivateKey), osslsign.Config{Counters: &counts})
	if err != nil {
		t.Fatal(err)
	}
	cert.PrivateKey = signer
	certs := &testCerts{}
	certs.add("rsa.example.test", cert)
	backend := newEcho(t, "rsa")
	table := newTable(t, poolSpec{storage.Pool{Name: "rsa", SSLMode: "flexible", SSLDomain: "rsa.example.test"}, []string{backend.URL}})
	p := startProxy(t, testConfig(), table, certs, nil)

	for _, tc := range []struct {
		name string
		h2   bool
		tls  func(*tls.Config)
	}{
		{"tls13-pss-h1", false, func(c *tls.Config) { c.MinVersion = tls.VersionTLS13 }},
		{"tls13-pss-h2", true, func(c *tls.Config) { c.MinVersion = tls.VersionTLS13 }},
		// Go's client lists PSS first, so TLS 1.2 signs with PSS too;
		// PKCS #1 v1.5 is the openssl subtest below.
		{"tls12-pss", false, func(c *tls.Config) { c.MaxVersion = tls.VersionTLS12 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := counts.OpenSSL.Load() + counts.Go.Load()
			c := client(p.https, ca.pool, tc.h2)
			tr := c.Transport.(*http.Transport)
			tc.tls(tr.TLSClientConfig)
			defer tr.CloseIdleConnections()
			resp := get(t, c, "https://rsa.example.test/x")
			e := decodeEcho(t, resp)
			if resp.StatusCode != 200 || e.Backend != "rsa" {
				t.Fatalf("status %d from %q", resp.StatusCode, e.Backend)
			}
			if tc.h2 != (resp.ProtoMajor == 2) {
				t.Fatalf("proto %s", resp.Proto)
			}
			if got := counts.OpenSSL.Load() + counts.Go.Load() - before; got != 1 {
				t.Fatalf("%d signatures for one full handshake", got)
			}
		})
	}
	// A client that offers only PKCS #1 v1.5 (Go's cannot be told to).
	for _, sigalg := range []string{"RSA+SHA256", "RSA+SHA384", "RSA+SHA512"} {
		t.Run("tls12-pkcs1v15-"+sigalg, func(t *testing.T) {
			openssl, err := exec.LookPath("openssl")
			if err != nil {
				t.Skip("no openssl binary")
			}
			caFile := filepath.Join(t.TempDir(), "ca.pem")
			if err := os.WriteFile(caFile, []byte(ca.pem()), 0o600); err != nil {
				t.Fatal(err)
			}
			before := counts.OpenSSL.Load() + counts.Go.Load()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, openssl, "s_client", "-connect", p.https, "-servername", "rsa.example.test",
				"-tls1_2", "-sigalgs", sigalg, "-CAfile", caFile, "-verify_return_error")
			cmd.Stdin = strings.NewReader("")
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("s_client: %v\n%s", err, out)
			}
			if !strings.Contains(string(out), "Peer signature type: RSA\n") {
				t.Fatalf("not a PKCS #1 v1.5 signature:\n%s", out)
			}
			if got := counts.OpenSSL.Load() + counts.Go.Load() - before; got != 1 {
				t.Fatalf("%d signatures for one full handshake", got)
			}
		})
	}
	if osslsign.Available() {
		if n := counts.Go.Load(); n != 0 {
			t.Errorf("%d handshake signatures made by Go's crypto, want all by OpenSSL", n)
		}
		if !signer.Native() {
			t.Errorf("key not held by OpenSSL: %v", signer.ImportError())
		}
	}
}
