package agent

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/singularity-ng/singularity-edge/replication"
	"github.com/singularity-ng/singularity-edge/storage"
)

// freeLoopbackPort returns a port free for TCP and UDP on 127.0.0.1, and
// the next one free for TCP (gossip and replication).
func freeLoopbackPort(t *testing.T) int {
	t.Helper()
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		p := l.Addr().(*net.TCPAddr).Port
		l.Close()
		u, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			continue
		}
		u.Close()
		r, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p+1))
		if err != nil {
			continue
		}
		r.Close()
		return p
	}
	t.Fatal("no free port")
	return 0
}

// A store found behind a tombstone purge (the engine wrote the rebuild
// marker and ended with ErrRebuilt) is handled in-process: the agent stops
// every part, the reopened store is emptied under a new node id, and the
// next incarnation serves, with no exit and no supervisor.
func TestInProcessRestartOnRebuild(t *testing.T) {
	port := freeLoopbackPort(t)
	cfg := DefaultConfig()
	cfg.DataDir = t.TempDir()
	cfg.HTTPAddr, cfg.HTTPSAddr = "127.0.0.1:0", ""
	cfg.AdminAddr = "127.0.0.1:0"
	cfg.AdminToken = "restart-test-token"
	cfg.EncryptionKey = strings.Repeat("ab", 32)
	cfg.ACMEDirectory = ""
	cfg.NodeName = "restart-test"
	cfg.GossipAddr = fmt.Sprintf("127.0.0.1:%d", port)
	cfg.GossipKey = base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32))
	cfg.ShutdownTimeout = 5 * time.Second

	core, logs := observer.New(zap.InfoLevel)
	logger := zap.New(core)
	incarnations := make(chan *Agent, 4)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- runRestarting(ctx, cfg, logger, func(a *Agent) { incarnations <- a }) }()
	defer func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("Run did not return")
		}
	}()
	next := func() *Agent {
		t.Helper()
		select {
		case a := <-incarnations:
			return a
		case err := <-done:
			t.Fatalf("Run returned instead of serving: %v", err)
		case <-time.After(60 * time.Second):
			t.Fatal("no incarnation served")
		}
		return nil
	}
	api := func(a *Agent, method, path string, body any) int {
		t.Helper()
		var rd *bytes.Reader
		if body != nil {
			b, _ := json.Marshal(body)
			rd = bytes.NewReader(b)
		} else {
			rd = bytes.NewReader(nil)
		}
		req, _ := http.NewRequest(method, "http://"+a.admin.Addr().String()+path, rd)
		req.Header.Set("Authorization", "Bearer "+cfg.AdminToken)
		req.Header.Set("Content-Type", "application/json")
		resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}

	first := next()
	oldID := first.store.NodeID()
	if code := api(first, http.MethodPost, "/api/pools", map[string]any{"name": "before-rebuild"}); code != http.StatusCreated {
		t.Fatalf("create pool: %d", code)
	}
	// What the engine does when a peer answers TooStale: its own writes
	// handed over, the store marked for a rebuild, Run ends with
	// ErrRebuilt (replication's engine tests cover that part).
	rs, err := replication.NewRocksStore(first.store, replication.DefaultRocksConfig())
	if err != nil {
		t.Fatal(err)
	}
	if err := rs.Rebuild(ctx); err != nil {
		t.Fatal(err)
	}
	first.errs <- fmt.Errorf("replication: %w", replication.ErrRebuilt)

	second := next()
	if second == first {
		t.Fatal("the same incarnation served again")
	}
	if second.store.NodeID() == oldID {
		t.Fatalf("node id %s kept after a rebuild", oldID)
	}
	if code := api(second, http.MethodGet, "/api/pools/before-rebuild", nil); code != http.StatusNotFound {
		t.Fatalf("the rebuilt store still holds the old pool: %d", code)
	}
	if code := api(second, http.MethodGet, "/api/health", nil); code != http.StatusOK {
		t.Fatalf("health after the restart: %d", code)
	}
	if code := api(second, http.MethodPost, "/api/pools", map[string]any{"name": "after-rebuild"}); code != http.StatusCreated {
		t.Fatalf("write after the restart: %d", code)
	}
	if n := logs.FilterMessage("restarting the agent in-process: every part is stopped and built again on the reopened store").Len(); n != 1 {
		t.Fatalf("%d restart log lines, want 1", n)
	}
	if n := logs.FilterMessageSnippet("the store was emptied as the replication engine asked").Len(); n != 1 {
		t.Fatalf("%d rebuild log lines, want 1", n)
	}
}

func TestRestartReason(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{context.Canceled, false},
		{fmt.Errorf("replication: %w", replication.ErrNewIdentity), true},
		{fmt.Errorf("replication: %w", replication.ErrRebuilt), true},
		{fmt.Errorf("pools: %w", fmt.Errorf("disk")), false},
		{fmt.Errorf("store verification: %w: %w", errDamageFound, storage.ErrCorrupt), true},
		{fmt.Errorf("pools: %w", storage.ErrCorrupt), false}, // a read error: the agent stops with the way out
	} {
		if got := restartReason(tt.err) != ""; got != tt.want {
			t.Errorf("restartReason(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}
