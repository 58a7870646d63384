package certs

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	legolog "github.com/go-acme/lego/v4/log"

	"github.com/singularity-ng/singularity-edge/storage"
)

func TestBudget(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	limits := BudgetLimits{
		OrdersPerAccount: 3, OrdersWindow: 3 * time.Hour,
		CertsPerRegisteredDomain: 2, CertsWindow: 7 * 24 * time.Hour,
		DuplicateCerts: 1, DuplicateWindow: 7 * 24 * time.Hour,
		FailedValidations: 2, FailedWindow: time.Hour,
		PauseAfterFailures: 4, PauseWindow: 7 * 24 * time.Hour,
	}
	type step struct {
		at    time.Duration // after now
		names []string
		ok    bool
	}
	cases := []struct {
		name      string
		history   []step
		check     []string
		at        time.Duration
		wantLimit string // "" = allowed
	}{
		{"empty budget", nil, []string{"a.example.com"}, 0, ""},
		{"orders per account", []step{{0, []string{"a.example.com"}, true}, {1, []string{"b.example.org"}, true}, {2, []string{"c.example.net"}, false}},
			[]string{"d.example.io"}, 3 * time.Minute, "orders_per_account"},
		{"orders leave the window", []step{{0, []string{"a.example.com"}, true}, {1, []string{"b.example.org"}, true}, {2, []string{"c.example.net"}, false}},
			[]string{"d.example.io"}, 3*time.Hour + time.Minute, ""},
		{"registered domain through the public suffix list", []step{{0, []string{"a.example.co.uk"}, true}, {0, []string{"b.example.co.uk"}, true}},
			[]string{"c.example.co.uk"}, time.Minute, "certs_per_registered_domain"},
		{"different registered domains under one suffix", []step{{0, []string{"alice.github.io"}, true}, {0, []string{"bob.github.io"}, true}},
			[]string{"carol.github.io"}, time.Minute, ""},
		{"wildcard counts for its registered domain", []step{{0, []string{"*.example.com"}, true}, {0, []string{"x.example.com"}, true}},
			[]string{"y.example.com"}, time.Minute, "certs_per_registered_domain"},
		{"duplicate name set", []step{{0, []string{"dup.example.com", "www.dup.example.com"}, true}},
			[]string{"www.dup.example.com", "dup.example.com"}, time.Minute, "duplicate_certs"},
		{"failed validations per hour", []step{{0, []string{"f.example.com"}, false}, {1, []string{"f.example.com"}, false}},
			[]string{"f.example.com"}, 2 * time.Minute, "failed_validations"},
		{"failures leave the hour", []step{{0, []string{"f.example.com"}, false}, {1, []string{"f.example.com"}, false}},
			[]string{"f.example.com"}, 61 * time.Minute, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := NewStoreBackend(openStore(t), nil)
			l := limits
			if tc.name != "orders per account" && tc.name != "orders leave the window" {
				l.OrdersPerAccount = 0
			}
			bud := NewBudget(l, b, "n1")
			for _, s := range tc.history {
				at := now.Add(s.at * time.Minute)
				if err := bud.RecordOrder(ctx, "https://ca/dir", at); err != nil {
					t.Fatal(err)
				}
				if err := bud.RecordResult(ctx, s.names, CertificateID(s.names), s.ok, at); err != nil {
					t.Fatal(err)
				}
			}
			err := bud.Check(ctx, "https://ca/dir", tc.check, CertificateID(tc.check), now.Add(tc.at))
			if tc.wantLimit == "" {
				if err != nil {
					t.Fatalf("held back: %v", err)
				}
				return
			}
			var hb *HeldBackError
			if !errors.As(err, &hb) || hb.Limit != tc.wantLimit || !errors.Is(err, ErrHeldBack) {
				t.Fatalf("Check = %v, want %s", err, tc.wantLimit)
			}
			if !hb.Until.After(now.Add(tc.at)) || !strings.Contains(hb.Error(), tc.wantLimit) {
				t.Fatalf("held back until %v: %v", hb.Until, hb)
			}
		})
	}

	t.Run("pause counts failures since the last success", func(t *testing.T) {
		b := NewStoreBackend(openStore(t), nil)
		l := limits
		l.FailedValidations, l.DuplicateCerts, l.CertsPerRegisteredDomain = 0, 0, 0
		bud := NewBudget(l, b, "n1")
		names := []string{"p.example.com"}
		rec := func(hours int, ok bool) {
			if err := bud.RecordResult(ctx, names, CertificateID(names), ok, now.Add(time.Duration(hours)*time.Hour)); err != nil {
				t.Fatal(err)
			}
		}
		rec(0, false)
		rec(1, false)
		rec(2, false)
		rec(3, true)
		rec(4, false)
		rec(5, false)
		rec(6, false)
		if err := bud.Check(ctx, "ca", names, CertificateID(names), now.Add(7*time.Hour)); err != nil {
			t.Fatalf("3 failures after a success paused the name: %v", err)
		}
		rec(7, false)
		var hb *HeldBackError
		if err := bud.Check(ctx, "ca", names, CertificateID(names), now.Add(8*time.Hour)); !errors.As(err, &hb) || hb.Limit != "paused" {
			t.Fatalf("4 failures in a row: %v", err)
		}
	})
}

// Budget events and challenge tokens are TTL rows: purged once expired.
func TestStoreBackendPurgesExpiredRows(t *testing.T) {
	ctx := context.Background()
	b := NewStoreBackend(openStore(t), nil)
	now := time.Now()
	if err := b.AddBudgetEvents(ctx, []BudgetEvent{{Kind: EventOrder, Scope: "ca", At: now.Add(-2 * time.Hour), Expires: now.Add(-time.Hour)},
		{Kind: EventOrder, Scope: "ca", At: now, Expires: now.Add(time.Hour)}}); err != nil {
		t.Fatal(err)
	}
	if err := b.PresentChallenge(ctx, ChallengeToken{Type: ChallengeHTTP01, Domain: "a.example.com", Token: "old", KeyAuth: "old.k", ExpiresAt: now.Add(-time.Second)}); err != nil {
		t.Fatal(err)
	}
	n, err := b.PurgeExpired(ctx)
	if err != nil || n != 2 {
		t.Fatalf("PurgeExpired = %d, %v; want 2", n, err)
	}
	times, err := b.BudgetEvents(ctx, EventOrder, "ca", now.Add(-24*time.Hour))
	if err != nil || len(times) != 1 {
		t.Fatalf("events after purge: %v, %v", times, err)
	}
}

func TestLeases(t *testing.T) {
	ctx := context.Background()
	b := NewStoreBackend(openStore(t), nil)
	clock := time.Now()
	b.now = func() time.Time { return clock }

	la, err := b.AcquireLease(ctx, "cert/x", "a", time.Minute)
	if err != nil || la.Epoch != 1 {
		t.Fatalf("first acquire: %+v, %v", la, err)
	}
	if _, err := b.AcquireLease(ctx, "cert/x", "b", time.Minute); !errors.Is(err, ErrLeaseHeld) {
		t.Fatalf("second holder while held: %v", err)
	}
	if again, err := b.AcquireLease(ctx, "cert/x", "a", time.Minute); err != nil || again.Epoch != 1 {
		t.Fatalf("holder extends: %+v, %v", again, err)
	}
	// a stalls past its lease; b takes over with a higher epoch.
	clock = clock.Add(2 * time.Minute)
	lb, err := b.AcquireLease(ctx, "cert/x", "b", time.Minute)
	if err != nil || lb.Epoch != 2 {
		t.Fatalf("take-over: %+v, %v", lb, err)
	}
	cert := &storage.Certificate{ID: "x", Domain: "x.example.com", Provider: ProviderACME}
	if err := b.StoreCertificate(ctx, cert, RenewalState{CertificateID: "x"}, la); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("a stored with a lost lease: %v", err)
	}
	if _, err := b.Certificate(ctx, "x"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatal("a's certificate reached the store")
	}
	if err := b.StoreCertificate(ctx, cert, RenewalState{CertificateID: "x", Owner: "b"}, lb); err != nil {
		t.Fatalf("b stores: %v", err)
	}
	if st, err := b.RenewalState(ctx, "x"); err != nil || st.Owner != "b" {
		t.Fatalf("state stored with the certificate: %+v, %v", st, err)
	}
	if err := b.ReleaseLease(ctx, la); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("a released b's lease: %v", err)
	}
	if err := b.ReleaseLease(ctx, lb); err != nil {
		t.Fatal(err)
	}
	lc, err := b.AcquireLease(ctx, "cert/x", "a", time.Minute)
	if err != nil || lc.Epoch != 3 {
		t.Fatalf("after release: %+v, %v", lc, err)
	}
}

func TestAccountsFirstWins(t *testing.T) {
	ctx := context.Background()
	b := NewStoreBackend(openStore(t), nil)
	if _, err := b.LoadAccount(ctx, "https://ca/dir"); !errors.Is(err, ErrNoAccount) {
		t.Fatalf("LoadAccount on empty store: %v", err)
	}
	first := Account{Directory: "https://ca/dir", URI: "https://ca/acct/1", KeyPEM: "k1"}
	if got, err := b.SaveAccount(ctx, first); err != nil || got.URI != first.URI {
		t.Fatalf("SaveAccount: %+v, %v", got, err)
	}
	got, err := b.SaveAccount(ctx, Account{Directory: "https://ca/dir", URI: "https://ca/acct/2", KeyPEM: "k2"})
	if err != nil || got.URI != first.URI || got.KeyPEM != "k1" {
		t.Fatalf("second registration replaced the first: %+v, %v", got, err)
	}
	// Dropping an account the CA lost deletes it only while it is the
	// stored one: another agent's newer account stays.
	if err := b.DropAccount(ctx, "https://ca/dir", "https://ca/acct/0"); err != nil {
		t.Fatal(err)
	}
	if got, err := b.LoadAccount(ctx, "https://ca/dir"); err != nil || got.URI != first.URI {
		t.Fatalf("a drop of another account removed the stored one: %+v, %v", got, err)
	}
	if err := b.DropAccount(ctx, "https://ca/dir", first.URI); err != nil {
		t.Fatal(err)
	}
	if _, err := b.LoadAccount(ctx, "https://ca/dir"); !errors.Is(err, ErrNoAccount) {
		t.Fatalf("after the drop: %v, want ErrNoAccount", err)
	}
	if got, err := b.SaveAccount(ctx, Account{Directory: "https://ca/dir", URI: "https://ca/acct/3", KeyPEM: "k3"}); err != nil || got.URI != "https://ca/acct/3" {
		t.Fatalf("registration after the drop: %+v, %v", got, err)
	}
}

type waiterFunc func(context.Context, storage.Commit) error

func (f waiterFunc) WaitReplicated(ctx context.Context, c storage.Commit) error { return f(ctx, c) }

// A token is committed, then held until every member has it; a failing
// wait keeps lego from telling the CA.
func TestPresentChallengeWaitsForTheCluster(t *testing.T) {
	ctx := context.Background()
	var waited storage.Commit
	b := NewStoreBackend(openStore(t), waiterFunc(func(_ context.Context, c storage.Commit) error { waited = c; return nil }))
	if err := b.PresentChallenge(ctx, ChallengeToken{Type: ChallengeHTTP01, Domain: "web.example.com", Token: "tok", KeyAuth: "tok.thumb", ExpiresAt: time.Now().Add(time.Minute)}); err != nil {
		t.Fatal(err)
	}
	if waited.Index == 0 {
		t.Fatal("PresentChallenge did not wait for the token's commit")
	}

	failing := NewStoreBackend(openStore(t), waiterFunc(func(context.Context, storage.Commit) error { return errors.New("member b missing") }))
	p := &presenter{ctx: ctx, store: failing, typ: ChallengeHTTP01, ttl: time.Minute, now: time.Now}
	if err := p.Present("x.example.com", "t", "t.k"); !errors.Is(err, ErrNotPresented) {
		t.Fatalf("Present with a failing wait: %v", err)
	}
}

// lego re-sends a new-order without "replaces" when the CA answers
// alreadyReplaced; the call transport stops that second order.
func TestCallTransportStopsReorderAfterAlreadyReplaced(t *testing.T) {
	posts := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		posts++
		w.Header().Set("Content-Type", "application/problem+json")
		w.WriteHeader(http.StatusConflict)
		_, _ = io.WriteString(w, `{"type":"urn:ietf:params:acme:error:alreadyReplaced","detail":"already has a replacement order","status":409}`)
	}))
	defer srv.Close()
	tr := &callTransport{ctx: context.Background(), base: http.DefaultTransport}
	c := &http.Client{Transport: tr}
	resp, err := c.Post(srv.URL+"/new-order", "application/jose+json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusConflict || !strings.Contains(string(body), "alreadyReplaced") {
		t.Fatalf("the problem did not reach lego intact: %d %s", resp.StatusCode, body)
	}
	if _, err := c.Post(srv.URL+"/new-order", "application/jose+json", strings.NewReader("{}")); !errors.Is(err, ErrAlreadyReplaced) {
		t.Fatalf("re-order after alreadyReplaced: %v", err)
	}
	if posts != 1 {
		t.Fatalf("the CA saw %d new-order requests, want 1", posts)
	}
}

func TestLegoLogRoutedToZap(t *testing.T) {
	prev := legolog.Logger
	t.Cleanup(func() { legolog.Logger = prev })
	core, logs := observer.New(zap.DebugLevel)
	RouteLegoLog(zap.New(core))
	legolog.Infof("[%s] acme: Obtaining SAN certificate", "a.example.com")
	legolog.Warnf("[%s] acme: cleaning up failed: %v", "a.example.com", "boom")
	legolog.Fatalf("fatal %d", 1) // must not exit
	got := logs.All()
	if len(got) != 3 {
		t.Fatalf("%d entries", len(got))
	}
	want := []struct {
		level zap.AtomicLevel
		msg   string
	}{
		{zap.NewAtomicLevelAt(zap.InfoLevel), "[a.example.com] acme: Obtaining SAN certificate"},
		{zap.NewAtomicLevelAt(zap.WarnLevel), "[a.example.com] acme: cleaning up failed: boom"},
		{zap.NewAtomicLevelAt(zap.ErrorLevel), "fatal 1"},
	}
	for i, e := range got {
		if e.Level != want[i].level.Level() || e.Message != want[i].msg || e.LoggerName != "lego" {
			t.Errorf("entry %d: %s %q (%s)", i, e.Level, e.Message, e.LoggerName)
		}
	}
}

// TestDueRowKeys: only a key dueKey writes is a due row. One spelt
// otherwise could not be dropped (DropDue deletes dueKey), and one that
// did not parse at all failed every renewal pass; now both are left out
// of DueCertificates and the well-formed rows are still read.
func TestDueRowKeys(t *testing.T) {
	at := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	good := dueKey(DueCertificate{ID: "c1", At: at})
	for _, tc := range []struct {
		key string
		ok  bool
	}{
		{good, true},
		{dueKey(DueCertificate{ID: "a/b", At: at}), true},
		{dueKey(DueCertificate{ID: "old", At: time.Unix(0, -5)}), true},
		{"due/5/c1", false},
		{"due/+0000000000000000005/c1", false},
		{"due/00000000000000000005/", false},
		{"due/abc/c1", false},
		{"due/00000000000000000005", false},
		{"state/00000000000000000005/c1", false},
		{"00000000000000000005/c1", false},
	} {
		d, err := parseDueKey(tc.key)
		if (err == nil) != tc.ok {
			t.Errorf("parseDueKey(%q) = %+v, %v; want ok %v", tc.key, d, err, tc.ok)
		}
	}

	ctx := context.Background()
	s := openStore(t)
	b := NewStoreBackend(s, nil)
	if err := b.AddDue(ctx, DueCertificate{ID: "c1", At: at}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Update(ctx, func(tx *storage.Tx) error {
		for _, k := range []string{"due/5/c2", "due/abc/c3", "due/+0000000000000000005/c4"} {
			if err := tx.PutACMERecord(&storage.ACMERecord{Key: k, Data: []byte(`"x"`)}); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	rows, err := b.DueCertificates(ctx, farFuture, 0)
	if err != nil || len(rows) != 1 || rows[0].ID != "c1" || !rows[0].At.Equal(at) {
		t.Fatalf("DueCertificates = %+v, %v; want only c1's row", rows, err)
	}
}

// FuzzParseDueKey: a key parses only if it is the one dueKey writes for
// what it parses to, every due row round-trips, and due rows from 1970 on
// sort in time order (the renewal pass reads them as one range).
func FuzzParseDueKey(f *testing.F) {
	f.Add("due/00000000000000000005/c1", int64(5), int64(7), "c1")
	f.Add("due/5/c1", int64(-1), int64(0), "a/b")
	f.Add("due/+0000000000000000005/x", int64(1<<62), int64(1<<63-1), "")
	f.Fuzz(func(t *testing.T, key string, a, b int64, id string) {
		if d, err := parseDueKey(key); err == nil && (d.ID == "" || dueKey(d) != key) {
			t.Fatalf("parseDueKey(%q) = %+v, which dueKey writes as %q", key, d, dueKey(d))
		}
		if id == "" {
			return
		}
		ka := dueKey(DueCertificate{ID: id, At: time.Unix(0, a)})
		d, err := parseDueKey(ka)
		if err != nil || d.ID != id || d.At.UnixNano() != a {
			t.Fatalf("%q does not round-trip: %+v, %v", ka, d, err)
		}
		kb := dueKey(DueCertificate{ID: id, At: time.Unix(0, b)})
		if a >= 0 && b >= 0 && a < b && !(ka < kb) {
			t.Fatalf("due rows out of time order: %q (%d) after %q (%d)", ka, a, kb, b)
		}
	})
}
