package certs

import (
	"crypto/sha256"
	"encoding/binary"
	"math/rand/v2"
	"time"
)

// RenewalPolicy decides when a certificate is renewed.
type RenewalPolicy struct {
	// RemainingFraction: without a CA window, renew when this fraction
	// of the lifetime is left (1/3: day 60 of 90, day 4 of 6).
	RemainingFraction float64
	// EmergencyFraction: with this fraction left the certificate is
	// renewed whatever the CA's window says, and failures are retried at
	// least every EmergencyRetry.
	EmergencyFraction float64
	EmergencyRetry    time.Duration
	// BackoffMin and BackoffMax bound the wait after a failed attempt
	// (doubling from min).
	BackoffMin, BackoffMax time.Duration
	// ARIRecheck is how often the CA's window is fetched again when it
	// gives no Retry-After; ARIRetryMin and ARIRetryMax clamp what it
	// gives.
	ARIRecheck, ARIRetryMin, ARIRetryMax time.Duration
}

// DefaultRenewalPolicy works for 90-day and 6-day certificates alike.
func DefaultRenewalPolicy() RenewalPolicy {
	return RenewalPolicy{
		RemainingFraction: 1.0 / 3,
		EmergencyFraction: 1.0 / 10,
		EmergencyRetry:    10 * time.Minute,
		BackoffMin:        time.Minute,
		BackoffMax:        6 * time.Hour,
		ARIRecheck:        6 * time.Hour,
		ARIRetryMin:       time.Minute,
		ARIRetryMax:       24 * time.Hour,
	}
}

// Decision is when a certificate should be renewed and why.
type Decision struct {
	// At is the renewal time.
	At time.Time
	// Reason: "ari" (the CA's window), "lifetime" (the remaining
	// fraction), "emergency", or "forced".
	Reason string
	// NotBefore is the earliest the next attempt may start (backoff).
	NotBefore time.Time
}

// Due reports whether an attempt may start at now.
func (d Decision) Due(now time.Time) bool {
	return !now.Before(d.At) && !now.Before(d.NotBefore)
}

// Decide computes when the certificate valid from notBefore to notAfter
// is renewed, given its state.
func (p RenewalPolicy) Decide(notBefore, notAfter time.Time, st RenewalState) Decision {
	life := notAfter.Sub(notBefore)
	emergency := notAfter.Add(-time.Duration(float64(life) * p.EmergencyFraction))
	d := Decision{At: notAfter.Add(-time.Duration(float64(life) * p.RemainingFraction)), Reason: "lifetime"}
	if st.ARI.valid() {
		d = Decision{At: st.ARI.Chosen, Reason: "ari"}
	}
	if !d.At.Before(emergency) {
		d = Decision{At: emergency, Reason: "emergency"}
	}
	d.NotBefore = st.NextAttempt
	if d.Reason == "emergency" && st.LastAttempt.Add(p.EmergencyRetry).Before(d.NotBefore) {
		d.NotBefore = st.LastAttempt.Add(p.EmergencyRetry)
	}
	return d
}

// Backoff is the wait after the n-th consecutive failure (n >= 1), with
// up to a quarter of jitter so that agents do not retry in step.
func (p RenewalPolicy) Backoff(n int, rnd *rand.Rand) time.Duration {
	d := p.BackoffMin
	for i := 1; i < n && d < p.BackoffMax; i++ {
		d *= 2
	}
	d = min(d, p.BackoffMax)
	if rnd != nil && d > 4 {
		d += time.Duration(rnd.Int64N(int64(d / 4)))
	}
	return d
}

// ARIRetry clamps the CA's Retry-After.
func (p RenewalPolicy) ARIRetry(retryAfter time.Duration) time.Duration {
	if retryAfter <= 0 {
		return p.ARIRecheck
	}
	return min(max(retryAfter, p.ARIRetryMin), p.ARIRetryMax)
}

// chooseInWindow picks the renewal time in [start, end] for certificate
// id: uniform, as RFC 9773 asks, but derived from the id and the window so
// that every agent picks the same time and a re-fetched identical window
// does not move it.
func chooseInWindow(id string, start, end time.Time) time.Time {
	if !end.After(start) {
		return start
	}
	h := sha256.Sum256([]byte(id + "\x00" + start.UTC().Format(time.RFC3339Nano) + "\x00" + end.UTC().Format(time.RFC3339Nano)))
	span := uint64(end.Sub(start))
	return start.Add(time.Duration(binary.BigEndian.Uint64(h[:8]) % span))
}

// Owner returns the member responsible for renewing certificate id:
// rendezvous hashing over the alive members, so every agent that sees the
// same members picks the same owner, and a member joining or leaving moves
// only its share of the certificates.
func Owner(id string, members []string) string {
	var best string
	var bestScore uint64
	for _, m := range members {
		h := sha256.Sum256([]byte(id + "\x00" + m))
		s := binary.BigEndian.Uint64(h[:8])
		if best == "" || s > bestScore || s == bestScore && m < best {
			best, bestScore = m, s
		}
	}
	return best
}
