package certs

import (
	"context"
	"crypto/tls"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/singularity-ng/singularity-edge/storage"
)

// The agent is ready before the certificate index has loaded: a handshake
// in that window waits for the load instead of failing.
func TestGetCertificateWaitsForLoad(t *testing.T) {
	s := openStore(t)
	ca := newRoot(t, "Wait Root")
	putCerts(t, s, record(t, ca, newECKey(t), "w", leafSpec{dns: []string{"w.example.com"}}))
	c := NewCache(CacheConfig{}, s)
	got := make(chan error, 1)
	go func() {
		cert, err := c.GetCertificate(&tls.ClientHelloInfo{ServerName: "w.example.com"})
		if err == nil && cert == nil {
			err = fmt.Errorf("no certificate and no error")
		}
		got <- err
	}()
	select {
	case err := <-got:
		t.Fatalf("GetCertificate answered before the load: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = c.Run(ctx) }()
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("GetCertificate still waiting 10 s after the load started")
	}
}

func TestByIDGivesUpAfterReadyWait(t *testing.T) {
	c := NewCache(CacheConfig{ReadyWait: 50 * time.Millisecond}, openStore(t))
	done := make(chan bool, 1)
	go func() { _, ok := c.ByID("x"); done <- ok }()
	select {
	case ok := <-done:
		if ok {
			t.Fatal("ByID found a certificate in a cache that never loaded")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("ByID still waiting 10 s past ReadyWait")
	}
}

// A certificate replaced in the store after it was indexed is not served
// from the old entry: the handshake reads the row, and the row is another.
func TestHandshakeReadsTheIndexedRow(t *testing.T) {
	s := openStore(t)
	ca := newRoot(t, "Reread Root")
	putCerts(t, s, record(t, ca, newECKey(t), "r", leafSpec{dns: []string{"r.example.com"}}))
	c := startCache(t, s, CacheConfig{})
	c.mu.Lock()
	e := c.byID["r"]
	c.mu.Unlock()
	// The row changes under the entry (as if the feed had not caught up).
	next := record(t, ca, newECKey(t), "r", leafSpec{dns: []string{"r.example.com"}})
	next.Fingerprint = "r-second"
	putCerts(t, s, next)
	if _, ok := c.certificate(e); ok {
		t.Fatal("an entry served a row other than the one it indexed")
	}
	waitFor(t, "the new row indexed", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.byID["r"] != e
	})
	if cert, ok := c.Lookup("r.example.com"); !ok || cert.PrivateKey == nil {
		t.Fatal("the replaced certificate is not served")
	}
}

// The index holds names, validity and identity, not the certificate:
// its heap per certificate stays small (1,360 bytes when it held the DER
// and the key, 660 since).
func TestCacheBytesPerCertificate(t *testing.T) {
	if testing.Short() {
		t.Skip("signs 2,000 certificates")
	}
	s := openStore(t)
	ca := newRoot(t, "Size Root").intermediate(t, "Size Intermediate")
	key := newECKey(t)
	const n = 2000
	var rows []*storage.Certificate
	for i := range n {
		rows = append(rows, record(t, ca, key, fmt.Sprintf("s%05d", i), leafSpec{dns: []string{fmt.Sprintf("s%05d.example.com", i), fmt.Sprintf("www.s%05d.example.com", i)}}))
		if len(rows) == 500 {
			putCerts(t, s, rows...)
			rows = rows[:0]
		}
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	c := startCache(t, s, CacheConfig{})
	runtime.GC()
	runtime.ReadMemStats(&after)
	if c.Len() != n {
		t.Fatalf("%d certificates loaded, want %d", c.Len(), n)
	}
	per := float64(after.HeapAlloc-before.HeapAlloc) / n
	t.Logf("%.0f bytes per certificate", per)
	if per > 1000 {
		t.Fatalf("%.0f bytes per certificate in the index, want at most 1,000", per)
	}
}
