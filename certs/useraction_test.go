package certs

import (
	"context"
	"errors"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// termsIssuer answers every order userActionRequired while refuse is
// set (its terms of service changed) and issues otherwise.
type termsIssuer struct {
	t      testing.TB
	ca     *issuer
	refuse atomic.Bool
	orders atomic.Int32
}

func (i *termsIssuer) Key() string { return "https://terms.example/dir" }

func (i *termsIssuer) Issue(_ context.Context, req IssueRequest) (*IssuedCertificate, error) {
	i.orders.Add(1)
	if i.refuse.Load() {
		return nil, &UserActionError{Issuer: i.Key(), Err: errors.New("403 :: urn:ietf:params:acme:error:userActionRequired :: Terms of service have changed")}
	}
	key := newECKey(i.t)
	leaf := i.ca.sign(i.t, key.Public(), leafSpec{dns: req.Names})
	return &IssuedCertificate{CertificatePEM: certToPEM(leaf), ChainPEM: i.ca.pem(), PrivateKeyPEM: pkcs8PEM(i.t, key),
		Leaf: leaf, IssuerKey: i.Key()}, nil
}

// An explicit renewal (the operator's, through the API) lifts the CA's
// userActionRequired hold for its issuer and orders there once: the
// operator has typically just acted at the CA. A CA that refuses again
// sets the hold again; scheduled renewals keep honouring it. Before, the
// renewal was held back like any other until the hour ended.
func TestExplicitRenewLiftsUserActionHold(t *testing.T) {
	ctx := context.Background()
	s := openStore(t)
	b := NewStoreBackend(s, nil)
	iss := &termsIssuer{t: t, ca: newRoot(t, "Terms Root")}
	now := time.Now()
	var offset atomic.Int64
	mcfg := DefaultManagerConfig()
	mcfg.Registerer = prometheus.NewPedanticRegistry()
	mcfg.Now = func() time.Time { return now.Add(time.Duration(offset.Load())) }
	m, err := NewManager(mcfg, []Issuer{iss}, b, b, oneMember("self"))
	if err != nil {
		t.Fatal(err)
	}
	held := func() bool {
		t.Helper()
		err := m.budget.Check(ctx, iss.Key(), []string{"any.example.com"}, "any", mcfg.Now())
		var hb *HeldBackError
		if err != nil && !errors.As(err, &hb) {
			t.Fatal(err)
		}
		return hb != nil && hb.Limit == LimitCAUserAction
	}

	// Two days left: the scheduler orders, the CA refuses, the hold is set.
	iss.refuse.Store(true)
	c := putDueACME(t, s, b, iss.ca, "a.example.com", "", now, 2*24*time.Hour)
	if _, err := m.RunOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if n := iss.orders.Load(); n != 1 || !held() {
		t.Fatalf("after the CA's refusal: %d orders, held %v; want 1, held", n, held())
	}

	for _, tc := range []struct {
		name      string
		refuse    bool
		wantHeld  bool
		scheduled string // a certificate that falls due after the renewal
	}{
		{"the CA refuses again", true, true, "b.example.com"},
		{"the operator agreed at the CA", false, false, "c.example.com"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			iss.refuse.Store(tc.refuse)
			before := iss.orders.Load()
			offset.Add(int64(10 * time.Minute))
			r, err := m.Renew(ctx, c.ID)
			if !slices.Equal(r.LiftedHolds, []string{iss.Key()}) {
				t.Fatalf("Renew lifted %q, want %s", r.LiftedHolds, iss.Key())
			}
			if n := iss.orders.Load() - before; n != 1 {
				t.Fatalf("%d orders at the held CA, want 1", n)
			}
			var hb *HeldBackError
			if gotHeld := errors.As(err, &hb) && hb.Limit == LimitCAUserAction; gotHeld != tc.wantHeld || (err == nil) == tc.wantHeld {
				t.Fatalf("Renew = %v; want held back %v", err, tc.wantHeld)
			}
			if !tc.wantHeld && r.Certificate.Fingerprint == c.Fingerprint {
				t.Fatal("Renew succeeded with the old certificate")
			}
			if held() != tc.wantHeld {
				t.Fatalf("held after the renewal: %v, want %v", held(), tc.wantHeld)
			}
			// The scheduler orders another due certificate only when
			// the hold is gone.
			before = iss.orders.Load()
			putDueACME(t, s, b, iss.ca, tc.scheduled, "", mcfg.Now(), 2*24*time.Hour)
			if _, err := m.RunOnce(ctx); err != nil {
				t.Fatal(err)
			}
			if ordered := iss.orders.Load() > before; ordered == tc.wantHeld {
				t.Fatalf("scheduled renewal of %s ordered %v, want %v", tc.scheduled, ordered, !tc.wantHeld)
			}
		})
	}

	// Without a hold, a renewal lifts nothing.
	r, err := m.Renew(ctx, c.ID)
	if err != nil || len(r.LiftedHolds) != 0 {
		t.Fatalf("Renew without a hold: lifted %q, %v", r.LiftedHolds, err)
	}
}
