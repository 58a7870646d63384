package integration

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/singularity-ng/singularity-edge/certs"
	"github.com/singularity-ng/singularity-edge/test/itest"
)

// termsProxy stands in front of Pebble (which answers userActionRequired
// only to a registration that does not agree to its terms) and, while
// changed is set, answers every newOrder as a CA whose terms of service
// changed does (RFC 8555 §7.3.3): 403 userActionRequired, the page to act
// on in "instance", the new terms in a Link header. Everything else goes
// to Pebble, which builds its URLs from the Host the client asked for, so
// the whole conversation runs through the proxy.
type termsProxy struct {
	dir      string // the proxy's ACME directory URL
	caPEM    []byte // trusts the proxy's listener
	changed  atomic.Bool
	newOrder atomic.Int32 // newOrder requests seen, refused or passed on
	refused  atomic.Int32
}

func startTermsProxy(t *testing.T, e *acmeEnv) *termsProxy {
	t.Helper()
	p := &termsProxy{}
	p.dir, p.caPEM = startPebbleProxy(t, e, func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodPost || r.URL.Path != "/order-plz" {
			return false
		}
		p.newOrder.Add(1)
		if !p.changed.Load() {
			return false
		}
		p.refused.Add(1)
		base := "https://" + r.Host
		w.Header().Set("Link", fmt.Sprintf(`<%s/terms/v2>;rel="terms-of-service"`, base))
		w.Header().Set("Content-Type", "application/problem+json")
		w.WriteHeader(http.StatusForbidden)
		fmt.Fprintf(w, `{"type":"urn:ietf:params:acme:error:userActionRequired","detail":"Terms of service have changed","instance":"%s/accept-terms","status":403}`, base)
		return true
	}, nil)
	return p
}

// startPebbleProxy serves Pebble through a TLS reverse proxy of its own
// and returns the proxy's directory URL and the CA that trusts it. answer
// may answer a request itself (true) instead of passing it on; modify,
// when set, may change Pebble's answers. Pebble builds its URLs from the
// Host the client asked for, so the whole conversation runs through the
// proxy.
func startPebbleProxy(t *testing.T, e *acmeEnv, answer func(http.ResponseWriter, *http.Request) bool, modify func(*http.Response) error) (string, []byte) {
	t.Helper()
	caPEM, certPEM, keyPEM := itest.ListenerCert(t, "127.0.0.1")
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	pebble, err := url.Parse(e.Dir)
	if err != nil {
		t.Fatal(err)
	}
	rp := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(&url.URL{Scheme: pebble.Scheme, Host: pebble.Host})
			r.Out.Host = r.In.Host
		},
		Transport:      e.Client.Transport,
		ModifyResponse: modify,
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if answer == nil || !answer(w, r) {
			rp.ServeHTTP(w, r)
		}
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv.URL + strings.TrimPrefix(e.Dir, pebble.Scheme+"://"+pebble.Host), caPEM
}

// A CA whose terms of service changed answers every order with
// userActionRequired until the account holder agrees at the CA. The
// agent shows it (phase action_required, the CA's links in the log, a
// gauge per issuer and a counted result), holds every order at that CA,
// for any certificate and on every agent, instead of asking again at
// each certificate's backoff, and orders again once the hold has passed
// and the CA takes orders. Before, it showed only as last_error, phase
// retrying, and each certificate asked again after a minute, doubling.
func TestACMETermsChangedHoldsOrders(t *testing.T) {
	e := startPebble(t)
	ed := newEdge(t, e, nil)
	tp := startTermsProxy(t, e)
	var offset atomic.Int64
	reg := prometheus.NewRegistry()
	iss := ed.issuer(t, e, func(c *certs.ACMEConfig) {
		c.DirectoryURL, c.CABundlePEM = tp.dir, tp.caPEM
		c.Challenges = []string{certs.ChallengeHTTP01}
	})
	m := ed.manager(t, "a", []certs.Issuer{iss}, func(c *certs.ManagerConfig) {
		c.Registerer = reg
		c.Now = func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	})
	first, err := m.Obtain(acmeCtx(t), []string{"terms.example.com"}, "default")
	if err != nil {
		t.Fatalf("Obtain before the terms changed: %v", err)
	}

	tp.changed.Store(true)
	_, err = m.Renew(acmeCtx(t), first.ID)
	var hb *certs.HeldBackError
	if !errors.As(err, &hb) || hb.Limit != certs.LimitCAUserAction || !errors.Is(err, certs.ErrHeldBack) {
		t.Fatalf("renewal refused with userActionRequired: %v, want a %s hold", err, certs.LimitCAUserAction)
	}
	if n := tp.refused.Load(); n != 1 {
		t.Fatalf("%d orders refused, want 1", n)
	}
	st, err := m.Status(context.Background(), first.ID)
	if err != nil || st.Phase != certs.PhaseActionRequired || !st.State.ActionRequired || st.State.Failures != 0 ||
		!strings.Contains(st.State.HeldBack, "userActionRequired") {
		t.Fatalf("status: %+v, %v; want phase %s", st, err, certs.PhaseActionRequired)
	}
	logs := ed.logs.String()
	for _, want := range []string{"requires an action of the ACME account holder", tp.dir[:strings.LastIndex(tp.dir, "/")] + "/accept-terms", "/terms/v2", `"level":"error"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("the log does not say %q", want)
		}
	}
	if v := testutil.ToFloat64(mustCollector(t, reg, "singularity_edge_acme_issuer_action_required", tp.dir)); v != 1 {
		t.Errorf("issuer_action_required = %v, want 1", v)
	}
	if v := testutil.ToFloat64(mustCollector(t, reg, "singularity_edge_acme_orders_total", "user_action_required")); v != 1 {
		t.Errorf("orders_total{result=user_action_required} = %v, want 1", v)
	}
	if cur, err := ed.store.GetCertificate(context.Background(), first.ID); err != nil || cur.Fingerprint != first.Fingerprint {
		t.Fatalf("the refused renewal touched the certificate: %v", err)
	}

	// Another certificate, another agent over the same (replicated)
	// store, and a pass half an hour later: nobody asks the CA.
	other := ed.manager(t, "b", []certs.Issuer{ed.issuer(t, e, func(c *certs.ACMEConfig) {
		c.DirectoryURL, c.CABundlePEM = tp.dir, tp.caPEM
		c.Challenges = []string{certs.ChallengeHTTP01}
	})}, func(c *certs.ManagerConfig) {
		c.Registerer = prometheus.NewRegistry()
		c.Now = func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	})
	if _, err := other.Obtain(acmeCtx(t), []string{"second.terms.example.com"}, "default"); !errors.As(err, &hb) || hb.Limit != certs.LimitCAUserAction {
		t.Fatalf("another certificate's order during the hold: %v", err)
	}
	if n := tp.newOrder.Load(); n != 2 {
		t.Fatalf("%d newOrder requests reached the CA, want 2 (the first order and the one refusal)", n)
	}
	// An operator's renewal half an hour later lifts the hold and asks
	// the CA once; it refuses again, and the hold is set again.
	offset.Store(int64(30 * time.Minute))
	lifted, err := m.Renew(acmeCtx(t), first.ID)
	if !errors.As(err, &hb) || hb.Limit != certs.LimitCAUserAction || len(lifted.LiftedHolds) != 1 || lifted.LiftedHolds[0] != tp.dir {
		t.Fatalf("renewal half an hour later: lifted %q, %v; want the hold at %s lifted and set again", lifted.LiftedHolds, err, tp.dir)
	}
	if n, r := tp.newOrder.Load(), tp.refused.Load(); n != 3 || r != 2 {
		t.Fatalf("%d newOrder requests reached the CA, %d refused; want 3 and 2", n, r)
	}

	// The operator agreed at the CA; after the hold, the next order goes
	// through and clears the state and the gauge.
	tp.changed.Store(false)
	offset.Store(int64(30*time.Minute + certs.UserActionHold + time.Minute))
	renewed, err := m.Renew(acmeCtx(t), first.ID)
	if err != nil || renewed.Certificate.Fingerprint == first.Fingerprint || len(renewed.LiftedHolds) != 0 {
		t.Fatalf("renewal after the hold: lifted %q, %v", renewed.LiftedHolds, err)
	}
	st, err = m.Status(context.Background(), first.ID)
	if err != nil || st.Phase == certs.PhaseActionRequired || st.State.ActionRequired || st.State.HeldBack != "" {
		t.Fatalf("status after the action: %+v, %v", st, err)
	}
	if v := testutil.ToFloat64(mustCollector(t, reg, "singularity_edge_acme_issuer_action_required", tp.dir)); v != 0 {
		t.Errorf("issuer_action_required after a successful order = %v, want 0", v)
	}
}

// mustCollector returns the one series of the metric name in reg whose
// label values include label, as a collector for testutil.ToFloat64.
func mustCollector(t *testing.T, reg *prometheus.Registry, name, label string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetValue() == label {
					v := m.GetGauge().GetValue() + m.GetCounter().GetValue()
					return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "value"}, func() float64 { return v })
				}
			}
		}
	}
	t.Fatalf("no series of %s with label value %q", name, label)
	return nil
}
