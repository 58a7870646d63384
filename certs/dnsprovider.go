package certs

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/go-acme/lego/v4/challenge"
	"github.com/go-acme/lego/v4/challenge/dns01"
	legolog "github.com/go-acme/lego/v4/log"
	"github.com/go-acme/lego/v4/providers/dns/cloudflare"
	"github.com/go-acme/lego/v4/providers/dns/exec"
	"github.com/go-acme/lego/v4/providers/dns/httpreq"
)

// dnsProviders are the lego DNS providers this binary carries. lego's
// factory of all its providers (providers/dns) links the SDKs of some 180
// DNS hosts; these need nothing beyond the standard library, and exec and
// httpreq reach any other DNS host through a script or a webhook. Adding
// one is one line here and its module.
var dnsProviders = map[string]func() (challenge.Provider, error){
	"cloudflare": func() (challenge.Provider, error) { return cloudflare.NewDNSProvider() },
	"exec":       func() (challenge.Provider, error) { return exec.NewDNSProvider() },
	"httpreq":    func() (challenge.Provider, error) { return httpreq.NewDNSProvider() },
}

// DNSProviders lists the names DNSProviderFromEnv accepts.
func DNSProviders() []string {
	names := make([]string, 0, len(dnsProviders))
	for n := range dnsProviders {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// DNSProviderFromEnv returns lego's DNS-01 provider called name,
// configured from its environment variables exactly as lego documents
// them (CLOUDFLARE_DNS_API_TOKEN, EXEC_PATH, HTTPREQ_ENDPOINT, ...).
func DNSProviderFromEnv(name string) (challenge.Provider, error) {
	mk, ok := dnsProviders[strings.ToLower(name)]
	if !ok {
		return nil, fmt.Errorf("certs: DNS provider %q: want one of %s", name, strings.Join(DNSProviders(), ", "))
	}
	p, err := mk()
	if err != nil {
		return nil, fmt.Errorf("certs: DNS provider %s: %w", name, err)
	}
	return p, nil
}

// ctxDNSProvider is a DNS-01 provider whose propagation wait ends with
// the order's context.
//
// Why: lego's dns01 solver sleeps the provider's polling interval before
// its first check and between checks (platform/wait.For), up to the
// provider's propagation timeout (CLOUDFLARE_PROPAGATION_TIMEOUT and the
// like, minutes by default and any length when set), and none of it sees
// a context: an order abandoned during the wait left its goroutine
// checking DNS until the timeout. lego takes the provider's timeout and
// interval (challenge.ProviderTimeout) and a wrapper of its check
// (dns01.WrapPreCheck), so this provider tells lego an interval of zero,
// which makes its sleeps return at once, and wait runs the whole wait
// itself, on the context; lego's loop calls it once. A check in flight
// (lego's DNS queries, each bounded by its DNS timeout, 10 s) is not cut
// short: the wait ends after it.
type ctxDNSProvider struct {
	challenge.Provider
	ctx               context.Context
	timeout, interval time.Duration
}

// sequentialCtxDNSProvider keeps a provider's Sequential, which lego's
// dns01 solver finds by type assertion.
type sequentialCtxDNSProvider struct {
	*ctxDNSProvider
	seq interface{ Sequential() time.Duration }
}

func (p sequentialCtxDNSProvider) Sequential() time.Duration { return p.seq.Sequential() }

// withContext wraps p so that its propagation wait ends with ctx; the
// returned option installs the wait in lego's dns01 solver.
func withContext(ctx context.Context, p challenge.Provider) (challenge.Provider, dns01.ChallengeOption) {
	w := &ctxDNSProvider{Provider: p, ctx: ctx, timeout: dns01.DefaultPropagationTimeout, interval: dns01.DefaultPollingInterval}
	if pt, ok := p.(challenge.ProviderTimeout); ok {
		w.timeout, w.interval = pt.Timeout()
	}
	opt := dns01.WrapPreCheck(w.wait)
	if seq, ok := p.(interface{ Sequential() time.Duration }); ok {
		return sequentialCtxDNSProvider{ctxDNSProvider: w, seq: seq}, opt
	}
	return w, opt
}

// Timeout is the provider's propagation timeout and no interval: lego's
// own sleeps are skipped, and wait sleeps the provider's on the context.
func (p *ctxDNSProvider) Timeout() (timeout, interval time.Duration) { return p.timeout, 0 }

// wait is lego's propagation wait (the provider's interval before the
// first check and between checks, for at most its timeout) on the
// order's context. It always reports done, with the outcome as the
// error, so that lego's loop, whose interval is zero, never spins.
func (p *ctxDNSProvider) wait(domain, fqdn, value string, check dns01.PreCheckFunc) (bool, error) {
	// lego's own line says interval 0s: this is the wait that runs.
	legolog.Infof("[%s] acme: Waiting for DNS record propagation [timeout: %s, interval: %s]", domain, p.timeout, p.interval)
	deadline := time.Now().Add(p.timeout)
	if err := sleepCtx(p.ctx, p.interval); err != nil {
		return true, err
	}
	var lastErr error
	for {
		ok, err := check(fqdn, value)
		if ok {
			return true, err
		}
		if err != nil {
			lastErr = err
		}
		legolog.Infof("[%s] acme: Waiting for DNS record propagation.", domain)
		if err := sleepCtx(p.ctx, p.interval); err != nil {
			return true, err
		}
		if !time.Now().Before(deadline) {
			if lastErr != nil {
				return true, fmt.Errorf("propagation: time limit exceeded: last error: %w", lastErr)
			}
			return true, errors.New("propagation: time limit exceeded")
		}
	}
}
