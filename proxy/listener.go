package proxy

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/singularity-ng/singularity-edge/internal/tunnelloop"
)

const (
	listenerHTTP = iota
	listenerHTTPS
)

// trackedConn is an accepted client connection as the Server tracks it
// for shutdown.
type trackedConn struct {
	net.Conn // the accepted TCP connection
	// idle is true while the connection waits for the next request with
	// nothing buffered: Shutdown may close it right away.
	idle atomic.Bool
	// backend is the backend connection a request on this connection is
	// waiting for; Shutdown closes it when the drain deadline passes.
	backend atomic.Pointer[net.Conn]
	// tunnel is the event-loop tunnel a passthrough connection became;
	// Shutdown kills it when the drain deadline passes. cut is set
	// before that, so that a tunnel registered concurrently sees it.
	tunnel atomic.Pointer[tunnelloop.Tunnel]
	cut    atomic.Bool
}

// connInfo is what the listener knows about a client connection before
// any HTTP is read.
type connInfo struct {
	listener int
	client   netip.AddrPort // the PROXY header's source when present
	accepted time.Time
	// trusted: the client is a proxy whose X-Forwarded-For, Forwarded
	// and X-Real-IP headers are kept (Config.TrustedProxies).
	trusted bool
}

func (s *Server) acceptLoop(l net.Listener, kind int) {
	defer s.wg.Done()
	var backoff time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if s.shuttingDown() || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: back off instead of
			// spinning, as net/http does.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.log.Warn("proxy accept failed", zap.Error(err), zap.Duration("retry_in", backoff))
			select {
			case <-time.After(backoff):
			case <-s.stop:
				return
			}
			continue
		}
		backoff = 0
		tc := &trackedConn{Conn: newRawTCPConn(c)}
		if !s.track(tc) {
			_ = c.Close()
			continue
		}
		go s.serveConn(tc, kind)
	}
}

// track registers a connection; false once shutdown began.
func (s *Server) track(tc *trackedConn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing.Load() {
		return false
	}
	s.conns[tc] = struct{}{}
	return true
}

func (s *Server) untrack(tc *trackedConn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.conns, tc)
	if len(s.conns) == 0 && s.connsDone != nil {
		select {
		case <-s.connsDone:
		default:
			close(s.connsDone)
		}
	}
}

// pokeIdle wakes connections waiting for a next request so that they see
// the shutdown and close.
func (s *Server) pokeIdle() {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	for tc := range s.conns {
		if tc.idle.Load() {
			_ = tc.SetReadDeadline(now)
		}
	}
}

// closeAll cuts every connection (shutdown deadline reached).
func (s *Server) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for tc := range s.conns {
		tc.cut.Store(true)
		if t := tc.tunnel.Load(); t != nil {
			t.Kill()
		}
		_ = tc.Close()
		if bc := tc.backend.Load(); bc != nil {
			_ = (*bc).Close()
		}
	}
}

func (s *Server) serveConn(tc *trackedConn, kind int) {
	defer s.untrack(tc)
	defer tc.Close()
	gauge := s.metrics.activeHTTP
	proxyProto := s.cfg.HTTPProxyProtocol
	if kind == listenerHTTPS {
		gauge = s.metrics.activeHTTPS
		proxyProto = s.cfg.HTTPSProxyProtocol
	}
	gauge.Inc()
	defer gauge.Dec()

	info := connInfo{listener: kind, accepted: time.Now()}
	if ta, ok := tc.RemoteAddr().(*net.TCPAddr); ok {
		info.client = netip.AddrPortFrom(ta.AddrPort().Addr().Unmap(), ta.AddrPort().Port())
	}
	// buf holds the PROXY header and the ClientHello; serveTLS takes it
	// over, the HTTP path returns it once its bytes are copied.
	buf := s.getBuf()
	n := 0
	deadline := info.accepted.Add(s.cfg.ReadHeaderTimeout)
	if kind == listenerHTTPS {
		deadline = info.accepted.Add(s.cfg.TLSHandshakeTimeout)
	}
	if err := tc.SetReadDeadline(deadline); err != nil {
		s.putBuf(buf)
		return
	}
	if proxyProto {
		hdr, used, got, err := readProxyHeader(tc, *buf)
		if err != nil {
			s.putBuf(buf)
			s.log.Debug("proxy protocol header rejected", zap.Stringer("peer", info.client), zap.Error(err))
			return
		}
		switch {
		case hdr.Local:
		case s.believesProxyHeader(info.client.Addr()):
			info.client = hdr.Source
		default:
			s.metrics.proxyHeadersIgnored.Inc()
			s.log.Debug("proxy protocol header from a peer outside proxy-protocol-from: its addresses are ignored",
				zap.Stringer("peer", info.client), zap.Stringer("claimed", hdr.Source))
		}
		n = copy(*buf, (*buf)[used:got])
	}
	info.trusted = s.trusts(info.client.Addr(), proxyProto)
	if kind == listenerHTTPS {
		s.serveTLS(tc, info, buf, n)
		return
	}
	cc := s.newClientConn(tc, tc.Conn, info, false, "")
	cc.adoptPrefix((*buf)[:n])
	s.putBuf(buf)
	cc.serve()
	cc.release()
}

// readProxyHeader reads a PROXY header into buf. It returns the header,
// its length and the number of bytes read into buf (bytes after the header
// belong to the next protocol). The header must be complete in the first
// read that returns data: senders (Fly's proxy, HAProxy, nginx) write it in
// one piece before any client byte, so a header that stops short is an
// attack or a broken peer, dropped at once instead of holding a
// connection until the timeout (nginx and HAProxy do the same).
func readProxyHeader(r io.Reader, buf []byte) (proxyHeader, int, int, error) {
	got := 0
	for got == 0 {
		n, err := r.Read(buf)
		got = n
		if err != nil && n == 0 {
			return proxyHeader{}, 0, 0, err
		}
	}
	hdr, used, err := parseProxyHeader(buf[:got])
	if errors.Is(err, errNeedMore) {
		return proxyHeader{}, 0, 0, proxyErrorf("header incomplete in its first %d bytes", got)
	}
	if err != nil {
		return proxyHeader{}, 0, 0, err
	}
	return hdr, used, got, nil
}
