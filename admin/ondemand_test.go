package admin

import (
	"net/http"
	"slices"
	"testing"
)

// On-demand TLS fields are stored as sent; on_demand_rate follows
// on_demand_tls only when left out.
func TestPoolOnDemandFieldsStoredAsSent(t *testing.T) {
	h := newHarness(t)
	p := h.createPool(map[string]any{"name": "saas", "ssl_mode": "flexible", "ssl_domain": "app.example.com",
		"on_demand_tls": true, "on_demand_allow": []string{"*.shops.example.com", "x.example.net"},
		"on_demand_ask": "https://ask.example.com/check?key=k"})
	if !p.OnDemandTLS || !slices.Equal(p.OnDemandAllow, []string{"*.shops.example.com", "x.example.net"}) ||
		p.OnDemandAsk != "https://ask.example.com/check?key=k" || p.OnDemandRate != 10 {
		t.Fatalf("stored %+v", p)
	}
	r := h.do("PATCH", "/api/pools/saas", map[string]any{"on_demand_rate": 3, "on_demand_allow": nil})
	r.expect(t, http.StatusOK, "")
	r.json(t, &p)
	if p.OnDemandRate != 3 || len(p.OnDemandAllow) != 0 || p.OnDemandAsk == "" {
		t.Fatalf("after PATCH %+v", p)
	}
	plain := h.createPool(map[string]any{"name": "plain"})
	if plain.OnDemandTLS || plain.OnDemandRate != 0 || plain.OnDemandAllow == nil {
		t.Fatalf("a pool that did not opt in: %+v", plain)
	}
}

// Bad on-demand settings answer 422 naming the field and store nothing.
func TestPoolOnDemandRefusals(t *testing.T) {
	h := newHarness(t)
	h.createPool(map[string]any{"name": "web", "ssl_mode": "flexible", "ssl_domain": "web.example.com"})
	tls := map[string]any{"ssl_mode": "flexible", "ssl_domain": "n.example.com"}
	with := func(kv ...any) map[string]any {
		m := map[string]any{"name": "n"}
		for k, v := range tls {
			m[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i].(string)] = kv[i+1]
		}
		return m
	}
	for _, tc := range []struct {
		name   string
		method string
		path   string
		body   map[string]any
		field  string
	}{
		{"neither allow nor ask", "POST", "/api/pools", with("on_demand_tls", true), "on_demand_tls"},
		{"plain HTTP pool", "POST", "/api/pools", map[string]any{"name": "n", "on_demand_tls": true, "on_demand_allow": []string{"a.example.com"}}, "on_demand_tls"},
		{"rate 0", "POST", "/api/pools", with("on_demand_tls", true, "on_demand_allow", []string{"a.example.com"}, "on_demand_rate", 0), "on_demand_rate"},
		{"rate null", "POST", "/api/pools", with("on_demand_rate", nil), "on_demand_rate"},
		// 0 sent with on-demand TLS off used to be stored, then replaced by
		// the default when on_demand_tls was turned on.
		{"rate 0 while off", "POST", "/api/pools", with("on_demand_rate", 0), "on_demand_rate"},
		{"rate 0 on a plain pool", "POST", "/api/pools", map[string]any{"name": "n", "on_demand_rate": 0}, "on_demand_rate"},
		{"rate 0 by update", "PATCH", "/api/pools/web", map[string]any{"on_demand_rate": 0}, "on_demand_rate"},
		{"rate negative while off", "POST", "/api/pools", with("on_demand_rate", -1), "on_demand_rate"},
		{"tls null", "POST", "/api/pools", with("on_demand_tls", nil), "on_demand_tls"},
		{"upper case pattern", "POST", "/api/pools", with("on_demand_allow", []string{"Shop.example.com"}), "on_demand_allow[0]"},
		{"bad ask", "POST", "/api/pools", with("on_demand_ask", "ask.example.com"), "on_demand_ask"},
		{"turn on without a policy", "PATCH", "/api/pools/web", map[string]any{"on_demand_tls": true}, "on_demand_tls"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := h.snapshot()
			h.do(tc.method, tc.path, tc.body).expect(t, http.StatusUnprocessableEntity, CodeInvalid, tc.field)
			h.assertUnchanged(before, tc.name)
		})
	}
}

// An allow pattern belongs to one on-demand pool: a second claim is 409
// naming the field and the other pool, and stores nothing. Patterns of a
// pool that is not on-demand claim nothing.
func TestPoolOnDemandPatternConflicts(t *testing.T) {
	h := newHarness(t)
	h.createPool(map[string]any{"name": "a", "ssl_mode": "flexible", "ssl_domain": "a.example.com",
		"on_demand_tls": true, "on_demand_allow": []string{"*.shops.example.com"}})
	h.createPool(map[string]any{"name": "idle", "ssl_mode": "flexible", "ssl_domain": "i.example.com",
		"on_demand_allow": []string{"*.shops.example.com"}})

	before := h.snapshot()
	h.do("POST", "/api/pools", map[string]any{"name": "b", "ssl_mode": "flexible", "ssl_domain": "b.example.com",
		"on_demand_tls": true, "on_demand_allow": []string{"x.example.net", "*.shops.example.com"}}).
		expect(t, http.StatusConflict, CodeConflict, "on_demand_allow[1]")
	h.do("PATCH", "/api/pools/idle", map[string]any{"on_demand_tls": true}).
		expect(t, http.StatusConflict, CodeConflict, "on_demand_allow[0]")
	h.assertUnchanged(before, "a second claim of a pattern")

	// Once a gives it up, it can be claimed.
	h.do("PATCH", "/api/pools/a", map[string]any{"on_demand_tls": false}).expect(t, http.StatusOK, "")
	h.do("PATCH", "/api/pools/idle", map[string]any{"on_demand_tls": true}).expect(t, http.StatusOK, "")
}
