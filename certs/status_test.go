package certs

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/singularity-ng/singularity-edge/storage"
)

type oneMember string

func (m oneMember) Self() string    { return string(m) }
func (m oneMember) Alive() []string { return []string{string(m)} }

// unreachableManager is a manager over s whose CA address refuses
// connections: every order fails before reaching a CA.
func unreachableManager(t *testing.T, s *storage.Store, reg prometheus.Registerer) (*Manager, *StoreBackend) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	b := NewStoreBackend(s, nil)
	icfg := DefaultACMEConfig()
	icfg.DirectoryURL = "https://" + addr + "/dir"
	icfg.HTTPTimeout = 5 * time.Second
	iss, err := NewACMEIssuer(icfg, b, b)
	if err != nil {
		t.Fatal(err)
	}
	mcfg := DefaultManagerConfig()
	mcfg.Registerer = reg
	m, err := NewManager(mcfg, []Issuer{iss}, b, b, oneMember("self"))
	if err != nil {
		t.Fatal(err)
	}
	return m, b
}

func TestStatusPhasesAndMetrics(t *testing.T) {
	s := openStore(t)
	reg := prometheus.NewPedanticRegistry()
	m, b := unreachableManager(t, s, reg)
	ctx := context.Background()
	ca := newRoot(t, "Status Root")
	key := newECKey(t)
	now := time.Now()
	acme := func(name string, notBefore, notAfter time.Time, st RenewalState) *storage.Certificate {
		c := record(t, ca, key, CertificateID([]string{name}), leafSpec{dns: []string{name}, notBefore: notBefore, notAfter: notAfter})
		c.Provider, c.AutoRenew = ProviderACME, true
		putCerts(t, s, c)
		st.CertificateID, st.Names = c.ID, c.Names
		if err := b.SaveRenewalState(ctx, st); err != nil {
			t.Fatal(err)
		}
		return c
	}
	fresh := func() (time.Time, time.Time) { return now.Add(-time.Hour), now.Add(60 * 24 * time.Hour) }
	nb, na := fresh()
	sched := acme("sched.example.com", nb, na, RenewalState{LastSuccess: now})
	retry := acme("retry.example.com", nb, na, RenewalState{LastAttempt: now, LastError: "refused", Failures: 1, NextAttempt: now.Add(10 * time.Minute)})
	held := acme("held.example.com", nb, na, RenewalState{LastAttempt: now, HeldBack: "held back: duplicate_certs", HeldBackUntil: now.Add(time.Hour), NextAttempt: now.Add(time.Hour)})
	due := acme("due.example.com", now.Add(-80*24*time.Hour), now.Add(5*24*time.Hour), RenewalState{})
	up := record(t, ca, key, "uploaded", leafSpec{dns: []string{"up.example.com"}, notBefore: nb, notAfter: now.Add(2 * 24 * time.Hour)})
	putCerts(t, s, up)

	for _, tc := range []struct {
		id    string
		phase string
	}{{sched.ID, PhaseScheduled}, {retry.ID, PhaseRetrying}, {held.ID, PhaseHeldBack}, {due.ID, PhaseDue}} {
		st, err := m.Status(ctx, tc.id)
		if err != nil || st.Phase != tc.phase || st.Owner != "self" {
			t.Errorf("Status(%s) = %+v, %v; want phase %s", tc.id, st, err, tc.phase)
		}
	}
	// A lease taken shows as held, with its epoch.
	l, err := b.AcquireLease(ctx, leaseKey(sched.ID), "other", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := m.Status(ctx, sched.ID); err != nil || st.Lease == nil || !st.Held || st.Lease.Holder != "other" || st.Lease.Epoch != l.Epoch {
		t.Errorf("Status with a lease: %+v, %v", st, err)
	}
	if err := b.ReleaseLease(ctx, l); err != nil {
		t.Fatal(err)
	}
	// A name whose first order failed has a state and no certificate.
	pendingID := CertificateID([]string{"pending.example.com"})
	if err := b.SaveRenewalState(ctx, RenewalState{CertificateID: pendingID, LastAttempt: now, LastError: "refused", Failures: 1, NextAttempt: now.Add(time.Minute)}); err != nil {
		t.Fatal(err)
	}
	if st, err := m.Status(ctx, pendingID); err != nil || st.Phase != PhasePending || st.State.LastError != "refused" {
		t.Errorf("Status of a pending order: %+v, %v", st, err)
	}
	if _, err := m.Status(ctx, "acme-0000000000000000"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Status of an unknown id: %v, want ErrNotFound", err)
	}

	// One pass: the due certificate's order fails (the CA is unreachable)
	// and it joins the retrying ones; the gauges count by phase and
	// ignore the uploaded certificate.
	if _, err := m.RunOnce(ctx); err != nil {
		t.Fatal(err)
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	phases := map[string]float64{}
	var earliest float64
	for _, f := range families {
		for _, mt := range f.GetMetric() {
			switch f.GetName() {
			case "singularity_edge_acme_certificates":
				phases[mt.GetLabel()[0].GetValue()] = mt.GetGauge().GetValue()
			case "singularity_edge_acme_earliest_expiry_timestamp_seconds":
				earliest = mt.GetGauge().GetValue()
			}
		}
	}
	want := map[string]float64{PhaseScheduled: 1, PhaseDue: 0, PhaseRetrying: 2, PhaseHeldBack: 1, PhaseBlocked: 0, PhaseActionRequired: 0}
	if len(phases) != len(want) {
		t.Errorf("singularity_edge_acme_certificates = %v, want %v", phases, want)
	}
	for phase, n := range want {
		if phases[phase] != n {
			t.Errorf("singularity_edge_acme_certificates{phase=%q} = %v, want %v", phase, phases[phase], n)
		}
	}
	if earliest != float64(due.ExpiresAt.Unix()) {
		t.Errorf("earliest expiry = %v, want %v", earliest, due.ExpiresAt.Unix())
	}
}
