package proxy

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
)

// The HTTP/1.1 parser reads only what routing and framing need. A head is
// parsed in place in the connection's read buffer: each header line is
// recorded as offsets with a kind, so that forwarding copies the lines it
// keeps verbatim (runs of kept lines in one append) and writes the few it
// rewrites. It is strict where leniency enables request smuggling: CRLF line
// ends only, no whitespace before the colon, no obs-fold, one
// Content-Length value, Transfer-Encoding only "chunked" (requests and
// backend responses; anything else is a 501 or a 502), and
// both framing headers together are rejected.

// Limits of a head. maxHeaderFields bounds the work per request and the
// size of the per-connection field array.
const (
	maxHeaderFields = 128
	maxChunkLine    = 4096
	maxTrailerBytes = 16 << 10
)

// Header kinds: the names the proxy acts on. Everything else is hdrOther
// and forwarded untouched.
const (
	hdrOther uint8 = iota
	hdrHost
	hdrContentLength
	hdrTransferEncoding
	hdrConnection
	hdrKeepAlive
	hdrUpgrade
	hdrTE
	hdrTrailer
	hdrProxy // Proxy-Connection, Proxy-Authorization, Proxy-Authenticate...
	hdrXForwardedFor
	hdrXForwardedProto
	hdrXForwardedHost
	hdrXRequestID
	hdrXPool
	hdrExpect
	hdrCookie
	hdrForwarded
	hdrHTTP2Settings // connection-specific (RFC 9113 3.2.1): never forwarded
	hdrXRealIP
	// hdrXForwardedOther: any other X-Forwarded-* field (Port, Prefix,
	// Ssl, Scheme, Server, Client-Cert...). The proxy sets none of them;
	// a backend reads them as the edge's word, so only a trusted proxy's
	// reach it.
	hdrXForwardedOther
	// hdrForwardingTwin: an underscore spelling of a forwarding field the
	// proxy sets itself ("X_Forwarded_For", "X-Real_IP"); never forwarded
	// in a request (classifyForwarding).
	hdrForwardingTwin
)

// field is one header line: buf[start:end] is the whole line with its CRLF,
// buf[start:colon] the name and buf[vs:ve] the value without surrounding
// whitespace.
type field struct {
	start, colon, vs, ve, end int32
	kind                      uint8
}

// httpError is a parse failure with the status to answer it with.
type httpError struct {
	status int
	msg    string
}

func (e *httpError) Error() string { return e.msg }

var (
	errBadRequestLine   = &httpError{400, "malformed request line"}
	errBadHeader        = &httpError{400, "malformed header line"}
	errBadHost          = &httpError{400, "missing or invalid Host header"}
	errBadContentLength = &httpError{400, "invalid Content-Length"}
	errBadFraming       = &httpError{400, "both Transfer-Encoding and Content-Length"}
	errUnsupportedTE    = &httpError{501, "unsupported Transfer-Encoding"}
	errHeadTooLarge     = &httpError{431, "request header too large"}
	errTooManyFields    = &httpError{431, "too many header fields"}
	errVersion          = &httpError{505, "HTTP version not supported"}
	errMethodConnect    = &httpError{405, "CONNECT is not supported"}
)

// Response parse failures are all reported to the client as 502.
var errBadResponse = errors.New("malformed response from backend")

// errResponseTransferCoding is a backend response whose Transfer-Encoding
// is anything but "chunked" alone, or comes with a Content-Length. The
// proxy decodes no other coding, and passing one on (or dropping the
// field) would hand the client bytes it cannot read as the backend meant
// them: a 502, as nginx answers ("upstream sent unknown
// Transfer-Encoding").
var errResponseTransferCoding = fmt.Errorf("%w: Transfer-Encoding other than chunked, or with Content-Length", errBadResponse)

type span struct{ s, e int32 }

func (sp span) of(b []byte) []byte { return b[sp.s:sp.e] }
func (sp span) empty() bool        { return sp.e <= sp.s }

// framing of a message body.
const (
	bodyNone    = iota // no body
	bodyLength         // Content-Length bytes
	bodyChunked        // chunked transfer coding
	bodyClose          // until the connection closes (responses only)
)

// requestHead is a parsed request head; spans point into the buffer it was
// parsed from, which must not change while the head is in use.
type requestHead struct {
	headLen int // bytes of the head including the blank line
	skip    int // empty lines before the request line (ignored, RFC 9112 2.2)

	method      span
	target      span // as sent
	path        span // origin-form path+query (absolute-form stripped), or "*"
	authority   span // host[:port] of an absolute-form target
	minor       int  // HTTP/1.minor
	lineOK      bool // the request line parsed (method, target, version)
	host        span // Host header value
	hostCount   int
	framing     int
	contentLen  int64
	fields      []field
	connClose   bool
	connKeep    bool
	connUpgrade bool
	connOthers  bool // Connection lists other header names to strip
	upgrade     span
	upgradeH2C  bool // Upgrade offers h2c: served as a plain request
	expect100   bool
	xffCount    int // non-empty X-Forwarded-For and Forwarded fields
	realIPCount int // non-empty X-Real-IP fields
}

// isTokenChar reports whether c may appear in a header name or method
// (RFC 9110 tchar).
var tokenTable = func() (t [256]bool) {
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
	}
	for c := 'A'; c <= 'Z'; c++ {
		t[c] = true
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()

// eqFoldLower compares b with lower, which must be lower-case letters,
// digits and '-' only; b must be token characters.
func eqFoldLower(b []byte, lower string) bool {
	if len(b) != len(lower) {
		return false
	}
	for i := 0; i < len(b); i++ {
		if b[i]|0x20 != lower[i] {
			return false
		}
	}
	return true
}

func hasPrefixFoldLower(b []byte, lower string) bool {
	return len(b) >= len(lower) && eqFoldLower(b[:len(lower)], lower)
}

// classifyRequestHeader maps a header name to its kind. The switch on the
// length keeps the common case (an uninteresting header) to one or two
// comparisons.
func classifyHeader(name []byte) uint8 {
	switch len(name) {
	case 2:
		if eqFoldLower(name, "te") {
			return hdrTE
		}
	case 4:
		if eqFoldLower(name, "host") {
			return hdrHost
		}
	case 6:
		switch name[0] | 0x20 {
		case 'c':
			if eqFoldLower(name, "cookie") {
				return hdrCookie
			}
		case 'e':
			if eqFoldLower(name, "expect") {
				return hdrExpect
			}
		case 'x':
			if eqFoldLower(name, "x-pool") {
				return hdrXPool
			}
		}
	case 7:
		if eqFoldLower(name, "upgrade") {
			return hdrUpgrade
		}
		if eqFoldLower(name, "trailer") {
			return hdrTrailer
		}
	case 9:
		if eqFoldLower(name, "forwarded") {
			return hdrForwarded
		}
		if eqFoldLower(name, "x-real-ip") {
			return hdrXRealIP
		}
	case 10:
		if eqFoldLower(name, "connection") {
			return hdrConnection
		}
		if eqFoldLower(name, "keep-alive") {
			return hdrKeepAlive
		}
	case 12:
		if eqFoldLower(name, "x-request-id") {
			return hdrXRequestID
		}
	case 14:
		if eqFoldLower(name, "content-length") {
			return hdrContentLength
		}
		if eqFoldLower(name, "http2-settings") {
			return hdrHTTP2Settings
		}
	case 15:
		if eqFoldLower(name, "x-forwarded-for") {
			return hdrXForwardedFor
		}
	case 16:
		if eqFoldLower(name, "x-forwarded-host") {
			return hdrXForwardedHost
		}
	case 17:
		if eqFoldLower(name, "transfer-encoding") {
			return hdrTransferEncoding
		}
		if eqFoldLower(name, "x-forwarded-proto") {
			return hdrXForwardedProto
		}
	}
	if len(name) > 6 && hasPrefixFoldLower(name, "proxy-") {
		return hdrProxy
	}
	if len(name) >= 9 && name[0]|0x20 == 'x' && (name[1] == '-' || name[1] == '_') {
		return classifyForwarding(name)
	}
	return hdrOther
}

// classifyForwarding finds the forwarding fields among names that start
// "x-" or "x_" and did not match exactly: any other X-Forwarded-* name,
// and the underscore twins of all of them ("X_Forwarded_For",
// "X-Real_IP"). CGI-style servers (Rack, WSGI, PHP) read a field as
// HTTP_X_FORWARDED_FOR whichever of '-' and '_' it was spelled with, so a
// twin the proxy passed on would override the field the proxy set (Puma's
// CVE-2024-45614; nginx drops names with '_' by default for this reason).
func classifyForwarding(name []byte) uint8 {
	if eqFoldDash(name, "x-real-ip") {
		return hdrForwardingTwin // the exact name matched before
	}
	// The bare prefix ("X-Forwarded-:") counts too: a backend that maps
	// every X-Forwarded-* name must not get one the proxy did not vet.
	const prefix = "x-forwarded-"
	if len(name) < len(prefix) || !eqFoldDash(name[:len(prefix)], prefix) {
		return hdrOther
	}
	if rest := name[len(prefix):]; eqFoldDash(rest, "for") || eqFoldDash(rest, "proto") || eqFoldDash(rest, "host") {
		return hdrForwardingTwin
	}
	return hdrXForwardedOther
}

// eqFoldDash is eqFoldLower with '_' in b matching '-' in lower.
func eqFoldDash(b []byte, lower string) bool {
	if len(b) != len(lower) {
		return false
	}
	for i := 0; i < len(b); i++ {
		if c := b[i]; c|0x20 != lower[i] && !(c == '_' && lower[i] == '-') {
			return false
		}
	}
	return true
}

// findHeadEnd returns the length of the head (through the blank line) in b,
// or -1 when b does not hold a complete head yet.
func findHeadEnd(b []byte) int {
	i := bytes.Index(b, crlfcrlf)
	if i < 0 {
		return -1
	}
	return i + 4
}

var crlfcrlf = []byte("\r\n\r\n")

// hasBareLF reports whether b has a LF not preceded by CR.
func hasBareLF(b []byte) bool {
	off := 0
	for {
		i := bytes.IndexByte(b[off:], '\n')
		if i < 0 {
			return false
		}
		if off+i == 0 || b[off+i-1] != '\r' {
			return true
		}
		off += i + 1
	}
}

// skipLeadingCRLF counts the empty lines before a request line.
func skipLeadingCRLF(b []byte) int {
	n := 0
	for len(b) >= n+2 && b[n] == '\r' && b[n+1] == '\n' {
		n += 2
	}
	return n
}

// parseHeaderLines parses header lines from b[pos:], stopping after the
// blank line. It appends to fields and returns the new fields and the
// offset after the blank line.
func parseHeaderLines(b []byte, pos int, fields []field) ([]field, int, error) {
	for {
		if pos+1 >= len(b) {
			return fields, 0, errBadHeader
		}
		if b[pos] == '\r' {
			if b[pos+1] != '\n' {
				return fields, 0, errBadHeader
			}
			return fields, pos + 2, nil
		}
		if len(fields) == maxHeaderFields {
			return fields, 0, errTooManyFields
		}
		start := pos
		// Name: token characters up to the colon. A space or tab here (a
		// leading one is obs-fold) is rejected.
		for pos < len(b) && tokenTable[b[pos]] {
			pos++
		}
		if pos == start || pos >= len(b) || b[pos] != ':' {
			return fields, 0, errBadHeader
		}
		colon := pos
		pos++
		for pos < len(b) && (b[pos] == ' ' || b[pos] == '\t') {
			pos++
		}
		vs := pos
		// Value: visible characters, obs-text, space and tab up to the
		// line's CRLF. The CR is found with a vectorized search, then the
		// value is checked for controls 8 bytes at a time.
		cr := bytes.IndexByte(b[pos:], '\r')
		if cr < 0 || !validFieldValue(b[pos:pos+cr]) {
			return fields, 0, errBadHeader
		}
		pos += cr
		if pos+1 >= len(b) || b[pos+1] != '\n' {
			return fields, 0, errBadHeader
		}
		ve := pos
		for ve > vs && (b[ve-1] == ' ' || b[ve-1] == '\t') {
			ve--
		}
		pos += 2
		fields = append(fields, field{
			start: int32(start), colon: int32(colon), vs: int32(vs), ve: int32(ve), end: int32(pos),
			kind: classifyHeader(b[start:colon]),
		})
	}
}

// validFieldValue reports whether v has no control characters other than
// horizontal tab (RFC 9110 5.5: field-vchar, obs-text, SP, HTAB).
func validFieldValue(v []byte) bool {
	const (
		ones  = 0x0101010101010101
		highs = 0x8080808080808080
	)
	for len(v) >= 8 {
		x := binary.LittleEndian.Uint64(v)
		// A byte below 0x20 or equal to 0x7f sets its high bit here
		// (the classic "has less than" and "has zero" bit tricks).
		lt := (x - 0x20*ones) & ^x & highs
		del := ((x ^ 0x7f*ones) - ones) & ^(x ^ 0x7f*ones) & highs
		if lt|del != 0 {
			for _, c := range v[:8] {
				if c < 0x20 && c != '\t' || c == 0x7f {
					return false
				}
			}
		}
		v = v[8:]
	}
	for _, c := range v {
		if c < 0x20 && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

// parseRequestHead parses a complete head at the start of b (b[:headEnd]
// as found by findHeadEnd after skipping leading empty lines). fields is
// reused storage.
func parseRequestHead(h *requestHead, b []byte, fields []field) error {
	*h = requestHead{fields: fields[:0], contentLen: -1}
	pos := skipLeadingCRLF(b)
	h.skip = pos
	// Method.
	ms := pos
	for pos < len(b) && tokenTable[b[pos]] {
		pos++
	}
	if pos == ms || pos >= len(b) || b[pos] != ' ' {
		return errBadRequestLine
	}
	h.method = span{int32(ms), int32(pos)}
	pos++
	// Target: no controls, no spaces.
	ts := pos
	for pos < len(b) && b[pos] > ' ' && b[pos] != 0x7f {
		pos++
	}
	if pos == ts || pos >= len(b) || b[pos] != ' ' {
		return errBadRequestLine
	}
	h.target = span{int32(ts), int32(pos)}
	pos++
	// Version.
	if len(b)-pos < 10 || string(b[pos:pos+7]) != "HTTP/1." || b[pos+8] != '\r' || b[pos+9] != '\n' {
		if len(b)-pos >= 5 && string(b[pos:pos+5]) == "HTTP/" {
			return errVersion
		}
		return errBadRequestLine
	}
	switch b[pos+7] {
	case '0':
		h.minor = 0
	case '1':
		h.minor = 1
	default:
		return errVersion
	}
	pos += 10
	h.lineOK = true

	var err error
	h.fields, pos, err = parseHeaderLines(b, pos, h.fields)
	if err != nil {
		return err
	}
	h.headLen = pos

	method := h.method.of(b)
	if string(method) == "CONNECT" {
		return errMethodConnect
	}
	if err := h.parseTarget(b); err != nil {
		return err
	}
	return h.interpretFields(b)
}

// parseTarget splits the request target into the path sent to the backend
// and, for absolute-form, the authority that replaces Host (RFC 9112 3.2).
func (h *requestHead) parseTarget(b []byte) error {
	t := h.target.of(b)
	switch {
	case t[0] == '/':
		h.path = h.target
	case len(t) == 1 && t[0] == '*':
		if string(h.method.of(b)) != "OPTIONS" {
			return errBadRequestLine
		}
		h.path = h.target
	default:
		var schemeLen int
		switch {
		case hasPrefixFoldLower(t, "http://"):
			schemeLen = 7
		case hasPrefixFoldLower(t, "https://"):
			schemeLen = 8
		default:
			return errBadRequestLine
		}
		rest := t[schemeLen:]
		end := bytes.IndexAny(rest, "/?")
		if end < 0 {
			end = len(rest)
		}
		auth := span{h.target.s + int32(schemeLen), h.target.s + int32(schemeLen+end)}
		if auth.empty() || bytes.IndexByte(auth.of(b), '@') >= 0 {
			return errBadRequestLine
		}
		h.authority = auth
		h.path = span{auth.e, h.target.e} // may be empty or start with '?'
	}
	return nil
}

func (h *requestHead) interpretFields(b []byte) error {
	var haveTE bool
	for i := range h.fields {
		f := &h.fields[i]
		v := b[f.vs:f.ve]
		switch f.kind {
		case hdrHost:
			h.hostCount++
			h.host = span{f.vs, f.ve}
		case hdrContentLength:
			n, ok := parseContentLength(v)
			if !ok {
				return errBadContentLength
			}
			if h.contentLen >= 0 && h.contentLen != n {
				return errBadContentLength
			}
			h.contentLen = n
		case hdrTransferEncoding:
			if haveTE || !eqFoldLower(v, "chunked") {
				return errUnsupportedTE
			}
			haveTE = true
		case hdrConnection:
			h.parseConnection(v)
		case hdrUpgrade:
			h.upgrade = span{f.vs, f.ve}
			h.upgradeH2C = false
			forEachToken(v, func(tok []byte) {
				h.upgradeH2C = h.upgradeH2C || eqFoldLower(tok, "h2c")
			})
		case hdrExpect:
			if eqFoldLower(v, "100-continue") {
				h.expect100 = true
			}
		case hdrXForwardedFor, hdrForwarded:
			if len(v) > 0 {
				h.xffCount++
			}
		case hdrXRealIP:
			if len(v) > 0 {
				h.realIPCount++
			}
		}
	}
	if h.hostCount > 1 {
		return errBadHost
	}
	if h.hostCount == 1 && !validHost(h.host.of(b)) {
		return errBadHost
	}
	if h.minor == 1 && h.hostCount == 0 {
		return errBadHost
	}
	if !h.authority.empty() && !validHost(h.authority.of(b)) {
		return errBadRequestLine
	}
	switch {
	case haveTE && h.contentLen >= 0:
		return errBadFraming
	case haveTE:
		if h.minor == 0 {
			return errUnsupportedTE // chunked did not exist in HTTP/1.0
		}
		h.framing = bodyChunked
	case h.contentLen > 0:
		h.framing = bodyLength
	default:
		h.framing = bodyNone
	}
	if h.minor == 0 && !h.connKeep {
		h.connClose = true
	}
	return nil
}

// parseConnection records the Connection options (RFC 9110 7.6.1).
func (h *requestHead) parseConnection(v []byte) {
	forEachToken(v, func(tok []byte) {
		switch {
		case eqFoldLower(tok, "close"):
			h.connClose = true
		case eqFoldLower(tok, "keep-alive"):
			h.connKeep = true
		case eqFoldLower(tok, "upgrade"):
			h.connUpgrade = true
		default:
			h.connOthers = true
		}
	})
}

// isUpgrade reports whether the request asks to switch protocols. An
// offer of h2c (HTTP/2 over cleartext, RFC 7540 3.2) is not one: the
// request is served as HTTP/1.1 and its Upgrade is dropped, as Envoy does.
// Forwarded, a backend that accepts it (Hypercorn does even without the
// Connection option RFC 7540 requires) would take HTTP/2 from the client
// through the tunnel, where the proxy no longer sets X-Forwarded-For,
// bounds heads or counts requests.
func (h *requestHead) isUpgrade() bool {
	return h.connUpgrade && !h.upgrade.empty() && h.minor == 1 && !h.upgradeH2C
}

// forEachToken calls fn for each non-empty element of a comma-separated
// list, trimmed of whitespace.
func forEachToken(v []byte, fn func([]byte)) {
	for len(v) > 0 {
		i := bytes.IndexByte(v, ',')
		var tok []byte
		if i < 0 {
			tok, v = v, nil
		} else {
			tok, v = v[:i], v[i+1:]
		}
		tok = bytes.Trim(tok, " \t")
		if len(tok) > 0 {
			fn(tok)
		}
	}
}

// listedInConnection reports whether name appears in one of the Connection
// header values of fields (such headers are hop-by-hop).
func listedInConnection(b []byte, fields []field, name []byte) bool {
	found := false
	for i := range fields {
		if fields[i].kind != hdrConnection {
			continue
		}
		forEachToken(b[fields[i].vs:fields[i].ve], func(tok []byte) {
			if len(tok) == len(name) && bytes.EqualFold(tok, name) {
				found = true
			}
		})
	}
	return found
}

// parseContentLength accepts 1-18 decimal digits (RFC 9110 8.6; no sign,
// no list).
func parseContentLength(v []byte) (int64, bool) {
	if len(v) == 0 || len(v) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// validHost accepts reg-name, IPv4 and bracketed IPv6 hosts with an
// optional port: the characters routing can ever match, so that nothing
// odd reaches logs or backends.
func validHost(h []byte) bool {
	if len(h) == 0 || len(h) > 300 {
		return false
	}
	for _, c := range h {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			c == '-' || c == '.' || c == '_' || c == ':' || c == '[' || c == ']') {
			return false
		}
	}
	return true
}

// routingHost turns a Host value into the form the routing table wants:
// lower-case, without port and trailing dot. It writes into dst (reused)
// and returns it.
func routingHost(dst, host []byte) []byte {
	dst = dst[:0]
	if len(host) > 0 && host[0] == '[' {
		// IPv6 literal: keep the brackets off, the table stores bare names.
		if i := bytes.IndexByte(host, ']'); i > 0 {
			host = host[1:i]
		}
	} else if i := bytes.LastIndexByte(host, ':'); i >= 0 {
		host = host[:i]
	}
	for _, c := range host {
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		dst = append(dst, c)
	}
	if n := len(dst); n > 0 && dst[n-1] == '.' {
		dst = dst[:n-1]
	}
	return dst
}

// responseHead is a parsed backend response head; spans point into the
// upstream connection's buffer.
type responseHead struct {
	headLen    int
	minor      int
	status     int
	statusRest span // "200 OK" (code and reason) as sent
	fields     []field
	framing    int
	contentLen int64
	connClose  bool
	connKeep   bool
	connOthers bool
	upgrade    span
}

// parseResponseHead parses the complete response head at the start of b.
// reqMethodHead says the request was HEAD (no body follows whatever the
// headers say).
func parseResponseHead(r *responseHead, b []byte, fields []field, reqMethodHead bool) error {
	*r = responseHead{fields: fields[:0], contentLen: -1}
	if len(b) < 14 || string(b[:7]) != "HTTP/1." || b[8] != ' ' {
		return errBadResponse
	}
	switch b[7] {
	case '0':
		r.minor = 0
	case '1':
		r.minor = 1
	default:
		return errBadResponse
	}
	c0, c1, c2 := b[9], b[10], b[11]
	if c0 < '1' || c0 > '5' || c1 < '0' || c1 > '9' || c2 < '0' || c2 > '9' {
		return errBadResponse
	}
	r.status = int(c0-'0')*100 + int(c1-'0')*10 + int(c2-'0')
	pos := 12
	if b[pos] != ' ' && b[pos] != '\r' {
		return errBadResponse
	}
	for pos < len(b) && b[pos] != '\r' && b[pos] != '\n' {
		c := b[pos]
		if c < 0x20 && c != '\t' || c == 0x7f {
			return errBadResponse
		}
		pos++
	}
	if pos+1 >= len(b) || b[pos] != '\r' || b[pos+1] != '\n' {
		return errBadResponse
	}
	r.statusRest = span{9, int32(pos)}
	pos += 2
	var err error
	r.fields, pos, err = parseHeaderLines(b, pos, r.fields)
	if err != nil {
		return errBadResponse
	}
	r.headLen = pos

	var haveTE bool
	for i := range r.fields {
		f := &r.fields[i]
		v := b[f.vs:f.ve]
		switch f.kind {
		case hdrContentLength:
			n, ok := parseContentLength(v)
			if !ok || (r.contentLen >= 0 && r.contentLen != n) {
				return errBadResponse
			}
			r.contentLen = n
		case hdrTransferEncoding:
			// Exactly "chunked", once (nginx's rule): "gzip, chunked",
			// "gzip", "identity", "chunked, chunked" are refused, not
			// relayed still encoded.
			if haveTE || !eqFoldLower(v, "chunked") {
				return errResponseTransferCoding
			}
			haveTE = true
		case hdrConnection:
			forEachToken(v, func(tok []byte) {
				switch {
				case eqFoldLower(tok, "close"):
					r.connClose = true
				case eqFoldLower(tok, "keep-alive"):
					r.connKeep = true
				default:
					r.connOthers = true
				}
			})
		case hdrUpgrade:
			r.upgrade = span{f.vs, f.ve}
		}
	}
	if haveTE && r.contentLen >= 0 {
		// RFC 9112 6.3 lets TE win, but the pair is the shape of a
		// response split on a connection that goes back to the pool;
		// nginx refuses it too.
		return errResponseTransferCoding
	}
	if r.minor == 0 && (!r.connKeep || haveTE) {
		// HTTP/1.0 has no chunked coding: RFC 9112 6.1 has the framing
		// of such a message treated as faulty and the connection closed
		// after it, whatever Connection says. Its body is still read as
		// chunked, as nginx does.
		r.connClose = true
	}
	// Message body length, RFC 9112 6.3.
	switch {
	case reqMethodHead || r.status < 200 || r.status == 204 || r.status == 304:
		r.framing = bodyNone
	case haveTE:
		r.framing = bodyChunked
	case r.contentLen == 0:
		r.framing = bodyNone
	case r.contentLen > 0:
		r.framing = bodyLength
	default:
		r.framing = bodyClose
	}
	return nil
}

// chunkScanner validates a chunked body incrementally and finds its end
// (RFC 9112 7.1), strictly: a size line is hex digits, optional
// whitespace only before a ';' that starts extensions, then CRLF; chunk
// data must be followed by CRLF; trailer lines must be header fields
// (token, ':', a value without controls). The proxy never forwards the
// client's or backend's framing bytes: callers collect the data spans and
// frame them again themselves (appendChunk, appendLastChunk), dropping
// chunk extensions, so nothing a lenient parser downstream might read
// differently passes through (nginx re-frames too). Trailer fields that
// passed the checks are collected when keepTrailers is set and written
// again by appendLastChunk, minus those that must not cross the proxy.
type chunkScanner struct {
	state   int
	size    int64 // remaining data bytes of the current chunk
	digits  int
	lineLen int
	trailer int // trailer bytes so far
	// keepTrailers makes scan collect the trailer section's field lines
	// (each with its CRLF) in trailers.
	keepTrailers bool
	trailers     []byte
}

const (
	csSize = iota
	csSizeBWS
	csExt
	csSizeLF
	csData
	csDataCR
	csDataLF
	csTrailerStart
	csTrailerName
	csTrailerValue
	csTrailerLF
	csEndLF
	csDone
)

var errBadChunk = errors.New("malformed chunked encoding")

// lastChunk ends a chunked body the proxy frames (no trailers).
const lastChunk = "0\r\n\r\n"

// keep collects a trailer byte when trailers are wanted; the section is
// bounded by maxTrailerBytes.
func (c *chunkScanner) keep(b byte) {
	if c.keepTrailers {
		c.trailers = append(c.trailers, b)
	}
}

// appendLastChunk ends a chunked body the proxy frames: the last chunk,
// the trailer fields (as collected by a chunkScanner: field lines that
// passed its checks) that may cross the proxy, and the empty line.
func appendLastChunk(out, trailers []byte) []byte {
	out = append(out, "0\r\n"...)
	forEachTrailer(trailers, func(line, name, _ []byte) {
		out = append(out, line...)
	})
	return append(out, "\r\n"...)
}

// forEachTrailer calls fn with each field of trailers (lines collected by
// a chunkScanner) that may be forwarded, with its name and trimmed value.
func forEachTrailer(trailers []byte, fn func(line, name, value []byte)) {
	for len(trailers) > 0 {
		end := bytes.IndexByte(trailers, '\n') + 1
		if end == 0 {
			return // not from a chunkScanner: nothing half-checked goes out
		}
		line := trailers[:end]
		trailers = trailers[end:]
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 || !allowedTrailer(line[:colon]) {
			continue
		}
		fn(line, line[:colon], bytes.Trim(line[colon+1:len(line)-2], " \t"))
	}
}

// allowedTrailer reports whether a trailer field may be forwarded. RFC
// 9110 6.5.1: fields that frame the message, route it, authenticate,
// carry request modifiers or response control data, or describe the
// content must be in the header section, where the recipient acts on
// them; in a trailer they would arrive after that decision, or be merged
// into the header section by a recipient that does so (letting a client
// add, say, an Authorization or a Host the proxy never saw). Those are
// dropped, not refused: the message itself is well formed, and dropping
// what may not be in a trailer is what the RFC allows a recipient. Field
// lines that are not valid header fields were refused earlier (the
// chunkScanner fails the body).
func allowedTrailer(name []byte) bool {
	if classifyHeader(name) != hdrOther {
		return false // framing, routing, hop-by-hop, forwarding, cookies
	}
	if hasPrefixFoldLower(name, "if-") || hasPrefixFoldLower(name, "content-") || hasPrefixFoldLower(name, "access-control-") {
		return false // conditionals, content metadata, CORS decisions
	}
	for _, f := range forbiddenTrailers {
		if eqFoldLower(name, f) {
			return false
		}
	}
	return true
}

// forbiddenTrailers are the names (besides those classifyHeader knows and
// the prefixes in allowedTrailer) that RFC 9110 6.5.1 keeps out of
// trailers: authentication, request modifiers and response control data.
var forbiddenTrailers = []string{
	"authorization", "www-authenticate", "authentication-info",
	"set-cookie", "range", "max-forwards", "cache-control", "pragma",
	"expires", "age", "vary", "date", "location", "retry-after",
	"alt-svc", "strict-transport-security", "accept-ranges", "etag",
	"last-modified", "refresh",
}

// appendChunk appends data framed as one chunk; empty data appends nothing
// (a zero-size chunk would end the body).
func appendChunk(out, data []byte) []byte {
	if len(data) == 0 {
		return out
	}
	out = strconv.AppendInt(out, int64(len(data)), 16)
	out = append(out, "\r\n"...)
	out = append(out, data...)
	return append(out, "\r\n"...)
}

// done reports whether the whole body (last chunk and trailers) was seen.
func (c *chunkScanner) done() bool { return c.state == csDone }

// scan consumes p up to the end of the body and returns the number of bytes
// consumed. When data is not nil it receives the spans of p that are chunk
// data.
func (c *chunkScanner) scan(p []byte, data *[]span) (int, error) {
	i := 0
	for i < len(p) && c.state != csDone {
		b := p[i]
		switch c.state {
		case csSize:
			var d byte
			switch {
			case b >= '0' && b <= '9':
				d = b - '0'
			case b >= 'a' && b <= 'f':
				d = b - 'a' + 10
			case b >= 'A' && b <= 'F':
				d = b - 'A' + 10
			case c.digits == 0:
				return i, errBadChunk
			case b == '\r':
				c.state = csSizeLF
				i++
				continue
			case b == ';':
				c.state = csExt
				c.lineLen++
				i++
				continue
			case b == ' ' || b == '\t':
				c.state = csSizeBWS
				c.lineLen++
				i++
				continue
			default:
				return i, errBadChunk
			}
			if c.digits == 15 {
				return i, errBadChunk
			}
			c.digits++
			c.size = c.size<<4 | int64(d)
			c.lineLen++
		case csSizeBWS:
			// Whitespace after the size is only allowed before ';'
			// (chunk-ext's BWS): "2 2" is not a size.
			switch b {
			case ' ', '\t':
			case ';':
				c.state = csExt
			default:
				return i, errBadChunk
			}
			c.lineLen++
			if c.lineLen > maxChunkLine {
				return i, errBadChunk
			}
		case csExt:
			// Extensions are checked for controls and dropped.
			if b == '\r' {
				c.state = csSizeLF
			} else if b < 0x20 && b != '\t' || b == 0x7f {
				return i, errBadChunk
			}
			c.lineLen++
			if c.lineLen > maxChunkLine {
				return i, errBadChunk
			}
		case csSizeLF:
			if b != '\n' {
				return i, errBadChunk
			}
			c.digits, c.lineLen = 0, 0
			if c.size == 0 {
				c.state = csTrailerStart
			} else {
				c.state = csData
			}
		case csData:
			n := int64(len(p) - i)
			if n > c.size {
				n = c.size
			}
			if data != nil {
				*data = append(*data, span{int32(i), int32(i) + int32(n)})
			}
			i += int(n)
			c.size -= n
			if c.size == 0 {
				c.state = csDataCR
			}
			continue
		case csDataCR:
			if b != '\r' {
				return i, errBadChunk
			}
			c.state = csDataLF
		case csDataLF:
			if b != '\n' {
				return i, errBadChunk
			}
			c.state = csSize
		case csTrailerStart:
			switch {
			case b == '\r':
				c.state = csEndLF
			case tokenTable[b]:
				c.state = csTrailerName
				c.keep(b)
			default:
				return i, errBadChunk
			}
		case csTrailerName:
			switch {
			case b == ':':
				c.state = csTrailerValue
			case !tokenTable[b]:
				return i, errBadChunk
			}
			c.keep(b)
		case csTrailerValue:
			if b == '\r' {
				c.state = csTrailerLF
			} else if b < 0x20 && b != '\t' || b == 0x7f {
				return i, errBadChunk
			}
			c.keep(b)
		case csTrailerLF:
			if b != '\n' {
				return i, errBadChunk
			}
			c.state = csTrailerStart
			c.keep(b)
		case csEndLF:
			if b != '\n' {
				return i, errBadChunk
			}
			c.state = csDone
		}
		if c.state >= csTrailerStart && c.state != csDone {
			c.trailer++
			if c.trailer > maxTrailerBytes {
				return i, errBadChunk
			}
		}
		i++
	}
	return i, nil
}
