package admin

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/singularity-ng/singularity-edge/certs"
)

// termsIssuer is a CA whose terms of service changed while refuse is
// set: it answers every order userActionRequired; otherwise it issues.
type termsIssuer struct {
	t      *testing.T
	ca     *testCA
	refuse atomic.Bool
	orders atomic.Int32
}

func (i *termsIssuer) Key() string { return "https://terms.example.test/dir" }

func (i *termsIssuer) Issue(_ context.Context, req certs.IssueRequest) (*certs.IssuedCertificate, error) {
	i.orders.Add(1)
	if i.refuse.Load() {
		return nil, &certs.UserActionError{Issuer: i.Key(), Instance: "https://terms.example.test/accept",
			Err: errors.New("403 :: urn:ietf:params:acme:error:userActionRequired :: Terms of service have changed")}
	}
	c := i.ca.leaf(i.t, time.Now().Add(90*24*time.Hour), req.Names...)
	block, _ := pem.Decode([]byte(c.CertPEM))
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, err
	}
	return &certs.IssuedCertificate{CertificatePEM: c.CertPEM, ChainPEM: c.ChainPEM, PrivateKeyPEM: c.KeyPEM, Leaf: leaf, IssuerKey: i.Key()}, nil
}

// An operator who renews during the CA's userActionRequired hold has
// typically just acted at the CA: the renewal lifts the hold for the
// issuer, orders there once and is audited. If the CA refuses again, the
// answer is 429 and the hold is set again. Before, the renewal answered
// 429 without asking the CA until the hour ended.
func TestRenewLiftsUserActionHold(t *testing.T) {
	st := openStore(t, testEncryptionKey())
	backend := certs.NewStoreBackend(st, nil)
	iss := &termsIssuer{t: t, ca: newTestCA(t)}
	mcfg := certs.DefaultManagerConfig()
	mcfg.Registerer = prometheus.NewRegistry()
	m, err := certs.NewManager(mcfg, []certs.Issuer{iss}, backend, backend, soloMembers(st.NodeID()))
	if err != nil {
		t.Fatal(err)
	}
	h := newHarnessOn(t, st, withDeps(func(d *Deps) { d.ACME = m; d.Renewer = m }), withConfig(func(c *Config) {
		c.Registerer, c.Gatherer = nil, nil
	}))
	c := putACMECert(t, h, backend, iss.ca.leaf(t, time.Now().Add(60*24*time.Hour), "terms.example.test"), certs.RenewalState{})
	renew := "/api/certificates/" + c.ID + "/renew"
	renewAudits := func() []string {
		var out []string
		for _, row := range h.auditRows() {
			if row.Action == "renew" && row.Object == c.ID {
				out = append(out, strings.Join(row.Changes, "; "))
			}
		}
		return out
	}

	// The terms change: the first renewal is refused and sets the hold,
	// which the operator did not lift, so no audit row.
	iss.refuse.Store(true)
	h.do("POST", renew, nil).expect(t, http.StatusTooManyRequests, CodeHeldBack)
	if n := iss.orders.Load(); n != 1 {
		t.Fatalf("%d orders, want 1", n)
	}
	if rows := renewAudits(); len(rows) != 0 {
		t.Fatalf("audit rows of a renewal that lifted nothing: %q", rows)
	}

	for _, tc := range []struct {
		name   string
		refuse bool
		status int
		code   string
		other  string // another certificate ordered after the renewal
	}{
		{"the CA still refuses: the hold is set again", true, http.StatusTooManyRequests, CodeHeldBack, "refused.example.test"},
		{"the operator agreed: the renewal goes through", false, http.StatusOK, "", "agreed.example.test"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			iss.refuse.Store(tc.refuse)
			before := iss.orders.Load()
			audits := len(renewAudits())
			h.do("POST", renew, nil).expect(t, tc.status, tc.code)
			if n := iss.orders.Load() - before; n != 1 {
				t.Fatalf("%d orders at the held CA, want 1", n)
			}
			rows := renewAudits()
			if len(rows) != audits+1 || !strings.HasPrefix(rows[0], `user_action_hold: ["`+iss.Key()+`"] -> -`) {
				t.Fatalf("audit rows of the renewal: %q; want one more naming the lifted hold at %s", rows, iss.Key())
			}
			st, err := m.Status(context.Background(), c.ID)
			if err != nil {
				t.Fatal(err)
			}
			if st.State.ActionRequired != tc.refuse {
				t.Fatalf("action_required = %v after the renewal, want %v", st.State.ActionRequired, tc.refuse)
			}
			// A refusal holds again for every certificate: an order of
			// another name is not placed.
			_, err = m.Obtain(context.Background(), []string{tc.other}, "")
			var hb *certs.HeldBackError
			if held := errors.As(err, &hb) && hb.Limit == certs.LimitCAUserAction; held != tc.refuse {
				t.Fatalf("another certificate's order after the renewal: %v; held %v, want %v", err, held, tc.refuse)
			}
		})
	}
	if got := iss.orders.Load(); got != 4 {
		t.Fatalf("%d orders in all, want 4 (refused, refused after the lift, issued after the lift, the other name)", got)
	}
}
