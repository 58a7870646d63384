package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"time"

	"github.com/singularity-ng/singularity-edge/pools"
)

// upstreamKey identifies a set of interchangeable backend connections.
type upstreamKey struct {
	addr   string
	tlsKey string // pools.BackendTLS.Key; "" for plain HTTP
}

// upstream is the connection pool of one backend address (and TLS mode):
// a LIFO stack of idle keep-alive connections, so that the most recently
// used (warmest, least likely closed by the backend) is reused first.
type upstream struct {
	key     upstreamKey
	tlsConf *tls.Config
	owner   *upstreams

	mu       sync.Mutex
	idle     []*upConn
	lastUsed time.Time
	removed  bool
}

// upConn is one connection to a backend with its read buffer.
type upConn struct {
	up        *upstream
	c         net.Conn     // TCP or *tls.Conn
	tcp       *net.TCPConn // the TCP connection underneath
	buf       []byte
	r, w      int // buf[r:w] is read but not consumed
	idleSince time.Time
	reused    bool
	rdl, wdl  time.Time // deadlines last set (coarse, see setReadDeadline)
	// pending is a request that send left for the first read of the
	// response head to write (see rawTCPConn.writeThenRead).
	pending []byte
}

// upstreams is the Server's set of backend connection pools.
type upstreams struct {
	s      *Server
	m      sync.Map // upstreamKey -> *upstream
	dialer net.Dialer
	// tunnelDialer dials passthrough backends: no TCP keep-alive probes
	// (three setsockopt calls fewer per connection, as nginx's and
	// HAProxy's defaults); the tunnel's idle timeout ends dead ones.
	tunnelDialer net.Dialer
	sessions     tls.ClientSessionCache
	bufs         sync.Pool // *[]byte of upBufSize
}

// upBufSize is the read buffer of a backend connection: response heads up
// to MaxResponseHeaderBytes grow it, bodies stream through it.
const upBufSize = 16 << 10

func (u *upstreams) init(s *Server) {
	u.s = s
	u.dialer = net.Dialer{Timeout: s.cfg.DialTimeout, KeepAlive: 30 * time.Second}
	u.tunnelDialer = net.Dialer{Timeout: s.cfg.DialTimeout, KeepAlive: -1}
	u.sessions = tls.NewLRUClientSessionCache(256)
	u.bufs.New = func() any { b := make([]byte, upBufSize); return &b }
}

// forBackend returns the pool of connections for b. Its TLS settings
// (pools.BackendTLS: whether, verified against which roots, server name,
// client certificate) are the ones the health checks use too.
func (u *upstreams) forBackend(_ *pools.Pool, b *pools.Backend) *upstream {
	bt := b.TLS()
	key := upstreamKey{addr: b.Addr}
	if bt.Enabled {
		key.tlsKey = bt.Key()
	}
	if v, ok := u.m.Load(key); ok {
		return v.(*upstream)
	}
	up := &upstream{key: key, owner: u, lastUsed: time.Now()}
	if bt.Enabled {
		// Sessions are kept apart per TLS settings: a session resumed
		// under other settings would carry another pool's client
		// certificate identity, or skip a verification this pool wants.
		up.tlsConf = bt.Config([]string{alpnProtocolHTTP11}, scopedSessions{prefix: key.tlsKey + "|", c: u.sessions})
	}
	v, _ := u.m.LoadOrStore(key, up)
	return v.(*upstream)
}

// take returns an idle connection, or nil. Every pooled connection is
// checked with a non-blocking peek before it is handed out: anything
// readable on an idle HTTP/1.1 connection is either an EOF (the backend
// closed it) or bytes no request asked for (a body after a HEAD, 204 or
// 304 answer, a second unsolicited response). Parsing those as the next
// response would give one client another's answer, so such a connection
// is discarded, never read. The peek costs one recvfrom(2) per reuse.
func (up *upstream) take(now time.Time, idleTimeout time.Duration) *upConn {
	for {
		up.mu.Lock()
		n := len(up.idle)
		if n == 0 {
			up.lastUsed = now
			up.mu.Unlock()
			return nil
		}
		uc := up.idle[n-1]
		up.idle[n-1] = nil
		up.idle = up.idle[:n-1]
		up.lastUsed = now
		up.mu.Unlock()
		age := now.Sub(uc.idleSince)
		if age >= idleTimeout || !uc.alive() {
			uc.close()
			continue
		}
		uc.reused = true
		return uc
	}
}

// put returns a connection to the idle stack (or closes it when the stack
// is full or the upstream was retired). Only a connection whose last
// response was framed completely and that has no unread byte buffered may
// come back; callers check framing, put checks the buffer.
func (up *upstream) put(uc *upConn, now time.Time, maxIdle int) {
	if uc.r != uc.w {
		uc.close()
		return
	}
	uc.r, uc.w = 0, 0
	uc.reused = false
	uc.idleSince = now
	up.mu.Lock()
	if up.removed || len(up.idle) >= maxIdle {
		up.mu.Unlock()
		uc.close()
		return
	}
	up.idle = append(up.idle, uc)
	up.mu.Unlock()
}

// alive peeks at the socket without blocking: data or EOF on an idle HTTP
// connection both mean it cannot carry a new request.
func (uc *upConn) alive() bool {
	if uc.r != uc.w {
		return false
	}
	rc, err := uc.tcp.SyscallConn()
	if err != nil {
		return false
	}
	ok := false
	err = rc.Read(func(fd uintptr) bool {
		ok = socketEmpty(fd) // raw syscall: see rawTCPConn
		return true          // never wait
	})
	return err == nil && ok
}

func (uc *upConn) close() {
	_ = uc.c.Close()
	if uc.buf != nil && cap(uc.buf) == upBufSize {
		b := uc.buf[:upBufSize]
		uc.up.owner.bufs.Put(&b)
	}
	uc.buf = nil
}

// dial opens a new connection (TLS handshake included) within DialTimeout.
func (u *upstreams) dial(up *upstream) (*upConn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), u.s.cfg.DialTimeout)
	defer cancel()
	c, err := u.dialer.DialContext(ctx, "tcp", up.key.addr)
	if err != nil {
		return nil, err
	}
	tcp, _ := c.(*net.TCPConn)
	if tcp == nil {
		_ = c.Close()
		return nil, errors.New("proxy: backend dial did not return a TCP connection")
	}
	c = newRawTCPConn(tcp) // see rawTCPConn
	uc := &upConn{up: up, c: c, tcp: tcp}
	if up.tlsConf != nil {
		tc := tls.Client(c, up.tlsConf)
		if err := tc.HandshakeContext(ctx); err != nil {
			_ = c.Close()
			return nil, &backendTLSError{err: err}
		}
		uc.c = tc
	}
	bp := u.bufs.Get().(*[]byte)
	uc.buf = *bp
	return uc, nil
}

// scopedSessions is a view of the shared client session cache in which
// every key carries a prefix.
type scopedSessions struct {
	prefix string
	c      tls.ClientSessionCache
}

func (s scopedSessions) Get(key string) (*tls.ClientSessionState, bool) {
	return s.c.Get(s.prefix + key)
}

func (s scopedSessions) Put(key string, cs *tls.ClientSessionState) { s.c.Put(s.prefix+key, cs) }

// backendTLSError is a failed TLS handshake with a backend (in full_strict
// mode typically an unverifiable certificate).
type backendTLSError struct{ err error }

func (e *backendTLSError) Error() string { return "backend TLS handshake: " + e.err.Error() }
func (e *backendTLSError) Unwrap() error { return e.err }

// sweep closes idle connections past BackendIdleTimeout and retires
// upstreams unused for a long time (backends that left the table).
func (u *upstreams) sweep(now time.Time) {
	timeout := u.s.cfg.BackendIdleTimeout
	retireAfter := max(10*time.Minute, 4*timeout)
	u.m.Range(func(k, v any) bool {
		up := v.(*upstream)
		var stale []*upConn
		up.mu.Lock()
		keep := up.idle[:0]
		for _, uc := range up.idle {
			if now.Sub(uc.idleSince) >= timeout {
				stale = append(stale, uc)
			} else {
				keep = append(keep, uc)
			}
		}
		for i := len(keep); i < len(up.idle); i++ {
			up.idle[i] = nil
		}
		up.idle = keep
		retire := len(up.idle) == 0 && now.Sub(up.lastUsed) > retireAfter
		if retire {
			up.removed = true
		}
		up.mu.Unlock()
		for _, uc := range stale {
			uc.close()
		}
		if retire {
			u.m.Delete(k)
		}
		return true
	})
}

// closeAll closes every idle connection (shutdown).
func (u *upstreams) closeAll() {
	u.m.Range(func(k, v any) bool {
		up := v.(*upstream)
		up.mu.Lock()
		idle := up.idle
		up.idle = nil
		up.removed = true
		up.mu.Unlock()
		for _, uc := range idle {
			uc.close()
		}
		u.m.Delete(k)
		return true
	})
}
