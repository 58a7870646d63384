package proxy

import (
	"bytes"
	"crypto/tls"
	"net"
	"net/netip"
	"strconv"
	"testing"

	"github.com/singularity-ng/singularity-edge/storage"
)

// rawBackend answers every request head it reads with a fixed 1 KiB
// response, as cheaply as possible, so that benchmarks measure the proxy.
func rawBackend(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ln.Close() })
	resp := []byte("HTTP/1.1 200 OK\r\nServer: raw\r\nContent-Type: application/octet-stream\r\nContent-Length: 1024\r\n\r\n")
	resp = append(resp, bytes.Repeat([]byte("x"), 1024)...)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func(c net.Conn) {
				defer c.Close()
				buf := make([]byte, 16<<10)
				n := 0
				for {
					m, err := c.Read(buf[n:])
					if err != nil {
						return
					}
					n += m
					for {
						i := bytes.Index(buf[:n], crlfcrlf)
						if i < 0 {
							break
						}
						if _, err := c.Write(resp); err != nil {
							return
						}
						n = copy(buf, buf[i+4:n])
					}
				}
			}(c)
		}
	}()
	return ln.Addr().String()
}

// rawClient sends keep-alive requests and reads Content-Length responses.
type rawClient struct {
	c   net.Conn
	req []byte
	buf []byte
	n   int
}

func (rc *rawClient) do(tb testing.TB) {
	if _, err := rc.c.Write(rc.req); err != nil {
		tb.Fatal(err)
	}
	for {
		if i := bytes.Index(rc.buf[:rc.n], crlfcrlf); i >= 0 {
			head := rc.buf[:i]
			j := bytes.Index(head, []byte("Content-Length: "))
			if j < 0 {
				tb.Fatalf("no Content-Length in %q", head)
			}
			k := bytes.IndexByte(head[j:], '\r')
			if k < 0 {
				k = len(head) - j
			}
			cl, _ := strconv.Atoi(string(head[j+16 : j+k]))
			total := i + 4 + cl
			if rc.n >= total {
				if !bytes.HasPrefix(rc.buf, []byte("HTTP/1.1 200 ")) {
					tb.Fatalf("response %q", rc.buf[:i])
				}
				rc.n = copy(rc.buf, rc.buf[total:rc.n])
				return
			}
		}
		m, err := rc.c.Read(rc.buf[rc.n:])
		if err != nil {
			tb.Fatal(err)
		}
		rc.n += m
	}
}

// BenchmarkProxyKeepAlive: one request per op through the proxy over
// loopback, keep-alive on both legs, 1 KiB responses (the harness's S1
// shape). ns/op includes the client and the backend in this process.
func BenchmarkProxyKeepAlive(b *testing.B) {
	backend := rawBackend(b)
	table := newTable(b, poolSpec{storage.Pool{Name: "bench", Hosts: []string{"bench.test"}}, []string{"http://" + backend}})
	p := startProxy(b, testConfig(), table, nil, nil)
	req := []byte("GET /1k HTTP/1.1\r\nHost: bench.test\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n")
	b.Run("sequential", func(b *testing.B) {
		c, err := net.Dial("tcp", p.http)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		rc := &rawClient{c: c, req: req, buf: make([]byte, 8192)}
		rc.do(b)
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			rc.do(b)
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.SetParallelism(8)
		b.RunParallel(func(pb *testing.PB) {
			c, err := net.Dial("tcp", p.http)
			if err != nil {
				b.Error(err)
				return
			}
			defer c.Close()
			rc := &rawClient{c: c, req: req, buf: make([]byte, 8192)}
			for pb.Next() {
				rc.do(b)
			}
		})
	})
}

// BenchmarkParseClientHello parses a real crypto/tls ClientHello.
func BenchmarkParseClientHello(b *testing.B) {
	hello := captureClientHello(b, &tls.Config{ServerName: "www.example.com", NextProtos: []string{"h2", "http/1.1"}, InsecureSkipVerify: true})
	b.ReportAllocs()
	b.SetBytes(int64(len(hello)))
	for i := 0; i < b.N; i++ {
		if _, _, err := parseClientHello(hello); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkParseRequestHead parses a browser-like request head.
func BenchmarkParseRequestHead(b *testing.B) {
	head := []byte("GET /static/app.js?v=12 HTTP/1.1\r\nHost: www.example.com\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\n" +
		"Accept: */*\r\nAccept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br\r\nReferer: https://www.example.com/\r\n" +
		"Connection: keep-alive\r\nCookie: session=abc123; theme=dark\r\nSec-Fetch-Dest: script\r\n\r\n")
	fields := make([]field, 0, 32)
	var h requestHead
	b.ReportAllocs()
	b.SetBytes(int64(len(head)))
	for i := 0; i < b.N; i++ {
		if err := parseRequestHead(&h, head, fields); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAppendUpstreamHead writes the backend's request head for a
// browser-like request from an untrusted client (the forwarding headers
// are the proxy's own).
func BenchmarkAppendUpstreamHead(b *testing.B) {
	head := []byte("GET /static/app.js?v=12 HTTP/1.1\r\nHost: www.example.com\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\n" +
		"Accept: */*\r\nAccept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br\r\nReferer: https://www.example.com/\r\n" +
		"Connection: keep-alive\r\nCookie: session=abc123; theme=dark\r\nSec-Fetch-Dest: script\r\n\r\n")
	cc := &clientConn{
		info:     connInfo{client: netip.MustParseAddrPort("203.0.113.7:4000")},
		clientIP: []byte("203.0.113.7"),
		reqID:    []byte("0123456789abcdef0123456789abcdef"),
	}
	if err := parseRequestHead(&cc.head, head, make([]field, 0, 32)); err != nil {
		b.Fatal(err)
	}
	host := cc.head.host.of(head)
	out := make([]byte, 0, 2048)
	b.ReportAllocs()
	b.SetBytes(int64(len(head)))
	for i := 0; i < b.N; i++ {
		out = cc.appendUpstreamHead(out[:0], head, host)
	}
}
