package certs

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/singularity-ng/singularity-edge/storage"
)

// benchCertificates is the table size of the lookup benchmark.
const benchCertificates = 100_000

// BenchmarkLookup measures SNI lookups with 100,000 certificates loaded
// from a real store: every certificate is a distinct ECDSA P-256 leaf (one
// shared key, signed by one CA) for a distinct name; every tenth is a
// wildcard. Each row carries one intermediate (not the leaf's real issuer:
// the cache does not verify chains, it serves them). Setup (signing, storing, loading) is reported with b.Logf.
func BenchmarkLookup(b *testing.B) {
	s := openStore(b)
	ca := newRoot(b, "Bench Root")
	key := newECKey(b)
	keyPEM := pkcs8PEM(b, key)
	// Every certificate carries the same intermediate, as with a public CA.
	chainPEM := ca.intermediate(b, "Bench Intermediate").pem()

	start := time.Now()
	rows := make([]*storage.Certificate, benchCertificates)
	var wg sync.WaitGroup
	workers := runtime.GOMAXPROCS(0)
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			for i := w; i < benchCertificates; i += workers {
				name := fmt.Sprintf("host%06d.example.com", i)
				if i%10 == 0 {
					name = fmt.Sprintf("*.tenant%06d.example.com", i)
				}
				tmpl := &x509.Certificate{
					SerialNumber: big.NewInt(int64(i) + 1),
					Subject:      pkix.Name{CommonName: name},
					DNSNames:     []string{name},
					NotBefore:    start.Add(-time.Hour),
					NotAfter:     start.Add(90 * 24 * time.Hour),
					KeyUsage:     x509.KeyUsageDigitalSignature,
					ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
				}
				der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
				if err != nil {
					errs <- err
					return
				}
				rows[i] = &storage.Certificate{
					ID:             fmt.Sprintf("c%06d", i),
					Domain:         name,
					Names:          []string{name},
					CertificatePEM: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
					PrivateKeyPEM:  keyPEM,
					ChainPEM:       chainPEM,
					Provider:       ProviderUpload,
					NotBefore:      tmpl.NotBefore,
					ExpiresAt:      tmpl.NotAfter,
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	signed := time.Now()
	for i := 0; i < len(rows); i += 1000 {
		putCerts(b, s, rows[i:min(i+1000, len(rows))]...)
	}
	stored := time.Now()
	rows = nil

	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	c := startCache(b, s, CacheConfig{})
	loaded := time.Now()
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	if c.Len() != benchCertificates {
		b.Fatalf("loaded %d certificates, want %d", c.Len(), benchCertificates)
	}
	b.Logf("setup: signed %d leaves in %s, stored in %s, cache loaded in %s (%d CPUs), cache heap about %d MiB",
		benchCertificates, signed.Sub(start).Round(time.Millisecond), stored.Sub(signed).Round(time.Millisecond),
		loaded.Sub(stored).Round(time.Millisecond), workers, (int64(after.HeapAlloc)-int64(before.HeapAlloc))>>20)

	lookups := []struct {
		name string
		host string
		want bool
	}{
		{"exact", "host054321.example.com", true},
		{"exact-mixed-case", "Host054321.Example.COM.", true},
		{"wildcard", "api.tenant054320.example.com", true},
		{"miss", "nothing.example.net", false},
		{"miss-deep", "a.b.c.d.example.com", false},
	}
	for _, l := range lookups {
		b.Run(l.name, func(b *testing.B) {
			if _, ok := c.Lookup(l.host); ok != l.want {
				b.Fatalf("Lookup(%q) found=%v, want %v", l.host, ok, l.want)
			}
			b.ReportAllocs()
			for b.Loop() {
				c.Lookup(l.host)
			}
		})
	}
	b.Run("exact-parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				c.Lookup("host054321.example.com")
			}
		})
	})
	b.Run("update-one", func(b *testing.B) {
		// The cost of one change on the write path: a shard copy.
		row, err := s.GetCertificate(context.Background(), "c000001")
		if err != nil {
			b.Fatal(err)
		}
		e, err := newEntry(&row)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		for b.Loop() {
			c.apply([]update{{id: row.ID, entry: e}})
		}
	})
}
