package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"time"

	"go.uber.org/zap"

	"github.com/singularity-ng/singularity-edge/pools"
)

// newTLSConfig is the termination configuration: certificate by SNI from
// the CertificateSource, TLS 1.2 minimum, h2 preferred over http/1.1.
func (s *Server) newTLSConfig() *tls.Config {
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{alpnProtocolHTTP2, alpnProtocolHTTP11},
	}
	if s.certs != nil {
		cfg.GetCertificate = s.certs.GetCertificate
	}
	return cfg
}

// prefixConn replays bytes already read from a connection (the PROXY
// remainder and the peeked ClientHello) before reading from it again.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		if len(c.prefix) == 0 {
			c.prefix = nil
		}
		return n, nil
	}
	return c.Conn.Read(p)
}

// detachPrefix makes the connection independent of the buffer its prefix
// came from (which goes back to a pool).
func (c *prefixConn) detachPrefix() {
	if len(c.prefix) > 0 {
		c.prefix = append([]byte(nil), c.prefix...)
	}
}

// readClientHello reads from r into buf (which holds n bytes already) until
// a whole ClientHello is there. On error it still returns how many bytes
// buf holds (to recognize plain HTTP).
func readClientHello(r io.Reader, buf []byte, n int) (clientHelloInfo, int, error) {
	for {
		info, _, err := parseClientHello(buf[:n])
		if err == nil {
			return info, n, nil
		}
		if !errors.Is(err, errNeedMore) {
			return clientHelloInfo{}, n, err
		}
		if n == len(buf) {
			return clientHelloInfo{}, n, helloErrorf("ClientHello exceeds %d bytes", len(buf))
		}
		m, err := r.Read(buf[n:])
		n += m
		if err != nil && m == 0 {
			return clientHelloInfo{}, n, err
		}
	}
}

// TLS alert descriptions sent when a handshake is refused before
// crypto/tls takes over (RFC 8446 6.2, RFC 6066 3).
const (
	alertHandshakeFailure = 40
	alertInternalError    = 80
	alertUnrecognizedName = 112
)

// sendAlert writes a fatal TLS alert record, so that a refused client sees
// why instead of a bare close.
func sendAlert(c net.Conn, desc byte, timeout time.Duration) {
	_ = c.SetWriteDeadline(time.Now().Add(timeout))
	_, _ = c.Write([]byte{21, 3, 3, 0, 2, 2, desc})
}

// plainHTTPOnTLSPort is the answer to a request line on the TLS port, as
// nginx answers it ("The plain HTTP request was sent to HTTPS port").
const plainHTTPOnTLSPort = "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n" +
	"Cache-Control: no-store\r\nContent-Length: 43\r\nConnection: close\r\n\r\n" +
	"a plain HTTP request was sent to HTTPS port\n"

// looksLikeHTTP reports whether b starts like an HTTP/1 request line
// (upper-case method letters then a space) rather than a TLS record.
func looksLikeHTTP(b []byte) bool {
	i := 0
	for i < len(b) && i < 16 && b[i] >= 'A' && b[i] <= 'Z' {
		i++
	}
	return i > 0 && (i == len(b) || b[i] == ' ')
}

// serveTLS handles a connection on the HTTPS listener: it reads the
// ClientHello without consuming it, then answers an ACME TLS-ALPN-01
// challenge, relays a passthrough pool's connection to its backend, refuses
// names whose pool is plain HTTP only, or terminates TLS and serves HTTP/2
// or HTTP/1.1. buf holds n bytes already read (after any PROXY header); it
// is returned to the pool here.
func (s *Server) serveTLS(tc *trackedConn, info connInfo, buf *[]byte, n int) {
	hello, n, err := readClientHello(tc.Conn, *buf, n)
	if err != nil {
		plainHTTP := n > 0 && looksLikeHTTP((*buf)[:min(n, 17)])
		s.putBuf(buf)
		s.metrics.hsFailed.Inc()
		if plainHTTP {
			_ = tc.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
			_, _ = io.WriteString(tc.Conn, plainHTTPOnTLSPort)
			s.log.Debug("tls: plain HTTP on the TLS port", zap.Stringer("client", info.client))
			return
		}
		s.logTLSFailure("invalid_client_hello", "", "", err)
		return
	}
	raw := (*buf)[:n]

	if hello.offersALPN(alpnProtocolACME) {
		s.serveTLSALPN01(tc, hello, raw)
		s.putBuf(buf)
		return
	}

	pool := s.router.Table().Lookup(hello.ServerName)
	if pool == nil {
		// No pool serves the name (and there is no default pool):
		// nothing to terminate for, nothing to pass through.
		s.putBuf(buf)
		s.metrics.hsRefused.Inc()
		desc := byte(alertUnrecognizedName)
		if hello.ServerName == "" {
			desc = alertHandshakeFailure // no name to not recognize
		}
		sendAlert(tc.Conn, desc, s.cfg.WriteTimeout)
		s.logTLSFailure("unknown_sni", "", hello.ServerName, nil)
		return
	}
	switch pool.SSLMode {
	case pools.SSLModePassthrough:
		s.metrics.hsPassthrough.Inc()
		s.passthrough(tc, info, pool, raw)
		s.putBuf(buf)
		return
	case pools.SSLModeOff, "":
		s.putBuf(buf)
		s.metrics.hsRefused.Inc()
		sendAlert(tc.Conn, alertUnrecognizedName, s.cfg.WriteTimeout)
		s.log.Debug("tls: refused, pool serves plain HTTP only", zap.String("sni", hello.ServerName), zap.String("pool", pool.Name))
		return
	}
	if s.certs == nil {
		s.putBuf(buf)
		s.metrics.hsRefused.Inc()
		sendAlert(tc.Conn, alertHandshakeFailure, s.cfg.WriteTimeout)
		return
	}

	pc := &prefixConn{Conn: tc.Conn, prefix: raw}
	conn := tls.Server(pc, s.tlsConfig)
	err = conn.Handshake()
	pc.detachPrefix()
	s.putBuf(buf)
	if err != nil {
		s.metrics.hsFailed.Inc()
		s.logTLSFailure("handshake_failed", pool.Name, hello.ServerName, err)
		return
	}
	s.metrics.hsOK.Inc()
	if conn.ConnectionState().NegotiatedProtocol == alpnProtocolHTTP2 {
		if err := tc.SetDeadline(time.Time{}); err != nil {
			return
		}
		s.h2.serve(tc, conn, info)
		return
	}
	cc := s.newClientConn(tc, conn, info, true, hello.ServerName)
	cc.serve()
	cc.release()
}

// serveTLSALPN01 completes a handshake with the acme-tls/1 challenge
// certificate (RFC 8737) and closes: the validation is the handshake.
func (s *Server) serveTLSALPN01(tc *trackedConn, hello clientHelloInfo, raw []byte) {
	if s.challenges == nil {
		s.metrics.hsRefused.Inc()
		sendAlert(tc.Conn, alertHandshakeFailure, s.cfg.WriteTimeout)
		return
	}
	cert, ok := s.challenges.TLSALPN01(hello.ServerName)
	if !ok || cert == nil {
		s.metrics.hsRefused.Inc()
		sendAlert(tc.Conn, alertUnrecognizedName, s.cfg.WriteTimeout)
		s.log.Debug("tls-alpn-01: no challenge pending", zap.String("sni", hello.ServerName))
		return
	}
	conn := tls.Server(&prefixConn{Conn: tc.Conn, prefix: raw}, &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{*cert},
		NextProtos:   []string{alpnProtocolACME},
	})
	if err := conn.Handshake(); err != nil {
		s.metrics.hsFailed.Inc()
		s.log.Debug("tls-alpn-01 handshake failed", zap.String("sni", hello.ServerName), zap.Error(err))
		return
	}
	s.metrics.hsACME.Inc()
	_ = conn.Close()
}

// passthrough relays a TLS connection it does not terminate: the peeked
// bytes go to a backend chosen by the pool's algorithm, then both
// directions are relayed by an event loop (loopTunnel) or, without one,
// by tunnel's goroutines. A backend
// that cannot be reached is excluded and another one tried: nothing was
// sent to the client yet.
func (s *Server) passthrough(tc *trackedConn, info connInfo, pool *pools.Pool, raw []byte) {
	// A tunnel like an upgraded connection, under the same bounds: without
	// one, a single address could hold any number of backend connections
	// (a ClientHello each, then silence for TunnelIdleTimeout).
	if !s.acquireUpgrade(&info) {
		s.metrics.upgradesRefused.Inc()
		sendAlert(tc.Conn, alertInternalError, s.cfg.WriteTimeout)
		return
	}
	defer s.releaseUpgrade(&info)
	var excludeBuf [4]*pools.Backend
	exclude := excludeBuf[:0]
	for try := 0; try <= s.cfg.MaxRetries; try++ {
		b, err := pool.Pick(pools.PickRequest{ClientIP: info.client.Addr(), Exclude: exclude})
		if err != nil {
			s.logUpstreamFailure(pool.Name, 503, err)
			return
		}
		attempt := b.Begin()
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.DialTimeout)
		bc, err := s.upstreams.tunnelDialer.DialContext(ctx, "tcp", b.Addr)
		cancel()
		if err == nil {
			_ = bc.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
			_, err = bc.Write(raw)
			if err != nil {
				_ = bc.Close()
			}
		}
		if err != nil {
			attempt.End(pools.Result{Err: err})
			s.logUpstreamFailure(pool.Name, 0, &backendError{addr: b.Addr, err: err})
			exclude = append(exclude, b)
			continue
		}
		if tc.SetDeadline(time.Time{}) != nil || bc.SetDeadline(time.Time{}) != nil {
			_ = bc.Close()
			attempt.End(pools.Result{})
			return
		}
		s.metrics.passthroughBytes.Add(float64(len(raw)))
		toBackend, toClient, ok := s.loopTunnel(tc, bc)
		if !ok {
			toBackend, toClient = s.tunnel(tc.Conn, bc, s.metrics.passthroughBytes)
		}
		_ = bc.Close()
		attempt.End(pools.Result{BytesOut: toBackend + int64(len(raw)), BytesIn: toClient})
		return
	}
}

// loopTunnel hands an established passthrough connection to the event
// loops and waits for its end; ok is false, with both connections
// untouched, when there are no loops or they refuse it (the caller then
// relays with goroutines).
func (s *Server) loopTunnel(tc *trackedConn, bc net.Conn) (toBackend, toClient int64, ok bool) {
	if s.loops == nil {
		return 0, 0, false
	}
	client, cok := unwrapTCP(tc.Conn)
	backend, bok := unwrapTCP(bc)
	if !cok || !bok {
		return 0, 0, false
	}
	t, err := s.loops.Add(client, backend)
	if err != nil {
		return 0, 0, false
	}
	tc.tunnel.Store(t)
	if tc.cut.Load() {
		t.Kill() // Shutdown's deadline passed while the tunnel was set up
	}
	<-t.Done()
	tc.tunnel.Store(nil)
	r := t.Result()
	return r.AToB, r.BToA, true
}
