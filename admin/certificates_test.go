package admin

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"github.com/singularity-ng/singularity-edge/apitypes"
	"maps"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/singularity-ng/singularity-edge/certs"
	"github.com/singularity-ng/singularity-edge/storage"
)

func TestUploadCertificateJSON(t *testing.T) {
	ca := newTestCA(t)
	expires := time.Now().Add(60 * 24 * time.Hour).Truncate(time.Second)
	leaf := ca.leaf(t, expires, "example.test", "www.example.test")

	for _, path := range []string{"/api/certificates/upload", "/api/certificates"} {
		t.Run(path, func(t *testing.T) {
			h := newHarness(t)
			r := h.do("POST", path, map[string]any{
				"certificate": leaf.CertPEM, "private_key": leaf.KeyPEM, "chain": leaf.ChainPEM,
				"metadata": map[string]string{"owner": "ops"},
			})
			r.expect(t, http.StatusCreated, "")
			var c certificateResponse
			r.json(t, &c)
			if c.Domain != "example.test" || len(c.Names) != 2 || c.Provider != "upload" || c.Issuer != "Admin Test CA" {
				t.Fatalf("certificate %+v", c)
			}
			if !c.ExpiresAt.Equal(expires) || c.DaysLeft != 59 || c.Expired || len(c.Fingerprint) != 64 {
				t.Fatalf("expiry %v days %d fingerprint %q", c.ExpiresAt, c.DaysLeft, c.Fingerprint)
			}
			if !strings.Contains(c.Certificate, "BEGIN CERTIFICATE") || !strings.Contains(c.Chain, "BEGIN CERTIFICATE") {
				t.Fatal("public PEM missing")
			}
			if c.Metadata["owner"] != "ops" {
				t.Fatalf("metadata %v", c.Metadata)
			}
			if r.Header.Get("Location") != "/api/certificates/"+c.ID || r.Header.Get("ETag") != apiETag(c.Version) {
				t.Fatalf("Location %q ETag %q", r.Header.Get("Location"), r.Header.Get("ETag"))
			}
			var raw map[string]any
			r.json(t, &raw)
			for _, k := range []string{"private_key", "PrivateKeyPEM", "key"} {
				if _, ok := raw[k]; ok {
					t.Fatalf("response has field %q", k)
				}
			}
			// The leak checks run on every response: make sure they
			// would see this key.
			if len(h.secrets) == 0 || !keyArmor.MatchString(leaf.KeyPEM) {
				t.Fatal("the harness does not track the uploaded key")
			}
			// Stored with the key (encrypted at rest, clear in memory).
			stored, err := h.store.GetCertificate(context.Background(), c.ID)
			if err != nil || !strings.Contains(stored.PrivateKeyPEM, "PRIVATE KEY") {
				t.Fatalf("stored certificate lacks its key: %v", err)
			}
		})
	}
}

func multipartBody(t *testing.T, files map[string]string, values map[string]string) (string, []byte) {
	t.Helper()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	for name, content := range files {
		fw, err := mw.CreateFormFile(name, name+".pem")
		if err != nil {
			t.Fatal(err)
		}
		_, _ = fw.Write([]byte(content))
	}
	for name, v := range values {
		if err := mw.WriteField(name, v); err != nil {
			t.Fatal(err)
		}
	}
	if err := mw.Close(); err != nil {
		t.Fatal(err)
	}
	return mw.FormDataContentType(), buf.Bytes()
}

func TestUploadCertificateMultipart(t *testing.T) {
	h := newHarness(t)
	ca := newTestCA(t)
	leaf := ca.leaf(t, time.Now().Add(30*24*time.Hour), "files.example.test")

	// As files.
	ct, body := multipartBody(t, map[string]string{"certificate": leaf.CertPEM, "private_key": leaf.KeyPEM, "chain": leaf.ChainPEM}, nil)
	r := h.do("POST", "/api/certificates/upload", body, withContentType(ct))
	r.expect(t, http.StatusCreated, "")
	var c certificateResponse
	r.json(t, &c)
	if c.Domain != "files.example.test" {
		t.Fatalf("certificate %+v", c)
	}

	// As plain values, without a chain.
	leaf2 := ca.leaf(t, time.Now().Add(30*24*time.Hour), "values.example.test")
	ct, body = multipartBody(t, nil, map[string]string{"certificate": leaf2.CertPEM, "private_key": leaf2.KeyPEM})
	h.do("POST", "/api/certificates/upload", body, withContentType(ct)).expect(t, http.StatusCreated, "")

	// The fields of a JSON upload beside the PEM parts: metadata is stored
	// as sent.
	leafMeta := ca.leaf(t, time.Now().Add(30*24*time.Hour), "meta.example.test")
	ct, body = multipartBody(t, nil, map[string]string{"certificate": leafMeta.CertPEM, "private_key": leafMeta.KeyPEM, "metadata": `{"team":"web","ticket":""}`})
	r = h.do("POST", "/api/certificates/upload", body, withContentType(ct))
	r.expect(t, http.StatusCreated, "")
	r.json(t, &c)
	if want := map[string]string{"team": "web", "ticket": ""}; !maps.Equal(c.Metadata, want) {
		t.Fatalf("metadata %v from a form upload, want %v", c.Metadata, want)
	}

	before := h.snapshot()
	leaf3 := ca.leaf(t, time.Now().Add(30*24*time.Hour), "bad.example.test")
	for _, bad := range []string{`not json`, `{"n":1}`, `["web"]`, `{"team":"web"} trailing`} {
		ct, body = multipartBody(t, nil, map[string]string{"certificate": leaf3.CertPEM, "private_key": leaf3.KeyPEM, "metadata": bad})
		h.do("POST", "/api/certificates/upload", body, withContentType(ct)).expect(t, http.StatusUnprocessableEntity, CodeInvalid, "metadata")
	}
	// A form names the domain no more than a JSON upload does, and hears why.
	ct, body = multipartBody(t, nil, map[string]string{"certificate": leaf3.CertPEM, "private_key": leaf3.KeyPEM, "domain": "bad.example.test"})
	h.do("POST", "/api/certificates/upload", body, withContentType(ct)).expect(t, http.StatusUnprocessableEntity, CodeInvalid, "domain")

	ct, body = multipartBody(t, nil, map[string]string{"certificate": leaf3.CertPEM, "private_key": leaf3.KeyPEM, "extra": "x"})
	h.do("POST", "/api/certificates/upload", body, withContentType(ct)).expect(t, http.StatusBadRequest, CodeInvalid, "extra")

	ct, body = multipartBody(t, map[string]string{"certificate": leaf3.CertPEM}, map[string]string{"certificate": leaf3.CertPEM, "private_key": leaf3.KeyPEM})
	h.do("POST", "/api/certificates/upload", body, withContentType(ct)).expect(t, http.StatusBadRequest, CodeInvalid, "certificate")

	ct, body = multipartBody(t, nil, map[string]string{"certificate": leaf3.CertPEM})
	h.do("POST", "/api/certificates/upload", body, withContentType(ct)).expect(t, http.StatusUnprocessableEntity, CodeInvalid, "private_key")

	h.do("POST", "/api/certificates/upload", "garbage", withContentType("multipart/form-data; boundary=xyz")).expect(t, http.StatusBadRequest, CodeInvalid)
	h.do("POST", "/api/certificates/upload", "x", withContentType("multipart/form-data")).expect(t, http.StatusBadRequest, CodeInvalid)

	// Over the upload limit.
	big := strings.Repeat("A", DefaultMaxUploadBytes+10)
	ct, body = multipartBody(t, map[string]string{"certificate": big}, nil)
	h.do("POST", "/api/certificates/upload", body, withContentType(ct)).expect(t, http.StatusRequestEntityTooLarge, CodeTooLarge)

	h.do("POST", "/api/certificates/upload", "certificate=x", withContentType("application/x-www-form-urlencoded")).expect(t, http.StatusUnsupportedMediaType, CodeUnsupportedMediaType)
	h.assertUnchanged(before, "rejected multipart uploads")
}

func TestUploadCertificateRejections(t *testing.T) {
	h := newHarness(t)
	ca := newTestCA(t)
	good := ca.leaf(t, time.Now().Add(30*24*time.Hour), "good.example.test")
	other := ca.leaf(t, time.Now().Add(30*24*time.Hour), "other.example.test")
	expired := ca.leaf(t, time.Now().Add(-time.Minute), "old.example.test")
	h.uploadCert(good)

	before := h.snapshot()
	for _, tc := range []struct {
		name   string
		body   any
		status int
		code   string
		field  string
	}{
		{"duplicate", map[string]string{"certificate": good.CertPEM, "private_key": good.KeyPEM}, 409, CodeConflict, "certificate"},
		{"not PEM", map[string]string{"certificate": "hello", "private_key": good.KeyPEM}, 422, CodeInvalid, "certificate"},
		{"missing key", map[string]string{"certificate": other.CertPEM}, 422, CodeInvalid, "private_key"},
		{"key mismatch", map[string]string{"certificate": other.CertPEM, "private_key": good.KeyPEM}, 422, CodeInvalid, "private_key"},
		{"key in certificate field", map[string]string{"certificate": good.KeyPEM, "private_key": good.KeyPEM}, 422, CodeInvalid, "certificate"},
		{"expired", map[string]string{"certificate": expired.CertPEM, "private_key": expired.KeyPEM}, 422, CodeInvalid, "certificate"},
		{"unknown field", map[string]string{"certificate": other.CertPEM, "private_key": other.KeyPEM, "key": "x"}, 400, CodeInvalid, "key"},
		{"wrong type", `{"certificate": 5}`, 400, CodeInvalid, "certificate"},
		{"acme request on the upload route", map[string]string{"domain": "new.example.test"}, 422, CodeInvalid, "domain"},
		{"domain with upload", map[string]string{"certificate": other.CertPEM, "private_key": other.KeyPEM, "domain": "x.test"}, 422, CodeInvalid, "domain"},
		{"bad metadata", map[string]any{"certificate": other.CertPEM, "private_key": other.KeyPEM, "metadata": map[string]string{"": "x"}}, 422, CodeInvalid, "metadata"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := h.do("POST", "/api/certificates/upload", tc.body)
			r.expect(t, tc.status, tc.code, tc.field)
		})
	}
	// The error names the field but never echoes key material (checked
	// for every response by the harness).
	h.do("POST", "/api/certificates", `{"certificate": "x"`).expect(t, http.StatusBadRequest, CodeInvalid)
	h.do("POST", "/api/certificates", `{}`, withContentType("text/plain")).expect(t, http.StatusUnsupportedMediaType, CodeUnsupportedMediaType)
	big := `{"certificate":"` + strings.Repeat("A", DefaultMaxUploadBytes) + `"}`
	h.do("POST", "/api/certificates/upload", big).expect(t, http.StatusRequestEntityTooLarge, CodeTooLarge)
	h.assertUnchanged(before, "rejected uploads")
}

func TestUploadWithoutEncryptionKey(t *testing.T) {
	h := newHarnessOn(t, openStore(t, nil))
	leaf := newTestCA(t).leaf(t, time.Now().Add(30*24*time.Hour), "nokey.example.test")
	before := h.snapshot()
	r := h.do("POST", "/api/certificates/upload", map[string]string{"certificate": leaf.CertPEM, "private_key": leaf.KeyPEM})
	r.expect(t, http.StatusConflict, CodeNotSupported)
	if !strings.Contains(r.errDetail(t).Message, "EDGE_ENCRYPTION_KEY") {
		t.Fatalf("message %s", r.Body)
	}
	h.assertUnchanged(before, "upload without an encryption key")
}

func TestListGetDeleteCertificates(t *testing.T) {
	h := newHarness(t)
	ca := newTestCA(t)
	var ids []string
	for _, n := range []string{"a.example.test", "b.example.test", "c.example.test"} {
		ids = append(ids, h.uploadCert(ca.leaf(t, time.Now().Add(20*24*time.Hour), n)).ID)
	}
	var page apitypes.List[certificateResponse]
	h.do("GET", "/api/certificates?limit=2", nil).json(t, &page)
	if len(page.Items) != 2 || page.Next == "" {
		t.Fatalf("page %+v next %q", page.Items, page.Next)
	}
	first := append([]certificateResponse(nil), page.Items...)
	h.do("GET", "/api/certificates?after="+page.Next, nil).json(t, &page)
	if len(page.Items) != 1 || page.Next != "" || page.Items[0].ID == first[0].ID || page.Items[0].ID == first[1].ID {
		t.Fatalf("page 2 %+v", page.Items)
	}
	h.do("GET", "/api/certificates?limit=0", nil).expect(t, http.StatusBadRequest, CodeInvalid, "limit")

	r := h.do("GET", "/api/certificates/"+ids[0], nil)
	r.expect(t, http.StatusOK, "")
	var c certificateResponse
	r.json(t, &c)
	if c.ID != ids[0] || c.DaysLeft != 19 || r.Header.Get("ETag") != apiETag(c.Version) {
		t.Fatalf("certificate %+v", c)
	}
	h.do("GET", "/api/certificates/nope", nil).expect(t, http.StatusNotFound, CodeNotFound, "id")

	// In use by a pool: 409 until the pool lets go.
	h.createPool(map[string]any{"name": "site", "ssl_mode": "flexible", "ssl_domain": c.Domain, "ssl_cert_id": c.ID})
	before := h.snapshot()
	r = h.do("DELETE", "/api/certificates/"+c.ID, nil)
	r.expect(t, http.StatusConflict, CodeConflict, "id")
	if !strings.Contains(r.errDetail(t).Message, "site") {
		t.Fatalf("409 does not name the pool: %s", r.Body)
	}
	h.do("DELETE", "/api/certificates/nope", nil).expect(t, http.StatusNotFound, CodeNotFound, "id")
	h.do("DELETE", "/api/certificates/"+ids[1], nil, withHeader("If-Match", `"1-stale"`)).expect(t, http.StatusPreconditionFailed, CodePreconditionFailed)
	h.assertUnchanged(before, "rejected certificate deletes")

	h.do("PATCH", "/api/pools/site", `{"ssl_cert_id":"","ssl_mode":"off"}`).expect(t, http.StatusOK, "")
	h.do("DELETE", "/api/certificates/"+c.ID, nil).expect(t, http.StatusNoContent, "")
	h.do("GET", "/api/certificates/"+c.ID, nil).expect(t, http.StatusNotFound, CodeNotFound)
}

func TestCertificateExpiryView(t *testing.T) {
	now := time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		expires time.Time
		days    int
		expired bool
	}{
		{now.Add(90 * 24 * time.Hour), 90, false},
		{now.Add(13*24*time.Hour + time.Hour), 13, false},
		{now.Add(time.Hour), 0, false},
		{now.Add(-time.Hour), -1, true},
		{now.Add(-49 * time.Hour), -3, true},
	} {
		v := certificateView(storage.Certificate{ExpiresAt: tc.expires}, now)
		if v.DaysLeft != tc.days || v.Expired != tc.expired {
			t.Errorf("expires %v: days %d expired %v, want %d %v", tc.expires, v.DaysLeft, v.Expired, tc.days, tc.expired)
		}
	}
}

// fakeRenewer stands in for the ACME issue that is not built yet; it
// checks that a configured renewer is called and its result shown.
type fakeRenewer struct {
	store *storage.Store
	calls []string
	fail  error
}

func (f *fakeRenewer) Renew(ctx context.Context, id string) (certs.Renewal, error) {
	f.calls = append(f.calls, id)
	if f.fail != nil {
		return certs.Renewal{}, f.fail
	}
	c, err := f.store.GetCertificate(ctx, id)
	return certs.Renewal{Certificate: c}, err
}

func TestRenewCertificate(t *testing.T) {
	h := newHarness(t)
	ca := newTestCA(t)
	up := h.uploadCert(ca.leaf(t, time.Now().Add(20*24*time.Hour), "up.example.test"))

	// An ACME certificate, as the ACME issue will store them.
	acmeLeaf := ca.leaf(t, time.Now().Add(20*24*time.Hour), "acme.example.test")
	_, err := h.store.Update(context.Background(), func(tx *storage.Tx) error {
		return tx.PutCertificate(&storage.Certificate{
			ID: "acme-1", Domain: "acme.example.test", Names: []string{"acme.example.test"},
			CertificatePEM: acmeLeaf.CertPEM, PrivateKeyPEM: acmeLeaf.KeyPEM, Provider: "acme", AutoRenew: true,
			Issuer: "Test ACME", NotBefore: time.Now().Add(-time.Hour), ExpiresAt: time.Now().Add(20 * 24 * time.Hour),
		})
	})
	if err != nil {
		t.Fatal(err)
	}

	before := h.snapshot()
	r := h.do("POST", "/api/certificates/"+up.ID+"/renew", nil)
	r.expect(t, http.StatusConflict, CodeNotSupported)
	if !strings.Contains(r.errDetail(t).Message, "uploaded") {
		t.Fatalf("message %s", r.Body)
	}
	r = h.do("POST", "/api/certificates/acme-1/renew", nil)
	r.expect(t, http.StatusConflict, CodeNotSupported)
	if !strings.Contains(r.errDetail(t).Message, "acme not configured") {
		t.Fatalf("message %s", r.Body)
	}
	h.do("POST", "/api/certificates/nope/renew", nil).expect(t, http.StatusNotFound, CodeNotFound, "id")
	h.assertUnchanged(before, "renewal without ACME")

	renewer := &fakeRenewer{store: h.store}
	h2 := newHarnessOn(t, h.store, withDeps(func(d *Deps) { d.Renewer = renewer }), withConfig(func(c *Config) {
		c.Registerer, c.Gatherer = nil, nil
	}))
	r = h2.do("POST", "/api/certificates/acme-1/renew", nil)
	r.expect(t, http.StatusOK, "")
	var c certificateResponse
	r.json(t, &c)
	if c.ID != "acme-1" || len(renewer.calls) != 1 {
		t.Fatalf("renewed %+v calls %v", c, renewer.calls)
	}
	// A failing order is the CA's answer passed on: 502 acme_failed with
	// its problem (the renewal state keeps it too).
	renewer.fail = errors.New("acme: rate limited")
	req := httptest.NewRequest("POST", "/api/certificates/acme-1/renew", nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	rec := httptest.NewRecorder()
	h2.srv.Handler().ServeHTTP(rec, req)
	if rec.Code != http.StatusBadGateway || !strings.Contains(rec.Body.String(), "rate limited") || !strings.Contains(rec.Body.String(), CodeACMEFailed) {
		t.Fatalf("renewer failure answered %d %s", rec.Code, rec.Body)
	}
}

// TestConcurrentDeleteCertificateAndUseIt races "delete the unused
// certificate" against "create a pool naming it". Exactly one may win each
// round: a pool never names a deleted certificate.
func TestConcurrentDeleteCertificateAndUseIt(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	ca := newTestCA(t)
	for round := 0; round < 10; round++ {
		domain := fmt.Sprintf("r%d.example.test", round)
		c := h.uploadCert(ca.leaf(t, time.Now().Add(90*24*time.Hour), domain))
		pool := fmt.Sprintf("site%d", round)
		var wg sync.WaitGroup
		var del, use response
		wg.Add(2)
		go func() { defer wg.Done(); del = h.do("DELETE", "/api/certificates/"+c.ID, nil) }()
		go func() {
			defer wg.Done()
			use = h.do("POST", "/api/pools", map[string]any{"name": pool, "ssl_mode": "flexible", "ssl_domain": domain, "ssl_cert_id": c.ID})
		}()
		wg.Wait()
		_, certErr := h.store.GetCertificate(ctx, c.ID)
		_, poolErr := h.store.GetPool(ctx, pool)
		switch {
		case del.Status == http.StatusNoContent && use.Status == http.StatusUnprocessableEntity:
			if !errors.Is(certErr, storage.ErrNotFound) || !errors.Is(poolErr, storage.ErrNotFound) {
				t.Fatalf("round %d: delete won, yet certificate err %v, pool err %v", round, certErr, poolErr)
			}
		case use.Status == http.StatusCreated && del.Status == http.StatusConflict:
			if certErr != nil || poolErr != nil {
				t.Fatalf("round %d: pool won, yet certificate err %v, pool err %v", round, certErr, poolErr)
			}
		default:
			t.Fatalf("round %d: delete %d %s, create pool %d %s", round, del.Status, del.Body, use.Status, use.Body)
		}
	}
}
