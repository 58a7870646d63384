package proxy

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/singularity-ng/singularity-edge/internal/nettest"
	"github.com/singularity-ng/singularity-edge/pools"
	"github.com/singularity-ng/singularity-edge/storage"
)

// TestPooledConnectionWithLateBytesIsNotReused: a backend writes bytes
// after a response ended, after the connection went back to the pool. The
// next request, from another client, must get its own response, never those
// bytes.
func TestPooledConnectionWithLateBytesIsNotReused(t *testing.T) {
	late := map[string]struct {
		method string
		first  string // the answer to the first request
		extra  string // written 150 ms later on the same connection
	}{
		"second response": {"GET", "HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nanswer to a!", "HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nSTOLEN!"},
		"body after HEAD": {"HEAD", "HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nSTOLEN!"},
		"body after 204":  {"GET", "HTTP/1.1 204 No Content\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nSTOLEN!"},
		"body after 304":  {"GET", "HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n", "STOLEN!"},
	}
	ca := newTestCA(t)
	certs := &testCerts{}
	certs.add("late.test", ca.issue(t, "late.test"))
	for name, tc := range late {
		for _, proto := range []string{"HTTP/1.1", "HTTP/2"} {
			t.Run(name+" "+proto, func(t *testing.T) {
				rb := newRecBackend(t, func(c net.Conn, req *strictRequest, nth int) bool {
					if req.Target == "/a" {
						_, _ = io.WriteString(c, tc.first)
						time.Sleep(150 * time.Millisecond)
						_, _ = io.WriteString(c, tc.extra)
						return true
					}
					return answerEcho(c, req, nth)
				})
				table := newTable(t, poolSpec{storage.Pool{Name: "late", SSLMode: "flexible", AllowHTTP: true, SSLDomain: "late.test"}, []string{rb.url()}})
				p := startProxy(t, testConfig(), table, certs, nil)
				var c1, c2 *http.Client
				base := "http://late.test"
				if proto == "HTTP/2" {
					c1, c2 = client(p.https, ca.pool, true), client(p.https, ca.pool, true)
					base = "https://late.test"
				} else {
					c1, c2 = client(p.http, nil, false), client(p.http, nil, false)
				}
				req, _ := http.NewRequest(tc.method, base+"/a", nil)
				resp, err := c1.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				readAll(t, resp)
				time.Sleep(300 * time.Millisecond)
				resp = get(t, c2, base+"/b")
				if body := readAll(t, resp); resp.StatusCode != 200 || body != "GET /b 0" {
					t.Fatalf("second client got %d %q, want its own answer", resp.StatusCode, body)
				}
			})
		}
	}
}

// TestPostNotRetried: a backend that reads a POST on a reused connection and
// closes without answering must see it once; the client gets 502.
func TestPostNotRetried(t *testing.T) {
	rb := newRecBackend(t, func(c net.Conn, req *strictRequest, nth int) bool {
		if req.Method == "POST" {
			return false // read it, then close without a word
		}
		return answerEcho(c, req, nth)
	})
	table := newTable(t, poolSpec{storage.Pool{Name: "post", Hosts: []string{"post.test"}}, []string{rb.url()}})
	p := startProxy(t, testConfig(), table, nil, nil)
	c := client(p.http, nil, false)
	readAll(t, get(t, c, "http://post.test/warm")) // one pooled connection
	resp, err := c.Post("http://post.test/pay", "text/plain", strings.NewReader("100 EUR"))
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, resp)
	if resp.StatusCode != 502 {
		t.Fatalf("status %d, want 502", resp.StatusCode)
	}
	reqs, _ := rb.received()
	posts := 0
	for _, r := range reqs {
		if r.Method == "POST" {
			posts++
		}
	}
	if posts != 1 {
		t.Fatalf("backend received the POST %d times", posts)
	}
	// An idempotent request is still retried on a fresh connection.
	rb2 := newRecBackend(t, func(c net.Conn, req *strictRequest, nth int) bool {
		if nth == 1 {
			return false
		}
		return answerEcho(c, req, nth)
	})
	p.router.t.Store(newTable(t, poolSpec{storage.Pool{Name: "post", Hosts: []string{"post.test"}}, []string{rb2.url()}}))
	readAll(t, get(t, c, "http://post.test/1"))
	resp = get(t, c, "http://post.test/2")
	if body := readAll(t, resp); resp.StatusCode != 200 || body != "GET /2 0" {
		t.Fatalf("idempotent retry: %d %q", resp.StatusCode, body)
	}
	if n := rb2.conns.Load(); n != 2 {
		t.Fatalf("backend connections %d, want 2", n)
	}
}

// TestHTTP2PseudoHeadersValidated: pseudo-headers and fields that would
// forge another HTTP/1.1 request line or header never reach the backend.
func TestHTTP2PseudoHeadersValidated(t *testing.T) {
	p, ca, rb := flexiblePool(t, "v.test", testConfig(), nil)
	h := dialH2Raw(t, p.https, "v.test", ca.pool)
	base := func(method, path, authority string) []string {
		return []string{":method", method, ":scheme", "https", ":path", path, ":authority", authority}
	}
	cases := []struct {
		name string
		kv   []string
	}{
		{"method with spaces", base("GET /admin HTTP/1.1", "/pub", "v.test")},
		{"method with CRLF", base("GET\r\nX: y", "/pub", "v.test")},
		{"path with space", base("GET", "/pub HTTP/1.1\r\nHost: evil", "v.test")},
		{"path with space only", base("GET", "/a b", "v.test")},
		{"path not origin-form", base("GET", "http://evil/", "v.test")},
		{"asterisk for GET", base("GET", "*", "v.test")},
		{"authority with slash", base("GET", "/", "v.test/x")},
		{"authority with space", base("GET", "/", "v.test x")},
		{"CONNECT", []string{":method", "CONNECT", ":authority", "v.test:443"}},
		// RFC 9113 8.3.1; the SNI (v.test) used to stand in for them.
		{"no authority nor host", []string{":method", "GET", ":scheme", "https", ":path", "/pub"}},
		{"empty authority", base("GET", "/pub", "")},
	}
	id := uint32(1)
	for _, tc := range cases {
		if err := h.headers(id, true, tc.kv...); err != nil {
			t.Fatal(err)
		}
		status, rst, err := h.response(id)
		if err != nil {
			// The server may also end the connection over a protocol error.
			h = dialH2Raw(t, p.https, "v.test", ca.pool)
			id = 1
			continue
		}
		if status == "200" || status == "" && rst == 0 {
			t.Errorf("%s: status %q rst %v: not refused", tc.name, status, rst)
		}
		id += 2
	}
	if err := h.headers(id, true, base("GET", "/ok", "v.test")...); err != nil {
		t.Fatal(err)
	}
	if status, _, err := h.response(id); err != nil || status != "200" {
		t.Fatalf("valid request: %q %v", status, err)
	}
	// A Host field in place of :authority is allowed.
	id += 2
	if err := h.headers(id, true, ":method", "GET", ":scheme", "https", ":path", "/host", "host", "v.test"); err != nil {
		t.Fatal(err)
	}
	if status, _, err := h.response(id); err != nil || status != "200" {
		t.Fatalf("request with Host and no :authority: %q %v", status, err)
	}
	reqs, errs := rb.received()
	if len(reqs) != 2 || reqs[0].Target != "/ok" || reqs[1].Target != "/host" || reqs[1].get("Host") != "v.test" || len(errs) > 0 {
		t.Fatalf("backend received %d requests (%v), errors %v", len(reqs), reqs, errs)
	}
}

// TestHTTP2ContentLengthValidated: an HTTP/2 request whose content-length
// is not one decimal number (empty, signed, a list, two different values)
// is malformed (RFC 9113 8.1.1) and gets 400 (or the stream is reset)
// without reaching a backend.
// x/net reads such a value as 0: the request went to the backend without
// its body while the client's DATA frame then reset the stream, so the
// backend acted on a request the client never sent.
func TestHTTP2ContentLengthValidated(t *testing.T) {
	p, ca, rb := flexiblePool(t, "cl.test", testConfig(), nil)
	post := func(h *h2Raw, id uint32, path string, cls ...string) (string, http2.ErrCode, error) {
		kv := []string{":method", "POST", ":scheme", "https", ":path", path, ":authority", "cl.test"}
		for _, v := range cls {
			kv = append(kv, "content-length", v)
		}
		if err := h.headers(id, false, kv...); err != nil {
			t.Fatal(err)
		}
		if err := h.fr.WriteData(id, true, []byte("x")); err != nil {
			t.Fatal(err)
		}
		return h.response(id)
	}
	for _, cls := range [][]string{{""}, {"+1"}, {"1, 1"}, {"0x1"}, {"1", "2"}} {
		h := dialH2Raw(t, p.https, "cl.test", ca.pool)
		// x/net may reset the stream first (it reads a bad value as 0,
		// and the DATA frame then exceeds it): refused either way.
		if status, rst, err := post(h, 1, "/bad", cls...); status != "400" && (status != "" || rst != http2.ErrCodeProtocol) {
			t.Errorf("content-length %q: status %q rst %v err %v, want 400", cls, status, rst, err)
		}
	}
	h := dialH2Raw(t, p.https, "cl.test", ca.pool)
	if status, _, err := post(h, 1, "/ok", "1"); status != "200" || err != nil {
		t.Fatalf("content-length 1: %q %v", status, err)
	}
	reqs, errs := rb.received()
	if len(reqs) != 1 || reqs[0].Target != "/ok" || string(reqs[0].Body) != "x" || len(errs) > 0 {
		t.Fatalf("backend received %d requests (%v), errors %v", len(reqs), reqs, errs)
	}
}

// TestMalformedFirstChunkAnswered: a chunked response whose first chunk
// line, read with the head, is malformed gets the client a 502. The head
// waits for that line, so before, the client got nothing but a close and
// the access log a 200.
func TestMalformedFirstChunkAnswered(t *testing.T) {
	rb := newRecBackend(t, func(c net.Conn, req *strictRequest, nth int) bool {
		if req.Target == "/bad-chunk" {
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n")
			return false
		}
		return answerEcho(c, req, nth)
	})
	table := newTable(t, poolSpec{storage.Pool{Name: "fc", Hosts: []string{"fc.test"}}, []string{rb.url()}})
	p := startProxy(t, testConfig(), table, nil, nil)
	if status, body := rawRoundTrip(t, p.http, "GET /bad-chunk HTTP/1.1\r\nHost: fc.test\r\n\r\n", "GET"); status != 502 {
		t.Fatalf("malformed first chunk: %d %q, want 502", status, body)
	}
	if status, body := rawRoundTrip(t, p.http, "GET /next HTTP/1.1\r\nHost: fc.test\r\n\r\n", "GET"); status != 200 || body != "GET /next 0" {
		t.Fatalf("next request: %d %q", status, body)
	}
}

// TestResponseTransferCodingRefused: a backend response whose
// Transfer-Encoding is anything but "chunked" alone, or that also has a
// Content-Length, gets the client a 502 over HTTP/1.1 and HTTP/2, and its
// body never reaches the client. Before, "gzip, chunked" reached HTTP/1.1
// clients still gzip-coded (which most cannot decode) and HTTP/2 clients
// as the raw gzip bytes with no coding named, and "gzip" or "identity"
// alone reached both as a close-delimited body, the field dropped.
func TestResponseTransferCodingRefused(t *testing.T) {
	const marker = "ENCODED"
	answers := map[string]string{
		"/gzip-chunked":  "Transfer-Encoding: gzip, chunked\r\n\r\n7\r\n" + marker + "\r\n0\r\n\r\n",
		"/gzip":          "Transfer-Encoding: gzip\r\n\r\n" + marker,
		"/identity":      "Transfer-Encoding: identity\r\n\r\n" + marker,
		"/chunked-gzip":  "Transfer-Encoding: chunked, gzip\r\n\r\n" + marker,
		"/chunked-twice": "Transfer-Encoding: chunked, chunked\r\n\r\n7\r\n" + marker + "\r\n0\r\n\r\n",
		"/two-fields":    "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n7\r\n" + marker + "\r\n0\r\n\r\n",
		"/te-and-cl":     "Content-Length: 7\r\nTransfer-Encoding: chunked\r\n\r\n7\r\n" + marker + "\r\n0\r\n\r\n",
	}
	p, ca, _ := flexiblePool(t, "tc.test", testConfig(), func(c net.Conn, req *strictRequest, nth int) bool {
		if a, ok := answers[req.Target]; ok {
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\n"+a)
			return false
		}
		return answerEcho(c, req, nth)
	})
	for _, h2 := range []bool{false, true} {
		c := client(p.https, ca.pool, h2)
		for path := range answers {
			resp, err := c.Get("https://tc.test" + path)
			if err != nil {
				t.Errorf("h2=%v %s: %v, want a 502", h2, path, err)
				continue
			}
			body := readAll(t, resp)
			if resp.StatusCode != 502 || strings.Contains(body, marker) || (resp.ProtoMajor == 2) != h2 {
				t.Errorf("%s %s: %d %q (Transfer-Encoding %q), want 502 without the backend's body", resp.Proto, path, resp.StatusCode, body, resp.TransferEncoding)
			}
		}
		resp := get(t, c, "https://tc.test/next")
		if body := readAll(t, resp); resp.StatusCode != 200 || body != "GET /next 0" {
			t.Fatalf("h2=%v: next request %d %q", h2, resp.StatusCode, body)
		}
	}
}

// TestHTTP2FrameSizeBounded: the agent advertises and enforces a 16 KiB
// SETTINGS_MAX_FRAME_SIZE. With x/net's 1 MiB default, the 9-byte header
// of a 1 MiB frame made the server allocate the whole payload buffer
// before any payload arrived: a megabyte of heap per connection for a few
// bytes sent (BenchmarkH2HeldMemory/frame_header). A larger frame now ends
// the connection with FRAME_SIZE_ERROR at its header.
func TestHTTP2FrameSizeBounded(t *testing.T) {
	p, ca, _ := flexiblePool(t, "fs.test", testConfig(), nil)

	h := dialH2Raw(t, p.https, "fs.test", ca.pool)
	_ = h.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	f, err := h.fr.ReadFrame()
	if err != nil {
		t.Fatal(err)
	}
	sf, ok := f.(*http2.SettingsFrame)
	if !ok {
		t.Fatalf("first frame %v, want SETTINGS", f)
	}
	if v, ok := sf.Value(http2.SettingMaxFrameSize); !ok || v != 16<<10 {
		t.Fatalf("SETTINGS_MAX_FRAME_SIZE %d (sent %v), want 16384", v, ok)
	}
	// A frame of 16 KiB + 1 (an extension type, which is otherwise
	// ignored): only its header is sent.
	var hdr [9]byte
	binary.BigEndian.PutUint32(hdr[:4], (16<<10+1)<<8|0xfa)
	if _, err := h.conn.Write(hdr[:]); err != nil {
		t.Fatal(err)
	}
	for {
		f, err := h.fr.ReadFrame()
		if err != nil {
			t.Fatalf("no GOAWAY before %v: the server waits for the payload", err)
		}
		if ga, ok := f.(*http2.GoAwayFrame); ok {
			if ga.ErrCode != http2.ErrCodeFrameSize {
				t.Fatalf("GOAWAY %v, want FRAME_SIZE_ERROR", ga.ErrCode)
			}
			break
		}
	}
	// A frame within the bound is served as before.
	h2 := dialH2Raw(t, p.https, "fs.test", ca.pool)
	if err := h2.headers(1, false, ":method", "POST", ":scheme", "https", ":path", "/in", ":authority", "fs.test"); err != nil {
		t.Fatal(err)
	}
	if err := h2.fr.WriteData(1, true, bytes.Repeat([]byte("d"), 16<<10)); err != nil {
		t.Fatal(err)
	}
	if status, rst, err := h2.response(1); err != nil || status != "200" {
		t.Fatalf("16 KiB frame: status %q rst %v err %v", status, rst, err)
	}
}

// TestHTTP2RequestHeadBounded: an HTTP/2 request head is bounded by
// MaxRequestHeaderBytes, as an HTTP/1.1 one is. HPACK lets a client send a
// field once and then name it with one byte, so without the bound a few
// KiB on the wire became a megabyte of header per stream, held while the
// stream waited for a backend and forwarded to it.
func TestHTTP2RequestHeadBounded(t *testing.T) {
	cfg := testConfig()
	p, ca, rb := flexiblePool(t, "hb.test", cfg, nil)
	h := dialH2Raw(t, p.https, "hb.test", ca.pool)
	withFields := func(path string, n int) []string {
		kv := []string{":method", "GET", ":scheme", "https", ":path", path, ":authority", "hb.test"}
		v := strings.Repeat("v", 2000)
		for range n {
			kv = append(kv, "x-big", v) // indexed after the first: one byte each
		}
		return kv
	}
	// Twice the bound, in a header block of a few KiB.
	over := 2 * cfg.MaxRequestHeaderBytes / 2000
	if err := h.headers(1, true, withFields("/over", over)...); err != nil {
		t.Fatal(err)
	}
	if status, rst, err := h.response(1); err != nil || status != "431" {
		t.Fatalf("head of %d bytes: status %q rst %v err %v, want 431", over*2000, status, rst, err)
	}
	// A head within the bound is served on the same connection.
	if err := h.headers(3, true, withFields("/within", 4)...); err != nil {
		t.Fatal(err)
	}
	if status, _, err := h.response(3); err != nil || status != "200" {
		t.Fatalf("head within the bound: %q %v", status, err)
	}
	reqs, errs := rb.received()
	if len(reqs) != 1 || reqs[0].Target != "/within" || len(errs) > 0 {
		t.Fatalf("backend received %d requests (%v), errors %v", len(reqs), reqs, errs)
	}
}

// TestHTTP2ResponseTypeNotSniffed: a response the backend sent without a
// Content-Type reaches HTTP/2 clients without one, as it reaches HTTP/1.1
// clients. net/http sniffed one from the body: an untyped upload served
// with "X-Content-Type-Options: nosniff" became text/html, script and all.
func TestHTTP2ResponseTypeNotSniffed(t *testing.T) {
	const page = "<html><script>alert(1)</script></html>"
	p, ca, _ := flexiblePool(t, "ct.test", testConfig(), func(c net.Conn, req *strictRequest, nth int) bool {
		if req.Target == "/typed" {
			_, err := fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: %d\r\n\r\n%s", len(page), page)
			return err == nil
		}
		_, err := fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nX-Content-Type-Options: nosniff\r\nContent-Length: %d\r\n\r\n%s", len(page), page)
		return err == nil
	})
	for _, h2 := range []bool{true, false} {
		c := client(p.https, ca.pool, h2)
		resp := get(t, c, "https://ct.test/upload")
		body := readAll(t, resp)
		if resp.StatusCode != 200 || body != page || (resp.ProtoMajor == 2) != h2 {
			t.Fatalf("%s: %d %q", resp.Proto, resp.StatusCode, body)
		}
		if ct, ok := resp.Header["Content-Type"]; ok {
			t.Errorf("%s: Content-Type %q added to a response sent without one", resp.Proto, ct)
		}
		resp = get(t, c, "https://ct.test/typed")
		if _ = readAll(t, resp); resp.Header.Get("Content-Type") != "image/png" {
			t.Errorf("%s: Content-Type %q, want the backend's", resp.Proto, resp.Header.Get("Content-Type"))
		}
	}
}

// TestChunkedStrictAndReframed: invalid chunk lines and trailers are
// refused by the proxy (the backend, which counts requests, sees none), and
// valid chunked bodies reach the backend in the proxy's own framing, without
// the client's extensions and trailers; responses likewise.
func TestChunkedStrictAndReframed(t *testing.T) {
	rb := newRecBackend(t, func(c net.Conn, req *strictRequest, nth int) bool {
		if req.Target == "/chunked-response" {
			_, err := io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"+
				"3;ext=\"v\"\r\nabc\r\n2 ; e\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n")
			return err == nil
		}
		return answerEcho(c, req, nth)
	})
	table := newTable(t, poolSpec{storage.Pool{Name: "ch", Hosts: []string{"ch.test"}}, []string{rb.url()}})
	p := startProxy(t, testConfig(), table, nil, nil)
	head := "POST /up HTTP/1.1\r\nHost: ch.test\r\nTransfer-Encoding: chunked\r\n\r\n"
	for name, body := range map[string]string{
		"0x prefix":             "0x5\r\nhello\r\n0\r\n\r\n",
		"junk after size":       "5xyz\r\nhello\r\n0\r\n\r\n",
		"two sizes":             "2 2\r\nab\r\n0\r\n\r\n",
		"missing CR after data": "5\r\nhello\n0\r\n\r\n",
		"request in trailers":   "0\r\nGET /smuggled HTTP/1.1\r\nHost: ch.test\r\n\r\n",
	} {
		t.Run(name, func(t *testing.T) {
			status, _ := rawRoundTrip(t, p.http, head+body, "POST")
			if status != 400 {
				t.Fatalf("status %d, want 400", status)
			}
		})
	}
	if n := rb.requests.Load(); n != 0 {
		reqs, _ := rb.received()
		t.Fatalf("backend received %d requests: %q", n, reqs[0].Raw)
	}

	// Valid: extensions stay at the edge, valid trailer fields follow
	// the proxy's own last chunk (TestTrailersForwarded has the rules).
	status, body := rawRoundTrip(t, p.http, head+"5;name=\"v\"\r\nhello\r\n1 ;x\r\n!\r\n0\r\nX-Trailer: t\r\n\r\n", "POST")
	if status != 200 || body != "POST /up 6" {
		t.Fatalf("valid chunked: %d %q", status, body)
	}
	reqs, errs := rb.received()
	if len(reqs) != 1 || len(errs) != 0 {
		t.Fatalf("backend: %d requests, errors %v", len(reqs), errs)
	}
	raw := string(reqs[0].Raw)
	_, framed, _ := strings.Cut(raw, "\r\n\r\n")
	if framed != "5\r\nhello\r\n1\r\n!\r\n0\r\nX-Trailer: t\r\n\r\n" {
		t.Fatalf("backend got body framing %q", framed)
	}

	// Responses: the client gets the proxy's framing too.
	got := rawExchange(t, p.http, "GET /chunked-response HTTP/1.1\r\nHost: ch.test\r\nConnection: close\r\n\r\n", 2*time.Second)
	_, respBody, _ := strings.Cut(got, "\r\n\r\n")
	if respBody != "3\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n" {
		t.Fatalf("client got %q", got)
	}
}

// TestHeaderHygieneBothProtocols: the same request over HTTP/1.1 and over
// HTTP/2, from a trusted and an untrusted client, reaches the backend with
// no Proxy-* or hop-by-hop field, the client's address in X-Forwarded-For
// and Forwarded (appended for a trusted proxy, replacing otherwise) and in
// X-Real-IP (a trusted proxy's kept), and
// the proxy's X-Forwarded-Proto and X-Forwarded-Host.
func TestHeaderHygieneBothProtocols(t *testing.T) {
	ca := newTestCA(t)
	certs := &testCerts{}
	certs.add("hy.test", ca.issue(t, "hy.test"))
	for _, trusted := range []bool{false, true} {
		for _, proto := range []string{"HTTP/1.1", "HTTP/2"} {
			t.Run(fmt.Sprintf("%s trusted=%v", proto, trusted), func(t *testing.T) {
				rb := newRecBackend(t, nil)
				table := newTable(t, poolSpec{storage.Pool{Name: "hy", SSLMode: "flexible", SSLDomain: "hy.test"}, []string{rb.url()}})
				cfg := testConfig()
				cfg.TrustedProxies = []netip.Prefix{}
				if trusted {
					cfg.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
				}
				p := startProxy(t, cfg, table, certs, nil)
				fields := []string{
					"proxy-authorization", "Basic Zm9vOmJhcg==", "proxy-foo", "1",
					"x-forwarded-for", "203.0.113.7", "forwarded", "for=203.0.113.7",
					"x-forwarded-proto", "gopher", "x-forwarded-host", "evil.test",
					"te", "trailers", "x-kept", "yes", "x-real-ip", "203.0.113.7",
				}
				if proto == "HTTP/2" {
					h := dialH2Raw(t, p.https, "hy.test", ca.pool)
					kv := append([]string{":method", "GET", ":scheme", "https", ":path", "/hy", ":authority", "hy.test"}, fields...)
					if err := h.headers(1, true, kv...); err != nil {
						t.Fatal(err)
					}
					if status, _, err := h.response(1); err != nil || status != "200" {
						t.Fatalf("status %q, %v", status, err)
					}
				} else {
					conn, err := tls.Dial("tcp", p.https, &tls.Config{ServerName: "hy.test", RootCAs: ca.pool})
					if err != nil {
						t.Fatal(err)
					}
					defer conn.Close()
					req := "GET /hy HTTP/1.1\r\nHost: hy.test\r\nConnection: X-Hop\r\nX-Hop: 1\r\nProxy-Connection: keep-alive\r\n"
					for i := 0; i < len(fields); i += 2 {
						req += fields[i] + ": " + fields[i+1] + "\r\n"
					}
					_, _ = io.WriteString(conn, req+"\r\n")
					if resp, _ := readResponse(t, bufio.NewReader(conn), "GET"); resp.StatusCode != 200 {
						t.Fatalf("status %d", resp.StatusCode)
					}
				}
				reqs, errs := rb.received()
				if len(reqs) != 1 || len(errs) > 0 {
					t.Fatalf("backend: %d requests, errors %v", len(reqs), errs)
				}
				r := reqs[0]
				for _, h := range r.Header {
					name := strings.ToLower(h[0])
					if strings.HasPrefix(name, "proxy-") || name == "te" || name == "x-hop" || name == "connection" {
						t.Errorf("backend got %s: %s", h[0], h[1])
					}
				}
				wantXFF, wantFwd, wantReal := "127.0.0.1", "for=127.0.0.1;proto=https", "127.0.0.1"
				if trusted {
					wantXFF, wantFwd, wantReal = "203.0.113.7, 127.0.0.1", "for=203.0.113.7, for=127.0.0.1;proto=https", "203.0.113.7"
				}
				for name, want := range map[string]string{
					"X-Forwarded-For": wantXFF, "Forwarded": wantFwd, "X-Real-IP": wantReal, "X-Forwarded-Proto": "https",
					"X-Forwarded-Host": "hy.test", "X-Kept": "yes", "Host": "hy.test",
				} {
					if got := r.values(name); len(got) != 1 || got[0] != want {
						t.Errorf("backend %s = %q, want %q", name, got, want)
					}
				}
			})
		}
	}
}

// TestRealIPFollowsTrust: X-Real-IP follows the trust rule of
// X-Forwarded-For over HTTP/1.1 and HTTP/2, on listeners with and without
// the PROXY protocol: a trusted proxy's is kept as sent; anyone else's is
// replaced by the client's address, which is also set when no X-Real-IP
// came (a backend that reads it must never see an address a client
// chose). With the PROXY protocol the client is the header's source.
//
// The other X-Forwarded-* fields (port, prefix, scheme, TLS flag, client
// certificate...) follow the trust rule too: kept from a trusted proxy,
// dropped from anyone else. Backends read them as the edge's word (Spring
// and Rack take X-Forwarded-Ssl and -Prefix, Envoy's X-Forwarded-Client-Cert
// names the client's certificate); before, a plain-HTTP client's
// "X-Forwarded-Ssl: on" beat the proxy's own "X-Forwarded-Proto: http" in
// Rack, and a client-chosen X-Forwarded-Prefix went into Spring's links
// and redirects.
func TestRealIPFollowsTrust(t *testing.T) {
	ca := newTestCA(t)
	certs := &testCerts{}
	certs.add("ri.test", ca.issue(t, "ri.test"))
	const forged = "203.0.113.7"
	loopback := []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	proxied := []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}
	for _, tc := range []struct {
		name       string
		proxyProto bool           // a PROXY v1 header names 198.51.100.1
		trusted    []netip.Prefix // Config.TrustedProxies
		sent       []string       // X-Real-IP values the client sends
		want       string
		// trustedClient: the client is a trusted proxy, so the other
		// X-Forwarded-* fields it sends (extraForwarded) reach the
		// backend; from anyone else they are dropped.
		trustedClient bool
	}{
		{"untrusted forged", false, []netip.Prefix{}, []string{forged}, "127.0.0.1", false},
		{"untrusted two forged", false, []netip.Prefix{}, []string{forged, "192.0.2.1"}, "127.0.0.1", false},
		{"untrusted absent", false, []netip.Prefix{}, nil, "127.0.0.1", false},
		{"untrusted empty", false, []netip.Prefix{}, []string{""}, "127.0.0.1", false},
		{"trusted kept", false, loopback, []string{forged}, forged, true},
		{"trusted absent", false, loopback, nil, "127.0.0.1", true},
		{"default trust, loopback client", false, nil, []string{forged}, "127.0.0.1", false},
		{"PROXY client untrusted", true, nil, []string{forged}, "198.51.100.1", false},
		{"PROXY client untrusted absent", true, nil, nil, "198.51.100.1", false},
		{"PROXY peer trusted but not the client", true, loopback, []string{forged}, "198.51.100.1", false},
		{"PROXY client trusted", true, proxied, []string{forged}, forged, true},
	} {
		for _, proto := range []string{"HTTP/1.1", "HTTP/2"} {
			t.Run(tc.name+" "+proto, func(t *testing.T) {
				rb := newRecBackend(t, nil)
				table := newTable(t, poolSpec{storage.Pool{Name: "ri", SSLMode: "flexible", SSLDomain: "ri.test"}, []string{rb.url()}})
				cfg := testConfig()
				cfg.TrustedProxies = tc.trusted
				cfg.HTTPSProxyProtocol = tc.proxyProto
				p := startProxy(t, cfg, table, certs, nil)
				raw, err := net.DialTimeout("tcp", p.https, 5*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				defer raw.Close()
				if tc.proxyProto {
					_, _ = io.WriteString(raw, "PROXY TCP4 198.51.100.1 10.0.0.1 5555 443\r\n")
				}
				alpn := "http/1.1"
				if proto == "HTTP/2" {
					alpn = "h2"
				}
				conn := tls.Client(raw, &tls.Config{ServerName: "ri.test", RootCAs: ca.pool, NextProtos: []string{alpn}})
				_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
				if err := conn.Handshake(); err != nil {
					t.Fatal(err)
				}
				if got := conn.ConnectionState().NegotiatedProtocol; got != alpn {
					t.Fatalf("ALPN %q, want %q", got, alpn)
				}
				if proto == "HTTP/2" {
					h := &h2Raw{t: t, conn: conn, fr: http2.NewFramer(conn, conn)}
					h.enc = hpack.NewEncoder(&h.hbuf)
					h.dec = hpack.NewDecoder(4096, nil)
					_, _ = io.WriteString(conn, http2.ClientPreface)
					if err := h.fr.WriteSettings(); err != nil {
						t.Fatal(err)
					}
					kv := []string{":method", "GET", ":scheme", "https", ":path", "/ri", ":authority", "ri.test"}
					for _, v := range tc.sent {
						kv = append(kv, "x-real-ip", v)
					}
					for _, f := range append(extraForwarded, underscoreTwins...) {
						kv = append(kv, strings.ToLower(f[0]), f[1])
					}
					if err := h.headers(1, true, kv...); err != nil {
						t.Fatal(err)
					}
					if status, _, err := h.response(1); err != nil || status != "200" {
						t.Fatalf("status %q, %v", status, err)
					}
				} else {
					req := "GET /ri HTTP/1.1\r\nHost: ri.test\r\n"
					for _, v := range tc.sent {
						req += "X-REAL-IP: " + v + "\r\n"
					}
					for _, f := range append(extraForwarded, underscoreTwins...) {
						req += f[0] + ": " + f[1] + "\r\n"
					}
					_, _ = io.WriteString(conn, req+"\r\n")
					if resp, _ := readResponse(t, bufio.NewReader(conn), "GET"); resp.StatusCode != 200 {
						t.Fatalf("status %d", resp.StatusCode)
					}
				}
				reqs, errs := rb.received()
				if len(reqs) != 1 || len(errs) > 0 {
					t.Fatalf("backend: %d requests, errors %v", len(reqs), errs)
				}
				if got := reqs[0].values("X-Real-IP"); len(got) != 1 || got[0] != tc.want {
					t.Fatalf("backend X-Real-IP = %q, want [%q]", got, tc.want)
				}
				for _, f := range extraForwarded {
					got := reqs[0].values(f[0])
					if tc.trustedClient && (len(got) != 1 || got[0] != f[1]) {
						t.Errorf("from a trusted proxy, backend %s = %q, want [%q]", f[0], got, f[1])
					}
					if !tc.trustedClient && len(got) != 0 {
						t.Errorf("from a client, backend %s = %q, want none", f[0], got)
					}
				}
				if !tc.trustedClient {
					for _, f := range underscoreTwins {
						if got := reqs[0].values(f[0]); len(got) != 0 {
							t.Errorf("from a client, backend %s = %q, want none", f[0], got)
						}
					}
				}
			})
		}
	}
}

// extraForwarded are forwarding fields the proxy does not set itself.
var extraForwarded = [][2]string{
	{"X-Forwarded-Port", "8443"},
	{"X-Forwarded-Prefix", "//evil.test"},
	{"X-Forwarded-Ssl", "on"},
	{"X-Forwarded-Scheme", "https"},
	{"X-Forwarded-Server", "edge.evil.test"},
	{"X-Forwarded-Client-Cert", "By=spiffe://evil.test/admin"},
	{"X-Forwarded-", "on"}, // the bare prefix
}

// underscoreTwins spell forwarding fields with '_', which CGI-style
// servers read as the '-' field (HTTP_X_FORWARDED_FOR either way): the
// proxy never passes a client's on.
var underscoreTwins = [][2]string{
	{"X_Forwarded_For", forgedAddr},
	{"X-Real_IP", forgedAddr},
	{"x_forwarded_proto", "https"},
	{"X-Forwarded_Host", "evil.test"},
	{"X_Forwarded_Ssl", "on"},
}

const forgedAddr = "203.0.113.7"

// TestDuplicateHostRejectedByProxy: the proxy itself refuses two Host
// fields; the backend counts requests, so a backend that would refuse them
// too cannot hide the proxy's part.
func TestDuplicateHostRejectedByProxy(t *testing.T) {
	rb := newRecBackend(t, nil)
	table := newTable(t, poolSpec{storage.Pool{Name: "dh", Hosts: []string{"dh.test", "other.test"}}, []string{rb.url()}})
	p := startProxy(t, testConfig(), table, nil, nil)
	for _, req := range []string{
		"GET / HTTP/1.1\r\nHost: dh.test\r\nHost: other.test\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: dh.test\r\nHost: dh.test\r\n\r\n",
		"GET http://dh.test/ HTTP/1.1\r\nHost: dh.test\r\nhost: other.test\r\n\r\n",
	} {
		if status, _ := rawRoundTrip(t, p.http, req, "GET"); status != 400 {
			t.Errorf("%q: status %d, want 400", req, status)
		}
	}
	if n := rb.requests.Load(); n != 0 {
		t.Fatalf("backend received %d requests", n)
	}
}

// TestGatewayTimeoutAnsweredToEveryClient: a backend slower than the
// response-head timeout gets every client the 504 the log records, also
// when the timeout is longer than the write timeout, plain and TLS.
func TestGatewayTimeoutAnsweredToEveryClient(t *testing.T) {
	ca := newTestCA(t)
	certs := &testCerts{}
	certs.add("slow.test", ca.issue(t, "slow.test"))
	hang := make(chan struct{})
	rb := newRecBackend(t, func(c net.Conn, req *strictRequest, nth int) bool {
		select {
		case <-hang:
		case <-time.After(10 * time.Second):
		}
		return false
	})
	t.Cleanup(func() { close(hang) })
	table := newTable(t, poolSpec{storage.Pool{Name: "slow", SSLMode: "flexible", AllowHTTP: true, SSLDomain: "slow.test"}, []string{rb.url()}})
	cfg := testConfig()
	cfg.WriteTimeout = 100 * time.Millisecond
	cfg.ResponseHeaderTimeout = 400 * time.Millisecond
	p := startProxy(t, cfg, table, certs, nil)
	for _, c := range []struct {
		name string
		cl   *http.Client
		url  string
	}{
		{"plain HTTP/1.1", client(p.http, nil, false), "http://slow.test/"},
		{"TLS HTTP/1.1", client(p.https, ca.pool, false), "https://slow.test/"},
		{"HTTP/2", client(p.https, ca.pool, true), "https://slow.test/"},
	} {
		resp, err := c.cl.Get(c.url)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if body := readAll(t, resp); resp.StatusCode != 504 || !strings.Contains(body, "gateway timeout") {
			t.Fatalf("%s: %d %q", c.name, resp.StatusCode, body)
		}
	}
}

// TestRefusalsAreAnswered: refused TLS handshakes get an alert naming the
// reason, plain HTTP on the TLS port gets a 400, and the HTTPS redirect
// keeps the listener's port by default.
func TestRefusalsAreAnswered(t *testing.T) {
	ca := newTestCA(t)
	certs := &testCerts{}
	certs.add("tls.test", ca.issue(t, "tls.test"))
	table := newTable(t,
		poolSpec{storage.Pool{Name: "tls", SSLMode: "flexible", SSLDomain: "tls.test"}, []string{newEcho(t, "tls").URL}},
		poolSpec{storage.Pool{Name: "plain", Hosts: []string{"plain.test"}}, []string{newEcho(t, "plain").URL}},
	)
	p := startProxy(t, testConfig(), table, certs, nil)
	for _, tc := range []struct {
		sni, alert string
	}{
		{"unknown.test", "unrecognized name"},
		{"plain.test", "unrecognized name"},
		{"", "handshake failure"},
	} {
		conn, err := net.Dial("tcp", p.https)
		if err != nil {
			t.Fatal(err)
		}
		tcn := tls.Client(conn, &tls.Config{ServerName: tc.sni, InsecureSkipVerify: tc.sni == ""})
		_ = tcn.SetDeadline(time.Now().Add(5 * time.Second))
		err = tcn.Handshake()
		conn.Close()
		if err == nil || !strings.Contains(err.Error(), tc.alert) {
			t.Errorf("SNI %q: handshake error %v, want alert %q", tc.sni, err, tc.alert)
		}
	}

	status, body := rawRoundTrip(t, p.https, "GET / HTTP/1.1\r\nHost: tls.test\r\n\r\n", "GET")
	if status != 400 || !strings.Contains(body, "plain HTTP request was sent to HTTPS port") {
		t.Fatalf("plain HTTP on the TLS port: %d %q", status, body)
	}

	_, port, _ := net.SplitHostPort(p.https)
	resp := get(t, client(p.http, nil, false), "http://tls.test/x?y=1")
	readAll(t, resp)
	if want := "https://tls.test:" + port + "/x?y=1"; resp.StatusCode != 301 || resp.Header.Get("Location") != want {
		t.Fatalf("redirect %d to %q, want %q", resp.StatusCode, resp.Header.Get("Location"), want)
	}
}

// TestShortProxyHeaderDroppedAtOnce: a PROXY v2 header that stops short is
// closed right away, not held until ReadHeaderTimeout.
func TestShortProxyHeaderDroppedAtOnce(t *testing.T) {
	table := newTable(t, poolSpec{storage.Pool{Name: "pp", Hosts: []string{"pp.test"}}, []string{newEcho(t, "pp").URL}})
	cfg := testConfig()
	cfg.HTTPProxyProtocol = true
	cfg.ReadHeaderTimeout = time.Hour // a held connection would hang the test until its own deadline
	p := startProxy(t, cfg, table, nil, nil)
	for name, partial := range map[string][]byte{
		"v2 signature and part of the addresses": append(append([]byte{}, proxyV2Signature...), 0x21, 0x11, 0, 12, 10, 1, 2),
		"v2 signature only":                      proxyV2Signature[:12],
		"v1 without CRLF":                        []byte("PROXY TCP4 192.0.2.1 192.0.2.2 5"),
	} {
		conn, err := net.Dial("tcp", p.http)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Write(partial); err != nil {
			t.Fatal(err)
		}
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		var b [1]byte
		_, err = conn.Read(b[:])
		conn.Close()
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Errorf("%s: connection held open", name)
		}
	}
}

// TestHTTP2RapidResetBounded: a client opening and cancelling streams in a
// loop is cut off, and the backend (request and connection counts as the
// oracle) sees a bounded share of the flood.
func TestHTTP2RapidResetBounded(t *testing.T) {
	cfg := testConfig()
	cfg.H2MaxResetsPerSecond = 50
	cfg.MaxBackendConnsPerClient = 8
	p, ca, rb := flexiblePool(t, "rr.test", cfg, func(c net.Conn, req *strictRequest, nth int) bool {
		time.Sleep(20 * time.Millisecond) // in flight when the reset comes
		return answerEcho(c, req, nth)
	})
	h := dialH2Raw(t, p.https, "rr.test", ca.pool)
	const flood = 5000
	sent := 0
	for id := uint32(1); sent < flood; id += 2 {
		if err := h.headers(id, true, ":method", "GET", ":scheme", "https", ":path", "/rr", ":authority", "rr.test"); err != nil {
			break
		}
		if err := h.fr.WriteRSTStream(id, http2.ErrCodeCancel); err != nil {
			break
		}
		sent++
	}
	// The proxy must end the connection (GOAWAY or close) on its own.
	_ = h.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	var ended error
	for ended == nil {
		f, err := h.fr.ReadFrame()
		if err != nil {
			ended = err
			break
		}
		if ga, ok := f.(*http2.GoAwayFrame); ok {
			ended = fmt.Errorf("GOAWAY %v", ga.ErrCode)
		}
	}
	var ne net.Error
	if errors.As(ended, &ne) && ne.Timeout() {
		t.Fatalf("connection still open after %d cancelled streams", sent)
	}
	time.Sleep(100 * time.Millisecond) // let handlers already past the checks finish
	reqs, conns := rb.requests.Load(), rb.conns.Load()
	t.Logf("%d streams sent and cancelled; connection ended with %v; backend: %d requests over %d connections", sent, ended, reqs, conns)
	// Budget: a burst of 100 cancellations plus 50/s, plus 8 slots in flight.
	if reqs > 1000 || conns > 1000 {
		t.Fatalf("backend received %d requests over %d connections from one flooding client", reqs, conns)
	}
}

// TestUpgradesBounded: upgrades beyond the per-client bound are refused
// with 503 while the first ones stay open. A trusted proxy's address
// carries many clients, so its upgrades are held to the server's bound only
// (as its requests are exempt from the per-address exchange bound); before,
// the 257th WebSocket through a proxy in --trusted-proxies got 503.
func TestUpgradesBounded(t *testing.T) {
	tests := []struct {
		name    string
		trusted bool
		allowed int // upgrades that succeed before the 503
	}{
		{"per client", false, 2},
		{"trusted proxy, server bound", true, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rb := newRecBackend(t, func(c net.Conn, req *strictRequest, nth int) bool {
				_, _ = io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: test\r\n\r\n")
				_, _ = io.Copy(io.Discard, c) // a tunnel that stays open
				return false
			})
			table := newTable(t, poolSpec{storage.Pool{Name: "up", Hosts: []string{"up.test"}}, []string{rb.url()}})
			cfg := testConfig()
			cfg.MaxUpgradesPerClient, cfg.MaxUpgrades = 2, 3
			if tt.trusted {
				cfg.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
			}
			p := startProxy(t, cfg, table, nil, nil)
			req := "GET /ws HTTP/1.1\r\nHost: up.test\r\nConnection: Upgrade\r\nUpgrade: test\r\n\r\n"
			for i := 0; i < tt.allowed; i++ {
				c, err := net.Dial("tcp", p.http)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				_, _ = io.WriteString(c, req)
				_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
				if resp, _ := readResponse(t, bufio.NewReader(c), "GET"); resp.StatusCode != 101 {
					t.Fatalf("upgrade %d: %d", i, resp.StatusCode)
				}
			}
			if status, body := rawRoundTrip(t, p.http, req, "GET"); status != 503 || !strings.Contains(body, "too many upgraded") {
				t.Fatalf("upgrade %d: %d %q", tt.allowed, status, body)
			}
		})
	}
}

// TestPassthroughPerClientBounded: SNI passthrough connections are tunnels
// under the same bounds as upgrades. Before, one address could hold any
// number of backend connections, a ClientHello each and then silence for
// TunnelIdleTimeout (an hour). Beyond the bound the client gets a TLS
// alert and no backend connection; a slot comes back when a tunnel ends.
func TestPassthroughPerClientBounded(t *testing.T) {
	backend, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { backend.Close() })
	var accepted atomic.Int64
	go func() {
		for {
			c, err := backend.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }() // raw echo: the ClientHello comes back
		}
	}()
	table := newTable(t, poolSpec{storage.Pool{Name: "pb", SSLMode: "passthrough", SSLDomain: "pb.test"}, []string{"https://" + backend.Addr().String()}})
	cfg := testConfig()
	cfg.HTTPAddr = ""
	cfg.MaxUpgradesPerClient = 2
	p := startProxy(t, cfg, table, nil, nil)
	hello := captureClientHello(t, &tls.Config{ServerName: "pb.test", InsecureSkipVerify: true})
	// open sends a ClientHello and returns the connection and what came
	// back: the echoed ClientHello through a tunnel, or the proxy's alert.
	open := func() (net.Conn, []byte, error) {
		c, err := net.Dial("tcp", p.https)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if _, err := c.Write(hello); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		got := make([]byte, len(hello))
		n, err := io.ReadFull(c, got)
		return c, got[:n], err
	}
	var tunnels []net.Conn
	for i := 0; i < 2; i++ {
		c, got, err := open()
		if err != nil || !bytes.Equal(got, hello) {
			t.Fatalf("tunnel %d: %d bytes back, %v", i, len(got), err)
		}
		tunnels = append(tunnels, c)
	}
	_, got, _ := open()
	if !bytes.Equal(got, []byte{21, 3, 3, 0, 2, 2, alertInternalError}) {
		t.Fatalf("third tunnel from one address: got %d bytes (%x...), want a fatal internal_error alert", len(got), got[:min(len(got), 8)])
	}
	if n := accepted.Load(); n != 2 {
		t.Fatalf("backend accepted %d connections, want 2", n)
	}
	tunnels[0].Close()
	waitFor(t, "a slot back after a tunnel ended", func() bool {
		_, got, err := open()
		return err == nil && bytes.Equal(got, hello)
	})
}

// TestH2CUpgradeNotForwarded: an offer of h2c is served as a plain
// HTTP/1.1 request, without Upgrade or HTTP2-Settings. A backend that took
// it (this one does, like Hypercorn, whatever Connection says) would
// otherwise get a tunnel of HTTP/2 requests the proxy never sees, with the
// X-Forwarded-For their sender chose. WebSocket upgrades still pass.
func TestH2CUpgradeNotForwarded(t *testing.T) {
	rb := newRecBackend(t, func(c net.Conn, req *strictRequest, nth int) bool {
		if up := req.values("Upgrade"); len(up) > 0 {
			_, _ = fmt.Fprintf(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: %s\r\n\r\n", up[0])
			_, _ = io.Copy(io.Discard, c)
			return false
		}
		return answerEcho(c, req, nth)
	})
	table := newTable(t, poolSpec{storage.Pool{Name: "h2c", Hosts: []string{"h2c.test"}}, []string{rb.url()}})
	p := startProxy(t, testConfig(), table, nil, nil)
	for _, tc := range []struct{ name, head string }{
		{"as RFC 7540 sends it", "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"},
		{"settings not listed in Connection", "Connection: Upgrade\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"},
		{"among other protocols, other case", "Connection: upgrade\r\nUpgrade: foo/1, H2C\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"},
	} {
		status, body := rawRoundTrip(t, p.http, "GET /h2c HTTP/1.1\r\nHost: h2c.test\r\n"+tc.head+"\r\n", "GET")
		if status != 200 || !strings.HasPrefix(body, "GET /") {
			t.Errorf("%s: %d %q, want the request served", tc.name, status, body)
		}
	}
	reqs, errs := rb.received()
	if len(reqs) != 3 || len(errs) > 0 {
		t.Fatalf("backend received %d requests, errors %v", len(reqs), errs)
	}
	for _, r := range reqs {
		if len(r.values("Upgrade")) > 0 || len(r.values("HTTP2-Settings")) > 0 || len(r.values("Connection")) > 0 {
			t.Errorf("backend got %q", r.Raw)
		}
	}
	// Other protocols still switch.
	c, err := net.Dial("tcp", p.http)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, _ = io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: h2c.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if resp, _ := readResponse(t, bufio.NewReader(c), "GET"); resp.StatusCode != 101 {
		t.Fatalf("websocket upgrade: %d", resp.StatusCode)
	}
}

// TestBackendTLSSettings: a pool's CA bundle, backend server name and
// client certificate are what requests use; without them the same
// backends are refused (502).
func TestBackendTLSSettings(t *testing.T) {
	ca := newTestCA(t)
	certs := &testCerts{}
	certs.add("*.tls.test", ca.issue(t, "*.tls.test"))
	// A backend on 127.0.0.1 whose certificate names backend.internal
	// only, and that requires a client certificate from ca.
	backend := httptest.NewUnstartedServer(echoHandler("mtls"))
	backend.TLS = &tls.Config{
		Certificates: []tls.Certificate{ca.issue(t, "backend.internal")},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    ca.pool,
	}
	backend.StartTLS()
	t.Cleanup(backend.Close)
	clientCert := ca.issue(t, "edge-client")
	opts := pools.TableOptions{ClientCertificates: func(id string) (*tls.Certificate, bool) {
		if id == "edge-client" {
			return &clientCert, true
		}
		return nil, false
	}}
	strict := func(name, sni, certID string) poolSpec {
		return poolSpec{storage.Pool{Name: name, SSLMode: "full_strict", SSLDomain: name + ".tls.test", BackendCA: ca.pem(), BackendServerName: sni, BackendClientCertID: certID}, []string{backend.URL}}
	}
	table := newTableWith(t, opts,
		strict("ok", "backend.internal", "edge-client"),
		strict("nosni", "", "edge-client"),
		strict("nocert", "backend.internal", ""),
		strict("unknowncert", "backend.internal", "missing"),
		poolSpec{storage.Pool{Name: "noca", SSLMode: "full_strict", SSLDomain: "noca.tls.test", BackendServerName: "backend.internal", BackendClientCertID: "edge-client"}, []string{backend.URL}},
	)
	p := startProxy(t, testConfig(), table, certs, nil)
	c := client(p.https, ca.pool, false)
	for host, want := range map[string]int{"ok": 200, "nosni": 502, "nocert": 502, "unknowncert": 502, "noca": 502} {
		resp := get(t, c, "https://"+host+".tls.test/")
		readAll(t, resp)
		if resp.StatusCode != want {
			t.Errorf("%s: status %d, want %d", host, resp.StatusCode, want)
		}
	}
}

// TestPassthroughTunnel: the spliced passthrough carries a large stream
// byte for byte both ways, keeps a connection that trickles data, and
// closes one idle in both directions after TunnelIdleTimeout.
func TestPassthroughTunnel(t *testing.T) {
	ca := newTestCA(t)
	backend := nettest.TLSEcho(t, ca.issue(t, "tun.test"), "")
	table := newTable(t, poolSpec{storage.Pool{Name: "tun", SSLMode: "passthrough", SSLDomain: "tun.test"}, []string{"https://" + backend.String()}})
	// The bulk echo runs through a proxy with the default idle timeout: on
	// a loaded machine one direction can stall for longer than a short
	// timeout while the other still moves data. The trickle and idle
	// checks use a short one.
	bulk := startProxy(t, testConfig(), table, nil, nil)
	cfg := testConfig()
	cfg.TunnelIdleTimeout = 3 * time.Second
	p := startProxy(t, cfg, table, nil, nil)
	dialVia := func(addr string) *tls.Conn {
		c, err := tls.Dial("tcp", addr, &tls.Config{ServerName: "tun.test", RootCAs: ca.pool})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
		return c
	}
	dial := func() *tls.Conn { return dialVia(p.https) }

	// 8 MiB each way, compared byte for byte.
	c := dialVia(bulk.https)
	payload := make([]byte, 8<<20)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	go func() { _, _ = c.Write(payload) }()
	got := make([]byte, len(payload))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("echo through the tunnel differs (err %v)", err)
	}

	// Trickling traffic, one byte every 500 ms for 6 s (twice the idle
	// timeout), keeps the tunnel open.
	c = dial()
	for i := 0; i < 12; i++ {
		if _, err := c.Write([]byte{byte(i)}); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
		var b [1]byte
		if _, err := io.ReadFull(c, b[:]); err != nil || b[0] != byte(i) {
			t.Fatalf("trickle %d: %v", i, err)
		}
		time.Sleep(500 * time.Millisecond)
	}

	// Idle both ways: closed by the proxy (the client sees EOF, not its
	// own deadline).
	idle := dial()
	if _, err := idle.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	var b [1]byte
	if _, err := io.ReadFull(idle, b[:]); err != nil {
		t.Fatal(err)
	}
	_, err := idle.Read(b[:])
	var ne net.Error
	if err == nil || errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("idle tunnel not closed by the proxy: %v", err)
	}
}
