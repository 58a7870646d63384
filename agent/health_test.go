package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/singularity-ng/singularity-edge/apitypes"
	"github.com/singularity-ng/singularity-edge/storage"
)

// A store that is not ready makes the health listener say so, with the
// cause, as /api/health does, and both say ready again once the store is.
// The store is real and really not ready: a table was removed with
// `db remove-table` and waits for a resync. Start would clear that at once
// for a cluster of one (standaloneResync), so the agent is marked started
// by hand; the listener and its verdict are the agent's own.
func TestHealthFollowsStoreReadiness(t *testing.T) {
	cfg := DefaultConfig()
	cfg.DataDir = t.TempDir()
	cfg.HTTPAddr, cfg.HTTPSAddr = "127.0.0.1:0", ""
	cfg.AdminAddr, cfg.HealthAddr = "127.0.0.1:0", "127.0.0.1:0"
	cfg.ACMEDirectory = ""

	scfg := storage.DefaultConfig()
	scfg.Dir = cfg.DataDir
	st, err := storage.Open(scfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Update(context.Background(), func(tx *storage.Tx) error {
		return tx.PutPool(&storage.Pool{Name: "shop", Algorithm: "round_robin"})
	}); err != nil {
		t.Fatal(errJoin(err, st.Close()))
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	if err := storage.RemoveTable(scfg, storage.TablePools); err != nil {
		t.Fatal(err)
	}

	a, err := New(cfg, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := a.admin.Start(ctx); err != nil {
		t.Fatal(errJoin(err, a.Shutdown(ctx)))
	}
	if err := a.health.Start(ctx); err != nil {
		t.Fatal(errJoin(err, a.Shutdown(ctx)))
	}
	defer func() {
		if err := a.Shutdown(ctx); err != nil {
			t.Error(err)
		}
	}()

	healthz := func() (int, string) {
		t.Helper()
		resp, err := http.Get(fmt.Sprintf("http://%s%s", a.healthAddr(), HealthPath))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, strings.TrimSpace(string(b))
	}
	apiHealth := func() (int, apitypes.Health) {
		t.Helper()
		resp, err := http.Get(fmt.Sprintf("http://%s/api/health", a.admin.Addr()))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var h apitypes.Health
		if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, h
	}

	if code, body := healthz(); code != http.StatusServiceUnavailable || body != "starting" {
		t.Errorf("/healthz before the agent serves: %d %q, want 503 starting", code, body)
	}
	close(a.ready) // what Start does once the proxy serves

	const cause = "store_not_ready: tables under resync: pools"
	if code, body := healthz(); code != http.StatusServiceUnavailable || body != cause {
		t.Errorf("/healthz with a table under resync: %d %q, want 503 %q", code, body, cause)
	}
	if code, h := apiHealth(); code != http.StatusServiceUnavailable || h.Status+": "+h.Reason != cause {
		t.Errorf("/api/health with a table under resync: %d %+v, want 503 %q", code, h, cause)
	}

	if err := a.store.MarkResynced(storage.TablePools); err != nil {
		t.Fatal(err)
	}
	if code, body := healthz(); code != http.StatusOK || body != "ok" {
		t.Errorf("/healthz once the table is resynced: %d %q, want 200 ok", code, body)
	}
	if code, h := apiHealth(); code != http.StatusOK || !h.Ready {
		t.Errorf("/api/health once the table is resynced: %d %+v, want 200 ready", code, h)
	}
}

// TestWarnsACMEWithoutEncryptionKey: ACME on and no encryption key can
// obtain nothing (keys are stored sealed), so the agent says so at start.
func TestWarnsACMEWithoutEncryptionKey(t *testing.T) {
	const warning = "ACME is on but EDGE_ENCRYPTION_KEY is not set"
	for _, tc := range []struct {
		name, directory, key string
		warn                 bool
	}{
		{"acme without a key", "https://acme.example/directory", "", true},
		{"acme with a key", "https://acme.example/directory", strings.Repeat("ab", 32), false},
		{"no acme, no key", "", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.DataDir = t.TempDir()
			cfg.HTTPAddr, cfg.HTTPSAddr, cfg.AdminAddr, cfg.HealthAddr = "127.0.0.1:0", "", "127.0.0.1:0", ""
			cfg.ACMEDirectory, cfg.EncryptionKey = tc.directory, tc.key
			core, logs := observer.New(zapcore.WarnLevel)
			a, err := New(cfg, zap.New(core))
			if err != nil {
				t.Fatal(err)
			}
			if err := a.close(); err != nil {
				t.Fatal(err)
			}
			var got bool
			for _, e := range logs.All() {
				got = got || strings.HasPrefix(e.Message, warning)
			}
			if got != tc.warn {
				t.Fatalf("warned %v, want %v: %v", got, tc.warn, logs.All())
			}
		})
	}
}
