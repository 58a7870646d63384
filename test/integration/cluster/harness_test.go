// Package cluster runs several singularity-edge agents as separate
// processes on 127.0.0.x addresses (and, where the kernel allows, in network
// namespaces) and checks cluster membership the way an operator sees it:
// through /api/cluster and /metrics.
package cluster

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/singularity-ng/singularity-edge/test/itest"
)

var binary string

func TestMain(m *testing.M) { os.Exit(itest.RunWithAgent(m, "edge-cluster-it-", &binary)) }

func randHex(t *testing.T, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

func gossipKey(t *testing.T) string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(b)
}

// ports is a base port free on every address of a test: gossip (base),
// replication (base+1), admin (base+2), HTTP (base+3).
type ports struct{ base int }

func (p ports) gossip() int { return p.base }
func (p ports) admin() int  { return p.base + 2 }
func (p ports) http() int   { return p.base + 3 }

func freePorts(t *testing.T, ips ...string) ports {
	t.Helper()
	for range 200 {
		n, _ := rand.Int(rand.Reader, big.NewInt(20000))
		base := 20000 + int(n.Int64())
		if free(base, ips) {
			return ports{base}
		}
	}
	t.Fatal("no free ports")
	return ports{}
}

func free(base int, ips []string) bool {
	var closers []io.Closer
	defer func() {
		for _, c := range closers {
			c.Close()
		}
	}()
	for _, ip := range ips {
		for p := base; p < base+4; p++ {
			addr := net.JoinHostPort(ip, strconv.Itoa(p))
			l, err := net.Listen("tcp", addr)
			if err != nil {
				return false
			}
			closers = append(closers, l)
			u, err := net.ListenPacket("udp", addr)
			if err != nil {
				return false
			}
			closers = append(closers, u)
		}
	}
	return true
}

// agent is one agent process.
type agent struct {
	t       *testing.T
	name    string
	ip      string
	ports   ports
	dataDir string
	token   string
	env     []string
	args    []string
	netns   string // run inside this network namespace ("" = the test's)
	// startLimit bounds how long start waits for an answer (default a
	// minute; a store of a million rows takes longer to open).
	startLimit time.Duration

	cmd    *exec.Cmd
	log    *itest.SyncBuffer
	exited chan struct{}
}

type agentConfig struct {
	name, ip  string
	ports     ports
	dataDir   string
	key, keys string
	join      []string
	args      []string
	env       []string
	netns     string
	// startLimit: see agent.startLimit.
	startLimit time.Duration
}

func startAgent(t *testing.T, c agentConfig) *agent {
	t.Helper()
	if c.dataDir == "" {
		c.dataDir = t.TempDir()
	}
	a := &agent{t: t, name: c.name, ip: c.ip, ports: c.ports, dataDir: c.dataDir, token: randHex(t, 16), netns: c.netns}
	// Every agent of a test shares one store key, as the nodes of a
	// cluster must (they refuse each other's streams otherwise).
	test, _, _ := strings.Cut(t.Name(), "/")
	a.env = append(os.Environ(), "EDGE_ADMIN_TOKEN="+a.token, "EDGE_ENCRYPTION_KEY="+storeKey(test),
		"EDGE_GOSSIP_KEY="+c.key, "EDGE_GOSSIP_KEYS="+c.keys)
	a.env = append(a.env, c.env...)
	a.args = append([]string{"--app", "edge-it", "--gossip-preset", "local"}, c.args...)
	if len(c.join) > 0 {
		a.args = append(a.args, "--join", strings.Join(c.join, ","))
	}
	a.startLimit = c.startLimit
	// Before start: an agent that does not answer in time is stopped too.
	t.Cleanup(a.stop)
	a.start()
	return a
}

// logDirEnv names a directory that receives a copy of every agent's log.
const logDirEnv = "EDGE_IT_LOG_DIR"

func (a *agent) addr(port int) string { return net.JoinHostPort(a.ip, strconv.Itoa(port)) }

func (a *agent) start() {
	a.t.Helper()
	a.startNoWait()
	exited := a.exited
	limit := a.startLimit
	if limit == 0 {
		limit = time.Minute
	}
	waitForWithin(a.t, "agent "+a.name+" to answer", limit, func() bool {
		select {
		case <-exited:
			a.t.Fatalf("agent %s exited early:\n%s", a.name, a.log.String())
		default:
		}
		resp, err := http.Get("http://" + a.addr(a.ports.admin()) + "/api/health")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

// startNoWait starts the process without waiting for it to be ready.
func (a *agent) startNoWait() {
	a.t.Helper()
	args := append([]string{"agent",
		"--data-dir", a.dataDir, "--node-name", a.name, "--region", "r" + a.name,
		"--http-addr", a.addr(a.ports.http()), "--https-addr", "", "--admin-addr", a.addr(a.ports.admin()),
		"--gossip-addr", a.addr(a.ports.gossip()), "--shutdown-timeout", "5s", "--log-level", "debug",
	}, a.args...)
	if a.netns != "" {
		a.cmd = exec.Command("ip", append([]string{"netns", "exec", a.netns, binary}, args...)...)
	} else {
		a.cmd = exec.Command(binary, args...)
	}
	a.cmd.Env = a.env
	a.log = &itest.SyncBuffer{}
	a.cmd.Stdout, a.cmd.Stderr = a.log, a.log
	if dir := os.Getenv(logDirEnv); dir != "" {
		// A copy of the log to read while the test runs (a long scenario).
		f, err := os.OpenFile(filepath.Join(dir, strings.ReplaceAll(a.t.Name(), "/", "_")+"-"+a.name+".log"),
			os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			a.t.Fatal(err)
		}
		a.t.Cleanup(func() { f.Close() })
		w := io.MultiWriter(a.log, f)
		a.cmd.Stdout, a.cmd.Stderr = w, w
	}
	if err := a.cmd.Start(); err != nil {
		a.t.Fatal(err)
	}
	a.exited = make(chan struct{})
	cmd, exited := a.cmd, a.exited
	go func() { _ = cmd.Wait(); close(exited) }()
}

// kill stops the agent with SIGKILL, as a crash would.
func (a *agent) kill() {
	_ = a.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-a.exited:
	case <-time.After(10 * time.Second):
		a.t.Fatalf("agent %s did not die", a.name)
	}
}

func (a *agent) stop() {
	select {
	case <-a.exited:
		return
	default:
	}
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.exited:
	case <-time.After(20 * time.Second):
		a.t.Errorf("agent %s did not stop within 20s of SIGTERM", a.name)
		a.kill()
	}
	if a.t.Failed() {
		a.t.Logf("agent %s log (tail):\n%s", a.name, itest.Tail(a.log.String(), 60))
	}
}

// storeKey is a store encryption key derived from seed (a test's name), so
// that a restart with the same data opens it.
func storeKey(dataDir string) string {
	sum := sha256.Sum256([]byte(dataDir))
	return hex.EncodeToString(sum[:])
}

type member struct {
	ID        string            `json:"id"`
	Name      string            `json:"name"`
	State     string            `json:"state"`
	Ready     bool              `json:"ready"`
	Self      bool              `json:"self"`
	Addresses map[string]string `json:"addresses"`
	Region    string            `json:"region"`
}

func (a *agent) get(path string) ([]byte, error) {
	req, _ := http.NewRequest(http.MethodGet, "http://"+a.addr(a.ports.admin())+path, nil)
	req.Header.Set("Authorization", "Bearer "+a.token)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := http.DefaultClient.Do(req.WithContext(ctx))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %d %s", path, resp.StatusCode, b)
	}
	return b, err
}

func (a *agent) members() map[string]member {
	b, err := a.get("/api/cluster")
	if err != nil {
		return nil
	}
	var c struct {
		Members []member `json:"members"`
	}
	if err := json.Unmarshal(b, &c); err != nil {
		a.t.Fatalf("/api/cluster: %v", err)
	}
	out := map[string]member{}
	for _, m := range c.Members {
		out[m.Name] = m
	}
	return out
}

// alive returns the sorted names of the alive members a sees.
func (a *agent) alive() string {
	var names []string
	for n, m := range a.members() {
		if m.State == "alive" {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	return strings.Join(names, ",")
}

// metric returns the sum of a metric's samples whose label set contains
// every given label (name{...} value lines of the text format).
func (a *agent) metric(name string, labels ...string) float64 {
	b, err := a.get("/metrics")
	if err != nil {
		return -1
	}
	var sum float64
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, name) || strings.HasPrefix(line, "#") {
			continue
		}
		rest := line[len(name):]
		if rest == "" || (rest[0] != '{' && rest[0] != ' ') {
			continue
		}
		ok := true
		for _, l := range labels {
			if !strings.Contains(rest, l) {
				ok = false
			}
		}
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err == nil {
			sum += v
		}
	}
	return sum
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	waitForWithin(t, what, time.Minute, cond)
}

func waitForWithin(t *testing.T, what string, limit time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}
