package certs

import (
	"fmt"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/singularity-ng/singularity-edge/storage"
)

func TestCacheParsesLazilyAndBoundsParsed(t *testing.T) {
	s := openStore(t)
	ca := newRoot(t, "Lazy Root")
	key := newECKey(t)
	var rows []*storage.Certificate
	for i := range 5 {
		rows = append(rows, record(t, ca, key, fmt.Sprintf("l%d", i), leafSpec{dns: []string{fmt.Sprintf("l%d.example.com", i)}}))
	}
	putCerts(t, s, rows...)
	reg := prometheus.NewRegistry()
	c := startCache(t, s, CacheConfig{Parsed: 2, ExpirySeries: 3, Registerer: reg})
	parsed := func() (n int) {
		for _, e := range c.entries() {
			if e.parsed.Load() != nil {
				n++
			}
		}
		return n
	}
	if n := parsed(); n != 0 {
		t.Fatalf("%d certificates parsed by the load, want none before a handshake", n)
	}
	for i := range 5 {
		cert, ok := c.Lookup(fmt.Sprintf("l%d.example.com", i))
		if !ok || cert.PrivateKey == nil || len(cert.Certificate) != 2 {
			t.Fatalf("l%d: served %v, %v", i, ok, cert)
		}
	}
	if n := parsed(); n != 2 {
		t.Errorf("%d certificates held parsed, bound 2", n)
	}
	// One evicted is parsed again on its next handshake.
	if _, ok := c.Lookup("l0.example.com"); !ok {
		t.Fatal("evicted certificate not served again")
	}

	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == "singularity_edge_certificate_expiry_timestamp_seconds" && len(f.GetMetric()) != 3 {
			t.Errorf("%d expiry series, bound 3", len(f.GetMetric()))
		}
	}
}
