package proxy

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// This file holds the test tools the safety tests share: a strict RFC 9112
// request reader written for the tests (net/http's reader is not strict
// enough to be the reference: it accepts bare LF line ends, chunk
// extensions without ';' checks and trailers it never validates), and a raw
// backend that records the exact bytes it received and answers through a
// function that may misbehave on purpose.

// strictRequest is one request as the strict reader read it.
type strictRequest struct {
	Method  string
	Target  string
	Header  [][2]string // in order, names as sent
	Body    []byte
	Chunked bool
	Raw     []byte // the exact bytes of the message
}

func (r *strictRequest) values(name string) []string {
	var vs []string
	for _, h := range r.Header {
		if strings.EqualFold(h[0], name) {
			vs = append(vs, h[1])
		}
	}
	return vs
}

func (r *strictRequest) get(name string) string {
	if vs := r.values(name); len(vs) > 0 {
		return vs[0]
	}
	return ""
}

var errStrict = errors.New("strict reader: not a valid HTTP/1.1 message")

func strictErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errStrict, fmt.Sprintf(format, args...))
}

// recorder reads one byte at a time from r (never past a message) and
// keeps every byte read through it.
type recorder struct {
	r   io.ByteReader
	buf bytes.Buffer
}

func (rc *recorder) ReadByte() (byte, error) {
	c, err := rc.r.ReadByte()
	if err == nil {
		rc.buf.WriteByte(c)
	}
	return c, err
}

func (rc *recorder) Read(p []byte) (int, error) {
	for i := range p {
		c, err := rc.ReadByte()
		if err != nil {
			return i, err
		}
		p[i] = c
	}
	return len(p), nil
}

// strictLine reads one line that must end in CRLF and contain no other CR
// or LF.
func strictLine(br *recorder, max int) (string, error) {
	var sb strings.Builder
	for {
		c, err := br.ReadByte()
		if err != nil {
			return "", err
		}
		switch c {
		case '\n':
			return "", strictErr("bare LF")
		case '\r':
			c2, err := br.ReadByte()
			if err != nil {
				return "", err
			}
			if c2 != '\n' {
				return "", strictErr("bare CR")
			}
			return sb.String(), nil
		}
		if sb.Len() >= max {
			return "", strictErr("line too long")
		}
		sb.WriteByte(c)
	}
}

func isToken(s string) bool {
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

func isFieldValue(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

// strictFields reads header lines up to the blank line.
func strictFields(br *recorder) ([][2]string, error) {
	var hs [][2]string
	for {
		line, err := strictLine(br, 64<<10)
		if err != nil {
			return nil, err
		}
		if line == "" {
			return hs, nil
		}
		if line[0] == ' ' || line[0] == '\t' {
			return nil, strictErr("obs-fold")
		}
		name, value, ok := strings.Cut(line, ":")
		if !ok || !isToken(name) {
			return nil, strictErr("bad field line %q", line)
		}
		value = strings.Trim(value, " \t")
		if !isFieldValue(value) {
			return nil, strictErr("bad field value %q", value)
		}
		hs = append(hs, [2]string{name, value})
		if len(hs) > 200 {
			return nil, strictErr("too many fields")
		}
	}
}

// readStrictChunked reads a chunked body: chunk-size [ ";" ext ] CRLF, data,
// CRLF, then the last chunk and trailer fields.
func readStrictChunked(br *recorder) ([]byte, error) {
	var body []byte
	for {
		line, err := strictLine(br, 4096)
		if err != nil {
			return nil, err
		}
		size, ext, hasExt := strings.Cut(line, ";")
		size = strings.TrimRight(size, " \t")
		if hasExt && !isFieldValue(ext) {
			return nil, strictErr("bad chunk extension %q", ext)
		}
		if size == "" || len(size) > 15 {
			return nil, strictErr("bad chunk size %q", line)
		}
		n, err := strconv.ParseUint(size, 16, 64)
		if err != nil {
			return nil, strictErr("bad chunk size %q", line)
		}
		if n == 0 {
			if _, err := strictFields(br); err != nil {
				return nil, err
			}
			return body, nil
		}
		chunk := make([]byte, n)
		if _, err := io.ReadFull(br, chunk); err != nil {
			return nil, err
		}
		body = append(body, chunk...)
		if crlf, err := strictLine(br, 0); err != nil || crlf != "" {
			return nil, strictErr("chunk data not followed by CRLF")
		}
	}
}

// readStrictRequest reads exactly one request with RFC 9112 framing and
// nothing lenient: CRLF only, tokens, one Host, one Content-Length value,
// Transfer-Encoding exactly "chunked" and never with Content-Length.
func readStrictRequest(r io.ByteReader) (*strictRequest, error) {
	return readStrictRequestVersion(r, false)
}

// readStrictRequestVersion is readStrictRequest that also takes what RFC
// 9112 lets a server accept from a client when client is set: HTTP/1.0
// (without Host) and repeated identical Content-Length values. The proxy's
// output must pass without it.
func readStrictRequestVersion(r io.ByteReader, client bool) (*strictRequest, error) {
	http10 := client
	br := &recorder{r: r}
	line, err := strictLine(br, 16<<10)
	if err != nil {
		return nil, err
	}
	parts := strings.Split(line, " ")
	if len(parts) != 3 || !isToken(parts[0]) || parts[1] == "" || parts[1][0] != '/' && parts[1] != "*" {
		return nil, strictErr("bad request line %q", line)
	}
	is10 := http10 && parts[2] == "HTTP/1.0"
	if parts[2] != "HTTP/1.1" && !is10 {
		return nil, strictErr("bad request line %q", line)
	}
	for i := 0; i < len(parts[1]); i++ {
		if c := parts[1][i]; c <= ' ' || c == 0x7f {
			return nil, strictErr("bad target %q", parts[1])
		}
	}
	req := &strictRequest{Method: parts[0], Target: parts[1]}
	if req.Header, err = strictFields(br); err != nil {
		return nil, err
	}
	if n := len(req.values("Host")); n > 1 || n == 0 && !is10 {
		return nil, strictErr("want exactly one Host, got %d", len(req.values("Host")))
	}
	cls, tes := req.values("Content-Length"), req.values("Transfer-Encoding")
	switch {
	case len(tes) > 0 && len(cls) > 0:
		return nil, strictErr("both Content-Length and Transfer-Encoding")
	case len(tes) > 1 || len(tes) == 1 && tes[0] != "chunked":
		return nil, strictErr("Transfer-Encoding %q", tes)
	case len(tes) == 1 && is10:
		return nil, strictErr("chunked in HTTP/1.0")
	case len(tes) == 1:
		req.Chunked = true
		if req.Body, err = readStrictChunked(br); err != nil {
			return nil, err
		}
	case len(cls) > 1 && (!client || !allEqual(cls)):
		return nil, strictErr("several Content-Length fields")
	case len(cls) >= 1:
		n, err := strconv.ParseUint(cls[0], 10, 40)
		if err != nil || cls[0][0] == '+' {
			return nil, strictErr("Content-Length %q", cls[0])
		}
		req.Body = make([]byte, n)
		if _, err := io.ReadFull(br, req.Body); err != nil {
			return nil, err
		}
	}
	req.Raw = br.buf.Bytes()
	return req, nil
}

// recBackend is an HTTP/1.1 backend on a raw socket: it reads each request
// with the strict reader, records it, and lets answer write whatever it
// wants on the connection (answer returns false to close it).
type recBackend struct {
	t      testing.TB
	ln     net.Listener
	addr   string
	answer func(c net.Conn, req *strictRequest, nth int) bool

	conns    atomic.Int64
	requests atomic.Int64
	bytesIn  atomic.Int64 // every byte read from the proxy, complete requests or not
	mu       sync.Mutex
	reqs     []*strictRequest
	errs     []error
}

func newRecBackend(t testing.TB, answer func(c net.Conn, req *strictRequest, nth int) bool) *recBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if answer == nil {
		answer = answerEcho
	}
	rb := &recBackend{t: t, ln: ln, addr: ln.Addr().String(), answer: answer}
	var wg sync.WaitGroup
	var live sync.Map
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			rb.conns.Add(1)
			live.Store(c, true)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer live.Delete(c)
				defer c.Close()
				br := bufio.NewReader(countingReader{c, &rb.bytesIn})
				for nth := 0; ; nth++ {
					req, err := readStrictRequest(br)
					if err != nil {
						if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !isReset(err) {
							rb.mu.Lock()
							rb.errs = append(rb.errs, err)
							rb.mu.Unlock()
						}
						return
					}
					rb.requests.Add(1)
					rb.mu.Lock()
					rb.reqs = append(rb.reqs, req)
					rb.mu.Unlock()
					if !rb.answer(c, req, nth) {
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		live.Range(func(k, _ any) bool { _ = k.(net.Conn).Close(); return true })
		wg.Wait()
	})
	return rb
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n *atomic.Int64
}

func (c countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

func allEqual(vs []string) bool {
	for _, v := range vs {
		if v != vs[0] {
			return false
		}
	}
	return true
}

func isReset(err error) bool {
	return err != nil && (strings.Contains(err.Error(), "connection reset") || errors.Is(err, io.ErrUnexpectedEOF))
}

func (rb *recBackend) url() string { return "http://" + rb.addr }

func (rb *recBackend) received() ([]*strictRequest, []error) {
	rb.mu.Lock()
	defer rb.mu.Unlock()
	return append([]*strictRequest(nil), rb.reqs...), append([]error(nil), rb.errs...)
}

// answerEcho answers "METHOD TARGET" plus the body length.
func answerEcho(c net.Conn, req *strictRequest, _ int) bool {
	body := fmt.Sprintf("%s %s %d", req.Method, req.Target, len(req.Body))
	_, err := fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	return err == nil
}

// rawRoundTrip sends req on a new connection to addr and reads one
// response (method for the framing of its body).
func rawRoundTrip(t testing.TB, addr, req, method string) (status int, body string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	resp, b := readResponse(t, bufio.NewReader(c), method)
	return resp.StatusCode, b
}

// h2Raw is a hand-driven HTTP/2 client connection: it sends header blocks
// the standard client refuses to build (invalid pseudo-headers, floods of
// resets).
type h2Raw struct {
	t    testing.TB
	conn *tls.Conn
	fr   *http2.Framer
	enc  *hpack.Encoder
	hbuf bytes.Buffer
	dec  *hpack.Decoder
}

func dialH2Raw(t testing.TB, addr, sni string, roots *x509.CertPool) *h2Raw {
	t.Helper()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, &tls.Config{ServerName: sni, RootCAs: roots, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	if conn.ConnectionState().NegotiatedProtocol != "h2" {
		t.Fatalf("ALPN %q", conn.ConnectionState().NegotiatedProtocol)
	}
	h := &h2Raw{t: t, conn: conn, fr: http2.NewFramer(conn, conn)}
	h.enc = hpack.NewEncoder(&h.hbuf)
	h.dec = hpack.NewDecoder(4096, nil)
	if _, err := io.WriteString(conn, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	if err := h.fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	return h
}

// headers sends a complete header block (pairs of name, value) on stream id.
func (h *h2Raw) headers(id uint32, endStream bool, kv ...string) error {
	h.hbuf.Reset()
	for i := 0; i+1 < len(kv); i += 2 {
		_ = h.enc.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
	}
	return h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: h.hbuf.Bytes(), EndStream: endStream, EndHeaders: true})
}

// response reads frames until stream id ends; it returns the :status (0
// when the stream was reset) and the RST_STREAM code if any.
func (h *h2Raw) response(id uint32) (status string, rst http2.ErrCode, err error) {
	_ = h.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		f, err := h.fr.ReadFrame()
		if err != nil {
			return status, rst, err
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = h.fr.WriteSettingsAck()
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				_ = h.fr.WritePing(true, f.Data)
			}
		case *http2.GoAwayFrame:
			return status, rst, fmt.Errorf("GOAWAY %v", f.ErrCode)
		case *http2.HeadersFrame:
			fields, derr := h.dec.DecodeFull(f.HeaderBlockFragment())
			if derr != nil {
				return status, rst, derr
			}
			if f.StreamID == id {
				for _, hf := range fields {
					if hf.Name == ":status" {
						status = hf.Value
					}
				}
				if f.StreamEnded() {
					return status, rst, nil
				}
			}
		case *http2.DataFrame:
			if f.StreamID == id && f.StreamEnded() {
				return status, rst, nil
			}
		case *http2.RSTStreamFrame:
			if f.StreamID == id {
				return status, f.ErrCode, nil
			}
		}
	}
}
