package admin

import (
	"context"
	"fmt"
	"github.com/singularity-ng/singularity-edge/apitypes"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/singularity-ng/singularity-edge/pools"
	"github.com/singularity-ng/singularity-edge/storage"
)

func TestCreateBackend(t *testing.T) {
	h := newHarness(t)
	h.createPool(map[string]any{"name": "web"})

	r := h.do("POST", "/api/pools/web/backends", map[string]any{"url": "http://10.0.1.10:8080", "weight": 5, "region": "iad"})
	r.expect(t, http.StatusCreated, "")
	var b apitypes.Backend
	r.json(t, &b)
	if b.Host != "10.0.1.10" || b.Port != 8080 || b.Scheme != "http" || b.Weight != 5 || b.Region != "iad" || b.PoolName != "web" {
		t.Fatalf("backend %+v", b)
	}
	if b.URL != "http://10.0.1.10:8080" || !strings.HasPrefix(b.ID, "b-") {
		t.Fatalf("url %q id %q", b.URL, b.ID)
	}
	if loc := r.Header.Get("Location"); loc != "/api/pools/web/backends/"+b.ID {
		t.Fatalf("Location %q", loc)
	}
	if r.Header.Get("ETag") != apiETag(b.Version) || b.Version == (apitypes.Version{}) {
		t.Fatalf("ETag %q version %v", r.Header.Get("ETag"), b.Version)
	}
	if b.Healthy != nil || b.LocalSource != "none" || b.Observations == nil || len(b.Observations) != 0 {
		t.Fatalf("an unobserved backend shows health: %+v", b)
	}

	// Explicit fields, an id of our choosing, defaults from the scheme.
	b2 := h.createBackend("web", map[string]any{"id": "api-1", "host": "backend.internal", "scheme": "https", "ssl_verify": true})
	if b2.ID != "api-1" || b2.Port != 443 || b2.Weight != 1 || b2.URL != "https://backend.internal:443" || !b2.SSLVerify {
		t.Fatalf("backend %+v", b2)
	}
	b3 := h.createBackend("web", map[string]any{"url": "http://[::1]:9000"})
	if b3.Host != "::1" || b3.URL != "http://[::1]:9000" {
		t.Fatalf("ipv6 backend %+v", b3)
	}

	stored, err := h.store.GetBackend(context.Background(), b.ID)
	if err != nil || versionView(stored.Version) != b.Version {
		t.Fatalf("stored %+v %v", stored, err)
	}
}

var badBackendInputs = []struct {
	name   string
	pool   string
	body   string
	status int
	code   string
	field  string
}{
	{"malformed", "web", `{"url":`, 400, CodeInvalid, ""},
	{"unknown field", "web", `{"url":"http://a.test:1","pool":"web"}`, 400, CodeInvalid, "pool"},
	{"port as string", "web", `{"host":"a.test","port":"80"}`, 400, CodeInvalid, "port"},
	{"pool_name in body", "web", `{"url":"http://a.test:1","pool_name":"web"}`, 400, CodeInvalid, "pool_name"},
	{"url twice in two cases", "web", `{"url":"http://a.test:1","URL":"http://b.test:1"}`, 400, CodeInvalid, "URL"},
	{"url and host", "web", `{"url":"http://a.test:1","host":"b.test"}`, 422, CodeInvalid, "url"},
	{"bad url scheme", "web", `{"url":"ftp://a.test:21"}`, 422, CodeInvalid, "url"},
	{"url with path", "web", `{"url":"http://a.test:1/x"}`, 422, CodeInvalid, "url"},
	{"url port out of range", "web", `{"url":"http://a.test:70000"}`, 422, CodeInvalid, "url"},
	{"malformed host in url", "web", `{"url":"http://a..test:80"}`, 422, CodeInvalid, "url"},
	{"port out of range", "web", `{"host":"a.test","port":65536}`, 422, CodeInvalid, "port"},
	{"negative port", "web", `{"host":"a.test","port":-1}`, 422, CodeInvalid, "port"},
	{"malformed host", "web", `{"host":"a b"}`, 422, CodeInvalid, "host"},
	{"missing host", "web", `{"port":80}`, 422, CodeInvalid, "host"},
	{"bad scheme", "web", `{"host":"a.test","scheme":"gopher"}`, 422, CodeInvalid, "scheme"},
	{"weight too big", "web", `{"url":"http://a.test:1","weight":100000}`, 422, CodeInvalid, "weight"},
	{"bad region", "web", `{"url":"http://a.test:1","region":"US EAST"}`, 422, CodeInvalid, "region"},
	{"bad id", "web", `{"id":"-x","url":"http://a.test:1"}`, 422, CodeInvalid, "id"},
	{"missing pool", "nope", `{"url":"http://a.test:1"}`, 404, CodeNotFound, "pool_name"},
	{"duplicate address", "web", `{"url":"http://127.0.0.1:9001"}`, 409, CodeConflict, "url"},
	{"duplicate address explicit", "web", `{"host":"127.0.0.1","port":9001}`, 409, CodeConflict, "host"},
	{"duplicate id", "web", `{"id":"taken","url":"http://127.0.0.1:9999"}`, 409, CodeConflict, "id"},
}

func TestCreateBackendRejections(t *testing.T) {
	h := newHarness(t)
	h.createPool(map[string]any{"name": "web"})
	h.createPool(map[string]any{"name": "other"})
	h.createBackend("web", map[string]any{"url": "http://127.0.0.1:9001"})
	h.createBackend("other", map[string]any{"id": "taken", "url": "http://127.0.0.1:9002"})
	before := h.snapshot()
	for _, tc := range badBackendInputs {
		t.Run(tc.name, func(t *testing.T) {
			r := h.do("POST", "/api/pools/"+tc.pool+"/backends", tc.body)
			if tc.field != "" {
				r.expect(t, tc.status, tc.code, tc.field)
			} else {
				r.expect(t, tc.status, tc.code)
			}
		})
	}
	h.do("POST", "/api/pools/web/backends", `{"url":"http://a.test:1"}`, withContentType("")).expect(t, http.StatusUnsupportedMediaType, CodeUnsupportedMediaType)
	h.do("POST", "/api/pools/web/backends", "").expect(t, http.StatusBadRequest, CodeInvalid)
	h.assertUnchanged(before, "rejected backend creations")

	// The same address in another pool is fine.
	h.createBackend("other", map[string]any{"url": "http://127.0.0.1:9001"})
}

func TestGetListDeleteBackend(t *testing.T) {
	h := newHarness(t)
	h.createPool(map[string]any{"name": "web"})
	h.createPool(map[string]any{"name": "other"})
	var ids []string
	for i := 0; i < 3; i++ {
		ids = append(ids, h.createBackend("web", map[string]any{"id": fmt.Sprintf("w%d", i), "url": fmt.Sprintf("http://127.0.0.1:%d", 9000+i)}).ID)
	}
	h.createBackend("other", map[string]any{"id": "o1", "url": "http://127.0.0.1:9100"})

	// A pool's backends are listed by address, then id; the cursor is the
	// last one's address and id.
	h.createBackend("web", map[string]any{"id": "z0", "url": "http://127.0.0.1:8999"})
	var page apitypes.List[apitypes.Backend]
	h.do("GET", "/api/pools/web/backends?limit=2", nil).json(t, &page)
	if len(page.Items) != 2 || page.Items[0].ID != "z0" || page.Items[1].ID != "w0" || page.Next != "http://127.0.0.1:9000 w0" {
		t.Fatalf("page %+v next %q", page.Items, page.Next)
	}
	h.do("GET", "/api/pools/web/backends?limit=2&after="+url.QueryEscape(page.Next), nil).json(t, &page)
	if len(page.Items) != 2 || page.Items[0].ID != "w1" || page.Items[1].ID != "w2" || page.Next != "" {
		t.Fatalf("page 2 %+v next %q", page.Items, page.Next)
	}
	for _, after := range []string{"w1", "http://127.0.0.1:9001", " w1", "http://127.0.0.1:9001 "} {
		h.do("GET", "/api/pools/web/backends?after="+url.QueryEscape(after), nil).expect(t, http.StatusBadRequest, CodeInvalid, "after")
	}
	h.do("DELETE", "/api/pools/web/backends/z0", nil).expect(t, http.StatusNoContent, "")
	h.do("GET", "/api/pools/nope/backends", nil).expect(t, http.StatusNotFound, CodeNotFound, "pool_name")
	h.do("GET", "/api/pools/web/backends?limit=x", nil).expect(t, http.StatusBadRequest, CodeInvalid, "limit")

	r := h.do("GET", "/api/pools/web/backends/w1", nil)
	r.expect(t, http.StatusOK, "")
	if r.Header.Get("ETag") == "" {
		t.Fatal("no ETag")
	}
	// A backend is addressed under its own pool only.
	h.do("GET", "/api/pools/other/backends/w1", nil).expect(t, http.StatusNotFound, CodeNotFound, "id")
	h.do("GET", "/api/pools/web/backends/nope", nil).expect(t, http.StatusNotFound, CodeNotFound, "id")

	before := h.snapshot()
	h.do("DELETE", "/api/pools/other/backends/w1", nil).expect(t, http.StatusNotFound, CodeNotFound, "id")
	h.do("DELETE", "/api/pools/web/backends/nope", nil).expect(t, http.StatusNotFound, CodeNotFound, "id")
	h.do("DELETE", "/api/pools/web/backends/w1", nil, withHeader("If-Match", `"1-x"`)).expect(t, http.StatusPreconditionFailed, CodePreconditionFailed)
	h.assertUnchanged(before, "rejected backend deletes")

	h.do("DELETE", "/api/pools/web/backends/w1", nil).expect(t, http.StatusNoContent, "")
	h.do("GET", "/api/pools/web/backends/w1", nil).expect(t, http.StatusNotFound, CodeNotFound)
	h.do("GET", "/api/pools/web/backends", nil).json(t, &page)
	if len(page.Items) != len(ids)-1 {
		t.Fatalf("after delete: %d backends", len(page.Items))
	}
}

func TestPatchBackend(t *testing.T) {
	h := newHarness(t)
	h.createPool(map[string]any{"name": "web"})
	b := h.createBackend("web", map[string]any{"id": "w1", "url": "http://127.0.0.1:9001", "weight": 3, "metadata": map[string]string{"a": "1"}})
	h.createBackend("web", map[string]any{"id": "w2", "url": "http://127.0.0.1:9002"})

	r := h.do("PATCH", "/api/pools/web/backends/w1", `{"weight":7,"draining":true}`, withHeader("If-Match", apiETag(b.Version)))
	r.expect(t, http.StatusOK, "")
	var got apitypes.Backend
	r.json(t, &got)
	if got.Weight != 7 || !got.Draining || got.Host != "127.0.0.1" || got.Port != 9001 || got.Metadata["a"] != "1" {
		t.Fatalf("patched %+v", got)
	}
	if !got.InsertedAt.Equal(b.InsertedAt) {
		t.Fatal("inserted_at changed")
	}

	// url replaces host/port/scheme.
	h.do("PATCH", "/api/pools/web/backends/w1", `{"url":"https://127.0.0.1:9443"}`).json(t, &got)
	if got.Scheme != "https" || got.Port != 9443 {
		t.Fatalf("after url patch %+v", got)
	}
	// host alone keeps port and scheme.
	h.do("PATCH", "/api/pools/web/backends/w1", `{"host":"localhost"}`).json(t, &got)
	if got.Host != "localhost" || got.Port != 9443 || got.Scheme != "https" {
		t.Fatalf("after host patch %+v", got)
	}

	before := h.snapshot()
	for _, tc := range []struct {
		name   string
		id     string
		body   string
		status int
		code   string
		field  string
	}{
		{"stale If-Match", "w1", `{"weight":1}`, 412, CodePreconditionFailed, ""},
		{"change id", "w1", `{"id":"w9"}`, 422, CodeInvalid, "id"},
		{"url and port", "w1", `{"url":"http://a.test:1","port":2}`, 422, CodeInvalid, "url"},
		{"empty url", "w1", `{"url":""}`, 422, CodeInvalid, "url"},
		{"port too big", "w1", `{"port":65536}`, 422, CodeInvalid, "port"},
		{"duplicate address", "w1", `{"url":"http://127.0.0.1:9002"}`, 409, CodeConflict, "url"},
		{"unknown field", "w1", `{"weigth":2}`, 400, CodeInvalid, "weigth"},
		// encoding/json leaves the target as it was for null: this was an
		// empty patch, committed as a new version.
		{"null body", "w1", `null`, 400, CodeInvalid, ""},
		{"field in another case", "w1", `{"Weight":2}`, 400, CodeInvalid, "Weight"},
		{"missing", "nope", `{"weight":2}`, 404, CodeNotFound, "id"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var opts []reqOption
			if tc.name == "stale If-Match" {
				opts = append(opts, withHeader("If-Match", apiETag(b.Version)))
			}
			r := h.do("PATCH", "/api/pools/web/backends/"+tc.id, tc.body, opts...)
			if tc.field != "" {
				r.expect(t, tc.status, tc.code, tc.field)
			} else {
				r.expect(t, tc.status, tc.code)
			}
		})
	}
	h.do("PATCH", "/api/pools/other/backends/w1", `{"weight":2}`).expect(t, http.StatusNotFound, CodeNotFound, "id")
	h.assertUnchanged(before, "rejected backend PATCHes")
}

// TestBackendObservations: the local view comes from this node's stored
// observation, and every node's observation is listed beside it, here one
// replicated from a second store through the change-set path.
func TestBackendObservations(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	h.createPool(map[string]any{"name": "web"})
	b := h.createBackend("web", map[string]any{"url": "http://127.0.0.1:9001"})

	now := time.Now().UTC().Truncate(time.Millisecond)
	err := h.store.PutObservations(ctx, []storage.Observation{{
		NodeID: h.store.NodeID(), BackendID: b.ID, PoolName: "web", Region: "iad", Healthy: true,
		CurrentConnections: 2, TotalRequests: 40, LastCheck: now, LatencyAvg: 1500 * time.Microsecond,
	}})
	if err != nil {
		t.Fatal(err)
	}

	// A second node in another region observes the backend as down.
	remote := openStore(t, testEncryptionKey())
	if err := remote.PutObservations(ctx, []storage.Observation{{
		NodeID: remote.NodeID(), BackendID: b.ID, PoolName: "web", Region: "syd", Healthy: false,
		TotalRequests: 5, TotalFailures: 5, LastCheck: now, LastError: "connect: connection refused",
	}}); err != nil {
		t.Fatal(err)
	}
	ans, err := remote.ChangeSets(ctx, remote.NodeID(), remote.Bookkeeping()[remote.NodeID()], 0)
	if err != nil || len(ans.Sets) == 0 {
		t.Fatalf("remote change sets: %v %d", err, len(ans.Sets))
	}
	if _, err := h.store.ApplyAnswer(ctx, ans); err != nil {
		t.Fatal(err)
	}

	var got apitypes.Backend
	h.do("GET", "/api/pools/web/backends/"+b.ID, nil).json(t, &got)
	if got.Healthy == nil || !*got.Healthy || got.CurrentConnections != 2 || got.TotalRequests != 40 || got.LocalSource != "stored" {
		t.Fatalf("local view %+v", got)
	}
	if got.LastCheck == nil || !got.LastCheck.Equal(now) {
		t.Fatalf("last_check %v", got.LastCheck)
	}
	if len(got.Observations) != 2 {
		t.Fatalf("observations %+v", got.Observations)
	}
	iad, syd := got.Observations[0], got.Observations[1]
	if iad.Region != "iad" || !iad.Healthy || iad.NodeID != h.store.NodeID() || iad.LatencyAvgMS != 1.5 {
		t.Fatalf("iad %+v", iad)
	}
	if syd.Region != "syd" || syd.Healthy || syd.NodeID != remote.NodeID() || syd.LastError == "" {
		t.Fatalf("syd %+v", syd)
	}

	wantRegions := []apitypes.RegionHealth{{Region: "iad", State: "healthy", Nodes: 1, Healthy: 1}, {Region: "syd", State: "unhealthy", Nodes: 1}}
	if fmt.Sprint(got.Regions) != fmt.Sprint(wantRegions) {
		t.Fatalf("regions %+v, want %+v", got.Regions, wantRegions)
	}

	// A second node in syd reaches it: syd is mixed, in the list too.
	remote2 := openStore(t, testEncryptionKey())
	if err := remote2.PutObservations(ctx, []storage.Observation{{
		NodeID: remote2.NodeID(), BackendID: b.ID, PoolName: "web", Region: "syd", Healthy: true, LastCheck: now,
	}}); err != nil {
		t.Fatal(err)
	}
	ans, err = remote2.ChangeSets(ctx, remote2.NodeID(), remote2.Bookkeeping()[remote2.NodeID()], 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.store.ApplyAnswer(ctx, ans); err != nil {
		t.Fatal(err)
	}
	var page apitypes.List[apitypes.Backend]
	h.do("GET", "/api/pools/web/backends", nil).json(t, &page)
	if len(page.Items) != 1 || len(page.Items[0].Observations) != 3 {
		t.Fatalf("list %+v", page.Items)
	}
	wantRegions = []apitypes.RegionHealth{{Region: "iad", State: "healthy", Nodes: 1, Healthy: 1}, {Region: "syd", State: "mixed", Nodes: 2, Healthy: 1}}
	if fmt.Sprint(page.Items[0].Regions) != fmt.Sprint(wantRegions) {
		t.Fatalf("list regions %+v, want %+v", page.Items[0].Regions, wantRegions)
	}
}

// The live view of this node replaces its stored observation in the
// region summary; a node with no observation and no live view adds
// nothing.
func TestRegionHealth(t *testing.T) {
	yes, no := true, false
	obs := func(node, region string, healthy bool) apitypes.Observation {
		return apitypes.Observation{NodeID: node, Region: region, Healthy: healthy}
	}
	for _, tt := range []struct {
		name string
		b    apitypes.Backend
		want string
	}{
		{"none", apitypes.Backend{LocalSource: "none"}, "[]"},
		{"stored only", apitypes.Backend{LocalSource: "stored", Healthy: &yes, Observations: []apitypes.Observation{obs("me", "iad", true)}},
			"[{iad healthy 1 1}]"},
		{"live replaces stored", apitypes.Backend{LocalSource: "live", Healthy: &no,
			Observations: []apitypes.Observation{obs("me", "iad", true), obs("other", "iad", true)}}, "[{iad mixed 2 1}]"},
		{"live without a stored row", apitypes.Backend{LocalSource: "live", Healthy: &yes,
			Observations: []apitypes.Observation{obs("x", "syd", false), obs("y", "ams", false)}}, "[{ams unhealthy 1 0} {iad healthy 1 1} {syd unhealthy 1 0}]"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := fmt.Sprint(regionHealth(tt.b, "me", "iad")); got != tt.want {
				t.Fatalf("got %s, want %s", got, tt.want)
			}
		})
	}
}

// TestLiveViewFromManager runs a real pools.Manager with HTTP health checks
// against a real backend listener: the API's local view follows the live
// state, also when the backend goes away.
func TestLiveViewFromManager(t *testing.T) {
	st := openStore(t, testEncryptionKey())
	backend := newTestBackend(t)
	mgr := startManager(t, st)
	h := newHarnessOn(t, st, withDeps(func(d *Deps) { d.Pools = mgr; d.Ready = mgr.Ready() }))

	h.createPool(map[string]any{"name": "live", "health_check_interval": 1000,
		"health_check": map[string]any{"type": "http", "path": "/", "timeout": 500, "rise": 1, "fall": 1}})
	b := h.createBackend("live", map[string]any{"url": "http://" + backend.addr()})

	backendHealth := func() (bool, string) {
		var got apitypes.Backend
		h.do("GET", "/api/pools/live/backends/"+b.ID, nil).json(t, &got)
		return got.Healthy != nil && *got.Healthy, got.LocalSource
	}
	waitFor(t, "backend healthy in the live view", 15*time.Second, func() bool {
		healthy, src := backendHealth()
		return healthy && src == "live"
	})
	var p apitypes.Pool
	h.do("GET", "/api/pools/live", nil).json(t, &p)
	if p.Stats.Source != "live" || p.Stats.TotalBackends != 1 || p.Stats.HealthyBackends != 1 {
		t.Fatalf("pool stats %+v", p.Stats)
	}

	backend.close()
	waitFor(t, "backend unhealthy in the live view", 15*time.Second, func() bool {
		healthy, _ := backendHealth()
		return !healthy
	})
	h.do("GET", "/api/pools/live", nil).json(t, &p)
	if p.Stats.UnhealthyBackends != 1 || p.Stats.HealthyBackends != 0 {
		t.Fatalf("pool stats after close %+v", p.Stats)
	}
}

func startManager(t testing.TB, st *storage.Store) *pools.Manager {
	t.Helper()
	cfg := pools.DefaultConfig()
	cfg.NodeID = st.NodeID()
	cfg.Region = "iad"
	cfg.ObservationInterval = 200 * time.Millisecond
	mgr := pools.NewManager(cfg, st)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("manager: %v", err)
		}
	})
	select {
	case <-mgr.Ready():
	case err := <-done:
		t.Fatalf("manager stopped: %v", err)
	case <-time.After(15 * time.Second):
		t.Fatal("manager not ready")
	}
	return mgr
}

// testBackend is a real HTTP server on 127.0.0.1 that a test can stop.
type testBackend struct {
	srv *httptest.Server
}

func newTestBackend(t testing.TB) *testBackend {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		_, _ = w.Write([]byte("ok"))
	}))
	t.Cleanup(srv.Close)
	return &testBackend{srv: srv}
}

func (b *testBackend) addr() string { return b.srv.Listener.Addr().String() }

func (b *testBackend) close() { b.srv.Close() }
