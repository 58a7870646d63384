package certs

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/singularity-ng/singularity-edge/storage"
)

// countingStore counts the rows the scheduler reads through it.
type countingStore struct {
	*StoreBackend
	certs, states, due, expiries atomic.Int64
}

func (c *countingStore) Certificate(ctx context.Context, id string) (storage.Certificate, error) {
	c.certs.Add(1)
	return c.StoreBackend.Certificate(ctx, id)
}

func (c *countingStore) RenewalState(ctx context.Context, id string) (RenewalState, error) {
	c.states.Add(1)
	return c.StoreBackend.RenewalState(ctx, id)
}

func (c *countingStore) DueCertificates(ctx context.Context, until time.Time, limit int) ([]DueCertificate, error) {
	r, err := c.StoreBackend.DueCertificates(ctx, until, limit)
	c.due.Add(int64(len(r)))
	return r, err
}

func (c *countingStore) CertificateExpiries(ctx context.Context, t time.Time, limit int) ([]storage.CertificateExpiry, error) {
	r, err := c.StoreBackend.CertificateExpiries(ctx, t, limit)
	c.expiries.Add(int64(len(r)))
	return r, err
}

func (c *countingStore) reads() [4]int64 {
	return [4]int64{c.certs.Swap(0), c.states.Swap(0), c.due.Swap(0), c.expiries.Swap(0)}
}

// unreachableIssuer is an ACME issuer whose CA refuses connections.
func unreachableIssuer(t testing.TB, b *StoreBackend) *ACMEIssuer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	icfg := DefaultACMEConfig()
	icfg.DirectoryURL = "https://" + addr + "/dir"
	icfg.HTTPTimeout = 5 * time.Second
	iss, err := NewACMEIssuer(icfg, b, b)
	if err != nil {
		t.Fatal(err)
	}
	return iss
}

// countedScheduler is a manager over a real store that counts its reads,
// with a clock the test moves (offset from start) and hourly
// reconciliations.
type countedScheduler struct {
	s      *storage.Store
	b      *StoreBackend
	cs     *countingStore
	m      *Manager
	start  time.Time
	offset *atomic.Int64
}

func newCountedScheduler(t *testing.T) countedScheduler {
	t.Helper()
	s := openStore(t)
	b := NewStoreBackend(s, nil)
	cs := &countingStore{StoreBackend: b}
	offset := new(atomic.Int64)
	start := time.Now()
	mcfg := DefaultManagerConfig()
	mcfg.Now = func() time.Time { return start.Add(time.Duration(offset.Load())) }
	mcfg.ReconcileInterval = time.Hour
	m, err := NewManager(mcfg, []Issuer{unreachableIssuer(t, b)}, cs, b, oneMember("self"))
	if err != nil {
		t.Fatal(err)
	}
	return countedScheduler{s: s, b: b, cs: cs, m: m, start: start, offset: offset}
}

// A pass reads the due rows up to now and the certificates and states of
// those alone, however many certificates are stored; only the
// reconciliation walks the expiry index, and it gives a certificate
// without a due row one.
func TestSchedulerReadsOnlyDueCertificates(t *testing.T) {
	sc := newCountedScheduler(t)
	s, b, cs, m, start, offset := sc.s, sc.b, sc.cs, sc.m, sc.start, sc.offset
	now := func() time.Time { return start.Add(time.Duration(offset.Load())) }
	ctx := context.Background()
	ca := newRoot(t, "Schedule Root")
	key := newECKey(t)
	const n = 200
	var ids []string
	for i := range n {
		name := fmt.Sprintf("s%03d.example.com", i)
		c := record(t, ca, key, CertificateID([]string{name}), leafSpec{dns: []string{name}, notBefore: start.Add(-time.Hour), notAfter: start.Add(90 * 24 * time.Hour)})
		c.Provider, c.AutoRenew = ProviderACME, true
		putCerts(t, s, c)
		ids = append(ids, c.ID)
		st := RenewalState{CertificateID: c.ID, Names: c.Names, LastSuccess: start,
			ARI: &ARIState{NextCheck: start.Add(24 * time.Hour)}, Due: start.Add(30 * 24 * time.Hour)}
		if i < 3 {
			st.Due = start.Add(-time.Minute)
		}
		if err := b.SaveRenewalState(ctx, st); err != nil {
			t.Fatal(err)
		}
	}

	// The first pass reconciles (the whole expiry index, no certificate
	// read: every one has its row) and handles the three due ones.
	rep, err := m.RunOnce(ctx)
	if err != nil || !rep.Reconciled || rep.Added != 0 || rep.Checked != 3 || rep.Renewed+rep.Failed != 0 {
		t.Fatalf("first pass %+v, %v", rep, err)
	}
	if r := cs.reads(); r[0] != 3 || r[3] != n {
		t.Fatalf("first pass read %d certificates and %d expiry entries, want 3 and %d", r[0], r[3], n)
	}
	for _, id := range ids[:3] {
		st, _ := b.RenewalState(ctx, id)
		if !st.Due.Equal(start.Add(24 * time.Hour).UTC()) {
			t.Fatalf("%s rescheduled at %s, want the next check of the CA's window", id, st.Due)
		}
	}

	// Nothing due: nothing read.
	offset.Store(int64(time.Second))
	rep, err = m.RunOnce(ctx)
	if err != nil || rep.Reconciled || rep.Checked != 0 {
		t.Fatalf("idle pass %+v, %v", rep, err)
	}
	if r := cs.reads(); r != [4]int64{} {
		t.Fatalf("idle pass read certificates/states/due rows/expiry entries %v, want none", r)
	}

	// Five come due: five of each read.
	for _, id := range ids[10:15] {
		st, _ := b.RenewalState(ctx, id)
		st.Due = now()
		if err := b.SaveRenewalState(ctx, st); err != nil {
			t.Fatal(err)
		}
	}
	cs.reads()
	rep, err = m.RunOnce(ctx)
	if err != nil || rep.Checked != 5 || rep.Owned != 5 {
		t.Fatalf("pass with five due %+v, %v", rep, err)
	}
	if r := cs.reads(); r != [4]int64{5, 5, 5, 0} {
		t.Fatalf("pass with five due read certificates/states/due rows/expiry entries %v, want [5 5 5 0]", r)
	}

	// A certificate stored without a due row (an older agent wrote it)
	// gets one at the next reconciliation and is scheduled by that pass.
	c := record(t, ca, key, CertificateID([]string{"old.example.com"}), leafSpec{dns: []string{"old.example.com"}, notBefore: start.Add(-time.Hour), notAfter: start.Add(90 * 24 * time.Hour)})
	c.Provider, c.AutoRenew = ProviderACME, true
	putCerts(t, s, c)
	offset.Store(int64(time.Hour + time.Second))
	rep, err = m.RunOnce(ctx)
	if err != nil || !rep.Reconciled || rep.Added != 1 {
		t.Fatalf("reconciling pass %+v, %v", rep, err)
	}
	st, _ := b.RenewalState(ctx, c.ID)
	if st.Due.IsZero() || !st.Due.After(now()) {
		t.Fatalf("the unscheduled certificate was not scheduled: %+v", st)
	}
	rows, _ := b.DueCertificates(ctx, farFuture, 0)
	if len(rows) != n+1 {
		t.Fatalf("%d due rows, want one per certificate (%d)", len(rows), n+1)
	}

	// A deleted certificate's row goes at its next due time.
	if _, err := s.Update(ctx, func(tx *storage.Tx) error { return tx.DeleteCertificate(ids[20]) }); err != nil {
		t.Fatal(err)
	}
	st, _ = b.RenewalState(ctx, ids[20])
	st.Due = now()
	if err := b.SaveRenewalState(ctx, st); err != nil {
		t.Fatal(err)
	}
	if _, err := m.RunOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if rows, _ := b.DueCertificates(ctx, farFuture, 0); len(rows) != n {
		t.Fatalf("%d due rows after a deletion, want %d", len(rows), n)
	}
}

// BenchmarkSchedulerPass compares what a renewal pass reads with
// CERTS_BENCH_N (default 100,000) ACME certificates stored, ten of them
// due: the scan before due rows (every certificate within 400 days, read
// and decrypted), an index-only scan of the expiry index, and the due
// rows with the due certificates and states.
func BenchmarkSchedulerPass(b *testing.B) {
	n := 100_000
	if v, err := strconv.Atoi(os.Getenv("CERTS_BENCH_N")); err == nil && v > 0 {
		n = v
	}
	const due = 10
	s := openStore(b)
	sb := NewStoreBackend(s, nil)
	ca := newRoot(b, "Bench Root")
	key := newECKey(b)
	keyPEM := pkcs8PEM(b, key)
	start := time.Now()
	ctx := context.Background()
	for i := 0; i < n; i += 300 { // three rows each: at most 1,000 per transaction
		_, err := s.Update(ctx, func(tx *storage.Tx) error {
			for j := i; j < min(i+300, n); j++ {
				name := fmt.Sprintf("site%06d.example.com", j)
				leaf := ca.sign(b, key.Public(), leafSpec{dns: []string{name}, notBefore: start.Add(-time.Hour),
					notAfter: start.Add(time.Duration(30+j%60) * 24 * time.Hour), serial: int64(j) + 1})
				c := &storage.Certificate{ID: CertificateID([]string{name}), Domain: name, Names: []string{name},
					CertificatePEM: certToPEM(leaf), PrivateKeyPEM: keyPEM, ChainPEM: ca.pem(), Issuer: "Bench Root",
					NotBefore: leaf.NotBefore, ExpiresAt: leaf.NotAfter, Provider: ProviderACME, AutoRenew: true}
				if err := tx.PutCertificate(c); err != nil {
					return err
				}
				st := RenewalState{CertificateID: c.ID, Names: c.Names, Due: start.Add(24 * time.Hour)}
				if j < due {
					st.Due = start.Add(-time.Minute)
				}
				if err := writeState(tx, st); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	horizon := start.Add(400 * 24 * time.Hour)
	b.Run("old-full-scan", func(b *testing.B) {
		for b.Loop() {
			list, err := sb.CertificatesExpiringBefore(ctx, horizon, 0)
			if err != nil || len(list) != n {
				b.Fatalf("%d, %v", len(list), err)
			}
		}
		b.ReportMetric(float64(n), "certs-read/op")
	})
	b.Run("expiry-index-scan", func(b *testing.B) {
		for b.Loop() {
			list, err := sb.CertificateExpiries(ctx, horizon, 0)
			if err != nil || len(list) != n {
				b.Fatalf("%d, %v", len(list), err)
			}
		}
		b.ReportMetric(0, "certs-read/op")
	})
	b.Run("due-rows", func(b *testing.B) {
		for b.Loop() {
			list, err := sb.DueCertificates(ctx, start, 0)
			if err != nil || len(list) != due {
				b.Fatalf("%d, %v", len(list), err)
			}
			for _, d := range list {
				if _, err := sb.Certificate(ctx, d.ID); err != nil {
					b.Fatal(err)
				}
				if _, err := sb.RenewalState(ctx, d.ID); err != nil {
					b.Fatal(err)
				}
			}
		}
		b.ReportMetric(due, "certs-read/op")
	})
}

// Uploaded certificates are read once by the reconciliation, not every
// hour: the next one skips those whose expiry did not change, and reads a
// certificate again when its id holds a new one.
func TestReconcileReadsUploadsOnce(t *testing.T) {
	sc := newCountedScheduler(t)
	s, cs, m, start, offset := sc.s, sc.cs, sc.m, sc.start, sc.offset
	ctx := context.Background()
	ca := newRoot(t, "Upload Root")
	key := newECKey(t)
	const n = 50
	for i := range n {
		name := fmt.Sprintf("u%03d.example.com", i)
		putCerts(t, s, record(t, ca, key, "upload-"+strconv.Itoa(i), leafSpec{dns: []string{name},
			notBefore: start.Add(-time.Hour), notAfter: start.Add(90 * 24 * time.Hour)}))
	}
	reconcile := func() int64 {
		t.Helper()
		offset.Add(int64(time.Hour + time.Second))
		rep, err := m.RunOnce(ctx)
		if err != nil || !rep.Reconciled || rep.Added != 0 {
			t.Fatalf("reconciling pass %+v, %v", rep, err)
		}
		return cs.reads()[0]
	}
	if got := reconcile(); got != n {
		t.Fatalf("first reconciliation read %d certificates, want all %d uploads", got, n)
	}
	if got := reconcile(); got != 0 {
		t.Fatalf("second reconciliation read %d certificates, want none (all known uploads)", got)
	}
	// A new certificate under an id (another expiry) is read again; an
	// ACME one found that way gets its schedule.
	c := record(t, ca, key, "upload-7", leafSpec{dns: []string{"u007.example.com"},
		notBefore: start.Add(-time.Hour), notAfter: start.Add(60 * 24 * time.Hour)})
	c.Provider, c.AutoRenew = ProviderACME, true
	putCerts(t, s, c)
	offset.Add(int64(time.Hour + time.Second))
	rep, err := m.RunOnce(ctx)
	if err != nil || rep.Added != 1 {
		t.Fatalf("pass after the replacement %+v, %v; want it scheduled", rep, err)
	}
	if got := cs.reads()[0]; got < 1 || got > 2 {
		t.Fatalf("pass after the replacement read %d certificates, want the replaced one (and its due handling)", got)
	}
}
