package pools

import (
	"context"
	"fmt"
	"hash/maphash"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/singularity-ng/singularity-edge/storage"
)

// countingSource counts the pool re-reads of a rebuild.
type countingSource struct {
	*storage.Store
	byPool atomic.Int64
}

func (s *countingSource) ListBackendsByPool(ctx context.Context, pool, after string, limit int) ([]storage.Backend, error) {
	s.byPool.Add(1)
	return s.Store.ListBackendsByPool(ctx, pool, after, limit)
}

// TestManagerPatchesMatchFullBuild drives random backend changes (adds,
// weight, address, region and scheme changes, moves between pools,
// deletes) through the change feed and checks, after each round, that the
// patched table and health targets are exactly what a build from the
// store's rows gives, and that rounds of backend changes only never
// re-read a pool from the store.
func TestManagerPatchesMatchFullBuild(t *testing.T) {
	t.Run("hashed", func(t *testing.T) { testPatchesMatchFullBuild(t, nil) })
	// Every id in one of four hashes: the index's entries for ids of
	// several pools that share a hash are exercised on every change.
	t.Run("colliding", func(t *testing.T) {
		testPatchesMatchFullBuild(t, func(_ maphash.Seed, id string) uint64 { return uint64(len(id) % 4) })
	})
}

func testPatchesMatchFullBuild(t *testing.T, hash func(maphash.Seed, string) uint64) {
	st := openStore(t, t.TempDir())
	pools := []storage.Pool{
		{Name: "rr", Hosts: []string{"rr.example.com"}, HealthCheckInterval: time.Hour},
		{Name: "sticky", Hosts: []string{"sticky.example.com"}, StickyCookie: "edge", PreferRegion: true,
			HealthCheckInterval: time.Hour, HealthCheck: storage.HealthCheck{Fall: 4}},
		{Name: "hash", Hosts: []string{"hash.example.com"}, Algorithm: AlgorithmConsistentHash, HashOn: "client_ip",
			HealthCheckInterval: time.Hour},
		{Name: "wrr", Hosts: []string{"wrr.example.com"}, Algorithm: AlgorithmWeightedRoundRobin, SSLMode: SSLModeFull,
			HealthCheckInterval: 30 * time.Minute},
	}
	for _, p := range pools {
		putPool(t, st, p)
	}
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rnd := rand.New(rand.NewPCG(seed, 1))
	live := map[string]storage.Backend{}
	nextID := 0
	randomBackend := func(id string) storage.Backend {
		return storage.Backend{ID: id, PoolName: pools[rnd.IntN(len(pools))].Name,
			// Few addresses, so that backends share health targets.
			Host: fmt.Sprintf("127.0.0.%d", 1+rnd.IntN(6)), Port: 1 + rnd.IntN(3),
			Weight: 1 + rnd.IntN(3), Region: []string{"iad", "ams"}[rnd.IntN(2)],
			Scheme: []string{"http", "https"}[rnd.IntN(2)], SSLVerify: rnd.IntN(2) == 0}
	}
	put := func(b storage.Backend) {
		if err := testBackendRow(&b); err != nil {
			t.Fatalf("testBackendRow: %v", err)
		}
		putBackend(t, st, b)
		live[b.ID] = b
	}
	for range 40 {
		nextID++
		put(randomBackend(fmt.Sprintf("b%03d", nextID)))
	}

	src := &countingSource{Store: st}
	m := NewManager(testManagerConfig(t, st, nil), src)
	if hash != nil {
		m.index.hash = hash
	}
	runManager(t, m)

	for round := range 30 {
		reads := src.byPool.Load()
		for range 1 + rnd.IntN(12) {
			ids := make([]string, 0, len(live))
			for id := range live {
				ids = append(ids, id)
			}
			slices.Sort(ids)
			switch op := rnd.IntN(6); {
			case op == 0 || len(ids) == 0:
				nextID++
				put(randomBackend(fmt.Sprintf("b%03d", nextID)))
			case op == 1:
				id := ids[rnd.IntN(len(ids))]
				update(t, st, func(tx *storage.Tx) error { return tx.DeleteBackend(id) })
				delete(live, id)
			default: // change a row: any field, the pool included
				b := randomBackend(ids[rnd.IntN(len(ids))])
				old := live[b.ID]
				switch rnd.IntN(3) {
				case 0: // only the weight
					b = old
					b.Weight = 1 + (old.Weight % 3)
				case 1: // same pool, other fields random
					b.PoolName = old.PoolName
				}
				put(b)
			}
		}
		want := func() *Table {
			var bs []storage.Backend
			for _, b := range live {
				bs = append(bs, b)
			}
			var ps []storage.Pool
			for _, p := range pools {
				if err := testPoolRow(&p); err != nil {
					t.Fatal(err)
				}
				ps = append(ps, p)
			}
			return NewTable(ps, bs, nil, TableOptions{Region: "iad", CookieKey: testManagerConfig(t, st, nil).CookieKey})
		}()
		// The table is swapped in before the health checks are
		// reconciled with it: wait for both.
		var diff string
		deadline := time.Now().Add(10 * time.Second)
		for {
			tbl := m.Table()
			if diff = tableDiff(tbl, want); diff == "" {
				m.health.mu.Lock()
				reconciled := m.health.last == tbl
				m.health.mu.Unlock()
				if !reconciled {
					diff = "health checks not reconciled with the table"
				} else if d := targetsDiff(m.health, tbl); d != "" {
					diff = "health targets differ from a fresh reconcile: " + d
				} else if d := indexDiff(&m.index, tbl); d != "" {
					diff = "backend index differs from the table's: " + d
				}
			}
			if diff == "" || time.Now().After(deadline) {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		if diff != "" {
			t.Fatalf("round %d: the manager's table differs from a full build: %s", round, diff)
		}
		if n := src.byPool.Load() - reads; n != 0 {
			t.Fatalf("round %d: %d pool re-reads from the store for backend changes", round, n)
		}
	}
}

// tableDiff describes how got's pools differ from want's, "" if they do
// not.
func tableDiff(got, want *Table) string {
	if len(got.pools) != len(want.pools) {
		return fmt.Sprintf("%d pools, want %d", len(got.pools), len(want.pools))
	}
	for i, wp := range want.pools {
		gp := got.pools[i]
		if gp.Name != wp.Name {
			return fmt.Sprintf("pool %d is %q, want %q", i, gp.Name, wp.Name)
		}
		if g, w := describeBackends(gp, gp.backends), describeBackends(wp, wp.backends); g != w {
			return fmt.Sprintf("pool %s backends:\n got %s\nwant %s", gp.Name, g, w)
		}
		if g, w := describeBackends(gp, groupOf(gp.local)), describeBackends(wp, groupOf(wp.local)); g != w {
			return fmt.Sprintf("pool %s local group:\n got %s\nwant %s", gp.Name, g, w)
		}
		if !slices.Equal(gp.all.maglev, wp.all.maglev) {
			return fmt.Sprintf("pool %s: maglev tables differ", gp.Name)
		}
		if len(gp.all.wrrCur) != len(gp.backends) && gp.algo == algoWeightedRoundRobin {
			return fmt.Sprintf("pool %s: %d weighted round-robin counters for %d backends", gp.Name, len(gp.all.wrrCur), len(gp.backends))
		}
		if len(gp.stickyByValue) != len(wp.stickyByValue) {
			return fmt.Sprintf("pool %s: %d sticky values, want %d", gp.Name, len(gp.stickyByValue), len(wp.stickyByValue))
		}
		for _, b := range gp.backends {
			if b.hc != gp.health {
				return fmt.Sprintf("pool %s: backend %s has another pool's health settings", gp.Name, b.ID)
			}
			if b.live.pool.Load() != gp.state {
				return fmt.Sprintf("pool %s: backend %s reports to another pool's state", gp.Name, b.ID)
			}
		}
	}
	return ""
}

func groupOf(g *group) []*Backend {
	if g == nil {
		return nil
	}
	return g.backends
}

func describeBackends(p *Pool, bs []*Backend) string {
	var sb strings.Builder
	for _, b := range bs {
		fmt.Fprintf(&sb, "%s@%s/%s/w%d/%s/%s/%v/tls=%s/sticky=%s ", b.ID, b.Addr, b.Host, b.Weight, b.Region, b.Scheme,
			b.SSLVerify, b.TLS().Key(), p.StickyValue(b))
		if got, ok := p.VerifySticky(p.StickyValue(b)); p.stickyCookie != "" && (!ok || got != b.ID) {
			fmt.Fprintf(&sb, "(sticky value does not resolve) ")
		}
	}
	return sb.String()
}

// targetsDiff compares s's targets with those a new scheduler reconciles
// from t, and checks that every subscription is to a backend of t and is
// listed under its pool.
func targetsDiff(s *healthScheduler, t *Table) string {
	fresh := newHealthScheduler(s.cfg, nil, nil)
	fresh.reconcile(t, nil, nil, true, time.Now())
	describe := func(s *healthScheduler) (map[string]string, string) {
		s.mu.Lock()
		defer s.mu.Unlock()
		kinds := make(map[uint32]probeKind, len(s.kinds))
		for k, id := range s.kinds {
			kinds[id] = k
		}
		out := map[string]string{}
		listed := map[*target]map[*healthConfig]bool{}
		for p, tgs := range s.byPool {
			for _, tg := range tgs {
				if listed[tg] == nil {
					listed[tg] = map[*healthConfig]bool{}
				}
				listed[tg][p.health] = true
			}
		}
		for _, head := range s.targets.m {
			for tg := head; tg != nil; tg = tg.next {
				var subs []string
				for _, sub := range tg.subs {
					if p := t.Pool(sub.b.PoolName); p == nil || p.Backend(sub.b.ID) != sub.b {
						return nil, fmt.Sprintf("target %s: subscriber %s is not the table's backend", tg.key.addr, sub.b.ID)
					}
					if !listed[tg][sub.hc()] {
						return nil, fmt.Sprintf("target %s: not listed under pool %s", tg.key.addr, sub.b.PoolName)
					}
					subs = append(subs, sub.b.ID)
				}
				slices.Sort(subs)
				if tg.removed || len(subs) == 0 {
					return nil, fmt.Sprintf("target %s: indexed with %d subscribers, removed %v", tg.key.addr, len(subs), tg.removed)
				}
				out[fmt.Sprintf("%s %+v", tg.key.addr, kinds[tg.key.kind])] = fmt.Sprintf("%v fall=%d", subs, tg.fall)
			}
		}
		if len(out) != s.targets.len() {
			return nil, fmt.Sprintf("%d targets indexed, count says %d", len(out), s.targets.len())
		}
		return out, ""
	}
	got, bad := describe(s)
	if bad != "" {
		return bad
	}
	want, _ := describe(fresh)
	for k, w := range want {
		if g := got[k]; g != w {
			return fmt.Sprintf("target %s: got %q, want %q", k, g, w)
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok {
			return fmt.Sprintf("extra target %s: %q", k, g)
		}
	}
	return ""
}

// TestManagerReadsBulkChangesFromStore: a pool with more staged changes
// than maxPending is read afresh from the store instead of holding every
// row until the rebuild, and ends up the same.
func TestManagerReadsBulkChangesFromStore(t *testing.T) {
	st := openStore(t, t.TempDir())
	putPool(t, st, storage.Pool{Name: "bulk", Hosts: []string{"bulk.example.com"}, HealthCheckInterval: time.Hour})
	putBackend(t, st, storage.Backend{ID: "first", PoolName: "bulk", Host: "127.0.0.1", Port: 1})
	src := &countingSource{Store: st}
	cfg := testManagerConfig(t, st, nil)
	cfg.RebuildDelay = 5 * time.Second // every transaction below before the rebuild
	m := NewManager(cfg, src)
	runManager(t, m)
	reads := src.byPool.Load()

	n := maxPending + 10
	for i := 0; i < n; i += 1000 {
		update(t, st, func(tx *storage.Tx) error {
			for j := i; j < min(i+1000, n); j++ {
				b := storage.Backend{ID: fmt.Sprintf("bulk-%05d", j), PoolName: "bulk", Host: "127.0.0.2", Port: 1 + j%1000}
				if err := testBackendRow(&b); err != nil {
					return err
				}
				if err := tx.PutBackend(&b); err != nil {
					return err
				}
			}
			return nil
		})
	}
	waitFor(t, 20*time.Second, "the bulk load in the table", func() bool { return len(m.Table().Pool("bulk").Backends()) == n+1 })
	if src.byPool.Load() == reads {
		t.Error("a bulk change was patched from staged rows instead of read from the store")
	}
	// The rebuild publishes the table before it reconciles the health
	// targets: on a loaded machine the wait above can see the table
	// first, so the targets are given the same wait.
	deadline := time.Now().Add(20 * time.Second)
	for d := targetsDiff(m.health, m.Table()); d != ""; d = targetsDiff(m.health, m.Table()) {
		if time.Now().After(deadline) {
			t.Fatal(d)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// indexDiff compares x with an index built afresh from t (entry by entry,
// pools by name), checks that every backend of t is found where it is and
// that an id of no backend is not; "" if all holds.
func indexDiff(x *backendIndex, t *Table) string {
	fresh := newBackendIndex()
	fresh.seed, fresh.hash = x.seed, x.hash
	fresh.update(EmptyTable(), t, nil)
	describe := func(x *backendIndex) (map[uint64]map[string]uint32, string) {
		out := map[uint64]map[string]uint32{}
		sizes := map[string]int{}
		for h, v := range x.m {
			counts := map[string]uint32{}
			if slot := uint32(v >> 32); slot != manySlots {
				counts[x.names[slot]] = uint32(v)
			} else {
				if len(x.over[h]) < 2 {
					return nil, fmt.Sprintf("hash %x marked as in several pools, has %d", h, len(x.over[h]))
				}
				for slot, n := range x.over[h] {
					counts[x.names[slot]] = n
				}
			}
			for name, n := range counts {
				if name == "" || n == 0 {
					return nil, fmt.Sprintf("hash %x: %d backends in pool %q", h, n, name)
				}
				sizes[name] += int(n)
			}
			out[h] = counts
		}
		for h := range x.over {
			if v, ok := x.m[h]; !ok || uint32(v>>32) != manySlots {
				return nil, fmt.Sprintf("hash %x in over without its mark", h)
			}
		}
		for name, slot := range x.slots {
			if x.names[slot] != name || x.sizes[slot] != sizes[name] {
				return nil, fmt.Sprintf("pool %s: slot %d names %q, size %d, has %d", name, slot, x.names[slot], x.sizes[slot], sizes[name])
			}
		}
		if len(x.slots) != len(sizes) {
			return nil, fmt.Sprintf("%d pools with slots, %d with backends", len(x.slots), len(sizes))
		}
		return out, ""
	}
	got, bad := describe(x)
	if bad != "" {
		return bad
	}
	want, _ := describe(&fresh)
	if len(got) != len(want) {
		return fmt.Sprintf("%d hashes, want %d", len(got), len(want))
	}
	for h, w := range want {
		if g := got[h]; !maps.Equal(g, w) {
			return fmt.Sprintf("hash %x: %v, want %v", h, g, w)
		}
	}
	for _, p := range t.pools {
		for _, b := range p.backends {
			if f := x.lookup(t, b.ID); f == nil || f.PoolName > p.Name {
				return fmt.Sprintf("backend %s of pool %s not found (found %v)", b.ID, p.Name, f)
			}
		}
	}
	if f := x.lookup(t, "no-such-backend"); f != nil {
		return fmt.Sprintf("found a backend that is not there: %s", f.ID)
	}
	return ""
}
