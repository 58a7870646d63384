package itest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// PebbleConfig says where Pebble listens and validates.
type PebbleConfig struct {
	// ListenIP is the address of Pebble's ACME listener (its certificate
	// names it): where the agents reach Pebble.
	ListenIP string
	// DefaultIP is what challtestsrv resolves every name to, unless
	// Resolve says otherwise: where Pebble validates.
	DefaultIP string
	// HTTPPort and TLSPort are the ports Pebble validates HTTP-01 and
	// TLS-ALPN-01 on.
	HTTPPort, TLSPort int
	// Profiles maps profile names to their validity in seconds; nil:
	// Pebble's one default profile. An order that names no profile gets a
	// random one, so orders name theirs when there are several.
	Profiles map[string]int
	// FreeAddr returns a free address on ip for one of Pebble's or
	// challtestsrv's listeners; nil: one the kernel picks (a test binary
	// that allocates ports itself passes its allocator, so that no port
	// is handed out twice).
	FreeAddr func(t testing.TB, ip string) string
	// ListenAddr pins Pebble's ACME listener (so its directory URL) to
	// an address; "": a free one on ListenIP. A test that restarts Pebble
	// passes the first one's (Pebble keeps its accounts in memory).
	ListenAddr string
	// Env is added to Pebble's environment after the defaults (which it
	// overrides), e.g. PEBBLE_WFE_NONCEREJECT=50 for a CA that rejects
	// half the nonces.
	Env []string
}

// Pebble is Pebble, with challtestsrv as the only DNS it asks.
type Pebble struct {
	Dir       string       // ACME directory URL
	Mgmt      string       // Pebble's management address (roots, renewal info)
	ChallMgmt string       // challtestsrv's management address
	DNS       string       // challtestsrv's DNS address
	CAPEM     []byte       // trusts Pebble's ACME listener
	Bundle    string       // CAPEM's file, for --acme-ca-bundle
	Proc      *Tool        // Pebble's process; its output shows orders and validations
	Client    *http.Client // trusts CAPEM
}

// StartPebble starts challtestsrv (DNS only) and Pebble as cfg says, with
// every order validated afresh (no authorization reuse) and no validation
// sleeps, and waits until both answer.
func StartPebble(t testing.TB, cfg PebbleConfig) *Pebble {
	t.Helper()
	free := cfg.FreeAddr
	if free == nil {
		free = kernelAddr
	}
	p := &Pebble{Mgmt: free(t, "127.0.0.1"), ChallMgmt: free(t, "127.0.0.1"), DNS: free(t, "127.0.0.1")}
	StartTool(t, nil, "pebble-challtestsrv", "-http01", "", "-https01", "", "-doh", "", "-tlsalpn01", "",
		"-dnsserver", p.DNS, "-management", p.ChallMgmt, "-defaultIPv4", cfg.DefaultIP, "-defaultIPv6", "")

	dir := t.TempDir()
	var certPEM, keyPEM []byte
	p.CAPEM, certPEM, keyPEM = ListenerCert(t, cfg.ListenIP)
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	p.Bundle = filepath.Join(dir, "ca.pem")
	for f, b := range map[string][]byte{certFile: certPEM, keyFile: keyPEM, p.Bundle: p.CAPEM} {
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	listen := cfg.ListenAddr
	if listen == "" {
		listen = free(t, cfg.ListenIP)
	}
	pcfg := map[string]any{
		"listenAddress": listen, "managementListenAddress": p.Mgmt,
		"certificate": certFile, "privateKey": keyFile,
		"httpPort": cfg.HTTPPort, "tlsPort": cfg.TLSPort, "ocspResponderURL": "",
		"externalAccountBindingRequired": false,
		"retryAfter":                     map[string]int{"authz": 1, "order": 1},
		"keyAlgorithm":                   "ecdsa",
	}
	if cfg.Profiles != nil {
		ps := map[string]any{}
		for name, secs := range cfg.Profiles {
			ps[name] = map[string]any{"description": name, "validityPeriod": secs}
		}
		pcfg["profiles"] = ps
	}
	b, _ := json.Marshal(map[string]any{"pebble": pcfg})
	cfgFile := filepath.Join(dir, "pebble.json")
	if err := os.WriteFile(cfgFile, b, 0o600); err != nil {
		t.Fatal(err)
	}
	p.Proc = StartTool(t, append([]string{"PEBBLE_VA_NOSLEEP=1", "PEBBLE_AUTHZREUSE=0", "PEBBLE_WFE_NONCEREJECT=0"}, cfg.Env...),
		"pebble", "-config", cfgFile, "-dnsserver", p.DNS)
	p.Dir = "https://" + listen + "/dir"
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(p.CAPEM)
	p.Client = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	waitFor(t, 30*time.Second, "pebble's directory", func() bool {
		resp, err := p.Client.Get(p.Dir)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	waitFor(t, 30*time.Second, "challtestsrv", func() bool {
		resp, err := http.Post("http://"+p.ChallMgmt+"/clear-request-history", "application/json", strings.NewReader(`{"host":"x","type":"http"}`))
		if err != nil {
			return false
		}
		resp.Body.Close()
		return true
	})
	return p
}

// kernelAddr is a free address on ip the kernel picked.
func kernelAddr(t testing.TB, ip string) string {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// Challtest posts body to path of challtestsrv's management API.
func (p *Pebble) Challtest(t testing.TB, path string, body any) {
	t.Helper()
	b, _ := json.Marshal(body)
	resp, err := http.Post("http://"+p.ChallMgmt+path, "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("challtestsrv %s: %s", path, resp.Status)
	}
}

// Resolve points name at ip in challtestsrv's DNS.
func (p *Pebble) Resolve(t testing.TB, name, ip string) {
	t.Helper()
	p.Challtest(t, "/add-a", map[string]any{"host": name, "addresses": []string{ip}})
}

// Roots returns Pebble's issuing roots (new at every start).
func (p *Pebble) Roots(t testing.TB) *x509.CertPool {
	t.Helper()
	resp, err := p.Client.Get("https://" + p.Mgmt + "/roots/0")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		t.Fatalf("pebble roots: %s", b)
	}
	return pool
}

// Orders counts the orders Pebble accepted.
func (p *Pebble) Orders() int { return strings.Count(p.Proc.Out.String(), "Added order") }

// SetARI makes Pebble answer renewal info for certPEM with the window
// start to end.
func (p *Pebble) SetARI(t testing.TB, certPEM string, start, end time.Time) {
	t.Helper()
	ari, _ := json.Marshal(map[string]any{"suggestedWindow": map[string]string{
		"start": start.UTC().Format(time.RFC3339), "end": end.UTC().Format(time.RFC3339)}})
	b, _ := json.Marshal(map[string]string{"Certificate": certPEM, "ARIResponse": string(ari)})
	resp, err := p.Client.Post("https://"+p.Mgmt+"/set-renewal-info/", "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("set-renewal-info: %s %s", resp.Status, body)
	}
}

// ListenerCert makes a CA and a certificate for ip signed by it (what
// Pebble's listener presents, and what --acme-ca-bundle trusts).
func ListenerCert(t testing.TB, ip string) (caPEM, certPEM, keyPEM []byte) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test ACME server CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: ip},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP(ip)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalPKCS8PrivateKey(key)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})
}
