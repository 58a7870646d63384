package certs

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/singularity-ng/singularity-edge/storage"
)

// ChallengeToken is a pending HTTP-01 or TLS-ALPN-01 challenge. The key
// authorization is public by design (the CA fetches it from any of our
// addresses); it is not a secret.
type ChallengeToken struct {
	Type      string    `json:"type"`
	Domain    string    `json:"domain"`
	Token     string    `json:"token"`
	KeyAuth   string    `json:"key_auth"`
	ExpiresAt time.Time `json:"expires_at"`
}

// ChallengeName is what a challenge is looked up by: the token for
// HTTP-01 (the request path carries it), the domain for TLS-ALPN-01 (the
// ClientHello's SNI carries it).
func (c ChallengeToken) ChallengeName() string {
	if c.Type == ChallengeHTTP01 {
		return c.Token
	}
	return normalizeName(c.Domain)
}

// ChallengeStore shares pending challenges with every agent, since the CA
// may validate against any region. Agents answer from memory
// (ChallengeResponder follows the rows through the change feed), so it
// has no lookup.
type ChallengeStore interface {
	// PresentChallenge stores c and returns only once every alive member
	// of the cluster holds it. An error means the CA must not be told
	// the challenge is ready.
	PresentChallenge(ctx context.Context, c ChallengeToken) error
	// RemoveChallenge deletes c (best effort: it also expires).
	RemoveChallenge(ctx context.Context, c ChallengeToken) error
}

// ErrNotPresented: a challenge could not be made answerable on every
// agent, so the CA was not asked to validate it (and no validation
// failed there).
var ErrNotPresented = errors.New("certs: challenge not present on every agent")

// presenter is the lego challenge.Provider for HTTP-01 and TLS-ALPN-01
// of one issuance: Present writes through the store (and its wait for
// every member), so lego tells the CA only once all agents can answer.
type presenter struct {
	ctx   context.Context
	store ChallengeStore
	typ   string
	ttl   time.Duration
	wait  time.Duration // bounds PresentChallenge; 0: the issuance's context alone
	now   func() time.Time
}

func (p *presenter) token(domain, token, keyAuth string) ChallengeToken {
	return ChallengeToken{Type: p.typ, Domain: normalizeName(domain), Token: token, KeyAuth: keyAuth,
		ExpiresAt: p.now().Add(p.ttl).UTC()}
}

func (p *presenter) Present(domain, token, keyAuth string) error {
	ctx := p.ctx
	if p.wait > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, p.wait)
		defer cancel()
	}
	if err := p.store.PresentChallenge(ctx, p.token(domain, token, keyAuth)); err != nil {
		return fmt.Errorf("%w: %s for %s: %w", ErrNotPresented, p.typ, domain, err)
	}
	return nil
}

func (p *presenter) CleanUp(domain, token, keyAuth string) error {
	// Detached from the issuance's context: a cancelled issuance still
	// removes its tokens.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(p.ctx), 10*time.Second)
	defer cancel()
	return p.store.RemoveChallenge(ctx, p.token(domain, token, keyAuth))
}

// ChallengeFeed is how the responder follows the challenge rows of the
// acme table: one listing at start, then the change feed. *storage.Store
// satisfies it. It has no point read on purpose: the proxy asks the
// responder on every request to /.well-known/acme-challenge/ on the public
// port, for any Host and without authentication, and the request path
// reads no RocksDB (DESIGN.md).
type ChallengeFeed interface {
	ListACMERecords(ctx context.Context, prefix, after string, limit int) ([]storage.ACMERecord, error)
	Subscribe(ctx context.Context, afterIndex uint64) *storage.Subscription
	// LastIndex is the store's published commit index, an atomic read.
	LastIndex() uint64
}

// maxPendingChallenges bounds the challenges held. A token lives
// ChallengeTTL (15 minutes) or until its order's clean-up, and orders are
// rate-limited (BudgetLimits), so far fewer are pending at once; past the
// bound a new token is not held (its validation fails on this agent, and
// the order is retried with backoff) rather than memory growing with
// whatever the table holds.
const maxPendingChallenges = 10_000

// challengeRef names a challenge as the acme table's key does: type and
// ChallengeName.
type challengeRef struct{ typ, name string }

// parseChallengeKey is challengeKey's inverse.
func parseChallengeKey(key string) (challengeRef, bool) {
	rest, ok := strings.CutPrefix(key, keyChallenge)
	if !ok {
		return challengeRef{}, false
	}
	typ, name, ok := strings.Cut(rest, "/")
	return challengeRef{typ: typ, name: name}, ok && typ != "" && name != ""
}

// ChallengeResponder answers the challenges every agent shares; it
// implements proxy.ChallengeSource. It holds the pending challenges in
// memory, loaded from the acme table and kept current from the change
// feed (rows written here and rows replicated from other agents alike),
// so that answering reads no RocksDB.
type ChallengeResponder struct {
	src        ChallengeFeed
	log        *zap.Logger
	now        func() time.Time
	timeout    time.Duration // bounds a miss's wait for the feed (awaitFeed)
	max        int
	pageSize   int
	sweepEvery time.Duration

	mu      sync.RWMutex
	pending map[challengeRef]ChallengeToken
	// advanced is closed, and cleared, when applied moves; made only
	// by a lookup that waits for it.
	advanced chan struct{}
	// applied is the feed index pending reflects; stored after the
	// map is updated, so a reader that sees it sees the map.
	applied atomic.Uint64
	refused atomic.Uint64
	ready   chan struct{}
	running atomic.Bool

	alpnMu sync.Mutex
	alpn   map[string]alpnCert // key: domain + "\x00" + key authorization

	pendingDesc, refusedDesc, limitDesc *prometheus.Desc
}

type alpnCert struct {
	cert    *tls.Certificate
	expires time.Time
}

// maxALPNCerts bounds the cache of TLS-ALPN-01 certificates; pending
// challenges are few, so reaching it means entries are stale.
const maxALPNCerts = 1024

// NewChallengeResponder returns a responder following src's challenge
// rows; Run loads and follows them.
func NewChallengeResponder(src ChallengeFeed, log *zap.Logger) *ChallengeResponder {
	if log == nil {
		log = zap.NewNop()
	}
	return &ChallengeResponder{src: src, log: log, now: time.Now, timeout: 2 * time.Second,
		max: maxPendingChallenges, pageSize: 1000, sweepEvery: time.Minute,
		pending: make(map[challengeRef]ChallengeToken), ready: make(chan struct{}),
		alpn: make(map[string]alpnCert),
		pendingDesc: prometheus.NewDesc("singularity_edge_acme_challenges_pending",
			"ACME HTTP-01 and TLS-ALPN-01 challenge tokens this agent holds in memory to answer (expired ones leave within a minute).", nil, nil),
		refusedDesc: prometheus.NewDesc("singularity_edge_acme_challenges_refused_total",
			"ACME challenge tokens this agent did not hold because it already held singularity_edge_acme_challenges_limit; their validations fail on this agent.", nil, nil),
		limitDesc: prometheus.NewDesc("singularity_edge_acme_challenges_limit",
			"The most ACME challenge tokens an agent holds at once.", nil, nil)}
}

// Describe implements prometheus.Collector.
func (r *ChallengeResponder) Describe(ch chan<- *prometheus.Desc) {
	ch <- r.pendingDesc
	ch <- r.refusedDesc
	ch <- r.limitDesc
}

// Collect implements prometheus.Collector: the tokens held, those
// refused at the bound, and the bound, read when scraped.
func (r *ChallengeResponder) Collect(ch chan<- prometheus.Metric) {
	r.mu.RLock()
	n := len(r.pending)
	r.mu.RUnlock()
	ch <- prometheus.MustNewConstMetric(r.pendingDesc, prometheus.GaugeValue, float64(n))
	ch <- prometheus.MustNewConstMetric(r.refusedDesc, prometheus.CounterValue, float64(r.refused.Load()))
	ch <- prometheus.MustNewConstMetric(r.limitDesc, prometheus.GaugeValue, float64(r.max))
}

// Ready is closed once the challenge rows have been loaded.
func (r *ChallengeResponder) Ready() <-chan struct{} { return r.ready }

func (r *ChallengeResponder) loaded() bool {
	select {
	case <-r.ready:
		return true
	default:
		return false
	}
}

// Run loads the pending challenges, then applies the change feed until
// ctx ends (returning nil) or the feed fails. It may be called once.
func (r *ChallengeResponder) Run(ctx context.Context) error {
	if !r.running.CompareAndSwap(false, true) {
		return errors.New("certs: challenge responder is already running")
	}
	// The feed position is taken before the listing: a change committed
	// while it runs is applied again from the feed, which is harmless
	// since each change carries the row's whole new state.
	after := r.src.LastIndex()
	if err := r.load(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	r.advance(after)
	close(r.ready)
	r.mu.RLock()
	n := len(r.pending)
	r.mu.RUnlock()
	r.log.Info("acme challenges loaded", zap.Int("pending", n), zap.Uint64("index", after))

	sub := r.src.Subscribe(ctx, after)
	sweep := time.NewTicker(r.sweepEvery)
	defer sweep.Stop()
	for {
		select {
		case ev, ok := <-sub.Events():
			if !ok {
				if ctx.Err() != nil {
					return nil
				}
				if err := sub.Err(); err != nil {
					return fmt.Errorf("certs: challenges: change feed: %w", err)
				}
				return errors.New("certs: challenges: change feed closed")
			}
			r.applyEvent(ev)
		case <-sweep.C:
			// Expired tokens are not answered; this frees them when no
			// purge deletes their rows.
			r.mu.Lock()
			r.sweepLocked(r.now())
			r.mu.Unlock()
		}
	}
}

func (r *ChallengeResponder) load(ctx context.Context) error {
	now := r.now()
	after := ""
	for {
		page, err := r.src.ListACMERecords(ctx, keyChallenge, after, r.pageSize)
		if err != nil {
			return fmt.Errorf("certs: loading challenges after %q: %w", after, err)
		}
		r.mu.Lock()
		for i := range page {
			if page[i].Expired(now) {
				continue
			}
			r.putRecordLocked(page[i].Key, &page[i], now)
		}
		r.mu.Unlock()
		if len(page) < r.pageSize {
			return nil
		}
		after = page[len(page)-1].Key
	}
}

// applyEvent applies the challenge rows of one committed transaction.
func (r *ChallengeResponder) applyEvent(ev storage.Event) {
	locked := false
	now := r.now()
	for i := range ev.Set.Changes {
		ch := &ev.Set.Changes[i]
		if ch.Table != storage.TableACME || !strings.HasPrefix(ch.Key, keyChallenge) {
			continue
		}
		if !locked {
			r.mu.Lock()
			locked = true
		}
		if ch.Deleted {
			r.dropLocked(ch.Key)
			continue
		}
		rec, err := ch.ACMERecord()
		if err != nil {
			r.log.Error("cannot decode a changed acme challenge", zap.String("key", ch.Key), zap.Error(err))
			r.dropLocked(ch.Key)
			continue
		}
		r.putRecordLocked(ch.Key, &rec, now)
	}
	if locked {
		r.mu.Unlock()
	}
	r.advance(ev.Index)
}

// putRecordLocked holds the challenge of row key; a row that does not
// decode drops what was held for the key, since it replaced it.
func (r *ChallengeResponder) putRecordLocked(key string, rec *storage.ACMERecord, now time.Time) {
	ref, ok := parseChallengeKey(key)
	if !ok {
		r.log.Error("acme challenge row with a malformed key", zap.String("key", key))
		return
	}
	var c ChallengeToken
	if err := json.Unmarshal(rec.Data, &c); err != nil {
		r.log.Error("cannot decode an acme challenge", zap.String("key", key), zap.Error(fmt.Errorf("stored challenge: %w", err)))
		delete(r.pending, ref)
		return
	}
	// The row's TTL decides, as it does for every reader of the table.
	c.ExpiresAt = rec.ExpiresAt
	if _, held := r.pending[ref]; !held && len(r.pending) >= r.max {
		r.sweepLocked(now)
		if len(r.pending) >= r.max {
			r.refused.Add(1)
			r.log.Warn("acme challenge not held: too many pending challenges; its validation fails on this agent",
				zap.String("type", ref.typ), zap.String("domain", c.Domain), zap.Int("limit", r.max))
			return
		}
	}
	r.pending[ref] = c
}

func (r *ChallengeResponder) dropLocked(key string) {
	if ref, ok := parseChallengeKey(key); ok {
		delete(r.pending, ref)
	}
}

func (r *ChallengeResponder) sweepLocked(now time.Time) {
	for ref, c := range r.pending {
		if expired(c, now) {
			delete(r.pending, ref)
		}
	}
}

func expired(c ChallengeToken, now time.Time) bool {
	return !c.ExpiresAt.IsZero() && !now.Before(c.ExpiresAt)
}

// advance records that the map reflects the feed up to index and wakes
// the lookups waiting for it.
func (r *ChallengeResponder) advance(index uint64) {
	r.applied.Store(index)
	r.mu.Lock()
	if r.advanced != nil {
		close(r.advanced)
		r.advanced = nil
	}
	r.mu.Unlock()
}

func (r *ChallengeResponder) get(ref challengeRef) (ChallengeToken, bool) {
	r.mu.RLock()
	c, ok := r.pending[ref]
	r.mu.RUnlock()
	if !ok || expired(c, r.now()) {
		return ChallengeToken{}, false
	}
	return c, true
}

// lookup returns the live challenge ref from memory. The CA is told a
// token is ready once every agent's store has applied it, which can be
// an instant before this agent's feed has brought it here: a miss waits,
// at most timeout, for the map to reach the index the store has published
// (an atomic read, no RocksDB), and looks again. An agent whose feed is
// caught up answers an unknown token at once.
func (r *ChallengeResponder) lookup(typ, name string) (ChallengeToken, bool) {
	ref := challengeRef{typ: typ, name: name}
	if c, ok := r.get(ref); ok {
		return c, true
	}
	if !r.awaitFeed(r.src.LastIndex()) {
		return ChallengeToken{}, false
	}
	return r.get(ref)
}

// awaitFeed waits until the map is loaded and reflects the feed up to
// index, at most timeout; false when it does not in time.
func (r *ChallengeResponder) awaitFeed(index uint64) bool {
	if r.loaded() && r.applied.Load() >= index {
		return true
	}
	timer := time.NewTimer(r.timeout)
	defer timer.Stop()
	for {
		// advance stores applied before it takes mu to close advanced:
		// a check under mu that misses the index gets a channel that
		// advance closes.
		r.mu.Lock()
		if r.loaded() && r.applied.Load() >= index {
			r.mu.Unlock()
			return true
		}
		if r.advanced == nil {
			r.advanced = make(chan struct{})
		}
		advanced := r.advanced
		r.mu.Unlock()
		var loading <-chan struct{}
		if !r.loaded() {
			loading = r.ready
		}
		select {
		case <-advanced:
		case <-loading:
		case <-timer.C:
			return false
		}
	}
}

// HTTP01 returns the key authorization for token when it was issued for
// host.
func (r *ChallengeResponder) HTTP01(host, token string) (string, bool) {
	c, ok := r.lookup(ChallengeHTTP01, token)
	if !ok || normalizeName(c.Domain) != normalizeName(host) {
		return "", false
	}
	return c.KeyAuth, true
}

// TLSALPN01 returns the acme-tls/1 certificate for serverName (RFC 8737).
func (r *ChallengeResponder) TLSALPN01(serverName string) (*tls.Certificate, bool) {
	name := normalizeName(serverName)
	c, ok := r.lookup(ChallengeTLSALPN01, name)
	if !ok {
		return nil, false
	}
	key := name + "\x00" + c.KeyAuth
	now := r.now()
	r.alpnMu.Lock()
	defer r.alpnMu.Unlock()
	if e, ok := r.alpn[key]; ok {
		return e.cert, true
	}
	cert, err := alpnChallengeCert(name, c.KeyAuth, now)
	if err != nil {
		r.log.Error("tls-alpn-01 certificate", zap.String("sni", name), zap.Error(err))
		return nil, false
	}
	if len(r.alpn) >= maxALPNCerts {
		for k, e := range r.alpn {
			if now.After(e.expires) {
				delete(r.alpn, k)
			}
		}
		if len(r.alpn) >= maxALPNCerts {
			clear(r.alpn)
		}
	}
	r.alpn[key] = alpnCert{cert: cert, expires: c.ExpiresAt}
	return cert, true
}

// idPeACMEIdentifier is RFC 8737's acmeIdentifier extension.
var idPeACMEIdentifier = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 1, 31}

// alpnChallengeCert builds the self-signed TLS-ALPN-01 certificate with an
// ECDSA P-256 key. lego's helper generates an RSA-2048 key per call, which
// costs a CPU-second under load on every agent that answers.
func alpnChallengeCert(domain, keyAuth string, now time.Time) (*tls.Certificate, error) {
	sum := sha256.Sum256([]byte(keyAuth))
	value, err := asn1.Marshal(sum[:])
	if err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:    serial,
		Subject:         pkix.Name{CommonName: "ACME challenge"},
		NotBefore:       now.Add(-time.Hour),
		NotAfter:        now.Add(24 * time.Hour),
		DNSNames:        []string{domain},
		ExtraExtensions: []pkix.Extension{{Id: idPeACMEIdentifier, Critical: true, Value: value}},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}
