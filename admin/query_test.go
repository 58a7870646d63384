package admin

import (
	"net/http"
	"reflect"
	"strings"
	"testing"
)

// routeQuery is every route's accepted query parameters, written out a
// second time on purpose: a route added to the server without an entry
// here fails TestEveryRouteRefusesUnknownQuery, so whoever adds it says
// which parameters it reads.
var routeQuery = map[string][]string{
	"GET /api/health":                        nil,
	"GET /api/pools":                         {"limit", "after"},
	"POST /api/pools":                        {"wait_all"},
	"GET /api/pools/{name}":                  nil,
	"PATCH /api/pools/{name}":                {"wait_all"},
	"DELETE /api/pools/{name}":               {"cascade", "wait_all"},
	"GET /api/pools/{name}/backends":         {"limit", "after"},
	"POST /api/pools/{name}/backends":        {"wait_all"},
	"GET /api/pools/{name}/backends/{id}":    nil,
	"PATCH /api/pools/{name}/backends/{id}":  {"wait_all"},
	"DELETE /api/pools/{name}/backends/{id}": {"wait_all"},
	"GET /api/certificates":                  {"limit", "after"},
	"POST /api/certificates":                 {"wait", "wait_all"},
	"POST /api/certificates/upload":          {"wait_all"},
	"GET /api/certificates/{id}":             nil,
	"DELETE /api/certificates/{id}":          {"force", "wait_all"},
	"POST /api/certificates/{id}/renew":      nil,
	"GET /api/audit":                         {"limit", "after"},
	"GET /api/cluster":                       nil,
	"POST /api/cluster/join":                 nil,
	"POST /api/cluster/leave":                {"wait", "force"},
	"GET /api/db":                            nil,
	"GET /api/db/tables":                     nil,
	"GET /api/db/stats/{table}":              nil,
	"POST /api/db/compact/{table}":           nil,
	"POST /api/db/backup":                    nil,
	"POST /api/db/checkpoint":                nil,
	"GET /metrics":                           nil,
	"GET /admin/dashboard":                   nil,
	"GET /{$}":                               nil,
}

// TestEveryRouteRefusesUnknownQuery walks the server's own route table:
// every route has its parameters declared, and every /api route refuses a
// parameter it does not read with 400 naming it, before anything is
// stored or any state-dependent refusal.
func TestEveryRouteRefusesUnknownQuery(t *testing.T) {
	h := newHarness(t)
	h.createPool(map[string]any{"name": "x1"})
	h.createBackend("x1", map[string]any{"id": "x1", "url": "http://10.0.0.1:80"})
	before := h.snapshot()
	seen := map[string]bool{}
	for _, pattern := range h.srv.patterns {
		want, ok := routeQuery[pattern]
		if !ok {
			t.Errorf("route %q is not in routeQuery: declare the query parameters it reads (none: nil)", pattern)
			continue
		}
		seen[pattern] = true
		if got := h.srv.query[pattern]; !reflect.DeepEqual(got, want) && (len(got) != 0 || len(want) != 0) {
			t.Errorf("route %q declares %v, routeQuery says %v", pattern, got, want)
		}
		method, path, _ := strings.Cut(pattern, " ")
		if !strings.HasPrefix(path, "/api/") {
			continue
		}
		path = routeWildcard.ReplaceAllString(path, "x1")
		r := h.do(method, path+"?bogus=1", `{}`)
		r.expect(t, http.StatusBadRequest, CodeInvalid, "bogus")
		msg := r.errDetail(t).Message
		if !strings.Contains(msg, `"bogus"`) || !strings.Contains(msg, pattern) {
			t.Errorf("%s?bogus=1: message %q does not name the parameter and the route", pattern, msg)
		}
		for _, p := range want {
			if strings.Contains(msg, "takes no query") || !strings.Contains(msg, p) {
				t.Errorf("%s?bogus=1: message %q does not list %q", pattern, msg, p)
			}
		}
	}
	for pattern := range routeQuery {
		if !seen[pattern] {
			t.Errorf("routeQuery lists %q, which the server does not register", pattern)
		}
	}
	h.assertUnchanged(before, "requests with unknown query parameters")
}

// Typos that used to do the default silently.
func TestQueryTyposRefused(t *testing.T) {
	h := newHarness(t)
	h.createPool(map[string]any{"name": "empty"})
	before := h.snapshot()
	for _, tc := range []struct{ method, path, field string }{
		{"GET", "/api/pools?limt=10", "limt"},
		// An empty pool: the typo used to delete it (cascade or not).
		{"DELETE", "/api/pools/empty?cascde=true", "cascde"},
		{"DELETE", "/api/pools/empty?wait_all=1s&Cascade=true", "Cascade"},
		{"GET", "/api/pools/empty?limit=1", "limit"},
		{"GET", "/api/cluster?verbose=1", "verbose"},
		{"POST", "/api/cluster/leave?forse=true", "forse"},
	} {
		r := h.do(tc.method, tc.path, nil)
		r.expect(t, http.StatusBadRequest, CodeInvalid, tc.field)
	}
	h.assertUnchanged(before, "requests with misspelt query parameters")
	// Declared parameters still work, and pages outside /api keep theirs.
	h.do("GET", "/api/pools?limit=1&after=", nil).expect(t, http.StatusOK, "")
	h.do("GET", "/admin/dashboard?v=2", nil).expect(t, http.StatusOK, "")
	// Unknown routes are 404 whatever their query; no token is 401 first.
	h.do("GET", "/api/nope?bogus=1", nil).expect(t, http.StatusNotFound, CodeNotFound)
	h.do("GET", "/api/pools?limt=1", nil, noAuth).expect(t, http.StatusUnauthorized, CodeUnauthorized)
	h.do("DELETE", "/api/pools/empty", nil).expect(t, http.StatusNoContent, "")
}
