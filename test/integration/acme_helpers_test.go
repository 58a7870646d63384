package integration

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/singularity-ng/singularity-edge/certs"
	"github.com/singularity-ng/singularity-edge/pools"
	"github.com/singularity-ng/singularity-edge/proxy"
	"github.com/singularity-ng/singularity-edge/storage"
)

// Pebble and pebble-challtestsrv are go tools of this module (go.mod's
// tool directives); goTool builds one (once, cached by the go command)
// and returns the binary's path, so the test signals the tool itself.
var toolPaths sync.Map

func goTool(t *testing.T, name string) string {
	t.Helper()
	if p, ok := toolPaths.Load(name); ok {
		return p.(string)
	}
	out, err := exec.Command("go", "tool", "-n", name).Output()
	if err != nil {
		t.Fatalf("go tool -n %s: %v", name, err)
	}
	p := strings.TrimSpace(string(out))
	toolPaths.Store(name, p)
	return p
}

// proc is a running tool process with its output.
type proc struct {
	cmd    *exec.Cmd
	out    *syncBuffer
	exited chan struct{}
}

func startProc(t *testing.T, env []string, path string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(path, args...), out: &syncBuffer{}, exited: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		select {
		case <-p.exited:
		case <-time.After(10 * time.Second):
			t.Errorf("%s did not exit", filepath.Base(path))
		}
		if t.Failed() {
			t.Logf("%s output:\n%s", filepath.Base(path), p.out.String())
		}
	})
	return p
}

// acmeEnv is Pebble, challtestsrv as its DNS, and the ports Pebble
// validates on.
type acmeEnv struct {
	dir       string // Pebble's directory URL
	mgmt      string // Pebble's management address
	challMgmt string // challtestsrv's management address
	dns       string // challtestsrv's DNS address
	caPEM     []byte // trusts Pebble's ACME listener
	httpAddr  string // where Pebble's VA sends HTTP-01 (our proxy)
	tlsAddr   string // where Pebble's VA sends TLS-ALPN-01 (our proxy)
	pebble    *proc
	chall     *proc
	client    *http.Client
}

func port(addr string) int {
	_, p, _ := net.SplitHostPort(addr)
	n, _ := strconv.Atoi(p)
	return n
}

// startPebble starts challtestsrv (DNS only: every name resolves to
// 127.0.0.1) and Pebble validating against httpAddr's and tlsAddr's ports,
// with every order validated afresh.
func startPebble(t *testing.T) *acmeEnv {
	t.Helper()
	e := &acmeEnv{httpAddr: freeAddr(t), tlsAddr: freeAddr(t), mgmt: freeAddr(t), challMgmt: freeAddr(t), dns: freeAddr(t)}
	e.chall = startProc(t, nil, goTool(t, "pebble-challtestsrv"),
		"-http01", "", "-https01", "", "-doh", "", "-tlsalpn01", "",
		"-dnsserver", e.dns, "-management", e.challMgmt, "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "")

	dir := t.TempDir()
	caPEM, certPEM, keyPEM := pebbleListenerCert(t)
	e.caPEM = caPEM
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	listen := freeAddr(t)
	cfg := map[string]any{"pebble": map[string]any{
		"listenAddress":                  listen,
		"managementListenAddress":        e.mgmt,
		"certificate":                    certFile,
		"privateKey":                     keyFile,
		"httpPort":                       port(e.httpAddr),
		"tlsPort":                        port(e.tlsAddr),
		"ocspResponderURL":               "",
		"externalAccountBindingRequired": false,
		"retryAfter":                     map[string]int{"authz": 1, "order": 1},
		"keyAlgorithm":                   "ecdsa",
		"profiles": map[string]any{
			"default":    map[string]any{"description": "90 days", "validityPeriod": 7776000},
			"shortlived": map[string]any{"description": "6 days", "validityPeriod": 518400},
		},
	}}
	b, _ := json.Marshal(cfg)
	cfgFile := filepath.Join(dir, "pebble.json")
	if err := os.WriteFile(cfgFile, b, 0o600); err != nil {
		t.Fatal(err)
	}
	e.pebble = startProc(t, []string{"PEBBLE_VA_NOSLEEP=1", "PEBBLE_AUTHZREUSE=0", "PEBBLE_WFE_NONCEREJECT=0"},
		goTool(t, "pebble"), "-config", cfgFile, "-dnsserver", e.dns)
	e.dir = "https://" + listen + "/dir"

	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	e.client = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	waitFor(t, 30*time.Second, "pebble's directory", func() bool {
		resp, err := e.client.Get(e.dir)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	waitFor(t, 30*time.Second, "challtestsrv", func() bool {
		resp, err := http.Post("http://"+e.challMgmt+"/clear-request-history", "application/json", strings.NewReader(`{"host":"x","type":"http"}`))
		if err != nil {
			return false
		}
		resp.Body.Close()
		return true
	})
	return e
}

// pebbleListenerCert makes a CA and a certificate for 127.0.0.1 signed by
// it: the CA is what --acme-ca-bundle would point at.
func pebbleListenerCert(t *testing.T) (caPEM, certPEM, keyPEM []byte) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test ACME server CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalPKCS8PrivateKey(key)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})
}

// roots returns Pebble's issuing roots (they change at every start).
func (e *acmeEnv) roots(t *testing.T) *x509.CertPool {
	t.Helper()
	resp, err := e.client.Get("https://" + e.mgmt + "/roots/0")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		t.Fatalf("pebble roots: %s", b)
	}
	return pool
}

// orders counts the orders Pebble accepted.
func (e *acmeEnv) orders() int { return strings.Count(e.pebble.out.String(), "Added order") }

// challtest posts to challtestsrv's management API.
func (e *acmeEnv) challtest(t *testing.T, path string, body any) {
	t.Helper()
	b, _ := json.Marshal(body)
	resp, err := http.Post("http://"+e.challMgmt+path, "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("challtestsrv %s: %s", path, resp.Status)
	}
}

// setARI makes Pebble answer renewal info for cert with window.
func (e *acmeEnv) setARI(t *testing.T, certPEM string, start, end time.Time) {
	t.Helper()
	ari, _ := json.Marshal(map[string]any{"suggestedWindow": map[string]string{
		"start": start.UTC().Format(time.RFC3339), "end": end.UTC().Format(time.RFC3339)}})
	b, _ := json.Marshal(map[string]string{"Certificate": certPEM, "ARIResponse": string(ari)})
	u := "https://" + e.mgmt + "/set-renewal-info/"
	resp, err := e.client.Post(u, "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("set-renewal-info: %s %s", resp.Status, body)
	}
}

// edge is the ACME part of one agent, in this process: a real store, the
// certificate cache, the proxy answering challenges and serving
// certificates on the ports Pebble validates on.
type edge struct {
	store   *storage.Store
	backend *certs.StoreBackend
	cache   *certs.Cache
	proxy   *proxy.Server
	logs    *syncBuffer
	log     *zap.Logger
}

// newEdgeStore opens an edge's store (a fresh encryption key), its
// logger into a buffer and the ACME store backend.
func newEdgeStore(t *testing.T, wait certs.ReplicationWaiter) *edge {
	t.Helper()
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	cfg := storage.DefaultConfig()
	cfg.Dir = t.TempDir()
	cfg.EncryptionKey = key
	cfg.SyncWAL = false
	cfg.BlockCacheSize = 8 << 20
	st, err := storage.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ed := &edge{store: st, logs: &syncBuffer{}}
	ed.log = zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(ed.logs), zapcore.DebugLevel))
	// lego logs through a process-wide logger: this edge's buffer gets
	// it, so the secret scan below covers lego's lines too.
	certs.RouteLegoLog(ed.log)
	ed.backend = certs.NewStoreBackend(st, wait)
	return ed
}

func newEdge(t *testing.T, e *acmeEnv, wait certs.ReplicationWaiter) *edge {
	t.Helper()
	ed := newEdgeStore(t, wait)
	st := ed.store

	ccfg := certs.DefaultCacheConfig()
	ccfg.Logger = ed.log
	ed.cache = certs.NewCache(ccfg, st)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = ed.cache.Run(ctx) }()

	table := pools.NewTable([]storage.Pool{{Name: "web", SSLMode: pools.SSLModeFlexible, Default: true}}, nil, nil, pools.TableOptions{})
	pcfg := proxy.DefaultConfig()
	pcfg.HTTPAddr, pcfg.HTTPSAddr, pcfg.Logger = e.httpAddr, e.tlsAddr, ed.log
	var err error
	ed.proxy, err = proxy.New(pcfg, staticRouter{table}, ed.cache, certs.NewChallengeResponder(ed.backend, ed.log))
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
		<-done
		ed.assertNoSecretsLogged(t)
		if t.Failed() {
			t.Logf("edge log:\n%s", ed.logs.String())
		}
		_ = st.Close()
	})
	return ed
}

type staticRouter struct{ t *pools.Table }

func (r staticRouter) Table() *pools.Table { return r.t }

// issuer returns an ACME issuer for Pebble answering only the given
// challenge types.
func (ed *edge) issuer(t *testing.T, e *acmeEnv, mutate func(*certs.ACMEConfig)) *certs.ACMEIssuer {
	t.Helper()
	cfg := certs.DefaultACMEConfig()
	cfg.DirectoryURL = e.dir
	cfg.CABundlePEM = e.caPEM
	cfg.Email = "ops@example.com"
	cfg.Logger = ed.log
	if mutate != nil {
		mutate(&cfg)
	}
	iss, err := certs.NewACMEIssuer(cfg, ed.backend, ed.backend)
	if err != nil {
		t.Fatal(err)
	}
	return iss
}

type members struct {
	self  string
	alive []string
}

func (m members) Self() string    { return m.self }
func (m members) Alive() []string { return m.alive }

func (ed *edge) manager(t *testing.T, self string, issuers []certs.Issuer, mutate func(*certs.ManagerConfig)) *certs.Manager {
	t.Helper()
	cfg := certs.DefaultManagerConfig()
	cfg.Logger = ed.log.With(zap.String("node", self))
	if mutate != nil {
		mutate(&cfg)
	}
	m, err := certs.NewManager(cfg, issuers, ed.backend, ed.backend, members{self: self, alive: []string{self}})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// served does a TLS handshake with the proxy for name and returns the
// leaf it served, verified against roots.
func (ed *edge) served(t *testing.T, e *acmeEnv, name string, roots *x509.CertPool) *x509.Certificate {
	t.Helper()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", e.tlsAddr, &tls.Config{ServerName: name, RootCAs: roots})
	if err != nil {
		t.Fatalf("handshake for %s: %v", name, err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0]
}

// waitServed waits until the proxy serves the certificate with the given
// SHA-256 fingerprint for name.
func (ed *edge) waitServed(t *testing.T, e *acmeEnv, name, fingerprint string, roots *x509.CertPool) {
	t.Helper()
	waitFor(t, 10*time.Second, "the proxy to serve the new certificate for "+name, func() bool {
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", e.tlsAddr, &tls.Config{ServerName: name, RootCAs: roots})
		if err != nil {
			return false
		}
		defer conn.Close()
		return fingerprintOf(conn.ConnectionState().PeerCertificates[0]) == fingerprint
	})
}

func fingerprintOf(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}

// assertNoSecretsLogged checks that no certificate key and no account key
// stored by this edge appears in its log (lego's lines included).
func (ed *edge) assertNoSecretsLogged(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	var secrets []string
	list, err := ed.store.ListCertificates(ctx, "", 0)
	if err != nil {
		t.Error(err)
		return
	}
	for _, c := range list {
		secrets = append(secrets, c.PrivateKeyPEM)
	}
	accts, err := ed.store.ListACMERecords(ctx, "account/", "", 0)
	if err != nil {
		t.Error(err)
		return
	}
	for _, a := range accts {
		secrets = append(secrets, a.Secret)
	}
	logs := ed.logs.String()
	if len(secrets) > 0 && !strings.Contains(logs, "lego") {
		t.Error("lego's log lines did not reach the captured log: the scan would miss them")
	}
	for _, s := range secrets {
		for _, line := range strings.Split(s, "\n") {
			if len(line) >= 40 && !strings.HasPrefix(line, "-----") && strings.Contains(logs, line) {
				t.Errorf("key material in the log: %q", line)
			}
		}
	}
	if strings.Contains(logs, "PRIVATE KEY") {
		t.Error("a PEM private key header appears in the log")
	}
}
