package integration

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/singularity-ng/singularity-edge/certs"
	"github.com/singularity-ng/singularity-edge/pools"
	"github.com/singularity-ng/singularity-edge/proxy"
	"github.com/singularity-ng/singularity-edge/storage"
)

// askServer is a pool's ask endpoint: it allows names starting with
// "yes" and counts the calls per name.
type askServer struct {
	*httptest.Server
	mu    sync.Mutex
	calls map[string]int
}

func newAskServer(t *testing.T) *askServer {
	a := &askServer{calls: map[string]int{}}
	a.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		name := r.URL.Query().Get("domain")
		a.mu.Lock()
		a.calls[name]++
		a.mu.Unlock()
		if strings.HasPrefix(name, "yes") {
			w.WriteHeader(http.StatusOK)
			return
		}
		http.Error(w, "not a customer", http.StatusForbidden)
	}))
	t.Cleanup(a.Close)
	return a
}

func (a *askServer) count(name string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.calls[name]
}

// onDemandPools: "saas" is the default pool and admits
// *.shops.example.com only (which also routes there); "asked" serves
// *.tenants.example.com and asks the ask server; "limited" allows one
// order per minute.
func onDemandPools(askURL string) []storage.Pool {
	return []storage.Pool{
		{Name: "saas", SSLMode: pools.SSLModeFlexible, SSLDomain: "app.example.com", Default: true,
			OnDemandTLS: true, OnDemandAllow: []string{"*.shops.example.com"}, OnDemandRate: 100},
		{Name: "asked", SSLMode: pools.SSLModeFlexible, Hosts: []string{"*.tenants.example.com"},
			OnDemandTLS: true, OnDemandAsk: askURL, OnDemandRate: 100},
		{Name: "limited", SSLMode: pools.SSLModeFlexible, Hosts: []string{"*.limited.example.com"},
			OnDemandTLS: true, OnDemandAllow: []string{"*.limited.example.com"}, OnDemandRate: 1},
	}
}

// onDemandEdge is one agent's TLS side with on-demand TLS as the proxy's
// certificate source, over a real store, cache and Pebble.
type onDemandEdge struct {
	*edge
	od       *certs.OnDemand
	registry *prometheus.Registry
}

// agentSetup describes one agent sharing the edge's store.
type agentSetup struct {
	self  string
	alive []string
}

func newOnDemandEdge(t *testing.T, e *acmeEnv, table *pools.Table, wait time.Duration, agents ...agentSetup) (*onDemandEdge, []*certs.OnDemand) {
	t.Helper()
	ed := newEdgeStore(t, nil)
	st := ed.store
	ccfg := certs.DefaultCacheConfig()
	ccfg.Logger = ed.log
	ed.cache = certs.NewCache(ccfg, st)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); _ = ed.cache.Run(ctx) }()

	if len(agents) == 0 {
		agents = []agentSetup{{self: "a", alive: []string{"a"}}}
	}
	iss := ed.issuer(t, e, nil)
	router := staticRouter{table}
	route := func(name string) (certs.OnDemandPolicy, bool) {
		p := router.Table().Lookup(name)
		if p == nil || !p.OnDemandTLS {
			return certs.OnDemandPolicy{}, false
		}
		return certs.OnDemandPolicy{Pool: p.Name, Allowed: p.OnDemandAllows(name), AskURL: p.OnDemandAsk, RatePerMinute: p.OnDemandRate}, true
	}
	var ods []*certs.OnDemand
	var first *prometheus.Registry
	for _, ag := range agents {
		mcfg := certs.DefaultManagerConfig()
		mcfg.Logger = ed.log.With(zap.String("node", ag.self))
		m, err := certs.NewManager(mcfg, []certs.Issuer{iss}, ed.backend, ed.backend, members{self: ag.self, alive: ag.alive})
		if err != nil {
			t.Fatal(err)
		}
		reg := prometheus.NewRegistry()
		if first == nil {
			first = reg
		}
		ocfg := certs.DefaultOnDemandConfig()
		ocfg.Wait = wait
		ocfg.Logger = ed.log.With(zap.String("node", ag.self))
		ocfg.Registerer = reg
		od, err := certs.NewOnDemand(ocfg, ed.cache, route, m, ed.backend, members{self: ag.self, alive: ag.alive})
		if err != nil {
			t.Fatal(err)
		}
		ods = append(ods, od)
		wg.Add(1)
		go func() { defer wg.Done(); _ = od.Run(ctx) }()
	}

	pcfg := proxy.DefaultConfig()
	pcfg.HTTPAddr, pcfg.HTTPSAddr, pcfg.Logger = e.httpAddr, e.tlsAddr, ed.log
	// The handshake deadline must outlast the on-demand wait, or a slow
	// order on a loaded machine fails the handshake at the listener.
	pcfg.TLSHandshakeTimeout = wait + 30*time.Second
	challenges := ed.runChallenges(t, ctx, &wg)
	var err error
	ed.proxy, err = proxy.New(pcfg, router, ods[0], challenges)
	if err != nil {
		t.Fatal(err)
	}
	if err := ed.proxy.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		_ = ed.proxy.Shutdown(sctx)
		cancel()
		wg.Wait()
		ed.assertNoSecretsLogged(t)
		if t.Failed() {
			t.Logf("edge log:\n%s", ed.logs.String())
		}
		_ = st.Close()
	})
	return &onDemandEdge{edge: ed, od: ods[0], registry: first}, ods
}

// handshake dials the proxy for name, verifying against roots.
func (ed *onDemandEdge) handshake(e *acmeEnv, name string, roots *x509.CertPool) (*x509.Certificate, error) {
	d := &net.Dialer{Timeout: 30 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", e.tlsAddr, &tls.Config{ServerName: name, RootCAs: roots})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0], nil
}

func (ed *onDemandEdge) decisions(result string) float64 {
	return metricValue(ed.registry, "singularity_edge_ondemand_decisions_total", "result", result)
}

// metricValue reads a counter from reg: the series whose label has value,
// or the only series when label is "".
func metricValue(reg *prometheus.Registry, name, label, value string) float64 {
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label == "" {
				return m.GetCounter().GetValue()
			}
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// An allowed unknown name gets its certificate during its first
// handshake; the next handshake is served from the cache without a
// second order.
func TestOnDemandIssuesOnFirstHandshake(t *testing.T) {
	e := startPebble(t)
	ask := newAskServer(t)
	ed, _ := newOnDemandEdge(t, e, pools.NewTable(onDemandPools(ask.URL), nil, nil, pools.TableOptions{}), 60*time.Second)
	roots := e.Roots(t)

	for _, name := range []string{"shoe.shops.example.com", "yes.tenants.example.com"} {
		before := e.Orders()
		start := time.Now()
		leaf, err := ed.handshake(e, name, roots)
		if err != nil {
			t.Fatalf("first handshake for %s: %v", name, err)
		}
		first := time.Since(start)
		if err := leaf.VerifyHostname(name); err != nil {
			t.Fatal(err)
		}
		start = time.Now()
		again, err := ed.handshake(e, name, roots)
		if err != nil {
			t.Fatalf("second handshake for %s: %v", name, err)
		}
		t.Logf("%s: first handshake (order included) %s, second %s", name, first.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
		if fingerprintOf(again) != fingerprintOf(leaf) || e.Orders() != before+1 {
			t.Fatalf("%s: second handshake served %s (first %s), orders %d -> %d; want the cached certificate and one order",
				name, fingerprintOf(again), fingerprintOf(leaf), before, e.Orders())
		}
	}
	if got := ask.count("yes.tenants.example.com"); got != 1 {
		t.Fatalf("ask URL called %d times for yes.tenants.example.com, want 1", got)
	}
	if got := ask.count("shoe.shops.example.com"); got != 0 {
		t.Fatalf("ask URL called for a pool without one")
	}
	if ed.decisions("issued") != 2 {
		t.Fatalf("issued decisions %v, want 2", ed.decisions("issued"))
	}
}

// Names refused by the allow-list or the ask URL fail their handshake
// with unrecognized_name; the refusal is remembered, so the ask URL is
// called once per name within the TTL, and nothing is ordered.
func TestOnDemandRefusalsAreCached(t *testing.T) {
	e := startPebble(t)
	ask := newAskServer(t)
	ed, _ := newOnDemandEdge(t, e, pools.NewTable(onDemandPools(ask.URL), nil, nil, pools.TableOptions{}), 60*time.Second)
	roots := e.Roots(t)
	before := e.Orders()
	for _, name := range []string{"evil.example.org", "no.tenants.example.com"} {
		for i := 0; i < 3; i++ {
			_, err := ed.handshake(e, name, roots)
			if err == nil || !strings.Contains(err.Error(), "unrecognized name") {
				t.Fatalf("handshake %d for %s: %v, want an unrecognized_name alert", i, name, err)
			}
		}
	}
	if got := ask.count("no.tenants.example.com"); got != 1 {
		t.Fatalf("ask URL called %d times for a refused name, want 1 within the refusal TTL", got)
	}
	if got := ask.count("evil.example.org"); got != 0 {
		t.Fatalf("ask URL called for a name the allow-list refused")
	}
	if e.Orders() != before {
		t.Fatalf("orders %d -> %d for refused names", before, e.Orders())
	}
	if ed.decisions(certs.OnDemandNotAllowed) != 1 || ed.decisions(certs.OnDemandAskRefused) != 1 {
		t.Fatalf("decisions not_allowed %v ask_refused %v, want 1 each (the rest from the cache)",
			ed.decisions(certs.OnDemandNotAllowed), ed.decisions(certs.OnDemandAskRefused))
	}
	if got := metricValue(ed.registry, "singularity_edge_ondemand_cached_refusals_total", "", ""); got != 4 {
		t.Fatalf("cached refusals %v, want 4", got)
	}
}

// A pool's rate limit holds: with one order per minute, a second new name
// in the same minute is refused and not ordered.
func TestOnDemandRateLimitHolds(t *testing.T) {
	e := startPebble(t)
	ask := newAskServer(t)
	ed, _ := newOnDemandEdge(t, e, pools.NewTable(onDemandPools(ask.URL), nil, nil, pools.TableOptions{}), 60*time.Second)
	roots := e.Roots(t)
	before := e.Orders()
	if _, err := ed.handshake(e, "one.limited.example.com", roots); err != nil {
		t.Fatal(err)
	}
	_, err := ed.handshake(e, "two.limited.example.com", roots)
	if err == nil || !strings.Contains(err.Error(), "unrecognized name") {
		t.Fatalf("second name within the minute: %v, want refused", err)
	}
	if e.Orders() != before+1 || ed.decisions(certs.OnDemandRateLimited) != 1 {
		t.Fatalf("orders %d -> %d, rate_limited %v; want one order and one refusal", before, e.Orders(), ed.decisions(certs.OnDemandRateLimited))
	}
	// Another pool's budget is its own.
	if _, err := ed.handshake(e, "other.shops.example.com", roots); err != nil {
		t.Fatalf("a pool with room left: %v", err)
	}
}

// Concurrent handshakes for the same new name cause exactly one order,
// and all of them get the certificate.
func TestOnDemandConcurrentHandshakesOneOrder(t *testing.T) {
	e := startPebble(t)
	ask := newAskServer(t)
	ed, _ := newOnDemandEdge(t, e, pools.NewTable(onDemandPools(ask.URL), nil, nil, pools.TableOptions{}), 60*time.Second)
	roots := e.Roots(t)
	before := e.Orders()
	const n = 8
	var wg sync.WaitGroup
	fps := make([]string, n)
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			leaf, err := ed.handshake(e, "yes-burst.tenants.example.com", roots)
			errs[i] = err
			if err == nil {
				fps[i] = fingerprintOf(leaf)
			}
		}()
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil || fps[i] != fps[0] {
			t.Fatalf("handshake %d: %v (fingerprint %s, first %s)", i, errs[i], fps[i], fps[0])
		}
	}
	if e.Orders() != before+1 || ask.count("yes-burst.tenants.example.com") != 1 {
		t.Fatalf("orders %d -> %d, ask calls %d; want one of each", before, e.Orders(), ask.count("yes-burst.tenants.example.com"))
	}
}

// The handshake waits a bounded time: with a wait shorter than an order,
// the first handshake fails with an alert, the order goes on, and a
// later handshake is served the certificate without a second order.
func TestOnDemandBoundedWaitOrderContinues(t *testing.T) {
	e := startPebble(t)
	ask := newAskServer(t)
	ed, _ := newOnDemandEdge(t, e, pools.NewTable(onDemandPools(ask.URL), nil, nil, pools.TableOptions{}), 100*time.Millisecond)
	roots := e.Roots(t)
	before := e.Orders()
	_, err := ed.handshake(e, "slow.shops.example.com", roots)
	if err == nil || !strings.Contains(err.Error(), "internal error") {
		t.Fatalf("first handshake: %v, want an internal_error alert after the wait", err)
	}
	waitFor(t, 90*time.Second, "the detached order to finish", func() bool {
		_, ok := ed.cache.Lookup("slow.shops.example.com")
		return ok
	})
	if _, err := ed.handshake(e, "slow.shops.example.com", roots); err != nil {
		t.Fatal(err)
	}
	if e.Orders() != before+1 {
		t.Fatalf("orders %d -> %d, want one", before, e.Orders())
	}
	if got := metricValue(ed.registry, "singularity_edge_ondemand_wait_timeouts_total", "", ""); got < 1 {
		t.Fatalf("wait timeouts %v, want at least 1", got)
	}
}

// Two agents, one store: the handshake reaches the agent that does not
// own the name's certificate; it writes a request, the owner orders once,
// and the first agent serves the certificate once it is in its cache.
func TestOnDemandOwnerOrdersForAnotherAgent(t *testing.T) {
	e := startPebble(t)
	ask := newAskServer(t)
	alive := []string{"a", "b"}
	const name = "remote.shops.example.com"
	owner := certs.Owner(certs.CertificateID([]string{name}), alive)
	other := "a"
	if owner == "a" {
		other = "b"
	}
	ed, _ := newOnDemandEdge(t, e, pools.NewTable(onDemandPools(ask.URL), nil, nil, pools.TableOptions{}), 60*time.Second,
		agentSetup{self: other, alive: alive}, agentSetup{self: owner, alive: alive})
	roots := e.Roots(t)
	before := e.Orders()
	leaf, err := ed.handshake(e, name, roots)
	if err != nil {
		t.Fatal(err)
	}
	if err := leaf.VerifyHostname(name); err != nil {
		t.Fatal(err)
	}
	if e.Orders() != before+1 {
		t.Fatalf("orders %d -> %d, want one", before, e.Orders())
	}
	st, err := ed.backend.RenewalState(context.Background(), certs.CertificateID([]string{name}))
	if err != nil {
		t.Fatal(err)
	}
	if st.Owner != owner {
		t.Fatalf("ordered by %q, want the owner %q", st.Owner, owner)
	}
	reqs, err := ed.backend.OnDemandRequests(context.Background())
	if err != nil || len(reqs) != 1 || reqs[0].RequestedBy != other || reqs[0].Pool != "saas" {
		t.Fatalf("requests %+v %v, want one from %s for pool saas", reqs, err, other)
	}
}

// On the owner, a handshake for a name another agent already asked it to
// order waits for that order instead of placing a second one (the lease
// does not keep its own holder out).
func TestOnDemandOwnerHandshakeJoinsRequestedOrder(t *testing.T) {
	e := startPebble(t)
	ask := newAskServer(t)
	alive := []string{"a", "b"}
	const name = "both.shops.example.com"
	owner := certs.Owner(certs.CertificateID([]string{name}), alive)
	other := "a"
	if owner == "a" {
		other = "b"
	}
	ed, ods := newOnDemandEdge(t, e, pools.NewTable(onDemandPools(ask.URL), nil, nil, pools.TableOptions{}), 60*time.Second,
		agentSetup{self: other, alive: alive}, agentSetup{self: owner, alive: alive})
	roots := e.Roots(t)
	before := e.Orders()
	viaOther := make(chan error, 1)
	go func() { _, err := ed.handshake(e, name, roots); viaOther <- err }()
	waitFor(t, 30*time.Second, "the request row", func() bool {
		reqs, _ := ed.backend.OnDemandRequests(context.Background())
		return len(reqs) == 1
	})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cert, err := ods[1].Certificate(ctx, name, certs.OnDemandPolicy{Pool: "saas", Allowed: true, RatePerMinute: 100})
	if err != nil || cert == nil {
		t.Fatalf("owner's own handshake: %v", err)
	}
	select {
	case err := <-viaOther:
		if err != nil {
			t.Fatalf("handshake through the other agent: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("handshake through the other agent did not finish")
	}
	if e.Orders() != before+1 {
		t.Fatalf("orders %d -> %d, want one", before, e.Orders())
	}
}

// Through a real agent: a pool opted in with the CLI's flags gets
// certificates for allowed names on their handshakes, a refused name
// fails with unrecognized_name after one call to the ask URL, bad flags
// exit 3 naming the field, and /metrics counts the decisions.
func TestOnDemandThroughAgent(t *testing.T) {
	e := startPebble(t)
	ask := newAskServer(t)
	token := newToken(t)
	a := startACMEAgent(t, e, token)

	if out, errOut, code := a.cli(token, "pools", "create", "bad", "--ssl-mode", "flexible", "--ssl-domain", "bad.acme.test", "--on-demand-tls"); code != 3 || !strings.Contains(out+errOut, "on_demand_tls") {
		t.Fatalf("on-demand without allow-list or ask URL: exit %d: %s%s", code, out, errOut)
	}
	if out, errOut, code := a.cli(token, "pools", "create", "saas", "--ssl-mode", "flexible", "--ssl-domain", "app.acme.test",
		"--auto-cert=false", "--on-demand-tls", "--on-demand-allow", "*.shops.acme.test", "--on-demand-ask", ask.URL+"/check", "--on-demand-rate", "5"); code != 0 {
		t.Fatalf("pools create: exit %d: %s%s", code, out, errOut)
	}
	out, errOut, code := a.cli(token, "pools", "get", "saas")
	if code != 0 || !strings.Contains(out, "yes allow=*.shops.acme.test ask="+ask.URL+"/check rate=5/min") {
		t.Fatalf("pools get: exit %d: %s%s", code, out, errOut)
	}
	be := startBackend(t, "ondemand-backend", nil)
	if out, errOut, code := a.cli(token, "backends", "add", "saas", be.url()); code != 0 {
		t.Fatalf("backends add: exit %d: %s%s", code, out, errOut)
	}
	roots := e.Roots(t)
	get := func(name string) (*http.Response, error) {
		client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: name},
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, network, a.https)
			},
			DisableKeepAlives: true,
		}}
		return client.Get("https://" + name + "/")
	}
	before := e.Orders()
	// The pool routes the name by its allow-list; the first handshakes
	// may give up after --on-demand-wait on a slow machine, the order
	// goes on and a later one is served.
	waitFor(t, 90*time.Second, "HTTPS for a new allowed name", func() bool {
		resp, err := get("yes.shops.acme.test")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	if e.Orders() != before+1 || ask.count("yes.shops.acme.test") != 1 {
		t.Fatalf("orders %d -> %d, ask calls %d; want one each", before, e.Orders(), ask.count("yes.shops.acme.test"))
	}
	for range 2 {
		if _, err := get("no.shops.acme.test"); err == nil || !strings.Contains(err.Error(), "unrecognized name") {
			t.Fatalf("refused name: %v, want unrecognized_name", err)
		}
	}
	if ask.count("no.shops.acme.test") != 1 || e.Orders() != before+1 {
		t.Fatalf("refused name: ask calls %d, orders %d -> %d", ask.count("no.shops.acme.test"), before, e.Orders())
	}
	_, _, metrics := a.apiRaw(token, "GET", "/metrics", nil)
	for _, want := range []string{`singularity_edge_ondemand_decisions_total{result="issued"} 1`, `singularity_edge_ondemand_decisions_total{result="ask_refused"} 1`,
		`singularity_edge_ondemand_cached_refusals_total 1`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}
