package admin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"
)

func TestCheckExposure(t *testing.T) {
	tests := []struct {
		addr, token string
		wantErr     bool
	}{
		{"127.0.0.1:4000", "", false},
		{"127.0.0.2:4000", "", false},
		{"[::1]:4000", "", false},
		{"localhost:4000", "", false},
		{"LOCALHOST:4000", "", false},
		{"[::ffff:127.0.0.1]:4000", "", false},
		{"0.0.0.0:4000", "", true},
		{":4000", "", true},
		{"[::]:4000", "", true},
		{"10.0.0.5:4000", "", true},
		{"[fdaa:0:1::3]:4000", "", true},
		{"admin.internal:4000", "", true},
		{"0.0.0.0:4000", "secret", false},
		{"[fdaa:0:1::3]:4000", "secret", false},
		{"no-port", "", true},
	}
	for _, tt := range tests {
		err := CheckExposure(tt.addr, tt.token)
		if (err != nil) != tt.wantErr {
			t.Errorf("CheckExposure(%q, %q) = %v, want error %v", tt.addr, tt.token, err, tt.wantErr)
		}
		if err != nil && tt.addr != "no-port" && !errors.Is(err, ErrExposed) {
			t.Errorf("CheckExposure(%q): %v does not wrap ErrExposed", tt.addr, err)
		}
	}
}

// routeWildcard matches a pattern's wildcard segment ({name}, {id}, {$}).
var routeWildcard = regexp.MustCompile(`\{[^}]*\}`)

func TestAuthRequiredOnEveryAPIRoute(t *testing.T) {
	// openRoutes are the routes that answer without the token, each with the
	// reason. Every other route of the server's table must refuse a request
	// without the right token; a new route is covered without being listed.
	openRoutes := map[string]string{
		"GET /api/health":      "a liveness/readiness probe for platforms and load balancers; it says ok/starting and nothing else",
		"GET /admin/dashboard": "a static page with no data; it asks for the token and sends it with its API calls",
		"GET /{$}":             "a redirect to the dashboard",
		"GET /metrics":         "open to connections on a loopback address or with MetricsPublic, otherwise it needs the token (TestMetricsAuth)",
	}
	h := newHarness(t)
	type route struct{ method, path string }
	var routes []route
	seenOpen := map[string]bool{}
	for _, pattern := range h.srv.patterns {
		method, path, ok := strings.Cut(pattern, " ")
		if !ok {
			t.Fatalf("route %q has no method: every route is registered for one method", pattern)
		}
		path = routeWildcard.ReplaceAllStringFunc(path, func(w string) string {
			if w == "{$}" {
				return ""
			}
			return "x1"
		})
		if _, open := openRoutes[pattern]; open {
			seenOpen[pattern] = true
			// Open on the harness's loopback listener, whatever the
			// reason it is open.
			if r := h.do(method, path, nil, noAuth); r.Status == http.StatusUnauthorized {
				t.Errorf("%s is listed as open but answers 401", pattern)
			}
			continue
		}
		routes = append(routes, route{method, path})
	}
	for pattern := range openRoutes {
		if !seenOpen[pattern] {
			t.Errorf("open route %q is not in the server's route table: remove it from openRoutes", pattern)
		}
	}
	if len(routes) < 20 {
		t.Fatalf("only %d protected routes found in the route table", len(routes))
	}
	// Unknown routes and wrong methods under /api are not revealed to
	// unauthenticated callers either.
	routes = append(routes, route{"GET", "/api/nope"}, route{"PUT", "/api/pools"}, route{"POST", "/api/health"})

	before := h.snapshot()
	for _, rt := range routes {
		for _, tc := range []struct {
			name string
			opt  reqOption
			msg  string
		}{
			{"missing", noAuth, "missing Authorization"},
			{"wrong", withToken("not-the-token"), "invalid token"},
			{"prefix", withToken(testToken[:len(testToken)-1]), "invalid token"},
			{"basic", withHeader("Authorization", "Basic "+testToken), "Bearer"},
		} {
			r := h.do(rt.method, rt.path, `{"name":"web"}`, tc.opt)
			if r.Status != http.StatusUnauthorized {
				t.Errorf("%s %s (%s token): status %d, want 401: %s", rt.method, rt.path, tc.name, r.Status, r.Body)
				continue
			}
			r.expect(t, http.StatusUnauthorized, CodeUnauthorized)
			if !strings.Contains(r.errDetail(t).Message, tc.msg) {
				t.Errorf("%s %s (%s): message %q lacks %q", rt.method, rt.path, tc.name, r.errDetail(t).Message, tc.msg)
			}
			if r.Header.Get("WWW-Authenticate") == "" {
				t.Errorf("%s %s: 401 without WWW-Authenticate", rt.method, rt.path)
			}
		}
	}
	h.assertUnchanged(before, "unauthenticated requests")

	// The right token in any case of the scheme name works.
	h.do("GET", "/api/pools", nil, withHeader("Authorization", "bearer "+testToken)).expect(t, http.StatusOK, "")
}

func TestHealthIsOpenAndMinimal(t *testing.T) {
	h := newHarness(t)
	r := h.do("GET", "/api/health", nil, noAuth)
	r.expect(t, http.StatusOK, "")
	var got map[string]any
	r.json(t, &got)
	want := map[string]any{"status": "ok", "live": true, "ready": true}
	if len(got) != len(want) {
		t.Fatalf("health reports %v, want only %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Fatalf("health %s = %v, want %v", k, got[k], v)
		}
	}
}

func TestHealthNotReadyUntilReady(t *testing.T) {
	ready := make(chan struct{})
	h := newHarness(t, withDeps(func(d *Deps) { d.Ready = ready }))
	r := h.do("GET", "/api/health", nil, noAuth)
	r.expect(t, http.StatusServiceUnavailable, "")
	var got healthResponse
	r.json(t, &got)
	if got.Ready || !got.Live || got.Status != "starting" {
		t.Fatalf("before ready: %+v", got)
	}
	close(ready)
	h.do("GET", "/api/health", nil, noAuth).expect(t, http.StatusOK, "")

	// Shutting down: not ready while the requests in flight finish.
	h.srv.Drain()
	r = h.do("GET", "/api/health", nil, noAuth)
	r.expect(t, http.StatusServiceUnavailable, "")
	r.json(t, &got)
	if got.Ready || !got.Live || got.Status != "draining" {
		t.Fatalf("draining: %+v", got)
	}

	if err := h.store.Close(); err != nil {
		t.Fatal(err)
	}
	h.do("GET", "/api/health", nil, noAuth).expect(t, http.StatusServiceUnavailable, "")
}

func TestNoTokenOnLoopbackIsOpen(t *testing.T) {
	h := newHarness(t, withConfig(func(c *Config) { c.Token = "" }))
	h.do("GET", "/api/pools", nil, noAuth).expect(t, http.StatusOK, "")
}

func TestMetricsAuth(t *testing.T) {
	for _, tc := range []struct {
		name       string
		local      string
		public     bool
		token      string
		wantStatus int
	}{
		{"loopback open", "127.0.0.1:4000", false, "", http.StatusOK},
		{"ipv6 loopback open", "[::1]:4000", false, "", http.StatusOK},
		{"private needs token", "10.1.2.3:4000", false, "", http.StatusUnauthorized},
		{"private wrong token", "10.1.2.3:4000", false, "nope", http.StatusUnauthorized},
		{"private with token", "10.1.2.3:4000", false, testToken, http.StatusOK},
		{"public flag", "10.1.2.3:4000", true, "", http.StatusOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, withConfig(func(c *Config) { c.MetricsPublic = tc.public }))
			// The local address of the connection decides; a recorder
			// lets the test claim a non-loopback one without sending
			// traffic anywhere.
			local, err := net.ResolveTCPAddr("tcp", tc.local)
			if err != nil {
				t.Fatal(err)
			}
			req := httptest.NewRequest("GET", "/metrics", nil)
			req.Host = tc.local
			req = req.WithContext(context.WithValue(req.Context(), http.LocalAddrContextKey, local))
			if tc.token != "" {
				req.Header.Set("Authorization", "Bearer "+tc.token)
			}
			rec := httptest.NewRecorder()
			h.srv.Handler().ServeHTTP(rec, req)
			if rec.Code != tc.wantStatus {
				t.Fatalf("status %d, want %d: %s", rec.Code, tc.wantStatus, rec.Body)
			}
		})
	}
}

func TestStartRefusesExposedAddressWithoutToken(t *testing.T) {
	st := openStore(t, testEncryptionKey())
	cfg := DefaultConfig()
	cfg.Addr = "0.0.0.0:0"
	srv, err := New(cfg, Deps{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(context.Background()); !errors.Is(err, ErrExposed) {
		t.Fatalf("Start on 0.0.0.0 without token: %v, want ErrExposed", err)
	}
	if srv.Addr() != nil {
		t.Fatal("refused server has an address")
	}
}

func TestStartServeShutdown(t *testing.T) {
	st := openStore(t, testEncryptionKey())
	cfg := DefaultConfig()
	cfg.Addr = "127.0.0.1:0"
	cfg.Token = testToken
	srv, err := New(cfg, Deps{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	url := "http://" + srv.Addr().String() + "/api/health"
	res, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("health: %d", res.StatusCode)
	}
	if err := srv.Start(context.Background()); err == nil {
		t.Fatal("second Start succeeded")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := http.Get(url); err == nil {
		t.Fatal("server still answers after Shutdown")
	}

	// Serve on a listener, stopped by its context.
	srv2, err := New(cfg, Deps{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv2.Serve(sctx, ln) }()
	url2 := "http://" + ln.Addr().String() + "/api/health"
	waitFor(t, "Serve to answer", 10*time.Second, func() bool {
		res, err := http.Get(url2)
		if err != nil {
			return false
		}
		res.Body.Close()
		return res.StatusCode == http.StatusOK
	})
	stop()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Serve did not return after its context ended")
	}
}

func TestServeRefusesExposedListenerWithoutToken(t *testing.T) {
	st := openStore(t, testEncryptionKey())
	srv, err := New(DefaultConfig(), Deps{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(context.Background(), fakeListener{addr: &net.TCPAddr{IP: net.IPv4zero, Port: 4000}}); !errors.Is(err, ErrExposed) {
		t.Fatalf("Serve: %v, want ErrExposed", err)
	}
}

// fakeListener only reports an address; Serve must refuse it before
// accepting anything.
type fakeListener struct{ addr net.Addr }

func (f fakeListener) Accept() (net.Conn, error) { return nil, errors.New("not a real listener") }
func (f fakeListener) Close() error              { return nil }
func (f fakeListener) Addr() net.Addr            { return f.addr }

func TestRequestIDAndRoutingErrors(t *testing.T) {
	h := newHarness(t)
	r := h.do("GET", "/api/pools", nil, withHeader("X-Request-Id", "cli-1234.abc"))
	if got := r.Header.Get("X-Request-Id"); got != "cli-1234.abc" {
		t.Fatalf("request id %q not echoed", got)
	}
	r = h.do("GET", "/api/pools", nil, withHeader("X-Request-Id", "bad id\twith spaces"))
	if got := r.Header.Get("X-Request-Id"); got == "" || strings.ContainsAny(got, " \t") {
		t.Fatalf("unsafe request id %q echoed", got)
	}
	a := h.do("GET", "/api/pools", nil).Header.Get("X-Request-Id")
	b := h.do("GET", "/api/pools", nil).Header.Get("X-Request-Id")
	if a == b {
		t.Fatalf("two requests got the same id %q", a)
	}

	h.do("GET", "/api/nope", nil).expect(t, http.StatusNotFound, CodeNotFound)
	h.do("GET", "/nope", nil, noAuth).expect(t, http.StatusNotFound, CodeNotFound)
	r = h.do("PUT", "/api/pools", "{}")
	r.expect(t, http.StatusMethodNotAllowed, CodeMethodNotAllowed)
	if allow := r.Header.Get("Allow"); !strings.Contains(allow, "GET") || !strings.Contains(allow, "POST") {
		t.Fatalf("405 Allow = %q", allow)
	}
	h.do("DELETE", "/api/certificates/upload", nil).expect(t, http.StatusNotFound, CodeNotFound)
	h.do("GET", "/api/db/backup", nil).expect(t, http.StatusMethodNotAllowed, CodeMethodNotAllowed)
}

func TestAccessLog(t *testing.T) {
	h := newHarness(t)
	secret := "s3cr3t-body-value"
	h.do("POST", "/api/pools", map[string]any{"name": "logged", "metadata": map[string]string{"k": secret}}).expect(t, http.StatusCreated, "")
	h.do("GET", "/api/pools?limit=5&after="+secret, nil)

	var found bool
	for _, e := range h.logs.FilterMessage("admin request").All() {
		m := e.ContextMap()
		for _, k := range []string{"request_id", "method", "path", "status", "duration", "route"} {
			if _, ok := m[k]; !ok {
				t.Fatalf("access log lacks %s: %v", k, m)
			}
		}
		if m["method"] == "POST" && m["path"] == "/api/pools" && m["status"] == int64(201) && m["route"] == "POST /api/pools" {
			found = true
		}
		if strings.Contains(toString(m), secret) {
			t.Fatalf("access log carries the body or query: %v", m)
		}
	}
	if !found {
		t.Fatalf("no access log line for the POST: %v", h.logs.All())
	}
}

func TestPanicBecomesJSON500(t *testing.T) {
	h := newHarness(t)
	h.srv.mux.HandleFunc("GET /api/test-panic", func(http.ResponseWriter, *http.Request) { panic("boom") })
	req := httptest.NewRequest("GET", "/api/test-panic", nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	rec := httptest.NewRecorder()
	h.srv.Handler().ServeHTTP(rec, req)
	if rec.Code != http.StatusInternalServerError || !strings.Contains(rec.Body.String(), `"code":"internal"`) {
		t.Fatalf("panic answered %d %s", rec.Code, rec.Body)
	}
	if strings.Contains(rec.Body.String(), "boom") {
		t.Fatal("panic value leaked to the client")
	}
	if h.logs.FilterMessage("admin handler panicked").Len() != 1 {
		t.Fatal("panic not logged")
	}
}

func TestNewValidatesConfig(t *testing.T) {
	if _, err := New(DefaultConfig(), Deps{}); err == nil {
		t.Fatal("New without a store succeeded")
	}
	st := openStore(t, nil)
	cfg := DefaultConfig()
	h := newHarnessOn(t, st)
	cfg.Registerer = h.reg
	if _, err := New(cfg, Deps{Store: st}); err == nil {
		t.Fatal("New with Registerer but no Gatherer succeeded")
	}
	// Registering twice on one registry fails instead of panicking.
	cfg.Gatherer = h.reg
	if _, err := New(cfg, Deps{Store: st}); err == nil {
		t.Fatal("second server on the same registry succeeded")
	}
}

// TestTokenCheckRefusesEveryWrongToken: thousands of wrong tokens,
// including the real one with each single character changed, truncated or
// extended, are all refused; only the exact token passes. A comparison on
// part of the hash (or of the token) lets some of them through.
func TestTokenCheckRefusesEveryWrongToken(t *testing.T) {
	const token = "s3cr3t-Token_with.several-parts-0123456789abcdef"
	tc := newTokenChecker(token)
	try := func(cred string) error {
		r := httptest.NewRequest(http.MethodGet, "/api/pools", nil)
		r.Header.Set("Authorization", "Bearer "+cred)
		return tc.check(r)
	}
	if err := try(token); err != nil {
		t.Fatalf("the real token was refused: %v", err)
	}
	var wrong []string
	for i := 0; i < len(token); i++ {
		for _, c := range []byte("aZ09-_.~x") {
			if c != token[i] {
				wrong = append(wrong, token[:i]+string(c)+token[i+1:])
			}
		}
		wrong = append(wrong, token[:i], token[:i]+token[i+1:])
	}
	wrong = append(wrong, token+"x", strings.ToUpper(token), " "+token+"x")
	for i := 0; i < 2000; i++ {
		wrong = append(wrong, fmt.Sprintf("token-%d-%x", i, i*7919))
	}
	if len(wrong) < 2000 {
		t.Fatalf("only %d wrong tokens", len(wrong))
	}
	for _, w := range wrong {
		if w == token {
			continue
		}
		if err := try(w); err == nil {
			t.Fatalf("wrong token %q accepted", w)
		}
	}
}
