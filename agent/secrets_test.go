package agent

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/singularity-ng/singularity-edge/apitypes"
)

// secretNode is an in-process agent of a loopback cluster.
type secretNode struct {
	t    *testing.T
	name string
	cfg  Config
	a    *Agent
	logs *observer.ObservedLogs
	// started is closed when Start returned (with started's error).
	started  chan struct{}
	startErr error
	cancel   context.CancelFunc
}

// startSecretNode starts an agent named name on dir with the given
// EDGE_ENCRYPTION_KEY (hex) and EDGE_COOKIE_KEY, gossiping on port and
// joining join ("" for none). Start runs in the background: a node that
// never gets the cluster's state never returns from it.
func startSecretNode(t *testing.T, name, dir string, port int, join, encKey, cookieKey string) *secretNode {
	t.Helper()
	cfg := DefaultConfig()
	cfg.DataDir = dir
	cfg.HTTPAddr, cfg.HTTPSAddr = "127.0.0.1:0", ""
	cfg.AdminAddr = "127.0.0.1:0"
	cfg.HealthAddr = "127.0.0.1:0"
	cfg.AdminToken = "secret-test-token"
	cfg.EncryptionKey = encKey
	cfg.CookieKey = cookieKey
	cfg.ACMEDirectory = ""
	cfg.NodeName = name
	cfg.GossipAddr = fmt.Sprintf("127.0.0.1:%d", port)
	cfg.GossipKey = base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32))
	if join != "" {
		cfg.Join = []string{join}
	}
	cfg.ShutdownTimeout = 5 * time.Second
	core, logs := observer.New(zap.InfoLevel)
	a, err := New(cfg, zap.New(core).Named(name))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n := &secretNode{t: t, name: name, cfg: cfg, a: a, logs: logs, started: make(chan struct{}), cancel: cancel}
	go func() {
		defer close(n.started)
		n.startErr = a.Start(ctx)
	}()
	t.Cleanup(n.stop)
	return n
}

func (n *secretNode) stop() {
	if n.a == nil {
		return
	}
	n.cancel()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_ = n.a.Shutdown(ctx)
	select {
	case <-n.started:
	case <-time.After(20 * time.Second):
		n.t.Errorf("%s: Start did not return after Shutdown", n.name)
	}
	n.a = nil
}

// get answers GET path on the admin API (or, for /healthz, the health
// listener): status and body.
func (n *secretNode) get(path string) (int, string) {
	n.t.Helper()
	var addr string
	for deadline := time.Now().Add(10 * time.Second); addr == ""; time.Sleep(20 * time.Millisecond) {
		a := n.a.admin.Addr()
		if path == HealthPath {
			a = n.a.healthAddr()
		}
		if a != nil {
			addr = a.String()
		} else if time.Now().After(deadline) {
			n.t.Fatalf("%s: no listener for %s", n.name, path)
		}
	}
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+path, nil)
	req.Header.Set("Authorization", "Bearer "+n.cfg.AdminToken)
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		n.t.Fatalf("%s: GET %s: %v", n.name, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (n *secretNode) health() apitypes.Health {
	n.t.Helper()
	_, body := n.get("/api/health")
	var h apitypes.Health
	if err := json.Unmarshal([]byte(body), &h); err != nil {
		n.t.Fatalf("%s: /api/health %s: %v", n.name, body, err)
	}
	return h
}

// metric returns the value of the sample of name whose labels contain
// label, or -1.
func (n *secretNode) metric(name, label string) float64 {
	n.t.Helper()
	_, body := n.get("/metrics")
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, name+"{") && strings.Contains(line, label) {
			var v float64
			if _, err := fmt.Sscan(line[strings.LastIndexByte(line, ' ')+1:], &v); err == nil {
				return v
			}
		}
	}
	return -1
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(60 * time.Second); !cond(); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func hexKey(b byte) string { return strings.Repeat(fmt.Sprintf("%02x", b), 32) }

// Two nodes whose sticky-cookie keys differ replicate and serve, but
// neither honours the other's cookies: /api/cluster marks the member,
// /api/health and /healthz stay ready with a warning, the metric counts
// it and the log says what to set. Matching keys show none of it.
func TestCookieKeyMismatchReported(t *testing.T) {
	p1, p2 := freeLoopbackPort(t), freeLoopbackPort(t)
	seed := fmt.Sprintf("127.0.0.1:%d", p1)
	m1 := startSecretNode(t, "m1", t.TempDir(), p1, "", hexKey(1), "cookie-key-of-the-first-node")
	m2 := startSecretNode(t, "m2", t.TempDir(), p2, seed, hexKey(1), "cookie-key-of-another-node!!")
	for _, n := range []*secretNode{m1, m2} {
		waitUntil(t, n.name+" ready and sees the other's cookie key differ", func() bool {
			code, body := n.get("/api/cluster")
			var cl apitypes.Cluster
			if code != http.StatusOK || json.Unmarshal([]byte(body), &cl) != nil {
				return false
			}
			for _, m := range cl.Members {
				if !m.Self && m.CookieKeyDiffers {
					return n.health().Ready
				}
			}
			return false
		})
		h := n.health()
		if h.Status != "ok" || len(h.Warnings) != 1 || !strings.HasPrefix(h.Warnings[0], "cookie_key_differs: 1 member signs") {
			t.Errorf("%s: /api/health %+v, want ok with one cookie_key_differs warning", n.name, h)
		}
		code, body := n.get(HealthPath)
		if code != http.StatusOK || !strings.HasPrefix(body, "ok\nwarning: cookie_key_differs:") {
			t.Errorf("%s: /healthz %d %q, want 200 ok with the warning", n.name, code, body)
		}
		if v := n.metric("singularity_edge_cluster_secret_mismatch_members", `secret="cookie_key"`); v != 1 {
			t.Errorf("%s: cookie_key mismatch gauge %v, want 1", n.name, v)
		}
		if v := n.metric("singularity_edge_cluster_secret_mismatch_members", `secret="encryption_key"`); v != 0 {
			t.Errorf("%s: encryption_key mismatch gauge %v, want 0", n.name, v)
		}
		if n.logs.FilterMessageSnippet("sticky-session cookie key differs from a member's").Len() != 1 {
			t.Errorf("%s: want one error line naming the cookie key mismatch", n.name)
		}
		if strings.Contains(body, "cookie-key-of") {
			t.Errorf("%s: /healthz shows a key: %q", n.name, body)
		}
	}
	m2.stop()
	m3 := startSecretNode(t, "m3", t.TempDir(), freeLoopbackPort(t), seed, hexKey(1), "cookie-key-of-the-first-node")
	waitUntil(t, "m3 ready", func() bool { return m3.health().Ready })
	if h := m3.health(); len(h.Warnings) != 0 {
		t.Errorf("m3, same cookie key as m1: warnings %v", h.Warnings)
	}
}

// A node whose EDGE_ENCRYPTION_KEY differs from that of every peer that
// holds the cluster's state replicates nothing and never gets a snapshot:
// /healthz and /api/health say why (503 encryption_key_differs) where
// they said "starting" forever. The established node it joins stays
// ready. (An established node cannot come back with another key: its
// store refuses to open.)
func TestEncryptionKeyMismatchNotReady(t *testing.T) {
	p1, p2 := freeLoopbackPort(t), freeLoopbackPort(t)
	seed := fmt.Sprintf("127.0.0.1:%d", p1)
	m1 := startSecretNode(t, "m1", t.TempDir(), p1, "", hexKey(1), "")
	waitUntil(t, "m1 ready", func() bool { return m1.health().Ready })

	m2 := startSecretNode(t, "m2", t.TempDir(), p2, seed, hexKey(2), "")
	waitUntil(t, "the new node with another key says why it is not ready", func() bool {
		return m2.health().Status == "encryption_key_differs"
	})
	code, body := m2.get(HealthPath)
	if code != http.StatusServiceUnavailable || !strings.HasPrefix(body, "encryption_key_differs: ") || !strings.Contains(body, "EDGE_ENCRYPTION_KEY") {
		t.Fatalf("m2 /healthz: %d %q", code, body)
	}
	if strings.Contains(body, hexKey(2)) || strings.Contains(body, "m1") {
		t.Fatalf("m2 /healthz names a key or a member: %q", body)
	}
	if h := m1.health(); !h.Ready {
		t.Fatalf("the established node is not ready because a new one has another key: %+v", h)
	}
	if v := m1.metric("singularity_edge_cluster_secret_mismatch_members", `secret="encryption_key"`); v != 1 {
		t.Errorf("m1: encryption_key mismatch gauge %v, want 1", v)
	}
}
