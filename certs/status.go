package certs

import (
	"context"
	"errors"
	"time"

	"github.com/singularity-ng/singularity-edge/storage"
)

// Renewal phases, as the API, CLI and metrics name them.
const (
	PhaseScheduled = "scheduled" // valid; renews at Decision.At
	PhaseDue       = "due"       // renewal time passed; the owner's next pass orders
	PhaseRetrying  = "retrying"  // the last attempt failed; retried after backoff
	PhaseHeldBack  = "held_back" // the rate-limit budget holds the order back
	PhasePending   = "pending"   // no certificate yet: the first order failed or was held back
	PhaseBlocked   = "blocked"   // not ordered until an operator acts (RenewalState.Blocked says why)
	// PhaseActionRequired: the CA answered userActionRequired; nothing is
	// ordered there until its account holder acts (HeldBack says so).
	PhaseActionRequired = "action_required"
)

// Status is what operators see of one ACME certificate's renewal: the
// stored state, when it renews, who renews it and who holds its lease.
// It carries no key material.
type Status struct {
	State    RenewalState
	Decision Decision
	Phase    string
	// Owner is the member that renews the certificate now (rendezvous
	// over the alive members); Lease is the lease row, nil when none was
	// ever taken, with Held telling whether it is live.
	Owner string
	Lease *Lease
	Held  bool
}

// LeaseReader reads a lease without taking it; StoreBackend is one.
type LeaseReader interface {
	Lease(ctx context.Context, key string) (Lease, bool, error)
}

// Lease implements LeaseReader.
func (b *StoreBackend) Lease(ctx context.Context, key string) (l Lease, ok bool, err error) {
	err = b.store.View(ctx, func(tx *storage.Tx) error { l, ok, err = readLease(tx, key); return err })
	return l, ok, err
}

// Status returns the renewal status of the ACME certificate id. A
// certificate that was never issued but has a state (its first order
// failed or was held back) is PhasePending; an id with neither is an error
// wrapping storage.ErrNotFound.
func (m *Manager) Status(ctx context.Context, id string) (Status, error) {
	st, err := m.store.RenewalState(ctx, id)
	if errors.Is(err, ErrUnreadableState) {
		// Shown blocked, with why and what to do, rather than not at all:
		// the scheduler has set the certificate aside (Manager.setAside).
		st, err = RenewalState{CertificateID: id, Blocked: err.Error() + "; renew the certificate (the renewal replaces the state) or delete it"}, nil
	}
	if err != nil {
		return Status{}, err
	}
	now := m.cfg.Now()
	out := Status{State: st, Owner: Owner(id, m.members.Alive())}
	if lr, ok := m.store.(LeaseReader); ok {
		l, found, err := lr.Lease(ctx, leaseKey(id))
		if err != nil {
			return Status{}, err
		}
		if found {
			out.Lease, out.Held = &l, now.Before(l.Expires)
		}
	}
	c, err := m.store.Certificate(ctx, id)
	switch {
	case errors.Is(err, storage.ErrNotFound):
		if st.LastAttempt.IsZero() && !out.Held {
			return Status{}, err
		}
		out.Phase = PhasePending
		switch {
		case st.Blocked != "":
			out.Phase = PhaseBlocked
		case st.HeldBack != "" && now.Before(st.HeldBackUntil) && st.ActionRequired:
			out.Phase = PhaseActionRequired
		case st.HeldBack != "" && now.Before(st.HeldBackUntil):
			out.Phase = PhaseHeldBack
		}
		out.Decision = Decision{At: st.NextAttempt, Reason: "first issuance", NotBefore: st.NextAttempt}
		return out, nil
	case err != nil:
		return Status{}, err
	}
	out.Decision = m.cfg.Policy.Decide(c.NotBefore, c.ExpiresAt, st)
	out.Phase = phaseOf(st, out.Decision, now)
	return out, nil
}

func phaseOf(st RenewalState, d Decision, now time.Time) string {
	switch {
	case st.Blocked != "":
		return PhaseBlocked
	case st.HeldBack != "" && now.Before(st.HeldBackUntil) && st.ActionRequired:
		return PhaseActionRequired
	case st.HeldBack != "" && now.Before(st.HeldBackUntil):
		return PhaseHeldBack
	case st.Failures > 0:
		return PhaseRetrying
	case !now.Before(d.At):
		return PhaseDue
	}
	return PhaseScheduled
}
