package admin

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
)

func withHost(host string) reqOption {
	return func(r *http.Request) { r.Host = host }
}

// TestTokenlessAPIRefusesBrowserPages: without a token the API on loopback
// answers local processes, its own dashboard, and nothing a web page in
// the operator's browser can send: a Host that is not loopback (DNS
// rebinding: the page's own name resolved to 127.0.0.1) and cross-origin
// requests (the "simple" POSTs a page sends without a preflight).
func TestTokenlessAPIRefusesBrowserPages(t *testing.T) {
	h := newHarness(t, withConfig(func(c *Config) { c.Token = "" }))
	u, err := url.Parse(h.ts.URL)
	if err != nil {
		t.Fatal(err)
	}
	self := u.Host // 127.0.0.1:port
	port := u.Port()
	origin := "http://" + self

	// The writes a page could send cross-site without a preflight: no
	// body, or a form or text body.
	writes := []struct{ method, path, body, ctype string }{
		{"POST", "/api/cluster/leave?force=true", "", ""},
		{"POST", "/api/db/compact/pools", "", ""},
		{"POST", "/api/certificates/c1/renew", "", ""},
		{"POST", "/api/pools", `{"name":"evil"}`, "text/plain"},
		{"DELETE", "/api/pools/web", "", ""},
	}
	refusals := []struct {
		name string
		opts []reqOption
		msg  string
	}{
		{"rebound name", []reqOption{withHost("attacker.example:" + port)}, "loopback"},
		{"rebound name without port", []reqOption{withHost("attacker.example")}, "loopback"},
		{"name embedding an address", []reqOption{withHost("127.0.0.1.nip.io:" + port)}, "loopback"},
		{"subdomain of localhost", []reqOption{withHost("localhost.attacker.example:" + port)}, "loopback"},
		{"private address", []reqOption{withHost("10.0.0.1:" + port)}, "loopback"},
		{"cross-site Origin", []reqOption{withHeader("Origin", "http://attacker.example")}, "Origin"},
		{"another local port's Origin", []reqOption{withHeader("Origin", "http://127.0.0.1:1")}, "Origin"},
		{"opaque Origin", []reqOption{withHeader("Origin", "null")}, "Origin"},
		{"Sec-Fetch-Site cross-site", []reqOption{withHeader("Sec-Fetch-Site", "cross-site")}, "cross-site"},
		{"Sec-Fetch-Site same-site", []reqOption{withHeader("Sec-Fetch-Site", "same-site")}, "same-site"},
		{"rebound page, same-origin to itself", []reqOption{withHost("attacker.example:" + port),
			withHeader("Origin", "http://attacker.example:"+port), withHeader("Sec-Fetch-Site", "same-origin")}, "loopback"},
	}
	before := h.snapshot()
	for _, rf := range refusals {
		for _, wr := range writes {
			opts := append([]reqOption{noAuth, withContentType(wr.ctype)}, rf.opts...)
			var body any
			if wr.body != "" {
				body = wr.body
			}
			r := h.do(wr.method, wr.path, body, opts...)
			r.expect(t, http.StatusForbidden, CodeForbidden)
			if msg := r.errDetail(t).Message; !strings.Contains(msg, rf.msg) || !strings.Contains(msg, "EDGE_ADMIN_TOKEN") {
				t.Errorf("%s: %s %s: message %q lacks %q or the token's name", rf.name, wr.method, wr.path, msg, rf.msg)
			}
		}
		// Reads too: a rebound page could read every answer.
		h.do("GET", "/api/pools", nil, append([]reqOption{noAuth}, rf.opts...)...).expect(t, http.StatusForbidden, CodeForbidden)
		h.do("GET", "/metrics", nil, append([]reqOption{noAuth}, rf.opts...)...).expect(t, http.StatusForbidden, CodeForbidden)
	}
	h.assertUnchanged(before, "refused browser requests")

	// What passes: local tools (no Origin, no Sec-Fetch-Site) under every
	// loopback name, and the dashboard's same-origin calls.
	accepted := []struct {
		name string
		opts []reqOption
	}{
		{"CLI", nil},
		{"localhost", []reqOption{withHost("localhost:" + port)}},
		{"LOCALHOST", []reqOption{withHost("LOCALHOST:" + port)}},
		{"IPv6 loopback", []reqOption{withHost("[::1]:" + port)}},
		{"forwarded port", []reqOption{withHost("localhost:9000"), withHeader("Origin", "http://localhost:9000")}},
		{"dashboard GET", []reqOption{withHeader("Sec-Fetch-Site", "same-origin")}},
		{"dashboard write", []reqOption{withHeader("Sec-Fetch-Site", "same-origin"), withHeader("Origin", origin)}},
		{"browser without Sec-Fetch-Site", []reqOption{withHeader("Origin", origin)}},
		{"typed into the address bar", []reqOption{withHeader("Sec-Fetch-Site", "none")}},
	}
	for _, ac := range accepted {
		opts := append([]reqOption{noAuth}, ac.opts...)
		h.do("GET", "/api/pools", nil, opts...).expect(t, http.StatusOK, "")
		h.do("GET", "/metrics", nil, opts...).expect(t, http.StatusOK, "")
		h.do("PATCH", "/api/pools/web", map[string]any{}, opts...).expect(t, http.StatusNotFound, CodeNotFound)
	}
	h.do("POST", "/api/pools", map[string]any{"name": "web"}, noAuth,
		withHeader("Sec-Fetch-Site", "same-origin"), withHeader("Origin", origin)).expect(t, http.StatusCreated, "")

	// The deliberately open pages stay open under any name: they carry
	// nothing a page could use.
	for _, path := range []string{"/api/health", "/admin/dashboard"} {
		h.do("GET", path, nil, noAuth, withHost("attacker.example:"+port)).expect(t, http.StatusOK, "")
	}
}

// TestTokenDisablesLocalCallerCheck: with a token the Host and Origin of an
// API request do not matter. A page cannot send the Authorization header
// cross-origin without a preflight this server never grants, and a
// rebound page does not know the token; an operator may reach the API
// under any name.
func TestTokenDisablesLocalCallerCheck(t *testing.T) {
	h := newHarness(t)
	for _, opts := range [][]reqOption{
		{withHost("edge.internal:4000")},
		{withHeader("Origin", "http://attacker.example"), withHeader("Sec-Fetch-Site", "cross-site")},
	} {
		h.do("GET", "/api/pools", nil, opts...).expect(t, http.StatusOK, "")
	}
	// /metrics is open on loopback even with a token, so it is guarded
	// there; the token opens it under any name.
	h.do("GET", "/metrics", nil, noAuth, withHost("attacker.example")).expect(t, http.StatusForbidden, CodeForbidden)
	h.do("GET", "/metrics", nil, withHost("attacker.example")).expect(t, http.StatusOK, "")
	h.do("GET", "/metrics", nil, noAuth).expect(t, http.StatusOK, "")
}
