package admin

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/singularity-ng/singularity-edge/apitypes"
)

// sendNamed finds the value a refusal tells the client to send instead:
// `send "X"`, X quoted as Go quotes it, or `send "key": "X"` naming the
// field's key too.
var sendNamed = regexp.MustCompile(`send ("(?:[^"\\]|\\.)*")(?:: ("(?:[^"\\]|\\.)*"))?`)

// sentValue is the value a sendNamed match names, and the key it names
// with it ("" when none).
func sentValue(m []string) (key, value string, err error) {
	if m[2] == "" {
		value, err = strconv.Unquote(m[1])
		return "", value, err
	}
	if key, err = strconv.Unquote(m[1]); err != nil {
		return "", "", err
	}
	value, err = strconv.Unquote(m[2])
	return key, value, err
}

// listElement finds the element of hosts a refusal is about: hosts are
// refused on the field "hosts" with a message naming "hosts[i]".
var listElement = regexp.MustCompile(`^hosts\[(\d+)\] `)

// fieldIndex splits a field error's field such as "[2].url",
// "on_demand_allow[3]" or "health_check.type" into the path of JSON keys
// and array indexes (strings and ints) that leads to the value in the
// request body. An error on hosts names its element in the message.
func fieldIndex(field, message string) []any {
	var path []any
	rest := field
	for rest != "" {
		switch {
		case rest[0] == '[':
			end := strings.IndexByte(rest, ']')
			if end < 0 {
				return nil
			}
			i, err := strconv.Atoi(rest[1:end])
			if err != nil {
				return nil
			}
			path = append(path, i)
			rest = strings.TrimPrefix(rest[end+1:], ".")
		default:
			end := strings.IndexAny(rest, ".[")
			if end < 0 {
				end = len(rest)
			}
			path = append(path, rest[:end])
			rest = strings.TrimPrefix(rest[end:], ".")
		}
	}
	if len(path) > 0 && path[len(path)-1] == "hosts" {
		m := listElement.FindStringSubmatch(message)
		if m == nil {
			return nil
		}
		i, _ := strconv.Atoi(m[1])
		path = append(path, i)
	}
	return path
}

// setAt replaces the string at path in v with s; false when the request
// has no string there.
func setAt(v any, path []any, s string) bool {
	for i, step := range path {
		last := i == len(path)-1
		switch step := step.(type) {
		case string:
			obj, ok := v.(map[string]any)
			if !ok {
				return false
			}
			if last {
				if _, isStr := obj[step].(string); !isStr {
					return false
				}
				obj[step] = s
				return true
			}
			v = obj[step]
		case int:
			list, ok := v.([]any)
			if !ok || step >= len(list) {
				return false
			}
			if last {
				if _, isStr := list[step].(string); !isStr {
					return false
				}
				list[step] = s
				return true
			}
			v = list[step]
		}
	}
	return false
}

// sameField reports whether a field error is about the value at path:
// the same field, and for hosts the same element.
func sameField(fe apitypes.FieldError, path []any) bool {
	p := fieldIndex(fe.Field, fe.Message)
	return p != nil && fmt.Sprint(p) == fmt.Sprint(path)
}

// otherFieldRefusals are the refusals of a value in its stored form that
// another field or another object causes: a host or an id already taken,
// a list naming the same value twice, a field the pool's algorithm or
// mode does not use, a TLS pool without a host name, a backend its pool
// cannot reach, a certificate that is not stored or does not cover the
// pool's domain. Any other refusal of the value a message said to send
// breaks the promise that sending it works.
var otherFieldRefusals = []string{
	"already", "repeats", "only used by", "passthrough", "ssl_mode", "needs ssl_domain or hosts",
	"cannot be changed", "routes", "pool \"", "no certificate with id", "does not cover",
}

// FuzzSendAsNamed: whenever a pool or a backend is refused with a message
// `send "X"` for a field, the request with X in that field is not refused
// for that field's value (its other fields may still be). A message that
// names a value to send must name one the API takes.
func FuzzSendAsNamed(f *testing.F) {
	for _, s := range []struct {
		backend bool
		body    string
	}{
		{false, `{"name":"P11"}`},
		{false, `{"name":"P 1"}`},
		{false, `{"name":"Web","algorithm":"Consistent_Hash","hash_on":"HEADER: x-user"}`},
		{false, `{"name":"w1","hosts":["A.test","a.test ","*.B.test."],"ssl_mode":" Flexible","ssl_domain":"C.test."}`},
		{false, `{"name":"w2","ssl_mode":"TERMINATE","hosts":["x.test"],"ssl_cert_id":" c1 ","sticky_cookie":" s "}`},
		{false, `{"name":"w3","on_demand_tls":true,"ssl_mode":"flexible","on_demand_allow":["*.A.test","B.test."],"hosts":["h.test"]}`},
		{false, `{"name":"w4","health_check":{"type":"HTTPS"},"backend_server_name":"Api.Test.","backend_client_cert_id":"k1 "}`},
		{false, `{"hash_on":"Client_IP","algorithm":"consistent_hash"}`},
		{true, `{"url":"HTTP://A.test:080/"}`},
		{true, `{"url":" http://[2001:DB8:0::1]:80"}`},
		{true, `{"id":" b1","host":"[10.0.0.1]","scheme":"HTTPS","region":"IAD"}`},
		{true, `{"host":"A.B.","port":81,"region":" syd"}`},
		{true, `[{"url":"http://a.test:1"},{"url":"HTTP://B.test:2"}]`},
	} {
		f.Add(s.backend, []byte(s.body))
	}
	h := newHarness(f)
	h.createPool(map[string]any{"name": "fuzz"})
	h.createPool(map[string]any{"name": "web"})
	h.createBackend("web", map[string]any{"id": "b0", "url": "http://127.0.0.1:8000"})
	f.Fuzz(func(t *testing.T, backend bool, body []byte) {
		routes := [][2]string{{"POST", "/api/pools"}, {"PATCH", "/api/pools/fuzz"}}
		if backend {
			routes = [][2]string{{"POST", "/api/pools/web/backends"}, {"PATCH", "/api/pools/web/backends/b0"}}
		}
		for _, rt := range routes {
			checkSendAsNamed(t, h, rt[0], rt[1], body)
		}
	})
}

func checkSendAsNamed(t *testing.T, h *harness, method, path string, body []byte) {
	code, answer := fuzzBodyAnswer(t, h, method, path, body)
	if code < 400 {
		return
	}
	var e apitypes.ErrorBody
	if err := json.Unmarshal(answer, &e); err != nil {
		t.Fatalf("%s %s %q: %v", method, path, body, err)
	}
	for _, fe := range e.Error.Fields {
		m := sendNamed.FindStringSubmatch(fe.Message)
		if m == nil {
			continue
		}
		key, want, err := sentValue(m)
		if err != nil {
			t.Fatalf("%s %s %q: %s: %q names no quoted value: %v", method, path, body, fe.Field, fe.Message, err)
		}
		at := fieldIndex(fe.Field, fe.Message)
		if key != "" && (len(at) == 0 || at[len(at)-1] != key) {
			t.Fatalf("%s %s %q: %s: %q names another key", method, path, body, fe.Field, fe.Message)
		}
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.UseNumber()
		var sent any
		if at == nil || dec.Decode(&sent) != nil || !setAt(sent, at, want) {
			t.Fatalf("%s %s %q: %s: %q is about no string the request sent", method, path, body, fe.Field, fe.Message)
		}
		resend, err := json.Marshal(sent)
		if err != nil {
			t.Fatal(err)
		}
		code, answer := fuzzBodyAnswer(t, h, method, path, resend)
		if code < 400 {
			if _, isObject := sent.(map[string]any); isObject && code == http.StatusCreated {
				storedAsSent(t, resend, answer)
			}
			continue
		}
		var again apitypes.ErrorBody
		if err := json.Unmarshal(answer, &again); err != nil {
			t.Fatalf("%s %s %q: %v", method, path, resend, err)
		}
		for _, ae := range again.Error.Fields {
			if !sameField(ae, at) {
				continue
			}
			if !sendNamed.MatchString(ae.Message) && containsAny(ae.Message, otherFieldRefusals) {
				continue
			}
			t.Fatalf("%s %s %q: %s: %q; sent as told, %q: %s: %q", method, path, body, fe.Field, fe.Message, resend, ae.Field, ae.Message)
		}
	}
}

func containsAny(s string, subs []string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}
