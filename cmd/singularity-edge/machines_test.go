package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
)

// machinesFixture is a GET /v1/apps/{app}/machines answer in the shape of
// Fly's Machines API: two Machines in ams (one stopped), one in iad.
const machinesFixture = `[
 {"id":"3d8d9e1bd40e89","name":"edge-ams-1","state":"started","region":"ams","instance_id":"01J0000000000000000000000A",
  "private_ip":"fdaa:2:5a5c:a7b:18c:4c0e:2d1f:2",
  "config":{"image":"registry.fly.io/edge-test:deployment-01","metadata":{"fly_process_group":"app"}},
  "image_ref":{"registry":"registry.fly.io","repository":"edge-test","tag":"deployment-01","digest":"sha256:abc"},
  "created_at":"2026-12-01T10:00:00Z","updated_at":"2026-12-06T09:00:00Z",
  "checks":[{"name":"ready","status":"passing","output":"ok"},{"name":"servicecheck-00-tcp-8080","status":"passing","output":""}]},
 {"id":"9185793eb11048","name":"edge-ams-2","state":"stopped","region":"ams","private_ip":"fdaa:2:5a5c:a7b:18d:1:2:2",
  "config":{"metadata":{"fly_process_group":"app"}},
  "image_ref":{"registry":"registry.fly.io","repository":"edge-test","tag":"deployment-01"},
  "created_at":"2026-12-01T10:00:00Z","updated_at":"2026-12-06T09:30:00Z",
  "checks":[{"name":"ready","status":"critical","output":"connection refused"}]},
 {"id":"148e21ea7e3289","name":"edge-iad-1","state":"started","region":"iad","private_ip":"fdaa:2:5a5c:a7b:aa:1:3:2",
  "image_ref":{"registry":"registry.fly.io","repository":"edge-test","tag":"deployment-01"},
  "created_at":"2026-12-01T10:00:00Z","updated_at":"2026-12-06T08:00:00Z","checks":[]}
]`

const flyToken = "fly-test-token-not-real"

type machinesAPI struct {
	*httptest.Server
	mu       sync.Mutex
	paths    []string
	authHdrs []string
}

func newMachinesAPI(t *testing.T, prefix string, status int, body string) *machinesAPI {
	t.Helper()
	m := &machinesAPI{}
	m.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		m.mu.Lock()
		m.paths = append(m.paths, r.Method+" "+r.URL.Path)
		m.authHdrs = append(m.authHdrs, r.Header.Get("Authorization"))
		m.mu.Unlock()
		if r.Method != http.MethodGet || r.URL.Path != prefix+"/v1/apps/edge-test/machines" {
			w.WriteHeader(http.StatusNotFound)
			_, _ = w.Write([]byte(`{"error":"app not found"}`))
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = w.Write([]byte(body))
	}))
	t.Cleanup(m.Close)
	return m
}

func TestClusterMachines(t *testing.T) {
	api := newMachinesAPI(t, "/flaps", http.StatusOK, machinesFixture)
	t.Setenv("FLY_API_TOKEN", flyToken)

	out, errOut, code := runCLI(t, "", "cluster", "machines", "--app", "edge-test", "--machines-api", api.URL+"/flaps")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{
		"edge-test", "ams 1/2", "iad 1/1",
		"3d8d9e1bd40e89", "edge-ams-1", "started", "2/2 passing",
		"9185793eb11048", "stopped", "0/1 passing (ready critical)",
		"fdaa:2:5a5c:a7b:aa:1:3:2", "registry.fly.io/edge-test:deployment-01@sha256:abc",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	// Sorted by region, then id: both ams Machines before iad.
	if strings.Index(out, "9185793eb11048") > strings.Index(out, "148e21ea7e3289") {
		t.Errorf("machines not grouped by region:\n%s", out)
	}
	api.mu.Lock()
	paths, auth := api.paths, api.authHdrs
	api.mu.Unlock()
	if len(paths) != 1 || paths[0] != "GET /flaps/v1/apps/edge-test/machines" {
		t.Errorf("requests %v", paths)
	}
	if len(auth) != 1 || auth[0] != "Bearer "+flyToken {
		t.Errorf("Authorization %q, want the token from FLY_API_TOKEN", auth)
	}
	if strings.Contains(out+errOut, flyToken) {
		t.Error("the token appears in the output")
	}

	// JSON for scripts, app and API from the environment.
	t.Setenv("FLY_APP_NAME", "edge-test")
	t.Setenv("FLY_FLAPS_BASE_URL", api.URL+"/flaps")
	out, errOut, code = runCLI(t, "", "cluster", "machines", "-o", "json")
	if code != 0 {
		t.Fatalf("json: exit %d: %s", code, errOut)
	}
	var got machinesJSON
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("json output: %v\n%s", err, out)
	}
	if got.App != "edge-test" || len(got.Machines) != 3 {
		t.Fatalf("json: %+v", got)
	}
	first := got.Machines[0]
	if first.ID != "3d8d9e1bd40e89" || first.Region != "ams" || first.ProcessGroup != "app" || len(first.Checks) != 2 {
		t.Errorf("first machine %+v", first)
	}
	if got.Machines[2].Checks == nil {
		t.Error("a Machine without checks has null checks, want []")
	}
}

func TestClusterMachinesErrors(t *testing.T) {
	unauthorized := newMachinesAPI(t, "", http.StatusUnauthorized, `{"error":"unauthorized"}`)
	ok := newMachinesAPI(t, "", http.StatusOK, machinesFixture)
	tests := []struct {
		name     string
		token    string
		args     []string
		wantCode int
		wantErr  string
	}{
		{"no token", "", []string{"--app", "edge-test", "--machines-api", ok.URL}, exitUsage, "FLY_API_TOKEN"},
		{"no app", flyToken, []string{"--machines-api", ok.URL}, exitUsage, "--app"},
		{"bad url", flyToken, []string{"--app", "edge-test", "--machines-api", "ftp://x"}, exitUsage, "--machines-api"},
		{"refused token", flyToken, []string{"--app", "edge-test", "--machines-api", unauthorized.URL}, exitAuth, "refused FLY_API_TOKEN"},
		{"unknown app", flyToken, []string{"--app", "nope", "--machines-api", ok.URL}, exitNotFound, `no app "nope"`},
		{"unreachable", flyToken, []string{"--app", "edge-test", "--machines-api", refusedURL(t)}, exitUnavailable, "cannot be reached"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("FLY_API_TOKEN", tc.token)
			t.Setenv("FLY_APP_NAME", "")
			t.Setenv("FLY_FLAPS_BASE_URL", "")
			out, errOut, code := runCLI(t, "", append([]string{"cluster", "machines"}, tc.args...)...)
			if code != tc.wantCode || !strings.Contains(errOut, tc.wantErr) {
				t.Errorf("exit %d, stderr %q; want %d and %q", code, errOut, tc.wantCode, tc.wantErr)
			}
			if tc.token != "" && strings.Contains(out+errOut, tc.token) {
				t.Error("the token appears in the output")
			}
		})
	}
}
