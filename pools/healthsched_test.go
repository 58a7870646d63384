package pools

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/singularity-ng/singularity-edge/storage"
)

var errRefused = errors.New("connection refused")

// schedTable is pools x perPool backends, each at its own address unless
// shared, checked every interval with fall 2.
func schedTable(pools, perPool int, interval time.Duration, shared bool) *Table {
	var ps []storage.Pool
	var bs []storage.Backend
	for p := range pools {
		name := fmt.Sprintf("p%d", p)
		ps = append(ps, storage.Pool{Name: name, HealthCheckInterval: interval,
			HealthCheck: storage.HealthCheck{Type: "tcp", Timeout: interval / 2, Rise: 1, Fall: 2}})
		for b := range perPool {
			host := fmt.Sprintf("10.%d.%d.%d", p, b>>8, b&0xff)
			if shared {
				host = "10.0.0.1"
			}
			bs = append(bs, storage.Backend{ID: fmt.Sprintf("%s-b%d", name, b), PoolName: name, Host: host, Port: 80})
		}
	}
	return NewTable(ps, bs, nil, TableOptions{})
}

func TestHealthBudgetNeverExceeded(t *testing.T) {
	const budget, burst = 100, 10
	for _, tc := range []struct {
		name    string
		targets int
	}{
		{"more targets than the budget covers", 10_000},
		{"fewer targets than the budget", 50},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newHealthScheduler(HealthSchedule{Budget: budget, Burst: burst, Concurrency: 1000}, nil, nil)
			now := time.Unix(1_700_000_000, 0)
			s.reconcile(schedTable(10, tc.targets/10, time.Second, false), nil, nil, true, now)
			var starts []time.Time
			// 20 s in 5 ms ticks; every probe fails at once.
			for range 4000 {
				started, _ := s.next(now)
				for _, tg := range started {
					starts = append(starts, now)
					s.done(tg, errRefused, now)
				}
				now = now.Add(5 * time.Millisecond)
			}
			// Any one-second window holds at most budget+burst starts.
			for i, j := 0, 0; i < len(starts); i++ {
				for starts[i].Sub(starts[j]) >= time.Second {
					j++
				}
				if n := i - j + 1; n > budget+burst {
					t.Fatalf("%d checks started within one second at %s, budget %d + burst %d", n, starts[i], budget, burst)
				}
			}
			if tc.targets > budget && len(starts) < budget*15 {
				t.Errorf("only %d checks in 20 s with a budget of %d/s and work waiting", len(starts), budget)
			}
		})
	}
}

func TestHealthConcurrencyBound(t *testing.T) {
	s := newHealthScheduler(HealthSchedule{Budget: 1e6, Burst: 1e6, Concurrency: 7}, nil, nil)
	now := time.Unix(1_700_000_000, 0)
	s.reconcile(schedTable(1, 100, time.Second, false), nil, nil, false, now)
	started, _ := s.next(now)
	if len(started) != 7 {
		t.Fatalf("%d checks started, concurrency 7", len(started))
	}
	if more, _ := s.next(now.Add(time.Minute)); len(more) != 0 {
		t.Fatalf("%d more started while 7 are in flight", len(more))
	}
	s.done(started[0], nil, now)
	if more, _ := s.next(now); len(more) != 1 {
		t.Fatalf("%d started after one finished, want 1", len(more))
	}
}

func TestHealthSharedAddressCheckedOnce(t *testing.T) {
	tbl := schedTable(3, 4, time.Second, true) // 12 backends, one address
	s := newHealthScheduler(HealthSchedule{Budget: 1e6, Burst: 1e6}, nil, nil)
	now := time.Unix(1_700_000_000, 0)
	s.reconcile(tbl, nil, nil, false, now)
	if n := s.targetCount(); n != 1 {
		t.Fatalf("%d targets for 12 backends at one address", n)
	}
	started, _ := s.next(now)
	if len(started) != 1 {
		t.Fatalf("%d probes started, want 1", len(started))
	}
	for range 2 { // fall 2
		s.apply(s.done(started[0], errRefused, now), started[0].key.addr, errRefused, now)
	}
	for _, p := range tbl.pools {
		for _, b := range p.backends {
			if b.Healthy() || b.State().ChecksFailed != 2 {
				t.Errorf("%s: healthy %v after the shared probe failed twice (%d failures recorded)", b.ID, b.Healthy(), b.State().ChecksFailed)
			}
		}
	}
}

func TestHealthBacksOffWhileDown(t *testing.T) {
	s := newHealthScheduler(HealthSchedule{Budget: 1e6, Burst: 1e6, MaxDownInterval: 8 * time.Second, Jitter: 1e-9}, nil, nil)
	now := time.Unix(1_700_000_000, 0)
	s.reconcile(schedTable(1, 1, time.Second, false), nil, nil, false, now)
	var gaps []time.Duration
	results := []error{errRefused, errRefused, errRefused, errRefused, errRefused, errRefused, errRefused, nil, nil}
	for _, res := range results {
		started, wait := s.next(now)
		if len(started) == 0 {
			now = now.Add(wait)
			started, _ = s.next(now)
		}
		if len(started) != 1 {
			t.Fatalf("no check due at %s", now)
		}
		s.done(started[0], res, now)
		gaps = append(gaps, started[0].dueTime().Sub(now).Round(time.Second))
	}
	// fall 2: two failures at the interval, then doubling up to the cap;
	// a pass goes back to the interval.
	want := []time.Duration{1, 1, 2, 4, 8, 8, 8, 1, 1}
	for i := range want {
		if gaps[i] != want[i]*time.Second {
			t.Fatalf("intervals %v, want %v seconds", gaps, want)
		}
	}
}

func TestHealthInitialChecksSpread(t *testing.T) {
	s := newHealthScheduler(HealthSchedule{}, nil, nil)
	now := time.Unix(1_700_000_000, 0)
	s.reconcile(schedTable(1, 1000, 10*time.Second, false), nil, nil, true, now)
	seconds := map[int64]int{}
	for _, tg := range s.queue {
		off := tg.dueTime().Sub(now)
		if off < 0 || off >= 10*time.Second {
			t.Fatalf("first check due %s after start, interval 10s", off)
		}
		seconds[int64(off/time.Second)]++
	}
	if len(seconds) != 10 {
		t.Errorf("first checks fall in %d of the 10 seconds of the interval: %v", len(seconds), seconds)
	}
}

func TestHealthRemovedTargetsStop(t *testing.T) {
	s := newHealthScheduler(HealthSchedule{Budget: 1e6, Burst: 1e6}, nil, nil)
	now := time.Unix(1_700_000_000, 0)
	s.reconcile(schedTable(2, 10, time.Second, false), nil, nil, false, now)
	started, _ := s.next(now)
	s.reconcile(schedTable(1, 10, time.Second, false), nil, nil, false, now) // p1 deleted
	if n := s.targetCount(); n != 10 {
		t.Fatalf("%d targets after deleting a pool, want 10", n)
	}
	for _, tg := range started {
		s.done(tg, nil, now)
	}
	if n := len(s.queue); n != 10 {
		t.Errorf("%d targets queued after the deleted pool's checks ended, want 10", n)
	}
}

func TestBackendSeriesCapped(t *testing.T) {
	tbl := schedTable(3, 10, time.Second, false)
	c := newCollector(func() *Table { return tbl }, func() int64 { return 0 },
		MetricsConfig{BackendPools: []string{"*"}, MaxBackends: 12})
	c.forget(tbl)
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	g := gather(t, reg)
	if n := len(g["singularity_edge_backend_up"]); n != 12 {
		t.Errorf("%d backend_up series, cap 12", n)
	}
	if v, _ := g.value("singularity_edge_metrics_backends_omitted"); v != 18 {
		t.Errorf("omitted = %v, want 18", v)
	}
	// Pool-level series stay whatever the cap.
	if n := len(g["singularity_edge_pool_backends"]); n != 9 {
		t.Errorf("%d pool_backends series, want 3 pools x 3 states", n)
	}
	// Opting out removes the backends' histograms too.
	c.cfg.BackendPools = nil
	c.forget(tbl)
	for _, p := range tbl.pools {
		for _, b := range p.backends {
			if b.live.hist.Load() != nil {
				t.Fatalf("%s keeps a histogram after its pool opted out", b.ID)
			}
		}
	}
	if len(c.backendKids) != 0 {
		t.Errorf("%d backend histogram children left", len(c.backendKids))
	}
}

func TestHealthReconcileTouchesOnlyChangedPools(t *testing.T) {
	pools := []storage.Pool{
		{Name: "a", HealthCheckInterval: time.Second, HealthCheck: storage.HealthCheck{Fall: 2, Timeout: 500 * time.Millisecond}},
		{Name: "b", HealthCheckInterval: 3 * time.Second, HealthCheck: storage.HealthCheck{Fall: 5, Timeout: 500 * time.Millisecond}},
	}
	shared := func(id, pool string) storage.Backend {
		return storage.Backend{ID: id, PoolName: pool, Host: "10.0.0.1", Port: 80}
	}
	states := func(string, string, *storage.Pool) *backendState { return newBackendState("10.0.0.1:80", false) }
	first := buildTable(pools, []storage.Backend{shared("a1", "a"), shared("b1", "b")}, TableOptions{}, nil, states)
	s := newHealthScheduler(HealthSchedule{}, nil, nil)
	now := time.Unix(1_700_000_000, 0)
	s.reconcile(first, nil, nil, false, now)
	if n := s.targetCount(); n != 1 {
		t.Fatalf("%d targets for one shared address", n)
	}
	tg := s.targets.get(s.keyOf(first.Pool("a").Backends()[0], first.Pool("a").health))
	if tg.interval() != time.Second || tg.fall != 5 || len(tg.subs) != 2 {
		t.Fatalf("shared target: interval %s, fall %d, %d subscribers", tg.interval(), tg.fall, len(tg.subs))
	}
	// Pool a rebuilt (its backend left), b carried over.
	second := rebuildTable(pools[1:], map[string][]storage.Backend{}, TableOptions{}, first, states)
	if second.Pool("b") != first.Pool("b") {
		t.Fatal("pool b not carried over")
	}
	s.reconcile(second, nil, nil, false, now)
	if n := s.targetCount(); n != 1 || len(tg.subs) != 1 || tg.subs[0].b.ID != "b1" {
		t.Fatalf("after removing pool a: %d targets, subscribers %v", n, tg.subs)
	}
	if tg.interval() != 3*time.Second || tg.fall != 5 {
		t.Errorf("target keeps pool a's settings: interval %s, fall %d", tg.interval(), tg.fall)
	}
	s.reconcile(EmptyTable(), nil, nil, false, now)
	if n := s.targetCount(); n != 0 || len(s.queue) != 0 || len(s.byPool) != 0 {
		t.Errorf("empty table leaves %d targets, %d queued, %d pools", n, len(s.queue), len(s.byPool))
	}
}

// Targets whose keys share a hash are told apart by their keys, and each
// can be removed without losing the others.
func TestTargetIndexCollisions(t *testing.T) {
	x := newTargetIndex(0)
	keys := []targetKey{{addr: "10.0.0.1:80"}, {addr: "10.0.0.2:80"}, {addr: "10.0.0.1:80", kind: 1}, {addr: "10.0.0.3:80"}}
	const h = 42 // one hash for all: a chain of four
	tgs := make([]*target, len(keys))
	for i, k := range keys {
		tgs[i] = &target{key: k}
		x.addHashed(h, tgs[i])
	}
	for i, k := range keys {
		if got := x.getHashed(h, k); got != tgs[i] {
			t.Fatalf("get %v: %p, want %p", k, got, tgs[i])
		}
	}
	for _, i := range []int{1, 3, 0} { // middle, head, tail of the chain
		x.removeHashed(h, tgs[i])
		if x.getHashed(h, keys[i]) != nil {
			t.Fatalf("%v still found after remove", keys[i])
		}
		x.removeHashed(h, tgs[i]) // twice: a no-op
	}
	if got := x.getHashed(h, keys[2]); got != tgs[2] || x.len() != 1 {
		t.Fatalf("survivor: %p (want %p), len %d", got, tgs[2], x.len())
	}
	x.removeHashed(h, tgs[2])
	if x.len() != 0 || len(x.m) != 0 {
		t.Fatalf("empty index: len %d, %d map entries", x.len(), len(x.m))
	}
	// Through the real hash.
	for i := range tgs {
		x.add(tgs[i])
	}
	for i, k := range keys {
		if x.get(k) != tgs[i] {
			t.Fatalf("get %v after add", k)
		}
	}
}

// Backends imported without the admin API's address check can all sit at
// one address: their target is shared by every one of them, and
// subscribing them costs one step each, not a pass over the others (that
// was n² steps: a 100,000-backend pool kept the manager busy for minutes
// and its shutdown waiting).
func TestHealthReconcileOneAddressManyBackends(t *testing.T) {
	const n = 100_000
	pools := []storage.Pool{{Name: "big", HealthCheckInterval: time.Hour, HealthCheck: storage.HealthCheck{Fall: 3, Timeout: time.Second}}}
	bs := make([]storage.Backend, n)
	for i := range bs {
		bs[i] = storage.Backend{ID: fmt.Sprintf("b%06d", i), PoolName: "big", Host: "127.0.0.1", Port: 9}
	}
	states := func(_, addr string, _ *storage.Pool) *backendState { return newBackendState(addr, false) }
	tbl := buildTable(pools, bs, TableOptions{}, nil, states)
	s := newHealthScheduler(HealthSchedule{}, nil, nil)
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.reconcile(tbl, nil, nil, true, time.Now())
	}()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("reconcile of one shared address did not finish in a minute")
	}
	tg := s.targets.get(s.keyOf(tbl.Pool("big").Backends()[0], tbl.Pool("big").health))
	if s.targetCount() != 1 || len(tg.subs) != n || tg.fall != 3 {
		t.Fatalf("%d targets; shared target: %d subscribers, fall %d", s.targetCount(), len(tg.subs), tg.fall)
	}
}
