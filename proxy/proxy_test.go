package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
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

	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/net/websocket"

	"github.com/singularity-ng/singularity-edge/pools"
	"github.com/singularity-ng/singularity-edge/storage"
)

// TestSSLModes runs every SSL mode end to end with real TLS on both legs.
func TestSSLModes(t *testing.T) {
	ca := newTestCA(t)
	certs := &testCerts{}
	certs.add("*.example.test", ca.issue(t, "*.example.test"))

	plain := newEcho(t, "plain")
	flex := newEcho(t, "flex")
	// full: the backend's certificate comes from httptest's own CA, which
	// nothing here trusts: full mode encrypts without verifying.
	full := httptest.NewTLSServer(echoHandler("full"))
	t.Cleanup(full.Close)
	// full_strict with a certificate from our CA for 127.0.0.1: verified.
	strict := httptest.NewUnstartedServer(echoHandler("strict"))
	strict.TLS = &tls.Config{Certificates: []tls.Certificate{ca.issue(t, "127.0.0.1")}}
	strict.StartTLS()
	t.Cleanup(strict.Close)
	// full_strict against an unknown CA: refused.
	strictBad := httptest.NewTLSServer(echoHandler("strictbad"))
	t.Cleanup(strictBad.Close)
	// passthrough: the client must see this backend's own certificate.
	ptCert := ca.issue(t, "pt.example.test")
	pt := httptest.NewUnstartedServer(echoHandler("pt"))
	pt.TLS = &tls.Config{Certificates: []tls.Certificate{ptCert}}
	pt.StartTLS()
	t.Cleanup(pt.Close)

	table := newTable(t,
		poolSpec{storage.Pool{Name: "plain", SSLMode: "off", Hosts: []string{"plain.example.test"}}, []string{plain.URL}},
		poolSpec{storage.Pool{Name: "flex", SSLMode: "flexible", SSLDomain: "flex.example.test"}, []string{flex.URL}},
		poolSpec{storage.Pool{Name: "full", SSLMode: "full", SSLDomain: "full.example.test"}, []string{full.URL}},
		poolSpec{storage.Pool{Name: "strict", SSLMode: "full_strict", SSLDomain: "strict.example.test", BackendCA: ca.pem()}, []string{strict.URL}},
		poolSpec{storage.Pool{Name: "strictbad", SSLMode: "full_strict", SSLDomain: "strictbad.example.test"}, []string{strictBad.URL}},
		poolSpec{storage.Pool{Name: "pt", SSLMode: "passthrough", SSLDomain: "pt.example.test"}, []string{pt.URL}},
	)
	p := startProxy(t, testConfig(), table, certs, nil)
	httpc := client(p.http, nil, false)
	tlsc := client(p.https, ca.pool, false)

	t.Run("off proxies plain HTTP", func(t *testing.T) {
		e := decodeEcho(t, get(t, httpc, "http://plain.example.test/x?y=1"))
		if e.Backend != "plain" || e.URI != "/x?y=1" || e.Header["X-Forwarded-Proto"][0] != "http" {
			t.Fatalf("unexpected echo %+v", e)
		}
	})
	t.Run("off refuses TLS for its names", func(t *testing.T) {
		conn, err := tls.Dial("tcp", p.https, &tls.Config{ServerName: "plain.example.test", RootCAs: ca.pool})
		if err == nil {
			conn.Close()
			t.Fatal("TLS handshake for an ssl_mode=off pool succeeded")
		}
	})
	tests := []struct {
		host, backend string
		status        int
		backendTLS    bool
	}{
		{"flex.example.test", "flex", 200, false},
		{"full.example.test", "full", 200, true},
		{"strict.example.test", "strict", 200, true},
		{"strictbad.example.test", "", 502, false},
	}
	for _, tc := range tests {
		t.Run(tc.host, func(t *testing.T) {
			resp := get(t, tlsc, "https://"+tc.host+"/mode")
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.status, readAll(t, resp))
			}
			if tc.status != 200 {
				body := readAll(t, resp)
				if !strings.Contains(body, "bad gateway") {
					t.Fatalf("502 body %q", body)
				}
				return
			}
			e := decodeEcho(t, resp)
			if e.Backend != tc.backend || e.TLS != tc.backendTLS || e.Header["X-Forwarded-Proto"][0] != "https" {
				t.Fatalf("unexpected echo %+v", e)
			}
		})
	}
	t.Run("passthrough delivers the backend certificate", func(t *testing.T) {
		var peer []byte
		c := client(p.https, ca.pool, false)
		c.Transport.(*http.Transport).TLSClientConfig.VerifyConnection = func(cs tls.ConnectionState) error {
			peer = cs.PeerCertificates[0].Raw
			return nil
		}
		e := decodeEcho(t, get(t, c, "https://pt.example.test/raw"))
		if e.Backend != "pt" || !e.TLS {
			t.Fatalf("unexpected echo %+v", e)
		}
		if !bytes.Equal(peer, ptCert.Certificate[0]) {
			t.Fatal("client did not get the backend's certificate through passthrough")
		}
		if _, ok := e.Header["X-Forwarded-For"]; ok {
			t.Fatal("passthrough modified the HTTP request (X-Forwarded-For present)")
		}
	})
	t.Run("passthrough closes unknown SNI", func(t *testing.T) {
		conn, err := tls.Dial("tcp", p.https, &tls.Config{ServerName: "unknown.other.test", InsecureSkipVerify: true})
		if err == nil {
			conn.Close()
			t.Fatal("handshake for an unknown name succeeded")
		}
	})
}

// TestSNICertificates checks certificate selection by SNI with exact and
// wildcard certificates, and routing by SNI/Host.
func TestSNICertificates(t *testing.T) {
	ca := newTestCA(t)
	exact := ca.issue(t, "www.shop.test")
	wild := ca.issue(t, "*.shop.test")
	certs := &testCerts{}
	certs.add("www.shop.test", exact)
	certs.add("*.shop.test", wild)
	a, b := newEcho(t, "www"), newEcho(t, "wild")
	table := newTable(t,
		poolSpec{storage.Pool{Name: "www", SSLMode: "flexible", SSLDomain: "www.shop.test"}, []string{a.URL}},
		poolSpec{storage.Pool{Name: "wild", SSLMode: "flexible", SSLDomain: "*.shop.test"}, []string{b.URL}},
	)
	p := startProxy(t, testConfig(), table, certs, nil)
	for _, tc := range []struct {
		host, backend string
		cert          tls.Certificate
	}{
		{"www.shop.test", "www", exact},
		{"api.shop.test", "wild", wild},
		{"API.Shop.Test", "wild", wild},
	} {
		t.Run(tc.host, func(t *testing.T) {
			var got []byte
			c := client(p.https, ca.pool, false)
			c.Transport.(*http.Transport).TLSClientConfig.VerifyConnection = func(cs tls.ConnectionState) error {
				got = cs.PeerCertificates[0].Raw
				if cs.Version < tls.VersionTLS12 {
					return fmt.Errorf("negotiated TLS version %x", cs.Version)
				}
				return nil
			}
			e := decodeEcho(t, get(t, c, "https://"+tc.host+"/"))
			if e.Backend != tc.backend {
				t.Fatalf("routed to %q, want %q", e.Backend, tc.backend)
			}
			if !bytes.Equal(got, tc.cert.Certificate[0]) {
				t.Fatal("wrong certificate served")
			}
		})
	}
	t.Run("TLS 1.1 refused", func(t *testing.T) {
		conn, err := tls.Dial("tcp", p.https, &tls.Config{ServerName: "www.shop.test", RootCAs: ca.pool, MaxVersion: tls.VersionTLS11, MinVersion: tls.VersionTLS10})
		if err == nil {
			conn.Close()
			t.Fatal("TLS 1.1 handshake succeeded")
		}
	})
	t.Run("unknown host 404", func(t *testing.T) {
		resp := get(t, client(p.http, nil, false), "http://nothing.test/")
		body := readAll(t, resp)
		if resp.StatusCode != 404 || !strings.Contains(body, "no pool serves this host") || resp.Header.Get("X-Request-Id") == "" {
			t.Fatalf("got %d %q", resp.StatusCode, body)
		}
	})
}

// TestRedirectAndACME covers the HTTP->HTTPS redirect, its ACME exception,
// HTTP-01 answers and the TLS-ALPN-01 hook.
func TestRedirectAndACME(t *testing.T) {
	ca := newTestCA(t)
	certs := &testCerts{}
	certs.add("app.test", ca.issue(t, "app.test"))
	backend := newEcho(t, "app")
	alpnCert := ca.issue(t, "app.test")
	ch := &testChallenges{
		http01: map[string]string{"app.test/tok123": "tok123.keyauth"},
		alpn:   map[string]*tls.Certificate{"app.test": &alpnCert},
	}
	table := newTable(t, poolSpec{storage.Pool{Name: "app", SSLMode: "full_strict", SSLDomain: "app.test"}, []string{backend.URL}})
	cfg := testConfig()
	cfg.RedirectHTTPSPort = 8443
	p := startProxy(t, cfg, table, certs, ch)
	c := client(p.http, nil, false)

	for _, tc := range []struct {
		method, path string
		status       int
		location     string
	}{
		{"GET", "/a/b?q=1", 301, "https://app.test:8443/a/b?q=1"},
		{"HEAD", "/", 301, "https://app.test:8443/"},
		{"POST", "/form", 308, "https://app.test:8443/form"},
		{"DELETE", "/x", 308, "https://app.test:8443/x"},
	} {
		t.Run(tc.method+tc.path, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, "http://app.test:80"+tc.path, strings.NewReader(""))
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			readAll(t, resp)
			if resp.StatusCode != tc.status || resp.Header.Get("Location") != tc.location {
				t.Fatalf("got %d Location %q, want %d %q", resp.StatusCode, resp.Header.Get("Location"), tc.status, tc.location)
			}
		})
	}
	t.Run("HTTP-01 answered", func(t *testing.T) {
		resp := get(t, c, "http://app.test/.well-known/acme-challenge/tok123")
		if body := readAll(t, resp); resp.StatusCode != 200 || strings.TrimSpace(body) != "tok123.keyauth" {
			t.Fatalf("got %d %q", resp.StatusCode, body)
		}
	})
	t.Run("unknown token goes to the backend, not redirected", func(t *testing.T) {
		// The pool uses full_strict, so the backend leg needs TLS; the
		// echo backend is plain HTTP: a 502 proves the request was
		// proxied instead of redirected.
		resp := get(t, c, "http://app.test/.well-known/acme-challenge/other")
		readAll(t, resp)
		if resp.StatusCode == 301 || resp.StatusCode == 308 {
			t.Fatalf("ACME path was redirected (%d)", resp.StatusCode)
		}
	})
	t.Run("TLS-ALPN-01", func(t *testing.T) {
		conn, err := tls.Dial("tcp", p.https, &tls.Config{ServerName: "app.test", RootCAs: ca.pool, NextProtos: []string{"acme-tls/1"}})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		cs := conn.ConnectionState()
		if cs.NegotiatedProtocol != "acme-tls/1" || !bytes.Equal(cs.PeerCertificates[0].Raw, alpnCert.Certificate[0]) {
			t.Fatalf("ALPN %q, challenge certificate served: %v", cs.NegotiatedProtocol, bytes.Equal(cs.PeerCertificates[0].Raw, alpnCert.Certificate[0]))
		}
	})
}

// TestACMEPathProxiedForFlexiblePool: with no challenge pending, the ACME
// path of a TLS pool reaches its backend over plain HTTP.
func TestACMEPathProxiedForFlexiblePool(t *testing.T) {
	backend := newEcho(t, "app")
	table := newTable(t, poolSpec{storage.Pool{Name: "app", SSLMode: "flexible", SSLDomain: "app.test"}, []string{backend.URL}})
	p := startProxy(t, testConfig(), table, nil, nil)
	e := decodeEcho(t, get(t, client(p.http, nil, false), "http://app.test/.well-known/acme-challenge/zzz"))
	if e.URI != "/.well-known/acme-challenge/zzz" {
		t.Fatalf("backend saw %q", e.URI)
	}
}

// TestHTTP2 checks ALPN h2, forwarding to an HTTP/1.1 backend and that a
// streamed response reaches the client before the backend finished it.
func TestHTTP2(t *testing.T) {
	ca := newTestCA(t)
	certs := &testCerts{}
	certs.add("h2.test", ca.issue(t, "h2.test"))
	release := make(chan struct{})
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/stream" {
			w.Header().Set("X-Proto-Seen", r.Proto)
			_, _ = io.WriteString(w, "first\n")
			w.(http.Flusher).Flush()
			<-release
			_, _ = io.WriteString(w, "second\n")
			return
		}
		echoHandler("h2").ServeHTTP(w, r)
	}))
	t.Cleanup(backend.Close)
	table := newTable(t, poolSpec{storage.Pool{Name: "h2", SSLMode: "flexible", SSLDomain: "h2.test"}, []string{backend.URL}})
	p := startProxy(t, testConfig(), table, certs, nil)
	c := client(p.https, ca.pool, true)

	resp := get(t, c, "https://h2.test/echo?x=1")
	if resp.ProtoMajor != 2 {
		t.Fatalf("negotiated %s, want HTTP/2", resp.Proto)
	}
	id := resp.Header.Get("X-Request-Id")
	e := decodeEcho(t, resp)
	if e.Proto != "HTTP/1.1" || e.URI != "/echo?x=1" || e.Host != "h2.test" || e.Header["X-Forwarded-Proto"][0] != "https" || e.Header["X-Request-Id"][0] != id {
		t.Fatalf("unexpected echo %+v (client id %q)", e, id)
	}

	// POST with a body of unknown length (chunked to the backend).
	pr, pw := io.Pipe()
	go func() {
		_, _ = io.WriteString(pw, "hello ")
		_, _ = io.WriteString(pw, "h2")
		pw.Close()
	}()
	req, _ := http.NewRequest("POST", "https://h2.test/post", pr)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if e := decodeEcho(t, resp); e.Body != "hello h2" || e.Method != "POST" {
		t.Fatalf("unexpected echo %+v", e)
	}

	resp = get(t, c, "https://h2.test/stream")
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	line, err := br.ReadString('\n')
	if err != nil || line != "first\n" {
		t.Fatalf("first line %q, %v", line, err)
	}
	close(release) // the backend finishes only after the client saw the first part
	rest, err := io.ReadAll(br)
	if err != nil || string(rest) != "second\n" {
		t.Fatalf("rest %q, %v", rest, err)
	}
}

// TestWebSocket upgrades through the proxy and exchanges messages.
func TestWebSocket(t *testing.T) {
	backend := httptest.NewServer(websocket.Handler(func(ws *websocket.Conn) {
		_, _ = io.Copy(ws, ws)
	}))
	t.Cleanup(backend.Close)
	table := newTable(t, poolSpec{storage.Pool{Name: "ws", Hosts: []string{"ws.test"}}, []string{backend.URL}})
	p := startProxy(t, testConfig(), table, nil, nil)

	cfg, err := websocket.NewConfig("ws://ws.test/echo", "http://ws.test/")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.Dial("tcp", p.http)
	if err != nil {
		t.Fatal(err)
	}
	ws, err := websocket.NewClient(cfg, conn)
	if err != nil {
		t.Fatalf("websocket handshake through the proxy: %v", err)
	}
	defer ws.Close()
	for i := 0; i < 3; i++ {
		msg := fmt.Sprintf("message %d", i)
		if err := websocket.Message.Send(ws, msg); err != nil {
			t.Fatal(err)
		}
		var got string
		if err := websocket.Message.Receive(ws, &got); err != nil {
			t.Fatal(err)
		}
		if got != msg {
			t.Fatalf("echo %q, want %q", got, msg)
		}
	}
}

// TestStreamingBothWays sends a chunked request body piece by piece and
// reads each piece echoed back before sending the next: neither direction
// may be buffered whole.
func TestStreamingBothWays(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		_ = rc.EnableFullDuplex()
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(200)
		_ = rc.Flush()
		buf := make([]byte, 64)
		for {
			n, err := r.Body.Read(buf)
			if n > 0 {
				_, _ = w.Write(bytes.ToUpper(buf[:n]))
				_ = rc.Flush()
			}
			if err != nil {
				return
			}
		}
	}))
	t.Cleanup(backend.Close)
	table := newTable(t, poolSpec{storage.Pool{Name: "dup", Hosts: []string{"dup.test"}}, []string{backend.URL}})
	p := startProxy(t, testConfig(), table, nil, nil)

	conn, err := net.Dial("tcp", p.http)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, "POST /dup HTTP/1.1\r\nHost: dup.test\r\nTransfer-Encoding: chunked\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	tp, err := http.ReadResponse(br, &http.Request{Method: "POST"})
	if err != nil {
		t.Fatal(err)
	}
	if tp.StatusCode != 200 || len(tp.TransferEncoding) == 0 || tp.TransferEncoding[0] != "chunked" {
		t.Fatalf("status %d, transfer encoding %v", tp.StatusCode, tp.TransferEncoding)
	}
	for _, piece := range []string{"alpha", "bravo", "charlie"} {
		fmt.Fprintf(conn, "%x\r\n%s\r\n", len(piece), piece)
		got := make([]byte, len(piece))
		if _, err := io.ReadFull(tp.Body, got); err != nil {
			t.Fatalf("reading echo of %q: %v", piece, err)
		}
		if string(got) != strings.ToUpper(piece) {
			t.Fatalf("echo %q, want %q", got, strings.ToUpper(piece))
		}
	}
	io.WriteString(conn, "0\r\n\r\n")
	rest, err := io.ReadAll(tp.Body)
	if err != nil || len(rest) != 0 {
		t.Fatalf("after the last chunk: %q, %v", rest, err)
	}
}

// TestLargeBodies moves 8 MiB each way with Content-Length and checks the
// bytes.
func TestLargeBodies(t *testing.T) {
	payload := make([]byte, 8<<20)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	sum := sha256.Sum256(payload)
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == "POST" {
			h := sha256.New()
			n, _ := io.Copy(h, r.Body)
			fmt.Fprintf(w, "%d %x", n, h.Sum(nil))
			return
		}
		w.Header().Set("Content-Length", fmt.Sprint(len(payload)))
		_, _ = w.Write(payload)
	}))
	t.Cleanup(backend.Close)
	table := newTable(t, poolSpec{storage.Pool{Name: "big", Hosts: []string{"big.test"}}, []string{backend.URL}})
	p := startProxy(t, testConfig(), table, nil, nil)
	c := client(p.http, nil, false)

	resp, err := c.Post("http://big.test/up", "application/octet-stream", bytes.NewReader(payload))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := readAll(t, resp), fmt.Sprintf("%d %x", len(payload), sum); got != want {
		t.Fatalf("upload: backend saw %q, want %q", got, want)
	}
	resp = get(t, c, "http://big.test/down")
	body := readAll(t, resp)
	if sha256.Sum256([]byte(body)) != sum {
		t.Fatalf("download corrupted: %d bytes", len(body))
	}
}

// TestRetries: idempotent requests move on to another backend when the
// first refuses connections; a POST with a body is not retried.
func TestRetries(t *testing.T) {
	live := newEcho(t, "live")
	dead := "http://" + deadAddr(t)
	table := newTable(t, poolSpec{storage.Pool{Name: "r", Hosts: []string{"r.test"}}, []string{dead, live.URL}})
	p := startProxy(t, testConfig(), table, nil, nil)
	c := client(p.http, nil, false)

	for i := 0; i < 6; i++ {
		for _, m := range []string{"GET", "HEAD", "OPTIONS", "PUT", "DELETE"} {
			req, _ := http.NewRequest(m, "http://r.test/idem", nil)
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			readAll(t, resp)
			if resp.StatusCode != 200 || resp.Header.Get("X-Backend") != "live" {
				t.Fatalf("%s #%d: status %d from %q", m, i, resp.StatusCode, resp.Header.Get("X-Backend"))
			}
		}
	}
	var ok, bad int
	for i := 0; i < 6; i++ {
		resp, err := c.Post("http://r.test/post", "text/plain", strings.NewReader("payload"))
		if err != nil {
			t.Fatal(err)
		}
		body := readAll(t, resp)
		switch resp.StatusCode {
		case 200:
			ok++
		case 502:
			bad++
			if !strings.Contains(body, "bad gateway") {
				t.Fatalf("502 body %q", body)
			}
		default:
			t.Fatalf("POST status %d", resp.StatusCode)
		}
	}
	// A refused connection means nothing was sent: the POST goes to the
	// live backend like nginx's proxy_next_upstream error does.
	if ok != 6 || bad != 0 {
		t.Fatalf("POSTs: %d ok, %d 502; want 6 and 0", ok, bad)
	}
	deadB := table.Pool("r").Backend("r-1")
	if st := deadB.State(); st.TotalFailures < 3 {
		t.Fatalf("dead backend failures recorded: %d", st.TotalFailures)
	}
}

// TestErrorAnswers checks the 503, 502 and 404 answers and their bodies.
func TestErrorAnswers(t *testing.T) {
	table := newTable(t,
		poolSpec{storage.Pool{Name: "empty", Hosts: []string{"empty.test"}}, nil},
		poolSpec{storage.Pool{Name: "down", Hosts: []string{"down.test"}}, []string{"http://" + deadAddr(t)}},
	)
	p := startProxy(t, testConfig(), table, nil, nil)
	c := client(p.http, nil, false)
	for _, tc := range []struct {
		host   string
		status int
		text   string
	}{
		{"empty.test", 503, "no healthy backend"},
		{"down.test", 502, "bad gateway"},
		{"missing.test", 404, "no pool serves this host"},
	} {
		resp := get(t, c, "http://"+tc.host+"/")
		body := readAll(t, resp)
		if resp.StatusCode != tc.status || !strings.Contains(body, tc.text) || resp.Header.Get("Content-Type") != "text/plain; charset=utf-8" {
			t.Errorf("%s: %d %q", tc.host, resp.StatusCode, body)
		}
	}
}

// TestGatewayTimeout: a backend that never answers yields 504.
func TestGatewayTimeout(t *testing.T) {
	hang := make(chan struct{})
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-hang }))
	t.Cleanup(func() { close(hang); backend.Close() })
	table := newTable(t, poolSpec{storage.Pool{Name: "slow", Hosts: []string{"slow.test"}}, []string{backend.URL}})
	cfg := testConfig()
	cfg.ResponseHeaderTimeout = 200 * time.Millisecond
	p := startProxy(t, cfg, table, nil, nil)
	resp := get(t, client(p.http, nil, false), "http://slow.test/")
	if body := readAll(t, resp); resp.StatusCode != 504 || !strings.Contains(body, "gateway timeout") {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
}

// TestSlowloris: a client sending its head byte by byte is cut by
// ReadHeaderTimeout although every byte arrives well within IdleTimeout.
func TestSlowloris(t *testing.T) {
	backend := newEcho(t, "b")
	table := newTable(t, poolSpec{storage.Pool{Name: "s", Hosts: []string{"s.test"}}, []string{backend.URL}})
	cfg := testConfig()
	cfg.ReadHeaderTimeout = 300 * time.Millisecond
	p := startProxy(t, cfg, table, nil, nil)

	conn, err := net.Dial("tcp", p.http)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	closed := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, conn)
		close(closed)
	}()
	head := "GET / HTTP/1.1\r\nHost: s.test\r\nX-Slow: " + strings.Repeat("a", 10000)
	sent := 0
	for ; sent < len(head); sent++ {
		select {
		case <-closed:
		default:
			if _, err := conn.Write([]byte{head[sent]}); err == nil {
				time.Sleep(20 * time.Millisecond)
				continue
			}
		}
		break
	}
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("slow client was not cut")
	}
	if sent >= len(head) {
		t.Fatal("the whole head was sent before the connection was cut")
	}
}

// TestHopByHopAndForwardedHeaders checks what the backend and the client
// see with a raw backend, so nothing in between hides a header.
func TestHopByHopAndForwardedHeaders(t *testing.T) {
	gotReq := make(chan string, 1)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func(c net.Conn) {
				defer c.Close()
				br := bufio.NewReader(c)
				var head strings.Builder
				for {
					line, err := br.ReadString('\n')
					if err != nil {
						return
					}
					head.WriteString(line)
					if line == "\r\n" {
						break
					}
				}
				gotReq <- head.String()
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive, X-Resp-Hop\r\nX-Resp-Hop: secret\r\nKeep-Alive: timeout=5\r\nProxy-Authenticate: Basic\r\nTrailer: X-T\r\nX-Request-Id: backend-id\r\nX-Kept: yes\r\n\r\nok")
			}(c)
		}
	}()
	table := newTable(t, poolSpec{storage.Pool{Name: "h", Hosts: []string{"h.test"}}, []string{"http://" + ln.Addr().String()}})
	p := startProxy(t, testConfig(), table, nil, nil)

	req := "GET /path?q=1 HTTP/1.1\r\nHost: h.test:8080\r\n" +
		"Connection: keep-alive, X-Hop\r\nX-Hop: drop me\r\nKeep-Alive: timeout=5\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\n" +
		"Proxy-Connection: keep-alive\r\nTE: trailers\r\nTrailer: X-T\r\nUpgrade: h2c\r\n" +
		"X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: gopher\r\nX-Forwarded-Host: evil.test\r\n" +
		"X-Request-Id: client-id-42\r\nX-Kept: 1\r\nCookie: a=b\r\n\r\n"
	conn, err := net.Dial("tcp", p.http)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	io.WriteString(conn, req)
	resp, body := readResponse(t, bufio.NewReader(conn), "GET")
	head := <-gotReq

	lines := strings.Split(strings.TrimSpace(head), "\r\n")
	if lines[0] != "GET /path?q=1 HTTP/1.1" {
		t.Fatalf("request line %q", lines[0])
	}
	hdr := map[string][]string{}
	for _, l := range lines[1:] {
		k, v, _ := strings.Cut(l, ": ")
		hdr[strings.ToLower(k)] = append(hdr[strings.ToLower(k)], v)
	}
	for _, gone := range []string{"connection", "x-hop", "keep-alive", "proxy-authorization", "proxy-connection", "te", "trailer", "upgrade"} {
		if v, ok := hdr[gone]; ok {
			t.Errorf("backend got hop-by-hop header %s: %v", gone, v)
		}
	}
	want := map[string]string{
		"host":              "h.test:8080",
		"x-forwarded-for":   "127.0.0.1", // the client is not a trusted proxy: replaced
		"forwarded":         "for=127.0.0.1;proto=http",
		"x-forwarded-proto": "http",
		"x-forwarded-host":  "h.test:8080",
		"x-request-id":      "client-id-42",
		"x-kept":            "1",
		"cookie":            "a=b",
	}
	for k, v := range want {
		if got := hdr[k]; len(got) != 1 || got[0] != v {
			t.Errorf("backend header %s = %v, want %q", k, got, v)
		}
	}
	if body != "ok" || resp.Header.Get("X-Kept") != "yes" || resp.Header.Get("X-Request-Id") != "client-id-42" {
		t.Fatalf("response %d %q headers %v", resp.StatusCode, body, resp.Header)
	}
	for _, gone := range []string{"X-Resp-Hop", "Keep-Alive", "Proxy-Authenticate", "Trailer", "Connection"} {
		if v := resp.Header.Values(gone); len(v) > 0 {
			t.Errorf("client got hop-by-hop header %s: %v", gone, v)
		}
	}
	if ids := resp.Header.Values("X-Request-Id"); len(ids) != 1 {
		t.Errorf("X-Request-Id values %v", ids)
	}

	// Without an incoming id one is generated, sent upstream and echoed.
	io.WriteString(conn, "GET / HTTP/1.1\r\nHost: h.test\r\n\r\n")
	resp, _ = readResponse(t, bufio.NewReader(conn), "GET")
	head = <-gotReq
	id := resp.Header.Get("X-Request-Id")
	if len(id) != 32 || !strings.Contains(head, "X-Request-Id: "+id+"\r\n") || !strings.Contains(head, "X-Forwarded-For: 127.0.0.1\r\n") {
		t.Fatalf("generated id %q; backend head:\n%s", id, head)
	}
}

// TestMalformedRequests checks strict parsing answers.
func TestMalformedRequests(t *testing.T) {
	backend := newEcho(t, "b")
	table := newTable(t, poolSpec{storage.Pool{Name: "m", Hosts: []string{"m.test"}}, []string{backend.URL}})
	cfg := testConfig()
	cfg.MaxRequestHeaderBytes = 2048
	p := startProxy(t, cfg, table, nil, nil)
	for _, tc := range []struct {
		name, req string
		status    string
	}{
		{"no host", "GET / HTTP/1.1\r\n\r\n", "400"},
		{"two hosts", "GET / HTTP/1.1\r\nHost: m.test\r\nHost: m.test\r\n\r\n", "400"},
		{"space before colon", "GET / HTTP/1.1\r\nHost : m.test\r\n\r\n", "400"},
		{"obs-fold", "GET / HTTP/1.1\r\nHost: m.test\r\nX: a\r\n b\r\n\r\n", "400"},
		{"CL and TE", "POST / HTTP/1.1\r\nHost: m.test\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "400"},
		{"conflicting CL", "POST / HTTP/1.1\r\nHost: m.test\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", "400"},
		{"gzip TE", "POST / HTTP/1.1\r\nHost: m.test\r\nTransfer-Encoding: gzip\r\n\r\n", "501"},
		{"bad chunk", "POST / HTTP/1.1\r\nHost: m.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "400"},
		{"HTTP/2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "505"},
		{"CONNECT", "CONNECT m.test:443 HTTP/1.1\r\nHost: m.test:443\r\n\r\n", "405"},
		{"huge head", "GET / HTTP/1.1\r\nHost: m.test\r\nX: " + strings.Repeat("a", 4096) + "\r\n\r\n", "431"},
		{"bare LF", "GET / HTTP/1.1\nHost: m.test\n\n", "400"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := rawExchange(t, p.http, tc.req, 2*time.Second)
			if !strings.HasPrefix(out, "HTTP/1.1 "+tc.status+" ") {
				t.Fatalf("got %q", out)
			}
		})
	}
}

// TestPipeliningAndHTTP10 sends two requests in one write and an HTTP/1.0
// request whose chunked response must be de-chunked.
func TestPipeliningAndHTTP10(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/chunked" {
			_, _ = io.WriteString(w, "part1-")
			w.(http.Flusher).Flush()
			_, _ = io.WriteString(w, "part2")
			return
		}
		fmt.Fprintf(w, "path=%s", r.URL.Path)
	}))
	t.Cleanup(backend.Close)
	table := newTable(t, poolSpec{storage.Pool{Name: "p", Hosts: []string{"p.test"}}, []string{backend.URL}})
	p := startProxy(t, testConfig(), table, nil, nil)

	conn, err := net.Dial("tcp", p.http)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	io.WriteString(conn, "GET /one HTTP/1.1\r\nHost: p.test\r\n\r\nGET /two HTTP/1.1\r\nHost: p.test\r\n\r\n")
	br := bufio.NewReader(conn)
	for _, want := range []string{"path=/one", "path=/two"} {
		if _, body := readResponse(t, br, "GET"); body != want {
			t.Fatalf("pipelined body %q, want %q", body, want)
		}
	}

	out := rawExchange(t, p.http, "GET /chunked HTTP/1.0\r\nHost: p.test\r\n\r\n", 2*time.Second)
	if !strings.HasSuffix(out, "\r\n\r\npart1-part2") || strings.Contains(strings.ToLower(out), "transfer-encoding") || !strings.Contains(out, "Connection: close") {
		t.Fatalf("HTTP/1.0 answer %q", out)
	}
}

// TestProxyProtocol: PROXY v1 and v2 headers on listeners that enable them
// set the client address; malformed ones close the connection; a listener
// without the option treats them as a bad request.
func TestProxyProtocol(t *testing.T) {
	ca := newTestCA(t)
	certs := &testCerts{}
	certs.add("pp.test", ca.issue(t, "pp.test"))
	backend := newEcho(t, "pp")
	table := newTable(t, poolSpec{storage.Pool{Name: "pp", SSLMode: "flexible", SSLDomain: "pp.test", AllowHTTP: true}, []string{backend.URL}})
	cfg := testConfig()
	cfg.HTTPProxyProtocol = true
	cfg.HTTPSProxyProtocol = true
	p := startProxy(t, cfg, table, certs, nil)
	plain := startProxy(t, testConfig(), table, certs, nil)

	v2 := func(src, dst [4]byte, sport, dport uint16) []byte {
		b := append([]byte{}, proxyV2Signature...)
		b = append(b, 0x21, 0x11, 0, 12)
		b = append(b, src[:]...)
		b = append(b, dst[:]...)
		b = append(b, byte(sport>>8), byte(sport), byte(dport>>8), byte(dport))
		return b
	}
	req := "GET / HTTP/1.1\r\nHost: pp.test\r\n\r\n"
	for _, tc := range []struct {
		name, header, wantIP string
	}{
		{"v1 tcp4", "PROXY TCP4 198.51.100.1 10.0.0.1 5555 80\r\n", "198.51.100.1"},
		{"v1 tcp6", "PROXY TCP6 2001:db8::1 2001:db8::2 5555 80\r\n", "2001:db8::1"},
		{"v1 unknown", "PROXY UNKNOWN\r\n", "127.0.0.1"},
		{"v2 tcp4", string(v2([4]byte{192, 0, 2, 9}, [4]byte{10, 0, 0, 1}, 4000, 80)), "192.0.2.9"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := net.Dial("tcp", p.http)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			io.WriteString(conn, tc.header+req)
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				t.Fatal(err)
			}
			if e := decodeEcho(t, resp); e.Header["X-Forwarded-For"][0] != tc.wantIP {
				t.Fatalf("X-Forwarded-For %v, want %s", e.Header["X-Forwarded-For"], tc.wantIP)
			}
		})
	}
	t.Run("v2 then TLS", func(t *testing.T) {
		raw, err := net.Dial("tcp", p.https)
		if err != nil {
			t.Fatal(err)
		}
		defer raw.Close()
		raw.Write(v2([4]byte{192, 0, 2, 77}, [4]byte{10, 0, 0, 1}, 4000, 443))
		tc := tls.Client(raw, &tls.Config{ServerName: "pp.test", RootCAs: ca.pool, NextProtos: []string{"http/1.1"}})
		io.WriteString(tc, req)
		resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
		if err != nil {
			t.Fatal(err)
		}
		if e := decodeEcho(t, resp); e.Header["X-Forwarded-For"][0] != "192.0.2.77" || e.Header["X-Forwarded-Proto"][0] != "https" {
			t.Fatalf("echo %+v", e)
		}
	})
	for _, bad := range []string{"PROXY TCP4 1.2.3.4\r\n", "PROXY TCP4 999.1.1.1 1.1.1.1 1 2\r\n", "GET / HTTP/1.1\r\n", "\r\n\r\n\x00\r\nQUIT\n\x31\x11\x00\x0c"} {
		t.Run(fmt.Sprintf("malformed %q", bad), func(t *testing.T) {
			out := rawExchange(t, p.http, bad+req, 2*time.Second)
			if out != "" {
				t.Fatalf("malformed PROXY header answered with %q", out)
			}
		})
	}
	t.Run("not enabled", func(t *testing.T) {
		out := rawExchange(t, plain.http, "PROXY TCP4 198.51.100.1 10.0.0.1 5555 80\r\n"+req, 2*time.Second)
		if !strings.HasPrefix(out, "HTTP/1.1 400 ") {
			t.Fatalf("listener without PROXY support answered %q", out)
		}
	})
}

// TestProxyProtocolFrom: a PROXY header names the client only when the
// peer that sent it is in ProxyProtocolFrom; from any other peer (on Fly,
// another Machine of the organization reaching the listener directly) the
// header is still required and checked, but the client stays the TCP peer,
// so that the address cannot be forged.
func TestProxyProtocolFrom(t *testing.T) {
	backend := newEcho(t, "pp")
	table := newTable(t, poolSpec{storage.Pool{Name: "pp", Hosts: []string{"pp.test"}}, []string{backend.URL}})
	req := "GET / HTTP/1.1\r\nHost: pp.test\r\n\r\n"
	forged := "PROXY TCP4 198.51.100.1 10.0.0.1 5555 80\r\n"
	for _, tc := range []struct {
		name        string
		from        []netip.Prefix
		wantIP      string
		wantIgnored float64
	}{
		{"default: loopback believed", nil, "198.51.100.1", 0},
		{"peer listed", []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, "198.51.100.1", 0},
		{"peer not listed", []netip.Prefix{netip.MustParsePrefix("172.16.0.0/12")}, "127.0.0.1", 1},
		{"nobody believed", []netip.Prefix{}, "127.0.0.1", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig()
			cfg.HTTPProxyProtocol = true
			cfg.ProxyProtocolFrom = tc.from
			p := startProxy(t, cfg, table, nil, nil)
			conn, err := net.Dial("tcp", p.http)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			io.WriteString(conn, forged+req)
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				t.Fatal(err)
			}
			if e := decodeEcho(t, resp); e.Header["X-Forwarded-For"][0] != tc.wantIP {
				t.Fatalf("X-Forwarded-For %v, want %s", e.Header["X-Forwarded-For"], tc.wantIP)
			}
			if got := testutil.ToFloat64(p.metrics.proxyHeadersIgnored); got != tc.wantIgnored {
				t.Fatalf("ignored PROXY headers counted %v, want %v", got, tc.wantIgnored)
			}
			// The header stays required from every peer.
			if out := rawExchange(t, p.http, req, 2*time.Second); out != "" {
				t.Fatalf("a connection without a PROXY header was answered %q", out)
			}
		})
	}
}

// TestStickyCookie: the first answer pins the client, later requests with
// the cookie go to the same backend and get no new cookie.
func TestStickyCookie(t *testing.T) {
	a, b := newEcho(t, "a"), newEcho(t, "b")
	table := newTable(t, poolSpec{storage.Pool{Name: "st", Hosts: []string{"st.test"}, StickyCookie: "edge_sticky"}, []string{a.URL, b.URL}})
	p := startProxy(t, testConfig(), table, nil, nil)
	c := client(p.http, nil, false)
	resp := get(t, c, "http://st.test/")
	first := resp.Header.Get("X-Backend")
	readAll(t, resp)
	cookie := resp.Header.Get("Set-Cookie")
	if !strings.HasPrefix(cookie, "edge_sticky=") || !strings.Contains(cookie, "HttpOnly") {
		t.Fatalf("Set-Cookie %q", cookie)
	}
	value := strings.TrimPrefix(strings.Split(cookie, ";")[0], "edge_sticky=")
	for i := 0; i < 4; i++ {
		req, _ := http.NewRequest("GET", "http://st.test/", nil)
		req.Header.Set("Cookie", "other=1; edge_sticky="+value)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		readAll(t, resp)
		if resp.Header.Get("X-Backend") != first || resp.Header.Get("Set-Cookie") != "" {
			t.Fatalf("request %d went to %q (pinned to %q), Set-Cookie %q", i, resp.Header.Get("X-Backend"), first, resp.Header.Get("Set-Cookie"))
		}
	}
}

// TestConsistentHashHeader: the same header value always reaches the same
// backend.
func TestConsistentHashHeader(t *testing.T) {
	var urls []string
	for i := 0; i < 4; i++ {
		urls = append(urls, newEcho(t, fmt.Sprintf("b%d", i)).URL)
	}
	table := newTable(t, poolSpec{storage.Pool{Name: "ch", Algorithm: "consistent_hash", HashOn: "header:X-User", Hosts: []string{"ch.test"}}, urls})
	p := startProxy(t, testConfig(), table, nil, nil)
	c := client(p.http, nil, false)
	seen := map[string]bool{}
	for _, user := range []string{"alice", "bob", "carol", "dave", "erin", "frank"} {
		var first string
		for i := 0; i < 3; i++ {
			req, _ := http.NewRequest("GET", "http://ch.test/", nil)
			req.Header.Set("X-User", user)
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			readAll(t, resp)
			got := resp.Header.Get("X-Backend")
			if i == 0 {
				first = got
			} else if got != first {
				t.Fatalf("user %s moved from %s to %s", user, first, got)
			}
		}
		seen[first] = true
	}
	if len(seen) < 2 {
		t.Fatalf("6 users all hashed to %v", seen)
	}
}

// TestXPoolHeader: honoured only when enabled.
func TestXPoolHeader(t *testing.T) {
	a, b := newEcho(t, "a"), newEcho(t, "b")
	table := newTable(t,
		poolSpec{storage.Pool{Name: "pa", Hosts: []string{"a.test"}}, []string{a.URL}},
		poolSpec{storage.Pool{Name: "pb", Hosts: []string{"b.test"}}, []string{b.URL}},
	)
	for _, allow := range []bool{false, true} {
		cfg := testConfig()
		cfg.AllowPoolHeader = allow
		p := startProxy(t, cfg, table, nil, nil)
		req, _ := http.NewRequest("GET", "http://a.test/", nil)
		req.Header.Set("X-Pool", "pb")
		resp, err := client(p.http, nil, false).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		readAll(t, resp)
		want := "a"
		if allow {
			want = "b"
		}
		if got := resp.Header.Get("X-Backend"); got != want {
			t.Fatalf("AllowPoolHeader=%v: backend %q, want %q", allow, got, want)
		}
	}
}

// TestShutdown: in-flight requests finish, idle connections close, new
// connections are refused.
func TestShutdown(t *testing.T) {
	entered := make(chan struct{})
	release := make(chan struct{})
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			close(entered)
			<-release
		}
		io.WriteString(w, "done")
	}))
	t.Cleanup(backend.Close)
	table := newTable(t, poolSpec{storage.Pool{Name: "sd", Hosts: []string{"sd.test"}}, []string{backend.URL}})
	r := &testRouter{}
	r.t.Store(table)
	s, err := New(testConfig(), r, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	addr, _ := s.Addrs()

	idle, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	io.WriteString(idle, "GET / HTTP/1.1\r\nHost: sd.test\r\n\r\n")
	idleBR := bufio.NewReader(idle)
	readResponse(t, idleBR, "GET")

	result := make(chan string, 1)
	go func() {
		resp, err := client(addr.String(), nil, false).Get("http://sd.test/slow")
		if err != nil {
			result <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		result <- string(b)
	}()
	<-entered
	shutdownErr := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		shutdownErr <- s.Shutdown(ctx)
	}()
	// The idle keep-alive connection is closed by the server.
	_ = idle.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := idleBR.ReadByte(); err == nil {
		t.Fatal("idle connection got data instead of being closed")
	}
	waitFor(t, "listener closed", func() bool {
		c, err := net.Dial("tcp", addr.String())
		if err != nil {
			return true
		}
		c.Close()
		return false
	})
	close(release)
	if got := <-result; got != "done" {
		t.Fatalf("in-flight request got %q", got)
	}
	if err := <-shutdownErr; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
}

// TestShutdownDeadline: connections still busy at the deadline are cut.
func TestShutdownDeadline(t *testing.T) {
	entered := make(chan struct{})
	hang := make(chan struct{})
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		<-hang
	}))
	t.Cleanup(func() { close(hang); backend.Close() })
	table := newTable(t, poolSpec{storage.Pool{Name: "sd", Hosts: []string{"sd.test"}}, []string{backend.URL}})
	r := &testRouter{}
	r.t.Store(table)
	s, err := New(testConfig(), r, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	addr, _ := s.Addrs()
	done := make(chan error, 1)
	go func() {
		resp, err := client(addr.String(), nil, false).Get("http://sd.test/")
		if err == nil {
			resp.Body.Close()
		}
		done <- err
	}()
	<-entered
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := s.Shutdown(ctx); err == nil {
		t.Fatal("Shutdown reported a clean drain with a request stuck")
	}
	if err := <-done; err == nil {
		t.Fatal("stuck request completed")
	}
}

// TestPassthroughRetry: a dead passthrough backend is skipped.
func TestPassthroughRetry(t *testing.T) {
	ca := newTestCA(t)
	live := httptest.NewUnstartedServer(echoHandler("pt"))
	live.TLS = &tls.Config{Certificates: []tls.Certificate{ca.issue(t, "pt.test")}}
	live.StartTLS()
	t.Cleanup(live.Close)
	table := newTable(t, poolSpec{storage.Pool{Name: "pt", SSLMode: "passthrough", SSLDomain: "pt.test"}, []string{"https://" + deadAddr(t), live.URL}})
	p := startProxy(t, testConfig(), table, nil, nil)
	c := client(p.https, ca.pool, false)
	for i := 0; i < 4; i++ {
		c.CloseIdleConnections()
		if e := decodeEcho(t, get(t, c, "https://pt.test/")); e.Backend != "pt" {
			t.Fatalf("echo %+v", e)
		}
	}
	c.CloseIdleConnections()
}

// TestBackendKeepAlive: backend connections are reused across requests.
func TestBackendKeepAlive(t *testing.T) {
	var conns atomic.Int64
	backend := httptest.NewUnstartedServer(echoHandler("ka"))
	backend.Config.ConnState = func(c net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	backend.Start()
	t.Cleanup(backend.Close)
	table := newTable(t, poolSpec{storage.Pool{Name: "ka", Hosts: []string{"ka.test"}}, []string{backend.URL}})
	p := startProxy(t, testConfig(), table, nil, nil)
	c := client(p.http, nil, false)
	for i := 0; i < 20; i++ {
		readAll(t, get(t, c, "http://ka.test/"))
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("20 sequential requests opened %d backend connections", n)
	}
}

// TestStaleBackendConnection: a pooled connection closed by the backend is
// replaced transparently for a GET.
func TestStaleBackendConnection(t *testing.T) {
	backend := httptest.NewUnstartedServer(echoHandler("stale"))
	backend.Config.IdleTimeout = 50 * time.Millisecond
	backend.Start()
	t.Cleanup(backend.Close)
	table := newTable(t, poolSpec{storage.Pool{Name: "st", Hosts: []string{"st.test"}}, []string{backend.URL}})
	p := startProxy(t, testConfig(), table, nil, nil)
	c := client(p.http, nil, false)
	for i := 0; i < 3; i++ {
		resp := get(t, c, "http://st.test/")
		readAll(t, resp)
		if resp.StatusCode != 200 {
			t.Fatalf("request %d: %d", i, resp.StatusCode)
		}
		time.Sleep(150 * time.Millisecond) // the backend closes the idle connection
	}
	for i := 0; i < 3; i++ {
		resp, err := c.Post("http://st.test/", "text/plain", strings.NewReader("x"))
		if err != nil {
			t.Fatal(err)
		}
		readAll(t, resp)
		if resp.StatusCode != 200 {
			t.Fatalf("POST %d after idle: %d", i, resp.StatusCode)
		}
		time.Sleep(150 * time.Millisecond)
	}
}

// TestTableSwap: a new routing table takes effect for the next request on
// the same client connection.
func TestTableSwap(t *testing.T) {
	a, b := newEcho(t, "a"), newEcho(t, "b")
	p := startProxy(t, testConfig(), newTable(t, poolSpec{storage.Pool{Name: "x", Hosts: []string{"x.test"}}, []string{a.URL}}), nil, nil)
	c := client(p.http, nil, false)
	if e := decodeEcho(t, get(t, c, "http://x.test/")); e.Backend != "a" {
		t.Fatalf("before swap: %s", e.Backend)
	}
	p.router.t.Store(newTable(t, poolSpec{storage.Pool{Name: "x", Hosts: []string{"x.test"}}, []string{b.URL}}))
	if e := decodeEcho(t, get(t, c, "http://x.test/")); e.Backend != "b" {
		t.Fatalf("after swap: %s", e.Backend)
	}
}

// TestNewValidates rejects bad configuration.
func TestNewValidates(t *testing.T) {
	r := &testRouter{}
	r.t.Store(pools.EmptyTable())
	for name, mut := range map[string]func(*Config){
		"no listeners":   func(c *Config) { c.HTTPAddr, c.HTTPSAddr = "", "" },
		"zero timeout":   func(c *Config) { c.ReadHeaderTimeout = 0 },
		"bad access log": func(c *Config) { c.AccessLog = "sometimes" },
		"bad sample":     func(c *Config) { c.AccessLog = "sample:0" },
		"tiny head":      func(c *Config) { c.MaxRequestHeaderBytes = 10 },
	} {
		cfg := testConfig()
		mut(&cfg)
		if _, err := New(cfg, r, nil, nil); err == nil {
			t.Errorf("%s: New accepted it", name)
		}
	}
	if _, err := New(testConfig(), nil, nil, nil); err == nil {
		t.Error("nil router accepted")
	}
}

// TestShutdownHTTP2: an idle HTTP/2 connection gets GOAWAY and closes, so
// Shutdown drains without hitting its deadline.
func TestShutdownHTTP2(t *testing.T) {
	ca := newTestCA(t)
	certs := &testCerts{}
	certs.add("h2.test", ca.issue(t, "h2.test"))
	backend := newEcho(t, "h2")
	table := newTable(t, poolSpec{storage.Pool{Name: "h2", SSLMode: "flexible", SSLDomain: "h2.test"}, []string{backend.URL}})
	r := &testRouter{}
	r.t.Store(table)
	s, err := New(testConfig(), r, certs, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	_, addr := s.Addrs()
	c := client(addr.String(), ca.pool, true)
	resp := get(t, c, "https://h2.test/")
	if resp.ProtoMajor != 2 {
		t.Fatalf("proto %s", resp.Proto)
	}
	readAll(t, resp)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown with an idle HTTP/2 connection: %v", err)
	}
}

// TestSlowUploadNotTimedOut: ResponseHeaderTimeout counts from the end of
// the request body, so an upload slower than it still gets its answer.
func TestSlowUploadNotTimedOut(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "got %d", n)
	}))
	t.Cleanup(backend.Close)
	table := newTable(t, poolSpec{storage.Pool{Name: "up", Hosts: []string{"up.test"}}, []string{backend.URL}})
	cfg := testConfig()
	cfg.ResponseHeaderTimeout = 200 * time.Millisecond
	p := startProxy(t, cfg, table, nil, nil)
	pr, pw := io.Pipe()
	go func() {
		for i := 0; i < 5; i++ {
			_, _ = pw.Write(bytes.Repeat([]byte("x"), 100))
			time.Sleep(150 * time.Millisecond)
		}
		pw.Close()
	}()
	resp, err := client(p.http, nil, false).Post("http://up.test/", "application/octet-stream", pr)
	if err != nil {
		t.Fatal(err)
	}
	if body := readAll(t, resp); resp.StatusCode != 200 || body != "got 500" {
		t.Fatalf("slow upload: %d %q", resp.StatusCode, body)
	}
}

// A TLS pool with allow_http is proxied over plain HTTP too, while its
// neighbour without it is redirected: the choice is per pool.
func TestAllowHTTPIsPerPool(t *testing.T) {
	ca := newTestCA(t)
	certs := &testCerts{}
	certs.add("open.test", ca.issue(t, "open.test"))
	certs.add("strict.test", ca.issue(t, "strict.test"))
	open, strict := newEcho(t, "open"), newEcho(t, "strict")
	table := newTable(t,
		poolSpec{storage.Pool{Name: "open", SSLMode: "flexible", SSLDomain: "open.test", AllowHTTP: true}, []string{open.URL}},
		poolSpec{storage.Pool{Name: "strict", SSLMode: "flexible", SSLDomain: "strict.test"}, []string{strict.URL}},
	)
	cfg := testConfig()
	cfg.RedirectHTTPSPort = 443 // the public port (behind a port-mapping proxy): left out
	p := startProxy(t, cfg, table, certs, nil)
	c := client(p.http, nil, false)
	if resp := get(t, c, "http://open.test/x"); resp.StatusCode != http.StatusOK {
		t.Fatalf("allow_http pool over plain HTTP: %d", resp.StatusCode)
	} else {
		readAll(t, resp)
	}
	resp := get(t, c, "http://strict.test/x")
	readAll(t, resp)
	if resp.StatusCode != http.StatusMovedPermanently || resp.Header.Get("Location") != "https://strict.test/x" {
		t.Fatalf("TLS pool without allow_http: %d %q", resp.StatusCode, resp.Header.Get("Location"))
	}
}
