package pools

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/singularity-ng/singularity-edge/storage"
)

func TestAttemptCounters(t *testing.T) {
	p := testPool(t, storage.Pool{}, 1)
	b := p.Backends()[0]
	a1 := b.Begin()
	a2 := b.Begin()
	if st := b.State(); st.CurrentConnections != 2 || st.TotalRequests != 2 {
		t.Fatalf("after two Begins: %+v", st)
	}
	a1.End(Result{Status: 200, BytesIn: 100, BytesOut: 10, Latency: 80 * time.Millisecond})
	a1.End(Result{Status: 200, BytesIn: 100}) // ignored
	a2.End(Result{Status: 503, BytesIn: 5, Latency: 160 * time.Millisecond})
	st := b.State()
	if st.CurrentConnections != 0 || st.TotalRequests != 2 || st.TotalFailures != 1 || st.BytesIn != 105 || st.BytesOut != 10 {
		t.Fatalf("after End: %+v", st)
	}
	// EWMA: first sample 80ms, then 80 + (160-80)/8 = 90ms.
	if st.LatencyAvg != 90*time.Millisecond {
		t.Fatalf("latency avg %s, want 90ms", st.LatencyAvg)
	}
	var nilAttempt *Attempt
	nilAttempt.End(Result{}) // must not panic

	// Latency measured from Begin when the caller reports none.
	a := b.Begin()
	time.Sleep(2 * time.Millisecond)
	a.End(Result{Status: 200})
	if b.State().LatencyAvg == 90*time.Millisecond {
		t.Fatal("measured latency not recorded")
	}
}

func TestPassiveEjection(t *testing.T) {
	pool := storage.Pool{Name: "p", HealthCheck: storage.HealthCheck{MaxFails: 3, Cooldown: 200 * time.Millisecond}}
	p := testPool(t, pool, 1, 1)
	b := p.Backend("b000")

	fail := func(r Result) { b.Begin().End(r) }
	fail(Result{Status: 502})
	fail(Result{Err: errors.New("connection refused")})
	b.Begin().End(Result{Status: 404}) // a 4xx is the client's problem: resets the streak
	fail(Result{Status: 500})
	fail(Result{Status: 500})
	if b.Ejected() {
		t.Fatal("ejected after a broken streak")
	}
	// Client cancellations are not the backend's fault.
	for range 5 {
		fail(Result{Err: fmt.Errorf("copy: %w", context.Canceled)})
	}
	if b.Ejected() {
		t.Fatal("ejected for client cancellations")
	}
	fail(Result{Status: 500})
	if !b.Ejected() || b.Available() {
		t.Fatal("not ejected after 3 consecutive failures")
	}
	if st := b.State(); st.Ejections != 1 || st.EjectedUntil.IsZero() || st.Available || !st.Healthy {
		t.Fatalf("state %+v", st)
	}
	for range 20 {
		if got := mustPick(t, p, PickRequest{}); got == b {
			t.Fatal("ejected backend picked")
		}
	}
	waitFor(t, 10*time.Second, "ejected backend returns after cooldown", func() bool { return b.Available() })
	seen := map[string]bool{}
	for range 4 {
		seen[mustPick(t, p, PickRequest{}).ID] = true
	}
	if !seen["b000"] {
		t.Fatal("backend not picked after cooldown")
	}
}

// TestPassiveEjectionNeverEmptiesPool: a client that can make backends
// answer 5xx ejects them one by one, but once every healthy backend is
// ejected they keep serving (the pool does not answer 503 to everyone for
// the cooldown); backends that active checks found down stay out, and a
// retry gets no ejected backend. Every algorithm.
func TestPassiveEjectionNeverEmptiesPool(t *testing.T) {
	for _, algo := range Algorithms() {
		t.Run(algo, func(t *testing.T) {
			pool := storage.Pool{Name: "p", Algorithm: algo, HealthCheck: storage.HealthCheck{MaxFails: 2, Cooldown: time.Hour}}
			p := testPool(t, pool, 1, 1, 1)
			down := p.Backend("b002")
			down.live.healthy.Store(false)
			for _, id := range []string{"b000", "b001"} {
				b := p.Backend(id)
				b.Begin().End(Result{Status: 500})
				b.Begin().End(Result{Status: 500})
				if !b.Ejected() {
					t.Fatalf("%s not ejected after 2 failures", id)
				}
			}
			seen := map[string]bool{}
			for i := range 200 {
				b, err := p.Pick(PickRequest{ClientIP: netip.AddrFrom4([4]byte{10, 0, 0, byte(i)})})
				if err != nil {
					t.Fatalf("every healthy backend ejected: %v, want them picked", err)
				}
				seen[b.ID] = true
			}
			if seen["b002"] {
				t.Fatal("a backend down by active checks was picked")
			}
			if _, err := p.Pick(PickRequest{Exclude: []*Backend{p.Backend("b000")}}); !errors.Is(err, ErrNoBackend) {
				t.Fatalf("retry with every healthy backend ejected: %v, want ErrNoBackend", err)
			}
			// While one backend is available, ejected ones stay out.
			p.Backend("b001").live.ejectedUntil.Store(0)
			for range 50 {
				if b := mustPick(t, p, PickRequest{}); b.ID != "b001" {
					t.Fatalf("picked %s while b001 was available", b.ID)
				}
			}
		})
	}
}

func TestPassiveEjectionDisabled(t *testing.T) {
	for _, maxFails := range []int{0, PassiveDisabled} {
		p := testPool(t, storage.Pool{HealthCheck: storage.HealthCheck{MaxFails: maxFails}}, 1)
		b := p.Backends()[0]
		for range 50 {
			b.Begin().End(Result{Status: 500})
		}
		if b.Ejected() {
			t.Fatalf("max_fails %d ejected the backend", maxFails)
		}
	}
}

// TestPassiveEjectionRealBackends sends real HTTP requests to real servers:
// one answers 500, then dies; the other is fine. Failures eject the bad one
// and traffic moves to the good one; after the cooldown the revived backend
// is tried again.
func TestPassiveEjectionRealBackends(t *testing.T) {
	var failing atomic.Bool
	failing.Store(true)
	bad := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if failing.Load() {
			http.Error(w, "broken", http.StatusInternalServerError)
			return
		}
		_, _ = io.WriteString(w, "bad-recovered")
	}))
	defer bad.Close()
	good := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "good")
	}))
	defer good.Close()

	backends := []storage.Backend{backendFor(t, "bad", "p", bad.URL), backendFor(t, "good", "p", good.URL)}
	pool := storage.Pool{Name: "p", Algorithm: AlgorithmRoundRobin, HealthCheck: storage.HealthCheck{MaxFails: 2, Cooldown: 300 * time.Millisecond}}
	p := NewTable([]storage.Pool{pool}, backends, nil, TableOptions{}).Pool("p")
	client := &http.Client{Transport: &http.Transport{Proxy: nil}, Timeout: 5 * time.Second}
	defer client.CloseIdleConnections()

	// send proxies one request the way the proxy does: pick, begin, call,
	// end with the outcome.
	send := func() (string, int) {
		b := mustPick(t, p, PickRequest{})
		a := b.Begin()
		resp, err := client.Get("http://" + b.Addr + "/")
		if err != nil {
			a.End(Result{Err: err})
			return b.ID, 0
		}
		n, _ := io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		a.End(Result{Status: resp.StatusCode, BytesIn: n})
		return b.ID, resp.StatusCode
	}
	for range 10 {
		send()
	}
	badB := p.Backend("bad")
	if !badB.Ejected() {
		t.Fatalf("500-answering backend not ejected: %+v", badB.State())
	}
	for range 10 {
		if id, status := send(); id != "good" || status != 200 {
			t.Fatalf("request went to %s (%d) while bad was ejected", id, status)
		}
	}

	// Now the bad backend dies outright: connection errors count too.
	addr := bad.Listener.Addr().String()
	bad.Close()
	waitFor(t, 10*time.Second, "cooldown ends", func() bool { return !badB.Ejected() })
	for range 4 {
		send()
	}
	if !badB.Ejected() {
		t.Fatalf("dead backend not ejected again: %+v", badB.State())
	}

	// It comes back healthy on the same address: after the cooldown it
	// serves again.
	failing.Store(false)
	revived := listenOn(t, addr, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "revived")
	}))
	defer revived.Close()
	waitFor(t, 10*time.Second, "revived backend serves again", func() bool {
		id, status := send()
		return id == "bad" && status == 200
	})
	if st := badB.State(); st.TotalFailures < 4 || st.Ejections < 2 {
		t.Fatalf("bad backend state %+v", st)
	}
}

func TestPickBeginEndDoesNotAllocate(t *testing.T) {
	for _, algo := range Algorithms() {
		p := testPool(t, storage.Pool{Algorithm: algo}, 1, 2, 3, 4, 5)
		req := PickRequest{ClientIP: netip.MustParseAddr("192.0.2.7")}
		n := testing.AllocsPerRun(200, func() {
			b, err := p.Pick(req)
			if err != nil {
				panic(err)
			}
			b.Begin().End(Result{Status: 200, BytesIn: 10})
		})
		if n != 0 {
			t.Errorf("%s: Pick+Begin+End allocates %v times", algo, n)
		}
	}
	sticky := testTableWith(storage.Pool{Name: "p", StickyCookie: "s"}, TableOptions{CookieKey: []byte("k")}, 1, 1).Pool("p")
	value := sticky.StickyValue(sticky.Backends()[1])
	if n := testing.AllocsPerRun(200, func() {
		id, _ := sticky.VerifySticky(value)
		b, _ := sticky.Pick(PickRequest{StickyID: id})
		b.Begin().End(Result{Status: 200})
	}); n != 0 {
		t.Errorf("sticky Verify+Pick+Begin+End allocates %v times", n)
	}
}

func backendFor(t testing.TB, id, pool, rawURL string) storage.Backend {
	t.Helper()
	host, port, scheme, err := testBackendURL(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	b := storage.Backend{ID: id, PoolName: pool, Host: host, Port: port, Scheme: scheme}
	if err := testBackendRow(&b); err != nil {
		t.Fatal(err)
	}
	return b
}

// listenOn serves h on addr, retrying while the port is still being
// released by a previous listener.
func listenOn(t testing.TB, addr string, h http.Handler) *httptest.Server {
	t.Helper()
	var ln net.Listener
	waitFor(t, 10*time.Second, "listen on "+addr, func() bool {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err == nil
	})
	srv := httptest.NewUnstartedServer(h)
	srv.Listener = ln
	srv.Start()
	return srv
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for: %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
