package cluster

// Operator-facing cluster features through real agent processes: the
// first agent's start, `cluster join`, `cluster leave`.

import (
	"bytes"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/singularity-ng/singularity-edge/test/itest"
)

// cli runs the CLI against a's admin API and returns stdout, stderr and
// the exit code.
func (a *agent) operatorCLI(args ...string) (string, string, int) {
	a.t.Helper()
	cmd := exec.Command(binary, append(args, "--api", "http://"+a.addr(a.ports.admin()))...)
	cmd.Env = append(os.Environ(), "EDGE_ADMIN_TOKEN="+a.token)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		a.t.Fatalf("running the CLI: %v", err)
	}
	return out.String(), errb.String(), code
}

// health returns the status of a's /api/health ("" when unreachable).
func (a *agent) healthStatus() (int, string) {
	code, b := a.do(http.MethodGet, "/api/health", nil)
	return code, string(b)
}

// The first agent of a cluster, with nothing naming another node, is ready
// without waiting for peers; an empty agent that was told of a seed waits
// for it (and, when nobody ever answers, starts alone after the bootstrap
// wait, as before).
func TestFirstAgentReadyAtOnce(t *testing.T) {
	addrs := ips(2)
	p := freePorts(t, addrs...)
	key := gossipKey(t)
	a := startAgent(t, agentConfig{name: "m1", ip: addrs[0], ports: p, key: key})
	if !strings.Contains(a.log.String(), "no other node is known") {
		t.Fatalf("m1 did not start the cluster as the only known node:\n%s", itest.Tail(a.log.String(), 30))
	}

	// m2 is told of a seed where nobody answers: it must not serve at
	// once, nor start a cluster of its own before the bootstrap wait.
	nobody := net.JoinHostPort(addrs[0], strconv.Itoa(p.http()+100))
	b := &agent{t: t, name: "m2", ip: addrs[1], ports: p, dataDir: t.TempDir(), token: randHex(t, 16)}
	b.env = append(os.Environ(), "EDGE_ADMIN_TOKEN="+b.token, "EDGE_ENCRYPTION_KEY="+storeKey(b.dataDir), "EDGE_GOSSIP_KEY="+key)
	b.args = []string{"--app", "edge-it", "--gossip-preset", "local", "--join", nobody}
	b.startNoWait()
	t.Cleanup(b.stop)
	waitFor(t, "m2 answering", func() bool { code, _ := b.healthStatus(); return code != 0 })
	if code, body := b.healthStatus(); code != http.StatusServiceUnavailable {
		t.Fatalf("m2 with an unanswered seed: health %d %s, want 503 while it waits", code, body)
	}
	waitFor(t, "m2 starting alone after the bootstrap wait", func() bool { code, _ := b.healthStatus(); return code == http.StatusOK })
	if !strings.Contains(b.log.String(), "no ready peer: this node starts the cluster's state") {
		t.Fatalf("m2 became ready another way:\n%s", itest.Tail(b.log.String(), 30))
	}
	if strings.Contains(b.log.String(), "no other node is known") {
		t.Fatal("m2 took itself for the only node although it was given a seed")
	}
}

// `cluster join` brings a node whose seeds are gone back into its
// cluster; `cluster leave` hands its writes over, says goodbye and turns
// it not ready; garbage and unreachable addresses get their exit codes.
func TestClusterJoinAndLeave(t *testing.T) {
	addrs := ips(2)
	p := freePorts(t, addrs...)
	key := gossipKey(t)
	enc := "EDGE_ENCRYPTION_KEY=" + storeKey(t.Name())
	a := startAgent(t, agentConfig{name: "m1", ip: addrs[0], ports: p, key: key, env: []string{enc}})
	seed := net.JoinHostPort(addrs[0], strconv.Itoa(p.gossip()))
	b := startAgent(t, agentConfig{name: "m2", ip: addrs[1], ports: p, key: key, env: []string{enc}, join: []string{seed}})
	waitFor(t, "two members", func() bool { return a.alive() == "m1,m2" && b.alive() == "m1,m2" })
	a.mustDo(http.MethodPost, "/api/pools", pool("before", "1"), http.StatusCreated)
	waitFor(t, "replicated", func() bool { return settled([]*agent{a, b}) })

	// Both restart knowing no seed and no remembered member (their peers
	// files removed): with their data they serve, but apart.
	a.stop()
	b.stop()
	for _, ag := range []*agent{a, b} {
		if err := os.Remove(filepath.Join(ag.dataDir, "cluster-peers.json")); err != nil {
			t.Fatal(err)
		}
	}
	b.args = []string{"--app", "edge-it", "--gossip-preset", "local"}
	a.start()
	b.start()
	a.mustDo(http.MethodPost, "/api/pools", pool("while-apart", "2"), http.StatusCreated)
	time.Sleep(time.Second)
	if strings.Contains(b.poolList(), "while-apart") || b.alive() != "m2" {
		t.Fatalf("m2 is a member without a join: sees %q", b.alive())
	}

	// Garbage and nobody: exit codes and sentences, nothing joined.
	if out, errOut, code := b.operatorCLI("cluster", "join", "not-an-address"); code != 3 || !strings.Contains(errOut, "addresses[0]") {
		t.Fatalf("join garbage: exit %d, stdout %q stderr %q", code, out, errOut)
	}
	nobody := net.JoinHostPort(addrs[0], strconv.Itoa(p.http()+100))
	if out, errOut, code := b.operatorCLI("cluster", "join", nobody); code != 7 || !strings.Contains(errOut, "no node answered") {
		t.Fatalf("join nobody: exit %d, stdout %q stderr %q", code, out, errOut)
	}
	if _, _, code := b.operatorCLI("cluster", "join"); code != 2 {
		t.Fatalf("join without addresses: exit %d, want 2", code)
	}

	out, errOut, code := b.operatorCLI("cluster", "join", seed)
	if code != 0 || !strings.Contains(out, "Joined: 1 node(s) answered at "+seed) {
		t.Fatalf("join: exit %d, stdout %q stderr %q", code, out, errOut)
	}
	waitFor(t, "m2 back in the cluster with the write it missed", func() bool {
		return a.alive() == "m1,m2" && settled([]*agent{a, b}) && strings.Contains(b.poolList(), "while-apart=2")
	})

	// Leave: m2's last write reaches m1 before it goes.
	b.mustDo(http.MethodPost, "/api/pools", pool("from-leaver", "3"), http.StatusCreated)
	out, errOut, code = b.operatorCLI("cluster", "leave", "--wait", "20s")
	if code != 0 || !strings.Contains(out, "Left the cluster: every alive member holds this node's writes") {
		t.Fatalf("leave: exit %d, stdout %q stderr %q", code, out, errOut)
	}
	if !strings.Contains(a.poolList(), "from-leaver=3") {
		t.Fatalf("m1 does not hold m2's last write after the leave:\n%s", a.poolList())
	}
	waitFor(t, "m1 sees m2 left", func() bool { return a.members()["m2"].State == "left" })
	if code, body := b.healthStatus(); code != http.StatusServiceUnavailable || !strings.Contains(body, `"status":"left"`) {
		t.Fatalf("m2 health after leave: %d %s", code, body)
	}
	if code, body := b.do(http.MethodPost, "/api/pools", pool("after-leave", "4")); code != http.StatusServiceUnavailable {
		t.Fatalf("m2 took a write after leaving: %d %s", code, body)
	}
	if _, errOut, code := b.operatorCLI("cluster", "join", seed); code != 5 || !strings.Contains(errOut, "restart") {
		t.Fatalf("join after leave: exit %d, stderr %q", code, errOut)
	}
	if _, errOut, code := b.operatorCLI("cluster", "leave"); code != 5 {
		t.Fatalf("second leave: exit %d, stderr %q", code, errOut)
	}
	// m1 goes on alone, and m2 stops cleanly.
	a.mustDo(http.MethodPost, "/api/pools", pool("after", "5"), http.StatusCreated)
	b.stop()
	if err := b.cmd.ProcessState; err == nil || !err.Success() {
		t.Fatalf("m2 did not stop cleanly after leaving: %v\n%s", err, itest.Tail(b.log.String(), 30))
	}

	// Started again, it joins again (its remembered members include m1).
	b.start()
	waitFor(t, "m2 rejoined after a restart", func() bool {
		return a.alive() == "m1,m2" && strings.Contains(b.poolList(), "after=5")
	})
}

// Each region's view of a backend replicates with its observer: m1 trusts
// the backend's CA, m2 does not, so m1 sees it up and m2 down, and both
// agents' APIs and CLIs show both regions' views.
func TestObservationsPerRegion(t *testing.T) {
	backend := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
	}))
	defer backend.Close()
	caFile := filepath.Join(t.TempDir(), "backend-ca.pem")
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: backend.Certificate().Raw})
	if err := os.WriteFile(caFile, caPEM, 0o600); err != nil {
		t.Fatal(err)
	}

	addrs := ips(2)
	p := freePorts(t, addrs...)
	key := gossipKey(t)
	enc := "EDGE_ENCRYPTION_KEY=" + storeKey(t.Name())
	a := startAgent(t, agentConfig{name: "m1", ip: addrs[0], ports: p, key: key, env: []string{enc},
		args: []string{"--backend-ca-file", caFile}})
	seed := net.JoinHostPort(addrs[0], strconv.Itoa(p.gossip()))
	b := startAgent(t, agentConfig{name: "m2", ip: addrs[1], ports: p, key: key, env: []string{enc}, join: []string{seed}})
	waitFor(t, "two members", func() bool { return a.alive() == "m1,m2" && b.alive() == "m1,m2" })

	// A timeout a loaded machine's TLS handshake cannot miss: m1's view
	// must not flap (a 500 ms one timed out under load).
	createOrFail(t, a, "/api/pools", map[string]any{"name": "web", "health_check_interval": 3000,
		"health_check": map[string]any{"type": "https", "path": "/", "timeout": 2500, "rise": 1, "fall": 1}})
	createOrFail(t, a, "/api/pools/web/backends", map[string]any{"id": "tls-1", "url": backend.URL, "ssl_verify": true})

	type regionHealth struct {
		Region  string `json:"region"`
		State   string `json:"state"`
		Nodes   int    `json:"nodes"`
		Healthy int    `json:"healthy"`
	}
	want := "[{rm1 healthy 1 1} {rm2 unhealthy 1 0}]"
	regionsOf := func(ag *agent, path string, list bool) string {
		code, body := ag.do(http.MethodGet, path, nil)
		if code != http.StatusOK {
			return fmt.Sprintf("%d %s", code, body)
		}
		var one struct {
			Regions      []regionHealth `json:"regions"`
			Observations []struct {
				Region string `json:"region"`
			} `json:"observations"`
		}
		if list {
			var page struct {
				Items []json.RawMessage `json:"items"`
			}
			if err := json.Unmarshal(body, &page); err != nil || len(page.Items) != 1 {
				return fmt.Sprintf("list %s", body)
			}
			body = page.Items[0]
		}
		if err := json.Unmarshal(body, &one); err != nil {
			return err.Error()
		}
		if len(one.Observations) != 2 {
			return fmt.Sprintf("%d observations", len(one.Observations))
		}
		return fmt.Sprint(one.Regions)
	}
	for _, ag := range []*agent{a, b} {
		waitFor(t, ag.name+" shows both regions' views", func() bool {
			return regionsOf(ag, "/api/pools/web/backends/tls-1", false) == want &&
				regionsOf(ag, "/api/pools/web/backends", true) == want
		})
	}
	out, errOut, code := b.operatorCLI("backends", "show", "web", "tls-1")
	if code != 0 || !strings.Contains(out, "rm1 up, rm2 down") || !strings.Contains(out, "certificate") {
		t.Fatalf("backends show on m2: exit %d\n%s%s", code, out, errOut)
	}
	out, _, code = a.operatorCLI("backends", "list", "web")
	if code != 0 || !strings.Contains(out, "rm1 up, rm2 down") {
		t.Fatalf("backends list on m1: exit %d\n%s", code, out)
	}
}

// mustCreate posts body and stops the test unless it answers 201.
func createOrFail(t *testing.T, a *agent, path string, body any) {
	t.Helper()
	if code, b := a.do(http.MethodPost, path, body); code != http.StatusCreated {
		t.Fatalf("%s: POST %s = %d %s", a.name, path, code, b)
	}
}

// nodeID is the node id an agent reports for itself.
func (a *agent) selfNodeID() string {
	b, err := a.get("/api/cluster")
	if err != nil {
		return ""
	}
	var c struct {
		NodeID string `json:"node_id"`
	}
	_ = json.Unmarshal(b, &c)
	return c.NodeID
}

// copyDir copies a stopped agent's data directory, as a volume snapshot
// would.
func copyDataDir(t *testing.T, from, to string) {
	t.Helper()
	if out, err := exec.Command("cp", "-a", from, to).CombinedOutput(); err != nil {
		t.Fatalf("cp -a %s %s: %v %s", from, to, err, out)
	}
}

// An agent started on an old copy of its own volume (IDENTITY file and
// all, so the store cannot tell at open) learns from a peer that it is
// behind its own writes: the store takes a new node id and the agent
// restarts in-process under it, without exiting, and replicates again.
func TestInProcessRestartOnNewIdentity(t *testing.T) {
	addrs := ips(2)
	p := freePorts(t, addrs...)
	key := gossipKey(t)
	enc := "EDGE_ENCRYPTION_KEY=" + storeKey(t.Name())
	a := startAgent(t, agentConfig{name: "m1", ip: addrs[0], ports: p, key: key, env: []string{enc}})
	seed := net.JoinHostPort(addrs[0], strconv.Itoa(p.gossip()))
	b := startAgent(t, agentConfig{name: "m2", ip: addrs[1], ports: p, key: key, env: []string{enc}, join: []string{seed}})
	waitFor(t, "two members", func() bool { return a.alive() == "m1,m2" && b.alive() == "m1,m2" })
	b.mustDo(http.MethodPost, "/api/pools", pool("old", "1"), http.StatusCreated)
	waitFor(t, "replicated", func() bool { return settled([]*agent{a, b}) })

	b.stop()
	old := filepath.Join(t.TempDir(), "old-volume")
	copyDataDir(t, b.dataDir, old)
	b.start()
	for i := range 5 {
		b.mustDo(http.MethodPost, "/api/pools", pool(fmt.Sprintf("newer-%d", i), "2"), http.StatusCreated)
	}
	waitFor(t, "newer writes replicated", func() bool { return settled([]*agent{a, b}) })
	oldID := b.selfNodeID()
	b.stop()

	// The volume goes back to the old copy.
	if err := os.RemoveAll(b.dataDir); err != nil {
		t.Fatal(err)
	}
	copyDataDir(t, old, b.dataDir)
	b.startNoWait()
	exited := b.exited
	waitFor(t, "m2 restarted in-process under a new node id", func() bool {
		select {
		case <-exited:
			t.Fatalf("m2 exited instead of restarting in-process:\n%s", itest.Tail(b.log.String(), 40))
		default:
		}
		code, _ := b.healthStatus()
		return strings.Contains(b.log.String(), "restarting the agent in-process") && code == http.StatusOK
	})
	newID := b.selfNodeID()
	if newID == "" || newID == oldID {
		t.Fatalf("node id after the restart %q, before %q", newID, oldID)
	}
	// It holds its own newer writes again (from m1), and its new writes
	// replicate under the new id.
	waitFor(t, "m2 caught up with its own newer writes", func() bool { return strings.Contains(b.poolList(), "newer-4=2") })
	b.mustDo(http.MethodPost, "/api/pools", pool("after-restart", "3"), http.StatusCreated)
	waitFor(t, "m1 holds m2's write under its new id", func() bool {
		return strings.Contains(a.poolList(), "after-restart=3") && a.members()["m2"].ID == newID
	})
	select {
	case <-exited:
		t.Fatal("m2 exited")
	default:
	}
}
