package admin

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"github.com/singularity-ng/singularity-edge/apitypes"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/singularity-ng/singularity-edge/pools"
	"github.com/singularity-ng/singularity-edge/storage"
)

func TestCreatePool(t *testing.T) {
	h := newHarness(t)
	r := h.do("POST", "/api/pools", map[string]any{
		"name":                  "web",
		"algorithm":             "least_connections",
		"ssl_mode":              "flexible",
		"ssl_domain":            "example.test",
		"hosts":                 []string{"www.example.test", "*.apps.example.test"},
		"health_check_interval": 5000,
		"health_check":          map[string]any{"type": "http", "path": "/healthz", "timeout": 1500, "cooldown": 20000},
		"metadata":              map[string]string{"team": "edge"},
	})
	r.expect(t, http.StatusCreated, "")
	if loc := r.Header.Get("Location"); loc != "/api/pools/web" {
		t.Fatalf("Location %q", loc)
	}
	var p apitypes.Pool
	r.json(t, &p)
	if p.Name != "web" || p.SSLMode != "flexible" || p.SSLDomain != "example.test" || p.Algorithm != "least_connections" {
		t.Fatalf("not stored as sent: %+v", p)
	}
	if p.HealthCheckInterval != 5000 || p.HealthCheck.Timeout != 1500 || p.HealthCheck.Cooldown != 20000 || p.HealthCheck.Rise != 2 {
		t.Fatalf("durations or defaults wrong: %+v", p.HealthCheck)
	}
	if p.Version == (apitypes.Version{}) || p.InsertedAt.IsZero() {
		t.Fatalf("no version or timestamps: %+v", p)
	}
	if et := r.Header.Get("ETag"); et != apiETag(p.Version) {
		t.Fatalf("ETag %q, version %v", et, p.Version)
	}
	if p.Stats.TotalBackends != 0 || p.Stats.Source == "" {
		t.Fatalf("stats %+v", p.Stats)
	}
	stored, err := h.store.GetPool(context.Background(), "web")
	if err != nil {
		t.Fatal(err)
	}
	if stored.HealthCheckInterval != 5*time.Second || stored.HealthCheck.Timeout != 1500*time.Millisecond {
		t.Fatalf("stored durations %v %v", stored.HealthCheckInterval, stored.HealthCheck.Timeout)
	}
	if versionView(stored.Version) != p.Version {
		t.Fatalf("response version %v, stored %v", p.Version, stored.Version)
	}

	// Defaults for a minimal pool; the JSON duration is milliseconds.
	p2 := h.createPool(map[string]any{"name": "api"})
	if p2.Algorithm != "round_robin" || p2.SSLMode != "off" || p2.HealthCheckInterval != 10000 || p2.HealthCheck.Timeout != 2000 {
		t.Fatalf("defaults: %+v", p2)
	}
	var raw map[string]any
	h.do("GET", "/api/pools/api", nil).json(t, &raw)
	if raw["health_check_interval"] != float64(10000) {
		t.Fatalf("health_check_interval in JSON: %v", raw["health_check_interval"])
	}
	for _, k := range []string{"name", "algorithm", "ssl_mode", "ssl_domain", "ssl_cert_id", "hosts", "validate_backend_cert", "health_check", "metadata", "inserted_at", "updated_at", "version", "stats"} {
		if _, ok := raw[k]; !ok {
			t.Errorf("pool JSON lacks %q", k)
		}
	}
}

// badPoolInputs is the table of rejected pool bodies: the exact status,
// code and field for each. 400 = the body cannot be read into a pool;
// 422 = it can, but a value is not acceptable.
var badPoolInputs = []struct {
	name   string
	body   string
	status int
	field  string
}{
	{"malformed", `{"name": "x",`, 400, ""},
	{"not an object", `["web"]`, 400, ""},
	{"unknown field", `{"name":"web","algoritm":"random"}`, 400, "algoritm"},
	{"wrong type", `{"name":"web","health_check_interval":"10s"}`, 400, "health_check_interval"},
	{"wrong nested type", `{"name":"web","health_check":{"rise":"two"}}`, 400, "health_check.rise"},
	{"trailing data", `{"name":"web"} {"name":"x"}`, 400, ""},
	{"name twice", `{"name":"web","name":"other"}`, 400, "name"},
	{"nested field twice", `{"name":"other","health_check":{"rise":2,"rise":3}}`, 400, "health_check.rise"},
	// encoding/json matches names without regard to case: "NAME" was no
	// repeat to it, and pool other was created.
	{"name twice in two cases", `{"name":"web","NAME":"other"}`, 400, "NAME"},
	{"name in another case", `{"Name":"other"}`, 400, "Name"},
	// Inside an Optional, encoding/json did not refuse unknown fields.
	{"unknown nested field", `{"name":"other","health_check":{"rise":2,"riseee":3}}`, 400, "health_check.riseee"},
	{"nested field in another case", `{"name":"other","health_check":{"Rise":3}}`, 400, "health_check.Rise"},
	{"missing name", `{}`, 422, "name"},
	{"bad name", `{"name":"-web"}`, 422, "name"},
	{"unknown algorithm", `{"name":"web","algorithm":"fastest"}`, 422, "algorithm"},
	{"unknown ssl mode", `{"name":"web","ssl_mode":"sometimes"}`, 422, "ssl_mode"},
	{"bad ssl domain", `{"name":"web","ssl_domain":"exa mple.com"}`, 422, "ssl_domain"},
	{"bad host", `{"name":"web","hosts":["a..b"]}`, 422, "hosts"},
	{"interval too short", `{"name":"web","health_check_interval":10}`, 422, "health_check_interval"},
	{"negative interval", `{"name":"web","health_check_interval":-1}`, 422, "health_check_interval"},
	{"huge interval", `{"name":"web","health_check_interval":9223372036854775807}`, 422, "health_check_interval"},
	{"timeout over interval", `{"name":"web","health_check_interval":2000,"health_check":{"timeout":5000}}`, 422, "health_check.timeout"},
	{"bad check type", `{"name":"web","health_check":{"type":"icmp"}}`, 422, "health_check.type"},
	{"bad rise", `{"name":"web","health_check":{"rise":99}}`, 422, "health_check.rise"},
	{"hash_on without hashing", `{"name":"web","hash_on":"client_ip"}`, 422, "hash_on"},
	{"bad sticky cookie", `{"name":"web","sticky_cookie":"a b"}`, 422, "sticky_cookie"},
	{"missing certificate", `{"name":"web","ssl_mode":"flexible","ssl_domain":"web.test","ssl_cert_id":"nope"}`, 422, "ssl_cert_id"},
	{"bad metadata", `{"name":"web","metadata":{"":"x"}}`, 422, "metadata"},
}

func TestCreatePoolRejections(t *testing.T) {
	h := newHarness(t)
	h.createPool(map[string]any{"name": "existing"})
	before := h.snapshot()
	for _, tc := range badPoolInputs {
		t.Run(tc.name, func(t *testing.T) {
			r := h.do("POST", "/api/pools", tc.body)
			if tc.field == "" {
				r.expect(t, tc.status, CodeInvalid)
			} else {
				r.expect(t, tc.status, CodeInvalid, tc.field)
			}
			if tc.name == "malformed" && !strings.Contains(r.errDetail(t).Message, "line 1, column") {
				t.Fatalf("malformed JSON error without position: %s", r.Body)
			}
		})
	}
	r := h.do("POST", "/api/pools", map[string]any{"name": "existing"})
	r.expect(t, http.StatusConflict, CodeConflict, "name")
	// A name is a key: upper case is refused, never folded onto another pool.
	r = h.do("POST", "/api/pools", map[string]any{"name": "EXISTING"})
	r.expect(t, http.StatusUnprocessableEntity, CodeInvalid, "name")
	h.assertUnchanged(before, "rejected pool creations")
}

func TestPoolCertificateReference(t *testing.T) {
	h := newHarness(t)
	ca := newTestCA(t)
	c := h.uploadCert(ca.leaf(t, time.Now().Add(90*24*time.Hour), "shop.example.test", "*.shop.example.test"))
	p := h.createPool(map[string]any{"name": "shop", "ssl_mode": "full_strict", "ssl_domain": "api.shop.example.test", "ssl_cert_id": c.ID})
	if p.SSLCertID != c.ID || !p.ValidateBackendCert {
		t.Fatalf("pool %+v", p)
	}
	before := h.snapshot()
	r := h.do("POST", "/api/pools", map[string]any{"name": "other", "ssl_mode": "flexible", "ssl_domain": "other.test", "ssl_cert_id": c.ID})
	r.expect(t, http.StatusUnprocessableEntity, CodeInvalid, "ssl_cert_id")
	if !strings.Contains(r.errDetail(t).Message, "does not cover") {
		t.Fatalf("message: %s", r.Body)
	}
	h.assertUnchanged(before, "pool naming a certificate that does not cover its domain")
}

func TestListPoolsPagination(t *testing.T) {
	h := newHarness(t)
	for i := 0; i < 5; i++ {
		h.createPool(map[string]any{"name": fmt.Sprintf("p%d", i)})
	}
	var page apitypes.List[apitypes.Pool]
	h.do("GET", "/api/pools?limit=2", nil).json(t, &page)
	if len(page.Items) != 2 || page.Items[0].Name != "p0" || page.Next != "p1" {
		t.Fatalf("first page %+v next %q", names(page.Items), page.Next)
	}
	h.do("GET", "/api/pools?limit=2&after="+page.Next, nil).json(t, &page)
	if len(page.Items) != 2 || page.Items[0].Name != "p2" || page.Next != "p3" {
		t.Fatalf("second page %+v next %q", names(page.Items), page.Next)
	}
	h.do("GET", "/api/pools?limit=2&after="+page.Next, nil).json(t, &page)
	if len(page.Items) != 1 || page.Items[0].Name != "p4" || page.Next != "" {
		t.Fatalf("last page %+v next %q", names(page.Items), page.Next)
	}
	h.do("GET", "/api/pools", nil).json(t, &page)
	if len(page.Items) != 5 || page.Next != "" {
		t.Fatalf("default page %+v", names(page.Items))
	}
	for _, bad := range []string{"0", "-1", "1001", "abc", "1.5"} {
		h.do("GET", "/api/pools?limit="+bad, nil).expect(t, http.StatusBadRequest, CodeInvalid, "limit")
	}
	h.do("GET", "/api/pools?limit=1000", nil).expect(t, http.StatusOK, "")

	// Empty lists are [] not null.
	h2 := newHarness(t)
	r := h2.do("GET", "/api/pools", nil)
	if !strings.Contains(string(r.Body), `"items":[]`) {
		t.Fatalf("empty list: %s", r.Body)
	}
}

func names(ps []apitypes.Pool) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.Name)
	}
	return out
}

func TestGetPool(t *testing.T) {
	h := newHarness(t)
	created := h.createPool(map[string]any{"name": "web"})
	r := h.do("GET", "/api/pools/web", nil)
	r.expect(t, http.StatusOK, "")
	if r.Header.Get("ETag") != apiETag(created.Version) {
		t.Fatalf("ETag %q", r.Header.Get("ETag"))
	}
	h.do("GET", "/api/pools/nope", nil).expect(t, http.StatusNotFound, CodeNotFound, "name")
}

func TestPatchPool(t *testing.T) {
	h := newHarness(t)
	created := h.createPool(map[string]any{
		"name": "web", "algorithm": "random", "hosts": []string{"a.test", "b.test"},
		"health_check": map[string]any{"type": "http", "path": "/up"},
		"metadata":     map[string]string{"a": "1", "b": "2"},
	})

	// Only the fields present change; health_check merges field by field,
	// metadata key by key (null deletes a key); hosts is replaced.
	r := h.do("PATCH", "/api/pools/web", map[string]any{
		"algorithm":    "least_connections",
		"health_check": map[string]any{"rise": 4},
		"hosts":        []string{"c.test"},
		"metadata":     map[string]any{"c": "3", "a": nil},
	})
	r.expect(t, http.StatusOK, "")
	var p apitypes.Pool
	r.json(t, &p)
	if p.Algorithm != "least_connections" || p.HealthCheck.Rise != 4 || p.HealthCheck.Path != "/up" || p.HealthCheck.Type != "http" {
		t.Fatalf("patched %+v", p)
	}
	if strings.Join(p.Hosts, ",") != "c.test" || len(p.Metadata) != 2 || p.Metadata["c"] != "3" || p.Metadata["b"] != "2" {
		t.Fatalf("hosts %v metadata %v", p.Hosts, p.Metadata)
	}
	if !p.InsertedAt.Equal(created.InsertedAt) || !(created.Version.HLC < p.Version.HLC) {
		t.Fatalf("inserted_at %v -> %v, version %v -> %v", created.InsertedAt, p.InsertedAt, created.Version, p.Version)
	}
	if r.Header.Get("ETag") != apiETag(p.Version) {
		t.Fatal("PATCH ETag is not the new version")
	}

	// The same name is allowed; another spelling of it is not (names are
	// keys, kept as sent).
	h.do("PATCH", "/api/pools/web", map[string]any{"name": "web"}).expect(t, http.StatusOK, "")
	h.do("PATCH", "/api/pools/web", map[string]any{"name": "WEB"}).expect(t, http.StatusUnprocessableEntity, CodeInvalid, "name")

	// The patched pool is re-validated as a whole: a timeout that was
	// fine becomes too long for a shorter interval.
	h.do("PATCH", "/api/pools/web", map[string]any{"health_check": map[string]any{"timeout": 3000}}).expect(t, http.StatusOK, "")
	before := h.snapshot()
	for _, tc := range []struct {
		name   string
		body   string
		status int
		code   string
		field  string
	}{
		{"interval below timeout", `{"health_check_interval":2000}`, 422, CodeInvalid, "health_check.timeout"},
		{"rename", `{"name":"other"}`, 422, CodeInvalid, "name"},
		{"unknown field", `{"nme":"x"}`, 400, CodeInvalid, "nme"},
		{"bad algorithm", `{"algorithm":"nope"}`, 422, CodeInvalid, "algorithm"},
		{"wrong type", `{"hosts":"a.test"}`, 400, CodeInvalid, "hosts"},
		{"malformed", `{"algorithm":`, 400, CodeInvalid, ""},
		{"missing cert", `{"ssl_cert_id":"gone"}`, 422, CodeInvalid, "ssl_cert_id"},
		{"field twice", `{"algorithm":"random","algorithm":"round_robin"}`, 400, CodeInvalid, "algorithm"},
		// encoding/json leaves the target as it was for null: this was an
		// empty patch, committed as a new version.
		{"null body", `null`, 400, CodeInvalid, ""},
		{"field in another case", `{"Algorithm":"random"}`, 400, CodeInvalid, "Algorithm"},
		{"null host", `{"hosts":["a.test",null]}`, 400, CodeInvalid, "hosts[1]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := h.do("PATCH", "/api/pools/web", tc.body)
			if tc.field != "" {
				r.expect(t, tc.status, tc.code, tc.field)
			} else {
				r.expect(t, tc.status, tc.code)
			}
		})
	}
	h.do("PATCH", "/api/pools/nope", `{"algorithm":"random"}`).expect(t, http.StatusNotFound, CodeNotFound, "name")
	h.do("PATCH", "/api/pools/web", `{"algorithm":"random"}`, withContentType("text/plain")).expect(t, http.StatusUnsupportedMediaType, CodeUnsupportedMediaType)
	h.assertUnchanged(before, "rejected PATCHes")

	// merge-patch+json is accepted too.
	h.do("PATCH", "/api/pools/web", `{"fail_open":true}`, withContentType("application/merge-patch+json")).expect(t, http.StatusOK, "")
}

func TestPoolIfMatch(t *testing.T) {
	h := newHarness(t)
	created := h.createPool(map[string]any{"name": "web"})
	stale := apiETag(created.Version)
	r := h.do("PATCH", "/api/pools/web", `{"algorithm":"random"}`, withHeader("If-Match", stale))
	r.expect(t, http.StatusOK, "")
	current := r.Header.Get("ETag")

	before := h.snapshot()
	h.do("PATCH", "/api/pools/web", `{"algorithm":"least_connections"}`, withHeader("If-Match", stale)).expect(t, http.StatusPreconditionFailed, CodePreconditionFailed)
	h.do("DELETE", "/api/pools/web", nil, withHeader("If-Match", stale)).expect(t, http.StatusPreconditionFailed, CodePreconditionFailed)
	h.do("DELETE", "/api/pools/web", nil, withHeader("If-Match", "W/"+current)).expect(t, http.StatusPreconditionFailed, CodePreconditionFailed)
	h.do("DELETE", "/api/pools/web", nil, withHeader("If-Match", "garbage")).expect(t, http.StatusBadRequest, CodeInvalid)
	h.assertUnchanged(before, "stale If-Match")

	h.do("PATCH", "/api/pools/web", `{"fail_open":true}`, withHeader("If-Match", stale+", "+current)).expect(t, http.StatusOK, "")
	h.do("PATCH", "/api/pools/web", `{"fail_open":false}`, withHeader("If-Match", "*")).expect(t, http.StatusOK, "")
	cur := h.do("GET", "/api/pools/web", nil).Header.Get("ETag")
	h.do("DELETE", "/api/pools/web", nil, withHeader("If-Match", cur)).expect(t, http.StatusNoContent, "")
}

func TestDeletePool(t *testing.T) {
	h := newHarness(t)
	h.createPool(map[string]any{"name": "web"})
	b1 := h.createBackend("web", map[string]any{"url": "http://127.0.0.1:9001"})
	h.createBackend("web", map[string]any{"url": "http://127.0.0.1:9002"})
	h.createPool(map[string]any{"name": "empty"})
	h.createPool(map[string]any{"name": "other"})
	other := h.createBackend("other", map[string]any{"url": "http://127.0.0.1:9003"})

	before := h.snapshot()
	r := h.do("DELETE", "/api/pools/web", nil)
	r.expect(t, http.StatusConflict, CodeConflict, "name")
	if !strings.Contains(r.errDetail(t).Message, "cascade=true") {
		t.Fatalf("409 does not say how to proceed: %s", r.Body)
	}
	h.do("DELETE", "/api/pools/web?cascade=maybe", nil).expect(t, http.StatusBadRequest, CodeInvalid, "cascade")
	h.do("DELETE", "/api/pools/nope", nil).expect(t, http.StatusNotFound, CodeNotFound, "name")
	h.assertUnchanged(before, "rejected pool deletes")

	h.do("DELETE", "/api/pools/empty", nil).expect(t, http.StatusNoContent, "")

	// Cascade: the pool and its backends go in one transaction (one
	// commit index), the other pool's backend stays.
	idx := h.store.LastIndex()
	h.do("DELETE", "/api/pools/web?cascade=true", nil).expect(t, http.StatusNoContent, "")
	if got := h.store.LastIndex(); got != idx+1 {
		t.Fatalf("cascade delete took %d commits, want 1", got-idx)
	}
	ctx := context.Background()
	if _, err := h.store.GetPool(ctx, "web"); err == nil {
		t.Fatal("pool still there")
	}
	if _, err := h.store.GetBackend(ctx, b1.ID); err == nil {
		t.Fatal("backend still there")
	}
	if _, err := h.store.GetBackend(ctx, other.ID); err != nil {
		t.Fatalf("other pool's backend gone: %v", err)
	}
	h.do("GET", "/api/pools/web", nil).expect(t, http.StatusNotFound, CodeNotFound)
}

// A backend whose pool does not exist is what a partition leaves when one
// node deletes a pool (cascade) while another adds a backend to it: the
// cascade removed only the backends its node knew. Creating a pool of that
// name starts it empty, the leftover deleted in the same commit, instead
// of putting a backend nobody added here into service.
func TestCreatePoolRemovesLeftoverBackends(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	// As replication applies it: the pool's tombstone came from one node,
	// the backend from another.
	if _, err := h.store.Update(ctx, func(tx *storage.Tx) error {
		return tx.PutBackend(&storage.Backend{ID: "b-leftover", PoolName: "web", Host: "10.0.0.2", Port: 80, Scheme: "http", Weight: 1})
	}); err != nil {
		t.Fatal(err)
	}
	h.createPool(map[string]any{"name": "other"})
	kept := h.createBackend("other", map[string]any{"url": "http://127.0.0.1:9003"})

	idx := h.store.LastIndex()
	h.createPool(map[string]any{"name": "web"})
	if got := h.store.LastIndex(); got != idx+1 {
		t.Fatalf("create took %d commits, want 1", got-idx)
	}
	r := h.do("GET", "/api/pools/web/backends", nil)
	r.expect(t, http.StatusOK, "")
	if strings.Contains(string(r.Body), "10.0.0.2") {
		t.Fatalf("the new pool serves a backend nobody added to it: %s", r.Body)
	}
	if _, err := h.store.GetBackend(ctx, "b-leftover"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("leftover backend: %v, want not found", err)
	}
	if _, err := h.store.GetBackend(ctx, kept.ID); err != nil {
		t.Fatalf("another pool's backend: %v", err)
	}
}

// TestConcurrentDeleteAndAddBackend races "delete the empty pool" against
// "add a backend to it". Exactly one of them may win each round, and a
// backend never outlives its pool.
func TestConcurrentDeleteAndAddBackend(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	for round := 0; round < 20; round++ {
		name := fmt.Sprintf("race%d", round)
		h.createPool(map[string]any{"name": name})
		var wg sync.WaitGroup
		var del, add response
		wg.Add(2)
		go func() { defer wg.Done(); del = h.do("DELETE", "/api/pools/"+name, nil) }()
		go func() {
			defer wg.Done()
			add = h.do("POST", "/api/pools/"+name+"/backends", map[string]any{"url": "http://127.0.0.1:9000"})
		}()
		wg.Wait()
		_, poolErr := h.store.GetPool(ctx, name)
		backends, err := h.store.ListBackendsByPool(ctx, name, "", 0)
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case del.Status == http.StatusNoContent && add.Status == http.StatusNotFound:
			if poolErr == nil || len(backends) != 0 {
				t.Fatalf("round %d: delete won but pool=%v backends=%d", round, poolErr, len(backends))
			}
		case add.Status == http.StatusCreated && del.Status == http.StatusConflict:
			if poolErr != nil || len(backends) != 1 {
				t.Fatalf("round %d: add won but pool=%v backends=%d", round, poolErr, len(backends))
			}
		default:
			t.Fatalf("round %d: delete %d, add %d", round, del.Status, add.Status)
		}
	}
}

func TestPoolStatsFromStoredObservations(t *testing.T) {
	h := newHarness(t)
	h.createPool(map[string]any{"name": "web"})
	up := h.createBackend("web", map[string]any{"url": "http://127.0.0.1:9001"})
	down := h.createBackend("web", map[string]any{"url": "http://127.0.0.1:9002"})
	h.createBackend("web", map[string]any{"url": "http://127.0.0.1:9003", "draining": true})
	h.createBackend("web", map[string]any{"url": "http://127.0.0.1:9004"}) // not observed yet
	node := h.store.NodeID()
	err := h.store.PutObservations(context.Background(), []storage.Observation{
		{NodeID: node, BackendID: up.ID, PoolName: "web", Region: "iad", Healthy: true, CurrentConnections: 3, TotalRequests: 100},
		{NodeID: node, BackendID: down.ID, PoolName: "web", Region: "iad", Healthy: false, TotalRequests: 7, TotalFailures: 7},
	})
	if err != nil {
		t.Fatal(err)
	}
	var p apitypes.Pool
	h.do("GET", "/api/pools/web", nil).json(t, &p)
	want := apitypes.PoolStats{TotalBackends: 4, HealthyBackends: 1, UnhealthyBackends: 1, DrainingBackends: 1,
		CurrentConnections: 3, TotalRequests: 107, TotalFailures: 7, Source: "stored"}
	if p.Stats != want {
		t.Fatalf("stats %+v, want %+v", p.Stats, want)
	}
}

// TestPoolBackendTLSSettings: the backend TLS settings are stored as sent,
// shown back, and refused field by field when invalid (nothing stored).
func TestPoolBackendTLSSettings(t *testing.T) {
	h := newHarness(t)
	ca := newTestCA(t)
	c := h.uploadCert(ca.leaf(t, time.Now().Add(90*24*time.Hour), "client.example.test"))
	caPEM := ca.pem
	p := h.createPool(map[string]any{"name": "m", "ssl_mode": "full_strict", "hosts": []string{"m.example.test"}, "backend_ca": caPEM,
		"backend_server_name": "backend.internal", "backend_client_cert_id": c.ID})
	if p.BackendCA != caPEM || p.BackendServerName != "backend.internal" || p.BackendClientCertID != c.ID {
		t.Fatalf("pool %+v", p)
	}
	before := h.snapshot()
	for _, tc := range []struct {
		body  map[string]any
		field string
	}{
		{map[string]any{"name": "x", "hosts": []string{"x.example.test"}, "ssl_mode": "full_strict", "backend_ca": "not PEM"}, "backend_ca"},
		{map[string]any{"name": "x", "hosts": []string{"x.example.test"}, "ssl_mode": "full", "backend_server_name": "bad name"}, "backend_server_name"},
		{map[string]any{"name": "x", "hosts": []string{"x.example.test"}, "ssl_mode": "full", "backend_client_cert_id": "missing"}, "backend_client_cert_id"},
	} {
		h.do("POST", "/api/pools", tc.body).expect(t, http.StatusUnprocessableEntity, CodeInvalid, tc.field)
	}
	h.assertUnchanged(before, "rejected backend TLS settings")
}

// TestPoolBackendVerificationFollowsMode: validate_backend_cert is the
// mode's value in full_strict (true) and full (false), the operator's in
// the other modes; a request that contradicts the mode is refused. Each
// step is checked in the store, in the API's answer, and with a real TLS
// handshake, built the way requests build it, against a backend whose
// self-signed certificate nothing trusts: a downgrade from full_strict to
// full must reach it, full_strict must refuse it.
func TestPoolBackendVerificationFollowsMode(t *testing.T) {
	h := newHarness(t)
	backend := httptest.NewTLSServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	t.Cleanup(backend.Close)
	addr := backend.Listener.Addr().String()
	h.createPool(map[string]any{"name": "tls", "ssl_mode": "full_strict", "hosts": []string{"tls.example.test"}})
	b := h.createBackend("tls", map[string]any{"url": "https://" + addr})

	// expect checks the stored flag, the API's view, and what a request
	// to the backend does.
	expect := func(step string, wantFlag, wantVerify bool) {
		t.Helper()
		ctx := context.Background()
		sp, err := h.store.GetPool(ctx, "tls")
		if err != nil {
			t.Fatal(err)
		}
		sb, err := h.store.GetBackend(ctx, b.ID)
		if err != nil {
			t.Fatal(err)
		}
		if sp.ValidateBackendCert != wantFlag {
			t.Fatalf("%s: stored validate_backend_cert %v, want %v", step, sp.ValidateBackendCert, wantFlag)
		}
		var view apitypes.Pool
		h.do("GET", "/api/pools/tls", nil).json(t, &view)
		if view.ValidateBackendCert != wantVerify {
			t.Fatalf("%s: API shows validate_backend_cert %v, want %v", step, view.ValidateBackendCert, wantVerify)
		}
		bt := pools.NewTable([]storage.Pool{sp}, []storage.Backend{sb}, nil, pools.TableOptions{}).Pool("tls").Backend(b.ID).TLS()
		if !bt.Enabled || bt.Verify != wantVerify {
			t.Fatalf("%s: backend TLS %v verify %v, want TLS and verify %v", step, bt.Enabled, bt.Verify, wantVerify)
		}
		conn, err := tls.Dial("tcp", addr, bt.Config(nil, nil))
		if err == nil {
			conn.Close()
		}
		if (err != nil) != wantVerify {
			t.Fatalf("%s: handshake with the self-signed backend: %v, want refused=%v", step, err, wantVerify)
		}
	}
	patch := func(body string) {
		t.Helper()
		h.do("PATCH", "/api/pools/tls", body).expect(t, http.StatusOK, "")
	}

	expect("created full_strict", true, true)
	patch(`{"ssl_mode":"full"}`)
	expect("downgraded to full", false, false)
	patch(`{"ssl_mode":"full_strict"}`)
	expect("back to full_strict", true, true)
	patch(`{"ssl_mode":"full","validate_backend_cert":false}`)
	expect("full with false sent", false, false)

	before := h.snapshot()
	for _, body := range []string{
		`{"validate_backend_cert":true}`,
		`{"ssl_mode":"full","validate_backend_cert":true}`,
		`{"ssl_mode":"full_strict","validate_backend_cert":false}`,
	} {
		r := h.do("PATCH", "/api/pools/tls", body)
		r.expect(t, http.StatusUnprocessableEntity, CodeInvalid, "validate_backend_cert")
	}
	h.assertUnchanged(before, "contradicting ssl_mode and validate_backend_cert")

	// Leaving full_strict resets the flag; between off, flexible and
	// passthrough it is the operator's and stays. The https:// backend
	// gets TLS in every mode.
	patch(`{"ssl_mode":"full_strict"}`)
	patch(`{"ssl_mode":"flexible"}`)
	expect("full_strict to flexible", false, false)
	if nb := h.createBackend("tls", map[string]any{"url": "https://127.0.0.2:9443"}); nb.Scheme != "https" {
		t.Fatalf("https:// backend added to a flexible pool as %+v", nb)
	}
	patch(`{"validate_backend_cert":true}`)
	expect("flexible, verification asked for", true, true)
	patch(`{"ssl_mode":"off"}`)
	expect("flexible to off", true, true)
	patch(`{"ssl_mode":"full"}`)
	expect("off to full", false, false)

	// A full row written before the flag followed the mode still holds
	// true: it does not verify, the API says so, and the next write of the
	// pool stores the mode's value.
	sp, err := h.store.GetPool(context.Background(), "tls")
	if err != nil {
		t.Fatal(err)
	}
	sp.ValidateBackendCert = true
	if _, err := h.store.Update(context.Background(), func(tx *storage.Tx) error { return tx.PutPool(&sp) }); err != nil {
		t.Fatal(err)
	}
	expect("stored full row with the flag set", true, false)
	patch(`{"fail_open":true}`)
	expect("stored full row after a write", false, false)
}

// TestPoolMaxFails: max_fails left out is the default (3); 0 and -1 turn
// passive checks off and are stored as sent; other values are refused.
func TestPoolMaxFails(t *testing.T) {
	h := newHarness(t)
	stored := func(name string) int {
		t.Helper()
		p, err := h.store.GetPool(context.Background(), name)
		if err != nil {
			t.Fatal(err)
		}
		return p.HealthCheck.MaxFails
	}
	h.createPool(map[string]any{"name": "dflt"})
	h.createPool(map[string]any{"name": "zero", "health_check": map[string]any{"max_fails": 0}})
	h.createPool(map[string]any{"name": "minus", "health_check": map[string]any{"max_fails": -1}})
	for name, want := range map[string]int{"dflt": pools.DefaultMaxFails, "zero": 0, "minus": -1} {
		if got := stored(name); got != want {
			t.Errorf("pool %s: stored max_fails %d, want %d", name, got, want)
		}
	}
	h.do("PATCH", "/api/pools/dflt", `{"health_check":{"max_fails":0}}`).expect(t, http.StatusOK, "")
	if got := stored("dflt"); got != 0 {
		t.Errorf("after PATCH max_fails 0: stored %d", got)
	}
	before := h.snapshot()
	for _, v := range []int{-2, pools.MaxMaxFails + 1} {
		h.do("PATCH", "/api/pools/dflt", fmt.Sprintf(`{"health_check":{"max_fails":%d}}`, v)).
			expect(t, http.StatusUnprocessableEntity, CodeInvalid, "health_check.max_fails")
	}
	h.assertUnchanged(before, "refused max_fails")
}

// An interval out of range is the one field refused: no timeout derived
// from it, nor the default timeout compared with it, is reported beside
// it (`pools create --health-check-interval 1ms` named a 500µs timeout
// nobody sent).
func TestPoolIntervalOutOfRangeIsTheOnlyError(t *testing.T) {
	h := newHarness(t)
	h.createPool(map[string]any{"name": "web"})
	for _, tc := range []struct {
		method, path, body string
	}{
		{"POST", "/api/pools", `{"name":"a","health_check_interval":1}`},
		{"POST", "/api/pools", `{"name":"a","health_check_interval":999}`},
		{"PATCH", "/api/pools/web", `{"health_check_interval":1}`},
	} {
		r := h.do(tc.method, tc.path, tc.body)
		r.expect(t, http.StatusUnprocessableEntity, CodeInvalid, "health_check_interval")
		if e := r.errDetail(t); len(e.Fields) != 1 {
			t.Errorf("%s %s: fields %+v, want health_check_interval alone", tc.method, tc.body, e.Fields)
		}
	}
	// A timeout that was sent is still compared with a valid interval.
	h.do("POST", "/api/pools", `{"name":"b","health_check_interval":2000,"health_check":{"timeout":2000}}`).
		expect(t, http.StatusUnprocessableEntity, CodeInvalid, "health_check.timeout")
}

// TestSSLDomainNeedsAMode: a new ssl_domain asks for TLS for that name, and
// the off mode a create starts from would serve it as plain HTTP. Without
// ssl_mode the request is refused with 422 naming every mode; nothing is
// chosen for the client, and an explicit "off" is stored as sent.
func TestSSLDomainNeedsAMode(t *testing.T) {
	h := newHarness(t)
	h.createPool(map[string]any{"name": "plain"})
	h.createPool(map[string]any{"name": "tls", "ssl_mode": "flexible", "ssl_domain": "tls.example.test"})
	before := h.snapshot()
	for _, tc := range []struct{ method, path, body string }{
		{"POST", "/api/pools", `{"name":"web","ssl_domain":"www.example.test"}`},
		{"POST", "/api/pools", `{"name":"web","ssl_domain":"www.example.test","hosts":["example.test"]}`},
		{"PATCH", "/api/pools/plain", `{"ssl_domain":"www.example.test"}`},
	} {
		r := h.do(tc.method, tc.path, tc.body)
		r.expect(t, http.StatusUnprocessableEntity, CodeInvalid, "ssl_mode")
		msg := r.errDetail(t).Message
		for _, mode := range pools.SSLModes() {
			if !strings.Contains(msg, mode) {
				t.Errorf("%s %s: message %q does not name %s", tc.method, tc.path, msg, mode)
			}
		}
	}
	h.assertUnchanged(before, "ssl_domain without ssl_mode")

	// Sent, every mode is taken as sent, off included.
	if p := h.createPool(map[string]any{"name": "http-only", "ssl_mode": "off", "ssl_domain": "http.example.test"}); p.SSLMode != "off" || p.SSLDomain != "http.example.test" {
		t.Fatalf("explicit off: ssl_mode %q ssl_domain %q", p.SSLMode, p.SSLDomain)
	}
	var p apitypes.Pool
	r := h.do("PATCH", "/api/pools/plain", `{"ssl_mode":"full_strict","ssl_domain":"www.example.test"}`)
	r.expect(t, http.StatusOK, "")
	if r.json(t, &p); p.SSLMode != "full_strict" {
		t.Fatalf("ssl_mode %q after PATCH with full_strict", p.SSLMode)
	}
	// A pool already in a TLS mode keeps it when its domain changes, and
	// an off pool may be sent its own domain again (nothing new is asked).
	h.do("PATCH", "/api/pools/tls", `{"ssl_domain":"tls2.example.test"}`).expect(t, http.StatusOK, "")
	h.do("PATCH", "/api/pools/http-only", `{"ssl_domain":"http.example.test","algorithm":"random"}`).expect(t, http.StatusOK, "")
	// Removing the domain needs no mode either.
	h.do("PATCH", "/api/pools/http-only", `{"ssl_domain":""}`).expect(t, http.StatusOK, "")
}
