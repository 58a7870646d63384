package proxy

import (
	"bytes"
	"crypto/tls"
	"errors"
	"maps"
	"strings"
	"testing"
)

// FuzzParseClientHello: no input may panic the ClientHello parser, and a
// success must account for bytes that exist.
func FuzzParseClientHello(f *testing.F) {
	// Seeds without the 1.2 KiB post-quantum key share: the fuzzer
	// minimizes every new input byte by byte, which takes minutes on a
	// 1.8 KiB ClientHello and stalls short fuzzing runs.
	small := []tls.CurveID{tls.X25519}
	f.Add(captureClientHello(f, &tls.Config{ServerName: "example.com", NextProtos: []string{"h2", "http/1.1"}, CurvePreferences: small, InsecureSkipVerify: true}))
	f.Add(captureClientHello(f, &tls.Config{ServerName: "a.test", MaxVersion: tls.VersionTLS12, InsecureSkipVerify: true}))
	f.Add(captureClientHello(f, &tls.Config{CurvePreferences: small, InsecureSkipVerify: true}))
	f.Add(fragment(f, captureClientHello(f, &tls.Config{ServerName: "frag.test", CurvePreferences: small, InsecureSkipVerify: true}), 64))
	f.Add([]byte{22, 3, 1, 0, 4, 1, 0, 0, 0})
	f.Add([]byte("GET / HTTP/1.1\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		info, n, err := parseClientHello(b)
		if err != nil {
			if !errors.Is(err, errNeedMore) && !errors.Is(err, errClientHello) {
				t.Fatalf("unexpected error type %v", err)
			}
			return
		}
		if n <= 0 || n > len(b) {
			t.Fatalf("consumed %d of %d", n, len(b))
		}
		if info.ServerName != "" && (bytes.ContainsAny([]byte(info.ServerName), "ABCDEFGHIJKLMNOPQRSTUVWXYZ") || info.ServerName[len(info.ServerName)-1] == '.') {
			t.Fatalf("server name not normalized: %q", info.ServerName)
		}
		// Parsing the consumed prefix again gives the same answer.
		again, n2, err := parseClientHello(b[:n])
		if err != nil || n2 != n || again.ServerName != info.ServerName || len(again.ALPN) != len(info.ALPN) {
			t.Fatalf("prefix parse differs: %v %d %+v", err, n2, again)
		}
	})
}

// FuzzParseProxyHeader: no input may panic the PROXY header parser; a
// header that parses is a prefix of the input and parses the same alone.
func FuzzParseProxyHeader(f *testing.F) {
	f.Add([]byte("PROXY TCP4 192.0.2.1 192.0.2.2 56324 443\r\nGET / HTTP/1.1\r\n"))
	f.Add([]byte("PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n"))
	f.Add([]byte("PROXY UNKNOWN\r\n"))
	f.Add(append(append([]byte{}, proxyV2Signature...), 0x21, 0x11, 0, 12, 10, 0, 0, 1, 10, 0, 0, 2, 0, 80, 1, 187))
	f.Add(append(append([]byte{}, proxyV2Signature...), 0x20, 0x00, 0, 0))
	f.Add(append(append([]byte{}, proxyV2Signature...), 0x21, 0x21, 0, 36))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, n, err := parseProxyHeader(b)
		if err != nil {
			if !errors.Is(err, errNeedMore) && !errors.Is(err, errProxyHeader) {
				t.Fatalf("unexpected error type %v", err)
			}
			return
		}
		if n <= 0 || n > len(b) {
			t.Fatalf("consumed %d of %d", n, len(b))
		}
		h2, n2, err := parseProxyHeader(b[:n])
		if err != nil || n2 != n || h2 != h {
			t.Fatalf("prefix parse differs: %v %d %+v vs %+v", err, n2, h2, h)
		}
		if !h.Local && !h.Source.IsValid() {
			t.Fatalf("PROXY header without a valid source: %+v", h)
		}
	})
}

// FuzzParseRequestHead: the HTTP/1.1 request-head parser must not panic
// and every span it returns must lie inside the head; the upstream head
// built from it must not contain a bare CR or LF outside line ends.
func FuzzParseRequestHead(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n",
		"POST /x?y HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nConnection: keep-alive, X-A\r\nX-A: 1\r\n\r\nabc",
		"GET http://h:1/p HTTP/1.1\r\nHost: z\r\nTransfer-Encoding: chunked\r\n\r\n",
		"GET / HTTP/1.0\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n",
		"\r\nOPTIONS * HTTP/1.1\r\nHost: [::1]\r\nCookie: a=b; c=d\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-Ssl: on\r\nX_Forwarded_For: 1.2.3.4\r\nX-Real_IP: 1.2.3.4\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		b = b[skipLeadingCRLF(b):]
		end := findHeadEnd(b)
		if end < 0 {
			return
		}
		head := b[:end]
		var h requestHead
		if err := parseRequestHead(&h, head, nil); err != nil {
			var he *httpError
			if !errors.As(err, &he) {
				t.Fatalf("error without status: %v", err)
			}
			return
		}
		for _, sp := range []span{h.method, h.target, h.path, h.authority, h.host, h.upgrade} {
			if sp.s < 0 || sp.e < sp.s || sp.e > int32(len(head)) {
				t.Fatalf("span %+v outside head of %d", sp, len(head))
			}
		}
		for _, f := range h.fields {
			if f.start >= f.colon || f.vs < f.colon || f.ve < f.vs || f.end > int32(len(head)) {
				t.Fatalf("field %+v", f)
			}
		}
		cc := &clientConn{head: h, clientIP: []byte("127.0.0.1"), reqID: []byte("id")}
		host := h.host.of(head)
		out := cc.appendUpstreamHead(nil, head, host)
		if !bytes.HasSuffix(out, []byte("\r\n\r\n")) || hasBareLF(out) || bytes.Count(out, []byte("\r\n\r\n")) != 1 {
			t.Fatalf("upstream head malformed: %q", out)
		}
		// From an untrusted client, the only forwarding fields (in any
		// spelling of '-' and '_') are the proxy's own, once each.
		seen := map[string]int{}
		for _, line := range bytes.Split(out, []byte("\r\n"))[1:] {
			name, _, _ := bytes.Cut(line, []byte(":"))
			n := strings.ToLower(strings.ReplaceAll(string(name), "_", "-"))
			if strings.HasPrefix(n, "x-forwarded-") || n == "x-real-ip" || n == "forwarded" {
				seen[string(name)]++
			}
		}
		want := map[string]int{"X-Forwarded-For": 1, "Forwarded": 1, "X-Real-IP": 1, "X-Forwarded-Proto": 1}
		if len(host) > 0 {
			want["X-Forwarded-Host"] = 1
		}
		if !maps.Equal(seen, want) {
			t.Fatalf("forwarding fields %v, want the proxy's own %v: %q", seen, want, out)
		}
	})
}

// FuzzParseResponseHead covers the backend response parser.
func FuzzParseResponseHead(f *testing.F) {
	f.Add([]byte("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n"), false)
	f.Add([]byte("HTTP/1.1 101 Switching\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"), false)
	f.Add([]byte("HTTP/1.0 200\r\nTransfer-Encoding: chunked\r\n\r\n"), true)
	f.Add([]byte("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"), false)
	f.Add([]byte("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"), false)
	f.Fuzz(func(t *testing.T, b []byte, head bool) {
		end := findHeadEnd(b)
		if end < 0 {
			return
		}
		var r responseHead
		if err := parseResponseHead(&r, b[:end], nil, head); err != nil {
			return
		}
		if r.status < 100 || r.status > 599 || r.headLen != end {
			t.Fatalf("status %d headLen %d end %d", r.status, r.headLen, end)
		}
		cc := &clientConn{reqID: []byte("id")}
		out := cc.appendResponseHead(nil, b[:end], &r, "", true, false)
		if !bytes.HasSuffix(out, []byte("\r\n\r\n")) || hasBareLF(out) {
			t.Fatalf("client head malformed: %q", out)
		}
		// The only transfer coding relayed is chunked, alone, without a
		// Content-Length beside it.
		var te, cl int
		for _, line := range bytes.Split(out, []byte("\r\n")) {
			name, v, _ := bytes.Cut(line, []byte(":"))
			switch {
			case bytes.EqualFold(name, []byte("transfer-encoding")):
				te++
				if !bytes.EqualFold(bytes.TrimSpace(v), []byte("chunked")) {
					t.Fatalf("transfer coding %q relayed: %q", v, out)
				}
			case bytes.EqualFold(name, []byte("content-length")):
				cl++
			}
		}
		if te > 1 || te == 1 && cl > 0 {
			t.Fatalf("framing relayed ambiguously: %q", out)
		}
	})
}

// FuzzChunkScanner: scanning in one piece and byte by byte must agree
// (consumed bytes, completion, data), and nothing may panic.
func FuzzChunkScanner(f *testing.F) {
	f.Add([]byte("5\r\nhello\r\n0\r\n\r\n"))
	f.Add([]byte("3;x=y\r\nabc\r\n0\r\nT: v\r\n\r\nrest"))
	f.Add([]byte("ffffffffffffff\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		var whole chunkScanner
		var spans []span
		n1, err1 := whole.scan(b, &spans)
		var data1 []byte
		for _, sp := range spans {
			data1 = append(data1, b[sp.s:sp.e]...)
		}
		var step chunkScanner
		var data2 []byte
		n2 := 0
		var err2 error
		for i := 0; i < len(b) && !step.done(); i++ {
			var sp []span
			k, err := step.scan(b[i:i+1], &sp)
			for _, s := range sp {
				data2 = append(data2, b[i+int(s.s):i+int(s.e)]...)
			}
			n2 += k
			if err != nil {
				err2 = err
				break
			}
		}
		if (err1 == nil) != (err2 == nil) || (err1 == nil && (n1 != n2 || whole.done() != step.done() || !bytes.Equal(data1, data2))) {
			t.Fatalf("whole: n=%d done=%v err=%v; bytewise: n=%d done=%v err=%v", n1, whole.done(), err1, n2, step.done(), err2)
		}
	})
}
