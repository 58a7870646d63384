package certs

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/go-acme/lego/v4/acme"
	"github.com/go-acme/lego/v4/acme/api"
	"github.com/go-acme/lego/v4/challenge"
	"github.com/go-acme/lego/v4/challenge/dns01"
	legolog "github.com/go-acme/lego/v4/log"
	"github.com/miekg/dns"
)

// dns01Solver answers dns-01 as lego's dns01.Challenge does (the
// provider presents the record; its CNAME is followed; the record is
// looked for on the recursive and the zone's authoritative servers at
// the provider's interval, for at most its timeout; then the CA is
// told), with every wait on the order's context, DNS queries included.
//
// Why not lego's: its propagation wait sleeps without a context, and
// each of its DNS queries (the CNAME walk, the zone's SOA and NS, the
// TXT record on every server) runs to its 10 s timeout whatever
// happens to the order. An order abandoned while a resolver did not
// answer kept its goroutine, with its token and key, asking server after
// server; lego exports no query that takes a context.
type dns01Solver struct {
	ctx      context.Context
	core     *api.Core
	validate func(core *api.Core, domain string, chlg acme.Challenge) error
	provider challenge.Provider
	check    dnsChecker
}

// challenge returns authz's dns-01 challenge and its key authorization.
func (s *dns01Solver) challenge(authz acme.Authorization) (acme.Challenge, string, error) {
	chlg, err := challenge.FindChallenge(challenge.DNS01, authz)
	if err != nil {
		return acme.Challenge{}, "", err
	}
	keyAuth, err := s.core.GetKeyAuthorization(chlg.Token)
	return chlg, keyAuth, err
}

// PreSolve presents the record through the provider.
func (s *dns01Solver) PreSolve(authz acme.Authorization) error {
	domain := challenge.GetTargetedDomain(authz)
	legolog.Infof("[%s] acme: Preparing to solve DNS-01", domain)
	chlg, keyAuth, err := s.challenge(authz)
	if err != nil {
		return err
	}
	if err := s.provider.Present(authz.Identifier.Value, chlg.Token, keyAuth); err != nil {
		return fmt.Errorf("[%s] acme: error presenting token: %w", domain, err)
	}
	return nil
}

// Solve waits for the record to propagate, then asks the CA to validate.
func (s *dns01Solver) Solve(authz acme.Authorization) error {
	domain := challenge.GetTargetedDomain(authz)
	legolog.Infof("[%s] acme: Trying to solve DNS-01", domain)
	chlg, keyAuth, err := s.challenge(authz)
	if err != nil {
		return err
	}
	sum := sha256.Sum256([]byte(keyAuth))
	value := base64.RawURLEncoding.EncodeToString(sum[:])
	fqdn := "_acme-challenge." + authz.Identifier.Value + "."
	if off, _ := strconv.ParseBool(os.Getenv("LEGO_DISABLE_CNAME_SUPPORT")); !off {
		if fqdn, err = s.check.followCNAME(s.ctx, fqdn); err != nil {
			return err
		}
	}
	timeout, interval := dns01.DefaultPropagationTimeout, dns01.DefaultPollingInterval
	if pt, ok := s.provider.(challenge.ProviderTimeout); ok {
		timeout, interval = pt.Timeout()
	}
	legolog.Infof("[%s] acme: Waiting for DNS record propagation [timeout: %s, interval: %s, nameservers: %s]",
		domain, timeout, interval, strings.Join(s.check.recursive, ","))
	if err := s.waitPropagated(domain, fqdn, value, timeout, interval); err != nil {
		return err
	}
	chlg.KeyAuthorization = keyAuth
	return s.validate(s.core, domain, chlg)
}

// waitPropagated checks for the record after interval and then every
// interval, for at most timeout.
func (s *dns01Solver) waitPropagated(domain, fqdn, value string, timeout, interval time.Duration) error {
	deadline := time.Now().Add(timeout)
	var lastErr error
	for {
		if err := sleepCtx(s.ctx, interval); err != nil {
			return fmt.Errorf("[%s] acme: DNS record propagation: %w", domain, err)
		}
		ok, err := s.check.propagated(s.ctx, fqdn, value)
		if ok {
			return nil
		}
		if cerr := s.ctx.Err(); cerr != nil {
			return fmt.Errorf("[%s] acme: DNS record propagation: %w", domain, context.Cause(s.ctx))
		}
		if err != nil {
			lastErr = err
		}
		if !time.Now().Add(interval).Before(deadline) {
			if lastErr != nil {
				return fmt.Errorf("propagation: time limit exceeded: last error: %w", lastErr)
			}
			return errors.New("propagation: time limit exceeded")
		}
		legolog.Infof("[%s] acme: Waiting for DNS record propagation.", domain)
	}
}

// CleanUp removes the record through the provider.
func (s *dns01Solver) CleanUp(authz acme.Authorization) error {
	legolog.Infof("[%s] acme: Cleaning DNS-01 challenge", challenge.GetTargetedDomain(authz))
	chlg, keyAuth, err := s.challenge(authz)
	if err != nil {
		return err
	}
	return s.provider.CleanUp(authz.Identifier.Value, chlg.Token, keyAuth)
}

// Sequential reports the provider's wish to have its records presented
// one after another, and the wait between them.
func (s *dns01Solver) Sequential() (bool, time.Duration) {
	if p, ok := s.provider.(interface{ Sequential() time.Duration }); ok {
		return true, p.Sequential()
	}
	return false, 0
}

// dnsChecker looks for a dns-01 record the way lego's pre-check does,
// each query ending with its context.
type dnsChecker struct {
	// recursive are the resolvers asked ("host:port").
	recursive []string
	// authoritative: the record must be on every authoritative server
	// of its zone (lego's default); recursiveAll: on every recursive
	// resolver.
	authoritative, recursiveAll bool
	// timeout bounds each query (lego's 10 s).
	timeout time.Duration
	// port of the authoritative servers.
	port string
}

// defaultDNSTimeout bounds one DNS query, as lego's.
const defaultDNSTimeout = 10 * time.Second

// systemResolvers are the resolvers of /etc/resolv.conf, lego's default,
// or Google's when it names none.
func systemResolvers() []string {
	if cfg, err := dns.ClientConfigFromFile("/etc/resolv.conf"); err == nil && len(cfg.Servers) > 0 {
		return dns01.ParseNameservers(cfg.Servers)
	}
	return []string{"google-public-dns-a.google.com:53", "google-public-dns-b.google.com:53"}
}

// propagated reports whether fqdn holds the TXT record value where the
// checker looks.
func (c *dnsChecker) propagated(ctx context.Context, fqdn, value string) (bool, error) {
	r, err := c.query(ctx, fqdn, dns.TypeTXT, c.recursive, true)
	if err != nil {
		return false, fmt.Errorf("initial recursive nameserver: %w", err)
	}
	if r.Rcode == dns.RcodeSuccess {
		fqdn = cnameTarget(r, fqdn)
	}
	if c.recursiveAll {
		if _, err := c.onEvery(ctx, fqdn, value, c.recursive, false); err != nil {
			return false, fmt.Errorf("recursive nameservers: %w", err)
		}
	}
	if !c.authoritative {
		return true, nil
	}
	ns, err := c.authoritativeServers(ctx, fqdn)
	if err != nil {
		return false, err
	}
	found, err := c.onEvery(ctx, fqdn, value, ns, true)
	if err != nil {
		return found, fmt.Errorf("authoritative nameservers: %w", err)
	}
	return found, nil
}

// onEvery asks each of servers for fqdn's TXT records; true when every
// one has value.
func (c *dnsChecker) onEvery(ctx context.Context, fqdn, value string, servers []string, addPort bool) (bool, error) {
	for _, ns := range servers {
		if addPort {
			ns = net.JoinHostPort(ns, c.port)
		}
		r, err := c.query(ctx, fqdn, dns.TypeTXT, []string{ns}, false)
		if err != nil {
			return false, err
		}
		if r.Rcode != dns.RcodeSuccess {
			return false, fmt.Errorf("NS %s returned %s for %s", ns, dns.RcodeToString[r.Rcode], fqdn)
		}
		var records []string
		found := false
		for _, rr := range r.Answer {
			if txt, ok := rr.(*dns.TXT); ok {
				rec := strings.Join(txt.Txt, "")
				records = append(records, rec)
				if rec == value {
					found = true
					break
				}
			}
		}
		if !found {
			return false, fmt.Errorf("NS %s did not return the expected TXT record [fqdn: %s, value: %s]: %s", ns, fqdn, value, strings.Join(records, " ,"))
		}
	}
	return true, nil
}

// authoritativeServers returns the NS names of fqdn's zone.
func (c *dnsChecker) authoritativeServers(ctx context.Context, fqdn string) ([]string, error) {
	zone, err := c.zoneOf(ctx, fqdn)
	if err != nil {
		return nil, fmt.Errorf("could not find zone: %w", err)
	}
	r, err := c.query(ctx, zone, dns.TypeNS, c.recursive, true)
	if err != nil {
		return nil, fmt.Errorf("NS call failed: %w", err)
	}
	var out []string
	for _, rr := range r.Answer {
		if ns, ok := rr.(*dns.NS); ok {
			out = append(out, strings.ToLower(ns.Ns))
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("[zone=%s] could not determine authoritative nameservers", zone)
	}
	return out, nil
}

// zoneOf finds fqdn's zone apex: the first of its suffixes, longest
// first, whose SOA is in the answer (a CNAME cannot be at an apex).
func (c *dnsChecker) zoneOf(ctx context.Context, fqdn string) (string, error) {
	var lastErr error
	for domain := range dns01.DomainsSeq(fqdn) {
		r, err := c.query(ctx, domain, dns.TypeSOA, c.recursive, true)
		if err != nil {
			if ctx.Err() != nil {
				return "", err
			}
			lastErr = err
			continue
		}
		switch r.Rcode {
		case dns.RcodeSuccess:
			if slices.ContainsFunc(r.Answer, func(rr dns.RR) bool { _, ok := rr.(*dns.CNAME); return ok }) {
				continue
			}
			for _, rr := range r.Answer {
				if soa, ok := rr.(*dns.SOA); ok {
					return soa.Hdr.Name, nil
				}
			}
		case dns.RcodeNameError:
		default:
			return "", fmt.Errorf("unexpected response for '%s': %s", domain, dns.RcodeToString[r.Rcode])
		}
	}
	if lastErr != nil {
		return "", fmt.Errorf("[fqdn=%s] could not find the start of authority: %w", fqdn, lastErr)
	}
	return "", fmt.Errorf("[fqdn=%s] could not find the start of authority", fqdn)
}

// followCNAME follows fqdn's CNAME chain (at most 50 links), as lego
// does, to the name the record must be at.
func (c *dnsChecker) followCNAME(ctx context.Context, fqdn string) (string, error) {
	for range 50 {
		r, err := c.query(ctx, fqdn, dns.TypeCNAME, c.recursive, true)
		if ctx.Err() != nil {
			return "", fmt.Errorf("following the CNAME of %s: %w", fqdn, err)
		}
		if err != nil || r.Rcode != dns.RcodeSuccess {
			break
		}
		next := cnameTarget(r, fqdn)
		if next == fqdn {
			break
		}
		legolog.Infof("Found CNAME entry for %q: %q", fqdn, next)
		fqdn = next
	}
	return fqdn, nil
}

// cnameTarget is the target of r's CNAME for fqdn, fqdn when none.
func cnameTarget(r *dns.Msg, fqdn string) string {
	for _, rr := range r.Answer {
		if cn, ok := rr.(*dns.CNAME); ok && strings.EqualFold(cn.Hdr.Name, fqdn) {
			return cn.Target
		}
	}
	return fqdn
}

// query asks servers in turn until one answers with records, as lego's
// dnsQuery; it returns the last answer, or every error when the last
// server failed.
func (c *dnsChecker) query(ctx context.Context, name string, rtype uint16, servers []string, recursive bool) (*dns.Msg, error) {
	if len(servers) == 0 {
		return nil, errors.New("empty list of nameservers")
	}
	m := new(dns.Msg)
	m.SetQuestion(name, rtype)
	m.SetEdns0(4096, false)
	m.RecursionDesired = recursive
	var (
		r    *dns.Msg
		err  error
		errs []error
	)
	for _, ns := range servers {
		r, err = c.exchange(ctx, m, ns)
		if err == nil && len(r.Answer) > 0 {
			break
		}
		if err != nil {
			errs = append(errs, err)
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("DNS query for %s: %w", name, context.Cause(ctx))
		}
	}
	if err != nil {
		return r, errors.Join(errs...)
	}
	return r, nil
}

// exchange sends m to ns over UDP (TCP when the answer is truncated or
// LEGO_EXPERIMENTAL_DNS_TCP_ONLY is set, as lego) and returns the
// answer. The query ends when ctx does: the connection is closed under
// the read, which miekg/dns's ExchangeContext does not do (it takes only
// the context's deadline).
func (c *dnsChecker) exchange(ctx context.Context, m *dns.Msg, ns string) (*dns.Msg, error) {
	network := "udp"
	if tcp, _ := strconv.ParseBool(os.Getenv("LEGO_EXPERIMENTAL_DNS_TCP_ONLY")); tcp {
		network = "tcp"
	}
	r, err := c.exchangeOver(ctx, network, m, ns)
	if err == nil && r.Truncated && network == "udp" {
		r, err = c.exchangeOver(ctx, "tcp", m, ns)
	}
	if err != nil {
		return r, fmt.Errorf("DNS call error [ns=%s, question='%s']: %w", ns, strings.TrimPrefix(m.Question[0].String(), ";"), err)
	}
	return r, nil
}

func (c *dnsChecker) exchangeOver(ctx context.Context, network string, m *dns.Msg, ns string) (*dns.Msg, error) {
	if err := ctx.Err(); err != nil {
		return nil, context.Cause(ctx)
	}
	cl := &dns.Client{Net: network, Timeout: c.timeout}
	conn, err := cl.DialContext(ctx, ns)
	if err != nil {
		if ctx.Err() != nil {
			return nil, context.Cause(ctx)
		}
		return nil, err
	}
	defer conn.Close()
	// Closing (not a past deadline, which the exchange would overwrite
	// with its own) makes the read return at once.
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	defer stop()
	r, _, err := cl.ExchangeWithConnContext(ctx, m, conn)
	if ctx.Err() != nil {
		return nil, context.Cause(ctx)
	}
	return r, err
}
