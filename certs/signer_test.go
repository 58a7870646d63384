package certs

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/singularity-ng/singularity-edge/internal/osslsign"
)

// The cache hands RSA keys to the OpenSSL signer, which imports the key
// on the first handshake only; ECDSA keys stay Go's. Handshakes through
// GetCertificate are counted by engine in the metrics.
func TestCacheSignsRSAWithOpenSSL(t *testing.T) {
	s := openStore(t)
	ca := newRoot(t, "Signer Root")
	putCerts(t, s,
		record(t, ca, newRSAKey(t, 2048), "rsa", leafSpec{dns: []string{"rsa.example.com"}}),
		record(t, ca, newECKey(t), "ec", leafSpec{dns: []string{"ec.example.com"}}),
	)
	reg := prometheus.NewRegistry()
	c := startCache(t, s, CacheConfig{Registerer: reg})

	cert, ok := c.Lookup("rsa.example.com")
	if !ok {
		t.Fatal("rsa.example.com not served")
	}
	signer, ok := cert.PrivateKey.(*osslsign.Signer)
	if !ok {
		t.Fatalf("RSA key served as %T, want the OpenSSL signer", cert.PrivateKey)
	}
	if signer.Native() {
		t.Fatal("key imported into OpenSSL before any handshake")
	}
	if ec, _ := c.Lookup("ec.example.com"); ec == nil {
		t.Fatal("ec.example.com not served")
	} else if _, ok := ec.PrivateKey.(*ecdsa.PrivateKey); !ok {
		t.Fatalf("ECDSA key served as %T, want Go's", ec.PrivateKey)
	}

	roots := x509.NewCertPool()
	roots.AddCert(ca.cert)
	for _, name := range []string{"rsa.example.com", "rsa.example.com", "ec.example.com"} {
		handshake(t, c, roots, name)
	}
	if signer.Native() != osslsign.Available() {
		t.Errorf("key held by OpenSSL: %v, OpenSSL available: %v (%v)", signer.Native(), osslsign.Available(), signer.ImportError())
	}
	want := map[string]float64{"openssl": 2, "go": 0}
	if !osslsign.Available() {
		want = map[string]float64{"openssl": 0, "go": 2}
	}
	for engine, n := range want {
		if got := gathered(t, reg, "singularity_edge_tls_signatures_total", "engine", engine); got != n {
			t.Errorf("tls_signatures_total{engine=%q} = %v, want %v", engine, got, n)
		}
	}
}

// handshake runs a full TLS 1.3 handshake against the cache's
// GetCertificate; the client verifies the chain and the signature.
func handshake(t *testing.T, c *Cache, roots *x509.CertPool, name string) {
	t.Helper()
	sc, cc := net.Pipe()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	srv := tls.Server(sc, &tls.Config{GetCertificate: c.GetCertificate, MinVersion: tls.VersionTLS13})
	errc := make(chan error, 1)
	go func() { errc <- srv.HandshakeContext(ctx); _ = srv.Close() }()
	cli := tls.Client(cc, &tls.Config{ServerName: name, RootCAs: roots})
	err := cli.HandshakeContext(ctx)
	_ = cli.Close()
	if err != nil {
		t.Fatalf("%s: client handshake: %v", name, err)
	}
	select {
	case err := <-errc:
		if err != nil {
			t.Fatalf("%s: server handshake: %v", name, err)
		}
	case <-ctx.Done():
		t.Fatalf("%s: server handshake did not end", name)
	}
}

// gathered returns the value of the counter series name{label=value}, -1
// when there is none.
func gathered(t *testing.T, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label && lp.GetValue() == value {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return -1
}
