package pools

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/singularity-ng/singularity-edge/storage"
)

func BenchmarkLookup(b *testing.B) {
	tbl := benchTable(10000)
	for _, bc := range []struct{ name, host string }{
		{"exact", "pool-4711.example.com"},
		{"exact_port_upper", "Pool-4711.Example.com:443"},
		{"wildcard", "api.wild-4711.example.com"},
		{"default", "unknown.example.org"},
	} {
		b.Run(bc.name+"/pools=10000", func(b *testing.B) {
			if tbl.Lookup(bc.host) == nil {
				b.Fatal("no pool")
			}
			b.ReportAllocs()
			for b.Loop() {
				tbl.Lookup(bc.host)
			}
		})
	}
}

func benchWeights(n int) []int {
	w := make([]int, n)
	for i := range w {
		w[i] = 1 + i%5
	}
	return w
}

func BenchmarkPick(b *testing.B) {
	for _, algo := range Algorithms() {
		for _, n := range []int{10, 1000} {
			b.Run(fmt.Sprintf("%s/backends=%d", algo, n), func(b *testing.B) {
				p := testTableWith(storage.Pool{Name: "p", Algorithm: algo}, TableOptions{}, benchWeights(n)...).Pool("p")
				req := PickRequest{ClientIP: netip.MustParseAddr("192.0.2.10")}
				b.ReportAllocs()
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						bk, err := p.Pick(req)
						if err != nil {
							b.Error(err)
							return
						}
						bk.Begin().End(Result{Status: 200})
					}
				})
			})
		}
	}
}

func BenchmarkPickSequential(b *testing.B) {
	for _, algo := range Algorithms() {
		b.Run(algo+"/backends=10", func(b *testing.B) {
			p := testTableWith(storage.Pool{Name: "p", Algorithm: algo}, TableOptions{}, benchWeights(10)...).Pool("p")
			req := PickRequest{ClientIP: netip.MustParseAddr("192.0.2.10")}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := p.Pick(req); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkPickHalfUnhealthy(b *testing.B) {
	for _, algo := range Algorithms() {
		b.Run(algo+"/backends=1000", func(b *testing.B) {
			p := testTableWith(storage.Pool{Name: "p", Algorithm: algo}, TableOptions{}, benchWeights(1000)...).Pool("p")
			for i, bk := range p.Backends() {
				if i%2 == 0 {
					bk.live.healthy.Store(false)
				}
			}
			req := PickRequest{ClientIP: netip.MustParseAddr("192.0.2.10")}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := p.Pick(req); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkSticky(b *testing.B) {
	p := testTableWith(storage.Pool{Name: "p", StickyCookie: "s"}, TableOptions{CookieKey: []byte("key")}, benchWeights(100)...).Pool("p")
	value := p.StickyValue(p.Backends()[42])
	b.ReportAllocs()
	for b.Loop() {
		id, ok := p.VerifySticky(value)
		if !ok {
			b.Fatal("not verified")
		}
		if _, err := p.Pick(PickRequest{StickyID: id}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkBeginEnd(b *testing.B) {
	p := testPool(b, storage.Pool{HealthCheck: storage.HealthCheck{MaxFails: 3}}, 1)
	bk := p.Backends()[0]
	b.Run("sequential", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			bk.Begin().End(Result{Status: 200, BytesIn: 512, BytesOut: 128})
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				bk.Begin().End(Result{Status: 200, BytesIn: 512, BytesOut: 128})
			}
		})
	})
}

func BenchmarkNewTable(b *testing.B) {
	pools := make([]storage.Pool, 0, 1000)
	backends := make([]storage.Backend, 0, 10000)
	for i := range 1000 {
		name := fmt.Sprintf("pool-%d", i)
		pools = append(pools, storage.Pool{Name: name, SSLDomain: name + ".example.com"})
		for j := range 10 {
			backends = append(backends, storage.Backend{ID: fmt.Sprintf("b-%d-%d", i, j), PoolName: name, Host: "10.0.0.1", Port: 8000 + j})
		}
	}
	b.ReportAllocs()
	for b.Loop() {
		NewTable(pools, backends, nil, TableOptions{CookieKey: []byte("k")})
	}
}

// BenchmarkBuildMaglev is the cost a consistent_hash pool adds to a table
// build when its backends changed (unchanged pools share the old table).
func BenchmarkBuildMaglev(b *testing.B) {
	for _, n := range []int{10, 100, 1000} {
		b.Run(fmt.Sprintf("backends=%d", n), func(b *testing.B) {
			p := testTableWith(storage.Pool{Name: "p", Algorithm: AlgorithmConsistentHash}, TableOptions{}, benchWeights(n)...).Pool("p")
			b.ReportAllocs()
			for b.Loop() {
				buildMaglev(p.all.backends)
			}
		})
	}
}

// BenchmarkFindBackend is what the Manager pays per backend change in the
// feed to find the pool the backend is in (10 pools of 4,000 backends, as
// in the cluster benchmark): a search of every pool (Table.Backend) against
// the id index, for a backend new to the table and for one in the last
// pool.
func BenchmarkFindBackend(b *testing.B) {
	ps, bs := scaleRows(10, 4000)
	t := NewTable(ps, bs, nil, TableOptions{CookieKey: []byte("k")})
	x := newBackendIndex()
	x.update(EmptyTable(), t, nil)
	for _, c := range []struct{ name, id string }{{"new", "p0005-b9999"}, {"present", "p0009-b1234"}} {
		b.Run("scan/"+c.name, func(b *testing.B) {
			for b.Loop() {
				t.Backend(c.id)
			}
		})
		b.Run("index/"+c.name, func(b *testing.B) {
			for b.Loop() {
				x.lookup(t, c.id)
			}
		})
	}
}

// BenchmarkPatchPool patches 8 new backends into a pool of 4,000, about
// what each rebuild does to each pool in the cluster benchmark.
func BenchmarkPatchPool(b *testing.B) {
	ps, bs := scaleRows(1, 4000)
	t := NewTable(ps, bs, nil, TableOptions{CookieKey: []byte("k")})
	prev := t.Pool(ps[0].Name)
	sp := ps[0]
	if err := testPoolRow(&sp); err != nil {
		b.Fatal(err)
	}
	var changes []backendChange
	for i := range 8 {
		row := storage.Backend{ID: fmt.Sprintf("p0000-b%04d-new", i*500), PoolName: sp.Name, Host: "127.9.0.1", Port: 9, Weight: 1}
		changes = append(changes, backendChange{id: row.ID, row: &row})
	}
	state := func(_, addr string, sp *storage.Pool) *backendState { return newBackendState(addr, sp.HoldNewBackends) }
	b.ReportAllocs()
	for b.Loop() {
		patchPool(prev, &sp, changes, "", []byte("k"), state)
	}
}

// BenchmarkPersistFewActive is one observation persist of a Manager with
// 40,000 backends (10 pools) of which 10 had a request since the last one:
// the cost that grows with the backends is what persist spends finding
// the 10.
func BenchmarkPersistFewActive(b *testing.B) {
	cfg := storage.DefaultConfig()
	cfg.Dir = b.TempDir()
	cfg.NodeID = "node-a"
	cfg.SyncWAL = false
	cfg.ObservationMinInterval = -1
	st, err := storage.Open(cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	ps, bs := scaleRows(10, 4000)
	if _, err := st.Update(ctx, func(tx *storage.Tx) error {
		for i := range ps {
			ps[i].HealthCheckInterval = time.Hour
			if err := testPoolRow(&ps[i]); err != nil {
				return err
			}
			if err := tx.PutPool(&ps[i]); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		b.Fatal(err)
	}
	for i := 0; i < len(bs); i += 1000 {
		if _, err := st.Update(ctx, func(tx *storage.Tx) error {
			for j := i; j < min(i+1000, len(bs)); j++ {
				if err := tx.PutBackend(&bs[j]); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			b.Fatal(err)
		}
	}
	mcfg := DefaultConfig()
	mcfg.NodeID = st.NodeID()
	mcfg.ObservationInterval = time.Hour
	mcfg.Health = HealthSchedule{Budget: 0.001} // no checks to speak of during the benchmark
	m := NewManager(mcfg, st)
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- m.Run(runCtx) }()
	defer func() {
		cancel()
		<-done
	}()
	select {
	case <-m.Ready():
	case err := <-done:
		b.Fatal(err)
	}
	var all []*Backend
	for _, p := range m.Table().Pools() {
		all = append(all, p.Backends()...)
	}
	if len(all) != len(bs) {
		b.Fatalf("%d backends in the table, want %d", len(all), len(bs))
	}
	next := 0
	for b.Loop() {
		b.StopTimer()
		for range 10 {
			all[next%len(all)].Begin().End(Result{Status: 200})
			next += 397
		}
		b.StartTimer()
		if err := m.persist(ctx); err != nil {
			b.Fatal(err)
		}
	}
}
