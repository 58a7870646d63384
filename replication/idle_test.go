package replication

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// stallProxy forwards TCP connections to target until stall, after which
// the connections open at that moment deliver nothing more either way
// while both ends stay open: what a firewall or NAT that starts dropping a
// flow, or a route lost on one side, looks like to the two processes.
// Connections accepted later forward normally.
type stallProxy struct {
	t      *testing.T
	ln     net.Listener
	target string

	mu    sync.Mutex
	conns []*stallConn
}

type stallConn struct {
	frozen atomic.Bool
	// clientGone and serverGone close when that end closed its socket
	// (the proxy does not pass a close on while frozen).
	clientGone, serverGone chan struct{}
}

func newStallProxy(t *testing.T, target string) *stallProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &stallProxy{t: t, ln: ln, target: target}
	t.Cleanup(func() { _ = ln.Close() })
	go p.accept()
	return p
}

func (p *stallProxy) accept() {
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		server, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = client.Close()
			continue
		}
		sc := &stallConn{clientGone: make(chan struct{}), serverGone: make(chan struct{})}
		p.mu.Lock()
		p.conns = append(p.conns, sc)
		p.mu.Unlock()
		p.t.Cleanup(func() { _ = client.Close(); _ = server.Close() })
		go sc.pipe(client, server, sc.clientGone)
		go sc.pipe(server, client, sc.serverGone)
	}
}

// pipe copies src to dst; frozen, it reads and drops. When src ends it
// closes gone, and closes dst only when not frozen.
func (sc *stallConn) pipe(src, dst net.Conn, gone chan struct{}) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !sc.frozen.Load() {
			if _, werr := dst.Write(buf[:n]); werr != nil && !sc.frozen.Load() {
				_ = src.Close()
			}
		}
		if err != nil {
			close(gone)
			if !sc.frozen.Load() {
				_ = dst.Close()
			}
			return
		}
	}
}

func (p *stallProxy) stall() []*stallConn {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.frozen.Store(true)
	}
	return append([]*stallConn(nil), p.conns...)
}

func (p *stallProxy) accepted() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

func closed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// A stream whose path stops delivering while neither TCP end is closed
// (no FIN, no RST) is ended by both engines after IdleTimeout, and the
// client dials again. Without the bound the stream stayed "connected" and
// nothing was pushed over it until TCP gave up, about 15 minutes.
func TestStalledStreamEndsAndRedials(t *testing.T) {
	tc := newTestCluster()
	b := startEngine(t, tc, "b", newTestStore(t, "b"), [][]byte{testSecret('k')},
		func(c *Config) { c.IdleTimeout = time.Second })
	waitReady(t, b)
	proxy := newStallProxy(t, b.eng.Addr().String())
	a := startEngine(t, tc, "a", newTestStore(t, "a"), [][]byte{testSecret('k')}, func(c *Config) {
		c.IdleTimeout = time.Second
		c.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			var d net.Dialer
			if addr == b.eng.Addr().String() {
				addr = proxy.ln.Addr().String()
			}
			return d.DialContext(ctx, network, addr)
		}
	})
	waitReady(t, a)
	upTo := func(n *node, peer string) bool { return n.eng.Status()[peer].Connected }
	waitUntil(t, "a's stream to b up through the proxy", func() bool { return upTo(a, "b") && proxy.accepted() > 0 })
	a.store.write(map[string]*string{"before": str("1")})
	waitConverged(t, a, b)

	stalled := proxy.stall()
	waitUntil(t, "both ends close the stalled stream", func() bool {
		for _, c := range stalled {
			if !closed(c.clientGone) || !closed(c.serverGone) {
				return false
			}
		}
		return true
	})
	waitUntil(t, "a dials b again", func() bool { return proxy.accepted() > len(stalled) && upTo(a, "b") })
	// The new stream carries pushes again.
	a.store.write(map[string]*string{"after": str("2")})
	waitConverged(t, a, b)
}

// While a peer stays behind (down, or gone until its record is forgotten
// after EvictAfter), the commit times kept for its lag stop being pruned by its
// watermark; the pass over them must still run once per ownTimesKeep
// commits, not on every commit.
func TestOwnTimesPruneIsAmortized(t *testing.T) {
	e := &Engine{peers: map[string]*peer{"gone": newPeer("gone", "gone")}, ownTimes: map[uint64]time.Time{}, ownTimesKeep: 100}
	const commits = 10_000
	for seq := uint64(1); seq <= commits; seq++ {
		e.local(EncodedSet{Origin: "self", Seq: seq, HLC: seq << 16})
	}
	if n := len(e.ownTimes); n > 2*e.ownTimesKeep+1 {
		t.Fatalf("%d commit times kept, want at most %d", n, 2*e.ownTimesKeep+1)
	}
	if _, ok := e.ownTimes[commits]; !ok {
		t.Fatal("the latest commit time was pruned")
	}
	// One pass per ownTimesKeep commits at most (each pass leaves
	// ownTimesKeep+1 entries, the next starts beyond 2×ownTimesKeep).
	if max := commits / e.ownTimesKeep; e.ownTimesPrunes > max {
		t.Fatalf("%d prune passes over the commit times for %d commits, want at most %d", e.ownTimesPrunes, commits, max)
	}
}
