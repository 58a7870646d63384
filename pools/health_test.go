package pools

import (
	"context"
	"io"
	"log"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/singularity-ng/singularity-edge/storage"
)

// startCheckers runs the active checks of every backend of p (through
// the scheduler the Manager uses) until the test ends.
func startCheckers(t *testing.T, p ...*Pool) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := newHealthScheduler(HealthSchedule{Jitter: 0.01}, probeWith(), nil)
	s.reconcile(&Table{pools: p}, nil, nil, false, time.Now())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
}

func fastChecks(typ string) storage.Pool {
	return storage.Pool{
		Name:                "p",
		HealthCheckInterval: 200 * time.Millisecond,
		HealthCheck:         storage.HealthCheck{Type: typ, Timeout: 150 * time.Millisecond, Rise: 2, Fall: 2},
	}
}

func TestActiveTCPCheckEjectsAndRecovers(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	other, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	go acceptAndClose(ln)
	go acceptAndClose(other)

	pool := fastChecks(HealthCheckTCP)
	tbl := NewTable([]storage.Pool{pool}, []storage.Backend{
		backendFor(t, "dies", "p", "http://"+addr),
		backendFor(t, "stays", "p", "http://"+other.Addr().String()),
	}, nil, TableOptions{})
	p := tbl.Pool("p")
	dies := p.Backend("dies")
	startCheckers(t, p)
	waitFor(t, 10*time.Second, "first passing checks", func() bool { return dies.State().ChecksPassed >= 2 })
	if !dies.Healthy() {
		t.Fatal("live backend unhealthy")
	}

	// The listener dies: within interval*fall + timeout (plus scheduling
	// noise) the backend stops being picked.
	died := time.Now()
	ln.Close()
	waitFor(t, 10*time.Second, "dead backend marked unhealthy", func() bool { return !dies.Healthy() })
	t.Logf("dead backend out of rotation after %s (window interval*fall+timeout = %s)", time.Since(died).Round(time.Millisecond), 2*pool.HealthCheckInterval+pool.HealthCheck.Timeout)
	for range 20 {
		if b := mustPick(t, p, PickRequest{}); b == dies {
			t.Fatal("dead backend picked")
		}
	}
	st := dies.State()
	if st.LastError == "" || st.ChecksFailed < 2 || st.LastCheck.IsZero() {
		t.Fatalf("state after failures %+v", st)
	}

	// It comes back on the same address: healthy after rise passes.
	back := time.Now()
	ln2 := listenTCP(t, addr)
	defer ln2.Close()
	go acceptAndClose(ln2)
	waitFor(t, 10*time.Second, "revived backend healthy", func() bool { return dies.Healthy() })
	t.Logf("revived backend back after %s", time.Since(back).Round(time.Millisecond))
	if dies.State().LastError != "" {
		t.Fatal("last error kept after recovery")
	}
	seen := map[string]bool{}
	for range 4 {
		seen[mustPick(t, p, PickRequest{}).ID] = true
	}
	if !seen["dies"] {
		t.Fatal("recovered backend not picked")
	}
}

func TestActiveHTTPCheck(t *testing.T) {
	var status atomic.Int64
	status.Store(200)
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" {
			http.NotFound(w, r)
			return
		}
		if s := int(status.Load()); s == http.StatusFound {
			http.Redirect(w, r, "/elsewhere", s)
		} else {
			w.WriteHeader(s)
		}
	})
	srv := httptest.NewServer(handler)
	addr := srv.Listener.Addr().String()

	pool := fastChecks(HealthCheckHTTP)
	pool.HealthCheck.Path = "/healthz"
	p := NewTable([]storage.Pool{pool}, []storage.Backend{backendFor(t, "web", "p", srv.URL)}, nil, TableOptions{}).Pool("p")
	b := p.Backend("web")
	startCheckers(t, p)
	waitFor(t, 10*time.Second, "passing checks", func() bool { return b.State().ChecksPassed >= 2 })

	status.Store(503)
	waitFor(t, 10*time.Second, "503 marks unhealthy", func() bool { return !b.Healthy() })
	if msg := b.State().LastError; !strings.Contains(msg, "503") {
		t.Fatalf("last error %q", msg)
	}
	if _, err := p.Pick(PickRequest{}); err == nil {
		t.Fatal("unhealthy only backend picked")
	}

	status.Store(http.StatusFound) // a redirect is an answer, not followed
	waitFor(t, 10*time.Second, "3xx marks healthy", func() bool { return b.Healthy() })

	// The server dies and comes back.
	srv.Close()
	waitFor(t, 10*time.Second, "dead server unhealthy", func() bool { return !b.Healthy() })
	status.Store(200)
	srv2 := listenOn(t, addr, handler)
	defer srv2.Close()
	waitFor(t, 10*time.Second, "revived server healthy", func() bool { return b.Healthy() })
}

// TestHTTPCheckHost: an HTTP check sends the name clients reach the pool
// by (ssl_domain, else its first exact host) as Host, so a backend that
// serves virtual hosts answers it as it answers the pool's requests; a
// pool without an exact name sends the backend's address. Pools that
// share a backend address but name it differently get a probe each.
// Before, every check sent the address, and a name-based backend
// answered its default site (often a 404, or a 421): the check failed or
// passed for a site the pool never serves.
func TestHTTPCheckHost(t *testing.T) {
	var mu sync.Mutex
	seen := map[string]bool{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen[r.Host] = true
		mu.Unlock()
		if strings.HasPrefix(r.Host, "127.") {
			w.WriteHeader(http.StatusMisdirectedRequest) // serves names only
		}
	}))
	defer srv.Close()
	addr := srv.Listener.Addr().String()
	named := fastChecks(HealthCheckHTTP)
	named.Name, named.SSLDomain, named.Hosts = "named", "www.a.test", []string{"b.test"}
	hosts := fastChecks(HealthCheckHTTP)
	hosts.Name, hosts.SSLDomain, hosts.Hosts = "hosts", "*.w.test", []string{"*.v.test", "api.c.test"}
	bare := fastChecks(HealthCheckHTTP)
	bare.Name, bare.Hosts = "bare", []string{"*.w.test"}
	tbl := NewTable([]storage.Pool{named, hosts, bare}, []storage.Backend{
		backendFor(t, "n", "named", srv.URL),
		backendFor(t, "h", "hosts", srv.URL),
		backendFor(t, "b", "bare", srv.URL),
	}, nil, TableOptions{})
	startCheckers(t, tbl.Pool("named"), tbl.Pool("hosts"), tbl.Pool("bare"))
	want := []string{"www.a.test", "api.c.test", addr}
	waitFor(t, 10*time.Second, "a check per Host", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(seen) >= len(want)
	})
	mu.Lock()
	got := maps.Clone(seen)
	mu.Unlock()
	for _, h := range want {
		if !got[h] {
			t.Errorf("no check with Host %q; seen %v", h, got)
		}
	}
	if len(got) != len(want) {
		t.Errorf("checks with Hosts %v, want exactly %v", got, want)
	}
	// The Host a failing check sent is in its error.
	b := tbl.Pool("bare").Backend("b")
	waitFor(t, 10*time.Second, "the address-Host check failing", func() bool { return b.State().LastError != "" })
	if msg := b.State().LastError; !strings.Contains(msg, "421 for Host "+addr) {
		t.Errorf("last error %q does not name the Host %s", msg, addr)
	}
	if n := tbl.Pool("named").Backend("n"); !n.Healthy() {
		t.Errorf("named pool's backend unhealthy: %q", n.State().LastError)
	}
}

func TestActiveHTTPCheckExpectedStatus(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
	}))
	defer srv.Close()
	pool := fastChecks(HealthCheckHTTP)
	pool.HealthCheck.ExpectedStatus = http.StatusNoContent
	p := NewTable([]storage.Pool{pool}, []storage.Backend{backendFor(t, "web", "p", srv.URL)}, nil, TableOptions{}).Pool("p")
	b := p.Backend("web")
	startCheckers(t, p)
	waitFor(t, 10*time.Second, "200 fails when 204 is expected", func() bool { return !b.Healthy() })
	if msg := b.State().LastError; !strings.Contains(msg, "expected 204") {
		t.Fatalf("last error %q", msg)
	}
}

func TestActiveHTTPCheckTimeout(t *testing.T) {
	// Accepts connections and never answers.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var mu sync.Mutex
	var conns []net.Conn
	defer func() {
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	}()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	p := NewTable([]storage.Pool{fastChecks(HealthCheckHTTP)}, []storage.Backend{backendFor(t, "mute", "p", "http://"+ln.Addr().String())}, nil, TableOptions{}).Pool("p")
	b := p.Backend("mute")
	startCheckers(t, p)
	waitFor(t, 10*time.Second, "silent backend unhealthy", func() bool { return !b.Healthy() })
	if msg := b.State().LastError; !strings.Contains(msg, "deadline") && !strings.Contains(msg, "timeout") {
		t.Fatalf("last error %q", msg)
	}
}

func TestActiveHTTPSCheckHonoursSSLVerify(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
	}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the failed handshakes are expected
	srv.StartTLS()
	defer srv.Close()
	// TLS handshakes under the race detector on a busy machine are slow:
	// generous timeouts keep a timeout from passing for a verdict.
	pool := fastChecks(HealthCheckHTTPS)
	pool.HealthCheckInterval = 500 * time.Millisecond
	pool.HealthCheck.Timeout = 400 * time.Millisecond
	lax := backendFor(t, "lax", "p", srv.URL)
	strict := backendFor(t, "strict", "p", srv.URL)
	strict.SSLVerify = true
	p := NewTable([]storage.Pool{pool}, []storage.Backend{lax, strict}, nil, TableOptions{}).Pool("p")
	startCheckers(t, p)
	waitFor(t, 10*time.Second, "strict check fails on the self-signed certificate", func() bool {
		s := p.Backend("strict").State()
		return !s.Healthy && strings.Contains(s.LastError, "certificate")
	})
	waitFor(t, 10*time.Second, "lax check passes", func() bool { return p.Backend("lax").State().ChecksPassed >= 2 })
	if !p.Backend("lax").Healthy() {
		t.Fatal("ssl_verify=false backend unhealthy")
	}
}

func TestHoldNewBackends(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go acceptAndClose(ln)
	dead := closedAddr(t)

	pool := fastChecks(HealthCheckTCP)
	pool.HoldNewBackends = true
	pool.HealthCheck.Rise = 5
	p := NewTable([]storage.Pool{pool}, []storage.Backend{
		backendFor(t, "live", "p", "http://"+ln.Addr().String()),
		backendFor(t, "dead", "p", "http://"+dead),
	}, nil, TableOptions{}).Pool("p")
	if p.Backend("live").Healthy() || p.Backend("dead").Healthy() {
		t.Fatal("held backends start healthy")
	}
	if _, err := p.Pick(PickRequest{}); err == nil {
		t.Fatal("picked a held backend")
	}
	startCheckers(t, p)
	// The first pass admits a held backend, whatever rise says.
	waitFor(t, 10*time.Second, "held backend admitted", func() bool { return p.Backend("live").Healthy() })
	if st := p.Backend("live").State(); st.ChecksPassed > 2 {
		t.Logf("admitted after %d passes", st.ChecksPassed)
	}
	waitFor(t, 10*time.Second, "dead held backend checked", func() bool { return p.Backend("dead").State().ChecksFailed >= 3 })
	if p.Backend("dead").Healthy() {
		t.Fatal("dead held backend admitted")
	}
	for range 10 {
		if b := mustPick(t, p, PickRequest{}); b.ID != "live" {
			t.Fatalf("picked %s", b.ID)
		}
	}
}

func TestEffectiveHealthDefaults(t *testing.T) {
	hc := effectiveHealth(&storage.Pool{HealthCheckInterval: time.Nanosecond, HealthCheck: storage.HealthCheck{Type: "HTTP", Path: "x", MaxFails: -1}})
	want := healthConfig{Type: "http", Path: "/x", Interval: minRuntimeInterval, Timeout: minRuntimeInterval / 2, Rise: DefaultRise, Fall: DefaultFall, MaxFails: 0, Cooldown: DefaultCooldown}
	if hc != want {
		t.Fatalf("effectiveHealth\n got %+v\nwant %+v", hc, want)
	}
	if hc := effectiveHealth(&storage.Pool{}); hc.Interval != DefaultHealthCheckInterval || hc.Timeout != DefaultHealthCheckTimeout || hc.Type != HealthCheckTCP {
		t.Fatalf("zero pool health %+v", hc)
	}
}

func acceptAndClose(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		c.Close()
	}
}

// closedAddr returns a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func listenTCP(t *testing.T, addr string) net.Listener {
	t.Helper()
	var ln net.Listener
	waitFor(t, 10*time.Second, "listen on "+addr, func() bool {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err == nil
	})
	return ln
}

// TestHealthThresholdsExact drives the checker one check at a time (no
// timer, no "eventually"): with fall 2 and rise 3 the verdict flips on
// exactly the 2nd consecutive failure and the 3rd consecutive pass.
func TestHealthThresholdsExact(t *testing.T) {
	var status atomic.Int64
	status.Store(200)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(int(status.Load()))
	}))
	t.Cleanup(srv.Close)
	pool := storage.Pool{
		Name:                "p",
		HealthCheckInterval: time.Hour, // never by timer: this test drives each check
		HealthCheck:         storage.HealthCheck{Type: HealthCheckHTTP, Path: "/", Timeout: 2 * time.Second, Rise: 3, Fall: 2},
	}
	tbl := NewTable([]storage.Pool{pool}, []storage.Backend{backendFor(t, "b", "p", srv.URL)}, nil, TableOptions{})
	p := tbl.Pool("p")
	b := p.Backend("b")
	c := newChecker(p.Name, b, *p.health)
	step := func(code int, wantHealthy bool, what string) {
		t.Helper()
		status.Store(int64(code))
		b.live.recordCheck(b.Addr, p.health, c.check(context.Background()), time.Now())
		if b.Healthy() != wantHealthy {
			t.Fatalf("%s: healthy = %v, want %v (state %+v)", what, b.Healthy(), wantHealthy, b.State())
		}
	}
	step(200, true, "first pass")
	step(500, true, "1st failure of 2")
	step(200, true, "a pass resets the failure count")
	step(500, true, "1st failure again")
	step(500, false, "2nd consecutive failure")
	step(200, false, "1st pass of 3")
	step(200, false, "2nd pass of 3")
	step(500, false, "a failure resets the pass count")
	step(200, false, "1st pass again")
	step(200, false, "2nd pass again")
	step(200, true, "3rd consecutive pass")
	st := b.State()
	if st.ChecksPassed != 7 || st.ChecksFailed != 4 {
		t.Fatalf("counted %d passes and %d failures, want 7 and 4", st.ChecksPassed, st.ChecksFailed)
	}
}
