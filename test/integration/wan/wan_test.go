// Package wan measures the cluster across slow links: two "regions" of
// agents' membership (discovery) and replication engines, each on its own
// RocksDB store, in one process, with a one-way delay injected between the
// regions (latency_test.go; this kernel has no tc netem, see
// test/integration/cluster/netns_test.go for the netem path). It checks
// that the Fly gossip preset declares nobody suspect or dead across the
// delay, measures change propagation, and reports how the local (LAN)
// preset fares under the same delay.
package wan

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"math/big"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/singularity-ng/singularity-edge/cluster"
	"github.com/singularity-ng/singularity-edge/discovery"
	"github.com/singularity-ng/singularity-edge/replication"
	"github.com/singularity-ng/singularity-edge/storage"
)

// Environment knobs for the long measurement (the defaults keep CI short).
const (
	durationEnv = "EDGE_WAN_DURATION" // how long each case watches, e.g. 3m (default 15s)
	delaysEnv   = "EDGE_WAN_DELAYS"   // one-way delays to run, e.g. 80ms,150ms (default 80ms)
)

type node struct {
	name, region string
	gossip, repl string
	store        *storage.Store
	disc         *discovery.Discovery
	eng          *replication.Engine
	logs         *observer.ObservedLogs
	cancel       context.CancelFunc
	wg           sync.WaitGroup
}

// lab is the nodes of one case and the address → region map the delay
// reads.
type lab struct {
	t       testing.TB
	preset  string
	delay   time.Duration
	key     string
	mu      sync.Mutex
	regions map[string]string // host:port (gossip and replication) → region
	nodes   []*node
	// wire counts the TCP payload bytes (TLS records included) of every
	// replication stream, both ways: every stream is some node's dial.
	wire atomic.Int64
}

func (l *lab) regionOf(addr string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.regions[addr]
}

// delayFrom is the one-way delay from region to addr's region.
func (l *lab) delayFrom(region string) delayFunc {
	return func(addr string) time.Duration {
		if r := l.regionOf(addr); r != "" && r != region {
			return l.delay
		}
		return 0
	}
}

func freeAddr(t testing.TB) string {
	t.Helper()
	for range 100 {
		n, _ := rand.Int(rand.Reader, big.NewInt(20000))
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(30000+int(n.Int64())))
		tl, err := net.Listen("tcp", addr)
		if err != nil {
			continue
		}
		ul, err := net.ListenPacket("udp", addr)
		tl.Close()
		if err != nil {
			continue
		}
		ul.Close()
		return addr
	}
	t.Fatal("no free port")
	return ""
}

func (l *lab) start(name, region string, seeds []string) *node {
	t := l.t
	n := &node{name: name, region: region, gossip: freeAddr(t), repl: freeAddr(t)}
	l.mu.Lock()
	l.regions[n.gossip], l.regions[n.repl] = region, region
	l.mu.Unlock()

	scfg := storage.DefaultConfig()
	scfg.Dir = t.TempDir()
	scfg.SyncWAL = false
	st, err := storage.Open(scfg)
	if err != nil {
		t.Fatal(err)
	}
	n.store = st
	// Debug: memberlist's "Suspect ... has failed" and "Marking ... as
	// failed" lines are INFO in memberlist, debug through the log bridge.
	core, logs := observer.New(zapcore.DebugLevel)
	n.logs = logs
	log := zap.New(core)

	dcfg, err := discovery.ConfigForPreset(l.preset)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := discovery.ParseKeys(l.key, "")
	if err != nil {
		t.Fatal(err)
	}
	dcfg.Name, dcfg.BindAddr, dcfg.App, dcfg.Keys = name, n.gossip, "wan-it", keys
	dcfg.Meta = discovery.Meta{ClusterID: "app:wan-it", NodeID: st.NodeID(), Region: region, ReplicationAddr: n.repl, AgentVersion: "test"}
	dcfg.Logger = log.Named("discovery")
	delay := l.delayFrom(region)
	dcfg.WrapTransport = func(tr memberlistTransport) memberlistTransport { return &delayTransport{Transport: tr, delay: delay} }
	if len(seeds) > 0 {
		s, err := discovery.NewStaticSource(seeds)
		if err != nil {
			t.Fatal(err)
		}
		dcfg.Sources = append(dcfg.Sources, s)
	}
	n.disc, err = discovery.New(dcfg)
	if err != nil {
		t.Fatal(err)
	}

	rs, err := replication.NewRocksStore(st, replication.DefaultRocksConfig())
	if err != nil {
		t.Fatal(err)
	}
	rcfg := replication.DefaultConfig()
	rcfg.Addr, rcfg.Name, rcfg.Region = n.repl, name, region
	rcfg.Secrets = append([][]byte{keys.Primary}, keys.Extra...)
	rcfg.BootstrapAloneAfter = time.Second
	rcfg.Logger = log.Named("replication")
	rcfg.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		var d net.Dialer
		raw, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		c := net.Conn(&countingConn{Conn: raw, n: &l.wire})
		if dl := delay(addr); dl > 0 {
			return newDelayConn(c, dl), nil
		}
		return c, nil
	}
	n.eng, err = replication.New(rcfg, rs, n.disc)
	if err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	n.cancel = cancel
	if err := n.disc.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := n.eng.Start(ctx); err != nil {
		t.Fatal(err)
	}
	n.wg.Add(2)
	go func() { defer n.wg.Done(); _ = n.disc.Run(ctx) }()
	go func() { defer n.wg.Done(); _ = n.eng.Run(ctx) }()
	t.Cleanup(n.stop)
	l.nodes = append(l.nodes, n)
	return n
}

func (n *node) stop() {
	if n.cancel == nil {
		return
	}
	n.cancel()
	n.cancel = nil
	_ = n.disc.Leave(time.Second)
	n.wg.Wait()
	n.eng.Close()
	_ = n.store.Close()
}

func waitReady(t testing.TB, n *node, limit time.Duration) {
	t.Helper()
	select {
	case <-n.eng.Ready():
	case <-time.After(limit):
		t.Fatalf("%s not ready after %s", n.name, limit)
	}
}

// waitUntil waits for cond; past limit it fails the test when strict, or
// logs and returns false (a comparison case reports what it saw).
func waitUntil(t testing.TB, strict bool, what string, limit time.Duration, cond func() bool) bool {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			if strict {
				t.Fatalf("timed out after %s waiting for %s", limit, what)
			}
			t.Logf("not reached within %s: %s", limit, what)
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
	return true
}

// allAlive reports whether n sees every other node alive.
func allAlive(n *node, total int) bool {
	alive := 0
	for _, m := range n.disc.Members() {
		if m.State == cluster.StateAlive {
			alive++
		}
	}
	return alive == total
}

func writePool(t testing.TB, n *node, name string) uint64 {
	t.Helper()
	now := time.Now().UTC()
	c, err := n.store.Update(context.Background(), func(tx *storage.Tx) error {
		return tx.PutPool(&storage.Pool{Name: name, Algorithm: "round_robin", SSLMode: "off",
			HealthCheckInterval: time.Hour, HealthCheck: storage.HealthCheck{Type: "tcp", Timeout: time.Second, Rise: 1, Fall: 1},
			InsertedAt: now, UpdatedAt: now})
	})
	if err != nil {
		t.Fatal(err)
	}
	return c.Version.Seq
}

func percentile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[min(len(s)-1, int(float64(len(s))*q))]
}

func pctF(fs []float64, q float64) float64 {
	if len(fs) == 0 {
		return 0
	}
	s := append([]float64(nil), fs...)
	sort.Float64s(s)
	return s[min(len(s)-1, int(float64(len(s))*q))]
}

// countingConn adds the bytes read and written to n.
type countingConn struct {
	net.Conn
	n *atomic.Int64
}

func (c *countingConn) Read(p []byte) (int, error) {
	k, err := c.Conn.Read(p)
	c.n.Add(int64(k))
	return k, err
}

func (c *countingConn) Write(p []byte) (int, error) {
	k, err := c.Conn.Write(p)
	c.n.Add(int64(k))
	return k, err
}

// result is what one case measured.
type result struct {
	suspectObs, deadObs int       // polls that saw a member suspect / dead
	suspectLogs         int       // memberlist's "Suspect ..." and "Marking ... as failed" lines
	crossRTT            []float64 // probe round trips between regions, ms (one sample per poll)
	p50, p99, max       time.Duration
	writes              int
	lost                int // comparison cases: writes not on every node within 30 s
	fallbacks           int // probes whose UDP ack missed the timeout but the TCP fallback ping answered
	nodes               int
	wireBytes           int64 // replication TCP bytes during the writes, all streams, both ways
}

// wirePerWrite is the replication bytes per write (pushes, acks and the
// periodic bookkeeping exchange of every pair, TLS records included).
func (r result) wirePerWrite() float64 {
	if r.writes == 0 {
		return 0
	}
	return float64(r.wireBytes) / float64(r.writes)
}

func (r result) String() string {
	return fmt.Sprintf("writes %d, propagation to the last of %d nodes p50 %s p99 %s max %s; replication wire bytes per write %.0f (%.0f per peer); cross-region probe RTT p50 %.0f ms max %.0f ms; "+
		"suspect seen %d polls, dead seen %d polls, suspicion/failure log lines %d, writes not everywhere within 30 s %d, probes saved by the TCP fallback %d",
		r.writes, r.nodes, r.p50.Round(time.Millisecond), r.p99.Round(time.Millisecond), r.max.Round(time.Millisecond),
		r.wirePerWrite(), r.wirePerWrite()/float64(max(1, r.nodes-1)),
		pctF(r.crossRTT, 0.5), pctF(r.crossRTT, 1), r.suspectObs, r.deadObs, r.suspectLogs, r.lost, r.fallbacks)
}

// runCase starts 5 nodes in two regions (3 and 2), waits for them to be
// one cluster, then for watch writes 10 pools a second on random nodes
// while sampling every node's view of the others every 50 ms. A write's
// propagation is the time from its commit to its apply on the last of the
// other 4 nodes.
//
// A strict case fails on anything short of a stable cluster; a comparison
// case (strict false) logs it instead, and counts writes that did not reach
// every node within 30 s as lost rather than failing.
func runCase(t testing.TB, preset string, delay, watch time.Duration, strict bool) result {
	l := &lab{t: t, preset: preset, delay: delay, regions: map[string]string{}}
	k := make([]byte, 32)
	_, _ = rand.Read(k)
	l.key = base64.StdEncoding.EncodeToString(k)
	seed := l.start("a1", "ams", nil)
	waitReady(t, seed, 30*time.Second)
	l.start("a2", "ams", []string{seed.gossip})
	l.start("a3", "ams", []string{seed.gossip})
	l.start("b1", "syd", []string{seed.gossip})
	l.start("b2", "syd", []string{seed.gossip})
	const total = 5
	for _, n := range l.nodes {
		waitReady(t, n, 60*time.Second)
		waitUntil(t, strict, n.name+" sees every member alive", 60*time.Second, func() bool { return allAlive(n, total) })
	}
	// The streams are up once every node lists the others connected.
	waitUntil(t, strict, "every replication stream up", 60*time.Second, func() bool {
		for _, n := range l.nodes {
			up := 0
			for _, s := range n.eng.Status() {
				if s.Connected {
					up++
				}
			}
			if up < total-1 {
				return false
			}
		}
		return true
	})
	for _, n := range l.nodes {
		n.logs.TakeAll()
	}

	var res result
	var mu sync.Mutex
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			for _, n := range l.nodes {
				for _, m := range n.disc.Members() {
					mu.Lock()
					switch m.State {
					case cluster.StateSuspect:
						res.suspectObs++
					case cluster.StateDead:
						res.deadObs++
					}
					if m.Region != n.region && m.RTTMS > 0 {
						res.crossRTT = append(res.crossRTT, m.RTTMS)
					}
					mu.Unlock()
				}
			}
		}
	}()

	var lat []time.Duration
	wire0 := l.wire.Load()
	end := time.Now().Add(watch)
	for i := 0; time.Now().Before(end); i++ {
		j, _ := rand.Int(rand.Reader, big.NewInt(total))
		origin := l.nodes[j.Int64()]
		start := time.Now()
		seq := writePool(t, origin, fmt.Sprintf("w-%d", i))
		id := origin.store.NodeID()
		reached := true
		for _, n := range l.nodes {
			if n == origin || !reached {
				continue
			}
			for !n.store.Bookkeeping()[id].Contains(seq) {
				if strict && time.Since(start) > time.Minute {
					t.Fatalf("write %d of %s not on %s after a minute", seq, origin.name, n.name)
				}
				if !strict && time.Since(start) > 30*time.Second {
					res.lost++
					reached = false
					break
				}
				time.Sleep(time.Millisecond)
			}
		}
		if reached {
			lat = append(lat, time.Since(start))
		}
		time.Sleep(max(0, 100*time.Millisecond-time.Since(start)))
	}
	res.wireBytes = l.wire.Load() - wire0
	res.nodes = total
	close(stop)
	wg.Wait()
	for _, n := range l.nodes {
		for _, e := range n.logs.All() {
			if strings.Contains(e.Message, "Suspect") || strings.Contains(e.Message, "as failed") {
				res.suspectLogs++
			}
			if strings.Contains(e.Message, "UDP probes failed") {
				res.fallbacks++
			}
		}
	}
	res.writes = len(lat) + res.lost
	res.p50, res.p99, res.max = percentile(lat, 0.5), percentile(lat, 0.99), percentile(lat, 1)

	if !strict {
		return res
	}
	// The delay was really there, on gossip and on the streams.
	if rtt := pctF(res.crossRTT, 0.5); delay > 0 && rtt < float64(2*delay/time.Millisecond) {
		t.Errorf("cross-region probe RTT p50 %.0f ms, below the injected %s each way", rtt, delay)
	}
	if res.p50 < delay {
		t.Errorf("propagation p50 %s is below the injected %s: the streams were not delayed", res.p50, delay)
	}
	// And the cluster converged: every node holds every node's writes.
	want := l.nodes[0].store.Bookkeeping()
	for _, n := range l.nodes[1:] {
		got := n.store.Bookkeeping()
		for o, rs := range want {
			if !got[o].ContainsAll(rs) {
				t.Errorf("%s misses writes of %s: %v of %v", n.name, o, got[o], rs)
			}
		}
	}
	return res
}

func settings(t testing.TB) (time.Duration, []time.Duration) {
	watch := 15 * time.Second
	if v := os.Getenv(durationEnv); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			t.Fatalf("%s=%q: want a duration such as 3m", durationEnv, v)
		}
		watch = d
	}
	delays := []time.Duration{80 * time.Millisecond}
	if v := os.Getenv(delaysEnv); v != "" {
		delays = nil
		for _, s := range strings.Split(v, ",") {
			d, err := time.ParseDuration(strings.TrimSpace(s))
			if err != nil || d < 0 {
				t.Fatalf("%s=%q: want durations such as 0s,80ms,150ms (0s: no added delay)", delaysEnv, v)
			}
			delays = append(delays, d)
		}
	}
	return watch, delays
}

// The Fly preset across the delay between two regions: nobody is ever
// suspected or declared dead, every write reaches every node, and the
// propagation figures are logged beside the goal.
func TestFlyPresetAcrossRegions(t *testing.T) {
	if testing.Short() {
		t.Skip("measures for 15 s or more")
	}
	watch, delays := settings(t)
	for _, d := range delays {
		t.Run(d.String(), func(t *testing.T) {
			res := runCase(t, "fly", d, watch, true)
			t.Logf("fly preset, %s one-way between 2 regions (3 and 2 nodes), %s: %s", d, watch, res)
			if res.suspectObs+res.deadObs+res.suspectLogs > 0 {
				t.Errorf("the fly preset suspected a member across %s: %s", d, res)
			}
		})
	}
}

// BenchmarkPresetsAcrossRegions is the comparison `make bench-wan` runs:
// the fly preset beside the local (LAN) one under each delay. The local
// probe timeout (200 ms) is close to an 80 ms link's 160 ms round trip and
// below a 150 ms link's, so it declares far regions dead; how often depends
// on the load. Reported per case: propagation p50/p99 (ms), polls that saw
// a member suspect or dead, writes not everywhere within 30 s.
func BenchmarkPresetsAcrossRegions(b *testing.B) {
	watch, delays := settings(b)
	for _, d := range delays {
		for _, preset := range []string{"fly", "local"} {
			b.Run(preset+"/"+d.String(), func(b *testing.B) {
				for range b.N {
					res := runCase(b, preset, d, watch, false)
					b.Logf("%s preset, %s one-way between 2 regions (3 and 2 nodes), %s: %s", preset, d, watch, res)
					b.ReportMetric(float64(res.p50.Milliseconds()), "p50-ms")
					b.ReportMetric(float64(res.p99.Milliseconds()), "p99-ms")
					b.ReportMetric(float64(res.suspectObs), "suspect-polls")
					b.ReportMetric(float64(res.deadObs), "dead-polls")
					b.ReportMetric(float64(res.lost), "lost-30s")
					b.ReportMetric(float64(res.fallbacks), "tcp-fallback-probes")
					b.ReportMetric(res.wirePerWrite(), "wire-B/write")
				}
			})
		}
	}
}
