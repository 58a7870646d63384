package certs

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"

	"github.com/singularity-ng/singularity-edge/storage"
)

// sealableFeed is a store as the responder sees it, which fails the test
// when the responder reads the store once sealed: after the load, the
// request path must answer from memory. LastIndex is an atomic read of
// the store's counter, not a read of RocksDB, and stays allowed.
type sealableFeed struct {
	t     testing.TB
	store *storage.Store

	mu     sync.Mutex
	sealed bool
	reads  int
}

func (f *sealableFeed) read(what string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reads++
	if f.sealed {
		f.t.Errorf("the responder read the store (%s) after its load", what)
	}
}

func (f *sealableFeed) seal() {
	f.mu.Lock()
	f.sealed = true
	f.mu.Unlock()
}

func (f *sealableFeed) ListACMERecords(ctx context.Context, prefix, after string, limit int) ([]storage.ACMERecord, error) {
	f.read("ListACMERecords")
	return f.store.ListACMERecords(ctx, prefix, after, limit)
}

func (f *sealableFeed) Subscribe(ctx context.Context, afterIndex uint64) *storage.Subscription {
	f.read("Subscribe")
	return f.store.Subscribe(ctx, afterIndex)
}

func (f *sealableFeed) LastIndex() uint64 { return f.store.LastIndex() }

// startResponder runs a responder over src until the test ends and waits
// for its load.
func startResponder(t *testing.T, src ChallengeFeed, mutate func(*ChallengeResponder)) *ChallengeResponder {
	t.Helper()
	r := NewChallengeResponder(src, zap.NewNop())
	if mutate != nil {
		mutate(r)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Logf("responder stopped: %v", err)
		}
	})
	select {
	case <-r.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("challenges not loaded after 10s")
	}
	return r
}

func present(t *testing.T, b *StoreBackend, c ChallengeToken) {
	t.Helper()
	if err := b.PresentChallenge(context.Background(), c); err != nil {
		t.Fatal(err)
	}
}

func (r *ChallengeResponder) held() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.pending)
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Tokens put through the store API are answered from memory: loaded at
// start, brought by the feed afterwards, dropped when deleted, and still
// answered, like unknown tokens refused, with the store out of reach.
func TestChallengeResponderAnswersFromMemory(t *testing.T) {
	ctx := context.Background()
	st := openStore(t)
	b := NewStoreBackend(st, nil)
	exp := time.Now().Add(time.Minute)
	present(t, b, ChallengeToken{Type: ChallengeHTTP01, Domain: "early.example.com", Token: "early", KeyAuth: "early.thumb", ExpiresAt: exp})
	present(t, b, ChallengeToken{Type: ChallengeHTTP01, Domain: "old.example.com", Token: "old", KeyAuth: "old.thumb", ExpiresAt: time.Now().Add(-time.Second)})

	feed := &sealableFeed{t: t, store: st}
	r := startResponder(t, feed, nil)
	// Loaded, subscribed: from here on every answer comes from memory.
	waitUntil(t, "the subscription", func() bool { feed.mu.Lock(); defer feed.mu.Unlock(); return feed.reads == 2 })
	feed.seal()

	// Written after the load: the feed brings them. No wait in between:
	// a miss waits for the feed to reach what the store has published.
	present(t, b, ChallengeToken{Type: ChallengeHTTP01, Domain: "Web.Example.com", Token: "tok", KeyAuth: "tok.thumb_-x", ExpiresAt: exp})
	present(t, b, ChallengeToken{Type: ChallengeTLSALPN01, Domain: "alpn.example.com", Token: "t2", KeyAuth: "t2.thumb", ExpiresAt: exp})

	for _, tc := range []struct {
		name, host, token, want string
		ok                      bool
	}{
		{"loaded at start", "early.example.com", "early", "early.thumb", true},
		{"from the feed", "web.example.com", "tok", "tok.thumb_-x", true},
		{"host case and trailing dot", "WEB.example.com.", "tok", "tok.thumb_-x", true},
		{"token of another host", "other.example.com", "tok", "", false},
		{"unknown token", "web.example.com", "nope", "", false},
		{"expired token", "old.example.com", "old", "", false},
		{"tls-alpn-01 name as a token", "alpn.example.com", "alpn.example.com", "", false},
	} {
		if ka, ok := r.HTTP01(tc.host, tc.token); ok != tc.ok || ka != tc.want {
			t.Errorf("%s: HTTP01(%q, %q) = %q, %v; want %q, %v", tc.name, tc.host, tc.token, ka, ok, tc.want, tc.ok)
		}
	}

	cert, ok := r.TLSALPN01("ALPN.example.com")
	if !ok {
		t.Fatal("TLSALPN01: no certificate")
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil || len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != "alpn.example.com" {
		t.Fatalf("challenge certificate: %v %v", leaf.DNSNames, err)
	}
	sum := sha256.Sum256([]byte("t2.thumb"))
	var found bool
	for _, ext := range leaf.Extensions {
		if ext.Id.Equal(idPeACMEIdentifier) {
			var v []byte
			_, err := asn1.Unmarshal(ext.Value, &v)
			found = err == nil && ext.Critical && string(v) == string(sum[:])
		}
	}
	if !found {
		t.Fatal("acmeIdentifier extension missing, not critical, or wrong")
	}
	if again, _ := r.TLSALPN01("alpn.example.com"); again != cert {
		t.Fatal("challenge certificate not reused")
	}
	if _, ok := r.TLSALPN01("web.example.com"); ok {
		t.Fatal("TLS-ALPN-01 answered for a name with only an HTTP-01 token")
	}

	if err := b.RemoveChallenge(ctx, ChallengeToken{Type: ChallengeHTTP01, Token: "tok"}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the removed token to go", func() bool { _, ok := r.HTTP01("web.example.com", "tok"); return !ok })
	if _, ok := r.HTTP01("early.example.com", "early"); !ok {
		t.Fatal("removing one token dropped another")
	}

	// With the store closed any read fails: the answers are memory's.
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	if ka, ok := r.HTTP01("early.example.com", "early"); !ok || ka != "early.thumb" {
		t.Fatalf("with the store closed: HTTP01 = %q, %v", ka, ok)
	}
	if _, ok := r.HTTP01("early.example.com", "unknown"); ok {
		t.Fatal("with the store closed: an unknown token answered")
	}
}

// A token another agent wrote reaches this agent's responder through
// replication and the feed.
func TestChallengeResponderFollowsReplication(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	origin, replica := openStore(t), openStore(t)
	r := startResponder(t, replica, nil)

	sub := origin.Subscribe(ctx, origin.LastIndex())
	present(t, NewStoreBackend(origin, nil), ChallengeToken{Type: ChallengeHTTP01, Domain: "a.example.com", Token: "remote", KeyAuth: "remote.thumb", ExpiresAt: time.Now().Add(time.Minute)})
	var ev storage.Event
	select {
	case ev = <-sub.Events():
	case <-time.After(10 * time.Second):
		t.Fatal("no event on the origin")
	}
	// Over the wire, then applied as the replication engine does.
	cs, err := storage.UnmarshalChangeSet(ev.Set.Marshal())
	if err != nil {
		t.Fatal(err)
	}
	if res, err := replica.ApplyBatch(ctx, []storage.ChangeSet{cs}); err != nil || res.Index == 0 {
		t.Fatalf("ApplyBatch = %+v, %v", res, err)
	}
	if ka, ok := r.HTTP01("a.example.com", "remote"); !ok || ka != "remote.thumb" {
		t.Fatalf("replicated token: HTTP01 = %q, %v", ka, ok)
	}
}

// gatedFeed delivers events only when the test says, and reports a
// published index ahead of them: an agent whose store has applied a token
// its feed has not delivered yet.
type gatedFeed struct {
	events    chan storage.Event
	published uint64
}

func (f *gatedFeed) ListACMERecords(context.Context, string, string, int) ([]storage.ACMERecord, error) {
	return nil, nil
}

func (f *gatedFeed) Subscribe(ctx context.Context, _ uint64) *storage.Subscription {
	return storage.NewSubscription(ctx, f.events)
}

func (f *gatedFeed) LastIndex() uint64 { return f.published }

// The CA is told once every store has applied the token, which may be
// before a feed delivered it: the miss waits for the feed, bounded.
func TestChallengeResponderMissWaitsForTheFeed(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st := openStore(t)
	sub := st.Subscribe(ctx, st.LastIndex())
	present(t, NewStoreBackend(st, nil), ChallengeToken{Type: ChallengeHTTP01, Domain: "a.example.com", Token: "late", KeyAuth: "late.thumb", ExpiresAt: time.Now().Add(time.Minute)})
	ev := <-sub.Events()

	feed := &gatedFeed{events: make(chan storage.Event)}
	r := startResponder(t, feed, func(r *ChallengeResponder) { r.timeout = 100 * time.Millisecond })
	feed.published = ev.Index // set before any lookup runs: no race

	start := time.Now()
	if _, ok := r.HTTP01("a.example.com", "late"); ok {
		t.Fatal("answered a token the feed never delivered")
	}
	if waited := time.Since(start); waited < r.timeout {
		t.Fatalf("a miss behind the feed gave up after %s, before the %s bound", waited, r.timeout)
	}

	r.timeout = 10 * time.Second
	got := make(chan bool)
	go func() { _, ok := r.HTTP01("a.example.com", "late"); got <- ok }()
	time.Sleep(20 * time.Millisecond) // the lookup is waiting (or about to)
	feed.events <- ev
	if !<-got {
		t.Fatal("the token the feed delivered during the wait was not answered")
	}
}

// The map is bounded, and expired tokens leave it without a purge.
func TestChallengeResponderBounded(t *testing.T) {
	st := openStore(t)
	b := NewStoreBackend(st, nil)
	var mu sync.Mutex
	clock := time.Now()
	now := func() time.Time { mu.Lock(); defer mu.Unlock(); return clock }
	r := startResponder(t, st, func(r *ChallengeResponder) { r.max = 2; r.now = now; r.sweepEvery = time.Hour })

	short, long := clock.Add(time.Minute), clock.Add(time.Hour)
	present(t, b, ChallengeToken{Type: ChallengeHTTP01, Domain: "a.example.com", Token: "a", KeyAuth: "a.k", ExpiresAt: short})
	present(t, b, ChallengeToken{Type: ChallengeHTTP01, Domain: "b.example.com", Token: "b", KeyAuth: "b.k", ExpiresAt: long})
	present(t, b, ChallengeToken{Type: ChallengeHTTP01, Domain: "c.example.com", Token: "c", KeyAuth: "c.k", ExpiresAt: long})
	if _, ok := r.HTTP01("c.example.com", "c"); ok || r.refused.Load() != 1 || r.held() != 2 {
		t.Fatalf("past the bound: answered %v, refused %d, held %d", ok, r.refused.Load(), r.held())
	}
	// What an operator sees of it.
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(r); err != nil {
		t.Fatal(err)
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP singularity_edge_acme_challenges_limit The most ACME challenge tokens an agent holds at once.
# TYPE singularity_edge_acme_challenges_limit gauge
singularity_edge_acme_challenges_limit 2
# HELP singularity_edge_acme_challenges_pending ACME HTTP-01 and TLS-ALPN-01 challenge tokens this agent holds in memory to answer (expired ones leave within a minute).
# TYPE singularity_edge_acme_challenges_pending gauge
singularity_edge_acme_challenges_pending 2
# HELP singularity_edge_acme_challenges_refused_total ACME challenge tokens this agent did not hold because it already held singularity_edge_acme_challenges_limit; their validations fail on this agent.
# TYPE singularity_edge_acme_challenges_refused_total counter
singularity_edge_acme_challenges_refused_total 1
`)); err != nil {
		t.Fatal(err)
	}
	// Replacing a held token is not growth. (Until the feed brings the
	// new row the old one is answered: a hit does not wait.)
	present(t, b, ChallengeToken{Type: ChallengeHTTP01, Domain: "b.example.com", Token: "b", KeyAuth: "b.k2", ExpiresAt: long})
	waitUntil(t, "the replaced token", func() bool { ka, _ := r.HTTP01("b.example.com", "b"); return ka == "b.k2" })
	if r.refused.Load() != 1 {
		t.Fatalf("replacing a held token was refused (%d refusals)", r.refused.Load())
	}

	mu.Lock()
	clock = short
	mu.Unlock()
	if _, ok := r.HTTP01("a.example.com", "a"); ok {
		t.Fatal("expired token answered")
	}
	// The expired token makes room for the next one.
	present(t, b, ChallengeToken{Type: ChallengeHTTP01, Domain: "d.example.com", Token: "d", KeyAuth: "d.k", ExpiresAt: long})
	if ka, ok := r.HTTP01("d.example.com", "d"); !ok || ka != "d.k" || r.held() != 2 {
		t.Fatalf("after expiry: HTTP01 = %q, %v; held %d", ka, ok, r.held())
	}
}

// Expired tokens leave the map with no write to make room.
func TestChallengeResponderSweepsExpired(t *testing.T) {
	st := openStore(t)
	b := NewStoreBackend(st, nil)
	r := startResponder(t, st, func(r *ChallengeResponder) { r.sweepEvery = 10 * time.Millisecond })
	present(t, b, ChallengeToken{Type: ChallengeHTTP01, Domain: "a.example.com", Token: "a", KeyAuth: "a.k", ExpiresAt: time.Now().Add(50 * time.Millisecond)})
	if _, ok := r.HTTP01("a.example.com", "a"); !ok {
		t.Fatal("token not answered")
	}
	waitUntil(t, "the expired token to leave", func() bool { return r.held() == 0 })
}
