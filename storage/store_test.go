package storage

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"
)

func TestPoolCRUD(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	p := samplePool("web")
	c := mustUpdate(t, s, func(tx *Tx) error { return tx.PutPool(p) })
	if c.Index != 1 || c.Version.Origin != s.NodeID() || c.Version.Seq != 1 || c.Version.HLC == 0 {
		t.Fatalf("commit = %+v", c)
	}
	if p.Version != c.Version || p.InsertedAt.IsZero() || !p.UpdatedAt.Equal(p.InsertedAt) {
		t.Fatalf("caller's pool not updated: %+v", p)
	}
	got, err := s.GetPool(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, *p) {
		t.Fatalf("GetPool:\n got %+v\nwant %+v", got, *p)
	}
	// Update keeps InsertedAt, moves UpdatedAt and the version.
	inserted := p.InsertedAt
	time.Sleep(2 * time.Millisecond)
	p.Algorithm = "random"
	c2 := mustUpdate(t, s, func(tx *Tx) error { return tx.PutPool(p) })
	got, _ = s.GetPool(ctx, "web")
	if !got.InsertedAt.Equal(inserted) || !got.UpdatedAt.After(inserted) || got.Algorithm != "random" || !c.Version.Less(got.Version) || got.Version != c2.Version {
		t.Fatalf("after update: %+v", got)
	}
	mustUpdate(t, s, func(tx *Tx) error { return tx.DeletePool("web") })
	if _, err := s.GetPool(ctx, "web"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("after delete: %v", err)
	}
	if _, err := s.Update(ctx, func(tx *Tx) error { return tx.DeletePool("web") }); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
	// The tombstone is stored with its version.
	raw := rawTable(t, s, TablePools)
	r, err := decodeRow(raw["web"])
	if err != nil || !r.deleted || r.version.Seq != 3 {
		t.Fatalf("tombstone = %+v, %v", r, err)
	}
	if pools, _ := s.ListPools(ctx, "", 0); len(pools) != 0 {
		t.Fatalf("list after delete: %v", pools)
	}
	// Re-creating after a delete is a fresh insert.
	mustUpdate(t, s, func(tx *Tx) error { return tx.PutPool(samplePool("web")) })
	got, _ = s.GetPool(ctx, "web")
	if got.InsertedAt.Equal(inserted) {
		t.Fatal("re-created pool kept the old InsertedAt")
	}
}

func TestBackendsCRUDAndPoolIndex(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	mustUpdate(t, s, func(tx *Tx) error {
		for i := 0; i < 5; i++ {
			pool := "a"
			if i%2 == 1 {
				pool = "b"
			}
			// Ports fall as ids grow: a pool lists its backends by
			// address, then id (BackendPosition), not by id.
			b := sampleBackend(fmt.Sprintf("be-%d", i), pool)
			b.Port = 9000 - i
			if err := tx.PutBackend(b); err != nil {
				return err
			}
		}
		return nil
	})
	at := func(id string) string {
		b, err := s.GetBackend(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		return BackendPosition(&b)
	}
	ids := func(bs []Backend) []string {
		var out []string
		for _, b := range bs {
			out = append(out, b.ID)
		}
		return out
	}
	tests := []struct {
		pool, after string
		limit       int
		want        []string
	}{
		{"a", "", 0, []string{"be-4", "be-2", "be-0"}},
		{"b", "", 0, []string{"be-3", "be-1"}},
		{"a", at("be-4"), 0, []string{"be-2", "be-0"}},
		{"a", "", 2, []string{"be-4", "be-2"}},
		{"a", at("be-2"), 1, []string{"be-0"}},
		{"a", at("be-0"), 0, nil},
		{"c", "", 0, nil},
	}
	for _, tc := range tests {
		got, err := s.ListBackendsByPool(ctx, tc.pool, tc.after, tc.limit)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(ids(got), tc.want) {
			t.Errorf("ListBackendsByPool(%q, %q, %d) = %v, want %v", tc.pool, tc.after, tc.limit, ids(got), tc.want)
		}
	}
	// Moving a backend to another pool moves its index entry.
	mustUpdate(t, s, func(tx *Tx) error {
		b, err := tx.Backend("be-0")
		if err != nil {
			return err
		}
		b.PoolName = "b"
		return tx.PutBackend(&b)
	})
	checkIndexes(t, s)
	if got, _ := s.ListBackendsByPool(ctx, "a", "", 0); !reflect.DeepEqual(ids(got), []string{"be-4", "be-2"}) {
		t.Fatalf("pool a after move: %v", ids(got))
	}
	if got, _ := s.ListBackendsByPool(ctx, "b", "", 0); !reflect.DeepEqual(ids(got), []string{"be-3", "be-1", "be-0"}) {
		t.Fatalf("pool b after move: %v", ids(got))
	}
	// Inside a transaction the index reflects the transaction's own writes.
	mustUpdate(t, s, func(tx *Tx) error {
		if err := tx.DeleteBackend("be-1"); err != nil {
			return err
		}
		if err := tx.PutBackend(sampleBackend("be-9", "b")); err != nil {
			return err
		}
		b, _ := tx.Backend("be-3")
		b.PoolName = "a"
		if err := tx.PutBackend(&b); err != nil {
			return err
		}
		got, err := tx.BackendsByPool("b")
		if err != nil {
			return err
		}
		// be-9 at port 8080 comes first.
		if !reflect.DeepEqual(ids(got), []string{"be-9", "be-0"}) {
			return fmt.Errorf("BackendsByPool(b) in tx = %v", ids(got))
		}
		return nil
	})
	checkIndexes(t, s)
	all, _ := s.ListBackends(ctx, "", 0)
	if !reflect.DeepEqual(ids(all), []string{"be-0", "be-2", "be-3", "be-4", "be-9"}) {
		t.Fatalf("ListBackends = %v", ids(all))
	}
	page, _ := s.ListBackends(ctx, "be-2", 2)
	if !reflect.DeepEqual(ids(page), []string{"be-3", "be-4"}) {
		t.Fatalf("ListBackends page = %v", ids(page))
	}
}

func TestPoolsBySSLDomain(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	mustUpdate(t, s, func(tx *Tx) error {
		for _, n := range []string{"one", "two"} {
			p := samplePool(n)
			p.SSLDomain = "Shop.Example.com"
			if err := tx.PutPool(p); err != nil {
				return err
			}
		}
		p := samplePool("three")
		p.SSLDomain = ""
		return tx.PutPool(p)
	})
	got, err := s.PoolsBySSLDomain(ctx, "shop.example.com.")
	if err != nil || len(got) != 2 || got[0].Name != "one" || got[1].Name != "two" {
		t.Fatalf("PoolsBySSLDomain = %v, %v", got, err)
	}
	mustUpdate(t, s, func(tx *Tx) error {
		p, _ := tx.Pool("one")
		p.SSLDomain = "other.example.com"
		return tx.PutPool(&p)
	})
	checkIndexes(t, s)
	got, _ = s.PoolsBySSLDomain(ctx, "shop.example.com")
	if len(got) != 1 || got[0].Name != "two" {
		t.Fatalf("after change: %v", got)
	}
	got, _ = s.PoolsBySSLDomain(ctx, "other.example.com")
	if len(got) != 1 || got[0].Name != "one" {
		t.Fatalf("new domain: %v", got)
	}
}

func TestCertificatesIndexes(t *testing.T) {
	s := openStore(t, func(c *Config) { c.EncryptionKey = testKey(t) })
	ctx := context.Background()
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	mustUpdate(t, s, func(tx *Tx) error {
		for _, c := range []*Certificate{
			sampleCert("c-exact", "api.example.com", now.Add(30*24*time.Hour)),
			sampleCert("c-exact-later", "api.example.com", now.Add(60*24*time.Hour)),
			sampleCert("c-wild", "*.example.com", now.Add(10*24*time.Hour), "example.com"),
			sampleCert("c-san", "other.org", now.Add(5*24*time.Hour), "www.other.org", "API.Other.org"),
			sampleCert("c-old", "old.net", now.Add(-24*time.Hour)),
		} {
			if err := tx.PutCertificate(c); err != nil {
				return err
			}
		}
		return nil
	})
	tests := []struct {
		server, want string
	}{
		{"api.example.com", "c-exact-later"},  // exact, latest expiry wins
		{"API.EXAMPLE.COM.", "c-exact-later"}, // case and trailing dot
		{"www.example.com", "c-wild"},         // wildcard one label up
		{"example.com", "c-wild"},             // SAN
		{"api.other.org", "c-san"},            // SAN, case-insensitive
		{"a.b.example.com", ""},               // wildcard covers one label only
		{"nothing.test", ""},
	}
	for _, tc := range tests {
		c, err := s.CertificateForServerName(ctx, tc.server)
		if tc.want == "" {
			if !errors.Is(err, ErrNotFound) {
				t.Errorf("%s: got %q, %v; want ErrNotFound", tc.server, c.ID, err)
			}
			continue
		}
		if err != nil || c.ID != tc.want {
			t.Errorf("%s: got %q, %v; want %q", tc.server, c.ID, err, tc.want)
		}
		if err == nil && c.PrivateKeyPEM != testKeyPEM {
			t.Errorf("%s: private key not decrypted", tc.server)
		}
	}
	byDomain, err := s.CertificatesByDomain(ctx, "*.example.com")
	if err != nil || len(byDomain) != 1 || byDomain[0].ID != "c-wild" {
		t.Fatalf("CertificatesByDomain(*.example.com) = %v, %v", byDomain, err)
	}
	expiryIDs := func(before time.Time, limit int) []string {
		certs, err := s.CertificatesExpiringBefore(ctx, before, limit)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, c := range certs {
			out = append(out, c.ID)
		}
		// The index-only listing agrees with the full one, expiries
		// included.
		exp, err := s.CertificateExpiries(ctx, before, limit)
		if err != nil {
			t.Fatal(err)
		}
		if len(exp) != len(certs) {
			t.Fatalf("CertificateExpiries(%v, %d): %d entries, CertificatesExpiringBefore %d", before, limit, len(exp), len(certs))
		}
		for i, e := range exp {
			if e.ID != certs[i].ID || !e.ExpiresAt.Equal(certs[i].ExpiresAt) {
				t.Fatalf("CertificateExpiries[%d] = %s %v, want %s %v", i, e.ID, e.ExpiresAt, certs[i].ID, certs[i].ExpiresAt)
			}
		}
		return out
	}
	if got := expiryIDs(now, 0); !reflect.DeepEqual(got, []string{"c-old"}) {
		t.Fatalf("expiring before now: %v", got)
	}
	if got := expiryIDs(now.Add(31*24*time.Hour), 0); !reflect.DeepEqual(got, []string{"c-old", "c-san", "c-wild", "c-exact"}) {
		t.Fatalf("expiring within 31 days: %v", got)
	}
	if got := expiryIDs(now.Add(365*24*time.Hour), 2); !reflect.DeepEqual(got, []string{"c-old", "c-san"}) {
		t.Fatalf("limit 2: %v", got)
	}
	// A certificate expiring exactly at t is not "before t".
	if got := expiryIDs(now.Add(5*24*time.Hour), 0); !reflect.DeepEqual(got, []string{"c-old"}) {
		t.Fatalf("boundary: %v", got)
	}
	// Renewal changes the expiry and the names: both indexes follow.
	mustUpdate(t, s, func(tx *Tx) error {
		c, err := tx.Certificate("c-san")
		if err != nil {
			return err
		}
		c.ExpiresAt = now.Add(400 * 24 * time.Hour)
		c.Names = []string{"www.other.org"}
		return tx.PutCertificate(&c)
	})
	checkIndexes(t, s)
	if got := expiryIDs(now.Add(31*24*time.Hour), 0); !reflect.DeepEqual(got, []string{"c-old", "c-wild", "c-exact"}) {
		t.Fatalf("after renewal: %v", got)
	}
	if _, err := s.CertificateForServerName(ctx, "api.other.org"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("dropped SAN still found: %v", err)
	}
	mustUpdate(t, s, func(tx *Tx) error { return tx.DeleteCertificate("c-exact-later") })
	if c, err := s.CertificateForServerName(ctx, "api.example.com"); err != nil || c.ID != "c-exact" {
		t.Fatalf("after delete: %q, %v", c.ID, err)
	}
	list, _ := s.ListCertificates(ctx, "c-exact", 2)
	if len(list) != 2 || list[0].ID != "c-old" || list[1].ID != "c-san" {
		t.Fatalf("ListCertificates page: %v", list)
	}
}

func TestObservations(t *testing.T) {
	s := openStore(t, func(c *Config) { c.NodeID = "node-a" })
	ctx := context.Background()
	err := s.PutObservations(ctx, []Observation{
		{BackendID: "b1", PoolName: "p", Healthy: true, TotalRequests: 10},
		{NodeID: "node-a", BackendID: "b2", PoolName: "p", Healthy: false, LastError: "refused"},
		{BackendID: "b3", PoolName: "p", Healthy: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.PutObservations(ctx, []Observation{{NodeID: "node-b", BackendID: "b1"}}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("foreign observation: %v", err)
	}
	// A peer's observations arrive by Apply.
	peer := openStore(t, func(c *Config) { c.NodeID = "node-b" })
	if err := peer.PutObservations(ctx, []Observation{{BackendID: "b1", Healthy: false}, {BackendID: "b2", Healthy: true}}); err != nil {
		t.Fatal(err)
	}
	sets, err := changeSetsOf(peer, "node-b")
	if err != nil || len(sets) != 1 {
		t.Fatalf("change sets of node-b: %v %v", sets, err)
	}
	if _, err := applySet(s, sets[0]); err != nil {
		t.Fatal(err)
	}
	key := func(os []Observation) []string {
		var out []string
		for _, o := range os {
			out = append(out, o.NodeID+"/"+o.BackendID)
		}
		return out
	}
	all, _ := s.Observations(ctx, "")
	if got := key(all); !reflect.DeepEqual(got, []string{"node-a/b1", "node-a/b2", "node-a/b3", "node-b/b1", "node-b/b2"}) {
		t.Fatalf("all observations: %v", got)
	}
	mine, _ := s.Observations(ctx, "node-a")
	if len(mine) != 3 || mine[0].TotalRequests != 10 {
		t.Fatalf("node-a observations: %+v", mine)
	}
	healthy, _ := s.ObservationsByHealth(ctx, "node-a", true)
	if got := key(healthy); !reflect.DeepEqual(got, []string{"node-a/b1", "node-a/b3"}) {
		t.Fatalf("healthy on node-a: %v", got)
	}
	unhealthyAll, _ := s.ObservationsByHealth(ctx, "", false)
	if got := key(unhealthyAll); !reflect.DeepEqual(got, []string{"node-a/b2", "node-b/b1"}) {
		t.Fatalf("unhealthy everywhere: %v", got)
	}
	// Flipping health moves the index entry.
	if err := s.PutObservations(ctx, []Observation{{BackendID: "b2", Healthy: true}}); err != nil {
		t.Fatal(err)
	}
	checkIndexes(t, s)
	healthy, _ = s.ObservationsByHealth(ctx, "node-a", true)
	if got := key(healthy); !reflect.DeepEqual(got, []string{"node-a/b1", "node-a/b2", "node-a/b3"}) {
		t.Fatalf("healthy after flip: %v", got)
	}
	mustUpdate(t, s, func(tx *Tx) error { return tx.DeleteObservation("b3") })
	if _, err := s.GetObservation(ctx, "node-a", "b3"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleted observation: %v", err)
	}

	// DeleteObservations: this node's rows only, absent ones skipped, one
	// transaction; a malformed id fails it and deletes nothing.
	before := s.LastIndex()
	if err := s.DeleteObservations(ctx, []string{"b1", "b3", "never-observed"}); err != nil {
		t.Fatal(err)
	}
	if s.LastIndex() != before+1 {
		t.Fatalf("DeleteObservations took %d commits", s.LastIndex()-before)
	}
	if err := s.DeleteObservations(ctx, []string{"b2", "bad\x00id"}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("DeleteObservations with a NUL id: %v, want ErrInvalid", err)
	}
	all, err = s.Observations(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if got := key(all); !reflect.DeepEqual(got, []string{"node-a/b2", "node-b/b1", "node-b/b2"}) {
		t.Fatalf("observations after DeleteObservations: %v", got)
	}
	checkIndexes(t, s)
}

func TestInvalidInputStoresNothing(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	long := make([]byte, maxKeyLen+1)
	for i := range long {
		long[i] = 'a'
	}
	cases := map[string]func(tx *Tx) error{
		"empty pool name":    func(tx *Tx) error { return tx.PutPool(&Pool{}) },
		"NUL in pool name":   func(tx *Tx) error { return tx.PutPool(&Pool{Name: "a\x00b"}) },
		"long backend id":    func(tx *Tx) error { return tx.PutBackend(&Backend{ID: string(long)}) },
		"NUL in pool_name":   func(tx *Tx) error { return tx.PutBackend(&Backend{ID: "x", PoolName: "p\x00"}) },
		"bad UTF-8 cert id":  func(tx *Tx) error { return tx.PutCertificate(&Certificate{ID: "\xff"}) },
		"key without crypto": func(tx *Tx) error { return tx.PutCertificate(sampleCert("c", "a.com", time.Now())) },
		"NUL in ssl_domain":  func(tx *Tx) error { return tx.PutPool(&Pool{Name: "p", SSLDomain: "a\x00"}) },
		"empty observation":  func(tx *Tx) error { return tx.PutObservation(&Observation{}) },
		"delete absent":      func(tx *Tx) error { return tx.DeleteBackend("nope") },
		"write then fail":    func(tx *Tx) error { _ = tx.PutPool(samplePool("ok")); return errors.New("boom") },
	}
	for name, fn := range cases {
		if _, err := s.Update(ctx, fn); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	if s.LastIndex() != 0 {
		t.Fatalf("something was committed: last index %d", s.LastIndex())
	}
	for _, table := range TableNames() {
		if n := len(rawTable(t, s, table)); n != 0 {
			t.Fatalf("table %s has %d rows", table, n)
		}
	}
	_, err := s.Update(ctx, func(tx *Tx) error { return tx.PutCertificate(sampleCert("c", "a.com", time.Now())) })
	if !errors.Is(err, ErrEncryptionKey) {
		t.Fatalf("private key without key: %v", err)
	}
}

func TestViewIsReadOnlyAndConsistent(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	mustUpdate(t, s, func(tx *Tx) error { return tx.PutPool(samplePool("p")) })
	err := s.View(ctx, func(tx *Tx) error {
		if err := tx.PutPool(samplePool("q")); !errors.Is(err, ErrReadOnly) {
			return fmt.Errorf("PutPool in View: %v", err)
		}
		if err := tx.DeletePool("p"); !errors.Is(err, ErrReadOnly) {
			return fmt.Errorf("DeletePool in View: %v", err)
		}
		// A commit during the view is invisible to it.
		mustUpdate(t, s, func(tx *Tx) error { return tx.DeletePool("p") })
		if _, err := tx.Pool("p"); err != nil {
			return fmt.Errorf("snapshot lost the pool: %v", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetPool(ctx, "p"); !errors.Is(err, ErrNotFound) {
		t.Fatal(err)
	}
}

func TestReopenKeepsStateAndNodeID(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	s, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	id := s.NodeID()
	var last Commit
	for i := 0; i < 5; i++ {
		last = mustUpdate(t, s, func(tx *Tx) error { return tx.PutPool(samplePool(fmt.Sprint("p", i))) })
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetPool(context.Background(), "p1"); !errors.Is(err, ErrClosed) {
		t.Fatalf("read after close: %v", err)
	}
	s, err = Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if s.NodeID() != id || len(id) != 16 {
		t.Fatalf("node id %q, was %q", s.NodeID(), id)
	}
	if s.LastIndex() != last.Index || s.Bookkeeping().Max(id) != last.Version.Seq {
		t.Fatalf("counters after reopen: index %d vv %v", s.LastIndex(), s.Bookkeeping())
	}
	c := mustUpdate(t, s, func(tx *Tx) error { return tx.PutPool(samplePool("after")) })
	if c.Index != last.Index+1 || c.Version.Seq != last.Version.Seq+1 || !last.Version.Less(c.Version) {
		t.Fatalf("commit after reopen %+v, before %+v", c, last)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	cfg.NodeID = "someone-else"
	if _, err := Open(cfg); !errors.Is(err, ErrInvalid) {
		t.Fatalf("opened with a different node id: %v", err)
	}
	cfg.NodeID = id
	s, err = Open(cfg)
	if err != nil {
		t.Fatalf("reopen with its own id: %v", err)
	}
	s.Close()
}
