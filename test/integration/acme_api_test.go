package integration

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/singularity-ng/singularity-edge/apitypes"
)

// startACMEAgent starts an agent whose proxy listens where Pebble
// validates (HTTP-01 and TLS-ALPN-01) and whose ACME directory is Pebble.
func startACMEAgent(t *testing.T, e *acmeEnv, token string) *agentProc {
	t.Helper()
	bundle := filepath.Join(t.TempDir(), "pebble-ca.pem")
	if err := os.WriteFile(bundle, e.CAPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	a := &agentProc{
		t: t, dataDir: t.TempDir(), http: e.httpAddr, https: e.tlsAddr, admin: freeAddr(t),
		env: append(os.Environ(), "EDGE_ADMIN_TOKEN="+token, "EDGE_ENCRYPTION_KEY="+newToken(t)+newToken(t)),
	}
	a.start("--acme-directory", e.Dir, "--acme-ca-bundle", bundle, "--acme-email", "ops@acme.test")
	t.Cleanup(a.stop)
	return a
}

// apiRaw calls the admin API and returns the status, headers and body.
func (a *agentProc) apiRaw(token, method, path string, body any) (int, http.Header, string) {
	a.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = strings.NewReader(string(b))
	}
	req, _ := http.NewRequest(method, "http://"+a.admin+path, rd)
	req.Header.Set("Authorization", "Bearer "+token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := (&http.Client{Timeout: 90 * time.Second}).Do(req)
	if err != nil {
		a.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(data)
}

// TestACMEIssueThroughAPIAndCLI obtains certificates through POST
// /api/certificates and `certs issue` against Pebble, serves one, shows
// the renewal state in the API and CLI, drives the duplicate-certificate
// budget until an order is held back (429, exit 8, visible in list and
// show), and checks that no answer or output carries key material.
func TestACMEIssueThroughAPIAndCLI(t *testing.T) {
	e := startPebble(t)
	token := newToken(t)
	a := startACMEAgent(t, e, token)
	var outputs []string
	keep := func(s ...string) { outputs = append(outputs, s...) }

	// Refused requests: field errors, nothing ordered.
	for _, tc := range []struct {
		body  any
		field string
	}{
		{map[string]any{"domain": "bad_name.test"}, "domain"},
		{map[string]any{"domains": []string{"ok.acme.test", "-bad.test"}}, "domains[1]"},
		{map[string]any{"domain": "a.acme.test", "domains": []string{"b.acme.test"}}, "domains"},
		{map[string]any{}, "domain"},
		{map[string]any{"domain": "a.acme.test", "metadata": map[string]string{"k": "v"}}, "metadata"},
	} {
		code, _, body := a.apiRaw(token, "POST", "/api/certificates", tc.body)
		var eb apitypes.ErrorBody
		_ = json.Unmarshal([]byte(body), &eb)
		if code != http.StatusUnprocessableEntity || len(eb.Error.Fields) == 0 || eb.Error.Fields[0].Field != tc.field {
			t.Errorf("POST %v: %d %s, want 422 on %s", tc.body, code, body, tc.field)
		}
	}
	if n := e.Orders(); n != 0 {
		t.Fatalf("refused requests placed %d orders", n)
	}

	// A TLS pool for the name (opted out of automatic certificates, so
	// the POST is what orders), then the certificate: time to served.
	be := startBackend(t, "acme-backend", nil)
	if out, errOut, code := a.cli(token, "pools", "create", "shop", "--ssl-mode", "flexible", "--ssl-domain", "shop.acme.test", "--auto-cert=false"); code != 0 {
		t.Fatalf("pools create: exit %d: %s%s", code, out, errOut)
	}
	if out, errOut, code := a.cli(token, "backends", "add", "shop", be.url()); code != 0 {
		t.Fatalf("backends add: exit %d: %s%s", code, out, errOut)
	}
	roots := e.Roots(t)
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: "shop.acme.test"},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, a.https)
		},
		DisableKeepAlives: true,
	}}
	start := time.Now()
	code, hdr, body := a.apiRaw(token, "POST", "/api/certificates", map[string]any{"domain": "shop.acme.test"})
	issued := time.Since(start)
	keep(body)
	if code != http.StatusCreated {
		t.Fatalf("POST domain: %d %s", code, body)
	}
	var ct apitypes.Certificate
	if err := json.Unmarshal([]byte(body), &ct); err != nil {
		t.Fatal(err)
	}
	if ct.Provider != "acme" || ct.Renewal == nil || ct.Renewal.Phase != "scheduled" || ct.Renewal.LastSuccess == nil ||
		ct.Renewal.Owner == "" || ct.Renewal.RenewAt.IsZero() || hdr.Get("Location") != "/api/certificates/"+ct.ID {
		t.Fatalf("issued certificate view: %s (Location %q)", body, hdr.Get("Location"))
	}
	waitFor(t, 15*time.Second, "HTTPS with the ACME certificate", func() bool {
		resp, err := client.Get("https://shop.acme.test/")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	t.Logf("POST /api/certificates answered 201 after %s; served after %s", issued.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))

	// The same names again: the valid certificate, no new order.
	before := e.Orders()
	code, _, body = a.apiRaw(token, "POST", "/api/certificates", map[string]any{"domains": []string{"shop.acme.test"}})
	keep(body)
	if code != http.StatusOK || e.Orders() != before {
		t.Fatalf("repeated POST: %d (orders %d -> %d) %s", code, before, e.Orders(), body)
	}

	// No wait: 202 with the certificate's location, which appears there.
	code, hdr, body = a.apiRaw(token, "POST", "/api/certificates?wait=0s", map[string]any{"domains": []string{"later.acme.test"}})
	keep(body)
	var order apitypes.CertificateOrder
	_ = json.Unmarshal([]byte(body), &order)
	if code != http.StatusAccepted || order.Status != "pending" || hdr.Get("Location") != "/api/certificates/"+order.ID {
		t.Fatalf("POST ?wait=0s: %d %s (Location %q)", code, body, hdr.Get("Location"))
	}
	waitFor(t, 60*time.Second, "the certificate ordered with a 202", func() bool {
		code, _, body := a.apiRaw(token, "GET", hdr.Get("Location"), nil)
		keep(body)
		return code == http.StatusOK
	})

	// The CLI issues, lists and shows.
	out, errOut, code := a.cli(token, "certs", "issue", "cli.acme.test", "www.cli.acme.test")
	keep(out, errOut)
	if code != 0 || !strings.Contains(out, "issued") {
		t.Fatalf("certs issue: exit %d: %s%s", code, out, errOut)
	}
	out, errOut, code = a.cli(token, "certs", "list")
	keep(out, errOut)
	if code != 0 || !strings.Contains(out, "RENEWAL") || strings.Count(out, "scheduled") != 3 {
		t.Fatalf("certs list: exit %d: %s%s", code, out, errOut)
	}

	// Drive the duplicate-certificate limit (4 per name set per 7 days):
	// the first issuance and three renewals, then the fifth is held back.
	for i := range 3 {
		code, _, body := a.apiRaw(token, "POST", "/api/certificates/"+ct.ID+"/renew", nil)
		keep(body)
		if code != http.StatusOK {
			t.Fatalf("renew %d: %d %s", i+1, code, body)
		}
	}
	before = e.Orders()
	code, hdr, body = a.apiRaw(token, "POST", "/api/certificates/"+ct.ID+"/renew", nil)
	keep(body)
	var eb apitypes.ErrorBody
	_ = json.Unmarshal([]byte(body), &eb)
	if code != http.StatusTooManyRequests || eb.Error.Code != "held_back" || eb.Error.HeldBack == nil ||
		eb.Error.HeldBack.Limit != "duplicate_certs" || eb.Error.HeldBack.Until.Before(time.Now().Add(24*time.Hour)) ||
		hdr.Get("Retry-After") == "" || e.Orders() != before {
		t.Fatalf("fifth order: %d %s (Retry-After %q, orders %d -> %d)", code, body, hdr.Get("Retry-After"), before, e.Orders())
	}
	out, errOut, code = a.cli(token, "certs", "renew", ct.ID)
	keep(out, errOut)
	if code != 8 || !strings.Contains(errOut, "duplicate_certs") {
		t.Fatalf("certs renew while held back: exit %d: %s%s", code, out, errOut)
	}
	code, _, body = a.apiRaw(token, "GET", "/api/certificates/"+ct.ID, nil)
	keep(body)
	var held apitypes.Certificate
	_ = json.Unmarshal([]byte(body), &held)
	if code != 200 || held.Renewal == nil || held.Renewal.Phase != "held_back" || !strings.Contains(held.Renewal.HeldBack, "duplicate_certs") ||
		held.Renewal.HeldBackUntil == nil || held.Renewal.Failures != 0 {
		t.Fatalf("held-back certificate: %d %s", code, body)
	}
	out, errOut, code = a.cli(token, "certs", "list")
	keep(out, errOut)
	if code != 0 || !strings.Contains(out, "held_back (duplicate_certs)") {
		t.Fatalf("certs list while held back: exit %d: %s%s", code, out, errOut)
	}
	out, errOut, code = a.cli(token, "certs", "show", ct.ID)
	keep(out, errOut)
	if code != 0 || !strings.Contains(out, "Held back:") || !strings.Contains(out, "Lease:") || !strings.Contains(out, "Owner:") {
		t.Fatalf("certs show while held back: exit %d: %s%s", code, out, errOut)
	}
	for _, args := range [][]string{{"certs", "list", "-o", "json"}, {"certs", "show", ct.ID, "-o", "json"}, {"certs", "renew", ct.ID, "-o", "json"}} {
		out, errOut, _ := a.cli(token, args...)
		keep(out, errOut)
		if !strings.Contains(out+errOut, "held_back") {
			t.Errorf("%v: no held_back in %s%s", args, out, errOut)
		}
	}
	_, _, body = a.apiRaw(token, "GET", "/api/certificates", nil)
	keep(body, a.log.String())

	for _, o := range outputs {
		if strings.Contains(o, "PRIVATE KEY") || strings.Contains(o, `"private_key"`) || strings.Contains(o, "secret") {
			t.Fatalf("key material in an answer or output: %.300s", o)
		}
	}
}

// TestACMEPoolGetsCertificateOnItsOwn: a TLS pool whose ssl_domain no
// certificate covers gets one without a request; a pool that opts out
// (auto_cert: false) does not.
func TestACMEPoolGetsCertificateOnItsOwn(t *testing.T) {
	e := startPebble(t)
	token := newToken(t)
	a := startACMEAgent(t, e, token)
	be := startBackend(t, "auto-backend", nil)
	// The opted-out pool is created first: the pass that orders for the
	// second pool has seen it.
	if out, errOut, code := a.cli(token, "pools", "create", "manual", "--ssl-mode", "flexible", "--ssl-domain", "manual.acme.test", "--auto-cert=false"); code != 0 {
		t.Fatalf("pools create manual: exit %d: %s%s", code, out, errOut)
	}
	var p apitypes.Pool
	if code := a.api(token, "GET", "/api/pools/manual", nil, &p); code != 200 || p.AutoCert {
		t.Fatalf("opted-out pool: %d auto_cert=%v", code, p.AutoCert)
	}
	start := time.Now()
	if out, errOut, code := a.cli(token, "pools", "create", "auto", "--ssl-mode", "flexible", "--ssl-domain", "auto.acme.test"); code != 0 {
		t.Fatalf("pools create auto: exit %d: %s%s", code, out, errOut)
	}
	if out, errOut, code := a.cli(token, "backends", "add", "auto", be.url()); code != 0 {
		t.Fatalf("backends add: exit %d: %s%s", code, out, errOut)
	}
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: e.Roots(t), ServerName: "auto.acme.test"},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, a.https)
		},
		DisableKeepAlives: true,
	}}
	waitFor(t, 90*time.Second, "HTTPS for the pool with an automatic certificate", func() bool {
		resp, err := client.Get("https://auto.acme.test/")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	t.Logf("pool created -> served with its own certificate after %s", time.Since(start).Round(time.Millisecond))
	var list apitypes.List[apitypes.Certificate]
	if code := a.api(token, "GET", "/api/certificates", nil, &list); code != 200 || len(list.Items) != 1 ||
		list.Items[0].Domain != "auto.acme.test" || list.Items[0].Renewal == nil {
		t.Fatalf("certificates after the automatic order: %d %+v", code, list.Items)
	}
	if n := e.Orders(); n != 1 {
		t.Fatalf("Pebble saw %d orders, want 1 (none for the opted-out pool)", n)
	}
}
