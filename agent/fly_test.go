package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// flyEnv is what a Fly Machine of app "edge-test" in syd sees, plus the secrets.
func flyEnv() map[string]string {
	return map[string]string{
		"FLY_APP_NAME":     "edge-test",
		"FLY_REGION":       "syd",
		"FLY_MACHINE_ID":   "148e21ea7e3289",
		"FLY_PRIVATE_IP":   "fdaa:0:1:a7b:1::2",
		"EDGE_ADMIN_TOKEN": "tok",
		"EDGE_GOSSIP_KEY":  "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
	}
}

func TestApplyEnvironmentFlyDefaults(t *testing.T) {
	env := flyEnv()
	cfg := DefaultConfig()
	cfg.ApplyEnvironment(func(k string) string { return env[k] })

	want := map[string][2]string{
		"node name":   {cfg.NodeName, "148e21ea7e3289"},
		"region":      {cfg.Region, "syd"},
		"admin addr":  {cfg.AdminAddr, "[fdaa:0:1:a7b:1::2]:4000"},
		"health addr": {cfg.HealthAddr, "0.0.0.0:4001"},
		"data dir":    {cfg.DataDir, "/data"},
		"http addr":   {cfg.HTTPAddr, ":8080"},
		"https addr":  {cfg.HTTPSAddr, ":8443"},
		"app":         {cfg.Fly.AppName, "edge-test"},
		"private ip":  {cfg.Fly.PrivateIP, "fdaa:0:1:a7b:1::2"},
		"gossip addr": {cfg.GossipAddr, "[fdaa:0:1:a7b:1::2]:7946"},
		"cluster app": {cfg.App, "edge-test"},
	}
	for what, got := range want {
		if got[0] != got[1] {
			t.Errorf("%s on Fly = %q, want %q", what, got[0], got[1])
		}
	}
	if err := cfg.Validate(); err != nil {
		t.Errorf("the Fly configuration does not validate: %v", err)
	}

	local := DefaultConfig()
	local.ApplyEnvironment(func(string) string { return "" })
	if local.HealthAddr != "" || local.DataDir != "./data" || local.Fly.OnFly() {
		t.Errorf("Fly defaults applied without FLY_* variables: %+v", local)
	}
}

func TestValidateHealthAddr(t *testing.T) {
	cfg := DefaultConfig()
	cfg.HealthAddr = "4001"
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "--health-addr") {
		t.Fatalf("bad health address accepted: %v", err)
	}
}

func TestCheckDataDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "b")
	if err := checkDataDir(dir); err != nil {
		t.Fatalf("fresh nested directory: %v", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("the write check left %d files behind", len(entries))
	}

	// A path below a regular file cannot be a directory, even for root.
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	err := checkDataDir(filepath.Join(file, "data"))
	if err == nil || !strings.Contains(err.Error(), "--data-dir") {
		t.Fatalf("a data dir below a file: %v", err)
	}
}

func TestDataDirErrorSaysTheFix(t *testing.T) {
	tests := []struct {
		errno syscall.Errno
		want  string
	}{
		{syscall.EACCES, "chown -R"},
		{syscall.EPERM, "chown -R"},
		{syscall.ENOSPC, "fly volumes extend"},
		{syscall.EROFS, "read-only"},
	}
	for _, tc := range tests {
		t.Run(tc.errno.Error(), func(t *testing.T) {
			cause := &os.PathError{Op: "open", Path: "/data/x", Err: tc.errno}
			err := dataDirError("/data", "is not writable", cause)
			if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "/data") {
				t.Errorf("message %q does not contain %q", err, tc.want)
			}
			if !errors.Is(err, tc.errno) {
				t.Errorf("the cause is not wrapped: %v", err)
			}
		})
	}
}

func TestNotePrivateAddress(t *testing.T) {
	dir := t.TempDir()
	core, logs := observer.New(zapcore.DebugLevel)
	logger := zap.New(core)

	steps := []struct {
		ip        string
		wantLevel zapcore.Level
		wantLog   string // "" = nothing logged
	}{
		{"fdaa:0:1:a7b:1::2", zapcore.InfoLevel, "first start"},
		{"fdaa:0:1:a7b:1::2", zapcore.InfoLevel, ""},
		{"fdaa:0:1:a7b:9::5", zapcore.WarnLevel, "private address changed"},
		{"fdaa:0:1:a7b:9::5", zapcore.InfoLevel, ""},
	}
	for i, st := range steps {
		before := logs.Len()
		if err := notePrivateAddress(dir, st.ip, logger); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		got := logs.All()[before:]
		switch {
		case st.wantLog == "" && len(got) != 0:
			t.Errorf("step %d: unchanged address logged %q", i, got[0].Message)
		case st.wantLog != "" && (len(got) != 1 || !strings.Contains(got[0].Message, st.wantLog) || got[0].Level != st.wantLevel):
			t.Errorf("step %d: logs %+v, want one %s line with %q", i, got, st.wantLevel, st.wantLog)
		}
		b, err := os.ReadFile(filepath.Join(dir, privateAddressFile))
		if err != nil || strings.TrimSpace(string(b)) != st.ip {
			t.Errorf("step %d: remembered %q, %v; want %s", i, b, err, st.ip)
		}
	}
	changed := logs.FilterMessageSnippet("changed").All()
	if len(changed) != 1 || changed[0].ContextMap()["previous_private_ip"] != "fdaa:0:1:a7b:1::2" {
		t.Errorf("the change line does not name the previous address: %+v", changed)
	}
	if err := notePrivateAddress(dir, "not-an-ip", logger); err == nil {
		t.Error("a FLY_PRIVATE_IP that is not an address was accepted")
	}
}

func TestHealthServer(t *testing.T) {
	notReady := errors.New("starting")
	h := newHealthServer("127.0.0.1:0", func() error { return notReady }, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := h.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer h.Shutdown(ctx)
	base := "http://" + h.Addr().String()

	get := func(method, path string) (int, string) {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, method, base+path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, strings.TrimSpace(string(b))
	}
	tests := []struct {
		name         string
		setup        func()
		method, path string
		wantCode     int
		wantBody     string
	}{
		{"starting", func() {}, "GET", HealthPath, 503, "starting"},
		{"store", func() { notReady = errors.New("disk_full: the node's disk is full") }, "GET", HealthPath, 503, "disk_full: the node's disk is full"},
		{"ready", func() { notReady = nil }, "GET", HealthPath, 200, "ok"},
		{"head", func() {}, "HEAD", HealthPath, 200, ""},
		{"other path", func() {}, "GET", "/api/pools", 404, ""},
		{"post", func() {}, "POST", HealthPath, 405, ""},
		{"draining", func() { notReady = errors.New("draining: this node is shutting down") }, "GET", HealthPath, 503, "draining: this node is shutting down"},
	}
	for _, tc := range tests {
		tc.setup()
		code, body := get(tc.method, tc.path)
		if code != tc.wantCode || (tc.wantBody != "" && body != tc.wantBody) {
			t.Errorf("%s: %d %q, want %d %q", tc.name, code, body, tc.wantCode, tc.wantBody)
		}
	}
}

// TestAgentOnFlyEnvironment starts a whole agent with a Fly-like environment
// (addresses moved to loopback) and checks what the platform relies on: the
// health listener answers once the agent is ready, the private address is
// remembered in the data directory, and the node is named after the Machine.
func TestAgentOnFlyEnvironment(t *testing.T) {
	env := flyEnv()
	env["FLY_PRIVATE_IP"] = "127.0.0.1"
	cfg := DefaultConfig()
	cfg.ApplyEnvironment(func(k string) string { return env[k] })
	cfg.DataDir = t.TempDir()
	cfg.HTTPAddr, cfg.HTTPSAddr = "127.0.0.1:0", "127.0.0.1:0"
	cfg.AdminAddr, cfg.HealthAddr = "127.0.0.1:0", "127.0.0.1:0"
	cfg.GossipAddr = "" // a cluster of one: this test is about the platform's checks

	core, logs := observer.New(zapcore.InfoLevel)
	a, err := New(cfg, zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := a.Start(ctx); err != nil {
		t.Fatal(errJoin(err, a.Shutdown(ctx)))
	}
	resp, err := http.Get(fmt.Sprintf("http://%s%s", a.healthAddr(), HealthPath))
	if err != nil {
		t.Fatal(errJoin(err, a.Shutdown(ctx)))
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("health after Start = %d, want 200", resp.StatusCode)
	}
	if err := a.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(cfg.DataDir, privateAddressFile)); err != nil || strings.TrimSpace(string(b)) != "127.0.0.1" {
		t.Errorf("private address not remembered: %q %v", b, err)
	}
	started := logs.FilterMessage("agent started").All()
	if len(started) != 1 || started[0].ContextMap()["node_name"] != "148e21ea7e3289" {
		t.Errorf("agent started line: %+v", started)
	}
	if logs.FilterMessage("running on Fly.io").Len() != 1 {
		t.Error("the Fly environment is not logged at start")
	}
}

func errJoin(a, b error) error {
	if b == nil {
		return a
	}
	return fmt.Errorf("%w (and shutdown: %v)", a, b)
}
