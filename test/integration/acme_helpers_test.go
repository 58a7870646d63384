package integration

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"net"
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
	"github.com/singularity-ng/singularity-edge/test/itest"
)

// acmeEnv is Pebble, with challtestsrv as its DNS resolving every name to
// 127.0.0.1, and the ports Pebble validates on.
type acmeEnv struct {
	*itest.Pebble
	httpAddr string // where Pebble's VA sends HTTP-01 (our proxy)
	tlsAddr  string // where Pebble's VA sends TLS-ALPN-01 (our proxy)
}

func port(addr string) int {
	_, p, _ := net.SplitHostPort(addr)
	n, _ := strconv.Atoi(p)
	return n
}

// startPebble starts Pebble validating against httpAddr's and tlsAddr's
// ports, with a 90-day default profile and a 6-day "shortlived" one; env
// goes to Pebble's environment.
func startPebble(t *testing.T, env ...string) *acmeEnv {
	t.Helper()
	e := &acmeEnv{httpAddr: freeAddr(t), tlsAddr: freeAddr(t)}
	e.Pebble = itest.StartPebble(t, itest.PebbleConfig{
		ListenIP: "127.0.0.1", DefaultIP: "127.0.0.1",
		HTTPPort: port(e.httpAddr), TLSPort: port(e.tlsAddr),
		Profiles: map[string]int{"default": 7776000, "shortlived": 518400},
		FreeAddr: func(testing.TB, string) string { return freeAddr(t) },
		Env:      env,
	})
	return e
}

// edge is the ACME part of one agent, in this process: a real store, the
// certificate cache, the proxy answering challenges and serving
// certificates on the ports Pebble validates on.
type edge struct {
	store   *storage.Store
	backend *certs.StoreBackend
	cache   *certs.Cache
	proxy   *proxy.Server
	logs    *itest.SyncBuffer
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
	ed := &edge{store: st, logs: &itest.SyncBuffer{}}
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
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); _ = ed.cache.Run(ctx) }()
	challenges := ed.runChallenges(t, ctx, &wg)

	table := pools.NewTable([]storage.Pool{{Name: "web", SSLMode: pools.SSLModeFlexible, Default: true}}, nil, nil, pools.TableOptions{})
	pcfg := proxy.DefaultConfig()
	pcfg.HTTPAddr, pcfg.HTTPSAddr, pcfg.Logger = e.httpAddr, e.tlsAddr, ed.log
	var err error
	ed.proxy, err = proxy.New(pcfg, staticRouter{table}, ed.cache, challenges)
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
	return ed
}

// runChallenges runs the edge's challenge responder until ctx ends and
// waits for its load, as the agent does before it serves.
func (ed *edge) runChallenges(t *testing.T, ctx context.Context, wg *sync.WaitGroup) *certs.ChallengeResponder {
	t.Helper()
	r := certs.NewChallengeResponder(ed.store, ed.log)
	wg.Add(1)
	go func() { defer wg.Done(); _ = r.Run(ctx) }()
	select {
	case <-r.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("acme challenges not loaded after 10s")
	}
	return r
}

type staticRouter struct{ t *pools.Table }

func (r staticRouter) Table() *pools.Table { return r.t }

// issuer returns an ACME issuer for Pebble answering only the given
// challenge types.
func (ed *edge) issuer(t *testing.T, e *acmeEnv, mutate func(*certs.ACMEConfig)) *certs.ACMEIssuer {
	t.Helper()
	cfg := certs.DefaultACMEConfig()
	cfg.DirectoryURL = e.Dir
	cfg.CABundlePEM = e.CAPEM
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
