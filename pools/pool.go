package pools

import (
	"errors"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/singularity-ng/singularity-edge/storage"
)

// ErrNoBackend means no backend can take the request: none configured, all
// unhealthy, ejected, draining or excluded. The proxy answers 503.
var ErrNoBackend = errors.New("pools: no available backend")

// Runtime floors that keep bad stored data (which skipped ValidatePool,
// e.g. written by a peer running an older version) from spinning a checker.
const (
	minRuntimeInterval = 50 * time.Millisecond
	minRuntimeTimeout  = 5 * time.Millisecond
)

type algorithm uint8

const (
	algoRoundRobin algorithm = iota
	algoLeastConnections
	algoWeightedRoundRobin
	algoRandom
	algoConsistentHash
	algoPowerOfTwo
)

func parseAlgorithm(s string) algorithm {
	switch s {
	case AlgorithmLeastConnections:
		return algoLeastConnections
	case AlgorithmWeightedRoundRobin:
		return algoWeightedRoundRobin
	case AlgorithmRandom:
		return algoRandom
	case AlgorithmConsistentHash:
		return algoConsistentHash
	case AlgorithmPowerOfTwoChoices:
		return algoPowerOfTwo
	default:
		// Unknown algorithms (only possible in data that skipped
		// validation) degrade to round robin rather than refuse traffic.
		return algoRoundRobin
	}
}

// healthConfig is a pool's health-check configuration with runtime
// defaults applied.
type healthConfig struct {
	Type string
	Path string
	// Host is the Host header of HTTP(S) checks (healthHost); empty:
	// the backend's address.
	Host           string
	ExpectedStatus int
	Interval       time.Duration
	Timeout        time.Duration
	Rise, Fall     int
	MaxFails       int
	Cooldown       time.Duration
}

// healthHost is the Host an HTTP(S) check sends: the first name clients
// reach the pool by (ssl_domain, then the first exact name of hosts), so
// that a backend serving virtual hosts answers the check as it answers
// the pool's requests (which carry the client's Host). A pool with no
// exact name (none, or wildcards only) checks with the backend's address,
// as before. nginx Plus checks with the upstream's Host, Envoy with the
// cluster's name; HAProxy and Traefik send what is configured.
func healthHost(p *storage.Pool) string {
	if d := p.SSLDomain; d != "" && !strings.HasPrefix(d, "*.") {
		return d
	}
	for _, h := range p.Hosts {
		if !strings.HasPrefix(h, "*.") {
			return h
		}
	}
	return ""
}

func effectiveHealth(p *storage.Pool) healthConfig {
	hc := p.HealthCheck
	c := healthConfig{
		Type:           strings.ToLower(hc.Type),
		Path:           hc.Path,
		ExpectedStatus: hc.ExpectedStatus,
		Interval:       p.HealthCheckInterval,
		Timeout:        hc.Timeout,
		Rise:           hc.Rise,
		Fall:           hc.Fall,
		MaxFails:       hc.MaxFails,
		Cooldown:       hc.Cooldown,
	}
	if c.Type != HealthCheckHTTP && c.Type != HealthCheckHTTPS {
		c.Type = HealthCheckTCP
	}
	if c.Type != HealthCheckTCP && !strings.HasPrefix(c.Path, "/") {
		c.Path = "/" + c.Path
	}
	if c.Type != HealthCheckTCP {
		c.Host = healthHost(p)
	}
	if c.Interval <= 0 {
		c.Interval = DefaultHealthCheckInterval
	}
	c.Interval = max(c.Interval, minRuntimeInterval)
	if c.Timeout <= 0 {
		c.Timeout = min(DefaultHealthCheckTimeout, c.Interval/2)
	}
	c.Timeout = max(min(c.Timeout, c.Interval), minRuntimeTimeout)
	if c.Rise <= 0 {
		c.Rise = DefaultRise
	}
	if c.Fall <= 0 {
		c.Fall = DefaultFall
	}
	if c.MaxFails < 0 {
		c.MaxFails = 0 // disabled
	}
	if c.Cooldown <= 0 {
		c.Cooldown = DefaultCooldown
	}
	return c
}

// Pool is a pool in a Table. The exported fields are configuration and
// read-only.
type Pool struct {
	Name                string
	Algorithm           string
	SSLMode             string
	SSLDomain           string
	SSLCertID           string
	Hosts               []string
	ValidateBackendCert bool
	PreferRegion        bool
	FailOpen            bool
	AllowHTTP           bool
	HoldNewBackends     bool
	Default             bool
	Metadata            map[string]string
	BackendServerName   string
	BackendClientCertID string
	// On-demand TLS (see storage.Pool): read by the certificate hook
	// during handshakes for names no certificate covers.
	OnDemandTLS   bool
	OnDemandAllow []string
	OnDemandAsk   string
	OnDemandRate  int

	backends      []*Backend // sorted by id
	state         *poolState // nil outside a Manager
	algo          algorithm
	health        *healthConfig // shared by the pool's patches (patchPool)
	tlsBase       *poolTLS
	hashHeader    string
	stickyCookie  string
	stickyByValue map[string]*Backend

	all group
	// local holds the backends in the agent's region when the pool prefers
	// its region and has any there; nil otherwise.
	local *group
}

// group is a set of backends a balancer chooses from, with the balancer
// state that belongs to that set: a pool balances over its local-region
// group first and over all its backends next, and each keeps its own
// rotation so neither skews the other.
type group struct {
	backends []*Backend
	// byWeight partitions backends by weight for weighted rendezvous
	// hashing, which then takes one logarithm per distinct weight instead
	// of one per backend.
	byWeight [][]*Backend
	// maglev is the consistent-hashing lookup table (maglev.go): slot ->
	// index into backends. Built only for consistent_hash pools; shared,
	// never modified, by the next table when the backends are the same.
	maglev []uint16

	rr atomic.Uint64 // round-robin position; rotation start for least connections

	wrrMu  sync.Mutex
	wrrCur []int64 // smooth weighted round robin current weights, by index
}

// init sets the group's backends and the balancer state algo needs (and
// only that: a million backends in round-robin pools carry no weight
// classes or weight counters). For consistent hashing it also gets the
// Maglev table: prev's when prev has the same backends (ids and weights,
// in order), so that a rebuild for an unrelated change does not rebuild
// it.
func (g *group) init(bs []*Backend, algo algorithm, prev *group) {
	g.backends = bs
	switch algo {
	case algoWeightedRoundRobin:
		g.wrrCur = make([]int64, len(bs))
	case algoConsistentHash:
		if prev != nil && prev.maglev != nil && sameMembers(prev.backends, bs) {
			g.maglev = prev.maglev
		} else {
			g.maglev = buildMaglev(bs)
		}
		g.byWeight = weightClasses(bs)
	}
}

// weightClasses partitions bs by weight, in order of first appearance;
// when every backend has the same weight the one class is bs itself.
func weightClasses(bs []*Backend) [][]*Backend {
	uniform := true
	for _, b := range bs {
		if b.Weight != bs[0].Weight {
			uniform = false
			break
		}
	}
	if uniform {
		if len(bs) == 0 {
			return nil
		}
		return [][]*Backend{bs}
	}
	var out [][]*Backend
	class := make(map[int]int)
	for _, b := range bs {
		i, ok := class[b.Weight]
		if !ok {
			i = len(out)
			class[b.Weight] = i
			out = append(out, nil)
		}
		out[i] = append(out[i], b)
	}
	return out
}

// sameMembers reports whether a and b list backends with the same ids and
// weights in the same order: what a Maglev table depends on.
func sameMembers(a, b []*Backend) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].ID != b[i].ID || a[i].Weight != b[i].Weight {
			return false
		}
	}
	return true
}

// newPool builds a pool from its backend rows, which must be sorted by
// id; prev is the same pool in the previous table (nil if none), whose
// lookup tables it may share.
func newPool(sp *storage.Pool, bs []storage.Backend, region string, cookieKey []byte, stateFor stateResolver, prev *Pool) *Pool {
	pb := startPool(sp, len(bs), stateFor)
	for i := range bs {
		pb.add(rowOf(&bs[i]))
	}
	return pb.finish(region, cookieKey, prev)
}

// rowOf is what a pool keeps of backend row sb.
func rowOf(sb *storage.Backend) backendRow {
	return backendRow{id: sb.ID, host: sb.Host, addr: backendAddr(sb), port: sb.Port, scheme: sb.Scheme,
		region: sb.Region, weight: sb.Weight, sslVerify: sb.SSLVerify, draining: sb.Draining, metadata: sb.Metadata}
}

// backendRow is what a pool keeps of a backend row.
type backendRow struct {
	id, host, addr string
	port           int
	scheme, region string
	weight         int
	sslVerify      bool
	draining       bool
	metadata       map[string]string // cloned by add
}

// poolBuilder builds a pool from backend rows added in id order.
//
// The backends live in one slice per pool (one allocation, not one per
// backend) and are found by id with a binary search, not a map: at a
// million backends every word per backend is 8 MB.
type poolBuilder struct {
	p        *Pool
	sp       *storage.Pool
	stateFor stateResolver
	slab     []Backend
	// Scheme and region repeat across a pool's backends; each row decoded
	// its own copy.
	names map[string]string
}

func startPool(sp *storage.Pool, n int, stateFor stateResolver) *poolBuilder {
	health := effectiveHealth(sp)
	p := &Pool{
		Name:                sp.Name,
		Algorithm:           sp.Algorithm,
		SSLMode:             sp.SSLMode,
		SSLDomain:           sp.SSLDomain,
		SSLCertID:           sp.SSLCertID,
		Hosts:               append([]string(nil), sp.Hosts...),
		ValidateBackendCert: sp.ValidateBackendCert,
		PreferRegion:        sp.PreferRegion,
		FailOpen:            sp.FailOpen,
		AllowHTTP:           sp.AllowHTTP,
		HoldNewBackends:     sp.HoldNewBackends,
		Default:             sp.Default,
		Metadata:            maps.Clone(sp.Metadata),
		OnDemandTLS:         sp.OnDemandTLS,
		OnDemandAllow:       append([]string(nil), sp.OnDemandAllow...),
		OnDemandAsk:         sp.OnDemandAsk,
		OnDemandRate:        sp.OnDemandRate,
		algo:                parseAlgorithm(sp.Algorithm),
		health:              &health,
		stickyCookie:        sp.StickyCookie,
	}
	if name, ok := cutPrefixFold(sp.HashOn, hashOnHeaderPrefix); ok && p.algo == algoConsistentHash {
		p.hashHeader = name
	}
	return &poolBuilder{p: p, sp: sp, stateFor: stateFor, slab: make([]Backend, 0, n), names: make(map[string]string)}
}

// add adds a backend; rows must come in id order (a repeated id is
// skipped, as is an empty one).
func (pb *poolBuilder) add(r backendRow) {
	if r.id == "" || (len(pb.slab) > 0 && pb.slab[len(pb.slab)-1].ID == r.id) {
		return
	}
	p := pb.p
	b := Backend{
		ID:        r.id,
		PoolName:  p.Name, // one string per pool, not per backend row
		Host:      hostOf(r.addr, r.host),
		Port:      r.port,
		Addr:      r.addr,
		Scheme:    intern(pb.names, r.scheme),
		Region:    intern(pb.names, r.region),
		Weight:    max(r.weight, 1),
		SSLVerify: r.sslVerify,
		Draining:  r.draining,
		Metadata:  maps.Clone(r.metadata),
		live:      pb.stateFor(r.id, r.addr, pb.sp),
		hc:        p.health,
	}
	if p.algo == algoConsistentHash {
		b.hashSeed = mix64(fnv64(r.id))
	}
	if b.live.addr == b.Addr {
		// One copy of the address string per backend, not two (a state
		// carried over from the previous table has its own).
		b.Addr = b.live.addr
		b.Host = hostOf(b.Addr, r.host)
	}
	if b.Scheme == "" {
		b.Scheme = "http"
	}
	pb.slab = append(pb.slab, b)
}

// finish returns the pool, sharing prev's lookup tables where they still
// apply.
func (pb *poolBuilder) finish(region string, cookieKey []byte, prev *Pool) *Pool {
	slab := slices.Clip(pb.slab)
	bs := make([]*Backend, len(slab))
	for i := range slab {
		bs[i] = &slab[i]
	}
	pb.p.setBackends(bs, region, cookieKey, prev)
	return pb.p
}

// setBackends makes bs (sorted by id) the pool's backends and builds the
// lookup tables over them: the sticky values of backends that have none
// yet, and the balancer groups, which share prev's where they still apply.
func (p *Pool) setBackends(bs []*Backend, region string, cookieKey []byte, prev *Pool) {
	p.backends = bs
	if p.stickyCookie != "" {
		p.stickyByValue = make(map[string]*Backend, len(bs))
		for _, b := range bs {
			if b.stickyValue == "" {
				b.stickyValue = stickyValue(cookieKey, p.Name, b.ID)
			}
			p.stickyByValue[b.stickyValue] = b
		}
	}
	var prevAll, prevLocal *group
	if prev != nil {
		prevAll, prevLocal = &prev.all, prev.local
	}
	p.all.init(bs, p.algo, prevAll)
	if p.PreferRegion && region != "" {
		var local []*Backend
		for _, b := range bs {
			if b.Region == region {
				local = append(local, b)
			}
		}
		if len(local) > 0 && len(local) < len(bs) {
			p.local = &group{}
			p.local.init(local, p.algo, prevLocal)
		}
	}
}

// backendChange is a backend row to put into a pool or, with row nil, the
// id of one to take out of it.
type backendChange struct {
	id  string
	row *storage.Backend
}

// poolPatch is what patchPool changed: the backends it added (new ids and
// the new values of changed rows) and those of prev it dropped (removed
// ids and the old values of changed rows).
type poolPatch struct {
	prev           *Pool
	added, dropped []*Backend
}

// patchPool returns prev with changes (sorted by id, at most one per id)
// applied. The new pool shares prev's configuration, health settings and
// every backend the changes do not name, so a change to a few backends of
// a large pool costs a copy of its backend pointers, not a rebuild of each
// backend (which at a thousand new backends a second into pools of
// thousands was most of a rebuild). sp must be the configuration prev was
// built from, and cookieKey the key it was built with.
func patchPool(prev *Pool, sp *storage.Pool, changes []backendChange, region string, cookieKey []byte, stateFor stateResolver) (*Pool, *poolPatch) {
	n := 0
	for _, c := range changes {
		if c.row != nil {
			n++
		}
	}
	pb := startPool(sp, n, stateFor)
	p := pb.p
	p.health = prev.health
	p.BackendServerName, p.BackendClientCertID = prev.BackendServerName, prev.BackendClientCertID
	tb := *prev.tlsBase
	p.tlsBase = &tb
	p.state = prev.state
	for _, c := range changes {
		if sb := c.row; sb != nil {
			pb.add(rowOf(sb))
		}
	}
	for i := range pb.slab {
		p.assignTLS(&pb.slab[i])
	}

	patch := &poolPatch{prev: prev}
	bs := make([]*Backend, 0, len(prev.backends)+len(pb.slab))
	old, fresh := prev.backends, pb.slab
	for _, c := range changes {
		// The backends before the change's id are carried over as a run:
		// a binary search per change, not a comparison per backend of
		// the pool (a few changes into a pool of thousands).
		i, found := slices.BinarySearchFunc(old, c.id, func(b *Backend, id string) int { return strings.Compare(b.ID, id) })
		bs = append(bs, old[:i]...)
		old = old[i:]
		if found {
			patch.dropped = append(patch.dropped, old[0])
			old = old[1:]
		}
		if c.row != nil && len(fresh) > 0 && fresh[0].ID == c.id {
			b := &fresh[0]
			fresh = fresh[1:]
			bs = append(bs, b)
			patch.added = append(patch.added, b)
		}
	}
	bs = append(bs, old...)
	p.setBackends(bs, region, cookieKey, prev)
	return p, patch
}

// hostOf returns host as the substring of addr (its JoinHostPort form),
// so that a backend keeps one string for both.
func hostOf(addr, host string) string {
	if strings.HasPrefix(addr, host) {
		return addr[:len(host)]
	}
	if strings.HasPrefix(addr, "[") && strings.HasPrefix(addr[1:], host) {
		return addr[1 : 1+len(host)]
	}
	return host
}

// intern returns the copy of s in names, adding it the first time.
func intern(names map[string]string, s string) string {
	if v, ok := names[s]; ok {
		return v
	}
	names[s] = s
	return s
}

// internBytes is intern for a string held as bytes: a hit does not
// allocate.
func internBytes(names map[string]string, b []byte) string {
	if v, ok := names[string(b)]; ok {
		return v
	}
	s := string(b)
	names[s] = s
	return s
}

func cutPrefixFold(s, prefix string) (string, bool) {
	if len(s) > len(prefix) && strings.EqualFold(s[:len(prefix)], prefix) {
		return s[len(prefix):], true
	}
	return "", false
}

func (p *Pool) servedHosts() []string {
	hosts := make([]string, 0, len(p.Hosts)+1)
	if p.SSLDomain != "" {
		hosts = append(hosts, strings.ToLower(p.SSLDomain))
	}
	for _, h := range p.Hosts {
		hosts = append(hosts, strings.ToLower(h))
	}
	return hosts
}

// Backends returns the pool's backends sorted by id. The slice is shared:
// do not modify it.
func (p *Pool) Backends() []*Backend { return p.backends }

// Backend returns the pool's backend with id, or nil.
func (p *Pool) Backend(id string) *Backend {
	i, ok := slices.BinarySearchFunc(p.backends, id, func(b *Backend, id string) int { return strings.Compare(b.ID, id) })
	if !ok {
		return nil
	}
	return p.backends[i]
}

// HashHeader is the request header whose value keys consistent hashing
// (hash_on "header:X"), or "" when the pool hashes on the client IP or does
// not hash.
func (p *Pool) HashHeader() string { return p.hashHeader }

// StickyCookieName is the sticky-session cookie name, or "" when the pool
// is not sticky.
func (p *Pool) StickyCookieName() string { return p.stickyCookie }

// StickyValue is the signed cookie value pinning a client to b ("" when the
// pool is not sticky). It is stateless: every agent sharing the cookie key
// honours it.
func (p *Pool) StickyValue(b *Backend) string {
	if p.stickyCookie == "" || b == nil {
		return ""
	}
	if own := p.Backend(b.ID); own != nil {
		return own.stickyValue
	}
	return ""
}

// VerifySticky checks a sticky-cookie value and returns the backend id it
// names. A tampered value, one signed with another key or for another
// pool, or one naming a backend this pool no longer has is not ok.
func (p *Pool) VerifySticky(value string) (backendID string, ok bool) {
	if p.stickyByValue == nil || value == "" {
		return "", false
	}
	// The table holds the value of every backend: a map hit is exactly a
	// valid signature, and the lookup does not allocate.
	if b := p.stickyByValue[value]; b != nil {
		return b.ID, true
	}
	return "", false
}

// Stats summarizes the pool's backends right now.
func (p *Pool) Stats() PoolStats {
	st := PoolStats{Name: p.Name, Algorithm: p.Algorithm, TotalBackends: len(p.backends)}
	for _, b := range p.backends {
		s := b.live
		switch {
		case b.Draining:
			st.DrainingBackends++
		case s.available():
			st.HealthyBackends++
		default:
			st.UnhealthyBackends++
		}
		st.CurrentConnections += s.conns.Load()
		st.TotalRequests += s.requests.Load()
		st.TotalFailures += s.failures.Load()
	}
	return st
}

// PoolStats is the original system's per-pool summary.
type PoolStats struct {
	Name          string `json:"name"`
	Algorithm     string `json:"algorithm"`
	TotalBackends int    `json:"total_backends"`
	// HealthyBackends can take new requests (passing active checks, not
	// ejected, not draining); UnhealthyBackends fail active checks or are
	// ejected; DrainingBackends are draining whatever their health.
	HealthyBackends    int   `json:"healthy_backends"`
	UnhealthyBackends  int   `json:"unhealthy_backends"`
	DrainingBackends   int   `json:"draining_backends"`
	CurrentConnections int64 `json:"current_connections"`
	TotalRequests      int64 `json:"total_requests"`
	TotalFailures      int64 `json:"total_failures"`
}

// PickRequest carries what a balancer may key on.
type PickRequest struct {
	// ClientIP keys consistent hashing on client_ip (and is the fallback
	// when the hash header is absent).
	ClientIP netip.Addr
	// HashKey is the value of HashHeader() for hash_on "header:X"; empty =
	// use ClientIP.
	HashKey string
	// StickyID is the backend id from VerifySticky: that backend is chosen
	// while it is available and not excluded.
	StickyID string
	// Exclude lists backends already tried for this request (retries). A
	// backend matches across table rebuilds.
	Exclude []*Backend
}

// pickFilter decides which backends one pass of Pick may choose.
type pickFilter struct {
	exclude []*Backend
	// anyHealth admits unhealthy and ejected backends (fail-open pass).
	anyHealth bool
	// ejectedToo admits healthy backends that passive checks ejected.
	ejectedToo bool
	// rotation start, taken once per Pick and group so that a second pass
	// (fail-open) does not advance the rotation twice.
	rotGroup *group
	rot      uint64
}

func (f *pickFilter) rotation(g *group) uint64 {
	if f.rotGroup != g {
		f.rotGroup = g
		f.rot = g.rr.Add(1) - 1
	}
	return f.rot
}

func (f *pickFilter) ok(b *Backend) bool {
	if b.Draining {
		return false
	}
	if !f.anyHealth && !b.live.available() && !(f.ejectedToo && b.live.healthy.Load()) {
		return false
	}
	for _, e := range f.exclude {
		if e == b || (e != nil && e.live == b.live) {
			return false
		}
	}
	return true
}

// Pick chooses a backend for a request: the sticky backend if it is
// available, else the pool's algorithm over available backends (those in
// the agent's region first when PreferRegion), else, for a first attempt,
// over healthy backends that passive checks ejected, else, with FailOpen,
// over every non-draining backend. errors.Is(err, ErrNoBackend) means 503.
//
// Passive ejection never empties a pool on its own: a 5xx counts as a
// failure, and a client that can make a backend answer 500 could
// otherwise eject every backend with MaxFails requests each and have the
// pool answer 503 to everyone for the cooldown. nginx likewise clears the
// failures of its peers once all of them are marked failed, and Envoy's
// outlier detection caps the share of hosts it ejects.
func (p *Pool) Pick(req PickRequest) (*Backend, error) {
	if len(p.backends) == 0 {
		return nil, ErrNoBackend
	}
	f := pickFilter{exclude: req.Exclude}
	if req.StickyID != "" && p.stickyCookie != "" {
		if b := p.Backend(req.StickyID); b != nil && f.ok(b) {
			return b, nil
		}
	}
	if p.local != nil {
		if b := p.pick(p.local, &req, &f); b != nil {
			return b, nil
		}
	}
	if b := p.pick(&p.all, &req, &f); b != nil {
		return b, nil
	}
	if len(req.Exclude) == 0 {
		// A retry does not come here: its exclusions, not ejections, may
		// be what left nothing, and an ejected backend is a poor retry.
		f.ejectedToo = true
		if b := p.pick(&p.all, &req, &f); b != nil {
			return b, nil
		}
		f.ejectedToo = false
	}
	if p.FailOpen {
		f.anyHealth = true
		if b := p.pick(&p.all, &req, &f); b != nil {
			return b, nil
		}
	}
	return nil, ErrNoBackend
}

// pick dispatches on the algorithm with a switch rather than an interface
// so that the filter stays on the stack.
func (p *Pool) pick(g *group, req *PickRequest, f *pickFilter) *Backend {
	if len(g.backends) == 0 {
		return nil
	}
	switch p.algo {
	case algoLeastConnections:
		return g.pickLeastConnections(f)
	case algoWeightedRoundRobin:
		return g.pickWeighted(f)
	case algoRandom:
		return g.pickRandom(f)
	case algoConsistentHash:
		return g.pickHash(p.hashHeader != "", req, f)
	case algoPowerOfTwo:
		return g.pickTwoChoices(f)
	default:
		return g.pickRoundRobin(f)
	}
}
