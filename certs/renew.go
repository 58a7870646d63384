package certs

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"hash/maphash"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/singularity-ng/singularity-edge/internal/fielderr"
	"github.com/singularity-ng/singularity-edge/storage"
)

// RenewalState is what the cluster knows about an ACME certificate's
// renewal, kept beside the certificate (which changes only when a new
// one is complete).
type RenewalState struct {
	CertificateID string   `json:"certificate_id"`
	Names         []string `json:"names"`
	Profile       string   `json:"profile,omitempty"`
	// Issuer is the Key of the issuer of the current certificate.
	Issuer string    `json:"issuer,omitempty"`
	ARI    *ARIState `json:"ari,omitempty"`
	// LastAttempt, LastSuccess, LastError, Failures (consecutive) and
	// NextAttempt (backoff) describe the attempts.
	LastAttempt time.Time `json:"last_attempt,omitzero"`
	LastSuccess time.Time `json:"last_success,omitzero"`
	LastError   string    `json:"last_error,omitempty"`
	Failures    int       `json:"failures,omitempty"`
	NextAttempt time.Time `json:"next_attempt,omitzero"`
	// HeldBack is the budget's reason for not ordering, until
	// HeldBackUntil; empty when the last decision was not held back.
	HeldBack      string    `json:"held_back,omitempty"`
	HeldBackUntil time.Time `json:"held_back_until,omitzero"`
	// ActionRequired: the hold is the CA's userActionRequired (phase
	// action_required): nothing renews at that CA until its account
	// holder has acted there.
	ActionRequired bool `json:"action_required,omitempty"`
	// Blocked says why no order is placed until an operator acts (the
	// profile kept from an earlier order is not offered by the CA); the
	// scheduler checks again at NextAttempt without ordering. Empty
	// otherwise.
	Blocked string `json:"blocked,omitempty"`
	// Owner is the agent that made the last attempt, under lease epoch
	// LeaseEpoch.
	Owner      string `json:"owner,omitempty"`
	LeaseEpoch uint64 `json:"lease_epoch,omitempty"`
	// RenewAt is the renewal time as last decided, and Due when the
	// scheduler next looks at the certificate (the renewal time, the end
	// of a backoff, or the next check of the CA's window, whichever comes
	// first). The store keeps a due row per Due, in time order, so that
	// a pass reads only the certificates it has something to do for.
	RenewAt time.Time `json:"renew_at,omitzero"`
	Due     time.Time `json:"due,omitzero"`
	// OnDemand: the certificate was ordered during a handshake (on-demand
	// TLS), not through the API. Before it is renewed, the pool's
	// on-demand policy decides again (see OnDemandGate).
	OnDemand bool `json:"on_demand,omitempty"`
}

// hold records that the last decision was held back by hb (the budget,
// or a hold the CA asked for).
func (st *RenewalState) hold(hb *HeldBackError) {
	st.HeldBack, st.HeldBackUntil, st.ActionRequired = hb.Error(), hb.Until, hb.Limit == LimitCAUserAction
}

// clearHold forgets the last hold: an order was placed, or failed.
func (st *RenewalState) clearHold() {
	st.HeldBack, st.HeldBackUntil, st.ActionRequired = "", time.Time{}, false
}

// DueCertificate is one row of the due schedule: certificate ID is to be
// looked at from At on.
type DueCertificate struct {
	ID string
	At time.Time
}

// ARIState is the CA's renewal window as last fetched.
type ARIState struct {
	Start          time.Time `json:"start"`
	End            time.Time `json:"end"`
	Chosen         time.Time `json:"chosen"`
	ExplanationURL string    `json:"explanation_url,omitempty"`
	NextCheck      time.Time `json:"next_check"`
}

func (a *ARIState) valid() bool {
	return a != nil && !a.Start.IsZero() && !a.End.Before(a.Start)
}

// Lease is the right to work on one certificate, for a time. Epoch grows
// each time another holder takes the lease over, so a holder that lost it
// (a partition, a pause) cannot store over the new holder's work.
type Lease struct {
	Key     string    `json:"key"`
	Holder  string    `json:"holder"`
	Epoch   uint64    `json:"epoch"`
	Expires time.Time `json:"expires"`
}

// ErrLeaseHeld: another agent holds the lease.
var ErrLeaseHeld = errors.New("certs: another agent holds the lease")

// ErrLeaseLost: the lease expired or was taken over before the result
// could be stored.
var ErrLeaseLost = errors.New("certs: lease lost")

// ErrNotACME: the certificate was not obtained by ACME (uploaded).
var ErrNotACME = errors.New("certs: not an ACME certificate")

// ErrUnreadableState: a certificate's stored renewal state does not
// decode (written by another build, an import, a damaged store). The
// scheduler sets the certificate aside, reports it once and keeps the
// row, until an operator renews the certificate (the renewal replaces
// the state) or deletes it.
var ErrUnreadableState = errors.New("certs: stored renewal state does not decode")

// DueRowReader is a RenewalStore that also names the due rows it leaves
// out of DueCertificates for their key; StoreBackend is one.
type DueRowReader interface {
	DueRows(ctx context.Context, until time.Time, limit int) (due []DueCertificate, malformed []string, err error)
}

// RenewalStore is what the manager needs of the shared store.
type RenewalStore interface {
	// Certificate returns the stored certificate (private key included)
	// or an error wrapping storage.ErrNotFound.
	Certificate(ctx context.Context, id string) (storage.Certificate, error)
	// CertificateExpiries returns the ids and expiries of the
	// certificates expiring before t, soonest first, from the expiry
	// index alone.
	CertificateExpiries(ctx context.Context, t time.Time, limit int) ([]storage.CertificateExpiry, error)
	// DueCertificates returns the due rows at or before until, soonest
	// first, at most limit (<= 0: all), reading no row past them.
	DueCertificates(ctx context.Context, until time.Time, limit int) ([]DueCertificate, error)
	// AddDue writes a due row without touching the state (a certificate
	// found without one); DropDue deletes one that is not its state's.
	AddDue(ctx context.Context, d DueCertificate) error
	DropDue(ctx context.Context, d DueCertificate) error
	// RenewalState returns the certificate's state, the zero state
	// (with CertificateID set) when there is none.
	RenewalState(ctx context.Context, id string) (RenewalState, error)
	// SaveRenewalState writes st and moves its due row: the previous
	// state's row is deleted and one is written for st.Due (none when
	// st.Due is zero), in the same transaction.
	SaveRenewalState(ctx context.Context, st RenewalState) error
	// StoreCertificate writes cert and st (and st's due row) together, in
	// one transaction that first checks that lease is still held
	// (ErrLeaseLost if not).
	StoreCertificate(ctx context.Context, cert *storage.Certificate, st RenewalState, lease Lease) error
	// AcquireLease takes or extends the lease key for holder until
	// now+ttl; an error wrapping ErrLeaseHeld when another holder's
	// lease is still valid.
	AcquireLease(ctx context.Context, key, holder string, ttl time.Duration) (Lease, error)
	// ExtendLease moves l's expiry to now+ttl if l is still held as l
	// (same holder and epoch, not expired); an error wrapping
	// ErrLeaseLost otherwise.
	ExtendLease(ctx context.Context, l Lease, ttl time.Duration) (Lease, error)
	// ReleaseLease ends l if it is still held as l.
	ReleaseLease(ctx context.Context, l Lease) error
	// RemoveCertificate deletes the certificate id with its state and due
	// row, if its fingerprint is still fingerprint (not renewed since).
	RemoveCertificate(ctx context.Context, id, fingerprint string) error
}

// Members is the cluster as the manager needs it.
type Members interface {
	// Self is this agent's member id.
	Self() string
	// Alive lists the alive members' ids, this agent's included.
	Alive() []string
}

// ManagerConfig configures a Manager.
type ManagerConfig struct {
	Logger     *zap.Logger
	Registerer prometheus.Registerer
	Now        func() time.Time
	Policy     RenewalPolicy
	Limits     BudgetLimits
	// Interval between scheduler passes, each shifted by up to Jitter of
	// it so that agents do not scan in step.
	Interval time.Duration
	Jitter   float64
	// LeaseTTL is the lease's term: an agent that dies mid-order frees
	// the certificate after it. The holder extends the lease every third
	// of it while an order runs (DNS-01 propagation can take minutes);
	// when an extension finds the lease lost, the order is abandoned and
	// nothing of it is stored.
	LeaseTTL time.Duration
	// Horizon: the reconciliation looks at certificates expiring within
	// it. 0: 400 days, every certificate a public CA issues.
	Horizon time.Duration
	// ReconcileInterval: every so often (and at the first pass) a pass
	// also walks the expiry index for ACME certificates without a due row
	// (stored by an agent of an older version) and refreshes the phase
	// metrics; the other passes read the due rows alone.
	ReconcileInterval time.Duration
	// OnDemandRecheck: an on-demand certificate whose name its pool no
	// longer admits is not renewed; the policy is asked again after this
	// long, until the certificate expires and is removed.
	OnDemandRecheck time.Duration
	// OrderTimeout bounds one order at one issuer. The scheduler renews
	// one certificate after the other, so a CA that keeps an order
	// pending (lego polls an authorization for up to 100 times the CA's
	// Retry-After, sleeping without a context) would otherwise hold every
	// other renewal of this agent back.
	OrderTimeout time.Duration
}

// DefaultManagerConfig returns the defaults.
func DefaultManagerConfig() ManagerConfig {
	return ManagerConfig{
		Logger:   zap.NewNop(),
		Now:      time.Now,
		Policy:   DefaultRenewalPolicy(),
		Limits:   DefaultBudgetLimits(),
		Interval: 5 * time.Minute,
		Jitter:   0.2,
		LeaseTTL: 30 * time.Minute,
		Horizon:  400 * 24 * time.Hour,

		ReconcileInterval: time.Hour,
		OnDemandRecheck:   time.Hour,
		OrderTimeout:      10 * time.Minute,
	}
}

// OnDemandGate decides again whether an on-demand certificate's name
// should keep its certificate (*OnDemand): without it, a name that left
// the cluster (its DNS moved, its pool dropped on_demand_tls, the ask URL
// now says no) would be renewed forever, each renewal a failed validation
// against the CA's limits.
type OnDemandGate interface {
	// StillWanted returns nil when the name may keep its certificate, an
	// error wrapping ErrOnDemandRefused when its policy refuses it now,
	// any other error when the policy could not be asked.
	StillWanted(ctx context.Context, name string) error
}

// Manager obtains and renews ACME certificates for the cluster: one owner
// per certificate (rendezvous over the alive members, guarded by a
// lease), issuers tried in order, the budget consulted before each order.
type Manager struct {
	cfg     ManagerConfig
	issuers []Issuer
	store   RenewalStore
	members Members
	budget  *Budget
	log     *zap.Logger
	metrics *managerMetrics

	rndMu sync.Mutex
	rnd   *rand.Rand

	reconcileMu   sync.Mutex
	lastReconcile time.Time

	// gate is set once by SetOnDemandGate; the scheduler reads it.
	gate atomic.Pointer[OnDemandGate]

	// unmanaged remembers, from one reconciliation to the next, the
	// certificates found not to be ACME-managed (uploads), by a hash of
	// their id and their expiry: the next reconciliation reads one again
	// only when its expiry changed (another certificate under the id).
	// Uploads can be most of a large store, and reading and decrypting
	// 100,000 of them every hour was most of an idle agent's CPU. About
	// 40 bytes per upload.
	unmanagedMu   sync.Mutex
	unmanaged     map[uint64]int64
	unmanagedSeed maphash.Seed

	// held: the certificates this agent owns whose renewal the budget
	// holds back, until when. A pass reads a held-back certificate only
	// when its hold ends (its due row), so the gauge comes from here.
	heldMu sync.Mutex
	held   map[string]time.Time

	// unreadable: the certificates set aside because their state does
	// not decode; badDue: the due keys left out of the schedule. Each is
	// reported once, when it is first found.
	unreadableMu sync.Mutex
	unreadable   map[string]struct{}
	badDue       map[string]struct{}
}

// noteUnreadable records whether id's state is unreadable and reports
// whether that is news.
func (m *Manager) noteUnreadable(id string, unreadable bool) bool {
	m.unreadableMu.Lock()
	defer m.unreadableMu.Unlock()
	_, known := m.unreadable[id]
	if unreadable {
		if m.unreadable == nil {
			m.unreadable = map[string]struct{}{}
		}
		m.unreadable[id] = struct{}{}
	} else {
		delete(m.unreadable, id)
	}
	m.metrics.unreadable.WithLabelValues("state").Set(float64(len(m.unreadable)))
	return known != unreadable
}

func (m *Manager) isUnreadable(id string) bool {
	m.unreadableMu.Lock()
	defer m.unreadableMu.Unlock()
	_, ok := m.unreadable[id]
	return ok
}

func (m *Manager) unreadableCount() int {
	m.unreadableMu.Lock()
	defer m.unreadableMu.Unlock()
	return len(m.unreadable)
}

// setAside stops scheduling the certificate of due row d, whose state
// does not decode (why). Before, every pass read it and failed it without
// a word of why, and the certificate was never renewed. Its due row goes
// (the scheduler's own), the state row stays (its profile and history
// are not the scheduler's to discard), and it is reported once: an error
// log, the blocked phase in its status, the metrics.
func (m *Manager) setAside(ctx context.Context, d DueCertificate, why error) error {
	if err := m.store.DropDue(ctx, d); err != nil {
		return err
	}
	if m.noteUnreadable(d.ID, true) {
		m.log.Error("acme certificate not renewed: its renewal state does not decode; renew the certificate (the renewal replaces the state) or delete it; the row is kept until then",
			zap.String("certificate", d.ID), zap.Error(why))
	}
	return why
}

// reportBadDue notes the due keys the last full read left out and logs
// those not seen before.
func (m *Manager) reportBadDue(keys []string) {
	m.unreadableMu.Lock()
	var fresh []string
	next := make(map[string]struct{}, len(keys))
	for _, k := range keys {
		next[k] = struct{}{}
		if _, ok := m.badDue[k]; !ok {
			fresh = append(fresh, k)
		}
	}
	m.badDue = next
	m.unreadableMu.Unlock()
	m.metrics.unreadable.WithLabelValues("due").Set(float64(len(keys)))
	if len(fresh) > 0 {
		m.log.Warn("acme due rows not spelt as this agent writes them are left out of the renewal schedule and kept (an import's or another build's); the certificates they name are scheduled by rows of their own",
			zap.Int("count", len(fresh)), zap.Strings("keys", fresh[:min(len(fresh), 10)]))
	}
}

// stateToReplace is the renewal state an operator's renewal or order of
// id starts from: the stored one, or a fresh one when it does not decode
// (the operator's action replaces it).
func (m *Manager) stateToReplace(ctx context.Context, id string) (RenewalState, bool, error) {
	st, err := m.store.RenewalState(ctx, id)
	if errors.Is(err, ErrUnreadableState) {
		m.log.Warn("the renewal state of the acme certificate does not decode; this renewal replaces it", zap.String("certificate", id), zap.Error(err))
		return RenewalState{CertificateID: id}, true, nil
	}
	return st, false, err
}

// noteHeld records id as held back until until (zero: not held back).
func (m *Manager) noteHeld(id string, until time.Time) {
	m.heldMu.Lock()
	defer m.heldMu.Unlock()
	if until.IsZero() {
		delete(m.held, id)
		return
	}
	if m.held == nil {
		m.held = map[string]time.Time{}
	}
	m.held[id] = until
}

// heldNow counts the holds still running at now, forgetting the others.
func (m *Manager) heldNow(now time.Time) int {
	m.heldMu.Lock()
	defer m.heldMu.Unlock()
	for id, until := range m.held {
		if !now.Before(until) {
			delete(m.held, id)
		}
	}
	return len(m.held)
}

// NewManager returns a manager; Run starts its scheduler.
func NewManager(cfg ManagerConfig, issuers []Issuer, store RenewalStore, counters Counters, members Members) (*Manager, error) {
	def := DefaultManagerConfig()
	if cfg.Logger == nil {
		cfg.Logger = def.Logger
	}
	if cfg.Now == nil {
		cfg.Now = def.Now
	}
	if cfg.Policy == (RenewalPolicy{}) {
		cfg.Policy = def.Policy
	}
	// The limits are used as given (DefaultManagerConfig carries Let's
	// Encrypt's): a zero count turns a limit off, it is not a default.
	if err := cfg.Limits.Validate(); err != nil {
		return nil, fmt.Errorf("certs: %w", err)
	}
	if cfg.Interval <= 0 {
		cfg.Interval = def.Interval
	}
	if cfg.Jitter < 0 || cfg.Jitter >= 1 {
		return nil, fmt.Errorf("certs: manager jitter %v: want [0, 1)", cfg.Jitter)
	}
	if cfg.LeaseTTL <= 0 {
		cfg.LeaseTTL = def.LeaseTTL
	}
	if cfg.LeaseTTL < 3*time.Millisecond {
		return nil, fmt.Errorf("certs: manager lease TTL %s is too short to be extended", cfg.LeaseTTL)
	}
	if cfg.Horizon <= 0 {
		cfg.Horizon = def.Horizon
	}
	if cfg.ReconcileInterval <= 0 {
		cfg.ReconcileInterval = def.ReconcileInterval
	}
	if cfg.OrderTimeout <= 0 {
		cfg.OrderTimeout = def.OrderTimeout
	}
	if len(issuers) == 0 {
		return nil, errors.New("certs: manager needs at least one issuer")
	}
	if store == nil || counters == nil || members == nil {
		return nil, errors.New("certs: manager needs a store, counters and members")
	}
	m := &Manager{cfg: cfg, issuers: issuers, store: store, members: members,
		budget: NewBudget(cfg.Limits, counters, members.Self()),
		log:    cfg.Logger, rnd: rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())),
		unmanagedSeed: maphash.MakeSeed()}
	var err error
	if m.metrics, err = newManagerMetrics(cfg.Registerer); err != nil {
		return nil, err
	}
	return m, nil
}

// CertificateID is the stable id of the ACME certificate for a set of
// names: the same on every agent and across renewals, so a pool's
// ssl_cert_id keeps pointing at the current certificate.
func CertificateID(names []string) string {
	sorted := slices.Clone(names)
	for i, n := range sorted {
		sorted[i] = normalizeName(n)
	}
	slices.Sort(sorted)
	sorted = slices.Compact(sorted)
	sum := sha256.Sum256([]byte(strings.Join(sorted, "\n")))
	return "acme-" + hex.EncodeToString(sum[:])[:IDLength]
}

// MaxCertificateNames is the most names one ACME certificate is ordered
// for: Let's Encrypt, Google Trust Services and ZeroSSL refuse an order
// with more.
const MaxCertificateNames = 100

// NormalizeNames lower-cases, validates and de-duplicates names, keeping
// the first as the primary one. Bad names yield a *fielderr.Error on
// field.
func NormalizeNames(field string, names []string) ([]string, error) {
	if len(names) > MaxCertificateNames {
		// Refused before anything is counted or stored: the CA would
		// refuse the order after the budget recorded it, and every name
		// would be checked and recorded as a failure.
		return nil, fielderr.New(field, fmt.Sprintf("has %d names; a certificate holds at most %d (the limit of Let's Encrypt and most ACME CAs)", len(names), MaxCertificateNames))
	}
	var out []string
	var errs fielderr.List
	for i, n := range names {
		n = normalizeName(n)
		if msg := checkDNSName(n); msg != "" {
			errs.Add(fmt.Sprintf("%s[%d]", field, i), msg)
			continue
		}
		if !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	if len(errs) > 0 {
		return nil, errs.Err()
	}
	if len(out) == 0 {
		return nil, fielderr.New(field, "names at least one domain")
	}
	return out, nil
}

// Obtain returns the ACME certificate for names, ordering it when none is
// stored or the stored one is due. profile may be empty.
func (m *Manager) Obtain(ctx context.Context, names []string, profile string) (storage.Certificate, error) {
	return m.obtain(ctx, names, profile, false)
}

// ObtainOnDemand is Obtain for on-demand TLS: the certificate for name,
// marked so that its renewals ask the on-demand policy first.
func (m *Manager) ObtainOnDemand(ctx context.Context, name string) (storage.Certificate, error) {
	return m.obtain(ctx, []string{name}, "", true)
}

// SetOnDemandGate makes the scheduler ask g before renewing an on-demand
// certificate. The gate and the manager need each other (the gate orders
// through the manager), hence a setter; it is safe to call while Run runs.
func (m *Manager) SetOnDemandGate(g OnDemandGate) { m.gate.Store(&g) }

func (m *Manager) obtain(ctx context.Context, names []string, profile string, onDemand bool) (storage.Certificate, error) {
	names, err := NormalizeNames("domains", names)
	if err != nil {
		return storage.Certificate{}, err
	}
	if err := m.checkWildcards(names); err != nil {
		return storage.Certificate{}, err
	}
	if profile != "" {
		// Refused before the lease, the budget or the state see it: a
		// profile the CA does not offer would otherwise be saved and asked
		// for by every renewal.
		if err := m.CheckProfile(ctx, profile); err != nil {
			return storage.Certificate{}, err
		}
	}
	id := CertificateID(names)
	lease, err := m.store.AcquireLease(ctx, leaseKey(id), m.members.Self(), m.cfg.LeaseTTL)
	if err != nil {
		return storage.Certificate{}, err
	}
	defer m.release(lease)
	ctx, stop := m.holdLease(ctx, lease)
	defer stop()
	st, replaced, err := m.stateToReplace(ctx, id)
	if err != nil {
		return storage.Certificate{}, err
	}
	if replaced {
		defer m.noteUnreadable(id, false)
	}
	sameProfile := profile == "" || profile == st.Profile
	if profile != "" {
		st.Profile = profile
	}
	st.Names = names
	// A name asked for through the API is the operator's: it renews
	// unconditionally from then on.
	st.OnDemand = onDemand
	old, err := m.store.Certificate(ctx, id)
	switch {
	case err == nil:
		// Already there and not due: the same answer on every agent, no
		// order. A different profile asks for a new certificate.
		if leaf, perr := leafOf(&old); perr == nil && sameProfile && !m.cfg.Policy.Decide(leaf.NotBefore, leaf.NotAfter, st).Due(m.cfg.Now()) {
			return old, nil
		}
		return m.attempt(ctx, lease, st, &old, nil)
	case errors.Is(err, storage.ErrNotFound):
		return m.attempt(ctx, lease, st, nil, nil)
	default:
		return storage.Certificate{}, err
	}
}

// checkWildcards refuses wildcard names when no issuer offers dns-01, the
// only challenge a CA accepts for them: the order would fail at the CA.
// An issuer that does not say what it offers is trusted to try.
func (m *Manager) checkWildcards(names []string) error {
	for _, iss := range m.issuers {
		co, ok := iss.(ChallengeOfferer)
		if !ok || co.OffersChallenge(ChallengeDNS01) {
			return nil
		}
	}
	var errs fielderr.List
	for _, n := range names {
		if strings.HasPrefix(n, "*.") {
			errs.Add("domains", n+" is a wildcard, which a CA validates with dns-01 only, and this agent does not offer dns-01 (set --acme-dns-provider)")
		}
	}
	return errs.Err()
}

// Renewal is the outcome of an explicit renewal (Manager.Renew).
type Renewal struct {
	// Certificate is the renewed certificate; zero when the renewal
	// failed.
	Certificate storage.Certificate
	// LiftedHolds are the keys of the issuers whose userActionRequired
	// hold the renewal lifted to order there once, whether or not that
	// order succeeded.
	LiftedHolds []string
}

// Renew orders a new certificate for id now, whatever its renewal time.
// It implements the admin API's Renewer.
//
// An operator who renews has typically just acted at the CA (agreed to
// its changed terms, changed the account), and no CA says when that is
// done: an issuer's userActionRequired hold is lifted for the whole
// cluster and one order placed there (the Renewal names the issuers).
// If the CA answers userActionRequired again, the hold is set again.
// Scheduled renewals and Obtain keep honouring the hold.
func (m *Manager) Renew(ctx context.Context, id string) (Renewal, error) {
	var out Renewal
	old, err := m.store.Certificate(ctx, id)
	if err != nil {
		return out, err
	}
	if old.Provider != ProviderACME {
		return out, fmt.Errorf("%w: certificate %s is %q", ErrNotACME, id, old.Provider)
	}
	lease, err := m.store.AcquireLease(ctx, leaseKey(id), m.members.Self(), m.cfg.LeaseTTL)
	if err != nil {
		return out, err
	}
	defer m.release(lease)
	ctx, stop := m.holdLease(ctx, lease)
	defer stop()
	st, replaced, err := m.stateToReplace(ctx, id)
	if err != nil {
		return out, err
	}
	if replaced {
		defer m.noteUnreadable(id, false)
	}
	if len(st.Names) == 0 {
		st.Names = old.Names
	}
	out.Certificate, err = m.attempt(ctx, lease, st, &old, &out.LiftedHolds)
	return out, err
}

// State returns a certificate's renewal state and the current decision.
func (m *Manager) State(ctx context.Context, id string) (RenewalState, Decision, error) {
	c, err := m.store.Certificate(ctx, id)
	if err != nil {
		return RenewalState{}, Decision{}, err
	}
	st, err := m.store.RenewalState(ctx, id)
	if err != nil {
		return RenewalState{}, Decision{}, err
	}
	return st, m.cfg.Policy.Decide(c.NotBefore, c.ExpiresAt, st), nil
}

func leaseKey(id string) string { return "cert/" + id }

// holdLease extends l every third of the lease's term until the returned
// stop is called. When an extension finds the lease lost (it expired, or
// another agent took it over: a pause, a partition), the returned context
// is cancelled with a cause wrapping ErrLeaseLost: lego's next request to
// the CA fails, and the attempt stores nothing. A store that cannot be
// reached is retried until the lease would have run out.
func (m *Manager) holdLease(ctx context.Context, l Lease) (context.Context, func()) {
	ctx, cancel := context.WithCancelCause(ctx)
	done, stopped := make(chan struct{}), make(chan struct{})
	every := m.cfg.LeaseTTL / 3
	go func() {
		defer close(stopped)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
			}
			rctx, rcancel := context.WithTimeout(ctx, every)
			nl, err := m.store.ExtendLease(rctx, l, m.cfg.LeaseTTL)
			rcancel()
			switch {
			case err == nil:
				l = nl
			case errors.Is(err, ErrLeaseLost) || !m.cfg.Now().Before(l.Expires):
				m.log.Warn("renewal lease lost during an order; abandoning it", zap.String("lease", l.Key),
					zap.Uint64("epoch", l.Epoch), zap.Error(err))
				m.metrics.leaseLost.Inc()
				if !errors.Is(err, ErrLeaseLost) {
					err = fmt.Errorf("%w: %w", ErrLeaseLost, err)
				}
				cancel(err)
				return
			case ctx.Err() == nil:
				m.log.Info("extending renewal lease failed; retrying", zap.String("lease", l.Key), zap.Error(err))
			}
		}
	}()
	return ctx, func() {
		close(done)
		<-stopped
		cancel(nil)
	}
}

// leaseLost is the cause when ctx was cancelled because the lease was
// lost, nil otherwise.
func leaseLost(ctx context.Context) error {
	if cause := context.Cause(ctx); errors.Is(cause, ErrLeaseLost) {
		return cause
	}
	return nil
}

func (m *Manager) release(l Lease) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := m.store.ReleaseLease(ctx, l); err != nil && !errors.Is(err, ErrLeaseLost) {
		m.log.Warn("releasing renewal lease", zap.String("lease", l.Key), zap.Error(err))
	}
}

func leafOf(c *storage.Certificate) (*x509.Certificate, error) {
	block, _ := pem.Decode([]byte(c.CertificatePEM))
	if block == nil {
		return nil, errors.New("no PEM certificate")
	}
	return x509.ParseCertificate(block.Bytes)
}

// attempt orders a certificate for st.Names under lease, trying each
// issuer in order. old is the certificate being replaced (nil for a first
// issuance); it stays stored and served whatever happens here. lifted is
// nil except for an operator's explicit renewal: then an issuer's
// userActionRequired hold is lifted and its key appended to *lifted.
func (m *Manager) attempt(ctx context.Context, lease Lease, st RenewalState, old *storage.Certificate, lifted *[]string) (storage.Certificate, error) {
	now := m.cfg.Now().UTC()
	id := st.CertificateID
	st.LastAttempt, st.Owner, st.LeaseEpoch = now, m.members.Self(), lease.Epoch
	log := m.log.With(zap.String("certificate", id), zap.Strings("names", st.Names))

	var oldLeaf *x509.Certificate
	if old != nil {
		oldLeaf, _ = leafOf(old)
	}
	if st.Profile != "" {
		// A profile saved before the CA stopped offering it (or before
		// the API checked it) is not ordered: every order would fail
		// after the budget counted it. A directory that cannot be read is
		// not a refusal; the orders below fail or succeed on their own.
		if err := m.CheckProfile(ctx, st.Profile); errors.Is(err, ErrInvalidProfile) {
			return storage.Certificate{}, m.profileRefused(ctx, st, oldLeaf, asStored(err), now)
		}
	}
	st.Blocked = ""
	var errs []error
	var heldBack *HeldBackError
	for _, iss := range m.issuers {
		err := m.budget.Check(ctx, iss.Key(), st.Names, id, now)
		if hb := (*HeldBackError)(nil); lifted != nil && errors.As(err, &hb) && hb.Limit == LimitCAUserAction {
			if lerr := m.budget.LiftUserAction(ctx, iss.Key()); lerr != nil {
				err = fmt.Errorf("certs: lifting the userActionRequired hold at %s: %w", iss.Key(), lerr)
			} else {
				*lifted = append(*lifted, iss.Key())
				log.Warn("userActionRequired hold lifted by an explicit renewal; ordering there once",
					zap.String("issuer", iss.Key()), zap.Time("held_until", hb.Until))
				err = m.budget.Check(ctx, iss.Key(), st.Names, id, now)
			}
		}
		if err != nil {
			var hb *HeldBackError
			if !errors.As(err, &hb) {
				errs = append(errs, err)
				continue
			}
			log.Warn("acme order held back", zap.String("issuer", iss.Key()), zap.String("reason", hb.Error()))
			m.metrics.orders.WithLabelValues("held_back").Inc()
			if hb.Limit == LimitCAUserAction {
				m.metrics.actionRequired.WithLabelValues(iss.Key()).Set(1)
			}
			if heldBack == nil || hb.Until.Before(heldBack.Until) {
				heldBack = hb
			}
			errs = append(errs, err)
			continue
		}
		req := IssueRequest{Names: st.Names, Profile: st.Profile}
		ri, canReplace := iss.(RenewalInformer)
		if oldLeaf != nil && canReplace && st.Issuer == iss.Key() {
			if rid, err := ri.ReplacesID(oldLeaf); err == nil {
				req.ReplacesID = rid
			}
		}
		res, err := m.order(ctx, iss, req, now)
		if errors.Is(err, ErrAlreadyReplaced) {
			// Another agent (a partition's other side, or an owner that
			// lost its lease) renewed it. If its certificate is stored,
			// that is the result; otherwise the replacing order failed
			// after creation, and a plain order follows.
			m.metrics.orders.WithLabelValues("already_replaced").Inc()
			if cur, cerr := m.store.Certificate(ctx, id); cerr == nil && old != nil && cur.Fingerprint != old.Fingerprint {
				log.Info("certificate already renewed by another agent", zap.String("fingerprint", cur.Fingerprint))
				st.LastError, st.Failures, st.NextAttempt = "", 0, time.Time{}
				st.clearHold()
				st.LastSuccess = now
				if leaf, lerr := leafOf(&cur); lerr == nil {
					m.schedule(&st, leaf.NotBefore, leaf.NotAfter)
				}
				if err := m.store.SaveRenewalState(ctx, st); err != nil {
					return storage.Certificate{}, err
				}
				return cur, nil
			}
			req.ReplacesID = ""
			res, err = m.order(ctx, iss, req, now)
		}
		if hb := (*HeldBackError)(nil); errors.As(err, &hb) {
			if hb.Limit == LimitCARateLimited {
				log.Warn("acme order refused by the CA as rate limited; held back until the CA's Retry-After",
					zap.String("issuer", iss.Key()), zap.Time("until", hb.Until), zap.Error(err))
			}
			if heldBack == nil || hb.Until.Before(heldBack.Until) {
				heldBack = hb
			}
			errs = append(errs, err)
			continue
		}
		if err != nil {
			log.Warn("acme order failed", zap.String("issuer", iss.Key()), zap.Error(err))
			errs = append(errs, err)
			if leaseLost(ctx) != nil {
				break
			}
			continue
		}
		cert := m.record(id, st.Names, res, old, now)
		st.Issuer = res.IssuerKey
		st.LastSuccess = now
		st.LastError, st.Failures, st.NextAttempt = "", 0, time.Time{}
		st.clearHold()
		m.metrics.actionRequired.WithLabelValues(res.IssuerKey).Set(0)
		st.ARI = nil // the new certificate's window is fetched on the next pass
		m.schedule(&st, res.Leaf.NotBefore, res.Leaf.NotAfter)
		// Counted before it is stored: the CA issued it even if the
		// lease turns out lost.
		if err := m.budget.RecordResult(ctx, st.Names, id, true, now); err != nil {
			log.Warn("recording budget events", zap.Error(err))
		}
		if err := m.store.StoreCertificate(ctx, cert, st, lease); err != nil {
			return storage.Certificate{}, fmt.Errorf("certs: storing certificate %s: %w", id, err)
		}
		m.noteHeld(id, time.Time{})
		log.Info("certificate issued", zap.String("issuer", res.IssuerKey), zap.Time("expires_at", cert.ExpiresAt),
			zap.String("fingerprint", cert.Fingerprint), zap.Bool("replaces", req.ReplacesID != ""))
		return *cert, nil
	}

	err := errors.Join(errs...)
	if lost := leaseLost(ctx); lost != nil {
		// Another agent holds the certificate now: its state is not
		// this attempt's to write.
		return storage.Certificate{}, fmt.Errorf("certs: order for %s abandoned: %w (%w)", id, lost, err)
	}
	if heldBack != nil && len(errs) == len(m.issuers) && allHeldBack(errs) {
		// Not a failure: nothing was ordered. Try again when the budget
		// allows it.
		st.hold(heldBack)
		st.NextAttempt = heldBack.Until
		m.noteHeld(id, heldBack.Until)
	} else {
		st.clearHold()
		m.noteHeld(id, time.Time{})
		st.Failures++
		st.LastError = err.Error()
		st.NextAttempt = now.Add(m.backoff(st.Failures))
	}
	if oldLeaf != nil {
		m.schedule(&st, oldLeaf.NotBefore, oldLeaf.NotAfter)
	} else {
		// No certificate yet: nothing for the scheduler; a first issuance
		// is asked for again (by the API or the pool's automatic
		// certificate).
		st.Due = time.Time{}
	}
	if st.HeldBack == "" {
		// One line per failed attempt that says what happens next: the
		// per-issuer lines above say why.
		fields := []zap.Field{zap.Int("failures", st.Failures)}
		if oldLeaf != nil {
			next := m.cfg.Policy.Decide(oldLeaf.NotBefore, oldLeaf.NotAfter, st).NotBefore
			fields = append(fields, zap.Time("next_attempt", next), zap.Time("current_expires_at", oldLeaf.NotAfter))
			log.Warn("acme certificate not renewed; the current certificate keeps serving until the next attempt", fields...)
		} else {
			log.Warn("acme certificate not obtained; ordered again when next asked for (API or the pool's automatic certificate)",
				append(fields, zap.Time("not_before", st.NextAttempt))...)
		}
	}
	if serr := m.store.SaveRenewalState(ctx, st); serr != nil {
		log.Warn("saving renewal state", zap.Error(serr))
	}
	return storage.Certificate{}, err
}

// profileRecheck: how often the scheduler reads the CA's directory again
// for a certificate whose stored profile it does not offer (a CA may
// bring a profile back); nothing is ordered meanwhile.
const profileRecheck = time.Hour

// profileRefused records that st's stored profile is not offered: no
// order, the state blocked with the reason and checked again after
// profileRecheck (in the last tenth of the certificate's life the
// emergency retry makes that sooner), counted and logged for the
// operator. It returns err.
func (m *Manager) profileRefused(ctx context.Context, st RenewalState, oldLeaf *x509.Certificate, err error, now time.Time) error {
	st.clearHold()
	m.noteHeld(st.CertificateID, time.Time{})
	st.Failures++
	st.LastError, st.Blocked = err.Error(), err.Error()
	st.NextAttempt = now.Add(profileRecheck)
	if oldLeaf != nil {
		m.schedule(&st, oldLeaf.NotBefore, oldLeaf.NotAfter)
	} else {
		st.Due = time.Time{}
	}
	m.metrics.orders.WithLabelValues("profile_refused").Inc()
	fields := []zap.Field{zap.String("certificate", st.CertificateID), zap.Strings("names", st.Names),
		zap.String("profile", st.Profile), zap.Time("next_check", st.NextAttempt), zap.Error(err)}
	if oldLeaf != nil {
		fields = append(fields, zap.Time("expires_at", oldLeaf.NotAfter))
	}
	m.log.Error("acme certificate not renewed: its profile is not offered by the CA", fields...)
	if serr := m.store.SaveRenewalState(ctx, st); serr != nil {
		m.log.Warn("saving renewal state", zap.Error(serr))
	}
	return err
}

func allHeldBack(errs []error) bool {
	for _, e := range errs {
		if !errors.Is(e, ErrHeldBack) {
			return false
		}
	}
	return true
}

// order places one order, counting it and its outcome in the budget.
func (m *Manager) order(ctx context.Context, iss Issuer, req IssueRequest, now time.Time) (*IssuedCertificate, error) {
	if err := m.budget.RecordOrder(ctx, iss.Key(), now); err != nil {
		return nil, fmt.Errorf("certs: budget: %w", err)
	}
	ictx, cancel := context.WithTimeout(ctx, m.cfg.OrderTimeout)
	res, err := m.issue(ictx, iss, req)
	cancel()
	switch {
	case err == nil:
		m.metrics.orders.WithLabelValues("issued").Inc()
	case isRateLimited(err):
		// Refused before any validation: no failure to count. With a
		// Retry-After the cluster holds this certificate's orders at this
		// CA until then (Check), instead of asking again after a minute's
		// backoff while the CA said hours.
		m.metrics.orders.WithLabelValues("rate_limited").Inc()
		if until, ok := caRetryAfter(err, now); ok {
			id := CertificateID(req.Names)
			if rerr := m.budget.RecordCAHold(ctx, iss.Key(), id, until); rerr != nil {
				m.log.Warn("recording the CA's rate-limit hold", zap.Error(rerr))
			}
			return res, fmt.Errorf("%w (the CA said: %w)", &HeldBackError{Limit: LimitCARateLimited, Scope: iss.Key(), Count: 1, Until: until}, err)
		}
	case errors.As(err, new(*UserActionError)):
		// The CA refuses the account, not the names: no failed
		// validation, and no order at that CA by any agent for any
		// certificate until the hold ends (one refusal an hour, where
		// each certificate's backoff asked again and again).
		m.metrics.orders.WithLabelValues("user_action_required").Inc()
		m.metrics.actionRequired.WithLabelValues(iss.Key()).Set(1)
		until := now.Add(UserActionHold)
		if rerr := m.budget.RecordUserAction(ctx, iss.Key(), until); rerr != nil {
			m.log.Warn("recording the CA's userActionRequired hold", zap.Error(rerr))
		}
		var ua *UserActionError
		errors.As(err, &ua)
		m.log.Error("the CA requires an action of the ACME account holder (typically agreeing to changed terms of service): "+
			"no certificate is ordered or renewed at it until then; certificates keep serving until they expire. "+
			"Act at the CA, then orders resume at the next check",
			zap.String("issuer", iss.Key()), zap.String("instance", ua.Instance), zap.String("terms_of_service", ua.Terms),
			zap.Time("next_check", until), zap.Strings("names", req.Names), zap.Error(err))
		return res, fmt.Errorf("%w (the CA said: %w)", &HeldBackError{Limit: LimitCAUserAction, Scope: iss.Key(), Count: 1, Until: until}, err)
	case errors.Is(err, ErrAlreadyReplaced):
	case errors.Is(err, ErrNotOrdered), errors.Is(err, ErrNotPresented):
		// Nothing failed at the CA: no failed validation to count.
		m.metrics.orders.WithLabelValues("failed").Inc()
	case !isValidationFailure(err):
		// The CA or the network failed, not the names: nothing the CA
		// counts against them.
		m.metrics.orders.WithLabelValues("failed").Inc()
	default:
		m.metrics.orders.WithLabelValues("failed").Inc()
		if rerr := m.budget.RecordResult(ctx, req.Names, CertificateID(req.Names), false, now); rerr != nil {
			m.log.Warn("recording budget events", zap.Error(rerr))
		}
	}
	return res, err
}

// issue runs iss.Issue and returns when it does or when ctx ends,
// whichever is first: an issuer may still be inside a wait it cannot cut
// short. ACMEIssuer's are bounded by ctx (ctxResolver; its requests carry
// ctx), so what is left behind ends promptly too.
func (m *Manager) issue(ctx context.Context, iss Issuer, req IssueRequest) (*IssuedCertificate, error) {
	type result struct {
		res *IssuedCertificate
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := iss.Issue(ctx, req)
		done <- result{res, err}
	}()
	select {
	case r := <-done:
		return r.res, r.err
	case <-ctx.Done():
		return nil, fmt.Errorf("certs: order at %s abandoned: %w", iss.Key(), context.Cause(ctx))
	}
}

func (m *Manager) backoff(n int) time.Duration {
	m.rndMu.Lock()
	defer m.rndMu.Unlock()
	return m.cfg.Policy.Backoff(n, m.rnd)
}

// record builds the row of a newly issued certificate.
func (m *Manager) record(id string, names []string, res *IssuedCertificate, old *storage.Certificate, now time.Time) *storage.Certificate {
	sum := sha256.Sum256(res.Leaf.Raw)
	c := &storage.Certificate{
		ID:             id,
		Domain:         names[0],
		Names:          slices.Clone(names),
		CertificatePEM: res.CertificatePEM,
		PrivateKeyPEM:  res.PrivateKeyPEM,
		ChainPEM:       res.ChainPEM,
		Issuer:         issuerName(res.Leaf),
		NotBefore:      res.Leaf.NotBefore.UTC(),
		ExpiresAt:      res.Leaf.NotAfter.UTC(),
		AutoRenew:      true,
		Provider:       ProviderACME,
		Fingerprint:    hex.EncodeToString(sum[:]),
	}
	if old != nil {
		c.AutoRenew = old.AutoRenew
		c.Metadata = old.Metadata
	}
	return c
}

// PassReport says what one scheduler pass did.
type PassReport struct {
	// Checked counts the due rows read, Owned those this agent owns.
	Checked, Owned, Renewed, Failed, HeldBack int
	// Reconciled: this pass also walked the expiry index (and added
	// Added due rows for certificates that had none).
	Reconciled bool
	Added      int
}

// RunOnce makes one scheduler pass: it reads the due rows up to now
// (soonest first, nothing past them) and, for each certificate this agent
// owns, refreshes the CA's window when due and renews when due. Every
// ReconcileInterval the pass also reconciles (see ManagerConfig).
func (m *Manager) RunOnce(ctx context.Context) (PassReport, error) {
	var rep PassReport
	now := m.cfg.Now()
	m.reconcileMu.Lock()
	reconcile := m.lastReconcile.IsZero() || now.Sub(m.lastReconcile) >= m.cfg.ReconcileInterval
	if reconcile {
		m.lastReconcile = now
	}
	m.reconcileMu.Unlock()
	alive := m.members.Alive()
	self := m.members.Self()
	var expiries []storage.CertificateExpiry
	if reconcile {
		n, exp, err := m.addMissingDue(ctx, now, alive, self)
		if err != nil {
			return rep, err
		}
		rep.Reconciled, rep.Added, expiries = true, n, exp
	}
	due, err := m.store.DueCertificates(ctx, now, 0)
	if err != nil {
		return rep, err
	}
	for _, d := range due {
		rep.Checked++
		if Owner(d.ID, alive) != self {
			continue
		}
		rep.Owned++
		switch err := m.maybeRenew(ctx, d); {
		case err == nil:
			rep.Renewed++
		case errors.Is(err, errNotDue), errors.Is(err, ErrLeaseHeld):
		case errors.Is(err, ErrHeldBack):
			rep.HeldBack++
		default:
			rep.Failed++
		}
		if err := ctx.Err(); err != nil {
			return rep, err
		}
	}
	m.metrics.passes.Inc()
	m.metrics.heldBack.Set(float64(m.heldNow(now)))
	if reconcile {
		m.recordPhases(ctx, now, expiries)
	}
	// The purge scans the whole acme table: with the reconciliation, not
	// every pass (expired rows are ignored on read meanwhile).
	if p, ok := m.store.(expiredPurger); ok && reconcile {
		if _, err := p.PurgeExpired(ctx); err != nil && ctx.Err() == nil {
			m.log.Warn("purging expired acme rows", zap.Error(err))
		}
	}
	return rep, nil
}

// farFuture bounds "every due row".
var farFuture = time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)

// addMissingDue walks the expiry index (ids and expiries, no certificate
// read) and gives each ACME certificate this agent owns that has no due
// row one at now: the next pass decides its real schedule. Only the due
// row is written, never the state, so that it races with no attempt.
func (m *Manager) addMissingDue(ctx context.Context, now time.Time, alive []string, self string) (int, []storage.CertificateExpiry, error) {
	var rows []DueCertificate
	var err error
	if dr, ok := m.store.(DueRowReader); ok {
		var bad []string
		if rows, bad, err = dr.DueRows(ctx, farFuture, 0); err == nil {
			m.reportBadDue(bad)
		}
	} else {
		rows, err = m.store.DueCertificates(ctx, farFuture, 0)
	}
	if err != nil {
		return 0, nil, err
	}
	scheduled := make(map[string]struct{}, len(rows))
	for _, d := range rows {
		scheduled[d.ID] = struct{}{}
	}
	exp, err := m.store.CertificateExpiries(ctx, now.Add(m.cfg.Horizon), 0)
	if err != nil {
		return 0, nil, err
	}
	m.unmanagedMu.Lock()
	defer m.unmanagedMu.Unlock()
	known, unmanaged := m.unmanaged, make(map[uint64]int64, len(m.unmanaged))
	added := 0
	for _, e := range exp {
		if _, ok := scheduled[e.ID]; ok || Owner(e.ID, alive) != self {
			continue
		}
		h, expires := maphash.String(m.unmanagedSeed, e.ID), e.ExpiresAt.UnixNano()
		if at, ok := known[h]; ok && at == expires {
			unmanaged[h] = expires
			continue
		}
		c, err := m.store.Certificate(ctx, e.ID)
		if errors.Is(err, storage.ErrNotFound) {
			continue
		}
		if err != nil {
			return added, nil, err
		}
		if c.Provider != ProviderACME || !c.AutoRenew {
			unmanaged[h] = expires
			continue
		}
		if m.isUnreadable(c.ID) {
			// Set aside while its state does not decode; read again, for
			// an operator's renewal on another agent may have replaced it.
			if _, err := m.store.RenewalState(ctx, c.ID); errors.Is(err, ErrUnreadableState) {
				continue
			}
			m.noteUnreadable(c.ID, false)
		}
		if err := m.store.AddDue(ctx, DueCertificate{ID: c.ID, At: now}); err != nil {
			return added, nil, err
		}
		added++
	}
	m.unmanaged = unmanaged
	if added > 0 {
		m.log.Info("acme certificates without a renewal schedule found", zap.Int("count", added))
	}
	return added, exp, nil
}

// expiredPurger is a RenewalStore with TTL rows (challenge tokens, budget
// events) that the scheduler purges after each reconciling pass;
// StoreBackend is one.
type expiredPurger interface {
	PurgeExpired(ctx context.Context) (int, error)
}

var errNotDue = errors.New("certs: renewal not due")

// schedule sets st's renewal time and due time for the certificate valid
// from notBefore to notAfter, and reports whether they changed.
func (m *Manager) schedule(st *RenewalState, notBefore, notAfter time.Time) bool {
	d := m.cfg.Policy.Decide(notBefore, notAfter, *st)
	due := d.At
	if d.NotBefore.After(due) {
		due = d.NotBefore
	}
	if m.ariIssuer(st) != nil {
		check := m.cfg.Now()
		if st.ARI != nil {
			check = st.ARI.NextCheck
		}
		if check.Before(due) {
			due = check
		}
	}
	due = due.UTC()
	changed := !st.Due.Equal(due) || !st.RenewAt.Equal(d.At)
	st.RenewAt, st.Due = d.At.UTC(), due
	return changed
}

// ariIssuer is the issuer asked for st's renewal window, nil when none
// can answer.
func (m *Manager) ariIssuer(st *RenewalState) RenewalInformer {
	for _, iss := range m.issuers {
		if r, ok := iss.(RenewalInformer); ok && (st.Issuer == "" || st.Issuer == iss.Key()) {
			return r
		}
	}
	return nil
}

// maybeRenew handles one due row of a certificate this agent owns.
func (m *Manager) maybeRenew(ctx context.Context, d DueCertificate) error {
	c, err := m.store.Certificate(ctx, d.ID)
	if errors.Is(err, storage.ErrNotFound) {
		// Deleted since: its schedule goes with it.
		return errors.Join(errNotDue, m.store.DropDue(ctx, d))
	}
	if err != nil {
		return err
	}
	st, err := m.store.RenewalState(ctx, c.ID)
	if errors.Is(err, ErrUnreadableState) {
		return m.setAside(ctx, d, err)
	}
	if err != nil {
		return err
	}
	if !st.Due.Equal(d.At) {
		// Not the state's own row: a row added by the reconciliation, or
		// one left by a concurrent write on another agent. The state is
		// rescheduled below.
		if err := m.store.DropDue(ctx, d); err != nil {
			return err
		}
	}
	if c.Provider != ProviderACME || !c.AutoRenew {
		// Uploaded over, or auto-renewal turned off: nothing to schedule.
		if !st.Due.IsZero() {
			st.Due = time.Time{}
			return errors.Join(errNotDue, m.store.SaveRenewalState(ctx, st))
		}
		return errNotDue
	}
	leaf, err := leafOf(&c)
	if err != nil {
		m.log.Warn("stored acme certificate does not parse", zap.String("certificate", c.ID), zap.Error(err))
		return err
	}
	if len(st.Names) == 0 {
		st.Names = c.Names
	}
	now := m.cfg.Now()
	changed := m.refreshARI(ctx, c.ID, leaf, &st, now)
	if !m.cfg.Policy.Decide(leaf.NotBefore, leaf.NotAfter, st).Due(now) {
		if m.schedule(&st, leaf.NotBefore, leaf.NotAfter) || changed || !st.Due.Equal(d.At) {
			if err := m.store.SaveRenewalState(ctx, st); err != nil {
				return err
			}
		}
		if st.HeldBack != "" && now.Before(st.HeldBackUntil) {
			m.noteHeld(c.ID, st.HeldBackUntil)
			return fmt.Errorf("%w: %s", ErrHeldBack, st.HeldBack)
		}
		m.noteHeld(c.ID, time.Time{})
		return errNotDue
	}
	if changed {
		m.schedule(&st, leaf.NotBefore, leaf.NotAfter)
		if err := m.store.SaveRenewalState(ctx, st); err != nil {
			return err
		}
	}
	if g := m.gate.Load(); st.OnDemand && g != nil {
		if err := (*g).StillWanted(ctx, st.Names[0]); err != nil {
			return m.notWanted(ctx, &c, st, leaf.NotAfter, now, err)
		}
	}
	lease, err := m.store.AcquireLease(ctx, leaseKey(c.ID), m.members.Self(), m.cfg.LeaseTTL)
	if err != nil {
		return err
	}
	defer m.release(lease)
	ctx, stop := m.holdLease(ctx, lease)
	defer stop()
	// Re-read under the lease: another agent may have renewed it while
	// this one decided.
	cur, err := m.store.Certificate(ctx, c.ID)
	if err != nil {
		return err
	}
	if cur.Fingerprint != c.Fingerprint {
		return errNotDue
	}
	if st, err = m.store.RenewalState(ctx, c.ID); err != nil {
		return err
	}
	if len(st.Names) == 0 {
		st.Names = c.Names
	}
	_, err = m.attempt(ctx, lease, st, &cur, nil)
	return err
}

// notWanted handles a due on-demand certificate whose policy did not say
// yes: no order; asked again after OnDemandRecheck while the certificate
// is valid; removed once it has expired and the policy refuses it (not
// when the policy could not be asked), so that the name has no stale
// certificate to serve and orders afresh if it is wanted again.
func (m *Manager) notWanted(ctx context.Context, c *storage.Certificate, st RenewalState, notAfter, now time.Time, why error) error {
	m.metrics.orders.WithLabelValues("not_wanted").Inc()
	refused := errors.Is(why, ErrOnDemandRefused)
	log := m.log.With(zap.String("certificate", c.ID), zap.Strings("names", st.Names), zap.Error(why))
	if refused && !now.Before(notAfter) {
		if err := m.store.RemoveCertificate(ctx, c.ID, c.Fingerprint); err != nil {
			return err
		}
		log.Info("expired on-demand certificate removed: its pool no longer admits the name")
		return errNotDue
	}
	log.Warn("on-demand certificate not renewed: its pool's policy did not admit the name")
	st.LastError = "not renewed: " + why.Error()
	st.Due = now.Add(m.cfg.OnDemandRecheck)
	if refused && st.Due.After(notAfter) {
		st.Due = notAfter
	}
	return errors.Join(errNotDue, m.store.SaveRenewalState(ctx, st))
}

// refreshARI fetches the CA's window when it is time to; it reports
// whether st changed.
func (m *Manager) refreshARI(ctx context.Context, id string, leaf *x509.Certificate, st *RenewalState, now time.Time) bool {
	if st.ARI != nil && now.Before(st.ARI.NextCheck) {
		return false
	}
	ri := m.ariIssuer(st)
	if ri == nil {
		return false
	}
	w, err := ri.RenewalInfo(ctx, leaf)
	if err != nil {
		// No window (or none now): the lifetime rule applies; ask again
		// later.
		if !errors.Is(err, ErrNoRenewalInfo) {
			m.log.Info("acme renewal info unavailable", zap.String("certificate", id), zap.Error(err))
		}
		st.ARI = &ARIState{NextCheck: now.Add(m.cfg.Policy.ARIRetry(0))}
		return true
	}
	chosen := chooseInWindow(id, w.Start, w.End)
	if st.ARI.valid() && st.ARI.Start.Equal(w.Start) && st.ARI.End.Equal(w.End) {
		chosen = st.ARI.Chosen
	}
	st.ARI = &ARIState{Start: w.Start, End: w.End, Chosen: chosen, ExplanationURL: w.ExplanationURL,
		NextCheck: now.Add(m.cfg.Policy.ARIRetry(w.RetryAfter))}
	return true
}

// Run makes a pass every Interval (with jitter) until ctx ends.
func (m *Manager) Run(ctx context.Context) error {
	for {
		rep, err := m.RunOnce(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			m.log.Warn("certificate renewal pass failed", zap.Error(err))
		} else if rep.Renewed+rep.Failed+rep.HeldBack > 0 {
			m.log.Info("certificate renewal pass", zap.Int("checked", rep.Checked), zap.Int("owned", rep.Owned),
				zap.Int("failed", rep.Failed), zap.Int("held_back", rep.HeldBack))
		}
		m.rndMu.Lock()
		wait := m.cfg.Interval + time.Duration((m.rnd.Float64()*2-1)*m.cfg.Jitter*float64(m.cfg.Interval))
		m.rndMu.Unlock()
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

type managerMetrics struct {
	// actionRequired: 1 for an issuer whose CA answered
	// userActionRequired (or whose cluster-wide hold for it this agent
	// found) until an order there succeeds.
	actionRequired *prometheus.GaugeVec
	leaseLost      prometheus.Counter
	orders         *prometheus.CounterVec
	passes         prometheus.Counter
	heldBack       prometheus.Gauge
	phases         *prometheus.GaugeVec
	earliest       prometheus.Gauge
	unreadable     *prometheus.GaugeVec
}

// recordPhases counts the scheduled ACME certificates by renewal phase
// and notes the earliest expiry: a bounded set of series however many
// certificates there are (the per-certificate detail is in the API). It
// reads the due rows and the states, no certificate, and runs with the
// reconciliation (exp is the expiry index it read).
func (m *Manager) recordPhases(ctx context.Context, now time.Time, exp []storage.CertificateExpiry) {
	rows, err := m.store.DueCertificates(ctx, farFuture, 0)
	if err != nil {
		if ctx.Err() == nil {
			m.log.Warn("reading the renewal schedule for metrics", zap.Error(err))
		}
		return
	}
	counts := map[string]int{PhaseScheduled: 0, PhaseDue: 0, PhaseRetrying: 0, PhaseHeldBack: 0, PhaseBlocked: 0, PhaseActionRequired: 0}
	seen := make(map[string]struct{}, len(rows))
	for _, d := range rows {
		if _, dup := seen[d.ID]; dup {
			continue
		}
		seen[d.ID] = struct{}{}
		st, err := m.store.RenewalState(ctx, d.ID)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			m.log.Warn("reading renewal state for metrics", zap.String("certificate", d.ID), zap.Error(err))
			continue
		}
		renewAt := st.RenewAt
		if renewAt.IsZero() {
			renewAt = d.At
		}
		counts[phaseOf(st, Decision{At: renewAt}, now)]++
	}
	// Set aside for a state that does not decode, without a due row.
	counts[PhaseBlocked] += m.unreadableCount()
	for phase, n := range counts {
		m.metrics.phases.WithLabelValues(phase).Set(float64(n))
	}
	m.metrics.earliest.Set(0)
	for _, e := range exp {
		if _, ok := seen[e.ID]; ok {
			m.metrics.earliest.Set(float64(e.ExpiresAt.Unix()))
			break
		}
	}
}

func newManagerMetrics(reg prometheus.Registerer) (*managerMetrics, error) {
	m := &managerMetrics{
		orders: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "singularity_edge", Subsystem: "acme", Name: "orders_total",
			Help: "ACME orders by result: issued, failed, rate_limited (refused by the CA as rate limited; held back until its Retry-After), already_replaced (another agent renewed), held_back (the rate-limit budget refused to order), not_wanted (an on-demand certificate's renewal skipped because its pool no longer admits the name), profile_refused (not ordered: the certificate's stored profile is not offered by the CA; an operator must order it again), user_action_required (the CA answered userActionRequired: nothing is ordered there for an hour, then one order checks again).",
		}, []string{"result"}),
		leaseLost: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "singularity_edge", Subsystem: "acme", Name: "lease_lost_total",
			Help: "Orders abandoned because this agent's renewal lease was lost while they ran (expired or taken over by another agent).",
		}),
		passes: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "singularity_edge", Subsystem: "acme", Name: "renewal_passes_total",
			Help: "Renewal scheduler passes completed.",
		}),
		heldBack: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "singularity_edge", Subsystem: "acme", Name: "held_back_certificates",
			Help: "Certificates whose order or renewal this agent holds back under the rate-limit budget, each until its hold ends (the reason is in each certificate's held_back).",
		}),
	}
	m.phases = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "singularity_edge", Subsystem: "acme", Name: "certificates",
		Help: "Stored ACME certificates by renewal phase (scheduled, due, retrying, held_back, blocked: not renewed until an operator acts, action_required: the CA waits for its account holder to act) as of this agent's last scheduler pass; every agent reports the whole cluster's.",
	}, []string{"phase"})
	m.earliest = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "singularity_edge", Subsystem: "acme", Name: "earliest_expiry_timestamp_seconds",
		Help: "Expiry (Unix time) of the stored ACME certificate that expires first, as of the last scheduler pass; 0 when there is none.",
	})
	m.actionRequired = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "singularity_edge", Subsystem: "acme", Name: "issuer_action_required",
		Help: "1 for an ACME directory whose CA answered userActionRequired (its account holder must act there, typically agree to changed terms of service): nothing is ordered there until then; 0 once an order there succeeds.",
	}, []string{"issuer"})
	m.unreadable = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "singularity_edge", Subsystem: "acme", Name: "unreadable_rows",
		Help: "Rows of the acme table this agent cannot read and leaves aside, each logged once when found: state (a certificate's renewal state does not decode: it is not renewed until an operator renews or deletes it, and its status says blocked), due (a schedule row not spelt as this agent writes it, left out of the schedule; counted at each reconciliation).",
	}, []string{"kind"})
	for _, r := range []string{"issued", "failed", "rate_limited", "already_replaced", "held_back", "profile_refused", "user_action_required"} {
		m.orders.WithLabelValues(r)
	}
	for _, k := range []string{"state", "due"} {
		m.unreadable.WithLabelValues(k)
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.orders, m.leaseLost, m.passes, m.heldBack, m.phases, m.earliest, m.actionRequired, m.unreadable} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("certs: registering acme metrics: %w", err)
			}
		}
	}
	return m, nil
}
