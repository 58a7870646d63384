package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/singularity-ng/singularity-edge/storage"
)

// trailerBackend answers /resp-trailers with a chunked body followed by
// trailer fields, some of which must not cross the proxy; everything else
// is echoed.
func trailerBackend(t *testing.T) *recBackend {
	return newRecBackend(t, func(c net.Conn, req *strictRequest, nth int) bool {
		if req.Target == "/resp-trailers" {
			_, err := io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n"+
				"3\r\nabc\r\n0\r\nX-Checksum: sha-1\r\nSet-Cookie: session=stolen\r\nContent-Length: 99\r\nAuthorization: Bearer x\r\nX-Request-Id: forged\r\n\r\n")
			return err == nil
		}
		return answerEcho(c, req, nth)
	})
}

// TestTrailersForwarded: valid trailer fields cross the proxy in its own
// framing, request trailers to the backend and response trailers to
// HTTP/1.1 (chunked) and HTTP/2 (trailing HEADERS) clients; fields that
// RFC 9110 6.5.1 keeps out of trailers (framing, routing, authentication,
// cookies, the proxy's own) are dropped; an HTTP/1.0 client, which
// cannot carry trailers, gets the data alone.
func TestTrailersForwarded(t *testing.T) {
	ca := newTestCA(t)
	certs := &testCerts{}
	certs.add("tr.test", ca.issue(t, "tr.test"))
	rb := trailerBackend(t)
	table := newTable(t, poolSpec{storage.Pool{Name: "tr", SSLMode: "flexible", AllowHTTP: true, SSLDomain: "tr.test"}, []string{rb.url()}})
	p := startProxy(t, testConfig(), table, certs, nil)

	t.Run("HTTP/1.1 request", func(t *testing.T) {
		before := len(mustReceived(t, rb))
		status, body := rawRoundTrip(t, p.http, "POST /up HTTP/1.1\r\nHost: tr.test\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n"+
			"5\r\nhello\r\n0\r\nX-Checksum: md5-1\r\nHost: evil.test\r\nAuthorization: Bearer x\r\nTransfer-Encoding: chunked\r\nX-Forwarded-For: 10.9.9.9\r\nX-Real-IP: 10.9.9.9\r\nCookie: a=b\r\nX-Other: two words\r\n\r\n", "POST")
		if status != 200 || body != "POST /up 5" {
			t.Fatalf("%d %q", status, body)
		}
		reqs := mustReceived(t, rb)[before:]
		if len(reqs) != 1 {
			t.Fatalf("backend got %d requests", len(reqs))
		}
		_, framed, _ := strings.Cut(string(reqs[0].Raw), "\r\n\r\n")
		if want := "5\r\nhello\r\n0\r\nX-Checksum: md5-1\r\nX-Other: two words\r\n\r\n"; framed != want {
			t.Fatalf("backend got body %q, want %q", framed, want)
		}
		if reqs[0].get("Trailer") != "X-Checksum" {
			t.Fatalf("Trailer field not forwarded: %q", reqs[0].Raw)
		}
	})
	t.Run("HTTP/1.1 response", func(t *testing.T) {
		got := rawExchange(t, p.http, "GET /resp-trailers HTTP/1.1\r\nHost: tr.test\r\nConnection: close\r\n\r\n", 2*time.Second)
		_, body, _ := strings.Cut(got, "\r\n\r\n")
		if want := "3\r\nabc\r\n0\r\nX-Checksum: sha-1\r\n\r\n"; body != want {
			t.Fatalf("client got %q, want body %q", got, want)
		}
	})
	t.Run("HTTP/1.0 response", func(t *testing.T) {
		got := rawExchange(t, p.http, "GET /resp-trailers HTTP/1.0\r\nHost: tr.test\r\n\r\n", 2*time.Second)
		head, body, _ := strings.Cut(got, "\r\n\r\n")
		if body != "abc" || strings.Contains(head, "Trailer") || strings.Contains(head, "chunked") {
			t.Fatalf("HTTP/1.0 client got %q", got)
		}
	})
	t.Run("HTTP/2 response", func(t *testing.T) {
		resp := get(t, client(p.https, ca.pool, true), "https://tr.test/resp-trailers")
		if body := readAll(t, resp); body != "abc" || resp.ProtoMajor != 2 {
			t.Fatalf("%s %q", resp.Proto, body)
		}
		if got := resp.Trailer.Get("X-Checksum"); got != "sha-1" {
			t.Fatalf("trailer X-Checksum %q, trailers %v", got, resp.Trailer)
		}
		for _, name := range []string{"Set-Cookie", "Authorization", "Content-Length", "X-Request-Id"} {
			if v := resp.Trailer.Values(name); len(v) > 0 {
				t.Fatalf("forbidden trailer %s: %q reached the client", name, v)
			}
		}
	})
	t.Run("HTTP/2 request", func(t *testing.T) {
		before := len(mustReceived(t, rb))
		pr, pw := io.Pipe()
		req, _ := http.NewRequest("POST", "https://tr.test/h2up", pr)
		req.ContentLength = -1
		req.Trailer = http.Header{"X-Checksum": nil, "Set-Cookie": nil, "X-Real-Ip": nil}
		go func() {
			_, _ = io.WriteString(pw, "hello")
			req.Trailer.Set("X-Checksum", "crc-7")
			req.Trailer.Set("Set-Cookie", "a=b")
			req.Trailer.Set("X-Real-Ip", "10.9.9.9")
			_ = pw.Close()
		}()
		resp, err := client(p.https, ca.pool, true).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if body := readAll(t, resp); body != "POST /h2up 5" {
			t.Fatalf("%d %q", resp.StatusCode, body)
		}
		reqs := mustReceived(t, rb)[before:]
		if len(reqs) != 1 {
			t.Fatalf("backend got %d requests", len(reqs))
		}
		_, framed, _ := strings.Cut(string(reqs[0].Raw), "\r\n\r\n")
		if want := "5\r\nhello\r\n0\r\nX-Checksum: crc-7\r\n\r\n"; framed != want {
			t.Fatalf("backend got body %q, want %q", framed, want)
		}
	})
}

func mustReceived(t *testing.T, rb *recBackend) []*strictRequest {
	t.Helper()
	reqs, errs := rb.received()
	if len(errs) > 0 {
		t.Fatalf("backend's strict reader: %v", errs)
	}
	return reqs
}

// TestSlowRequestBodyCutOff: a client that sends its body below
// MinBodyRate after the grace period gets 408 and its connection closed;
// the backend, whose received bytes are the oracle, never gets the whole
// body. Both protocols.
func TestSlowRequestBodyCutOff(t *testing.T) {
	ca := newTestCA(t)
	certs := &testCerts{}
	certs.add("slow.test", ca.issue(t, "slow.test"))
	rb := newRecBackend(t, nil)
	table := newTable(t, poolSpec{storage.Pool{Name: "slow", SSLMode: "flexible", AllowHTTP: true, SSLDomain: "slow.test"}, []string{rb.url()}})
	cfg := testConfig()
	cfg.MinBodyRate = 1000
	cfg.BodyRateGrace = 200 * time.Millisecond
	p := startProxy(t, cfg, table, certs, nil)
	const bodyLen = 2000 // 10 s at the client's 200 bytes/s

	t.Run("HTTP/1.1", func(t *testing.T) {
		rb.bytesIn.Store(0)
		c, err := net.Dial("tcp", p.http)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
		fmt.Fprintf(c, "POST /slow HTTP/1.1\r\nHost: slow.test\r\nContent-Length: %d\r\n\r\n", bodyLen)
		answered := make(chan string, 1)
		go func() {
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				answered <- "error: " + err.Error()
				return
			}
			resp.Body.Close()
			answered <- fmt.Sprintf("%d close=%v", resp.StatusCode, resp.Close)
		}()
		chunk := strings.Repeat("x", 10)
		var got string
	send:
		for sent := 0; sent < bodyLen; sent += len(chunk) {
			select {
			case got = <-answered:
				break send
			case <-time.After(50 * time.Millisecond):
			}
			if _, err := io.WriteString(c, chunk); err != nil {
				break
			}
		}
		if got == "" {
			select {
			case got = <-answered:
			case <-time.After(20 * time.Second):
				t.Fatal("no answer")
			}
		}
		if got != "408 close=true" {
			t.Fatalf("slow client got %q, want 408 and the connection closed", got)
		}
		if n := rb.bytesIn.Load(); n >= bodyLen {
			t.Fatalf("backend received %d bytes: the whole slow body went through", n)
		}
	})
	t.Run("HTTP/2", func(t *testing.T) {
		rb.bytesIn.Store(0)
		pr, pw := io.Pipe()
		req, _ := http.NewRequest("POST", "https://slow.test/slow2", pr)
		req.ContentLength = bodyLen
		stopWriting := make(chan struct{})
		go func() {
			defer pw.Close()
			for sent := 0; sent < bodyLen; sent += 10 {
				select {
				case <-stopWriting:
					return
				case <-time.After(50 * time.Millisecond):
				}
				if _, err := io.WriteString(pw, strings.Repeat("y", 10)); err != nil {
					return
				}
			}
		}()
		defer close(stopWriting)
		c := client(p.https, ca.pool, true)
		c.Timeout = 30 * time.Second
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		readAll(t, resp)
		if resp.StatusCode != 408 {
			t.Fatalf("slow HTTP/2 client got %d, want 408", resp.StatusCode)
		}
		if n := rb.bytesIn.Load(); n >= bodyLen {
			t.Fatalf("backend received %d bytes: the whole slow body went through", n)
		}
	})
}

// TestSlowResponseReaderCutOff: a client that stops reading a large
// response is cut off by MinBodyRate long before WriteTimeout; when it
// resumes, the response is truncated instead of delivered.
func TestSlowResponseReaderCutOff(t *testing.T) {
	const total = 256 << 20
	rb := newRecBackend(t, func(c net.Conn, req *strictRequest, nth int) bool {
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", total)
		buf := make([]byte, 64<<10)
		for sent := 0; sent < total; sent += len(buf) {
			if _, err := c.Write(buf); err != nil {
				return false
			}
		}
		return true
	})
	table := newTable(t, poolSpec{storage.Pool{Name: "big", Hosts: []string{"big.test"}}, []string{rb.url()}})
	cfg := testConfig()
	cfg.MinBodyRate = 4 << 20 // loopback buffers hold a few MiB: the cut comes about a second after the grace
	cfg.BodyRateGrace = 100 * time.Millisecond
	p := startProxy(t, cfg, table, nil, nil)
	c, err := net.Dial("tcp", p.http)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.(*net.TCPConn).SetReadBuffer(64 << 10)
	_ = c.SetDeadline(time.Now().Add(60 * time.Second))
	io.WriteString(c, "GET /big HTTP/1.1\r\nHost: big.test\r\n\r\n")
	// Stop reading well past the grace period plus the time the
	// buffered bytes are worth at the minimum rate.
	time.Sleep(4 * time.Second)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	if err == nil || n >= total {
		t.Fatalf("the client that stopped reading got %d of %d bytes (err %v): not cut off", n, total, err)
	}
}

// TestBackendExchangesPerClientAddrBounded: one client address opening
// many HTTP/1.1 connections (and an HTTP/2 one) cannot hold more than
// MaxBackendConnsPerClientAddr backend exchanges at once: the backend's
// concurrency is the oracle; the requests beyond the bound get 503.
func TestBackendExchangesPerClientAddrBounded(t *testing.T) {
	ca := newTestCA(t)
	certs := &testCerts{}
	certs.add("lim.test", ca.issue(t, "lim.test"))
	release := make(chan struct{})
	var inflight, peak atomic.Int64
	rb := newRecBackend(t, func(c net.Conn, req *strictRequest, nth int) bool {
		n := inflight.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		select {
		case <-release:
		case <-time.After(20 * time.Second):
		}
		inflight.Add(-1)
		return answerEcho(c, req, nth)
	})
	table := newTable(t, poolSpec{storage.Pool{Name: "lim", SSLMode: "flexible", AllowHTTP: true, SSLDomain: "lim.test"}, []string{rb.url()}})
	cfg := testConfig()
	cfg.MaxBackendConnsPerClientAddr = 3
	p := startProxy(t, cfg, table, certs, nil)

	const conns = 8
	var refused, served atomic.Int64
	var wg sync.WaitGroup
	for i := 0; i < conns; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", p.http)
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(30 * time.Second))
			fmt.Fprintf(c, "GET /hold/%d HTTP/1.1\r\nHost: lim.test\r\n\r\n", i)
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
			switch {
			case resp.StatusCode == 503 && resp.Header.Get("Retry-After") != "":
				refused.Add(1)
			case resp.StatusCode == 200:
				served.Add(1)
			default:
				t.Errorf("status %d", resp.StatusCode)
			}
		}()
	}
	waitFor(t, "3 exchanges held and 5 refused", func() bool {
		return inflight.Load() == 3 && refused.Load() == conns-3
	})
	// HTTP/2 from the same address shares the bound.
	resp := get(t, client(p.https, ca.pool, true), "https://lim.test/h2")
	readAll(t, resp)
	if resp.StatusCode != 503 {
		t.Fatalf("HTTP/2 request over the bound: %d", resp.StatusCode)
	}
	close(release)
	wg.Wait()
	if served.Load() != 3 || peak.Load() != 3 {
		t.Fatalf("served %d, backend peak concurrency %d; want 3 and 3", served.Load(), peak.Load())
	}
	// The slots come back: a new request goes through.
	if status, _ := rawRoundTrip(t, p.http, "GET /after HTTP/1.1\r\nHost: lim.test\r\n\r\n", "GET"); status != 200 {
		t.Fatalf("after the release: %d", status)
	}
}

// TestCancelledStreamsReuseBackendConnections: an HTTP/2 client that
// cancels each stream while its backend request is in flight does not
// cost a backend connection per stream: the rest of each response is
// drained and the connection returned (the backend's connection count is
// the oracle). A response too large to drain closes its connection.
func TestCancelledStreamsReuseBackendConnections(t *testing.T) {
	hugeDone := make(chan error, 1)
	p, ca, rb := flexiblePool(t, "cx.test", testConfig(), func(c net.Conn, req *strictRequest, nth int) bool {
		time.Sleep(20 * time.Millisecond) // in flight when the reset comes
		if req.Target == "/huge" {
			const huge = 256 << 20 // far more than socket buffers hold
			fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", huge)
			buf := make([]byte, 1<<20)
			var err error
			for sent := 0; sent < huge && err == nil; sent += len(buf) {
				_, err = c.Write(buf)
			}
			hugeDone <- err
			return err == nil
		}
		return answerEcho(c, req, nth)
	})
	h := dialH2Raw(t, p.https, "cx.test", ca.pool)
	const loops = 30
	id := uint32(1)
	for i := 0; i < loops; i++ {
		if err := h.headers(id, true, ":method", "GET", ":scheme", "https", ":path", "/c", ":authority", "cx.test"); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the request at the backend", func() bool { return rb.requests.Load() == int64(i+1) })
		if err := h.fr.WriteRSTStream(id, http2.ErrCodeCancel); err != nil {
			t.Fatal(err)
		}
		// The next stream starts once the drained connection is back:
		// on a loaded machine it otherwise raced the drain and dialled.
		waitFor(t, "the drained connection back in the pool", func() bool { return idleBackendConns(p.Server) == 1 })
		id += 2
	}
	// A last stream that completes: the connection is still served.
	if err := h.headers(id, true, ":method", "GET", ":scheme", "https", ":path", "/done", ":authority", "cx.test"); err != nil {
		t.Fatal(err)
	}
	for {
		status, _, err := h.response(id)
		if err != nil {
			t.Fatal(err)
		}
		if status != "" {
			break
		}
	}
	if n := rb.conns.Load(); n > loops/3 {
		t.Fatalf("%d cancelled streams cost %d backend connections", loops, n)
	}
	t.Logf("%d cancelled streams, %d backend connections", loops, rb.conns.Load())

	// Too much left to drain: that connection is closed, not pooled
	// (the backend's write of the rest fails).
	id += 2
	if err := h.headers(id, true, ":method", "GET", ":scheme", "https", ":path", "/huge", ":authority", "cx.test"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the huge request at the backend", func() bool { return rb.requests.Load() == loops+2 })
	if err := h.fr.WriteRSTStream(id, http2.ErrCodeCancel); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-hugeDone:
		if err == nil {
			t.Fatal("the backend wrote the whole huge response to a cancelled stream")
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the huge response's connection was neither closed nor drained")
	}
	resp := get(t, client(p.https, ca.pool, true), "https://cx.test/after")
	if body := readAll(t, resp); body != "GET /after 0" {
		t.Fatalf("after the huge cancel: %d %q", resp.StatusCode, body)
	}
}

// TestSlowBackendIsNotTheClientsFault: MinBodyRate counts only the time
// spent waiting on the client. A backend that streams its response slowly
// (server-sent events, long polls) to a client that reads at once is not
// cut, over either protocol.
func TestSlowBackendIsNotTheClientsFault(t *testing.T) {
	ca := newTestCA(t)
	certs := &testCerts{}
	certs.add("sse.test", ca.issue(t, "sse.test"))
	const chunks = 12
	rb := newRecBackend(t, func(c net.Conn, req *strictRequest, nth int) bool {
		if _, err := io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"); err != nil {
			return false
		}
		for i := 0; i < chunks; i++ {
			time.Sleep(50 * time.Millisecond) // 200 bytes/s, below the minimum rate
			if _, err := io.WriteString(c, "a\r\nevent: 01\n\r\n"); err != nil {
				return false
			}
		}
		_, err := io.WriteString(c, "0\r\n\r\n")
		return err == nil
	})
	table := newTable(t, poolSpec{storage.Pool{Name: "sse", SSLMode: "flexible", AllowHTTP: true, SSLDomain: "sse.test"}, []string{rb.url()}})
	cfg := testConfig()
	cfg.MinBodyRate = 1000
	cfg.BodyRateGrace = 100 * time.Millisecond
	p := startProxy(t, cfg, table, certs, nil)
	want := strings.Repeat("event: 01\n", chunks)
	for _, tc := range []struct {
		name string
		c    *http.Client
		url  string
	}{
		{"HTTP/1.1", client(p.http, nil, false), "http://sse.test/events"},
		{"HTTP/2", client(p.https, ca.pool, true), "https://sse.test/events"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := get(t, tc.c, tc.url)
			if body := readAll(t, resp); body != want {
				t.Fatalf("got %q, want all %d events", body, chunks)
			}
		})
	}
}

// BenchmarkExchangeSlot is what the per-address bound adds to every
// proxied request: one acquire and one release.
func BenchmarkExchangeSlot(b *testing.B) {
	s := &Server{cfg: DefaultConfig()}
	info := connInfo{client: netip.MustParseAddrPort("203.0.113.7:40000")}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if ok, release := s.acquireExchange(&info); ok && release {
				s.releaseExchange(&info)
			}
		}
	})
}

// idleBackendConns counts the pooled backend connections of s.
func idleBackendConns(s *Server) int {
	n := 0
	s.upstreams.m.Range(func(_, v any) bool {
		up := v.(*upstream)
		up.mu.Lock()
		n += len(up.idle)
		up.mu.Unlock()
		return true
	})
	return n
}
