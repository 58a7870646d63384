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
	}
}

// A transaction that scanned an index partition must not commit after
// another transaction added an entry to that partition since its snapshot:
// the scan's answer is stale. The scanner writes only a row the inserter
// never touches, so the partition guard is the only thing that can make
// them conflict. The inserter commits between the scanner's scan and its
// commit; the scanner must run again and see the entry.
func TestIndexScanConflictsWithInsertIntoPartition(t *testing.T) {
	for _, tc := range partitionCases() {
		t.Run(tc.name, func(t *testing.T) {
			s := openStore(t, func(c *Config) { c.EncryptionKey = testKey(t) })
			ctx := context.Background()
			if tc.setup != nil {
				mustUpdate(t, s, tc.setup)
			}
			scanned := make(chan struct{})
			inserted := make(chan struct{})
			var attempts atomic.Int32
			var seen []int
			done := make(chan error, 1)
			go func() {
				_, err := s.Update(ctx, func(tx *Tx) error {
					n, err := tc.scan(tx)
					if err != nil {
						return err
					}
					seen = append(seen, n)
					if attempts.Add(1) == 1 {
						close(scanned)
						<-inserted
					}
					return tx.PutPool(&Pool{Name: "marker", Metadata: map[string]string{"entries": fmt.Sprint(n)}})
				})
				done <- err
			}()
			<-scanned
			mustUpdate(t, s, tc.insert)
			close(inserted)
			if err := <-done; err != nil {
				t.Fatalf("scanner: %v", err)
			}
			if len(seen) != 2 || seen[0] != 0 || seen[1] != 1 {
				t.Fatalf("scanner saw %v entries over its attempts, want [0 1] (a stale scan committed)", seen)
			}
			marker, err := s.GetPool(ctx, "marker")
			if err != nil {
				t.Fatal(err)
			}
			if marker.Metadata["entries"] != "1" {
				t.Fatalf("scanner committed with %s entries, want 1", marker.Metadata["entries"])
			}
		})
	}
}

// "Delete the pool if it has no backends" against "add a backend to the
// pool": both read before either commits (a barrier), then both try to
// commit. Exactly one may win; a backend never outlives its pool.
func TestDeleteEmptyPoolRacesAddBackend(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	errNotEmpty := errors.New("pool has backends")
	for round := 0; round < 20; round++ {
		pool := fmt.Sprintf("p%d", round)
		mustUpdate(t, s, func(tx *Tx) error { return tx.PutPool(&Pool{Name: pool}) })
		var barrier sync.WaitGroup
		barrier.Add(2)
		arrive := func(attempt *atomic.Int32) {
			if attempt.Add(1) == 1 {
				barrier.Done()
				barrier.Wait()
			}
		}
		var delAttempts, addAttempts atomic.Int32
		var delErr, addErr error
		var wg sync.WaitGroup
		wg.Add(2)
		go func() {
			defer wg.Done()
			_, delErr = s.Update(ctx, func(tx *Tx) error {
				bs, err := tx.BackendsByPool(pool)
				if err != nil {
					return err
				}
				arrive(&delAttempts)
				if len(bs) > 0 {
					return errNotEmpty
				}
				return tx.DeletePool(pool)
			})
		}()
		go func() {
			defer wg.Done()
			_, addErr = s.Update(ctx, func(tx *Tx) error {
				if _, err := tx.Pool(pool); err != nil {
					arrive(&addAttempts)
					return err
				}
				arrive(&addAttempts)
				return tx.PutBackend(sampleBackend(pool+"-b", pool))
			})
		}()
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
		if delAttempts.Load()+addAttempts.Load() < 3 {
			t.Fatalf("round %d: %d+%d attempts: both committed on their first attempt", round, delAttempts.Load(), addAttempts.Load())
		}
	}
}

// Guards are written by Apply too: a change set from a peer that adds an
// entry conflicts with a local scan of the partition.
func TestApplyWritesPartitionGuard(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	mustUpdate(t, s, func(tx *Tx) error { return tx.PutPool(&Pool{Name: "web"}) })
	peer := openStore(t, func(c *Config) { c.NodeID = "peer" })
	mustUpdate(t, peer, func(tx *Tx) error { return tx.PutBackend(sampleBackend("b1", "web")) })
	sets, err := changeSetsOf(peer, "peer")
	if err != nil || len(sets) != 1 {
		t.Fatalf("peer change sets %d, %v", len(sets), err)
	}
	var seen []int
	_, err = s.Update(ctx, func(tx *Tx) error {
		bs, err := tx.BackendsByPool("web")
		if err != nil {
			return err
		}
		seen = append(seen, len(bs))
		if len(seen) == 1 {
			if _, err := applySet(s, sets[0]); err != nil {
				return err
			}
		}
		return tx.PutPool(&Pool{Name: "marker"})
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(seen) != 2 || seen[1] != 1 {
		t.Fatalf("scanner saw %v over its attempts, want [0 1]", seen)
	}
}

// Guards are index-family keys that belong to no row: Verify accepts them
// (openStore's cleanup verifies every store), Export leaves them out, and
// a malformed one is reported.
func TestPartitionGuardsStayInternal(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	mustUpdate(t, s, func(tx *Tx) error {
		if err := tx.PutPool(&Pool{Name: "web", SSLDomain: "web.example.com", SSLCertID: "c9"}); err != nil {
			return err
		}
		return tx.PutBackend(sampleBackend("b1", "web"))
	})
	mustUpdate(t, s, func(tx *Tx) error { return tx.DeleteBackend("b1") })

	guards := map[string]bool{}
	ro := grocksdb.NewDefaultReadOptions()
	defer ro.Destroy()
	it := s.base.NewIteratorCF(ro, s.cfs[cfIndex])
	for it.Seek([]byte{idxGuard}); it.ValidForPrefix([]byte{idxGuard}); it.Next() {
		guards[string(it.Key().Data())] = true
	}
	it.Close()
	for _, want := range [][]byte{
		guardKey(idxBackendPool, []byte("web")),
		guardKey(idxPoolSSLDomain, []byte("web.example.com")),
		guardKey(idxPoolCert, []byte("c9")),
	} {
		if !guards[string(want)] {
			t.Errorf("guard %q missing; have %v", want, guards)
		}
	}
	if len(guards) != 3 {
		t.Errorf("guards %v, want 3 (unguarded indexes write none)", guards)
	}
	if err := s.Verify(ctx); err != nil {
		t.Fatalf("Verify with guards: %v", err)
	}

	var buf bytes.Buffer
	n, err := s.Export(ctx, &buf)
	if err != nil {
		t.Fatal(err)
	}
	if n != 2 { // the pool and the backend's tombstone
		t.Fatalf("exported %d rows, want 2", n)
	}
	if bytes.Contains(buf.Bytes(), []byte(`"index"`)) {
		t.Fatalf("export mentions the index family:\n%s", buf.String())
	}

	if err := s.base.PutCF(s.wo, s.cfs[cfIndex], []byte{idxGuard, idxCertExpiry, 'x'}, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Verify(ctx); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Verify with a guard of an unguarded index: %v, want ErrCorrupt", err)
	}
	if err := s.base.DeleteCF(s.wo, s.cfs[cfIndex], []byte{idxGuard, idxCertExpiry, 'x'}); err != nil {
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
