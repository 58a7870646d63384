package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
)

// call is a request the fake agent received.
type call struct {
	Method  string
	Path    string
	Query   string
	Auth    string
	IfMatch string
	CT      string
	Body    map[string]any
}

// reply is a canned answer.
type reply struct {
	status int
	body   string
	header map[string]string
}

// fakeAgent is an admin API with canned answers that records what the CLI
// sends. Routes are "METHOD /path" or "METHOD /path?query" (tried first).
type fakeAgent struct {
	t      *testing.T
	srv    *httptest.Server
	mu     sync.Mutex
	calls  []call
	routes map[string]reply
}

func newFakeAgent(t *testing.T, routes map[string]reply) *fakeAgent {
	t.Helper()
	f := &fakeAgent{t: t, routes: routes}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeAgent) serve(w http.ResponseWriter, r *http.Request) {
	raw, err := io.ReadAll(r.Body)
	if err != nil {
		f.t.Errorf("reading request body: %v", err)
	}
	c := call{Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery, Auth: r.Header.Get("Authorization"),
		IfMatch: r.Header.Get("If-Match"), CT: r.Header.Get("Content-Type")}
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &c.Body); err != nil {
			f.t.Errorf("%s %s: body is not a JSON object: %v", r.Method, r.URL.Path, err)
		}
	}
	f.mu.Lock()
	f.calls = append(f.calls, c)
	f.mu.Unlock()
	rep, ok := f.routes[r.Method+" "+r.URL.Path+"?"+r.URL.RawQuery]
	if !ok {
		rep, ok = f.routes[r.Method+" "+r.URL.Path]
	}
	if !ok {
		rep = reply{status: 404, body: `{"error":{"code":"not_found","message":"no route ` + r.Method + " " + r.URL.Path + `"}}`}
	}
	for k, v := range rep.header {
		w.Header().Set(k, v)
	}
	if rep.body != "" {
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
	}
	w.WriteHeader(rep.status)
	_, _ = io.WriteString(w, rep.body)
}

func (f *fakeAgent) recorded() []call {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]call(nil), f.calls...)
}

// runCLI runs the CLI in-process like main does and returns its output and
// exit code.
func runCLI(t *testing.T, stdin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	root := newRootCommand()
	var out, errb bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errb)
	root.SetIn(strings.NewReader(stdin))
	code = execute(root, args, &errb)
	return out.String(), errb.String(), code
}

const token = "s3cret-admin-token"

const poolWeb = `{"name":"web","algorithm":"least_connections","ssl_mode":"full_strict","ssl_domain":"www.example.com",
"ssl_cert_id":"","hosts":["example.com"],"validate_backend_cert":true,"health_check_interval":10000,
"health_check":{"type":"http","path":"/healthz","expected_status":200,"timeout":2000,"rise":2,"fall":3,"max_fails":5,"cooldown":30000},
"hash_on":"","sticky_cookie":"","prefer_region":false,"fail_open":false,"hold_new_backends":false,"default":true,
"metadata":{"team":"shop"},"inserted_at":"2026-01-02T03:04:05Z","updated_at":"2026-01-02T03:04:05Z",
"version":{"hlc":1234,"origin":"n1","seq":7},
"stats":{"total_backends":3,"healthy_backends":2,"unhealthy_backends":1,"current_connections":17,"total_requests":9000,"source":"live"}}`

const poolAPI = `{"name":"api","algorithm":"round_robin","ssl_mode":"off","ssl_domain":"","ssl_cert_id":"","hosts":[],
"validate_backend_cert":false,"health_check_interval":5000,"health_check":{},"default":false,
"inserted_at":"2026-01-02T03:04:05Z","updated_at":"2026-01-02T03:04:05Z","version":{"hlc":1,"origin":"n1","seq":1},
"stats":{"total_backends":0,"healthy_backends":0,"unhealthy_backends":0,"current_connections":0,"total_requests":0,"source":"stored"}}`

const backendB1 = `{"id":"b-1","pool_name":"web","url":"http://10.0.1.10:8080","host":"10.0.1.10","port":8080,"scheme":"http",
"weight":3,"ssl_verify":false,"region":"iad","draining":false,"metadata":{},"inserted_at":"2026-01-02T03:04:05Z",
"updated_at":"2026-01-02T03:04:05Z","version":{"hlc":5,"origin":"n1","seq":2},"healthy":true,"available":true,
"ejected":false,"current_connections":4,"total_requests":100,"total_failures":1,"last_check":"2026-01-02T03:05:00Z",
"local_source":"live","observations":[{"node_id":"n1","region":"iad","healthy":true,"current_connections":4,"total_requests":100,
"total_failures":1,"latency_avg_ms":1.5,"last_check":"2026-01-02T03:05:00Z","updated_at":"2026-01-02T03:05:01Z"},
{"node_id":"n2","region":"syd","healthy":false,"current_connections":0,"total_requests":7,"total_failures":7,"latency_avg_ms":0,
"last_check":"2026-01-02T03:05:02Z","last_error":"dial tcp 10.0.1.10:8080: connect: connection refused","updated_at":"2026-01-02T03:05:03Z"},
{"node_id":"n3","region":"ams","healthy":true,"current_connections":0,"total_requests":0,"total_failures":0,"latency_avg_ms":0,
"last_check":null,"updated_at":"2026-01-02T03:05:03Z"},
{"node_id":"n4","region":"ams","healthy":false,"current_connections":0,"total_requests":0,"total_failures":0,"latency_avg_ms":0,
"last_check":null,"updated_at":"2026-01-02T03:05:03Z"}],
"regions":[{"region":"ams","state":"mixed","nodes":2,"healthy":1},{"region":"iad","state":"healthy","nodes":1,"healthy":1},
{"region":"syd","state":"unhealthy","nodes":1,"healthy":0}]}`

const backendB2 = `{"id":"b-2","pool_name":"web","url":"https://app.internal:443","host":"app.internal","port":443,"scheme":"https",
"weight":1,"ssl_verify":true,"region":"syd","draining":true,"metadata":{},"healthy":null,"ejected":false,
"current_connections":0,"total_requests":0,"last_check":null,"local_source":"none","observations":[]}`

const certC1 = `{"id":"0123456789abcdef","domain":"www.example.com","names":["www.example.com","example.com"],
"issuer":"Test CA","not_before":"2026-01-01T00:00:00Z","expires_at":"2099-04-01T00:00:00Z","days_left":900,"expired":false,
"fingerprint":"0123456789abcdef00","provider":"upload","auto_renew":false,
"certificate":"-----BEGIN CERTIFICATE-----\nTEVBRg==\n-----END CERTIFICATE-----\n",
"chain":"-----BEGIN CERTIFICATE-----\nQ0hBSU4=\n-----END CERTIFICATE-----\n","metadata":{},
"inserted_at":"2026-01-02T03:04:05Z","updated_at":"2026-01-02T03:04:05Z","version":{"hlc":9,"origin":"n1","seq":3}}`

func page(next string, items ...string) string {
	return `{"items":[` + strings.Join(items, ",") + `],"next":"` + next + `"}`
}

func apiErr(code, message string, fields ...[2]string) string {
	var fs []string
	for _, f := range fields {
		fs = append(fs, fmt.Sprintf(`{"field":%q,"message":%q}`, f[0], f[1]))
	}
	body := fmt.Sprintf(`{"error":{"code":%q,"message":%q`, code, message)
	if len(fs) > 0 {
		body += `,"fields":[` + strings.Join(fs, ",") + `]`
	}
	return body + "}}"
}

// refusedURL returns the URL of a local port nothing listens on.
func refusedURL(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return "http://" + addr
}

func TestCLI(t *testing.T) {
	dir := t.TempDir()
	certFile := filepath.Join(dir, "cert.pem")
	keyFile := filepath.Join(dir, "key.pem")
	chainFile := filepath.Join(dir, "chain.pem")
	const certPEM = "-----BEGIN CERTIFICATE-----\nTEVBRg==\n-----END CERTIFICATE-----\n"
	const keyPEM = "-----BEGIN PRIVATE KEY-----\nU0VDUkVUS0VZTUFURVJJQUw=\n-----END PRIVATE KEY-----\n"
	const chainPEM = "-----BEGIN CERTIFICATE-----\nQ0hBSU4=\n-----END CERTIFICATE-----\n"
	for name, content := range map[string]string{certFile: certPEM, keyFile: keyPEM, chainFile: chainPEM} {
		if err := os.WriteFile(name, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte("from-file-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		name   string
		args   []string
		stdin  string
		routes map[string]reply
		env    map[string]string
		// want
		code      int
		calls     []call // Method, Path, Query, Body, IfMatch compared; Auth checked separately
		auth      string // expected Authorization ("" = Bearer token)
		stdout    []string
		notStdout []string
		stderr    []string
	}{
		{
			name:   "pools list",
			args:   []string{"pools", "list"},
			routes: map[string]reply{"GET /api/pools": {status: 200, body: page("", poolWeb, poolAPI)}},
			calls:  []call{{Method: "GET", Path: "/api/pools", Query: "limit=1000"}},
			stdout: []string{"NAME", "ALGORITHM", "web", "least_connections", "full_strict", "www.example.com", "example.com", "api", "round_robin"},
		},
		{
			name: "pools list follows pages",
			args: []string{"pools", "list", "-o", "json"},
			routes: map[string]reply{
				"GET /api/pools?limit=1000":           {status: 200, body: page("api", poolAPI)},
				"GET /api/pools?after=api&limit=1000": {status: 200, body: page("", poolWeb)},
			},
			calls:  []call{{Method: "GET", Path: "/api/pools", Query: "limit=1000"}, {Method: "GET", Path: "/api/pools", Query: "after=api&limit=1000"}},
			stdout: []string{`"items": [`, `"name": "api"`, `"name": "web"`, `"next": ""`},
		},
		{
			name:   "pools list one page",
			args:   []string{"pools", "list", "--limit", "1", "--after", "a"},
			routes: map[string]reply{"GET /api/pools": {status: 200, body: page("api", poolAPI)}},
			calls:  []call{{Method: "GET", Path: "/api/pools", Query: "after=a&limit=1"}},
			stdout: []string{"api", "More results: repeat with --after api"},
		},
		{
			name:   "pools get",
			args:   []string{"pools", "get", "web"},
			routes: map[string]reply{"GET /api/pools/web": {status: 200, body: poolWeb, header: map[string]string{"ETag": `"1234-n1"`}}},
			calls:  []call{{Method: "GET", Path: "/api/pools/web"}},
			stdout: []string{"Algorithm:", "least_connections", "Health check interval: 10s", "type=http path=/healthz expected_status=200 timeout=2s rise=2 fall=3",
				"max_fails=5 cooldown=30s", "3 total, 2 healthy, 1 unhealthy, 0 draining (live)", "team=shop", `"1234-n1"`, "Default pool:", "yes"},
		},
		{
			name:   "pools get json is the API's JSON",
			args:   []string{"pools", "get", "web", "--output", "json"},
			routes: map[string]reply{"GET /api/pools/web": {status: 200, body: poolWeb}},
			calls:  []call{{Method: "GET", Path: "/api/pools/web"}},
			stdout: []string{`"health_check_interval": 10000`, `"stats": {`},
		},
		{
			name:   "pools get escapes the name",
			args:   []string{"pools", "get", "a b"},
			routes: map[string]reply{"GET /api/pools/a b": {status: 200, body: poolAPI}},
			calls:  []call{{Method: "GET", Path: "/api/pools/a b"}},
			stdout: []string{"round_robin"},
		},
		{
			name: "pools create sends only the flags given",
			args: []string{"pools", "create", "web", "--algorithm", "least_connections", "--ssl-mode", "full_strict",
				"--ssl-domain", "www.example.com", "--host", "example.com", "--host", "shop.example.com",
				"--health-check-interval", "10s", "--health-check-path", "/healthz", "--default", "--metadata", "team=shop"},
			routes: map[string]reply{"POST /api/pools": {status: 201, body: poolWeb}},
			calls: []call{{Method: "POST", Path: "/api/pools", Body: map[string]any{
				"name": "web", "algorithm": "least_connections", "ssl_mode": "full_strict", "ssl_domain": "www.example.com",
				"hosts": []any{"example.com", "shop.example.com"}, "health_check_interval": float64(10000),
				"health_check": map[string]any{"path": "/healthz"}, "default": true, "metadata": map[string]any{"team": "shop"},
			}}},
			stdout: []string{"Pool web created (algorithm least_connections, ssl mode full_strict)."},
		},
		{
			// The agent stores a value as sent or refuses it, naming the
			// spelling to send: the CLI sends what was typed.
			name: "pools create sends values as typed",
			args: []string{"pools", "create", "web", "--algorithm", "Random", "--ssl-mode", "terminate", "--host", " Example.com", "--host", "shop.example.com."},
			routes: map[string]reply{"POST /api/pools": {status: 422, body: apiErr("invalid", "invalid input",
				[2]string{"algorithm", `send "random" (values are lower case)`},
				[2]string{"ssl_mode", `"terminate" is called "flexible"; send "flexible"`})}},
			calls: []call{{Method: "POST", Path: "/api/pools", Body: map[string]any{
				"name": "web", "algorithm": "Random", "ssl_mode": "terminate", "hosts": []any{" Example.com", "shop.example.com."},
			}}},
			code:   exitInvalid,
			stderr: []string{`algorithm: send "random" (values are lower case).`, `ssl_mode: "terminate" is called "flexible"; send "flexible".`},
		},
		{
			name: "pools create rejected with field errors",
			args: []string{"pools", "create", "web", "--algorithm", "fastest", "--health-check-interval", "1s"},
			routes: map[string]reply{"POST /api/pools": {status: 422, body: apiErr("invalid", "invalid input",
				[2]string{"algorithm", `unknown algorithm "fastest"; use one of round_robin, random`},
				[2]string{"ssl_domain", "is required when ssl_mode is full_strict"})}},
			calls: []call{{Method: "POST", Path: "/api/pools", Body: map[string]any{"name": "web", "algorithm": "fastest", "health_check_interval": float64(1000)}}},
			code:  exitInvalid,
			stderr: []string{"error: invalid input.", `algorithm: unknown algorithm "fastest"; use one of round_robin, random.`,
				"ssl_domain: is required when ssl_mode is full_strict."},
		},
		{
			name:   "pools create bad request (malformed)",
			args:   []string{"pools", "create", "web"},
			routes: map[string]reply{"POST /api/pools": {status: 400, body: apiErr("invalid", "unknown field \"x\"", [2]string{"x", "unknown field"})}},
			calls:  []call{{Method: "POST", Path: "/api/pools", Body: map[string]any{"name": "web"}}},
			code:   exitInvalid,
			stderr: []string{`unknown field "x".`},
		},
		{
			name:   "pools create duplicate",
			args:   []string{"pools", "create", "web"},
			routes: map[string]reply{"POST /api/pools": {status: 409, body: apiErr("conflict", `a pool named "web" already exists`, [2]string{"name", `a pool named "web" already exists`})}},
			calls:  []call{{Method: "POST", Path: "/api/pools", Body: map[string]any{"name": "web"}}},
			code:   exitConflict,
			stderr: []string{`error: a pool named "web" already exists.`},
		},
		{
			name:   "pools create sub-millisecond interval",
			args:   []string{"pools", "create", "web", "--health-check-interval", "1500us"},
			code:   exitUsage,
			stderr: []string{"--health-check-interval must be a positive whole number of milliseconds"},
		},
		{
			name:   "pools update sends a patch with If-Match",
			args:   []string{"pools", "update", "web", "--algorithm", "random", "--default=false", "--host", "", "--if-match", "1234-n1"},
			routes: map[string]reply{"PATCH /api/pools/web": {status: 200, body: poolWeb}},
			calls:  []call{{Method: "PATCH", Path: "/api/pools/web", IfMatch: `"1234-n1"`, Body: map[string]any{"algorithm": "random", "default": false, "hosts": []any{}}}},
			stdout: []string{"Pool web updated"},
		},
		{
			name:   "pools update stale If-Match",
			args:   []string{"pools", "update", "web", "--fail-open", "--if-match", `"1-n1"`},
			routes: map[string]reply{"PATCH /api/pools/web": {status: 412, body: apiErr("precondition_failed", `If-Match does not name the current version "1234-n1"; read the object again and retry`)}},
			calls:  []call{{Method: "PATCH", Path: "/api/pools/web", IfMatch: `"1-n1"`, Body: map[string]any{"fail_open": true}}},
			code:   exitConflict,
			stderr: []string{"If-Match does not name the current version"},
		},
		{
			// An empty --if-match (an unset variable in a script) is
			// refused, not sent as no precondition at all.
			name:   "pools update empty If-Match",
			args:   []string{"pools", "update", "web", "--fail-open", "--if-match", ""},
			code:   exitUsage,
			stderr: []string{"--if-match is empty"},
		},
		{
			name:   "pools update blank If-Match",
			args:   []string{"pools", "update", "web", "--fail-open", "--if-match", "  "},
			code:   exitUsage,
			stderr: []string{"--if-match is empty"},
		},
		{
			name:   "backends update empty If-Match",
			args:   []string{"backends", "update", "web", "b1", "--weight", "2", "--if-match", ""},
			code:   exitUsage,
			stderr: []string{"--if-match is empty"},
		},
		{
			name:   "pools update malformed If-Match",
			args:   []string{"pools", "update", "web", "--fail-open", "--if-match", "W/garbage"},
			routes: map[string]reply{"PATCH /api/pools/web": {status: 400, body: apiErr("invalid", `If-Match must be "*" or a comma-separated list of quoted entity tags such as "1732623000000-node1"`, [2]string{"If-Match", `must be "*" or a comma-separated list of quoted entity tags such as "1732623000000-node1"`})}},
			calls:  []call{{Method: "PATCH", Path: "/api/pools/web", IfMatch: "W/garbage", Body: map[string]any{"fail_open": true}}},
			code:   exitInvalid,
			stderr: []string{"If-Match must be"},
		},
		{
			name:   "pools update without flags",
			args:   []string{"pools", "update", "web"},
			code:   exitUsage,
			stderr: []string{"nothing to change"},
		},
		{
			name:   "pools get missing",
			args:   []string{"pools", "get", "nope"},
			routes: map[string]reply{"GET /api/pools/nope": {status: 404, body: apiErr("not_found", `no pool named "nope"`, [2]string{"name", `no pool named "nope"`})}},
			calls:  []call{{Method: "GET", Path: "/api/pools/nope"}},
			code:   exitNotFound,
			stderr: []string{`error: no pool named "nope".`},
		},
		{
			name:   "pools delete cascade",
			args:   []string{"pools", "delete", "web", "--cascade"},
			routes: map[string]reply{"DELETE /api/pools/web": {status: 204}},
			calls:  []call{{Method: "DELETE", Path: "/api/pools/web", Query: "cascade=true"}},
			stdout: []string{"Deleted pool web."},
		},
		{
			name:   "pools delete with backends",
			args:   []string{"pools", "delete", "web"},
			routes: map[string]reply{"DELETE /api/pools/web": {status: 409, body: apiErr("conflict", `pool "web" still has 2 backend(s); delete them first or pass ?cascade=true`, [2]string{"name", `pool "web" still has 2 backend(s); delete them first or pass ?cascade=true`})}},
			calls:  []call{{Method: "DELETE", Path: "/api/pools/web"}},
			code:   exitConflict,
			stderr: []string{`pool "web" still has 2 backend(s)`, "add --cascade."},
		},
		{
			name:   "pools delete json",
			args:   []string{"pools", "delete", "web", "-o", "json"},
			routes: map[string]reply{"DELETE /api/pools/web": {status: 204}},
			calls:  []call{{Method: "DELETE", Path: "/api/pools/web"}},
			stdout: []string{`"deleted": true`, `"key": "web"`},
		},
		{
			name:   "wrong token",
			args:   []string{"pools", "list"},
			routes: map[string]reply{"GET /api/pools": {status: 401, body: apiErr("unauthorized", "missing or invalid bearer token")}},
			calls:  []call{{Method: "GET", Path: "/api/pools", Query: "limit=1000"}},
			code:   exitAuth,
			stderr: []string{"missing or invalid bearer token.", "Set EDGE_ADMIN_TOKEN (or --token-file)"},
		},
		{
			name:   "token file",
			args:   []string{"pools", "list", "--token-file", tokenFile},
			routes: map[string]reply{"GET /api/pools": {status: 200, body: page("")}},
			calls:  []call{{Method: "GET", Path: "/api/pools", Query: "limit=1000"}},
			auth:   "Bearer from-file-token",
			stdout: []string{"NAME"},
		},
		{
			name:   "no token",
			args:   []string{"pools", "list"},
			env:    map[string]string{"EDGE_ADMIN_TOKEN": ""},
			routes: map[string]reply{"GET /api/pools": {status: 401, body: apiErr("unauthorized", "missing bearer token")}},
			calls:  []call{{Method: "GET", Path: "/api/pools", Query: "limit=1000"}},
			auth:   "-",
			code:   exitAuth,
		},
		{
			name:   "proxy error page",
			args:   []string{"cluster", "status"},
			routes: map[string]reply{"GET /api/cluster": {status: 502, body: "<html>bad gateway</html>"}},
			calls:  []call{{Method: "GET", Path: "/api/cluster"}},
			code:   exitUnavailable,
			stderr: []string{"Bad Gateway: <html>bad gateway</html>"},
		},
		{
			name:   "bad output format",
			args:   []string{"pools", "list", "-o", "yaml"},
			code:   exitUsage,
			stderr: []string{`--output must be "table" or "json"`},
		},
		{
			name:   "unknown flag",
			args:   []string{"pools", "list", "--nope"},
			code:   exitUsage,
			stderr: []string{"unknown flag: --nope"},
		},
		{
			name:   "missing argument",
			args:   []string{"pools", "get"},
			code:   exitUsage,
			stderr: []string{"expects 1 argument(s) (NAME), got 0"},
		},
		{
			name:   "unknown subcommand",
			args:   []string{"pools", "frobnicate"},
			code:   exitUsage,
			stderr: []string{`unknown command "frobnicate"`},
		},

		{
			name:   "backends list",
			args:   []string{"backends", "list", "web"},
			routes: map[string]reply{"GET /api/pools/web/backends": {status: 200, body: page("", backendB1, backendB2)}},
			calls:  []call{{Method: "GET", Path: "/api/pools/web/backends", Query: "limit=1000"}},
			stdout: []string{"ID", "ADDRESS", "BY REGION", "b-1", "http://10.0.1.10:8080", "iad", "healthy", "ams 1/2 up, iad up, syd down",
				"b-2", "https://app.internal:443", "unchecked,draining", "2026-01-02 03:05:00Z"},
		},
		{
			name:   "backends show",
			args:   []string{"backends", "show", "web", "b-1"},
			routes: map[string]reply{"GET /api/pools/web/backends/b-1": {status: 200, body: backendB1, header: map[string]string{"ETag": `"77-n1"`}}},
			calls:  []call{{Method: "GET", Path: "/api/pools/web/backends/b-1"}},
			stdout: []string{"State here:", "healthy (live)", "By region:", "ams 1/2 up, iad up, syd down", `ETag:`, `"77-n1"`,
				"REGION", "NODE", "HEALTH", "syd", "n2", "down", "connection refused", "2026-01-02 03:05:03Z"},
		},
		{
			name:      "backends show of a backend without reports",
			args:      []string{"backends", "show", "web", "b-2"},
			routes:    map[string]reply{"GET /api/pools/web/backends/b-2": {status: 200, body: backendB2}},
			calls:     []call{{Method: "GET", Path: "/api/pools/web/backends/b-2"}},
			stdout:    []string{"By region:", "no node has reported yet"},
			notStdout: []string{"NODE"},
		},
		{
			name:   "backends list of a missing pool",
			args:   []string{"backends", "list", "nope"},
			routes: map[string]reply{"GET /api/pools/nope/backends": {status: 404, body: apiErr("not_found", `no pool named "nope"`)}},
			calls:  []call{{Method: "GET", Path: "/api/pools/nope/backends", Query: "limit=1000"}},
			code:   exitNotFound,
		},
		{
			name:   "backends add by URL",
			args:   []string{"backends", "add", "web", "http://10.0.1.10:8080", "--weight", "3", "--region", "iad"},
			routes: map[string]reply{"POST /api/pools/web/backends": {status: 201, body: backendB1}},
			calls:  []call{{Method: "POST", Path: "/api/pools/web/backends", Body: map[string]any{"url": "http://10.0.1.10:8080", "weight": float64(3), "region": "iad"}}},
			stdout: []string{"Backend b-1 (http://10.0.1.10:8080, weight 3) added to pool web."},
		},
		{
			name:   "backends add by host",
			args:   []string{"backends", "add", "web", "--host", "app.internal", "--port", "443", "--scheme", "https", "--ssl-verify", "--id", "b-2"},
			routes: map[string]reply{"POST /api/pools/web/backends": {status: 201, body: backendB2}},
			calls: []call{{Method: "POST", Path: "/api/pools/web/backends", Body: map[string]any{
				"host": "app.internal", "port": float64(443), "scheme": "https", "ssl_verify": true, "id": "b-2"}}},
			stdout: []string{"Backend b-2 (https://app.internal:443, weight 1) added to pool web."},
		},
		{
			name:   "backends add with URL and host",
			args:   []string{"backends", "add", "web", "http://x:1", "--host", "y"},
			code:   exitUsage,
			stderr: []string{"either a URL or --host/--port/--scheme, not both"},
		},
		{
			name:   "backends add without address",
			args:   []string{"backends", "add", "web", "--weight", "2"},
			code:   exitUsage,
			stderr: []string{"give the backend as a URL"},
		},
		{
			name:   "backends add invalid port",
			args:   []string{"backends", "add", "web", "http://10.0.1.10:99999"},
			routes: map[string]reply{"POST /api/pools/web/backends": {status: 422, body: apiErr("invalid", "url: port 99999 is out of range 1-65535", [2]string{"url", "port 99999 is out of range 1-65535"})}},
			calls:  []call{{Method: "POST", Path: "/api/pools/web/backends", Body: map[string]any{"url": "http://10.0.1.10:99999"}}},
			code:   exitInvalid,
			stderr: []string{"error: url: port 99999 is out of range 1-65535."},
		},
		{
			name:   "backends remove",
			args:   []string{"backends", "remove", "web", "b-1"},
			routes: map[string]reply{"DELETE /api/pools/web/backends/b-1": {status: 204}},
			calls:  []call{{Method: "DELETE", Path: "/api/pools/web/backends/b-1"}},
			stdout: []string{"Deleted backend b-1."},
		},
		{
			name:   "backends drain",
			args:   []string{"backends", "drain", "web", "b-1"},
			routes: map[string]reply{"PATCH /api/pools/web/backends/b-1": {status: 200, body: backendB1}},
			calls:  []call{{Method: "PATCH", Path: "/api/pools/web/backends/b-1", Body: map[string]any{"draining": true}}},
			stdout: []string{"Backend b-1 of pool web is draining"},
		},
		{
			name:   "backends undrain",
			args:   []string{"backends", "undrain", "web", "b-1"},
			routes: map[string]reply{"PATCH /api/pools/web/backends/b-1": {status: 200, body: backendB1}},
			calls:  []call{{Method: "PATCH", Path: "/api/pools/web/backends/b-1", Body: map[string]any{"draining": false}}},
			stdout: []string{"Backend b-1 of pool web is back in rotation."},
		},
		{
			name:   "backends drain missing",
			args:   []string{"backends", "drain", "web", "b-9"},
			routes: map[string]reply{"PATCH /api/pools/web/backends/b-9": {status: 404, body: apiErr("not_found", `pool "web" has no backend "b-9"`)}},
			calls:  []call{{Method: "PATCH", Path: "/api/pools/web/backends/b-9", Body: map[string]any{"draining": true}}},
			code:   exitNotFound,
			stderr: []string{`pool "web" has no backend "b-9".`},
		},

		{
			name:      "certs list",
			args:      []string{"certs", "list"},
			routes:    map[string]reply{"GET /api/certificates": {status: 200, body: page("", certC1)}},
			calls:     []call{{Method: "GET", Path: "/api/certificates", Query: "limit=1000"}},
			stdout:    []string{"ID", "EXPIRES", "0123456789abcdef", "www.example.com,example.com", "upload", "Test CA", "2099-04-01 (in "},
			notStdout: []string{"BEGIN CERTIFICATE"},
		},
		{
			name:      "certs get",
			args:      []string{"certs", "get", "0123456789abcdef"},
			routes:    map[string]reply{"GET /api/certificates/0123456789abcdef": {status: 200, body: certC1}},
			calls:     []call{{Method: "GET", Path: "/api/certificates/0123456789abcdef"}},
			stdout:    []string{"Fingerprint:", "0123456789abcdef00", "Chain:", "1 certificate(s)"},
			notStdout: []string{"BEGIN"},
		},
		{
			name:   "certs get pem",
			args:   []string{"certs", "get", "0123456789abcdef", "--pem"},
			routes: map[string]reply{"GET /api/certificates/0123456789abcdef": {status: 200, body: certC1}},
			calls:  []call{{Method: "GET", Path: "/api/certificates/0123456789abcdef"}},
			stdout: []string{certPEM + chainPEM},
		},
		{
			name: "certs get json never prints a key",
			args: []string{"certs", "get", "x", "-o", "json"},
			routes: map[string]reply{"GET /api/certificates/x": {status: 200,
				body: `{"id":"x","private_key":"-----BEGIN PRIVATE KEY-----\nU0VDUkVUS0VZTUFURVJJQUw=\n-----END PRIVATE KEY-----\n"}`}},
			calls:     []call{{Method: "GET", Path: "/api/certificates/x"}},
			stdout:    []string{`"id": "x"`},
			notStdout: []string{"private_key", "U0VDUkVU"},
		},
		{
			name:   "certs issue",
			args:   []string{"certs", "issue", "www.example.com", "example.com", "--wait", "20s"},
			routes: map[string]reply{"POST /api/certificates": {status: 201, body: certC1}},
			calls: []call{{Method: "POST", Path: "/api/certificates", Query: "wait=20s",
				Body: map[string]any{"domains": []any{"www.example.com", "example.com"}}}},
			stdout: []string{"Certificate 0123456789abcdef for www.example.com,example.com issued (expires 2099-04-01"},
		},
		{
			name: "certs issue still running",
			args: []string{"certs", "issue", "slow.example.com", "--wait", "0s"},
			routes: map[string]reply{"POST /api/certificates": {status: 202,
				body: `{"id":"acme-1","names":["slow.example.com"],"status":"pending","message":"still running"}`}},
			calls:  []call{{Method: "POST", Path: "/api/certificates", Query: "wait=0s", Body: map[string]any{"domains": []any{"slow.example.com"}}}},
			stdout: []string{"still running after 0s", "certs show acme-1"},
		},
		{
			name: "certs issue held back",
			args: []string{"certs", "issue", "x.example.com"},
			routes: map[string]reply{"POST /api/certificates": {status: 429,
				body: apiErr("held_back", "held back: duplicate_certs for acme-1: 4 in the last 168h0m0s (limit 4); next attempt possible at 2099-01-01T00:00:00Z")}},
			calls:  []call{{Method: "POST", Path: "/api/certificates", Query: "wait=45s", Body: map[string]any{"domains": []any{"x.example.com"}}}},
			code:   exitHeldBack,
			stderr: []string{"duplicate_certs", "2099-01-01T00:00:00Z"},
		},
		{
			name:   "pools create --wait asks for every alive member",
			args:   []string{"pools", "create", "api", "--wait", "10s"},
			routes: map[string]reply{"POST /api/pools": {status: 201, body: poolAPI}},
			calls:  []call{{Method: "POST", Path: "/api/pools", Query: "wait_all=10s", Body: map[string]any{"name": "api"}}},
			stdout: []string{"Pool api created"},
		},
		{
			name:   "pools update --wait",
			args:   []string{"pools", "update", "api", "--algorithm", "random", "--wait", "1.5s"},
			routes: map[string]reply{"PATCH /api/pools/api": {status: 200, body: poolAPI}},
			calls:  []call{{Method: "PATCH", Path: "/api/pools/api", Query: "wait_all=1.5s", Body: map[string]any{"algorithm": "random"}}},
			stdout: []string{"Pool api updated"},
		},
		{
			name:   "pools delete --cascade --wait",
			args:   []string{"pools", "delete", "web", "--cascade", "--wait", "5s"},
			routes: map[string]reply{"DELETE /api/pools/web": {status: 204}},
			calls:  []call{{Method: "DELETE", Path: "/api/pools/web", Query: "cascade=true&wait_all=5s"}},
			stdout: []string{"Deleted pool web."},
		},
		{
			name:   "backends add, update, drain and remove --wait",
			args:   []string{"backends", "drain", "web", "b-1", "--wait", "3s"},
			routes: map[string]reply{"PATCH /api/pools/web/backends/b-1": {status: 200, body: backendB1}},
			calls:  []call{{Method: "PATCH", Path: "/api/pools/web/backends/b-1", Query: "wait_all=3s", Body: map[string]any{"draining": true}}},
		},
		{
			name:   "backends add --wait",
			args:   []string{"backends", "add", "web", "http://10.0.1.10:8080", "--wait", "3s"},
			routes: map[string]reply{"POST /api/pools/web/backends": {status: 201, body: backendB1}},
			calls:  []call{{Method: "POST", Path: "/api/pools/web/backends", Query: "wait_all=3s", Body: map[string]any{"url": "http://10.0.1.10:8080"}}},
		},
		{
			name:   "backends remove --wait",
			args:   []string{"backends", "remove", "web", "b-1", "--wait", "3s"},
			routes: map[string]reply{"DELETE /api/pools/web/backends/b-1": {status: 204}},
			calls:  []call{{Method: "DELETE", Path: "/api/pools/web/backends/b-1", Query: "wait_all=3s"}},
		},
		{
			name:   "certs delete --force --wait",
			args:   []string{"certs", "delete", "0123456789abcdef", "--force", "--wait", "2s"},
			routes: map[string]reply{"DELETE /api/certificates/0123456789abcdef": {status: 204}},
			calls:  []call{{Method: "DELETE", Path: "/api/certificates/0123456789abcdef", Query: "force=true&wait_all=2s"}},
		},
		{
			name: "a change not applied by every alive member exits 9 naming them",
			args: []string{"pools", "create", "api", "--wait", "10s"},
			routes: map[string]reply{"POST /api/pools": {status: 504,
				body: `{"error":{"code":"not_applied","message":"pool \"api\" is stored on this node (commit 4), but not every alive member applied it within 10s: m2 (pending); replication goes on and brings it to them once they are connected, so do not repeat the write","missing":[{"name":"m2","node_id":"n2","state":"alive","reason":"pending"},{"name":"m3","node_id":"n3","state":"suspect","reason":"suspect"}]}}`}},
			calls:  []call{{Method: "POST", Path: "/api/pools", Query: "wait_all=10s", Body: map[string]any{"name": "api"}}},
			code:   exitNotApplied,
			stderr: []string{"is stored on this node", "m2 (alive): pending", "m3 (suspect): suspect"},
		},
		{
			name: "not_applied as JSON keeps error.missing for scripts",
			args: []string{"pools", "delete", "api", "--wait", "10s", "-o", "json"},
			routes: map[string]reply{"DELETE /api/pools/api": {status: 504,
				body: `{"error":{"code":"not_applied","message":"the deletion of pool \"api\" is stored on this node","missing":[{"name":"m2","node_id":"n2","state":"alive","reason":"not connected"}]}}`}},
			calls:  []call{{Method: "DELETE", Path: "/api/pools/api", Query: "wait_all=10s"}},
			code:   exitNotApplied,
			stderr: []string{`"code": "not_applied"`, `"missing": [`, `"node_id": "n2"`, `"reason": "not connected"`, `"exit_code": 9`},
		},
		{
			name: "held_back as JSON keeps error.held_back for scripts",
			args: []string{"certs", "issue", "x.example.com", "-o", "json"},
			routes: map[string]reply{"POST /api/certificates": {status: 429,
				body: `{"error":{"code":"held_back","message":"held back","held_back":{"limit":"duplicate_certs","scope":"acme-1","count":4,"max":4,"window_seconds":604800,"until":"2099-01-01T00:00:00Z"}}}`}},
			calls:  []call{{Method: "POST", Path: "/api/certificates", Query: "wait=45s", Body: map[string]any{"domains": []any{"x.example.com"}}}},
			code:   exitHeldBack,
			stderr: []string{`"held_back": {`, `"limit": "duplicate_certs"`, `"until": "2099-01-01T00:00:00Z"`},
		},
		{
			name: "--wait 0 is refused before any request",
			args: []string{"pools", "delete", "web", "--wait", "0s"},
			code: exitUsage, stderr: []string{"--wait must be at least 1ms"},
		},
		{
			name: "certs renew refused by the CA",
			args: []string{"certs", "renew", "acme-1"},
			routes: map[string]reply{"POST /api/certificates/acme-1/renew": {status: 502,
				body: apiErr("acme_failed", "ACME order failed: urn:ietf:params:acme:error:rejectedIdentifier")}},
			calls:  []call{{Method: "POST", Path: "/api/certificates/acme-1/renew"}},
			code:   exitFailure,
			stderr: []string{"rejectedIdentifier"},
		},
		{
			name: "certs show renewal state",
			args: []string{"certs", "show", "acme-1"},
			routes: map[string]reply{"GET /api/certificates/acme-1": {status: 200, body: strings.Replace(certC1, `"provider":"upload"`,
				`"provider":"acme","renewal":{"phase":"retrying","renew_at":"2099-01-01T00:00:00Z","renew_reason":"lifetime",
"last_attempt":"2026-01-02T00:00:00Z","last_error":"connection refused","failures":2,"owner":"edge-a",
"lease":{"holder":"edge-a","epoch":3,"expires":"2026-01-02T00:30:00Z","held":false}}`, 1)}},
			calls:  []call{{Method: "GET", Path: "/api/certificates/acme-1"}},
			stdout: []string{"Renewal:", "retrying", "Last error:", "connection refused", "Failures:", "2", "Owner:", "edge-a", "Lease:", "epoch 3, expired"},
		},
		{
			name:      "certs upload",
			args:      []string{"certs", "upload", "--cert", certFile, "--key", keyFile, "--chain", chainFile},
			routes:    map[string]reply{"POST /api/certificates/upload": {status: 201, body: certC1}},
			calls:     []call{{Method: "POST", Path: "/api/certificates/upload", Body: map[string]any{"certificate": certPEM, "private_key": keyPEM, "chain": chainPEM}}},
			stdout:    []string{"Certificate 0123456789abcdef uploaded for www.example.com,example.com (expires 2099-04-01"},
			notStdout: []string{"U0VDUkVU"},
		},
		{
			name:   "certs upload key from stdin",
			args:   []string{"certs", "upload", "--cert", certFile, "--key", "-"},
			stdin:  keyPEM,
			routes: map[string]reply{"POST /api/certificates/upload": {status: 201, body: certC1}},
			calls:  []call{{Method: "POST", Path: "/api/certificates/upload", Body: map[string]any{"certificate": certPEM, "private_key": keyPEM, "chain": ""}}},
			stdout: []string{"uploaded"},
		},
		{
			name: "certs upload rejected",
			args: []string{"certs", "upload", "--cert", certFile, "--key", keyFile},
			routes: map[string]reply{"POST /api/certificates/upload": {status: 422, body: apiErr("invalid", "invalid input",
				[2]string{"private_key", "does not match the certificate's public key"}, [2]string{"certificate", "expired at 2020-01-01T00:00:00Z"})}},
			calls:     []call{{Method: "POST", Path: "/api/certificates/upload", Body: map[string]any{"certificate": certPEM, "private_key": keyPEM, "chain": ""}}},
			code:      exitInvalid,
			stderr:    []string{"private_key: does not match the certificate's public key.", "certificate: expired at 2020-01-01T00:00:00Z."},
			notStdout: []string{"U0VDUkVU"},
		},
		{
			name:   "certs upload duplicate",
			args:   []string{"certs", "upload", "--cert", certFile, "--key", keyFile},
			routes: map[string]reply{"POST /api/certificates/upload": {status: 409, body: apiErr("conflict", `this certificate is already stored with id "0123456789abcdef" (domain www.example.com)`)}},
			calls:  []call{{Method: "POST", Path: "/api/certificates/upload", Body: map[string]any{"certificate": certPEM, "private_key": keyPEM, "chain": ""}}},
			code:   exitConflict,
			stderr: []string{"already stored"},
		},
		{
			name:   "certs upload without key",
			args:   []string{"certs", "upload", "--cert", certFile},
			code:   exitUsage,
			stderr: []string{"--cert and --key are required"},
		},
		{
			name:   "certs upload missing file",
			args:   []string{"certs", "upload", "--cert", certFile, "--key", filepath.Join(dir, "absent.pem")},
			code:   exitUsage,
			stderr: []string{"--key: open", "absent.pem"},
		},
		{
			name:   "certs delete in use",
			args:   []string{"certs", "delete", "0123456789abcdef"},
			routes: map[string]reply{"DELETE /api/certificates/0123456789abcdef": {status: 409, body: apiErr("conflict", `certificate "0123456789abcdef" is used by pool(s) web (ssl_cert_id); change them first`)}},
			calls:  []call{{Method: "DELETE", Path: "/api/certificates/0123456789abcdef"}},
			code:   exitConflict,
			stderr: []string{"is used by pool(s) web"},
		},
		{
			name:   "certs delete",
			args:   []string{"certs", "delete", "0123456789abcdef"},
			routes: map[string]reply{"DELETE /api/certificates/0123456789abcdef": {status: 204}},
			calls:  []call{{Method: "DELETE", Path: "/api/certificates/0123456789abcdef"}},
			stdout: []string{"Deleted certificate 0123456789abcdef."},
		},

		{
			name: "cluster status",
			args: []string{"cluster", "status"},
			routes: map[string]reply{"GET /api/cluster": {status: 200, body: `{"node_id":"n1","members":[
				{"id":"n1","name":"edge-iad-1","region":"iad","addresses":{"admin":"127.0.0.1:4000","gossip":"10.0.0.1:7946"},"state":"alive","version":"0.1.0","self":true},
				{"id":"n2","name":"edge-syd-1","region":"syd","addresses":{},"state":"suspect","self":false,"last_seen":"2026-01-02T03:04:05Z",
				 "replication":{"connected":false,"pending_changes":12,"lag_seconds":3.5}},
				{"id":"n3","name":"edge-ams-1","region":"ams","addresses":{},"state":"alive","self":false,"cookie_key_differs":true,
				 "replication":{"connected":false,"pending_changes":4,"lag_seconds":9,"encryption_key_differs":true}}],
				"regions":[{"region":"iad","members":1,"alive":1},{"region":"syd","members":1,"alive":0},{"region":"ams","members":1,"alive":1}]}`}},
			calls: []call{{Method: "GET", Path: "/api/cluster"}},
			stdout: []string{"Node:", "n1", "2 alive of 3", "iad 1/1, syd 0/1", "edge-iad-1 (this node)", "admin=127.0.0.1:4000 gossip=10.0.0.1:7946",
				"edge-syd-1", "suspect", "disconnected, 12 pending, lag 3.5s", "2026-01-02 03:04:05Z",
				"edge-ams-1", "refused: EDGE_ENCRYPTION_KEY differs, 4 pending",
				"Warning: the sticky-session cookie key of edge-ams-1 differs from this node's"},
		},
		{
			// READY is whether a member can do its job: one that holds
			// the state (ready) but gossips disk_full is not.
			name: "cluster status ready and health",
			args: []string{"cluster", "status"},
			routes: map[string]reply{"GET /api/cluster": {status: 200, body: `{"node_id":"n1","members":[
				{"id":"n1","name":"edge-iad-1","region":"iad","addresses":{},"state":"alive","ready":true,"health":"disk_full","self":true},
				{"id":"n2","name":"edge-syd-1","region":"syd","addresses":{},"state":"alive","ready":true,"health":"ok","self":false},
				{"id":"n3","name":"edge-ams-1","region":"ams","addresses":{},"state":"alive","ready":true,"self":false}],
				"regions":[]}`}},
			calls: []call{{Method: "GET", Path: "/api/cluster"}},
			stdout: []string{"edge-iad-1 (this node)  n1  iad     -        alive  no (disk_full)",
				"edge-syd-1              n2  syd     -        alive  yes", "edge-ams-1              n3  ams     -        alive  yes"},
		},
		{
			name:   "cluster join",
			args:   []string{"cluster", "join", "10.0.0.2:7946", "fdaa::3"},
			routes: map[string]reply{"POST /api/cluster/join": {status: 200, body: `{"addresses":["10.0.0.2:7946","fdaa::3"],"contacted":2}`}},
			calls:  []call{{Method: "POST", Path: "/api/cluster/join", Body: map[string]any{"addresses": []any{"10.0.0.2:7946", "fdaa::3"}}}},
			stdout: []string{"Joined: 2 node(s) answered at 10.0.0.2:7946, fdaa::3."},
		},
		{
			name: "cluster join of garbage",
			args: []string{"cluster", "join", "edge.internal"},
			routes: map[string]reply{"POST /api/cluster/join": {status: 422,
				body: apiErr("invalid", "invalid input", [2]string{"addresses[0]", `"edge.internal" is not an IP address or IP:port`})}},
			calls:  []call{{Method: "POST", Path: "/api/cluster/join", Body: map[string]any{"addresses": []any{"edge.internal"}}}},
			code:   exitInvalid,
			stderr: []string{"addresses[0]", "is not an IP address"},
		},
		{
			name:   "cluster join where nobody answers",
			args:   []string{"cluster", "join", "10.0.0.9"},
			routes: map[string]reply{"POST /api/cluster/join": {status: 502, body: apiErr("join_failed", "no node answered at 10.0.0.9:7946")}},
			calls:  []call{{Method: "POST", Path: "/api/cluster/join", Body: map[string]any{"addresses": []any{"10.0.0.9"}}}},
			code:   exitUnavailable,
			stderr: []string{"no node answered at 10.0.0.9:7946."},
		},
		{
			name:   "cluster join without addresses",
			args:   []string{"cluster", "join"},
			code:   exitUsage,
			stderr: []string{"expects at least one gossip address"},
		},
		{
			name:   "cluster leave",
			args:   []string{"cluster", "leave"},
			routes: map[string]reply{"POST /api/cluster/leave": {status: 200, body: `{"state":"left","flushed":true,"applied":["edge-syd-1"],"missing":[]}`}},
			calls:  []call{{Method: "POST", Path: "/api/cluster/leave", Query: "wait=30s"}},
			stdout: []string{"Left the cluster: every alive member holds this node's writes."},
		},
		{
			name: "cluster leave forced",
			args: []string{"cluster", "leave", "--force", "--wait", "5s"},
			routes: map[string]reply{"POST /api/cluster/leave": {status: 200, body: `{"state":"left","flushed":false,"applied":[],
				"missing":[{"name":"edge-syd-1","node_id":"n2","state":"alive","reason":"pending"},{"name":"edge-ams-1","node_id":"n3","state":"dead","reason":"dead"}]}`}},
			calls:     []call{{Method: "POST", Path: "/api/cluster/leave", Query: "force=true&wait=5s"}},
			stdout:    []string{"Left the cluster (forced): edge-syd-1 (pending) did not hold every write of this node."},
			notStdout: []string{"edge-ams-1"},
		},
		{
			name: "cluster leave refused",
			args: []string{"cluster", "leave"},
			routes: map[string]reply{"POST /api/cluster/leave": {status: 409,
				body: apiErr("conflict", "not leaving: edge-syd-1 (pending) do not hold every write of this node after 30s; writes resume")}},
			calls:  []call{{Method: "POST", Path: "/api/cluster/leave", Query: "wait=30s"}},
			code:   exitConflict,
			stderr: []string{"not leaving: edge-syd-1 (pending)"},
		},
		{
			name:   "cluster leave with a bad wait",
			args:   []string{"cluster", "leave", "--wait", "0s"},
			code:   exitUsage,
			stderr: []string{"--wait must be positive"},
		},
		{
			name:   "cluster status json",
			args:   []string{"cluster", "status", "-o", "json"},
			routes: map[string]reply{"GET /api/cluster": {status: 200, body: `{"node_id":"n1","members":[],"regions":[]}`}},
			calls:  []call{{Method: "GET", Path: "/api/cluster"}},
			stdout: []string{`"node_id": "n1"`},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("EDGE_ADMIN_TOKEN", token)
			t.Setenv("EDGE_API", "")
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			agent := newFakeAgent(t, tc.routes)
			args := append(append([]string(nil), tc.args...), "--api", agent.srv.URL)
			stdout, stderr, code := runCLI(t, tc.stdin, args...)
			if code != tc.code {
				t.Errorf("exit code %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tc.code, stdout, stderr)
			}
			for _, want := range tc.stdout {
				if !strings.Contains(stdout, want) {
					t.Errorf("stdout lacks %q:\n%s", want, stdout)
				}
			}
			for _, bad := range tc.notStdout {
				if strings.Contains(stdout, bad) || strings.Contains(stderr, bad) {
					t.Errorf("output contains %q:\nstdout:\n%s\nstderr:\n%s", bad, stdout, stderr)
				}
			}
			for _, want := range tc.stderr {
				if !strings.Contains(stderr, want) {
					t.Errorf("stderr lacks %q:\n%s", want, stderr)
				}
			}
			if tc.code == 0 && stderr != "" {
				t.Errorf("stderr on success:\n%s", stderr)
			}
			got := agent.recorded()
			if len(got) != len(tc.calls) {
				t.Fatalf("agent received %d requests, want %d: %+v", len(got), len(tc.calls), got)
			}
			wantAuth := "Bearer " + token
			switch tc.auth {
			case "":
			case "-":
				wantAuth = ""
			default:
				wantAuth = tc.auth
			}
			for i, want := range tc.calls {
				g := got[i]
				if g.Method != want.Method || g.Path != want.Path || g.Query != want.Query || g.IfMatch != want.IfMatch {
					t.Errorf("request %d = %s %s?%s If-Match=%q, want %s %s?%s If-Match=%q", i, g.Method, g.Path, g.Query, g.IfMatch,
						want.Method, want.Path, want.Query, want.IfMatch)
				}
				if !reflect.DeepEqual(g.Body, want.Body) {
					t.Errorf("request %d body = %#v, want %#v", i, g.Body, want.Body)
				}
				if want.Body != nil && g.CT != "application/json" {
					t.Errorf("request %d Content-Type = %q", i, g.CT)
				}
				if g.Auth != wantAuth {
					t.Errorf("request %d Authorization = %q, want %q", i, g.Auth, wantAuth)
				}
			}
		})
	}
}

func TestCLIConnectionRefused(t *testing.T) {
	t.Setenv("EDGE_ADMIN_TOKEN", token)
	url := refusedURL(t)
	for _, args := range [][]string{
		{"pools", "list", "--api", url},
		{"backends", "drain", "web", "b-1", "--api", url},
		{"certs", "delete", "x", "--api", url},
		{"cluster", "status", "--api", url},
	} {
		_, stderr, code := runCLI(t, "", args...)
		if code != exitUnavailable {
			t.Errorf("%v: exit code %d, want %d (%s)", args, code, exitUnavailable, stderr)
		}
		if !strings.Contains(stderr, "connection refused") || !strings.Contains(stderr, url) {
			t.Errorf("%v: stderr does not explain the refused connection:\n%s", args, stderr)
		}
	}
}

func TestCLIUsesEnvironmentAPI(t *testing.T) {
	agent := newFakeAgent(t, map[string]reply{"GET /api/cluster": {status: 200, body: `{"node_id":"n1","members":[],"regions":[]}`}})
	t.Setenv("EDGE_API", agent.srv.URL+"/")
	t.Setenv("EDGE_ADMIN_TOKEN", token)
	stdout, stderr, code := runCLI(t, "", "cluster", "status")
	if code != 0 || !strings.Contains(stdout, "n1") {
		t.Fatalf("code %d\nstdout:%s\nstderr:%s", code, stdout, stderr)
	}
	if got := agent.recorded(); len(got) != 1 || got[0].Path != "/api/cluster" {
		t.Errorf("requests = %+v", got)
	}
	// An explicit --api wins over the environment.
	_, _, code = runCLI(t, "", "cluster", "status", "--api", refusedURL(t))
	if code != exitUnavailable {
		t.Errorf("--api did not override EDGE_API: exit %d", code)
	}
}

func TestCLITimeout(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)
	t.Setenv("EDGE_ADMIN_TOKEN", token)
	_, stderr, code := runCLI(t, "", "pools", "list", "--api", srv.URL, "--timeout", "100ms")
	if code != exitUnavailable {
		t.Errorf("exit code %d, want %d", code, exitUnavailable)
	}
	if !strings.Contains(stderr, "did not answer within 100ms") {
		t.Errorf("stderr = %s", stderr)
	}
}

func TestCLIBadAPIURL(t *testing.T) {
	_, stderr, code := runCLI(t, "", "pools", "list", "--api", "ftp://example")
	if code != exitUsage || !strings.Contains(stderr, "is not an http:// or https:// URL") {
		t.Errorf("code %d, stderr %s", code, stderr)
	}
}

func TestCompletion(t *testing.T) {
	for _, shell := range []string{"bash", "zsh", "fish", "powershell"} {
		stdout, stderr, code := runCLI(t, "", "completion", shell)
		if code != 0 || len(stdout) < 100 || !strings.Contains(stdout, "singularity-edge") {
			t.Errorf("completion %s: code %d, %d bytes, stderr %s", shell, code, len(stdout), stderr)
		}
	}
	// Static choices.
	stdout, _, _ := runCLI(t, "", "__complete", "pools", "create", "web", "--algorithm", "")
	for _, want := range []string{"round_robin", "power_of_two_choices"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("--algorithm completion lacks %s:\n%s", want, stdout)
		}
	}
	// Pool names and backend ids come from the agent.
	agent := newFakeAgent(t, map[string]reply{
		"GET /api/pools":              {status: 200, body: page("", poolWeb, poolAPI)},
		"GET /api/pools/web/backends": {status: 200, body: page("", backendB1, backendB2)},
	})
	t.Setenv("EDGE_ADMIN_TOKEN", token)
	stdout, _, _ = runCLI(t, "", "__complete", "pools", "get", "--api", agent.srv.URL, "w")
	if !strings.Contains(stdout, "web\n") || strings.Contains(stdout, "api\n") {
		t.Errorf("pool name completion for prefix w:\n%s", stdout)
	}
	stdout, _, _ = runCLI(t, "", "__complete", "backends", "drain", "--api", agent.srv.URL, "web", "")
	if !strings.Contains(stdout, "b-1\n") || !strings.Contains(stdout, "b-2\n") {
		t.Errorf("backend id completion:\n%s", stdout)
	}
}
