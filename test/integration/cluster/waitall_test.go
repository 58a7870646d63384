package cluster

import (
	"fmt"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

// TestWaitAllReadYourWrites: `--wait` (?wait_all=) answers only once every
// alive member has applied the change, so the other node reads it at once;
// with the replication port dropped (gossip still says alive) the write is
// stored here, the CLI exits 9 naming the member, and the write reaches it
// by itself once the port is open again.
func TestWaitAllReadYourWrites(t *testing.T) {
	lab := newNetLab(t, 2)
	agents := startCluster(t, 2, []string{lab.ip(0), lab.ip(1)}, lab.ns)
	a, b := agents[0], agents[1]
	a.mustDo(http.MethodPost, "/api/pools", pool("warm", "1"), http.StatusCreated)
	waitFor(t, "both members connected", func() bool { return settled(agents) })

	for i := range 5 {
		name := fmt.Sprintf("ryw-%d", i)
		out, errOut, code := a.operatorCLI("pools", "create", name, "--wait", "20s")
		if code != 0 {
			t.Fatalf("pools create %s --wait: exit %d\n%s%s", name, code, out, errOut)
		}
		// No polling: the answer promised that m2 holds it.
		if code, body := b.do(http.MethodGet, "/api/pools/"+name, nil); code != http.StatusOK {
			t.Fatalf("m2 right after pools create %s --wait: %d %s", name, code, body)
		}
	}

	// Drop the replication port only, inside m2's namespace: memberlist
	// keeps m2 alive, the stream stays open and carries nothing.
	if _, err := exec.LookPath("iptables"); err != nil {
		t.Skip("iptables(8) not installed (Debian: apt-get install iptables; make deps does): the cut half of this test needs it")
	}
	repl := strconv.Itoa(a.ports.gossip() + 1)
	rules := [][]string{
		{"INPUT", "--dport", repl}, {"INPUT", "--sport", repl},
		{"OUTPUT", "--dport", repl}, {"OUTPUT", "--sport", repl},
	}
	iptables := func(op string) {
		for _, r := range rules {
			lab.run("ip", "netns", "exec", lab.ns[1], "iptables", op, r[0], "-p", "tcp", r[1], r[2], "-j", "DROP")
		}
	}
	iptables("-A")
	healed := false
	t.Cleanup(func() {
		if !healed {
			iptables("-D")
		}
	})
	out, errOut, code := a.operatorCLI("pools", "create", "cut", "--wait", "2s")
	if code != 9 || !strings.Contains(errOut, "m2") || !strings.Contains(errOut, "stored on this node") {
		t.Fatalf("pools create cut --wait 2s with m2's replication port dropped: exit %d, want 9 naming m2\n%s%s", code, out, errOut)
	}
	if code, body := a.do(http.MethodGet, "/api/pools/cut", nil); code != http.StatusOK {
		t.Fatalf("m1 after the 504: the write is not stored: %d %s", code, body)
	}
	iptables("-D")
	healed = true
	waitFor(t, "the write reaching m2 once the port is open", func() bool {
		code, _ := b.do(http.MethodGet, "/api/pools/cut", nil)
		return code == http.StatusOK
	})
}
