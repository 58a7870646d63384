package certs

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/singularity-ng/singularity-edge/storage"
)

func openStore(t testing.TB) *storage.Store {
	t.Helper()
	cfg := storage.DefaultConfig()
	cfg.Dir = t.TempDir()
	cfg.EncryptionKey = []byte("0123456789abcdef0123456789abcdef")
	cfg.SyncWAL = false
	s, err := storage.Open(cfg)
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close store: %v", err)
		}
	})
	return s
}

// record builds a certificate row for names, signed by ca.
func record(t testing.TB, ca *issuer, key crypto.Signer, id string, spec leafSpec) *storage.Certificate {
	t.Helper()
	leaf := ca.sign(t, key.Public(), spec)
	return &storage.Certificate{
		ID:             id,
		Domain:         spec.dns[0],
		Names:          spec.dns,
		CertificatePEM: certToPEM(leaf),
		PrivateKeyPEM:  pkcs8PEM(t, key),
		ChainPEM:       ca.pem(),
		Issuer:         ca.cert.Subject.CommonName,
		NotBefore:      leaf.NotBefore,
		ExpiresAt:      leaf.NotAfter,
		Provider:       ProviderUpload,
		Fingerprint:    id + "-fingerprint",
	}
}

func putCerts(t testing.TB, s *storage.Store, certs ...*storage.Certificate) storage.Commit {
	t.Helper()
	commit, err := s.Update(context.Background(), func(tx *storage.Tx) error {
		for _, c := range certs {
			if err := tx.PutCertificate(c); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("put certificates: %v", err)
	}
	return commit
}

func deleteCert(t testing.TB, s *storage.Store, id string) storage.Commit {
	t.Helper()
	commit, err := s.Update(context.Background(), func(tx *storage.Tx) error { return tx.DeleteCertificate(id) })
	if err != nil {
		t.Fatalf("delete certificate %s: %v", id, err)
	}
	return commit
}

// startCache runs a cache on s until the test ends and waits until it is ready.
func startCache(t testing.TB, s *storage.Store, cfg CacheConfig) *Cache {
	t.Helper()
	c := NewCache(cfg, s)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run returned %v after cancel, want nil", err)
		}
	})
	select {
	case <-c.Ready():
	case err := <-done:
		t.Fatalf("Run ended before ready: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("cache not ready after 10s")
	}
	return c
}

// waitIndex waits until the cache has applied commit.
func waitIndex(t testing.TB, c *Cache, commit storage.Commit) {
	t.Helper()
	waitFor(t, fmt.Sprintf("cache to apply index %d", commit.Index), func() bool { return c.Index() >= commit.Index })
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after 10s waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// servedID returns the id of the certificate Lookup returns for name, or "".
func servedID(c *Cache, byLeaf map[string]string, name string) string {
	cert, ok := c.Lookup(name)
	if !ok {
		return ""
	}
	return byLeaf[string(cert.Certificate[0])]
}

func TestCacheFollowsStore(t *testing.T) {
	s := openStore(t)
	ca := newRoot(t, "Cache Root")
	key := newECKey(t)
	now := time.Now()

	byLeaf := map[string]string{} // leaf DER -> id
	mk := func(id string, spec leafSpec) *storage.Certificate {
		r := record(t, ca, key, id, spec)
		c, err := tls.X509KeyPair([]byte(r.CertificatePEM), []byte(r.PrivateKeyPEM))
		if err != nil {
			t.Fatal(err)
		}
		byLeaf[string(c.Certificate[0])] = id
		return r
	}

	// Loaded at start, over several pages.
	var initial []*storage.Certificate
	for i := range 5 {
		initial = append(initial, mk(fmt.Sprintf("init-%d", i), leafSpec{dns: []string{fmt.Sprintf("host%d.example.com", i)}}))
	}
	putCerts(t, s, initial...)
	reg := prometheus.NewPedanticRegistry()
	c := startCache(t, s, CacheConfig{PageSize: 2, Registerer: reg})
	for i := range 5 {
		if got, want := servedID(c, byLeaf, fmt.Sprintf("host%d.example.com", i)), fmt.Sprintf("init-%d", i); got != want {
			t.Errorf("after load, host%d.example.com served %q, want %q", i, got, want)
		}
	}
	if c.Len() != 5 {
		t.Errorf("Len = %d after load, want 5", c.Len())
	}

	// Added while running: exact and wildcard.
	wild := mk("wild", leafSpec{dns: []string{"*.example.org"}, notAfter: now.Add(30 * 24 * time.Hour)})
	waitIndex(t, c, putCerts(t, s, wild))
	cases := map[string]string{
		"a.example.org":       "wild",
		"A.Example.ORG.":      "wild",
		"b.a.example.org":     "", // a wildcard covers one label only
		"example.org":         "",
		"*.example.org":       "wild",
		"":                    "",
		"nothing.example.net": "",
	}
	for name, want := range cases {
		if got := servedID(c, byLeaf, name); got != want {
			t.Errorf("Lookup(%q) served %q, want %q", name, got, want)
		}
	}

	// Exact beats wildcard; the apex can be added as its own name.
	exact := mk("exact", leafSpec{dns: []string{"www.example.org", "example.org"}, notAfter: now.Add(10 * 24 * time.Hour)})
	waitIndex(t, c, putCerts(t, s, exact))
	for name, want := range map[string]string{"www.example.org": "exact", "example.org": "exact", "api.example.org": "wild"} {
		if got := servedID(c, byLeaf, name); got != want {
			t.Errorf("Lookup(%q) served %q, want %q", name, got, want)
		}
	}

	// Among several valid certificates the one expiring last wins; a
	// later-expiring one that is not valid yet does not.
	soon := mk("multi-soon", leafSpec{dns: []string{"multi.example.com"}, notAfter: now.Add(20 * 24 * time.Hour)})
	late := mk("multi-late", leafSpec{dns: []string{"multi.example.com"}, notAfter: now.Add(60 * 24 * time.Hour)})
	future := mk("multi-future", leafSpec{dns: []string{"multi.example.com"}, notBefore: now.Add(time.Hour), notAfter: now.Add(90 * 24 * time.Hour)})
	waitIndex(t, c, putCerts(t, s, soon, late, future))
	if got := servedID(c, byLeaf, "multi.example.com"); got != "multi-late" {
		t.Errorf("multi.example.com served %q, want multi-late", got)
	}

	// An expired exact certificate gives way to a valid wildcard; with no
	// valid candidate the latest-expiring one is still presented.
	expired := mk("expired", leafSpec{dns: []string{"old.example.org", "gone.example.com"}, notBefore: now.Add(-60 * 24 * time.Hour), notAfter: now.Add(-time.Hour)})
	waitIndex(t, c, putCerts(t, s, expired))
	if got := servedID(c, byLeaf, "old.example.org"); got != "wild" {
		t.Errorf("old.example.org served %q, want the valid wildcard", got)
	}
	if got := servedID(c, byLeaf, "gone.example.com"); got != "expired" {
		t.Errorf("gone.example.com served %q, want the expired certificate as last resort", got)
	}

	// Update replaces: same id, new names.
	renamed := mk("init-0", leafSpec{dns: []string{"renamed.example.com"}})
	waitIndex(t, c, putCerts(t, s, renamed))
	if got := servedID(c, byLeaf, "host0.example.com"); got != "" {
		t.Errorf("host0.example.com still served %q after its certificate was replaced", got)
	}
	if got := servedID(c, byLeaf, "renamed.example.com"); got != "init-0" {
		t.Errorf("renamed.example.com served %q, want init-0", got)
	}

	// Delete removes, and the wildcard is gone for every name.
	waitIndex(t, c, deleteCert(t, s, "wild"))
	for _, name := range []string{"a.example.org", "api.example.org"} {
		if got := servedID(c, byLeaf, name); got != "" {
			t.Errorf("Lookup(%q) served %q after delete", name, got)
		}
	}
	if got := servedID(c, byLeaf, "www.example.org"); got != "exact" {
		t.Errorf("www.example.org served %q after the wildcard was deleted, want exact", got)
	}

	// A row that cannot serve TLS is counted and not served.
	broken := mk("broken", leafSpec{dns: []string{"broken.example.com"}})
	broken.PrivateKeyPEM = pkcs8PEM(t, newECKey(t))
	waitIndex(t, c, putCerts(t, s, broken))
	if got := servedID(c, byLeaf, "broken.example.com"); got != "" {
		t.Errorf("broken.example.com served %q, want nothing for a mismatched key", got)
	}

	// Expiring lists soonest first.
	exp := c.Expiring(now.Add(25 * 24 * time.Hour))
	var ids []string
	for _, e := range exp {
		ids = append(ids, e.ID)
	}
	if got, want := strings.Join(ids, ","), "expired,exact,multi-soon"; got != want {
		t.Errorf("Expiring = %s, want %s", got, want)
	}

	// Metrics.
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	metrics := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		metrics[mf.GetName()] = mf
	}
	count := metrics["singularity_edge_certificates"]
	if count == nil || len(count.Metric) != 1 || count.Metric[0].GetGauge().GetValue() != float64(c.Len()) {
		t.Errorf("singularity_edge_certificates = %v, want one provider series of %d", count, c.Len())
	}
	expiry := metrics["singularity_edge_certificate_expiry_timestamp_seconds"]
	found := false
	for _, m := range expiry.GetMetric() {
		labels := map[string]string{}
		for _, l := range m.Label {
			labels[l.GetName()] = l.GetValue()
		}
		if labels["id"] == "exact" {
			found = true
			if labels["domain"] != "www.example.org" || m.GetGauge().GetValue() != float64(exact.ExpiresAt.Unix()) {
				t.Errorf("expiry series for exact = %v %v", labels, m.GetGauge().GetValue())
			}
		}
	}
	if !found {
		t.Error("no expiry series for certificate exact")
	}
	if errs := metrics["singularity_edge_certificate_load_errors_total"]; errs.GetMetric()[0].GetCounter().GetValue() != 1 {
		t.Errorf("load errors = %v, want 1", errs.GetMetric()[0].GetCounter().GetValue())
	}
}

// TestCacheReplaysChangesDuringLoad checks that a change committed while
// the table is being read is not lost.
func TestCacheReplaysChangesDuringLoad(t *testing.T) {
	s := openStore(t)
	ca := newRoot(t, "Replay Root")
	key := newECKey(t)
	var rows []*storage.Certificate
	for i := range 50 {
		rows = append(rows, record(t, ca, key, fmt.Sprintf("r%03d", i), leafSpec{dns: []string{fmt.Sprintf("r%03d.example.com", i)}}))
	}
	putCerts(t, s, rows...)
	late := record(t, ca, key, "late", leafSpec{dns: []string{"late.example.com"}})
	// onPage runs on Run's goroutine: report with t.Error, never t.Fatal.
	committed := make(chan storage.Commit, 1)
	src := &slowSource{Store: s, onPage: func(page int) {
		if page != 1 {
			return
		}
		commit, err := s.Update(context.Background(), func(tx *storage.Tx) error {
			if err := tx.PutCertificate(late); err != nil {
				return err
			}
			return tx.DeleteCertificate("r000")
		})
		if err != nil {
			t.Error(err)
		}
		committed <- commit
	}}
	c := NewCache(CacheConfig{PageSize: 10}, src)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	// Wait for the commit made during the load, not for the index at
	// this moment: the load may not have reached that page yet.
	select {
	case commit := <-committed:
		waitIndex(t, c, commit)
	case <-time.After(10 * time.Second):
		t.Fatal("the load never reached its second page")
	}
	if _, ok := c.Lookup("late.example.com"); !ok {
		t.Error("certificate added during the load is missing")
	}
	if _, ok := c.Lookup("r000.example.com"); ok {
		t.Error("certificate deleted during the load is still served")
	}
	if _, ok := c.Lookup("r049.example.com"); !ok {
		t.Error("last certificate of the table is missing")
	}
}

// slowSource calls onPage before serving each page of ListCertificates.
type slowSource struct {
	*storage.Store
	onPage func(page int)
	pages  int
}

func (s *slowSource) ListCertificates(ctx context.Context, after string, limit int) ([]storage.Certificate, error) {
	s.onPage(s.pages)
	s.pages++
	return s.Store.ListCertificates(ctx, after, limit)
}

func TestCacheRunEndsWithStore(t *testing.T) {
	cfg := storage.DefaultConfig()
	cfg.Dir = t.TempDir()
	s, err := storage.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c := NewCache(CacheConfig{}, s)
	done := make(chan error, 1)
	go func() { done <- c.Run(context.Background()) }()
	<-c.Ready()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("Run returned nil when the store closed, want an error")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run still running 10s after the store closed")
	}
	if err := c.Run(context.Background()); err == nil {
		t.Error("second Run succeeded, want an error")
	}
}

// TestCacheTLSHandshake serves real TLS with GetCertificate.
func TestCacheTLSHandshake(t *testing.T) {
	s := openStore(t)
	root := newRoot(t, "Handshake Root")
	inter := root.intermediate(t, "Handshake Intermediate")
	key := newECKey(t)
	leaf := inter.sign(t, key.Public(), leafSpec{cn: "shop.example.com", dns: []string{"shop.example.com", "*.shop.example.com"}})
	up, err := ParseUpload(certToPEM(leaf), sec1PEM(t, key), inter.pem(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	c := startCache(t, s, CacheConfig{})
	waitIndex(t, c, putCerts(t, s, up))

	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{GetCertificate: c.GetCertificate, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				_ = conn.(*tls.Conn).Handshake()
				_, _ = io.WriteString(conn, "hello")
			}()
		}
	}()
	roots := x509.NewCertPool()
	roots.AddCert(root.cert)
	for _, name := range []string{"shop.example.com", "cart.shop.example.com", "SHOP.example.com"} {
		conn, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{ServerName: name, RootCAs: roots})
		if err != nil {
			t.Errorf("handshake for %s: %v", name, err)
			continue
		}
		st := conn.ConnectionState()
		if len(st.PeerCertificates) != 2 || !st.PeerCertificates[0].Equal(leaf) {
			t.Errorf("%s: server sent %d certificates, want the leaf and its intermediate", name, len(st.PeerCertificates))
		}
		b, err := io.ReadAll(conn)
		if err != nil || string(b) != "hello" {
			t.Errorf("%s: read %q, %v", name, b, err)
		}
		conn.Close()
	}
	_, err = tls.Dial("tcp", ln.Addr().String(), &tls.Config{ServerName: "unknown.example.net", RootCAs: roots})
	if err == nil {
		t.Error("handshake for an unknown name succeeded")
	}
	if _, err := c.GetCertificate(&tls.ClientHelloInfo{ServerName: "unknown.example.net"}); !errors.Is(err, ErrNoCertificate) {
		t.Errorf("GetCertificate(unknown) = %v, want ErrNoCertificate", err)
	}
}

func TestNormalizeName(t *testing.T) {
	for in, want := range map[string]string{
		"Example.COM.": "example.com",
		"example.com":  "example.com",
		"":             "",
		".":            "",
	} {
		if got := normalizeName(in); got != want {
			t.Errorf("normalizeName(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestCacheSharesChains checks that parsed entries with the same
// intermediate share one copy of it.
func TestCacheSharesChains(t *testing.T) {
	s := openStore(t)
	root := newRoot(t, "Share Root")
	inter := root.intermediate(t, "Share Intermediate")
	key := newECKey(t)
	a := record(t, inter, key, "a", leafSpec{dns: []string{"a.example.com"}})
	b := record(t, inter, key, "b", leafSpec{dns: []string{"b.example.com"}})
	c := startCache(t, s, CacheConfig{})
	waitIndex(t, c, putCerts(t, s, a, b))
	ca, okA := c.Lookup("a.example.com")
	cb, okB := c.Lookup("b.example.com")
	if !okA || !okB || len(ca.Certificate) != 2 || len(cb.Certificate) != 2 {
		t.Fatalf("lookups: %v %v", okA, okB)
	}
	if &ca.Certificate[1][0] != &cb.Certificate[1][0] {
		t.Error("the two entries hold separate copies of the same intermediate")
	}
	if ca.Leaf != nil {
		t.Error("Leaf is kept; the cache drops it to save memory")
	}
	c.ringMu.Lock()
	n := len(c.chains)
	c.ringMu.Unlock()
	if n != 1 {
		t.Errorf("%d interned chain certificates for one intermediate, want 1", n)
	}
}
