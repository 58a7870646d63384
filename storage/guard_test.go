package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/linxGnu/grocksdb"
)

// partitionCase is one guarded index partition: insert adds an entry to
// it, scan counts its entries inside a transaction.
type partitionCase struct {
	name   string
	setup  func(tx *Tx) error
	insert func(tx *Tx) error
	scan   func(tx *Tx) (int, error)
}

func partitionCases() []partitionCase {
	expires := time.Now().Add(30 * 24 * time.Hour).UTC()
	return []partitionCase{
		{
			name:   "backends by pool",
			setup:  func(tx *Tx) error { return tx.PutPool(&Pool{Name: "web"}) },
			insert: func(tx *Tx) error { return tx.PutBackend(sampleBackend("b1", "web")) },
			scan: func(tx *Tx) (int, error) {
				bs, err := tx.BackendsByPool("web")
				return len(bs), err
			},
		},
		{
			name:   "pools by ssl_domain",
			insert: func(tx *Tx) error { return tx.PutPool(&Pool{Name: "shop", SSLDomain: "Shop.Example.com"}) },
			scan: func(tx *Tx) (int, error) {
				ps, err := tx.PoolsBySSLDomain("shop.example.com")
				return len(ps), err
			},
		},
		{
			name:   "pools by certificate",
			setup:  func(tx *Tx) error { return tx.PutCertificate(sampleCert("c1", "a.example.com", expires)) },
			insert: func(tx *Tx) error { return tx.PutPool(&Pool{Name: "api", SSLCertID: "c1"}) },
			scan: func(tx *Tx) (int, error) {
				ps, err := tx.PoolsByCertificate("c1")
				return len(ps), err
			},
		},
		{
			name: "certificates by domain",
			insert: func(tx *Tx) error {
				return tx.PutCertificate(sampleCert("c2", "b.example.com", expires, "www.b.example.com"))
			},
			scan: func(tx *Tx) (int, error) {
				cs, err := tx.CertificatesByDomain("www.b.example.com")
				return len(cs), err
			},
		},
		{
			name:   "pools by host",
			insert: func(tx *Tx) error { return tx.PutPool(&Pool{Name: "blog", Hosts: []string{"*.Blog.example.com"}}) },
			scan: func(tx *Tx) (int, error) {
				ps, err := tx.PoolsByHost("*.blog.example.com")
				return len(ps), err
			},
		},
		{
			name:   "default pools",
			insert: func(tx *Tx) error { return tx.PutPool(&Pool{Name: "fallback", Default: true}) },
			scan: func(tx *Tx) (int, error) {
				ps, err := tx.DefaultPools()
				return len(ps), err
			},
		},
		{
			name:   "backends by address",
			setup:  func(tx *Tx) error { return tx.PutPool(&Pool{Name: "web"}) },
			insert: func(tx *Tx) error { return tx.PutBackend(sampleBackend("b1", "web")) },
			scan: func(tx *Tx) (int, error) {
				b := sampleBackend("x", "web")
				bs, err := tx.BackendsByAddress("web", BackendAddress(b.Scheme, b.Host, b.Port))
				return len(bs), err
			},
		},
	}
}

// A transaction that scanned an index partition must not commit after
// another transaction added an entry to that partition since the scan:
// the scan's answer would be stale. Commits are serialized, so the
// inserter, started while the scanner is inside its function, runs only
// after the scanner committed, and sees the scanner's write.
func TestIndexScanIsNotInterleavedWithInsertIntoPartition(t *testing.T) {
	for _, tc := range partitionCases() {
		t.Run(tc.name, func(t *testing.T) {
			s := openStore(t, func(c *Config) { c.EncryptionKey = testKey(t) })
			ctx := context.Background()
			if tc.setup != nil {
				mustUpdate(t, s, tc.setup)
			}
			var scanning atomic.Bool
			inserting := make(chan struct{})
			insertDone := make(chan error, 1)
			scanCommit, err := s.Update(ctx, func(tx *Tx) error {
				scanning.Store(true)
				defer scanning.Store(false)
				n, err := tc.scan(tx)
				if err != nil {
					return err
				}
				go func() {
					close(inserting)
					var insertErr error
					_, insertErr = s.Update(ctx, func(tx *Tx) error {
						if scanning.Load() {
							return errors.New("inserter ran while the scanner's transaction was open")
						}
						if _, err := tx.Pool("marker"); err != nil {
							return fmt.Errorf("inserter does not see the scanner's commit: %w", err)
						}
						return tc.insert(tx)
					})
					insertDone <- insertErr
				}()
				waitChan(t, inserting)
				// Give the inserter every chance to slip in.
				time.Sleep(20 * time.Millisecond)
				return tx.PutPool(&Pool{Name: "marker", Metadata: map[string]string{"entries": fmt.Sprint(n)}})
			})
			if err != nil {
				t.Fatalf("scanner: %v", err)
			}
			select {
			case err := <-insertDone:
				if err != nil {
					t.Fatalf("inserter: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("inserter did not finish")
			}
			marker, err := s.GetPool(ctx, "marker")
			if err != nil {
				t.Fatal(err)
			}
			if marker.Metadata["entries"] != "0" || scanCommit.Index+1 != s.LastIndex() {
				t.Fatalf("scanner committed with %s entries at index %d (last %d), want 0 entries and the insert next",
					marker.Metadata["entries"], scanCommit.Index, s.LastIndex())
			}
			n := 0
			if err := s.View(ctx, func(tx *Tx) error {
				var err error
				n, err = tc.scan(tx)
				return err
			}); err != nil || n != 1 {
				t.Fatalf("partition after both commits: %d entries, %v", n, err)
			}
		})
	}
}

func waitChan(t *testing.T, ch <-chan struct{}) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatal("timed out")
	}
}

// "Delete the pool if it has no backends" against "add a backend to the
// pool", concurrently: exactly one wins; a backend never outlives its pool.
func TestDeleteEmptyPoolRacesAddBackend(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	errNotEmpty := errors.New("pool has backends")
	for round := 0; round < 20; round++ {
		pool := fmt.Sprintf("p%d", round)
		mustUpdate(t, s, func(tx *Tx) error { return tx.PutPool(&Pool{Name: pool}) })
		start := make(chan struct{})
		var delErr, addErr error
		var wg sync.WaitGroup
		wg.Add(2)
		go func() {
			defer wg.Done()
			<-start
			_, delErr = s.Update(ctx, func(tx *Tx) error {
				bs, err := tx.BackendsByPool(pool)
				if err != nil {
					return err
				}
				if len(bs) > 0 {
					return errNotEmpty
				}
				return tx.DeletePool(pool)
			})
		}()
		go func() {
			defer wg.Done()
			<-start
			_, addErr = s.Update(ctx, func(tx *Tx) error {
				if _, err := tx.Pool(pool); err != nil {
					return err
				}
				return tx.PutBackend(sampleBackend(pool+"-b", pool))
			})
		}()
		close(start)
		wg.Wait()
		_, poolErr := s.GetPool(ctx, pool)
		backends, err := s.ListBackendsByPool(ctx, pool, "", 0)
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case delErr == nil && errors.Is(addErr, ErrNotFound):
			if !errors.Is(poolErr, ErrNotFound) || len(backends) != 0 {
				t.Fatalf("round %d: delete won, yet pool err %v, %d backends", round, poolErr, len(backends))
			}
		case addErr == nil && errors.Is(delErr, errNotEmpty):
			if poolErr != nil || len(backends) != 1 {
				t.Fatalf("round %d: add won, yet pool err %v, %d backends", round, poolErr, len(backends))
			}
		default:
			t.Fatalf("round %d: delete %v, add %v (pool err %v, %d backends)", round, delErr, addErr, poolErr, len(backends))
		}
	}
}

// A change set from a peer that adds an entry to a partition a local
// transaction is scanning waits until that transaction has committed.
func TestApplyWaitsForRunningTransaction(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	mustUpdate(t, s, func(tx *Tx) error { return tx.PutPool(&Pool{Name: "web"}) })
	peer := openStore(t, func(c *Config) { c.NodeID = "peer" })
	mustUpdate(t, peer, func(tx *Tx) error { return tx.PutBackend(sampleBackend("b1", "web")) })
	sets, err := changeSetsOf(peer, "peer")
	if err != nil || len(sets) != 1 {
		t.Fatalf("peer change sets %d, %v", len(sets), err)
	}
	applied := make(chan error, 1)
	_, err = s.Update(ctx, func(tx *Tx) error {
		bs, err := tx.BackendsByPool("web")
		if err != nil {
			return err
		}
		go func() {
			_, err := applySet(s, sets[0])
			applied <- err
		}()
		time.Sleep(20 * time.Millisecond)
		select {
		case err := <-applied:
			return fmt.Errorf("a change set was applied inside a running transaction (%v)", err)
		default:
		}
		return tx.PutPool(&Pool{Name: "marker", Metadata: map[string]string{"entries": fmt.Sprint(len(bs))}})
	})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-applied:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("apply did not finish")
	}
	bs, err := s.ListBackendsByPool(ctx, "web", "", 0)
	if err != nil || len(bs) != 1 {
		t.Fatalf("backends after apply: %d, %v", len(bs), err)
	}
}

// upgradeIndexFrom writes batch (the index entries of an older layout) to
// s with index version from, checks that Verify reports them, and reopens
// s: Open rebuilds the index family, so that none of the entries gone is
// left and the index version is this agent's. It returns the reopened
// store.
func upgradeIndexFrom(t *testing.T, s *Store, from byte, batch *grocksdb.WriteBatch, gone [][]byte) *Store {
	t.Helper()
	batch.PutCF(s.cfs[cfMeta], []byte(metaIndexVersion), []byte{from})
	err := s.base.Write(s.wo, batch)
	batch.Destroy()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Verify(context.Background()); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Verify with the index version %d layout: %v, want ErrCorrupt", from, err)
	}
	dir := s.Dir()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, func(c *Config) { c.Dir = dir })
	for _, k := range gone {
		if v, err := s.getRaw(cfIndex, k); err != nil || v != nil {
			t.Fatalf("version %d entry %q after upgrade: %v, %v", from, k, v, err)
		}
	}
	if v, err := s.getRaw(cfMeta, []byte(metaIndexVersion)); err != nil || !bytes.Equal(v, []byte{indexVersion}) {
		t.Fatalf("index_version after upgrade: %v, %v", v, err)
	}
	return s
}

// A store of index version 4 holds partition guards, which serialized
// commits no longer read: Open deletes them and records version 5;
// Verify reports a leftover as an entry without a row.
func TestOpenDropsPartitionGuards(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(testConfig(t, dir))
	if err != nil {
		t.Fatal(err)
	}
	mustUpdate(t, s, func(tx *Tx) error {
		if err := tx.PutPool(&Pool{Name: "web", SSLDomain: "web.example.com"}); err != nil {
			return err
		}
		return tx.PutBackend(sampleBackend("b1", "web"))
	})
	guards := [][]byte{
		{idxGuard, idxBackendPool, 'w', 'e', 'b'},
		append([]byte{idxGuard, idxPoolSSLDomain}, "web.example.com"...),
		append([]byte{idxGuard, idxBackendAddr}, "web http://10.0.0.1:8080"...),
	}
	batch := grocksdb.NewWriteBatch()
	for _, g := range guards {
		batch.PutCF(s.cfs[cfIndex], g, nil)
	}
	s = upgradeIndexFrom(t, s, 4, batch, guards)
	bs, err := s.ListBackendsByPool(context.Background(), "web", "", 0)
	if err != nil || len(bs) != 1 {
		t.Fatalf("backends after upgrade: %d, %v", len(bs), err)
	}
	if err := s.Verify(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// A store of index version 6 holds a pool's backends by id and a second
// entry per backend for its address: Open rebuilds the index family to
// version 7 (by address, then id, one entry per backend), the address
// lookup and the pool's list read the new entries, and nothing of the old
// layout is left for Verify to report.
func TestOpenReordersBackendsByAddress(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(testConfig(t, dir))
	if err != nil {
		t.Fatal(err)
	}
	b1, b2 := sampleBackend("b1", "web"), sampleBackend("b2", "web")
	b1.Port, b2.Port = 9001, 9000
	mustUpdate(t, s, func(tx *Tx) error {
		if err := tx.PutBackend(b1); err != nil {
			return err
		}
		return tx.PutBackend(b2)
	})
	batch := grocksdb.NewWriteBatch()
	var old [][]byte
	for _, b := range []*Backend{b1, b2} {
		envelope, err := s.getRaw(cfIndex, backendIndexKeys(b)[0])
		if err != nil || envelope == nil {
			t.Fatalf("entry of %s: %v", b.ID, err)
		}
		batch.DeleteCF(s.cfs[cfIndex], backendIndexKeys(b)[0])
		byID := indexKey(idxBackendPool, b.PoolName, b.ID)
		byAddr := indexKey(idxBackendAddr, b.PoolName+" "+BackendAddress(b.Scheme, b.Host, b.Port), b.ID)
		batch.PutCF(s.cfs[cfIndex], byID, envelope)
		batch.PutCF(s.cfs[cfIndex], byAddr, nil)
		old = append(old, byID, byAddr)
	}
	s = upgradeIndexFrom(t, s, 6, batch, old)
	bs, err := s.ListBackendsByPool(context.Background(), "web", "", 0)
	if err != nil || len(bs) != 2 || bs[0].ID != "b2" || bs[1].ID != "b1" {
		t.Fatalf("backends after upgrade (want b2 at :9000 first): %+v, %v", bs, err)
	}
	err = s.View(context.Background(), func(tx *Tx) error {
		got, err := tx.BackendsByAddress("web", BackendAddress("http", "10.0.0.1", 9001))
		if err != nil || len(got) != 1 || got[0].ID != "b1" {
			return fmt.Errorf("BackendsByAddress after upgrade: %+v, %v", got, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Verify(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestPoolsByCertificate(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	names := func(ps []Pool) []string {
		out := []string{}
		for _, p := range ps {
			out = append(out, p.Name)
		}
		return out
	}
	mustUpdate(t, s, func(tx *Tx) error {
		for _, p := range []*Pool{{Name: "b", SSLCertID: "c1"}, {Name: "a", SSLCertID: "c1"}, {Name: "c", SSLCertID: "c2"}, {Name: "d"}} {
			if err := tx.PutPool(p); err != nil {
				return err
			}
		}
		return nil
	})
	check := func(cert string, want ...string) {
		t.Helper()
		got, err := s.PoolsByCertificate(ctx, cert)
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(names(got)) != fmt.Sprint(append([]string{}, want...)) {
			t.Fatalf("PoolsByCertificate(%s) = %v, want %v", cert, names(got), want)
		}
	}
	check("c1", "a", "b")
	check("c2", "c")
	check("c3")

	// Inside a transaction the pending writes count: moved, cleared, deleted.
	mustUpdate(t, s, func(tx *Tx) error {
		if err := tx.PutPool(&Pool{Name: "a", SSLCertID: "c2"}); err != nil {
			return err
		}
		if err := tx.PutPool(&Pool{Name: "c"}); err != nil {
			return err
		}
		if err := tx.DeletePool("b"); err != nil {
			return err
		}
		for cert, want := range map[string][]string{"c1": {}, "c2": {"a"}} {
			got, err := tx.PoolsByCertificate(cert)
			if err != nil {
				return err
			}
			if fmt.Sprint(names(got)) != fmt.Sprint(want) {
				return fmt.Errorf("in tx: PoolsByCertificate(%s) = %v, want %v", cert, names(got), want)
			}
		}
		return nil
	})
	check("c1")
	check("c2", "a")

	// ssl_cert_id is an indexed value: NUL is refused and nothing is stored.
	_, err := s.Update(ctx, func(tx *Tx) error { return tx.PutPool(&Pool{Name: "e", SSLCertID: "c\x00"}) })
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("NUL in ssl_cert_id: %v, want ErrInvalid", err)
	}
	if _, err := s.GetPool(ctx, "e"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("pool e after a refused write: %v", err)
	}
}

// A store written before the pools-by-certificate index existed (no entries,
// no index_version) gets the entries on its next Open.
func TestOpenBackfillsNewIndexes(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(testConfig(t, dir))
	if err != nil {
		t.Fatal(err)
	}
	mustUpdate(t, s, func(tx *Tx) error {
		if err := tx.PutPool(&Pool{Name: "web", SSLCertID: "c1", SSLDomain: "web.example.com"}); err != nil {
			return err
		}
		return tx.PutBackend(sampleBackend("b1", "web"))
	})
	// Make it look like an index-version-1 store.
	batch := grocksdb.NewWriteBatch()
	batch.DeleteCF(s.cfs[cfIndex], indexKey(idxPoolCert, "c1", "web"))
	batch.DeleteCF(s.cfs[cfMeta], []byte(metaIndexVersion))
	if err := s.base.Write(s.wo, batch); err != nil {
		t.Fatal(err)
	}
	batch.Destroy()
	if err := s.Verify(context.Background()); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Verify without the entry: %v, want ErrCorrupt", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openStore(t, func(c *Config) { c.Dir = dir })
	got, err := s.PoolsByCertificate(context.Background(), "c1")
	if err != nil || len(got) != 1 || got[0].Name != "web" {
		t.Fatalf("PoolsByCertificate after reopen: %v, %v", got, err)
	}
	v, err := s.getRaw(cfMeta, []byte(metaIndexVersion))
	if err != nil || !bytes.Equal(v, []byte{indexVersion}) {
		t.Fatalf("index_version after upgrade: %v, %v", v, err)
	}
}
