package replication

// Engine tests over real TCP and TLS on loopback, with memStore standing in
// for the store of issue 8 (see memstore_test.go). Re-point at the storage
// adapter after the merge: TestConvergeConcurrentWrites,
// TestDroppedPushesFilledByCatchUp, TestPartitionHeal,
// TestBootstrapEmptyNode, TestWaitApplied, TestPurgeWatermarks,
// TestOwnOriginAhead.

import (
	"context"
	"errors"
	"fmt"
	"net"
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
)

// testCluster is a membership shared by in-process engines; cut() makes
// members see each other dead, as a partition would.
type testCluster struct {
	mu      sync.Mutex
	members map[string]*cluster.Member // by node id
	cutOff  map[[2]string]bool
	changed chan struct{}
}

func newTestCluster() *testCluster {
	return &testCluster{members: map[string]*cluster.Member{}, cutOff: map[[2]string]bool{}, changed: make(chan struct{})}
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

// partition splits the members into groups that see each other dead.
func (tc *testCluster) partition(groups ...[]string) {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	group := map[string]int{}
	for i, g := range groups {
		for _, id := range g {
			group[id] = i
		}
	}
	tc.cutOff = map[[2]string]bool{}
	for a := range tc.members {
		for b := range tc.members {
			if group[a] != group[b] {
				tc.cutOff[[2]string{a, b}] = true
			}
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
		if v.tc.cutOff[[2]string{v.self, id}] {
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
	id    string
	store *memStore
	eng   *Engine
	reg   *prometheus.Registry
	stop  func()
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

func startEngine(t *testing.T, tc *testCluster, id string, store *memStore, secrets [][]byte, opts ...nodeOpt) *node {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Addr = "127.0.0.1:0"
	cfg.Name = id
	cfg.Region = "r"
	cfg.Secrets = secrets
	cfg.SyncInterval = 300 * time.Millisecond
	cfg.BootstrapAloneAfter = 300 * time.Millisecond
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
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	n := &node{id: id, store: store, eng: e, reg: reg}
	var once sync.Once
	n.stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("%s: Run: %v", id, err)
				}
			case <-time.After(20 * time.Second):
				t.Errorf("%s: Run did not return", id)
			}
		})
	}
	t.Cleanup(n.stop)
	return n
}

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
		t.Logf("%s:\n%s", n.id, n.store.dump())
	}
	t.Fatal("nodes did not converge")
}

func threeNodes(t *testing.T, opts ...nodeOpt) (*testCluster, []*node) {
	tc := newTestCluster()
	var nodes []*node
	for _, id := range []string{"a", "b", "c"} {
		n := startEngine(t, tc, id, newMemStore(id, false), [][]byte{testSecret('k')}, opts...)
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
	if n, err := testutil.GatherAndCount(nodes[0].reg, "edge_replication_peer_pending_sets"); err != nil || n != 2 {
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
	if got := nodes[1].store.heldOf("a"); got.String() != "[1-300]" {
		t.Fatalf("b holds %v of a", got)
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
	for _, want := range []string{`pool="from-b"`, `gone="updated" del=false`, `new="b"`, `kept="c"`} {
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
	d := startEngine(t, tc, "d", newMemStore("d", true), [][]byte{testSecret('k')})
	if d.store.isReady() {
		t.Fatal("an empty store must not start ready")
	}
	waitReady(t, d)
	close(stopWrites)
	select {
	case <-writesDone:
	case <-time.After(10 * time.Second):
		t.Fatal("writer did not stop")
	}
	waitConverged(t, append(nodes, d)...)
	if h := d.store.heldOf("d"); len(h) != 0 {
		t.Fatalf("the new node originated %v", h)
	}
	if testutil.ToFloat64(d.eng.metrics.snapshotBytes.WithLabelValues("in")) == 0 {
		t.Fatal("no snapshot was streamed")
	}
}

func TestFirstNodeOfClusterBecomesReady(t *testing.T) {
	tc := newTestCluster()
	n := startEngine(t, tc, "solo", newMemStore("solo", true), [][]byte{testSecret('k')})
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
	block := make(chan struct{})
	nodes[2].store.mu.Lock()
	nodes[2].store.applyGate = func() error { <-block; return nil }
	nodes[2].store.mu.Unlock()
	defer close(block)
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

func TestPurgeWatermarks(t *testing.T) {
	tc, nodes := threeNodes(t)
	nodes[1].store.write(map[string]*string{"x": str("1")})
	waitConverged(t, nodes...)
	waitUntil(t, "books from every peer", func() bool {
		wm, ok := nodes[0].eng.purgeWatermarks()
		return ok && len(wm) == 2 && wm["b"]["b"] == 1 && wm["c"]["b"] == 1
	})
	// An alive member never heard from blocks the purge.
	tc.add("silent", "r", "127.0.0.1:1")
	if _, ok := nodes[0].eng.purgeWatermarks(); ok {
		t.Fatal("a member without a report must block the purge")
	}
	// A dead one is left out (evicted once EvictAfter passes).
	tc.setState("silent", cluster.StateDead)
	if wm, ok := nodes[0].eng.purgeWatermarks(); !ok || len(wm) != 2 {
		t.Fatalf("dead member: %v %v", wm, ok)
	}
}

func TestOwnOriginAhead(t *testing.T) {
	tc := newTestCluster()
	a := startEngine(t, tc, "a", newMemStore("a", false), [][]byte{testSecret('k')})
	// b holds seqs 1-5 of a's origin that a (restored from an old backup)
	// no longer has.
	bs := newMemStore("b", false)
	for i := 1; i <= 5; i++ {
		bs.held["a"] = bs.held["a"].Union(RangeSet{{uint64(i), uint64(i)}})
	}
	startEngine(t, tc, "b", bs, [][]byte{testSecret('k')})
	waitUntil(t, "a told its origin is ahead", func() bool {
		a.store.mu.Lock()
		defer a.store.mu.Unlock()
		return a.store.observed == 5
	})
}

func TestStreamAuthentication(t *testing.T) {
	tc := newTestCluster()
	a := startEngine(t, tc, "a", newMemStore("a", false), [][]byte{testSecret('o'), testSecret('n')})
	waitReady(t, a)
	addr := a.eng.Addr().String()
	dialAs := func(secrets [][]byte, clusterID string) error {
		s := newMemStore("x", false)
		s.cluster = clusterID
		cfg := DefaultConfig()
		cfg.Addr = "127.0.0.1:0"
		cfg.Secrets = secrets
		e, err := New(cfg, s, newTestCluster().view("x"))
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
	if err := dialAs([][]byte{testSecret('n'), testSecret('o')}, "c1"); err != nil {
		t.Fatalf("mixed keyrings: %v", err)
	}
	before := tlsRejects()
	if err := dialAs([][]byte{testSecret('z')}, "c1"); err == nil {
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
	f.Add(appendFrame(nil, msgPush, encodeSets([]EncodedSet{{Origin: "a", Seq: 1, HLC: 2, Data: []byte("d")}})))
	f.Add(appendFrame(nil, msgSyncState, encodeBooks(Books{"a": BookOf(RangeSet{{1, 3}, {5, 9}})})))
	f.Add(appendFrame(nil, msgSyncRows, syncRows{Origin: "a", Covered: RangeSet{{1, 2}}, Sets: []EncodedSet{{Origin: "a", Seq: 2}}}.encode()))
	f.Add(appendFrame(nil, msgAck, encodeAck(map[string]RangeSet{"a": {{1, 1}}})))
	f.Add(appendFrame(nil, msgSnapshotHeader, encodeSnapshotHeader(SnapshotHeader{Books: Books{}, Meta: []byte("m")})))
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, err := readFrame(strings.NewReader(string(b)), 1<<16)
		if err != nil {
			return
		}
		if err := decodePayload(fr); err != nil && !errors.Is(err, ErrBadFrame) {
			t.Fatalf("decode error not ErrBadFrame: %v", err)
		}
		if fr.typ == msgSyncState {
			if bs, err := decodeBooks(fr.payload); err == nil {
				for o, b := range bs {
					if !b.Held().Valid() || b.Held().Max() != b.Max {
						t.Fatalf("book %s invalid: %+v", o, b)
					}
				}
			}
		}
	})
}

// A node behind a tombstone purge hands its own unreplicated writes to the
// peer, then discards its state and ends Run with ErrRebuilt.
func TestTooStaleRebuilds(t *testing.T) {
	tc := newTestCluster()
	as := newMemStore("a", false)
	// a holds origin c's seqs 1-10 and purged its tombstones up to 8.
	as.held["c"] = RangeSet{{1, 10}}
	as.floor = map[string]uint64{"c": 8}
	a := startEngine(t, tc, "a", as, [][]byte{testSecret('k')})
	waitReady(t, a)

	bs := newMemStore("b", false)
	bs.held["c"] = RangeSet{{1, 2}}
	bs.ready = true
	for i := range 3 {
		bs.write(map[string]*string{fmt.Sprintf("b-own-%d", i): str("unreplicated")})
	}
	cfg := DefaultConfig()
	cfg.Addr = "127.0.0.1:0"
	cfg.Name = "b"
	cfg.Secrets = [][]byte{testSecret('k')}
	cfg.SyncInterval = 200 * time.Millisecond
	cfg.Logger = quietLogger(t).Named("b")
	e, err := New(cfg, bs, tc.view("b"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	tc.add("b", "r", e.Addr().String())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	select {
	case err := <-done:
		if !errors.Is(err, ErrRebuilt) {
			t.Fatalf("Run = %v, want ErrRebuilt", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("b never found out it was too stale")
	}
	if got := as.heldOf("b"); got.String() != "[1-3]" {
		t.Fatalf("a holds %v of b's own writes, want all of them", got)
	}
	if !strings.Contains(as.dump(), "b-own-2") {
		t.Fatal("b's unreplicated rows did not reach a")
	}
	if need, _ := bs.NeedsBootstrap(ctx); !need || bs.NodeID() == "b" {
		t.Fatalf("b must need a bootstrap under a new id: need=%v id=%s", need, bs.NodeID())
	}
}
