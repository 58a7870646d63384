package admin

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/singularity-ng/singularity-edge/apitypes"
)

func TestPosition(t *testing.T) {
	body := []byte("{\n  \"a\": 1,\n  \"b\": x\n}")
	for _, tc := range []struct {
		offset int64
		want   string
	}{
		{0, "line 1, column 1 (byte 0)"},
		{1, "line 1, column 2 (byte 1)"},
		{2, "line 2, column 1 (byte 2)"},
		{19, "line 3, column 8 (byte 19)"},
		{-5, "line 1, column 1 (byte 0)"},
		{999, "line 4, column 2 (byte 22)"},
	} {
		if got := position(body, tc.offset); got != tc.want {
			t.Errorf("position(%d) = %q, want %q", tc.offset, got, tc.want)
		}
	}
}

func TestDecodeErrors(t *testing.T) {
	type inner struct {
		N int `json:"n"`
	}
	type target struct {
		Name  string `json:"name"`
		Inner inner  `json:"inner"`
	}
	for _, tc := range []struct {
		body  string
		msg   string
		field string
	}{
		{`{"name": "x",`, "line 1, column 14", ""},
		{"{\n\"name\": x}", "line 2, column 10", ""},
		{`{"name": 1}`, "name must be a string, not number", "name"},
		{`{"inner": {"n": "1"}}`, "inner.n must be an integer, not string", "inner.n"},
		// Not "must be a number, not number 1.5".
		{`{"inner": {"n": 1.5}}`, "inner.n must be an integer written without a fraction or exponent, within range, not number 1.5", "inner.n"},
		{`{"inner": {"n": 1e3}}`, "inner.n must be an integer written without a fraction or exponent, within range, not number 1e3", "inner.n"},
		{`{"inner": {"n": 1e30}}`, "not number 1e30", "inner.n"},
		{`{"inner": {"m": 1}}`, `unknown field "m"`, "m"},
		{`{"nam": "x"}`, `unknown field "nam"`, "nam"},
		{`"x"`, "must be a JSON object", ""},
		{`{} []`, "unexpected data after the JSON object", ""},
		{`{}x`, "unexpected data after the JSON object", ""},
		// encoding/json keeps the last of two values; neither is taken.
		{`{"name": "a", "name": "b"}`, "name is given twice", "name"},
		{`{"name": "a", "inner": {"n": 1, "n": 1}}`, "inner.n is given twice", "inner.n"},
	} {
		var dst target
		err := decodeStrict([]byte(tc.body), &dst)
		ae := toAPIError(err)
		if err == nil || ae.Status != http.StatusBadRequest || !strings.Contains(ae.Message, tc.msg) {
			t.Errorf("%s: %v (status %d), want 400 containing %q", tc.body, err, ae.Status, tc.msg)
			continue
		}
		if tc.field != "" && (len(ae.Fields) != 1 || ae.Fields[0].Field != tc.field) {
			t.Errorf("%s: fields %+v, want %s", tc.body, ae.Fields, tc.field)
		}
	}
}

// A key given twice is refused at any depth, naming it as field errors do;
// the same key in sibling objects is no repeat.
func TestDuplicateKey(t *testing.T) {
	for _, tc := range []struct {
		body  string
		field string // "" = accepted
	}{
		{`{"a": 1, "b": {"a": 1}, "c": [{"a": 1}, {"a": 2}]}`, ""},
		{`[{"host": "x"}, {"host": "y"}]`, ""},
		{`{"a": 1, "a": 1}`, "a"},
		{`{"m": {"k": "1", "k": null}}`, "m.k"},
		{`[{"host": "x"}, {"host": "y", "port": 1, "host": "z"}]`, "[1].host"},
		{`{"a": [[{"b": 1, "b": 2}]]}`, "a[0][0].b"},
	} {
		err := duplicateKey([]byte(tc.body))
		if tc.field == "" {
			if err != nil {
				t.Errorf("%s: %v, want accepted", tc.body, err)
			}
			continue
		}
		ae := toAPIError(err)
		if err == nil || ae.Status != http.StatusBadRequest || len(ae.Fields) != 1 || ae.Fields[0].Field != tc.field {
			t.Errorf("%s: %v (fields %+v), want 400 naming %s", tc.body, err, ae.Fields, tc.field)
		}
	}
}

// TestDecodeStrictExactNames: decodeStrict refuses a key that is not
// exactly a field's JSON name, at any depth and inside an
// apitypes.Optional; map keys are data and keep their case.
func TestDecodeStrictExactNames(t *testing.T) {
	for _, tc := range []struct {
		body  string
		field string // "" = accepted
	}{
		{`{"name":"a","metadata":{"k":"1","K":"2"},"health_check":{"rise":2}}`, ""},
		{`{"health_check":null,"metadata":null}`, ""},
		{`{"name":"a","NAME":"b"}`, "NAME"},
		{`{"NAME":"b"}`, "NAME"},
		{`{"health_check":{"rise":2,"RISE":3}}`, "health_check.RISE"},
		{`{"health_check":{"bogus":1}}`, "health_check.bogus"},
		{`{"metadata":{"k":"1","k":"2"}}`, "metadata.k"},
		// null is a value only where the type has one for it.
		{`{"health_check":null,"metadata":{"k":null},"hosts":null}`, ""},
		{`null`, "-"},
		{`{"hosts":["a.test",null]}`, "hosts[1]"},
		{`{"health_check":{"rise":null}}`, ""},
	} {
		var spec apitypes.PoolSpec
		err := decodeStrict([]byte(tc.body), &spec)
		if tc.field == "" {
			if err != nil {
				t.Errorf("%s: %v, want accepted", tc.body, err)
			}
			continue
		}
		ae := toAPIError(err)
		if tc.field == "-" {
			if err == nil || ae.Status != http.StatusBadRequest || len(ae.Fields) != 0 {
				t.Errorf("%s: %v (fields %+v), want 400 naming no field", tc.body, err, ae.Fields)
			}
			continue
		}
		if err == nil || ae.Status != http.StatusBadRequest || len(ae.Fields) != 1 || ae.Fields[0].Field != tc.field {
			t.Errorf("%s: %v (fields %+v), want 400 naming %s", tc.body, err, ae.Fields, tc.field)
		}
	}
	if _, err := decodeStrictItems[apitypes.BackendSpec]([]byte(`null`)); toAPIError(err).Status != http.StatusBadRequest {
		t.Errorf("null as a list of backends: %v, want 400", err)
	}
	items := `[{"url":"http://a.test:1"},{"url":"http://b.test:1","Weight":2}]`
	_, err := decodeStrictItems[apitypes.BackendSpec]([]byte(items))
	if ae := toAPIError(err); err == nil || len(ae.Fields) != 1 || ae.Fields[0].Field != "[1].Weight" {
		t.Errorf("%s: %v, want 400 naming [1].Weight", items, err)
	}
}

func TestMediaTypes(t *testing.T) {
	for _, tc := range []struct {
		ct string
		ok bool
	}{
		{"application/json", true},
		{"application/json; charset=utf-8", true},
		{"Application/JSON; charset=UTF-8", true},
		{"application/merge-patch+json", true},
		{"application/json; charset=latin1", false},
		{"text/json", false},
		{"application/json;;", false},
		{"", false},
	} {
		r := httptest.NewRequest("POST", "/", nil)
		if tc.ct != "" {
			r.Header.Set("Content-Type", tc.ct)
		}
		err := requireMediaType(r, "application/json", "application/merge-patch+json")
		if (err == nil) != tc.ok {
			t.Errorf("%q: %v", tc.ct, err)
		}
		if err != nil && toAPIError(err).Status != http.StatusUnsupportedMediaType {
			t.Errorf("%q: status %d", tc.ct, toAPIError(err).Status)
		}
	}
}

func TestBodyTooLarge(t *testing.T) {
	h := newHarness(t, withConfig(func(c *Config) { c.MaxBodyBytes = 1024 }))
	before := h.snapshot()
	big := `{"name":"web","metadata":{"k":"` + strings.Repeat("x", 2048) + `"}}`
	r := h.do("POST", "/api/pools", big)
	r.expect(t, http.StatusRequestEntityTooLarge, CodeTooLarge)
	if !strings.Contains(r.errDetail(t).Message, "1024") {
		t.Fatalf("message %s", r.Body)
	}
	h.do("PATCH", "/api/pools/web", big).expect(t, http.StatusRequestEntityTooLarge, CodeTooLarge)
	h.assertUnchanged(before, "oversized bodies")
	// At the limit is fine.
	h.createPool(map[string]any{"name": "web"})
}

// A query parameter given twice, or a query string that cannot be parsed,
// is a 400 before the route runs: ?cascade=false&cascade=true deleted the
// pool's backends or not depending on which one url.Values.Get kept, and a
// malformed pair was dropped without a word. The token is checked first.
func TestQueryRefusals(t *testing.T) {
	h := newHarness(t)
	h.createPool(map[string]any{"name": "web"})
	h.createBackend("web", map[string]any{"url": "http://10.0.0.1:80"})
	before := h.snapshot()
	for _, tc := range []struct {
		method, path, field string
	}{
		{"GET", "/api/pools?limit=1&limit=2", "limit"},
		{"GET", "/api/pools?after=a&after=b", "after"},
		{"DELETE", "/api/pools/web?cascade=false&cascade=true", "cascade"},
		{"DELETE", "/api/pools/web?cascade=true&cascade=true", "cascade"},
		{"GET", "/api/pools?limit=%zz", ""},
		{"GET", "/api/pools?limit=1;x=2", ""},
		{"POST", "/api/cluster/leave?force=true&force=false", "force"},
	} {
		r := h.do(tc.method, tc.path, nil)
		if tc.field != "" {
			r.expect(t, http.StatusBadRequest, CodeInvalid, tc.field)
		} else {
			r.expect(t, http.StatusBadRequest, CodeInvalid)
		}
	}
	h.assertUnchanged(before, "requests with repeated or malformed query parameters")
	h.do("GET", "/api/pools?limit=1&limit=2", nil, noAuth).expect(t, http.StatusUnauthorized, CodeUnauthorized)
	h.do("GET", "/api/pools?limit=1&after=", nil).expect(t, http.StatusOK, "")
}
