package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"maps"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/singularity-ng/singularity-edge/apitypes"
)

// auditRows lists every stored audit row through the API, newest first.
func (h *harness) auditRows() []apitypes.AuditEntry {
	h.t.Helper()
	var page apitypes.List[apitypes.AuditEntry]
	h.do("GET", "/api/audit?limit=1000", nil).json(h.t, &page)
	return page.Items
}

func TestAuditRowPerChangeInItsTransaction(t *testing.T) {
	h := newHarness(t)
	h.createPool(map[string]any{"name": "web", "hosts": []string{"a.example.test"}})
	h.createPool(map[string]any{"name": "api", "hosts": []string{"b.example.test"}})
	rows := h.auditRows()
	if len(rows) != 2 || rows[0].Object != "api" || rows[1].Object != "web" || rows[0].Action != "create" {
		t.Fatalf("after two creates: %+v", rows)
	}

	// Refused changes write nothing: a host takeover (409) and a bad value (422).
	h.do("PATCH", "/api/pools/api", map[string]any{"hosts": []string{"a.example.test"}}).
		expect(t, http.StatusConflict, CodeConflict, "hosts")
	h.do("PATCH", "/api/pools/api", map[string]any{"algorithm": "nope"}).
		expect(t, http.StatusUnprocessableEntity, CodeInvalid, "algorithm")
	if got := h.auditRows(); len(got) != 2 {
		t.Fatalf("refused changes wrote audit rows: %+v", got)
	}

	h.do("PATCH", "/api/pools/api", map[string]any{"algorithm": "least_connections"}, withHeader("X-Request-Id", "req-audit-1")).
		expect(t, http.StatusOK, "")
	rows = h.auditRows()
	if len(rows) != 3 {
		t.Fatalf("after one update: %d rows, want 3", len(rows))
	}
	top := rows[0]
	if top.Action != "update" || top.Kind != "pool" || top.Object != "api" || !top.Token || top.Remote == "" || top.NodeID != h.store.NodeID() {
		t.Fatalf("update row: %+v", top)
	}
	if !slices.ContainsFunc(top.Changes, func(c string) bool {
		return strings.HasPrefix(c, "algorithm: ") && strings.HasSuffix(c, `-> "least_connections"`)
	}) {
		t.Fatalf("update row changes %q lack algorithm: old -> new", top.Changes)
	}
	// The log line and the row describe the same change.
	lines := h.logs.FilterMessage("configuration changed").FilterField(zap.String("audit_id", top.ID)).All()
	if len(lines) != 1 {
		t.Fatalf("%d log lines carry audit id %s, want 1", len(lines), top.ID)
	}

	// A bulk create is one change: one row.
	h.do("POST", "/api/pools/web/backends", []map[string]any{
		{"host": "127.0.0.1", "port": 8081}, {"host": "127.0.0.1", "port": 8082},
	}).expect(t, http.StatusCreated, "")
	if rows = h.auditRows(); len(rows) != 4 || rows[0].Kind != "backends" || rows[0].Object != "web" {
		t.Fatalf("after a bulk create: %+v", rows[0])
	}

	// Paging: newest first, ?after= takes the cursor.
	var page apitypes.List[apitypes.AuditEntry]
	h.do("GET", "/api/audit?limit=3", nil).json(t, &page)
	if len(page.Items) != 3 || page.Next != page.Items[2].ID {
		t.Fatalf("first page: %d items, next %q", len(page.Items), page.Next)
	}
	var rest apitypes.List[apitypes.AuditEntry]
	h.do("GET", "/api/audit?limit=3&after="+page.Next, nil).json(t, &rest)
	if len(rest.Items) != 1 || rest.Items[0].Object != "web" || rest.Next != "" {
		t.Fatalf("second page: %+v", rest)
	}
	h.do("GET", "/api/audit?limit=0", nil).expect(t, http.StatusBadRequest, CodeInvalid, "limit")
}

func TestAuditNeverHoldsCertificateMaterial(t *testing.T) {
	h := newHarness(t)
	ca := newTestCA(t)
	leaf := ca.leaf(t, time.Now().Add(30*24*time.Hour), "audit.example.test")
	c := h.uploadCert(leaf)
	h.do("DELETE", "/api/certificates/"+c.ID, nil).expect(t, http.StatusNoContent, "")
	rows, err := h.store.ListAudit(context.Background(), "", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 2 || rows[0].Action != "delete" || rows[1].Action != "create" || rows[1].Kind != "certificate" {
		t.Fatalf("certificate audit rows: %+v", rows)
	}
	for _, r := range rows {
		text := strings.Join(r.Changes, "\n")
		if strings.Contains(text, "BEGIN") || strings.Contains(text, "PRIVATE") || strings.Contains(text, "certificate:") || strings.Contains(text, "chain:") {
			t.Fatalf("audit row %s carries PEM material: %s", r.ID, text)
		}
		if !strings.Contains(text, "fingerprint: ") {
			t.Fatalf("audit row %s does not name the certificate by fingerprint: %s", r.ID, text)
		}
	}
}

func TestChangedFields(t *testing.T) {
	type check struct {
		Type     string `json:"type"`
		Interval int    `json:"interval_ms"`
	}
	type view struct {
		Name      string            `json:"name"`
		Port      int               `json:"port"`
		Big       int64             `json:"big"`
		Hosts     []string          `json:"hosts"`
		Check     check             `json:"health_check"`
		Metadata  map[string]string `json:"metadata,omitempty"`
		Note      *string           `json:"note"`
		UpdatedAt string            `json:"updated_at"` // not configuration
	}
	base := view{Name: "web<1>", Port: 80, Big: 1 << 60, Hosts: []string{"a.example", "b.example"},
		Check: check{Type: "tcp", Interval: 5000}, Metadata: map[string]string{"team": "edge", "a": "1"}, UpdatedAt: "t1"}
	changed := base
	changed.Port, changed.Check.Interval, changed.Hosts, changed.UpdatedAt = 8080, 1000, []string{"a.example"}, "t2"
	changed.Metadata = map[string]string{"team": "core"}
	tests := []struct {
		name          string
		before, after any
		want          []string
	}{
		{"create", nil, base, []string{
			`big: - -> 1152921504606846976`,
			`health_check.interval_ms: - -> 5000`,
			`health_check.type: - -> "tcp"`,
			`hosts: - -> ["a.example","b.example"]`,
			`metadata: - -> {"a":"1","team":"edge"}`,
			`name: - -> "web\u003c1\u003e"`,
			`note: - -> null`,
			`port: - -> 80`,
		}},
		{"update", base, changed, []string{
			`health_check.interval_ms: 5000 -> 1000`,
			`hosts: ["a.example","b.example"] -> ["a.example"]`,
			`metadata: {"a":"1","team":"edge"} -> {"team":"core"}`,
			`port: 80 -> 8080`,
		}},
		{"only a skipped field", base, view{Name: base.Name, Port: base.Port, Big: base.Big, Hosts: base.Hosts,
			Check: base.Check, Metadata: base.Metadata, UpdatedAt: "t3"}, []string{}},
		{"delete", base, nil, []string{
			`big: 1152921504606846976 -> -`,
			`health_check.interval_ms: 5000 -> -`,
			`health_check.type: "tcp" -> -`,
			`hosts: ["a.example","b.example"] -> -`,
			`metadata: {"a":"1","team":"edge"} -> -`,
			`name: "web\u003c1\u003e" -> -`,
			`note: null -> -`,
			`port: 80 -> -`,
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := changedFields(tc.before, tc.after); !slices.Equal(got, tc.want) {
				t.Errorf("changedFields:\n got %q\nwant %q", got, tc.want)
			}
		})
	}
}

// flattenByDecoding is flatten's reference: the JSON object decoded into a
// map of raw values, level by level.
func flattenByDecoding(b []byte) map[string]string {
	out := map[string]string{}
	var walk func(prefix string, raw []byte) bool
	walk = func(prefix string, raw []byte) bool {
		var m map[string]json.RawMessage
		if json.Unmarshal(raw, &m) != nil || m == nil {
			return false
		}
		for k, v := range m {
			if prefix == "" && auditSkip[k] {
				continue
			}
			name := prefix + k
			if len(v) > 0 && v[0] == '{' && k != "metadata" && walk(name+".", v) {
				continue
			}
			out[name] = string(v)
		}
		return true
	}
	if !walk("", b) {
		clear(out)
	}
	return out
}

// FuzzFlattenMatchesDecoding: the scanner finds the same fields and raw
// values as decoding, for any JSON object in encoding/json's compact form
// (keys with escapes, nested objects and arrays, strings holding braces
// and quotes), and finds nothing in anything else.
func FuzzFlattenMatchesDecoding(f *testing.F) {
	for _, s := range []string{
		`{}`, `{"a":1}`, `{"a":{"b":{"c":[1,{"d":"}"}]}},"e":"x\"y\\"}`,
		`{"metadata":{"k":"v"},"version":3,"name":"web\u003c1\u003e"}`,
		`{"we\"ird":{"x\\y":null,"":true},"list":[[],{}],"n":-1.5e3}`,
		`{"a":1,"a":2}`, `[1,2]`, `"s"`, `7`, `{"a":{}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		// Through encoding/json and back: what flatten is given is its
		// output (compact, valid UTF-8, no repeated keys).
		d := json.NewDecoder(bytes.NewReader(in))
		d.UseNumber()
		var v any
		if d.Decode(&v) != nil {
			return
		}
		b, err := json.Marshal(v)
		if err != nil {
			return
		}
		got := map[string]string{}
		if !flattenObject(got, "", b) {
			clear(got)
		}
		if want := flattenByDecoding(b); !maps.Equal(got, want) {
			t.Fatalf("flatten %s:\n got %q\nwant %q", b, got, want)
		}
	})
}

// BenchmarkFlatten: the audit diff's flatten of a backend view, scanned
// (flatten) against decoded (flattenByDecoding, the anchor), on the same
// encoding.
func BenchmarkFlatten(b *testing.B) {
	v := apitypes.Backend{ID: "be-0123456789abcdef", PoolName: "web", URL: "http://10.0.0.1:8080", Host: "10.0.0.1",
		Port: 8080, Scheme: "http", Weight: 100, Region: "ams", Metadata: map[string]string{"team": "edge", "tier": "1"},
		InsertedAt: time.Now(), UpdatedAt: time.Now()}
	raw, err := json.Marshal(v)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("scan", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			flatten(v)
		}
	})
	b.Run("decode", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			m, _ := json.Marshal(v)
			flattenByDecoding(m)
		}
	})
	if got, want := flatten(v), flattenByDecoding(raw); !maps.Equal(got, want) {
		b.Fatalf("flatten differs from decoding:\n got %q\nwant %q", got, want)
	}
}
