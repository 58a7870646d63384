package admin

import (
	"bytes"
	"encoding/json"
	"fmt"
	"github.com/singularity-ng/singularity-edge/apitypes"
	"net/http"
	"net/http/httptest"
	"testing"
)

// fuzzBody sends body through the whole handler (auth, routing, decoding,
// validation, a real store transaction) and fails on a server error, a
// panic (which the recovery middleware turns into a 500), an answer that
// is not JSON, or a rejected request that committed anything.
func fuzzBody(t *testing.T, h *harness, method, path string, body []byte) int {
	code, _ := fuzzBodyAnswer(t, h, method, path, body)
	return code
}

// storedAsSent fails unless every key of the object sent, at the top
// level and one level down (health_check), is a key of the
// object the API answered, with the same value for a string or a list of
// strings: a value is stored as sent or refused, never dropped, taken from
// a key spelt otherwise, or stored in another spelling (case, spaces, a
// trailing dot).
func storedAsSent(t *testing.T, body, answer []byte) {
	var sent, got map[string]any
	if json.Unmarshal(body, &sent) != nil {
		t.Fatalf("accepted %q, which is no JSON object", body)
	}
	if err := json.Unmarshal(answer, &got); err != nil {
		t.Fatalf("answer %s: %v", answer, err)
	}
	for k, v := range sent {
		g, ok := got[k]
		if !ok {
			t.Fatalf("accepted %q: %q is not in the answer %s", body, k, answer)
		}
		// url is shown rebuilt from host, port and scheme ("a.test" is
		// http://a.test:80).
		if s, isStr := v.(string); isStr && k != "url" && g != s {
			t.Fatalf("accepted %q: %s sent %q, stored %v", body, k, s, g)
		}
		if list, isList := v.([]any); isList {
			if gl, _ := g.([]any); fmt.Sprint(gl) != fmt.Sprint(list) {
				t.Fatalf("accepted %q: %s sent %v, stored %v", body, k, list, g)
			}
		}
		if sub, isObj := v.(map[string]any); isObj && k != "metadata" {
			gsub, _ := g.(map[string]any)
			for sk, sv := range sub {
				gv, ok := gsub[sk]
				if !ok {
					t.Fatalf("accepted %q: %s.%s is not in the answer %s", body, k, sk, answer)
				}
				if s, isStr := sv.(string); isStr && gv != s {
					t.Fatalf("accepted %q: %s.%s sent %q, stored %v", body, k, sk, s, gv)
				}
			}
		}
	}
}

func fuzzBodyAnswer(t *testing.T, h *harness, method, path string, body []byte) (int, []byte) {
	req := httptest.NewRequest(method, path, bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+testToken)
	req.Header.Set("Content-Type", "application/json")
	before := h.store.LastIndex()
	rec := httptest.NewRecorder()
	h.srv.Handler().ServeHTTP(rec, req)
	if rec.Code >= 500 {
		t.Fatalf("%s %s %q: %d %s", method, path, body, rec.Code, rec.Body)
	}
	if !json.Valid(rec.Body.Bytes()) {
		t.Fatalf("%s %s %q: answer is not JSON: %s", method, path, body, rec.Body)
	}
	if rec.Code >= 400 {
		if after := h.store.LastIndex(); after != before {
			t.Fatalf("%s %s %q: rejected with %d but committed", method, path, body, rec.Code)
		}
		var e apitypes.ErrorBody
		if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Error.Code == "" {
			t.Fatalf("%s %s %q: error without the shape: %s", method, path, body, rec.Body)
		}
	}
	return rec.Code, rec.Body.Bytes()
}

func FuzzPoolJSON(f *testing.F) {
	for _, tc := range badPoolInputs {
		f.Add([]byte(tc.body))
	}
	for _, seed := range []string{
		`{"name":"web"}`,
		`{"name":"api","algorithm":"consistent_hash","hash_on":"header:X-User","ssl_mode":"full_strict","ssl_domain":"api.example.test"}`,
		`{"name":"w2","hosts":["*.example.test","a.test"],"health_check_interval":1500,"health_check":{"type":"https","timeout":700,"max_fails":-1,"cooldown":1000}}`,
		`{"name":"sticky","sticky_cookie":"srv","prefer_region":true,"fail_open":true,"hold_new_backends":true,"default":true,"metadata":{"a":"b"}}`,
		`{"health_check":{"rise":1e3}}`,
		`{"name":"\u0000"}`,
		`{"name":"x","metadata":null,"hosts":null}`,
		``,
		`null`,
	} {
		f.Add([]byte(seed))
	}
	h := newHarness(f)
	h.createPool(map[string]any{"name": "fuzz"})
	f.Fuzz(func(t *testing.T, body []byte) {
		switch code, answer := fuzzBodyAnswer(t, h, "POST", "/api/pools", body); code {
		case http.StatusCreated:
			storedAsSent(t, body, answer)
		case http.StatusBadRequest, http.StatusUnprocessableEntity, http.StatusConflict:
		default:
			t.Fatalf("POST %q: unexpected status %d", body, code)
		}
		// 409: the patch makes the pool a second default, or claims a
		// host another pool routes.
		switch code := fuzzBody(t, h, "PATCH", "/api/pools/fuzz", body); code {
		case http.StatusOK, http.StatusBadRequest, http.StatusUnprocessableEntity, http.StatusConflict:
		default:
			t.Fatalf("PATCH %q: unexpected status %d", body, code)
		}
	})
}

func FuzzBackendJSON(f *testing.F) {
	for _, tc := range badBackendInputs {
		f.Add([]byte(tc.body))
	}
	for _, seed := range []string{
		`{"url":"http://10.0.1.10:8080"}`,
		`{"url":"https://[2001:db8::1]:8443","weight":10,"region":"syd"}`,
		`{"host":"backend.internal","port":8080,"scheme":"http","ssl_verify":true,"draining":true,"metadata":{"k":"v"}}`,
		`{"id":"fixed","url":"http://127.0.0.1:1"}`,
		`{"url":"http://[::1"}`,
		`{"url":"http://a.test:+80"}`,
		`{"port":1e2}`,
		``,
	} {
		f.Add([]byte(seed))
	}
	h := newHarness(f)
	h.createPool(map[string]any{"name": "web"})
	h.createBackend("web", map[string]any{"id": "b0", "url": "http://127.0.0.1:8000"})
	f.Fuzz(func(t *testing.T, body []byte) {
		switch code, answer := fuzzBodyAnswer(t, h, "POST", "/api/pools/web/backends", body); code {
		case http.StatusCreated:
			storedAsSent(t, body, answer)
		case http.StatusBadRequest, http.StatusUnprocessableEntity, http.StatusConflict:
		default:
			t.Fatalf("POST %q: unexpected status %d", body, code)
		}
		switch code := fuzzBody(t, h, "PATCH", "/api/pools/web/backends/b0", body); code {
		case http.StatusOK, http.StatusBadRequest, http.StatusUnprocessableEntity, http.StatusConflict:
		default:
			t.Fatalf("PATCH %q: unexpected status %d", body, code)
		}
	})
}
