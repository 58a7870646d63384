package proxy

import (
	"net/netip"
)

// FlyProxyPrefixes are the addresses Fly.io's proxy connects to a Machine
// from (its private IPv4 range inside the Machine's network). They are the
// default trusted proxies of a listener without the PROXY protocol: there
// the TCP peer is Fly's proxy, not the client.
var FlyProxyPrefixes = []netip.Prefix{netip.MustParsePrefix("172.16.0.0/12")}

// trusts reports whether client's forwarding headers are kept. With
// Config.TrustedProxies nil, a listener without the PROXY protocol trusts
// FlyProxyPrefixes and one with it trusts no one (the PROXY header already
// named the client).
func (s *Server) trusts(client netip.Addr, proxyProto bool) bool {
	prefixes := s.cfg.TrustedProxies
	if prefixes == nil && !proxyProto {
		prefixes = FlyProxyPrefixes
	}
	client = client.Unmap()
	for _, p := range prefixes {
		if p.Contains(client) {
			return true
		}
	}
	return false
}

// appendForwardedElement appends an RFC 7239 forwarded-element for the
// client: for= (IPv6 quoted and bracketed) and proto=.
func appendForwardedElement(out []byte, client netip.Addr, https bool) []byte {
	out = append(out, "for="...)
	if client.Is6() && !client.Is4In6() {
		out = append(out, `"[`...)
		out = client.AppendTo(out)
		out = append(out, `]"`...)
	} else {
		out = client.Unmap().AppendTo(out)
	}
	if https {
		return append(out, ";proto=https"...)
	}
	return append(out, ";proto=http"...)
}
