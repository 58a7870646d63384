package discovery

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/singularity-ng/singularity-edge/cluster"
	"github.com/singularity-ng/singularity-edge/test/fakefly"
)

// failingSource is a source that cannot answer (a DNS outage).
type failingSource struct{}

func (failingSource) Name() string { return "failing" }
func (failingSource) Candidates(context.Context) ([]Candidate, error) {
	return nil, errors.New("resolver unreachable")
}

// Alone decides whether the first agent of a cluster may start at once:
// only when nothing names any other node.
func TestAlone(t *testing.T) {
	port := freePort(t, "127.0.0.1")
	dns, err := fakefly.StartDNS("edge-test", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer dns.Close()
	dns.Set(fakefly.Machine{ID: "self", Region: "r", Addr: netip.MustParseAddr("127.0.0.1")})
	dnsSource := func(t *testing.T) Source {
		s, err := NewDNSSource("edge-test", dns.Addr(), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	remembered := func(t *testing.T) string {
		f := filepath.Join(t.TempDir(), "peers.json")
		if err := savePeers(f, []knownPeer{{Name: "old", Addr: fmt.Sprintf("127.0.0.9:%d", port), LastSeen: time.Now()}}); err != nil {
			t.Fatal(err)
		}
		return f
	}
	for _, tt := range []struct {
		name      string
		sources   func(t *testing.T) []Source
		peersFile func(t *testing.T) string
		want      bool
	}{
		{name: "no sources", want: true},
		{name: "DNS answers only this node", sources: func(t *testing.T) []Source { return []Source{dnsSource(t)} }, want: true},
		{name: "a seed", sources: func(t *testing.T) []Source { return seeds(t, fmt.Sprintf("127.0.0.9:%d", port)) }},
		{name: "the seed is this node", sources: func(t *testing.T) []Source { return seeds(t, fmt.Sprintf("127.0.0.1:%d", port)) }, want: true},
		{name: "a source fails", sources: func(t *testing.T) []Source { return []Source{failingSource{}} }},
		{name: "a member is remembered", peersFile: remembered},
		{name: "DNS answers only this node, a member is remembered",
			sources: func(t *testing.T) []Source { return []Source{dnsSource(t)} }, peersFile: remembered},
	} {
		t.Run(tt.name, func(t *testing.T) {
			o := nodeOpts{name: "self", ip: "127.0.0.1", port: port, primary: key('k')}
			if tt.sources != nil {
				o.sources = tt.sources(t)
			}
			if tt.peersFile != nil {
				o.peersFile = tt.peersFile(t)
			}
			d, _, stop := startNode(t, o)
			defer func() { stop(); shutdown(d) }()
			waitFor(t, "the first resolution round", func() bool {
				d.mu.Lock()
				defer d.mu.Unlock()
				return d.rounds > 0
			})
			if got := d.Alone(); got != tt.want {
				t.Fatalf("Alone() = %v, want %v", got, tt.want)
			}
		})
	}
}

// A node that was alone is no longer once another joins it.
func TestAloneUntilJoined(t *testing.T) {
	port := freePort(t, "127.0.0.1", "127.0.0.2")
	a, _, sa := startNode(t, nodeOpts{name: "a", ip: "127.0.0.1", port: port, primary: key('k')})
	defer func() { sa(); shutdown(a) }()
	waitFor(t, "a alone", a.Alone)
	b, _, sb := startNode(t, nodeOpts{name: "b", ip: "127.0.0.2", port: port, primary: key('k'),
		sources: seeds(t, fmt.Sprintf("127.0.0.1:%d", port))})
	defer func() { sb(); shutdown(b) }()
	waitFor(t, "b joined a", func() bool { return aliveNames(a) == "a,b" })
	if a.Alone() || b.Alone() {
		t.Fatalf("alone after a join: a=%v b=%v", a.Alone(), b.Alone())
	}
}

// The agent leaves on request and again at shutdown: the second Leave is a
// no-op (memberlist panics on a leave after shutdown), and a left node
// refuses joins and reports itself left.
func TestLeaveTwiceAndJoinAfter(t *testing.T) {
	port := freePort(t, "127.0.0.1", "127.0.0.2")
	a, _, sa := startNode(t, nodeOpts{name: "a", ip: "127.0.0.1", port: port, primary: key('k')})
	defer sa()
	b, _, sb := startNode(t, nodeOpts{name: "b", ip: "127.0.0.2", port: port, primary: key('k'),
		sources: seeds(t, fmt.Sprintf("127.0.0.1:%d", port))})
	defer func() { sb(); shutdown(b) }()
	waitFor(t, "joined", func() bool { return aliveNames(a) == "a,b" })
	if _, err := a.Join(context.Background(), []string{"127.0.0.9"}); err == nil {
		t.Fatal("join of nobody succeeded")
	} else if !errors.Is(err, ErrNoAnswer) {
		t.Fatalf("join of nobody: %v", err)
	}
	if err := a.Leave(time.Second); err != nil {
		t.Fatal(err)
	}
	if err := a.Leave(time.Second); err != nil {
		t.Fatalf("second leave: %v", err)
	}
	if _, err := a.Join(context.Background(), []string{fmt.Sprintf("127.0.0.2:%d", port)}); !errors.Is(err, ErrLeft) {
		t.Fatalf("join after leave: %v", err)
	}
	if st := a.Members()[0]; !st.Self || st.State != cluster.StateLeft || st.Ready {
		t.Fatalf("self after leave: %+v", st)
	}
	waitFor(t, "b sees a left", func() bool { return states(b)["a"] == cluster.StateLeft })
}
