package pools

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/singularity-ng/singularity-edge/storage"
)

// testPool builds one pool "p" with a backend per weight (ids b000,
// b001, ...) and returns it.
func testPool(t testing.TB, pool storage.Pool, weights ...int) *Pool {
	t.Helper()
	if pool.Name == "" {
		pool.Name = "p"
	}
	return testTableWith(pool, TableOptions{}, weights...).Pool(pool.Name)
}

func testTableWith(pool storage.Pool, opts TableOptions, weights ...int) *Table {
	if pool.Name == "" {
		pool.Name = "p"
	}
	backends := make([]storage.Backend, len(weights))
	for i, w := range weights {
		backends[i] = storage.Backend{ID: fmt.Sprintf("b%03d", i), PoolName: pool.Name, Host: "127.0.0.1", Port: 9000 + i, Weight: w}
	}
	return NewTable([]storage.Pool{pool}, backends, nil, opts)
}

func uniform(n int) []int {
	w := make([]int, n)
	for i := range w {
		w[i] = 1
	}
	return w
}

func mustPick(t testing.TB, p *Pool, req PickRequest) *Backend {
	t.Helper()
	b, err := p.Pick(req)
	if err != nil {
		t.Fatalf("Pick: %v", err)
	}
	return b
}

// pickCounts picks n times (each request begun and ended at once) and
// counts the picks per backend id.
func pickCounts(t testing.TB, p *Pool, n int) map[string]int {
	t.Helper()
	counts := map[string]int{}
	for range n {
		b := mustPick(t, p, PickRequest{})
		b.Begin().End(Result{Status: 200})
		counts[b.ID]++
	}
	return counts
}

func TestRoundRobinExact(t *testing.T) {
	p := testPool(t, storage.Pool{Algorithm: AlgorithmRoundRobin}, uniform(10)...)
	var seq []string
	for range 20 {
		seq = append(seq, mustPick(t, p, PickRequest{}).ID)
	}
	for i := range seq {
		if want := fmt.Sprintf("b%03d", i%10); seq[i] != want {
			t.Fatalf("pick %d = %s, want %s (sequence %v)", i, seq[i], want, seq)
		}
	}
	counts := pickCounts(t, p, 10000)
	for id, c := range counts {
		if c != 1000 {
			t.Errorf("%s picked %d times, want exactly 1000", id, c)
		}
	}
}

func TestRoundRobinConcurrentExact(t *testing.T) {
	p := testPool(t, storage.Pool{Algorithm: AlgorithmRoundRobin}, uniform(10)...)
	counts := concurrentCounts(t, p, 8, 1250)
	for id, c := range counts {
		if c != 1000 {
			t.Errorf("%s picked %d times, want exactly 1000", id, c)
		}
	}
}

func concurrentCounts(t *testing.T, p *Pool, workers, perWorker int) map[string]int {
	t.Helper()
	var mu sync.Mutex
	counts := map[string]int{}
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			local := map[string]int{}
			for range perWorker {
				b, err := p.Pick(PickRequest{})
				if err != nil {
					t.Error(err)
					return
				}
				b.Begin().End(Result{Status: 200})
				local[b.ID]++
			}
			mu.Lock()
			for k, v := range local {
				counts[k] += v
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	return counts
}

func TestWeightedRoundRobinSmooth(t *testing.T) {
	p := testPool(t, storage.Pool{Algorithm: AlgorithmWeightedRoundRobin}, 5, 1, 1)
	name := map[string]string{"b000": "a", "b001": "b", "b002": "c"}
	var seq []string
	for range 14 {
		seq = append(seq, name[mustPick(t, p, PickRequest{}).ID])
	}
	if got, want := strings.Join(seq, " "), "a a b a c a a a a b a c a a"; got != want {
		t.Fatalf("sequence %q, want %q", got, want)
	}
	// Exact per cycle of 7.
	counts := pickCounts(t, p, 7000)
	if counts["b000"] != 5000 || counts["b001"] != 1000 || counts["b002"] != 1000 {
		t.Fatalf("counts %v, want 5000/1000/1000", counts)
	}
}

func TestWeightedRoundRobinConcurrentExact(t *testing.T) {
	p := testPool(t, storage.Pool{Algorithm: AlgorithmWeightedRoundRobin}, 5, 1, 1)
	counts := concurrentCounts(t, p, 8, 7*500)
	if counts["b000"] != 20000 || counts["b001"] != 4000 || counts["b002"] != 4000 {
		t.Fatalf("counts %v, want 20000/4000/4000", counts)
	}
}

func TestWeightedRoundRobinSkipsUnavailable(t *testing.T) {
	p := testPool(t, storage.Pool{Algorithm: AlgorithmWeightedRoundRobin}, 5, 1, 1)
	p.Backends()[0].live.healthy.Store(false)
	counts := pickCounts(t, p, 1000)
	if counts["b000"] != 0 || counts["b001"] != 500 || counts["b002"] != 500 {
		t.Fatalf("counts %v", counts)
	}
}

// chiSquare returns the chi-square statistic of counts against expected
// shares.
func chiSquare(counts map[string]int, ids []string, expected []float64) float64 {
	var x float64
	for i, id := range ids {
		d := float64(counts[id]) - expected[i]
		x += d * d / expected[i]
	}
	return x
}

// chiSquareCritical9 is the chi-square critical value for 9 degrees of
// freedom at p = 1e-6: a fair sampler fails this once in a million runs.
const chiSquareCritical9 = 45.3

func TestRandomUniform(t *testing.T) {
	p := testPool(t, storage.Pool{Algorithm: AlgorithmRandom}, uniform(10)...)
	const n = 100000
	counts := pickCounts(t, p, n)
	exp := make([]float64, 10)
	for i := range exp {
		exp[i] = n / 10
	}
	if x := chiSquare(counts, ids(p.Backends()), exp); x > chiSquareCritical9 {
		t.Fatalf("chi-square %.1f > %.1f: counts %v", x, chiSquareCritical9, counts)
	}
}

func TestRandomUniformAmongAvailable(t *testing.T) {
	// Most backends down exercises the counting fallback as well as
	// rejection sampling.
	p := testPool(t, storage.Pool{Algorithm: AlgorithmRandom}, uniform(20)...)
	for i, b := range p.Backends() {
		if i >= 10 {
			b.live.healthy.Store(false)
		}
	}
	const n = 100000
	counts := pickCounts(t, p, n)
	exp := make([]float64, 10)
	for i := range exp {
		exp[i] = n / 10
	}
	if x := chiSquare(counts, ids(p.Backends()[:10]), exp); x > chiSquareCritical9 {
		t.Fatalf("chi-square %.1f > %.1f: counts %v", x, chiSquareCritical9, counts)
	}
	for _, b := range p.Backends()[10:] {
		if counts[b.ID] != 0 {
			t.Errorf("unhealthy %s picked %d times", b.ID, counts[b.ID])
		}
	}
}

func TestLeastConnections(t *testing.T) {
	p := testPool(t, storage.Pool{Algorithm: AlgorithmLeastConnections}, 1, 1, 1)
	bs := p.Backends()

	// Ties rotate: with nothing in flight every backend gets an equal share.
	counts := pickCounts(t, p, 9)
	for _, b := range bs {
		if counts[b.ID] != 3 {
			t.Fatalf("ties not rotated: %v", counts)
		}
	}

	// Held connections steer new ones to the least loaded backend until
	// the load is even.
	var held []*Attempt
	for range 5 {
		held = append(held, bs[0].Begin())
	}
	for range 10 {
		b := mustPick(t, p, PickRequest{})
		if b == bs[0] {
			t.Fatalf("picked %s with 5 connections while others had fewer", b.ID)
		}
		held = append(held, b.Begin())
	}
	for _, b := range bs {
		if c := b.CurrentConnections(); c != 5 {
			t.Errorf("%s has %d connections, want 5", b.ID, c)
		}
	}
	for _, a := range held {
		a.End(Result{Status: 200})
	}
	for _, b := range bs {
		if c := b.CurrentConnections(); c != 0 {
			t.Errorf("%s has %d connections after End, want 0", b.ID, c)
		}
	}
}

func TestLeastConnectionsWeighted(t *testing.T) {
	p := testPool(t, storage.Pool{Algorithm: AlgorithmLeastConnections}, 3, 1)
	var held []*Attempt
	for range 40 {
		b := mustPick(t, p, PickRequest{})
		held = append(held, b.Begin())
	}
	if a, b := p.Backends()[0].CurrentConnections(), p.Backends()[1].CurrentConnections(); a != 30 || b != 10 {
		t.Fatalf("connections %d/%d, want 30/10 for weights 3:1", a, b)
	}
	for _, a := range held {
		a.End(Result{})
	}
}

func TestPowerOfTwoChoicesPrefersLessLoaded(t *testing.T) {
	p := testPool(t, storage.Pool{Algorithm: AlgorithmPowerOfTwoChoices}, uniform(10)...)
	bs := p.Backends()
	var held []*Attempt
	for range 100 {
		held = append(held, bs[0].Begin())
	}
	counts := pickCounts(t, p, 10000)
	if counts[bs[0].ID] != 0 {
		t.Fatalf("loaded backend picked %d times; two choices always see a less loaded one", counts[bs[0].ID])
	}
	// The rest share evenly (chi-square, 8 degrees of freedom, p = 1e-6).
	exp := make([]float64, 9)
	for i := range exp {
		exp[i] = 10000.0 / 9
	}
	if x := chiSquare(counts, ids(bs[1:]), exp); x > 43.1 {
		t.Fatalf("chi-square %.1f: counts %v", x, counts)
	}
	for _, a := range held {
		a.End(Result{})
	}

	// Under held load p2c keeps the spread tight.
	held = held[:0]
	for range 1000 {
		held = append(held, mustPick(t, p, PickRequest{}).Begin())
	}
	lo, hi := int64(math.MaxInt64), int64(0)
	for _, b := range bs {
		c := b.CurrentConnections()
		lo, hi = min(lo, c), max(hi, c)
	}
	// Random placement of 1000 over 10 spreads by ~±30; two choices keep
	// max-min within a handful.
	if hi-lo > 10 {
		t.Errorf("spread %d..%d under p2c", lo, hi)
	}
	for _, a := range held {
		a.End(Result{})
	}
}

func TestPowerOfTwoChoicesFewEligible(t *testing.T) {
	p := testPool(t, storage.Pool{Algorithm: AlgorithmPowerOfTwoChoices}, uniform(10)...)
	for i, b := range p.Backends() {
		if i != 7 {
			b.live.healthy.Store(false)
		}
	}
	for range 100 {
		if b := mustPick(t, p, PickRequest{}); b.ID != "b007" {
			t.Fatalf("picked unhealthy %s", b.ID)
		}
	}
	single := testPool(t, storage.Pool{Algorithm: AlgorithmPowerOfTwoChoices}, 1)
	if b := mustPick(t, single, PickRequest{}); b.ID != "b000" {
		t.Fatalf("single backend pool picked %s", b.ID)
	}
}

func hashKeys(n int) []netip.Addr {
	keys := make([]netip.Addr, n)
	for i := range keys {
		keys[i] = netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
	}
	return keys
}

func TestConsistentHashStableAndBalanced(t *testing.T) {
	pool := storage.Pool{Algorithm: AlgorithmConsistentHash, HashOn: HashOnClientIP}
	p := testPool(t, pool, uniform(10)...)
	keys := hashKeys(10000)
	counts := map[string]int{}
	for _, k := range keys {
		b := mustPick(t, p, PickRequest{ClientIP: k})
		counts[b.ID]++
		for range 3 {
			if again := mustPick(t, p, PickRequest{ClientIP: k}); again != b {
				t.Fatalf("key %s moved from %s to %s", k, b.ID, again.ID)
			}
		}
	}
	exp := make([]float64, 10)
	for i := range exp {
		exp[i] = 1000
	}
	if x := chiSquare(counts, ids(p.Backends()), exp); x > chiSquareCritical9 {
		t.Fatalf("unbalanced: chi-square %.1f, counts %v", x, counts)
	}

	// Another agent (another table, another process) maps keys the same way.
	other := testPool(t, pool, uniform(10)...)
	for _, k := range keys[:500] {
		if a, b := mustPick(t, p, PickRequest{ClientIP: k}), mustPick(t, other, PickRequest{ClientIP: k}); a.ID != b.ID {
			t.Fatalf("key %s: %s on one table, %s on another", k, a.ID, b.ID)
		}
	}
}

func TestConsistentHashMinimalMovement(t *testing.T) {
	for _, weights := range [][]int{uniform(10), {1, 2, 3, 4, 5, 1, 2, 3, 4, 5}} {
		t.Run(fmt.Sprint(weights), func(t *testing.T) {
			pool := storage.Pool{Name: "p", Algorithm: AlgorithmConsistentHash}
			full := testPool(t, pool, weights...)
			keys := hashKeys(10000)
			before := map[netip.Addr]string{}
			for _, k := range keys {
				before[k] = mustPick(t, full, PickRequest{ClientIP: k}).ID
			}

			// Removing b004 from the configuration moves its keys and, since
			// Maglev's disruption is minimal rather than exact (the removed
			// backend's turns shift some others' slots), a few more: fewer
			// than b004 owned, so less than twice its share moves in all.
			var backends []storage.Backend
			for i, w := range weights {
				if i != 4 {
					backends = append(backends, storage.Backend{ID: fmt.Sprintf("b%03d", i), PoolName: "p", Host: "127.0.0.1", Port: 9000 + i, Weight: w})
				}
			}
			removed := NewTable([]storage.Pool{pool}, backends, nil, TableOptions{}).Pool("p")
			moved, owned := 0, 0
			for _, k := range keys {
				now := mustPick(t, removed, PickRequest{ClientIP: k}).ID
				if before[k] == "b004" {
					owned++
					continue
				}
				if now != before[k] {
					moved++
				}
			}
			if owned == 0 {
				t.Fatal("removed backend owned no keys")
			}
			t.Logf("removed backend owned %d of %d keys; %d others moved", owned, len(keys), moved)
			if moved >= owned {
				t.Fatalf("%d keys not on the removed backend moved, it owned %d", moved, owned)
			}

			// An unhealthy backend behaves like a removed one, and its keys come
			// back when it recovers.
			full.Backend("b004").live.healthy.Store(false)
			for _, k := range keys {
				now := mustPick(t, full, PickRequest{ClientIP: k}).ID
				if now == "b004" || (before[k] != "b004" && now != before[k]) {
					t.Fatalf("key %s: %s before, %s with b004 down", k, before[k], now)
				}
			}
			full.Backend("b004").live.healthy.Store(true)
			for _, k := range keys {
				if now := mustPick(t, full, PickRequest{ClientIP: k}).ID; now != before[k] {
					t.Fatalf("key %s did not return to %s", k, before[k])
				}
			}
		})
	}
}

func TestConsistentHashWeighted(t *testing.T) {
	p := testPool(t, storage.Pool{Algorithm: AlgorithmConsistentHash}, 1, 2, 3, 4)
	keys := hashKeys(20000)
	counts := map[string]int{}
	for _, k := range keys {
		counts[mustPick(t, p, PickRequest{ClientIP: k}).ID]++
	}
	exp := []float64{2000, 4000, 6000, 8000}
	// 3 degrees of freedom, p = 1e-6.
	if x := chiSquare(counts, ids(p.Backends()), exp); x > 30.7 {
		t.Fatalf("shares not proportional to weight: chi-square %.1f, counts %v", x, counts)
	}
}

func TestConsistentHashHeader(t *testing.T) {
	p := testPool(t, storage.Pool{Algorithm: AlgorithmConsistentHash, HashOn: "header:X-User"}, uniform(10)...)
	if p.HashHeader() != "X-User" {
		t.Fatalf("HashHeader = %q", p.HashHeader())
	}
	ip := netip.MustParseAddr("192.0.2.1")
	seen := map[string]bool{}
	for i := range 200 {
		key := fmt.Sprintf("user-%d", i)
		b := mustPick(t, p, PickRequest{ClientIP: ip, HashKey: key})
		if again := mustPick(t, p, PickRequest{ClientIP: netip.MustParseAddr("192.0.2.99"), HashKey: key}); again != b {
			t.Fatalf("header key %s moved with the client IP", key)
		}
		seen[b.ID] = true
	}
	if len(seen) < 8 {
		t.Fatalf("200 header keys reached only %d of 10 backends", len(seen))
	}
	// No header: the client IP keys it.
	a := mustPick(t, p, PickRequest{ClientIP: ip})
	for range 10 {
		if b := mustPick(t, p, PickRequest{ClientIP: ip}); b != a {
			t.Fatal("client IP fallback not stable")
		}
	}
	// Neither: still served.
	mustPick(t, p, PickRequest{})

	if ipPool := testPool(t, storage.Pool{Algorithm: AlgorithmConsistentHash}, 1); ipPool.HashHeader() != "" {
		t.Fatalf("client_ip pool HashHeader = %q", ipPool.HashHeader())
	}
}

func TestPickSkipsUnavailableEveryAlgorithm(t *testing.T) {
	for _, algo := range Algorithms() {
		t.Run(algo, func(t *testing.T) {
			backends := []storage.Backend{
				{ID: "down", PoolName: "p", Host: "127.0.0.1", Port: 1},
				{ID: "draining", PoolName: "p", Host: "127.0.0.1", Port: 2, Draining: true},
				{ID: "ejected", PoolName: "p", Host: "127.0.0.1", Port: 3},
				{ID: "ok", PoolName: "p", Host: "127.0.0.1", Port: 4},
			}
			tbl := NewTable([]storage.Pool{{Name: "p", Algorithm: algo}}, backends, nil, TableOptions{})
			p := tbl.Pool("p")
			p.Backend("down").live.healthy.Store(false)
			ejectNow(p.Backend("ejected"))
			for i := range 200 {
				req := PickRequest{ClientIP: netip.AddrFrom4([4]byte{10, 0, 0, byte(i)})}
				if b := mustPick(t, p, req); b.ID != "ok" {
					t.Fatalf("picked %s", b.ID)
				}
			}
			// Excluding the only available backend leaves nothing.
			if _, err := p.Pick(PickRequest{Exclude: []*Backend{p.Backend("ok")}}); !errors.Is(err, ErrNoBackend) {
				t.Fatalf("Pick excluding the last backend: %v", err)
			}
		})
	}
}

func ejectNow(b *Backend) {
	b.live.ejectedUntil.Store(math.MaxInt64)
}

func TestPickExcludeForRetries(t *testing.T) {
	p := testPool(t, storage.Pool{Algorithm: AlgorithmRoundRobin}, uniform(3)...)
	var tried []*Backend
	for range 3 {
		b := mustPick(t, p, PickRequest{Exclude: tried})
		for _, x := range tried {
			if x == b {
				t.Fatalf("picked excluded %s", b.ID)
			}
		}
		tried = append(tried, b)
	}
	if _, err := p.Pick(PickRequest{Exclude: tried}); !errors.Is(err, ErrNoBackend) {
		t.Fatalf("all excluded: %v", err)
	}
}

func TestPickNoBackendAndFailOpen(t *testing.T) {
	empty := testPool(t, storage.Pool{}, []int{}...)
	if _, err := empty.Pick(PickRequest{}); !errors.Is(err, ErrNoBackend) {
		t.Fatalf("empty pool: %v", err)
	}

	closed := testPool(t, storage.Pool{}, 1, 1)
	open := testPool(t, storage.Pool{FailOpen: true}, 1, 1)
	for _, p := range []*Pool{closed, open} {
		for _, b := range p.Backends() {
			b.live.healthy.Store(false)
		}
	}
	if _, err := closed.Pick(PickRequest{}); !errors.Is(err, ErrNoBackend) {
		t.Fatalf("all unhealthy without fail_open: %v", err)
	}
	seen := map[string]bool{}
	for range 10 {
		seen[mustPick(t, open, PickRequest{}).ID] = true
	}
	if len(seen) != 2 {
		t.Fatalf("fail_open picked %v, want both backends", seen)
	}

	// Draining backends stay out even when failing open.
	drain := NewTable([]storage.Pool{{Name: "p", FailOpen: true}}, []storage.Backend{
		{ID: "d", PoolName: "p", Host: "127.0.0.1", Port: 1, Draining: true},
	}, nil, TableOptions{}).Pool("p")
	if _, err := drain.Pick(PickRequest{}); !errors.Is(err, ErrNoBackend) {
		t.Fatalf("draining only, fail_open: %v", err)
	}
}

func TestPreferRegion(t *testing.T) {
	pools := []storage.Pool{{Name: "p", PreferRegion: true}, {Name: "q"}}
	var backends []storage.Backend
	for i, region := range []string{"iad", "iad", "syd", "syd", ""} {
		for _, pool := range []string{"p", "q"} {
			backends = append(backends, storage.Backend{ID: fmt.Sprintf("%s-%d-%s", pool, i, region), PoolName: pool, Host: "127.0.0.1", Port: 9000 + i, Region: region})
		}
	}
	tbl := NewTable(pools, backends, nil, TableOptions{Region: "syd"})
	p := tbl.Pool("p")
	counts := pickCounts(t, p, 100)
	if counts["p-2-syd"] != 50 || counts["p-3-syd"] != 50 {
		t.Fatalf("prefer_region picks %v, want only the syd backends", counts)
	}
	// Local backends down: fail over to the others.
	p.Backend("p-2-syd").live.healthy.Store(false)
	ejectNow(p.Backend("p-3-syd"))
	counts = pickCounts(t, p, 90)
	if counts["p-2-syd"]+counts["p-3-syd"] != 0 || len(counts) != 3 {
		t.Fatalf("failover picks %v, want the three non-syd backends", counts)
	}
	// A pool without prefer_region ignores regions.
	if counts := pickCounts(t, tbl.Pool("q"), 100); len(counts) != 5 {
		t.Fatalf("pool without prefer_region picked %v", counts)
	}
	// An agent in a region with no backends uses them all.
	other := NewTable(pools, backends, nil, TableOptions{Region: "ams"}).Pool("p")
	if counts := pickCounts(t, other, 100); len(counts) != 5 {
		t.Fatalf("agent in a region without backends picked %v", counts)
	}
}

func TestStickySessions(t *testing.T) {
	key := []byte("0123456789abcdef0123456789abcdef")
	pool := storage.Pool{Name: "p", StickyCookie: "edge_sticky", Algorithm: AlgorithmRoundRobin}
	tbl := testTableWith(pool, TableOptions{CookieKey: key}, uniform(5)...)
	p := tbl.Pool("p")
	if p.StickyCookieName() != "edge_sticky" {
		t.Fatalf("StickyCookieName = %q", p.StickyCookieName())
	}
	b3 := p.Backend("b003")
	value := p.StickyValue(b3)
	if value == "" || value != b3.StickyValue() || strings.ContainsAny(value, " ;,\"\\") {
		t.Fatalf("StickyValue = %q", value)
	}
	id, ok := p.VerifySticky(value)
	if !ok || id != "b003" {
		t.Fatalf("VerifySticky = %q %v", id, ok)
	}
	for range 10 {
		if b := mustPick(t, p, PickRequest{StickyID: id}); b != b3 {
			t.Fatalf("sticky pick = %s, want b003", b.ID)
		}
	}

	// Another agent with the same key honours the cookie; one with another
	// key does not.
	same := testTableWith(pool, TableOptions{CookieKey: key}, uniform(5)...).Pool("p")
	if id, ok := same.VerifySticky(value); !ok || id != "b003" {
		t.Fatalf("same key on another table: %q %v", id, ok)
	}
	otherKey := testTableWith(pool, TableOptions{CookieKey: []byte("another key another key another!")}, uniform(5)...).Pool("p")
	if _, ok := otherKey.VerifySticky(value); ok {
		t.Fatal("value accepted under another key")
	}
	// Another pool with the same key and backend ids rejects it.
	otherPool := testTableWith(storage.Pool{Name: "q", StickyCookie: "edge_sticky"}, TableOptions{CookieKey: key}, uniform(5)...).Pool("q")
	if _, ok := otherPool.VerifySticky(value); ok {
		t.Fatal("value of pool p accepted by pool q")
	}

	// Tampering: flip each character, truncate, swap the id.
	for i := range value {
		c := value[i] ^ 1
		if _, ok := p.VerifySticky(value[:i] + string(c) + value[i+1:]); ok {
			t.Fatalf("tampered value (byte %d) accepted", i)
		}
	}
	if _, ok := p.VerifySticky(value[:len(value)-1]); ok {
		t.Fatal("truncated value accepted")
	}
	forged := p.StickyValue(p.Backend("b001"))
	_, mac, _ := strings.Cut(forged, ".")
	idPart, _, _ := strings.Cut(value, ".")
	if _, ok := p.VerifySticky(idPart + "." + mac); ok {
		t.Fatal("value with another backend's signature accepted")
	}
	for _, junk := range []string{"", ".", "b003", "YjAwMw", "YjAwMw.", "YjAwMw.AAAAAAAAAAAAAAAAAAAAAA"} {
		if _, ok := p.VerifySticky(junk); ok {
			t.Fatalf("junk %q accepted", junk)
		}
	}

	// A stale value (its backend is gone) is not ok.
	gone := testTableWith(pool, TableOptions{CookieKey: key}, uniform(3)...).Pool("p")
	if _, ok := gone.VerifySticky(value); ok {
		t.Fatal("value of a removed backend accepted")
	}

	// The sticky backend unhealthy: another one is picked.
	b3.live.healthy.Store(false)
	if b := mustPick(t, p, PickRequest{StickyID: "b003"}); b == b3 {
		t.Fatal("unhealthy sticky backend picked")
	}
	b3.live.healthy.Store(true)
	// Excluded (a retry): another one.
	if b := mustPick(t, p, PickRequest{StickyID: "b003", Exclude: []*Backend{b3}}); b == b3 {
		t.Fatal("excluded sticky backend picked")
	}
	// Unknown id: the algorithm decides.
	mustPick(t, p, PickRequest{StickyID: "nope"})

	// A non-sticky pool has no cookie and ignores StickyID.
	plain := testPool(t, storage.Pool{Algorithm: AlgorithmRoundRobin}, uniform(2)...)
	if plain.StickyCookieName() != "" || plain.StickyValue(plain.Backends()[0]) != "" {
		t.Fatal("non-sticky pool has a cookie")
	}
	if _, ok := plain.VerifySticky(value); ok {
		t.Fatal("non-sticky pool verified a value")
	}
	a, b := mustPick(t, plain, PickRequest{StickyID: "b000"}), mustPick(t, plain, PickRequest{StickyID: "b000"})
	if a == b {
		t.Fatal("non-sticky pool honoured StickyID")
	}
}

// TestPickConcurrentWithHealthChanges hammers every algorithm from many
// goroutines while backends flap; run with -race.
func TestPickConcurrentWithHealthChanges(t *testing.T) {
	for _, algo := range Algorithms() {
		t.Run(algo, func(t *testing.T) {
			p := testPool(t, storage.Pool{Algorithm: algo, FailOpen: true}, 1, 2, 3, 4, 5)
			stop := make(chan struct{})
			var flapper sync.WaitGroup
			flapper.Add(1)
			go func() {
				defer flapper.Done()
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					b := p.Backends()[i%5]
					b.live.healthy.Store(i%3 != 0)
				}
			}()
			var wg sync.WaitGroup
			for w := range 8 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range 2000 {
						b, err := p.Pick(PickRequest{ClientIP: netip.AddrFrom4([4]byte{10, 0, byte(w), byte(i)})})
						if err != nil {
							t.Error(err)
							return
						}
						b.Begin().End(Result{Status: 200})
					}
				}()
			}
			wg.Wait()
			close(stop)
			flapper.Wait()
			var total int64
			for _, b := range p.Backends() {
				total += b.State().TotalRequests
				if c := b.CurrentConnections(); c != 0 {
					t.Errorf("%s has %d connections left", b.ID, c)
				}
			}
			if total != 8*2000 {
				t.Fatalf("total requests %d, want %d", total, 8*2000)
			}
		})
	}
}

// TestConsistentHashWeightedFallback: when the Maglev probes find no
// available backend, the rendezvous fallback must still share keys in
// proportion to the weights. Driven both directly and through Pick with
// most of the pool down (so that most picks take the fallback).
func TestConsistentHashWeightedFallback(t *testing.T) {
	weights := []int{1, 2, 3, 4}
	exp := []float64{2000, 4000, 6000, 8000}
	keys := hashKeys(20000)

	p := testPool(t, storage.Pool{Algorithm: AlgorithmConsistentHash}, weights...)
	counts := map[string]int{}
	for _, k := range keys {
		ip := k.As16()
		counts[p.all.pickRendezvous(mix64(fnv64Bytes(ip[:])), &pickFilter{}).ID]++
	}
	// 3 degrees of freedom, p = 1e-6.
	if x := chiSquare(counts, ids(p.Backends()), exp); x > 30.7 {
		t.Fatalf("rendezvous shares not proportional to weight: chi-square %.1f, counts %v", x, counts)
	}

	// Through Pick: 4 weighted backends up and 400 down.
	all := append(append([]int(nil), weights...), uniform(400)...)
	p = testPool(t, storage.Pool{Algorithm: AlgorithmConsistentHash}, all...)
	for _, b := range p.Backends()[len(weights):] {
		b.live.healthy.Store(false)
	}
	fallbacks := 0
	counts = map[string]int{}
	for _, k := range keys {
		b := mustPick(t, p, PickRequest{ClientIP: k})
		counts[b.ID]++
		ip := k.As16()
		if p.all.pickMaglev(mix64(fnv64Bytes(ip[:])), &pickFilter{}) == nil {
			fallbacks++
		}
	}
	if fallbacks < len(keys)/4 {
		t.Fatalf("only %d of %d picks took the fallback: the test does not exercise it", fallbacks, len(keys))
	}
	if x := chiSquare(counts, ids(p.Backends()[:len(weights)]), exp); x > 30.7 {
		t.Fatalf("shares with the fallback not proportional to weight: chi-square %.1f, counts %v", x, counts)
	}
}
