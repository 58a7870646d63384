package certs

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"golang.org/x/net/publicsuffix"
)

// The budget keeps the whole cluster inside the CA's rate limits. Every
// agent records what it does (an order placed, a certificate issued, a
// validation failed) as events in the shared store, and before each order
// the owner counts the events of the cluster in each limit's window. The
// numbers default to somewhat below Let's Encrypt's published limits
// (https://letsencrypt.org/docs/rate-limits/) so that two agents deciding
// at the same moment, or events still replicating, do not push the fleet
// over.

// Budget event kinds.
const (
	EventOrder   = "order"   // scope: issuer key (one account per directory)
	EventCert    = "cert"    // scope: registered domain
	EventDup     = "dup"     // scope: certificate id (exact set of names)
	EventFail    = "fail"    // scope: name
	EventSuccess = "success" // scope: name; ends a run of failures
	// EventCAHold: the CA refused an order as rate limited and said when
	// to come back (Retry-After). Scope: issuer key and certificate id;
	// At is that time, so the event is read as a hold while At is ahead.
	EventCAHold = "ca_hold"
	// EventUserAction: the CA answered an order with userActionRequired
	// (the account holder must act there, typically agree to changed
	// terms). Scope: issuer key, for every certificate: the account is
	// what the CA refuses. At is when orders there may probe again.
	EventUserAction = "user_action"
)

// LimitCARateLimited is the HeldBackError.Limit of a hold the CA asked
// for.
const LimitCARateLimited = "ca_rate_limited"

// LimitCAUserAction is the HeldBackError.Limit of a hold for the CA's
// userActionRequired.
const LimitCAUserAction = "ca_user_action_required"

// UserActionHold is how long the cluster places no order at a CA that
// answered userActionRequired. The action is the operator's and no CA
// says when it is done, so each hold ends with one order that probes:
// one refusal an hour for the whole cluster, instead of one per
// certificate per backoff step.
const UserActionHold = time.Hour

// maxCAHold caps the CA's Retry-After: Let's Encrypt's longest window is
// 7 days, and a nonsense header must not stop renewals for longer.
const maxCAHold = 7 * 24 * time.Hour

func caHoldScope(issuer, certID string) string { return issuer + " " + certID }

// BudgetLimits are the limits the budget enforces; a zero count disables
// that limit.
type BudgetLimits struct {
	// OrdersPerAccount per OrdersWindow (Let's Encrypt: 300 per 3 h).
	OrdersPerAccount int
	OrdersWindow     time.Duration
	// CertsPerRegisteredDomain per CertsWindow (Let's Encrypt: 50 per 7
	// days), the registered domain taken from the public suffix list.
	CertsPerRegisteredDomain int
	CertsWindow              time.Duration
	// DuplicateCerts for one exact set of names per DuplicateWindow
	// (Let's Encrypt: 5 per 7 days).
	DuplicateCerts  int
	DuplicateWindow time.Duration
	// FailedValidations per name per FailedWindow (Let's Encrypt: 5 per
	// hour).
	FailedValidations int
	FailedWindow      time.Duration
	// PauseAfterFailures failures of a name without a success within
	// PauseWindow pause it here (Let's Encrypt pauses a name after about
	// 1,150 consecutive failures, which then needs a manual unpause).
	PauseAfterFailures int
	PauseWindow        time.Duration
}

// DefaultBudgetLimits returns limits below Let's Encrypt's.
func DefaultBudgetLimits() BudgetLimits {
	return BudgetLimits{
		OrdersPerAccount: 250, OrdersWindow: 3 * time.Hour,
		CertsPerRegisteredDomain: 45, CertsWindow: 7 * 24 * time.Hour,
		DuplicateCerts: 4, DuplicateWindow: 7 * 24 * time.Hour,
		FailedValidations: 4, FailedWindow: time.Hour,
		PauseAfterFailures: 48, PauseWindow: 7 * 24 * time.Hour,
	}
}

// Validate checks the limits as given: no count below 0 (0 turns a limit
// off) and every window positive (it also bounds how long events are
// kept).
func (l BudgetLimits) Validate() error {
	var errs []error
	for _, f := range []struct {
		name   string
		count  int
		window time.Duration
	}{
		{"orders per account", l.OrdersPerAccount, l.OrdersWindow},
		{"certificates per registered domain", l.CertsPerRegisteredDomain, l.CertsWindow},
		{"duplicate certificates", l.DuplicateCerts, l.DuplicateWindow},
		{"failed validations", l.FailedValidations, l.FailedWindow},
		{"pause after failures", l.PauseAfterFailures, l.PauseWindow},
	} {
		if f.count < 0 {
			errs = append(errs, fmt.Errorf("budget %s: count %d is negative (0 turns the limit off)", f.name, f.count))
		}
		if f.window <= 0 {
			errs = append(errs, fmt.Errorf("budget %s: window %s must be positive", f.name, f.window))
		}
	}
	return errors.Join(errs...)
}

// window is how long an event of kind counts (and is kept).
func (l BudgetLimits) window(kind string) time.Duration {
	switch kind {
	case EventOrder:
		return l.OrdersWindow
	case EventCert:
		return l.CertsWindow
	case EventDup:
		return l.DuplicateWindow
	default:
		return max(l.FailedWindow, l.PauseWindow)
	}
}

// BudgetEvent is one counted action.
type BudgetEvent struct {
	Kind  string    `json:"kind"`
	Scope string    `json:"scope"`
	At    time.Time `json:"at"`
	// Node is the agent that recorded it.
	Node string `json:"node"`
	// Expires is when the event stops counting for any limit.
	Expires time.Time `json:"expires"`
}

// Counters are the budget's shared event log.
type Counters interface {
	// AddBudgetEvents records events; each may be forgotten after its
	// Expires.
	AddBudgetEvents(ctx context.Context, events []BudgetEvent) error
	// BudgetEvents returns the times of the events of kind and scope at
	// or after since, oldest first.
	BudgetEvents(ctx context.Context, kind, scope string, since time.Time) ([]time.Time, error)
	// DropBudgetEvents deletes every event of kind and scope and returns
	// how many there were.
	DropBudgetEvents(ctx context.Context, kind, scope string) (int, error)
}

// ErrHeldBack: an order was not placed because it would exceed a limit.
var ErrHeldBack = errors.New("certs: held back by the rate-limit budget")

// HeldBackError says which limit held an order back and until when.
type HeldBackError struct {
	Limit  string        // "orders_per_account", "certs_per_registered_domain", "duplicate_certs", "failed_validations", "paused"
	Scope  string        // the account, registered domain, name set or name
	Count  int           // events in the window
	Max    int           // the configured limit
	Window time.Duration // the limit's window
	Until  time.Time     // when the oldest counted event leaves the window
}

func (e *HeldBackError) Error() string {
	if e.Limit == LimitCAUserAction {
		return fmt.Sprintf("held back: the CA at %s answered userActionRequired: the ACME account holder must act there "+
			"(typically agree to changed terms of service; the agent log has the CA's link); no order is placed there until %s, then one order checks again",
			e.Scope, e.Until.UTC().Format(time.RFC3339))
	}
	if e.Limit == LimitCARateLimited {
		return fmt.Sprintf("held back: the CA at %s refused an order for this certificate as rate limited; next attempt possible at %s",
			e.Scope, e.Until.UTC().Format(time.RFC3339))
	}
	return fmt.Sprintf("held back: %s for %s: %d in the last %s (limit %d); next attempt possible at %s",
		e.Limit, e.Scope, e.Count, e.Window, e.Max, e.Until.UTC().Format(time.RFC3339))
}

// Is makes errors.Is(err, ErrHeldBack) true.
func (e *HeldBackError) Is(target error) bool { return target == ErrHeldBack }

// Budget checks and records orders against the shared counters.
type Budget struct {
	limits   BudgetLimits
	counters Counters
	node     string
}

// NewBudget returns a budget over counters; node names this agent in the
// events it records.
func NewBudget(limits BudgetLimits, counters Counters, node string) *Budget {
	return &Budget{limits: limits, counters: counters, node: node}
}

// RegisteredDomain is name's registered domain (eTLD+1) from the public
// suffix list; a name that has none (a bare suffix, "localhost") is its
// own.
func RegisteredDomain(name string) string {
	name = strings.TrimPrefix(normalizeName(name), "*.")
	if d, err := publicsuffix.EffectiveTLDPlusOne(name); err == nil {
		return d
	}
	return name
}

func registeredDomains(names []string) []string {
	var out []string
	for _, n := range names {
		if d := RegisteredDomain(n); !slices.Contains(out, d) {
			out = append(out, d)
		}
	}
	slices.Sort(out)
	return out
}

// check counts kind/scope events in the window and holds back when one
// more would pass max.
func (b *Budget) check(ctx context.Context, limit, kind, scope string, maxN int, window time.Duration, since, now time.Time) error {
	if maxN <= 0 || window <= 0 {
		return nil
	}
	from := now.Add(-window)
	if since.After(from) {
		from = since
	}
	times, err := b.counters.BudgetEvents(ctx, kind, scope, from)
	if err != nil {
		return fmt.Errorf("certs: budget %s: %w", limit, err)
	}
	if len(times) < maxN {
		return nil
	}
	// The order becomes possible when enough of the oldest events leave
	// the window.
	until := times[len(times)-maxN].Add(window)
	return &HeldBackError{Limit: limit, Scope: scope, Count: len(times), Max: maxN, Window: window, Until: until}
}

// Check returns a *HeldBackError when an order by issuer for names (the
// certificate certID) would pass a limit, nil when it may go ahead.
func (b *Budget) Check(ctx context.Context, issuer string, names []string, certID string, now time.Time) error {
	l := b.limits
	acts, err := b.counters.BudgetEvents(ctx, EventUserAction, issuer, now)
	if err != nil {
		return fmt.Errorf("certs: budget %s: %w", LimitCAUserAction, err)
	}
	if len(acts) > 0 {
		return &HeldBackError{Limit: LimitCAUserAction, Scope: issuer, Count: len(acts), Until: acts[len(acts)-1]}
	}
	holds, err := b.counters.BudgetEvents(ctx, EventCAHold, caHoldScope(issuer, certID), now)
	if err != nil {
		return fmt.Errorf("certs: budget %s: %w", LimitCARateLimited, err)
	}
	if len(holds) > 0 {
		return &HeldBackError{Limit: LimitCARateLimited, Scope: issuer, Count: len(holds), Until: holds[len(holds)-1]}
	}
	if err := b.check(ctx, "orders_per_account", EventOrder, issuer, l.OrdersPerAccount, l.OrdersWindow, time.Time{}, now); err != nil {
		return err
	}
	for _, d := range registeredDomains(names) {
		if err := b.check(ctx, "certs_per_registered_domain", EventCert, d, l.CertsPerRegisteredDomain, l.CertsWindow, time.Time{}, now); err != nil {
			return err
		}
	}
	if err := b.check(ctx, "duplicate_certs", EventDup, certID, l.DuplicateCerts, l.DuplicateWindow, time.Time{}, now); err != nil {
		return err
	}
	for _, n := range names {
		if err := b.check(ctx, "failed_validations", EventFail, n, l.FailedValidations, l.FailedWindow, time.Time{}, now); err != nil {
			return err
		}
		// Only failures since the name's last success count towards
		// the pause.
		var lastOK time.Time
		if l.PauseAfterFailures > 0 {
			oks, err := b.counters.BudgetEvents(ctx, EventSuccess, n, now.Add(-l.PauseWindow))
			if err != nil {
				return fmt.Errorf("certs: budget paused: %w", err)
			}
			if len(oks) > 0 {
				lastOK = oks[len(oks)-1].Add(time.Nanosecond)
			}
		}
		if err := b.check(ctx, "paused", EventFail, n, l.PauseAfterFailures, l.PauseWindow, lastOK, now); err != nil {
			return err
		}
	}
	return nil
}

func (b *Budget) event(kind, scope string, now time.Time) BudgetEvent {
	return BudgetEvent{Kind: kind, Scope: scope, At: now.UTC(), Node: b.node, Expires: now.Add(b.limits.window(kind)).UTC()}
}

// RecordOrder counts an order about to be placed; it is recorded before
// the order so that a crash mid-order still counts.
func (b *Budget) RecordOrder(ctx context.Context, issuer string, now time.Time) error {
	return b.counters.AddBudgetEvents(ctx, []BudgetEvent{b.event(EventOrder, issuer, now)})
}

// RecordCAHold remembers, for the whole cluster, that the CA asked
// issuer's orders for certID to wait until until; Check holds them back
// meanwhile.
func (b *Budget) RecordCAHold(ctx context.Context, issuer, certID string, until time.Time) error {
	return b.counters.AddBudgetEvents(ctx, []BudgetEvent{{Kind: EventCAHold, Scope: caHoldScope(issuer, certID),
		At: until.UTC(), Node: b.node, Expires: until.UTC()}})
}

// RecordUserAction holds, for the whole cluster, every order at issuer
// until until: the CA answered userActionRequired.
func (b *Budget) RecordUserAction(ctx context.Context, issuer string, until time.Time) error {
	return b.counters.AddBudgetEvents(ctx, []BudgetEvent{{Kind: EventUserAction, Scope: issuer,
		At: until.UTC(), Node: b.node, Expires: until.UTC()}})
}

// LiftUserAction ends issuer's userActionRequired hold for the whole
// cluster: an operator asked for an order there, typically having just
// acted at the CA. An order the CA refuses again sets a new hold.
func (b *Budget) LiftUserAction(ctx context.Context, issuer string) error {
	_, err := b.counters.DropBudgetEvents(ctx, EventUserAction, issuer)
	return err
}

// RecordResult counts an order's outcome: a certificate for its
// registered domains and its exact name set, or a failure for each name.
func (b *Budget) RecordResult(ctx context.Context, names []string, certID string, ok bool, now time.Time) error {
	var evs []BudgetEvent
	if ok {
		for _, d := range registeredDomains(names) {
			evs = append(evs, b.event(EventCert, d, now))
		}
		evs = append(evs, b.event(EventDup, certID, now))
		for _, n := range names {
			evs = append(evs, b.event(EventSuccess, n, now))
		}
	} else {
		for _, n := range names {
			evs = append(evs, b.event(EventFail, n, now))
		}
	}
	return b.counters.AddBudgetEvents(ctx, evs)
}
