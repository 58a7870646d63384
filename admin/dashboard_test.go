package admin

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"go.uber.org/zap"

	"github.com/singularity-ng/singularity-edge/certs"
	"github.com/singularity-ng/singularity-edge/pools"
)

const chromiumPath = "/usr/bin/chromium"

func TestDashboardPage(t *testing.T) {
	h := newHarness(t)
	r := h.do("GET", "/admin/dashboard", nil, noAuth)
	r.expect(t, http.StatusOK, "")
	csp := r.Header.Get("Content-Security-Policy")
	for _, want := range []string{"default-src 'none'", "script-src 'sha256-", "style-src 'sha256-", "connect-src 'self'", "frame-ancestors 'none'"} {
		if !strings.Contains(csp, want) {
			t.Errorf("CSP %q lacks %q", csp, want)
		}
	}
	if strings.Contains(csp, "unsafe-inline") {
		t.Error("CSP allows unsafe-inline")
	}
	body := string(r.Body)
	for _, id := range []string{`id="pools"`, `id="certificates"`, `id="cluster"`, `id="db"`, `id="login"`, `id="token-input"`} {
		if !strings.Contains(body, id) {
			t.Errorf("page lacks %s", id)
		}
	}
	// Self-contained: nothing loaded from elsewhere.
	for _, ext := range []string{"http://", "https://", "src="} {
		if strings.Contains(body, ext) {
			t.Errorf("page references %q", ext)
		}
	}
	r = h.do("GET", "/", nil, noAuth)
	if r.Status != http.StatusOK || !strings.Contains(string(r.Body), "Singularity Edge") {
		t.Fatalf("/ does not lead to the dashboard: %d", r.Status)
	}
}

// TestDashboardBrowser drives the real page in headless Chromium against
// a real store, a real pools.Manager health-checking real backend
// listeners, and the API: the page shows a pool created through the API and
// turns a backend unhealthy when its listener goes away.
func TestDashboardBrowser(t *testing.T) {
	if _, err := os.Stat(chromiumPath); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("chromium is required in CI: %v", err)
		}
		t.Skipf("no %s: %v", chromiumPath, err)
	}

	st := openStore(t, testEncryptionKey())
	mgr := startManager(t, st)
	acme, acmeStore := acmeManager(t, st)
	// The cluster as replication reports it: this node, a ready peer with
	// a stream, and a suspect one still bootstrapping.
	seen := time.Now().Add(-3 * time.Second)
	members := staticCluster{
		{ID: st.NodeID(), Name: "edge-test", Region: "iad", MachineID: "m-iad-1", State: "alive", Ready: true,
			Addresses: map[string]string{"gossip": "10.0.0.1:7946"}},
		{ID: "n-syd", Name: "edge-syd", Region: "syd", MachineID: "m-syd-1", State: "alive", Ready: true, LastSeen: &seen,
			ClockOffsetMS: 42, Addresses: map[string]string{"gossip": "10.0.0.2:7946", "replication": "10.0.0.2:7947"},
			Replication: &ReplicationStatus{Connected: true, PendingChanges: 12, LagSeconds: 3.5, BytesIn: 2048, BytesOut: 4096}},
		{ID: "n-ams", Name: "edge-ams", Region: "ams", State: "suspect", LastSeen: &seen, ClockOffsetMS: -7,
			Replication: &ReplicationStatus{LastError: "dial tcp 10.0.0.3:7947: connect: connection refused"}},
		// Holds the state (Ready) but cannot write, and signs cookies
		// with another key.
		{ID: "n-fra", Name: "edge-fra", Region: "fra", State: "alive", Ready: true, Health: "disk_full", CookieKeyDiffers: true,
			LastSeen: &seen, Replication: &ReplicationStatus{Connected: true}},
	}
	h := newHarnessOn(t, st, withDeps(func(d *Deps) {
		d.Pools = mgr
		d.Ready = mgr.Ready()
		d.ACME = acme
		d.Cluster = members
	}))

	h.createPool(map[string]any{
		"name": "web", "algorithm": "least_connections", "hosts": []string{"example.test", "www.example.test"},
		"health_check_interval": 1000,
		"health_check":          map[string]any{"type": "http", "path": "/", "timeout": 500, "rise": 1, "fall": 1},
	})
	h.createPool(map[string]any{"name": "static", "ssl_mode": "flexible", "ssl_domain": "static.example.test"})
	stay, leave := newTestBackend(t), newTestBackend(t)
	bStay := h.createBackend("web", map[string]any{"url": "http://" + stay.addr(), "region": "iad"})
	bLeave := h.createBackend("web", map[string]any{"url": "http://" + leave.addr(), "region": "iad", "weight": 2})
	ca := newTestCA(t)
	soon := h.uploadCert(ca.leaf(t, time.Now().Add(10*24*time.Hour), "soon.example.test"))
	later := h.uploadCert(ca.leaf(t, time.Now().Add(80*24*time.Hour), "static.example.test", "*.static.example.test"))
	failing := putACMECert(t, h, acmeStore, ca.leaf(t, time.Now().Add(60*24*time.Hour), "acme.example.test"), certs.RenewalState{
		LastAttempt: time.Now().Add(-time.Minute), LastError: "urn:ietf:params:acme:error:connection: refused", Failures: 2,
		NextAttempt: time.Now().Add(10 * time.Minute)})

	// Traffic through the pools API the proxy uses, so rates are not zero.
	trafficCtx, stopTraffic := context.WithCancel(context.Background())
	var trafficWG sync.WaitGroup
	trafficWG.Add(1)
	go func() {
		defer trafficWG.Done()
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-trafficCtx.Done():
				return
			case <-tick.C:
			}
			if p := mgr.Table().Pool("web"); p != nil {
				if b, err := p.Pick(pools.PickRequest{}); err == nil {
					b.Begin().End(pools.Result{Status: 200})
				}
			}
		}
	}()
	defer func() { stopTraffic(); trafficWG.Wait() }()

	parent, cancelAll := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancelAll()
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(parent,
		chromedp.ExecPath(chromiumPath),
		chromedp.Flag("headless", true),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1440, 1000),
	)
	defer cancelAlloc()
	ctx, cancelBrowser := chromedp.NewContext(allocCtx)
	defer cancelBrowser()

	// Console messages: exceptions and errors (a CSP refusal is one) fail
	// the test.
	var consoleMu sync.Mutex
	var console []chromedp.ConsoleMessage
	messages := chromedp.Console(ctx)
	go func() {
		for m, err := range messages {
			if err != nil {
				return
			}
			consoleMu.Lock()
			console = append(console, m)
			consoleMu.Unlock()
		}
	}()

	step := func(what string, timeout time.Duration, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		sctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		if err := chromedp.Do(sctx, actions...); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	row := func(id, health string) chromedp.CSS {
		return chromedp.CSS(`tr[data-backend-id="` + id + `"][data-health="` + health + `"]`)
	}

	step("open the page and sign in", 60*time.Second,
		chromedp.Navigate(h.ts.URL+"/admin/dashboard"),
		chromedp.WaitVisible(chromedp.ID("login")),
		chromedp.SendKeys(chromedp.ID("token-input"), testToken),
		chromedp.Click(chromedp.ID("login-submit")),
		chromedp.WaitNotVisible(chromedp.ID("login")),
	)
	step("pool created through the API", 20*time.Second,
		chromedp.WaitVisible(chromedp.CSS(`[data-pool="web"]`)),
		chromedp.WaitVisible(chromedp.CSS(`[data-pool="static"]`)),
	)
	step("both backends healthy", 20*time.Second,
		chromedp.WaitVisible(row(bStay.ID, "healthy")),
		chromedp.WaitVisible(row(bLeave.ID, "healthy")),
		chromedp.WaitVisible(chromedp.CSS(`[data-pool="web"][data-healthy="2"][data-total="2"]`)),
	)
	step("health by region", 20*time.Second,
		chromedp.WaitVisible(chromedp.CSS(`tr[data-backend-id="`+bStay.ID+`"] [data-region="iad"][data-region-state="healthy"]`)),
		// Once this node's observation is stored, the badge names it.
		chromedp.WaitVisible(chromedp.CSS(`tr[data-backend-id="`+bStay.ID+`"] [data-region="iad"][data-nodes="`+st.NodeID()+`"]`)),
	)
	step("certificates, cluster, storage", 20*time.Second,
		chromedp.WaitVisible(chromedp.CSS(`tr[data-cert-id="`+soon.ID+`"][data-expiring="true"]`)),
		chromedp.WaitVisible(chromedp.CSS(`tr[data-cert-id="`+later.ID+`"][data-expiring="false"]`)),
		chromedp.WaitVisible(chromedp.CSS(`tr[data-cert-id="`+later.ID+`"] [data-phase="manual"]`)),
		chromedp.WaitVisible(chromedp.CSS(`tr[data-cert-id="`+failing.ID+`"] [data-phase="retrying"] [data-field="last-error"]`)),
		chromedp.WaitVisible(chromedp.CSS(`tr[data-table="pools"]`)),
	)
	step("cluster panel", 20*time.Second,
		chromedp.WaitVisible(chromedp.CSS(`tr[data-member-id="`+st.NodeID()+`"][data-state="alive"][data-ready="true"]`)),
		chromedp.WaitVisible(chromedp.CSS(`tr[data-member-id="n-syd"][data-region="syd"][data-ready="true"] [data-field="stream"]`)),
		chromedp.WaitVisible(chromedp.CSS(`tr[data-member-id="n-ams"][data-state="suspect"][data-ready="false"] [data-field="repl-error"]`)),
		chromedp.WaitVisible(chromedp.CSS(`tr[data-member-id="n-fra"][data-ready="false"] [data-field="cookie-key"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#cluster-regions [data-region-summary="ams"]`)),
		pollTrue(`(() => {
			const syd = document.querySelector('tr[data-member-id="n-syd"]');
			const ams = document.querySelector('tr[data-member-id="n-ams"]');
			const fra = document.querySelector('tr[data-member-id="n-fra"]');
			const self = document.querySelector('tr[data-member-id="`+st.NodeID()+`"]');
			const f = (row, name) => row.querySelector('[data-field="' + name + '"]').textContent;
			return f(syd, "pending") === "12" && f(syd, "lag") === "3.5 s" && f(syd, "clock") === "+42 ms" &&
				f(syd, "machine") === "machine m-syd-1" && f(syd, "stream") === "connected" &&
				f(ams, "clock") === "-7 ms" && f(ams, "ready") === "not ready" && f(ams, "repl-error").includes("connection refused") &&
				f(fra, "ready") === "not ready (disk_full)" && f(syd, "ready") === "ready" &&
				f(self, "machine") === "machine m-iad-1" && f(self, "replication") === "this node" &&
				document.getElementById("node-label").textContent === "edge-test · iad";
		})()`),
	)
	// Rates are computed from two readings of the totals.
	step("request rate shown", 20*time.Second,
		pollTrue(`(() => { const e = document.querySelector('[data-pool="web"] [data-field="rate"] b'); return !!e && parseFloat(e.textContent) > 0; })()`),
	)

	leave.close()
	step("backend turns unhealthy", 30*time.Second,
		chromedp.WaitVisible(row(bLeave.ID, "unhealthy")),
		chromedp.WaitVisible(row(bStay.ID, "healthy")),
		chromedp.WaitVisible(chromedp.CSS(`[data-pool="web"][data-healthy="1"]`)),
	)
	step("the failing backend is red with its reason", 20*time.Second,
		chromedp.WaitVisible(chromedp.CSS(`tr[data-backend-id="`+bLeave.ID+`"][data-failing="true"].failing [data-field="reason"]`)),
		pollTrue(`document.querySelector('tr[data-backend-id="`+bLeave.ID+`"] [data-field="reason"]').textContent.includes("health check failing")`),
		chromedp.WaitVisible(chromedp.CSS(`tr[data-backend-id="`+bStay.ID+`"][data-failing="false"] [data-field="checks"]`)),
	)

	// An action: drain the healthy backend from the page; the store has it.
	step("drain from the dashboard", 20*time.Second,
		chromedp.Click(chromedp.CSS(`tr[data-backend-id="`+bStay.ID+`"] button[data-action="drain"]`)),
		chromedp.WaitVisible(row(bStay.ID, "draining")),
		chromedp.WaitVisible(chromedp.CSS(`#action-status[data-state="ok"]`)),
	)
	if b, err := st.GetBackend(context.Background(), bStay.ID); err != nil || !b.Draining {
		t.Fatalf("after the drain button the stored backend is %+v (%v), want draining", b, err)
	}
	waitFor(t, "the drain's audit line", 5*time.Second, func() bool {
		return h.logs.FilterMessage("configuration changed").FilterField(zap.String("key", bStay.ID)).FilterField(zap.String("action", "update")).Len() == 1
	})

	// A second tab of the same browser session signs in without asking.
	tab, cancelTab := chromedp.NewContext(ctx)
	tctx, cancelT := context.WithTimeout(tab, 30*time.Second)
	if err := chromedp.Do(tctx,
		chromedp.Navigate(h.ts.URL+"/admin/dashboard"),
		chromedp.WaitVisible(chromedp.CSS(`[data-pool="web"]`)),
		pollTrue(`document.getElementById("login").hidden`),
	); err != nil {
		t.Fatalf("second tab: %v", err)
	}
	cancelT()
	cancelTab()
	// Let the rates settle on one more poll before the picture.
	step("status updated", 10*time.Second, chromedp.WaitVisible(chromedp.CSS(`#status[data-state="ok"]`)))

	shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	dir := os.Getenv("EDGE_TEST_ARTIFACTS")
	if dir == "" {
		dir = t.TempDir()
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "dashboard.png")
	if err := os.WriteFile(path, shot, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("dashboard screenshot: %s", path)
	// EDGE_DASHBOARD_SCREENSHOT names a further copy (docs/dashboard.png
	// when the picture in the docs is refreshed).
	if extra := os.Getenv("EDGE_DASHBOARD_SCREENSHOT"); extra != "" {
		if err := os.WriteFile(extra, shot, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	consoleMu.Lock()
	for _, m := range console {
		// Without a stored token the page first tries the API as is (an
		// agent on loopback may run without a token); those 401s are
		// expected. Anything else, a CSP refusal included, is a bug.
		if m.Source == "network" && strings.Contains(m.Text, "status of 401") {
			continue
		}
		if m.IsException() || m.Type == chromedp.ConsoleError {
			t.Errorf("browser console: %s (%s:%d)", m, m.URL, m.Line)
		}
	}
	consoleMu.Unlock()

	// A wrong token brings the prompt back with a message.
	step("wrong token is refused", 20*time.Second,
		chromedp.Click(chromedp.ID("logout")),
		chromedp.WaitVisible(chromedp.ID("login")),
		chromedp.SendKeys(chromedp.ID("token-input"), "wrong-token"),
		chromedp.Click(chromedp.ID("login-submit")),
		chromedp.WaitVisible(chromedp.ID("login")),
		pollTrue(`document.getElementById("login-error").textContent.includes("rejected")`),
	)
}

// pollTrue waits until the JavaScript expression is truthy.
func pollTrue(expr string) chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		_, err := chromedp.Poll[bool](expr)(ctx, t)
		return err
	})
}
