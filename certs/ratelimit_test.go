package certs

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-acme/lego/v4/acme"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/singularity-ng/singularity-edge/storage"
)

// rateLimitedIssuer refuses every order the way lego reports Let's
// Encrypt's 429 rateLimited problem, with a Retry-After.
type rateLimitedIssuer struct {
	retryAfter string
	calls      atomic.Int32
}

func (r *rateLimitedIssuer) Key() string { return "https://ca.example/dir" }

func (r *rateLimitedIssuer) Issue(_ context.Context, req IssueRequest) (*IssuedCertificate, error) {
	r.calls.Add(1)
	return nil, fmt.Errorf("certs: acme order for %s: %w", strings.Join(req.Names, ","), &acme.RateLimitedError{
		ProblemDetails: &acme.ProblemDetails{Type: acme.RateLimitedErr, HTTPStatus: 429,
			Detail: "too many certificates (5) already issued for this exact set of identifiers in the last 168h0m0s"},
		RetryAfter: r.retryAfter})
}

// A CA that refuses an order as rate limited and says when to come back
// is not asked again before then, by this agent or any other (the hold
// is a budget event), even in the emergency retry of a certificate about
// to expire; the state says held back until then, and the refusal
// counts as no failed validation. Before, the manager backed off a
// minute, doubling, asked the CA again and again inside its Retry-After
// (every 10 minutes near expiry), told the operator the next attempt was
// in a minute, and counted each refusal as a failed validation.
func TestCARateLimitHoldsOrdersUntilRetryAfter(t *testing.T) {
	ctx := context.Background()
	s := openStore(t)
	b := NewStoreBackend(s, nil)
	iss := &rateLimitedIssuer{retryAfter: "10800"} // 3 h
	now := time.Now()
	var offset atomic.Int64
	clock := func() time.Time { return now.Add(time.Duration(offset.Load())) }
	mcfg := DefaultManagerConfig()
	mcfg.Registerer = prometheus.NewPedanticRegistry()
	mcfg.Now = clock
	m, err := NewManager(mcfg, []Issuer{iss}, b, b, oneMember("self"))
	if err != nil {
		t.Fatal(err)
	}
	// Two days left of 90: the emergency rule retries every 10 minutes.
	names := []string{"limited.example.com"}
	old := putDueACME(t, s, b, newRoot(t, "Limited Root"), names[0], "", now, 2*24*time.Hour)

	if _, err := m.RunOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if n := iss.calls.Load(); n != 1 {
		t.Fatalf("%d orders on the first pass, want 1", n)
	}
	until := now.Add(3 * time.Hour)
	st, err := m.Status(ctx, old.ID)
	if err != nil || st.Phase != PhaseHeldBack || !strings.Contains(st.State.HeldBack, "rate limited") ||
		!st.State.HeldBackUntil.Equal(until) || !st.State.NextAttempt.Equal(until) {
		t.Fatalf("status after the CA's refusal: %+v, %v; want held back until %s", st, err, until)
	}
	fails, err := b.BudgetEvents(ctx, EventFail, names[0], time.Time{})
	if err != nil || len(fails) != 0 {
		t.Fatalf("failed-validation events: %d, %v; want none", len(fails), err)
	}

	// Passes inside the CA's window, and an order through the API: the
	// CA is not asked.
	for _, d := range []time.Duration{10 * time.Minute, 30 * time.Minute, 2 * time.Hour} {
		offset.Store(int64(d))
		if _, err := m.RunOnce(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := m.Renew(ctx, old.ID); !errors.Is(err, ErrHeldBack) {
		t.Fatalf("Renew inside the CA's window: %v, want ErrHeldBack", err)
	}
	if n := iss.calls.Load(); n != 1 {
		t.Fatalf("the CA was asked %d times inside its Retry-After", n)
	}
	if c, err := b.Certificate(ctx, old.ID); err != nil || c.Fingerprint != old.Fingerprint {
		t.Fatalf("old certificate: %v", err)
	}

	// Past it, the CA is asked again.
	offset.Store(int64(3*time.Hour + time.Minute))
	if _, err := m.RunOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if n := iss.calls.Load(); n != 2 {
		t.Fatalf("%d orders after the CA's Retry-After, want 2", n)
	}
}

// A Retry-After past the cap, or one that does not parse, cannot stop
// renewals for longer than the cap (or at all).
func TestCARetryAfterBounds(t *testing.T) {
	now := time.Now()
	rl := func(v string) error {
		return fmt.Errorf("wrapped: %w", &acme.RateLimitedError{ProblemDetails: &acme.ProblemDetails{Type: acme.RateLimitedErr}, RetryAfter: v})
	}
	for _, tc := range []struct {
		err  error
		want time.Duration
		ok   bool
	}{
		{rl("60"), time.Minute, true},
		{rl("99999999"), maxCAHold, true},
		{rl("soon"), 0, false},
		{rl(""), 0, false},
		{rl("0"), 0, false},
		{errors.New("connection refused"), 0, false},
		{storage.ErrNotFound, 0, false},
	} {
		got, ok := caRetryAfter(tc.err, now)
		if ok != tc.ok || (ok && !got.Equal(now.Add(tc.want))) {
			t.Errorf("caRetryAfter(%v) = %v, %v; want +%s, %v", tc.err, got, ok, tc.want, tc.ok)
		}
	}
}

// A renewal that fails says in the log when it is tried next and until
// when the current certificate serves, not only why it failed.
func TestFailedRenewalLogsNextAttempt(t *testing.T) {
	ctx := context.Background()
	s := openStore(t)
	b := NewStoreBackend(s, nil)
	core, logs := observer.New(zap.InfoLevel)
	now := time.Now()
	mcfg := DefaultManagerConfig()
	mcfg.Registerer = prometheus.NewPedanticRegistry()
	mcfg.Logger = zap.New(core)
	mcfg.Now = func() time.Time { return now }
	m, err := NewManager(mcfg, []Issuer{profileIssuer{key: "down"}}, b, b, oneMember("self"))
	if err != nil {
		t.Fatal(err)
	}
	old := putDueACME(t, s, b, newRoot(t, "Failing Root"), "failing.example.com", "", now, 20*24*time.Hour)
	if _, err := m.RunOnce(ctx); err != nil {
		t.Fatal(err)
	}
	st, err := m.Status(ctx, old.ID)
	if err != nil {
		t.Fatal(err)
	}
	lines := logs.FilterMessageSnippet("keeps serving").All()
	if len(lines) != 1 {
		t.Fatalf("%d log lines saying what happens next, want 1 (all: %v)", len(lines), logs.All())
	}
	f := lines[0].ContextMap()
	if next, ok := f["next_attempt"].(time.Time); !ok || !next.Equal(st.Decision.NotBefore) || f["certificate"] != old.ID {
		t.Fatalf("log fields %v; want next_attempt %s", f, st.Decision.NotBefore)
	}
	if exp, ok := f["current_expires_at"].(time.Time); !ok || !exp.Equal(old.ExpiresAt) {
		t.Fatalf("log fields %v; want current_expires_at %s", f, old.ExpiresAt)
	}
}

// errIssuer fails every order with err.
type errIssuer struct{ err error }

func (e errIssuer) Key() string { return "https://ca.example/dir" }
func (e errIssuer) Issue(context.Context, IssueRequest) (*IssuedCertificate, error) {
	return nil, e.err
}

// Only the CA's refusal of the names counts as a failed validation in
// the budget (its failed-validation limit and the pause after repeated
// failures); the CA's or the network's trouble does not. Before, every
// failed order counted, so half a day of CA errors in a certificate's
// emergency window paused its renewal for up to 7 days.
func TestOnlyValidationFailuresCount(t *testing.T) {
	problem := func(status int, typ string) error {
		return fmt.Errorf("certs: acme order: %w", &acme.ProblemDetails{HTTPStatus: status, Type: typ, Detail: "x"})
	}
	for _, tc := range []struct {
		name    string
		err     error
		counted bool
	}{
		{"challenge refused", fmt.Errorf("error: one or more domains had a problem:\n%w",
			fmt.Errorf("a.example.com: invalid authorization: %w", &acme.ProblemDetails{Type: "urn:ietf:params:acme:error:unauthorized", HTTPStatus: 403})), true},
		{"challenge error without a status", fmt.Errorf("invalid authorization: %w", &acme.ProblemDetails{Type: "urn:ietf:params:acme:error:connection"}), true},
		{"name refused", problem(400, "urn:ietf:params:acme:error:rejectedIdentifier"), true},
		{"caa forbids", problem(403, "urn:ietf:params:acme:error:caa"), true},
		{"account unknown to the CA", problem(400, "urn:ietf:params:acme:error:accountDoesNotExist"), false},
		{"terms of service changed", problem(403, "urn:ietf:params:acme:error:userActionRequired"), false},
		{"rate limited without Retry-After", fmt.Errorf("x: %w", &acme.RateLimitedError{ProblemDetails: &acme.ProblemDetails{HTTPStatus: 429, Type: acme.RateLimitedErr}}), false},
		{"server error", problem(500, "urn:ietf:params:acme:error:serverInternal"), false},
		{"service unavailable", problem(503, "urn:ietf:params:acme:error:serverInternal"), false},
		{"not a problem document", errors.New(`502 ::POST :: https://ca/new-order :: invalid character '<' :: <html>`), false},
		{"timeout", fmt.Errorf("certs: acme order: %w", context.DeadlineExceeded), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			s := openStore(t)
			b := NewStoreBackend(s, nil)
			mcfg := DefaultManagerConfig()
			mcfg.Registerer = prometheus.NewPedanticRegistry()
			m, err := NewManager(mcfg, []Issuer{errIssuer{tc.err}}, b, b, oneMember("self"))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := m.Obtain(ctx, []string{"a.example.com"}, ""); err == nil {
				t.Fatal("Obtain succeeded")
			}
			fails, err := b.BudgetEvents(ctx, EventFail, "a.example.com", time.Time{})
			if err != nil {
				t.Fatal(err)
			}
			if got := len(fails) == 1; got != tc.counted {
				t.Fatalf("%d failed-validation events, want counted %v", len(fails), tc.counted)
			}
		})
	}
}

// stuckIssuer never answers and ignores its context, as lego does while
// it sleeps between polls of an authorization the CA keeps pending.
type stuckIssuer struct {
	release chan struct{}
	calls   atomic.Int32
}

func (s *stuckIssuer) Key() string { return "https://stuck.example/dir" }
func (s *stuckIssuer) Issue(context.Context, IssueRequest) (*IssuedCertificate, error) {
	s.calls.Add(1)
	<-s.release
	return nil, errors.New("released")
}

// An order that does not end is abandoned after OrderTimeout, and the
// scheduler goes on to the next due certificate. Before, one stuck order
// held the pass, and every other renewal of the agent, as long as lego
// slept.
func TestStuckOrderDoesNotHoldThePass(t *testing.T) {
	ctx := context.Background()
	s := openStore(t)
	b := NewStoreBackend(s, nil)
	iss := &stuckIssuer{release: make(chan struct{})}
	t.Cleanup(func() { close(iss.release) })
	now := time.Now()
	mcfg := DefaultManagerConfig()
	mcfg.Registerer = prometheus.NewPedanticRegistry()
	mcfg.OrderTimeout = 100 * time.Millisecond
	m, err := NewManager(mcfg, []Issuer{iss}, b, b, oneMember("self"))
	if err != nil {
		t.Fatal(err)
	}
	ca := newRoot(t, "Stuck Root")
	for _, n := range []string{"one.example.com", "two.example.com"} {
		putDueACME(t, s, b, ca, n, "", now, 10*24*time.Hour)
	}
	type result struct {
		rep PassReport
		err error
	}
	done := make(chan result, 1)
	go func() { rep, err := m.RunOnce(ctx); done <- result{rep, err} }()
	var r result
	select {
	case r = <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("the renewal pass did not return: a stuck order holds it")
	}
	if r.err != nil || r.rep.Failed != 2 || iss.calls.Load() != 2 {
		t.Fatalf("pass %+v, %v, %d orders; want both certificates tried and failed", r.rep, r.err, iss.calls.Load())
	}
	for _, n := range []string{"one.example.com", "two.example.com"} {
		st, err := b.RenewalState(ctx, CertificateID([]string{n}))
		if err != nil || st.Failures != 1 || !strings.Contains(st.LastError, "abandoned") {
			t.Fatalf("state of %s: %+v, %v; want one failure saying the order was abandoned", n, st, err)
		}
	}
}

// putDueACME stores an ACME certificate for name from ca, of a 90-day
// lifetime with left of it to run at now, and its renewal state (with the
// given profile) due a minute before now.
func putDueACME(t *testing.T, s *storage.Store, b *StoreBackend, ca *issuer, name, profile string, now time.Time, left time.Duration) *storage.Certificate {
	t.Helper()
	names := []string{name}
	c := record(t, ca, newECKey(t), CertificateID(names), leafSpec{dns: names,
		notBefore: now.Add(left - 90*24*time.Hour), notAfter: now.Add(left)})
	c.Provider, c.AutoRenew = ProviderACME, true
	putCerts(t, s, c)
	st := RenewalState{CertificateID: c.ID, Names: names, Profile: profile, Due: now.Add(-time.Minute)}
	if err := b.SaveRenewalState(context.Background(), st); err != nil {
		t.Fatal(err)
	}
	return c
}
