package certs

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/singularity-ng/singularity-edge/storage"
)

// A certificate whose renewal state does not decode is set aside and
// reported once, and a due row not spelt as the agent writes it is
// reported once; both rows are kept. Before, every pass read the state,
// failed the certificate without a word of why (a count in the pass's
// log line), and kept its due row to fail it again at the next pass, so
// the certificate was never renewed; its status could not be shown; and
// the due row was skipped at every pass without a word. An operator's
// renewal replaces the state, and deleting the certificate deletes it.
func TestUnreadableRenewalStateIsSetAside(t *testing.T) {
	for _, operator := range []string{"renew", "delete"} {
		t.Run(operator, func(t *testing.T) {
			ctx := context.Background()
			s := openStore(t)
			b := NewStoreBackend(s, nil)
			cs := &countingStore{StoreBackend: b}
			start := time.Now()
			var offset time.Duration
			core, logs := observer.New(zap.InfoLevel)
			mcfg := DefaultManagerConfig()
			mcfg.Logger = zap.New(core)
			mcfg.Now = func() time.Time { return start.Add(offset) }
			mcfg.ReconcileInterval = time.Hour
			m, err := NewManager(mcfg, []Issuer{unreachableIssuer(t, b)}, cs, b, oneMember("self"))
			if err != nil {
				t.Fatal(err)
			}
			ca := newRoot(t, "Unreadable Root")
			name := "unreadable.example.com"
			c := record(t, ca, newECKey(t), CertificateID([]string{name}), leafSpec{dns: []string{name}, notBefore: start.Add(-time.Hour), notAfter: start.Add(90 * 24 * time.Hour)})
			c.Provider, c.AutoRenew = ProviderACME, true
			putCerts(t, s, c)
			stateRow := []byte(`{"names": "not a list"}`)
			const badDue = "due/+0000000000000000005/" + "someone-elses"
			if _, err := s.Update(ctx, func(tx *storage.Tx) error {
				for k, v := range map[string][]byte{
					keyState + c.ID: stateRow,
					dueKey(DueCertificate{ID: c.ID, At: start.Add(-time.Minute)}): []byte(`"` + c.ID + `"`),
					badDue: []byte(`"x"`),
				} {
					if err := tx.PutACMERecord(&storage.ACMERecord{Key: k, Data: v}); err != nil {
						return err
					}
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			row := func(key string) ([]byte, bool) {
				r, err := s.GetACMERecord(ctx, key)
				if errors.Is(err, storage.ErrNotFound) {
					return nil, false
				}
				if err != nil {
					t.Fatal(err)
				}
				return r.Data, true
			}
			reported := func(msg string) int { return logs.FilterMessageSnippet(msg).Len() }

			// The first pass (a reconciling one) finds both, once each.
			rep, err := m.RunOnce(ctx)
			if err != nil || rep.Checked != 1 || rep.Failed != 1 {
				t.Fatalf("first pass %+v, %v; want the certificate checked and failed", rep, err)
			}
			for i := range 3 {
				// Passes and a reconciliation later: nothing read for it
				// but its state, once an hour, and nothing said again.
				offset += 40 * time.Minute
				cs.reads()
				rep, err := m.RunOnce(ctx)
				if err != nil || rep.Checked != 0 || rep.Failed != 0 {
					t.Fatalf("pass %d: %+v, %v; want nothing checked", i+2, rep, err)
				}
				if r := cs.reads(); r[0] > 1 || r[1] > 1 {
					t.Fatalf("pass %d read %d certificates and %d states", i+2, r[0], r[1])
				}
			}
			if n := reported("its renewal state does not decode"); n != 1 {
				t.Fatalf("the unreadable state was reported %d times, want once:\n%v", n, logs.All())
			}
			if n := reported("not spelt as this agent writes them"); n != 1 {
				t.Fatalf("the malformed due row was reported %d times, want once:\n%v", n, logs.All())
			}
			for kind, want := range map[string]float64{"state": 1, "due": 1} {
				if got := testutil.ToFloat64(m.metrics.unreadable.WithLabelValues(kind)); got != want {
					t.Fatalf("unreadable_rows{kind=%q} = %v, want %v", kind, got, want)
				}
			}
			if got := testutil.ToFloat64(m.metrics.phases.WithLabelValues(PhaseBlocked)); got != 1 {
				t.Fatalf("certificates{phase=blocked} = %v, want 1", got)
			}
			// Both rows kept as they are; the certificate's schedule is
			// gone and not given back by the reconciliation.
			if got, ok := row(keyState + c.ID); !ok || !bytes.Equal(got, stateRow) {
				t.Fatalf("state row %q (kept %v), want %q", got, ok, stateRow)
			}
			if _, ok := row(badDue); !ok {
				t.Fatal("the malformed due row was deleted")
			}
			if due, err := b.DueCertificates(ctx, farFuture, 0); err != nil || len(due) != 0 {
				t.Fatalf("due rows %+v, %v; want none", due, err)
			}
			st, err := m.Status(ctx, c.ID)
			if err != nil || st.Phase != PhaseBlocked || !strings.Contains(st.State.Blocked, "does not decode") {
				t.Fatalf("Status = %+v, %v; want blocked for the unreadable state", st, err)
			}

			switch operator {
			case "renew":
				// The CA is unreachable: the renewal fails, and its state
				// (the failure, the retry's due row) replaces the row.
				if _, err := m.Renew(ctx, c.ID); err == nil {
					t.Fatal("Renew succeeded with an unreachable CA")
				}
				st, err := b.RenewalState(ctx, c.ID)
				if err != nil || st.Failures != 1 || st.Due.IsZero() {
					t.Fatalf("state after the renewal %+v, %v; want its failure and a retry", st, err)
				}
				if got := testutil.ToFloat64(m.metrics.unreadable.WithLabelValues("state")); got != 0 {
					t.Fatalf("unreadable_rows{kind=state} = %v after the renewal, want 0", got)
				}
			case "delete":
				if _, err := s.Update(ctx, func(tx *storage.Tx) error {
					if err := DeleteRenewalState(tx, c.ID, start); err != nil {
						return err
					}
					return tx.DeleteCertificate(c.ID)
				}); err != nil {
					t.Fatalf("deleting the certificate: %v", err)
				}
				if _, ok := row(keyState + c.ID); ok {
					t.Fatal("the state row outlived its certificate")
				}
			}
		})
	}
}
