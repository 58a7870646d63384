package admin

import (
	"encoding/json"
	"github.com/singularity-ng/singularity-edge/apitypes"
	"net/http"
	"strings"
	"testing"
)

// A node still taking the cluster's state from a peer refuses writes (a
// local write would originate data before it holds the state) with 503
// and nothing stored, and keeps answering reads; once ready, writes go
// through.
func TestWritesRefusedUntilReady(t *testing.T) {
	ready := make(chan struct{})
	h := newHarness(t, withDeps(func(d *Deps) { d.Ready = ready }))
	// A 503 is what this test wants, so it bypasses the harness's
	// "no server error" check.
	req, _ := http.NewRequest("POST", h.ts.URL+"/api/pools", strings.NewReader(`{"name":"web","algorithm":"round_robin"}`))
	req.Header.Set("Authorization", "Bearer "+testToken)
	req.Header.Set("Content-Type", "application/json")
	res, err := h.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var e apitypes.ErrorBody
	err = json.NewDecoder(res.Body).Decode(&e)
	res.Body.Close()
	if res.StatusCode != http.StatusServiceUnavailable || err != nil || e.Error.Code != CodeUnavailable {
		t.Fatalf("write while not ready: %d %+v %v", res.StatusCode, e, err)
	}
	h.do("GET", "/api/pools/web", nil).expect(t, http.StatusNotFound, CodeNotFound)
	close(ready)
	h.do("POST", "/api/pools", map[string]any{"name": "web", "algorithm": "round_robin"}).expect(t, http.StatusCreated, "")
}
