package pools

import (
	"math/bits"
	"sort"
)

// Consistent hashing uses a Maglev lookup table (Eisenbud et al., "Maglev:
// A Fast and Reliable Software Network Load Balancer", NSDI 2016), built
// once per group when the table is built: a pick is one multiplication and
// one slice read, whatever the number of backends.
//
// Every backend walks its own permutation of the slots (an offset and a
// skip derived from a hash of its id, the table size being prime) and
// claims the first free slot on it, taking turns until the table is full.
// Turns are spread evenly over the fill in proportion to each backend's
// quota, and the quotas are the table size split by weight (largest
// remainder; every backend gets at least one slot), so a backend's share of
// keys is its share of the weight to within a slot. The table depends only
// on the backends' ids and weights, so every agent builds the same one and
// maps a key to the same backend.
//
// Removing or adding a backend moves that backend's keys and, unlike
// rendezvous hashing, a few others: its departure shifts some other
// backends' turns. Health does not rebuild the table: a key whose slot
// belongs to an unavailable backend probes further slots in a sequence
// derived from the key, so only that backend's keys move, they spread over
// the available backends in proportion to weight, and they come back when
// it does.

// maglevProbes bounds the slots tried for one key before consistent
// hashing falls back to weighted rendezvous over the available backends
// (one pass over the group). With half the backends unavailable that
// happens to one key in 65,536.
const maglevProbes = 16

// maglevMaxBackends is the largest group a table is built for: entries are
// uint16 backend indexes and 0xffff marks a free slot while filling.
// Larger groups use rendezvous hashing alone.
const maglevMaxBackends = 1<<16 - 1

// maglevEmpty marks a free slot while the table is filled.
const maglevEmpty = 1<<16 - 1

// maglevSize is the table size for n backends: a prime with at least 64
// slots per backend up to 16,384 backends, so that shares follow weights
// closely and a change moves few keys besides the changed backend's, while
// small pools keep small tables (4099 slots, 8 KiB). It depends on n alone,
// so every agent picks the same size; growing past 64 or 1,024 backends
// (or shrinking back) changes the size and remaps most keys once.
func maglevSize(n int) uint64 {
	switch {
	case n <= 64:
		return 4099
	case n <= 1024:
		return 65537
	default:
		return 1048573
	}
}

// buildMaglev returns the lookup table of backends bs (in their order,
// which the caller keeps stable: sorted by id): slot -> index into bs. Nil
// when bs is empty or too large.
func buildMaglev(bs []*Backend) []uint16 {
	n := len(bs)
	if n == 0 || n > maglevMaxBackends {
		return nil
	}
	m := maglevSize(n)
	quota := maglevQuotas(bs, m)

	// Claim order: backend i takes its turns in rounds ceil(k*R/quota[i]),
	// k = 1..quota[i], where R is the largest quota, so that every backend
	// claims at an even pace through the whole fill. Counting sort by
	// round, backends in index order within a round.
	var rounds uint64
	for _, q := range quota {
		rounds = max(rounds, q)
	}
	perRound := make([]uint32, rounds+2)
	for _, q := range quota {
		for k := uint64(1); k <= q; k++ {
			perRound[(k*rounds+q-1)/q]++
		}
	}
	var sum uint32
	for r := range perRound {
		c := perRound[r]
		perRound[r] = sum
		sum += c
	}
	order := make([]uint16, m)
	for i, q := range quota {
		for k := uint64(1); k <= q; k++ {
			r := (k*rounds + q - 1) / q
			order[perRound[r]] = uint16(i)
			perRound[r]++
		}
	}

	pos := make([]uint64, n)
	skip := make([]uint64, n)
	for i, b := range bs {
		pos[i] = mix64(b.hashSeed^0x6a09e667f3bcc909) % m
		skip[i] = mix64(b.hashSeed^0xbb67ae8584caa73b)%(m-1) + 1
	}
	table := make([]uint16, m)
	for i := range table {
		table[i] = maglevEmpty
	}
	for _, i := range order {
		for {
			slot := pos[i]
			if pos[i] += skip[i]; pos[i] >= m {
				pos[i] -= m
			}
			if table[slot] == maglevEmpty {
				table[slot] = i
				break
			}
		}
	}
	return table
}

// maglevQuotas splits m slots over bs in proportion to weight: floors
// first, the rest by largest remainder (ties to the lower index), then a
// slot for every backend left without one, taken from the largest quota.
func maglevQuotas(bs []*Backend, m uint64) []uint64 {
	n := len(bs)
	// Weights are clamped to the valid range (stored data that skipped
	// validation must not overflow the arithmetic).
	weight := func(b *Backend) uint64 { return uint64(min(max(b.Weight, 1), MaxWeight)) }
	var total uint64
	for _, b := range bs {
		total += weight(b)
	}
	quota := make([]uint64, n)
	rem := make([]uint64, n)
	byRem := make([]int, n)
	var assigned uint64
	for i, b := range bs {
		quota[i], rem[i] = m*weight(b)/total, m*weight(b)%total
		assigned += quota[i]
		byRem[i] = i
	}
	sort.SliceStable(byRem, func(a, b int) bool { return rem[byRem[a]] > rem[byRem[b]] })
	for k := 0; assigned < m; k++ {
		quota[byRem[k]]++
		assigned++
	}
	for i := range quota {
		if quota[i] > 0 {
			continue
		}
		largest := 0
		for j := range quota {
			if quota[j] > quota[largest] {
				largest = j
			}
		}
		quota[largest]--
		quota[i]++
	}
	return quota
}

// pickMaglev returns the backend of key's slot if the filter admits it,
// else the first admitted owner of maglevProbes further slots derived from
// the key; nil when none is.
func (g *group) pickMaglev(key uint64, f *pickFilter) *Backend {
	m := uint64(len(g.maglev))
	probe := key
	for i := 0; i <= maglevProbes; i++ {
		slot, _ := bits.Mul64(probe, m)
		if b := g.backends[g.maglev[slot]]; f.ok(b) {
			return b
		}
		probe = mix64(probe + 0x9e3779b97f4a7c15)
	}
	return nil
}
