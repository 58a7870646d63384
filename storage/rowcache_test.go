package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"reflect"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// cachedReads is what the row cache serves, read through the store's
// cached read methods.
type cachedReads struct {
	backends map[string]*Backend
	pools    map[string]*Pool
	certs    map[string]*Certificate
	lists    map[string][]Backend
	domains  map[string][]Certificate
	expiries []CertificateExpiry
	window   []Certificate
}

// readCached reads every named row, list and window through the cache
// three times: a row is cached on its second miss, so the third read is
// a hit.
func readCached(t *testing.T, s *Store, backends, pools, certs, domains []string, until time.Time) cachedReads {
	t.Helper()
	ctx := context.Background()
	var r cachedReads
	for range 3 {
		r = cachedReads{backends: map[string]*Backend{}, pools: map[string]*Pool{}, certs: map[string]*Certificate{},
			lists: map[string][]Backend{}, domains: map[string][]Certificate{}}
		for _, id := range backends {
			b, err := s.GetBackend(ctx, id)
			if err == nil {
				r.backends[id] = &b
			} else if !errors.Is(err, ErrNotFound) {
				t.Fatal(err)
			}
		}
		for _, name := range pools {
			p, err := s.GetPool(ctx, name)
			if err == nil {
				r.pools[name] = &p
			} else if !errors.Is(err, ErrNotFound) {
				t.Fatal(err)
			}
			list, err := s.ListBackendsByPool(ctx, name, "", 0)
			if err != nil {
				t.Fatal(err)
			}
			r.lists[name] = list
		}
		for _, id := range certs {
			c, err := s.GetCertificate(ctx, id)
			if err == nil {
				r.certs[id] = &c
			} else if !errors.Is(err, ErrNotFound) {
				t.Fatal(err)
			}
		}
		for _, d := range domains {
			cs, err := s.CertificatesByDomain(ctx, d)
			if err != nil {
				t.Fatal(err)
			}
			r.domains[d] = cs
		}
		var err error
		if r.expiries, err = s.CertificateExpiries(ctx, until, 0); err != nil {
			t.Fatal(err)
		}
		if r.window, err = s.CertificatesExpiringBefore(ctx, until, 0); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

// readSnapshot reads the same from one RocksDB snapshot, past the cache.
func readSnapshot(t *testing.T, s *Store, backends, pools, certs, domains []string, until time.Time) cachedReads {
	t.Helper()
	r := cachedReads{backends: map[string]*Backend{}, pools: map[string]*Pool{}, certs: map[string]*Certificate{},
		lists: map[string][]Backend{}, domains: map[string][]Certificate{}}
	err := s.View(context.Background(), func(tx *Tx) error {
		for _, id := range backends {
			if b, err := tx.Backend(id); err == nil {
				r.backends[id] = &b
			} else if !errors.Is(err, ErrNotFound) {
				return err
			}
		}
		for _, name := range pools {
			if p, err := tx.Pool(name); err == nil {
				r.pools[name] = &p
			} else if !errors.Is(err, ErrNotFound) {
				return err
			}
			list, err := tx.BackendsByPoolPage(name, "", 0)
			if err != nil {
				return err
			}
			r.lists[name] = list
		}
		for _, id := range certs {
			if c, err := tx.Certificate(id); err == nil {
				r.certs[id] = &c
			} else if !errors.Is(err, ErrNotFound) {
				return err
			}
		}
		for _, d := range domains {
			cs, err := tx.CertificatesByDomain(d)
			if err != nil {
				return err
			}
			r.domains[d] = cs
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if r.expiries, err = s.scanExpiries(until, 0); err != nil {
		t.Fatal(err)
	}
	for _, e := range r.expiries {
		c := r.certs[e.ID]
		if c == nil {
			t.Fatalf("expiry entry of %s without its row in the snapshot read", e.ID)
		}
		r.window = append(r.window, *c)
	}
	return r
}

// TestRowCacheFollowsEveryWritePath warms the cache, writes through each
// path that changes rows (local commit, remote apply, tombstone purge,
// ingest) and checks that every cached read equals a snapshot read that
// bypasses the cache. Without the invalidation in Store.write (or the
// one around Ingest) the warmed entries would be served stale.
func TestRowCacheFollowsEveryWritePath(t *testing.T) {
	ctx := context.Background()
	key := testKey(t)
	wall := &fakeWall{t: time.Now()}
	base := wall.now().Truncate(time.Second)
	a := openStore(t, func(c *Config) { c.NodeID = "a"; c.EncryptionKey = key; c.Now = wall.now })
	b := openStore(t, func(c *Config) { c.NodeID = "b"; c.EncryptionKey = key; c.Now = wall.now })

	backends := []string{"be-1", "be-2", "be-3", "be-4"}
	pools := []string{"p1", "p2"}
	certs := []string{"c1", "c2", "c3"}
	domains := []string{"a.example.com", "b.example.com", "*.example.com"}
	until := base.Add(30 * 24 * time.Hour)

	check := func(t *testing.T, s *Store) {
		t.Helper()
		got := readCached(t, s, backends, pools, certs, domains, until)
		want := readSnapshot(t, s, backends, pools, certs, domains, until)
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("cached reads differ from the snapshot:\ncached   %+v\nsnapshot %+v", got, want)
		}
	}
	seed := func(s *Store) {
		mustUpdate(t, s, func(tx *Tx) error {
			for _, p := range pools {
				if err := tx.PutPool(samplePool(p)); err != nil {
					return err
				}
			}
			for i, id := range backends {
				if err := tx.PutBackend(sampleBackend(id, pools[i%2])); err != nil {
					return err
				}
			}
			for i, id := range certs {
				c := sampleCert(id, domains[i], base.Add(time.Duration(10*(i+1))*24*time.Hour), domains[i])
				if err := tx.PutCertificate(c); err != nil {
					return err
				}
			}
			return nil
		})
	}
	seed(b)

	steps := []struct {
		name  string
		store *Store
		write func(t *testing.T)
	}{
		{"remote apply of new rows", a, func(t *testing.T) { catchUp(t, a, b) }},
		{"local commit: weight, pool move, certificate expiry and names", a, func(t *testing.T) {
			mustUpdate(t, a, func(tx *Tx) error {
				be, err := tx.Backend("be-1")
				if err != nil {
					return err
				}
				be.Weight = 7
				be.Metadata = map[string]string{"k": "v"}
				if err := tx.PutBackend(&be); err != nil {
					return err
				}
				moved, err := tx.Backend("be-2")
				if err != nil {
					return err
				}
				moved.PoolName = "p1"
				if err := tx.PutBackend(&moved); err != nil {
					return err
				}
				c, err := tx.Certificate("c3")
				if err != nil {
					return err
				}
				c.ExpiresAt = base.Add(5 * 24 * time.Hour)
				c.Names = []string{"b.example.com"}
				return tx.PutCertificate(&c)
			})
		}},
		{"local commit: deletes", a, func(t *testing.T) {
			mustUpdate(t, a, func(tx *Tx) error {
				if err := tx.DeleteBackend("be-3"); err != nil {
					return err
				}
				return tx.DeleteCertificate("c1")
			})
		}},
		{"remote apply of changes to cached rows", a, func(t *testing.T) {
			mustUpdate(t, b, func(tx *Tx) error {
				be, err := tx.Backend("be-4")
				if err != nil {
					return err
				}
				be.Host, be.PoolName = "10.9.9.9", "p1"
				if err := tx.PutBackend(&be); err != nil {
					return err
				}
				p, err := tx.Pool("p2")
				if err != nil {
					return err
				}
				p.Algorithm = "least_conn"
				if err := tx.PutPool(&p); err != nil {
					return err
				}
				c, err := tx.Certificate("c2")
				if err != nil {
					return err
				}
				c.ExpiresAt = base.Add(40 * 24 * time.Hour)
				return tx.PutCertificate(&c)
			})
			catchUp(t, a, b)
		}},
		{"tombstone purge", a, func(t *testing.T) {
			wall.set(wall.now().Add(2 * time.Hour))
			members := map[string]map[string]uint64{"b": {"a": a.Bookkeeping().Max("a"), "b": b.Bookkeeping().Max("b")}}
			if res, err := a.PurgeTombstones(ctx, members, time.Hour); err != nil || res.Removed == 0 {
				t.Fatalf("purge: %+v %v", res, err)
			}
		}},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			check(t, st.store) // warm: every entry the write may replace is cached
			st.write(t)
			check(t, st.store)
		})
	}

	t.Run("ingest", func(t *testing.T) {
		// c is warmed with b's rows (applied), then ingests a snapshot of
		// a, whose rows differ.
		c := openStore(t, func(cfg *Config) { cfg.NodeID = "c"; cfg.EncryptionKey = key; cfg.Now = wall.now })
		catchUp(t, c, b)
		check(t, c)
		var buf bytes.Buffer
		if _, err := a.Snapshot(ctx, &buf); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Ingest(ctx, bytes.NewReader(buf.Bytes())); err != nil {
			t.Fatal(err)
		}
		check(t, c)
		want := readSnapshot(t, a, backends, pools, certs, domains, until)
		if got := readCached(t, c, backends, pools, certs, domains, until); !reflect.DeepEqual(got, want) {
			t.Fatalf("after ingest:\ngot  %+v\nwant %+v", got, want)
		}
	})
}

// TestRowCacheConcurrentReaders runs readers against a writer (run it
// with -race): a read that starts after a write was acknowledged never
// returns an older row, list, domain answer or expiry, and one reader's
// reads never go back in time. The readers also modify what they get,
// which must not reach the cache, and they read from it: the writer
// waits, every tenth write, for a hit.
//
// It used to check only that some read hit, once all writes were done.
// A read fills the cache only if no write began or ended while it read
// RocksDB (the gate), and the writes came back to back: on a loaded
// machine a reader descheduled in the middle of its reads saw a write
// cross every one of them, and the readers stopped as soon as the last
// write was acknowledged, so a full run once saw no hit at all. With no
// write in flight a row's third read hits (its second miss fills it), so
// the wait is bounded by reads, not time: a cache never used fails it.
func TestRowCacheConcurrentReaders(t *testing.T) {
	ctx := context.Background()
	key := testKey(t)
	s := openStore(t, func(c *Config) { c.EncryptionKey = key })
	base := time.Now().UTC().Truncate(time.Second).Add(24 * time.Hour)
	write := func(i int) error {
		_, err := s.Update(ctx, func(tx *Tx) error {
			if i == 0 {
				if err := tx.PutPool(samplePool("p")); err != nil {
					return err
				}
				if err := tx.PutBackend(sampleBackend("other", "p")); err != nil {
					return err
				}
			}
			be := sampleBackend("hot", "p")
			be.Weight = i
			be.Metadata = map[string]string{"i": fmt.Sprint(i)}
			if err := tx.PutBackend(be); err != nil {
				return err
			}
			return tx.PutCertificate(sampleCert("hot", "hot.example.com", base.Add(time.Duration(i)*time.Minute), "hot.example.com"))
		})
		return err
	}
	if err := write(0); err != nil {
		t.Fatal(err)
	}
	var acked atomic.Int64
	var reads atomic.Int64 // reads the readers completed
	const writes = 300
	var wg sync.WaitGroup
	stop := make(chan struct{})
	errc := make(chan error, 8)
	fail := func(err error) {
		select {
		case errc <- err:
		default:
		}
	}
	for r := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			last := 0
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				want := int(acked.Load())
				var got int
				switch (n + r) % 5 {
				case 0:
					be, err := s.GetBackend(ctx, "hot")
					if err != nil {
						fail(err)
						return
					}
					got = be.Weight
					be.Metadata["i"] = "mutated"
				case 1:
					list, err := s.ListBackendsByPool(ctx, "p", "", 0)
					if err != nil || len(list) != 2 || list[0].ID != "hot" {
						fail(fmt.Errorf("list %v %v", list, err))
						return
					}
					got = list[0].Weight
					list[0].Metadata["i"], list[1].Host = "mutated", "mutated"
				case 2:
					c, err := s.GetCertificate(ctx, "hot")
					if err != nil {
						fail(err)
						return
					}
					got = int(c.ExpiresAt.Sub(base) / time.Minute)
					c.Names[0] = "mutated"
				case 3:
					cs, err := s.CertificatesByDomain(ctx, "hot.example.com")
					if err != nil || len(cs) != 1 {
						fail(fmt.Errorf("by domain %v %v", cs, err))
						return
					}
					got = int(cs[0].ExpiresAt.Sub(base) / time.Minute)
					cs[0].Names[0] = "mutated"
				case 4:
					exp, err := s.CertificateExpiries(ctx, base.Add(365*24*time.Hour), 0)
					if err != nil || len(exp) != 1 {
						fail(fmt.Errorf("expiries %v %v", exp, err))
						return
					}
					got = int(exp[0].ExpiresAt.Sub(base) / time.Minute)
					exp[0].ID = "mutated"
				}
				if got < want || got < last {
					fail(fmt.Errorf("reader %d read version %d after %d was acknowledged (its last read: %d)", r, got, want, last))
					return
				}
				last = got
				reads.Add(1)
			}
		}()
	}
	// awaitHit waits until a reader hits the cache, while no write is in
	// flight. Readers stop only on a failure, which ends the wait too.
	awaitHit := func() error {
		const bound = 500 // 100 reads of each kind
		hits, start := s.CacheStats().Hits, reads.Load()
		for len(errc) == 0 {
			// Reads counted before the hits are: a hit among them
			// shows, however long this goroutine waits between the two.
			n := reads.Load() - start
			if s.CacheStats().Hits != hits {
				return nil
			}
			if n >= bound {
				return fmt.Errorf("no cache hit in %d reads with no write in flight: %+v", n, s.CacheStats())
			}
			runtime.Gosched()
		}
		return nil
	}
	var werr error
	for i := 1; i <= writes && werr == nil && len(errc) == 0; i++ {
		if werr = write(i); werr != nil {
			break
		}
		acked.Store(int64(i))
		if i%10 == 0 {
			werr = awaitHit()
		}
	}
	close(stop)
	wg.Wait()
	select {
	case err := <-errc:
		t.Fatal(err)
	default:
	}
	if werr != nil {
		t.Fatal(werr)
	}
	be, err := s.GetBackend(ctx, "hot")
	if err != nil || be.Weight != writes || be.Metadata["i"] != fmt.Sprint(writes) {
		t.Fatalf("final read %+v %v", be, err)
	}
	c, err := s.GetCertificate(ctx, "hot")
	if err != nil || c.Names[0] != "hot.example.com" {
		t.Fatalf("final certificate %+v %v", c, err)
	}
	if st := s.CacheStats(); st.Hits == 0 {
		t.Fatalf("no cache hits: %+v", st)
	}
}

// TestRowCacheValuesAreCopies: what a caller does to a returned value
// never reaches the next reader.
func TestRowCacheValuesAreCopies(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, func(c *Config) { c.EncryptionKey = testKey(t) })
	exp := time.Now().UTC().Truncate(time.Second).Add(24 * time.Hour)
	mustUpdate(t, s, func(tx *Tx) error {
		if err := tx.PutPool(samplePool("p")); err != nil {
			return err
		}
		be := sampleBackend("be", "p")
		be.Metadata = map[string]string{"k": "v"}
		if err := tx.PutBackend(be); err != nil {
			return err
		}
		c := sampleCert("c", "x.example.com", exp, "x.example.com", "y.example.com")
		c.Metadata = map[string]string{"k": "v"}
		return tx.PutCertificate(c)
	})
	for range 3 { // a row is cached on its second miss, then hits
		be, err := s.GetBackend(ctx, "be")
		if err != nil || be.Metadata["k"] != "v" || be.Host != "10.0.0.1" {
			t.Fatalf("backend %+v %v", be, err)
		}
		be.Metadata["k"], be.Host = "changed", "changed"
		p, err := s.GetPool(ctx, "p")
		if err != nil || p.Hosts[0] != "www.p.example.com" || p.Metadata["team"] != "edge" {
			t.Fatalf("pool %+v %v", p, err)
		}
		p.Hosts[0], p.Metadata["team"] = "changed", "changed"
		list, err := s.ListBackendsByPool(ctx, "p", "", 0)
		if err != nil || len(list) != 1 || list[0].Metadata["k"] != "v" {
			t.Fatalf("list %+v %v", list, err)
		}
		list[0].Metadata["k"], list[0].Port = "changed", 1
		c, err := s.GetCertificate(ctx, "c")
		if err != nil || c.Names[1] != "y.example.com" || c.Metadata["k"] != "v" {
			t.Fatalf("certificate %+v %v", c, err)
		}
		c.Names[1], c.Metadata["k"] = "changed", "changed"
		cs, err := s.CertificatesExpiringBefore(ctx, exp.Add(time.Hour), 0)
		if err != nil || len(cs) != 1 || cs[0].Names[1] != "y.example.com" {
			t.Fatalf("window %+v %v", cs, err)
		}
		cs[0].Names[1] = "changed"
		e, err := s.CertificateExpiries(ctx, exp.Add(time.Hour), 0)
		if err != nil || len(e) != 1 || e[0].ID != "c" {
			t.Fatalf("expiries %+v %v", e, err)
		}
		e[0].ID = "changed"
	}
	if st := s.CacheStats(); st.Hits == 0 || st.Expiries != 1 {
		t.Fatalf("cache not used: %+v", st)
	}
}

// TestRowCacheBounded: the cache stays within its budget and answers
// right when rows are evicted; a negative size turns it off.
func TestRowCacheBounded(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		size int64
	}{{"256KiB", 256 << 10}, {"off", -1}} {
		t.Run(tc.name, func(t *testing.T) {
			s := openStore(t, func(c *Config) { c.RowCacheSize = tc.size })
			const n = 3000
			for first := 0; first < n; first += 500 {
				mustUpdate(t, s, func(tx *Tx) error {
					if first == 0 {
						if err := tx.PutPool(samplePool("p")); err != nil {
							return err
						}
					}
					for i := first; i < first+500; i++ {
						be := sampleBackend(fmt.Sprintf("be-%05d", i), "p")
						be.Port = 1000 + i
						if err := tx.PutBackend(be); err != nil {
							return err
						}
					}
					return nil
				})
			}
			for range 2 {
				for i := range n {
					be, err := s.GetBackend(ctx, fmt.Sprintf("be-%05d", i))
					if err != nil || be.Port != 1000+i {
						t.Fatalf("backend %d: %+v %v", i, be, err)
					}
				}
				after := BackendPosition(&Backend{ID: "be-00100", Scheme: "http", Host: "10.0.0.1", Port: 1100})
				list, err := s.ListBackendsByPool(ctx, "p", after, 10)
				if err != nil || len(list) != 10 || list[0].ID != "be-00101" {
					t.Fatalf("page %v %v", list, err)
				}
			}
			st := s.CacheStats()
			switch {
			case tc.size < 0 && (st.Entries != 0 || st.Bytes != 0):
				t.Fatalf("cache off but holds %+v", st)
			case tc.size > 0 && (st.Bytes > tc.size || st.Entries == 0 || st.Entries >= n):
				t.Fatalf("cache of %d bytes: %+v", tc.size, st)
			}
		})
	}
}

// BenchmarkRowCacheHits measures the cached read paths alone (every
// read a hit): a backend, a pool's 1,000 backends with one metadata
// entry each, a certificate, and the 30-day window of 3,000 expiries.
func BenchmarkRowCacheHits(b *testing.B) {
	ctx := context.Background()
	s := openStore(b, func(c *Config) { c.EncryptionKey = testKey(b) })
	now := time.Now().UTC().Truncate(time.Second)
	for first := 0; first < 1000; first += 500 {
		mustUpdate(b, s, func(tx *Tx) error {
			if first == 0 {
				if err := tx.PutPool(samplePool("p")); err != nil {
					return err
				}
			}
			for i := first; i < first+500; i++ {
				be := sampleBackend(fmt.Sprintf("be-%05d", i), "p")
				be.Metadata = map[string]string{"fly_machine_id": fmt.Sprint(i)}
				if err := tx.PutBackend(be); err != nil {
					return err
				}
			}
			return nil
		})
	}
	for first := 0; first < 9000; first += 500 {
		mustUpdate(b, s, func(tx *Tx) error {
			for i := first; i < first+500; i++ {
				d := fmt.Sprintf("c%05d.example.com", i)
				if err := tx.PutCertificate(sampleCert(fmt.Sprintf("c%05d", i), d, now.Add(time.Duration(i)*15*time.Minute), d)); err != nil {
					return err
				}
			}
			return nil
		})
	}
	window := now.Add(30 * 24 * time.Hour)
	for _, bc := range []struct {
		name string
		read func() error
	}{
		{"GetBackend", func() error { _, err := s.GetBackend(ctx, "be-00042"); return err }},
		{"GetCertificate", func() error { _, err := s.GetCertificate(ctx, "c00042"); return err }},
		{"CertificatesByDomain", func() error { _, err := s.CertificatesByDomain(ctx, "c00042.example.com"); return err }},
		{"ListBackendsByPool_1000", func() error { _, err := s.ListBackendsByPool(ctx, "p", "", 0); return err }},
		{"CertificateExpiries_30d_2880", func() error { _, err := s.CertificateExpiries(ctx, window, 0); return err }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			if err := bc.read(); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if err := bc.read(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestRowCacheAdmission: a row is cached on its second miss, so one pass
// over many rows does not evict the rows read often; a multi-row read of
// more than maxFillPerRead rows fills nothing.
func TestRowCacheAdmission(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, func(c *Config) { c.EncryptionKey = testKey(t) })
	exp := time.Now().UTC().Truncate(time.Second).Add(time.Hour)
	mustUpdate(t, s, func(tx *Tx) error {
		if err := tx.PutPool(samplePool("p")); err != nil {
			return err
		}
		for i := range maxFillPerRead + 1 {
			if err := tx.PutCertificate(sampleCert(fmt.Sprintf("c%04d", i), "x.example.com", exp)); err != nil {
				return err
			}
		}
		return tx.PutBackend(sampleBackend("be", "p"))
	})
	for i, wantEntries := range []int{0, 1, 1} {
		if _, err := s.GetBackend(ctx, "be"); err != nil {
			t.Fatal(err)
		}
		if st := s.CacheStats(); st.Entries != wantEntries {
			t.Fatalf("after read %d: %d entries, want %d", i+1, st.Entries, wantEntries)
		}
	}
	for range 3 {
		cs, err := s.CertificatesExpiringBefore(ctx, exp.Add(time.Second), 0)
		if err != nil || len(cs) != maxFillPerRead+1 {
			t.Fatalf("window: %d %v", len(cs), err)
		}
	}
	if st := s.CacheStats(); st.Entries != 1 || st.Expiries != maxFillPerRead+1 {
		t.Fatalf("a large window filled the cache: %+v", st)
	}
}

// TestRowCacheClosedStore: a closed store answers ErrClosed, cached row
// or not.
func TestRowCacheClosedStore(t *testing.T) {
	ctx := context.Background()
	s, err := Open(testConfig(t, t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	mustUpdate(t, s, func(tx *Tx) error {
		if err := tx.PutPool(samplePool("p")); err != nil {
			return err
		}
		return tx.PutBackend(sampleBackend("be", "p"))
	})
	for range 3 {
		if _, err := s.GetBackend(ctx, "be"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.ListBackendsByPool(ctx, "p", "", 0); err != nil {
			t.Fatal(err)
		}
	}
	if st := s.CacheStats(); st.Entries != 2 {
		t.Fatalf("not cached: %+v", st)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetBackend(ctx, "be"); !errors.Is(err, ErrClosed) {
		t.Fatalf("GetBackend after Close: %v", err)
	}
	if _, err := s.ListBackendsByPool(ctx, "p", "", 0); !errors.Is(err, ErrClosed) {
		t.Fatalf("ListBackendsByPool after Close: %v", err)
	}
}

// TestRowCacheHoldsAThousandBackendPool: under the default budget, the
// list of a pool of 1,000 backends (each with metadata) is cached whole.
func TestRowCacheHoldsAThousandBackendPool(t *testing.T) {
	ctx := context.Background()
	s := openStore(t)
	mustUpdate(t, s, func(tx *Tx) error {
		return tx.PutPool(samplePool("p"))
	})
	mustUpdate(t, s, func(tx *Tx) error {
		for i := range 999 {
			be := sampleBackend(fmt.Sprintf("be-%07d", i), "p")
			be.Metadata = map[string]string{"fly_machine_id": fmt.Sprintf("%014d", i)}
			if err := tx.PutBackend(be); err != nil {
				return err
			}
		}
		return nil
	})
	for range 2 {
		list, err := s.ListBackendsByPool(ctx, "p", "", 0)
		if err != nil || len(list) != 999 {
			t.Fatalf("list: %d %v", len(list), err)
		}
	}
	if st := s.CacheStats(); st.Hits != 1 || st.Entries != 1 {
		t.Fatalf("the pool's list is not cached: %+v", st)
	}
}
