package cluster

import (
	"crypto/rand"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// netLab is a set of network namespaces, one per agent, whose veth pairs
// hang off one bridge in the test's namespace. Partitions are blackhole
// routes inside the namespaces; latency is tc netem on the bridge side.
type netLab struct {
	t      *testing.T
	id     string
	subnet int
	ns     []string
	veth   []string // host-side ends
}

// newNetLab builds n namespaces, or skips the test with the reason when
// this machine cannot (not root, no ip(8), namespaces not permitted).
func newNetLab(t *testing.T, n int) *netLab {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("network namespaces need root: run the cluster tests as root (CI does)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("ip(8) not installed (Debian: apt-get install iproute2)")
	}
	r, _ := rand.Int(rand.Reader, big.NewInt(1<<16))
	s, _ := rand.Int(rand.Reader, big.NewInt(150))
	l := &netLab{t: t, id: fmt.Sprintf("%04x", r.Int64()), subnet: 100 + int(s.Int64())}
	if out, err := exec.Command("ip", "netns", "add", "edge"+l.id+"probe").CombinedOutput(); err != nil {
		t.Skipf("network namespaces unavailable here: %v: %s", err, out)
	}
	_ = exec.Command("ip", "netns", "del", "edge"+l.id+"probe").Run()
	t.Cleanup(l.close)
	br := "eb" + l.id
	l.run("ip", "link", "add", br, "type", "bridge")
	l.run("ip", "addr", "add", fmt.Sprintf("10.77.%d.1/24", l.subnet), "dev", br)
	l.run("ip", "link", "set", br, "up")
	for i := range n {
		ns := fmt.Sprintf("edge%s-%d", l.id, i)
		host, peer := fmt.Sprintf("eh%s%d", l.id, i), fmt.Sprintf("en%s%d", l.id, i)
		l.run("ip", "netns", "add", ns)
		l.ns = append(l.ns, ns)
		l.run("ip", "link", "add", host, "type", "veth", "peer", "name", peer)
		l.veth = append(l.veth, host)
		l.run("ip", "link", "set", peer, "netns", ns)
		l.run("ip", "link", "set", host, "master", br, "up")
		l.run("ip", "netns", "exec", ns, "ip", "addr", "add", l.ip(i)+"/24", "dev", peer)
		l.run("ip", "netns", "exec", ns, "ip", "link", "set", peer, "up")
		l.run("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
	}
	return l
}

func (l *netLab) ip(i int) string { return fmt.Sprintf("10.77.%d.%d", l.subnet, 10+i) }

func (l *netLab) run(args ...string) {
	l.t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		l.t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
}

func (l *netLab) close() {
	for _, ns := range l.ns {
		_ = exec.Command("ip", "netns", "del", ns).Run()
	}
	_ = exec.Command("ip", "link", "del", "eb"+l.id).Run()
}

// cut drops all traffic between namespaces a and b, both ways.
func (l *netLab) cut(a, b int) {
	l.run("ip", "netns", "exec", l.ns[a], "ip", "route", "add", "blackhole", l.ip(b)+"/32")
	l.run("ip", "netns", "exec", l.ns[b], "ip", "route", "add", "blackhole", l.ip(a)+"/32")
}

func (l *netLab) heal(a, b int) {
	l.run("ip", "netns", "exec", l.ns[a], "ip", "route", "del", "blackhole", l.ip(b)+"/32")
	l.run("ip", "netns", "exec", l.ns[b], "ip", "route", "del", "blackhole", l.ip(a)+"/32")
}

// delay adds one-way latency to everything leaving namespace i's bridge
// port, or skips when the kernel has no netem.
func (l *netLab) delay(i int, d time.Duration) {
	out, err := exec.Command("tc", "qdisc", "add", "dev", l.veth[i], "root", "netem", "delay", d.String()).CombinedOutput()
	if err != nil {
		l.t.Skipf("tc netem unavailable (kernel module sch_netem, package iproute2): %v: %s", err, out)
	}
}

// A partition makes each side declare the other dead; after the heal the
// halves merge again by themselves (the resolve loop joins every seed that
// is not alive), with no operator action.
func TestPartitionHealsMembership(t *testing.T) {
	lab := newNetLab(t, 3)
	key := gossipKey(t)
	p := ports{base: 17946}
	var agents []*agent
	seed := net.JoinHostPort(lab.ip(0), strconv.Itoa(p.gossip()))
	for i := range 3 {
		var join []string
		if i > 0 {
			join = []string{seed}
		}
		agents = append(agents, startAgent(t, agentConfig{name: fmt.Sprintf("m%d", i+1), ip: lab.ip(i), ports: p, key: key, join: join, netns: lab.ns[i]}))
	}
	for _, a := range agents {
		waitFor(t, a.name+" sees three", func() bool { return a.alive() == names(3) })
	}
	lab.cut(2, 0)
	lab.cut(2, 1)
	waitFor(t, "m1 and m2 declare m3 dead", func() bool {
		return agents[0].members()["m3"].State == "dead" && agents[1].members()["m3"].State == "dead"
	})
	waitFor(t, "m3 alone", func() bool { return agents[2].alive() == "m3" })
	lab.heal(2, 0)
	lab.heal(2, 1)
	for _, a := range agents {
		waitFor(t, a.name+" sees three again after the heal", func() bool { return a.alive() == names(3) })
	}
}

// With the Fly preset and 80 ms each way between "regions", nobody is ever
// suspected: LAN timings would declare far regions dead. This is the
// kernel path (tc netem on the namespaces' links); where the kernel has no
// netem it skips, and test/integration/wan measures the same with the
// delay injected in-process (memberlist transport and replication dialer).
func TestFlyPresetUnderLatency(t *testing.T) {
	lab := newNetLab(t, 3)
	for i := range 3 {
		lab.delay(i, 80*time.Millisecond)
	}
	key := gossipKey(t)
	p := ports{base: 17946}
	seed := net.JoinHostPort(lab.ip(0), strconv.Itoa(p.gossip()))
	var agents []*agent
	for i := range 3 {
		agents = append(agents, startAgent(t, agentConfig{name: fmt.Sprintf("m%d", i+1), ip: lab.ip(i), ports: p, key: key,
			join: []string{seed}, netns: lab.ns[i], args: []string{"--gossip-preset", "fly"}}))
	}
	for _, a := range agents {
		waitFor(t, a.name+" sees three", func() bool { return a.alive() == names(3) })
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		for _, a := range agents {
			if got := a.alive(); got != names(3) {
				t.Fatalf("%s sees %s under 80 ms latency", a.name, got)
			}
		}
		time.Sleep(time.Second)
	}
}
