package admin

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"github.com/singularity-ng/singularity-edge/apitypes"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"reflect"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/singularity-ng/singularity-edge/storage"
)

const testToken = "test-token-7f3a9c1e5b2d4086"

// harness is one admin server over a real RocksDB store in a temp dir,
// served by a real HTTP server on 127.0.0.1.
type harness struct {
	t      testing.TB
	store  *storage.Store
	srv    *Server
	ts     *httptest.Server
	reg    *prometheus.Registry
	logs   *observer.ObservedLogs
	client *http.Client
	// secrets are the base64 lines of every private key a test sent; no
	// response may contain any of them.
	mu      sync.Mutex
	secrets []string
}

type harnessOption func(*Config, *Deps)

func withDeps(fn func(*Deps)) harnessOption {
	return func(_ *Config, d *Deps) { fn(d) }
}

func withConfig(fn func(*Config)) harnessOption {
	return func(c *Config, _ *Deps) { fn(c) }
}

func testEncryptionKey() []byte {
	return bytes.Repeat([]byte{0x5a}, 32)
}

func openStore(t testing.TB, encryptionKey []byte) *storage.Store {
	t.Helper()
	cfg := storage.DefaultConfig()
	cfg.Dir = t.TempDir()
	cfg.EncryptionKey = encryptionKey
	cfg.SyncWAL = false
	cfg.BlockCacheSize = 8 << 20
	st, err := storage.Open(cfg)
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

func newHarness(t testing.TB, opts ...harnessOption) *harness {
	t.Helper()
	return newHarnessOn(t, openStore(t, testEncryptionKey()), opts...)
}

func newHarnessOn(t testing.TB, st *storage.Store, opts ...harnessOption) *harness {
	t.Helper()
	core, logs := observer.New(zapcore.DebugLevel)
	reg := prometheus.NewRegistry()
	cfg := DefaultConfig()
	cfg.Token = testToken
	cfg.Registerer, cfg.Gatherer = reg, reg
	cfg.Logger = zap.New(core)
	cfg.Node = NodeInfo{Name: "edge-test", Region: "iad", Version: "test"}
	deps := Deps{Store: st}
	for _, o := range opts {
		o(&cfg, &deps)
	}
	srv, err := New(cfg, deps)
	if err != nil {
		t.Fatalf("admin.New: %v", err)
	}
	ts := httptest.NewServer(srv.Handler())
	t.Cleanup(ts.Close)
	h := &harness{t: t, store: st, srv: srv, ts: ts, reg: reg, logs: logs, client: ts.Client()}
	t.Cleanup(h.checkLogs)
	return h
}

// checkLogs: no log line of any test may carry key material.
func (h *harness) checkLogs() {
	for _, e := range h.logs.All() {
		line := e.Message
		for k, v := range e.ContextMap() {
			line += " " + k + "=" + strings.ReplaceAll(toString(v), "\n", " ")
		}
		if strings.Contains(line, "PRIVATE KEY") {
			h.t.Errorf("a log line contains key material: %.200s", line)
		}
	}
}

func toString(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// response is a finished HTTP exchange.
type response struct {
	Status int
	Header http.Header
	Body   []byte
}

// reqOption changes a request before it is sent.
type reqOption func(*http.Request)

func noAuth(r *http.Request) { r.Header.Del("Authorization") }

func withHeader(k, v string) reqOption {
	return func(r *http.Request) { r.Header.Set(k, v) }
}

func withToken(tok string) reqOption {
	return func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+tok) }
}

func withContentType(ct string) reqOption {
	return func(r *http.Request) {
		if ct == "" {
			r.Header.Del("Content-Type")
			return
		}
		r.Header.Set("Content-Type", ct)
	}
}

// do sends a request. body is nil, a string or []byte (sent raw), or any
// other value (sent as JSON). Every response is checked for what must hold
// of all of them: a request id, no key material, and the error shape.
func (h *harness) do(method, path string, body any, opts ...reqOption) response {
	h.t.Helper()
	var raw []byte
	switch b := body.(type) {
	case nil:
	case string:
		raw = []byte(b)
	case []byte:
		raw = b
	default:
		var err error
		if raw, err = json.Marshal(b); err != nil {
			h.t.Fatalf("marshal body: %v", err)
		}
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(raw)
		h.rememberKeys(raw)
	}
	req, err := http.NewRequest(method, h.ts.URL+path, rd)
	if err != nil {
		h.t.Fatalf("new request: %v", err)
	}
	req.Header.Set("Authorization", "Bearer "+testToken)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for _, o := range opts {
		o(req)
	}
	res, err := h.client.Do(req)
	if err != nil {
		h.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	got, err := io.ReadAll(res.Body)
	if err != nil {
		h.t.Fatalf("read body: %v", err)
	}
	resp := response{Status: res.StatusCode, Header: res.Header, Body: got}
	h.checkResponse(method+" "+path, resp)
	return resp
}

// rememberKeys records the base64 body lines of the PEM private keys in a
// request body (raw or JSON-escaped newlines).
func (h *harness) rememberKeys(body []byte) {
	text := strings.ReplaceAll(string(body), `\n`, "\n")
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, block := range strings.Split(text, "PRIVATE KEY-----")[1:] {
		for _, line := range strings.Split(block, "\n") {
			line = strings.TrimSpace(line)
			if strings.Contains(line, "-----") {
				break // the END line: the key's body is over
			}
			if len(line) >= 32 {
				h.secrets = append(h.secrets, line)
			}
		}
	}
}

// keyArmor matches a PEM private key block with a body.
var keyArmor = regexp.MustCompile(`-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----\s*[A-Za-z0-9+/=]{16}`)

// checkResponse checks what must hold of every response: a request id, no
// key material, and the error shape for errors.
//
// "PRIVATE KEY" may not appear at all in a successful response. Error
// messages about an upload's fields may name the PEM block type the field
// expects ("-----BEGIN PRIVATE KEY-----", as the certs package's hints do),
// so for errors the check is for key material itself: a key block with a
// body, or any line of a key a test sent.
func (h *harness) checkResponse(what string, r response) {
	t := h.t
	t.Helper()
	if r.Status < 400 && bytes.Contains(r.Body, []byte("PRIVATE KEY")) {
		t.Errorf("%s: response body contains PRIVATE KEY", what)
	}
	if keyArmor.Match(r.Body) {
		t.Errorf("%s: response body contains a private key block", what)
	}
	h.mu.Lock()
	for _, secret := range h.secrets {
		if bytes.Contains(r.Body, []byte(secret)) {
			t.Errorf("%s: response body contains a line of a private key", what)
		}
	}
	h.mu.Unlock()
	for k, vs := range r.Header {
		for _, v := range vs {
			if strings.Contains(v, "PRIVATE KEY") {
				t.Errorf("%s: response header %s contains key material", what, k)
			}
		}
	}
	if r.Header.Get("X-Request-Id") == "" {
		t.Errorf("%s: no X-Request-Id", what)
	}
	// /api/health answers 503 with its own shape while not ready.
	if r.Status >= 400 && !strings.HasSuffix(what, "/api/health") {
		var e apitypes.ErrorBody
		if err := json.Unmarshal(r.Body, &e); err != nil || e.Error.Code == "" || e.Error.Message == "" {
			t.Errorf("%s: status %d without the JSON error shape: %s", what, r.Status, r.Body)
		}
		// 502 acme_failed is the CA's refusal passed on, 502
		// join_failed a peer that did not answer, 503 unavailable a node
		// that is not taking writes, 504 not_applied members that did not
		// apply a write within wait_all: answers, not faults of this server.
		if r.Status >= 500 && e.Error.Code != CodeACMEFailed && e.Error.Code != CodeJoinFailed && e.Error.Code != CodeUnavailable &&
			e.Error.Code != apitypes.CodeNotApplied {
			t.Errorf("%s: server error %d: %s", what, r.Status, r.Body)
		}
	}
}

func (r response) json(t testing.TB, v any) {
	t.Helper()
	if err := json.Unmarshal(r.Body, v); err != nil {
		t.Fatalf("decode %s: %v", r.Body, err)
	}
}

func (r response) errDetail(t testing.TB) apitypes.ErrorDetail {
	t.Helper()
	var e apitypes.ErrorBody
	r.json(t, &e)
	return e.Error
}

// expect fails unless the response has status and, for errors, code and
// the named fields (in any order; extra fields are allowed).
func (r response) expect(t testing.TB, status int, code string, fields ...string) {
	t.Helper()
	if r.Status != status {
		t.Fatalf("status %d, want %d: %s", r.Status, status, r.Body)
	}
	if code == "" {
		return
	}
	e := r.errDetail(t)
	if e.Code != code {
		t.Fatalf("code %q, want %q: %s", e.Code, code, r.Body)
	}
	for _, f := range fields {
		found := false
		for _, got := range e.Fields {
			if got.Field == f {
				found = true
			}
		}
		if !found {
			t.Fatalf("no error for field %q: %s", f, r.Body)
		}
	}
}

// storeSnapshot is everything stored, for "a rejected request changed
// nothing" checks. LastIndex alone would show a commit; the rows show what.
type storeSnapshot struct {
	LastIndex    uint64
	Pools        []storage.Pool
	Backends     []storage.Backend
	Certificates []storage.Certificate
	Observations []storage.Observation
}

func (h *harness) snapshot() storeSnapshot {
	h.t.Helper()
	ctx := context.Background()
	var s storeSnapshot
	var err error
	s.LastIndex = h.store.LastIndex()
	if s.Pools, err = h.store.ListPools(ctx, "", 0); err != nil {
		h.t.Fatal(err)
	}
	if s.Backends, err = h.store.ListBackends(ctx, "", 0); err != nil {
		h.t.Fatal(err)
	}
	if s.Certificates, err = h.store.ListCertificates(ctx, "", 0); err != nil {
		h.t.Fatal(err)
	}
	if s.Observations, err = h.store.Observations(ctx, ""); err != nil {
		h.t.Fatal(err)
	}
	return s
}

func (h *harness) assertUnchanged(before storeSnapshot, what string) {
	h.t.Helper()
	after := h.snapshot()
	if !reflect.DeepEqual(before, after) {
		h.t.Fatalf("%s changed the store:\nbefore %+v\nafter  %+v", what, before, after)
	}
}

func (h *harness) createPool(body map[string]any) apitypes.Pool {
	h.t.Helper()
	r := h.do("POST", "/api/pools", body)
	r.expect(h.t, http.StatusCreated, "")
	var p apitypes.Pool
	r.json(h.t, &p)
	return p
}

func (h *harness) createBackend(pool string, body map[string]any) apitypes.Backend {
	h.t.Helper()
	r := h.do("POST", "/api/pools/"+pool+"/backends", body)
	r.expect(h.t, http.StatusCreated, "")
	var b apitypes.Backend
	r.json(h.t, &b)
	return b
}

// testCA issues certificates for upload tests.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  string
}

type testCert struct {
	CertPEM  string
	KeyPEM   string
	ChainPEM string
}

func newTestCA(t testing.TB) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "Admin Test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(10 * 365 * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: c, key: key, pem: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))}
}

// leaf issues a server certificate for names, valid until notAfter.
func (ca *testCA) leaf(t testing.TB, notAfter time.Time, names ...string) testCert {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: names[0]},
		DNSNames:     names,
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return testCert{
		CertPEM:  string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		KeyPEM:   string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})),
		ChainPEM: ca.pem,
	}
}

func (h *harness) uploadCert(c testCert) certificateResponse {
	h.t.Helper()
	r := h.do("POST", "/api/certificates/upload", map[string]string{
		"certificate": c.CertPEM, "private_key": c.KeyPEM, "chain": c.ChainPEM,
	})
	r.expect(h.t, http.StatusCreated, "")
	var cr certificateResponse
	r.json(h.t, &cr)
	return cr
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// apiETag is the ETag of a version as the API shows it.
func apiETag(v apitypes.Version) string {
	return etag(storage.Version{HLC: storage.HLC(v.HLC), Origin: v.Origin, Seq: v.Seq})
}
