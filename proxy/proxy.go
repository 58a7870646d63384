// Package proxy is the data plane of the edge: the public HTTP and HTTPS
// listeners, routing of each request (by Host, or SNI for TLS) to a pool of
// the routing table, TLS termination with per-SNI certificates, SNI
// passthrough, the PROXY protocol, ACME challenge hooks and the forwarding
// of requests to backends.
//
// # HTTP/1.1 engine
//
// HTTP/1.1, most of what an edge sees, is served by a hand-written
// forwarder rather than net/http's ReverseProxy or fasthttp. It parses only
// what routing and framing need (request line, Host, framing and
// hop-by-hop headers) in place in the connection's buffer, copies the other
// header lines to the backend verbatim, streams bodies as they arrive in
// both directions (chunked and Content-Length, full duplex), keeps one
// goroutine and one 4 KiB buffer per client connection and reuses pooled
// keep-alive backend connections. A 1 KiB response costs four syscalls:
// read the request, write it upstream, read the response, write it out.
//
// Why, measured with ../shared/bench/proxy/run.sh (wrk, 64 keep-alive
// connections, 1 KiB responses, proxy alone on one core, GOMAXPROCS=1;
// proxy CPU per request next to nginx 1.22 in the same run, quiet machine):
//
//	                                    S1 plain HTTP   S2a TLS keep-alive
//	this engine, full run 5 x 6 s       15.99 µs/req    17.32 µs/req
//	  nginx / haproxy, same run         17.39 / 15.49   17.89 / 18.98
//	this engine, 4 x 6 s (two runs)     17.18 / 14.19   18.31 / 16.76
//	  nginx, same runs                  16.98 / 13.65   18.26 / 18.86
//	fasthttp v1.78 Server+HostClient,   17.53 / 16.66   23.68 / 17.50
//	  a minimal proxy without these rules (4 x 6 s, two runs)
//	  nginx, same runs                  16.38 / 16.88   23.58 / 19.21
//	net/http + httputil.ReverseProxy    ~70 µs/req (calibration in the brief)
//
// So: CPU parity with fasthttp and nginx while doing what fasthttp's
// default model does not (no buffering of bodies, upgrades, strict framing
// against request smuggling, hop-by-hop handling, forwarding the original
// header bytes). pprof shows ~75% of the CPU in read/write/epoll syscalls;
// the measurable user-space items (time.Now calls, deadline timers, the
// EAGAIN read before every wait, see yieldBeforeRead) were cut. The yield
// is a trade: -13% CPU per request at saturation for a longer p99 (wrk's
// closed loop: 6 ms instead of 2.7 ms; p50 improves). HTTP/2 (ALPN h2)
// goes through golang.org/x/net/http2's server with a handler that uses
// the same backend connections, picking, retries and header rules.
//
// # Routing and SSL modes
//
// Each pool has an SSL mode: off (plain HTTP only; a TLS handshake for its
// names is refused), flexible (TLS here, HTTP to backends), full (TLS to
// backends, not verified), full_strict (TLS to backends, verified) and
// passthrough (the TLS connection is routed by the SNI of its ClientHello
// and copied to a backend untouched). Plain HTTP requests for pools that
// use TLS are redirected to HTTPS, except ACME HTTP-01 challenges.
package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/singularity-ng/singularity-edge/internal/ratelog"
	"github.com/singularity-ng/singularity-edge/internal/tunnelloop"
	"github.com/singularity-ng/singularity-edge/pools"
)

// Config configures a Server. Zero durations mean "use the default" only
// through DefaultConfig; New rejects non-positive timeouts.
type Config struct {
	// HTTPAddr and HTTPSAddr are the listen addresses; "" disables a
	// listener (at least one is needed).
	HTTPAddr  string
	HTTPSAddr string
	// HTTPProxyProtocol and HTTPSProxyProtocol make the listener require a
	// PROXY protocol v1 or v2 header on every connection (Fly.io's
	// proxy_proto handler). A connection without a valid header is closed.
	HTTPProxyProtocol  bool
	HTTPSProxyProtocol bool
	// ProxyProtocolFrom are the peers whose PROXY header names the client:
	// from them the header's source address becomes the client address;
	// from any other peer the header is read and checked but its addresses
	// are ignored, and the TCP peer stays the client (nginx's
	// set_real_ip_from with real_ip_header proxy_protocol). Without it,
	// anyone who can reach the listener directly (on Fly, every Machine of
	// the organization over its private network) could claim any address.
	// nil = ProxyProtocolPeers: Fly's proxy and loopback. An empty non-nil
	// list believes nobody.
	ProxyProtocolFrom []netip.Prefix
	// AllowPoolHeader honours an X-Pool request header naming the pool,
	// overriding the Host lookup. For trusted networks only.
	AllowPoolHeader bool
	// RedirectHTTPSPort is the public HTTPS port put into HTTP->HTTPS
	// redirects (left out when 443). 0 = the HTTPS listener's own port,
	// right when clients reach the listener directly; behind Fly's proxy,
	// which maps 443 to the listener's 8443, set 443.
	RedirectHTTPSPort int

	// ReadHeaderTimeout bounds reading a request head from the first byte
	// (and the PROXY header and ClientHello); slow clients are cut.
	ReadHeaderTimeout time.Duration
	// IdleTimeout is how long a keep-alive client connection may wait for
	// its next request.
	IdleTimeout time.Duration
	// ReadTimeout is the longest pause while reading a request body from a
	// client or a response body from a backend.
	ReadTimeout time.Duration
	// WriteTimeout is the longest a write to a client or backend may block.
	WriteTimeout time.Duration
	// TLSHandshakeTimeout bounds the client TLS handshake.
	TLSHandshakeTimeout time.Duration
	// DialTimeout bounds connecting to a backend, TLS handshake included.
	DialTimeout time.Duration
	// ResponseHeaderTimeout bounds the wait for a backend's response head
	// after the request was sent; exceeded = 504.
	ResponseHeaderTimeout time.Duration
	// BackendIdleTimeout closes pooled backend connections idle this long.
	// Keep it below the backends' own keep-alive timeout.
	BackendIdleTimeout time.Duration
	// TunnelIdleTimeout closes upgraded (WebSocket) and passthrough
	// connections idle in both directions this long.
	TunnelIdleTimeout time.Duration
	// TunnelEventLoops is the number of event-loop threads that relay
	// established passthrough connections (Linux with cgo; see
	// internal/tunnelloop). 0 = GOMAXPROCS at Start; -1 = none: every
	// passthrough connection is relayed by a goroutine per direction, as
	// upgraded connections always are, and as on other platforms.
	TunnelEventLoops int

	// MaxIdleConnsPerBackend bounds the pooled keep-alive connections kept
	// per backend.
	MaxIdleConnsPerBackend int
	// MaxRetries is how many other backends an idempotent request may be
	// retried on after a connection failure.
	MaxRetries int
	// H2MaxConcurrentStreams is the SETTINGS_MAX_CONCURRENT_STREAMS of
	// client HTTP/2 connections.
	H2MaxConcurrentStreams int
	// H2MaxResetsPerSecond is how many streams an HTTP/2 client may cancel
	// per second (twice that in a burst) before its connection is closed.
	H2MaxResetsPerSecond int
	// MaxBackendConnsPerClient bounds the backend exchanges in flight for
	// one client connection (HTTP/2 multiplexes many streams on one).
	MaxBackendConnsPerClient int
	// MaxBackendConnsPerClientAddr bounds the backend exchanges in flight
	// for one client address over all its connections, HTTP/1.1 and
	// HTTP/2 together; requests beyond it are answered 503 at once (like
	// nginx's limit_conn). Trusted proxies (TrustedProxies) are exempt:
	// their address carries many clients.
	MaxBackendConnsPerClientAddr int
	// MinBodyRate is the slowest average rate, in bytes per second, at
	// which a client may send a request body or read a response body once
	// BodyRateGrace has passed since the transfer began; a slower client
	// is cut off (408 while its request body is still being read). It
	// bounds slow-loris bodies, which ReadTimeout and WriteTimeout (pauses
	// between single reads and writes) do not. 0 turns the bound off.
	MinBodyRate int
	// BodyRateGrace is how long a body transfer may run before
	// MinBodyRate applies.
	BodyRateGrace time.Duration
	// MaxUpgradesPerClient bounds the concurrent tunnels, upgraded
	// (WebSocket) and SNI passthrough connections, per client address,
	// MaxUpgrades those of the server (503 beyond, or a TLS alert for
	// passthrough). Trusted proxies (TrustedProxies) are held to
	// MaxUpgrades only: their address carries many clients.
	MaxUpgradesPerClient int
	MaxUpgrades          int
	// MaxRequestHeaderBytes bounds a request head (431 beyond).
	MaxRequestHeaderBytes int
	// MaxResponseHeaderBytes bounds a backend response head (502 beyond).
	MaxResponseHeaderBytes int

	// TrustedProxies are the client addresses (after the PROXY protocol)
	// whose X-Forwarded-For and Forwarded headers are extended and whose
	// X-Real-IP is kept; from any other client they are replaced by its
	// own address (X-Real-IP is set to it also when absent). nil = the
	// default: FlyProxyPrefixes on a listener without the PROXY protocol,
	// nobody on one with it. An empty non-nil list trusts nobody.
	TrustedProxies []netip.Prefix

	// AccessLog is "off", "on" (every request) or "sample:N" (one request
	// in N). Bodies, query strings and headers are never logged.
	AccessLog string
	// FailureLog aggregates the warn lines of failed requests (502, 503,
	// 504) and failed TLS handshakes: one line per pool and reason per
	// burst, with a count, so a flood cannot fill the log.
	FailureLog ratelog.Config

	Logger     *zap.Logger
	Registerer prometheus.Registerer
}

// DefaultConfig returns production defaults: :8080 and :8443, timeouts in
// the range of nginx's and HAProxy's defaults.
func DefaultConfig() Config {
	return Config{
		HTTPAddr:               ":8080",
		HTTPSAddr:              ":8443",
		ReadHeaderTimeout:      10 * time.Second,
		IdleTimeout:            75 * time.Second,
		ReadTimeout:            60 * time.Second,
		WriteTimeout:           60 * time.Second,
		TLSHandshakeTimeout:    10 * time.Second,
		DialTimeout:            5 * time.Second,
		ResponseHeaderTimeout:  60 * time.Second,
		BackendIdleTimeout:     30 * time.Second,
		TunnelIdleTimeout:      time.Hour,
		MaxIdleConnsPerBackend: 128,
		MaxRetries:             2,
		// nginx's http2_max_concurrent_streams is 128; a browser opens
		// far fewer at once.
		H2MaxConcurrentStreams:   100,
		H2MaxResetsPerSecond:     100,
		MaxBackendConnsPerClient: 32,
		// A NAT gateway carries many users on one address: far more
		// than a browser's 6 connections per host, far less than a flood.
		MaxBackendConnsPerClientAddr: 256,
		// Kestrel's MinRequestBodyDataRate and MinResponseDataRate:
		// 240 bytes/s after a 5 s grace period. nginx and HAProxy bound
		// only the pause between two reads or writes.
		MinBodyRate:            240,
		BodyRateGrace:          5 * time.Second,
		MaxUpgradesPerClient:   256,
		MaxUpgrades:            100_000,
		MaxRequestHeaderBytes:  32 << 10,
		MaxResponseHeaderBytes: 32 << 10,
		AccessLog:              "off",
		FailureLog:             ratelog.DefaultConfig(),
		Logger:                 zap.NewNop(),
	}
}

func (c *Config) validate() error {
	var errs []error
	if c.HTTPAddr == "" && c.HTTPSAddr == "" {
		errs = append(errs, errors.New("proxy: at least one of HTTPAddr and HTTPSAddr is needed"))
	}
	for name, d := range map[string]time.Duration{
		"ReadHeaderTimeout": c.ReadHeaderTimeout, "IdleTimeout": c.IdleTimeout,
		"ReadTimeout": c.ReadTimeout, "WriteTimeout": c.WriteTimeout,
		"TLSHandshakeTimeout": c.TLSHandshakeTimeout, "DialTimeout": c.DialTimeout,
		"ResponseHeaderTimeout": c.ResponseHeaderTimeout, "BackendIdleTimeout": c.BackendIdleTimeout,
		"TunnelIdleTimeout": c.TunnelIdleTimeout, "BodyRateGrace": c.BodyRateGrace,
	} {
		if d <= 0 {
			errs = append(errs, fmt.Errorf("proxy: %s must be positive, got %v", name, d))
		}
	}
	if c.MaxIdleConnsPerBackend < 0 {
		errs = append(errs, fmt.Errorf("proxy: MaxIdleConnsPerBackend must not be negative, got %d", c.MaxIdleConnsPerBackend))
	}
	for name, v := range map[string]int{
		"H2MaxConcurrentStreams": c.H2MaxConcurrentStreams, "H2MaxResetsPerSecond": c.H2MaxResetsPerSecond,
		"MaxBackendConnsPerClient": c.MaxBackendConnsPerClient, "MaxUpgradesPerClient": c.MaxUpgradesPerClient,
		"MaxBackendConnsPerClientAddr": c.MaxBackendConnsPerClientAddr,
		"MaxUpgrades":                  c.MaxUpgrades,
	} {
		if v < 1 {
			errs = append(errs, fmt.Errorf("proxy: %s must be at least 1, got %d", name, v))
		}
	}
	if c.TunnelEventLoops < -1 || c.TunnelEventLoops > 1024 {
		errs = append(errs, fmt.Errorf("proxy: TunnelEventLoops must be between -1 (none) and 1024, got %d", c.TunnelEventLoops))
	}
	if c.MinBodyRate < 0 {
		errs = append(errs, fmt.Errorf("proxy: MinBodyRate must not be negative (0 turns it off), got %d", c.MinBodyRate))
	}
	if c.MaxRetries < 0 {
		errs = append(errs, fmt.Errorf("proxy: MaxRetries must not be negative, got %d", c.MaxRetries))
	}
	if c.MaxRequestHeaderBytes < 1024 || c.MaxRequestHeaderBytes > 1<<20 {
		errs = append(errs, fmt.Errorf("proxy: MaxRequestHeaderBytes must be between 1 KiB and 1 MiB, got %d", c.MaxRequestHeaderBytes))
	}
	if c.MaxResponseHeaderBytes < 1024 || c.MaxResponseHeaderBytes > 1<<20 {
		errs = append(errs, fmt.Errorf("proxy: MaxResponseHeaderBytes must be between 1 KiB and 1 MiB, got %d", c.MaxResponseHeaderBytes))
	}
	if c.RedirectHTTPSPort < 0 || c.RedirectHTTPSPort > 65535 {
		errs = append(errs, fmt.Errorf("proxy: RedirectHTTPSPort must be a port number, got %d", c.RedirectHTTPSPort))
	}
	if _, err := ParseAccessLog(c.AccessLog); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// ParseAccessLog returns the sampling interval: 0 = off, 1 = every request.
func ParseAccessLog(s string) (uint64, error) {
	switch s {
	case "", "off":
		return 0, nil
	case "on":
		return 1, nil
	}
	if v, ok := strings.CutPrefix(s, "sample:"); ok {
		n, err := strconv.ParseUint(v, 10, 32)
		if err == nil && n >= 1 {
			return n, nil
		}
	}
	return 0, fmt.Errorf("proxy: AccessLog %q: want off, on or sample:N with N >= 1", s)
}

// CertificateSource returns the certificate for a TLS ClientHello
// (certs.Cache implements it). An error fails the handshake.
type CertificateSource interface {
	GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error)
}

// ChallengeSource answers ACME challenges (filled by the certificate
// manager).
type ChallengeSource interface {
	// HTTP01 returns the key authorization for a pending HTTP-01 token.
	HTTP01(host, token string) (keyAuth string, ok bool)
	// TLSALPN01 returns the acme-tls/1 challenge certificate for a name.
	TLSALPN01(serverName string) (*tls.Certificate, bool)
}

// Router hands out the current routing table; *pools.Manager satisfies it.
type Router interface {
	Table() *pools.Table
}

// Server is the proxy: listeners plus everything they share.
type Server struct {
	cfg        Config
	log        *zap.Logger
	router     Router
	certs      CertificateSource
	challenges ChallengeSource
	metrics    *metrics
	logEvery   uint64
	logCount   atomic.Uint64
	failLog    *ratelog.Logger
	// stopFailLog ends the failure log's flusher, which writes what is
	// pending; set by Start.
	stopFailLog context.CancelFunc
	ids         requestIDs
	upstreams   upstreams
	tlsConfig   *tls.Config // termination (GetCertificate from certs)
	h2          *h2Server
	peekBufs    sync.Pool // *[]byte of peekBufSize: PROXY header + ClientHello
	clientBufs  sync.Pool // *[]byte of clientBufSize: client read buffers
	bodyBufs    sync.Pool // *[]byte of bodyBufSize: streamed request bodies
	upgrades    upgradeLimits
	exchanges   addrLimits // backend exchanges in flight per client address
	// loops relays established passthrough connections; nil = a
	// goroutine per direction (see Config.TunnelEventLoops). Set by
	// Start, closed by Shutdown once every connection is gone.
	loops *tunnelloop.Group

	mu        sync.Mutex
	started   bool
	listeners []net.Listener
	httpAddr  net.Addr
	httpsAddr net.Addr
	// redirectPort is the port of HTTP->HTTPS redirects, set by Start
	// (before any connection is served).
	redirectPort int
	conns        map[*trackedConn]struct{}
	connsDone    chan struct{} // closed when conns becomes empty during shutdown
	closing      atomic.Bool
	wg           sync.WaitGroup // accept loops and janitor
	stop         chan struct{}
}

// New validates cfg and returns a Server; Start binds the listeners. certs
// may be nil when no TLS is terminated (passthrough still works); challenges
// may be nil when ACME is off.
func New(cfg Config, router Router, certs CertificateSource, challenges ChallengeSource) (*Server, error) {
	if router == nil {
		return nil, errors.New("proxy: router is required")
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	every, _ := ParseAccessLog(cfg.AccessLog)
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg:        cfg,
		log:        cfg.Logger,
		router:     router,
		certs:      certs,
		challenges: challenges,
		metrics:    m,
		logEvery:   every,
		failLog:    ratelog.New(cfg.FailureLog, cfg.Logger),
		conns:      make(map[*trackedConn]struct{}),
		stop:       make(chan struct{}),
	}
	s.ids.init()
	s.upstreams.init(s)
	s.tlsConfig = s.newTLSConfig()
	s.h2 = newH2Server(s)
	return s, nil
}

// Start binds the listeners and serves them in the background until
// Shutdown. ctx bounds binding only.
func (s *Server) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started {
		return errors.New("proxy: already started")
	}
	// No TCP keep-alive probes on client connections (Go's default turns
	// them on with three more setsockopt calls per connection): every
	// client connection has an idle or read timeout, and neither nginx
	// nor HAProxy probes clients by default.
	lc := net.ListenConfig{KeepAlive: -1}
	var opened []net.Listener
	fail := func(err error) error {
		for _, l := range opened {
			_ = l.Close()
		}
		return err
	}
	if s.cfg.HTTPAddr != "" {
		l, err := lc.Listen(ctx, "tcp", s.cfg.HTTPAddr)
		if err != nil {
			return fail(fmt.Errorf("proxy: listen http %s: %w", s.cfg.HTTPAddr, err))
		}
		opened = append(opened, l)
		s.httpAddr = l.Addr()
	}
	if s.cfg.HTTPSAddr != "" {
		l, err := lc.Listen(ctx, "tcp", s.cfg.HTTPSAddr)
		if err != nil {
			return fail(fmt.Errorf("proxy: listen https %s: %w", s.cfg.HTTPSAddr, err))
		}
		opened = append(opened, l)
		s.httpsAddr = l.Addr()
	}
	if s.cfg.TunnelEventLoops >= 0 {
		tcfg := tunnelloop.DefaultConfig()
		tcfg.Loops = s.cfg.TunnelEventLoops
		if tcfg.Loops == 0 {
			tcfg.Loops = runtime.GOMAXPROCS(0)
		}
		tcfg.IdleTimeout = s.cfg.TunnelIdleTimeout
		tcfg.BufferSize = bodyBufSize
		tcfg.PipeSize = splicePipeSize
		g, err := tunnelloop.New(tcfg)
		switch {
		case err == nil:
			s.loops = g
			s.metrics.passthroughBytes.loops.Store(g)
		case errors.Is(err, tunnelloop.ErrUnsupported):
		default:
			return fail(fmt.Errorf("proxy: tunnel event loops: %w", err))
		}
	}
	s.started = true
	s.listeners = opened
	s.redirectPort = s.cfg.RedirectHTTPSPort
	if s.redirectPort == 0 {
		if ta, ok := s.httpsAddr.(*net.TCPAddr); ok {
			s.redirectPort = ta.Port
		} else {
			s.redirectPort = 443
		}
	}
	for _, l := range opened {
		kind := listenerHTTP
		if l.Addr() == s.httpsAddr {
			kind = listenerHTTPS
		}
		s.wg.Add(1)
		go s.acceptLoop(l, kind)
	}
	s.wg.Add(1)
	go s.janitor()
	var flushCtx context.Context
	flushCtx, s.stopFailLog = context.WithCancel(context.Background())
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.failLog.Run(flushCtx)
	}()
	s.log.Info("proxy listening", zap.Stringer("http", addrOrNone(s.httpAddr)), zap.Stringer("https", addrOrNone(s.httpsAddr)))
	return nil
}

type noAddr struct{}

func (noAddr) Network() string { return "" }
func (noAddr) String() string  { return "off" }

func addrOrNone(a net.Addr) net.Addr {
	if a == nil {
		return noAddr{}
	}
	return a
}

// Addrs returns the bound addresses (nil for a disabled listener).
func (s *Server) Addrs() (http, https net.Addr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.httpAddr, s.httpsAddr
}

// Shutdown stops accepting, closes idle keep-alive connections, lets
// requests in flight finish until ctx is done and then closes every
// remaining connection. It returns ctx.Err() when connections had to be
// cut.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if s.closing.Swap(true) {
		s.mu.Unlock()
		return errors.New("proxy: already shut down")
	}
	for _, l := range s.listeners {
		_ = l.Close()
	}
	close(s.stop)
	s.connsDone = make(chan struct{})
	if len(s.conns) == 0 {
		close(s.connsDone)
	}
	done := s.connsDone
	s.mu.Unlock()

	s.h2.shutdown()
	// Idle connections are woken and closed at once; busy ones close after
	// their current response. Repeat the poke: a connection can become
	// idle at any moment.
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var err error
	for waiting := true; waiting; {
		s.pokeIdle()
		select {
		case <-done:
			waiting = false
		case <-tick.C:
		case <-ctx.Done():
			err = ctx.Err()
			s.closeAll()
			<-done
			waiting = false
		}
	}
	if s.loops != nil {
		_ = s.loops.Close() // every tunnel ended with its connection
	}
	if s.stopFailLog != nil {
		s.stopFailLog()
	}
	s.wg.Wait()
	s.upstreams.closeAll()
	return err
}

func (s *Server) shuttingDown() bool { return s.closing.Load() }

// janitor closes idle backend connections past their timeout and forgets
// the exchange counters of clients with nothing in flight.
func (s *Server) janitor() {
	defer s.wg.Done()
	every := max(s.cfg.BackendIdleTimeout/4, 100*time.Millisecond)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case now := <-t.C:
			s.upstreams.sweep(now)
			s.exchanges.sweep()
		}
	}
}
