// Package fakefly imitates the parts of Fly.io that discovery talks to, for
// tests: the internal DNS server of the private network (<app>.internal
// AAAA, vms.<app>.internal TXT, <id>.vm.<app>.internal AAAA) and the
// Machines API's list endpoint. Machines are added and removed at runtime.
package fakefly

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sort"
	"strings"
	"sync"

	"github.com/miekg/dns"
)

// Machine is one Fly Machine of an app.
type Machine struct {
	ID     string
	Region string
	Addr   netip.Addr // its 6PN address (an IPv4 address is served IPv4-mapped)
}

// DNS is a fake internal DNS server answering for one app.
type DNS struct {
	app string
	// txtChunk splits the vms TXT answer into character-strings of this
	// many bytes, as a long real answer is split.
	txtChunk int

	mu       sync.Mutex
	machines map[string]Machine
	qtypes   map[uint16]int
	down     bool

	udp *dns.Server
	tcp *dns.Server
}

// StartDNS serves on addr (UDP and TCP, e.g. "127.0.0.1:0").
func StartDNS(app, addr string) (*DNS, error) {
	d := &DNS{app: app, txtChunk: 20, machines: map[string]Machine{}, qtypes: map[uint16]int{}}
	// UDP and TCP share the port; with port 0 the UDP port picked may be
	// taken for TCP by another process, so try a few.
	var pc net.PacketConn
	var l net.Listener
	var err error
	for range 20 {
		pc, err = net.ListenPacket("udp", addr)
		if err != nil {
			return nil, err
		}
		l, err = net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			break
		}
		pc.Close()
	}
	if err != nil {
		return nil, err
	}
	d.udp = &dns.Server{PacketConn: pc, Handler: d}
	d.tcp = &dns.Server{Listener: l, Handler: d}
	started := make(chan struct{}, 2)
	d.udp.NotifyStartedFunc = func() { started <- struct{}{} }
	d.tcp.NotifyStartedFunc = func() { started <- struct{}{} }
	go func() { _ = d.udp.ActivateAndServe() }()
	go func() { _ = d.tcp.ActivateAndServe() }()
	<-started
	<-started
	return d, nil
}

// Addr is the server's host:port.
func (d *DNS) Addr() string { return d.udp.PacketConn.LocalAddr().String() }

// Close stops the server.
func (d *DNS) Close() {
	_ = d.udp.Shutdown()
	_ = d.tcp.Shutdown()
}

// Set adds or replaces machines.
func (d *DNS) Set(ms ...Machine) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, m := range ms {
		d.machines[m.ID] = m
	}
}

// Remove removes machines by id.
func (d *DNS) Remove(ids ...string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, id := range ids {
		delete(d.machines, id)
	}
}

// SetDown makes the server answer SERVFAIL to everything (an outage).
func (d *DNS) SetDown(down bool) {
	d.mu.Lock()
	d.down = down
	d.mu.Unlock()
}

// Queries returns how many questions of qtype were asked.
func (d *DNS) Queries(qtype uint16) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.qtypes[qtype]
}

func (d *DNS) sorted() []Machine {
	out := make([]Machine, 0, len(d.machines))
	for _, m := range d.machines {
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// ServeDNS answers like Fly's resolver.
func (d *DNS) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	d.mu.Lock()
	defer d.mu.Unlock()
	defer func() { _ = w.WriteMsg(m) }()
	if len(r.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		return
	}
	q := r.Question[0]
	d.qtypes[q.Qtype]++
	if d.down {
		m.Rcode = dns.RcodeServerFailure
		return
	}
	if q.Qtype == dns.TypeANY {
		// Fly's resolver, like most, does not answer ANY.
		m.Rcode = dns.RcodeNotImplemented
		return
	}
	zone := d.app + ".internal."
	name := strings.ToLower(q.Name)
	hdr := func(t uint16) dns.RR_Header {
		return dns.RR_Header{Name: q.Name, Rrtype: t, Class: dns.ClassINET, Ttl: 5}
	}
	switch {
	case name == zone && q.Qtype == dns.TypeAAAA:
		for _, mc := range d.sorted() {
			m.Answer = append(m.Answer, &dns.AAAA{Hdr: hdr(dns.TypeAAAA), AAAA: as16(mc.Addr)})
		}
	case name == "vms."+zone && q.Qtype == dns.TypeTXT:
		var parts []string
		for _, mc := range d.sorted() {
			parts = append(parts, mc.ID+" "+mc.Region)
		}
		if len(parts) > 0 {
			m.Answer = append(m.Answer, &dns.TXT{Hdr: hdr(dns.TypeTXT), Txt: chunk(strings.Join(parts, ","), d.txtChunk)})
		}
	case strings.HasSuffix(name, ".vm."+zone) && q.Qtype == dns.TypeAAAA:
		id := strings.TrimSuffix(name, ".vm."+zone)
		mc, ok := d.machines[id]
		if !ok {
			m.Rcode = dns.RcodeNameError
			return
		}
		m.Answer = append(m.Answer, &dns.AAAA{Hdr: hdr(dns.TypeAAAA), AAAA: as16(mc.Addr)})
	case name == zone || name == "vms."+zone:
		// The name exists, no records of that type.
	default:
		m.Rcode = dns.RcodeNameError
	}
}

func as16(a netip.Addr) net.IP {
	b := a.As16()
	return net.IP(b[:])
}

func chunk(s string, n int) []string {
	var out []string
	for len(s) > n {
		out = append(out, s[:n])
		s = s[n:]
	}
	return append(out, s)
}

// MachinesAPI is an http.Handler answering GET /v1/apps/{app}/machines with
// the machines of a DNS fake (started ones) plus Stopped ones.
type MachinesAPI struct {
	App     string
	DNS     *DNS
	Stopped []Machine
	Token   string // required bearer token ("" = any)

	mu       sync.Mutex
	requests int
}

// Requests returns how many list requests were served.
func (a *MachinesAPI) Requests() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.requests
}

func (a *MachinesAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet || r.URL.Path != fmt.Sprintf("/v1/apps/%s/machines", a.App) {
		http.Error(w, `{"error":"not found"}`, http.StatusNotFound)
		return
	}
	if a.Token != "" && !strings.Contains(r.Header.Get("Authorization"), a.Token) {
		http.Error(w, `{"error":"unauthorized"}`, http.StatusUnauthorized)
		return
	}
	a.mu.Lock()
	a.requests++
	a.mu.Unlock()
	type machine struct {
		ID        string `json:"id"`
		Name      string `json:"name"`
		State     string `json:"state"`
		Region    string `json:"region"`
		PrivateIP string `json:"private_ip"`
	}
	var out []machine
	a.DNS.mu.Lock()
	for _, m := range a.DNS.sorted() {
		out = append(out, machine{ID: m.ID, Name: m.ID, State: "started", Region: m.Region, PrivateIP: m.Addr.String()})
	}
	a.DNS.mu.Unlock()
	for _, m := range a.Stopped {
		out = append(out, machine{ID: m.ID, Name: m.ID, State: "stopped", Region: m.Region, PrivateIP: m.Addr.String()})
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(out)
}
