package certs

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"golang.org/x/net/publicsuffix"

	"github.com/singularity-ng/singularity-edge/storage"
)

// On-demand TLS: a name that no certificate covers, routed to a pool that
// opted in, gets a certificate during its first handshake. The handshake
// waits at most OnDemandConfig.Wait; the order runs detached and goes on
// after a handshake gives up, so the client's retry is served from the
// cache. Decisions are made once per name at a time on each agent (one
// in-flight call per name), refusals are remembered for RefusalTTL, and
// the order itself is placed once for the cluster: by the certificate's
// owner (rendezvous over the alive members, as for renewals), under the
// certificate's lease. An agent that is not the owner writes a request
// row the owner acts on, and waits for the certificate to replicate into
// its cache.

// OnDemandPolicy is what the hook needs of the pool a name routes to.
type OnDemandPolicy struct {
	// Pool names the pool (the rate limit's scope).
	Pool string
	// Allowed: the pool's allow-list admits the name (the routing table
	// decides; an empty allow-list admits every name routed to the pool).
	Allowed bool
	// AskURL, when set, must answer 2xx to GET ?domain=<name>.
	AskURL string
	// RatePerMinute bounds the pool's on-demand orders across the cluster.
	RatePerMinute int
}

// OnDemandRouter returns the on-demand policy of the pool name routes to;
// false when that pool did not opt in (or no pool serves the name).
type OnDemandRouter func(name string) (OnDemandPolicy, bool)

// CertificateLookup is the SNI cache as the hook reads it (*Cache).
type CertificateLookup interface {
	Lookup(serverName string) (*tls.Certificate, bool)
}

// OnDemandIssuer orders certificates for the cluster (*Manager).
type OnDemandIssuer interface {
	ObtainOnDemand(ctx context.Context, name string) (storage.Certificate, error)
	Status(ctx context.Context, id string) (Status, error)
}

// OnDemandRequest asks the owner of a name's certificate to order it.
type OnDemandRequest struct {
	Name        string    `json:"name"`
	Pool        string    `json:"pool"`
	RequestedBy string    `json:"requested_by"`
	At          time.Time `json:"at"`
}

// OnDemandStore is the cluster's shared state as the hook needs it
// (*StoreBackend): the rate limit's events and the request rows.
type OnDemandStore interface {
	Counters
	// PutOnDemandRequest stores r until expires.
	PutOnDemandRequest(ctx context.Context, r OnDemandRequest, expires time.Time) error
	// OnDemandRequests lists the unexpired requests.
	OnDemandRequests(ctx context.Context) ([]OnDemandRequest, error)
	// WatchOnDemandRequests signals wake after each commit (local or
	// replicated) that adds a request, until ctx ends.
	WatchOnDemandRequests(ctx context.Context, wake chan<- struct{})
}

// OnDemandConfig configures on-demand TLS.
type OnDemandConfig struct {
	// Wait bounds how long a handshake waits for its certificate. On
	// timeout the handshake fails; the order continues. It must leave
	// the rest of the handshake time within the listener's handshake
	// timeout (the proxy's is 10 s).
	Wait time.Duration
	// AskTimeout bounds one call to a pool's ask URL; a timeout is a
	// refusal (remembered for ErrorTTL).
	AskTimeout time.Duration
	// RefusalTTL is how long a refused name is refused without asking
	// again (allow-list, ask URL, a failed order).
	RefusalTTL time.Duration
	// ErrorTTL is how long a name whose ask URL could not be reached
	// (or whose order was held back without a known end) is refused.
	ErrorTTL time.Duration
	// ApprovalTTL is how long an ask URL's yes is remembered, so a name
	// held by the rate limit is not asked about on every retry.
	ApprovalTTL time.Duration
	// MaxRemembered bounds the refusal and approval caches (entries each).
	MaxRemembered int
	// ICANNOnly refuses names outside the ICANN public suffixes (.test,
	// .internal, .local): Let's Encrypt refuses them by policy, and each
	// refused order would count as a failed validation.
	ICANNOnly bool
	// MaxInFlight bounds the names decided or ordered at once on this
	// agent: a flood of new names past it is refused (not remembered)
	// instead of fanning out to the ask URLs.
	MaxInFlight int
	// OrderTimeout bounds the detached work for one name (ask, order,
	// waiting for another agent's certificate to replicate).
	OrderTimeout time.Duration
	// RequestTTL is how long a request row for the owner lives.
	RequestTTL time.Duration
	// Poll is how often a waiting call looks for the certificate in the
	// cache, and RescanInterval how often the owner lists request rows
	// besides the change feed's wake-ups.
	Poll           time.Duration
	RescanInterval time.Duration
	// HTTPClient calls ask URLs; nil: a client that follows no redirect.
	HTTPClient *http.Client
	Logger     *zap.Logger
	Registerer prometheus.Registerer
	Now        func() time.Time
}

// DefaultOnDemandConfig returns the defaults.
func DefaultOnDemandConfig() OnDemandConfig {
	return OnDemandConfig{
		Wait:           7 * time.Second,
		AskTimeout:     5 * time.Second,
		RefusalTTL:     5 * time.Minute,
		ErrorTTL:       10 * time.Second,
		ApprovalTTL:    5 * time.Minute,
		MaxRemembered:  100_000,
		MaxInFlight:    1000,
		OrderTimeout:   5 * time.Minute,
		RequestTTL:     10 * time.Minute,
		Poll:           25 * time.Millisecond,
		RescanInterval: 5 * time.Second,
		Logger:         zap.NewNop(),
		Now:            time.Now,
	}
}

// Reasons an on-demand certificate is refused (the metric's labels).
const (
	OnDemandInvalidName = "invalid_name"
	OnDemandNotAllowed  = "not_allowed"
	OnDemandAskRefused  = "ask_refused"
	OnDemandAskFailed   = "ask_failed"
	OnDemandRateLimited = "rate_limited"
	OnDemandHeldBack    = "held_back"
	OnDemandOrderFailed = "order_failed"
	OnDemandBusy        = "busy"
)

// ErrOnDemandRefused: the name may not get a certificate now. It wraps
// into an *OnDemandRefusal.
var ErrOnDemandRefused = errors.New("certs: on-demand certificate refused")

// ErrOnDemandTimeout: the handshake's wait ended before the certificate
// was there; the order goes on.
var ErrOnDemandTimeout = errors.New("certs: on-demand certificate not ready in time")

// OnDemandRefusal says why a name was refused and until when.
type OnDemandRefusal struct {
	Name   string
	Reason string // one of the OnDemand* reasons
	Detail string
	Until  time.Time // zero: not remembered
}

func (r *OnDemandRefusal) Error() string {
	if r.Detail == "" {
		return fmt.Sprintf("on-demand certificate for %q refused: %s", r.Name, r.Reason)
	}
	return fmt.Sprintf("on-demand certificate for %q refused: %s: %s", r.Name, r.Reason, r.Detail)
}

// Is makes errors.Is(err, ErrOnDemandRefused) true.
func (r *OnDemandRefusal) Is(target error) bool { return target == ErrOnDemandRefused }

// onDemandCall is one name's in-flight decision and order on this agent;
// every handshake for the name waits on it.
type onDemandCall struct {
	done chan struct{}
	cert *tls.Certificate
	err  error
}

// remembered is a refusal of a name under a policy: a changed policy
// (a pattern added, another ask URL) decides afresh.
type remembered struct {
	until  time.Time
	reason string
	detail string
	policy OnDemandPolicy
}

// OnDemand is the certificate source of the TLS listener: the cache
// first, then, for names routed to an on-demand pool, a certificate
// obtained during the handshake. Run acts on other agents' requests.
type OnDemand struct {
	cfg     OnDemandConfig
	cache   CertificateLookup
	route   OnDemandRouter
	issuer  OnDemandIssuer
	store   OnDemandStore
	members Members
	http    *http.Client
	log     *zap.Logger
	metrics *onDemandMetrics

	mu       sync.Mutex
	calls    map[string]*onDemandCall
	refused  map[string]remembered
	approved map[string]time.Time
	owning   map[string]bool // names this agent is ordering now

	rateMu sync.Mutex // serializes the rate limit's count and record

	// detached work (decisions, orders) outlives handshakes but not Run:
	// Run's end cancels it and waits for it.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// NewOnDemand returns the hook. Every dependency is required.
func NewOnDemand(cfg OnDemandConfig, cache CertificateLookup, route OnDemandRouter, issuer OnDemandIssuer, store OnDemandStore, members Members) (*OnDemand, error) {
	def := DefaultOnDemandConfig()
	if cfg.Wait <= 0 {
		return nil, fmt.Errorf("certs: on-demand wait %s: want a positive duration", cfg.Wait)
	}
	for _, d := range []struct {
		v   *time.Duration
		def time.Duration
	}{{&cfg.AskTimeout, def.AskTimeout}, {&cfg.RefusalTTL, def.RefusalTTL}, {&cfg.ErrorTTL, def.ErrorTTL},
		{&cfg.ApprovalTTL, def.ApprovalTTL}, {&cfg.OrderTimeout, def.OrderTimeout}, {&cfg.RequestTTL, def.RequestTTL},
		{&cfg.Poll, def.Poll}, {&cfg.RescanInterval, def.RescanInterval}} {
		if *d.v <= 0 {
			*d.v = d.def
		}
	}
	if cfg.MaxRemembered <= 0 {
		cfg.MaxRemembered = def.MaxRemembered
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = def.MaxInFlight
	}
	if cfg.Logger == nil {
		cfg.Logger = def.Logger
	}
	if cfg.Now == nil {
		cfg.Now = def.Now
	}
	if cache == nil || route == nil || issuer == nil || store == nil || members == nil {
		return nil, errors.New("certs: on-demand TLS needs a cache, a router, an issuer, a store and the members")
	}
	hc := cfg.HTTPClient
	if hc == nil {
		// A redirect is not a yes: the ask endpoint answers 2xx itself.
		hc = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
	m, err := newOnDemandMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	o := &OnDemand{cfg: cfg, cache: cache, route: route, issuer: issuer, store: store, members: members,
		http: hc, log: cfg.Logger, metrics: m,
		calls: make(map[string]*onDemandCall), refused: make(map[string]remembered),
		approved: make(map[string]time.Time), owning: make(map[string]bool)}
	o.ctx, o.cancel = context.WithCancel(context.Background())
	return o, nil
}

// GetCertificate is a tls.Config.GetCertificate callback. A refused name
// returns no certificate and no error, so crypto/tls answers with the
// unrecognized_name alert; a timeout or a failure returns the error
// (internal_error alert).
func (o *OnDemand) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	if cert, ok := o.cache.Lookup(hello.ServerName); ok {
		return cert, nil
	}
	name := normalizeName(hello.ServerName)
	pol, ok := o.route(name)
	if !ok {
		return nil, fmt.Errorf("%w %q", ErrNoCertificate, hello.ServerName)
	}
	ctx := hello.Context()
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, cancel := context.WithTimeout(ctx, o.cfg.Wait)
	defer cancel()
	cert, err := o.Certificate(ctx, name, pol)
	if errors.Is(err, ErrOnDemandRefused) {
		return nil, nil
	}
	return cert, err
}

// Certificate returns name's certificate, obtaining it under pol when
// none is cached, waiting until ctx ends. The work for the name goes on
// after ctx ends.
func (o *OnDemand) Certificate(ctx context.Context, name string, pol OnDemandPolicy) (*tls.Certificate, error) {
	name = normalizeName(name)
	if cert, ok := o.cache.Lookup(name); ok {
		return cert, nil
	}
	if msg := o.nameProblem(name); msg != "" {
		o.metrics.decisions.WithLabelValues(OnDemandInvalidName).Inc()
		return nil, &OnDemandRefusal{Name: name, Reason: OnDemandInvalidName, Detail: msg}
	}
	now := o.cfg.Now()
	o.mu.Lock()
	if r, ok := o.refused[name]; ok {
		if now.Before(r.until) && r.policy == pol {
			o.mu.Unlock()
			o.metrics.cachedRefusals.Inc()
			return nil, &OnDemandRefusal{Name: name, Reason: r.reason, Detail: r.detail, Until: r.until}
		}
		delete(o.refused, name)
	}
	if o.ctx.Err() != nil {
		o.mu.Unlock()
		return nil, fmt.Errorf("certs: on-demand certificate for %q: %w", name, o.ctx.Err())
	}
	call, joined := o.calls[name]
	if !joined && len(o.calls) >= o.cfg.MaxInFlight {
		o.mu.Unlock()
		return nil, o.refuse(name, pol.Pool, OnDemandBusy, fmt.Sprintf("%d names are being decided or ordered on this agent", o.cfg.MaxInFlight), 0)
	}
	if !joined {
		call = &onDemandCall{done: make(chan struct{})}
		o.calls[name] = call
		o.metrics.inflight.Inc()
		o.wg.Add(1)
		go o.run(call, name, pol)
	}
	o.mu.Unlock()

	select {
	case <-call.done:
		return call.cert, call.err
	case <-ctx.Done():
		o.metrics.waitTimeouts.Inc()
		o.log.Info("on-demand certificate not ready within the handshake's wait; the order goes on",
			zap.String("name", name), zap.String("pool", pol.Pool), zap.Duration("wait", o.cfg.Wait))
		return nil, fmt.Errorf("%w: %s for %q", ErrOnDemandTimeout, o.cfg.Wait, name)
	}
}

// nameProblem says why name can never get an on-demand certificate, or
// "".
func (o *OnDemand) nameProblem(name string) string {
	switch {
	case strings.Contains(name, "*"):
		return "a wildcard is never ordered on demand"
	case net.ParseIP(name) != nil:
		return "an IP address is not a host name"
	case !strings.Contains(name, "."):
		return "a single-label name cannot get a public certificate"
	}
	if o.cfg.ICANNOnly {
		if _, icann := publicsuffix.PublicSuffix(name); !icann {
			return "not under a public suffix the CA issues for"
		}
	}
	return checkDNSName(name)
}

// run decides and obtains name, then releases every waiter.
func (o *OnDemand) run(call *onDemandCall, name string, pol OnDemandPolicy) {
	defer o.wg.Done()
	ctx, cancel := context.WithTimeout(o.ctx, o.cfg.OrderTimeout)
	defer cancel()
	cert, err := o.obtain(ctx, name, pol)
	var ref *OnDemandRefusal
	o.mu.Lock()
	if errors.As(err, &ref) && !ref.Until.IsZero() {
		o.rememberLocked(o.refused, name, remembered{until: ref.Until, reason: ref.Reason, detail: ref.Detail, policy: pol})
	}
	delete(o.calls, name)
	o.mu.Unlock()
	o.metrics.inflight.Dec()
	call.cert, call.err = cert, err
	close(call.done)
}

// rememberLocked adds to a bounded cache: when full, expired entries go
// first, then arbitrary ones (map order), so a flood of names cannot grow
// memory past MaxRemembered.
func (o *OnDemand) rememberLocked(m map[string]remembered, name string, r remembered) {
	if len(m) >= o.cfg.MaxRemembered {
		now := o.cfg.Now()
		for k, v := range m {
			if !now.Before(v.until) {
				delete(m, k)
			}
		}
		for k := range m {
			if len(m) < o.cfg.MaxRemembered {
				break
			}
			delete(m, k)
		}
	}
	m[name] = r
}

func (o *OnDemand) refuse(name, pool, reason, detail string, ttl time.Duration) error {
	o.metrics.decisions.WithLabelValues(reason).Inc()
	o.log.Debug("on-demand certificate refused", zap.String("name", name), zap.String("pool", pool),
		zap.String("reason", reason), zap.String("detail", detail))
	r := &OnDemandRefusal{Name: name, Reason: reason, Detail: detail}
	if ttl > 0 {
		r.Until = o.cfg.Now().Add(ttl)
	}
	return r
}

// obtain is one name's decision and order: allow-list, ask URL, rate
// limit, then the order by the owner, then the wait for the certificate.
func (o *OnDemand) obtain(ctx context.Context, name string, pol OnDemandPolicy) (*tls.Certificate, error) {
	if !pol.Allowed {
		return nil, o.refuse(name, pol.Pool, OnDemandNotAllowed, "the name matches none of the pool's on_demand_allow patterns", o.cfg.RefusalTTL)
	}
	if pol.AskURL != "" && !o.wasApproved(pol.AskURL, name) {
		if err := o.ask(ctx, pol.AskURL, name); err != nil {
			var ref *OnDemandRefusal
			if errors.As(err, &ref) {
				return nil, o.refuse(name, pol.Pool, ref.Reason, ref.Detail, o.ttlFor(ref.Reason))
			}
			return nil, err
		}
		o.mu.Lock()
		if len(o.approved) >= o.cfg.MaxRemembered {
			clear(o.approved)
		}
		o.approved[approvalKey(pol.AskURL, name)] = o.cfg.Now().Add(o.cfg.ApprovalTTL)
		o.mu.Unlock()
	}
	// Another agent may have finished it while we asked.
	if cert, ok := o.cache.Lookup(name); ok {
		return cert, nil
	}
	id := CertificateID([]string{name})
	if err := o.checkBackoff(ctx, name, pol.Pool, id); err != nil {
		return nil, err
	}
	if err := o.takeRate(ctx, name, pol); err != nil {
		return nil, err
	}
	o.metrics.decisions.WithLabelValues("allowed").Inc()

	owner := Owner(id, o.members.Alive())
	if owner == o.members.Self() {
		// The lease keeps other agents out, not this one (its holder
		// may extend it): the claim keeps a handshake's order and an
		// order for another agent's request from running side by side.
		if o.claimOrder(name) {
			o.log.Info("on-demand certificate: ordering", zap.String("name", name), zap.String("pool", pol.Pool), zap.String("certificate", id))
			err := o.order(ctx, name, pol.Pool)
			o.releaseOrder(name)
			if err != nil {
				return nil, err
			}
		}
	} else {
		req := OnDemandRequest{Name: name, Pool: pol.Pool, RequestedBy: o.members.Self(), At: o.cfg.Now().UTC()}
		if err := o.store.PutOnDemandRequest(ctx, req, o.cfg.Now().Add(o.cfg.RequestTTL)); err != nil {
			return nil, fmt.Errorf("certs: on-demand request for %q: %w", name, err)
		}
		o.metrics.requests.Inc()
		o.log.Info("on-demand certificate: asked the owner to order", zap.String("name", name), zap.String("pool", pol.Pool),
			zap.String("certificate", id), zap.String("owner", owner))
	}
	return o.await(ctx, name, id)
}

func (o *OnDemand) ttlFor(reason string) time.Duration {
	if reason == OnDemandAskFailed {
		return o.cfg.ErrorTTL
	}
	return o.cfg.RefusalTTL
}

// approvalKey: an ask URL's yes holds for that URL only.
func approvalKey(askURL, name string) string { return askURL + "\x00" + name }

func (o *OnDemand) wasApproved(askURL, name string) bool {
	k := approvalKey(askURL, name)
	o.mu.Lock()
	defer o.mu.Unlock()
	until, ok := o.approved[k]
	if ok && !o.cfg.Now().Before(until) {
		delete(o.approved, k)
		return false
	}
	return ok
}

// StillWanted implements OnDemandGate: the policy of the pool the name
// routes to now, asked afresh (no remembered approval or refusal: a
// renewal is rare and should follow the current answer).
func (o *OnDemand) StillWanted(ctx context.Context, name string) error {
	pol, ok := o.route(name)
	switch {
	case !ok:
		return &OnDemandRefusal{Name: name, Reason: OnDemandNotAllowed, Detail: "no pool with on_demand_tls serves the name"}
	case !pol.Allowed:
		return &OnDemandRefusal{Name: name, Reason: OnDemandNotAllowed, Detail: "not admitted by on_demand_allow of pool " + pol.Pool}
	case pol.AskURL != "":
		err := o.ask(ctx, pol.AskURL, name)
		var r *OnDemandRefusal
		if errors.As(err, &r) && r.Reason == OnDemandAskFailed {
			// No answer is not a no: the certificate stays until the
			// ask URL answers.
			return fmt.Errorf("certs: ask URL of pool %s: %s", pol.Pool, r.Detail)
		}
		return err
	}
	return nil
}

// ask calls the pool's ask URL with ?domain=name: 2xx allows the name,
// any other status refuses it, and a failure to get an answer refuses it
// for ErrorTTL only.
func (o *OnDemand) ask(ctx context.Context, askURL, name string) error {
	u, err := url.Parse(askURL)
	if err != nil {
		return &OnDemandRefusal{Name: name, Reason: OnDemandAskFailed, Detail: "ask URL: " + err.Error()}
	}
	q := u.Query()
	q.Set("domain", name)
	u.RawQuery = q.Encode()
	actx, cancel := context.WithTimeout(ctx, o.cfg.AskTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(actx, http.MethodGet, u.String(), nil)
	if err != nil {
		return &OnDemandRefusal{Name: name, Reason: OnDemandAskFailed, Detail: err.Error()}
	}
	req.Header.Set("User-Agent", "singularity-edge on-demand-tls")
	o.metrics.asks.Inc()
	resp, err := o.http.Do(req)
	if err != nil {
		return &OnDemandRefusal{Name: name, Reason: OnDemandAskFailed, Detail: err.Error()}
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return &OnDemandRefusal{Name: name, Reason: OnDemandAskRefused, Detail: fmt.Sprintf("ask URL answered %s", resp.Status)}
	}
	return nil
}

// onDemandEventKind counts a pool's on-demand orders in the shared
// budget events (scope: the pool's name).
const onDemandEventKind = "ondemand"

// takeRate counts the pool's on-demand orders of the last minute across
// the cluster and records one more, or refuses. Count and record are
// serialized on this agent; agents count each other's events once they
// replicate, so a burst spread over regions may pass the limit by the
// orders still in flight between them.
func (o *OnDemand) takeRate(ctx context.Context, name string, pol OnDemandPolicy) error {
	o.rateMu.Lock()
	defer o.rateMu.Unlock()
	now := o.cfg.Now().UTC()
	events, err := o.store.BudgetEvents(ctx, onDemandEventKind, pol.Pool, now.Add(-time.Minute))
	if err != nil {
		return fmt.Errorf("certs: on-demand rate of pool %s: %w", pol.Pool, err)
	}
	if len(events) >= pol.RatePerMinute {
		return o.refuse(name, pol.Pool, OnDemandRateLimited,
			fmt.Sprintf("pool %s ordered %d certificates in the last minute (on_demand_rate %d)", pol.Pool, len(events), pol.RatePerMinute), 0)
	}
	return o.store.AddBudgetEvents(ctx, []BudgetEvent{{Kind: onDemandEventKind, Scope: pol.Pool, At: now,
		Node: o.members.Self(), Expires: now.Add(2 * time.Minute)}})
}

// checkBackoff refuses a name whose certificate's state says to wait:
// an earlier order failed (backoff) or the budget held it back. The state
// is the cluster's, so every agent refuses alike until NextAttempt.
func (o *OnDemand) checkBackoff(ctx context.Context, name, pool, id string) error {
	now := o.cfg.Now()
	st, err := o.issuer.Status(ctx, id)
	switch {
	case err == nil && st.State.NextAttempt.After(now):
		if st.State.HeldBack != "" {
			return o.refuse(name, pool, OnDemandHeldBack, st.State.HeldBack, st.State.NextAttempt.Sub(now))
		}
		return o.refuse(name, pool, OnDemandOrderFailed, "backing off after: "+st.State.LastError, st.State.NextAttempt.Sub(now))
	case err != nil && !errors.Is(err, storage.ErrNotFound):
		return err
	}
	return nil
}

// order places the order as the owner, unless the certificate's state
// says to wait.
func (o *OnDemand) order(ctx context.Context, name, pool string) error {
	id := CertificateID([]string{name})
	now := o.cfg.Now()
	if err := o.checkBackoff(ctx, name, pool, id); err != nil {
		return err
	}
	_, err := o.issuer.ObtainOnDemand(ctx, name)
	var hb *HeldBackError
	switch {
	case err == nil:
		o.metrics.decisions.WithLabelValues("issued").Inc()
		o.log.Info("on-demand certificate issued", zap.String("name", name), zap.String("pool", pool), zap.String("certificate", id))
		return nil
	case errors.Is(err, ErrLeaseHeld):
		// Another agent is ordering it: its certificate will replicate.
		return nil
	case errors.As(err, &hb):
		ttl := o.cfg.ErrorTTL
		if d := hb.Until.Sub(now); d > 0 {
			ttl = d
		}
		return o.refuse(name, pool, OnDemandHeldBack, hb.Error(), ttl)
	case ctx.Err() != nil:
		return err
	default:
		o.log.Warn("on-demand order failed", zap.String("name", name), zap.String("pool", pool), zap.Error(err))
		return o.refuse(name, pool, OnDemandOrderFailed, err.Error(), o.cfg.RefusalTTL)
	}
}

// await polls the cache until name's certificate is there: at once after
// our own order, after replication when another agent ordered it. The
// owner's failure shows in the certificate's state, which replicates too.
func (o *OnDemand) await(ctx context.Context, name, id string) (*tls.Certificate, error) {
	started := o.cfg.Now()
	t := time.NewTicker(o.cfg.Poll)
	defer t.Stop()
	lastState := time.Time{}
	for {
		if cert, ok := o.cache.Lookup(name); ok {
			return cert, nil
		}
		if now := o.cfg.Now(); now.Sub(lastState) >= time.Second {
			lastState = now
			if st, err := o.issuer.Status(ctx, id); err == nil && st.State.LastAttempt.After(started.Add(-time.Second)) &&
				st.State.LastSuccess.Before(st.State.LastAttempt) && st.State.NextAttempt.After(now) {
				reason, detail := OnDemandOrderFailed, st.State.LastError
				if st.State.HeldBack != "" {
					reason, detail = OnDemandHeldBack, st.State.HeldBack
				}
				return nil, o.refuse(name, "", reason, detail, st.State.NextAttempt.Sub(now))
			}
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: %q: %w", ErrOnDemandTimeout, name, ctx.Err())
		case <-t.C:
		}
	}
}

// Run orders, as the owner, the names other agents asked for, on each
// new request row and every RescanInterval, until ctx ends.
func (o *OnDemand) Run(ctx context.Context) error {
	defer func() {
		// Under mu: no call starts after the cancel (see Certificate).
		o.mu.Lock()
		o.cancel()
		o.mu.Unlock()
		o.wg.Wait()
	}()
	wake := make(chan struct{}, 1)
	go o.store.WatchOnDemandRequests(ctx, wake)
	t := time.NewTicker(o.cfg.RescanInterval)
	defer t.Stop()
	for {
		if err := o.serveRequests(ctx); err != nil && ctx.Err() == nil {
			o.log.Warn("on-demand requests pass failed", zap.Error(err))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-wake:
		case <-t.C:
		}
	}
}

// serveRequests starts an order for each request this agent owns whose
// certificate is missing, at most one per name at a time.
func (o *OnDemand) serveRequests(ctx context.Context) error {
	reqs, err := o.store.OnDemandRequests(ctx)
	if err != nil {
		return err
	}
	self, alive := o.members.Self(), o.members.Alive()
	for _, r := range reqs {
		if _, ok := o.cache.Lookup(r.Name); ok {
			continue
		}
		if Owner(CertificateID([]string{r.Name}), alive) != self {
			continue
		}
		// The pool may have left on-demand TLS since the request.
		if pol, ok := o.route(r.Name); !ok || pol.Pool != r.Pool {
			continue
		}
		if !o.claimOrder(r.Name) {
			continue
		}
		o.wg.Add(1)
		go func(r OnDemandRequest) {
			defer o.wg.Done()
			defer o.releaseOrder(r.Name)
			octx, cancel := context.WithTimeout(o.ctx, o.cfg.OrderTimeout)
			defer cancel()
			o.log.Info("on-demand certificate: ordering for another agent", zap.String("name", r.Name),
				zap.String("pool", r.Pool), zap.String("requested_by", r.RequestedBy))
			_ = o.order(octx, r.Name, r.Pool)
		}(r)
	}
	return nil
}

// claimOrder marks name as being ordered by this agent; false when it
// already is.
func (o *OnDemand) claimOrder(name string) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.owning[name] {
		return false
	}
	o.owning[name] = true
	return true
}

func (o *OnDemand) releaseOrder(name string) {
	o.mu.Lock()
	delete(o.owning, name)
	o.mu.Unlock()
}

type onDemandMetrics struct {
	decisions      *prometheus.CounterVec
	cachedRefusals prometheus.Counter
	waitTimeouts   prometheus.Counter
	asks           prometheus.Counter
	requests       prometheus.Counter
	inflight       prometheus.Gauge
}

func newOnDemandMetrics(reg prometheus.Registerer) (*onDemandMetrics, error) {
	m := &onDemandMetrics{
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "singularity_edge_ondemand_decisions_total",
			Help: "On-demand TLS decisions for names no certificate covered, by result: allowed, issued, or the refusal reason."},
			[]string{"result"}),
		cachedRefusals: prometheus.NewCounter(prometheus.CounterOpts{Name: "singularity_edge_ondemand_cached_refusals_total",
			Help: "Handshakes refused from the on-demand refusal cache, without asking or ordering."}),
		waitTimeouts: prometheus.NewCounter(prometheus.CounterOpts{Name: "singularity_edge_ondemand_wait_timeouts_total",
			Help: "Handshakes that gave up waiting for an on-demand certificate (the order went on)."}),
		asks: prometheus.NewCounter(prometheus.CounterOpts{Name: "singularity_edge_ondemand_ask_requests_total",
			Help: "Calls to pools' on-demand ask URLs."}),
		requests: prometheus.NewCounter(prometheus.CounterOpts{Name: "singularity_edge_ondemand_owner_requests_total",
			Help: "On-demand orders handed to the certificate's owner on another agent."}),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{Name: "singularity_edge_ondemand_inflight",
			Help: "Names with an on-demand decision or order in progress on this agent."}),
	}
	for _, r := range []string{"allowed", "issued", OnDemandInvalidName, OnDemandNotAllowed, OnDemandAskRefused,
		OnDemandAskFailed, OnDemandRateLimited, OnDemandHeldBack, OnDemandOrderFailed, OnDemandBusy} {
		m.decisions.WithLabelValues(r)
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.decisions, m.cachedRefusals, m.waitTimeouts, m.asks, m.requests, m.inflight} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("certs: on-demand metrics: %w", err)
			}
		}
	}
	return m, nil
}
