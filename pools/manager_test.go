package pools

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap/zaptest"

	"github.com/singularity-ng/singularity-edge/storage"
)

// Compile-time proof that the store satisfies the consumer interface.
var _ Source = (*storage.Store)(nil)

func openStore(t *testing.T, dir string) *storage.Store {
	t.Helper()
	cfg := storage.DefaultConfig()
	cfg.Dir = dir
	cfg.NodeID = "node-a"
	cfg.SyncWAL = false
	st, err := storage.Open(cfg)
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	// Registered before any manager's cleanup, so it runs after it.
	t.Cleanup(func() { _ = st.Close() })
	return st
}

func putPool(t *testing.T, st *storage.Store, p storage.Pool) {
	t.Helper()
	if err := testPoolRow(&p); err != nil {
		t.Fatalf("testPoolRow: %v", err)
	}
	if _, err := st.Update(context.Background(), func(tx *storage.Tx) error { return tx.PutPool(&p) }); err != nil {
		t.Fatalf("put pool: %v", err)
	}
}

func putBackend(t *testing.T, st *storage.Store, b storage.Backend) {
	t.Helper()
	if err := testBackendRow(&b); err != nil {
		t.Fatalf("testBackendRow: %v", err)
	}
	if _, err := st.Update(context.Background(), func(tx *storage.Tx) error { return tx.PutBackend(&b) }); err != nil {
		t.Fatalf("put backend: %v", err)
	}
}

func update(t *testing.T, st *storage.Store, fn func(tx *storage.Tx) error) {
	t.Helper()
	if _, err := st.Update(context.Background(), fn); err != nil {
		t.Fatalf("update: %v", err)
	}
}

// runManager starts m.Run and returns a stop function that cancels it and
// returns Run's error.
func runManager(t *testing.T, m *Manager) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- m.Run(ctx) }()
	select {
	case <-m.Ready():
	case err := <-errc:
		cancel()
		t.Fatalf("Run ended before ready: %v", err)
	case <-time.After(10 * time.Second):
		cancel()
		t.Fatal("manager not ready after 10s")
	}
	var once sync.Once
	var runErr error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case runErr = <-errc:
			case <-time.After(10 * time.Second):
				runErr = errors.New("Run did not return within 10s of cancel")
			}
		})
		return runErr
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

func liveListener(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go acceptAndClose(ln)
	t.Cleanup(func() { ln.Close() })
	return ln
}

func testManagerConfig(t *testing.T, st *storage.Store, reg prometheus.Registerer) Config {
	cfg := DefaultConfig()
	cfg.NodeID = st.NodeID()
	cfg.Region = "iad"
	cfg.CookieKey = []byte("manager-test-cookie-key")
	cfg.ObservationInterval = 100 * time.Millisecond
	cfg.ObservationRefresh = time.Hour
	cfg.Logger = zaptest.NewLogger(t)
	cfg.Registerer = reg
	return cfg
}

func TestManagerFollowsStore(t *testing.T) {
	st := openStore(t, t.TempDir())
	ln1, ln2 := liveListener(t), liveListener(t)

	putPool(t, st, storage.Pool{Name: "web", SSLDomain: "web.example.com", HealthCheckInterval: time.Second,
		HealthCheck: storage.HealthCheck{Rise: 1, Fall: 1, Timeout: 200 * time.Millisecond}})
	putBackend(t, st, storage.Backend{ID: "b1", PoolName: "web", Host: "127.0.0.1", Port: ln1.Addr().(*net.TCPAddr).Port})
	putBackend(t, st, storage.Backend{ID: "b2", PoolName: "web", Host: "127.0.0.1", Port: ln2.Addr().(*net.TCPAddr).Port})

	reg := prometheus.NewRegistry()
	cfg := testManagerConfig(t, st, reg)
	cfg.Metrics.BackendPools = []string{"web"} // per-backend series for web only
	m := NewManager(cfg, st)
	if m.Table() == nil || m.Table().Lookup("web.example.com") != nil {
		t.Fatal("table before Run is not empty")
	}
	runManager(t, m)

	web := m.Table().Lookup("web.example.com")
	if web == nil || len(web.Backends()) != 2 {
		t.Fatalf("loaded table: %+v", web)
	}

	// A new pool and backend appear in the table.
	start := time.Now()
	putPool(t, st, storage.Pool{Name: "api", Hosts: []string{"*.api.example.com"}, Algorithm: AlgorithmLeastConnections})
	putBackend(t, st, storage.Backend{ID: "a1", PoolName: "api", Host: "127.0.0.1", Port: ln1.Addr().(*net.TCPAddr).Port})
	waitFor(t, 10*time.Second, "new pool in the table", func() bool {
		p := m.Table().Lookup("v1.api.example.com")
		return p != nil && p.Backend("a1") != nil
	})
	t.Logf("change visible after %s", time.Since(start).Round(time.Millisecond))

	// Counters survive a rebuild: traffic on b1, one request still in
	// flight, then a configuration change.
	b1 := m.Table().Backend("b1")
	for range 5 {
		b1.Begin().End(Result{Status: 200, BytesIn: 10})
	}
	inflight := b1.Begin()
	old := m.Table()
	putPool(t, st, storage.Pool{Name: "web", SSLDomain: "web.example.com", Algorithm: AlgorithmRandom, HealthCheckInterval: time.Second,
		HealthCheck: storage.HealthCheck{Rise: 1, Fall: 1, Timeout: 200 * time.Millisecond}})
	waitFor(t, 10*time.Second, "pool change applied", func() bool {
		return m.Table().Pool("web").Algorithm == AlgorithmRandom
	})
	if m.Table() == old {
		t.Fatal("table not rebuilt")
	}
	nb1 := m.Table().Backend("b1")
	if nb1 == b1 {
		t.Fatal("rebuilt table reuses the old Backend object")
	}
	if s := nb1.State(); s.TotalRequests != 6 || s.CurrentConnections != 1 || s.BytesIn != 50 {
		t.Fatalf("counters after rebuild: %+v", s)
	}
	inflight.End(Result{Status: 200})
	if c := nb1.CurrentConnections(); c != 0 {
		t.Fatalf("request begun on the old table not released on the new one: %d", c)
	}
	// An exclusion from before the rebuild still applies after it.
	for range 10 {
		if b := mustPick(t, m.Table().Pool("web"), PickRequest{Exclude: []*Backend{b1}}); b.ID == "b1" {
			t.Fatal("excluded backend (old table) picked from the new table")
		}
	}

	// Health: b2 dies, the checker notices; a later rebuild keeps the
	// verdict.
	ln2.Close()
	waitFor(t, 10*time.Second, "dead b2 unhealthy", func() bool { return !m.Table().Backend("b2").Healthy() })
	putPool(t, st, storage.Pool{Name: "web", SSLDomain: "web.example.com", Algorithm: AlgorithmRandom, HealthCheckInterval: time.Second,
		HealthCheck: storage.HealthCheck{Rise: 1, Fall: 1, Timeout: 200 * time.Millisecond}, Metadata: map[string]string{"rev": "2"}})
	waitFor(t, 10*time.Second, "metadata change applied", func() bool { return m.Table().Pool("web").Metadata["rev"] == "2" })
	if m.Table().Backend("b2").Healthy() {
		t.Fatal("rebuild reset b2's health")
	}

	stats := m.Stats()
	if len(stats) != 2 || stats[1].Name != "web" {
		t.Fatalf("stats %+v", stats)
	}
	if ws := stats[1]; ws.TotalBackends != 2 || ws.HealthyBackends != 1 || ws.UnhealthyBackends != 1 || ws.TotalRequests != 6 || ws.CurrentConnections != 0 {
		t.Fatalf("web stats %+v", ws)
	}
	states := m.BackendStates("web")
	if len(states) != 2 || states[0].ID != "b1" || !states[0].Healthy || states[1].Healthy || states[1].LastError == "" || states[1].LastCheck.IsZero() {
		t.Fatalf("backend states %+v", states)
	}
	if m.BackendStates("nope") != nil {
		t.Fatal("states of a missing pool")
	}

	// Metrics read the same atomics.
	metrics := gather(t, reg)
	for _, want := range []struct {
		name  string
		value float64
		label []string
	}{
		{"singularity_edge_backend_requests_total", 6, []string{"pool=web", "backend=b1", "address=" + ln1.Addr().String()}},
		{"singularity_edge_pool_requests_total", 6, []string{"pool=web"}},
		{"singularity_edge_pool_active_connections", 0, []string{"pool=web"}},
		{"singularity_edge_pool_received_bytes_total", 50, []string{"pool=web"}},
		{"singularity_edge_pool_requests_total", 0, []string{"pool=api"}},
		{"singularity_edge_backend_up", 1, []string{"pool=web", "backend=b1"}},
		{"singularity_edge_backend_up", 0, []string{"pool=web", "backend=b2"}},
		{"singularity_edge_backend_active_connections", 0, []string{"pool=web", "backend=b1"}},
		{"singularity_edge_backend_failures_total", 0, []string{"pool=web", "backend=b1"}},
		{"singularity_edge_pool_backends", 1, []string{"pool=web", "state=healthy"}},
		{"singularity_edge_pool_backends", 1, []string{"pool=web", "state=unhealthy"}},
		{"singularity_edge_pools", 2, nil},
	} {
		got, ok := metrics.value(want.name, want.label...)
		if !ok || got != want.value {
			t.Errorf("%s%v = %v (found %v), want %v", want.name, want.label, got, ok, want.value)
		}
	}
	if v, ok := metrics.value("singularity_edge_backend_health_checks_total", "pool=web", "backend=b2", "result=fail"); !ok || v < 1 {
		t.Errorf("failed health checks of b2 = %v %v", v, ok)
	}
	// api did not opt in: no series of its backends.
	if _, ok := metrics.value("singularity_edge_backend_up", "pool=api"); ok {
		t.Error("per-backend series for a pool that did not opt in")
	}
	// Latency is a histogram per pool, with the six requests that ended.
	if n := histogramCount(metrics, "singularity_edge_pool_request_duration_seconds", "pool=web"); n != 6 {
		t.Errorf("web latency histogram count = %d, want 6", n)
	}
	if n := histogramCount(metrics, "singularity_edge_backend_request_duration_seconds", "pool=web", "backend=b1"); n != 6 {
		t.Errorf("b1 latency histogram count = %d, want 6", n)
	}

	// Observations reach the store: b1's counters, b2's health.
	waitFor(t, 10*time.Second, "observations persisted", func() bool {
		obs, err := st.Observations(context.Background(), st.NodeID())
		if err != nil {
			t.Fatal(err)
		}
		byID := map[string]storage.Observation{}
		for _, o := range obs {
			byID[o.BackendID] = o
		}
		o1, o2 := byID["b1"], byID["b2"]
		return o1.TotalRequests == 6 && o1.Healthy && o1.Region == "iad" && o1.PoolName == "web" &&
			o2.BackendID == "b2" && !o2.Healthy && o2.LastError != ""
	})

	// Nothing changes, nothing is written: the store's commit index stays
	// put over several observation intervals.
	waitFor(t, 10*time.Second, "observation writes settle", func() bool {
		idx := st.LastIndex()
		time.Sleep(5 * m.cfg.ObservationInterval)
		return st.LastIndex() == idx
	})

	// Deleting a backend removes it; deleting a pool removes the pool.
	update(t, st, func(tx *storage.Tx) error { return tx.DeleteBackend("b2") })
	waitFor(t, 10*time.Second, "deleted backend gone", func() bool {
		return m.Table().Backend("b2") == nil && len(m.Table().Pool("web").Backends()) == 1
	})
	update(t, st, func(tx *storage.Tx) error {
		if err := tx.DeleteBackend("a1"); err != nil {
			return err
		}
		return tx.DeletePool("api")
	})
	waitFor(t, 10*time.Second, "deleted pool gone", func() bool {
		return m.Table().Lookup("v1.api.example.com") == nil && m.Table().Pool("api") == nil
	})
	after := gather(t, reg)
	if _, ok := after.value("singularity_edge_backend_up", "pool=web", "backend=b2"); ok {
		t.Error("metrics still report the deleted backend")
	}
	if after.has("pool=api") {
		t.Error("metrics still report the deleted pool api")
	}
	if after.has("backend=b2") {
		t.Error("metrics still report the deleted backend b2")
	}
}

// has reports whether any series carries the label pair.
func (g gathered) has(label string) bool {
	k, v, _ := strings.Cut(label, "=")
	for _, ms := range g {
		for _, m := range ms {
			for _, l := range m.GetLabel() {
				if l.GetName() == k && l.GetValue() == v {
					return true
				}
			}
		}
	}
	return false
}

// histogramCount is the sample count of the histogram whose labels include
// every pair; -1 when there is none.
func histogramCount(g gathered, name string, labels ...string) int64 {
	for _, m := range g[name] {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		match := true
		for _, l := range labels {
			k, v, _ := strings.Cut(l, "=")
			match = match && have[k] == v
		}
		if match && m.GetHistogram() != nil {
			return int64(m.GetHistogram().GetSampleCount())
		}
	}
	return -1
}

func TestManagerCoalescesBursts(t *testing.T) {
	st := openStore(t, t.TempDir())
	m := NewManager(testManagerConfig(t, st, nil), st)
	runManager(t, m)
	before := m.rebuilds.Load()
	putPool(t, st, storage.Pool{Name: "burst"})
	for i := range 200 {
		putBackend(t, st, storage.Backend{ID: "b" + strings.Repeat("x", i%3) + string(rune('a'+i%26)) + "-" + itoa(i), PoolName: "burst", Host: "127.0.0.1", Port: 1 + i})
	}
	waitFor(t, 10*time.Second, "all 200 backends in the table", func() bool {
		p := m.Table().Pool("burst")
		return p != nil && len(p.Backends()) == 200
	})
	rebuilds := m.rebuilds.Load() - before
	t.Logf("201 commits applied in %d rebuilds", rebuilds)
	if rebuilds >= 201 {
		t.Fatalf("%d rebuilds for 201 commits: bursts not coalesced", rebuilds)
	}
}

func itoa(i int) string {
	const digits = "0123456789"
	if i < 10 {
		return digits[i : i+1]
	}
	return itoa(i/10) + digits[i%10:i%10+1]
}

func TestManagerBackendAddressChange(t *testing.T) {
	st := openStore(t, t.TempDir())
	live := liveListener(t)
	putPool(t, st, storage.Pool{Name: "p", HealthCheckInterval: time.Second, HealthCheck: storage.HealthCheck{Rise: 1, Fall: 1, Timeout: 200 * time.Millisecond}})
	putBackend(t, st, storage.Backend{ID: "b", PoolName: "p", Host: "127.0.0.1", Port: portOf(t, closedAddr(t))})
	m := NewManager(testManagerConfig(t, st, nil), st)
	runManager(t, m)
	waitFor(t, 10*time.Second, "backend on a dead port unhealthy", func() bool { return !m.Table().Backend("b").Healthy() })
	m.Table().Backend("b").Begin().End(Result{Status: 200})

	// Moved to a live port: checked at once on the new address.
	putBackend(t, st, storage.Backend{ID: "b", PoolName: "p", Host: "127.0.0.1", Port: portOf(t, live.Addr().String())})
	waitFor(t, 10*time.Second, "moved backend healthy", func() bool {
		b := m.Table().Backend("b")
		return b.Addr == live.Addr().String() && b.Healthy() && b.State().ChecksPassed > 0
	})
	if n := m.Table().Backend("b").State().TotalRequests; n != 1 {
		t.Fatalf("address change reset counters: %d requests", n)
	}
}

func TestManagerRestartSeedsFromObservations(t *testing.T) {
	dir := t.TempDir()
	st := openStore(t, dir)
	live := liveListener(t)
	dead := closedAddr(t)
	putPool(t, st, storage.Pool{Name: "p", HealthCheckInterval: time.Second, HealthCheck: storage.HealthCheck{Rise: 1, Fall: 1, Timeout: 200 * time.Millisecond}})
	putBackend(t, st, storage.Backend{ID: "up", PoolName: "p", Host: "127.0.0.1", Port: portOf(t, live.Addr().String())})
	putBackend(t, st, storage.Backend{ID: "down", PoolName: "p", Host: "127.0.0.1", Port: portOf(t, dead)})

	m := NewManager(testManagerConfig(t, st, nil), st)
	stop := runManager(t, m)
	waitFor(t, 10*time.Second, "dead backend unhealthy", func() bool { return !m.Table().Backend("down").Healthy() })
	up := m.Table().Backend("up")
	for range 7 {
		up.Begin().End(Result{Status: 200, BytesOut: 3})
	}
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	// Run's last act was to persist the final observations.
	obs, err := st.Observations(context.Background(), st.NodeID())
	if err != nil {
		t.Fatal(err)
	}
	if len(obs) != 2 {
		t.Fatalf("observations after shutdown: %+v", obs)
	}
	st.Close()

	// Restart the store and the manager. Checks now run hourly, so what
	// the new manager shows at Ready comes from the observations, not
	// from a fresh check.
	st = openStore(t, dir)
	putPool(t, st, storage.Pool{Name: "p", HealthCheckInterval: time.Hour, HealthCheck: storage.HealthCheck{Rise: 1, Fall: 1}})
	m2 := NewManager(testManagerConfig(t, st, nil), st)
	runManager(t, m2)
	tbl := m2.Table()
	if tbl.Backend("down").Healthy() {
		t.Fatal("restarted manager forgot that the dead backend is unhealthy")
	}
	if !tbl.Backend("up").Healthy() {
		t.Fatal("restarted manager lost the healthy backend")
	}
	if s := tbl.Backend("up").State(); s.TotalRequests != 7 || s.BytesOut != 21 || s.CurrentConnections != 0 {
		t.Fatalf("restarted counters %+v", s)
	}
	if s := tbl.Backend("down").State(); s.LastError == "" || s.LastCheck.IsZero() {
		t.Fatalf("restarted health details %+v", s)
	}
	for range 10 {
		if b := mustPick(t, tbl.Pool("p"), PickRequest{}); b.ID != "up" {
			t.Fatalf("picked %s", b.ID)
		}
	}
	// What was seeded is what the store holds: the restarted manager
	// rewrites nothing while nothing changes.
	idx := st.LastIndex()
	time.Sleep(5 * m2.cfg.ObservationInterval)
	if got := st.LastIndex(); got != idx {
		t.Errorf("restart rewrote unchanged observations: commit index %d -> %d", idx, got)
	}
}

func TestManagerHoldNewBackends(t *testing.T) {
	st := openStore(t, t.TempDir())
	live := liveListener(t)
	putPool(t, st, storage.Pool{Name: "p", HoldNewBackends: true, HealthCheckInterval: time.Hour, HealthCheck: storage.HealthCheck{Rise: 3}})
	m := NewManager(testManagerConfig(t, st, nil), st)
	runManager(t, m)
	putBackend(t, st, storage.Backend{ID: "new", PoolName: "p", Host: "127.0.0.1", Port: portOf(t, live.Addr().String())})
	putBackend(t, st, storage.Backend{ID: "newdead", PoolName: "p", Host: "127.0.0.1", Port: portOf(t, closedAddr(t))})
	// Checked at once (not after the hour-long interval) and admitted on
	// the first pass.
	waitFor(t, 10*time.Second, "held backend admitted", func() bool {
		b := m.Table().Backend("new")
		return b != nil && b.Healthy()
	})
	waitFor(t, 10*time.Second, "dead held backend checked", func() bool {
		return m.Table().Backend("newdead").State().ChecksFailed > 0
	})
	if m.Table().Backend("newdead").Healthy() {
		t.Fatal("dead held backend admitted")
	}
}

func TestManagerRunErrors(t *testing.T) {
	st := openStore(t, t.TempDir())
	if err := NewManager(Config{}, st).Run(context.Background()); err == nil || !strings.Contains(err.Error(), "NodeID") {
		t.Fatalf("Run without NodeID: %v", err)
	}
	m := NewManager(testManagerConfig(t, st, nil), st)
	runManager(t, m)
	if err := m.Run(context.Background()); err == nil {
		t.Fatal("second Run accepted")
	}

	// Two managers cannot register the same metrics.
	reg := prometheus.NewRegistry()
	a := NewManager(testManagerConfig(t, st, reg), st)
	runManager(t, a)
	if err := NewManager(testManagerConfig(t, st, reg), st).Run(context.Background()); err == nil {
		t.Fatal("duplicate metrics registration accepted")
	}
}

func TestManagerStoreClosed(t *testing.T) {
	st := openStore(t, t.TempDir())
	m := NewManager(testManagerConfig(t, st, nil), st)
	errc := make(chan error, 1)
	go func() { errc <- m.Run(context.Background()) }()
	<-m.Ready()
	st.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, storage.ErrClosed) {
			t.Fatalf("Run after the store closed: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after the store closed")
	}
}

func portOf(t *testing.T, addr string) int {
	t.Helper()
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, c := range port {
		n = n*10 + int(c-'0')
	}
	return n
}

type gathered map[string][]*dto.Metric

func gather(t *testing.T, reg *prometheus.Registry) gathered {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	out := gathered{}
	for _, f := range families {
		out[f.GetName()] = f.GetMetric()
	}
	return out
}

// value returns the value of the metric whose labels include every
// "name=value" pair.
func (g gathered) value(name string, labels ...string) (float64, bool) {
	for _, m := range g[name] {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		match := true
		for _, l := range labels {
			k, v, _ := strings.Cut(l, "=")
			if have[k] != v {
				match = false
			}
		}
		if !match {
			continue
		}
		switch {
		case m.GetCounter() != nil:
			return m.GetCounter().GetValue(), true
		case m.GetGauge() != nil:
			return m.GetGauge().GetValue(), true
		}
	}
	return 0, false
}

// A backend that leaves the configuration takes this node's observation row
// with it at the next flush, while other nodes' rows and the rows of
// remaining backends stay. Rows of backends deleted while the agent was
// down go at the first flush after a restart.
func TestManagerDeletesObservationsOfRemovedBackends(t *testing.T) {
	dir := t.TempDir()
	st := openStore(t, dir)
	ctx := context.Background()
	putPool(t, st, storage.Pool{Name: "p", HealthCheckInterval: time.Hour})
	for _, id := range []string{"keep", "drop", "later"} {
		putBackend(t, st, storage.Backend{ID: id, PoolName: "p", Host: "127.0.0.1", Port: portOf(t, closedAddr(t))})
	}
	// Another node's view of "drop" arrives by replication and must stay.
	peerStore := openPeerStore(t, "node-b")
	if err := peerStore.PutObservations(ctx, []storage.Observation{{BackendID: "drop", PoolName: "p", Healthy: true}}); err != nil {
		t.Fatal(err)
	}
	ans, err := peerStore.ChangeSets(ctx, "node-b", peerStore.Bookkeeping()["node-b"], 0)
	if err != nil || len(ans.Sets) != 1 {
		t.Fatalf("peer change sets: %d, %v", len(ans.Sets), err)
	}
	if _, err := st.ApplyAnswer(ctx, ans); err != nil {
		t.Fatal(err)
	}

	stored := func(node string) []string {
		obs, err := st.Observations(ctx, node)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, o := range obs {
			ids = append(ids, o.BackendID)
		}
		return ids
	}
	m := NewManager(testManagerConfig(t, st, nil), st)
	stop := runManager(t, m)
	// Checks run hourly: traffic gives this node a view of each backend.
	for _, id := range []string{"keep", "drop", "later"} {
		m.Table().Backend(id).Begin().End(Result{Status: 200})
	}
	waitFor(t, 10*time.Second, "observations of all three backends", func() bool { return len(stored("node-a")) == 3 })

	update(t, st, func(tx *storage.Tx) error { return tx.DeleteBackend("drop") })
	waitFor(t, 10*time.Second, "observation of the deleted backend deleted", func() bool {
		return strings.Join(stored("node-a"), ",") == "keep,later"
	})
	if got := stored("node-b"); strings.Join(got, ",") != "drop" {
		t.Fatalf("peer's observations %v, want [drop]", got)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}

	// Deleted while no manager runs: the restarted one cleans up.
	update(t, st, func(tx *storage.Tx) error { return tx.DeleteBackend("later") })
	if got := stored("node-a"); strings.Join(got, ",") != "keep,later" {
		t.Fatalf("observations before restart %v", got)
	}
	m2 := NewManager(testManagerConfig(t, st, nil), st)
	runManager(t, m2)
	waitFor(t, 10*time.Second, "stale observation deleted after restart", func() bool {
		return strings.Join(stored("node-a"), ",") == "keep"
	})
}

func openPeerStore(t *testing.T, node string) *storage.Store {
	t.Helper()
	cfg := storage.DefaultConfig()
	cfg.Dir = t.TempDir()
	cfg.NodeID = node
	cfg.SyncWAL = false
	st, err := storage.Open(cfg)
	if err != nil {
		t.Fatalf("open peer store: %v", err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

func TestManagerRebuildsOnlyChangedPools(t *testing.T) {
	st := openStore(t, t.TempDir())
	for _, name := range []string{"a", "b"} {
		putPool(t, st, storage.Pool{Name: name, Hosts: []string{name + ".example.com"}})
		for i := range 3 {
			putBackend(t, st, storage.Backend{ID: fmt.Sprintf("%s%d", name, i), PoolName: name, Host: "127.0.0.1", Port: 1000 + i})
		}
	}
	m := NewManager(testManagerConfig(t, st, nil), st)
	runManager(t, m)
	before := m.Table()
	a, b := before.Pool("a"), before.Pool("b")
	if a == nil || b == nil || len(a.Backends()) != 3 {
		t.Fatalf("loaded table: %v %v", a, b)
	}
	a0 := a.Backend("a0")
	a0.Begin().End(Result{Status: 200})

	// A new backend in a: a is rebuilt, b is carried over as it was.
	putBackend(t, st, storage.Backend{ID: "a9", PoolName: "a", Host: "127.0.0.1", Port: 1999})
	waitFor(t, 10*time.Second, "a9 in the table", func() bool { return m.Table().Backend("a9") != nil })
	after := m.Table()
	if after.Pool("b") != b {
		t.Error("pool b was rebuilt for a change to pool a")
	}
	if after.Pool("a") == a || len(after.Pool("a").Backends()) != 4 {
		t.Errorf("pool a not rebuilt: %d backends", len(after.Pool("a").Backends()))
	}
	if got := after.Backend("a0").State().TotalRequests; got != 1 {
		t.Errorf("a0 lost its counters in the rebuild: %d requests", got)
	}

	// A backend moving from a to b keeps its counters and leaves a.
	putBackend(t, st, storage.Backend{ID: "a0", PoolName: "b", Host: "127.0.0.1", Port: 1000})
	waitFor(t, 10*time.Second, "a0 in b", func() bool { return m.Table().Pool("b").Backend("a0") != nil })
	if m.Table().Pool("a").Backend("a0") != nil {
		t.Error("a0 is in both pools")
	}
	if got := m.Table().Backend("a0").State().TotalRequests; got != 1 {
		t.Errorf("a0 lost its counters moving pools: %d requests", got)
	}
}

func TestManagerWritesNoObservationBeforeItObserves(t *testing.T) {
	st := openStore(t, t.TempDir())
	putPool(t, st, storage.Pool{Name: "p", HealthCheckInterval: time.Hour})
	for i := range 3 {
		putBackend(t, st, storage.Backend{ID: fmt.Sprintf("b%d", i), PoolName: "p", Host: "127.0.0.1", Port: 2000 + i})
	}
	m := NewManager(testManagerConfig(t, st, nil), st)
	runManager(t, m)
	count := func() int {
		obs, err := st.Observations(context.Background(), st.NodeID())
		if err != nil {
			t.Fatal(err)
		}
		return len(obs)
	}
	time.Sleep(5 * m.cfg.ObservationInterval)
	if n := count(); n != 0 {
		t.Fatalf("%d observations written for backends this node never checked nor used", n)
	}
	m.Table().Backend("b1").Begin().End(Result{Status: 200})
	waitFor(t, 10*time.Second, "the used backend's observation", func() bool { return count() == 1 })
}
