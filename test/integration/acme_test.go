package integration

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/singularity-ng/singularity-edge/certs"
	"github.com/singularity-ng/singularity-edge/storage"
	"github.com/singularity-ng/singularity-edge/test/itest"
)

func acmeCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// Each challenge type issues a certificate from Pebble that the proxy then
// serves: HTTP-01 and TLS-ALPN-01 are answered by the proxy's hooks from
// the shared store, DNS-01 by a lego provider configured from the
// environment (exec, writing TXT records through challtestsrv's API).
func TestACMEIssuesWithEachChallenge(t *testing.T) {
	e := startPebble(t)
	ed := newEdge(t, e, nil)
	roots := e.Roots(t)

	script := filepath.Join(t.TempDir(), "dns.sh")
	if err := os.WriteFile(script, []byte(fmt.Sprintf(`#!/bin/sh
set -e
case "$1" in
present) curl -sf -X POST -d "{\"host\":\"$2\",\"value\":\"$3\"}" http://%[1]s/set-txt ;;
cleanup) curl -sf -X POST -d "{\"host\":\"$2\"}" http://%[1]s/clear-txt ;;
esac
`, e.ChallMgmt)), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("EXEC_PATH", script)
	t.Setenv("EXEC_PROPAGATION_TIMEOUT", "30")
	t.Setenv("EXEC_POLLING_INTERVAL", "1")
	t.Setenv("EXEC_SEQUENCE_INTERVAL", "1")
	dnsProvider, err := certs.DNSProviderFromEnv("exec")
	if err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		challenge string
		names     []string
		profile   string
		lifetime  time.Duration
	}{
		{certs.ChallengeHTTP01, []string{"http01.example.com", "www.http01.example.com"}, "default", 90 * 24 * time.Hour},
		{certs.ChallengeTLSALPN01, []string{"alpn.example.org"}, "shortlived", 6 * 24 * time.Hour},
		{certs.ChallengeDNS01, []string{"*.dns.example.net", "dns.example.net"}, "default", 90 * 24 * time.Hour},
	}
	for _, tc := range cases {
		t.Run(tc.challenge, func(t *testing.T) {
			iss := ed.issuer(t, e, func(c *certs.ACMEConfig) {
				c.Challenges = []string{tc.challenge}
				if tc.challenge == certs.ChallengeDNS01 {
					c.DNS01Provider = dnsProvider
					c.DNS01Resolvers = []string{e.DNS}
					c.DNS01RecursiveOnly = true
				}
			})
			m := ed.manager(t, "a", []certs.Issuer{iss}, nil)
			cert, err := m.Obtain(acmeCtx(t), tc.names, tc.profile)
			if err != nil {
				t.Fatalf("Obtain: %v", err)
			}
			if cert.ID != certs.CertificateID(tc.names) || cert.Provider != certs.ProviderACME || !cert.AutoRenew {
				t.Fatalf("stored %+v", cert)
			}
			if got := cert.ExpiresAt.Sub(cert.NotBefore).Round(time.Hour); got != tc.lifetime {
				t.Errorf("lifetime %s, want %s (profile %q)", got, tc.lifetime, tc.profile)
			}
			stored, err := ed.store.GetCertificate(context.Background(), cert.ID)
			if err != nil || stored.Fingerprint != cert.Fingerprint || stored.PrivateKeyPEM == "" {
				t.Fatalf("store: %v", err)
			}
			for _, n := range tc.names {
				sni := strings.Replace(n, "*", "any", 1)
				ed.waitServed(t, e, sni, cert.Fingerprint, roots)
			}
			// A second Obtain for the same names returns the stored
			// certificate without a new order.
			before := e.Orders()
			again, err := m.Obtain(acmeCtx(t), tc.names, tc.profile)
			if err != nil || again.Fingerprint != cert.Fingerprint || e.Orders() != before {
				t.Fatalf("second Obtain: %v, fingerprint changed %v, orders %d -> %d", err, again.Fingerprint != cert.Fingerprint, before, e.Orders())
			}
		})
	}

	t.Run("one account per directory", func(t *testing.T) {
		accts, err := ed.store.ListACMERecords(context.Background(), "account/", "", 0)
		if err != nil || len(accts) != 1 || accts[0].Secret == "" {
			t.Fatalf("accounts %d, %v", len(accts), err)
		}
	})

	t.Run("profile not offered", func(t *testing.T) {
		m := ed.manager(t, "a", []certs.Issuer{ed.issuer(t, e, nil)}, nil)
		before := e.Orders()
		if _, err := m.Obtain(acmeCtx(t), []string{"profile.example.com"}, "tlsserver"); !errors.Is(err, certs.ErrInvalidProfile) || !strings.Contains(err.Error(), `profile "tlsserver" is not offered`) {
			t.Fatalf("Obtain with an unknown profile: %v", err)
		}
		if e.Orders() != before {
			t.Fatal("an order was placed for a profile the directory does not offer")
		}
	})
}

// failingWaiter is the cluster's wait-for-all when one member cannot be
// reached: it never confirms.
type failingWaiter struct{ calls atomic.Int32 }

func (w *failingWaiter) WaitReplicated(ctx context.Context, _ storage.Commit) error {
	w.calls.Add(1)
	return errors.New("member b (region ams) did not apply the change: unreachable")
}

// A token that cannot reach every member fails Present, and lego then
// never tells the CA the challenge is ready: Pebble validates nothing.
func TestACMEPresentFailsBeforeTheCAIsTold(t *testing.T) {
	e := startPebble(t)
	w := &failingWaiter{}
	ed := newEdge(t, e, w)
	m := ed.manager(t, "a", []certs.Issuer{ed.issuer(t, e, func(c *certs.ACMEConfig) { c.Challenges = []string{certs.ChallengeHTTP01} })}, nil)
	_, err := m.Obtain(acmeCtx(t), []string{"partitioned.example.com"}, "")
	if !errors.Is(err, certs.ErrNotPresented) {
		t.Fatalf("Obtain: %v", err)
	}
	if w.calls.Load() == 0 {
		t.Fatal("Present did not wait for the cluster")
	}
	// Pebble logs each validation it starts; none may have happened.
	if out := e.Proc.Out.String(); !strings.Contains(out, "Added order") || strings.Contains(out, "Pulled a task") {
		t.Fatalf("the CA was told about the challenge (or no order was placed):\n%s", out)
	}
	st, _, err := m.State(context.Background(), certs.CertificateID([]string{"partitioned.example.com"}))
	if err == nil {
		t.Fatalf("a certificate was stored: %+v", st)
	}
}

// ARI: a window in the past makes the scheduler renew at once, with
// "replaces" naming the old certificate; the stored certificate changes
// only to the complete new one, which the proxy then serves. A second
// agent whose view of the store lags behind gets alreadyReplaced from the
// CA and takes it as renewed by another, without a new order.
func TestACMERenewsOnARIWindowWithReplaces(t *testing.T) {
	e := startPebble(t)
	ed := newEdge(t, e, nil)
	roots := e.Roots(t)
	iss := ed.issuer(t, e, nil)
	m := ed.manager(t, "a", []certs.Issuer{iss}, nil)
	names := []string{"ari.example.com"}
	// An explicit profile: Pebble picks one at random when asked for none.
	old, err := m.Obtain(acmeCtx(t), names, "default")
	if err != nil {
		t.Fatal(err)
	}
	ed.waitServed(t, e, names[0], old.Fingerprint, roots)

	// Pebble's own window (two thirds into the lifetime) is not due.
	rep, err := m.RunOnce(acmeCtx(t))
	if err != nil || rep.Owned != 1 || rep.Renewed != 0 {
		t.Fatalf("first pass %+v, %v", rep, err)
	}
	st, d, err := m.State(context.Background(), old.ID)
	if err != nil || st.ARI == nil || st.ARI.Start.IsZero() || d.Reason != "ari" {
		t.Fatalf("ARI window not recorded: %+v %+v %v", st.ARI, d, err)
	}

	// The CA moves the window into the past (as for a revocation); the
	// next check picks it up ...
	e.SetARI(t, old.CertificatePEM, time.Now().Add(-2*time.Hour), time.Now().Add(-time.Hour))
	// ... and the certificate is looked at now.
	st.ARI.NextCheck, st.Due = time.Time{}, time.Now()
	if err := ed.backend.SaveRenewalState(context.Background(), st); err != nil {
		t.Fatal(err)
	}
	before := e.Orders()
	rep, err = m.RunOnce(acmeCtx(t))
	if err != nil || rep.Renewed != 1 {
		t.Fatalf("second pass %+v, %v", rep, err)
	}
	if e.Orders() != before+1 || !strings.Contains(e.Proc.Out.String(), "is a replacement of") {
		t.Fatalf("renewal was not one order with replaces (orders %d -> %d)", before, e.Orders())
	}
	cur, err := ed.store.GetCertificate(context.Background(), old.ID)
	if err != nil || cur.Fingerprint == old.Fingerprint || !cur.ExpiresAt.After(old.ExpiresAt.Add(-time.Minute)) {
		t.Fatalf("stored certificate after renewal: %v", err)
	}
	ed.waitServed(t, e, names[0], cur.Fingerprint, roots)

	// Agent b still reads the old certificate once (replication lag).
	lag := &laggingStore{StoreBackend: ed.backend, id: old.ID, stale: old}
	cfgB := certs.DefaultManagerConfig()
	cfgB.Logger = ed.log.With(zap.String("node", "b"))
	mb, err := certs.NewManager(cfgB, []certs.Issuer{iss}, lag, ed.backend, members{self: "b", alive: []string{"b"}})
	if err != nil {
		t.Fatal(err)
	}
	before = e.Orders()
	got, err := mb.Renew(acmeCtx(t), old.ID)
	if err != nil {
		t.Fatalf("renew with a stale view: %v", err)
	}
	if got.Certificate.Fingerprint != cur.Fingerprint || e.Orders() != before {
		t.Fatalf("alreadyReplaced was not taken as renewed by another (orders %d -> %d)", before, e.Orders())
	}
}

// laggingStore serves one stale read of a certificate, as a replica that
// has not yet applied another agent's renewal.
type laggingStore struct {
	*certs.StoreBackend
	id    string
	stale storage.Certificate
	used  atomic.Bool
}

func (l *laggingStore) Certificate(ctx context.Context, id string) (storage.Certificate, error) {
	if id == l.id && l.used.CompareAndSwap(false, true) {
		return l.stale, nil
	}
	return l.StoreBackend.Certificate(ctx, id)
}

// A renewal that fails (the name's DNS answers SERVFAIL to the CA) keeps
// the old certificate stored and served, records the error and a backoff,
// and is retried by the scheduler once the backoff has passed.
func TestACMEFailedRenewalKeepsOldCertificateAndRetries(t *testing.T) {
	e := startPebble(t)
	ed := newEdge(t, e, nil)
	roots := e.Roots(t)
	var offset atomic.Int64
	now := func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	m := ed.manager(t, "a", []certs.Issuer{ed.issuer(t, e, func(c *certs.ACMEConfig) { c.Challenges = []string{certs.ChallengeHTTP01} })},
		func(c *certs.ManagerConfig) { c.Now = now })
	names := []string{"flaky.example.com"}
	old, err := m.Obtain(acmeCtx(t), names, "shortlived")
	if err != nil {
		t.Fatal(err)
	}
	ed.waitServed(t, e, names[0], old.Fingerprint, roots)

	// Twelve hours before expiry the certificate is due whatever the
	// CA's window says; the CA's lookups of the name fail.
	offset.Store(int64(time.Until(old.ExpiresAt) - 12*time.Hour))
	e.Challtest(t, "/set-servfail", map[string]string{"host": names[0]})
	before := e.Orders()
	rep, err := m.RunOnce(acmeCtx(t))
	if err != nil || rep.Failed != 1 || e.Orders() != before+1 {
		t.Fatalf("due renewal with failing DNS: %+v %v", rep, err)
	}
	st, _, err := m.State(context.Background(), old.ID)
	if err != nil || st.Failures != 1 || !strings.Contains(st.LastError, "flaky.example.com") || !st.NextAttempt.After(now()) {
		t.Fatalf("state after failure: %+v, %v", st, err)
	}
	cur, err := ed.store.GetCertificate(context.Background(), old.ID)
	if err != nil || cur.Fingerprint != old.Fingerprint {
		t.Fatalf("the failed renewal replaced the stored certificate: %v", err)
	}
	if got := ed.served(t, e, names[0], roots); fingerprintOf(got) != old.Fingerprint {
		t.Fatal("the old certificate is no longer served")
	}

	// Still due, but inside the backoff: no order.
	e.Challtest(t, "/clear-servfail", map[string]string{"host": names[0]})
	before = e.Orders()
	rep, err = m.RunOnce(acmeCtx(t))
	if err != nil || rep.Renewed != 0 || rep.Failed != 0 || e.Orders() != before {
		t.Fatalf("retried inside the backoff: %+v %v", rep, err)
	}
	// After the backoff the scheduler retries and succeeds.
	offset.Add(int64(st.NextAttempt.Sub(now()) + time.Second))
	rep, err = m.RunOnce(acmeCtx(t))
	if err != nil || rep.Renewed != 1 {
		t.Fatalf("retry after the backoff: %+v %v", rep, err)
	}
	st, _, _ = m.State(context.Background(), old.ID)
	if st.Failures != 0 || st.LastError != "" {
		t.Fatalf("state after the successful retry: %+v", st)
	}
	cur, _ = ed.store.GetCertificate(context.Background(), old.ID)
	ed.waitServed(t, e, names[0], cur.Fingerprint, roots)
}

// A lowered budget holds the next order back with its reason recorded,
// and nothing reaches the CA.
func TestACMEBudgetHoldsBackOrders(t *testing.T) {
	e := startPebble(t)
	ed := newEdge(t, e, nil)
	limits := certs.DefaultBudgetLimits()
	limits.OrdersPerAccount = 1
	var offset atomic.Int64
	reg := prometheus.NewRegistry()
	m := ed.manager(t, "a", []certs.Issuer{ed.issuer(t, e, nil)}, func(c *certs.ManagerConfig) {
		c.Limits = limits
		c.Registerer = reg
		c.Now = func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	})
	first, err := m.Obtain(acmeCtx(t), []string{"first.example.com"}, "shortlived")
	if err != nil {
		t.Fatal(err)
	}
	before := e.Orders()
	_, err = m.Obtain(acmeCtx(t), []string{"second.example.com"}, "")
	var hb *certs.HeldBackError
	if !errors.As(err, &hb) || !errors.Is(err, certs.ErrHeldBack) || hb.Limit != "orders_per_account" || hb.Until.Before(time.Now().Add(2*time.Hour)) {
		t.Fatalf("second order: %v", err)
	}
	if e.Orders() != before {
		t.Fatal("a held-back order reached the CA")
	}
	st, err := ed.backend.RenewalState(context.Background(), certs.CertificateID([]string{"second.example.com"}))
	if err != nil || !strings.Contains(st.HeldBack, "orders_per_account") || st.Failures != 0 || st.HeldBackUntil.IsZero() {
		t.Fatalf("held-back state: %+v, %v", st, err)
	}

	// The first certificate's renewal falls due within the 3 h window
	// (emergency zone of a 6-day certificate is 14 h): the scheduler
	// holds it back too, keeps the certificate, and says so in the state
	// and the metrics.
	offset.Store(int64(time.Until(first.ExpiresAt) - 10*time.Hour))
	limitsNow := limits
	limitsNow.OrdersWindow = 400 * 24 * time.Hour // the first order still counts at the shifted time
	reg2 := prometheus.NewRegistry()
	m2 := ed.manager(t, "a", []certs.Issuer{ed.issuer(t, e, nil)}, func(c *certs.ManagerConfig) {
		c.Limits = limitsNow
		c.Registerer = reg2
		c.Now = func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	})
	rep, err := m2.RunOnce(acmeCtx(t))
	if err != nil || rep.HeldBack != 1 || rep.Renewed != 0 || e.Orders() != before {
		t.Fatalf("pass over a due certificate with no budget: %+v, %v", rep, err)
	}
	st, _, err = m2.State(context.Background(), first.ID)
	if err != nil || !strings.Contains(st.HeldBack, "orders_per_account") {
		t.Fatalf("state of the held-back renewal: %+v %v", st, err)
	}
	if cur, err := ed.store.GetCertificate(context.Background(), first.ID); err != nil || cur.Fingerprint != first.Fingerprint {
		t.Fatalf("held-back renewal changed the certificate: %v", err)
	}
	// A second pass while held back does not read it (its due row is at
	// the end of the hold) and orders nothing; the gauge still counts it.
	if rep, err := m2.RunOnce(acmeCtx(t)); err != nil || rep.Checked != 0 || e.Orders() != before {
		t.Fatalf("second pass: %+v, %v", rep, err)
	}
	if v := gaugeValue(t, reg2, "singularity_edge_acme_held_back_certificates"); v != 1 {
		t.Fatalf("singularity_edge_acme_held_back_certificates = %v, want 1", v)
	}
}

func gaugeValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("metric %s not registered", name)
	return 0
}

// Three agents over one (replicated) store, one due certificate: only its
// owner orders, and only once.
func TestACMEOneOrderPerDueCertificateAcrossAgents(t *testing.T) {
	e := startPebble(t)
	ed := newEdge(t, e, nil)
	iss := ed.issuer(t, e, nil)
	var offset atomic.Int64
	now := func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	alive := []string{"a", "b", "c"}
	var ms []*certs.Manager
	for _, self := range alive {
		cfg := certs.DefaultManagerConfig()
		cfg.Now = now
		m, err := certs.NewManager(cfg, []certs.Issuer{iss}, ed.backend, ed.backend, members{self: self, alive: alive})
		if err != nil {
			t.Fatal(err)
		}
		ms = append(ms, m)
	}
	old, err := ms[0].Obtain(acmeCtx(t), []string{"shared.example.com"}, "shortlived")
	if err != nil {
		t.Fatal(err)
	}
	offset.Store(int64(old.ExpiresAt.Sub(time.Now()) - time.Hour)) // deep in the emergency zone
	before := e.Orders()
	var wg sync.WaitGroup
	reps := make([]certs.PassReport, len(ms))
	errs := make([]error, len(ms))
	for i, m := range ms {
		wg.Add(1)
		go func() { defer wg.Done(); reps[i], errs[i] = m.RunOnce(acmeCtx(t)) }()
	}
	wg.Wait()
	owned, renewed := 0, 0
	for i := range ms {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		owned += reps[i].Owned
		renewed += reps[i].Renewed
	}
	if owned != 1 || renewed != 1 || e.Orders() != before+1 {
		t.Fatalf("owned %d renewed %d orders %d -> %d; want one owner and one order", owned, renewed, before, e.Orders())
	}
	owner := certs.Owner(old.ID, alive)
	st, _, _ := ms[0].State(context.Background(), old.ID)
	if st.Owner != owner || st.LeaseEpoch == 0 {
		t.Fatalf("state owner %q epoch %d, want %q", st.Owner, st.LeaseEpoch, owner)
	}
}

// TestACMERenewalRate measures renewals per minute against Pebble and the
// time from an order to the proxy serving its certificate. It is a
// measurement, not a check: run it with EDGE_ACME_BENCH=1.
func TestACMERenewalRate(t *testing.T) {
	if os.Getenv("EDGE_ACME_BENCH") == "" {
		t.Skip("set EDGE_ACME_BENCH=1 to measure")
	}
	e := startPebble(t)
	ed := newEdge(t, e, nil)
	roots := e.Roots(t)
	limits := certs.DefaultBudgetLimits()
	limits.DuplicateCerts = 0
	m := ed.manager(t, "a", []certs.Issuer{ed.issuer(t, e, func(c *certs.ACMEConfig) { c.Challenges = []string{certs.ChallengeHTTP01} })},
		func(c *certs.ManagerConfig) { c.Limits = limits })
	const n = 16
	var ids []string
	var serve []time.Duration
	for i := range n {
		name := fmt.Sprintf("rate%02d.example.com", i)
		start := time.Now()
		c, err := m.Obtain(acmeCtx(t), []string{name}, "")
		if err != nil {
			t.Fatal(err)
		}
		ed.waitServed(t, e, name, c.Fingerprint, roots)
		serve = append(serve, time.Since(start))
		ids = append(ids, c.ID)
	}
	slices.Sort(serve)
	for _, workers := range []int{1, 4} {
		start := time.Now()
		var wg sync.WaitGroup
		next := atomic.Int32{}
		for range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					i := int(next.Add(1)) - 1
					if i >= n {
						return
					}
					if _, err := m.Renew(acmeCtx(t), ids[i]); err != nil {
						t.Error(err)
					}
				}
			}()
		}
		wg.Wait()
		el := time.Since(start)
		t.Logf("renewals: %d in %s with %d workers = %.0f per minute", n, el.Round(time.Millisecond), workers, float64(n)/el.Minutes())
	}
	t.Logf("order to served by the proxy: median %s, max %s (n=%d)", serve[n/2].Round(time.Millisecond), serve[n-1].Round(time.Millisecond), n)
}

// A CA that rejects half the nonces it hands out (badNonce, as a CA does
// across a restart or under load) still issues: lego retries a rejected
// nonce with a fresh one, and nothing here counts those refusals against
// the names or the account.
func TestACMEIssuesDespiteRejectedNonces(t *testing.T) {
	e := startPebble(t, "PEBBLE_WFE_NONCEREJECT=50")
	ed := newEdge(t, e, nil)
	m := ed.manager(t, "a", []certs.Issuer{ed.issuer(t, e, func(c *certs.ACMEConfig) {
		c.Challenges = []string{certs.ChallengeHTTP01}
	})}, nil)
	names := []string{"nonce.example.com"}
	cert, err := m.Obtain(acmeCtx(t), names, "default")
	if err != nil {
		t.Fatalf("Obtain with half the nonces rejected: %v", err)
	}
	t.Logf("pebble output mentioning nonces: %d lines", strings.Count(strings.ToLower(e.Proc.Out.String()), "nonce"))
	st, err := m.Status(context.Background(), cert.ID)
	if err != nil || st.Phase != certs.PhaseScheduled || st.State.Failures != 0 {
		t.Fatalf("status after issuance: %+v, %v", st, err)
	}
	fails, err := ed.backend.BudgetEvents(context.Background(), certs.EventFail, names[0], time.Time{})
	if err != nil || len(fails) != 0 {
		t.Fatalf("failed-validation events %d, %v; want none", len(fails), err)
	}
}

// A CA that no longer knows the stored account (Pebble restarted at the
// same address, as a CA that lost or reset its accounts) answers the
// next order with accountDoesNotExist: the issuer registers a new
// account, replaces the stored one, and the order goes through. Before,
// every order failed from then on until an operator deleted the row.
func TestACMEAccountLostByTheCA(t *testing.T) {
	e := startPebble(t)
	ed := newEdge(t, e, nil)
	m := ed.manager(t, "a", []certs.Issuer{ed.issuer(t, e, func(c *certs.ACMEConfig) {
		c.Challenges = []string{certs.ChallengeHTTP01}
	})}, nil)
	if _, err := m.Obtain(acmeCtx(t), []string{"before.example.com"}, "default"); err != nil {
		t.Fatalf("Obtain: %v", err)
	}
	accounts := func() []storage.ACMERecord {
		recs, err := ed.store.ListACMERecords(context.Background(), "account/", "", 0)
		if err != nil || len(recs) != 1 {
			t.Fatalf("accounts: %d, %v", len(recs), err)
		}
		return recs
	}
	first := accounts()[0]

	// The same directory URL, a CA that starts empty.
	e.Proc.Stop(t)
	listen := strings.TrimSuffix(strings.TrimPrefix(e.Dir, "https://"), "/dir")
	again := itest.StartPebble(t, itest.PebbleConfig{
		ListenIP: "127.0.0.1", DefaultIP: "127.0.0.1", ListenAddr: listen,
		HTTPPort: port(e.httpAddr), TLSPort: port(e.tlsAddr),
		Profiles: map[string]int{"default": 7776000, "shortlived": 518400},
		FreeAddr: func(testing.TB, string) string { return freeAddr(t) },
	})
	if again.Dir != e.Dir {
		t.Fatalf("restarted Pebble at %s, want %s", again.Dir, e.Dir)
	}
	e2 := &acmeEnv{Pebble: again, httpAddr: e.httpAddr, tlsAddr: e.tlsAddr}
	m2 := ed.manager(t, "a", []certs.Issuer{ed.issuer(t, e2, func(c *certs.ACMEConfig) {
		c.Challenges = []string{certs.ChallengeHTTP01}
	})}, nil)
	if _, err := m2.Obtain(acmeCtx(t), []string{"after.example.com"}, "default"); err != nil {
		t.Fatalf("Obtain from a CA that lost the account: %v", err)
	}
	now := accounts()[0]
	if now.Key != first.Key || string(now.Data) == string(first.Data) {
		t.Fatalf("stored account not replaced: %s", now.Data)
	}
	if !strings.Contains(ed.logs.String(), "registering a new one") {
		t.Fatal("no log line says the account was registered again")
	}
}
