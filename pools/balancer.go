package pools

import (
	"math"
	"math/rand/v2"
)

// Every balancer below chooses among the backends of a group that pass the
// filter and returns nil when none does. They run concurrently on one
// group: state is atomics, except smooth weighted round robin which needs a
// consistent view of all current weights and takes a short mutex. Health
// may change during a pick; a balancer then works with what it saw.

// randomTries bounds the rejection sampling of random and p2c before they
// fall back to scanning the eligible backends; with half the backends out,
// p2c still finds its two in 8 draws 96% of the time.
const randomTries = 8

// pickRoundRobin takes the next backend in id order, skipping ineligible
// ones.
func (g *group) pickRoundRobin(f *pickFilter) *Backend {
	n := uint64(len(g.backends))
	start := f.rotation(g) % n
	for i := uint64(0); i < n; i++ {
		idx := start + i
		if idx >= n {
			idx -= n
		}
		if b := g.backends[idx]; f.ok(b) {
			return b
		}
	}
	return nil
}

// pickLeastConnections takes the backend with the fewest requests in flight
// per unit of weight. The scan starts at a rotating position so that ties
// spread over the tied backends instead of always hitting the first.
func (g *group) pickLeastConnections(f *pickFilter) *Backend {
	n := uint64(len(g.backends))
	start := f.rotation(g) % n
	var best *Backend
	var bestConns int64
	for i := uint64(0); i < n; i++ {
		idx := start + i
		if idx >= n {
			idx -= n
		}
		b := g.backends[idx]
		if !f.ok(b) {
			continue
		}
		c := b.live.conns.Load()
		// c/b.Weight < bestConns/best.Weight without division.
		if best == nil || c*int64(best.Weight) < bestConns*int64(b.Weight) {
			best, bestConns = b, c
		}
	}
	return best
}

// pickWeighted is nginx's smooth weighted round robin: every eligible
// backend gains its weight, the largest current weight wins and pays back
// the total. Weights 5:1:1 give a a b a c a a, spreading the light backends
// through the cycle instead of bunching the heavy one.
func (g *group) pickWeighted(f *pickFilter) *Backend {
	g.wrrMu.Lock()
	defer g.wrrMu.Unlock()
	var total int64
	best := -1
	for i, b := range g.backends {
		if !f.ok(b) {
			continue
		}
		w := int64(b.Weight)
		g.wrrCur[i] += w
		total += w
		if best < 0 || g.wrrCur[i] > g.wrrCur[best] {
			best = i
		}
	}
	if best < 0 {
		return nil
	}
	g.wrrCur[best] -= total
	return g.backends[best]
}

// pickRandom takes a uniformly random eligible backend. Rejection sampling
// is uniform over the eligible set and O(1) while most backends are
// eligible; the fallback scans.
func (g *group) pickRandom(f *pickFilter) *Backend {
	n := len(g.backends)
	for range randomTries {
		if b := g.backends[rand.IntN(n)]; f.ok(b) {
			return b
		}
	}
	a, _ := g.sampleTwo(f)
	return a
}

// pickTwoChoices samples two distinct eligible backends at random and takes
// the one with fewer requests in flight per unit of weight.
func (g *group) pickTwoChoices(f *pickFilter) *Backend {
	n := len(g.backends)
	var a, b *Backend
	if n >= 2 {
		for range randomTries {
			c := g.backends[rand.IntN(n)]
			if c == a || !f.ok(c) {
				continue
			}
			if a == nil {
				a = c
				continue
			}
			b = c
			break
		}
	}
	if b == nil {
		a, b = g.sampleTwo(f)
		if b == nil {
			return a
		}
	}
	if lessLoaded(b, a) {
		return b
	}
	return a
}

// sampleTwo draws two distinct eligible backends uniformly at random: one
// pass counts them, a second finds the chosen ranks. b is nil when fewer
// than two are eligible, a too when none is. Health may change between the
// passes; then it returns what the second pass found.
func (g *group) sampleTwo(f *pickFilter) (a, b *Backend) {
	k := 0
	for _, c := range g.backends {
		if f.ok(c) {
			k++
		}
	}
	if k == 0 {
		return nil, nil
	}
	i, j := rand.IntN(k), -1
	if k >= 2 {
		j = rand.IntN(k - 1)
		if j >= i {
			j++
		}
	}
	var first *Backend
	n := 0
	for _, c := range g.backends {
		if !f.ok(c) {
			continue
		}
		if first == nil {
			first = c
		}
		switch n {
		case i:
			a = c
		case j:
			b = c
		}
		n++
	}
	if a == nil {
		a, b = b, nil
	}
	if a == nil {
		a = first
	}
	return a, b
}

func lessLoaded(x, y *Backend) bool {
	return x.live.conns.Load()*int64(y.Weight) < y.live.conns.Load()*int64(x.Weight)
}

// pickHash maps a key to a backend: through the group's Maglev table
// (maglev.go) when it has one, which is O(1) and moves only an unavailable
// backend's keys, else (no table, or every probed slot unavailable) by
// weighted rendezvous hashing over the available backends. Both depend
// only on the key and the backends' ids and weights, so every agent maps
// a key to the same backend. Without a key it falls back to random.
func (g *group) pickHash(byHeader bool, req *PickRequest, f *pickFilter) *Backend {
	var key uint64
	switch {
	case byHeader && req.HashKey != "":
		key = fnv64(req.HashKey)
	case req.ClientIP.IsValid():
		ip := req.ClientIP.Unmap().As16()
		key = fnv64Bytes(ip[:])
	case req.HashKey != "":
		key = fnv64(req.HashKey)
	default:
		return g.pickRandom(f)
	}
	key = mix64(key)
	if g.maglev != nil {
		if b := g.pickMaglev(key, f); b != nil {
			return b
		}
	}
	return g.pickRendezvous(key, f)
}

// pickRendezvous is weighted rendezvous (highest random weight) hashing:
// each eligible backend scores hash(key, backend id) and the highest wins.
// A key moves only when its backend leaves the eligible set (or one joins
// that outscores it). It scans the group: the fallback of pickHash.
func (g *group) pickRendezvous(key uint64, f *pickFilter) *Backend {
	// Weighted HRW: score = weight / -ln(u), u uniform in (0,1) from the
	// hash, gives each backend a share of keys proportional to its weight.
	// Within one weight the highest hash has the highest score, so only
	// the best of each weight class needs the logarithm.
	var best *Backend
	bestScore := math.Inf(-1)
	for _, class := range g.byWeight {
		var top *Backend
		var topHash uint64
		for _, b := range class {
			if !f.ok(b) {
				continue
			}
			if h := mix64(key ^ b.hashSeed); top == nil || h > topHash {
				top, topHash = b, h
			}
		}
		if top == nil {
			continue
		}
		if len(g.byWeight) == 1 {
			return top
		}
		u := (float64(topHash>>11) + 0.5) / (1 << 53)
		if s := float64(top.Weight) / -math.Log(u); best == nil || s > bestScore {
			best, bestScore = top, s
		}
	}
	return best
}

const (
	fnvOffset64 = 14695981039346656037
	fnvPrime64  = 1099511628211
)

func fnv64(s string) uint64 {
	h := uint64(fnvOffset64)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= fnvPrime64
	}
	return h
}

func fnv64Bytes(b []byte) uint64 {
	h := uint64(fnvOffset64)
	for _, c := range b {
		h ^= uint64(c)
		h *= fnvPrime64
	}
	return h
}

// mix64 is the splitmix64 finalizer: it spreads every input bit over the
// whole output, which FNV alone does not.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}
