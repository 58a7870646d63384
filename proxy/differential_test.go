package proxy

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/singularity-ng/singularity-edge/storage"
)

// differentialCorpus holds request streams (several requests pipelined on
// one connection where it matters): smuggling classics, chunk and trailer
// variants, bare CR and LF, obs-fold, pipelining.
var differentialCorpus = []string{
	"GET / HTTP/1.1\r\nHost: d.test\r\n\r\n",
	"GET /a HTTP/1.1\r\nHost: d.test\r\n\r\nGET /b HTTP/1.1\r\nHost: d.test\r\n\r\n",
	"POST /p HTTP/1.1\r\nHost: d.test\r\nContent-Length: 5\r\n\r\nhelloGET /next HTTP/1.1\r\nHost: d.test\r\n\r\n",
	// CL.TE and TE.CL.
	"POST /clte HTTP/1.1\r\nHost: d.test\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
	"POST /tecl HTTP/1.1\r\nHost: d.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n",
	// Obfuscated Transfer-Encoding.
	"POST /te HTTP/1.1\r\nHost: d.test\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
	"POST /te HTTP/1.1\r\nHost: d.test\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
	"POST /te HTTP/1.1\r\nHost: d.test\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n",
	"POST /te HTTP/1.1\r\nHost: d.test\r\nTransfer-Encoding:\tchunked\r\n\r\n0\r\n\r\n",
	"POST /te HTTP/1.1\r\nHost: d.test\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
	// Content-Length variants.
	"POST /cl HTTP/1.1\r\nHost: d.test\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
	"POST /cl HTTP/1.1\r\nHost: d.test\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
	"POST /cl HTTP/1.1\r\nHost: d.test\r\nContent-Length: +3\r\n\r\nabc",
	"POST /cl HTTP/1.1\r\nHost: d.test\r\nContent-Length: 3, 3\r\n\r\nabc",
	"POST /cl HTTP/1.1\r\nHost: d.test\r\nContent-Length: 0x3\r\n\r\nabc",
	// Chunk variants.
	"POST /c HTTP/1.1\r\nHost: d.test\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n0\r\n\r\n",
	"POST /c HTTP/1.1\r\nHost: d.test\r\nTransfer-Encoding: chunked\r\n\r\n5 ;a\r\nhello\r\n0\r\nT: v\r\n\r\nGET /after HTTP/1.1\r\nHost: d.test\r\n\r\n",
	"POST /c HTTP/1.1\r\nHost: d.test\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
	"POST /c HTTP/1.1\r\nHost: d.test\r\nTransfer-Encoding: chunked\r\n\r\n5xyz\r\nhello\r\n0\r\n\r\n",
	"POST /c HTTP/1.1\r\nHost: d.test\r\nTransfer-Encoding: chunked\r\n\r\n2 2\r\nab\r\n0\r\n\r\n",
	"POST /c HTTP/1.1\r\nHost: d.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\n0\r\n\r\n",
	"POST /c HTTP/1.1\r\nHost: d.test\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
	"POST /c HTTP/1.1\r\nHost: d.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nGET /smuggled HTTP/1.1\r\nHost: d.test\r\n\r\n",
	"POST /c HTTP/1.1\r\nHost: d.test\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\n",
	// Bare CR/LF, obs-fold, whitespace.
	"GET /lf HTTP/1.1\nHost: d.test\n\n",
	"GET /cr HTTP/1.1\rHost: d.test\r\n\r\n",
	"GET /fold HTTP/1.1\r\nHost: d.test\r\nX-A: 1\r\n 2\r\n\r\n",
	"GET /ws HTTP/1.1\r\nHost: d.test\r\nX-A : 1\r\n\r\n",
	"GET /nul HTTP/1.1\r\nHost: d.test\r\nX-A: \x00\r\n\r\n",
	"GET  /two-spaces HTTP/1.1\r\nHost: d.test\r\n\r\n",
	"GET /v HTTP/1.2\r\nHost: d.test\r\n\r\n",
	// Host.
	"GET /h HTTP/1.1\r\nHost: d.test\r\nHost: other.test\r\n\r\n",
	"GET /h HTTP/1.1\r\n\r\n",
	"GET /h10 HTTP/1.0\r\nHost: d.test\r\n\r\n",
	// Hop-by-hop tricks.
	"GET /conn HTTP/1.1\r\nHost: d.test\r\nConnection: Content-Length\r\nContent-Length: 3\r\n\r\nabc",
	"GET /conn HTTP/1.1\r\nHost: d.test\r\nConnection: close\r\n\r\nGET /never HTTP/1.1\r\nHost: d.test\r\n\r\n",
	// Trailers: valid ones cross, forbidden ones stay, a request in
	// them is refused.
	"POST /t HTTP/1.1\r\nHost: d.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-Sum: 1\r\nHost: evil.test\r\nContent-Length: 5\r\n\r\nGET /after HTTP/1.1\r\nHost: d.test\r\n\r\n",
	"POST /t HTTP/1.1\r\nHost: d.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-Sum : 1\r\n\r\n",
	"HEAD /head HTTP/1.1\r\nHost: d.test\r\n\r\nGET /after HTTP/1.1\r\nHost: d.test\r\n\r\n",
}

// Backend behaviours of the differential test (mode&diffBackendMask): each
// breaks HTTP/1.1 in a way that must never reach another request.
const (
	beEcho           = iota // well behaved
	beHeadBody              // a body (a whole response) after a HEAD response
	be204Body               // a whole response after a 204
	be304Body               // body bytes after a 304
	beExtraResponse         // an unsolicited response after every answer
	beTransferCoding        // answers with a transfer coding the proxy refuses (502)

	diffBackendMask = 7
	// diffLate sends the misbehaving bytes late: while the backend
	// connection idles in the proxy's pool after the client finished
	// (else they follow the answer in the same write).
	diffLate = 8
	// diffH2 makes the client speak HTTP/2: the input is then a request
	// as header lines "name: value\n" (pseudo-headers included), an empty
	// line and the body (see parseH2Case).
	diffH2 = 16
)

// stolenResponse is what a misbehaving backend sends that no client asked
// for; a client that receives it got another exchange's bytes.
const stolenResponse = "HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nSTOLEN!"

// refusedCodings are the framings beTransferCoding answers with, in turn:
// any Transfer-Encoding but "chunked" alone, or one with a Content-Length.
// The proxy decodes none of them, so each must become a 502; relayed, the
// client would get the body still coded (or, over HTTP/2, with no coding
// named at all).
var refusedCodings = []string{
	"Transfer-Encoding: gzip, chunked\r\n\r\n%[2]x\r\n%[3]s\r\n0\r\n\r\n",
	"Transfer-Encoding: gzip\r\n\r\n%[3]s",
	"Transfer-Encoding: identity\r\n\r\n%[3]s",
	"Transfer-Encoding: chunked, gzip\r\n\r\n%[3]s",
	"Transfer-Encoding: chunked, chunked\r\n\r\n%[2]x\r\n%[3]s\r\n0\r\n\r\n",
	"Content-Length: %[2]d\r\nTransfer-Encoding: chunked\r\n\r\n%[2]x\r\n%[3]s\r\n0\r\n\r\n",
}

// differentialCases adds to the corpus what needs a misbehaving backend
// or an HTTP/2 client.
var differentialCases = []struct {
	in   string
	mode uint8
}{
	{"HEAD /h HTTP/1.1\r\nHost: d.test\r\n\r\nGET /after HTTP/1.1\r\nHost: d.test\r\n\r\n", beHeadBody},
	{"HEAD /h HTTP/1.1\r\nHost: d.test\r\n\r\n", beHeadBody | diffLate},
	{"GET /a HTTP/1.1\r\nHost: d.test\r\n\r\nGET /b HTTP/1.1\r\nHost: d.test\r\n\r\n", be204Body},
	{"GET /a HTTP/1.1\r\nHost: d.test\r\n\r\n", be204Body | diffLate},
	{"GET /a HTTP/1.1\r\nHost: d.test\r\n\r\nGET /b HTTP/1.1\r\nHost: d.test\r\n\r\n", be304Body},
	{"GET /a HTTP/1.1\r\nHost: d.test\r\n\r\n", be304Body | diffLate},
	{"GET /a HTTP/1.1\r\nHost: d.test\r\n\r\nPOST /p HTTP/1.1\r\nHost: d.test\r\nContent-Length: 2\r\n\r\nhi", beExtraResponse},
	{"GET /a HTTP/1.1\r\nHost: d.test\r\n\r\nGET /b HTTP/1.1\r\nHost: d.test\r\n\r\n", beExtraResponse | diffLate},
	// HTTP/2 to HTTP/1.1 translation.
	{":method: GET\n:scheme: https\n:path: /h2\n:authority: d.test\nx-a: 1\ncookie: a=1\ncookie: b=2\n\n", diffH2},
	{":method: POST\n:scheme: https\n:path: /h2post?q=1\n:authority: d.test\ncontent-type: text/plain\n\nhello", diffH2},
	{":method: GET /admin HTTP/1.1\n:scheme: https\n:path: /pub\n:authority: d.test\n\n", diffH2},
	{":method: GET\n:scheme: https\n:path: /a\r\nX-Injected: 1\n:authority: d.test\n\n", diffH2},
	{":method: GET\n:scheme: https\n:path: /a\n:authority: d.test\nx-a: 1\r\nTransfer-Encoding: chunked\n\n", diffH2},
	{":method: GET\n:scheme: https\n:path: /a\n:authority: d.test\ntransfer-encoding: chunked\n\n", diffH2},
	{":method: POST\n:scheme: https\n:path: /cl\n:authority: d.test\ncontent-length: 3\n\nabcdef", diffH2},
	{":method: GET\n:scheme: https\n:path: /a\n:authority: d.test\nhost: other.test\n\n", diffH2},
	{":method: GET\n:scheme: https\n:path: /a\n:authority: d.test\nproxy-authorization: x\nconnection: keep-alive\n\n", diffH2},
	{":method: GET\n:scheme: https\n:path: /a\n:authority: d.test\nx-real-ip: 203.0.113.7\nx-forwarded-for: 203.0.113.7\nforwarded: for=203.0.113.7\n\n", diffH2},
	{":method: HEAD\n:scheme: https\n:path: /h\n:authority: d.test\n\n", diffH2 | beHeadBody},
	{":method: GET\n:scheme: https\n:path: /a\n:authority: d.test\n\n", diffH2 | be204Body | diffLate},
	{":method: GET\n:scheme: https\n:path: /a\n:authority: d.test\n\n", diffH2 | be304Body},
	{":method: GET\n:scheme: https\n:path: /a\n:authority: d.test\n\n", diffH2 | beExtraResponse | diffLate},
	// Backend transfer codings other than chunked alone: a 502 each.
	{"GET /1 HTTP/1.1\r\nHost: d.test\r\n\r\nGET /2 HTTP/1.1\r\nHost: d.test\r\n\r\nGET /3 HTTP/1.1\r\nHost: d.test\r\n\r\nGET /4 HTTP/1.1\r\nHost: d.test\r\n\r\nGET /5 HTTP/1.1\r\nHost: d.test\r\n\r\nGET /6 HTTP/1.1\r\nHost: d.test\r\n\r\n", beTransferCoding},
	{"HEAD /h HTTP/1.1\r\nHost: d.test\r\n\r\nPOST /p HTTP/1.1\r\nHost: d.test\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n", beTransferCoding},
	{"GET /h10 HTTP/1.0\r\nHost: d.test\r\nConnection: keep-alive\r\n\r\nGET /b?coding=3 HTTP/1.0\r\nHost: d.test\r\n\r\n", beTransferCoding},
	{":method: GET\n:scheme: https\n:path: /a?coding=0\n:authority: d.test\n\n", diffH2 | beTransferCoding},
	{":method: GET\n:scheme: https\n:path: /a?coding=1\n:authority: d.test\n\n", diffH2 | beTransferCoding},
	{":method: POST\n:scheme: https\n:path: /a?coding=4\n:authority: d.test\n\nbody", diffH2 | beTransferCoding},
	{":method: GET\n:scheme: https\n:path: /a?coding=5\n:authority: d.test\n\n", diffH2 | beTransferCoding},
}

// TestDifferential runs the corpus through the proxy; see checkDifferential.
func TestDifferential(t *testing.T) {
	for i, in := range differentialCorpus {
		t.Run(fmt.Sprint(i), func(t *testing.T) { checkDifferential(t, []byte(in), beEcho) })
	}
	for i, c := range differentialCases {
		t.Run(fmt.Sprintf("mode%d-%d", c.mode, i), func(t *testing.T) { checkDifferential(t, []byte(c.in), c.mode) })
	}
}

// FuzzDifferential mutates the corpus (go test -fuzz=FuzzDifferential):
// the client's bytes and the backend's behaviour.
func FuzzDifferential(f *testing.F) {
	for _, in := range differentialCorpus {
		f.Add([]byte(in), uint8(beEcho))
	}
	for _, c := range differentialCases {
		f.Add([]byte(c.in), c.mode)
	}
	f.Fuzz(func(t *testing.T, in []byte, mode uint8) {
		if len(in) > 8<<10 {
			return
		}
		mode %= 32
		if mode&diffBackendMask > beTransferCoding {
			mode &^= diffBackendMask // the unused behaviours are the well-behaved one
		}
		checkDifferential(t, in, mode)
	})
}

// lateBytes holds backend connections whose misbehaving bytes wait for
// the client to finish: release writes them, while the connections idle
// in the proxy's pool, unless the proxy sent another request first.
type lateBytes struct {
	mu       sync.Mutex
	released bool
	pending  map[net.Conn]chan struct{} // closed once the conn's late bytes are settled
}

// register holds c before its answer goes out; false once released (an
// exchange after the client finished sends nothing late).
func (l *lateBytes) register(c net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.released {
		return false
	}
	if l.pending == nil {
		l.pending = map[net.Conn]chan struct{}{}
	}
	l.pending[c] = make(chan struct{})
	return true
}

// wait (after the answer went out) waits for the next request or release
// and writes extra in the second case.
func (l *lateBytes) wait(c net.Conn, extra string) {
	l.mu.Lock()
	done := l.pending[c]
	l.mu.Unlock()
	defer close(done)
	if readableOrWoken(c) || extra == "" {
		// The proxy reused the connection before any late byte: the
		// next request is there, nothing is misbehaving yet.
		return
	}
	_, _ = io.WriteString(c, extra)
	_ = c.SetReadDeadline(time.Time{})
}

// release wakes every held connection and waits for the late bytes to be
// written.
func (l *lateBytes) release(t *testing.T) {
	l.mu.Lock()
	l.released = true
	var waits []chan struct{}
	for c, done := range l.pending {
		_ = c.SetReadDeadline(time.Now())
		waits = append(waits, done)
	}
	l.mu.Unlock()
	for _, done := range waits {
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("late bytes never settled")
		}
	}
}

// readableOrWoken waits, without consuming anything, until c has bytes
// (or EOF) to read, or its read deadline passes; true means readable.
func readableOrWoken(c net.Conn) bool {
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		return true
	}
	readable := false
	var b [1]byte
	err = rc.Read(func(fd uintptr) bool {
		n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		if err == syscall.EAGAIN {
			return false // wait for readiness or the deadline
		}
		readable = n >= 0 || err != nil
		return true
	})
	return err == nil && readable
}

// diffBackend answers every request with its echo ("METHOD TARGET
// BODYLEN", in X-Echo and, where a body is allowed, as the body) and
// misbehaves as mode says.
func diffBackend(t *testing.T, mode uint8, late *lateBytes) *recBackend {
	var answered atomic.Int64
	return newRecBackend(t, func(c net.Conn, req *strictRequest, nth int) bool {
		echo := fmt.Sprintf("%s %s %d", req.Method, req.Target, len(req.Body))
		if mode&diffBackendMask == beTransferCoding {
			// In turn, or the one a "coding=N" in the target names (an
			// HTTP/2 case has one request per backend).
			i := int(answered.Add(1) - 1)
			if _, v, ok := strings.Cut(req.Target, "coding="); ok {
				if n, err := strconv.Atoi(v); err == nil && n >= 0 {
					i = n
				}
			}
			coding := refusedCodings[i%len(refusedCodings)]
			_, _ = fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nX-Echo: %[1]s\r\n"+coding, echo, len(echo), echo)
			return false // some are delimited by the close
		}
		normal := fmt.Sprintf("HTTP/1.1 200 OK\r\nX-Echo: %s\r\nContent-Length: %d\r\n\r\n", echo, len(echo))
		if req.Method != "HEAD" {
			normal += echo
		}
		resp, extra := normal, ""
		switch mode & diffBackendMask {
		case beHeadBody:
			if req.Method == "HEAD" {
				extra = stolenResponse
			}
		case be204Body:
			resp, extra = "HTTP/1.1 204 No Content\r\nX-Echo: "+echo+"\r\n\r\n", stolenResponse
		case be304Body:
			resp, extra = "HTTP/1.1 304 Not Modified\r\nX-Echo: "+echo+"\r\nContent-Length: 7\r\n\r\n", "STOLEN!"
		case beExtraResponse:
			extra = stolenResponse
		}
		if extra == "" || mode&diffLate == 0 {
			_, err := io.WriteString(c, resp+extra)
			return err == nil
		}
		if !late.register(c) {
			_, err := io.WriteString(c, resp)
			return err == nil
		}
		if _, err := io.WriteString(c, resp); err != nil {
			late.wait(c, "")
			return false
		}
		late.wait(c, extra)
		return true
	})
}

// clientAnswer is one response as a client received it.
type clientAnswer struct {
	status int
	echo   string // X-Echo: which backend exchange produced it
	body   string
}

// checkDifferential sends in through the proxy to a recording backend
// that behaves as mode says and checks, with the strict reader as the
// reference:
//   - every byte the backend received parses strictly, as a sequence of
//     complete messages (no smuggled or half message);
//   - the backend's messages are, in order, among the messages the strict
//     reader finds in the client's bytes (same method, target and body;
//     the proxy answers some itself): it never invents, splits or merges
//     a request; over HTTP/2 the one request is the translation of the
//     client's fields, and every field the backend got was sent by the
//     client or is one the proxy sets;
//   - the client receives, in order, exactly the answers to its own
//     requests (X-Echo names the exchange), nothing after the last one,
//     and never the bytes a backend sent after an answer (a body after
//     HEAD, 204 or 304, an unsolicited response);
//   - after the client finished and the late bytes were sent, a new
//     client gets its own answer (a pooled connection with bytes pending
//     is never reused).
func checkDifferential(t *testing.T, in []byte, mode uint8) {
	var late lateBytes
	rb := diffBackend(t, mode, &late)
	table := newTable(t, poolSpec{storage.Pool{Name: "d", SSLMode: "flexible", AllowHTTP: true, SSLDomain: "d.test"}, []string{rb.url()}})
	cfg := testConfig()
	cfg.ReadHeaderTimeout = time.Second
	cfg.ReadTimeout = time.Second
	var ca *testCA
	var certs *testCerts
	if mode&diffH2 != 0 {
		ca = newTestCA(t)
		certs = &testCerts{}
		certs.add("d.test", ca.issue(t, "d.test"))
	} else {
		cfg.HTTPSAddr = ""
	}
	p := startProxy(t, cfg, table, certs, nil)

	refused := mode&diffBackendMask == beTransferCoding
	if mode&diffH2 != 0 {
		checkH2Translation(t, p, ca, rb, in, refused)
	} else {
		checkH1Stream(t, p, rb, in, refused)
	}

	// Late bytes now reach the idle pooled connections; the next client
	// must get its own answer all the same.
	late.release(t)
	if mode&diffLate != 0 {
		time.Sleep(10 * time.Millisecond) // let them cross loopback into the proxy's socket
	}
	// Counted by target: a client's request reset while in flight (an
	// HTTP/2 stream) may still reach the backend after this point.
	probes := func() int {
		got, _ := rb.received()
		n := 0
		for _, r := range got {
			if r.Target == "/probe" {
				n++
			}
		}
		return n
	}
	n := probes()
	c, err := net.DialTimeout("tcp", p.http, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.(*net.TCPConn).SetLinger(0); c.Close() }()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "GET /probe HTTP/1.1\r\nHost: d.test\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("probe after the late bytes: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	wantBody := "GET /probe 0"
	if b := mode & diffBackendMask; b == be204Body || b == be304Body {
		wantBody = ""
	}
	if refused {
		if resp.StatusCode != 502 || resp.Header.Get("X-Echo") != "" {
			t.Fatalf("probe got %d %q, want the proxy's 502", resp.StatusCode, resp.Header.Get("X-Echo"))
		}
	} else if echo := resp.Header.Get("X-Echo"); echo != "GET /probe 0" || string(body) != wantBody {
		t.Fatalf("probe got %d %q %q: not its own answer", resp.StatusCode, echo, body)
	}
	if m := probes(); m != n+1 {
		t.Fatalf("the probe reached the backend %d times", m-n)
	}
}

// checkH1Stream sends in on one HTTP/1.1 client connection.
func checkH1Stream(t *testing.T, p *testProxy, rb *recBackend, in []byte, refused bool) {
	var want []*strictRequest
	// refusedMethod is the method of the first request the strict reader
	// refuses, when its request line is well formed: the proxy's refusal
	// of a HEAD request has no body.
	refusedMethod := "GET"
	src := bytes.NewReader(in)
	br := bufio.NewReader(src)
	for {
		// RFC 9112 2.2: a server may ignore empty lines before a
		// request line (the proxy does).
		for b, _ := br.Peek(2); string(b) == "\r\n"; b, _ = br.Peek(2) {
			_, _ = br.Discard(2)
		}
		at := len(in) - src.Len() - br.Buffered()
		r, err := readStrictRequestVersion(br, true)
		if err != nil {
			if m, ok := requestLineMethod(in[at:]); ok {
				refusedMethod = m
			}
			break
		}
		want = append(want, r)
		if r.get("Connection") == "close" {
			break
		}
	}
	c, err := net.DialTimeout("tcp", p.http, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// Reset instead of TIME_WAIT: fuzzing opens thousands of connections
	// and would run out of ephemeral ports.
	defer func() { _ = c.(*net.TCPConn).SetLinger(0); c.Close() }()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(in); err != nil {
		t.Fatal(err)
	}
	_ = c.(*net.TCPConn).CloseWrite()
	cr := bufio.NewReader(c)
	var answers []clientAnswer
	for {
		method := refusedMethod
		if len(answers) < len(want) {
			method = want[len(answers)].Method
		}
		resp, err := http.ReadResponse(cr, &http.Request{Method: method})
		if err != nil {
			break
		}
		var body bytes.Buffer
		_, err = body.ReadFrom(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatalf("response body: %v", err)
		}
		answers = append(answers, clientAnswer{resp.StatusCode, resp.Header.Get("X-Echo"), body.String()})
		if resp.Close {
			break
		}
	}
	if _, err := cr.ReadByte(); err == nil {
		t.Fatalf("client got bytes after its last response")
	}
	got, errs := rb.received()
	if len(errs) > 0 {
		t.Fatalf("the backend's strict reader failed on forwarded bytes: %v", errs)
	}
	if len(got) > len(want) {
		t.Fatalf("backend received %d requests, the client's bytes hold %d valid ones", len(got), len(want))
	}
	// In order, possibly with gaps: the proxy answers some requests itself
	// (unknown host, redirect) and forwards the others.
	j := 0
	for i, g := range got {
		for j < len(want) && (g.Method != want[j].Method || g.Target != want[j].Target || !bytes.Equal(g.Body, want[j].Body)) {
			j++
		}
		if j == len(want) {
			t.Fatalf("request %d: backend got %s %s %q, not among the client's remaining requests", i, g.Method, g.Target, g.Body)
		}
		j++
	}
	checkAnswers(t, answers, got, refused)
}

// requestLineMethod returns the method of b's first line when it is a
// well-formed request line (token SP target SP HTTP/1.0 or 1.1 CRLF; any
// target without spaces or controls) of a head that ends (CRLF CRLF), the
// point where the proxy parses it, whatever the fields hold.
func requestLineMethod(b []byte) (string, bool) {
	line, _, ok := bytes.Cut(b, []byte("\r\n"))
	if !ok || !bytes.Contains(b, []byte("\r\n\r\n")) {
		return "", false
	}
	parts := strings.Split(string(line), " ")
	if len(parts) != 3 || !isToken(parts[0]) || parts[1] == "" || parts[2] != "HTTP/1.0" && parts[2] != "HTTP/1.1" {
		return "", false
	}
	for i := 0; i < len(parts[1]); i++ {
		if c := parts[1][i]; c <= ' ' || c == 0x7f {
			return "", false
		}
	}
	return parts[0], true
}

// checkAnswers: the backend's answers reach the client in order, between
// the proxy's own answers (4xx/5xx) to requests it refused; nothing else.
// refused: the backend's answers are all unrelayable, so each exchange
// must be answered by the proxy's 502, and no answer carries its bytes.
func checkAnswers(t *testing.T, answers []clientAnswer, got []*strictRequest, refused bool) {
	if refused {
		bad := 0
		for i, a := range answers {
			if a.echo != "" || a.status < 400 {
				t.Fatalf("response %d: %d %q %q relayed from a backend answer the proxy must refuse", i, a.status, a.echo, a.body)
			}
			if a.status == 502 {
				bad++
			}
		}
		if bad != len(got) {
			t.Fatalf("backend answered %d requests with refused codings, the client got %d 502s", len(got), bad)
		}
		return
	}
	ok := 0
	for i, a := range answers {
		if a.echo == "" {
			if a.status < 400 {
				t.Fatalf("response %d: %d %q, an answer the backend never gave this client", i, a.status, a.body)
			}
			continue
		}
		if ok >= len(got) {
			t.Fatalf("response %d is an answer the backend never produced: %q", i, a.echo)
		}
		want := fmt.Sprintf("%s %s %d", got[ok].Method, got[ok].Target, len(got[ok].Body))
		if a.echo != want {
			t.Fatalf("response %d: answer to %q, want the answer to its own request %q", i, a.echo, want)
		}
		if a.status == 200 && got[ok].Method != "HEAD" && a.body != want || (a.status != 200 || got[ok].Method == "HEAD") && a.body != "" {
			t.Fatalf("response %d: %d with body %q", i, a.status, a.body)
		}
		ok++
	}
	if ok != len(got) {
		t.Fatalf("backend answered %d requests, client got %d of the answers", len(got), ok)
	}
}

// h2Case is an HTTP/2 request as the fuzzer describes it.
type h2Case struct {
	fields [][2]string // in order, pseudo-headers included
	body   []byte
}

// parseH2Case reads "name: value" lines up to an empty line, then the
// body. Any bytes go: invalid names and values are what is tested.
func parseH2Case(in []byte) h2Case {
	var c h2Case
	head, body, _ := bytes.Cut(in, []byte("\n\n"))
	c.body = body
	for _, line := range bytes.Split(head, []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		from := 0
		if line[0] == ':' {
			from = 1
		}
		name, value := line, []byte(nil)
		if i := bytes.Index(line[from:], []byte(": ")); i >= 0 {
			name, value = line[:from+i], line[from+i+2:]
		}
		c.fields = append(c.fields, [2]string{string(name), string(value)})
	}
	return c
}

func (c *h2Case) pseudo(name string) string {
	for _, f := range c.fields {
		if f[0] == name {
			return f[1]
		}
	}
	return ""
}

// proxySetFields are the fields the proxy writes itself on every request
// it forwards from an HTTP/2 client.
var proxySetFields = map[string]bool{
	"host": true, "x-forwarded-proto": true,
	"x-forwarded-host": true, "x-request-id": true, "content-length": true, "transfer-encoding": true,
}

// proxyClientFields are the fields that name the client, with the value
// they must have: the test client (loopback) is not a trusted proxy, so
// whatever it sent in them is replaced by its address.
var proxyClientFields = map[string]string{
	"x-forwarded-for": "127.0.0.1", "x-real-ip": "127.0.0.1", "forwarded": "for=127.0.0.1;proto=https",
}

// checkH2Translation sends one HTTP/2 request and checks its HTTP/1.1
// translation at the backend and the answer at the client.
func checkH2Translation(t *testing.T, p *testProxy, ca *testCA, rb *recBackend, in []byte, refused bool) {
	hc := parseH2Case(in)
	h := dialH2Raw(t, p.https, "d.test", ca.pool)
	var kv []string
	for _, f := range hc.fields {
		kv = append(kv, f[0], f[1])
	}
	if err := h.headers(1, len(hc.body) == 0, kv...); err != nil {
		t.Fatal(err)
	}
	if len(hc.body) > 0 {
		if err := h.fr.WriteData(1, true, hc.body); err != nil {
			t.Fatal(err)
		}
	}
	a, answered := h2Answer(t, h, 1)
	got, errs := rb.received()
	if len(errs) > 0 {
		t.Fatalf("the backend's strict reader failed on forwarded bytes: %v", errs)
	}
	if len(got) > 1 {
		t.Fatalf("one HTTP/2 request became %d at the backend", len(got))
	}
	if len(got) == 1 {
		g := got[0]
		if g.Method != hc.pseudo(":method") || g.Target != hc.pseudo(":path") || !bytes.Equal(g.Body, hc.body) {
			t.Fatalf("backend got %s %s %q from :method %q :path %q body %q", g.Method, g.Target, g.Body, hc.pseudo(":method"), hc.pseudo(":path"), hc.body)
		}
		// The request's authority, else its Host field (RFC 9113 8.3.1
		// lets a request go without :authority). One with neither is
		// malformed and must not arrive at all: the TLS server name is
		// not a Host the client sent.
		wantHost := hc.pseudo(":authority")
		if wantHost == "" {
			wantHost = hc.pseudo("host")
		}
		if host := g.get("Host"); wantHost == "" || host != wantHost {
			t.Fatalf("backend got Host %q from :authority %q", host, hc.pseudo(":authority"))
		}
		sent := map[string]bool{}
		var cookies []string
		for _, f := range hc.fields {
			// HTTP/1.1 field values have no surrounding whitespace.
			v := strings.Trim(f[1], " \t")
			sent[strings.ToLower(f[0])+"\x00"+v] = true
			if strings.EqualFold(f[0], "cookie") {
				cookies = append(cookies, v)
			}
		}
		for _, f := range g.Header {
			name := strings.ToLower(f[0])
			if want, ok := proxyClientFields[name]; ok {
				if f[1] != want {
					t.Fatalf("backend got %s: %q, want %q", f[0], f[1], want)
				}
				continue
			}
			switch {
			case proxySetFields[name]:
			case name == "cookie" && f[1] == strings.Join(cookies, "; "):
			case !sent[name+"\x00"+f[1]]:
				t.Fatalf("backend got field %q: %q, which the client never sent", f[0], f[1])
			}
		}
	}
	if !answered {
		if len(got) == 1 {
			t.Fatalf("the backend answered, the client got nothing")
		}
		return
	}
	if len(got) == 1 {
		checkAnswers(t, []clientAnswer{a}, got, refused)
	} else if a.status < 400 || a.echo != "" {
		t.Fatalf("refused request answered %d %q", a.status, a.echo)
	}
}

// h2Answer reads the response of stream id: answered=false when the
// stream was reset or the connection ended first.
func h2Answer(t *testing.T, h *h2Raw, id uint32) (clientAnswer, bool) {
	var a clientAnswer
	var body bytes.Buffer
	_ = h.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		f, err := h.fr.ReadFrame()
		if err != nil {
			return a, false
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
			if f.ErrCode != http2.ErrCodeNo {
				return a, false
			}
		case *http2.HeadersFrame:
			if f.StreamID != id {
				continue
			}
			fields, err := h.dec.DecodeFull(f.HeaderBlockFragment())
			if err != nil {
				t.Fatalf("response header block: %v", err)
			}
			for _, hf := range fields {
				switch hf.Name {
				case ":status":
					a.status, _ = strconv.Atoi(hf.Value)
				case "x-echo":
					a.echo = hf.Value
				}
			}
			if f.StreamEnded() {
				a.body = body.String()
				return a, true
			}
		case *http2.DataFrame:
			if f.StreamID != id {
				continue
			}
			body.Write(f.Data())
			if f.StreamEnded() {
				a.body = body.String()
				return a, true
			}
		case *http2.RSTStreamFrame:
			if f.StreamID == id {
				return a, false
			}
		}
	}
}
