// Package agent wires the parts of a Singularity Edge node together and runs
// them in order: the store first, then the in-memory views built from it
// (routing table, certificate cache), then the listeners; on shutdown the
// reverse, draining in-flight requests before the store closes.
package agent

import (
	"context"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/singularity-ng/singularity-edge/admin"
	"github.com/singularity-ng/singularity-edge/certs"
	"github.com/singularity-ng/singularity-edge/discovery"
	"github.com/singularity-ng/singularity-edge/pools"
	"github.com/singularity-ng/singularity-edge/proxy"
	"github.com/singularity-ng/singularity-edge/replication"
	"github.com/singularity-ng/singularity-edge/storage"
)

// Version and Commit identify the build, set at build time with
// -ldflags "-X github.com/singularity-ng/singularity-edge/agent.Version=...
// -X github.com/singularity-ng/singularity-edge/agent.Commit=..." (the
// Makefile does). They are the only package-level variables: the linker
// writes them.
var (
	Version = "dev"
	Commit  = "unknown"
)

// VersionString is "VERSION (commit COMMIT, GOVERSION)".
func VersionString() string {
	return fmt.Sprintf("%s (commit %s, %s)", Version, Commit, runtime.Version())
}

// newBuildInfo is the singularity_edge_build_info gauge: always 1, with the
// build in its labels, so dashboards can join on version and commit.
func newBuildInfo() prometheus.Collector {
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "singularity_edge_build_info",
		Help:        "Build of this agent: version and commit as stamped by -ldflags, and the Go version. Always 1.",
		ConstLabels: prometheus.Labels{"version": Version, "commit": Commit, "goversion": runtime.Version()},
	})
	g.Set(1)
	return g
}

// readyTimeout bounds the wait for the first routing table; it is built
// from the local store, so this only trips when the store is unusable.
const readyTimeout = 2 * time.Minute

// Agent is one running node.
type Agent struct {
	cfg    Config
	logger *zap.Logger

	store  *storage.Store
	pools  *pools.Manager
	certs  *certs.Cache
	acme   *certs.Manager // nil: ACME off
	auto   *autoCert      // nil: ACME off
	proxy  *proxy.Server
	admin  *admin.Server
	health *healthServer        // nil when cfg.HealthAddr is empty
	disc   *discovery.Discovery // nil: a cluster of one
	repl   *replication.Engine  // nil with disc
	member *membership          // nil with disc: cluster join and leave

	// onDemand is the TLS listener's certificate source; nil: ACME off.
	onDemand *certs.OnDemand

	// challenges answers ACME challenges from memory; nil: ACME off.
	challenges *certs.ChallengeResponder

	cancel context.CancelFunc // stops the background loops
	wg     sync.WaitGroup
	errs   chan error // a background loop that failed
	// ready is closed once the proxy serves: routing table loaded,
	// listeners open. The certificate index loads after it (a handshake
	// that arrives first waits for the index; see Start). /api/health
	// and the health listener say ready from then on, as long as the
	// store can commit, so a load balancer sends no traffic before.
	ready chan struct{}
}

// Run starts an agent and blocks until ctx is cancelled or a part fails,
// then shuts it down within cfg.ShutdownTimeout. When replication ends with
// a change of this node's identity (ErrNewIdentity) or a rebuilt store
// (ErrRebuilt), Run restarts the agent in-process: everything is keyed by
// the node id or reads the store, so every part is shut down in order and
// built again on the reopened store, which then bootstraps or rejoins; the
// node is not ready until the new incarnation is.
func Run(ctx context.Context, cfg Config) error {
	logger, err := NewLogger(cfg.LogLevel)
	if err != nil {
		return err
	}
	defer func() { _ = logger.Sync() }()
	return runRestarting(ctx, cfg, logger, nil)
}

// runRestarting runs incarnations of the agent until one ends for a reason
// other than a restart. started, when set, is called with each incarnation
// once it serves (tests).
func runRestarting(ctx context.Context, cfg Config, logger *zap.Logger, started func(*Agent)) error {
	quick := 0 // restarts in a row of incarnations that lived less than restartQuiet
	for restarts := 0; ; restarts++ {
		began := time.Now()
		err := runOnce(ctx, cfg, logger, started)
		reason := restartReason(err)
		if reason == "" || ctx.Err() != nil {
			return err
		}
		// Each cause is cured by the restart itself (a new id, an
		// emptied store); should one come back at once, back off rather
		// than spin.
		wait := time.Duration(0)
		if time.Since(began) < restartQuiet {
			wait = min(time.Second<<quick, restartBackoffMax)
			quick++
		} else {
			quick = 0
		}
		logger.Warn("restarting the agent in-process: every part is stopped and built again on the reopened store",
			zap.String("reason", reason), zap.Int("restart", restarts+1), zap.Duration("after", wait), zap.Error(err))
		if wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return err
			case <-t.C:
			}
		}
	}
}

// An incarnation that ends for a restart within restartQuiet of its start
// delays the next one, doubling up to restartBackoffMax.
const (
	restartQuiet      = time.Minute
	restartBackoffMax = 30 * time.Second
)

// errDamageFound: the verification Open deferred found a damaged family.
// The next Open finds the mark it left and verifies before returning.
var errDamageFound = errors.New("damaged column family found after start")

// restartReason says why err asks for an in-process restart ("" when it
// does not).
func restartReason(err error) string {
	switch {
	case errors.Is(err, replication.ErrNewIdentity):
		return "the store took a new node id (a peer holds newer writes of the old one: a restored or copied volume)"
	case errors.Is(err, replication.ErrRebuilt):
		return "the store was found behind a tombstone purge and is emptied to bootstrap from a peer"
	case errors.Is(err, errDamageFound):
		return "the background verification found a damaged column family: the store is reopened and verified before anything is served " +
			"(a derived family is rebuilt from the tables; a damaged table stops the agent with the way out)"
	}
	return ""
}

// runOnce runs one incarnation: New, Start, wait, Shutdown.
func runOnce(ctx context.Context, cfg Config, logger *zap.Logger, started func(*Agent)) error {
	a, err := New(cfg, logger)
	if err != nil {
		return err
	}
	if err := a.Start(ctx); err != nil {
		// Start may have opened some listeners already.
		stopCtx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
		defer cancel()
		return errors.Join(err, a.Shutdown(stopCtx))
	}
	if started != nil {
		started(a)
	}
	var runErr error
	select {
	case <-ctx.Done():
		logger.Info("shutting down", zap.Duration("drain_timeout", cfg.ShutdownTimeout))
	case runErr = <-a.errs:
		if restartReason(runErr) != "" {
			logger.Warn("stopping this incarnation of the agent for an in-process restart", zap.Error(runErr))
		} else {
			logger.Error("a component failed; shutting down", zap.Error(runErr))
		}
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	return errors.Join(runErr, a.Shutdown(shutdownCtx))
}

// New opens the store and builds every part without binding any port.
func New(cfg Config, logger *zap.Logger) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	var encKey []byte
	if cfg.EncryptionKey != "" {
		k, err := storage.ParseEncryptionKey(cfg.EncryptionKey)
		if err != nil {
			return nil, fmt.Errorf("EDGE_ENCRYPTION_KEY: %w", err)
		}
		encKey = k
	}
	cookieKey, err := deriveCookieKey(cfg.CookieKey, encKey)
	if err != nil {
		return nil, err
	}
	if cfg.ACMEDirectory != "" && encKey == nil {
		// Account and certificate keys are stored sealed: without a key
		// every order would fail when its key is written.
		logger.Warn("ACME is on but EDGE_ENCRYPTION_KEY is not set: no certificate can be obtained, because private keys are only stored encrypted; set EDGE_ENCRYPTION_KEY (the same on every node), or turn ACME off with EDGE_ACME_DIRECTORY=",
			zap.String("acme_directory", cfg.ACMEDirectory))
	}
	if cfg.CookieKey == "" && encKey == nil {
		logger.Warn("neither EDGE_COOKIE_KEY nor EDGE_ENCRYPTION_KEY is set: sticky-session cookies are signed with a key of this process only")
	}

	// Both checks run before RocksDB opens the directory, so that a root-owned
	// volume or a moved Machine is reported in words, not as an open error.
	if err := checkDataDir(cfg.DataDir); err != nil {
		return nil, err
	}
	if cfg.Fly.PrivateIP != "" {
		if err := notePrivateAddress(cfg.DataDir, cfg.Fly.PrivateIP, logger); err != nil {
			return nil, err
		}
	}
	if cfg.Fly.OnFly() {
		logger.Info("running on Fly.io", zap.String("app", cfg.Fly.AppName), zap.String("region", cfg.Fly.Region),
			zap.String("machine_id", cfg.Fly.MachineID), zap.String("private_ip", cfg.Fly.PrivateIP))
	}

	if cfg.MemoryLimit > 0 {
		debug.SetMemoryLimit(cfg.MemoryLimit)
	}
	registry := prometheus.NewRegistry()
	registry.MustRegister(newBuildInfo())

	scfg := storage.DefaultConfig()
	scfg.Dir = cfg.DataDir
	scfg.EncryptionKey = encKey
	scfg.BlockCacheSize = cfg.BlockCacheSize
	scfg.RowCacheSize = cfg.RowCacheSize
	if cfg.RowCacheSize == 0 {
		scfg.RowCacheSize = -1 // the store's "off"
	}
	scfg.Logger = logger
	scfg.Registerer = registry
	// Open leaves the checksum verification of every family to
	// VerifyDeferred, run once the agent serves (Start): it costs seconds
	// of CPU at a million rows, and reads verify the blocks they read.
	scfg.VerifyInBackground = true
	if scfg.Now, err = storeClock(os.Getenv, logger); err != nil {
		return nil, err
	}
	if cfg.GossipAddr != "" {
		// A node that found itself behind a tombstone purge handed its
		// own writes to a peer and asked to be emptied at this start.
		done, err := replication.CompleteRebuild(scfg)
		if err != nil {
			return nil, err
		}
		if done {
			logger.Warn("the store was emptied as the replication engine asked (this node was behind a tombstone purge); it bootstraps from a peer")
		}
	}
	store, err := storage.Open(scfg)
	if err != nil {
		return nil, err
	}
	a := &Agent{cfg: cfg, logger: logger, store: store, errs: make(chan error, 4), ready: make(chan struct{})}
	if err := a.build(registry, cookieKey); err != nil {
		a.close()
		return nil, err
	}
	return a, nil
}

func (a *Agent) build(registry *prometheus.Registry, cookieKey []byte) error {
	cfg := a.cfg

	pcfg := pools.DefaultConfig()
	if cfg.BackendCAFile != "" {
		roots, err := backendRoots(cfg.BackendCAFile)
		if err != nil {
			return err
		}
		pcfg.BackendRootCAs = roots
	}
	// Pools name client certificates by id; the certificate cache (built
	// below, before anything starts) holds them with their keys.
	pcfg.ClientCertificates = func(id string) (*tls.Certificate, bool) { return a.certs.ByID(id) }
	pcfg.NodeID = a.store.NodeID()
	pcfg.Region = cfg.Region
	pcfg.CookieKey = cookieKey
	pcfg.Logger = a.logger
	pcfg.Registerer = registry
	pcfg.Health.Budget = cfg.HealthCheckBudget
	pcfg.Health.Concurrency = cfg.HealthCheckConcurrency
	pcfg.Metrics.BackendPools = splitList(cfg.MetricsBackendPools)
	pcfg.Metrics.MaxBackends = cfg.MetricsMaxBackends
	a.pools = pools.NewManager(pcfg, a.store)

	ccfg := certs.DefaultCacheConfig()
	ccfg.Logger = a.logger
	ccfg.Registerer = registry
	a.certs = certs.NewCache(ccfg, a.store)

	xcfg := proxy.DefaultConfig()
	xcfg.HTTPAddr = cfg.HTTPAddr
	xcfg.HTTPSAddr = cfg.HTTPSAddr
	xcfg.HTTPProxyProtocol = cfg.ProxyProtocol
	xcfg.HTTPSProxyProtocol = cfg.ProxyProtocol
	xcfg.AllowPoolHeader = cfg.AllowPoolHeader
	xcfg.RedirectHTTPSPort = cfg.PublicHTTPSPort
	xcfg.MinBodyRate = cfg.MinBodyRate
	xcfg.BodyRateGrace = cfg.BodyRateGrace
	xcfg.MaxBackendConnsPerClientAddr = cfg.MaxBackendConnsPerClient
	xcfg.TunnelEventLoops = cfg.TunnelEventLoops
	trusted, err := ParseTrustedProxies(cfg.TrustedProxies)
	if err != nil {
		return fmt.Errorf("--trusted-proxies: %w", err)
	}
	xcfg.TrustedProxies = trusted
	if xcfg.ProxyProtocolFrom, err = ParseTrustedProxies(cfg.ProxyProtocolFrom); err != nil {
		return fmt.Errorf("--proxy-protocol-from: %w", err)
	}
	xcfg.AccessLog = cfg.AccessLog
	xcfg.Logger = a.logger.Named("proxy")
	xcfg.Registerer = registry
	challenges, err := a.buildACME(registry)
	if err != nil {
		return fmt.Errorf("acme: %w", err)
	}
	var certSource proxy.CertificateSource = a.certs
	if a.acme != nil {
		od, err := a.buildOnDemand(registry)
		if err != nil {
			return fmt.Errorf("on-demand tls: %w", err)
		}
		a.onDemand, certSource = od, od
		a.acme.SetOnDemandGate(od)
	}
	px, err := proxy.New(xcfg, a.pools, certSource, challenges)
	if err != nil {
		return fmt.Errorf("proxy: %w", err)
	}
	a.proxy = px

	node := admin.NodeInfo{ID: a.store.NodeID(), Name: cfg.NodeName, Region: cfg.Region, Version: Version}
	acfg := admin.DefaultConfig()
	acfg.Addr = cfg.AdminAddr
	acfg.Token = cfg.AdminToken
	acfg.Registerer = registry
	acfg.Gatherer = registry
	acfg.RegisterRuntimeCollectors = true
	acfg.MetricsPublic = cfg.MetricsPublic
	acfg.Node = node
	acfg.Logger = a.logger.Named("admin")
	var members admin.Cluster = admin.SingleMember{
		ID: node.ID, Name: node.Name, Region: node.Region, Version: Version, Self: true, State: "alive",
		Addresses: map[string]string{"admin": cfg.AdminAddr},
	}
	disc, err := newDiscovery(context.Background(), cfg, a.store.NodeID(), cookieKeyFingerprint(cookieKey), a.healthStatus, a.logger, registry)
	if err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	if disc != nil {
		a.disc = disc
		eng, err := newReplication(cfg, a.store, disc, a.logger, registry)
		if err != nil {
			return fmt.Errorf("replication: %w", err)
		}
		a.repl = eng
		members = eng
		a.member = &membership{disc: disc, repl: eng, log: a.logger.Named("cluster")}
	}
	deps := admin.Deps{Store: a.store, Pools: a.pools, Cluster: members, Ready: a.ready}
	if a.member != nil {
		deps.Membership = a.member
		deps.Replication = adminWait{a.repl}
	}
	if a.repl != nil {
		sc := secretCheck{keys: a.repl, members: a.repl}
		sc.register(registry)
		deps.Secrets = sc.verdict
	}
	if a.acme != nil {
		deps.Renewer = a.acme
		deps.ACME = a.acme
	}
	srv, err := admin.New(acfg, deps)
	if err != nil {
		return fmt.Errorf("admin: %w", err)
	}
	a.admin = srv

	if cfg.HealthAddr != "" {
		a.health = newHealthServer(cfg.HealthAddr, a.readiness, a.admin.Warnings)
	}
	return nil
}

// readiness is the health listener's verdict: nil when the agent can do its
// job, else why not, as "status: reason". It is the admin API's
// (admin.Server.Readiness), so the platform's check and GET /api/health
// agree: starting, draining, leaving or left, and a store that cannot
// commit (a full disk, probed again at each check so the node comes back
// once space is freed) or is resyncing a table.
func (a *Agent) readiness() error {
	status, reason := a.admin.Readiness()
	switch {
	case status == "":
		return nil
	case reason == "":
		return errors.New(status)
	}
	return fmt.Errorf("%s: %s", status, reason)
}

// healthStatus is the readiness verdict this node gossips (Meta.Health):
// "ok", or the status /healthz answers.
func (a *Agent) healthStatus() string {
	if a.admin == nil {
		return "starting"
	}
	if status, _ := a.admin.Readiness(); status != "" {
		return status
	}
	return "ok"
}

// Start runs the background loops, waits until the routing table is
// loaded, and then opens the listeners, so the first request already sees
// the stored configuration; the certificate index loads after that.
func (a *Agent) Start(ctx context.Context) error {
	bg, cancel := context.WithCancel(context.WithoutCancel(ctx))
	a.cancel = cancel
	if err := a.admin.Start(ctx); err != nil {
		return fmt.Errorf("admin API on %s: %w", a.cfg.AdminAddr, err)
	}
	// The health listener opens early and answers 503 until the routing
	// table is loaded, so a platform check sees "starting", not "refused".
	if a.health != nil {
		if err := a.health.Start(ctx); err != nil {
			return fmt.Errorf("health listener on %s: %w", a.cfg.HealthAddr, err)
		}
	}
	if a.disc != nil {
		// Membership and replication start first: an empty node fills
		// its store from a peer before anything reads it. The engine
		// gossips this node ready once it holds the cluster's state.
		if err := a.disc.Start(ctx); err != nil {
			return fmt.Errorf("cluster: %w", err)
		}
		a.runLoop(bg, "discovery", a.disc.Run)
		if err := a.repl.Start(ctx); err != nil {
			return fmt.Errorf("replication: %w", err)
		}
		a.runLoop(bg, "replication", a.repl.Run)
		select {
		case <-a.repl.Ready():
		case err := <-a.errs:
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if a.disc == nil {
		if err := a.standaloneResync(); err != nil {
			return err
		}
	}
	// The views subscribe to the change feed after the bootstrap: an
	// ingested snapshot writes no feed events, they load it as state.
	a.runLoop(bg, "pools", a.pools.Run)
	if a.challenges != nil {
		a.runLoop(bg, "acme challenges", a.challenges.Run)
	}
	a.runLoop(bg, "prune", a.pruneLoop)
	if a.cfg.PprofAddr != "" {
		if err := a.startPprof(bg, a.cfg.PprofAddr); err != nil {
			return err
		}
	}
	// Readiness waits for the routing table only: every request needs it.
	// The certificate index (100,000 certificates take seconds to parse)
	// loads after it, so that the two do not share the CPU, and a TLS
	// handshake that arrives before it is complete waits for it
	// (certs.Cache.GetCertificate). The ACME loops start after the index:
	// the renewal pass reads every certificate too.
	timer := time.NewTimer(readyTimeout)
	defer timer.Stop()
	if err := a.awaitLoad(ctx, timer, a.pools.Ready(), "routing table"); err != nil {
		return err
	}
	if a.challenges != nil {
		// A few rows: the CA may validate here as soon as we serve.
		if err := a.awaitLoad(ctx, timer, a.challenges.Ready(), "acme challenges"); err != nil {
			return err
		}
	}
	if err := a.proxy.Start(ctx); err != nil {
		return fmt.Errorf("proxy listeners: %w", err)
	}
	close(a.ready)
	// The verification Open deferred reads every family while the agent
	// serves; damage stops the agent (a restart then verifies at Open,
	// which rebuilds a derived family or fails with the way out). Until
	// then every read verifies the blocks it reads, so nothing is served
	// from a damaged block.
	a.runLoop(bg, "store verification", func(ctx context.Context) error {
		if err := a.store.VerifyDeferred(ctx); errors.Is(err, storage.ErrCorrupt) {
			return fmt.Errorf("%w: %w", errDamageFound, err)
		} else if err != nil {
			return err
		}
		releaseCMemory() // its read buffers
		return nil
	})
	if a.cfg.GCHeadroom > 0 {
		tuneGC(bg, uint64(a.cfg.GCHeadroom), a.logger)
	}
	a.runLoop(bg, "certs", a.certs.Run)
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		select {
		case <-a.certs.Ready():
		case <-bg.Done():
			return
		}
		// The first scans of the store leave garbage the size of every
		// row (hundreds of MiB at a million backends), and the
		// collector's pacing would let the heap grow to twice that peak
		// before collecting again. Collect it and hand the pages back,
		// so the agent rests at its live size.
		debug.FreeOSMemory()
		released := releaseCMemory()
		a.logger.Info("certificate index loaded; start-up garbage returned to the OS", zap.Bool("c_heap_trimmed", released))

		if a.acme != nil {
			a.runLoop(bg, "acme", a.acme.Run)
			a.runLoop(bg, "autocert", a.auto.run)
			a.runLoop(bg, "ondemand", a.onDemand.Run)
		}
	}()
	httpAddr, httpsAddr := a.proxy.Addrs()
	a.logger.Info("agent started",
		zap.String("node_id", a.store.NodeID()), zap.String("node_name", a.cfg.NodeName),
		zap.String("region", a.cfg.Region), zap.String("data_dir", a.cfg.DataDir),
		zap.Stringer("http", addrString{httpAddr}), zap.Stringer("https", addrString{httpsAddr}),
		zap.Stringer("admin", addrString{a.admin.Addr()}), zap.Stringer("health", addrString{a.healthAddr()}),
		zap.String("version", Version), zap.String("commit", Commit))
	return nil
}

func (a *Agent) runLoop(ctx context.Context, name string, run func(context.Context) error) {
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		if err := run(ctx); err != nil && ctx.Err() == nil {
			a.errs <- fmt.Errorf("%s: %w", name, err)
		}
	}()
}

// Shutdown stops accepting connections, lets in-flight requests finish until
// ctx expires, stops the background loops and closes the store.
func (a *Agent) Shutdown(ctx context.Context) error {
	var errs []error
	// Health fails first (/healthz and /api/health both ask the admin
	// API): from the moment peers hear this node leave, no check may still
	// call it ready.
	a.admin.Drain()
	if a.disc != nil {
		// Then leave, so peers mark this node left rather than
		// suspecting it while it drains.
		if err := a.disc.Leave(2 * time.Second); err != nil {
			errs = append(errs, fmt.Errorf("leaving the cluster: %w", err))
		}
	}
	if err := a.proxy.Shutdown(ctx); err != nil {
		errs = append(errs, fmt.Errorf("proxy drain: %w", err))
	}
	if a.health != nil {
		if err := a.health.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("health listener: %w", err))
		}
	}
	if err := a.admin.Shutdown(ctx); err != nil {
		errs = append(errs, fmt.Errorf("admin: %w", err))
	}
	if err := a.close(); err != nil {
		errs = append(errs, err)
	}
	a.logger.Info("agent stopped")
	return errors.Join(errs...)
}

// close stops the background loops and closes the store; the listeners
// must already be closed.
func (a *Agent) close() error {
	if a.cancel != nil {
		a.cancel()
	}
	a.wg.Wait()
	if err := a.store.Close(); err != nil {
		return fmt.Errorf("closing store: %w", err)
	}
	return nil
}

// awaitLoad waits until loaded is closed; it fails on a background error,
// when timer fires (the start's whole budget) or when ctx ends.
func (a *Agent) awaitLoad(ctx context.Context, timer *time.Timer, loaded <-chan struct{}, what string) error {
	select {
	case <-loaded:
		return nil
	case err := <-a.errs:
		return err
	case <-timer.C:
		return fmt.Errorf("%s not loaded after %v", what, readyTimeout)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// minCookieKeyLen is the shortest EDGE_COOKIE_KEY taken.
const minCookieKeyLen = 16

// deriveCookieKey picks the key that signs sticky-session cookies: the
// explicit EDGE_COOKIE_KEY, else one derived from the encryption key (which
// every agent of a cluster shares, so they honour each other's cookies), else
// a random key of this process.
func deriveCookieKey(explicit string, encKey []byte) ([]byte, error) {
	switch {
	case explicit != "":
		if len(explicit) < minCookieKeyLen {
			return nil, fmt.Errorf("EDGE_COOKIE_KEY must be at least %d characters", minCookieKeyLen)
		}
		return []byte(explicit), nil
	case encKey != nil:
		return hkdf.Key(sha256.New, encKey, nil, "singularity-edge sticky cookie", 32)
	default:
		k := make([]byte, 32)
		_, err := rand.Read(k)
		return k, err
	}
}

// cookieKeyFingerprint identifies the sticky-cookie key in this node's
// gossip metadata, so that members whose keys differ are told (a cookie
// from one is not honoured by the other: the client loses its backend).
// It is HMAC-SHA256 keyed with the key over a fixed label, cut to 16
// bytes: equal keys give equal fingerprints and nothing else is learnt
// from it. Every sticky cookie a client receives is already an HMAC under
// the same key (over a pool and a backend id), so the fingerprint gives a
// guesser of a weak EDGE_COOKIE_KEY nothing new, and gossip carries it
// encrypted.
func cookieKeyFingerprint(key []byte) string {
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte("singularity-edge sticky cookie key fingerprint v1"))
	return string(mac.Sum(nil)[:16])
}

// healthAddr is the bound address of the health listener (nil when off or
// not started).
func (a *Agent) healthAddr() net.Addr {
	if a.health == nil {
		return nil
	}
	return a.health.Addr()
}

// addrString prints a possibly nil listener address.
type addrString struct{ addr interface{ String() string } }

func (a addrString) String() string {
	if a.addr == nil {
		return "off"
	}
	return a.addr.String()
}

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// backendRoots is the system roots plus the PEM bundle in file.
func backendRoots(file string) (*x509.CertPool, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("--backend-ca-file: %w", err)
	}
	if _, err := pools.ParseCABundle(string(b)); err != nil {
		return nil, fmt.Errorf("--backend-ca-file %s: %w", file, err)
	}
	roots, err := x509.SystemCertPool()
	if err != nil || roots == nil {
		roots = x509.NewCertPool()
	}
	roots.AppendCertsFromPEM(b)
	return roots, nil
}

// standaloneResync clears what a cluster of one can never get from peers:
// a table emptied by `db remove-table` (or an unfinished ingest) waits for
// a catch-up round from a peer before the store is ready, and without
// gossip there is none. The operator removed the table knowing its rows
// are gone; say so loudly and serve what is left.
func (a *Agent) standaloneResync() error {
	tables, err := a.store.TablesToResync()
	if err != nil {
		return fmt.Errorf("tables to resync: %w", err)
	}
	for _, t := range tables {
		a.logger.Warn("table was removed and no peers are configured to resync it from: it starts empty",
			zap.String("table", t))
		if err := a.store.MarkResynced(t); err != nil {
			return fmt.Errorf("mark %s resynced: %w", t, err)
		}
	}
	if err := a.store.Ready(); errors.Is(err, storage.ErrNotReady) && !errors.Is(err, storage.ErrCommitFailed) {
		a.logger.Warn("store was waiting for a catch-up from peers and no peers are configured: serving what it holds",
			zap.String("reason", err.Error()))
		if err := a.store.MarkCaughtUp(); err != nil {
			return fmt.Errorf("mark caught up: %w", err)
		}
	}
	return nil
}
