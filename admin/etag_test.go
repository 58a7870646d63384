package admin

import (
	"net/http"
	"strings"
	"testing"
)

// TestIfMatchHeaderForms: an If-Match header that is sent but empty or not
// "*" or a list of entity tags is a malformed precondition (400 naming the
// header, nothing stored) on every route that reads it, not a 412 that
// says the client's tag is stale; "*", current tags, stale tags and weak
// tags keep their meaning.
func TestIfMatchHeaderForms(t *testing.T) {
	h := newHarness(t)
	created := h.createPool(map[string]any{"name": "web"})
	stale := apiETag(created.Version)
	b := h.createBackend("web", map[string]any{"id": "b1", "url": "http://10.0.0.1:80"})
	r := h.do("PATCH", "/api/pools/web", `{"algorithm":"random"}`)
	r.expect(t, http.StatusOK, "")
	current := r.Header.Get("ETag")
	backendTag := apiETag(b.Version)

	before := h.snapshot()
	for _, tc := range []struct {
		name   string
		values []string // one header line each
		status int
	}{
		{"empty", []string{""}, http.StatusBadRequest},
		{"blank", []string{"  \t"}, http.StatusBadRequest},
		{"only commas", []string{" , ,"}, http.StatusBadRequest},
		{"two empty lines", []string{"", ""}, http.StatusBadRequest},
		{"unquoted", []string{"abc"}, http.StatusBadRequest},
		{"unquoted current", []string{strings.Trim(current, `"`)}, http.StatusBadRequest},
		{"weak prefix alone", []string{"W/"}, http.StatusBadRequest},
		{"weak garbage", []string{"W/garbage"}, http.StatusBadRequest},
		{"lower-case weak prefix", []string{`w/` + current}, http.StatusBadRequest},
		{"no closing quote", []string{`"1-n`}, http.StatusBadRequest},
		{"space inside the quotes", []string{`"1 n"`}, http.StatusBadRequest},
		{"no comma between tags", []string{stale + " " + current}, http.StatusBadRequest},
		{"star with a tag", []string{"*, " + current}, http.StatusBadRequest},
		{"star on a line of its own beside a tag", []string{"*", current}, http.StatusBadRequest},
		{"stale", []string{stale}, http.StatusPreconditionFailed},
		{"weak current", []string{"W/" + current}, http.StatusPreconditionFailed},
		{"stale and weak", []string{stale + `, W/"x"`}, http.StatusPreconditionFailed},
		{"empty elements around a stale tag", []string{", " + stale + " ,"}, http.StatusPreconditionFailed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			with := func(r *http.Request) {
				r.Header.Del("If-Match")
				for _, v := range tc.values {
					r.Header.Add("If-Match", v)
				}
			}
			for _, req := range []struct{ method, path, body string }{
				{"PATCH", "/api/pools/web", `{"fail_open":true}`},
				{"DELETE", "/api/pools/web", ""},
				{"PATCH", "/api/pools/web/backends/b1", `{"weight":7}`},
				{"DELETE", "/api/pools/web/backends/b1", ""},
				{"DELETE", "/api/certificates/none", ""},
			} {
				var body any
				if req.body != "" {
					body = req.body
				}
				r := h.do(req.method, req.path, body, with)
				if tc.status == http.StatusBadRequest {
					r.expect(t, http.StatusBadRequest, CodeInvalid, "If-Match")
					continue
				}
				if req.path == "/api/certificates/none" {
					continue // the precondition of a missing row is not reached
				}
				r.expect(t, tc.status, CodePreconditionFailed)
			}
		})
	}
	h.assertUnchanged(before, "malformed and failing If-Match headers")

	// The accepted forms, each on a PATCH that changes the pool; stale and
	// current move on with every change.
	for i, values := range []func() []string{
		func() []string { return []string{"*"} },
		func() []string { return []string{" * "} },
		func() []string { return []string{stale + ", " + current} },
		func() []string { return []string{`"a,b", ` + current} }, // a comma inside quotes belongs to the tag
		func() []string { return []string{stale, current} },
		func() []string { return []string{"", current} }, // an empty line is an empty list element
		func() []string { return []string{`W/"x",` + current} },
	} {
		with := func(r *http.Request) {
			r.Header.Del("If-Match")
			for _, v := range values() {
				r.Header.Add("If-Match", v)
			}
		}
		r := h.do("PATCH", "/api/pools/web", map[string]any{"fail_open": i%2 == 0}, with)
		r.expect(t, http.StatusOK, "")
		stale, current = current, r.Header.Get("ETag")
	}
	h.do("PATCH", "/api/pools/web/backends/b1", `{"weight":3}`, withHeader("If-Match", backendTag)).expect(t, http.StatusOK, "")
	h.do("DELETE", "/api/pools/web?cascade=true", nil, withHeader("If-Match", current)).expect(t, http.StatusNoContent, "")
}
