package agent

import (
	"strings"
	"testing"
	"time"

	"github.com/singularity-ng/singularity-edge/pools"
	"github.com/singularity-ng/singularity-edge/storage"
)

func TestConfigValidateOnDemand(t *testing.T) {
	for _, tc := range []struct {
		name    string
		mutate  func(*Config)
		wantErr string
	}{
		{"defaults", func(*Config) {}, ""},
		{"longest wait", func(c *Config) { c.OnDemandWait = 9 * time.Second }, ""},
		{"wait past the handshake timeout", func(c *Config) { c.OnDemandWait = 10 * time.Second }, "--on-demand-wait"},
		{"zero wait", func(c *Config) { c.OnDemandWait = 0 }, "--on-demand-wait"},
		{"zero refusal ttl", func(c *Config) { c.OnDemandRefusalTTL = 0 }, "--on-demand-refusal-ttl"},
		{"zero ask timeout", func(c *Config) { c.OnDemandAskTimeout = 0 }, "--on-demand-ask-timeout"},
		{"ask longer than the wait", func(c *Config) { c.OnDemandWait, c.OnDemandAskTimeout = 2*time.Second, 3*time.Second }, "--on-demand-ask-timeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfig()
			tc.mutate(&cfg)
			err := cfg.Validate()
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("error %v, want one naming %s", err, tc.wantErr)
			}
		})
	}
}

type fixedTable struct{ t *pools.Table }

func (f fixedTable) Table() *pools.Table { return f.t }

// The route adapter gives on-demand policies only for pools that opted in
// and terminate TLS, resolved as the proxy resolves names.
func TestOnDemandRoute(t *testing.T) {
	route := onDemandRoute(fixedTable{pools.NewTable([]storage.Pool{
		{Name: "saas", SSLMode: pools.SSLModeFlexible, SSLDomain: "app.example.com", OnDemandTLS: true,
			OnDemandAllow: []string{"*.shops.example.com"}, OnDemandAsk: "https://ask.example.com/", OnDemandRate: 4, Default: true},
		{Name: "static", SSLMode: pools.SSLModeFlexible, SSLDomain: "static.example.com"},
	}, nil, nil, pools.TableOptions{})})
	pol, ok := route("a.shops.example.com")
	if !ok || pol.Pool != "saas" || !pol.Allowed || pol.AskURL != "https://ask.example.com/" || pol.RatePerMinute != 4 {
		t.Fatalf("allowed name: %+v %v", pol, ok)
	}
	if pol, ok := route("other.example.org"); !ok || pol.Pool != "saas" || pol.Allowed {
		t.Fatalf("name routed by the default pool, not listed: %+v %v", pol, ok)
	}
	if _, ok := route("static.example.com"); ok {
		t.Fatal("a pool that did not opt in gave a policy")
	}
}
