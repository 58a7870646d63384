package proxy

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"net/http"
	"testing"
	"time"

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
}

// TestDifferential runs the corpus through the proxy; see checkDifferential.
func TestDifferential(t *testing.T) {
	for i, in := range differentialCorpus {
		t.Run(fmt.Sprint(i), func(t *testing.T) { checkDifferential(t, []byte(in)) })
	}
}

// FuzzDifferential mutates the corpus (go test -fuzz=FuzzDifferential).
func FuzzDifferential(f *testing.F) {
	for _, in := range differentialCorpus {
		f.Add([]byte(in))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) > 8<<10 {
			return
		}
		checkDifferential(t, in)
	})
}

// checkDifferential sends in on one client connection through the proxy to
// a recording backend and checks, with the strict reader as the reference:
//   - every byte the backend received parses strictly, as a sequence of
//     complete messages (no smuggled or half message);
//   - the backend's messages are, in order, among the messages the strict
//     reader finds in the client's bytes (same method, target and body;
//     the proxy answers some itself): it never invents, splits or merges
//     a request;
//   - the client receives, in order, exactly the responses to its own
//     requests, and nothing after the last one.
func checkDifferential(t *testing.T, in []byte) {
	var want []*strictRequest
	br := bufio.NewReader(bytes.NewReader(in))
	for {
		r, err := readStrictRequestVersion(br, true)
		if err != nil {
			break
		}
		want = append(want, r)
		if r.get("Connection") == "close" {
			break
		}
	}
	rb := newRecBackend(t, nil)
	table := newTable(t, poolSpec{storage.Pool{Name: "d", Hosts: []string{"d.test"}}, []string{rb.url()}})
	cfg := testConfig()
	cfg.HTTPSAddr = ""
	cfg.ReadHeaderTimeout = time.Second
	cfg.ReadTimeout = time.Second
	p := startProxy(t, cfg, table, nil, nil)

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
	var answers []string
	var statuses []int
	for {
		method := "GET"
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
		statuses = append(statuses, resp.StatusCode)
		answers = append(answers, body.String())
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
	// The backend's answers (200) reach the client in order, between the
	// proxy's own answers (4xx/5xx) to requests it refused.
	ok := 0
	for i, st := range statuses {
		if st != 200 {
			continue
		}
		if ok >= len(got) {
			t.Fatalf("response %d is a 200 the backend never produced: %q", i, answers[i])
		}
		if wantBody := fmt.Sprintf("%s %s %d", got[ok].Method, got[ok].Target, len(got[ok].Body)); answers[i] != wantBody {
			t.Fatalf("response %d: %q, want the answer to its own request %q", i, answers[i], wantBody)
		}
		ok++
	}
	if ok != len(got) {
		t.Fatalf("backend answered %d requests, client got %d of the answers", len(got), ok)
	}
}
