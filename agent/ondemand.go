package agent

import (
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/singularity-ng/singularity-edge/certs"
	"github.com/singularity-ng/singularity-edge/pools"
	"github.com/singularity-ng/singularity-edge/proxy"
)

// validateOnDemand checks the on-demand TLS flags.
func (c *Config) validateOnDemand() []error {
	var errs []error
	// The listener's handshake deadline runs from accept: the wait must
	// leave room for the rest of the handshake.
	if hs := proxy.DefaultConfig().TLSHandshakeTimeout; c.OnDemandWait <= 0 || c.OnDemandWait > hs-time.Second {
		errs = append(errs, fmt.Errorf("--on-demand-wait %s: want a positive duration of at most %s (the TLS handshake timeout is %s)", c.OnDemandWait, hs-time.Second, hs))
	}
	if c.OnDemandRefusalTTL <= 0 {
		errs = append(errs, fmt.Errorf("--on-demand-refusal-ttl %s must be positive", c.OnDemandRefusalTTL))
	}
	if c.OnDemandAskTimeout <= 0 {
		errs = append(errs, fmt.Errorf("--on-demand-ask-timeout %s must be positive", c.OnDemandAskTimeout))
	} else if c.OnDemandWait > 0 && c.OnDemandAskTimeout > c.OnDemandWait {
		errs = append(errs, errors.New("--on-demand-ask-timeout must not exceed --on-demand-wait: the handshake would give up before the answer"))
	}
	return errs
}

// buildOnDemand makes the TLS listener's certificate source: the SNI
// cache, and for names routed to a pool with on_demand_tls, a certificate
// ordered during the handshake by the ACME manager (a.acme, built first).
func (a *Agent) buildOnDemand(registry prometheus.Registerer) (*certs.OnDemand, error) {
	members := acmeCluster{a: a}
	cfg := certs.DefaultOnDemandConfig()
	cfg.Wait = a.cfg.OnDemandWait
	cfg.RefusalTTL = a.cfg.OnDemandRefusalTTL
	cfg.AskTimeout = a.cfg.OnDemandAskTimeout
	cfg.Logger = a.logger.Named("ondemand")
	cfg.Registerer = registry
	// Like automatic certificates: Let's Encrypt refuses names outside
	// the ICANN suffixes, and each refusal costs budget.
	cfg.ICANNOnly = a.auto != nil && a.auto.publicOnly
	return certs.NewOnDemand(cfg, a.certs, onDemandRoute(a.pools), a.acme, certs.NewStoreBackend(a.store, members), members)
}

// routeTable is the routing table as on-demand TLS reads it.
type routeTable interface{ Table() *pools.Table }

// onDemandRoute resolves a name as the proxy does (exact host, wildcard,
// on_demand_allow pattern, default pool) and returns the pool's
// on-demand policy when the pool opted in.
func onDemandRoute(r routeTable) certs.OnDemandRouter {
	return func(name string) (certs.OnDemandPolicy, bool) {
		p := r.Table().Lookup(name)
		if p == nil || !p.OnDemandTLS {
			return certs.OnDemandPolicy{}, false
		}
		switch p.SSLMode {
		case pools.SSLModeFlexible, pools.SSLModeFull, pools.SSLModeFullStrict:
		default:
			return certs.OnDemandPolicy{}, false
		}
		return certs.OnDemandPolicy{Pool: p.Name, Allowed: p.OnDemandAllows(name), AskURL: p.OnDemandAsk,
			RatePerMinute: p.OnDemandRate}, true
	}
}
