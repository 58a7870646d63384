// Package integration runs the real singularity-edge binary as separate
// processes and drives it the way an operator does: through the CLI, the
// admin API and real client traffic.
package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/singularity-ng/singularity-edge/test/itest"
)

// binary is the path of the singularity-edge binary built by TestMain.
var binary string

func TestMain(m *testing.M) { os.Exit(itest.RunWithAgent(m, "edge-integration-", &binary)) }

// agentProc is one running agent process.
type agentProc struct {
	t       *testing.T
	dataDir string
	env     []string
	http    string // proxy HTTP address
	https   string // proxy HTTPS address
	admin   string // admin address
	cmd     *exec.Cmd
	log     *itest.SyncBuffer
	exited  chan struct{}
	waitErr error
}

type agentOptions struct {
	dataDir string
	token   string
	encKey  string
	args    []string
}

func newToken(t *testing.T) string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// startAgent starts an agent on free loopback ports and waits until its
// admin API answers /api/health with 200.
func startAgent(t *testing.T, opts agentOptions) *agentProc {
	t.Helper()
	if opts.dataDir == "" {
		opts.dataDir = t.TempDir()
	}
	if opts.token == "" {
		opts.token = newToken(t)
	}
	if opts.encKey == "" {
		opts.encKey = newToken(t) + newToken(t) // 32 bytes as 64 hex characters
	}
	a := &agentProc{
		t:       t,
		dataDir: opts.dataDir,
		http:    freeAddr(t),
		https:   freeAddr(t),
		admin:   freeAddr(t),
		env:     append(os.Environ(), "EDGE_ADMIN_TOKEN="+opts.token, "EDGE_ENCRYPTION_KEY="+opts.encKey),
	}
	a.start(opts.args...)
	t.Cleanup(a.stop)
	return a
}

func (a *agentProc) start(extra ...string) {
	a.t.Helper()
	args := append([]string{"agent",
		"--data-dir", a.dataDir,
		"--http-addr", a.http, "--https-addr", a.https, "--admin-addr", a.admin,
		"--node-name", "it-" + filepath.Base(a.dataDir), "--region", "test",
		"--shutdown-timeout", "10s",
	}, extra...)
	a.cmd = exec.Command(binary, args...)
	a.cmd.Env = a.env
	a.log = &itest.SyncBuffer{}
	a.cmd.Stdout, a.cmd.Stderr = a.log, a.log
	if err := a.cmd.Start(); err != nil {
		a.t.Fatal(err)
	}
	a.exited = make(chan struct{})
	go func() { a.waitErr = a.cmd.Wait(); close(a.exited) }()
	waitFor(a.t, 30*time.Second, "agent admin API to answer", func() bool {
		select {
		case <-a.exited:
			a.t.Fatalf("agent exited early: %v\n%s", a.waitErr, a.log.String())
		default:
		}
		resp, err := http.Get("http://" + a.admin + "/api/health")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

// kill stops the agent with SIGKILL, as a crash would.
func (a *agentProc) kill() {
	a.t.Helper()
	_ = a.cmd.Process.Signal(syscall.SIGKILL)
	<-a.exited
}

// terminate sends SIGTERM and returns a channel closed when the agent exited.
func (a *agentProc) terminate() <-chan struct{} {
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	return a.exited
}

func (a *agentProc) stop() {
	select {
	case <-a.exited:
		return
	default:
	}
	done := a.terminate()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		a.t.Errorf("agent did not stop within 20s of SIGTERM")
		a.kill()
	}
	if a.t.Failed() {
		a.t.Logf("agent log:\n%s", a.log.String())
	}
}

// cli runs the CLI against this agent and returns stdout, stderr and the exit code.
func (a *agentProc) cli(token string, args ...string) (string, string, int) {
	a.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, append(args, "--api", "http://"+a.admin)...)
	cmd.Env = append(os.Environ(), "EDGE_ADMIN_TOKEN="+token)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		a.t.Fatalf("running %v: %v", args, err)
	}
	return stdout.String(), stderr.String(), code
}

// api calls the admin API and decodes the JSON answer into out (if non-nil).
func (a *agentProc) api(token, method, path string, body any, out any) int {
	a.t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			a.t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, "http://"+a.admin+path, rd)
	if err != nil {
		a.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		a.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			a.t.Fatalf("%s %s: decoding %q: %v", method, path, data, err)
		}
	}
	return resp.StatusCode
}

// freeAddr returns a loopback address with a port that was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	return handedOut.freeAddr(t)
}

// handedOut remembers every port freeAddr gave out in this test binary.
// The kernel may hand a port that was just closed to the next bind(0), so
// without it two listeners of one agent (or of two parallel tests) could
// get the same port: the agent then failed to start with "address
// already in use". Test-binary state, shared on purpose.
var handedOut = &portSet{ports: map[string]bool{}}

type portSet struct {
	mu    sync.Mutex
	ports map[string]bool
}

func (p *portSet) freeAddr(t *testing.T) string {
	t.Helper()
	for range 100 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		_ = ln.Close()
		p.mu.Lock()
		fresh := !p.ports[addr]
		p.ports[addr] = true
		p.mu.Unlock()
		if fresh {
			return addr
		}
	}
	t.Fatal("no loopback port left that was not handed out before")
	return ""
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// backend is a plain HTTP server that answers with its name.
type backend struct {
	name string
	ln   net.Listener
	srv  *http.Server
}

func startBackend(t *testing.T, name string, handler http.Handler) *backend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if handler == nil {
		handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-Backend", name)
			fmt.Fprintf(w, "%s %s", name, r.Header.Get("X-Forwarded-For"))
		})
	}
	b := &backend{name: name, ln: ln, srv: &http.Server{Handler: handler, ReadHeaderTimeout: 5 * time.Second}}
	go func() { _ = b.srv.Serve(ln) }()
	t.Cleanup(b.close)
	return b
}

func (b *backend) url() string { return "http://" + b.ln.Addr().String() }

func (b *backend) close() { _ = b.srv.Close() }

// proxyGet sends one request for host through the agent's HTTP listener and
// returns the status and the X-Backend header.
func proxyGet(t *testing.T, client *http.Client, addr, host string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, "http://"+addr+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = host
	resp, err := client.Do(req)
	if err != nil {
		return 0, ""
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, resp.Header.Get("X-Backend")
}

func contains(haystack, needle string) bool { return strings.Contains(haystack, needle) }
