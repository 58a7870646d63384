package proxy

import (
	"net/netip"
	"slices"
	"sync"
)

// FlyProxyPrefixes are the addresses Fly.io's proxy connects to a Machine
// from (its private IPv4 range inside the Machine's network). They are the
// default trusted proxies of a listener without the PROXY protocol: there
// the TCP peer is Fly's proxy, not the client.
var FlyProxyPrefixes = []netip.Prefix{netip.MustParsePrefix("172.16.0.0/12")}

// ProxyProtocolPeers are the peers whose PROXY headers a listener believes
// by default (Config.ProxyProtocolFrom nil): Fly's proxy, and loopback for
// a proxy on the same machine.
var ProxyProtocolPeers = append(slices.Clone(FlyProxyPrefixes),
	netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128"))

// believesProxyHeader reports whether the PROXY header sent by peer names
// the client.
func (s *Server) believesProxyHeader(peer netip.Addr) bool {
	prefixes := s.cfg.ProxyProtocolFrom
	if prefixes == nil {
		prefixes = ProxyProtocolPeers
	}
	return containsAddr(prefixes, peer)
}

func containsAddr(prefixes []netip.Prefix, a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range prefixes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// trusts reports whether client's forwarding headers are kept. With
// Config.TrustedProxies nil, a listener without the PROXY protocol trusts
// FlyProxyPrefixes and one with it trusts no one (the PROXY header already
// named the client).
func (s *Server) trusts(client netip.Addr, proxyProto bool) bool {
	prefixes := s.cfg.TrustedProxies
	if prefixes == nil && !proxyProto {
		prefixes = FlyProxyPrefixes
	}
	return containsAddr(prefixes, client)
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

// upgradeLimits counts tunnels (upgraded connections and passthrough TLS
// connections), in all and per client address: each holds a backend
// connection for as long as the client likes.
type upgradeLimits struct {
	mu       sync.Mutex
	total    int
	byClient map[netip.Addr]int
}

// acquireUpgrade takes a tunnel slot for the client of info; false when a
// limit is reached. A trusted proxy (Config.TrustedProxies) is held to the
// server's bound only: its address carries many clients, as for
// acquireExchange.
func (s *Server) acquireUpgrade(info *connInfo) bool {
	u := &s.upgrades
	client := info.client.Addr()
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.total >= s.cfg.MaxUpgrades || !info.trusted && u.byClient[client] >= s.cfg.MaxUpgradesPerClient {
		return false
	}
	u.total++
	if info.trusted {
		return true
	}
	if u.byClient == nil {
		u.byClient = make(map[netip.Addr]int)
	}
	u.byClient[client]++
	return true
}

// releaseUpgrade gives back the slot acquireUpgrade took for info.
func (s *Server) releaseUpgrade(info *connInfo) {
	u := &s.upgrades
	client := info.client.Addr()
	u.mu.Lock()
	defer u.mu.Unlock()
	u.total--
	if info.trusted {
		return
	}
	if u.byClient[client] <= 1 {
		delete(u.byClient, client)
	} else {
		u.byClient[client]--
	}
}
