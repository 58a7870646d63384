package integration

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/singularity-ng/singularity-edge/certs"
	"github.com/singularity-ng/singularity-edge/storage"
)

// slowChallenges makes every Present take delay, as a slow cluster-wide
// wait or a DNS provider's propagation would; during it, hook (when set)
// runs once.
type slowChallenges struct {
	certs.ChallengeStore
	delay time.Duration
	hook  func()
	ran   atomic.Bool
}

func (s *slowChallenges) PresentChallenge(ctx context.Context, c certs.ChallengeToken) error {
	if s.hook != nil && s.ran.CompareAndSwap(false, true) {
		s.hook()
	}
	t := time.NewTimer(s.delay)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-t.C:
	}
	return s.ChallengeStore.PresentChallenge(ctx, c)
}

func readLease(t *testing.T, ed *edge, id string) certs.Lease {
	t.Helper()
	r, err := ed.store.GetACMERecord(context.Background(), "lease/cert/"+id)
	if err != nil {
		t.Fatal(err)
	}
	var l certs.Lease
	if err := json.Unmarshal(r.Data, &l); err != nil {
		t.Fatal(err)
	}
	return l
}

// An order that takes several times the lease's term (a slow Present
// plus Pebble's polling) keeps its lease by extending it, and stores its
// certificate under the epoch it started with. When the lease is taken
// over mid-order (the other side of a partition, after this agent's lease
// had lapsed), the next extension notices, the order is abandoned before
// the CA is told about the challenge, and nothing of it is stored.
func TestACMELeaseExtendedDuringLongOrder(t *testing.T) {
	e := startPebble(t)
	ed := newEdge(t, e, nil)
	const ttl = 1500 * time.Millisecond

	t.Run("kept", func(t *testing.T) {
		slow := &slowChallenges{ChallengeStore: ed.backend, delay: 3 * ttl}
		iss, err := certs.NewACMEIssuer(issuerConfig(e, ed, certs.ChallengeHTTP01), ed.backend, slow)
		if err != nil {
			t.Fatal(err)
		}
		m := ed.manager(t, "a", []certs.Issuer{iss}, func(c *certs.ManagerConfig) { c.LeaseTTL = ttl })
		start := time.Now()
		cert, err := m.Obtain(acmeCtx(t), []string{"slow.example.com"}, "")
		if err != nil {
			t.Fatalf("Obtain: %v", err)
		}
		took := time.Since(start)
		if took < 2*ttl {
			t.Fatalf("the order took %s, not longer than the lease (%s): the test proves nothing", took, ttl)
		}
		if l := readLease(t, ed, cert.ID); l.Holder != "a" || l.Epoch != 1 {
			t.Fatalf("lease after the order: %+v, want a's first epoch", l)
		}
		t.Logf("order took %s with a %s lease", took.Round(time.Millisecond), ttl)
	})

	t.Run("lost", func(t *testing.T) {
		names := []string{"taken.example.com"}
		id := certs.CertificateID(names)
		// Another agent takes the lease over while a's Present runs.
		taken := certs.Lease{Key: "cert/" + id, Holder: "b", Epoch: 7, Expires: time.Now().Add(time.Hour).UTC()}
		slow := &slowChallenges{ChallengeStore: ed.backend, delay: 4 * ttl, hook: func() {
			data, _ := json.Marshal(taken)
			if _, err := ed.store.Update(context.Background(), func(tx *storage.Tx) error {
				return tx.PutACMERecord(&storage.ACMERecord{Key: "lease/" + taken.Key, Data: data})
			}); err != nil {
				t.Error(err)
			}
		}}
		iss, err := certs.NewACMEIssuer(issuerConfig(e, ed, certs.ChallengeHTTP01), ed.backend, slow)
		if err != nil {
			t.Fatal(err)
		}
		reg := prometheus.NewRegistry()
		m := ed.manager(t, "a", []certs.Issuer{iss}, func(c *certs.ManagerConfig) { c.LeaseTTL = ttl; c.Registerer = reg })
		pebbleBefore := e.Proc.Out.String()
		_, err = m.Obtain(acmeCtx(t), names, "")
		if !errors.Is(err, certs.ErrLeaseLost) {
			t.Fatalf("Obtain with its lease taken over: %v, want ErrLeaseLost", err)
		}
		if _, err := ed.store.GetCertificate(context.Background(), id); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("a certificate was stored by the agent that lost its lease: %v", err)
		}
		st, err := ed.backend.RenewalState(context.Background(), id)
		if err != nil || st.Owner != "" || st.LastError != "" {
			t.Fatalf("the abandoned order wrote renewal state %+v (%v)", st, err)
		}
		if l := readLease(t, ed, id); l != taken {
			t.Fatalf("lease %+v, want the taker's %+v untouched", l, taken)
		}
		// The CA never validated or finalized anything for this order.
		out := strings.TrimPrefix(e.Proc.Out.String(), pebbleBefore)
		if strings.Contains(out, "Pulled a task") || strings.Contains(out, "Processing finalization") {
			t.Fatalf("the CA was told about the abandoned order:\n%s", out)
		}
		if v := counterValue(t, reg, "singularity_edge_acme_lease_lost_total"); v != 1 {
			t.Fatalf("singularity_edge_acme_lease_lost_total = %v, want 1", v)
		}
	})
}

func issuerConfig(e *acmeEnv, ed *edge, challenges ...string) certs.ACMEConfig {
	cfg := certs.DefaultACMEConfig()
	cfg.DirectoryURL = e.Dir
	cfg.CABundlePEM = e.CAPEM
	cfg.Email = "ops@example.com"
	cfg.Logger = ed.log
	cfg.Challenges = challenges
	return cfg
}

func counterValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("metric %s not registered", name)
	return 0
}
