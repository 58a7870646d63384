package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/net/http2"

	"github.com/singularity-ng/singularity-edge/pools"
)

// h2Server serves HTTP/2 connections (ALPN h2) with golang.org/x/net/http2
// and forwards each stream as an HTTP/1.1 request over the same pooled
// backend connections, with the same picking, retries and header rules as
// the HTTP/1.1 engine.
type h2Server struct {
	s    *Server
	srv  *http2.Server
	base *http.Server // carries the graceful-shutdown hook (GOAWAY)
}

type h2ConnKey struct{}

// h2Conn is what every stream of one connection shares.
type h2Conn struct {
	info     connInfo
	clientIP string
	conn     net.Conn // the client's TCP connection, closed on abuse
	// backends bounds the backend exchanges of this client connection in
	// flight: streams beyond it wait (or are cancelled) without taking a
	// backend connection.
	backends chan struct{}
	resets   resetBudget
}

// resetBudget is a token bucket of client-cancelled streams: HTTP/2 rapid
// reset (open a stream, cancel it, repeat) costs the client nothing and the
// proxy a backend request, so a connection that cancels more than its
// budget is closed.
type resetBudget struct {
	mu     sync.Mutex
	tokens float64
	last   time.Time
}

// spend takes one token; false when the budget is exhausted.
func (b *resetBudget) spend(now time.Time, perSecond float64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	burst := 2 * perSecond
	if b.last.IsZero() {
		b.tokens = burst
	} else {
		b.tokens = min(burst, b.tokens+now.Sub(b.last).Seconds()*perSecond)
	}
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// noteReset counts a stream the client cancelled before its response was
// complete and closes the connection when the budget is spent.
func (h *h2Server) noteReset(hc *h2Conn) {
	if hc.resets.spend(time.Now(), float64(h.s.cfg.H2MaxResetsPerSecond)) {
		return
	}
	h.s.metrics.h2ResetFloods.Inc()
	h.s.log.Info("proxy: HTTP/2 connection closed: too many cancelled streams", zap.String("client", hc.clientIP))
	_ = hc.conn.Close()
}

// h2MaxReadFrameSize is the largest frame a client may send.
const h2MaxReadFrameSize = 16 << 10

func newH2Server(s *Server) *h2Server {
	h := &h2Server{s: s}
	// What net/http logs here is caused by clients (bad frames, resets):
	// debug lines, not warnings. NewStdLogAt fails only on an invalid level.
	errLog, _ := zap.NewStdLogAt(s.log, zap.DebugLevel)
	h.base = &http.Server{
		ReadHeaderTimeout: s.cfg.ReadHeaderTimeout,
		IdleTimeout:       s.cfg.IdleTimeout,
		// The HTTP/1.1 head bound, advertised as SETTINGS_MAX_HEADER_LIST_SIZE
		// and enforced by the HPACK decoder (431 beyond). Left at net/http's
		// 1 MiB, a few bytes of indexed fields decoded to a megabyte per
		// stream: 100 streams per connection held ~60 MiB while their
		// backend exchanges waited, from 36 KiB on the wire.
		MaxHeaderBytes: s.cfg.MaxRequestHeaderBytes,
		ErrorLog:       errLog,
	}
	h.srv = &http2.Server{
		IdleTimeout:          s.cfg.IdleTimeout,
		MaxConcurrentStreams: uint32(s.cfg.H2MaxConcurrentStreams),
		// RFC 9113's initial SETTINGS_MAX_FRAME_SIZE (HAProxy's
		// tune.h2.max-frame-size). x/net's 1 MiB default let a client
		// announce a 1 MiB frame with its 9-byte header: the framer
		// allocates the whole payload buffer before any of it arrives,
		// about 1 MiB of heap per connection for 9 bytes sent
		// (BenchmarkH2HeldMemory/frame_header). Clients send 16 KiB
		// frames anyway until told otherwise.
		MaxReadFrameSize: h2MaxReadFrameSize,
	}
	// ConfigureServer registers the GOAWAY-on-Shutdown hook for the
	// connections served with BaseConfig h.base. Its error is about a
	// TLSConfig we do not set.
	_ = http2.ConfigureServer(h.base, h.srv)
	return h
}

// serve runs one HTTP/2 connection until it ends.
func (h *h2Server) serve(tc *trackedConn, conn *tls.Conn, info connInfo) {
	hc := &h2Conn{info: info, clientIP: info.client.Addr().String(), conn: tc.Conn,
		backends: make(chan struct{}, h.s.cfg.MaxBackendConnsPerClient)}
	ctx := context.WithValue(context.Background(), h2ConnKey{}, hc)
	h.srv.ServeConn(conn, &http2.ServeConnOpts{Context: ctx, BaseConfig: h.base, Handler: h})
}

// shutdown sends GOAWAY to every HTTP/2 connection; they close when their
// streams are done.
func (h *h2Server) shutdown() {
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // no listeners to wait for: the hooks run, Shutdown returns
	_ = h.base.Shutdown(ctx)
}

// h2Hop lists request and response headers that never cross the proxy
// from an HTTP/2 client (connection-specific in HTTP/1.1, or rewritten).
func h2Skip(name string) bool {
	switch name {
	case "Connection", "Keep-Alive", "Te", "Trailer", "Transfer-Encoding", "Upgrade", "Host",
		"X-Forwarded-For", "Forwarded", "X-Forwarded-Proto", "X-Forwarded-Host", "X-Real-Ip", "X-Request-Id", "Expect", "Content-Length":
		return true
	}
	return strings.HasPrefix(name, "Proxy-")
}

func (h *h2Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s := h.s
	start := time.Now()
	hc, _ := r.Context().Value(h2ConnKey{}).(*h2Conn)
	if hc == nil {
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	reqID := r.Header.Get("X-Request-Id")
	if !validRequestID([]byte(reqID)) {
		reqID = string(s.ids.appendNew(nil))
	}
	w.Header().Set("X-Request-Id", reqID)
	lw := h2Log{s: s, r: r, hc: hc, reqID: reqID, start: start}

	if err := validH2Request(r); err != nil {
		// RFC 9113 8.1.1: a malformed request may be answered before the
		// stream closes; it never reaches a backend.
		s.log.Debug("proxy: malformed HTTP/2 request", zap.String("client", hc.clientIP), zap.Error(err))
		lw.local(w, s.metrics.noPool, 400, "malformed request: "+err.Error())
		return
	}
	host := r.Host
	table := s.router.Table()
	pool := table.Lookup(host)
	if s.cfg.AllowPoolHeader {
		if name := r.Header.Get("X-Pool"); name != "" {
			pool = table.Pool(name)
		}
	}
	if pool == nil {
		lw.local(w, s.metrics.noPool, 404, "no pool serves this host")
		return
	}
	pm := s.metrics.forPool(pool.Name)
	if pool.SSLMode == pools.SSLModeOff || pool.SSLMode == pools.SSLModePassthrough {
		lw.local(w, pm, 421, "misdirected request: this host is not served over TLS here")
		return
	}

	// A stream cancelled before it got here costs no backend request; the
	// others wait for one of the client's backend slots.
	select {
	case <-r.Context().Done():
		h.noteReset(hc)
		return
	default:
	}
	select {
	case hc.backends <- struct{}{}:
		defer func() { <-hc.backends }()
	case <-r.Context().Done():
		h.noteReset(hc)
		return
	}
	ok, release := s.acquireExchange(&hc.info)
	if !ok {
		w.Header().Set("Retry-After", "1")
		lw.local(w, pm, 503, "service unavailable: too many requests in flight from this client address")
		return
	}
	if release {
		defer s.releaseExchange(&hc.info)
	}
	rc := http.NewResponseController(w)

	pick := pools.PickRequest{ClientIP: hc.info.client.Addr()}
	sticky := pool.StickyCookieName()
	if sticky != "" {
		if c, err := r.Cookie(sticky); err == nil {
			if id, ok := pool.VerifySticky(c.Value); ok {
				pick.StickyID = id
			}
		}
	}
	if name := pool.HashHeader(); name != "" {
		pick.HashKey = r.Header.Get(name)
	}

	req := &outRequest{head: h.upstreamHead(r, hc, host, reqID), idempotent: idempotentMethod([]byte(r.Method)), isHEAD: r.Method == http.MethodHead, ctx: r.Context()}
	if r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0 {
		body := r.Body
		req.stream = func(uc *upConn, progress *bodyProgress) (int64, error) {
			return h.streamBody(uc, r, progress, rc)
		}
		req.abort = func() { _ = body.Close() }
	}

	// A client that resets the stream or goes away gives the backend
	// exchange cancelDrainTime to finish, then interrupts it.
	hook := &cancelHook{}
	req.cancel = hook
	stop := context.AfterFunc(r.Context(), hook.fire)
	defer stop()

	var ex exchange
	var cache upstreamCache
	ex.resp.fields = make([]field, 0, 32)
	if err := s.roundTrip(&ex, &cache, pool, pick, req, nil, time.Now()); err != nil {
		if req.clientGone() {
			h.noteReset(hc)
		}
		status := statusForError(err)
		if !req.clientGone() {
			s.logUpstreamFailure(pool.Name, status, err)
		}
		lw.failure, lw.timing = err, ex.timing
		if !ex.started.IsZero() {
			lw.timing.total = time.Since(ex.started)
		}
		lw.local(w, pm, status, failureMessage(status))
		return
	}
	h.relay(w, rc, &ex, req, pool, pm, pick.StickyID, &lw, hook)
}

// Bounds of the work done for a stream the client cancelled, so that its
// backend connection can be reused rather than closed (a closed
// connection costs the backend a new handshake per cancelled stream, the
// amplification of HTTP/2 rapid reset): like net/http's server, which
// reads up to 256 KiB of an unread request body so the connection
// survives, the rest of the response is read and discarded when it ends
// within these, and the connection is closed otherwise.
const (
	cancelDrainBytes = 256 << 10
	cancelDrainTime  = 500 * time.Millisecond
)

// cancelHook runs when a stream's context ends (client reset, connection
// gone): the backend connection in use gets cancelDrainTime to finish the
// exchange, then its reads and writes fail.
type cancelHook struct {
	mu       sync.Mutex
	conn     net.Conn // the backend connection in use, nil between attempts
	detached bool
	until    time.Time // end of the drain once fired
}

func (c *cancelHook) fire() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.detached {
		return
	}
	c.until = time.Now().Add(cancelDrainTime)
	if c.conn != nil {
		_ = c.conn.SetDeadline(c.until)
	}
}

// attach makes conn the connection the hook interrupts; false when the
// hook already fired (the stream is gone and nothing should be sent; the
// hook never touched conn).
func (c *cancelHook) attach(conn net.Conn) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.until.IsZero() {
		return false
	}
	c.conn = conn
	return true
}

// detach ends the hook's hold on the backend connection: once it returns
// the hook never touches it again, so it may go back to the pool. It
// reports whether the hook fired (the connection's deadline moved).
func (c *cancelHook) detach() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.detached = true
	c.conn = nil
	return !c.until.IsZero()
}

// validH2Request checks what becomes the HTTP/1.1 request line and header
// lines before any of it is forwarded (RFC 9113 8.2 and 8.3): :method a
// token, :path an origin-form target (or "*" for OPTIONS) without spaces
// or controls, :authority a host the routing table can match, field names
// tokens and values free of CR, LF and NUL. golang.org/x/net/http2 checks
// field syntax but not all of the pseudo-headers' contents.
func validH2Request(r *http.Request) error {
	if !isTokenString(r.Method) || r.Method == http.MethodConnect {
		return errors.New("invalid :method")
	}
	uri := r.RequestURI
	switch {
	case uri == "*":
		if r.Method != http.MethodOptions {
			return errors.New("invalid :path")
		}
	case uri == "" || uri[0] != '/':
		return errors.New("invalid :path")
	}
	for i := 0; i < len(uri); i++ {
		if c := uri[i]; c <= ' ' || c == 0x7f {
			return errors.New("invalid :path")
		}
	}
	// RFC 9113 8.3.1: an http or https request without a non-empty
	// :authority or Host is malformed (nginx answers 400 too), and a
	// request of another scheme has no host to route by either. Routing
	// by the SNI instead gave the backend a Host the client never sent.
	if r.Host == "" {
		return errors.New("missing :authority and Host")
	}
	if !validHost([]byte(r.Host)) {
		return errors.New("invalid :authority")
	}
	// One decimal number, however many fields carry it (as for HTTP/1.1):
	// x/net reads the first field only, and an unparsable value as 0, so
	// the request would go out without the body the client then sends.
	if vv := r.Header["Content-Length"]; len(vv) > 0 {
		n, ok := parseContentLength([]byte(vv[0]))
		for _, v := range vv[1:] {
			m, okm := parseContentLength([]byte(v))
			ok = ok && okm && m == n
		}
		if !ok {
			return errors.New("invalid content-length")
		}
	}
	for name, values := range r.Header {
		if !isTokenString(name) {
			return errors.New("invalid header field name")
		}
		for _, v := range values {
			if !validFieldValue([]byte(v)) {
				return errors.New("invalid header field value")
			}
		}
	}
	return nil
}

func isTokenString(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !tokenTable[s[i]] {
			return false
		}
	}
	return true
}

// upstreamHead writes the HTTP/1.1 request head for an HTTP/2 request.
func (h *h2Server) upstreamHead(r *http.Request, hc *h2Conn, host, reqID string) []byte {
	out := make([]byte, 0, 1024)
	out = append(out, r.Method...)
	out = append(out, ' ')
	uri := r.RequestURI
	if uri == "" || uri[0] != '/' && uri != "*" {
		uri = r.URL.RequestURI()
	}
	out = append(out, uri...)
	out = append(out, " HTTP/1.1\r\nHost: "...)
	out = append(out, host...)
	out = append(out, "\r\n"...)
	for name, values := range r.Header {
		if h2Skip(name) {
			continue
		}
		switch classifyHeader([]byte(name)) {
		case hdrForwardingTwin:
			continue // "X_Forwarded_For" and the like (classifyForwarding)
		case hdrXForwardedOther:
			if !hc.info.trusted {
				continue // the other forwarding fields: a trusted proxy's only
			}
		}
		if name == "Cookie" && len(values) > 1 {
			// HTTP/2 splits cookies into fields; HTTP/1.1 wants one line
			// (RFC 9113 8.2.3).
			out = append(out, "Cookie: "...)
			for i, v := range values {
				if i > 0 {
					out = append(out, "; "...)
				}
				out = append(out, v...)
			}
			out = append(out, "\r\n"...)
			continue
		}
		for _, v := range values {
			out = append(out, name...)
			out = append(out, ": "...)
			out = append(out, v...)
			out = append(out, "\r\n"...)
		}
	}
	// As for HTTP/1.1: a trusted proxy's lists are extended and its
	// X-Real-IP kept, anyone else's replaced.
	out = append(out, "X-Forwarded-For: "...)
	if hc.info.trusted {
		for _, v := range r.Header.Values("X-Forwarded-For") {
			if v != "" {
				out = append(out, v...)
				out = append(out, ", "...)
			}
		}
	}
	out = append(out, hc.clientIP...)
	out = append(out, "\r\nForwarded: "...)
	if hc.info.trusted {
		for _, v := range r.Header.Values("Forwarded") {
			if v != "" {
				out = append(out, v...)
				out = append(out, ", "...)
			}
		}
	}
	out = appendForwardedElement(out, hc.info.client.Addr(), true)
	kept := false
	if hc.info.trusted {
		for _, v := range r.Header.Values("X-Real-Ip") {
			if v != "" {
				out = append(out, "\r\nX-Real-IP: "...)
				out = append(out, v...)
				kept = true
			}
		}
	}
	if !kept {
		out = append(out, "\r\nX-Real-IP: "...)
		out = append(out, hc.clientIP...)
	}
	out = append(out, "\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: "...)
	out = append(out, host...)
	out = append(out, "\r\nX-Request-Id: "...)
	out = append(out, reqID...)
	out = append(out, "\r\n"...)
	switch {
	case r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0:
		if r.Method == http.MethodPost || r.Method == http.MethodPut || r.Method == http.MethodPatch {
			out = append(out, "Content-Length: 0\r\n"...)
		}
	case r.ContentLength > 0:
		out = append(out, "Content-Length: "...)
		out = strconv.AppendInt(out, r.ContentLength, 10)
		out = append(out, "\r\n"...)
	default:
		out = append(out, "Transfer-Encoding: chunked\r\n"...)
	}
	return append(out, "\r\n"...)
}

// streamBody copies an HTTP/2 request body to the backend: as is when its
// length is known, chunk-encoded otherwise (then with the client's
// trailer fields that may cross the proxy). Reads are bounded like
// HTTP/1.1 bodies: ReadTimeout of silence, MinBodyRate after
// BodyRateGrace.
func (h *h2Server) streamBody(uc *upConn, r *http.Request, progress *bodyProgress, rc *http.ResponseController) (int64, error) {
	s := h.s
	bp := s.getBodyBuf()
	defer s.putBodyBuf(bp)
	buf := *bp
	body, length := r.Body, r.ContentLength
	chunked := length < 0
	var sent int64
	var clock rateClock
	for {
		data := buf
		if chunked {
			data = buf[10 : len(buf)-2] // room for the size line and CRLF
		}
		// An HTTP/2 stream's deadline is a timer that fires whether or
		// not a read is pending: it is armed for the read and disarmed
		// after it, so the time spent writing to the backend is not
		// held against the client.
		now := time.Now()
		want, _ := s.rateDeadline(&clock, clock.n, now, s.cfg.ReadTimeout)
		_ = rc.SetReadDeadline(want)
		m, err := body.Read(data)
		clock.waited(now)
		_ = rc.SetReadDeadline(time.Time{})
		clock.n += int64(m)
		if err == io.EOF && length > 0 && clock.n < length {
			// Fewer bytes than announced: the backend must not take it.
			err = io.ErrUnexpectedEOF
		}
		if m > 0 {
			p := data[:m]
			if chunked {
				hdr := strconv.AppendInt(buf[:0], int64(m), 16)
				hdr = append(hdr, "\r\n"...)
				start := 10 - len(hdr)
				copy(buf[start:], hdr)
				buf[10+m], buf[11+m] = '\r', '\n'
				p = buf[start : 12+m]
			}
			uc.setWriteDeadline(time.Now(), s.cfg.WriteTimeout)
			n, werr := uc.c.Write(p)
			sent += int64(n)
			if werr != nil {
				return sent, werr
			}
		}
		if err == io.EOF {
			progress.markRead()
			if chunked {
				n, werr := uc.c.Write(appendLastChunk(buf[:0], appendH2Trailers(nil, r.Trailer)))
				sent += int64(n)
				return sent, werr
			}
			return sent, nil
		}
		if err != nil {
			if isTimeout(err) {
				s.metrics.slowBodies.Inc()
			}
			return sent, &clientBodyError{err: err}
		}
	}
}

// appendH2Trailers writes an HTTP/2 request's trailer fields as field
// lines for appendLastChunk (which filters them like HTTP/1.1 trailers).
// golang.org/x/net/http2 has already refused invalid ones and keeps only
// those the request declared in its Trailer field.
func appendH2Trailers(out []byte, t http.Header) []byte {
	for name, values := range t {
		if !isTokenString(name) {
			continue
		}
		for _, v := range values {
			if !validFieldValue([]byte(v)) {
				continue
			}
			out = append(out, name...)
			out = append(out, ": "...)
			out = append(out, v...)
			out = append(out, "\r\n"...)
		}
	}
	return out
}

// relay writes the backend's response to the HTTP/2 stream. When the
// client cancels the stream (or stops reading) the rest of the response
// is read and discarded within cancelDrainBytes and the hook's
// cancelDrainTime, so that the backend connection can be reused.
func (h *h2Server) relay(w http.ResponseWriter, rc *http.ResponseController, ex *exchange, req *outRequest, pool *pools.Pool, pm *poolMetrics, stickyID string, lw *h2Log, hook *cancelHook) {
	s := h.s
	uc := ex.uc
	resp := &ex.resp
	rb := uc.buf[uc.r : uc.r+resp.headLen]
	if resp.status == 101 {
		ex.finishBody(req)
		uc.close()
		ex.attempt.End(pools.Result{Err: errors.New("backend switched protocols on an HTTP/2 request")})
		lw.local(w, pm, 502, "bad gateway: the backend failed")
		return
	}
	hdr := w.Header()
	for i := range resp.fields {
		f := &resp.fields[i]
		switch f.kind {
		case hdrOther, hdrHost, hdrExpect, hdrCookie, hdrXPool, hdrXForwardedFor, hdrXForwardedHost, hdrXForwardedProto, hdrForwarded, hdrXRealIP, hdrXForwardedOther, hdrForwardingTwin:
		case hdrContentLength:
			if resp.framing != bodyLength && !req.isHEAD {
				continue
			}
		default:
			continue
		}
		name := rb[f.start:f.colon]
		if resp.connOthers && listedInConnection(rb, resp.fields, name) {
			continue
		}
		key := textproto.CanonicalMIMEHeaderKey(string(name))
		hdr[key] = append(hdr[key], string(rb[f.vs:f.ve]))
	}
	if name := pool.StickyCookieName(); name != "" && ex.backend.ID != stickyID {
		if v := pool.StickyValue(ex.backend); v != "" {
			hdr.Add("Set-Cookie", stickyCookie(name, v, true))
		}
	}
	if _, ok := hdr["Content-Type"]; !ok {
		// Present but empty: net/http would otherwise sniff a type from
		// the body's first bytes and send it, and an untyped upload a
		// backend serves with "nosniff" would reach HTTP/2 browsers as
		// text/html (HTTP/1.1 clients get no Content-Type, as sent).
		hdr["Content-Type"] = nil
	}
	w.WriteHeader(resp.status)
	uc.r += resp.headLen

	var written, drained int64
	var clientErr, backendErr error
	// draining: the client is gone; what the backend still sends is
	// read and dropped, within cancelDrainBytes.
	draining := false
	startDrain := func() {
		draining = true
		until := time.Now().Add(cancelDrainTime)
		_ = uc.c.SetReadDeadline(until)
		uc.rdl = until
	}
	var clock rateClock
	write := func(p []byte) bool {
		if !draining && req.clientGone() {
			startDrain()
		}
		if draining {
			drained += int64(len(p))
			return drained <= cancelDrainBytes
		}
		// A client that reads slower than MinBodyRate (after the grace
		// period) or not at all for WriteTimeout gets its stream reset.
		// Armed for the write, disarmed after it (see streamBody): a
		// backend slow to send the rest is not the client's doing.
		now := time.Now()
		want, _ := s.rateDeadline(&clock, clock.n+int64(len(p)), now, s.cfg.WriteTimeout)
		_ = rc.SetWriteDeadline(want)
		n, err := w.Write(p)
		if err == nil {
			err = rc.Flush()
		}
		clock.waited(now)
		if err == nil {
			_ = rc.SetWriteDeadline(time.Time{})
		}
		written += int64(n)
		clock.n += int64(n)
		if err != nil {
			if isTimeout(err) || errors.Is(err, os.ErrDeadlineExceeded) {
				s.metrics.slowBodies.Inc()
			}
			if req.clientGone() {
				startDrain()
				drained += int64(len(p) - n)
				return drained <= cancelDrainBytes
			}
			clientErr = err
			return false
		}
		return true
	}
	read := func() bool {
		uc.r, uc.w = 0, 0
		if !draining {
			uc.setReadDeadline(time.Now(), s.cfg.ReadTimeout)
		}
		m, err := uc.c.Read(uc.buf)
		uc.w = m
		ex.respBytes += int64(m)
		if m == 0 && err != nil {
			if err == io.EOF && resp.framing == bodyClose {
				return false
			}
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			backendErr = err
			return false
		}
		return true
	}
	complete := false
	var trailers []byte
	switch resp.framing {
	case bodyNone:
		complete = true
	case bodyLength:
		n := resp.contentLen
		for n > 0 {
			if (draining || req.clientGone()) && drained+n > cancelDrainBytes {
				break // too much left to read for a connection
			}
			if uc.r == uc.w && !read() {
				break
			}
			take := min(int64(uc.w-uc.r), n)
			if !write(uc.buf[uc.r : uc.r+int(take)]) {
				break
			}
			uc.r += int(take)
			n -= take
		}
		complete = n == 0
	case bodyChunked:
		sc := chunkScanner{keepTrailers: true}
		var spans []span
		for !sc.done() {
			if uc.r == uc.w && !read() {
				break
			}
			p := uc.buf[uc.r:uc.w]
			spans = spans[:0]
			n, err := sc.scan(p, &spans)
			if err != nil {
				backendErr = err
				break
			}
			ok := true
			for _, sp := range spans {
				if ok = write(p[sp.s:sp.e]); !ok {
					break
				}
			}
			if !ok {
				break
			}
			uc.r += n
		}
		complete = sc.done()
		trailers = sc.trailers
	case bodyClose:
		for {
			if uc.r < uc.w {
				if !write(uc.buf[uc.r:uc.w]) {
					break
				}
				uc.r = uc.w
			}
			if draining || !read() {
				complete = backendErr == nil && !draining
				break
			}
		}
	}
	if complete && !draining && len(trailers) > 0 {
		// Sent by the server as a trailing HEADERS frame after the
		// handler returns (http.TrailerPrefix: undeclared trailers).
		forEachTrailer(trailers, func(_, name, value []byte) {
			key := http.TrailerPrefix + textproto.CanonicalMIMEHeaderKey(string(name))
			hdr[key] = append(hdr[key], string(value))
		})
	}

	bodySent := ex.finishBody(req)
	gone := req.clientGone()
	if gone {
		backendErr = nil // the deadline that ended the read was the client's reset
		h.noteReset(lw.hc)
	}
	fired := hook.detach() // from here on the hook never touches uc
	if ex.uc != nil {
		if complete && bodySent && (clientErr == nil || draining) && !resp.connClose && resp.framing != bodyClose && uc.r == uc.w && !s.shuttingDown() {
			if fired || draining {
				// The drain's deadlines must not follow the
				// connection into its next exchange.
				_ = uc.c.SetDeadline(time.Time{})
				uc.rdl, uc.wdl = time.Time{}, time.Time{}
			}
			uc.r, uc.w = 0, 0
			uc.reused = false
			uc.up.put(uc, time.Now(), s.cfg.MaxIdleConnsPerBackend)
		} else {
			uc.close()
		}
		ex.uc = nil
	}
	attemptErr := backendErr
	if attemptErr != nil && ex.clientBodyFailed() {
		// The client's failed body cut the read, not the backend.
		attemptErr = ex.bodyErr
	}
	ex.attempt.End(pools.Result{Status: resp.status, Err: attemptErr, BytesIn: ex.respBytes, BytesOut: ex.bytesOut, Latency: time.Since(ex.started)})
	lw.timing = ex.timing
	lw.timing.total = time.Since(ex.started)
	lw.done(pm, resp.status, written, ex.backend)
	if backendErr != nil {
		// The client must not take a truncated body for a complete one.
		panic(http.ErrAbortHandler)
	}
}

// h2Log finishes metrics and the access log for an HTTP/2 stream.
type h2Log struct {
	s     *Server
	r     *http.Request
	hc    *h2Conn
	reqID string
	start time.Time
	// failure and timing are the backend exchange's (see accessEntry).
	failure error
	timing  upstreamTiming
}

func (l *h2Log) local(w http.ResponseWriter, pm *poolMetrics, status int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Length", strconv.Itoa(len(msg)+1))
	w.WriteHeader(status)
	n := 0
	if l.r.Method != http.MethodHead {
		n, _ = io.WriteString(w, msg+"\n")
	}
	l.done(pm, status, int64(n), nil)
}

func (l *h2Log) done(pm *poolMetrics, status int, written int64, b *pools.Backend) {
	d := time.Since(l.start)
	pm.observe(status, d.Seconds())
	if !l.s.sampled() {
		return
	}
	path := l.r.URL.Path
	l.s.logAccess(accessEntry{
		pool: pm.name, method: l.r.Method, host: l.r.Host, path: path, proto: "HTTP/2",
		status: status, bytes: written, duration: d, client: l.hc.clientIP, backend: b, requestID: l.reqID,
		failure: l.failure, timing: l.timing,
	})
}
