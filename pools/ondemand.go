package pools

import (
	"fmt"
	"net/url"
	"strings"

	"github.com/singularity-ng/singularity-edge/internal/fielderr"
	"github.com/singularity-ng/singularity-edge/storage"
)

// On-demand TLS bounds.
const (
	// DefaultOnDemandRate is a pool's on-demand orders per minute across
	// the cluster when on_demand_tls is turned on without a rate.
	DefaultOnDemandRate = 10
	// MaxOnDemandRate bounds the field; the cluster's ACME budget
	// (orders per account per 3 h) still holds orders back beyond it.
	MaxOnDemandRate = 1000
	// MaxOnDemandAllow bounds a pool's allow-list, like MaxHosts.
	MaxOnDemandAllow = 1000
	maxAskURLLength  = 2048
)

// terminatesTLS reports whether mode presents a certificate of ours.
func terminatesTLS(mode string) bool {
	switch mode {
	case SSLModeFlexible, SSLModeFull, SSLModeFullStrict:
		return true
	}
	return false
}

// validateOnDemand checks the on-demand TLS fields as sent: patterns and
// the ask URL are refused, never rewritten, when they are not in the
// form they would be stored in. mode is the ssl_mode the client meant.
func validateOnDemand(p *storage.Pool, mode string, errs *fielderr.List) {
	if len(p.OnDemandAllow) > MaxOnDemandAllow {
		errs.Add("on_demand_allow", fmt.Sprintf("at most %d patterns, got %d", MaxOnDemandAllow, len(p.OnDemandAllow)))
	} else {
		seen := make(map[string]int, len(p.OnDemandAllow))
		for i, sent := range p.OnDemandAllow {
			field := fmt.Sprintf("on_demand_allow[%d]", i)
			h := servedHostForm(sent)
			if msg := checkServedHost(h); msg != "" {
				errs.Add(field, fmt.Sprintf("%q: %s", sent, msg))
				continue
			}
			if j, dup := seen[h]; dup {
				errs.Add(field, fmt.Sprintf("%q repeats on_demand_allow[%d]", sent, j))
				continue
			}
			seen[h] = i
			if h != sent {
				errs.Add(field, fmt.Sprintf("%q: %s", sent, sendInstead(sent, h, hostNameRule)))
			}
		}
	}
	if p.OnDemandAsk != "" {
		if msg := checkAskURL(p.OnDemandAsk); msg != "" {
			errs.Add("on_demand_ask", msg)
		}
	}
	if p.OnDemandRate < 0 || p.OnDemandRate > MaxOnDemandRate || (p.OnDemandTLS && p.OnDemandRate == 0) {
		errs.Add("on_demand_rate", fmt.Sprintf("must be between 1 and %d orders per minute, got %d", MaxOnDemandRate, p.OnDemandRate))
	}
	if !p.OnDemandTLS {
		return
	}
	if !terminatesTLS(mode) {
		errs.Add("on_demand_tls", fmt.Sprintf("a pool with ssl_mode %s presents no certificate of ours; on-demand TLS needs flexible, full or full_strict", mode))
	}
	if len(p.OnDemandAllow) == 0 && p.OnDemandAsk == "" {
		errs.Add("on_demand_tls", "needs on_demand_allow or on_demand_ask: without either any name sent by any client would get a certificate")
	}
}

// checkAskURL validates the URL asked about each new name: absolute
// http(s), no query parameter named domain (we add it), no fragment.
func checkAskURL(raw string) string {
	if len(raw) > maxAskURLLength {
		return fmt.Sprintf("longer than %d characters", maxAskURLLength)
	}
	if strings.TrimSpace(raw) != raw {
		return "must not start or end with spaces"
	}
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Sprintf("not a URL: %v", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Sprintf("want an http:// or https:// URL, got %q", raw)
	}
	if u.Host == "" {
		return "the URL has no host"
	}
	if u.Fragment != "" || strings.Contains(raw, "#") {
		return "the URL must not have a #fragment"
	}
	if u.User != nil {
		return "the URL must not carry credentials; protect the ask endpoint by network or by a secret path"
	}
	if u.Query().Has("domain") {
		return "the URL must not have a domain parameter: the agent adds ?domain=<name>"
	}
	return ""
}

// OnDemandAllows reports whether the pool's allow-list lets name (lower
// case, no trailing dot) get an on-demand certificate: the name matches
// an on_demand_allow pattern or one of the pool's own host names, or the
// pool has no allow-list (its ask URL then decides alone). It says
// nothing about the ask URL.
func (p *Pool) OnDemandAllows(name string) bool {
	if len(p.OnDemandAllow) == 0 {
		return true
	}
	return matchesAny(p.OnDemandAllow, name) || matchesAny(p.servedHosts(), name)
}

// matchesAny reports whether name matches one of patterns: an exact name,
// or a one-label wildcard (*.example.com matches a.example.com, not
// example.com nor a.b.example.com), as the routing table matches hosts.
func matchesAny(patterns []string, name string) bool {
	base := ""
	if i := strings.IndexByte(name, '.'); i > 0 {
		base = name[i+1:]
	}
	for _, pat := range patterns {
		if pat == name {
			return true
		}
		if b, ok := strings.CutPrefix(pat, "*."); ok && b == base {
			return true
		}
	}
	return false
}

// addOnDemandRoutes lists p's allow-list patterns in the table's
// on-demand maps (the pool whose name sorts first keeps a pattern two
// pools list).
func (t *Table) addOnDemandRoutes(p *Pool) {
	if !p.OnDemandTLS || !terminatesTLS(p.SSLMode) {
		return
	}
	for _, h := range p.OnDemandAllow {
		if base, ok := strings.CutPrefix(h, "*."); ok {
			if _, taken := t.onDemandWild[base]; !taken {
				t.onDemandWild[base] = p
			}
			continue
		}
		if _, taken := t.onDemandExact[h]; !taken {
			t.onDemandExact[h] = p
		}
	}
}

// lookupOnDemand finds the on-demand pool whose allow-list names host
// (lower case): an exact pattern first, then a one-label wildcard.
func (t *Table) lookupOnDemand(host string) *Pool {
	if len(t.onDemandExact) == 0 && len(t.onDemandWild) == 0 {
		return nil
	}
	if p := t.onDemandExact[host]; p != nil {
		return p
	}
	if i := strings.IndexByte(host, '.'); i > 0 {
		return t.onDemandWild[host[i+1:]]
	}
	return nil
}
