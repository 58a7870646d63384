package proxy

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/singularity-ng/singularity-edge/pools"
	"github.com/singularity-ng/singularity-edge/storage"
)

// testRouter serves a routing table that tests can swap.
type testRouter struct{ t atomic.Pointer[pools.Table] }

func (r *testRouter) Table() *pools.Table { return r.t.Load() }

// testCA issues certificates for tests.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newTestCA(t testing.TB) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "proxy test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

// pem returns the CA certificate as a PEM bundle (a pool's backend_ca).
func (ca *testCA) pem() string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw}))
}

var serialCounter atomic.Int64

// issue returns a leaf certificate for names (DNS names or IP addresses).
func (ca *testCA) issue(t testing.TB, names ...string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(100 + serialCounter.Add(1)),
		Subject:      pkix.Name{CommonName: names[0]},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

// testCerts is a CertificateSource: exact names first, then *.parent.
type testCerts struct {
	mu    sync.Mutex
	certs map[string]*tls.Certificate
	calls atomic.Int64
}

func (c *testCerts) add(name string, cert tls.Certificate) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.certs == nil {
		c.certs = map[string]*tls.Certificate{}
	}
	c.certs[name] = &cert
}

func (c *testCerts) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	c.calls.Add(1)
	c.mu.Lock()
	defer c.mu.Unlock()
	name := strings.ToLower(hello.ServerName)
	if cert := c.certs[name]; cert != nil {
		return cert, nil
	}
	if i := strings.IndexByte(name, '.'); i > 0 {
		if cert := c.certs["*"+name[i:]]; cert != nil {
			return cert, nil
		}
	}
	return nil, fmt.Errorf("no certificate for %q", hello.ServerName)
}

// testChallenges is a ChallengeSource.
type testChallenges struct {
	http01 map[string]string // host/token -> key authorization
	alpn   map[string]*tls.Certificate
}

func (c *testChallenges) HTTP01(host, token string) (string, bool) {
	v, ok := c.http01[host+"/"+token]
	return v, ok
}

func (c *testChallenges) TLSALPN01(name string) (*tls.Certificate, bool) {
	cert, ok := c.alpn[name]
	return cert, ok
}

// poolSpec describes a pool for newTable.
type poolSpec struct {
	pool     storage.Pool
	backends []string // URLs: http://127.0.0.1:port or https://...
}

func newTable(t testing.TB, specs ...poolSpec) *pools.Table {
	t.Helper()
	return newTableWith(t, pools.TableOptions{}, specs...)
}

// newTableWith is newTable with table options (client certificates).
func newTableWith(t testing.TB, opts pools.TableOptions, specs ...poolSpec) *pools.Table {
	t.Helper()
	var sp []storage.Pool
	var bs []storage.Backend
	for _, s := range specs {
		// The API's defaults for what the pools here leave out (they set
		// no health check), with passive checks off.
		p, d := s.pool, pools.DefaultPool()
		if p.Algorithm == "" {
			p.Algorithm = d.Algorithm
		}
		if p.SSLMode == "" {
			p.SSLMode = d.SSLMode
		}
		p.ValidateBackendCert = p.ValidateBackendCert || p.SSLMode == pools.SSLModeFullStrict
		p.HealthCheckInterval, p.HealthCheck = d.HealthCheckInterval, d.HealthCheck
		p.HealthCheck.MaxFails = pools.PassiveDisabled
		if err := pools.ValidatePool(&p); err != nil {
			t.Fatalf("pool %s: %v", p.Name, err)
		}
		sp = append(sp, p)
		for i, raw := range s.backends {
			u, err := pools.SplitBackendURL(raw)
			if err != nil {
				t.Fatalf("backend %s: %v", raw, err)
			}
			if u.Scheme == "" {
				u.Scheme = "http"
			}
			if u.Port == 0 {
				u.Port = pools.DefaultPort(u.Scheme)
			}
			b := storage.Backend{ID: fmt.Sprintf("%s-%d", p.Name, i+1), PoolName: p.Name, Host: u.Host, Port: u.Port, Scheme: u.Scheme, Weight: pools.DefaultWeight}
			if err := pools.ValidateBackend(&b); err != nil {
				t.Fatalf("backend %s: %v", raw, err)
			}
			bs = append(bs, b)
		}
	}
	opts.CookieKey = []byte("0123456789abcdef0123456789abcdef")
	return pools.NewTable(sp, bs, nil, opts)
}

// testProxy is a started Server with its addresses.
type testProxy struct {
	*Server
	router *testRouter
	http   string
	https  string
}

// flexiblePool starts a proxy with cfg that serves one pool over TLS in
// flexible mode for name (a certificate from a new test CA; the pool is
// named name without ".test"), in front of a recording backend answering
// with answer (nil: the echo).
func flexiblePool(t testing.TB, name string, cfg Config, answer func(c net.Conn, req *strictRequest, nth int) bool) (*testProxy, *testCA, *recBackend) {
	t.Helper()
	ca := newTestCA(t)
	certs := &testCerts{}
	certs.add(name, ca.issue(t, name))
	rb := newRecBackend(t, answer)
	pool := storage.Pool{Name: strings.TrimSuffix(name, ".test"), SSLMode: "flexible", SSLDomain: name}
	table := newTable(t, poolSpec{pool, []string{rb.url()}})
	return startProxy(t, cfg, table, certs, nil), ca, rb
}

func testConfig() Config {
	cfg := DefaultConfig()
	cfg.HTTPAddr = "127.0.0.1:0"
	cfg.HTTPSAddr = "127.0.0.1:0"
	return cfg
}

func startProxy(t testing.TB, cfg Config, table *pools.Table, certs CertificateSource, ch ChallengeSource) *testProxy {
	t.Helper()
	r := &testRouter{}
	r.t.Store(table)
	s, err := New(cfg, r, certs, ch)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.Shutdown(ctx)
	})
	tp := &testProxy{Server: s, router: r}
	h, hs := s.Addrs()
	if h != nil {
		tp.http = h.String()
	}
	if hs != nil {
		tp.https = hs.String()
	}
	return tp
}

// client returns an HTTP client that connects to addr whatever the URL
// says, so URLs can carry real host names (SNI and Host) without DNS.
func client(addr string, roots *x509.CertPool, h2 bool) *http.Client {
	d := &net.Dialer{Timeout: 5 * time.Second}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", addr)
		},
		TLSClientConfig:     &tls.Config{RootCAs: roots},
		ForceAttemptHTTP2:   h2,
		DisableCompression:  true,
		MaxIdleConnsPerHost: 8,
	}
	if !h2 {
		tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	return &http.Client{
		Transport: tr,
		Timeout:   10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}

// echoed is what echoBackend reports about the request it received.
type echoed struct {
	Backend string              `json:"backend"`
	Method  string              `json:"method"`
	Proto   string              `json:"proto"`
	Host    string              `json:"host"`
	URI     string              `json:"uri"`
	TLS     bool                `json:"tls"`
	Header  map[string][]string `json:"header"`
	Body    string              `json:"body"`
}

// echoHandler answers with a JSON description of the request.
func echoHandler(name string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Backend", name)
		_ = json.NewEncoder(w).Encode(echoed{
			Backend: name, Method: r.Method, Proto: r.Proto, Host: r.Host, URI: r.RequestURI,
			TLS: r.TLS != nil, Header: r.Header, Body: string(body),
		})
	})
}

func newEcho(t testing.TB, name string) *httptest.Server {
	t.Helper()
	s := httptest.NewServer(echoHandler(name))
	t.Cleanup(s.Close)
	return s
}

func decodeEcho(t testing.TB, resp *http.Response) echoed {
	t.Helper()
	defer resp.Body.Close()
	var e echoed
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	if err := json.Unmarshal(body, &e); err != nil {
		t.Fatalf("status %d, body %q: %v", resp.StatusCode, body, err)
	}
	return e
}

func get(t testing.TB, c *http.Client, rawURL string) *http.Response {
	t.Helper()
	resp, err := c.Get(rawURL)
	if err != nil {
		t.Fatalf("GET %s: %v", rawURL, err)
	}
	return resp
}

func readAll(t testing.TB, resp *http.Response) string {
	t.Helper()
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// deadAddr returns an address nothing listens on.
func deadAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	return addr
}

// rawExchange writes req to addr and returns everything read until the
// connection closes or idle passes without data.
func rawExchange(t testing.TB, addr, req string, idle time.Duration) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	var sb strings.Builder
	buf := make([]byte, 4096)
	for {
		_ = c.SetReadDeadline(time.Now().Add(idle))
		n, err := c.Read(buf)
		sb.Write(buf[:n])
		if err != nil {
			return sb.String()
		}
	}
}

// readResponse reads one HTTP response from br.
func readResponse(t testing.TB, br *bufio.Reader, method string) (*http.Response, string) {
	t.Helper()
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read response body: %v", err)
	}
	resp.Body.Close()
	return resp, string(body)
}

// waitFor polls cond until it is true or 10 s pass.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
