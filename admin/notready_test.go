package admin

import (
	"net/http"
	"testing"
)

// A node still taking the cluster's state from a peer refuses writes (a
// local write would originate data before it holds the state) and keeps
// answering reads; once ready, writes go through.
func TestWritesRefusedUntilReady(t *testing.T) {
	ready := make(chan struct{})
	h := newHarness(t, withDeps(func(d *Deps) { d.Ready = ready }))
	h.do("POST", "/api/pools", map[string]any{"name": "web", "algorithm": "round_robin"}).
		expect(t, http.StatusServiceUnavailable, CodeUnavailable)
	h.do("GET", "/api/pools", nil).expect(t, http.StatusOK, "")
	h.do("GET", "/api/pools/web", nil).expect(t, http.StatusNotFound, CodeNotFound)
	close(ready)
	h.do("POST", "/api/pools", map[string]any{"name": "web", "algorithm": "round_robin"}).expect(t, http.StatusCreated, "")
}
