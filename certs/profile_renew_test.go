package certs

import (
	"context"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/singularity-ng/singularity-edge/internal/fielderr"
	"github.com/singularity-ng/singularity-edge/storage"
)

// offeringIssuer is a CA that offers the profiles it is given and issues
// whatever it is asked, as a CA that does not check profiles would: the
// manager alone keeps a profile it does not offer from being ordered.
type offeringIssuer struct {
	t        testing.TB
	ca       *issuer
	mu       sync.Mutex
	profiles map[string]string
	issued   atomic.Int32
}

func (o *offeringIssuer) Key() string { return "offering" }

func (o *offeringIssuer) Profiles(context.Context) (map[string]string, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.profiles, nil
}

func (o *offeringIssuer) Issue(_ context.Context, req IssueRequest) (*IssuedCertificate, error) {
	o.issued.Add(1)
	key := newECKey(o.t)
	leaf := o.ca.sign(o.t, key.Public(), leafSpec{dns: req.Names, notAfter: time.Now().Add(90 * 24 * time.Hour)})
	return &IssuedCertificate{CertificatePEM: certToPEM(leaf), ChainPEM: o.ca.pem(), PrivateKeyPEM: pkcs8PEM(o.t, key),
		Leaf: leaf, IssuerKey: o.Key()}, nil
}

// A profile the CA does not offer is refused by the manager itself with
// a typed error, before anything is stored or counted; one kept in the
// renewal state by an earlier order (before the check existed) is not
// ordered at renewal either: the state says blocked and why, the metric
// counts it, the old certificate stays, and an order naming an offered
// profile clears it.
func TestManagerRefusesProfileNotOffered(t *testing.T) {
	ctx := context.Background()
	s := openStore(t)
	b := NewStoreBackend(s, nil)
	reg := prometheus.NewPedanticRegistry()
	iss := &offeringIssuer{t: t, ca: newRoot(t, "Profile Root"), profiles: map[string]string{"classic": ""}}
	now := time.Now()
	mcfg := DefaultManagerConfig()
	mcfg.Registerer = reg
	mcfg.Now = func() time.Time { return now }
	m, err := NewManager(mcfg, []Issuer{iss}, b, b, oneMember("self"))
	if err != nil {
		t.Fatal(err)
	}

	t.Run("asked for", func(t *testing.T) {
		_, err := m.Obtain(ctx, []string{"new.example.com"}, "tlsserver")
		var pe *ProfileError
		if !errors.Is(err, ErrInvalidProfile) || !errors.As(err, &pe) || pe.Stored || len(pe.Offered) != 1 || pe.Offered[0] != "classic" {
			t.Fatalf("Obtain with a profile not offered: %v, want a *ProfileError offering classic", err)
		}
		if f, ok := fielderr.From(err); !ok || f[0].Field != "profile" {
			t.Fatalf("Obtain's refusal is not a field error on profile: %v", err)
		}
		if n := iss.issued.Load(); n != 0 {
			t.Fatalf("%d orders placed", n)
		}
		st, err := b.RenewalState(ctx, CertificateID([]string{"new.example.com"}))
		if err != nil || st.Profile != "" || !st.LastAttempt.IsZero() {
			t.Fatalf("state after the refusal: %+v, %v; want none", st, err)
		}
		events, err := s.ListACMERecords(ctx, keyEvent, "", 0)
		if err != nil || len(events) != 0 {
			t.Fatalf("budget events after the refusal: %d, %v", len(events), err)
		}
	})

	// A certificate due for renewal whose state kept "tlsserver".
	names := []string{"kept.example.com"}
	old := putDueACME(t, s, b, iss.ca, names[0], "tlsserver", now, 10*24*time.Hour)

	t.Run("stored, at renewal", func(t *testing.T) {
		rep, err := m.RunOnce(ctx)
		if err != nil || rep.Failed != 1 {
			t.Fatalf("RunOnce = %+v, %v; want one failure", rep, err)
		}
		if n := iss.issued.Load(); n != 0 {
			t.Fatalf("%d orders placed for a stored profile the CA does not offer", n)
		}
		st, err := m.Status(ctx, old.ID)
		if err != nil {
			t.Fatal(err)
		}
		if st.Phase != PhaseBlocked || !strings.Contains(st.State.Blocked, `"tlsserver"`) || !strings.Contains(st.State.Blocked, "classic") ||
			st.State.LastError == "" || !st.State.NextAttempt.Equal(now.Add(profileRecheck)) {
			t.Fatalf("status after the renewal = %+v; want blocked naming tlsserver and classic, next check in %s", st, profileRecheck)
		}
		if got := testutil.ToFloat64(m.metrics.orders.WithLabelValues("profile_refused")); got != 1 {
			t.Fatalf(`orders_total{result="profile_refused"} = %v, want 1`, got)
		}
		if c, err := b.Certificate(ctx, old.ID); err != nil || c.Fingerprint != old.Fingerprint {
			t.Fatalf("old certificate after the refusal: %v", err)
		}
		// Not due again before the next check.
		if _, err := m.RunOnce(ctx); err != nil || iss.issued.Load() != 0 {
			t.Fatalf("second pass: %v, %d orders", err, iss.issued.Load())
		}
	})

	t.Run("stored, ordered without a profile", func(t *testing.T) {
		// Inside its backoff the stored certificate is the answer.
		if c, err := m.Obtain(ctx, names, ""); err != nil || c.Fingerprint != old.Fingerprint || iss.issued.Load() != 0 {
			t.Fatalf("Obtain without a profile before the next check: %v (%d orders); want the stored certificate", err, iss.issued.Load())
		}
		// Past it, the stored profile is refused again, saying so.
		now = now.Add(profileRecheck)
		_, err := m.Obtain(ctx, names, "")
		var pe *ProfileError
		if !errors.As(err, &pe) || !pe.Stored || iss.issued.Load() != 0 {
			t.Fatalf("Obtain without a profile over a stored one not offered: %v (%d orders); want a stored *ProfileError", err, iss.issued.Load())
		}
	})

	t.Run("ordered again with an offered profile", func(t *testing.T) {
		c, err := m.Obtain(ctx, names, "classic")
		if err != nil || iss.issued.Load() != 1 || c.Fingerprint == old.Fingerprint {
			t.Fatalf("Obtain with classic: %v, %d orders", err, iss.issued.Load())
		}
		st, err := m.Status(ctx, old.ID)
		if err != nil || st.Phase != PhaseScheduled || st.State.Blocked != "" || st.State.Profile != "classic" {
			t.Fatalf("status after the new order: %+v, %v", st, err)
		}
	})
}

// Deleting a certificate's renewal state leaves nothing for a later
// order of the same names to inherit, and takes the lease from a renewal
// in flight, so that it cannot store the deleted certificate again.
func TestDeleteRenewalState(t *testing.T) {
	ctx := context.Background()
	s := openStore(t)
	b := NewStoreBackend(s, nil)
	names := []string{"gone.example.com"}
	id := CertificateID(names)
	c := record(t, newRoot(t, "Gone Root"), newECKey(t), id, leafSpec{dns: names})
	c.Provider, c.AutoRenew = ProviderACME, true
	putCerts(t, s, c)
	due := time.Now().Add(time.Hour).UTC()
	if err := b.SaveRenewalState(ctx, RenewalState{CertificateID: id, Profile: "tlsserver", Failures: 3, Due: due}); err != nil {
		t.Fatal(err)
	}
	// A renewal holds the lease while the certificate is deleted.
	lease, err := b.AcquireLease(ctx, leaseKey(id), "renewer", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Update(ctx, func(tx *storage.Tx) error {
		if err := DeleteRenewalState(tx, id, time.Now()); err != nil {
			return err
		}
		return tx.DeleteCertificate(id)
	}); err != nil {
		t.Fatal(err)
	}
	st, err := b.RenewalState(ctx, id)
	if err != nil || st.Profile != "" || st.Failures != 0 {
		t.Fatalf("state after delete: %+v, %v", st, err)
	}
	rows, err := b.DueCertificates(ctx, due.Add(time.Hour), 0)
	if err != nil || len(rows) != 0 {
		t.Fatalf("due rows after delete: %v, %v", rows, err)
	}
	renewed := record(t, newRoot(t, "Gone Root 2"), newECKey(t), id, leafSpec{dns: names})
	if err := b.StoreCertificate(ctx, renewed, RenewalState{CertificateID: id, Names: names}, lease); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("renewal stored after the delete: %v, want ErrLeaseLost", err)
	}
	if _, err := b.ExtendLease(ctx, lease, time.Hour); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("lease extended after the delete: %v, want ErrLeaseLost", err)
	}
	if _, err := b.Certificate(ctx, id); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("certificate after delete: %v, want not found", err)
	}
	// A later order takes the lease with a higher epoch.
	if l, err := b.AcquireLease(ctx, leaseKey(id), "renewer", time.Hour); err != nil || l.Epoch <= lease.Epoch {
		t.Fatalf("lease after delete: %+v, %v; want epoch above %d", l, err, lease.Epoch)
	}
}

// A CA whose directory answers an error (down, rate limiting) says
// nothing about profiles: the check fails as "could not be checked", not
// as "not offered", and a renewal with a stored profile is not blocked.
// Before, the problem document decoded as a directory offering no
// profiles.
func TestProfilesOfADirectoryThatAnswersAnError(t *testing.T) {
	ctx := context.Background()
	var down atomic.Bool
	down.Store(true)
	ts := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if down.Load() {
			w.Header().Set("Content-Type", "application/problem+json")
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte(`{"type":"urn:ietf:params:acme:error:rateLimited","detail":"slow down","status":503}`))
			return
		}
		_, _ = w.Write([]byte(`{"newNonce":"https://x/nonce","newAccount":"https://x/acct","newOrder":"https://x/order","meta":{"profiles":{"classic":"90 days"}}}`))
	}))
	t.Cleanup(ts.Close)
	s := openStore(t)
	b := NewStoreBackend(s, nil)
	icfg := DefaultACMEConfig()
	icfg.DirectoryURL = ts.URL + "/dir"
	icfg.CABundlePEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ts.Certificate().Raw})
	icfg.HTTPTimeout = 5 * time.Second
	iss, err := NewACMEIssuer(icfg, b, b)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	mcfg := DefaultManagerConfig()
	mcfg.Registerer = prometheus.NewPedanticRegistry()
	mcfg.Now = func() time.Time { return now }
	m, err := NewManager(mcfg, []Issuer{iss}, b, b, oneMember("self"))
	if err != nil {
		t.Fatal(err)
	}
	if err := m.CheckProfile(ctx, "classic"); err == nil || errors.Is(err, ErrInvalidProfile) {
		t.Fatalf("CheckProfile against a directory answering 503: %v; want an error that is not a refusal", err)
	}

	old := putDueACME(t, s, b, newRoot(t, "Outage Root"), "outage.example.com", "classic", now, 10*24*time.Hour)
	if _, err := m.RunOnce(ctx); err != nil {
		t.Fatal(err)
	}
	st, err := m.Status(ctx, old.ID)
	if err != nil || st.Phase != PhaseRetrying || st.State.Blocked != "" {
		t.Fatalf("status after a renewal during the outage: %+v, %v; want retrying, not blocked", st, err)
	}

	down.Store(false)
	if err := m.CheckProfile(ctx, "classic"); err != nil {
		t.Fatalf("CheckProfile once the directory answers: %v", err)
	}
}
