package certs

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/singularity-ng/singularity-edge/storage"
)

// scriptedGate answers StillWanted with err and records the names asked.
type scriptedGate struct {
	mu    sync.Mutex
	err   error
	asked []string
}

func (g *scriptedGate) StillWanted(_ context.Context, name string) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.asked = append(g.asked, name)
	return g.err
}

// A due on-demand certificate is renewed only when its policy still
// admits the name; refused, it waits for the next check and, once
// expired, is removed. The manager's CA refuses connections, so an
// attempted renewal shows as a failed attempt in the state.
func TestOnDemandRenewalAsksThePolicy(t *testing.T) {
	refused := &OnDemandRefusal{Name: "shop.example.com", Reason: OnDemandAskRefused, Detail: "ask URL answered 404"}
	unreachable := errors.New("certs: ask URL of pool p: connection refused")
	for _, tc := range []struct {
		name        string
		onDemand    bool
		expired     bool
		gateErr     error
		wantAsked   bool
		wantAttempt bool // an order was tried (and failed at the CA)
		wantRemoved bool
	}{
		{"wanted: renewed", true, false, nil, true, true, false},
		{"refused: not renewed, kept until expiry", true, false, refused, true, false, false},
		{"refused after expiry: removed", true, true, refused, true, false, true},
		{"policy unreachable after expiry: kept", true, true, unreachable, true, false, false},
		{"requested through the API: renewed without asking", false, false, refused, false, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			s := openStore(t)
			m, b := unreachableManager(t, s, prometheus.NewPedanticRegistry())
			gate := &scriptedGate{err: tc.gateErr}
			m.SetOnDemandGate(gate)

			now := time.Now()
			notAfter := now.Add(5 * 24 * time.Hour)
			if tc.expired {
				notAfter = now.Add(-time.Hour)
			}
			const host = "shop.example.com"
			c := record(t, newRoot(t, "On-demand Root"), newECKey(t), CertificateID([]string{host}),
				leafSpec{dns: []string{host}, notBefore: now.Add(-80 * 24 * time.Hour), notAfter: notAfter})
			c.Provider, c.AutoRenew = ProviderACME, true
			putCerts(t, s, c)
			if err := b.SaveRenewalState(ctx, RenewalState{CertificateID: c.ID, Names: c.Names, OnDemand: tc.onDemand,
				Due: now.Add(-time.Minute)}); err != nil {
				t.Fatal(err)
			}

			if _, err := m.RunOnce(ctx); err != nil {
				t.Fatalf("RunOnce: %v", err)
			}
			if got := len(gate.asked) > 0; got != tc.wantAsked {
				t.Fatalf("gate asked %v (%q), want %v", got, gate.asked, tc.wantAsked)
			}
			if tc.wantAsked && gate.asked[0] != host {
				t.Errorf("gate asked about %q, want %q", gate.asked[0], host)
			}
			_, cerr := b.Certificate(ctx, c.ID)
			st, err := b.RenewalState(ctx, c.ID)
			if err != nil {
				t.Fatal(err)
			}
			due, err := b.DueCertificates(ctx, now.Add(365*24*time.Hour), 0)
			if err != nil {
				t.Fatal(err)
			}
			if tc.wantRemoved {
				if !errors.Is(cerr, storage.ErrNotFound) || len(st.Names) != 0 || len(due) != 0 {
					t.Fatalf("after removal: certificate err %v, state %+v, due rows %v; want all gone", cerr, st, due)
				}
				return
			}
			if cerr != nil {
				t.Fatalf("certificate: %v, want it kept", cerr)
			}
			if attempted := !st.LastAttempt.IsZero(); attempted != tc.wantAttempt {
				t.Fatalf("attempted %v (state %+v), want %v", attempted, st, tc.wantAttempt)
			}
			if tc.wantAttempt {
				return
			}
			if !strings.HasPrefix(st.LastError, "not renewed: ") {
				t.Errorf("last error %q, want the reason it was not renewed", st.LastError)
			}
			// Asked again after the recheck interval, never later than
			// the expiry when the policy said no.
			wantDue := now.Add(DefaultManagerConfig().OnDemandRecheck)
			if tc.gateErr == refused && wantDue.After(notAfter) {
				wantDue = notAfter
			}
			if d := st.Due.Sub(wantDue); d < -time.Minute || d > time.Minute {
				t.Errorf("due %s, want about %s", st.Due, wantDue)
			}
			if len(due) != 1 || !due[0].At.Equal(st.Due) {
				t.Errorf("due rows %v, want one at %s", due, st.Due)
			}
		})
	}
}

func TestOnDemandStillWanted(t *testing.T) {
	st := openStore(t)
	od := newTestOnDemand(t, st, "a", []string{"a"}, time.Now)
	yes := newCountingAsk(t, 200)
	no := newCountingAsk(t, 404)
	const name = "shop.example.com"
	for _, tc := range []struct {
		label       string
		pol         OnDemandPolicy
		routed      bool
		wantRefusal bool
		wantErr     bool
	}{
		{"routed, admitted, no ask URL", OnDemandPolicy{Pool: "p", Allowed: true}, true, false, false},
		{"ask URL says yes", OnDemandPolicy{Pool: "p", Allowed: true, AskURL: yes.URL}, true, false, false},
		{"ask URL says no", OnDemandPolicy{Pool: "p", Allowed: true, AskURL: no.URL}, true, true, true},
		{"ask URL unreachable: not a refusal", OnDemandPolicy{Pool: "p", Allowed: true, AskURL: "http://127.0.0.1:1/ask"}, true, false, true},
		{"not in on_demand_allow", OnDemandPolicy{Pool: "p"}, true, true, true},
		{"no on-demand pool serves it", OnDemandPolicy{}, false, true, true},
	} {
		t.Run(tc.label, func(t *testing.T) {
			od.route = func(string) (OnDemandPolicy, bool) { return tc.pol, tc.routed }
			err := od.StillWanted(context.Background(), name)
			if (err != nil) != tc.wantErr || errors.Is(err, ErrOnDemandRefused) != tc.wantRefusal {
				t.Fatalf("StillWanted: %v; want error %v, refusal %v", err, tc.wantErr, tc.wantRefusal)
			}
		})
	}
	// A renewal asks afresh: two checks, two calls, no remembered answer.
	od.route = func(string) (OnDemandPolicy, bool) {
		return OnDemandPolicy{Pool: "p", Allowed: true, AskURL: yes.URL}, true
	}
	_ = od.StillWanted(context.Background(), name)
	if got := yes.count(name); got != 2 {
		t.Errorf("ask URL called %d times over two checks with it, want 2", got)
	}
}
