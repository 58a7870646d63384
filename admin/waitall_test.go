package admin

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/singularity-ng/singularity-edge/apitypes"
	"github.com/singularity-ng/singularity-edge/certs"
	"github.com/singularity-ng/singularity-edge/storage"
)

// fakeReplication records the commits waited for and answers with missing
// and err; block, when set, holds every wait until it is closed or the
// wait's context ends.
type fakeReplication struct {
	mu      sync.Mutex
	seqs    []uint64
	missing []apitypes.ClusterMissing
	err     error
	entered chan struct{}
	block   chan struct{}
}

func (f *fakeReplication) WaitApplied(ctx context.Context, c storage.Commit) ([]apitypes.ClusterMissing, error) {
	f.mu.Lock()
	f.seqs = append(f.seqs, c.Version.Seq)
	missing, err, entered, block := f.missing, f.err, f.entered, f.block
	f.mu.Unlock()
	if entered != nil {
		entered <- struct{}{}
	}
	if block != nil {
		select {
		case <-block:
		case <-ctx.Done():
			return missing, errors.New("not every alive member applied the write in time")
		}
	}
	return missing, err
}

func (f *fakeReplication) waited() []uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]uint64(nil), f.seqs...)
}

// waitAllWrites is every write route that takes ?wait_all=, as a request
// that succeeds on waitAllFixture, with its success status.
func waitAllWrites(t *testing.T, h *harness) []struct {
	name, method, path string
	body               any
	status             int
} {
	ca := newTestCA(t)
	c := ca.leaf(t, time.Now().Add(90*24*time.Hour), "up.example.test")
	c2 := ca.leaf(t, time.Now().Add(90*24*time.Hour), "up2.example.test")
	return []struct {
		name, method, path string
		body               any
		status             int
	}{
		{"create pool", "POST", "/api/pools", `{"name":"web"}`, 201},
		{"update pool", "PATCH", "/api/pools/web", `{"algorithm":"random"}`, 200},
		{"create backend", "POST", "/api/pools/web/backends", `{"id":"b1","url":"http://10.0.0.1:80"}`, 201},
		{"create backends", "POST", "/api/pools/web/backends", `[{"id":"b2","url":"http://10.0.0.2:80"}]`, 201},
		{"update backend", "PATCH", "/api/pools/web/backends/b1", `{"weight":5}`, 200},
		{"delete backend", "DELETE", "/api/pools/web/backends/b1", nil, 204},
		{"delete pool", "DELETE", "/api/pools/web?cascade=true", nil, 204},
		{"upload certificate", "POST", "/api/certificates/upload", map[string]string{"certificate": c.CertPEM, "private_key": c.KeyPEM}, 201},
		{"upload certificate by create", "POST", "/api/certificates", map[string]string{"certificate": c2.CertPEM, "private_key": c2.KeyPEM}, 201},
	}
}

// TestWaitAllWaitsForTheWritesCommit: every write route waits for the
// commit it made, and answers as usual when every alive member applied it
// (members suspect or dead at the call are named, not waited for).
func TestWaitAllWaitsForTheWritesCommit(t *testing.T) {
	fr := &fakeReplication{missing: []apitypes.ClusterMissing{{Name: "m3", NodeID: "n3", State: "suspect", Reason: "suspect"}}}
	h := newHarness(t, withDeps(func(d *Deps) { d.Replication = fr }))
	writes := waitAllWrites(t, h)
	var certIDs []string
	for i, w := range writes {
		before := h.store.LastIndex()
		r := h.do(w.method, w.path+sep(w.path)+"wait_all=5s", w.body)
		r.expect(t, w.status, "")
		if h.store.LastIndex() == before {
			t.Fatalf("%s: nothing committed", w.name)
		}
		got := fr.waited()
		if len(got) != i+1 {
			t.Fatalf("%s: waited %d times in all, want %d", w.name, len(got), i+1)
		}
		if r.Status != http.StatusNoContent {
			var v struct {
				ID      string           `json:"id"`
				Version apitypes.Version `json:"version"`
				Items   []struct {
					Version apitypes.Version `json:"version"`
				} `json:"items"`
			}
			r.json(t, &v)
			seq := v.Version.Seq
			if len(v.Items) > 0 {
				seq = v.Items[0].Version.Seq
			}
			if got[i] != seq {
				t.Errorf("%s: waited for seq %d, the write's version has seq %d", w.name, got[i], seq)
			}
			if strings.Contains(w.path, "certificates") {
				certIDs = append(certIDs, v.ID)
			}
		}
	}
	for _, id := range certIDs {
		h.do("DELETE", "/api/certificates/"+id+"?wait_all=5s", nil).expect(t, http.StatusNoContent, "")
	}
	if n := len(fr.waited()); n != len(writes)+len(certIDs) {
		t.Fatalf("waited %d times, want %d", n, len(writes)+len(certIDs))
	}
	// Without the parameter nothing waits.
	h.do("POST", "/api/pools", `{"name":"nowait"}`).expect(t, http.StatusCreated, "")
	if n := len(fr.waited()); n != len(writes)+len(certIDs) {
		t.Fatalf("a write without wait_all waited")
	}
}

// TestWaitAllNamesMembersThatDidNotApply: an alive member that did not
// apply the write within wait_all makes a 504 not_applied that says the
// write is stored and names the member; the write stays (a client must not
// repeat it).
func TestWaitAllNamesMembersThatDidNotApply(t *testing.T) {
	fr := &fakeReplication{
		missing: []apitypes.ClusterMissing{
			{Name: "m2", NodeID: "n2", State: "alive", Reason: "pending"},
			{Name: "m3", NodeID: "n3", State: "dead", Reason: "dead"},
		},
		err: errors.New("not every alive member applied the write in time"),
	}
	h := newHarness(t, withDeps(func(d *Deps) { d.Replication = fr }))
	r := h.do("POST", "/api/pools?wait_all=2s", `{"name":"web"}`)
	r.expect(t, http.StatusGatewayTimeout, apitypes.CodeNotApplied)
	e := r.errDetail(t)
	for _, want := range []string{`pool "web" is stored`, "m2 (pending)", "do not repeat"} {
		if !strings.Contains(e.Message, want) {
			t.Errorf("message %q lacks %q", e.Message, want)
		}
	}
	if strings.Contains(e.Message, "m3") {
		t.Errorf("message %q blames m3, which was dead at the call and not waited for", e.Message)
	}
	if len(e.Missing) != 2 || e.Missing[0].Name != "m2" || e.Missing[0].Reason != "pending" {
		t.Errorf("error.missing %+v, want m2 pending and m3 dead", e.Missing)
	}
	if _, err := h.store.GetPool(context.Background(), "web"); err != nil {
		t.Fatalf("the pool is not stored after a 504 not_applied: %v", err)
	}

	// An alive member that is reported without a timeout (refused for its
	// encryption key: never waited for) fails the wait too: it does not
	// hold the write.
	fr.mu.Lock()
	fr.missing = []apitypes.ClusterMissing{{Name: "m4", NodeID: "n4", State: "alive", Reason: "encryption key differs"}}
	fr.err = nil
	fr.mu.Unlock()
	r = h.do("DELETE", "/api/pools/web?wait_all=2s", nil)
	r.expect(t, http.StatusGatewayTimeout, apitypes.CodeNotApplied)
	if !strings.Contains(r.errDetail(t).Message, "m4 (encryption key differs)") {
		t.Errorf("message %q does not name m4", r.errDetail(t).Message)
	}
	if _, err := h.store.GetPool(context.Background(), "web"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("the pool is still there after its delete answered 504: %v", err)
	}
}

// TestWaitAllRefusals: a bad wait_all is a 400 before anything is stored
// or waited for; wait_all means nothing to an ACME request and wait
// nothing to an upload, so each is refused where the other belongs.
func TestWaitAllRefusals(t *testing.T) {
	fr := &fakeReplication{}
	h := newHarness(t, withDeps(func(d *Deps) { d.Replication = fr }))
	h.createPool(map[string]any{"name": "web"})
	h.createBackend("web", map[string]any{"id": "b1", "url": "http://10.0.0.1:80"})
	c := newTestCA(t).leaf(t, time.Now().Add(90*24*time.Hour), "up.example.test")
	upload := map[string]string{"certificate": c.CertPEM, "private_key": c.KeyPEM}
	before := h.snapshot()
	for _, tc := range []struct {
		method, path string
		body         any
		field        string
	}{
		{"POST", "/api/pools?wait_all=abc", `{"name":"new"}`, "wait_all"},
		{"POST", "/api/pools?wait_all=0s", `{"name":"new"}`, "wait_all"},
		{"POST", "/api/pools?wait_all=-1s", `{"name":"new"}`, "wait_all"},
		{"POST", "/api/pools?wait_all=10m", `{"name":"new"}`, "wait_all"},
		{"POST", "/api/pools?wait_all=10", `{"name":"new"}`, "wait_all"},
		{"PATCH", "/api/pools/web?wait_all=x", `{"algorithm":"random"}`, "wait_all"},
		{"DELETE", "/api/pools/web?cascade=true&wait_all=x", nil, "wait_all"},
		{"POST", "/api/pools/web/backends?wait_all=x", `{"url":"http://10.0.0.2:80"}`, "wait_all"},
		{"PATCH", "/api/pools/web/backends/b1?wait_all=x", `{"weight":3}`, "wait_all"},
		{"DELETE", "/api/pools/web/backends/b1?wait_all=x", nil, "wait_all"},
		{"POST", "/api/certificates/upload?wait_all=x", upload, "wait_all"},
		{"POST", "/api/certificates?wait_all=x", upload, "wait_all"},
		{"POST", "/api/certificates?wait=10s", upload, "wait"},
		{"POST", "/api/certificates?wait_all=5s", `{"domain":"acme.example.test"}`, "wait_all"},
		{"DELETE", "/api/certificates/nope?wait_all=x", nil, "wait_all"},
	} {
		r := h.do(tc.method, tc.path, tc.body)
		r.expect(t, http.StatusBadRequest, CodeInvalid, tc.field)
	}
	h.assertUnchanged(before, "writes with a bad wait_all")
	if n := len(fr.waited()); n != 0 {
		t.Fatalf("refused requests waited %d times", n)
	}
}

// TestWaitAllAlone: an agent without replication has no one to wait for.
func TestWaitAllAlone(t *testing.T) {
	h := newHarness(t)
	h.do("POST", "/api/pools?wait_all=1s", `{"name":"web"}`).expect(t, http.StatusCreated, "")
}

// TestWaitAllLetsALeaveClose: a write waiting for the cluster has
// committed, so it no longer holds the write gate a cluster leave closes
// (the leave's flush covers it); otherwise a leave would time out behind
// a client's wait.
func TestWaitAllLetsALeaveClose(t *testing.T) {
	fr := &fakeReplication{entered: make(chan struct{}, 1), block: make(chan struct{})}
	h := newHarness(t, withDeps(func(d *Deps) { d.Replication = fr }))
	done := make(chan response, 1)
	go func() { done <- h.do("POST", "/api/pools?wait_all=30s", `{"name":"web"}`) }()
	select {
	case <-fr.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the write did not start waiting")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	closed := h.srv.writes.close(ctx)
	h.srv.writes.open()
	close(fr.block)
	select {
	case r := <-done:
		r.expect(t, http.StatusCreated, "")
	case <-time.After(10 * time.Second):
		t.Fatal("the write did not answer")
	}
	if !closed {
		t.Fatal("the write gate did not close while a committed write waited for the cluster")
	}
}

func sep(path string) string {
	if strings.Contains(path, "?") {
		return "&"
	}
	return "?"
}

// slowBodyThroughTheServer sends body to the server's own http.Server (its
// timeouts, which the harness's httptest server lacks), the first byte at
// once and the rest after pause, and returns the answer.
func slowBodyThroughTheServer(t *testing.T, h *harness, path, body string, pause time.Duration) (int, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- h.srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-served:
		case <-time.After(20 * time.Second):
			t.Error("the server did not stop")
		}
	})
	pr, pw := io.Pipe()
	go func() {
		_, _ = pw.Write([]byte(body[:1]))
		time.Sleep(pause)
		_, _ = pw.Write([]byte(body[1:]))
		_ = pw.Close()
	}()
	req, err := http.NewRequest("POST", "http://"+ln.Addr().String()+path, pr)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+testToken)
	req.Header.Set("Content-Type", "application/json")
	res, err := h.client.Do(req)
	if err != nil {
		t.Fatalf("POST %s: no answer: %v", path, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

// TestWaitsAnswerAfterASlowBody: the server's write timeout runs from the
// request's headers, so a body that took its time and then a full wait
// (wait_all, an ACME order's wait) used to pass it, and the client got a
// closed connection instead of the answer.
func TestWaitsAnswerAfterASlowBody(t *testing.T) {
	// WriteTimeout 7s: waits of at most 2s; the body takes 6s.
	slowServer := withConfig(func(c *Config) { c.WriteTimeout = 7 * time.Second })
	t.Run("wait_all", func(t *testing.T) {
		fr := &fakeReplication{block: make(chan struct{}),
			missing: []apitypes.ClusterMissing{{Name: "m2", NodeID: "n2", State: "alive", Reason: "pending"}}}
		h := newHarness(t, withDeps(func(d *Deps) { d.Replication = fr }), slowServer)
		status, body := slowBodyThroughTheServer(t, h, "/api/pools?wait_all=2s", `{"name":"slow"}`, 6*time.Second)
		if status != http.StatusGatewayTimeout || !strings.Contains(body, "m2 (pending)") {
			t.Fatalf("status %d %s, want 504 naming m2", status, body)
		}
	})
	t.Run("ACME wait", func(t *testing.T) {
		h := newHarness(t, withDeps(func(d *Deps) { d.ACME = stuckACME{} }), slowServer)
		status, body := slowBodyThroughTheServer(t, h, "/api/certificates?wait=2s", `{"domain":"slow.example.test"}`, 6*time.Second)
		if status != http.StatusAccepted {
			t.Fatalf("status %d %s, want 202 (the order still runs)", status, body)
		}
	})
}

// stuckACME is a CA that never finishes an order.
type stuckACME struct{}

func (stuckACME) Obtain(ctx context.Context, _ []string, _ string) (storage.Certificate, error) {
	select {
	case <-ctx.Done():
	case <-time.After(20 * time.Second): // past every wait of the test
	}
	return storage.Certificate{}, errors.New("the order did not finish")
}

func (stuckACME) Status(context.Context, string) (certs.Status, error) {
	return certs.Status{}, storage.ErrNotFound
}

func (stuckACME) CheckProfile(context.Context, string) error { return nil }
