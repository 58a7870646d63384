package cluster

// Replication between agent processes over real sockets and real RocksDB
// stores. Writes go through the admin API; the oracle is the row-by-row
// dump of every table (versions and tombstones included) that
// `singularity-edge db export` writes from each stopped agent's data
// directory: every pair of agents must hold identical dumps.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// do sends an authenticated admin request and returns the status and body.
func (a *agent) do(method, path string, body any) (int, []byte) {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, "http://"+a.addr(a.ports.admin())+path, rd)
	req.Header.Set("Authorization", "Bearer "+a.token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		return 0, []byte(err.Error())
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// mustDo fails the test unless the request answers one of want.
func (a *agent) mustDo(method, path string, body any, want ...int) {
	a.t.Helper()
	code, b := a.do(method, path, body)
	for _, w := range want {
		if code == w {
			return
		}
	}
	a.t.Errorf("%s: %s %s = %d %s", a.name, method, path, code, b)
}

func pool(name, v string) map[string]any {
	return map[string]any{"name": name, "algorithm": "round_robin", "metadata": map[string]string{"v": v}}
}

// poolList is the agent's pools as "name=v" lines, sorted: a cheap live
// comparison before the exact one on the stopped stores.
func (a *agent) poolList() string {
	var lines []string
	after := ""
	for {
		code, b := a.do(http.MethodGet, "/api/pools?limit=500&after="+after, nil)
		if code != http.StatusOK {
			return fmt.Sprintf("error %d %s", code, b)
		}
		var page struct {
			Items []struct {
				Name     string            `json:"name"`
				Metadata map[string]string `json:"metadata"`
			} `json:"items"`
			Next string `json:"next"`
		}
		if err := json.Unmarshal(b, &page); err != nil {
			return "error " + err.Error()
		}
		for _, p := range page.Items {
			lines = append(lines, p.Name+"="+p.Metadata["v"])
		}
		if page.Next == "" {
			break
		}
		after = page.Next
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// settled reports whether every agent lists the same pools and has nothing
// pending for any connected peer.
func settled(agents []*agent) bool {
	first := agents[0].poolList()
	if strings.HasPrefix(first, "error") {
		return false
	}
	for _, a := range agents {
		if a.poolList() != first {
			return false
		}
		b, err := a.get("/api/cluster")
		if err != nil {
			return false
		}
		var c struct {
			Members []struct {
				Self        bool `json:"self"`
				Replication *struct {
					Connected      bool   `json:"connected"`
					PendingChanges uint64 `json:"pending_changes"`
				} `json:"replication"`
			} `json:"members"`
		}
		if json.Unmarshal(b, &c) != nil {
			return false
		}
		for _, m := range c.Members {
			if m.Self {
				continue
			}
			if m.Replication == nil || !m.Replication.Connected || m.Replication.PendingChanges != 0 {
				return false
			}
		}
	}
	return true
}

// dump runs `singularity-edge db export` on a stopped agent's data
// directory and returns the rows (the header line, which names the node
// and the time, left out).
func (a *agent) dump() string {
	a.t.Helper()
	cmd := exec.Command(binary, "db", "export", "--data-dir", a.dataDir, "-")
	cmd.Env = a.env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		a.t.Fatalf("db export of %s: %v: %s", a.name, err, errb.String())
	}
	_, rows, _ := strings.Cut(out.String(), "\n")
	return rows
}

// sameDumps stops every agent and compares their dumps row by row.
func sameDumps(t *testing.T, agents []*agent) string {
	t.Helper()
	for _, a := range agents {
		a.stop()
	}
	want := agents[0].dump()
	if !strings.Contains(want, `"table":"pools"`) {
		t.Fatalf("%s holds no pools:\n%s", agents[0].name, want)
	}
	for _, a := range agents[1:] {
		if got := a.dump(); got != want {
			t.Fatalf("dumps differ:\n%s:\n%s\n%s:\n%s", agents[0].name, want, a.name, got)
		}
	}
	return want
}

// startCluster starts n agents on loopback addresses with one gossip key
// and one encryption key (a cluster shares both); the first one starts
// the cluster's state, the others join it and bootstrap from it.
func startCluster(t *testing.T, n int, addrs []string, netns []string) []*agent {
	t.Helper()
	return startClusterWith(t, n, addrs, netns, nil)
}

// startClusterWith is startCluster with configure called on each agent's
// configuration before it starts (extra environment, a pre-filled volume).
func startClusterWith(t *testing.T, n int, addrs []string, netns []string, configure func(i int, c *agentConfig)) []*agent {
	t.Helper()
	key := gossipKey(t)
	enc := "EDGE_ENCRYPTION_KEY=" + storeKey(t.Name())
	p := ports{base: 17946}
	if netns == nil {
		p = freePorts(t, addrs...)
	}
	seed := net.JoinHostPort(addrs[0], strconv.Itoa(p.gossip()))
	var agents []*agent
	for i := range n {
		c := agentConfig{name: fmt.Sprintf("m%d", i+1), ip: addrs[i], ports: p, key: key, env: []string{enc}}
		if i > 0 {
			c.join = []string{seed}
		}
		if netns != nil {
			c.netns = netns[i]
		}
		if configure != nil {
			configure(i, &c)
		}
		agents = append(agents, startAgent(t, c))
	}
	for _, a := range agents {
		waitFor(t, a.name+" sees every member", func() bool { return a.alive() == names(n) })
	}
	return agents
}

// Three agents write concurrently (own pools, updates of shared pools,
// deletes) through their admin APIs; all end with identical dumps.
func TestReplicationConvergesConcurrentWrites(t *testing.T) {
	agents := startCluster(t, 3, ips(3), nil)
	for i := range 5 {
		agents[0].mustDo(http.MethodPost, "/api/pools", pool(fmt.Sprintf("shared-%d", i), "init"), http.StatusCreated)
	}
	waitFor(t, "shared pools everywhere", func() bool { return settled(agents) })
	var wg sync.WaitGroup
	for _, a := range agents {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 15 {
				a.mustDo(http.MethodPost, "/api/pools", pool(fmt.Sprintf("%s-%d", a.name, j), "v"), http.StatusCreated)
				a.mustDo(http.MethodPatch, fmt.Sprintf("/api/pools/shared-%d", j%5),
					map[string]any{"metadata": map[string]string{"v": fmt.Sprintf("%s-%d", a.name, j)}}, http.StatusOK, http.StatusNotFound)
				if j%4 == 3 {
					a.mustDo(http.MethodDelete, fmt.Sprintf("/api/pools/%s-%d", a.name, j-1), nil, http.StatusNoContent, http.StatusOK)
				}
			}
		}()
	}
	wg.Wait()
	waitFor(t, "the agents converge", func() bool { return settled(agents) })
	dump := sameDumps(t, agents)
	if !strings.Contains(dump, `"deleted":true`) {
		t.Fatal("no tombstone in the dump: the deletes did not replicate as tombstones")
	}
}

// A partition with both sides writing (same-key updates, delete against
// update, the same pool created on both sides) heals to identical dumps
// with no operator action; the later write wins.
func TestReplicationPartitionHeals(t *testing.T) {
	lab := newNetLab(t, 3)
	addrs := []string{lab.ip(0), lab.ip(1), lab.ip(2)}
	agents := startCluster(t, 3, addrs, lab.ns)
	a, b := agents[0], agents[2]
	a.mustDo(http.MethodPost, "/api/pools", pool("contested", "v0"), http.StatusCreated)
	a.mustDo(http.MethodPost, "/api/pools", pool("doomed", "v0"), http.StatusCreated)
	waitFor(t, "initial pools everywhere", func() bool { return settled(agents) })

	lab.cut(2, 0)
	lab.cut(2, 1)
	waitFor(t, "m3 alone", func() bool { return b.alive() == "m3" })
	// Minority side first, majority side later: the later writes win.
	b.mustDo(http.MethodPatch, "/api/pools/contested", map[string]any{"metadata": map[string]string{"v": "from-m3"}}, http.StatusOK)
	b.mustDo(http.MethodPatch, "/api/pools/doomed", map[string]any{"metadata": map[string]string{"v": "updated-by-m3"}}, http.StatusOK)
	// A backend added to the pool the other side deletes: m1's delete
	// cannot know it, so it outlives its pool after the heal.
	b.mustDo(http.MethodPost, "/api/pools/doomed/backends", map[string]any{"url": "http://10.0.0.2:80"}, http.StatusCreated)
	b.mustDo(http.MethodPost, "/api/pools", pool("both", "m3"), http.StatusCreated)
	b.mustDo(http.MethodPost, "/api/pools", pool("only-m3", "x"), http.StatusCreated)
	time.Sleep(20 * time.Millisecond) // HLC ms resolution: a strictly later version
	a.mustDo(http.MethodPatch, "/api/pools/contested", map[string]any{"metadata": map[string]string{"v": "from-m1"}}, http.StatusOK)
	a.mustDo(http.MethodDelete, "/api/pools/doomed", nil, http.StatusNoContent, http.StatusOK)
	a.mustDo(http.MethodPost, "/api/pools", pool("both", "m1"), http.StatusCreated)
	if b.poolList() == a.poolList() {
		t.Fatal("writes crossed the partition")
	}

	lab.heal(2, 0)
	lab.heal(2, 1)
	waitFor(t, "the halves converge", func() bool { return settled(agents) })
	got := a.poolList()
	for _, want := range []string{"contested=from-m1", "both=m1", "only-m3=x"} {
		if !strings.Contains(got, want) {
			t.Fatalf("after the heal, want %s in\n%s", want, got)
		}
	}
	if strings.Contains(got, "doomed") {
		t.Fatalf("the deleted pool came back:\n%s", got)
	}
	// A pool created again under that name starts empty everywhere: the
	// backend left from the partition is not put into service.
	a.mustDo(http.MethodPost, "/api/pools", pool("doomed", "again"), http.StatusCreated)
	waitFor(t, "the new pool everywhere", func() bool { return settled(agents) })
	for _, ag := range agents {
		code, body := ag.do(http.MethodGet, "/api/pools/doomed/backends", nil)
		if code != http.StatusOK || strings.Contains(string(body), "10.0.0.2") {
			t.Fatalf("%s: the new pool doomed: %d %s", ag.name, code, body)
		}
	}
	// m3 deletes its observation of the removed backend on its next
	// observation pass (pools.Config.ObservationInterval, 5 s), which may
	// come after the pools settled: let it run and replicate before the
	// dumps are compared.
	time.Sleep(7 * time.Second)
	waitFor(t, "m3's last observation pass everywhere", func() bool { return settled(agents) })
	sameDumps(t, agents)
}

// kill -9 of an agent while the others write to it; it restarts on the
// same data and the cluster converges.
func TestReplicationKillRestart(t *testing.T) {
	agents := startCluster(t, 3, ips(3), nil)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, a := range agents[:2] {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; ; j++ {
				select {
				case <-stop:
					return
				default:
				}
				a.mustDo(http.MethodPost, "/api/pools", pool(fmt.Sprintf("%s-%d", a.name, j), "v"), http.StatusCreated)
			}
		}()
	}
	victim := agents[2]
	waitFor(t, "m3 receives writes", func() bool { return strings.Count(victim.poolList(), "\n") > 20 })
	victim.kill()
	time.Sleep(500 * time.Millisecond)
	victim.start()
	waitFor(t, "m3 receives writes again", func() bool {
		return strings.Count(victim.poolList(), "\n") > strings.Count(agents[0].poolList(), "\n")/2
	})
	close(stop)
	wg.Wait()
	waitFor(t, "the agents converge", func() bool { return settled(agents) })
	sameDumps(t, agents)
}

// A new agent with an empty volume joins a cluster that keeps writing: it
// answers not ready until it holds the cluster's state (when it first says
// ready it already lists every pool written before it started), then
// matches the others.
func TestReplicationNewMemberBootstraps(t *testing.T) {
	addrs := ips(3)
	agents := startCluster(t, 2, addrs, nil)
	for i := range 300 {
		agents[i%2].mustDo(http.MethodPost, "/api/pools", pool(fmt.Sprintf("pre-%d", i), "v"), http.StatusCreated)
	}
	before := agents[0].poolList()
	stop := make(chan struct{})
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		for j := 0; ; j++ {
			select {
			case <-stop:
				return
			default:
			}
			agents[j%2].mustDo(http.MethodPost, "/api/pools", pool(fmt.Sprintf("live-%d", j), "v"), http.StatusCreated)
		}
	}()

	a := agents[0]
	n := &agent{t: t, name: "m3", ip: addrs[2], ports: a.ports, dataDir: t.TempDir(), token: a.token, env: a.env}
	n.args = []string{"--app", "edge-it", "--gossip-preset", "local", "--join", net.JoinHostPort(a.ip, strconv.Itoa(a.ports.gossip()))}
	// The new agent gets its own token (env order: the last one wins).
	n.token = randHex(t, 16)
	n.env = append(append([]string{}, a.env...), "EDGE_ADMIN_TOKEN="+n.token)
	n.startNoWait()
	t.Cleanup(n.stop)
	sawNotReady := false
	waitFor(t, "m3 ready", func() bool {
		resp, err := http.Get("http://" + n.addr(n.ports.admin()) + "/api/health")
		if err != nil {
			return false
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusServiceUnavailable {
			sawNotReady = true
		}
		return resp.StatusCode == http.StatusOK
	})
	// Ready means it holds the state: every pool of before is there.
	got := n.poolList()
	for _, line := range strings.Split(before, "\n") {
		if !strings.Contains(got, line+"\n") && !strings.HasSuffix(got, line) {
			t.Fatalf("m3 said ready without pool %q", line)
		}
	}
	close(stop)
	<-writerDone
	all := append(agents, n)
	waitFor(t, "m3 matches", func() bool { return settled(all) })
	if !strings.Contains(n.log.String(), "bootstrapped from peer") {
		t.Fatal("m3 did not bootstrap from a snapshot")
	}
	t.Logf("m3 answered not ready before it was ready: %v", sawNotReady)
	sameDumps(t, all)
}
