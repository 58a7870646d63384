package discovery

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// FlyDNSServer is the resolver of Fly's private network.
const FlyDNSServer = "[fdaa::3]:53"

// DNSSource asks Fly's internal DNS who the Machines of an app are:
// vms.<app>.internal TXT lists "machine_id region" pairs, and
// <machine_id>.vm.<app>.internal AAAA gives each one's 6PN address;
// <app>.internal AAAA adds any address the TXT answer missed. It talks to
// the server directly with its own client (never the system resolver, never
// an ANY query), so tests can point it at a fake server.
type DNSSource struct {
	App     string
	Server  string        // host:port, FlyDNSServer on Fly
	Timeout time.Duration // per query
	client  *dns.Client
}

// NewDNSSource returns a source for app asking server.
func NewDNSSource(app, server string, timeout time.Duration) (*DNSSource, error) {
	if app == "" {
		return nil, errors.New("DNS discovery needs the app name (FLY_APP_NAME)")
	}
	if _, _, err := net.SplitHostPort(server); err != nil {
		return nil, fmt.Errorf("DNS server %q: %w", server, err)
	}
	if timeout <= 0 {
		timeout = 2 * time.Second
	}
	return &DNSSource{App: app, Server: server, Timeout: timeout, client: &dns.Client{Timeout: timeout}}, nil
}

// Name is "dns".
func (s *DNSSource) Name() string { return "dns" }

// Candidates resolves the app's Machines.
func (s *DNSSource) Candidates(ctx context.Context) ([]Candidate, error) {
	zone := s.App + ".internal."
	machines, txtErr := s.machines(ctx, "vms."+zone)
	var out []Candidate
	for _, m := range machines {
		addrs, err := s.aaaa(ctx, m.id+".vm."+zone)
		if err != nil {
			continue // the app-wide AAAA below still finds it
		}
		for _, a := range addrs {
			out = append(out, Candidate{Addr: a, MachineID: m.id, Region: m.region, Source: "dns"})
		}
	}
	all, aaaaErr := s.aaaa(ctx, zone)
	for _, a := range all {
		out = append(out, Candidate{Addr: a, Source: "dns"})
	}
	if txtErr != nil && aaaaErr != nil {
		return nil, errors.Join(txtErr, aaaaErr)
	}
	return mergeCandidates(0, out), nil
}

type machineEntry struct{ id, region string }

// machines parses the vms TXT record: "id region,id region,...". A long
// answer is split over several character-strings at arbitrary points, so
// the strings are joined before parsing.
func (s *DNSSource) machines(ctx context.Context, name string) ([]machineEntry, error) {
	rrs, err := s.query(ctx, name, dns.TypeTXT)
	if err != nil {
		return nil, err
	}
	var out []machineEntry
	for _, rr := range rrs {
		txt, ok := rr.(*dns.TXT)
		if !ok {
			continue
		}
		out = append(out, parseVMsTXT(strings.Join(txt.Txt, ""))...)
	}
	return out, nil
}

func parseVMsTXT(s string) []machineEntry {
	var out []machineEntry
	for _, item := range strings.Split(s, ",") {
		f := strings.Fields(item)
		switch len(f) {
		case 0:
		case 1:
			out = append(out, machineEntry{id: f[0]})
		default:
			out = append(out, machineEntry{id: f[0], region: f[1]})
		}
	}
	return out
}

func (s *DNSSource) aaaa(ctx context.Context, name string) ([]netip.Addr, error) {
	rrs, err := s.query(ctx, name, dns.TypeAAAA)
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	for _, rr := range rrs {
		if a, ok := rr.(*dns.AAAA); ok {
			if ip, ok := netip.AddrFromSlice(a.AAAA); ok {
				// An IPv4-mapped answer is dialed as IPv4.
				out = append(out, ip.Unmap())
			}
		}
	}
	return out, nil
}

// query sends one question over UDP and retries over TCP when the answer
// was truncated.
func (s *DNSSource) query(ctx context.Context, name string, qtype uint16) ([]dns.RR, error) {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.RecursionDesired = true
	m.SetEdns0(4096, false)
	in, _, err := s.client.ExchangeContext(ctx, m, s.Server)
	if err == nil && in.Truncated {
		tcp := *s.client
		tcp.Net = "tcp"
		in, _, err = tcp.ExchangeContext(ctx, m, s.Server)
	}
	if err != nil {
		return nil, fmt.Errorf("%s %s @%s: %w", dns.TypeToString[qtype], name, s.Server, err)
	}
	switch in.Rcode {
	case dns.RcodeSuccess:
		return in.Answer, nil
	case dns.RcodeNameError:
		return nil, nil // no Machines (yet): not an outage
	default:
		return nil, fmt.Errorf("%s %s @%s: %s", dns.TypeToString[qtype], name, s.Server, dns.RcodeToString[in.Rcode])
	}
}
