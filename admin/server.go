package admin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/singularity-ng/singularity-edge/internal/fielderr"
)

// Server is the admin HTTP server: API, dashboard and /metrics.
type Server struct {
	cfg     Config
	deps    Deps
	store   Store
	logger  *zap.Logger
	token   tokenChecker
	now     func() time.Time
	mux     *http.ServeMux
	handler http.Handler
	metrics *requestMetrics
	gather  prometheus.Gatherer
	// promHandler serves gather; built once, it is safe for concurrent use.
	promHandler http.Handler
	page        dashboardPage
	// patterns are the routes' patterns in registration order; query
	// holds the query parameters each pattern's handler reads.
	patterns []string
	query    map[string][]string

	httpServer *http.Server
	mu         sync.Mutex
	listener   net.Listener

	// writes lets a cluster leave close the API to writes and wait for
	// those in flight, so its flush sees every write this node took.
	writes writeGate
	// draining: the agent is shutting down (Drain); health says so.
	draining atomic.Bool
}

// New builds a server. It registers the admin's collectors on
// cfg.Registerer (or on a private registry when both Registerer and
// Gatherer are nil) and fails if they are already registered there.
func New(cfg Config, deps Deps) (*Server, error) {
	if deps.Store == nil {
		return nil, errors.New("admin: Deps.Store is required")
	}
	def := DefaultConfig()
	if cfg.Addr == "" {
		cfg.Addr = def.Addr
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = def.MaxBodyBytes
	}
	if cfg.MaxUploadBytes <= 0 {
		cfg.MaxUploadBytes = def.MaxUploadBytes
	}
	if cfg.IssueWait < 0 {
		return nil, fmt.Errorf("admin: IssueWait %s is negative", cfg.IssueWait)
	}
	if cfg.OrderTimeout <= 0 {
		cfg.OrderTimeout = def.OrderTimeout
	}
	if cfg.ReadHeaderTimeout <= 0 {
		cfg.ReadHeaderTimeout = def.ReadHeaderTimeout
	}
	if cfg.ReadTimeout <= 0 {
		cfg.ReadTimeout = def.ReadTimeout
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = def.WriteTimeout
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = def.IdleTimeout
	}
	if cfg.LongOperationTimeout <= 0 {
		cfg.LongOperationTimeout = def.LongOperationTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.Node.ID == "" {
		cfg.Node.ID = deps.Store.NodeID()
	}
	if (cfg.Registerer == nil) != (cfg.Gatherer == nil) {
		return nil, errors.New("admin: set both Registerer and Gatherer (normally one *prometheus.Registry), or neither")
	}
	if cfg.Registerer == nil {
		reg := prometheus.NewRegistry()
		cfg.Registerer, cfg.Gatherer = reg, reg
	}
	now := deps.Now
	if now == nil {
		now = time.Now
	}
	page, err := newDashboardPage()
	if err != nil {
		return nil, err
	}

	s := &Server{
		cfg:    cfg,
		deps:   deps,
		store:  deps.Store,
		logger: cfg.Logger,
		token:  newTokenChecker(cfg.Token),
		now:    now,
		mux:    http.NewServeMux(),
		gather: cfg.Gatherer,
		page:   page,
		query:  map[string][]string{},
	}
	if s.metrics, err = registerMetrics(cfg.Registerer, cfg.RegisterRuntimeCollectors); err != nil {
		return nil, err
	}
	s.promHandler = s.newMetricsHandler()
	s.routes()
	s.handler = s.withRequestContext(s.withAccessLog(http.HandlerFunc(s.dispatch)))
	s.httpServer = &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: cfg.ReadHeaderTimeout,
		ReadTimeout:       cfg.ReadTimeout,
		WriteTimeout:      cfg.WriteTimeout,
		IdleTimeout:       cfg.IdleTimeout,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          zap.NewStdLog(cfg.Logger),
	}
	return s, nil
}

// Query parameters of the routes that take any. Each route declares the
// parameters it reads once, where it is registered; dispatch refuses every
// other one with 400 naming it, so a typo (?limt=10, ?cascde=true) is an
// error instead of a silent default.
var (
	pageQuery = []string{"limit", "after"}
	// waitAllQuery is the wait-for-all timeout of the writes an operator
	// may need to read back from every member (pools, backends,
	// certificates).
	waitAllQuery = []string{waitAllParam}
)

// routes registers every route. Patterns are matched by method and path;
// a path that exists with another method answers 405 with Allow.
func (s *Server) routes() {
	s.handle("GET /api/health", s.handleHealth)

	s.handle("GET /api/pools", s.handleListPools, pageQuery...)
	s.handle("POST /api/pools", s.handleCreatePool, waitAllQuery...)
	s.handle("GET /api/pools/{name}", s.handleGetPool)
	s.handle("PATCH /api/pools/{name}", s.handlePatchPool, waitAllQuery...)
	s.handle("DELETE /api/pools/{name}", s.handleDeletePool, append([]string{"cascade"}, waitAllQuery...)...)

	s.handle("GET /api/pools/{name}/backends", s.handleListBackends, pageQuery...)
	s.handle("POST /api/pools/{name}/backends", s.handleCreateBackend, waitAllQuery...)
	s.handle("GET /api/pools/{name}/backends/{id}", s.handleGetBackend)
	s.handle("PATCH /api/pools/{name}/backends/{id}", s.handlePatchBackend, waitAllQuery...)
	s.handle("DELETE /api/pools/{name}/backends/{id}", s.handleDeleteBackend, waitAllQuery...)

	s.handle("GET /api/certificates", s.handleListCertificates, pageQuery...)
	// wait: how long an ACME request waits for its order; wait_all: how
	// long an upload waits for every member to hold it.
	s.handle("POST /api/certificates", s.handleCreateCertificate, append([]string{"wait"}, waitAllQuery...)...)
	s.handle("POST /api/certificates/upload", s.handleUploadCertificate, waitAllQuery...)
	s.handle("GET /api/certificates/{id}", s.handleGetCertificate)
	s.handle("DELETE /api/certificates/{id}", s.handleDeleteCertificate, append([]string{"force"}, waitAllQuery...)...)
	s.handle("POST /api/certificates/{id}/renew", s.handleRenewCertificate)

	s.handle("GET /api/audit", s.handleListAudit, pageQuery...)

	s.handle("GET /api/cluster", s.handleCluster)
	s.handle("POST /api/cluster/join", s.handleClusterJoin)
	s.handle("POST /api/cluster/leave", s.handleClusterLeave, "wait", "force")

	s.handle("GET /api/db", s.handleDBInfo)
	s.handle("GET /api/db/tables", s.handleDBTables)
	s.handle("GET /api/db/stats/{table}", s.handleDBStats)
	s.handle("POST /api/db/compact/{table}", s.handleDBCompact)
	s.handle("POST /api/db/backup", s.handleDBBackup)
	s.handle("POST /api/db/checkpoint", s.handleDBCheckpoint)

	// Pages for Prometheus and browsers, outside /api: their query
	// parameters are not checked (a scrape config may add params, a
	// browser a cache buster) and none is read.
	s.handle("GET /metrics", s.handleMetrics)
	s.handle("GET /admin/dashboard", s.handleDashboard)
	s.handle("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/admin/dashboard", http.StatusFound)
	})
}

// handle registers one route with the query parameters it reads, and
// remembers its pattern, so that tests walk the server's own route table
// (every route must need the token unless it is on their list of
// deliberately open ones, and every route refuses parameters it does not
// declare).
func (s *Server) handle(pattern string, h http.HandlerFunc, query ...string) {
	s.mux.HandleFunc(pattern, h)
	s.patterns = append(s.patterns, pattern)
	s.query[pattern] = query
}

// checkKnownQuery refuses a query parameter the matched route does not
// declare. Only /api routes are checked (see routes).
func (s *Server) checkKnownQuery(pattern string, q url.Values) error {
	accepted := s.query[pattern]
	names := make([]string, 0, len(q))
	for k := range q {
		if !slices.Contains(accepted, k) {
			names = append(names, k)
		}
	}
	if len(names) == 0 {
		return nil
	}
	sort.Strings(names)
	takes := "takes no query parameters"
	if len(accepted) > 0 {
		takes = "takes " + strings.Join(accepted, ", ")
	}
	var fields fielderr.List
	for _, k := range names {
		fields.Add(k, "unknown query parameter; "+pattern+" "+takes)
	}
	quoted := make([]string, len(names))
	for i, k := range names {
		quoted[i] = strconv.Quote(k)
	}
	return errInvalid(fmt.Sprintf("unknown query parameter %s; %s %s", strings.Join(quoted, ", "), pattern, takes), fields...)
}

// Handler returns the server's handler (API, dashboard, /metrics) with
// request ids, access logs, panic recovery and authentication.
func (s *Server) Handler() http.Handler { return s.handler }

// dispatch authenticates /api requests and routes them. The mux's own 404
// and 405 answers are plain text; they are replaced by the JSON error shape
// (keeping the Allow header of a 405).
func (s *Server) dispatch(w http.ResponseWriter, r *http.Request) {
	if needsToken(r) {
		err := s.token.check(r)
		if err == nil && !s.token.enabled {
			// Open only because no token is configured (CheckExposure
			// allows that on loopback): refuse what a browser page sends.
			err = checkLocalCaller(r)
		}
		if err != nil {
			s.writeError(w, r, err)
			return
		}
	}
	_, pattern := s.mux.Handler(r)
	if strings.HasPrefix(r.URL.Path, "/api/") {
		q, err := checkQuery(r.URL.RawQuery)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		// Unknown routes and methods answer 404 and 405 below whatever
		// their query; a known route refuses what it does not read,
		// before any refusal that depends on the agent's state.
		if pattern != "" {
			if err := s.checkKnownQuery(pattern, q); err != nil {
				s.writeError(w, r, err)
				return
			}
		}
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead && strings.HasPrefix(r.URL.Path, "/api/") &&
		!strings.HasPrefix(r.URL.Path, "/api/cluster/") && !s.ready() {
		if s.membershipState() != "" {
			s.writeError(w, r, errLeavingNoWrites())
			return
		}
		// A node still filling its store from a peer takes no writes: a
		// local write would make it originate data before it holds the
		// cluster's state.
		s.writeError(w, r, &apiError{Status: http.StatusServiceUnavailable, Code: CodeUnavailable,
			Message: "this node is not ready (it is still taking the cluster's state from a peer); retry, or write to a ready node"})
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead && strings.HasPrefix(r.URL.Path, "/api/") &&
		!strings.HasPrefix(r.URL.Path, "/api/cluster/") {
		if !s.writes.enter() {
			s.writeError(w, r, errLeavingNoWrites())
			return
		}
		endWrite := sync.OnceFunc(s.writes.exit)
		defer endWrite()
		if info := infoFrom(r.Context()); info != nil {
			info.endWrite = endWrite
		}
	}
	if info := infoFrom(r.Context()); info != nil {
		info.route = pattern
	}
	if pattern != "" {
		s.mux.ServeHTTP(w, r)
		return
	}
	rec := &discardWriter{header: http.Header{}}
	s.mux.ServeHTTP(rec, r)
	if rec.status == http.StatusMethodNotAllowed {
		w.Header().Set("Allow", rec.header.Get("Allow"))
		s.writeError(w, r, &apiError{Status: http.StatusMethodNotAllowed, Code: CodeMethodNotAllowed,
			Message: fmt.Sprintf("method %s is not allowed on %s; allowed: %s", r.Method, r.URL.Path, rec.header.Get("Allow"))})
		return
	}
	s.writeError(w, r, &apiError{Status: http.StatusNotFound, Code: CodeNotFound,
		Message: fmt.Sprintf("no route %s %s", r.Method, r.URL.Path)})
}

// ready reports whether Deps.Ready is closed (nil: always).
func (s *Server) ready() bool {
	if s.membershipState() != "" {
		// Leaving: no write may start that the flush would not see.
		return false
	}
	if s.deps.Ready == nil {
		return true
	}
	select {
	case <-s.deps.Ready:
		return true
	default:
		return false
	}
}

// membershipState is "" for a member, "leaving" or "left".
func (s *Server) membershipState() string {
	if s.deps.Membership == nil {
		return ""
	}
	return s.deps.Membership.State()
}

// needsToken: every /api route but the health check. /metrics decides for
// itself (loopback or MetricsPublic); the dashboard page carries no data.
func needsToken(r *http.Request) bool {
	p := r.URL.Path
	if p != "/api" && !strings.HasPrefix(p, "/api/") {
		return false
	}
	return !(p == "/api/health" && (r.Method == http.MethodGet || r.Method == http.MethodHead))
}

// discardWriter captures the status and headers of the mux's fallback
// answers without sending their plain-text bodies.
type discardWriter struct {
	header http.Header
	status int
}

func (d *discardWriter) Header() http.Header { return d.header }
func (d *discardWriter) Write(b []byte) (int, error) {
	if d.status == 0 {
		d.status = http.StatusOK
	}
	return len(b), nil
}
func (d *discardWriter) WriteHeader(status int) {
	if d.status == 0 {
		d.status = status
	}
}

// Start checks exposure, binds cfg.Addr and serves in the background until
// Shutdown. It returns once the listener is bound.
func (s *Server) Start(ctx context.Context) error {
	if err := CheckExposure(s.cfg.Addr, s.cfg.Token); err != nil {
		return err
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("admin: listen on %s: %w", s.cfg.Addr, err)
	}
	if err := s.setListener(ln); err != nil {
		_ = ln.Close()
		return err
	}
	go func() {
		if err := s.httpServer.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.logger.Error("admin server stopped", zap.Error(err))
		}
	}()
	s.logListening(ln.Addr())
	return nil
}

// logListening announces the listener, and warns when the API runs
// without a token: every local process can then change the configuration.
func (s *Server) logListening(addr net.Addr) {
	s.logger.Info("admin API listening", zap.String("addr", addr.String()), zap.Bool("token", s.token.enabled))
	if !s.token.enabled {
		s.logger.Warn("admin API runs without a token: any process that can reach "+addr.String()+" can change the configuration; set EDGE_ADMIN_TOKEN",
			zap.String("addr", addr.String()))
	}
}

// Serve serves on ln until ctx ends, then shuts down gracefully within
// shutdownTimeout of ctx ending (in-flight requests finish, then the
// remaining connections are closed). It refuses an exposed listener
// without a token like Start.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	if err := CheckExposure(ln.Addr().String(), s.cfg.Token); err != nil {
		return err
	}
	if err := s.setListener(ln); err != nil {
		return err
	}
	stopped := make(chan struct{})
	defer close(stopped)
	go func() {
		select {
		case <-ctx.Done():
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
			defer cancel()
			_ = s.Shutdown(sctx)
		case <-stopped:
		}
	}()
	s.logListening(ln.Addr())
	if err := s.httpServer.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("admin: serve: %w", err)
	}
	return nil
}

// shutdownTimeout bounds the graceful part of Serve's shutdown; a caller
// that needs another bound calls Shutdown with its own context.
const shutdownTimeout = 10 * time.Second

func (s *Server) setListener(ln net.Listener) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.listener != nil {
		return errors.New("admin: server already started")
	}
	s.listener = ln
	return nil
}

// Addr is the bound address after Start or Serve, else nil.
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.listener == nil {
		return nil
	}
	return s.listener.Addr()
}

// Shutdown stops accepting connections and waits for in-flight requests
// until ctx ends; then it closes the remaining connections.
// Drain makes /api/health answer 503 "draining" from now on: the agent is
// shutting down and finishing the requests it has.
func (s *Server) Drain() { s.draining.Store(true) }

func (s *Server) Shutdown(ctx context.Context) error {
	err := s.httpServer.Shutdown(ctx)
	if err != nil {
		_ = s.httpServer.Close()
	}
	return err
}
