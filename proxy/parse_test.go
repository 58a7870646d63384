package proxy

import (
	"bytes"
	"crypto/tls"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
)

// captureClientHello returns the first flight of a real crypto/tls client.
func captureClientHello(t testing.TB, cfg *tls.Config) []byte {
	t.Helper()
	c1, c2 := net.Pipe()
	defer c2.Close()
	go func() {
		_ = tls.Client(c1, cfg).Handshake()
		c1.Close()
	}()
	buf := make([]byte, 0, 8192)
	tmp := make([]byte, 4096)
	for {
		n, err := c2.Read(tmp)
		buf = append(buf, tmp[:n]...)
		if _, _, perr := parseClientHello(buf); perr == nil {
			return buf
		} else if !errors.Is(perr, errNeedMore) {
			t.Fatalf("real ClientHello rejected: %v", perr)
		}
		if err != nil {
			t.Fatalf("capture: %v", err)
		}
	}
}

// fragment re-splits the handshake payload of a single-record ClientHello
// into records of at most size bytes.
func fragment(t testing.TB, hello []byte, size int) []byte {
	t.Helper()
	n := int(hello[3])<<8 | int(hello[4])
	payload := hello[5 : 5+n]
	var out []byte
	for len(payload) > 0 {
		k := min(size, len(payload))
		out = append(out, 22, hello[1], hello[2], byte(k>>8), byte(k))
		out = append(out, payload[:k]...)
		payload = payload[k:]
	}
	return out
}

func TestParseClientHello(t *testing.T) {
	full := captureClientHello(t, &tls.Config{ServerName: "Example.COM", NextProtos: []string{"h2", "http/1.1"}, InsecureSkipVerify: true})
	noSNI := captureClientHello(t, &tls.Config{InsecureSkipVerify: true})
	acme := captureClientHello(t, &tls.Config{ServerName: "a.test", NextProtos: []string{"acme-tls/1"}, InsecureSkipVerify: true})
	tls12 := captureClientHello(t, &tls.Config{ServerName: "old.test", MaxVersion: tls.VersionTLS12, InsecureSkipVerify: true})
	// withName is full with its 11-byte server name replaced by another
	// of the same length, so that every length field stays right.
	withName := func(name string) []byte {
		if len(name) != len("Example.COM") || bytes.Count(full, []byte("Example.COM")) != 1 {
			t.Fatalf("cannot put %q in place of the captured name", name)
		}
		return bytes.Replace(full, []byte("Example.COM"), []byte(name), 1)
	}

	for _, tc := range []struct {
		name  string
		in    []byte
		sni   string
		alpn  []string
		nUsed int
		err   error
	}{
		{"sni and alpn", full, "example.com", []string{"h2", "http/1.1"}, len(full), nil},
		{"no sni", noSNI, "", nil, len(noSNI), nil},
		{"acme", acme, "a.test", []string{"acme-tls/1"}, len(acme), nil},
		{"tls 1.2 only", tls12, "old.test", nil, len(tls12), nil},
		{"fragmented in 100-byte records", fragment(t, full, 100), "example.com", []string{"h2", "http/1.1"}, -1, nil},
		{"trailing bytes kept", append(append([]byte{}, full...), "after"...), "example.com", []string{"h2", "http/1.1"}, len(full), nil},
		{"one trailing dot dropped", withName("example.co."), "example.co", []string{"h2", "http/1.1"}, len(full), nil},
		{"two trailing dots", withName("example.c.."), "", nil, 0, errClientHello},
		{"empty inner label", withName("exa..le.com"), "", nil, 0, errClientHello},
		{"leading dot", withName(".xample.com"), "", nil, 0, errClientHello},
		{"truncated", full[:len(full)-1], "", nil, 0, errNeedMore},
		{"record header only", full[:5], "", nil, 0, errNeedMore},
		{"empty", nil, "", nil, 0, errNeedMore},
		{"http request", []byte("GET / HTTP/1.1\r\n\r\n"), "", nil, 0, errClientHello},
		{"not a client hello", []byte{22, 3, 1, 0, 4, 2, 0, 0, 0}, "", nil, 0, errClientHello},
		{"zero-length record", []byte{22, 3, 1, 0, 0}, "", nil, 0, errClientHello},
	} {
		t.Run(tc.name, func(t *testing.T) {
			info, n, err := parseClientHello(tc.in)
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("err %v, want %v", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.nUsed >= 0 && n != tc.nUsed {
				t.Fatalf("consumed %d, want %d", n, tc.nUsed)
			}
			if info.ServerName != tc.sni || strings.Join(info.ALPN, ",") != strings.Join(tc.alpn, ",") {
				t.Fatalf("got %q %v", info.ServerName, info.ALPN)
			}
		})
	}
}

func TestParseProxyHeader(t *testing.T) {
	v2 := func(cmd, fam byte, body []byte) []byte {
		b := append([]byte{}, proxyV2Signature...)
		b = append(b, cmd, fam, byte(len(body)>>8), byte(len(body)))
		return append(b, body...)
	}
	ipv4 := []byte{10, 1, 2, 3, 10, 0, 0, 1, 0x1f, 0x90, 0, 80}
	ipv6 := append(append(netip.MustParseAddr("2001:db8::7").AsSlice(), netip.MustParseAddr("2001:db8::1").AsSlice()...), 0x13, 0x88, 1, 0xbb)
	withTLV := append(append([]byte{}, ipv4...), 0x04, 0, 2, 'h', 'i')
	for _, tc := range []struct {
		name  string
		in    []byte
		src   string
		local bool
		n     int
		err   error
	}{
		{"v1 tcp4", []byte("PROXY TCP4 192.0.2.1 192.0.2.2 56324 443\r\nGET"), "192.0.2.1:56324", false, 42, nil},
		{"v1 tcp6", []byte("PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n"), "[2001:db8::1]:1", false, 40, nil},
		{"v1 unknown", []byte("PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"), "", true, 35, nil},
		{"v1 incomplete", []byte("PROXY TCP4 192.0.2.1"), "", false, 0, errNeedMore},
		{"v1 prefix", []byte("PRO"), "", false, 0, errNeedMore},
		{"v1 bare LF", []byte("PROXY TCP4 1.1.1.1 2.2.2.2 1 2\n"), "", false, 0, errProxyHeader},
		{"v1 v6 in tcp4", []byte("PROXY TCP4 ::1 ::1 1 2\r\n"), "", false, 0, errProxyHeader},
		{"v1 port range", []byte("PROXY TCP4 1.1.1.1 2.2.2.2 70000 2\r\n"), "", false, 0, errProxyHeader},
		{"v1 leading zero port", []byte("PROXY TCP4 1.1.1.1 2.2.2.2 080 2\r\n"), "", false, 0, errProxyHeader},
		{"v1 too long", []byte("PROXY TCP4 " + strings.Repeat("1", 120)), "", false, 0, errProxyHeader},
		{"v1 extra field", []byte("PROXY TCP4 1.1.1.1 2.2.2.2 1 2 3\r\n"), "", false, 0, errProxyHeader},
		{"v1 udp", []byte("PROXY UDP4 1.1.1.1 2.2.2.2 1 2\r\n"), "", false, 0, errProxyHeader},
		{"v2 tcp4", v2(0x21, 0x11, ipv4), "10.1.2.3:8080", false, 28, nil},
		{"v2 tcp6", v2(0x21, 0x21, ipv6), "[2001:db8::7]:5000", false, 52, nil},
		{"v2 tlv skipped", v2(0x21, 0x11, withTLV), "10.1.2.3:8080", false, 33, nil},
		{"v2 local", v2(0x20, 0x00, nil), "", true, 16, nil},
		{"v2 unspec", v2(0x21, 0x00, nil), "", true, 16, nil},
		{"v2 short body", v2(0x21, 0x11, ipv4[:8]), "", false, 0, errProxyHeader},
		{"v2 incomplete", v2(0x21, 0x11, ipv4)[:20], "", false, 0, errNeedMore},
		{"v2 bad version", v2(0x11, 0x11, ipv4), "", false, 0, errProxyHeader},
		{"v2 bad command", v2(0x2f, 0x11, ipv4), "", false, 0, errProxyHeader},
		{"v2 udp", v2(0x21, 0x12, ipv4), "", false, 0, errProxyHeader},
		{"v2 huge", append(append([]byte{}, proxyV2Signature...), 0x21, 0x11, 0xff, 0xff), "", false, 0, errProxyHeader},
		{"garbage", []byte("GET / HTTP/1.1\r\n"), "", false, 0, errProxyHeader},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, n, err := parseProxyHeader(tc.in)
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("err %v, want %v", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if n != tc.n || h.Local != tc.local || (!tc.local && h.Source.String() != tc.src) {
				t.Fatalf("got %+v n=%d", h, n)
			}
		})
	}
}

func TestParseRequestHead(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		status   int // 0 = ok
		check    func(t *testing.T, h *requestHead, b []byte)
	}{
		{"simple", "GET /a?b HTTP/1.1\r\nHost: X.test\r\n\r\n", 0, func(t *testing.T, h *requestHead, b []byte) {
			if string(h.path.of(b)) != "/a?b" || string(h.host.of(b)) != "X.test" || h.framing != bodyNone || h.minor != 1 {
				t.Fatalf("%+v", h)
			}
		}},
		{"absolute form", "GET http://Auth.test:81/p HTTP/1.1\r\nHost: other\r\n\r\n", 0, func(t *testing.T, h *requestHead, b []byte) {
			if string(h.authority.of(b)) != "Auth.test:81" || string(h.path.of(b)) != "/p" {
				t.Fatalf("authority %q path %q", h.authority.of(b), h.path.of(b))
			}
		}},
		{"asterisk", "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", 0, nil},
		{"asterisk not options", "GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400, nil},
		{"content length", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n", 0, func(t *testing.T, h *requestHead, b []byte) {
			if h.framing != bodyLength || h.contentLen != 12 {
				t.Fatalf("%+v", h)
			}
		}},
		{"same CL twice", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\n", 0, nil},
		{"CL sign", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +2\r\n\r\n", 400, nil},
		{"CL list", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2, 2\r\n\r\n", 400, nil},
		{"chunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n", 0, func(t *testing.T, h *requestHead, b []byte) {
			if h.framing != bodyChunked {
				t.Fatalf("%+v", h)
			}
		}},
		{"chunked in 1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 501, nil},
		{"http 1.0 without host", "GET / HTTP/1.0\r\n\r\n", 0, func(t *testing.T, h *requestHead, b []byte) {
			if !h.connClose {
				t.Fatal("HTTP/1.0 without keep-alive must close")
			}
		}},
		{"http 1.0 keep-alive", "GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", 0, func(t *testing.T, h *requestHead, b []byte) {
			if h.connClose {
				t.Fatal("keep-alive ignored")
			}
		}},
		{"connection options", "GET / HTTP/1.1\r\nHost: a\r\nConnection: close, X-Foo , upgrade\r\nUpgrade: websocket\r\n\r\n", 0, func(t *testing.T, h *requestHead, b []byte) {
			if !h.connClose || !h.connOthers || !h.isUpgrade() {
				t.Fatalf("%+v", h)
			}
			if !listedInConnection(b, h.fields, []byte("x-foo")) || listedInConnection(b, h.fields, []byte("x-bar")) {
				t.Fatal("listedInConnection")
			}
		}},
		{"leading empty lines", "\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", 0, nil},
		{"lowercase method ok", "get / HTTP/1.1\r\nHost: a\r\n\r\n", 0, nil},
		{"bad target", "GET foo HTTP/1.1\r\nHost: a\r\n\r\n", 400, nil},
		{"userinfo", "GET http://u@a/ HTTP/1.1\r\nHost: a\r\n\r\n", 400, nil},
		{"bad host char", "GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400, nil},
		{"nul in value", "GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", 400, nil},
		{"http/1.2", "GET / HTTP/1.2\r\nHost: a\r\n\r\n", 505, nil},
		{"http/2", "GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505, nil},
		{"ipv6 host", "GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n", 0, nil},
		{"trailing spaces trimmed", "GET / HTTP/1.1\r\nHost:   a.test \t\r\n\r\n", 0, func(t *testing.T, h *requestHead, b []byte) {
			if string(h.host.of(b)) != "a.test" {
				t.Fatalf("host %q", h.host.of(b))
			}
		}},
		{"too many fields", "GET / HTTP/1.1\r\nHost: a\r\n" + strings.Repeat("X: y\r\n", maxHeaderFields) + "\r\n", 431, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := []byte(tc.in)
			end := findHeadEnd(b[skipLeadingCRLF(b):])
			if end < 0 {
				t.Fatal("no head end")
			}
			b = b[skipLeadingCRLF(b):]
			var h requestHead
			err := parseRequestHead(&h, b[:end], nil)
			if tc.status != 0 {
				var he *httpError
				if !errors.As(err, &he) || he.status != tc.status {
					t.Fatalf("err %v, want status %d", err, tc.status)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.check != nil {
				tc.check(t, &h, b)
			}
		})
	}
}

func TestParseResponseHead(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		head     bool
		framing  int
		cl       int64
		bad      bool
	}{
		{"length", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false, bodyLength, 5, false},
		{"chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n", false, bodyChunked, -1, false},
		{"head chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", true, bodyNone, -1, false},
		// Any coding but chunked alone is refused (502), never relayed
		// still encoded.
		{"gzip then chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", false, 0, 0, true},
		{"te not chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false, 0, 0, true},
		{"identity", "HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\n", false, 0, 0, true},
		{"chunked not last", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", false, 0, 0, true},
		{"chunked twice", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", false, 0, 0, true},
		{"two TE fields", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", false, 0, 0, true},
		{"empty TE", "HTTP/1.1 200 OK\r\nTransfer-Encoding: \r\n\r\n", false, 0, 0, true},
		{"TE and CL", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", false, 0, 0, true},
		{"coding on a HEAD answer", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", true, 0, 0, true},
		{"close delimited", "HTTP/1.1 200 OK\r\n\r\n", false, bodyClose, -1, false},
		{"head", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true, bodyNone, 5, false},
		{"204", "HTTP/1.1 204 No Content\r\n\r\n", false, bodyNone, -1, false},
		{"304", "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", false, bodyNone, 10, false},
		{"no reason", "HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", false, bodyNone, 0, false},
		{"1.0", "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false, bodyLength, 1, false},
		{"1.0 chunked keep-alive", "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n", false, bodyChunked, -1, false},
		{"bad status", "HTTP/1.1 2x0 OK\r\n\r\n", false, 0, 0, true},
		{"status 600", "HTTP/1.1 600 X\r\n\r\n", false, 0, 0, true},
		{"conflicting CL", "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", false, 0, 0, true},
		{"not http", "SSH-2.0-OpenSSH\r\n\r\n", false, 0, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var r responseHead
			err := parseResponseHead(&r, []byte(tc.in), nil, tc.head)
			if tc.bad {
				if err == nil || !errors.Is(err, errBadResponse) {
					t.Fatalf("err %v, want a malformed response", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if r.framing != tc.framing || r.contentLen != tc.cl {
				t.Fatalf("framing %d cl %d", r.framing, r.contentLen)
			}
			// An HTTP/1.0 connection is reused only after a keep-alive
			// response without Transfer-Encoding (RFC 9112 6.1).
			if want := strings.HasPrefix(tc.in, "HTTP/1.0") && (!strings.Contains(tc.in, "keep-alive") || strings.Contains(tc.in, "Transfer-Encoding")); want && !r.connClose {
				t.Fatal("HTTP/1.0 connection kept")
			}
		})
	}
}

func TestChunkScanner(t *testing.T) {
	for _, tc := range []struct {
		name, in, data string
		n              int
		done, bad      bool
	}{
		{"simple", "5\r\nhello\r\n0\r\n\r\nNEXT", "hello", 15, true, false},
		{"two chunks", "3\r\nabc\r\nA\r\n0123456789\r\n0\r\n\r\n", "abc0123456789", 28, true, false},
		{"extension", "3;name=v\r\nabc\r\n0\r\n\r\n", "abc", 20, true, false},
		{"trailers", "1\r\na\r\n0\r\nX-T: 1\r\nY: 2\r\n\r\n", "a", 25, true, false},
		{"upper hex", "B\r\nhello world\r\n0\r\n\r\n", "hello world", 21, true, false},
		{"incomplete", "5\r\nhel", "hel", 6, false, false},
		{"no digits", "\r\n", "", 0, false, true},
		{"bad data end", "1\r\nab\r\n", "", 0, false, true},
		{"bare LF", "1\na\r\n0\r\n\r\n", "", 0, false, true},
		{"overflow", "1000000000000000\r\n", "", 0, false, true},
		{"control in ext", "1;\x01\r\n", "", 0, false, true},
		{"BWS before extension", "3 ;a=b\r\nabc\r\n0\r\n\r\n", "abc", 18, true, false},
		{"0x prefix", "0x5\r\nhello\r\n0\r\n\r\n", "", 0, false, true},
		{"junk after size", "5xyz\r\nhello\r\n0\r\n\r\n", "", 0, false, true},
		{"two sizes", "2 2\r\nab\r\n0\r\n\r\n", "", 0, false, true},
		{"missing CR after data", "1\r\na\n0\r\n\r\n", "", 0, false, true},
		{"missing CRLF after data", "1\r\nab0\r\n\r\n", "", 0, false, true},
		{"bare CR after size", "1\ra\r\n0\r\n\r\n", "", 0, false, true},
		{"request in trailers", "0\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n", "", 0, false, true},
		{"trailer without colon", "0\r\nX-T\r\n\r\n", "", 0, false, true},
		{"trailer obs-fold", "0\r\nX-T: 1\r\n 2\r\n\r\n", "", 0, false, true},
		{"trailer space before colon", "0\r\nX-T : 1\r\n\r\n", "", 0, false, true},
		{"trailer control", "0\r\nX-T: \x00\r\n\r\n", "", 0, false, true},
		{"negative size", "-1\r\n", "", 0, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var sc chunkScanner
			var spans []span
			n, err := sc.scan([]byte(tc.in), &spans)
			if tc.bad {
				if err == nil {
					t.Fatal("accepted")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var data []byte
			for _, sp := range spans {
				data = append(data, tc.in[sp.s:sp.e]...)
			}
			if n != tc.n || sc.done() != tc.done || string(data) != tc.data {
				t.Fatalf("n=%d done=%v data=%q", n, sc.done(), data)
			}
		})
	}
}

func TestValidFieldValue(t *testing.T) {
	for c := 0; c < 256; c++ {
		want := !(c < 0x20 && c != '\t' || c == 0x7f)
		for _, pos := range []int{0, 3, 7, 8, 13, 15, 16, 20} {
			v := bytes.Repeat([]byte("a"), 21)
			v[pos] = byte(c)
			if got := validFieldValue(v); got != want {
				t.Fatalf("byte 0x%02x at %d: got %v, want %v", c, pos, got, want)
			}
		}
	}
}

func TestRoutingHostAndHelpers(t *testing.T) {
	for in, want := range map[string]string{
		"Example.COM:8080": "example.com",
		"a.test.":          "a.test",
		"[::1]:80":         "::1",
		"plain":            "plain",
	} {
		if got := string(routingHost(nil, []byte(in))); got != want {
			t.Errorf("routingHost(%q) = %q, want %q", in, got, want)
		}
	}
	b := []byte("GET / HTTP/1.1\r\nCookie: a=1; sticky=v%3D; b=2\r\nX-User: u1\r\n\r\n")
	fields, _, err := parseHeaderLines(b, 16, nil)
	if err != nil {
		t.Fatal(err)
	}
	if v := cookieValue(b, fields, "sticky"); string(v) != "v%3D" {
		t.Errorf("cookie %q", v)
	}
	if v := cookieValue(b, fields, "stick"); v != nil {
		t.Errorf("prefix cookie matched: %q", v)
	}
	if v := headerValue(b, fields, "x-user"); string(v) != "u1" {
		t.Errorf("header %q", v)
	}
	var ids requestIDs
	ids.init()
	a, c := ids.appendNew(nil), ids.appendNew(nil)
	if len(a) != 32 || bytes.Equal(a, c) || !validRequestID(a) {
		t.Errorf("ids %s %s", a, c)
	}
	for _, bad := range []string{"", "a b", "a,b", strings.Repeat("x", 200), "é"} {
		if validRequestID([]byte(bad)) {
			t.Errorf("validRequestID(%q)", bad)
		}
	}
}
