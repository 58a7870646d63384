package admin

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/singularity-ng/singularity-edge/apitypes"
	"github.com/singularity-ng/singularity-edge/certs"
	"github.com/singularity-ng/singularity-edge/storage"
)

func TestACMEError(t *testing.T) {
	hb := &certs.HeldBackError{Limit: "orders_per_account", Scope: "https://ca/dir", Count: 250, Max: 250, Window: 3 * time.Hour, Until: time.Now()}
	for _, tc := range []struct {
		err    error
		status int
		code   string
		msg    string
	}{
		{fmt.Errorf("renew: %w", hb), http.StatusTooManyRequests, CodeHeldBack, "orders_per_account"},
		{fmt.Errorf("%w: cert/x held by b", certs.ErrLeaseHeld), http.StatusConflict, CodeConflict, "another agent"},
		{fmt.Errorf("x: %w", storage.ErrNotFound), http.StatusNotFound, CodeNotFound, "not found"},
		{errors.New("acme: error: 400 :: urn:ietf:params:acme:error:connection :: could not resolve"), http.StatusBadGateway, CodeACMEFailed, "could not resolve"},
		{fmt.Errorf("%w: waiting for agents", certs.ErrNotPresented), http.StatusBadGateway, CodeACMEFailed, "not present"},
	} {
		ae := toAPIError(acmeError(tc.err))
		if ae == nil || ae.Status != tc.status || ae.Code != tc.code || !strings.Contains(ae.Message, tc.msg) {
			t.Errorf("acmeError(%v) = %+v", tc.err, ae)
		}
	}
}

type soloMembers string

func (m soloMembers) Self() string    { return string(m) }
func (m soloMembers) Alive() []string { return []string{string(m)} }

// closedAddr is a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}

// acmeManager is a real manager over st whose CA is a loopback address
// nothing listens on: every order fails before reaching a CA.
func acmeManager(t *testing.T, st *storage.Store) (*certs.Manager, *certs.StoreBackend) {
	t.Helper()
	return managerFor(t, st, "https://"+closedAddr(t)+"/dir", nil)
}

// putACMECert stores c as the ACME certificate for its names, with state.
func putACMECert(t *testing.T, h *harness, backend *certs.StoreBackend, c testCert, state certs.RenewalState) storage.Certificate {
	t.Helper()
	h.rememberKeys([]byte(c.KeyPEM))
	row, err := certs.ParseUpload(c.CertPEM, c.KeyPEM, c.ChainPEM, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	row.ID, row.Provider, row.AutoRenew = certs.CertificateID(row.Names), certs.ProviderACME, true
	if _, err := h.store.Update(context.Background(), func(tx *storage.Tx) error { return tx.PutCertificate(row) }); err != nil {
		t.Fatal(err)
	}
	state.CertificateID, state.Names = row.ID, row.Names
	if err := backend.SaveRenewalState(context.Background(), state); err != nil {
		t.Fatal(err)
	}
	return *row
}

// TestCertificateViewsShowRenewalState: GET one and the list carry each
// ACME certificate's renewal state (phase, next attempt, last error, held
// back, owner, lease), uploaded certificates none, and no key material.
func TestCertificateViewsShowRenewalState(t *testing.T) {
	st := openStore(t, testEncryptionKey())
	m, backend := acmeManager(t, st)
	h := newHarnessOn(t, st, withDeps(func(d *Deps) { d.ACME = m; d.Renewer = m }))
	ca := newTestCA(t)
	now := time.Now().UTC()
	failing := putACMECert(t, h, backend, ca.leaf(t, now.Add(60*24*time.Hour), "failing.example.test"), certs.RenewalState{
		LastAttempt: now.Add(-time.Minute), LastError: "urn:ietf:params:acme:error:connection: refused", Failures: 2,
		NextAttempt: now.Add(10 * time.Minute), Owner: "edge-b", LeaseEpoch: 3})
	held := putACMECert(t, h, backend, ca.leaf(t, now.Add(60*24*time.Hour), "held.example.test"), certs.RenewalState{
		LastAttempt: now.Add(-time.Minute), HeldBack: "held back: duplicate_certs for acme-x: 4 in the last 168h0m0s (limit 4)",
		HeldBackUntil: now.Add(time.Hour), NextAttempt: now.Add(time.Hour)})
	fine := putACMECert(t, h, backend, ca.leaf(t, now.Add(60*24*time.Hour), "fine.example.test"), certs.RenewalState{LastSuccess: now})
	uploaded := h.uploadCert(ca.leaf(t, now.Add(60*24*time.Hour), "up.example.test"))

	get := func(id string) apitypes.Certificate {
		r := h.do("GET", "/api/certificates/"+id, nil)
		r.expect(t, http.StatusOK, "")
		var c apitypes.Certificate
		r.json(t, &c)
		return c
	}
	c := get(failing.ID)
	if rn := c.Renewal; rn == nil || rn.Phase != certs.PhaseRetrying || rn.Failures != 2 || !strings.Contains(rn.LastError, "refused") ||
		rn.NextAttempt == nil || !rn.NextAttempt.Equal(now.Add(10*time.Minute).Truncate(time.Nanosecond)) && rn.NextAttempt.Sub(now) < 9*time.Minute ||
		rn.LastOwner != "edge-b" || rn.Owner != st.NodeID() || rn.RenewReason != "lifetime" || rn.RenewAt.IsZero() {
		t.Errorf("failing certificate renewal: %+v", c.Renewal)
	}
	if rn := get(held.ID).Renewal; rn == nil || rn.Phase != certs.PhaseHeldBack || !strings.Contains(rn.HeldBack, "duplicate_certs") || rn.HeldBackUntil == nil {
		t.Errorf("held-back certificate renewal: %+v", rn)
	}
	if rn := get(fine.ID).Renewal; rn == nil || rn.Phase != certs.PhaseScheduled || rn.LastError != "" || rn.LastSuccess == nil {
		t.Errorf("healthy certificate renewal: %+v", rn)
	}
	if rn := get(uploaded.ID).Renewal; rn != nil {
		t.Errorf("uploaded certificate has renewal state %+v", rn)
	}
	r := h.do("GET", "/api/certificates", nil)
	r.expect(t, http.StatusOK, "")
	var list apitypes.List[apitypes.Certificate]
	r.json(t, &list)
	phases := map[string]string{}
	for _, c := range list.Items {
		if c.Renewal != nil {
			phases[c.ID] = c.Renewal.Phase
		}
	}
	if phases[failing.ID] != certs.PhaseRetrying || phases[held.ID] != certs.PhaseHeldBack || phases[fine.ID] != certs.PhaseScheduled || len(phases) != 3 {
		t.Errorf("phases in the list: %v", phases)
	}
}

// manyNames returns n distinct valid names.
func manyNames(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("n%d.example.test", i)
	}
	return out
}

// TestIssueCertificateRequests: POST /api/certificates with domain or
// domains is validated field by field, refused without ACME, and a CA
// that cannot be reached is a 502 whose error the id's 404 then repeats.
func TestIssueCertificateRequests(t *testing.T) {
	ca := newTestCA(t)
	up := ca.leaf(t, time.Now().Add(30*24*time.Hour), "up.example.test")

	off := newHarness(t)
	off.do("POST", "/api/certificates", map[string]any{"domains": []string{"a.example.test"}}).expect(t, http.StatusConflict, CodeNotSupported, "domain")
	// A malformed ?wait= is the client's mistake whether ACME is on or not.
	off.do("POST", "/api/certificates?wait=abc", map[string]any{"domain": "a.example.test"}).expect(t, http.StatusBadRequest, CodeInvalid, "wait")

	st := openStore(t, testEncryptionKey())
	m, _ := acmeManager(t, st)
	h := newHarnessOn(t, st, withDeps(func(d *Deps) { d.ACME = m; d.Renewer = m }))
	for _, tc := range []struct {
		name   string
		path   string
		body   any
		status int
		field  string
	}{
		{"bad name", "/api/certificates", map[string]any{"domain": "bad_name.test"}, 422, "domain"},
		{"bad name in a list", "/api/certificates", map[string]any{"domains": []string{"a.example.test", "-x.test"}}, 422, "domains[1]"},
		{"both shapes", "/api/certificates", map[string]any{"domain": "a.example.test", "domains": []string{"b.example.test"}}, 422, "domains"},
		{"empty list", "/api/certificates", map[string]any{"domains": []string{}}, 422, "domains"},
		{"nothing", "/api/certificates", map[string]any{}, 422, "domain"},
		{"metadata", "/api/certificates", map[string]any{"domain": "a.example.test", "metadata": map[string]string{"k": "v"}}, 422, "metadata"},
		{"domains with an upload", "/api/certificates", map[string]any{"domains": []string{"a.example.test"}, "certificate": up.CertPEM, "private_key": up.KeyPEM}, 422, "domains"},
		{"profile with an upload", "/api/certificates", map[string]any{"profile": "shortlived", "certificate": up.CertPEM, "private_key": up.KeyPEM}, 422, "profile"},
		{"more names than a certificate holds", "/api/certificates", map[string]any{"domains": manyNames(certs.MaxCertificateNames + 1)}, 422, "domains"},
		// Stored as sent or refused: another spelling of a name is not
		// rewritten to the one the certificate would hold.
		{"upper case name", "/api/certificates", map[string]any{"domain": "A.example.test"}, 422, "domain"},
		{"trailing dot", "/api/certificates", map[string]any{"domain": "a.example.test."}, 422, "domain"},
		{"upper case in a list", "/api/certificates", map[string]any{"domains": []string{"a.example.test", "WWW.example.test"}}, 422, "domains[1]"},
		{"repeated name", "/api/certificates", map[string]any{"domains": []string{"a.example.test", "b.example.test", "a.example.test"}}, 422, "domains[2]"},
		{"bad wait", "/api/certificates?wait=forever", map[string]any{"domain": "a.example.test"}, 400, "wait"},
		{"wait too long", "/api/certificates?wait=1h", map[string]any{"domain": "a.example.test"}, 400, "wait"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := h.snapshot()
			r := h.do("POST", tc.path, tc.body)
			code := CodeInvalid
			r.expect(t, tc.status, code, tc.field)
			if after := h.snapshot(); !reflect.DeepEqual(before, after) {
				t.Errorf("a refused request changed the store")
			}
		})
	}

	r := h.do("POST", "/api/certificates", map[string]any{"domain": "new.example.test"})
	r.expect(t, http.StatusBadGateway, CodeACMEFailed)
	id := certs.CertificateID([]string{"new.example.test"})
	r = h.do("GET", "/api/certificates/"+id, nil)
	r.expect(t, http.StatusNotFound, CodeNotFound, "id")
	if msg := r.errDetail(t).Message; !strings.Contains(msg, "not issued yet (pending)") || !strings.Contains(msg, "last attempt") {
		t.Errorf("GET of the failed order's id: %s", msg)
	}
}

// directoryServer is an ACME directory that offers profiles (nil: the
// directory has no profiles field) and nothing else: an order against it
// fails at account registration. It counts the requests it answers.
type directoryServer struct {
	ts       *httptest.Server
	requests atomic.Int32
}

func newDirectoryServer(t *testing.T, profiles map[string]string) *directoryServer {
	t.Helper()
	d := &directoryServer{}
	d.ts = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d.requests.Add(1)
		if r.URL.Path != "/dir" {
			http.NotFound(w, r)
			return
		}
		meta := map[string]any{}
		if profiles != nil {
			meta["profiles"] = profiles
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"newNonce": d.ts.URL + "/nonce", "newAccount": d.ts.URL + "/acct",
			"newOrder": d.ts.URL + "/order", "meta": meta})
	}))
	t.Cleanup(d.ts.Close)
	return d
}

// managerFor is a real manager with one ACME issuer at directory dir.
func managerFor(t *testing.T, st *storage.Store, dir string, caPEM []byte) (*certs.Manager, *certs.StoreBackend) {
	t.Helper()
	backend := certs.NewStoreBackend(st, nil)
	icfg := certs.DefaultACMEConfig()
	icfg.DirectoryURL = dir
	icfg.CABundlePEM = caPEM
	icfg.HTTPTimeout = 5 * time.Second
	iss, err := certs.NewACMEIssuer(icfg, backend, backend)
	if err != nil {
		t.Fatal(err)
	}
	m, err := certs.NewManager(certs.DefaultManagerConfig(), []certs.Issuer{iss}, backend, backend, soloMembers(st.NodeID()))
	if err != nil {
		t.Fatal(err)
	}
	return m, backend
}

// TestIssueRefusesProfileTheCADoesNotOffer: a profile that is not a
// profile name, or that the CA's directory does not offer, is a 422 for
// the field "profile" naming what is offered, and changes nothing: no
// renewal state (an existing certificate keeps its profile, failures and
// next attempt), no order counted in the budget. Before the check, the
// order was counted and the bad profile saved before the issuer refused
// it, and every later renewal asked for it again.
func TestIssueRefusesProfileTheCADoesNotOffer(t *testing.T) {
	dir := newDirectoryServer(t, map[string]string{"classic": "90 days", "shortlived": "6 days"})
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: dir.ts.Certificate().Raw})
	st := openStore(t, testEncryptionKey())
	m, backend := managerFor(t, st, dir.ts.URL+"/dir", caPEM)
	h := newHarnessOn(t, st, withDeps(func(d *Deps) { d.ACME = m; d.Renewer = m }))
	ca := newTestCA(t)
	now := time.Now().UTC()
	existing := putACMECert(t, h, backend, ca.leaf(t, now.Add(60*24*time.Hour), "existing.example.test"), certs.RenewalState{
		Profile: "classic", LastSuccess: now.Add(-time.Hour)})
	ctx := context.Background()
	orders := func() int {
		ts, err := backend.BudgetEvents(ctx, certs.EventOrder, dir.ts.URL+"/dir", time.Time{})
		if err != nil {
			t.Fatal(err)
		}
		return len(ts)
	}

	for _, tc := range []struct {
		name, domain, profile string
		msg                   string
		asksCA                bool
	}{
		{"not offered, new certificate", "new.example.test", "tlsserver", "offers classic, shortlived", true},
		{"not offered, existing certificate", "existing.example.test", "tlsserver", "offers classic, shortlived", true},
		{"case matters", "existing.example.test", "Classic", "offers classic, shortlived", true},
		{"not a name", "new.example.test", "short lived", "not a profile name", false},
		{"control character", "existing.example.test", "classic\n", "not a profile name", false},
		{"too long", "new.example.test", strings.Repeat("p", 65), "at most 64", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stateBefore, err := backend.RenewalState(ctx, existing.ID)
			if err != nil {
				t.Fatal(err)
			}
			before, ordersBefore, asked := h.snapshot(), orders(), dir.requests.Load()
			r := h.do("POST", "/api/certificates", map[string]any{"domain": tc.domain, "profile": tc.profile})
			r.expect(t, http.StatusUnprocessableEntity, CodeInvalid, "profile")
			if msg := r.errDetail(t).Message; !strings.Contains(msg, tc.msg) {
				t.Errorf("message %q lacks %q", msg, tc.msg)
			}
			h.assertUnchanged(before, "a refused profile")
			if n := orders(); n != ordersBefore {
				t.Errorf("the budget counted %d orders for a refused profile", n-ordersBefore)
			}
			if after, err := backend.RenewalState(ctx, existing.ID); err != nil || !reflect.DeepEqual(after, stateBefore) {
				t.Errorf("renewal state changed: %+v, was %+v (%v)", after, stateBefore, err)
			}
			if got := dir.requests.Load() > asked; got != tc.asksCA {
				t.Errorf("asked the CA's directory: %v, want %v", got, tc.asksCA)
			}
		})
	}

	// A CA that offers no profiles takes none.
	bare := newDirectoryServer(t, nil)
	mb, _ := managerFor(t, st, bare.ts.URL+"/dir", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: bare.ts.Certificate().Raw}))
	hb := newHarnessOn(t, st, withDeps(func(d *Deps) { d.ACME = mb }))
	before := hb.snapshot()
	r := hb.do("POST", "/api/certificates", map[string]any{"domain": "new.example.test", "profile": "classic"})
	r.expect(t, http.StatusUnprocessableEntity, CodeInvalid, "profile")
	if msg := r.errDetail(t).Message; !strings.Contains(msg, "offers no profiles") {
		t.Errorf("message %q", msg)
	}
	hb.assertUnchanged(before, "a profile refused by a CA without profiles")

	// A directory that cannot be read says nothing about the input: 502,
	// and still nothing ordered or stored.
	md, _ := acmeManager(t, st)
	hd := newHarnessOn(t, st, withDeps(func(d *Deps) { d.ACME = md }))
	before = hd.snapshot()
	hd.do("POST", "/api/certificates", map[string]any{"domain": "new.example.test", "profile": "classic"}).
		expect(t, http.StatusBadGateway, CodeACMEFailed)
	hd.assertUnchanged(before, "a profile that could not be checked")
}

// TestBlockedRenewalShownAndDeleteForgetsIt: a renewal blocked on a
// stored profile the CA does not offer shows as phase "blocked" with the
// reason; deleting the certificate deletes its renewal state too, so an
// order of the same names afterwards does not inherit the profile,
// failures and backoff (before, they stayed, and a certificate whose CA
// offers no profiles at all could never be ordered again).
func TestBlockedRenewalShownAndDeleteForgetsIt(t *testing.T) {
	st := openStore(t, testEncryptionKey())
	m, backend := acmeManager(t, st)
	h := newHarnessOn(t, st, withDeps(func(d *Deps) { d.ACME = m; d.Renewer = m }))
	ca := newTestCA(t)
	now := time.Now().UTC()
	reason := `certs: profile "tlsserver", kept from an earlier order of this certificate, is not offered by the CA`
	c := putACMECert(t, h, backend, ca.leaf(t, now.Add(20*24*time.Hour), "blocked.example.test"), certs.RenewalState{
		Profile: "tlsserver", LastAttempt: now, LastError: reason, Blocked: reason, Failures: 2,
		NextAttempt: now.Add(time.Hour), Due: now.Add(time.Hour)})
	var view apitypes.Certificate
	r := h.do("GET", "/api/certificates/"+c.ID, nil)
	r.expect(t, http.StatusOK, "")
	r.json(t, &view)
	if view.Renewal == nil || view.Renewal.Phase != certs.PhaseBlocked || view.Renewal.Blocked != reason {
		t.Fatalf("renewal view %+v; want phase blocked with the reason", view.Renewal)
	}
	h.do("DELETE", "/api/certificates/"+c.ID+"?force=true", nil).expect(t, http.StatusNoContent, "")
	rs, err := backend.RenewalState(context.Background(), c.ID)
	if err != nil || rs.Profile != "" || rs.Failures != 0 || rs.Blocked != "" {
		t.Fatalf("renewal state after delete: %+v, %v; want none", rs, err)
	}
	rows, err := backend.DueCertificates(context.Background(), now.Add(48*time.Hour), 0)
	if err != nil || len(rows) != 0 {
		t.Fatalf("due rows after delete: %v, %v", rows, err)
	}
}
