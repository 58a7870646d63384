package admin

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/singularity-ng/singularity-edge/apitypes"
	"github.com/singularity-ng/singularity-edge/pools"
	"github.com/singularity-ng/singularity-edge/storage"
)

// refusalFixture builds the configuration every refused write is tried
// against: pools that own hosts (exact, wildcard, as ssl_domain), the
// default pool, a passthrough pool, a pool checked over plain HTTP, a
// full-TLS pool with an https backend, and the only certificate of a
// TLS-terminating pool's host.
func refusalFixture(t *testing.T) (*harness, string) {
	h := newHarness(t)
	ca := newTestCA(t)
	cert := h.uploadCert(ca.leaf(t, time.Now().Add(90*24*time.Hour), "www.example.test"))
	h.createPool(map[string]any{"name": "web", "ssl_mode": "flexible", "ssl_domain": "www.example.test", "hosts": []string{"example.test"}, "default": true})
	h.createPool(map[string]any{"name": "wild", "hosts": []string{"*.apps.example.test"}})
	h.createPool(map[string]any{"name": "pt", "ssl_mode": "passthrough", "ssl_domain": "pt.example.test"})
	h.createPool(map[string]any{"name": "checked", "hosts": []string{"checked.test"}, "health_check": map[string]any{"type": "http"}})
	h.createPool(map[string]any{"name": "full", "ssl_mode": "full", "ssl_domain": "full.test"})
	h.createBackend("full", map[string]any{"url": "https://10.0.0.5:8443"})
	h.createBackend("checked", map[string]any{"url": "http://10.0.0.6:8080"})
	return h, cert.ID
}

// refusedWrites is every configuration the API must refuse: the status,
// the field named, and a fragment of the message naming the other object.
func refusedWrites(certID string) []struct {
	name, method, path string
	body               any
	status             int
	field, mentions    string
} {
	return []struct {
		name, method, path string
		body               any
		status             int
		field, mentions    string
	}{
		{"host takeover by hosts", "POST", "/api/pools", `{"name":"evil","hosts":["www.example.test"]}`, 409, "hosts", `pool "web"`},
		{"host takeover by ssl_domain", "POST", "/api/pools", `{"name":"evil","ssl_mode":"flexible","ssl_domain":"example.test"}`, 409, "ssl_domain", `pool "web"`},
		{"wildcard takeover", "POST", "/api/pools", `{"name":"evil","hosts":["*.apps.example.test"]}`, 409, "hosts", `pool "wild"`},
		{"host takeover by update", "PATCH", "/api/pools/wild", `{"hosts":["example.test"]}`, 409, "hosts", `pool "web"`},
		{"second default", "POST", "/api/pools", `{"name":"evil","default":true}`, 409, "default", `pool "web"`},
		{"second default by update", "PATCH", "/api/pools/wild", `{"default":true}`, 409, "default", `pool "web"`},
		{"delete the certificate a pool serves by SNI", "DELETE", "/api/certificates/" + certID, nil, 409, "id", "www.example.test (pool web)"},
		{"https backend under http checks", "POST", "/api/pools/checked/backends", `{"url":"https://10.0.0.9"}`, 422, "url", `pool "checked"`},
		{"http backend on passthrough", "POST", "/api/pools/pt/backends", `{"url":"http://10.0.0.9:80"}`, 422, "url", "passthrough"},
		{"http backend in full mode", "POST", "/api/pools/full/backends", `{"host":"10.0.0.9","scheme":"http"}`, 422, "scheme", "ssl_mode full"},
		{"http checks for an https backend by update", "PATCH", "/api/pools/full", `{"health_check":{"type":"http"}}`, 409, "health_check.type", "10.0.0.5"},
		{"passthrough for an http backend by update", "PATCH", "/api/pools/checked", `{"ssl_mode":"passthrough"}`, 409, "ssl_mode", "10.0.0.6"},
		{"ssl_cert_id on an off pool", "POST", "/api/pools", `{"name":"evil","ssl_cert_id":"` + certID + `"}`, 422, "ssl_cert_id", "ssl_mode off"},
		{"TLS pool without a host", "POST", "/api/pools", `{"name":"evil","ssl_mode":"full"}`, 422, "ssl_domain", "needs ssl_domain or hosts"},
		{"port 0", "POST", "/api/pools/wild/backends", `{"host":"10.0.0.9","port":0}`, 422, "port", "between 1 and 65535"},
		{"url port 0", "POST", "/api/pools/wild/backends", `{"url":"http://10.0.0.9:0"}`, 422, "url", "port"},
		{"weight 0", "POST", "/api/pools/wild/backends", `{"host":"10.0.0.9","weight":0}`, 422, "weight", "draining"},
		{"weight 0 by update", "PATCH", "/api/pools/full/backends/__FULL__", `{"weight":0}`, 422, "weight", "draining"},
		{"interval 0", "POST", "/api/pools", `{"name":"evil","health_check_interval":0}`, 422, "health_check_interval", "between"},
		{"rise 0", "POST", "/api/pools", `{"name":"evil","health_check":{"rise":0}}`, 422, "health_check.rise", "between"},
		{"cooldown 0", "POST", "/api/pools", `{"name":"evil","health_check":{"cooldown":0}}`, 422, "health_check.cooldown", "between"},
		{"upper-case name", "POST", "/api/pools", `{"name":"P11"}`, 422, "name", `"p11"`},
		{"null scalar", "POST", "/api/pools", `{"name":"evil","algorithm":null}`, 422, "algorithm", "null"},
		{"null metadata value on create", "POST", "/api/pools", `{"name":"evil","metadata":{"a":null}}`, 422, "metadata", "null"},
		{"full_strict without verification", "POST", "/api/pools", `{"name":"evil","ssl_mode":"full_strict","ssl_domain":"evil.test","validate_backend_cert":false}`, 422, "validate_backend_cert", "full_strict"},
		{"bulk with one bad item", "POST", "/api/pools/wild/backends", `[{"host":"10.0.1.1"},{"host":"10.0.1.2","port":0}]`, 422, "[1].port", "between"},
		{"bulk with a repeated address", "POST", "/api/pools/wild/backends", `[{"host":"10.0.1.1"},{"url":"http://10.0.1.1:80"}]`, 409, "[1].url", "already has backend"},
		// Every error about one element of a batch names its index.
		{"bulk with a number for an item", "POST", "/api/pools/wild/backends", `[{"url":"http://10.0.1.1:80"},5]`, 400, "[1]", "must be a JSON object, not number"},
		{"bulk with null for an item", "POST", "/api/pools/wild/backends", `[{"url":"http://10.0.1.1:80"},null]`, 400, "[1]", "must be a JSON object, not null"},
		{"bulk with an array for an item", "POST", "/api/pools/wild/backends", `[[{"url":"http://10.0.1.1:80"}]]`, 400, "[0]", "must be a JSON object, not array"},
		{"bulk with a wrongly typed field", "POST", "/api/pools/wild/backends", `[{"host":"10.0.1.1"},{"host":"10.0.1.2","port":"80"}]`, 400, "[1].port", "must be an integer"},
		{"bulk with an unknown field", "POST", "/api/pools/wild/backends", `[{"host":"10.0.1.1"},{"hots":"10.0.1.2"}]`, 400, "[1].hots", "unknown field"},
	}
}

func TestRefusedConfigurationsLeaveTheStoreUnchanged(t *testing.T) {
	h, certID := refusalFixture(t)
	full := h.listBackendIDs("full")[0]
	before := h.snapshot()
	for _, tc := range refusedWrites(certID) {
		t.Run(tc.name, func(t *testing.T) {
			path := strings.ReplaceAll(tc.path, "__FULL__", full)
			r := h.do(tc.method, path, tc.body)
			code := CodeInvalid
			if tc.status == http.StatusConflict {
				code = CodeConflict
			}
			r.expect(t, tc.status, code, tc.field)
			if !strings.Contains(string(r.Body), strings.ReplaceAll(tc.mentions, `"`, `\"`)) {
				t.Errorf("the error does not name %s: %s", tc.mentions, r.Body)
			}
		})
	}
	h.assertUnchanged(before, "refused writes")

	// The explicit override deletes the certificate and says what it left
	// without one.
	h.do("DELETE", "/api/certificates/"+certID+"?force=true", nil).expect(t, http.StatusNoContent, "")
	if got := h.logs.FilterMessageSnippet("TLS handshakes for them will fail").Len(); got != 1 {
		t.Errorf("forced delete logged %d warnings, want 1", got)
	}
}

func (h *harness) listBackendIDs(pool string) []string {
	h.t.Helper()
	var page apitypes.List[apitypes.Backend]
	h.do("GET", "/api/pools/"+pool+"/backends", nil).json(h.t, &page)
	var ids []string
	for _, b := range page.Items {
		ids = append(ids, b.ID)
	}
	return ids
}

// Two requests claiming the same host at once: the host lookup is a
// guarded index partition, so exactly one commits.
func TestConcurrentHostClaimsOneWins(t *testing.T) {
	h := newHarness(t)
	for round := range 5 {
		host := fmt.Sprintf("race%d.example.test", round)
		var wg sync.WaitGroup
		statuses := make([]int, 2)
		for i := range statuses {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := h.do("POST", "/api/pools", map[string]any{"name": fmt.Sprintf("p%d-%d", round, i), "hosts": []string{host}})
				statuses[i] = r.Status
			}()
		}
		wg.Wait()
		created := 0
		for _, s := range statuses {
			switch s {
			case http.StatusCreated:
				created++
			case http.StatusConflict:
			default:
				t.Fatalf("round %d: status %d", round, s)
			}
		}
		if created != 1 {
			t.Fatalf("round %d: %d pools claimed %s, want exactly 1 (statuses %v)", round, created, host, statuses)
		}
	}
}

// zeroOf is the zero JSON value of an Optional's type.
func zeroOf(t reflect.Type) any {
	v := reflect.New(t).Elem().FieldByName("Value")
	switch v.Kind() {
	case reflect.String:
		return ""
	case reflect.Bool:
		return false
	case reflect.Slice:
		return []any{}
	case reflect.Map:
		return map[string]any{}
	case reflect.Struct:
		return map[string]any{}
	}
	return 0
}

// optionalFields lists the JSON names and types of a spec's fields.
func optionalFields(spec any) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	rt := reflect.TypeOf(spec)
	for i := range rt.NumField() {
		f := rt.Field(i)
		out[strings.Split(f.Tag.Get("json"), ",")[0]] = f.Type
	}
	return out
}

// Every field of a pool or backend sent with a zero value or null is
// either stored as sent or refused with a 4xx naming it; nothing is
// replaced by a default behind the client's back.
func TestZeroAndNullAreStoredAsSentOrRefused(t *testing.T) {
	h := newHarness(t)
	n := 0
	check := func(t *testing.T, path, key string, body map[string]any, field string, sent any, stored func(map[string]any) any) {
		t.Helper()
		b, _ := json.Marshal(body)
		r := h.do("POST", path, string(b))
		switch {
		case r.Status >= 400 && r.Status < 500:
			if !strings.Contains(string(r.Body), `"field":"`+field+`"`) && !strings.Contains(string(r.Body), `"field":"`+strings.Split(field, ".")[0]) {
				t.Errorf("%s refused without naming %s: %s", field, field, r.Body)
			}
		case r.Status == http.StatusCreated:
			var got map[string]any
			r.json(t, &got)
			want, _ := json.Marshal(sent)
			have, _ := json.Marshal(stored(got))
			if sent == nil {
				want = []byte("null")
			}
			if string(want) != string(have) && !(string(want) == "null" && (string(have) == "[]" || string(have) == "null")) &&
				!(string(want) == "{}" && string(have) == "null") {
				t.Errorf("%s sent as %s, stored as %s", field, want, have)
			}
		default:
			t.Fatalf("%s: status %d: %s", field, r.Status, r.Body)
		}
	}
	h.createPool(map[string]any{"name": "plain"})
	for name, typ := range optionalFields(apitypes.PoolSpec{}) {
		for _, sent := range []any{zeroOf(typ), nil} {
			if name == "health_check" {
				continue
			}
			n++
			body := map[string]any{"name": fmt.Sprintf("z%d", n), name: sent}
			check(t, "/api/pools", "name", body, name, sent, func(m map[string]any) any { return m[name] })
		}
	}
	for name, typ := range optionalFields(apitypes.HealthCheckSpec{}) {
		for _, sent := range []any{zeroOf(typ), nil} {
			n++
			body := map[string]any{"name": fmt.Sprintf("z%d", n), "health_check": map[string]any{name: sent}}
			check(t, "/api/pools", "name", body, "health_check."+name, sent, func(m map[string]any) any {
				return m["health_check"].(map[string]any)[name]
			})
		}
	}
	for name, typ := range optionalFields(apitypes.BackendSpec{}) {
		for _, sent := range []any{zeroOf(typ), nil} {
			n++
			body := map[string]any{name: sent}
			if name != "url" && name != "host" {
				body["host"] = fmt.Sprintf("10.1.%d.%d", n/250, n%250)
			}
			check(t, "/api/pools/plain/backends", "id", body, name, sent, func(m map[string]any) any { return m[name] })
		}
	}
}

// TestOtherSpellingsAreRefusedAndStoreNothing: a value written otherwise
// than it is stored (case, surrounding spaces, a trailing dot, the seed's
// "terminate") is refused on its field with the value to send, by a create
// and by an update alike, and nothing is stored; the value the message
// names is then stored as sent.
func TestOtherSpellingsAreRefusedAndStoreNothing(t *testing.T) {
	h := newHarness(t)
	h.createPool(map[string]any{"name": "web", "ssl_mode": "flexible", "ssl_domain": "www.example.test"})
	h.createPool(map[string]any{"name": "plain"})
	h.createBackend("plain", map[string]any{"id": "b0", "url": "http://10.0.0.1:8080"})
	before := h.snapshot()
	for _, tc := range []struct {
		name, method, path, body string
		field, send              string
	}{
		{"create: algorithm", "POST", "/api/pools", `{"name":"n1","algorithm":"Least_Connections"}`, "algorithm", `send "least_connections" (values are lower case)`},
		{"create: ssl_mode terminate", "POST", "/api/pools", `{"name":"n1","ssl_mode":"terminate","ssl_domain":"n1.test"}`, "ssl_mode", `"terminate" is called "flexible"; send "flexible"`},
		{"create: ssl_domain", "POST", "/api/pools", `{"name":"n1","ssl_mode":"flexible","ssl_domain":"N1.test"}`, "ssl_domain", `send "n1.test"`},
		{"create: ssl_cert_id", "POST", "/api/pools", `{"name":"n1","ssl_mode":"flexible","ssl_domain":"n1.test","ssl_cert_id":" c1"}`, "ssl_cert_id", `surrounding spaces; send "c1"`},
		{"create: hosts", "POST", "/api/pools", `{"name":"n1","hosts":["n1.test","Example.com"]}`, "hosts", `hosts[1] "Example.com": send "example.com"`},
		{"create: check type", "POST", "/api/pools", `{"name":"n1","health_check":{"type":"HTTP"}}`, "health_check.type", `send "http"`},
		{"create: hash_on", "POST", "/api/pools", `{"name":"n1","algorithm":"consistent_hash","hash_on":"header:x-user"}`, "hash_on", `send "header:X-User"`},
		{"create: sticky_cookie", "POST", "/api/pools", `{"name":"n1","sticky_cookie":"srv "}`, "sticky_cookie", `surrounding spaces; send "srv"`},
		{"update: algorithm", "PATCH", "/api/pools/plain", `{"algorithm":" random"}`, "algorithm", `surrounding spaces; send "random"`},
		{"update: ssl_mode", "PATCH", "/api/pools/web", `{"ssl_mode":"Terminate"}`, "ssl_mode", `"Terminate" is called "flexible"; send "flexible"`},
		{"update: hosts", "PATCH", "/api/pools/plain", `{"hosts":["plain.test."]}`, "hosts", `hosts[0] "plain.test.": send "plain.test"`},
		{"update: check type", "PATCH", "/api/pools/plain", `{"health_check":{"type":"Tcp"}}`, "health_check.type", `send "tcp"`},
		{"create: backend id", "POST", "/api/pools/plain/backends", `{"id":" b-1","url":"http://10.0.0.2:80"}`, "id", `surrounding spaces; send "b-1"`},
		{"create: url", "POST", "/api/pools/plain/backends", `{"url":"HTTP://App.Internal:80"}`, "url", `send "http://app.internal:80"`},
		{"create: url spaces", "POST", "/api/pools/plain/backends", `{"url":"http://10.0.0.2:80 "}`, "url", `surrounding spaces; send "http://10.0.0.2:80"`},
		{"create: host", "POST", "/api/pools/plain/backends", `{"host":"app.internal.","port":80}`, "host", `send "app.internal"`},
		{"create: scheme", "POST", "/api/pools/plain/backends", `{"host":"10.0.0.2","scheme":"HTTP"}`, "scheme", `send "http"`},
		{"create: region", "POST", "/api/pools/plain/backends", `{"url":"http://10.0.0.2:80","region":"IAD"}`, "region", `send "iad"`},
		{"create in a batch: region", "POST", "/api/pools/plain/backends", `[{"url":"http://10.0.0.2:80"},{"url":"http://10.0.0.3:80","region":" iad"}]`, "[1].region", `surrounding spaces; send "iad"`},
		{"update: region", "PATCH", "/api/pools/plain/backends/b0", `{"region":"Syd"}`, "region", `send "syd"`},
		{"update: host", "PATCH", "/api/pools/plain/backends/b0", `{"host":"[::1]"}`, "host", `send "::1"`},
		{"update: url", "PATCH", "/api/pools/plain/backends/b0", `{"url":"http://[0:0::1]:8080"}`, "url", `send "http://[::1]:8080"`},
		{"update: scheme", "PATCH", "/api/pools/plain/backends/b0", `{"scheme":"Http"}`, "scheme", `send "http"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := h.do(tc.method, tc.path, tc.body)
			r.expect(t, http.StatusUnprocessableEntity, CodeInvalid, tc.field)
			for _, f := range r.errDetail(t).Fields {
				if f.Field != tc.field {
					t.Errorf("refused also on %s: %s", f.Field, f.Message)
				} else if !strings.Contains(f.Message, tc.send) {
					t.Errorf("%s: message %q does not say %s", f.Field, f.Message, tc.send)
				}
			}
		})
	}
	h.assertUnchanged(before, "writes refused for their spelling")

	// What the messages name is stored as sent.
	h.do("PATCH", "/api/pools/plain", `{"algorithm":"consistent_hash","hash_on":"header:X-User","hosts":["plain.test"],"sticky_cookie":"Srv"}`).expect(t, http.StatusOK, "")
	h.do("PATCH", "/api/pools/plain/backends/b0", `{"host":"::1","region":"syd"}`).expect(t, http.StatusOK, "")
	var p apitypes.Pool
	h.do("GET", "/api/pools/plain", nil).json(t, &p)
	if p.Algorithm != "consistent_hash" || p.HashOn != "header:X-User" || strings.Join(p.Hosts, ",") != "plain.test" || p.StickyCookie != "Srv" {
		t.Errorf("pool not stored as sent: %+v", p)
	}
	var b apitypes.Backend
	h.do("GET", "/api/pools/plain/backends/b0", nil).json(t, &b)
	if b.Host != "::1" || b.Region != "syd" || b.URL != "http://[::1]:8080" {
		t.Errorf("backend not stored as sent: %+v", b)
	}
}

// TestStoredRowsStillUpdate: rows written before values were refused
// rather than rewritten hold the forms the validators then stored, and a
// PATCH, which validates the stored row with the change, takes them as
// they are.
func TestStoredRowsStillUpdate(t *testing.T) {
	h := newHarness(t)
	pool := pools.DefaultPool()
	pool.Name, pool.Algorithm, pool.HashOn = "old", pools.AlgorithmConsistentHash, "header:X-User-Id"
	pool.SSLMode, pool.SSLDomain, pool.Hosts = pools.SSLModeFlexible, "old.example.test", []string{"*.apps.example.test"}
	pool.HealthCheck.Type, pool.HealthCheck.Path = pools.HealthCheckHTTP, "/"
	backend := storage.Backend{ID: "b-Old_1", PoolName: "old", Host: "2001:db8::1", Port: 8080, Scheme: "http", Weight: 1, Region: "iad"}
	if _, err := h.store.Update(context.Background(), func(tx *storage.Tx) error {
		if err := tx.PutPool(&pool); err != nil {
			return err
		}
		return tx.PutBackend(&backend)
	}); err != nil {
		t.Fatal(err)
	}
	h.do("PATCH", "/api/pools/old", `{"fail_open":true}`).expect(t, http.StatusOK, "")
	h.do("PATCH", "/api/pools/old/backends/b-Old_1", `{"weight":2}`).expect(t, http.StatusOK, "")
	p, err := h.store.GetPool(context.Background(), "old")
	if err != nil {
		t.Fatal(err)
	}
	if p.HashOn != pool.HashOn || p.SSLMode != pool.SSLMode || p.SSLDomain != pool.SSLDomain || !p.FailOpen {
		t.Errorf("pool after the update: %+v", p)
	}
	b, err := h.store.GetBackend(context.Background(), "b-Old_1")
	if err != nil {
		t.Fatal(err)
	}
	if b.Host != backend.Host || b.Region != backend.Region || b.Weight != 2 {
		t.Errorf("backend after the update: %+v", b)
	}
}
