package admin

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/singularity-ng/singularity-edge/apitypes"
)

// fakeMembership records what the API asked and answers as told.
type fakeMembership struct {
	mu       sync.Mutex
	joined   [][]string
	joinErr  error
	contacts int
	state    string
	// leave: flushed or not; block holds the flush until closed.
	flushed bool
	block   chan struct{}
	forced  []bool
}

func (f *fakeMembership) Join(_ context.Context, addrs []string) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.joined = append(f.joined, addrs)
	return f.contacts, f.joinErr
}

func (f *fakeMembership) State() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.state
}

func (f *fakeMembership) Leave(ctx context.Context, force bool) (apitypes.ClusterLeft, error) {
	f.mu.Lock()
	switch f.state {
	case "leaving":
		f.mu.Unlock()
		return apitypes.ClusterLeft{}, ErrLeaving
	case "left":
		f.mu.Unlock()
		return apitypes.ClusterLeft{}, ErrLeft
	}
	f.state = "leaving"
	f.forced = append(f.forced, force)
	block := f.block
	f.mu.Unlock()
	if block != nil {
		select {
		case <-block:
		case <-ctx.Done():
		}
	}
	missing := []apitypes.ClusterMissing{{Name: "syd-1", NodeID: "n3", State: "alive", Reason: "pending"}}
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.flushed && !force {
		f.state = ""
		return apitypes.ClusterLeft{Missing: missing}, ErrNotFlushed
	}
	f.state = "left"
	res := apitypes.ClusterLeft{State: "left", Flushed: f.flushed, Applied: []string{"iad-2"}, Missing: []apitypes.ClusterMissing{}}
	if !f.flushed {
		res.Missing = missing
	}
	return res, nil
}

func TestClusterJoinValidation(t *testing.T) {
	fm := &fakeMembership{contacts: 1}
	h := newHarness(t, withDeps(func(d *Deps) { d.Membership = fm }))
	for _, tt := range []struct {
		name   string
		body   any
		status int
		fields []string
	}{
		{"no body field", map[string]any{}, http.StatusUnprocessableEntity, []string{"addresses"}},
		{"empty list", map[string]any{"addresses": []string{}}, http.StatusUnprocessableEntity, []string{"addresses"}},
		{"host name", map[string]any{"addresses": []string{"10.0.0.2:7946", "edge.internal:7946"}}, http.StatusUnprocessableEntity, []string{"addresses[1]"}},
		{"garbage", map[string]any{"addresses": []string{"::::"}}, http.StatusUnprocessableEntity, []string{"addresses[0]"}},
		{"port 0", map[string]any{"addresses": []string{"10.0.0.2:0"}}, http.StatusUnprocessableEntity, []string{"addresses[0]"}},
		{"port out of range", map[string]any{"addresses": []string{"10.0.0.2:70000"}}, http.StatusUnprocessableEntity, []string{"addresses[0]"}},
		{"unspecified", map[string]any{"addresses": []string{"0.0.0.0:7946", "::"}}, http.StatusUnprocessableEntity, []string{"addresses[0]", "addresses[1]"}},
		{"not a list", map[string]any{"addresses": "10.0.0.2"}, http.StatusBadRequest, []string{"addresses"}},
		{"unknown field", map[string]any{"addresses": []string{"10.0.0.2"}, "seeds": 1}, http.StatusBadRequest, []string{"seeds"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h.do("POST", "/api/cluster/join", tt.body).expect(t, tt.status, CodeInvalid, tt.fields...)
		})
	}
	if len(fm.joined) != 0 {
		t.Fatalf("refused requests reached the membership: %v", fm.joined)
	}
	// Too many addresses.
	many := make([]string, maxJoinAddresses+1)
	for i := range many {
		many[i] = "10.0.0.2"
	}
	h.do("POST", "/api/cluster/join", map[string]any{"addresses": many}).expect(t, http.StatusUnprocessableEntity, CodeInvalid, "addresses")
}

func TestClusterJoin(t *testing.T) {
	fm := &fakeMembership{contacts: 2}
	h := newHarness(t, withDeps(func(d *Deps) { d.Membership = fm }))
	r := h.do("POST", "/api/cluster/join", map[string]any{"addresses": []string{"10.0.0.2:7946", "fdaa::3", "::ffff:10.0.0.4"}})
	r.expect(t, http.StatusOK, "")
	var j apitypes.ClusterJoined
	r.json(t, &j)
	want := "10.0.0.2:7946,fdaa::3,10.0.0.4"
	if strings.Join(j.Addresses, ",") != want || j.Contacted != 2 {
		t.Fatalf("answer %+v, want addresses %s and 2 contacted", j, want)
	}
	if len(fm.joined) != 1 || strings.Join(fm.joined[0], ",") != want {
		t.Fatalf("joined %v", fm.joined)
	}

	fm.joinErr = ErrNoNodeAnswered
	h.do("POST", "/api/cluster/join", map[string]any{"addresses": []string{"10.0.0.9"}}).expect(t, http.StatusBadGateway, CodeJoinFailed)
	fm.joinErr = ErrLeft
	h.do("POST", "/api/cluster/join", map[string]any{"addresses": []string{"10.0.0.9"}}).expect(t, http.StatusConflict, CodeConflict)
	fm.joinErr = ErrStarting
	h.do("POST", "/api/cluster/join", map[string]any{"addresses": []string{"10.0.0.9"}}).expect(t, http.StatusServiceUnavailable, CodeUnavailable)
}

func TestClusterJoinLeaveWithoutGossip(t *testing.T) {
	h := newHarness(t)
	h.do("POST", "/api/cluster/join", map[string]any{"addresses": []string{"10.0.0.2"}}).expect(t, http.StatusConflict, CodeNotSupported)
	h.do("POST", "/api/cluster/leave", nil).expect(t, http.StatusConflict, CodeNotSupported)
	// Garbage is refused before "not supported".
	h.do("POST", "/api/cluster/join", map[string]any{"addresses": []string{"x"}}).expect(t, http.StatusUnprocessableEntity, CodeInvalid, "addresses[0]")
}

func TestClusterLeaveQuery(t *testing.T) {
	fm := &fakeMembership{flushed: true}
	h := newHarness(t, withDeps(func(d *Deps) { d.Membership = fm }))
	for _, q := range []string{"?wait=soon", "?wait=-1s", "?wait=10h", "?force=maybe", "?then=stop"} {
		h.do("POST", "/api/cluster/leave"+q, nil).expect(t, http.StatusBadRequest, CodeInvalid)
	}
	if len(fm.forced) != 0 || fm.State() != "" {
		t.Fatalf("a refused request started a leave: %v", fm.forced)
	}
}

func TestClusterLeaveRefusedWhileWritesAreMissing(t *testing.T) {
	fm := &fakeMembership{flushed: false}
	h := newHarness(t, withDeps(func(d *Deps) { d.Membership = fm }))
	r := h.do("POST", "/api/cluster/leave?wait=1s", nil)
	r.expect(t, http.StatusConflict, CodeConflict)
	e := r.errDetail(t)
	if len(e.Missing) != 1 || e.Missing[0].Name != "syd-1" || !strings.Contains(e.Message, "syd-1 (pending)") {
		t.Fatalf("error %+v", e)
	}
	// Still a member: writes are taken again and health is ok.
	h.createPool(map[string]any{"name": "after-refused-leave"})
	h.do("GET", "/api/health", nil).expect(t, http.StatusOK, "")

	// Forced: leaves, and says who misses what.
	r = h.do("POST", "/api/cluster/leave?wait=1s&force=true", nil)
	r.expect(t, http.StatusOK, "")
	var l apitypes.ClusterLeft
	r.json(t, &l)
	if l.State != "left" || l.Flushed || len(l.Missing) != 1 {
		t.Fatalf("forced leave %+v", l)
	}
}

func TestClusterLeave(t *testing.T) {
	fm := &fakeMembership{flushed: true, block: make(chan struct{})}
	h := newHarness(t, withDeps(func(d *Deps) { d.Membership = fm }))
	h.createPool(map[string]any{"name": "before"})
	done := make(chan response, 1)
	go func() { done <- h.do("POST", "/api/cluster/leave", nil) }()
	waitFor(t, "leaving", 10*time.Second, func() bool { return fm.State() == "leaving" })

	// While leaving: no writes, health says leaving, reads work.
	h.do("POST", "/api/pools", map[string]any{"name": "during"}).expect(t, http.StatusServiceUnavailable, CodeUnavailable)
	var hl apitypes.Health
	r := h.do("GET", "/api/health", nil)
	r.expect(t, http.StatusServiceUnavailable, "")
	r.json(t, &hl)
	if hl.Status != "leaving" || hl.Ready || !hl.Live {
		t.Fatalf("health while leaving: %+v", hl)
	}
	h.do("GET", "/api/pools/before", nil).expect(t, http.StatusOK, "")
	// A second leave is refused while the first runs.
	h.do("POST", "/api/cluster/leave", nil).expect(t, http.StatusConflict, CodeConflict)

	close(fm.block)
	select {
	case r = <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("leave did not answer")
	}
	r.expect(t, http.StatusOK, "")
	var l apitypes.ClusterLeft
	r.json(t, &l)
	if l.State != "left" || !l.Flushed || len(l.Applied) != 1 {
		t.Fatalf("leave %+v", l)
	}
	r = h.do("GET", "/api/health", nil)
	r.expect(t, http.StatusServiceUnavailable, "")
	r.json(t, &hl)
	if hl.Status != "left" || hl.Ready {
		t.Fatalf("health after leave: %+v", hl)
	}
	h.do("POST", "/api/pools", map[string]any{"name": "after"}).expect(t, http.StatusServiceUnavailable, CodeUnavailable)
	if _, err := h.store.GetPool(context.Background(), "during"); err == nil {
		t.Fatal("a write was stored while leaving")
	}
}

// A leave waits for writes in flight before its flush starts.
func TestWriteGateWaitsForWritesInFlight(t *testing.T) {
	var g writeGate
	if !g.enter() {
		t.Fatal("open gate refused a write")
	}
	closed := make(chan bool, 1)
	go func() { closed <- g.close(context.Background()) }()
	select {
	case <-closed:
		t.Fatal("gate closed with a write in flight")
	case <-time.After(200 * time.Millisecond):
	}
	if g.enter() {
		t.Fatal("a closing gate admitted a write")
	}
	g.exit()
	select {
	case ok := <-closed:
		if !ok {
			t.Fatal("close failed")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("close did not return after the last write ended")
	}
	ctx, cancel := context.WithCancel(context.Background())
	g.open()
	g.enter()
	cancel()
	if g.close(ctx) {
		t.Fatal("close returned true with a write in flight and ctx done")
	}
	g.exit()
	g.open()
	if !g.enter() {
		t.Fatal("reopened gate refused a write")
	}
	g.exit()
}

// A node still waiting for its first peer takes no writes, but can be
// joined: that is how an operator points it at its cluster.
func TestClusterJoinWhileNotReady(t *testing.T) {
	fm := &fakeMembership{contacts: 1}
	never := make(chan struct{})
	h := newHarness(t, withDeps(func(d *Deps) { d.Membership = fm; d.Ready = never }))
	h.do("POST", "/api/pools", map[string]any{"name": "early"}).expect(t, http.StatusServiceUnavailable, CodeUnavailable)
	h.do("POST", "/api/cluster/join", map[string]any{"addresses": []string{"10.0.0.2"}}).expect(t, http.StatusOK, "")
	if len(fm.joined) != 1 {
		t.Fatalf("joined %v", fm.joined)
	}
}
