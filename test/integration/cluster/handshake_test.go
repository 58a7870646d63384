package cluster

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"testing"
	"time"
)

// slowTLSServer accepts on loopback and answers each TLS handshake for
// name only after delay, as an agent on an overloaded machine does; a
// negative delay never answers (a hung agent). It returns the address
// and the roots that verify it.
func slowTLSServer(t *testing.T, name string, delay time.Duration) (string, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	roots := x509.NewCertPool()
	roots.AddCert(leaf)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	cfg := &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if delay < 0 {
					_, _ = c.Read(make([]byte, 1))
					time.Sleep(time.Minute)
					return
				}
				time.Sleep(delay)
				_ = tls.Server(c, cfg).Handshake()
			}()
		}
	}()
	return ln.Addr().String(), roots
}

// A handshake the server completes late, within its own bound, is a
// success, not a failure of the renewal under handshakes: 3 s failed
// TestACMEThreeAgents once at a load average of 16. A server that never
// answers still fails the handshake.
func TestHandshakeToleratesASlowServer(t *testing.T) {
	const name = "slow.acme.test"
	addr, roots := slowTLSServer(t, name, 4*time.Second)
	if _, err := handshakeAt(addr, name, roots, handshakeTimeout); err != nil {
		t.Fatalf("a handshake answered after 4 s failed: %v", err)
	}
	hung, roots := slowTLSServer(t, name, -1)
	if _, err := handshakeAt(hung, name, roots, 2*time.Second); err == nil {
		t.Fatal("a handshake nobody answered succeeded")
	}
}
