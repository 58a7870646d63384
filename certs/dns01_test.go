package certs

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/go-acme/lego/v4/challenge/dns01"
	"github.com/miekg/dns"
)

// zoneFixture answers every question from records as a recursive resolver
// would: the records of the name and type asked, a CNAME at the name
// (with what it points to, when held) for any other type, NOERROR with no
// answer for a name that exists without that type (an empty non-terminal
// included), NXDOMAIN for a name that does not, and SERVFAIL at or under a
// name in servfail.
func zoneFixture(t *testing.T, records []string, servfail ...string) string {
	t.Helper()
	var rrs []dns.RR
	for _, s := range records {
		rr, err := dns.NewRR(s)
		if err != nil {
			t.Fatalf("record %q: %v", s, err)
		}
		rrs = append(rrs, rr)
	}
	exists := func(name string) bool {
		for _, rr := range rrs {
			if n := rr.Header().Name; strings.EqualFold(n, name) || dns.IsSubDomain(name, n) {
				return true
			}
		}
		return false
	}
	answer := func(name string, qtype uint16) []dns.RR {
		var out []dns.RR
		for _, rr := range rrs {
			if strings.EqualFold(rr.Header().Name, name) && rr.Header().Rrtype == qtype {
				out = append(out, rr)
			}
		}
		return out
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		q := r.Question[0]
		switch {
		case func() bool {
			for _, z := range servfail {
				if dns.IsSubDomain(z, q.Name) {
					return true
				}
			}
			return false
		}():
			m.Rcode = dns.RcodeServerFailure
		case !exists(q.Name):
			m.Rcode = dns.RcodeNameError
		default:
			m.Answer = answer(q.Name, q.Qtype)
			if cn := answer(q.Name, dns.TypeCNAME); len(m.Answer) == 0 && len(cn) > 0 {
				m.Answer = append(cn, answer(cn[0].(*dns.CNAME).Target, q.Qtype)...)
			}
		}
		_ = w.WriteMsg(m)
	})}
	go func() { _ = srv.ActivateAndServe() }()
	t.Cleanup(func() { _ = srv.Shutdown() })
	return pc.LocalAddr().String()
}

// TestDNSCheckerMatchesLego holds dnsChecker, which answers dns-01 here so
// that its queries end with the order's context (dns01.go), to lego's own
// answers on the same DNS data: the zone a name is in
// (dns01.FindZoneByFqdnCustom) and where a challenge's CNAME chain leads
// (dns01.GetChallengeInfo), loops and dead ends included.
func TestDNSCheckerMatchesLego(t *testing.T) {
	addr := zoneFixture(t, []string{
		"example.com. 300 IN SOA ns.example.com. admin.example.com. 1 7200 3600 1209600 300",
		"example.com. 300 IN NS ns.example.com.",
		"a.b.example.com. 300 IN A 192.0.2.1",
		"sub.example.com. 300 IN SOA ns.example.com. admin.example.com. 1 7200 3600 1209600 300",
		"x.sub.example.com. 300 IN A 192.0.2.2",
		"cname.example.com. 300 IN CNAME target.example.net.",
		"apexalias.example.com. 300 IN CNAME example.net.",
		"example.net. 300 IN SOA ns.example.net. admin.example.net. 1 7200 3600 1209600 300",
		"target.example.net. 300 IN A 192.0.2.3",
		"_acme-challenge.alias.example.com. 300 IN CNAME _acme-challenge.target.example.net.",
		"_acme-challenge.target.example.net. 300 IN CNAME final.example.org.",
		"_acme-challenge.self.example.com. 300 IN CNAME _acme-challenge.self.example.com.",
		"_acme-challenge.ring1.example.com. 300 IN CNAME _acme-challenge.ring2.example.com.",
		"_acme-challenge.ring2.example.com. 300 IN CNAME _acme-challenge.ring1.example.com.",
		"_acme-challenge.plain.example.com. 300 IN TXT \"v\"",
	}, "broken.example.com.")
	ctx := context.Background()
	c := dnsChecker{recursive: []string{addr}, timeout: 5 * time.Second, port: "53"}

	t.Run("zone", func(t *testing.T) {
		for _, name := range []string{
			"example.com.", "a.b.example.com.", "b.example.com.", "x.sub.example.com.", "sub.example.com.",
			"cname.example.com.", "under.cname.example.com.", "x.apexalias.example.com.", "target.example.net.", "nope.invalid.",
			"q.broken.example.com.",
		} {
			dns01.ClearFqdnCache()
			want, wantErr := dns01.FindZoneByFqdnCustom(name, []string{addr})
			got, err := c.zoneOf(ctx, name)
			if (err != nil) != (wantErr != nil) || got != want {
				t.Errorf("zoneOf(%s) = %q, %v; lego: %q, %v", name, got, err, want, wantErr)
			}
		}
	})

	t.Run("cname", func(t *testing.T) {
		t.Setenv("LEGO_DISABLE_CNAME_SUPPORT", "")
		// GetChallengeInfo asks lego's process-wide resolvers.
		_ = dns01.AddRecursiveNameservers([]string{addr})(nil)
		t.Cleanup(func() { _ = dns01.AddRecursiveNameservers(systemResolvers())(nil) })
		for _, domain := range []string{"alias.example.com", "self.example.com", "ring1.example.com", "plain.example.com", "none.example.com", "nope.invalid"} {
			want := dns01.GetChallengeInfo(domain, "key-authorization").EffectiveFQDN
			got, err := c.followCNAME(ctx, "_acme-challenge."+domain+".")
			if err != nil || got != want {
				t.Errorf("followCNAME(%s) = %q, %v; lego: %q", domain, got, err, want)
			}
		}
	})
}
