package pools

import (
	"strings"
	"testing"

	"github.com/singularity-ng/singularity-edge/internal/fielderr"
	"github.com/singularity-ng/singularity-edge/storage"
)

// Routing precedence: a pool's own hosts (exact, then wildcard), then the
// allow-list patterns of on-demand pools (exact, then wildcard), then the
// default pool. Patterns of a pool that is not on-demand, or does not
// terminate TLS, route nothing.
func TestTableLookupOnDemandPrecedence(t *testing.T) {
	tbl := NewTable([]storage.Pool{
		{Name: "explicit", SSLMode: SSLModeFlexible, Hosts: []string{"taken.shops.example.com", "*.claimed.example.com"}},
		{Name: "saas", SSLMode: SSLModeFlexible, SSLDomain: "app.example.com", OnDemandTLS: true,
			OnDemandAllow: []string{"*.shops.example.com", "*.claimed.example.com", "exact.example.net"}, OnDemandRate: 5},
		{Name: "narrow", SSLMode: SSLModeFlexible, SSLDomain: "n.example.com", OnDemandTLS: true,
			OnDemandAllow: []string{"vip.shops.example.com"}, OnDemandRate: 5},
		{Name: "off", SSLMode: SSLModeFlexible, SSLDomain: "o.example.com", OnDemandAllow: []string{"*.off.example.com"}},
		{Name: "passthrough", SSLMode: SSLModePassthrough, SSLDomain: "p.example.com", OnDemandTLS: true,
			OnDemandAllow: []string{"*.pt.example.com"}},
		{Name: "zz-default", SSLMode: SSLModeFlexible, SSLDomain: "d.example.com", Default: true},
	}, nil, nil, TableOptions{})
	for _, tc := range []struct{ host, want string }{
		{"taken.shops.example.com", "explicit"}, // exact host beats a pattern
		{"a.claimed.example.com", "explicit"},   // a wildcard host beats a pattern
		{"vip.shops.example.com", "narrow"},     // exact pattern beats a wildcard pattern
		{"shoe.shops.example.com", "saas"},      // wildcard pattern
		{"SHOE.Shops.example.com.", "saas"},     // case and trailing dot
		{"exact.example.net", "saas"},           // exact pattern
		{"a.b.shops.example.com", "zz-default"}, // one label only, like hosts
		{"x.off.example.com", "zz-default"},     // on_demand_tls off: no route
		{"x.pt.example.com", "zz-default"},      // passthrough presents no certificate
		{"unknown.example.org", "zz-default"},   // the default pool last
	} {
		if got := lookupName(tbl.Lookup(tc.host)); got != tc.want {
			t.Errorf("Lookup(%q) = %s, want %s", tc.host, got, tc.want)
		}
	}
}

func TestPoolOnDemandAllows(t *testing.T) {
	tbl := NewTable([]storage.Pool{
		{Name: "listed", SSLMode: SSLModeFlexible, Hosts: []string{"*.tenants.example.com"}, OnDemandTLS: true,
			OnDemandAllow: []string{"*.shops.example.com"}, OnDemandRate: 1, Default: true},
		{Name: "askonly", SSLMode: SSLModeFlexible, Hosts: []string{"*.ask.example.com"}, OnDemandTLS: true,
			OnDemandAsk: "https://ask.example.com/check", OnDemandRate: 1},
	}, nil, nil, TableOptions{})
	listed, askonly := tbl.Pool("listed"), tbl.Pool("askonly")
	for _, tc := range []struct {
		p    *Pool
		name string
		want bool
	}{
		{listed, "a.shops.example.com", true},
		{listed, "a.tenants.example.com", true}, // the pool's own hosts count
		{listed, "evil.example.org", false},     // routed by default, not listed
		{listed, "shops.example.com", false},
		{askonly, "anything.ask.example.com", true}, // no allow-list: the ask URL decides
	} {
		if got := tc.p.OnDemandAllows(tc.name); got != tc.want {
			t.Errorf("%s.OnDemandAllows(%q) = %v, want %v", tc.p.Name, tc.name, got, tc.want)
		}
	}
}

func TestValidatePoolOnDemand(t *testing.T) {
	base := func() storage.Pool {
		p := DefaultPool()
		p.Name, p.SSLMode, p.SSLDomain = "saas", SSLModeFlexible, "app.example.com"
		return p
	}
	for _, tc := range []struct {
		name   string
		mutate func(*storage.Pool)
		field  string // "" = valid
		msg    string
	}{
		{"allow list", func(p *storage.Pool) {
			p.OnDemandTLS, p.OnDemandAllow, p.OnDemandRate = true, []string{"*.shops.example.com", "x.example.net"}, 10
		}, "", ""},
		{"ask only", func(p *storage.Pool) {
			p.OnDemandTLS, p.OnDemandAsk, p.OnDemandRate = true, "http://127.0.0.1:9/ask?key=1", 1
		}, "", ""},
		{"off with settings kept", func(p *storage.Pool) { p.OnDemandAllow = []string{"*.shops.example.com"} }, "", ""},
		{"neither allow nor ask", func(p *storage.Pool) { p.OnDemandTLS, p.OnDemandRate = true, 10 }, "on_demand_tls", "needs on_demand_allow or on_demand_ask"},
		{"plain http pool", func(p *storage.Pool) {
			p.SSLMode, p.SSLDomain = SSLModeOff, ""
			p.OnDemandTLS, p.OnDemandAllow, p.OnDemandRate = true, []string{"a.example.com"}, 10
		}, "on_demand_tls", "presents no certificate"},
		{"passthrough pool", func(p *storage.Pool) {
			p.SSLMode = SSLModePassthrough
			p.OnDemandTLS, p.OnDemandAllow, p.OnDemandRate = true, []string{"a.example.com"}, 10
		}, "on_demand_tls", "presents no certificate"},
		{"rate zero", func(p *storage.Pool) {
			p.OnDemandTLS, p.OnDemandAllow, p.OnDemandRate = true, []string{"a.example.com"}, 0
		}, "on_demand_rate", "between 1 and"},
		{"rate negative", func(p *storage.Pool) { p.OnDemandRate = -1 }, "on_demand_rate", "between 1 and"},
		{"rate too high", func(p *storage.Pool) {
			p.OnDemandTLS, p.OnDemandAllow, p.OnDemandRate = true, []string{"a.example.com"}, MaxOnDemandRate+1
		}, "on_demand_rate", "between 1 and"},
		{"upper case pattern", func(p *storage.Pool) { p.OnDemandAllow = []string{"A.example.com"} }, "on_demand_allow[0]", `"A.example.com": send "a.example.com" (host names are lower case`},
		{"spaces", func(p *storage.Pool) { p.OnDemandAllow = []string{" a.example.com"} }, "on_demand_allow[0]", `surrounding spaces; send "a.example.com"`},
		{"trailing dot", func(p *storage.Pool) { p.OnDemandAllow = []string{"*.example.com."} }, "on_demand_allow[0]", `send "*.example.com"`},
		{"deep wildcard", func(p *storage.Pool) { p.OnDemandAllow = []string{"a.*.example.com"} }, "on_demand_allow[0]", "leading label"},
		{"tld wildcard", func(p *storage.Pool) { p.OnDemandAllow = []string{"*.com"} }, "on_demand_allow[0]", "two labels"},
		{"repeat", func(p *storage.Pool) { p.OnDemandAllow = []string{"a.example.com", "a.example.com"} }, "on_demand_allow[1]", "repeats on_demand_allow[0]"},
		{"ask not http", func(p *storage.Pool) { p.OnDemandAsk = "ftp://ask.example.com/" }, "on_demand_ask", "http:// or https://"},
		{"ask relative", func(p *storage.Pool) { p.OnDemandAsk = "/ask" }, "on_demand_ask", "http:// or https://"},
		{"ask with domain", func(p *storage.Pool) { p.OnDemandAsk = "https://ask.example.com/?domain=x" }, "on_demand_ask", "domain parameter"},
		{"ask with credentials", func(p *storage.Pool) { p.OnDemandAsk = "https://u:p@ask.example.com/" }, "on_demand_ask", "credentials"},
		{"ask with fragment", func(p *storage.Pool) { p.OnDemandAsk = "https://ask.example.com/#x" }, "on_demand_ask", "fragment"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := base()
			tc.mutate(&p)
			sent := append([]string(nil), p.OnDemandAllow...)
			err := ValidatePool(&p)
			if tc.field == "" {
				if err != nil {
					t.Fatalf("want valid, got %v", err)
				}
				if strings.Join(p.OnDemandAllow, ",") != strings.Join(sent, ",") {
					t.Fatalf("allow-list rewritten: sent %q, now %q", sent, p.OnDemandAllow)
				}
				return
			}
			list, ok := fielderr.From(err)
			if !ok {
				t.Fatalf("want a field error on %s, got %v", tc.field, err)
			}
			for _, fe := range list {
				if fe.Field == tc.field && strings.Contains(fe.Message, tc.msg) {
					return
				}
			}
			t.Fatalf("want %s: ...%s..., got %v", tc.field, tc.msg, err)
		})
	}
}
