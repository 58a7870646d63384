package admin

import (
	"encoding/json"
	"net/http"
	"reflect"
	"testing"

	"github.com/singularity-ng/singularity-edge/apitypes"
)

// FuzzDecodeStrict feeds arbitrary bodies to the request decoder of the
// pool and backend routes: a body is refused with a 400 and a message, or
// decoded into a spec that encodes back to the same JSON value (nothing
// sent was dropped, renamed or coerced, and nothing was added).
func FuzzDecodeStrict(f *testing.F) {
	for _, s := range []string{
		`{"name":"web","hosts":["a.test"],"health_check":{"rise":2,"path":"/h"},"metadata":{"k":"v","K":null}}`,
		`{"url":"http://a.test:1","weight":3,"metadata":null}`,
		`{"name":"a","NAME":"b"}`,
		`{"health_check":{"Rise":1}}`,
		`{"hosts":["a",null]}`,
		`{"port":1e2}`,
		`{"name":"\ud800"}`,
		`[{"url":"x"}]`,
		`{"a":1,"a":2}`,
		`null`,
	} {
		f.Add([]byte(s))
	}
	generic := func(b []byte) (any, error) {
		var v any
		err := json.Unmarshal(b, &v)
		return v, err
	}
	check := func(t *testing.T, body []byte, dst any, err error) {
		if err != nil {
			if ae := toAPIError(err); ae.Status != http.StatusBadRequest || ae.Message == "" {
				t.Fatalf("%q: refused with %d %q: %v", body, ae.Status, ae.Message, err)
			}
			return
		}
		enc, merr := json.Marshal(dst)
		if merr != nil {
			t.Fatalf("%q: decoded value does not encode: %v", body, merr)
		}
		sent, serr := generic(body)
		got, gerr := generic(enc)
		if serr != nil || gerr != nil || !reflect.DeepEqual(sent, got) {
			t.Fatalf("%q decoded to %s (%v, %v)", body, enc, serr, gerr)
		}
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var pool apitypes.PoolSpec
		check(t, body, &pool, decodeStrict(body, &pool))
		var backend apitypes.BackendSpec
		check(t, body, &backend, decodeStrict(body, &backend))
		items, err := decodeStrictItems[apitypes.BackendSpec](body)
		check(t, body, items, err)
	})
}
