package replication

// Engine tests over real TCP and TLS on loopback and real RocksDB stores
// (teststore_test.go), several in one process.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/singularity-ng/singularity-edge/cluster"
	"github.com/singularity-ng/singularity-edge/storage"
)

// testCluster is a membership shared by in-process engines; cut() makes
// members see each other dead, as a partition would.
type testCluster struct {
	mu      sync.Mutex
	members map[string]*cluster.Member // by node id
	group   map[string]int             // partition group by node id (0 when unplaced)
	changed chan struct{}
	// alone is what discovery says when no source names another node;
	// it holds only while the view has no other member.
	alone bool
}

func newTestCluster() *testCluster {
	return &testCluster{members: map[string]*cluster.Member{}, group: map[string]int{}, changed: make(chan struct{})}
}

func (tc *testCluster) notifyLocked() {
	close(tc.changed)
	tc.changed = make(chan struct{})
}

func (tc *testCluster) add(id, region, addr string) {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	tc.members[id] = &cluster.Member{ID: id, Name: id, Region: region, State: cluster.StateAlive,
		Addresses: map[string]string{cluster.AddrReplication: addr}}
	tc.notifyLocked()
}

func (tc *testCluster) setState(id string, st cluster.State) {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	tc.members[id].State = st
	tc.notifyLocked()
}

// partition splits the members into groups that see each other dead; an
// id may be placed before it joins (a new node that starts cut off).
func (tc *testCluster) partition(groups ...[]string) {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	tc.group = map[string]int{}
	for i, g := range groups {
		for _, id := range g {
			tc.group[id] = i
		}
	}
	tc.notifyLocked()
}

func (tc *testCluster) view(self string) *memberView { return &memberView{tc: tc, self: self} }

type memberView struct {
	tc   *testCluster
	self string
}

func (v *memberView) Members() []cluster.Member {
	v.tc.mu.Lock()
	defer v.tc.mu.Unlock()
	var out []cluster.Member
	for id, m := range v.tc.members {
		c := *m
		c.Self = id == v.self
		if v.tc.group[v.self] != v.tc.group[id] {
			c.State = cluster.StateDead
		}
		out = append(out, c)
	}
	return out
}

func (v *memberView) Changed() <-chan struct{} {
	v.tc.mu.Lock()
	defer v.tc.mu.Unlock()
	return v.tc.changed
}

func (v *memberView) Alone() bool {
	v.tc.mu.Lock()
	defer v.tc.mu.Unlock()
	for id := range v.tc.members {
		if id != v.self {
			return false
		}
	}
	return v.tc.alone
}

func (v *memberView) SetReady(r bool) error {
	v.tc.mu.Lock()
	defer v.tc.mu.Unlock()
	if m := v.tc.members[v.self]; m != nil {
		m.Ready = r
		v.tc.notifyLocked()
	}
	return nil
}

type node struct {
	id      string
	store   *testStore
	eng     *Engine
	reg     *prometheus.Registry
	stop    func()
	exited  chan struct{} // closed when Run returned
	runErr  error         // Run's result, set before exited is closed
	wantErr error         // an error Run is expected to end with
}

// ended waits for Run to end by itself and returns its error.
func (n *node) ended(t *testing.T) error {
	t.Helper()
	select {
	case <-n.exited:
		return n.runErr
	case <-time.After(60 * time.Second):
		t.Fatalf("%s: Run did not end", n.id)
		return nil
	}
}

func testSecret(b byte) []byte { return []byte(strings.Repeat(string(b), 32)) }

func quietLogger(t *testing.T) *zap.Logger {
	if testing.Verbose() {
		var done atomic.Bool
		t.Cleanup(func() { done.Store(true) })
		w := zapcore.AddSync(writerFunc(func(p []byte) (int, error) {
			if !done.Load() {
				t.Log(strings.TrimRight(string(p), "\n"))
			}
			return len(p), nil
		}))
		return zap.New(zapcore.NewCore(zapcore.NewConsoleEncoder(zap.NewDevelopmentEncoderConfig()), w, zapcore.DebugLevel))
	}
	return zap.NewNop()
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

type nodeOpt func(*Config)

func startEngine(t *testing.T, tc *testCluster, id string, store *testStore, secrets [][]byte, opts ...nodeOpt) *node {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Addr = "127.0.0.1:0"
	cfg.Name = id
	cfg.Region = "r"
	cfg.Secrets = secrets
	cfg.SyncInterval = 300 * time.Millisecond
	cfg.BootstrapAloneAfter = cfgBootstrapAloneAfter
	cfg.DialBackoffMax = 300 * time.Millisecond
	cfg.Logger = quietLogger(t).Named(id)
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	for _, o := range opts {
		o(&cfg)
	}
	e, err := New(cfg, store, tc.view(id))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	tc.add(id, "r", e.Addr().String())
	n := &node{id: id, store: store, eng: e, reg: reg, exited: make(chan struct{})}
	go func() { n.runErr = e.Run(ctx); close(n.exited) }()
	var once sync.Once
	n.stop = func() {
		once.Do(func() {
			cancel()
			select {
			case <-n.exited:
				if n.runErr != nil && (n.wantErr == nil || !errors.Is(n.runErr, n.wantErr)) {
					t.Errorf("%s: Run: %v", id, n.runErr)
				}
			case <-time.After(20 * time.Second):
				t.Errorf("%s: Run did not return", id)
			}
		})
	}
	t.Cleanup(n.stop)
	return n
}

const cfgBootstrapAloneAfter = 300 * time.Millisecond

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

func waitReady(t *testing.T, n *node) {
	t.Helper()
	select {
	case <-n.eng.Ready():
	case <-time.After(60 * time.Second):
		t.Fatalf("%s never ready", n.id)
	}
}

func str(s string) *string { return &s }

func converged(nodes ...*node) bool {
	d := nodes[0].store.dump()
	for _, n := range nodes[1:] {
		if n.store.dump() != d {
			return false
		}
	}
	return true
}

func waitConverged(t *testing.T, nodes ...*node) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if converged(nodes...) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, n := range nodes {
		lines := strings.Split(n.store.dump(), "\n")
		t.Logf("%s: %d rows, holds %v", n.id, len(lines)-1, n.store.db.Bookkeeping())
	}
	t.Fatal("nodes did not converge")
}

func threeNodes(t *testing.T, opts ...nodeOpt) (*testCluster, []*node) {
	tc := newTestCluster()
	var nodes []*node
	for _, id := range []string{"a", "b", "c"} {
		n := startEngine(t, tc, id, newTestStore(t, id), [][]byte{testSecret('k')}, opts...)
		nodes = append(nodes, n)
	}
	for _, n := range nodes {
		waitReady(t, n)
	}
	return tc, nodes
}

func TestConvergeConcurrentWrites(t *testing.T) {
	_, nodes := threeNodes(t)
	var wg sync.WaitGroup
	for i, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 200 {
				// Shared keys (conflicts) and own keys, some deleted.
				n.store.write(map[string]*string{fmt.Sprintf("shared-%d", j%20): str(fmt.Sprintf("%s-%d", n.id, j)),
					fmt.Sprintf("%s-%d", n.id, j): str("v")})
				if j%7 == 0 {
					n.store.write(map[string]*string{fmt.Sprintf("shared-%d", (j+3)%20): nil})
				}
			}
			_ = i
		}()
	}
	wg.Wait()
	waitConverged(t, nodes...)
	for _, n := range nodes {
		for _, o := range nodes {
			if got := n.store.heldOf(o.id); got.String() != o.store.heldOf(o.id).String() {
				t.Fatalf("%s holds %v of %s, which holds %v", n.id, got, o.id, o.store.heldOf(o.id))
			}
		}
	}
	// Status: nothing pending once acknowledged, bytes counted.
	waitUntil(t, "no pending", func() bool {
		for _, st := range nodes[0].eng.Status() {
			if st.PendingChanges != 0 || !st.Connected || st.BytesOut == 0 || st.BytesIn == 0 {
				return false
			}
		}
		return len(nodes[0].eng.Status()) == 2
	})
	if n, err := testutil.GatherAndCount(nodes[0].reg, "singularity_edge_replication_peer_pending_sets"); err != nil || n != 2 {
		t.Fatalf("per-peer metrics: %d %v", n, err)
	}
}

func TestDroppedPushesFilledByCatchUp(t *testing.T) {
	// Queues so small that a burst overflows them: pushes are dropped
	// and only catch-up can deliver those seqs.
	_, nodes := threeNodes(t, func(c *Config) {
		c.PushBatchBytes = 64
		c.PeerQueueBytes = 128
		c.PushDelay = 50 * time.Millisecond
	})
	waitUntil(t, "streams up", func() bool {
		st := nodes[0].eng.Status()
		return len(st) == 2 && st["b"].Connected && st["c"].Connected
	})
	for j := range 300 {
		nodes[0].store.write(map[string]*string{fmt.Sprintf("k%d", j): str(strings.Repeat("x", 40))})
	}
	waitConverged(t, nodes...)
	if d := testutil.ToFloat64(nodes[0].eng.metrics.pushDropped); d == 0 {
		t.Fatal("no push was dropped: the test did not exercise catch-up")
	}
	if got, own := nodes[1].store.heldOf("a"), nodes[0].store.heldOf("a"); got.String() != own.String() || own.Max() < 300 {
		t.Fatalf("b holds %v of a, which issued %v", got, own)
	}
}

func TestPartitionHeal(t *testing.T) {
	tc, nodes := threeNodes(t)
	a, b, c := nodes[0], nodes[1], nodes[2]
	a.store.write(map[string]*string{"pool": str("v0"), "gone": str("x"), "kept": str("x")})
	waitConverged(t, nodes...)

	tc.partition([]string{"a"}, []string{"b", "c"})
	waitUntil(t, "streams down", func() bool {
		for _, st := range a.eng.Status() {
			if st.Connected {
				return false
			}
		}
		return true
	})
	// Both sides write: same key, delete against update, same new key.
	a.store.write(map[string]*string{"pool": str("from-a"), "gone": nil, "new": str("a")})
	time.Sleep(5 * time.Millisecond)
	b.store.write(map[string]*string{"pool": str("from-b"), "gone": str("updated"), "new": str("b")})
	c.store.write(map[string]*string{"kept": str("c")})
	waitConverged(t, b, c)
	if converged(a, b) {
		t.Fatal("replicated across the partition")
	}
	tc.partition([]string{"a", "b", "c"})
	waitConverged(t, nodes...)
	// The later write wins everywhere (b wrote after a, per HLC).
	dump := a.store.dump()
	for _, want := range []string{`"key":"pool"`, `"algorithm":"from-b"`, `"key":"gone","version"`, `"algorithm":"updated"`, `"algorithm":"b"`, `"algorithm":"c"`} {
		if !strings.Contains(dump, want) {
			t.Fatalf("after heal, want %s in\n%s", want, dump)
		}
	}
}

func TestBootstrapEmptyNode(t *testing.T) {
	tc, nodes := threeNodes(t)
	for j := range 500 {
		nodes[j%3].store.write(map[string]*string{fmt.Sprintf("k%d", j): str("v"), fmt.Sprintf("k%d", j/2): nil})
	}
	waitConverged(t, nodes...)
	stopWrites := make(chan struct{})
	writesDone := make(chan struct{})
	go func() {
		defer close(writesDone)
		for j := 0; ; j++ {
			select {
			case <-stopWrites:
				return
			default:
			}
			nodes[j%3].store.write(map[string]*string{fmt.Sprintf("live-%d", j): str("v")})
			time.Sleep(time.Millisecond)
		}
	}()
	// d starts cut off from the cluster: it knows members exist but
	// reaches none, so it must neither serve nor start a cluster of its
	// own.
	tc.partition([]string{"a", "b", "c"}, []string{"d"})
	d := startEngine(t, tc, "d", newTestStore(t, "d"), [][]byte{testSecret('k')})
	select {
	case <-d.eng.Ready():
		t.Fatal("an empty node that reaches no peer turned ready")
	case <-time.After(5 * cfgBootstrapAloneAfter):
	}
	if st := d.eng.Status(); len(st) != 0 {
		for _, s := range st {
			if s.Connected {
				t.Fatalf("d connected across the partition: %+v", st)
			}
		}
	}
	tc.partition([]string{"a", "b", "c", "d"})
	waitReady(t, d)
	close(stopWrites)
	select {
	case <-writesDone:
	case <-time.After(10 * time.Second):
		t.Fatal("writer did not stop")
	}
	waitConverged(t, append(nodes, d)...)
	if h := d.store.heldOf(d.store.NodeID()); len(h) != 0 {
		t.Fatalf("the new node originated %v", h)
	}
	if !d.store.isReady() || d.store.ClusterID() != nodes[0].store.ClusterID() {
		t.Fatalf("d: ready=%v cluster %q, want %q", d.store.isReady(), d.store.ClusterID(), nodes[0].store.ClusterID())
	}
	if testutil.ToFloat64(d.eng.metrics.snapshotBytes.WithLabelValues("in")) == 0 {
		t.Fatal("no snapshot was streamed")
	}
}

func TestFirstNodeOfClusterBecomesReady(t *testing.T) {
	tc := newTestCluster()
	n := startEngine(t, tc, "solo", newTestStore(t, "solo"), [][]byte{testSecret('k')})
	waitReady(t, n)
	if !n.store.isReady() {
		t.Fatal("store not marked ready")
	}
}

func TestWaitApplied(t *testing.T) {
	tc, nodes := threeNodes(t)
	a := nodes[0]
	waitUntil(t, "streams up", func() bool {
		st := a.eng.Status()
		return len(st) == 2 && st["b"].Connected && st["c"].Connected
	})
	seq := a.store.write(map[string]*string{"token": str("t1")})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	res, err := a.eng.WaitApplied(ctx, seq)
	cancel()
	if err != nil || strings.Join(res.Applied, ",") != "b,c" || len(res.Missing) != 0 {
		t.Fatalf("wait: %+v %v", res, err)
	}

	// c stops applying; a suspect member is reported, not waited for.
	blockApplies(t, nodes[2])
	tc.setState("b", cluster.StateSuspect)
	seq = a.store.write(map[string]*string{"token": str("t2")})
	ctx, cancel = context.WithTimeout(context.Background(), 500*time.Millisecond)
	res, err = a.eng.WaitApplied(ctx, seq)
	cancel()
	if !errors.Is(err, ErrWaitTimeout) {
		t.Fatalf("err = %v, want ErrWaitTimeout", err)
	}
	reasons := map[string]string{}
	for _, m := range res.Missing {
		reasons[m.Name] = m.Reason
	}
	if reasons["b"] != "suspect" || reasons["c"] != "pending" || len(res.Applied) != 0 {
		t.Fatalf("result %+v", res)
	}
}

// A member waited for that turns suspect during the wait (a partition
// that begins as the write is made) is still waited for: it may still
// serve clients, and a CA, without the write. Before, the wait re-read the
// members on every wake-up, dropped it, and reported success.
func TestWaitAppliedKeepsMemberTurnedSuspect(t *testing.T) {
	tc, nodes := threeNodes(t)
	a := nodes[0]
	waitUntil(t, "streams up", func() bool {
		st := a.eng.Status()
		return len(st) == 2 && st["b"].Connected && st["c"].Connected
	})
	blockApplies(t, nodes[2])
	seq := a.store.write(map[string]*string{"token": str("t")})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	done := waitAppliedAsync(ctx, a, seq)
	waitUntil(t, "b holds the write", func() bool { return a.eng.peerFor("b", "b").holds(seq) })
	tc.setState("c", cluster.StateSuspect)
	r := receiveWait(t, done, 30*time.Second)
	if !errors.Is(r.err, ErrWaitTimeout) {
		t.Fatalf("err = %v (%+v), want ErrWaitTimeout: c turned suspect during the wait and never applied", r.err, r.res)
	}
	if len(r.res.Missing) != 1 || r.res.Missing[0].Name != "c" || r.res.Missing[0].Reason != "pending" || strings.Join(r.res.Applied, ",") != "b" {
		t.Fatalf("result %+v", r.res)
	}
}

// blockApplies makes n's store hold every apply until the test ends.
func blockApplies(t *testing.T, n *node) {
	block := make(chan struct{})
	n.store.mu.Lock()
	n.store.applyGate = func() error { <-block; return nil }
	n.store.mu.Unlock()
	t.Cleanup(func() { close(block) })
}

// waitOutcome is what WaitApplied returned.
type waitOutcome struct {
	res WaitResult
	err error
}

// waitAppliedAsync runs n's WaitApplied for seq in the background.
func waitAppliedAsync(ctx context.Context, n *node, seq uint64) <-chan waitOutcome {
	done := make(chan waitOutcome, 1)
	go func() {
		res, err := n.eng.WaitApplied(ctx, seq)
		done <- waitOutcome{res, err}
	}()
	return done
}

// receiveWait returns the outcome of a background WaitApplied, failing the
// test if it has not returned within bound.
func receiveWait(t *testing.T, done <-chan waitOutcome, bound time.Duration) waitOutcome {
	t.Helper()
	select {
	case r := <-done:
		return r
	case <-time.After(bound):
		t.Fatal("WaitApplied did not return")
		return waitOutcome{}
	}
}

func TestPurgeWatermarks(t *testing.T) {
	_, nodes := threeNodes(t)
	nodes[1].store.write(map[string]*string{"x": str("1")})
	waitConverged(t, nodes...)
	waitUntil(t, "books from every peer", func() bool {
		wm, ok := nodes[0].eng.purgeWatermarks()
		return ok && len(wm) == 2 && wm["b"]["b"] == 1 && wm["c"]["b"] == 1
	})
}

// A member whose watermarks are unknown (it never reported them) holds
// every origin at zero, whatever its state, until it reports or nothing
// was heard of it for EvictAfter. The failure detector hears an alive or
// suspect member: it never ages.
func TestPurgeWatermarksUnknownMember(t *testing.T) {
	const evict = time.Hour
	cases := []struct {
		name    string
		state   cluster.State
		reports bool          // it reports its books
		later   time.Duration // asked again this much later
		wantOK  bool
	}{
		{name: "alive, silent", state: cluster.StateAlive, wantOK: false},
		{name: "suspect, silent", state: cluster.StateSuspect, wantOK: false},
		{name: "dead, silent", state: cluster.StateDead, wantOK: false},
		{name: "left, silent", state: cluster.StateLeft, wantOK: false},
		{name: "suspect, silent, past the eviction time", state: cluster.StateSuspect, later: evict + time.Minute, wantOK: false},
		{name: "dead, silent, within the eviction time", state: cluster.StateDead, later: evict - time.Minute, wantOK: false},
		{name: "dead, silent, past the eviction time", state: cluster.StateDead, later: evict + time.Minute, wantOK: true},
		{name: "suspect, reported", state: cluster.StateSuspect, reports: true, wantOK: true},
		{name: "dead, reported", state: cluster.StateDead, reports: true, wantOK: true},
	}
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			var offset atomic.Int64
			now := func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
			cfg := DefaultConfig()
			cfg.Addr = "127.0.0.1:0"
			cfg.Name = "a"
			cfg.Region = "r"
			cfg.Secrets = [][]byte{testSecret('k')}
			cfg.Logger = quietLogger(t)
			cfg.Registerer = prometheus.NewRegistry()
			cfg.Now = now
			cfg.EvictAfter = evict
			tc := newTestCluster()
			e, err := New(cfg, newTestStore(t, "a"), tc.view("a"))
			if err != nil {
				t.Fatal(err)
			}
			tc.add("a", "r", "127.0.0.1:1")
			tc.add("m", "r", "127.0.0.1:2")
			tc.setState("m", tt.state)
			if tt.reports {
				e.peerFor("m", "m").setBooks(Books{"a": {Watermark: 7, Max: 7}}, now())
			}
			wm, ok := e.purgeWatermarks()
			if ok != tt.reports {
				t.Fatalf("at once: purgeWatermarks = %v, %v; want ok=%v", wm, ok, tt.reports)
			}
			offset.Store(int64(tt.later))
			wm, ok = e.purgeWatermarks()
			if ok != tt.wantOK {
				t.Fatalf("%v later: purgeWatermarks = %v, %v; want ok=%v", tt.later, wm, ok, tt.wantOK)
			}
			if ok && tt.reports && wm["m"]["a"] != 7 {
				t.Fatalf("watermarks %v, want m at 7 for a", wm)
			}
			if ok && !tt.reports && len(wm) != 0 {
				t.Fatalf("watermarks %v, want the evicted member left out", wm)
			}
		})
	}
}

// Membership after a restart knows only the members it can reach: one
// dead before it must still hold purge back with what it last reported,
// until it has been gone for EvictAfter; one alive when the agent stopped
// counts as heard at the restart.
func TestPurgeWaitsAcrossRestart(t *testing.T) {
	const evict = 24 * time.Hour
	var offset atomic.Int64
	now := func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	opts := func(c *Config) { c.Now = now; c.EvictAfter = evict }
	ctx := context.Background()

	as := newClusterStore(t, "a", "c1")
	tc := newTestCluster()
	tc.alone = true
	a := startEngine(t, tc, "a", as, [][]byte{testSecret('k')}, opts)
	waitReady(t, a)
	tc.add("b", "r", "127.0.0.1:1")
	tc.add("c", "r", "127.0.0.1:2")
	a.eng.peerFor("b", "b").setBooks(Books{"a": {Watermark: 5, Max: 5}}, now())
	a.eng.peerFor("c", "c").setBooks(Books{"a": {Watermark: 6, Max: 6}}, now())
	tc.setState("b", cluster.StateDead)
	if wm, ok := a.eng.purgeWatermarks(); !ok || len(wm) != 2 {
		t.Fatalf("before the restart: %v %v, want b and c", wm, ok)
	}
	if err := a.eng.saveHeld(ctx); err != nil {
		t.Fatal(err)
	}
	a.stop()

	// Half an hour later the agent starts again and sees neither.
	offset.Store(int64(30 * time.Minute))
	as = as.reopen()
	tc2 := newTestCluster()
	tc2.alone = true
	a = startEngine(t, tc2, "a", as, [][]byte{testSecret('k')}, opts)
	waitReady(t, a)
	want := map[string]map[string]uint64{"b": {"a": 5}, "c": {"a": 6}}
	if wm, ok := a.eng.purgeWatermarks(); !ok || fmt.Sprint(wm) != fmt.Sprint(want) {
		t.Fatalf("after the restart: %v %v, want %v", wm, ok, want)
	}
	// b was last heard before the restart; c may have been heard until it.
	offset.Store(int64(evict + 10*time.Minute))
	want = map[string]map[string]uint64{"c": {"a": 6}}
	if wm, ok := a.eng.purgeWatermarks(); !ok || fmt.Sprint(wm) != fmt.Sprint(want) {
		t.Fatalf("b gone for the eviction time: %v %v, want %v", wm, ok, want)
	}
	offset.Store(int64(evict + 40*time.Minute))
	if wm, ok := a.eng.purgeWatermarks(); !ok || len(wm) != 0 {
		t.Fatalf("both gone for the eviction time: %v %v, want none", wm, ok)
	}
}

// copySets hands origin's sets in want from one store to another as a
// catch-up would.
func copySets(t *testing.T, from, to *testStore, origin string, want RangeSet) {
	t.Helper()
	ctx := context.Background()
	b, err := from.RocksStore.ChangeSets(ctx, origin, want, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := to.RocksStore.ApplyBatch(ctx, ApplyBatch{Sets: b.Sets, Covered: map[string]RangeSet{origin: b.Covered}}); err != nil {
		t.Fatal(err)
	}
}

// A node whose volume went back in time (a copied directory: the store
// cannot tell) learns from a peer that its origin has seqs it never
// issued: the store takes a new id, the engine ends, and a new engine
// under the new id replicates its next writes.
func TestOwnOriginAhead(t *testing.T) {
	as := newClusterStore(t, "a", "c1")
	as.write(map[string]*string{"a-1": str("v")})
	if err := as.db.Close(); err != nil {
		t.Fatal(err)
	}
	oldDir := copyDir(t, as.cfg.Dir)
	as = openTestStore(t, as.cfg)
	for i := 2; i <= 5; i++ {
		as.write(map[string]*string{fmt.Sprintf("a-%d", i): str("v")})
	}
	bs := newClusterStore(t, "b", "c1")
	bs.write(map[string]*string{"b-1": str("v")})
	copySets(t, as, bs, "a", RangeSet{{1, 5}})
	if err := as.db.Close(); err != nil {
		t.Fatal(err)
	}
	backCfg := as.cfg
	backCfg.Dir = oldDir
	back := openTestStore(t, backCfg)
	if got := back.heldOf("a"); got.String() != "[1]" {
		t.Fatalf("the copy holds %v of its own origin", got)
	}

	tc := newTestCluster()
	a := startEngine(t, tc, "a", back, [][]byte{testSecret('k')})
	a.wantErr = ErrNewIdentity
	startEngine(t, tc, "b", bs, [][]byte{testSecret('k')})
	if err := a.ended(t); !errors.Is(err, ErrNewIdentity) {
		t.Fatalf("Run = %v, want ErrNewIdentity", err)
	}
	fresh := back.NodeID()
	if fresh == "a" {
		t.Fatal("the store kept its id")
	}
	tc.setState("a", cluster.StateLeft)
	startEngine(t, tc, fresh, back, [][]byte{testSecret('k')})
	seq := back.write(map[string]*string{"after-restore": str("v")})
	waitUntil(t, "the new write reached b", func() bool { return bs.heldOf(fresh).Contains(seq) })
	if !strings.Contains(bs.dump(), `"after-restore"`) {
		t.Fatal("b holds the seq but not the row")
	}
}

func TestStreamAuthentication(t *testing.T) {
	tc := newTestCluster()
	a := startEngine(t, tc, "a", newTestStore(t, "a"), [][]byte{testSecret('o'), testSecret('n')})
	waitReady(t, a)
	c1 := a.store.ClusterID()
	addr := a.eng.Addr().String()
	dialAs := func(secrets [][]byte, clusterID string) error {
		cfg := testStorageConfig(t.TempDir(), "x")
		cfg.ClusterID = clusterID
		s := openTestStore(t, cfg)
		ecfg := DefaultConfig()
		ecfg.Addr = "127.0.0.1:0"
		ecfg.Secrets = secrets
		e, err := New(ecfg, s, newTestCluster().view("x"))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := e.dial(ctx, addr, nil)
		if err == nil {
			c.close()
		}
		return err
	}
	tlsRejects := func() float64 { return testutil.ToFloat64(a.eng.metrics.handshakes.WithLabelValues("tls")) }

	// Rotation: a is on the first deploy (old primary, new accepted); a
	// node on the second deploy (new primary, old accepted) gets in.
	if err := dialAs([][]byte{testSecret('n'), testSecret('o')}, c1); err != nil {
		t.Fatalf("mixed keyrings: %v", err)
	}
	before := tlsRejects()
	if err := dialAs([][]byte{testSecret('z')}, c1); err == nil {
		t.Fatal("a node without the secret got in")
	}
	waitUntil(t, "the wrong key counted", func() bool { return tlsRejects() > before })

	err := dialAs([][]byte{testSecret('o')}, "other")
	if !errors.Is(err, ErrDifferentCluster) {
		t.Fatalf("other cluster: %v", err)
	}
	waitUntil(t, "the other cluster counted", func() bool {
		return testutil.ToFloat64(a.eng.metrics.handshakes.WithLabelValues("cluster_id")) > 0
	})

	// Hand-made frames (a push, unencrypted) are never read: the TLS
	// handshake fails and the stream is counted.
	before = tlsRejects()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = c.Write(appendFrame(nil, msgPush, encodeSets([]EncodedSet{{Origin: "evil", Seq: 1, Data: []byte("{}")}})))
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, _ = c.Read(make([]byte, 16))
	c.Close()
	waitUntil(t, "hand-made frames counted", func() bool { return tlsRejects() > before })
	if len(a.store.heldOf("evil")) != 0 {
		t.Fatal("a hand-made push was applied")
	}
}

func TestWireRoundTrip(t *testing.T) {
	books := Books{"a": BookOf(NewRangeSet(Range{1, 5}, Range{9, 9})), "b": {}}
	got, err := decodeBooks(encodeBooks(books))
	if err != nil || got["a"].Held().String() != "[1-5,9]" || len(got) != 2 {
		t.Fatalf("books: %v %v", got, err)
	}
	rows := syncRows{Origin: "a", Covered: RangeSet{{3, 7}}, Sets: []EncodedSet{{Origin: "a", Seq: 4, HLC: 9, Data: []byte("x")}}}
	r, err := decodeSyncRows(rows.encode())
	if err != nil || r.Covered.String() != "[3-7]" || len(r.Sets) != 1 || string(r.Sets[0].Data) != "x" {
		t.Fatalf("rows: %+v %v", r, err)
	}
	bad := syncRows{Origin: "a", Covered: RangeSet{{3, 7}}, Sets: []EncodedSet{{Origin: "a", Seq: 9, Data: []byte("x")}}}
	if _, err := decodeSyncRows(bad.encode()); !errors.Is(err, ErrBadFrame) {
		t.Fatalf("a set outside its range must be refused: %v", err)
	}
	if _, err := readFrame(strings.NewReader("\x03\x01\x00\x00\x00"), 1<<16); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("oversize frame: %v", err)
	}
	if _, err := readFrame(strings.NewReader("\x63\x00\x00\x00\x00"), 1<<16); !errors.Is(err, ErrBadFrame) {
		t.Fatalf("unknown type: %v", err)
	}
}

func FuzzFrameDecoder(f *testing.F) {
	f.Add(appendFrame(nil, msgHello, hello{Proto: 1, ClusterID: "c", NodeID: "n"}.encode()))
	f.Add(appendFrame(nil, msgHello, hello{Proto: protoVersion, ClusterID: "c", NodeID: "n", KeyFingerprint: bytes.Repeat([]byte{7}, keyFingerprintSize)}.encode()))
	f.Add(appendFrame(nil, msgPush, encodeSets([]EncodedSet{{Origin: "a", Seq: 1, HLC: 2, Data: []byte("d")}})))
	f.Add(appendFrame(nil, msgSyncState, encodeBooks(Books{"a": BookOf(RangeSet{{1, 3}, {5, 9}})})))
	f.Add(appendFrame(nil, msgSyncRows, syncRows{Origin: "a", Covered: RangeSet{{1, 2}}, Sets: []EncodedSet{{Origin: "a", Seq: 2}}}.encode()))
	f.Add(appendFrame(nil, msgAck, encodeAck(map[string]RangeSet{"a": {{1, 1}}})))
	f.Add(appendFrame(nil, msgSnapshotChunk, []byte("chunk")))
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, err := readFrame(strings.NewReader(string(b)), 1<<16)
		if err != nil {
			return
		}
		if err := decodePayload(fr); err != nil && !errors.Is(err, ErrBadFrame) {
			t.Fatalf("decode error not ErrBadFrame: %v", err)
		}
		if fr.typ == msgHello {
			if h, err := decodeHello(fr.payload); err == nil && h.Proto == protoVersion {
				if n := len(h.KeyFingerprint); n != 0 && n != keyFingerprintSize {
					t.Fatalf("hello with a %d-byte key fingerprint accepted", n)
				}
				h2, err := decodeHello(h.encode())
				if err != nil || h2.NodeID != h.NodeID || h2.ClusterID != h.ClusterID || !bytes.Equal(h2.KeyFingerprint, h.KeyFingerprint) {
					t.Fatalf("hello does not round-trip: %+v, %+v, %v", h, h2, err)
				}
			}
		}
		if fr.typ == msgSyncState {
			if bs, err := decodeBooks(fr.payload); err == nil {
				for o, b := range bs {
					if !b.Held().Valid() || b.Held().Max() != b.Max {
						t.Fatalf("book %s invalid: %+v", o, b)
					}
				}
				again, err := decodeBooks(encodeBooks(bs))
				if err != nil || fmt.Sprint(again) != fmt.Sprint(bs) {
					t.Fatalf("books do not round-trip: %v, %v, %v", bs, again, err)
				}
			}
		}
		// Whatever decodes holds normalized range sets (the engine's
		// Minus and Contains assume them) and re-encodes to the same value.
		valid := func(what string, rs RangeSet) {
			if !rs.Valid() || NewRangeSet(rs...).String() != rs.String() {
				t.Fatalf("%s: decoded ranges %v are not sorted and disjoint", what, rs)
			}
		}
		same := func(what string, a, b any, err error) {
			if err != nil || fmt.Sprint(a) != fmt.Sprint(b) {
				t.Fatalf("%s does not round-trip: %v, %v, %v", what, a, b, err)
			}
		}
		switch fr.typ {
		case msgAck:
			if m, err := decodeAck(fr.payload); err == nil {
				for o, rs := range m {
					valid("ack "+o, rs)
				}
				again, err := decodeAck(encodeAck(m))
				same("ack", m, again, err)
			}
		case msgSyncRequest:
			if r, err := decodeSyncRequest(fr.payload); err == nil {
				valid("sync request", r.Want)
				again, err := decodeSyncRequest(r.encode())
				same("sync request", r, again, err)
			}
		case msgSyncRows:
			if r, err := decodeSyncRows(fr.payload); err == nil {
				valid("sync rows", r.Covered)
				again, err := decodeSyncRows(r.encode())
				same("sync rows", r, again, err)
			}
		case msgPush:
			if sets, err := decodePush(fr.payload); err == nil {
				again, err := decodePush(encodeSets(sets))
				same("push", sets, again, err)
			}
		case msgReject:
			if r, err := decodeReject(fr.payload); err == nil {
				again, err := decodeReject(r.encode())
				same("reject", r, again, err)
			}
		case msgSyncDone:
			if s, err := decodeSyncDone(fr.payload); err == nil {
				again, err := decodeSyncDone(s.encode())
				same("sync done", s, again, err)
			}
		}
	})
}

// TestDecodeRangesAtHighestSeq: a range that ends at the highest seq, or
// a repeat of it, is refused by the frame decoder and by Valid (Hi+1
// wrapped to 0 and let the repeat through both checks).
func TestDecodeRangesAtHighestSeq(t *testing.T) {
	const top = ^uint64(0)
	tests := []struct {
		name  string
		rs    RangeSet
		valid bool
	}{
		{"single range at the top", RangeSet{{top, top}}, true},
		{"up to the top", RangeSet{{1, 2}, {5, top}}, true},
		{"top repeated", RangeSet{{top, top}, {top, top}}, false},
		{"overlap at the top", RangeSet{{3, top}, {top, top}}, false},
		{"adjacent below", RangeSet{{1, 2}, {3, top}}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.rs.Valid(); got != tc.valid {
				t.Fatalf("Valid(%v) = %v, want %v", tc.rs, got, tc.valid)
			}
			r, err := decodeSyncRequest(syncRequest{Origin: "a", Want: tc.rs}.encode())
			if tc.valid && (err != nil || r.Want.String() != tc.rs.String()) {
				t.Fatalf("decode = %v, %v; want %v", r.Want, err, tc.rs)
			}
			if !tc.valid && !errors.Is(err, ErrBadFrame) {
				t.Fatalf("decode = %v, %v; want ErrBadFrame", r.Want, err)
			}
		})
	}
}

// A node behind a tombstone purge hands its own unreplicated writes to the
// peer, then ends Run with ErrRebuilt; at its next start the store is
// emptied under a new id and bootstraps from the peer.
func TestTooStaleRebuilds(t *testing.T) {
	ctx := context.Background()
	cs := newClusterStore(t, "c", "c1")
	for i := range 10 {
		cs.write(map[string]*string{fmt.Sprintf("c-%d", i): str("v")})
	}
	as := newClusterStore(t, "a", "c1")
	as.write(map[string]*string{"a-own": str("v")})
	copySets(t, cs, as, "c", RangeSet{{1, 10}})
	// Every member a knows of had seen c up to 8 when a purged.
	if _, err := as.Purge(ctx, map[string]map[string]uint64{"x": {"c": 8, "a": 1}}); err != nil {
		t.Fatal(err)
	}
	bs := newClusterStore(t, "b", "c1")
	copySets(t, cs, bs, "c", RangeSet{{1, 2}})
	for i := range 3 {
		bs.write(map[string]*string{fmt.Sprintf("b-own-%d", i): str("unreplicated")})
	}

	tc := newTestCluster()
	a := startEngine(t, tc, "a", as, [][]byte{testSecret('k')})
	waitReady(t, a)
	b := startEngine(t, tc, "b", bs, [][]byte{testSecret('k')}, func(c *Config) { c.SyncInterval = 200 * time.Millisecond })
	b.wantErr = ErrRebuilt
	if err := b.ended(t); !errors.Is(err, ErrRebuilt) {
		t.Fatalf("Run = %v, want ErrRebuilt", err)
	}
	if got := as.heldOf("b"); got.String() != "[1-3]" {
		t.Fatalf("a holds %v of b's own writes, want all of them", got)
	}
	if !strings.Contains(as.dump(), "b-own-2") {
		t.Fatal("b's unreplicated rows did not reach a")
	}
	b.stop()

	// The restart: the store is emptied before it opens.
	if err := bs.db.Close(); err != nil {
		t.Fatal(err)
	}
	done, err := CompleteRebuild(bs.cfg)
	if err != nil || !done {
		t.Fatalf("CompleteRebuild = %v %v", done, err)
	}
	bs = openTestStore(t, bs.cfg)
	if need, err := bs.NeedsBootstrap(ctx); err != nil || !need || bs.NodeID() == "b" {
		t.Fatalf("b must need a bootstrap under a new id: need=%v id=%s err=%v", need, bs.NodeID(), err)
	}
	tc.setState("b", cluster.StateLeft)
	b2 := startEngine(t, tc, bs.NodeID(), bs, [][]byte{testSecret('k')})
	waitReady(t, b2)
	waitConverged(t, a, b2)
}

// The runbook for a damaged table: remove it (db remove-table) and
// restart; the node resyncs from its peers and is not ready until then.
func TestRemovedTableResyncs(t *testing.T) {
	tc, nodes := threeNodes(t)
	for j := range 50 {
		nodes[j%3].store.write(map[string]*string{fmt.Sprintf("k%d", j): str("v"), fmt.Sprintf("k%d", j/2): nil})
	}
	waitConverged(t, nodes...)
	c := nodes[2]
	c.stop()
	if err := c.store.db.Close(); err != nil {
		t.Fatal(err)
	}
	if err := storage.RemoveTable(c.store.cfg, storage.TablePools); err != nil {
		t.Fatal(err)
	}
	cs := openTestStore(t, c.store.cfg)
	if cs.isReady() {
		t.Fatal("a store with a table under resync reports ready")
	}
	if need, err := cs.NeedsBootstrap(context.Background()); err != nil || !need {
		t.Fatalf("NeedsBootstrap = %v %v", need, err)
	}
	tc.setState("c", cluster.StateLeft)
	c2 := startEngine(t, tc, cs.NodeID(), cs, [][]byte{testSecret('k')})
	waitReady(t, c2)
	nodes[0].store.write(map[string]*string{"after": str("v")})
	waitConverged(t, nodes[0], nodes[1], c2)
	if !cs.isReady() {
		t.Fatalf("resynced store not ready: %v", cs.db.Ready())
	}
}

// A first node that nothing says has company starts the cluster's state at
// once; BootstrapAloneAfter (an hour here) would otherwise hold it back.
func TestBootstrapAloneIsReadyAtOnce(t *testing.T) {
	tc := newTestCluster()
	tc.alone = true
	n := startEngine(t, tc, "a", newTestStore(t, "a"), [][]byte{testSecret('k')},
		func(c *Config) { c.BootstrapAloneAfter = time.Hour })
	waitReady(t, n)
	if !n.store.isReady() {
		t.Fatal("engine ready but the store is not")
	}
}

// When discovery knows of other nodes (a seed, a DNS answer, a remembered
// member), an empty node keeps waiting for them rather than starting a
// cluster of its own.
func TestBootstrapWaitsWhenOthersAreKnown(t *testing.T) {
	for _, tt := range []struct {
		name  string
		alone bool
		other bool // a member that is alive but not ready yet
	}{
		{name: "discovery names others", alone: false},
		{name: "a new member is alive", alone: true, other: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tc := newTestCluster()
			tc.alone = tt.alone
			if tt.other {
				tc.add("b", "r", "127.0.0.1:1")
			}
			n := startEngine(t, tc, "a", newTestStore(t, "a"), [][]byte{testSecret('k')},
				func(c *Config) { c.BootstrapAloneAfter = time.Hour })
			select {
			case <-n.eng.Ready():
				t.Fatal("an empty node turned ready by itself while other nodes are known")
			case <-time.After(2 * time.Second):
			}
		})
	}
}

// Flush (a graceful leave) returns once every alive member holds every own
// change set; dead members are reported, not waited for; an alive member
// without a stream is waited for and named when time runs out.
func TestFlush(t *testing.T) {
	tc, nodes := threeNodes(t)
	a, b := nodes[0], nodes[1]
	for j := range 50 {
		a.store.write(map[string]*string{fmt.Sprintf("k%d", j): str("v")})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := a.eng.Flush(ctx)
	if err != nil || strings.Join(res.Applied, ",") != "b,c" || len(res.Missing) != 0 {
		t.Fatalf("flush: %+v %v", res, err)
	}
	for _, n := range nodes[1:] {
		if got, own := n.store.heldOf("a"), a.store.heldOf("a"); got.String() != own.String() {
			t.Fatalf("%s holds %v of a after the flush, a issued %v", n.id, got, own)
		}
	}

	// c is cut off (dead to a): reported, not waited for.
	tc.partition([]string{"a", "b"}, []string{"c"})
	a.store.write(map[string]*string{"after-cut": str("v")})
	res, err = a.eng.Flush(ctx)
	if err != nil || strings.Join(res.Applied, ",") != "b" || len(res.Missing) != 1 || res.Missing[0].Reason != "dead" {
		t.Fatalf("flush with c dead: %+v %v", res, err)
	}

	// b stops but stays alive in the membership: waited for, then named.
	b.stop()
	a.store.write(map[string]*string{"after-stop": str("v")})
	short, cancelShort := context.WithTimeout(context.Background(), time.Second)
	defer cancelShort()
	res, err = a.eng.Flush(short)
	if !errors.Is(err, ErrWaitTimeout) || len(res.Applied) != 0 {
		t.Fatalf("flush with b gone: %+v %v", res, err)
	}
	reasons := map[string]string{}
	for _, m := range res.Missing {
		reasons[m.Name] = m.Reason
	}
	if r := reasons["b"]; r != "not connected" && r != "pending" {
		t.Fatalf("b missing as %q: %+v", r, res.Missing)
	}
	if reasons["c"] != "dead" {
		t.Fatalf("c missing as %q: %+v", reasons["c"], res.Missing)
	}
}

// Config.Dial carries every outbound stream: with a dialer that counts,
// the nodes converge and every dial went through it.
func TestDialHook(t *testing.T) {
	var dials atomic.Int64
	_, nodes := threeNodes(t, func(c *Config) {
		c.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			dials.Add(1)
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		}
	})
	nodes[0].store.write(map[string]*string{"k": str("v")})
	waitConverged(t, nodes...)
	if dials.Load() == 0 {
		t.Fatal("the streams were not dialled through Config.Dial")
	}
}

// A stream to a busy peer (its applies are slow, so acks come late) sends
// what accumulated while a frame was unacknowledged in one Push frame,
// rather than a frame per commit, and every commit still arrives.
func TestPushCoalescesUnderLoad(t *testing.T) {
	_, nodes := threeNodes(t, func(c *Config) { c.PushInterval = time.Second })
	a := nodes[0]
	waitUntil(t, "a's streams up", func() bool {
		up := 0
		for _, s := range a.eng.Status() {
			if s.Connected {
				up++
			}
		}
		return up == 2
	})
	// The peers' applies wait until every commit is made: the busy peer,
	// made deterministic (a sleep per apply raced the commit loop on a
	// loaded machine).
	release := make(chan struct{})
	for _, n := range nodes[1:] {
		n.store.mu.Lock()
		n.store.applyGate = func() error { <-release; return nil }
		n.store.mu.Unlock()
	}
	frames0, sets0 := testutil.ToFloat64(a.eng.metrics.pushFrames), testutil.ToFloat64(a.eng.metrics.pushed)
	const commits = 20
	for i := range commits {
		a.store.write(map[string]*string{fmt.Sprintf("busy-%d", i): str("round_robin")})
		// Slower than PushDelay, so without the window each commit
		// would go in a frame of its own.
		time.Sleep(3 * time.Millisecond)
	}
	close(release)
	waitConverged(t, nodes...)
	waitUntil(t, "every commit pushed to both peers", func() bool {
		return testutil.ToFloat64(a.eng.metrics.pushed)-sets0 >= 2*commits
	})
	frames := testutil.ToFloat64(a.eng.metrics.pushFrames) - frames0
	if frames > 2*commits/4 {
		t.Fatalf("%d commits went to 2 busy peers in %.0f push frames; want them coalesced (at most %d)", commits, frames, 2*commits/4)
	}
}

// An alive member without a stream yet (its stream was refused while it
// bootstrapped, and the redial waits out the backoff) is waited for a
// bounded grace: once its stream comes up and it applies the write, the
// wait succeeds with it among the members that applied it. Before, the
// wait returned at once naming it "not connected", and an ACME order
// placed right after a node joined failed its challenge.
func TestWaitAppliedGivesAnUnconnectedMemberAGrace(t *testing.T) {
	tc := newTestCluster()
	var open atomic.Bool
	gated := func(c *Config) {
		c.HandshakeTimeout = 2 * time.Second
		c.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			if !open.Load() {
				return nil, errors.New("test: dial gated")
			}
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		}
	}
	a := startEngine(t, tc, "a", newTestStore(t, "a"), [][]byte{testSecret('k')}, gated)
	waitReady(t, a)
	b := startEngine(t, tc, "b", newTestStore(t, "b"), [][]byte{testSecret('k')})
	waitReady(t, b)
	if st := a.eng.Status(); st["b"].Connected {
		t.Fatal("a has a stream to b through a closed gate")
	}

	t.Run("connects within the grace", func(t *testing.T) {
		seq := a.store.write(map[string]*string{"token": str("t1")})
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		done := waitAppliedAsync(ctx, a, seq)
		open.Store(true)
		r := receiveWait(t, done, 90*time.Second)
		if r.err != nil || strings.Join(r.res.Applied, ",") != "b" || len(r.res.Missing) != 0 {
			t.Fatalf("wait with b connecting: %+v %v; want b applied", r.res, r.err)
		}
	})

	t.Run("never connects", func(t *testing.T) {
		open.Store(false)
		b.stop()
		waitUntil(t, "a's stream to b to end", func() bool { return !a.eng.Status()["b"].Connected })
		seq := a.store.write(map[string]*string{"token": str("t2")})
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		res, err := a.eng.WaitApplied(ctx, seq)
		if err != nil || len(res.Applied) != 0 || len(res.Missing) != 1 || res.Missing[0].Reason != "not connected" {
			t.Fatalf("wait with b gone: %+v %v; want b reported not connected after the grace", res, err)
		}
	})
}

// A peer record goes once its node id is no alive or suspect member and
// nothing was heard from it for EvictAfter: a node whose id changed (a
// restored backup) left its old id's pending sets and lag growing in
// /metrics forever. A member merely partitioned keeps its record until
// then, and its watermarks hold purge back; once forgotten it no longer
// does.
func TestPeerRecordsForgottenAfterEviction(t *testing.T) {
	var offset atomic.Int64 // the engines' clock, ahead of the wall clock
	now := func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	const evict = time.Hour
	tc, nodes := threeNodes(t, func(c *Config) { c.Now = now; c.EvictAfter = evict })
	a := nodes[0]
	a.store.write(map[string]*string{"x": str("1")})
	waitConverged(t, nodes...)
	waitUntil(t, "books from b and c", func() bool {
		wm, ok := a.eng.purgeWatermarks()
		return ok && len(wm) == 2
	})
	// c takes a new node id (restored from a backup): its old id is no
	// member any more. b is cut off from a and c: dead to a.
	nodes[2].stop()
	tc.mu.Lock()
	delete(tc.members, "c")
	tc.notifyLocked()
	tc.mu.Unlock()
	tc.partition([]string{"a", "c"}, []string{"b"})
	a.store.write(map[string]*string{"y": str("2")}) // pending for b and c
	// Move the clock only once nothing more comes from b: a frame of b
	// handled after the move would count as heard then, and keep b's
	// record for another eviction time. a's stream to b ends as soon as a
	// sees b dead; b's to a once b's membership pass (every second) sees a
	// dead, so b's last contact must hold still across more than a pass.
	lastContact := func() time.Time {
		if st, ok := a.eng.Status()["b"]; ok && st.LastContact != nil {
			return *st.LastContact
		}
		return time.Time{}
	}
	waitUntil(t, "nothing more from b", func() bool {
		st, ok := a.eng.Status()["b"]
		if !ok || st.Connected {
			return false
		}
		before := lastContact()
		time.Sleep(1500 * time.Millisecond)
		return lastContact().Equal(before)
	})
	peerIDs := func() []string {
		var ids []string
		for id := range a.eng.Status() {
			ids = append(ids, id)
		}
		sort.Strings(ids)
		return ids
	}
	// Within the eviction time both records stay, and b, merely
	// partitioned, still holds purge back with what it reported.
	offset.Store(int64(evict - time.Minute))
	time.Sleep(1500 * time.Millisecond) // a membership pass (every second)
	if got := peerIDs(); !slices.Equal(got, []string{"b", "c"}) {
		t.Fatalf("peer records within the eviction time: %v, want [b c]", got)
	}
	if wm, ok := a.eng.purgeWatermarks(); !ok || wm["b"] == nil {
		t.Fatalf("a partitioned member within the eviction time must hold purge back: %v %v", wm, ok)
	}
	// Past it, both go: from the status, from /metrics, and from purge.
	offset.Store(int64(evict + time.Minute))
	waitUntil(t, "peer records of b and c forgotten", func() bool { return len(peerIDs()) == 0 })
	mfs, err := a.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if strings.HasPrefix(mf.GetName(), "singularity_edge_replication_peer_") && len(mf.GetMetric()) > 0 {
			t.Errorf("%s still exported for a forgotten peer", mf.GetName())
		}
	}
	if wm, ok := a.eng.purgeWatermarks(); !ok || len(wm) != 0 {
		t.Fatalf("purge after the eviction time: %v %v, want no member and no block", wm, ok)
	}
	// b comes back: its record is made again and its stream carries the
	// write it missed.
	tc.partition()
	waitUntil(t, "b back", func() bool { return slices.Equal(peerIDs(), []string{"b"}) })
	waitConverged(t, a, nodes[1])
}
