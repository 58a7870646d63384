package certs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/singularity-ng/singularity-edge/storage"
)

// BenchmarkCacheMemory loads 100,000 certificates (CERTS_BENCH_N
// overrides), each an ECDSA P-256 leaf with its own key and two names,
// issued by one intermediate (as an ACME CA's are), and reports the
// cache's heap per certificate and its load time.
func BenchmarkCacheMemory(b *testing.B) {
	n := 100_000
	if v, err := strconv.Atoi(os.Getenv("CERTS_BENCH_N")); err == nil && v > 0 {
		n = v
	}
	s := openStore(b)
	ca := newRoot(b, "Bench Root")
	inter := ca.intermediate(b, "Bench Intermediate")
	chainPEM := inter.pem()
	start := time.Now()
	rows := make([]*storage.Certificate, n)
	var wg sync.WaitGroup
	workers := runtime.GOMAXPROCS(0)
	for w := range workers {
		wg.Go(func() {
			for i := w; i < n; i += workers {
				key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
				name := fmt.Sprintf("site%06d.example.com", i)
				tmpl := &x509.Certificate{
					SerialNumber: big.NewInt(int64(i) + 1), Subject: pkix.Name{CommonName: name},
					DNSNames:  []string{name, "www." + name},
					NotBefore: start.Add(-time.Hour), NotAfter: start.Add(90 * 24 * time.Hour),
					KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
				}
				der, err := x509.CreateCertificate(rand.Reader, tmpl, inter.cert, key.Public(), inter.key)
				if err != nil {
					panic(err)
				}
				rows[i] = &storage.Certificate{
					ID: fmt.Sprintf("c%06d", i), Domain: name, Names: []string{name, "www." + name},
					CertificatePEM: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
					PrivateKeyPEM:  pkcs8PEM(b, key), ChainPEM: chainPEM, Provider: ProviderUpload,
					Issuer: "Bench Intermediate", NotBefore: tmpl.NotBefore, ExpiresAt: tmpl.NotAfter,
				}
			}
		})
	}
	wg.Wait()
	for i := 0; i < n; i += 1000 {
		putCerts(b, s, rows[i:min(i+1000, n)]...)
	}
	rows = nil

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	loadStart := time.Now()
	c := startCache(b, s, CacheConfig{})
	took := time.Since(loadStart)
	runtime.GC()
	runtime.ReadMemStats(&after)
	if c.Len() != n {
		b.Fatalf("loaded %d certificates, want %d", c.Len(), n)
	}
	perCert := float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / float64(n)
	// A handshake for one name works and costs what it costs.
	if _, ok := c.Lookup("www.site000042.example.com"); !ok {
		b.Fatal("lookup failed")
	}
	for b.Loop() {
		c.Lookup("site000042.example.com")
	}
	b.ReportMetric(perCert, "heap-bytes/cert")
	b.ReportMetric(took.Seconds(), "load-s")
	b.Logf("%d certificates: %.0f heap bytes per certificate, loaded in %s", n, perCert, took.Round(time.Millisecond))
}
