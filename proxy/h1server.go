package proxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/singularity-ng/singularity-edge/pools"
)

// clientBufSize is the initial read buffer of a client connection; heads
// larger than that grow it up to MaxRequestHeaderBytes.
const clientBufSize = 4 << 10

// bodyBufSize is the buffer a streamed request body moves through.
const bodyBufSize = 32 << 10

// maxInlineResponse is how much of a response body is appended to the
// head so that both leave in one write.
const maxInlineResponse = 32 << 10

const acmeChallengePrefix = "/.well-known/acme-challenge/"

// clientConn serves HTTP/1.1 on one client connection (plain or TLS). All
// its state is owned by the connection's goroutine, except while a request
// body streams to a backend from a second goroutine (see outRequest).
type clientConn struct {
	// failure is why the current request got a local 502/503/504, for
	// its access log line; nil otherwise.
	failure  error
	s        *Server
	tc       *trackedConn
	c        net.Conn // *net.TCPConn or *tls.Conn
	https    bool
	sni      string
	info     connInfo
	clientIP []byte // textual client address for X-Forwarded-For and X-Real-IP

	buf    []byte // read buffer; buf[r:w] is unread
	r, w   int
	headAt int    // offset in buf of the current request head
	out    []byte // write buffer for heads

	head    requestHead
	fields  []field
	ex      exchange
	req     outRequest
	route   routeCache
	ups     upstreamCache
	pm      *poolMetrics
	reqID   []byte
	idBuf   [64]byte
	served  int
	rdl     time.Time
	wdl     time.Time
	now     time.Time // current time as far as the request path knows
	interim func(*exchange) error
	// leftover holds client bytes read past a streamed chunked body (a
	// pipelined request), moved back into buf when the body goroutine ends.
	leftover []byte
	// isHEAD: the current request's method is HEAD (its answers carry no
	// body, even a refusal of a head whose request line parsed).
	isHEAD bool
	// reframed and spans are reused storage for re-framing the buffered
	// part of a chunked request body.
	reframed []byte
	spans    []span
}

// routeCache remembers the last Host -> pool lookup of a connection;
// keep-alive clients send the same Host every time.
type routeCache struct {
	table *pools.Table
	host  []byte
	pool  *pools.Pool
}

func (rc *routeCache) lookup(t *pools.Table, host []byte) *pools.Pool {
	if rc.table == t && bytes.Equal(rc.host, host) {
		return rc.pool
	}
	p := t.Lookup(string(host))
	rc.table, rc.host, rc.pool = t, append(rc.host[:0], host...), p
	return p
}

func (s *Server) getBuf() *[]byte {
	if v := s.peekBufs.Get(); v != nil {
		return v.(*[]byte)
	}
	b := make([]byte, peekBufSize)
	return &b
}

func (s *Server) putBuf(b *[]byte) {
	if b != nil && cap(*b) == peekBufSize {
		*b = (*b)[:peekBufSize]
		s.peekBufs.Put(b)
	}
}

// peekBufSize holds a PROXY header plus a ClientHello of maxClientHello
// split over records.
const peekBufSize = maxClientHello + 4*recordHeaderLen + maxProxyHeaderV2

func (s *Server) newClientConn(tc *trackedConn, c net.Conn, info connInfo, https bool, sni string) *clientConn {
	cc := &clientConn{s: s, tc: tc, c: c, info: info, https: https, sni: sni}
	cc.clientIP = info.client.Addr().AppendTo(nil)
	if v := s.clientBufs.Get(); v != nil {
		cc.buf = *(v.(*[]byte))
	} else {
		cc.buf = make([]byte, clientBufSize)
	}
	cc.out = make([]byte, 0, 2048)
	cc.fields = make([]field, 0, 32)
	cc.ex.resp.fields = make([]field, 0, 32)
	cc.interim = cc.relayInterim
	cc.now = time.Now()
	if https {
		cc.setReadDeadline(cc.now, s.cfg.ReadHeaderTimeout)
	}
	return cc
}

// adoptPrefix puts bytes already read (after a PROXY header) in front.
func (cc *clientConn) adoptPrefix(p []byte) {
	if len(p) > len(cc.buf) {
		cc.buf = make([]byte, len(p)+clientBufSize)
	}
	cc.w = copy(cc.buf, p)
}

func (cc *clientConn) release() {
	if cap(cc.buf) == clientBufSize {
		b := cc.buf[:clientBufSize]
		cc.s.clientBufs.Put(&b)
	}
	cc.buf = nil
}

func (cc *clientConn) setReadDeadline(now time.Time, d time.Duration) {
	want := now.Add(d)
	if needDeadline(cc.rdl, want, d) {
		_ = cc.c.SetReadDeadline(want)
		cc.rdl = want
	}
}

func (cc *clientConn) setWriteDeadline(now time.Time, d time.Duration) {
	want := now.Add(d)
	if needDeadline(cc.wdl, want, d) {
		_ = cc.c.SetWriteDeadline(want)
		cc.wdl = want
	}
}

// write sends p to the client. The write deadline is computed from
// cc.now, which the request path keeps current (time.Now is not free).
func (cc *clientConn) write(p []byte) error {
	cc.setWriteDeadline(cc.now, cc.s.cfg.WriteTimeout)
	_, err := cc.c.Write(p)
	return err
}

// serve reads and answers requests until the connection ends.
func (cc *clientConn) serve() {
	for {
		if err := cc.readHead(); err != nil {
			var he *httpError
			if errors.As(err, &he) {
				cc.reqID = cc.s.ids.appendNew(cc.idBuf[:0])
				cc.now = time.Now()
				cc.respondLocal(he.status, he.msg, nil, cc.s.metrics.noPool, cc.now, false)
			}
			return
		}
		if !cc.handle() || cc.s.shuttingDown() || cc.r <= cc.headAt {
			// No progress past the head would re-read it forever.
			return
		}
		cc.served++
	}
}

var errShuttingDown = errors.New("server shutting down")

// readHead reads until buf holds a complete request head and parses it.
func (cc *clientConn) readHead() error {
	s := cc.s
	cc.isHEAD = false
	if cc.r == cc.w {
		cc.r, cc.w = 0, 0
	} else if cc.r > 0 {
		cc.w = copy(cc.buf, cc.buf[cc.r:cc.w])
		cc.r = 0
	}
	if cc.served > 0 && cc.w == 0 {
		cc.setReadDeadline(cc.now, s.cfg.IdleTimeout)
	}
	headerDeadline := cc.served == 0
	for {
		if cc.w > cc.r {
			if skip := skipLeadingCRLF(cc.buf[cc.r:cc.w]); skip > 0 {
				cc.r += skip
				continue
			}
			data := cc.buf[cc.r:cc.w]
			if end := findHeadEnd(data); end >= 0 {
				cc.headAt = cc.r
				err := parseRequestHead(&cc.head, data[:end], cc.fields)
				cc.fields = cc.head.fields[:0]
				// Known even when the rest of the head is refused (once
				// its request line parsed): the answer to a HEAD request
				// never has a body.
				cc.isHEAD = cc.head.lineOK && string(cc.head.method.of(data)) == "HEAD"
				if err != nil {
					cc.head.headLen = 0 // nothing of it may be used
				}
				return err
			}
			if len(data) >= s.cfg.MaxRequestHeaderBytes {
				return errHeadTooLarge
			}
			if hasBareLF(data) {
				// Lines must end in CRLF; a head with bare LFs would never
				// complete and must not be read leniently either.
				return errBadHeader
			}
			if !headerDeadline {
				// The first bytes of a request arrived: from now on the
				// whole head must come within ReadHeaderTimeout.
				want := time.Now().Add(s.cfg.ReadHeaderTimeout)
				_ = cc.c.SetReadDeadline(want)
				cc.rdl = want
				headerDeadline = true
			}
		}
		if cc.w == len(cc.buf) {
			if cc.r > 0 {
				cc.w = copy(cc.buf, cc.buf[cc.r:cc.w])
				cc.r = 0
			} else {
				grown := make([]byte, min(2*len(cc.buf), s.cfg.MaxRequestHeaderBytes+clientBufSize))
				copy(grown, cc.buf[:cc.w])
				cc.release()
				cc.buf = grown
			}
		}
		idle := cc.w == cc.r
		if idle {
			if cc.served > 0 {
				yieldBeforeRead() // the client is still reading our answer
			}
			cc.tc.idle.Store(true)
			if s.shuttingDown() {
				cc.tc.idle.Store(false)
				return errShuttingDown
			}
		}
		n, err := cc.c.Read(cc.buf[cc.w:])
		if idle {
			cc.tc.idle.Store(false)
		}
		cc.w += n
		if err != nil && n == 0 {
			return err
		}
	}
}

// handle answers one request; it reports whether the connection may serve
// another.
func (cc *clientConn) handle() bool {
	s := cc.s
	h := &cc.head
	b := cc.headBytes()
	start := time.Now()
	cc.now = start

	cc.reqID = nil
	cc.failure = nil
	for i := range h.fields {
		if f := &h.fields[i]; f.kind == hdrXRequestID {
			if v := b[f.vs:f.ve]; validRequestID(v) {
				cc.reqID = append(cc.idBuf[:0], v...)
			}
			break
		}
	}
	if cc.reqID == nil {
		cc.reqID = s.ids.appendNew(cc.idBuf[:0])
	}

	var host []byte
	switch {
	case !h.authority.empty():
		host = h.authority.of(b)
	case h.hostCount > 0:
		host = h.host.of(b)
	case cc.https:
		host = []byte(cc.sni)
	}
	path := h.path.of(b)
	acme := bytes.HasPrefix(path, []byte(acmeChallengePrefix))
	if acme && !cc.https && s.challenges != nil {
		if handled, keep := cc.serveHTTP01(b, host, path, start); handled {
			return keep
		}
	}

	table := s.router.Table()
	pool := cc.route.lookup(table, host)
	if s.cfg.AllowPoolHeader {
		for i := range h.fields {
			if f := &h.fields[i]; f.kind == hdrXPool {
				pool = table.Pool(string(b[f.vs:f.ve]))
				break
			}
		}
	}
	if pool == nil {
		return cc.respondLocal(404, "no pool serves this host", nil, s.metrics.noPool, start, true)
	}
	pm := cc.poolMetrics(pool)
	switch {
	case !cc.https && pool.SSLMode != pools.SSLModeOff && !pool.AllowHTTP && !acme:
		return cc.redirectToHTTPS(host, path, pm, start)
	case cc.https && (pool.SSLMode == pools.SSLModeOff || pool.SSLMode == pools.SSLModePassthrough):
		return cc.respondLocal(421, "misdirected request: this host is not served over TLS here", nil, pm, start, true)
	}
	return cc.forward(pool, pm, host, start)
}

func (cc *clientConn) poolMetrics(p *pools.Pool) *poolMetrics {
	if cc.pm == nil || cc.pm.name != p.Name {
		cc.pm = cc.s.metrics.forPool(p.Name)
	}
	return cc.pm
}

// serveHTTP01 answers an ACME HTTP-01 challenge it knows; handled=false
// lets the request go on to the pool (which may run its own ACME client).
func (cc *clientConn) serveHTTP01(b, host, path []byte, start time.Time) (handled, keep bool) {
	token := path[len(acmeChallengePrefix):]
	if i := bytes.IndexByte(token, '?'); i >= 0 {
		token = token[:i]
	}
	m := cc.head.method.of(b)
	if len(token) == 0 || (string(m) != "GET" && string(m) != "HEAD") {
		return false, false
	}
	rh := routingHost(nil, host)
	keyAuth, ok := cc.s.challenges.HTTP01(string(rh), string(token))
	if !ok {
		return false, false
	}
	return true, cc.respondLocal(200, keyAuth, nil, cc.s.metrics.forPool(acmePoolLabel), start, true)
}

// acmePoolLabel is the pool label of answered ACME HTTP-01 challenges.
const acmePoolLabel = "acme"

// redirectToHTTPS answers a plain HTTP request for a TLS pool: 301 for GET
// and HEAD (cacheable, what browsers expect), 308 otherwise (keeps the
// method and body).
func (cc *clientConn) redirectToHTTPS(host, path []byte, pm *poolMetrics, start time.Time) bool {
	var loc []byte
	loc = append(loc, "https://"...)
	h := host
	if len(h) > 0 && h[0] == '[' {
		if i := bytes.IndexByte(h, ']'); i > 0 {
			h = h[:i+1]
		}
	} else if i := bytes.LastIndexByte(h, ':'); i >= 0 {
		h = h[:i]
	}
	loc = append(loc, h...)
	if p := cc.s.redirectPort; p != 0 && p != 443 {
		loc = append(loc, ':')
		loc = strconv.AppendInt(loc, int64(p), 10)
	}
	if len(path) == 0 || path[0] != '/' {
		loc = append(loc, '/')
	}
	loc = append(loc, path...)
	status := 308
	if m := cc.head.method.of(cc.headBytes()); string(m) == "GET" || string(m) == "HEAD" {
		status = 301
	}
	extra := append([]byte("Location: "), loc...)
	extra = append(extra, "\r\n"...)
	return cc.respondLocal(status, "redirecting to "+string(loc), extra, pm, start, true)
}

// consumeBody skips the request body when it is completely buffered; it
// reports false when it is not (the connection must close: the next
// request's start is unknown).
func (cc *clientConn) consumeBody() bool {
	h := &cc.head
	bodyAt := cc.headAt + h.headLen
	rest := cc.buf[bodyAt:cc.w]
	switch h.framing {
	case bodyNone:
		cc.r = bodyAt
		return true
	case bodyLength:
		if int64(len(rest)) >= h.contentLen {
			cc.r = bodyAt + int(h.contentLen)
			return true
		}
	case bodyChunked:
		var sc chunkScanner
		if n, err := sc.scan(rest, nil); err == nil && sc.done() {
			cc.r = bodyAt + n
			return true
		}
	}
	return false
}

// statusText is the reason phrase of the statuses the proxy answers itself.
func statusText(code int) string {
	switch code {
	case 200:
		return "OK"
	case 301:
		return "Moved Permanently"
	case 308:
		return "Permanent Redirect"
	case 400:
		return "Bad Request"
	case 404:
		return "Not Found"
	case 405:
		return "Method Not Allowed"
	case 408:
		return "Request Timeout"
	case 421:
		return "Misdirected Request"
	case 431:
		return "Request Header Fields Too Large"
	case 501:
		return "Not Implemented"
	case 502:
		return "Bad Gateway"
	case 503:
		return "Service Unavailable"
	case 504:
		return "Gateway Timeout"
	case 505:
		return "HTTP Version Not Supported"
	}
	return "Error"
}

// respondLocal answers with a short text body. consume says whether the
// request body still has to be skipped; the connection stays open when the
// request was complete and nothing forbids it.
func (cc *clientConn) respondLocal(status int, msg string, extra []byte, pm *poolMetrics, start time.Time, consume bool) bool {
	keep := cc.head.headLen > 0 && !cc.head.connClose && !cc.s.shuttingDown()
	if keep && consume {
		keep = cc.consumeBody()
	}
	out := cc.out[:0]
	out = append(out, "HTTP/1.1 "...)
	out = strconv.AppendInt(out, int64(status), 10)
	out = append(out, ' ')
	out = append(out, statusText(status)...)
	out = append(out, "\r\nContent-Type: text/plain; charset=utf-8\r\nCache-Control: no-store\r\nContent-Length: "...)
	out = strconv.AppendInt(out, int64(len(msg)+1), 10)
	out = append(out, "\r\nX-Request-Id: "...)
	out = append(out, cc.reqID...)
	out = append(out, "\r\n"...)
	out = append(out, extra...)
	if !keep {
		out = append(out, "Connection: close\r\n"...)
	} else if cc.head.minor == 0 {
		out = append(out, "Connection: keep-alive\r\n"...)
	}
	out = append(out, "\r\n"...)
	if !cc.isHEAD {
		out = append(out, msg...)
		out = append(out, '\n')
	}
	cc.out = out
	// The write deadline is computed from cc.now, which may be as old as
	// the request's start (a 504 comes ResponseHeaderTimeout later): an
	// old time would make the deadline pass and the client get nothing.
	cc.now = time.Now()
	err := cc.write(out)
	cc.finish(pm, status, start, nil, int64(len(out)))
	return keep && err == nil
}

// forward proxies the request to a backend of pool and relays the answer.
func (cc *clientConn) forward(pool *pools.Pool, pm *poolMetrics, host []byte, start time.Time) bool {
	keep := cc.forwardRequest(pool, pm, host, start)
	cc.tc.backend.Store(nil)
	return keep
}

func (cc *clientConn) forwardRequest(pool *pools.Pool, pm *poolMetrics, host []byte, start time.Time) bool {
	s := cc.s
	h := &cc.head
	b := cc.headBytes()
	if h.isUpgrade() {
		if !s.acquireUpgrade(&cc.info) {
			s.metrics.upgradesRefused.Inc()
			return cc.respondLocal(503, "service unavailable: too many upgraded connections", nil, pm, start, true)
		}
		defer s.releaseUpgrade(&cc.info)
	} else {
		// Upgrades have their own bound; every other exchange counts
		// against the client address, whatever connection it came on.
		ok, release := s.acquireExchange(&cc.info)
		if !ok {
			return cc.respondLocal(503, "service unavailable: too many requests in flight from this client address", []byte(retryAfter), pm, start, true)
		}
		if release {
			defer s.releaseExchange(&cc.info)
		}
	}
	buffered := cc.buf[cc.headAt+h.headLen : cc.w]

	pick := pools.PickRequest{ClientIP: cc.info.client.Addr()}
	sticky := pool.StickyCookieName()
	if sticky != "" {
		if v := cookieValue(b, h.fields, sticky); v != nil {
			if id, ok := pool.VerifySticky(string(v)); ok {
				pick.StickyID = id
			}
		}
	}
	if name := pool.HashHeader(); name != "" {
		if v := headerValue(b, h.fields, name); len(v) > 0 {
			pick.HashKey = string(v)
		}
	}

	req := &cc.req
	*req = outRequest{idempotent: idempotentMethod(h.method.of(b)), isHEAD: string(h.method.of(b)) == "HEAD", track: &cc.tc.backend}
	consumed := 0
	switch h.framing {
	case bodyLength:
		if int64(len(buffered)) >= h.contentLen {
			req.inline = buffered[:h.contentLen]
		} else {
			req.inline = buffered
			req.stream = cc.streamLength(h.contentLen - int64(len(buffered)))
		}
		consumed = len(req.inline)
	case bodyChunked:
		// The backend gets the data framed by the proxy, never the
		// client's size lines or extensions; trailer fields that may
		// cross the proxy follow its last chunk.
		sc := chunkScanner{keepTrailers: true}
		spans := cc.spans[:0]
		n, err := sc.scan(buffered, &spans)
		cc.spans = spans[:0]
		if err != nil {
			cc.respondLocal(400, "malformed chunked request body", nil, pm, start, false)
			return false
		}
		framed := cc.reframed[:0]
		for _, sp := range spans {
			framed = appendChunk(framed, sp.of(buffered))
		}
		if sc.done() {
			framed = appendLastChunk(framed, sc.trailers)
		}
		cc.reframed = framed
		req.inline = framed
		consumed = n
		if !sc.done() {
			req.stream = cc.streamChunked(sc)
		}
	}
	if req.stream != nil {
		req.abort = cc.abortBodyRead
	}
	cc.out = cc.appendUpstreamHead(cc.out[:0], b, host)
	req.head = cc.out
	cc.r = cc.headAt + h.headLen + consumed

	ex := &cc.ex
	err := s.roundTrip(ex, &cc.ups, pool, pick, req, cc.interim, start)
	if ex.bodyDone == nil {
		// The body goroutine has ended (or there was none); otherwise
		// relayResponse waits for it first.
		cc.bodyEnded()
	}
	if err != nil {
		status := statusForError(err)
		s.logUpstreamFailure(pool.Name, status, err)
		cc.failure = err
		if !req.replayable() {
			// Where the streamed body ended is unknown: say that the
			// connection closes.
			h.connClose = true
		}
		return cc.respondLocal(status, failureMessage(status), nil, pm, start, false)
	}
	return cc.relayResponse(pool, pm, pick.StickyID, start)
}

// retryAfter goes with a 503 for a limit the client hit.
const retryAfter = "Retry-After: 1\r\n"

// failureMessage is the body of a failed exchange's answer.
func failureMessage(status int) string {
	switch status {
	case 400:
		return "bad request: malformed or incomplete request body"
	case 408:
		return "request timeout: the request body was sent too slowly"
	case 503:
		return "service unavailable: no healthy backend"
	case 504:
		return "gateway timeout: the backend did not answer in time"
	}
	return "bad gateway: the backend failed"
}

// abortBodyRead unblocks a body goroutine waiting for the client. It runs
// while that goroutine may still use cc.rdl: bodyEnded, called once the
// goroutine has ended, forgets the deadline.
func (cc *clientConn) abortBodyRead() {
	_ = cc.c.SetReadDeadline(time.Now())
}

// bodyEnded runs once the request body goroutine (if any) has ended: it
// moves bytes read past the body back into buf and forgets the read
// deadline the goroutine or abortBodyRead left (the next read sets its
// own).
func (cc *clientConn) bodyEnded() {
	if cc.req.stream != nil {
		cc.rdl = time.Time{}
	}
	cc.restoreLeftover()
}

// restoreLeftover moves bytes read past a streamed body back into buf.
func (cc *clientConn) restoreLeftover() {
	if len(cc.leftover) == 0 {
		return
	}
	if len(cc.buf)-cc.w < len(cc.leftover) {
		// The old buffer is dropped, not pooled: slices of the current
		// head may still point into it.
		grown := make([]byte, cc.w+len(cc.leftover)+clientBufSize)
		copy(grown, cc.buf[:cc.w])
		cc.buf = grown
	}
	cc.w += copy(cc.buf[cc.w:], cc.leftover)
	cc.leftover = nil
}

// appendUpstreamHead writes the request head for the backend: the request
// line in origin-form, the client's header lines minus hop-by-hop ones
// (copied verbatim, consecutive kept lines in one append), then the
// X-Forwarded-* set, X-Request-Id and the framing/upgrade headers.
func (cc *clientConn) appendUpstreamHead(out, b, host []byte) []byte {
	h := &cc.head
	out = append(out, h.method.of(b)...)
	out = append(out, ' ')
	path := h.path.of(b)
	if len(path) == 0 || path[0] == '?' {
		out = append(out, '/')
	}
	out = append(out, path...)
	out = append(out, " HTTP/1.1\r\n"...)

	upgrade := h.isUpgrade()
	run := int32(-1)
	seenCL := false
	for i := range h.fields {
		f := &h.fields[i]
		keep := false
		switch f.kind {
		case hdrOther, hdrExpect, hdrCookie, hdrXPool:
			keep = !h.connOthers || !listedInConnection(b, h.fields, b[f.start:f.colon])
		case hdrXForwardedOther:
			keep = cc.info.trusted && (!h.connOthers || !listedInConnection(b, h.fields, b[f.start:f.colon]))
		case hdrHost:
			keep = h.authority.empty()
		case hdrTrailer:
			// A hint of the trailer fields to come, where they can come.
			keep = h.framing == bodyChunked
		case hdrContentLength:
			keep = !seenCL
			seenCL = true
		}
		if keep {
			if run < 0 {
				run = f.start
			}
		} else if run >= 0 {
			out = append(out, b[run:f.start]...)
			run = -1
		}
	}
	if run >= 0 {
		out = append(out, b[run:h.fields[len(h.fields)-1].end]...)
	}
	if !h.authority.empty() {
		out = append(out, "Host: "...)
		out = append(out, h.authority.of(b)...)
		out = append(out, "\r\n"...)
	} else if h.hostCount == 0 {
		out = append(out, "Host: "...)
		out = append(out, host...)
		out = append(out, "\r\n"...)
	}
	// X-Forwarded-For and Forwarded: a trusted proxy's list is extended
	// with its address, anyone else's is replaced (a client must not be
	// able to choose the address a backend believes it came from).
	out = append(out, "X-Forwarded-For: "...)
	if cc.info.trusted && h.xffCount > 0 {
		for i := range h.fields {
			if f := &h.fields[i]; f.kind == hdrXForwardedFor && f.ve > f.vs {
				out = append(out, b[f.vs:f.ve]...)
				out = append(out, ", "...)
			}
		}
	}
	out = append(out, cc.clientIP...)
	out = append(out, "\r\nForwarded: "...)
	if cc.info.trusted && h.xffCount > 0 {
		for i := range h.fields {
			if f := &h.fields[i]; f.kind == hdrForwarded && f.ve > f.vs {
				out = append(out, b[f.vs:f.ve]...)
				out = append(out, ", "...)
			}
		}
	}
	out = appendForwardedElement(out, cc.info.client.Addr(), cc.https)
	// X-Real-IP: a trusted proxy's is kept as sent; otherwise, sent or
	// not, it is the client's address (see "Forwarding headers" in
	// docs/ARCHITECTURE.md for why it is always set).
	if cc.info.trusted && h.realIPCount > 0 {
		for i := range h.fields {
			if f := &h.fields[i]; f.kind == hdrXRealIP && f.ve > f.vs {
				out = append(out, "\r\nX-Real-IP: "...)
				out = append(out, b[f.vs:f.ve]...)
			}
		}
	} else {
		out = append(out, "\r\nX-Real-IP: "...)
		out = append(out, cc.clientIP...)
	}
	if cc.https {
		out = append(out, "\r\nX-Forwarded-Proto: https\r\n"...)
	} else {
		out = append(out, "\r\nX-Forwarded-Proto: http\r\n"...)
	}
	if len(host) > 0 {
		out = append(out, "X-Forwarded-Host: "...)
		out = append(out, host...)
		out = append(out, "\r\n"...)
	}
	out = append(out, "X-Request-Id: "...)
	out = append(out, cc.reqID...)
	out = append(out, "\r\n"...)
	if upgrade {
		out = append(out, "Connection: Upgrade\r\nUpgrade: "...)
		out = append(out, h.upgrade.of(b)...)
		out = append(out, "\r\n"...)
	}
	if h.framing == bodyChunked {
		out = append(out, "Transfer-Encoding: chunked\r\n"...)
	}
	return append(out, "\r\n"...)
}

// relayInterim passes a 1xx response (100 Continue, 103 Early Hints) to
// the client; HTTP/1.0 clients never get one (RFC 9110 15.2).
func (cc *clientConn) relayInterim(ex *exchange) error {
	if cc.head.minor == 0 {
		return nil
	}
	uc := ex.uc
	rb := uc.buf[uc.r : uc.r+ex.resp.headLen]
	out := cc.appendResponseHead(nil, rb, &ex.resp, "", false, false)
	return cc.write(out)
}

// appendResponseHead writes the response head for the client: the status
// line as HTTP/1.1, the backend's header lines minus hop-by-hop ones,
// X-Request-Id, an optional sticky cookie and the connection/framing
// headers.
func (cc *clientConn) appendResponseHead(out, rb []byte, r *responseHead, setCookie string, keep, decode bool) []byte {
	out = append(out, "HTTP/1.1 "...)
	out = append(out, r.statusRest.of(rb)...)
	out = append(out, "\r\n"...)
	upgrade := r.status == 101
	run := int32(-1)
	seenCL := false
	for i := range r.fields {
		f := &r.fields[i]
		keepLine := false
		switch f.kind {
		case hdrOther, hdrHost, hdrExpect, hdrCookie, hdrXPool, hdrXForwardedFor, hdrXForwardedHost, hdrXForwardedProto, hdrForwarded, hdrXRealIP, hdrXForwardedOther, hdrForwardingTwin:
			keepLine = !r.connOthers || !listedInConnection(rb, r.fields, rb[f.start:f.colon])
		case hdrContentLength:
			keepLine = !seenCL && r.framing != bodyChunked && !decode
			seenCL = true
		case hdrTrailer:
			keepLine = r.framing == bodyChunked && !decode
		}
		if keepLine {
			if run < 0 {
				run = f.start
			}
		} else if run >= 0 {
			out = append(out, rb[run:f.start]...)
			run = -1
		}
	}
	if run >= 0 {
		out = append(out, rb[run:r.fields[len(r.fields)-1].end]...)
	}
	out = append(out, "X-Request-Id: "...)
	out = append(out, cc.reqID...)
	out = append(out, "\r\n"...)
	if setCookie != "" {
		out = append(out, "Set-Cookie: "...)
		out = append(out, setCookie...)
		out = append(out, "\r\n"...)
	}
	switch {
	case upgrade:
		out = append(out, "Connection: Upgrade\r\nUpgrade: "...)
		out = append(out, r.upgrade.of(rb)...)
		out = append(out, "\r\n"...)
		return append(out, "\r\n"...)
	case r.framing == bodyChunked && !decode:
		out = append(out, "Transfer-Encoding: chunked\r\n"...)
	}
	if r.status >= 200 {
		if !keep {
			out = append(out, "Connection: close\r\n"...)
		} else if cc.head.minor == 0 {
			out = append(out, "Connection: keep-alive\r\n"...)
		}
	}
	return append(out, "\r\n"...)
}

// relayResponse sends the backend's response (head read, body streaming)
// to the client and settles the backend connection and the attempt.
func (cc *clientConn) relayResponse(pool *pools.Pool, pm *poolMetrics, stickyID string, start time.Time) bool {
	s := cc.s
	h := &cc.head
	ex := &cc.ex
	uc := ex.uc
	r := &ex.resp
	rb := uc.buf[uc.r : uc.r+r.headLen]

	if r.status == 101 {
		if !h.isUpgrade() || cc.req.stream != nil {
			ex.finishBody(&cc.req)
			return cc.failAfterHead(pool, pm, start, errors.New("backend switched protocols without an upgrade request"))
		}
		return cc.relayUpgrade(pm, start)
	}

	keep := !h.connClose && !s.shuttingDown()
	decode := false
	switch r.framing {
	case bodyClose:
		keep = false
	case bodyChunked:
		if h.minor == 0 {
			// HTTP/1.0 has no chunked coding: send the data and close.
			decode = true
			keep = false
		}
	}
	if cc.req.stream != nil && !ex.progress.read() {
		// The backend answers before the request body was read: the
		// connection cannot be reused unless the body completes.
		keep = keep && ex.bodyDone == nil
	}
	setCookie := ""
	if name := pool.StickyCookieName(); name != "" && ex.backend.ID != stickyID {
		if v := pool.StickyValue(ex.backend); v != "" {
			setCookie = stickyCookie(name, v, cc.https)
		}
	}
	out := cc.appendResponseHead(cc.out[:0], rb, r, setCookie, keep, decode)
	uc.r += r.headLen
	status := r.status

	var written int64
	var clientErr, backendErr error
	complete := false
	switch r.framing {
	case bodyNone:
		clientErr = cc.write(out)
		written = int64(len(out))
		complete = true
	case bodyLength:
		written, complete, clientErr, backendErr = cc.relayLength(out, uc, r.contentLen)
	case bodyChunked:
		written, complete, clientErr, backendErr = cc.relayChunked(out, uc, decode)
		if written == 0 && backendErr != nil && clientErr == nil {
			// The head waits for the first chunk line, which came with
			// it and is malformed: nothing reached the client, which gets
			// a 502 rather than a close (and the log no 200).
			ex.finishBody(&cc.req)
			return cc.failAfterHead(pool, pm, start, backendErr)
		}
	case bodyClose:
		written, clientErr, backendErr = cc.relayUntilClose(out, uc)
		complete = backendErr == nil && clientErr == nil
	}
	cc.out = out[:0]

	bodySent := ex.finishBody(&cc.req)
	if ex.clientBodyFailed() {
		// The client's body failed while the response was relayed; the
		// read it interrupted is not the backend's failure.
		backendErr = nil
	}
	cc.bodyEnded()
	end := time.Now()
	if ex.uc != nil {
		if complete && bodySent && !r.connClose && r.framing != bodyClose && uc.r == uc.w && !s.shuttingDown() {
			uc.r, uc.w = 0, 0
			uc.reused = false
			uc.up.put(uc, end, s.cfg.MaxIdleConnsPerBackend)
		} else {
			uc.close()
		}
		ex.uc = nil
	}
	ex.attempt.End(pools.Result{Status: status, Err: backendErr, BytesIn: ex.respBytes, BytesOut: ex.bytesOut, Latency: end.Sub(ex.started)})
	ex.attempt = nil
	cc.now = end
	cc.finish(pm, status, start, ex.backend, written)
	if backendErr != nil && s.log.Core().Enabled(zap.DebugLevel) {
		s.log.Debug("proxy: backend failed mid-response", zap.String("pool", pool.Name), zap.Error(backendErr))
	}
	return keep && complete && bodySent && clientErr == nil
}

// failAfterHead answers 502 for a response that cannot be relayed.
func (cc *clientConn) failAfterHead(pool *pools.Pool, pm *poolMetrics, start time.Time, err error) bool {
	ex := &cc.ex
	ex.uc.close()
	ex.uc = nil
	ex.attempt.End(pools.Result{Err: err, BytesIn: ex.respBytes, BytesOut: ex.bytesOut})
	ex.attempt = nil
	cc.s.log.Debug("proxy: unusable response", zap.String("pool", pool.Name), zap.Error(err))
	cc.respondLocal(502, "bad gateway: the backend failed", nil, pm, start, false)
	return false
}

// stickyCookie formats the Set-Cookie value pinning the client.
func stickyCookie(name, value string, secure bool) string {
	c := name + "=" + value + "; Path=/; HttpOnly; SameSite=Lax"
	if secure {
		c += "; Secure"
	}
	return c
}

// relayLength copies a Content-Length body. The head and whatever part of
// the body is buffered leave in one write.
func (cc *clientConn) relayLength(out []byte, uc *upConn, n int64) (written int64, complete bool, clientErr, backendErr error) {
	avail := int64(uc.w - uc.r)
	take := min(avail, n)
	if take <= maxInlineResponse {
		out = append(out, uc.buf[uc.r:uc.r+int(take)]...)
		clientErr = cc.write(out)
		written = int64(len(out))
	} else {
		if clientErr = cc.write(out); clientErr == nil {
			clientErr = cc.write(uc.buf[uc.r : uc.r+int(take)])
		}
		written = int64(len(out)) + take
	}
	uc.r += int(take)
	n -= take
	if clientErr != nil {
		return written, false, clientErr, nil
	}
	clock := rateClock{n: written}
	for n > 0 {
		uc.r, uc.w = 0, 0
		uc.setReadDeadline(cc.now, cc.s.cfg.ReadTimeout)
		m, err := uc.c.Read(uc.buf[:min(int64(len(uc.buf)), n)])
		cc.now = time.Now()
		cc.ex.respBytes += int64(m)
		if m > 0 {
			n -= int64(m)
			if werr := cc.writeBody(uc.buf[:m], &clock); werr != nil {
				return written, false, werr, nil
			}
			written += int64(m)
		}
		if err != nil && n > 0 {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return written, false, nil, err
		}
	}
	return written, true, nil, nil
}

// relayChunked forwards a chunked body as it arrives, validating its
// framing and framing the data again; decode sends the bare data for
// HTTP/1.0 clients, which cannot receive trailers (dropped then). Otherwise
// the backend's trailer fields that may cross the proxy follow the last
// chunk.
func (cc *clientConn) relayChunked(out []byte, uc *upConn, decode bool) (written int64, complete bool, clientErr, backendErr error) {
	sc := chunkScanner{keepTrailers: !decode}
	var spans []span
	first := true
	var clock rateClock
	for {
		if uc.r < uc.w {
			p := uc.buf[uc.r:uc.w]
			var n int
			var err error
			spans = spans[:0]
			n, err = sc.scan(p, &spans)
			if err != nil {
				return written, false, nil, err
			}
			if !first {
				out = out[:0]
			}
			// The client gets the data in the proxy's own framing (or
			// none for HTTP/1.0), never the backend's raw chunk lines.
			for _, sp := range spans {
				if decode {
					out = append(out, p[sp.s:sp.e]...)
				} else {
					out = appendChunk(out, p[sp.s:sp.e])
				}
			}
			if sc.done() && !decode {
				out = appendLastChunk(out, sc.trailers)
			}
			uc.r += n
			if len(out) > 0 {
				if first {
					clientErr = cc.write(out)
					clock = rateClock{n: int64(len(out))}
				} else {
					clientErr = cc.writeBody(out, &clock)
				}
				if clientErr != nil {
					return written, false, clientErr, nil
				}
				written += int64(len(out))
			}
			first = false
			if sc.done() {
				cc.out = out
				return written, true, nil, nil
			}
		} else if first {
			if clientErr = cc.write(out); clientErr != nil {
				return written, false, clientErr, nil
			}
			clock = rateClock{n: int64(len(out))}
			written += int64(len(out))
			first = false
			out = out[:0]
		}
		uc.r, uc.w = 0, 0
		uc.setReadDeadline(cc.now, cc.s.cfg.ReadTimeout)
		m, err := uc.c.Read(uc.buf)
		cc.now = time.Now()
		uc.w = m
		cc.ex.respBytes += int64(m)
		if err != nil && m == 0 {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return written, false, nil, err
		}
	}
}

// relayUntilClose copies a body delimited by the backend closing.
func (cc *clientConn) relayUntilClose(out []byte, uc *upConn) (written int64, clientErr, backendErr error) {
	out = append(out, uc.buf[uc.r:uc.w]...)
	uc.r = uc.w
	if clientErr = cc.write(out); clientErr != nil {
		return 0, clientErr, nil
	}
	written = int64(len(out))
	clock := rateClock{n: written}
	for {
		uc.setReadDeadline(cc.now, cc.s.cfg.ReadTimeout)
		m, err := uc.c.Read(uc.buf)
		cc.now = time.Now()
		cc.ex.respBytes += int64(m)
		if m > 0 {
			if clientErr = cc.writeBody(uc.buf[:m], &clock); clientErr != nil {
				return written, clientErr, nil
			}
			written += int64(m)
		}
		if err == io.EOF {
			return written, nil, nil
		}
		if err != nil {
			return written, nil, err
		}
	}
}

// relayUpgrade completes a protocol switch (WebSocket and others): the
// 101 goes to the client, then bytes flow both ways until either side
// closes or the tunnel idles out.
func (cc *clientConn) relayUpgrade(pm *poolMetrics, start time.Time) bool {
	s := cc.s
	ex := &cc.ex
	uc := ex.uc
	r := &ex.resp
	rb := uc.buf[uc.r : uc.r+r.headLen]
	out := cc.appendResponseHead(cc.out[:0], rb, r, "", true, false)
	uc.r += r.headLen
	out = append(out, uc.buf[uc.r:uc.w]...)
	uc.r = uc.w
	err := cc.write(out)
	cc.out = out[:0]
	if err == nil && cc.w > cc.r {
		uc.setWriteDeadline(cc.now, s.cfg.WriteTimeout)
		_, err = uc.c.Write(cc.buf[cc.r:cc.w])
		cc.r = cc.w
	}
	status := r.status
	var up, down int64
	if err == nil && cc.c.SetDeadline(time.Time{}) == nil && uc.c.SetDeadline(time.Time{}) == nil {
		up, down = s.tunnel(cc.c, uc.c, nil)
	}
	uc.close()
	ex.uc = nil
	cc.now = time.Now()
	ex.attempt.End(pools.Result{Status: status, BytesIn: ex.respBytes + down, BytesOut: ex.bytesOut + up, Latency: cc.now.Sub(ex.started)})
	ex.attempt = nil
	cc.finish(pm, status, start, ex.backend, int64(len(out))+down)
	return false
}

// streamLength returns the body sender for a Content-Length body of which
// n bytes are still to be read from the client.
func (cc *clientConn) streamLength(n int64) func(*upConn, *bodyProgress) (int64, error) {
	return func(uc *upConn, progress *bodyProgress) (int64, error) {
		s := cc.s
		bp := s.getBodyBuf()
		defer s.putBodyBuf(bp)
		buf := *bp
		var sent int64
		clock := rateClock{n: int64(len(cc.req.inline))}
		for n > 0 {
			now := time.Now()
			cc.setBodyReadDeadline(&clock, now)
			m, err := cc.c.Read(buf[:min(int64(len(buf)), n)])
			now = clock.waited(now)
			clock.n += int64(m)
			n -= int64(m)
			if n == 0 {
				progress.markRead()
			}
			if m > 0 {
				uc.setWriteDeadline(now, s.cfg.WriteTimeout)
				w, werr := uc.c.Write(buf[:m])
				sent += int64(w)
				if werr != nil {
					return sent, werr
				}
			}
			if err != nil && n > 0 {
				return sent, cc.bodyReadError(err)
			}
		}
		return sent, nil
	}
}

// setBodyReadDeadline bounds the next read of a request body: ReadTimeout
// of silence, or MinBodyRate on average after BodyRateGrace.
func (cc *clientConn) setBodyReadDeadline(clock *rateClock, now time.Time) {
	want, slack := cc.s.rateDeadline(clock, clock.n, now, cc.s.cfg.ReadTimeout)
	if moveDeadline(cc.rdl, want, slack) {
		_ = cc.c.SetReadDeadline(want)
		cc.rdl = want
	}
}

// bodyReadError marks a failed read of the request body as the client's.
func (cc *clientConn) bodyReadError(err error) error {
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	if isTimeout(err) {
		cc.s.metrics.slowBodies.Inc()
	}
	return &clientBodyError{err: err}
}

// writeBody writes part of a response body after its head: a client that
// reads it slower than MinBodyRate (after BodyRateGrace) is cut off, as
// is one that stops reading for WriteTimeout.
func (cc *clientConn) writeBody(p []byte, clock *rateClock) error {
	s := cc.s
	want, slack := s.rateDeadline(clock, clock.n+int64(len(p)), cc.now, s.cfg.WriteTimeout)
	if moveDeadline(cc.wdl, want, slack) {
		_ = cc.c.SetWriteDeadline(want)
		cc.wdl = want
	}
	n, err := cc.c.Write(p)
	cc.now = clock.waited(cc.now)
	clock.n += int64(n)
	if err != nil && isTimeout(err) {
		s.metrics.slowBodies.Inc()
	}
	return err
}

// streamChunked returns the body sender for a chunked body whose start
// (scanned by sc) was already sent.
func (cc *clientConn) streamChunked(sc chunkScanner) func(*upConn, *bodyProgress) (int64, error) {
	return func(uc *upConn, progress *bodyProgress) (int64, error) {
		s := cc.s
		bp := s.getBodyBuf()
		defer s.putBodyBuf(bp)
		buf := *bp
		var sent int64
		var spans []span
		framed := make([]byte, 0, len(buf)+64)
		clock := rateClock{n: int64(len(cc.req.inline))}
		for !sc.done() {
			now := time.Now()
			cc.setBodyReadDeadline(&clock, now)
			m, err := cc.c.Read(buf)
			now = clock.waited(now)
			clock.n += int64(m)
			if m > 0 {
				spans = spans[:0]
				n, serr := sc.scan(buf[:m], &spans)
				if serr != nil {
					return sent, &clientBodyError{err: serr}
				}
				framed = framed[:0]
				for _, sp := range spans {
					framed = appendChunk(framed, sp.of(buf))
				}
				if sc.done() {
					progress.markRead()
					framed = appendLastChunk(framed, sc.trailers)
					if n < m {
						cc.leftover = append([]byte(nil), buf[n:m]...)
					}
				}
				if len(framed) > 0 {
					uc.setWriteDeadline(now, s.cfg.WriteTimeout)
					w, werr := uc.c.Write(framed)
					sent += int64(w)
					if werr != nil {
						return sent, werr
					}
				}
			}
			if err != nil && !sc.done() {
				return sent, cc.bodyReadError(err)
			}
		}
		return sent, nil
	}
}

func (s *Server) getBodyBuf() *[]byte {
	if v := s.bodyBufs.Get(); v != nil {
		return v.(*[]byte)
	}
	b := make([]byte, bodyBufSize)
	return &b
}

func (s *Server) putBodyBuf(b *[]byte) { s.bodyBufs.Put(b) }

// finish records metrics and the access log line of a request.
func (cc *clientConn) finish(pm *poolMetrics, status int, start time.Time, b *pools.Backend, written int64) {
	s := cc.s
	d := cc.now.Sub(start)
	pm.observe(status, d.Seconds())
	if !s.sampled() {
		return
	}
	h := &cc.head
	var method, host, path string
	if h.headLen > 0 {
		hb := cc.headBytes()
		method = string(h.method.of(hb))
		p := h.path.of(hb)
		if i := bytes.IndexByte(p, '?'); i >= 0 {
			p = p[:i] // query strings carry tokens: never logged
		}
		path = string(p)
		if !h.authority.empty() {
			host = string(h.authority.of(hb))
		} else if h.hostCount > 0 {
			host = string(h.host.of(hb))
		}
	}
	e := accessEntry{
		pool: pm.name, method: method, host: host, path: path, proto: protoName(h.minor, cc.https),
		status: status, bytes: written, duration: d, client: string(cc.clientIP), backend: b, requestID: string(cc.reqID),
		failure: cc.failure,
	}
	if b != nil || cc.failure != nil {
		e.timing = cc.ex.timing
		if !cc.ex.started.IsZero() {
			e.timing.total = cc.now.Sub(cc.ex.started)
		}
	}
	s.logAccess(e)
}

// headBytes returns the current request head; its spans are relative to
// it. It stays valid until the next head is read.
func (cc *clientConn) headBytes() []byte {
	return cc.buf[cc.headAt : cc.headAt+cc.head.headLen]
}

// cookieValue returns the value of cookie name in the request's Cookie
// headers, or nil.
func cookieValue(b []byte, fields []field, name string) []byte {
	for i := range fields {
		f := &fields[i]
		if f.kind != hdrCookie {
			continue
		}
		v := b[f.vs:f.ve]
		for len(v) > 0 {
			var pair []byte
			if j := bytes.IndexByte(v, ';'); j >= 0 {
				pair, v = v[:j], v[j+1:]
			} else {
				pair, v = v, nil
			}
			pair = bytes.TrimLeft(pair, " \t")
			if len(pair) > len(name) && pair[len(name)] == '=' && string(pair[:len(name)]) == name {
				return bytes.TrimRight(pair[len(name)+1:], " \t")
			}
		}
	}
	return nil
}

// headerValue returns the first value of the named header, or nil.
func headerValue(b []byte, fields []field, name string) []byte {
	for i := range fields {
		f := &fields[i]
		if int(f.colon-f.start) == len(name) && bytes.EqualFold(b[f.start:f.colon], []byte(name)) {
			return b[f.vs:f.ve]
		}
	}
	return nil
}
