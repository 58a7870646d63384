package discovery

import (
	"context"
	"encoding/base64"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/singularity-ng/singularity-edge/cluster"
	"github.com/singularity-ng/singularity-edge/test/fakefly"
)

func key(b byte) string {
	return base64.StdEncoding.EncodeToString([]byte(strings.Repeat(string(b), 32)))
}

// freePort finds a port free for TCP and UDP on every ip.
func freePort(t *testing.T, ips ...string) int {
	t.Helper()
	for range 100 {
		p := 20000 + rand.IntN(30000)
		ok := true
		var closers []func() error
		for _, ip := range ips {
			l, err := net.Listen("tcp", net.JoinHostPort(ip, fmt.Sprint(p)))
			if err != nil {
				ok = false
				break
			}
			closers = append(closers, l.Close)
			u, err := net.ListenPacket("udp", net.JoinHostPort(ip, fmt.Sprint(p)))
			if err != nil {
				ok = false
				break
			}
			closers = append(closers, u.Close)
		}
		for _, c := range closers {
			_ = c()
		}
		if ok {
			return p
		}
	}
	t.Fatal("no free port")
	return 0
}

type nodeOpts struct {
	name, ip       string
	port           int
	primary, extra string
	clusterID      string
	cookieFP       string
	sources        []Source
	peersFile      string
	wrap           func(memberlist.Transport) memberlist.Transport
	health         func() string
	now            func() time.Time
}

func startNode(t *testing.T, o nodeOpts) (*Discovery, *prometheus.Registry, context.CancelFunc) {
	t.Helper()
	keys, err := ParseKeys(o.primary, o.extra)
	if err != nil {
		t.Fatal(err)
	}
	cfg := LocalConfig()
	cfg.Name = o.name
	cfg.BindAddr = net.JoinHostPort(o.ip, fmt.Sprint(o.port))
	cfg.App = "edge-test"
	cfg.Keys = keys
	cfg.Meta = Meta{ClusterID: o.clusterID, NodeID: "id-" + o.name, Region: "r-" + o.name, ReplicationAddr: net.JoinHostPort(o.ip, fmt.Sprint(o.port+1))}
	if cfg.Meta.ClusterID == "" {
		cfg.Meta.ClusterID = "c1"
	}
	cfg.Meta.CookieKeyFP = o.cookieFP
	cfg.Sources = o.sources
	cfg.PeersFile = o.peersFile
	cfg.WrapTransport = o.wrap
	cfg.Health = o.health
	cfg.Now = o.now
	cfg.HealthInterval = 100 * time.Millisecond
	cfg.ResolveInterval = 500 * time.Millisecond
	cfg.StartupResolveInterval = 300 * time.Millisecond
	cfg.Logger = testLogger(t).Named(o.name)
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := d.Start(ctx); err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = d.Run(ctx) }()
	stop := func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("discovery loop did not stop")
		}
	}
	return d, reg, stop
}

func shutdown(d *Discovery) { _ = d.ml.Load().Shutdown() }

// waitFor polls cond until it holds or the (generous) deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	waitWithin(t, 30*time.Second, what, cond)
}

func waitWithin(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

func states(d *Discovery) map[string]cluster.State {
	out := map[string]cluster.State{}
	for _, m := range d.Members() {
		out[m.Name] = m.State
	}
	return out
}

func aliveNames(d *Discovery) string {
	var names []string
	for _, m := range d.Members() {
		if m.State == cluster.StateAlive {
			names = append(names, m.Name)
		}
	}
	sort.Strings(names)
	return strings.Join(names, ",")
}

func seeds(t *testing.T, addrs ...string) []Source {
	s, err := NewStaticSource(addrs)
	if err != nil {
		t.Fatal(err)
	}
	return []Source{s}
}

func TestJoinStaticMetadataAndClock(t *testing.T) {
	port := freePort(t, "127.0.0.1", "127.0.0.2", "127.0.0.3")
	seed := fmt.Sprintf("127.0.0.1:%d", port)
	a, _, sa := startNode(t, nodeOpts{name: "a", ip: "127.0.0.1", port: port, primary: key('k')})
	defer sa()
	defer shutdown(a)
	b, _, sb := startNode(t, nodeOpts{name: "b", ip: "127.0.0.2", port: port, primary: key('k'), sources: seeds(t, seed)})
	defer sb()
	defer shutdown(b)
	c, _, sc := startNode(t, nodeOpts{name: "c", ip: "127.0.0.3", port: port, primary: key('k'), sources: seeds(t, seed)})
	defer sc()
	defer shutdown(c)
	for _, d := range []*Discovery{a, b, c} {
		waitFor(t, "three alive members", func() bool { return aliveNames(d) == "a,b,c" })
	}
	for _, m := range a.Members() {
		if m.Name != "b" {
			continue
		}
		if m.ID != "id-b" || m.Region != "r-b" || m.Addresses[cluster.AddrReplication] != fmt.Sprintf("127.0.0.2:%d", port+1) ||
			m.Addresses[cluster.AddrGossip] != fmt.Sprintf("127.0.0.2:%d", port) {
			t.Fatalf("member b as a sees it: %+v", m)
		}
	}
	// Readiness is gossiped.
	if err := b.SetReady(true); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "b ready as seen by a", func() bool {
		for _, m := range a.Members() {
			if m.Name == "b" {
				return m.Ready
			}
		}
		return false
	})
	// Probes measure a round trip and a clock offset (same clock here: tiny).
	waitFor(t, "a probe of b", func() bool {
		for _, m := range a.Members() {
			if m.Name == "b" {
				return m.LastSeen != nil && m.RTTMS > 0
			}
		}
		return false
	})

	// A member that leaves is reported left; one that dies, dead.
	if err := c.Leave(2 * time.Second); err != nil {
		t.Fatal(err)
	}
	// Under load a peer may declare c dead by probe just before the leave
	// broadcast arrives; the leave must still be seen, by one peer at least.
	gone := func(s cluster.State) bool { return s == cluster.StateLeft || s == cluster.StateDead }
	waitFor(t, "c left", func() bool {
		sa, sb := states(a)["c"], states(b)["c"]
		return gone(sa) && gone(sb) && (sa == cluster.StateLeft || sb == cluster.StateLeft)
	})
	shutdown(b)
	waitFor(t, "b dead", func() bool { return states(a)["b"] == cluster.StateDead })
}

func TestWrongKeyIsNotAMember(t *testing.T) {
	port := freePort(t, "127.0.0.1", "127.0.0.2")
	a, reg, sa := startNode(t, nodeOpts{name: "a", ip: "127.0.0.1", port: port, primary: key('k')})
	defer sa()
	defer shutdown(a)
	x, _, sx := startNode(t, nodeOpts{name: "x", ip: "127.0.0.2", port: port, primary: key('z'),
		sources: seeds(t, fmt.Sprintf("127.0.0.1:%d", port))})
	defer sx()
	defer shutdown(x)
	waitFor(t, "drops counted", func() bool {
		return testutil.ToFloat64(a.metrics.droppedPackets.WithLabelValues("decrypt")) > 0
	})
	if got := aliveNames(a); got != "a" {
		t.Fatalf("a's members = %s, want only itself", got)
	}
	if got := aliveNames(x); got != "x" {
		t.Fatalf("x's members = %s", got)
	}

	// A hand-made plaintext packet is dropped and counted too.
	before := testutil.ToFloat64(a.metrics.droppedPackets.WithLabelValues("decrypt")) +
		testutil.ToFloat64(a.metrics.droppedPackets.WithLabelValues("label"))
	conn, err := net.Dial("udp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// A memberlist ping, unencrypted and without label.
	_, _ = conn.Write([]byte{0, 0x81, 0xa4, 'N', 'o', 'd', 'e', 0xa1, 'a'})
	waitFor(t, "the hand-made packet counted", func() bool {
		after := testutil.ToFloat64(a.metrics.droppedPackets.WithLabelValues("decrypt")) +
			testutil.ToFloat64(a.metrics.droppedPackets.WithLabelValues("label"))
		return after > before
	})
	if n, err := testutil.GatherAndCount(reg, "singularity_edge_gossip_dropped_total"); err != nil || n == 0 {
		t.Fatalf("metric not exported: %d %v", n, err)
	}
}

func TestDifferentClusterRejected(t *testing.T) {
	port := freePort(t, "127.0.0.1", "127.0.0.2")
	a, _, sa := startNode(t, nodeOpts{name: "a", ip: "127.0.0.1", port: port, primary: key('k'), clusterID: "c1"})
	defer sa()
	defer shutdown(a)
	o, _, so := startNode(t, nodeOpts{name: "o", ip: "127.0.0.2", port: port, primary: key('k'), clusterID: "c2",
		sources: seeds(t, fmt.Sprintf("127.0.0.1:%d", port))})
	defer so()
	defer shutdown(o)
	waitFor(t, "rejection counted", func() bool {
		return testutil.ToFloat64(a.metrics.rejected.WithLabelValues("cluster_id"))+
			testutil.ToFloat64(o.metrics.rejected.WithLabelValues("cluster_id")) > 0
	})
	if got := aliveNames(a); got != "a" {
		t.Fatalf("a's members = %s", got)
	}
}

// Members whose sticky-cookie keys differ are still members (stickiness
// is lost across them, nothing else), and each side's view says so; a
// member whose metadata has no fingerprint (an older agent) does not.
func TestCookieKeyMismatchShown(t *testing.T) {
	port := freePort(t, "127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4")
	seed := seeds(t, fmt.Sprintf("127.0.0.1:%d", port))
	a, _, sa := startNode(t, nodeOpts{name: "a", ip: "127.0.0.1", port: port, primary: key('k'), cookieFP: "fp-one"})
	defer sa()
	defer shutdown(a)
	var all []*Discovery
	for _, o := range []nodeOpts{
		{name: "b", ip: "127.0.0.2", cookieFP: "fp-one"},
		{name: "c", ip: "127.0.0.3", cookieFP: "fp-two"},
		{name: "d", ip: "127.0.0.4"},
	} {
		o.port, o.primary, o.sources = port, key('k'), seed
		d, _, stop := startNode(t, o)
		defer stop()
		defer shutdown(d)
		all = append(all, d)
	}
	b, c := all[0], all[1]
	waitFor(t, "every node sees the others", func() bool {
		return aliveNames(a) == "a,b,c,d" && aliveNames(b) == "a,b,c,d" && aliveNames(c) == "a,b,c,d"
	})
	differs := func(d *Discovery) string {
		var names []string
		for _, m := range d.Members() {
			if m.CookieKeyDiffers {
				names = append(names, m.Name)
			}
		}
		return strings.Join(names, ",")
	}
	for _, tc := range []struct {
		node *Discovery
		want string
	}{{a, "c"}, {b, "c"}, {c, "a,b"}} {
		if got := differs(tc.node); got != tc.want {
			t.Errorf("%s sees the cookie key of %q differ, want %q", tc.node.cfg.Name, got, tc.want)
		}
	}
}

// Rotation in two rolling deploys: (1) the new key added to EDGE_GOSSIP_KEYS,
// (2) the new key primary with the old one in EDGE_GOSSIP_KEYS, then (3)
// the old key dropped. Nodes one step apart always form one cluster.
func TestKeyRotationMixedKeyrings(t *testing.T) {
	ips := []string{"127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"}
	port := freePort(t, ips...)
	old, next := key('o'), key('n')
	steps := []struct{ name, primary, extra string }{
		{"before", old, ""},
		{"deploy1", old, next},
		{"deploy2", next, old},
		{"after", next, ""},
	}
	var prev *Discovery
	var stopPrev func()
	for i, st := range steps {
		var src []Source
		if prev != nil {
			src = seeds(t, fmt.Sprintf("%s:%d", ips[i-1], port))
		}
		d, _, stop := startNode(t, nodeOpts{name: st.name, ip: ips[i], port: port, primary: st.primary, extra: st.extra, sources: src})
		if prev != nil {
			pair := []string{steps[i-1].name, st.name}
			sort.Strings(pair)
			want := strings.Join(pair, ",")
			waitFor(t, st.name+" and "+steps[i-1].name+" in one cluster", func() bool {
				return aliveNames(d) == want && aliveNames(prev) == want
			})
			stopPrev()
		}
		prev = d
		stopPrev = func() { stop(); shutdown(d) }
	}
	stopPrev()
}

// A Machine back on a new address with the same name is let in once
// DeadNodeReclaimTime has passed, at its next resolution round (5 s
// here), not at a push/pull 15-30 s later.
func TestRestartOnNewAddressSameName(t *testing.T) {
	port := freePort(t, "127.0.0.1", "127.0.0.2", "127.0.0.5")
	seed := fmt.Sprintf("127.0.0.1:%d", port)
	a, _, sa := startNode(t, nodeOpts{name: "a", ip: "127.0.0.1", port: port, primary: key('k')})
	defer sa()
	defer shutdown(a)
	b, _, sb := startNode(t, nodeOpts{name: "b", ip: "127.0.0.2", port: port, primary: key('k'), sources: seeds(t, seed)})
	waitFor(t, "a+b", func() bool { return aliveNames(a) == "a,b" })
	sb()
	shutdown(b) // crash: no leave
	waitFor(t, "b dead", func() bool { return states(a)["b"] == cluster.StateDead })
	b2, _, sb2 := startNode(t, nodeOpts{name: "b", ip: "127.0.0.5", port: port, primary: key('k'), sources: seeds(t, seed)})
	defer sb2()
	defer shutdown(b2)
	waitWithin(t, 20*time.Second, "b alive at its new address", func() bool {
		for _, m := range a.Members() {
			if m.Name == "b" {
				return m.State == cluster.StateAlive && m.Addresses[cluster.AddrGossip] == fmt.Sprintf("127.0.0.5:%d", port)
			}
		}
		return false
	})
}

// DNS drives membership: a fourth Machine added later is joined without a
// restart, a removed one goes dead and stays dead, and during a DNS outage
// the last known members are used.
func TestDNSDrivenMembership(t *testing.T) {
	ips := []string{"127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"}
	port := freePort(t, ips...)
	srv, err := fakefly.StartDNS("edge-test", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	dir := t.TempDir()
	var nodes []*Discovery
	var stops []func()
	start := func(i int) {
		src, err := NewDNSSource("edge-test", srv.Addr(), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		name := fmt.Sprintf("m%d", i+1)
		srv.Set(fakefly.Machine{ID: name, Region: "r", Addr: netip.MustParseAddr(ips[i])})
		d, _, stop := startNode(t, nodeOpts{name: name, ip: ips[i], port: port, primary: key('k'), sources: []Source{src},
			peersFile: filepath.Join(dir, name, "peers.json")})
		nodes = append(nodes, d)
		stops = append(stops, func() { stop(); shutdown(d) })
	}
	defer func() {
		for _, s := range stops {
			s()
		}
	}()
	for i := range 3 {
		start(i)
	}
	waitFor(t, "three members", func() bool { return aliveNames(nodes[0]) == "m1,m2,m3" })
	start(3)
	waitFor(t, "the fourth joined without restarts", func() bool {
		return aliveNames(nodes[0]) == "m1,m2,m3,m4" && aliveNames(nodes[1]) == "m1,m2,m3,m4"
	})

	// m3 is removed from DNS and stops.
	srv.Remove("m3")
	stops[2]()
	stops[2] = func() {}
	waitFor(t, "m3 dead", func() bool { return states(nodes[0])["m3"] == cluster.StateDead })
	// It stays dead: nothing joins it again. Watch a few resolve rounds.
	for range 20 {
		if s := states(nodes[0])["m3"]; s != cluster.StateDead {
			t.Fatalf("m3 flapped to %s", s)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// DNS outage: m4 restarts and finds the others through its last known
	// members.
	srv.SetDown(true)
	stops[3]()
	stops[3] = func() {}
	waitFor(t, "m4 dead", func() bool { return states(nodes[0])["m4"] == cluster.StateDead })
	start(3) // Set() above is harmless while down
	m4 := nodes[len(nodes)-1]
	waitFor(t, "m4 back through its last known members", func() bool { return aliveNames(m4) == "m1,m2,m4" })
}

// testLogger logs to t until the test ends: memberlist's goroutines may
// still log after Shutdown, and t.Log after the end panics.
func testLogger(t *testing.T) *zap.Logger {
	var done atomic.Bool
	t.Cleanup(func() { done.Store(true) })
	w := zapcore.AddSync(writerFunc(func(p []byte) (int, error) {
		if !done.Load() {
			t.Log(strings.TrimRight(string(p), "\n"))
		}
		return len(p), nil
	}))
	level := zapcore.InfoLevel
	if testing.Verbose() {
		level = zapcore.DebugLevel
	}
	return zap.New(zapcore.NewCore(zapcore.NewConsoleEncoder(zap.NewDevelopmentEncoderConfig()), w, level))
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// The admin API asks for members while the agent is still starting
// gossip; that must be safe (run with -race).
func TestMembersWhileStarting(t *testing.T) {
	port := freePort(t, "127.0.0.1")
	keys, _ := ParseKeys(key('k'), "")
	cfg := LocalConfig()
	cfg.Name, cfg.BindAddr, cfg.App, cfg.Keys = "a", fmt.Sprintf("127.0.0.1:%d", port), "edge-test", keys
	cfg.Meta = Meta{ClusterID: "c1", NodeID: "id-a"}
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
				if ms := d.Members(); len(ms) != 1 || !ms[0].Self {
					t.Errorf("members = %+v", ms)
					return
				}
			}
		}
	}()
	if err := d.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	close(stop)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("reader did not stop")
	}
	if err := d.Leave(time.Second); err != nil {
		t.Fatal(err)
	}
}

// countingTransport counts what memberlist sends through it.
type countingTransport struct {
	memberlist.Transport
	packets, dials atomic.Int64
}

func (c *countingTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	c.packets.Add(1)
	return c.Transport.WriteTo(b, addr)
}

func (c *countingTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	c.dials.Add(1)
	return c.Transport.DialTimeout(addr, timeout)
}

// WrapTransport puts the wrapper between memberlist and the sockets: the
// join (a TCP push/pull) and the probes (UDP) go through it.
func TestWrapTransport(t *testing.T) {
	port := freePort(t, "127.0.0.1", "127.0.0.2")
	var ct *countingTransport
	a, _, stopA := startNode(t, nodeOpts{name: "a", ip: "127.0.0.1", port: port, primary: key(1)})
	defer stopA()
	defer shutdown(a)
	b, _, stopB := startNode(t, nodeOpts{name: "b", ip: "127.0.0.2", port: port, primary: key(1),
		sources: seeds(t, net.JoinHostPort("127.0.0.1", fmt.Sprint(port))),
		wrap: func(tr memberlist.Transport) memberlist.Transport {
			ct = &countingTransport{Transport: tr}
			return ct
		}})
	defer stopB()
	defer shutdown(b)
	waitFor(t, "a and b see each other", func() bool { return aliveNames(a) == "a,b" && aliveNames(b) == "a,b" })
	waitFor(t, "b probes a through the wrapper", func() bool { return ct.packets.Load() > 0 })
	if ct.dials.Load() == 0 {
		t.Fatal("b joined a without dialling through the wrapper")
	}
}
