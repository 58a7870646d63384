package cluster

import (
	"fmt"
	"net"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/singularity-ng/singularity-edge/test/fakefly"
)

func ips(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("127.0.0.%d", 21+i)
	}
	return out
}

func names(n int) string {
	s := ""
	for i := range n {
		if i > 0 {
			s += ","
		}
		s += fmt.Sprintf("m%d", i+1)
	}
	return s
}

// Fly DNS drives membership: three Machines find each other, a fourth
// added later joins without restarts, and a removed one goes dead and
// stays dead.
func TestDNSDiscovery(t *testing.T) {
	addrs := ips(4)
	p := freePorts(t, addrs...)
	dns, err := fakefly.StartDNS("edge-it", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer dns.Close()
	key := gossipKey(t)
	start := func(i int) *agent {
		name := fmt.Sprintf("m%d", i+1)
		dns.Set(fakefly.Machine{ID: name, Region: "r", Addr: netip.MustParseAddr(addrs[i])})
		return startAgent(t, agentConfig{name: name, ip: addrs[i], ports: p, key: key, args: []string{"--dns-server", dns.Addr()}})
	}
	var agents []*agent
	for i := range 3 {
		agents = append(agents, start(i))
	}
	for _, a := range agents {
		waitFor(t, a.name+" sees three members", func() bool { return a.alive() == names(3) })
	}
	m := agents[0].members()["m2"]
	if m.Addresses["gossip"] != net.JoinHostPort(addrs[1], strconv.Itoa(p.gossip())) ||
		m.Addresses["replication"] != net.JoinHostPort(addrs[1], strconv.Itoa(p.gossip()+1)) || m.Region != "rm2" || !m.Ready {
		t.Fatalf("m2 as m1 sees it: %+v", m)
	}

	agents = append(agents, start(3))
	for _, a := range agents {
		waitFor(t, a.name+" sees the fourth member", func() bool { return a.alive() == names(4) })
	}

	dns.Remove("m3")
	agents[2].kill()
	// Each survivor's failure detector gets there on its own schedule
	// (a loaded machine delays probes): wait for all three.
	for _, a := range []*agent{agents[0], agents[1], agents[3]} {
		waitFor(t, "m3 dead on "+a.name, func() bool { return a.members()["m3"].State == "dead" })
	}
	// No flapping: it stays dead while the others keep resolving.
	deadline := time.Now().Add(8 * time.Second)
	for time.Now().Before(deadline) {
		for _, a := range []*agent{agents[0], agents[1], agents[3]} {
			if s := a.members()["m3"].State; s == "alive" {
				t.Fatalf("m3 came back as %s on %s", s, a.name)
			}
		}
		time.Sleep(500 * time.Millisecond)
	}
	if agents[0].metric("singularity_edge_discovery_source_errors_total") != 0 {
		t.Fatalf("DNS source errors: %v", agents[0].metric("singularity_edge_discovery_source_errors_total"))
	}
	// One prefix for every family a clustered agent exports, so that one
	// selector finds them all (discovery and replication once had another);
	// the Go runtime's and the process's keep their standard names.
	b, err := agents[0].get("/metrics")
	if err != nil {
		t.Fatal(err)
	}
	families := 0
	for _, line := range strings.Split(string(b), "\n") {
		name, ok := strings.CutPrefix(line, "# TYPE ")
		if !ok {
			continue
		}
		families++
		name, _, _ = strings.Cut(name, " ")
		if strings.HasPrefix(name, "go_") || strings.HasPrefix(name, "process_") {
			continue
		}
		if !strings.HasPrefix(name, "singularity_edge_") {
			t.Errorf("metric %s lacks the singularity_edge_ prefix", name)
		}
	}
	if families < 20 {
		t.Fatalf("only %d metric families on /metrics", families)
	}
}

// The Machines API source (fly-go's flaps client) against a fixture.
func TestMachinesAPIDiscovery(t *testing.T) {
	addrs := ips(2)
	p := freePorts(t, addrs...)
	dns, err := fakefly.StartDNS("edge-it", "127.0.0.1:0") // holds the machine list only
	if err != nil {
		t.Fatal(err)
	}
	defer dns.Close()
	api := &fakefly.MachinesAPI{App: "edge-it", DNS: dns, Token: "fly-token"}
	srv := httptest.NewServer(api)
	defer srv.Close()
	key := gossipKey(t)
	var agents []*agent
	for i, ip := range addrs {
		name := fmt.Sprintf("m%d", i+1)
		dns.Set(fakefly.Machine{ID: name, Region: "r", Addr: netip.MustParseAddr(ip)})
		agents = append(agents, startAgent(t, agentConfig{name: name, ip: ip, ports: p, key: key,
			args: []string{"--machines-api-url", srv.URL}, env: []string{"FLY_API_TOKEN=fly-token"}}))
	}
	for _, a := range agents {
		waitFor(t, a.name+" sees both", func() bool { return a.alive() == "m1,m2" })
	}
	if api.Requests() == 0 {
		t.Fatal("the Machines API was never asked")
	}
}

// An agent with the wrong gossip key is not a member, and its packets, like
// hand-made ones, are dropped and counted.
func TestWrongGossipKey(t *testing.T) {
	addrs := ips(2)
	p := freePorts(t, addrs...)
	a := startAgent(t, agentConfig{name: "good", ip: addrs[0], ports: p, key: gossipKey(t)})
	seed := net.JoinHostPort(addrs[0], strconv.Itoa(p.gossip()))
	x := startAgent(t, agentConfig{name: "intruder", ip: addrs[1], ports: p, key: gossipKey(t), join: []string{seed}})
	waitFor(t, "the intruder's packets counted", func() bool {
		return a.metric("singularity_edge_gossip_dropped_total", `reason="decrypt"`) > 0
	})
	if got := a.alive(); got != "good" {
		t.Fatalf("good's members: %s", got)
	}
	if got := x.alive(); got != "intruder" {
		t.Fatalf("intruder's members: %s", got)
	}
	before := a.metric("singularity_edge_gossip_dropped_total")
	c, err := net.Dial("udp", seed)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for range 3 {
		_, _ = c.Write([]byte{0x00, 0x81, 0xa4, 'N', 'o', 'd', 'e', 0xa4, 'g', 'o', 'o', 'd'})
	}
	waitFor(t, "hand-made packets counted", func() bool { return a.metric("singularity_edge_gossip_dropped_total") >= before+3 })
}

// Key rotation in two rolling deploys, one agent restarted at a time: the
// cluster stays one cluster at every step.
func TestGossipKeyRotation(t *testing.T) {
	addrs := ips(3)
	p := freePorts(t, addrs...)
	oldKey, newKey := gossipKey(t), gossipKey(t)
	seed := net.JoinHostPort(addrs[0], strconv.Itoa(p.gossip()))
	var agents []*agent
	for i, ip := range addrs {
		agents = append(agents, startAgent(t, agentConfig{name: fmt.Sprintf("m%d", i+1), ip: ip, ports: p, key: oldKey, join: []string{seed}}))
	}
	for _, a := range agents {
		waitFor(t, a.name+" in the cluster", func() bool { return a.alive() == names(3) })
	}
	deploy := func(step, key, keys string) {
		for i, a := range agents {
			a.stop()
			joins := []string{seed}
			if i == 0 {
				joins = []string{net.JoinHostPort(addrs[1], strconv.Itoa(p.gossip()))}
			}
			agents[i] = startAgent(t, agentConfig{name: a.name, ip: a.ip, ports: p, dataDir: a.dataDir, key: key, keys: keys, join: joins})
			for _, b := range agents {
				waitFor(t, fmt.Sprintf("%s: %s sees all after restarting %s", step, b.name, a.name), func() bool { return b.alive() == names(3) })
			}
		}
	}
	deploy("deploy 1 (new key accepted)", oldKey, newKey)
	deploy("deploy 2 (new key used)", newKey, oldKey)
	deploy("cleanup (old key gone)", newKey, "")
}

// A crashed agent restarted on a new address with the same name and data
// joins again.
func TestRestartOnNewAddress(t *testing.T) {
	addrs := ips(3)
	p := freePorts(t, addrs...)
	key := gossipKey(t)
	seed := net.JoinHostPort(addrs[0], strconv.Itoa(p.gossip()))
	a := startAgent(t, agentConfig{name: "m1", ip: addrs[0], ports: p, key: key})
	b := startAgent(t, agentConfig{name: "m2", ip: addrs[1], ports: p, key: key, join: []string{seed}})
	waitFor(t, "two members", func() bool { return a.alive() == "m1,m2" })
	id := a.members()["m2"].ID
	b.kill()
	waitFor(t, "m2 dead", func() bool { return a.members()["m2"].State == "dead" })
	b2 := startAgent(t, agentConfig{name: "m2", ip: addrs[2], ports: p, key: key, dataDir: b.dataDir, join: []string{seed}})
	want := net.JoinHostPort(addrs[2], strconv.Itoa(p.gossip()))
	waitFor(t, "m2 alive at its new address", func() bool {
		m := a.members()["m2"]
		return m.State == "alive" && m.Addresses["gossip"] == want
	})
	if got := a.members()["m2"].ID; got != id {
		t.Fatalf("m2's node id changed from %s to %s with the same data", id, got)
	}
	_ = b2
}
