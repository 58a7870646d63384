package certs

import (
	"cmp"
	"context"
	"crypto"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"hash/maphash"
	"maps"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/singularity-ng/singularity-edge/internal/osslsign"
	"github.com/singularity-ng/singularity-edge/storage"
)

// ErrNoCertificate is returned by GetCertificate when no stored
// certificate covers the requested server name.
var ErrNoCertificate = errors.New("certs: no certificate for server name")

// CacheSource is what the cache needs from the store; *storage.Store
// satisfies it.
type CacheSource interface {
	ListCertificates(ctx context.Context, after string, limit int) ([]storage.Certificate, error)
	// GetCertificate reads one certificate with its private key: a
	// handshake for a certificate not held parsed reads it again.
	GetCertificate(ctx context.Context, id string) (storage.Certificate, error)
	Subscribe(ctx context.Context, afterIndex uint64) *storage.Subscription
	LastIndex() uint64
}

// CacheConfig configures a Cache.
type CacheConfig struct {
	Logger *zap.Logger
	// Registerer receives the cache's collectors; nil registers nothing.
	Registerer prometheus.Registerer
	// PageSize is the number of certificates read per List call while
	// loading the table.
	PageSize int
	// Now is the clock used to decide whether a certificate is currently
	// valid; nil means time.Now.
	Now func() time.Time
	// Parsed bounds the certificates held parsed (private key and all)
	// for handshakes; the others are held as DER and parsed on their next
	// handshake. 0 = 10,000.
	Parsed int
	// ExpirySeries bounds the per-certificate expiry series: the ones
	// that expire soonest. 0 = 100.
	ExpirySeries int
	// ReadyWait bounds how long ByID waits for the first load (handshakes
	// through GetCertificate wait as long as their own deadline). 0 = 10 s.
	ReadyWait time.Duration
}

// DefaultCacheConfig returns the configuration used when a field is left zero.
func DefaultCacheConfig() CacheConfig {
	return CacheConfig{Logger: zap.NewNop(), PageSize: 1000, Now: time.Now, Parsed: 10_000, ExpirySeries: 100, ReadyWait: 10 * time.Second}
}

// shardCount splits the name index so that a change copies only a small
// part of it: with 100,000 certificates a shard holds a few hundred names.
const shardCount = 256

// entry is one loaded certificate. Its fields are immutable once
// published; parsed and broken are set by the first handshake that needs
// the key.
//
// An entry holds what the SNI index needs (names, validity, identity),
// not the certificate: most of 100,000 certificates are idle at any
// moment, and their DER and keys would cost several times the index. A
// handshake reads the row again (one RocksDB read and the key's
// decryption) and the cache keeps the last Parsed certificates used
// parsed (see certificate).
type entry struct {
	id          string
	domain      string
	provider    string
	issuer      string
	fingerprint string   // the stored row's: the row read back must be this one
	names       []string // lower-cased DNS names from the leaf
	notBefore   time.Time
	notAfter    time.Time

	parsed atomic.Pointer[tls.Certificate]
	broken atomic.Bool // the key does not parse or match: never served
}

// nameSet holds the certificates for one name: those issued for the name
// itself and those for "*.name". Both lists are sorted by expiry, latest
// first. A published nameSet is never modified; writers replace it.
type nameSet struct {
	exact []*entry
	wild  []*entry
}

type shardMap = map[string]*nameSet

// Cache is an in-memory SNI index of the certificates table, kept fresh
// from the storage change feed. Lookups take no lock and do not allocate:
// the index is split into shards, each an immutable map published through
// an atomic pointer and replaced copy-on-write by the single writer (Run).
type Cache struct {
	cfg  CacheConfig
	src  CacheSource
	log  *zap.Logger
	seed maphash.Seed

	shards [shardCount]atomic.Pointer[shardMap]

	// mu guards byID, the writer's view of the loaded certificates; the
	// read path never touches it.
	mu   sync.Mutex
	byID map[string]*entry

	// ring holds the entries kept parsed, oldest replaced first; ringMu
	// guards it and chains (taken only when a handshake parses an entry).
	ringMu  sync.Mutex
	ring    []*entry
	ringPos int
	// chains interns the DER of chain certificates of parsed entries:
	// most certificates share one or two intermediates.
	chains map[string][]byte

	// signs counts the handshake signatures of the keys wrapped for
	// OpenSSL (see wrapKey).
	signs osslsign.Counters

	index      atomic.Uint64 // last change-feed index applied
	loadErrors atomic.Uint64
	running    atomic.Bool
	ready      chan struct{}
	readyOnce  sync.Once
}

// NewCache returns an empty cache; Run loads and follows the table.
func NewCache(cfg CacheConfig, src CacheSource) *Cache {
	def := DefaultCacheConfig()
	if cfg.Logger == nil {
		cfg.Logger = def.Logger
	}
	if cfg.PageSize <= 0 {
		cfg.PageSize = def.PageSize
	}
	if cfg.Now == nil {
		cfg.Now = def.Now
	}
	if cfg.Parsed <= 0 {
		cfg.Parsed = def.Parsed
	}
	if cfg.ExpirySeries <= 0 {
		cfg.ExpirySeries = def.ExpirySeries
	}
	if cfg.ReadyWait <= 0 {
		cfg.ReadyWait = def.ReadyWait
	}
	c := &Cache{
		cfg:    cfg,
		src:    src,
		log:    cfg.Logger,
		seed:   maphash.MakeSeed(),
		byID:   make(map[string]*entry),
		chains: make(map[string][]byte),
		ring:   make([]*entry, cfg.Parsed),
		ready:  make(chan struct{}),
	}
	empty := shardMap{}
	for i := range c.shards {
		c.shards[i].Store(&empty)
	}
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(newCacheCollector(c)); err != nil {
			c.log.Error("cannot register certificate cache metrics", zap.Error(err))
		}
	}
	return c
}

// Ready is closed once the whole table has been loaded.
func (c *Cache) Ready() <-chan struct{} { return c.ready }

func (c *Cache) loaded() bool {
	select {
	case <-c.ready:
		return true
	default:
		return false
	}
}

// Index returns the change-feed index the cache has applied up to.
func (c *Cache) Index() uint64 { return c.index.Load() }

// Len returns the number of certificates loaded.
func (c *Cache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.byID)
}

// Run loads every certificate, then applies the change feed until ctx
// ends (returning nil) or the feed fails. It may be called once.
func (c *Cache) Run(ctx context.Context) error {
	if !c.running.CompareAndSwap(false, true) {
		return errors.New("certs: cache is already running")
	}
	// Take the feed position before reading the table: changes committed
	// while the pages are read are replayed afterwards, and replaying a
	// change is harmless because each one carries the row's new state.
	after := c.src.LastIndex()
	if err := c.load(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	c.index.Store(after)
	c.readyOnce.Do(func() { close(c.ready) })
	c.log.Info("certificate cache loaded", zap.Int("certificates", c.Len()), zap.Uint64("index", after))

	sub := c.src.Subscribe(ctx, after)
	for ev := range sub.Events() {
		c.applyEvent(ev)
	}
	if ctx.Err() != nil {
		return nil
	}
	if err := sub.Err(); err != nil {
		return fmt.Errorf("certs: change feed: %w", err)
	}
	return errors.New("certs: change feed closed")
}

// load reads the table page by page and parses the certificates on every
// CPU: at 100,000 certificates parsing dominates the start-up time.
func (c *Cache) load(ctx context.Context) error {
	var updates []update
	afterID := ""
	for {
		page, err := c.src.ListCertificates(ctx, afterID, c.cfg.PageSize)
		if err != nil {
			return fmt.Errorf("certs: loading certificates after %q: %w", afterID, err)
		}
		if len(page) == 0 {
			break
		}
		start := len(updates)
		updates = slices.Grow(updates, len(page))
		for i := range page {
			updates = append(updates, update{id: page[i].ID})
		}
		c.parseAll(page, updates[start:])
		afterID = page[len(page)-1].ID
		if len(page) < c.cfg.PageSize {
			break
		}
	}
	c.apply(updates)
	return nil
}

// parseAll fills updates[i].entry from rows[i] in parallel.
func (c *Cache) parseAll(rows []storage.Certificate, updates []update) {
	workers := min(runtime.GOMAXPROCS(0), len(rows))
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= len(rows) {
					return
				}
				updates[i].entry = c.parse(&rows[i])
			}
		})
	}
	wg.Wait()
}

// parse turns a row into an entry, or nil (logged and counted) when the
// row cannot serve TLS; a broken row then also removes the entry it
// replaces, since serving a superseded certificate would be wrong.
func (c *Cache) parse(row *storage.Certificate) *entry {
	e, err := newEntry(row)
	if err != nil {
		c.loadErrors.Add(1)
		// The error never quotes key material: see newEntry.
		c.log.Error("cannot load certificate", zap.String("id", row.ID), zap.String("domain", row.Domain), zap.Error(err))
		return nil
	}
	return e
}

func newEntry(row *storage.Certificate) (*entry, error) {
	if row.PrivateKeyPEM == "" {
		return nil, errors.New("no private key")
	}
	var leafDER []byte
	for rest := []byte(row.CertificatePEM); ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type == "CERTIFICATE" {
			leafDER = block.Bytes
			break
		}
	}
	if leafDER == nil {
		return nil, errors.New("no certificate in the certificate PEM")
	}
	if !hasKeyBlock(row.PrivateKeyPEM) {
		// The error never quotes key material.
		return nil, errors.New("no private key block in the key PEM")
	}
	leaf, err := x509.ParseCertificate(leafDER)
	if err != nil {
		return nil, fmt.Errorf("leaf certificate: %w", err)
	}
	// Index the names the leaf really covers: a client verifies those, not
	// what the row claims.
	names := leaf.DNSNames
	if len(names) == 0 {
		names = row.Names
	}
	if len(names) == 0 && row.Domain != "" {
		names = []string{row.Domain}
	}
	e := &entry{
		id:          row.ID,
		domain:      row.Domain,
		provider:    internString(row.Provider),
		issuer:      row.Issuer,
		fingerprint: row.Fingerprint,
		notBefore:   leaf.NotBefore,
		notAfter:    leaf.NotAfter,
	}
	for _, n := range names {
		if n = normalizeName(n); n != "" && !slices.Contains(e.names, n) {
			e.names = append(e.names, n)
		}
	}
	if len(e.names) == 0 {
		return nil, errors.New("certificate covers no DNS name")
	}
	e.names = slices.Clip(e.names)
	if e.domain == "" {
		e.domain = e.names[0]
	}
	return e, nil
}

// hasKeyBlock reports whether keyPEM holds a private key PEM block.
func hasKeyBlock(keyPEM string) bool {
	for rest := []byte(keyPEM); ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return false
		}
		if block.Type == "PRIVATE KEY" || strings.HasSuffix(block.Type, " PRIVATE KEY") {
			clear(block.Bytes)
			return true
		}
	}
}

func internString(s string) string {
	switch s {
	case ProviderUpload:
		return ProviderUpload
	case "acme":
		return "acme"
	}
	return s
}

// readTimeout bounds the read of a certificate row by a handshake.
const readTimeout = 5 * time.Second

// maxInternedChains bounds the distinct chain certificates interned.
const maxInternedChains = 256

// certificate returns e ready for a handshake, reading its row and parsing
// its key the first time (and again after the ring let it go). A key that
// does not parse or does not match the leaf marks e broken: it is logged
// and counted once, and never served. A row that cannot be read, or was
// replaced since it was indexed (the change feed brings the new one), is
// not served this time.
func (c *Cache) certificate(e *entry) (*tls.Certificate, bool) {
	if cert := e.parsed.Load(); cert != nil {
		return cert, true
	}
	if e.broken.Load() {
		return nil, false
	}
	ctx, cancel := context.WithTimeout(context.Background(), readTimeout)
	row, err := c.src.GetCertificate(ctx, e.id)
	cancel()
	if err != nil {
		c.log.Warn("cannot read certificate for a handshake", zap.String("id", e.id), zap.String("domain", e.domain), zap.Error(err))
		return nil, false
	}
	if row.Fingerprint != e.fingerprint {
		return nil, false
	}
	pair, err := tls.X509KeyPair([]byte(row.CertificatePEM+"\n"+row.ChainPEM), []byte(row.PrivateKeyPEM))
	if err != nil {
		if e.broken.CompareAndSwap(false, true) {
			c.loadErrors.Add(1)
			// tls errors name the failing step, never key bytes.
			c.log.Error("cannot load certificate: certificate and key do not form a TLS pair",
				zap.String("id", e.id), zap.String("domain", e.domain), zap.Error(err))
		}
		return nil, false
	}
	// The handshake needs the DER chain and the key, not the parsed leaf.
	pair.Leaf = nil
	pair.PrivateKey = c.wrapKey(e, pair.PrivateKey)
	c.ringMu.Lock()
	for i := 1; i < len(pair.Certificate); i++ {
		if der, ok := c.chains[string(pair.Certificate[i])]; ok {
			pair.Certificate[i] = der
		} else if len(c.chains) < maxInternedChains {
			c.chains[string(pair.Certificate[i])] = pair.Certificate[i]
		}
	}
	e.parsed.Store(&pair)
	if old := c.ring[c.ringPos]; old != nil && old != e {
		old.parsed.Store(nil)
	}
	c.ring[c.ringPos] = e
	c.ringPos = (c.ringPos + 1) % len(c.ring)
	c.ringMu.Unlock()
	return &pair, true
}

// wrapKey hands RSA keys to OpenSSL for their signatures: a full
// handshake with an RSA-2048 certificate spends most of its CPU in the
// server's signature, which OpenSSL makes about three times faster than
// Go. The native key is made on the first handshake that signs and freed
// with the parsed certificate, so only the certificates in the ring (at
// most Parsed) can hold one. ECDSA keys stay with Go: its P-256 signature
// is within a few microseconds of OpenSSL's, less than the cgo call and
// thread hand-off cost back (docs/ARCHITECTURE.md).
func (c *Cache) wrapKey(e *entry, key crypto.PrivateKey) crypto.PrivateKey {
	rk, ok := key.(*rsa.PrivateKey)
	if !ok {
		return key
	}
	s, err := osslsign.New(rk, osslsign.Config{
		Counters: &c.signs,
		ImportFailed: func(err error) {
			c.log.Error("OpenSSL cannot take the certificate's key; Go's crypto signs its handshakes",
				zap.String("id", e.id), zap.String("domain", e.domain), zap.Error(err))
		},
	})
	if err != nil {
		// A key OpenSSL is not given (a small RSA key) signs with Go.
		return key
	}
	return s
}

// applyEvent applies the certificate changes of one committed transaction
// as a single batch, so a replaced certificate is never briefly missing.
func (c *Cache) applyEvent(ev storage.Event) {
	var updates []update
	for _, ch := range ev.Set.Changes {
		if ch.Table != storage.TableCertificates {
			continue
		}
		u := update{id: ch.Key}
		if !ch.Deleted {
			// The feed's changes carry the store's key, so the row comes
			// with its private key opened.
			row, err := ch.Certificate()
			if err != nil {
				c.loadErrors.Add(1)
				c.log.Error("cannot decode changed certificate", zap.String("id", ch.Key), zap.Error(err))
			} else {
				u.entry = c.parse(&row)
			}
		}
		updates = append(updates, u)
	}
	if len(updates) > 0 {
		c.apply(updates)
	}
	c.index.Store(ev.Index)
}

// update replaces (entry != nil) or removes (entry == nil) certificate id.
type update struct {
	id    string
	entry *entry
}

// apply publishes a batch of updates, copying each touched shard once.
func (c *Cache) apply(updates []update) {
	c.mu.Lock()
	defer c.mu.Unlock()
	w := writer{c: c, work: make(map[uint64]shardMap)}
	for _, u := range updates {
		if old := c.byID[u.id]; old != nil {
			for _, n := range old.names {
				w.edit(n, old, false)
			}
			delete(c.byID, u.id)
		}
		if u.entry != nil {
			for _, n := range u.entry.names {
				w.edit(n, u.entry, true)
			}
			c.byID[u.id] = u.entry
		}
	}
	for i, m := range w.work {
		c.shards[i].Store(&m)
	}
}

// writer collects copy-on-write edits of shards for one batch.
type writer struct {
	c    *Cache
	work map[uint64]shardMap
}

// edit adds or removes e under name ("*.example.com" files under
// "example.com" as a wildcard, so lookups need no string building).
func (w *writer) edit(name string, e *entry, add bool) {
	key, wild := name, false
	if rest, ok := strings.CutPrefix(name, "*."); ok {
		key, wild = rest, true
	}
	i := w.c.shardOf(key)
	m, ok := w.work[i]
	if !ok {
		m = maps.Clone(*w.c.shards[i].Load())
		if m == nil {
			m = shardMap{}
		}
		w.work[i] = m
	}
	ns := &nameSet{}
	if old := m[key]; old != nil {
		*ns = *old
	}
	list := &ns.exact
	if wild {
		list = &ns.wild
	}
	if add {
		*list = insertByExpiry(*list, e)
	} else {
		*list = slices.DeleteFunc(slices.Clone(*list), func(x *entry) bool { return x == e })
	}
	if len(ns.exact) == 0 && len(ns.wild) == 0 {
		delete(m, key)
		return
	}
	m[key] = ns
}

// insertByExpiry returns a new slice with e inserted, latest expiry first.
func insertByExpiry(list []*entry, e *entry) []*entry {
	out := make([]*entry, 0, len(list)+1)
	out = append(out, list...)
	out = append(out, e)
	slices.SortStableFunc(out, func(a, b *entry) int {
		if c := b.notAfter.Compare(a.notAfter); c != 0 {
			return c
		}
		return cmp.Compare(a.id, b.id)
	})
	return out
}

func (c *Cache) shardOf(name string) uint64 {
	return maphash.String(c.seed, name) % shardCount
}

func (c *Cache) nameSet(name string) *nameSet {
	return (*c.shards[c.shardOf(name)].Load())[name]
}

// Lookup returns the certificate to present for serverName: a certificate
// issued for the name itself, else one for the wildcard one label up
// (a.example.com -> *.example.com). Among several, the currently valid one
// that expires last wins. When none is currently valid, the latest-expiring
// candidate is returned anyway, so the client reports an expired
// certificate instead of an anonymous handshake failure. Names are
// case-insensitive and a trailing dot is ignored.
func (c *Cache) Lookup(serverName string) (*tls.Certificate, bool) {
	name := normalizeName(serverName)
	if name == "" {
		return nil, false
	}
	now := c.cfg.Now()
	var exact, wild []*entry
	if ns := c.nameSet(name); ns != nil {
		exact = ns.exact
		if cert := c.firstUsable(exact, now, true); cert != nil {
			return cert, true
		}
	}
	if i := strings.IndexByte(name, '.'); i > 0 && i < len(name)-1 {
		if ns := c.nameSet(name[i+1:]); ns != nil {
			wild = ns.wild
			if cert := c.firstUsable(wild, now, true); cert != nil {
				return cert, true
			}
		}
	}
	if cert := c.firstUsable(exact, now, false); cert != nil {
		return cert, true
	}
	if cert := c.firstUsable(wild, now, false); cert != nil {
		return cert, true
	}
	return nil, false
}

// firstUsable returns the first entry of list (latest expiry first) that
// can serve a handshake; with valid set, only a currently valid one.
func (c *Cache) firstUsable(list []*entry, now time.Time, valid bool) *tls.Certificate {
	for _, e := range list {
		if valid && (now.Before(e.notBefore) || !now.Before(e.notAfter)) {
			continue
		}
		if cert, ok := c.certificate(e); ok {
			return cert
		}
	}
	return nil
}

// ByID returns the certificate with the given id (with its private key),
// for pools that present it to their backends as a client certificate.
// While the cache is still loading it waits, at most ReadyWait, for the
// load to finish: a backend handshake in the agent's first seconds would
// otherwise go without its client certificate.
func (c *Cache) ByID(id string) (*tls.Certificate, bool) {
	if !c.loaded() {
		t := time.NewTimer(c.cfg.ReadyWait)
		select {
		case <-c.ready:
			t.Stop()
		case <-t.C:
			return nil, false
		}
	}
	c.mu.Lock()
	e := c.byID[id]
	c.mu.Unlock()
	if e == nil {
		return nil, false
	}
	return c.certificate(e)
}

// GetCertificate is a tls.Config.GetCertificate callback backed by Lookup.
// The agent serves before the cache has loaded (the routing table is what
// readiness waits for): a handshake that arrives during the load waits
// for it, as long as the handshake's own deadline allows, rather than
// being refused for a certificate the store holds.
func (c *Cache) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	if !c.loaded() {
		ctx := hello.Context()
		if ctx == nil {
			ctx = context.Background()
		}
		select {
		case <-c.ready:
		case <-ctx.Done():
			return nil, fmt.Errorf("certs: certificate index still loading: %w", ctx.Err())
		}
	}
	if cert, ok := c.Lookup(hello.ServerName); ok {
		return cert, nil
	}
	return nil, fmt.Errorf("%w %q", ErrNoCertificate, hello.ServerName)
}

// CanonicalName returns a DNS name the way certificates and the SNI index
// hold it: lower case, without the root's trailing dot.
func CanonicalName(name string) string { return normalizeName(name) }

// normalizeName lower-cases name and drops a trailing dot, allocating only
// when the name has upper-case letters.
func normalizeName(name string) string {
	name = strings.TrimSuffix(name, ".")
	for i := 0; i < len(name); i++ {
		if c := name[i]; c >= 'A' && c <= 'Z' {
			return strings.ToLower(name)
		}
	}
	return name
}

// CertificateInfo describes a loaded certificate without its key.
type CertificateInfo struct {
	ID          string
	Domain      string
	Names       []string
	Provider    string
	Issuer      string
	Fingerprint string
	NotBefore   time.Time
	ExpiresAt   time.Time
}

// Expiring returns the loaded certificates that expire before t, soonest
// first.
func (c *Cache) Expiring(before time.Time) []CertificateInfo {
	var out []CertificateInfo
	for _, e := range c.entries() {
		if e.notAfter.Before(before) {
			out = append(out, e.info())
		}
	}
	slices.SortFunc(out, func(a, b CertificateInfo) int {
		if c := a.ExpiresAt.Compare(b.ExpiresAt); c != 0 {
			return c
		}
		return cmp.Compare(a.ID, b.ID)
	})
	return out
}

func (e *entry) info() CertificateInfo {
	return CertificateInfo{
		ID:          e.id,
		Domain:      e.domain,
		Names:       slices.Clone(e.names),
		Provider:    e.provider,
		Issuer:      e.issuer,
		Fingerprint: e.fingerprint,
		NotBefore:   e.notBefore,
		ExpiresAt:   e.notAfter,
	}
}

// entries copies the loaded entries so that callers iterate without
// holding the writer's lock.
func (c *Cache) entries() []*entry {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]*entry, 0, len(c.byID))
	for _, e := range c.byID {
		out = append(out, e)
	}
	return out
}

// cacheCollector exposes the cache as Prometheus metrics, computed at
// scrape time from the loaded entries.
type cacheCollector struct {
	c          *Cache
	expiry     *prometheus.Desc
	count      *prometheus.Desc
	loadErrors *prometheus.Desc
	signatures *prometheus.Desc
}

func newCacheCollector(c *Cache) *cacheCollector {
	return &cacheCollector{
		c: c,
		expiry: prometheus.NewDesc("singularity_edge_certificate_expiry_timestamp_seconds",
			"Time the certificate expires (NotAfter), in seconds since the Unix epoch; for the soonest-expiring certificates only (CacheConfig.ExpirySeries).", []string{"domain", "id"}, nil),
		count: prometheus.NewDesc("singularity_edge_certificates",
			"Certificates loaded in the SNI cache, by provider.", []string{"provider"}, nil),
		loadErrors: prometheus.NewDesc("singularity_edge_certificate_load_errors_total",
			"Certificate rows the SNI cache could not load (bad PEM, key mismatch, unreadable key).", nil, nil),
		signatures: prometheus.NewDesc("singularity_edge_tls_signatures_total",
			"Handshake signatures made with RSA certificate keys, by engine: openssl (libcrypto through cgo) or go (a build without OpenSSL, a key it could not import, or options it is not given).", []string{"engine"}, nil),
	}
}

func (cc *cacheCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- cc.expiry
	ch <- cc.count
	ch <- cc.loadErrors
	ch <- cc.signatures
}

func (cc *cacheCollector) Collect(ch chan<- prometheus.Metric) {
	byProvider := map[string]int{}
	entries := cc.c.entries()
	for _, e := range entries {
		byProvider[e.provider]++
	}
	// Per-certificate series for the soonest to expire only: they are
	// what an expiry alert needs, and 100,000 series would make every
	// scrape megabytes long.
	n := min(cc.c.cfg.ExpirySeries, len(entries))
	slices.SortFunc(entries, func(a, b *entry) int {
		if c := a.notAfter.Compare(b.notAfter); c != 0 {
			return c
		}
		return cmp.Compare(a.id, b.id)
	})
	for _, e := range entries[:n] {
		ch <- prometheus.MustNewConstMetric(cc.expiry, prometheus.GaugeValue, float64(e.notAfter.Unix()), e.domain, e.id)
	}
	for provider, n := range byProvider {
		ch <- prometheus.MustNewConstMetric(cc.count, prometheus.GaugeValue, float64(n), provider)
	}
	ch <- prometheus.MustNewConstMetric(cc.loadErrors, prometheus.CounterValue, float64(cc.c.loadErrors.Load()))
	ch <- prometheus.MustNewConstMetric(cc.signatures, prometheus.CounterValue, float64(cc.c.signs.OpenSSL.Load()), "openssl")
	ch <- prometheus.MustNewConstMetric(cc.signatures, prometheus.CounterValue, float64(cc.c.signs.Go.Load()), "go")
}
