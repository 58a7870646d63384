package certs

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// fakeCA is an ACME server that places orders and never finishes them:
// an authorization is valid (no challenge to answer) or pending with a
// dns-01 challenge, and a finalized order stays processing. It does not
// check signatures. Each request's path goes to seen, when set.
type fakeCA struct {
	ts          *httptest.Server
	authzStatus string
	seen        func(path string)
}

func startFakeCA(t *testing.T, authzStatus string, seen func(path string)) *fakeCA {
	t.Helper()
	ca := &fakeCA{authzStatus: authzStatus, seen: seen}
	ca.ts = httptest.NewTLSServer(http.HandlerFunc(ca.serve))
	t.Cleanup(ca.ts.Close)
	return ca
}

func (ca *fakeCA) dir() string { return ca.ts.URL + "/dir" }

func (ca *fakeCA) caPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.ts.Certificate().Raw})
}

func (ca *fakeCA) serve(w http.ResponseWriter, r *http.Request) {
	if ca.seen != nil {
		ca.seen(r.URL.Path)
	}
	var nonce [8]byte
	_, _ = rand.Read(nonce[:])
	w.Header().Set("Replay-Nonce", base64.RawURLEncoding.EncodeToString(nonce[:]))
	w.Header().Set("Content-Type", "application/json")
	u := ca.ts.URL
	var payload struct {
		Identifiers []map[string]string `json:"identifiers"`
	}
	if r.Method == http.MethodPost {
		var jws struct {
			Payload string `json:"payload"`
		}
		if err := json.NewDecoder(r.Body).Decode(&jws); err == nil && jws.Payload != "" {
			if raw, err := base64.RawURLEncoding.DecodeString(jws.Payload); err == nil {
				_ = json.Unmarshal(raw, &payload)
			}
		}
	}
	order := func(status string) map[string]any {
		return map[string]any{"status": status, "identifiers": []map[string]string{{"type": "dns", "value": "wait.example.com"}},
			"authorizations": []string{u + "/authz/1"}, "finalize": u + "/finalize/1"}
	}
	var body any
	switch p := r.URL.Path; {
	case p == "/dir":
		body = map[string]any{"newNonce": u + "/nonce", "newAccount": u + "/account", "newOrder": u + "/order",
			"revokeCert": u + "/revoke", "keyChange": u + "/key-change"}
	case p == "/nonce":
		w.WriteHeader(http.StatusOK)
		return
	case p == "/account":
		w.Header().Set("Location", u+"/account/1")
		w.WriteHeader(http.StatusCreated)
		body = map[string]any{"status": "valid"}
	case p == "/order":
		w.Header().Set("Location", u+"/order/1")
		w.WriteHeader(http.StatusCreated)
		o := order("pending")
		o["identifiers"] = payload.Identifiers
		body = o
	case strings.HasPrefix(p, "/authz/"):
		body = map[string]any{"status": ca.authzStatus, "identifier": map[string]string{"type": "dns", "value": "wait.example.com"},
			"challenges": []map[string]string{{"type": "dns-01", "url": u + "/chall/1", "token": "token-1", "status": "pending"}}}
	case p == "/finalize/1", p == "/order/1":
		body = order("processing")
	default:
		w.WriteHeader(http.StatusNotFound)
		body = map[string]any{"type": "urn:ietf:params:acme:error:malformed", "detail": "not here", "status": 404}
	}
	_ = json.NewEncoder(w).Encode(body)
}

// fakeResolver is a DNS server that has no record at all and never
// answers a question mute says to ignore (nil: answers all); each
// question goes to seen.
func fakeResolver(t *testing.T, seen func(q dns.Question), mute func(q dns.Question) bool) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		silent := false
		for _, q := range r.Question {
			seen(q)
			silent = silent || (mute != nil && mute(q))
		}
		if silent {
			return
		}
		m := new(dns.Msg)
		m.SetReply(r)
		_ = w.WriteMsg(m)
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go func() { _ = srv.ActivateAndServe() }()
	<-started
	t.Cleanup(func() { _ = srv.Shutdown() })
	return pc.LocalAddr().String()
}

// slowDNSProvider presents nothing and asks for a long propagation wait.
type slowDNSProvider struct {
	timeout, interval time.Duration
}

func (slowDNSProvider) Present(domain, token, keyAuth string) error  { return nil }
func (slowDNSProvider) CleanUp(domain, token, keyAuth string) error  { return nil }
func (p slowDNSProvider) Timeout() (timeout, interval time.Duration) { return p.timeout, p.interval }

// legoGoroutines returns the stacks of the goroutines that run lego
// code, by goroutine header ("goroutine 7 [sleep]:").
func legoGoroutines() map[string]string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	out := map[string]string{}
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "github.com/go-acme/lego/") {
			id, _, _ := strings.Cut(g, " [")
			out[id] = g
		}
	}
	return out
}

// An order abandoned while it waits (agent shutdown, lease lost, an
// operator's cancel) ends its work when its context ends: Issue returns
// context.Canceled and no goroutine is left in lego, whether the order
// was waiting for the CA to issue after finalization or for a DNS-01
// record to propagate, or for a DNS server that does not answer. Before,
// lego's finalization poll went on for Certifier's Timeout (HTTPTimeout,
// two minutes here), its propagation wait slept the provider's interval
// and polled DNS for the provider's timeout, and each of its DNS queries
// waited for its answer until its own timeout (10 s, an hour here), none
// of them seeing the context.
func TestAbandonedOrderWaitsEndWithContext(t *testing.T) {
	t.Setenv("LEGO_DISABLE_CNAME_SUPPORT", "") // the CNAME lookup is the first DNS question
	for _, tc := range []struct {
		name string
		// authzStatus is the CA's authorization: valid goes straight to
		// finalization; pending asks for dns-01.
		authzStatus string
		// httpTimeout is also how long lego's finalization poll went on,
		// polling every sixtieth of it.
		httpTimeout time.Duration
		provider    slowDNSProvider
		// cancelAt says, from the CA's request paths and the resolver's
		// questions, when the order is cancelled.
		cancelAt func(path string, q *dns.Question, txt int) bool
		// mute: the resolver does not answer these questions.
		mute func(q dns.Question) bool
	}{
		{
			name:        "CA processing the finalized order",
			authzStatus: "valid",
			httpTimeout: 2 * time.Minute,
			cancelAt:    func(path string, _ *dns.Question, _ int) bool { return path == "/order/1" },
		},
		{
			name:        "DNS-01 record before the first propagation check",
			authzStatus: "pending",
			httpTimeout: time.Hour,
			provider:    slowDNSProvider{timeout: time.Hour, interval: 10 * time.Minute},
			cancelAt:    func(_ string, q *dns.Question, _ int) bool { return q != nil },
		},
		{
			name:        "DNS-01 record between propagation checks",
			authzStatus: "pending",
			httpTimeout: time.Hour,
			provider:    slowDNSProvider{timeout: time.Hour, interval: time.Millisecond},
			cancelAt:    func(_ string, q *dns.Question, txt int) bool { return txt == 2 },
		},
		{
			name:        "DNS-01 CNAME query unanswered",
			authzStatus: "pending",
			httpTimeout: time.Hour,
			provider:    slowDNSProvider{timeout: time.Hour, interval: time.Millisecond},
			cancelAt:    func(_ string, q *dns.Question, _ int) bool { return q != nil },
			mute:        func(dns.Question) bool { return true },
		},
		{
			name:        "DNS-01 propagation query unanswered",
			authzStatus: "pending",
			httpTimeout: time.Hour,
			provider:    slowDNSProvider{timeout: time.Hour, interval: time.Millisecond},
			cancelAt:    func(_ string, q *dns.Question, txt int) bool { return txt == 1 },
			mute:        func(q dns.Question) bool { return q.Qtype == dns.TypeTXT },
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var mu sync.Mutex
			txt := 0
			observe := func(path string, q *dns.Question) {
				mu.Lock()
				defer mu.Unlock()
				if q != nil && q.Qtype == dns.TypeTXT {
					txt++
				}
				if tc.cancelAt(path, q, txt) {
					cancel()
				}
			}
			ca := startFakeCA(t, tc.authzStatus, func(path string) { observe(path, nil) })
			s := openStore(t)
			b := NewStoreBackend(s, nil)
			icfg := DefaultACMEConfig()
			icfg.DirectoryURL, icfg.CABundlePEM = ca.dir(), ca.caPEM()
			icfg.HTTPTimeout = tc.httpTimeout
			if tc.authzStatus == "pending" {
				icfg.Challenges = []string{ChallengeDNS01}
				icfg.DNS01Provider = tc.provider
				icfg.DNS01Resolvers = []string{fakeResolver(t, func(q dns.Question) { observe("", &q) }, tc.mute)}
				icfg.DNS01RecursiveOnly = true
			}
			iss, err := NewACMEIssuer(icfg, b, b)
			if err != nil {
				t.Fatal(err)
			}
			// A query unanswered is waited for until the order ends,
			// or an hour.
			iss.dns.timeout = time.Hour
			// Goroutines of earlier tests are not this order's.
			earlier := legoGoroutines()
			done := make(chan error, 1)
			go func() {
				_, err := iss.Issue(ctx, IssueRequest{Names: []string{"wait.example.com"}})
				done <- err
			}()
			select {
			case err := <-done:
				if !errors.Is(err, context.Canceled) {
					t.Fatalf("Issue = %v, want context.Canceled", err)
				}
				if ctx.Err() == nil {
					t.Fatal("Issue returned before the order was cancelled")
				}
			case <-time.After(time.Minute):
				t.Fatalf("Issue still running a minute after it started (cancelled: %v)", ctx.Err() != nil)
			}
			var left []string
			for id, g := range legoGoroutines() {
				if _, ok := earlier[id]; !ok {
					left = append(left, g)
				}
			}
			if len(left) > 0 {
				t.Fatalf("%d goroutines still in lego after Issue returned:\n%s", len(left), strings.Join(left, "\n\n"))
			}
		})
	}
}
