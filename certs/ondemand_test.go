package certs

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/singularity-ng/singularity-edge/storage"
)

type testMembers struct {
	self  string
	alive []string
}

func (m testMembers) Self() string    { return m.self }
func (m testMembers) Alive() []string { return m.alive }

// countingAsk answers with status and counts calls per name.
type countingAsk struct {
	*httptest.Server
	status atomic.Int32
	mu     sync.Mutex
	calls  map[string]int
}

func newCountingAsk(t *testing.T, status int) *countingAsk {
	a := &countingAsk{calls: map[string]int{}}
	a.status.Store(int32(status))
	a.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		a.calls[r.URL.Query().Get("domain")]++
		a.mu.Unlock()
		w.WriteHeader(int(a.status.Load()))
	}))
	t.Cleanup(a.Close)
	return a
}

func (a *countingAsk) count(name string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.calls[name]
}

// newTestOnDemand builds the hook over a real store and a manager whose
// CA cannot be reached: these tests stop before an order, or count one
// that fails.
func newTestOnDemand(t *testing.T, st *storage.Store, self string, alive []string, now func() time.Time, mutate ...func(*OnDemandConfig)) *OnDemand {
	t.Helper()
	backend := NewStoreBackend(st, nil)
	icfg := DefaultACMEConfig()
	icfg.DirectoryURL = "https://127.0.0.1:1/dir"
	icfg.HTTPTimeout = time.Second
	iss, err := NewACMEIssuer(icfg, backend, backend)
	if err != nil {
		t.Fatal(err)
	}
	ms := testMembers{self: self, alive: alive}
	m, err := NewManager(DefaultManagerConfig(), []Issuer{iss}, backend, backend, ms)
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultOnDemandConfig()
	cfg.Now = now
	for _, m := range mutate {
		m(&cfg)
	}
	cache := NewCache(DefaultCacheConfig(), st)
	od, err := NewOnDemand(cfg, cache, func(string) (OnDemandPolicy, bool) { return OnDemandPolicy{}, false }, m, backend, ms)
	if err != nil {
		t.Fatal(err)
	}
	return od
}

func refusalReason(t *testing.T, err error) string {
	t.Helper()
	var r *OnDemandRefusal
	if !errors.As(err, &r) || !errors.Is(err, ErrOnDemandRefused) {
		t.Fatalf("want a refusal, got %v", err)
	}
	return r.Reason
}

func TestOnDemandRefusesInvalidNames(t *testing.T) {
	st := openStore(t)
	od := newTestOnDemand(t, st, "a", []string{"a"}, time.Now)
	pol := OnDemandPolicy{Pool: "p", Allowed: true, RatePerMinute: 10}
	for _, name := range []string{"*.example.com", "192.0.2.1", "::1", "localhost", "a..example.com", "-a.example.com", "a_b.example.com", ""} {
		_, err := od.Certificate(context.Background(), name, pol)
		if got := refusalReason(t, err); got != OnDemandInvalidName {
			t.Errorf("%q: reason %s, want %s", name, got, OnDemandInvalidName)
		}
	}
	icann := newTestOnDemand(t, st, "a", []string{"a"}, time.Now, func(c *OnDemandConfig) { c.ICANNOnly = true })
	for _, name := range []string{"shop.test", "a.internal", "x.local"} {
		_, err := icann.Certificate(context.Background(), name, pol)
		if got := refusalReason(t, err); got != OnDemandInvalidName {
			t.Errorf("%q with ICANNOnly: reason %s, want %s", name, got, OnDemandInvalidName)
		}
	}
	if ev, _ := od.store.BudgetEvents(context.Background(), onDemandEventKind, "p", time.Time{}); len(ev) != 0 {
		t.Fatalf("invalid names took %d rate events", len(ev))
	}
}

// A refusal is remembered for its policy: the same policy is refused from
// the cache, a changed one (the name added, an ask URL set) decides again.
func TestOnDemandRefusalRememberedPerPolicy(t *testing.T) {
	st := openStore(t)
	od := newTestOnDemand(t, st, "a", []string{"a"}, time.Now)
	ask := newCountingAsk(t, http.StatusNotFound)
	ctx := context.Background()
	const name = "shop.example.com"
	denied := OnDemandPolicy{Pool: "p", Allowed: false, RatePerMinute: 10}
	for range 2 {
		_, err := od.Certificate(ctx, name, denied)
		if got := refusalReason(t, err); got != OnDemandNotAllowed {
			t.Fatalf("reason %s, want %s", got, OnDemandNotAllowed)
		}
	}
	asked := OnDemandPolicy{Pool: "p", Allowed: true, AskURL: ask.URL + "/check?token=t", RatePerMinute: 10}
	for range 3 {
		_, err := od.Certificate(ctx, name, asked)
		if got := refusalReason(t, err); got != OnDemandAskRefused {
			t.Fatalf("reason %s, want %s", got, OnDemandAskRefused)
		}
	}
	if ask.count(name) != 1 {
		t.Fatalf("ask URL called %d times, want once for the new policy", ask.count(name))
	}
}

// An ask URL that cannot be reached refuses the name for ErrorTTL only,
// then asks again.
func TestOnDemandAskFailureRememberedBriefly(t *testing.T) {
	st := openStore(t)
	var offset atomic.Int64
	now := func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	od := newTestOnDemand(t, st, "a", []string{"a"}, now)
	ask := newCountingAsk(t, http.StatusOK)
	url := ask.URL
	ask.Close() // nothing listens any more
	pol := OnDemandPolicy{Pool: "p", Allowed: true, AskURL: url, RatePerMinute: 10}
	_, err := od.Certificate(context.Background(), "down.example.com", pol)
	if got := refusalReason(t, err); got != OnDemandAskFailed {
		t.Fatalf("reason %s, want %s", got, OnDemandAskFailed)
	}
	var r *OnDemandRefusal
	errors.As(err, &r)
	if d := r.Until.Sub(now()); d > od.cfg.ErrorTTL || d <= 0 {
		t.Fatalf("remembered for %s, want at most ErrorTTL %s", d, od.cfg.ErrorTTL)
	}
	offset.Store(int64(od.cfg.ErrorTTL + time.Second))
	_, err = od.Certificate(context.Background(), "down.example.com", pol)
	if got := refusalReason(t, err); got != OnDemandAskFailed {
		t.Fatalf("after ErrorTTL: reason %s, want %s from a new ask", got, OnDemandAskFailed)
	}
	if got := testutil.ToFloat64(od.metrics.asks); got != 2 {
		t.Fatalf("asks %v, want 2", got)
	}
}

// The rate limit counts every agent's on-demand orders for the pool: the
// store's events are the cluster's.
func TestOnDemandRateLimitIsClusterWide(t *testing.T) {
	st := openStore(t)
	alive := []string{"a", "b"}
	a := newTestOnDemand(t, st, "a", alive, time.Now)
	b := newTestOnDemand(t, st, "b", alive, time.Now)
	pol := OnDemandPolicy{Pool: "p", Allowed: true, RatePerMinute: 1}
	// a's call passes the limit and orders (or asks b to); the CA is
	// unreachable, so it ends as a failure or a timeout, but it counted.
	actx, acancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer acancel()
	_, _ = a.Certificate(actx, "first.example.com", pol)
	deadline := time.Now().Add(30 * time.Second)
	for {
		ev, err := a.store.BudgetEvents(context.Background(), onDemandEventKind, "p", time.Now().Add(-time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		if len(ev) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a's call recorded no rate event")
		}
		time.Sleep(10 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := b.Certificate(ctx, "second.example.com", pol)
	if got := refusalReason(t, err); got != OnDemandRateLimited {
		t.Fatalf("second name on the other agent: %s, want %s", got, OnDemandRateLimited)
	}
	other := OnDemandPolicy{Pool: "q", Allowed: true, RatePerMinute: 1}
	sctx, scancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer scancel()
	_, err = b.Certificate(sctx, "third.example.com", other)
	var r *OnDemandRefusal
	if errors.As(err, &r) && r.Reason == OnDemandRateLimited {
		t.Fatalf("another pool's limit was spent: %v", err)
	}
}

// Past MaxInFlight names in progress, a new name is refused at once
// (not remembered) instead of calling its ask URL.
func TestOnDemandBoundsNamesInFlight(t *testing.T) {
	st := openStore(t)
	od := newTestOnDemand(t, st, "a", []string{"a"}, time.Now, func(c *OnDemandConfig) { c.MaxInFlight = 1 })
	release := make(chan struct{})
	var asked atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked.Add(1)
		select {
		case <-release:
		case <-r.Context().Done():
		}
		w.WriteHeader(http.StatusForbidden)
	}))
	defer srv.Close()
	defer close(release)
	pol := OnDemandPolicy{Pool: "p", Allowed: true, AskURL: srv.URL, RatePerMinute: 10}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := od.Certificate(ctx, "first.example.com", pol); !errors.Is(err, ErrOnDemandTimeout) {
		t.Fatalf("first name: %v, want a timeout while its ask is pending", err)
	}
	_, err := od.Certificate(context.Background(), "second.example.com", pol)
	if got := refusalReason(t, err); got != OnDemandBusy {
		t.Fatalf("second name: %s, want %s", got, OnDemandBusy)
	}
	deadline := time.Now().Add(10 * time.Second)
	for asked.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if got := asked.Load(); got != 1 {
		t.Fatalf("ask URL called %d times, want 1 (the first name only)", got)
	}
}
