package pools

import (
	"fmt"
	"math/big"
	"net/netip"
	"slices"
	"testing"

	"github.com/singularity-ng/singularity-edge/storage"
)

func TestMaglevSizesArePrime(t *testing.T) {
	for _, n := range []int{1, 64, 65, 1024, 1025, maglevMaxBackends} {
		m := maglevSize(n)
		if !new(big.Int).SetUint64(m).ProbablyPrime(20) {
			t.Errorf("maglevSize(%d) = %d is not prime", n, m)
		}
		if m < uint64(n) || n <= 16384 && m < 64*uint64(n) {
			t.Errorf("maglevSize(%d) = %d: fewer than 64 slots per backend", n, m)
		}
	}
}

// The table gives every backend exactly its quota of slots, the quotas
// follow the weights to within a slot (every backend has one at least),
// and two builds from the same backends are identical.
func TestMaglevTableShares(t *testing.T) {
	for _, weights := range [][]int{
		{1},
		uniform(10),
		{1, 2, 3, 4, 5, 1, 2, 3, 4, 5},
		{1, 1000},
		{1000, 1000, 1000, 1000, 1000, 1000, 1000, 1},
		uniform(65), // the next table size
	} {
		name := fmt.Sprint(weights)
		if len(name) > 40 {
			name = fmt.Sprintf("%d backends", len(weights))
		}
		t.Run(name, func(t *testing.T) {
			p := testPool(t, storage.Pool{Algorithm: AlgorithmConsistentHash}, weights...)
			table := p.all.maglev
			m := maglevSize(len(weights))
			if uint64(len(table)) != m {
				t.Fatalf("table size %d, want %d", len(table), m)
			}
			slots := make([]uint64, len(weights))
			for _, i := range table {
				if int(i) >= len(weights) {
					t.Fatalf("slot holds backend index %d", i)
				}
				slots[i]++
			}
			if quota := maglevQuotas(p.all.backends, m); !slices.Equal(slots, quota) {
				t.Fatalf("slots per backend %v, quotas %v", slots, quota)
			}
			total := 0
			for _, w := range weights {
				total += w
			}
			for i, w := range weights {
				want := float64(m) * float64(w) / float64(total)
				if got := float64(slots[i]); got < want-1 && got != 1 || got > want+1 {
					t.Errorf("backend %d (weight %d): %v slots, want %.1f", i, w, got, want)
				}
			}
			again := buildMaglev(testPool(t, storage.Pool{Algorithm: AlgorithmConsistentHash}, weights...).all.backends)
			if !slices.Equal(table, again) {
				t.Fatal("two builds from the same backends differ")
			}
		})
	}
	if buildMaglev(nil) != nil {
		t.Fatal("table for no backends")
	}
}

// Adding a backend moves about its share of keys to it and few between the
// others.
func TestConsistentHashAddBackend(t *testing.T) {
	pool := storage.Pool{Name: "p", Algorithm: AlgorithmConsistentHash}
	before := testPool(t, pool, uniform(10)...)
	after := testPool(t, pool, uniform(11)...)
	keys := hashKeys(10000)
	toNew, between := 0, 0
	for _, k := range keys {
		a, b := mustPick(t, before, PickRequest{ClientIP: k}).ID, mustPick(t, after, PickRequest{ClientIP: k}).ID
		switch {
		case b == "b010":
			toNew++
		case a != b:
			between++
		}
	}
	t.Logf("new backend took %d of %d keys; %d moved between the others", toNew, len(keys), between)
	if toNew < 700 || toNew > 1100 {
		t.Fatalf("new backend took %d keys, want about 909", toNew)
	}
	if between >= toNew {
		t.Fatalf("%d keys moved between old backends, %d to the new one", between, toNew)
	}
}

// The keys of an unavailable backend spread over the available ones in
// proportion to weight rather than landing on one neighbour, and with
// nearly every backend down every key still finds the available one.
func TestConsistentHashUnavailableKeysSpread(t *testing.T) {
	p := testPool(t, storage.Pool{Algorithm: AlgorithmConsistentHash}, uniform(10)...)
	keys := hashKeys(20000)
	owner := map[netip.Addr]string{}
	for _, k := range keys {
		owner[k] = mustPick(t, p, PickRequest{ClientIP: k}).ID
	}
	p.Backend("b003").live.healthy.Store(false)
	counts := map[string]int{}
	for _, k := range keys {
		if owner[k] == "b003" {
			counts[mustPick(t, p, PickRequest{ClientIP: k}).ID]++
		}
	}
	moved := 0
	for _, c := range counts {
		moved += c
	}
	var others []string
	exp := []float64{}
	for _, b := range p.Backends() {
		if b.ID != "b003" {
			others = append(others, b.ID)
			exp = append(exp, float64(moved)/9)
		}
	}
	// 8 degrees of freedom, p = 1e-6: 42.6.
	if x := chiSquare(counts, others, exp); x > 42.6 {
		t.Fatalf("b003's %d keys went %v (chi-square %.1f)", moved, counts, x)
	}

	for _, b := range p.Backends() {
		if b.ID != "b007" {
			b.live.healthy.Store(false)
		}
	}
	for _, k := range keys[:2000] {
		if b := mustPick(t, p, PickRequest{ClientIP: k}); b.ID != "b007" {
			t.Fatalf("key %s picked unavailable %s", k, b.ID)
		}
	}
}

// A rebuild shares the lookup table of a pool whose backends (ids and
// weights) did not change, and builds a new one when they did.
func TestMaglevTableReusedAcrossRebuilds(t *testing.T) {
	pool := storage.Pool{Name: "p", Algorithm: AlgorithmConsistentHash, PreferRegion: true}
	backends := func(weights ...int) []storage.Backend {
		var out []storage.Backend
		for i, w := range weights {
			out = append(out, storage.Backend{ID: fmt.Sprintf("b%03d", i), PoolName: "p", Host: "127.0.0.1", Port: 9000 + i, Weight: w,
				Region: []string{"iad", "ams"}[i%2]})
		}
		return out
	}
	opts := TableOptions{Region: "iad", CookieKey: []byte("k")}
	states := func(_, addr string, _ *storage.Pool) *backendState { return newBackendState(addr, false) }
	first := buildTable([]storage.Pool{pool}, backends(1, 2, 3, 4), opts, nil, states)
	same := buildTable([]storage.Pool{pool, {Name: "other"}}, backends(1, 2, 3, 4), opts, first, states)
	p0, p1 := first.Pool("p"), same.Pool("p")
	if p0.local == nil || p1.local == nil {
		t.Fatal("no local group")
	}
	if &p0.all.maglev[0] != &p1.all.maglev[0] || &p0.local.maglev[0] != &p1.local.maglev[0] {
		t.Fatal("unchanged pool's tables rebuilt")
	}
	changed := buildTable([]storage.Pool{pool}, backends(1, 2, 5, 4), opts, same, states)
	p2 := changed.Pool("p")
	if &p2.all.maglev[0] == &p1.all.maglev[0] || &p2.local.maglev[0] == &p1.local.maglev[0] {
		t.Fatal("table kept after a weight changed")
	}
	fresh := NewTable([]storage.Pool{pool}, backends(1, 2, 5, 4), nil, opts).Pool("p")
	if !slices.Equal(p2.all.maglev, fresh.all.maglev) || !slices.Equal(p2.local.maglev, fresh.local.maglev) {
		t.Fatal("rebuilt table differs from a fresh one")
	}
	// Other algorithms have none.
	if rr := testPool(t, storage.Pool{}, uniform(3)...); rr.all.maglev != nil {
		t.Fatal("round-robin pool has a Maglev table")
	}
}
