package pools

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"net"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/singularity-ng/singularity-edge/storage"
)

// TableOptions are the node-local inputs of a Table.
type TableOptions struct {
	// Region is this agent's region; pools with PreferRegion send traffic
	// to backends in it while any of them is available.
	Region string
	// CookieKey signs sticky-cookie values. Every agent with the same key
	// honours the others' cookies. Empty: a random key for this table only
	// (fine for tests; the Manager always passes a key).
	CookieKey []byte
	// BackendRootCAs verify backend certificates of pools without their
	// own CA bundle; nil = the system roots.
	BackendRootCAs *x509.CertPool
	// ClientCertificates finds the client certificates pools name.
	ClientCertificates ClientCertificateSource

	// poolState returns the live state of a pool (the Manager's, which
	// outlives tables); nil: pools keep no totals of their own.
	poolState func(name string) *poolState
}

// Table is an immutable routing snapshot: host names to pools, pools to
// backends. Lookups never allocate. Live counters and health hang off the
// backends and keep changing; the configuration does not.
type Table struct {
	pools    []*Pool // sorted by name
	byName   map[string]*Pool
	exact    map[string]*Pool
	wildcard map[string]*Pool // key: the part after "*."
	// on-demand TLS allow-list patterns, consulted after hosts and
	// before the default pool
	onDemandExact map[string]*Pool
	onDemandWild  map[string]*Pool
	defaultPool   *Pool
	region        string
}

// stateResolver returns the live state for a backend of a pool.
// addr is the backend's address as backendAddr gives it.
type stateResolver func(id, addr string, p *storage.Pool) *backendState

// NewTable builds a Table from configuration and this node's observations
// (obs seeds health and totals of the backends it names; later rows for the
// same backend win). Backends whose pool is missing are left out. When two
// pools claim the same host name, the pool whose name sorts first wins; the
// same for several Default pools.
func NewTable(pools []storage.Pool, backends []storage.Backend, obs []storage.Observation, opts TableOptions) *Table {
	seeds := make(map[string]storage.Observation, len(obs))
	for _, o := range obs {
		seeds[o.BackendID] = o
	}
	return buildTable(pools, backends, opts, nil, func(id, addr string, p *storage.Pool) *backendState {
		s := newBackendState(addr, p.HoldNewBackends)
		if o, ok := seeds[id]; ok {
			s.seed(o)
		}
		return s
	})
}

// EmptyTable returns a table with no pools.
func EmptyTable() *Table {
	return buildTable(nil, nil, TableOptions{}, nil, nil)
}

// buildTable builds a table from every pool and backend. prev, the table
// it replaces (nil: none), lends its lookup tables to pools whose
// backends did not change. A backend id listed under several pools goes to
// the first pool by name.
func buildTable(pools []storage.Pool, backends []storage.Backend, opts TableOptions, prev *Table, stateFor stateResolver) *Table {
	names := make([]string, 0, len(pools))
	for _, p := range pools {
		names = append(names, p.Name)
	}
	sort.Strings(names)
	rank := make(map[string]int, len(names))
	for i, n := range names {
		if _, ok := rank[n]; !ok {
			rank[n] = i
		}
	}
	owner := make(map[string]string, len(backends))
	for _, b := range backends {
		r, ok := rank[b.PoolName]
		if !ok {
			continue
		}
		if cur, taken := owner[b.ID]; !taken || r < rank[cur] {
			owner[b.ID] = b.PoolName
		}
	}
	rows := make(map[string][]storage.Backend, len(pools))
	for _, p := range pools {
		rows[p.Name] = nil
	}
	for _, b := range backends {
		if owner[b.ID] == b.PoolName {
			rows[b.PoolName] = append(rows[b.PoolName], b)
		}
	}
	return rebuildTable(pools, rows, opts, prev, stateFor)
}

// rebuildTable builds a table from prev: the pools in changed are built
// from their backend rows, every other pool is carried over from prev
// unchanged (same *Pool, same backends), so a change to one pool costs
// that pool, not the whole table.
func rebuildTable(pools []storage.Pool, changed map[string][]storage.Backend, opts TableOptions, prev *Table, stateFor stateResolver) *Table {
	key := cookieKey(opts)
	return assembleTable(pools, opts.Region, prev, func(sp *storage.Pool, prevPool *Pool) *Pool {
		bs, ok := changed[sp.Name]
		if !ok && prevPool != nil {
			return prevPool
		}
		return buildPool(sp, bs, opts, key, stateFor, prevPool)
	})
}

// cookieKey is opts' cookie key, or a random one when it has none.
func cookieKey(opts TableOptions) []byte {
	if len(opts.CookieKey) > 0 {
		return opts.CookieKey
	}
	key := make([]byte, 32)
	_, _ = rand.Read(key) // crypto/rand.Read never fails on supported platforms
	return key
}

// buildPool builds pool sp from its backend rows (in any order; bs is not
// modified) with its backend TLS settings and live pool state.
func buildPool(sp *storage.Pool, bs []storage.Backend, opts TableOptions, key []byte, stateFor stateResolver, prevPool *Pool) *Pool {
	byID := func(a, b storage.Backend) int { return strings.Compare(a.ID, b.ID) }
	if !slices.IsSortedFunc(bs, byID) {
		bs = slices.Clone(bs)
		slices.SortStableFunc(bs, byID)
	}
	p := newPool(sp, bs, opts.Region, key, stateFor, prevPool)
	p.setBackendTLS(sp, opts)
	if opts.poolState != nil {
		p.state = opts.poolState(sp.Name)
	}
	return p
}

// assembleTable builds a table of pools (sorted by name; the first of a
// name wins), each pool from build: a new one, or prevPool (the pool of
// that name in prev, nil if none) carried over.
func assembleTable(pools []storage.Pool, region string, prev *Table, build func(sp *storage.Pool, prevPool *Pool) *Pool) *Table {
	t := &Table{
		byName:   make(map[string]*Pool, len(pools)),
		exact:    make(map[string]*Pool, len(pools)),
		wildcard: make(map[string]*Pool),
		region:   region,

		onDemandExact: make(map[string]*Pool),
		onDemandWild:  make(map[string]*Pool),
	}

	sortedPools := make([]storage.Pool, len(pools))
	copy(sortedPools, pools)
	sort.Slice(sortedPools, func(i, j int) bool { return sortedPools[i].Name < sortedPools[j].Name })

	for i := range sortedPools {
		sp := &sortedPools[i]
		if sp.Name == "" || t.byName[sp.Name] != nil {
			continue
		}
		var prevPool *Pool
		if prev != nil {
			prevPool = prev.byName[sp.Name]
		}
		p := build(sp, prevPool)
		t.pools = append(t.pools, p)
		t.byName[p.Name] = p
		for _, h := range p.servedHosts() {
			if base, ok := strings.CutPrefix(h, "*."); ok {
				if _, taken := t.wildcard[base]; !taken {
					t.wildcard[base] = p
				}
				continue
			}
			if _, taken := t.exact[h]; !taken {
				t.exact[h] = p
			}
		}
		t.addOnDemandRoutes(p)
		if sp.Default && t.defaultPool == nil {
			t.defaultPool = p
		}
	}
	return t
}

// Lookup returns the pool serving host (a Host header or SNI name; any port
// and a trailing dot are ignored, case does not matter): an exact host
// match first, then a one-label wildcard (*.example.com matches
// a.example.com, not example.com nor a.b.example.com), then the
// on_demand_allow patterns of on-demand TLS pools (exact, then wildcard),
// then the default pool. Nil when none serves it.
func (t *Table) Lookup(host string) *Pool {
	host = stripPort(host)
	if n := len(host); n > 0 && host[n-1] == '.' {
		host = host[:n-1]
	}
	if host == "" || len(host) > maxHostLength {
		return t.defaultPool
	}
	if hasUpper(host) {
		var buf [maxHostLength]byte
		b := buf[:len(host)]
		copy(b, host)
		for i, c := range b {
			if c >= 'A' && c <= 'Z' {
				b[i] = c + ('a' - 'A')
			}
		}
		// m[string(b)] does not allocate: the compiler uses b in place.
		if p := t.exact[string(b)]; p != nil {
			return p
		}
		if i := bytes.IndexByte(b, '.'); i > 0 {
			if p := t.wildcard[string(b[i+1:])]; p != nil {
				return p
			}
		}
		if p := t.lookupOnDemand(string(b)); p != nil {
			return p
		}
		return t.defaultPool
	}
	if p := t.exact[host]; p != nil {
		return p
	}
	if i := strings.IndexByte(host, '.'); i > 0 {
		if p := t.wildcard[host[i+1:]]; p != nil {
			return p
		}
	}
	if p := t.lookupOnDemand(host); p != nil {
		return p
	}
	return t.defaultPool
}

// Pool returns the pool named name (as in an X-Pool header), or nil.
func (t *Table) Pool(name string) *Pool {
	if p := t.byName[name]; p != nil || !hasUpper(name) || len(name) > maxNameLength {
		return p
	}
	var buf [maxNameLength]byte
	b := buf[:len(name)]
	copy(b, name)
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + ('a' - 'A')
		}
	}
	return t.byName[string(b)]
}

// Pools returns every pool, sorted by name. The slice is shared: do not
// modify it.
func (t *Table) Pools() []*Pool { return t.pools }

// Default returns the default pool, or nil.
func (t *Table) Default() *Pool { return t.defaultPool }

// Backend returns the backend with id, or nil. It looks in every pool (a
// map lookup per pool): for the admin API and tests, not the request path.
func (t *Table) Backend(id string) *Backend {
	for _, p := range t.pools {
		if b := p.Backend(id); b != nil {
			return b
		}
	}
	return nil
}

// current returns the backend of t that b (of t or of an earlier table)
// has become: the one with b's id and live state, found in b's pool unless
// it moved; nil when t has none (it was deleted, or re-created with a
// state of its own).
func (t *Table) current(b *Backend) *Backend {
	if p := t.byName[b.PoolName]; p != nil {
		if c := p.Backend(b.ID); c != nil && c.live == b.live {
			return c
		}
	}
	for _, p := range t.pools {
		if c := p.Backend(b.ID); c != nil && c.live == b.live {
			return c
		}
	}
	return nil
}

// Region is the agent region the table was built for.
func (t *Table) Region() string { return t.region }

func stripPort(host string) string {
	if host == "" {
		return host
	}
	if host[0] == '[' {
		if end := strings.IndexByte(host, ']'); end > 0 {
			return host[1:end]
		}
		return host
	}
	if i := strings.IndexByte(host, ':'); i >= 0 && strings.LastIndexByte(host, ':') == i {
		return host[:i]
	}
	return host
}

func hasUpper(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 'A' && c <= 'Z' {
			return true
		}
	}
	return false
}

func backendAddr(b *storage.Backend) string {
	return net.JoinHostPort(b.Host, strconv.Itoa(b.Port))
}

// appendHostPort appends host:port to dst as net.JoinHostPort writes it
// (brackets around a host with a colon), from bytes.
func appendHostPort(dst, host []byte, port int) []byte {
	if bytes.IndexByte(host, ':') >= 0 {
		dst = append(dst, '[')
		dst = append(dst, host...)
		dst = append(dst, ']')
	} else {
		dst = append(dst, host...)
	}
	dst = append(dst, ':')
	return strconv.AppendInt(dst, int64(port), 10)
}

// stickyValue is the signed sticky-cookie value naming backend id of pool:
// base64url(id) "." base64url(first 16 bytes of HMAC-SHA256(key, pool 0 id)).
// It carries no state, so any agent with the same key verifies it.
func stickyValue(key []byte, pool, id string) string {
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(pool))
	mac.Write([]byte{0})
	mac.Write([]byte(id))
	sum := mac.Sum(nil)
	return base64.RawURLEncoding.EncodeToString([]byte(id)) + "." + base64.RawURLEncoding.EncodeToString(sum[:16])
}
