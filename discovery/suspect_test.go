package discovery

import (
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/singularity-ng/singularity-edge/cluster"
)

// cuttableTransport drops everything the node sends while cut: packets
// vanish, stream dials fail, as on a path that went dark.
type cuttableTransport struct {
	memberlist.Transport
	cut atomic.Bool
}

func (c *cuttableTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	if c.cut.Load() {
		return time.Now(), nil
	}
	return c.Transport.WriteTo(b, addr)
}

func (c *cuttableTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	if c.cut.Load() {
		return nil, errors.New("cut")
	}
	return c.Transport.DialTimeout(addr, timeout)
}

// A member whose probes go unanswered shows as suspect (memberlist
// suspects it) before it is declared dead, and alive again once it
// answers. memberlist's Members() always says alive, so the state has to
// come from the probe that failed.
func TestUnansweredMemberIsSuspect(t *testing.T) {
	port := freePort(t, "127.0.0.1", "127.0.0.2")
	a, _, stopA := startNode(t, nodeOpts{name: "a", ip: "127.0.0.1", port: port, primary: key(1)})
	defer stopA()
	defer shutdown(a)
	var ct *cuttableTransport
	b, _, stopB := startNode(t, nodeOpts{name: "b", ip: "127.0.0.2", port: port, primary: key(1),
		sources: seeds(t, net.JoinHostPort("127.0.0.1", fmt.Sprint(port))),
		wrap: func(tr memberlist.Transport) memberlist.Transport {
			ct = &cuttableTransport{Transport: tr}
			return ct
		}})
	defer stopB()
	defer shutdown(b)
	waitFor(t, "a and b see each other", func() bool { return aliveNames(a) == "a,b" && aliveNames(b) == "a,b" })

	changed := b.Changed()
	ct.cut.Store(true)
	// The suspicion lasts seconds (3 probe intervals here) before the
	// member is declared dead: polled far more often than that.
	waitFor(t, "b to see a suspect", func() bool {
		st := states(b)["a"]
		if st == cluster.StateDead {
			t.Fatal("a went from alive to dead on b without ever showing as suspect")
		}
		return st == cluster.StateSuspect
	})
	select {
	case <-changed:
	default:
		t.Fatal("b's Changed() did not fire when a became suspect")
	}
	ct.cut.Store(false)
	waitFor(t, "b to see a alive again", func() bool { return states(b)["a"] == cluster.StateAlive })
}

// A dead member's last gossiped readiness is not shown as ready.
func TestDeadMemberIsNotReady(t *testing.T) {
	port := freePort(t, "127.0.0.1", "127.0.0.2")
	a, _, stopA := startNode(t, nodeOpts{name: "a", ip: "127.0.0.1", port: port, primary: key(1)})
	defer stopA()
	defer shutdown(a)
	if err := a.SetReady(true); err != nil {
		t.Fatal(err)
	}
	b, _, stopB := startNode(t, nodeOpts{name: "b", ip: "127.0.0.2", port: port, primary: key(1),
		sources: seeds(t, net.JoinHostPort("127.0.0.1", fmt.Sprint(port)))})
	defer stopB()
	defer shutdown(b)
	ready := func() (cluster.State, bool) {
		for _, m := range b.Members() {
			if m.Name == "a" {
				return m.State, m.Ready
			}
		}
		return "", false
	}
	waitFor(t, "b sees a alive and ready", func() bool { st, r := ready(); return st == cluster.StateAlive && r })
	stopA()
	shutdown(a) // no leave: a crash
	waitFor(t, "b sees a dead", func() bool { st, _ := ready(); return st == cluster.StateDead })
	if _, r := ready(); r {
		t.Fatal("b shows the dead member a as ready")
	}
}

// A member's health (its /healthz verdict) reaches the others beside its
// ready flag: a node whose disk is full still holds the cluster's state
// (ready) but cannot do its job, and `cluster status` showed it ready.
// A dead member shows no health.
func TestMemberHealthGossiped(t *testing.T) {
	port := freePort(t, "127.0.0.1", "127.0.0.2")
	var health atomic.Value
	health.Store("ok")
	a, _, stopA := startNode(t, nodeOpts{name: "a", ip: "127.0.0.1", port: port, primary: key(1),
		health: func() string { return health.Load().(string) }})
	defer stopA()
	defer shutdown(a)
	if err := a.SetReady(true); err != nil {
		t.Fatal(err)
	}
	b, _, stopB := startNode(t, nodeOpts{name: "b", ip: "127.0.0.2", port: port, primary: key(1),
		sources: seeds(t, net.JoinHostPort("127.0.0.1", fmt.Sprint(port)))})
	defer stopB()
	defer shutdown(b)
	member := func(d *Discovery, name string) cluster.Member {
		for _, m := range d.Members() {
			if m.Name == name {
				return m
			}
		}
		return cluster.Member{}
	}
	waitFor(t, "b sees a ready and ok", func() bool { m := member(b, "a"); return m.Ready && m.Health == "ok" })
	if m := member(b, "b"); m.Health != "" {
		t.Fatalf("b gossips no health, yet shows %q", m.Health)
	}
	health.Store("disk_full")
	waitFor(t, "b sees a at disk_full", func() bool { return member(b, "a").Health == "disk_full" })
	if m := member(b, "a"); !m.Ready {
		t.Fatal("a still holds the cluster's state: its ready flag must stay")
	}
	if m := member(a, "a"); m.Health != "disk_full" {
		t.Fatalf("a shows itself %q, want disk_full", m.Health)
	}
	health.Store("ok")
	waitFor(t, "b sees a ok again", func() bool { return member(b, "a").Health == "ok" })
	stopA()
	shutdown(a)
	waitFor(t, "b sees a dead", func() bool { return member(b, "a").State == cluster.StateDead })
	if m := member(b, "a"); m.Health != "" {
		t.Fatalf("dead member a shows health %q", m.Health)
	}
}

// A member dead or departed for longer than PeersMaxAge is forgotten: a
// Machine that a deploy or a scale-down replaced otherwise stayed in the
// member list, dead, for the life of every agent. One dead for less stays
// (replication's purge still waits for it within its eviction time).
func TestGoneMemberForgotten(t *testing.T) {
	port := freePort(t, "127.0.0.1", "127.0.0.2")
	var offset atomic.Int64
	a, _, stopA := startNode(t, nodeOpts{name: "a", ip: "127.0.0.1", port: port, primary: key(1)})
	defer stopA()
	defer shutdown(a)
	b, _, stopB := startNode(t, nodeOpts{name: "b", ip: "127.0.0.2", port: port, primary: key(1),
		sources: seeds(t, net.JoinHostPort("127.0.0.1", fmt.Sprint(port))),
		now:     func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }})
	defer stopB()
	defer shutdown(b)
	waitFor(t, "a and b see each other", func() bool { return aliveNames(b) == "a,b" })
	stopA()
	shutdown(a) // a crash: no leave
	waitFor(t, "b sees a dead", func() bool { return states(b)["a"] == cluster.StateDead })
	maxAge := LocalConfig().PeersMaxAge
	offset.Store(int64(maxAge - time.Hour))
	time.Sleep(2 * time.Second) // several resolution rounds (500 ms)
	if _, ok := states(b)["a"]; !ok {
		t.Fatal("a member dead for less than PeersMaxAge was forgotten")
	}
	// b does not hold the cluster's state yet (not ready): it forgets
	// nobody, or as an empty node it would start a cluster of its own.
	offset.Store(int64(maxAge + time.Hour))
	time.Sleep(2 * time.Second)
	if _, ok := states(b)["a"]; !ok {
		t.Fatal("a node that does not hold the cluster's state forgot a member")
	}
	if err := b.SetReady(true); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "b forgets a", func() bool { _, ok := states(b)["a"]; return !ok })
	if st := states(b)["b"]; st != cluster.StateAlive {
		t.Fatalf("b itself: %q", st)
	}
}
