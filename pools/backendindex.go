package pools

import (
	"hash/maphash"
	"math"
)

// backendIndex finds which pool of a table holds a backend id without a
// search of every pool: the Manager asks for every backend change in the
// feed, and most of those name a backend new to the table, which a search
// of every pool only finds missing after a binary search of each.
//
// It is keyed by a 64-bit hash of the id, not the id, and names pools by
// a small slot number, so that an entry is 16 bytes (a map of id strings
// to pool names would be 32, about 20 MB more at a million backends). The
// index is exact all the same: for each hash it holds how many backends
// with that hash each pool has, so a hash that is absent means no pool
// has the id, and one that is present names the only pools to search.
// Ids of several pools that share a hash (or an id listed in two pools)
// go to over.
type backendIndex struct {
	seed maphash.Seed
	// hash is maphash.String; tests replace it to force collisions.
	hash func(seed maphash.Seed, id string) uint64
	// m: hash → slot<<32 | count, the backends with that hash all in the
	// pool of slot; slot manySlots: they are in several pools, see over.
	m    map[uint64]uint64
	over map[uint64]map[uint32]uint32 // hash → slot → count

	slots map[string]uint32 // pool name → slot
	names []string          // slot → pool name
	sizes []int             // slot → backends indexed under it; 0: free
	free  []uint32
}

// manySlots marks a hash whose backends are in several pools.
const manySlots = math.MaxUint32

func newBackendIndex() backendIndex {
	return backendIndex{
		seed:  maphash.MakeSeed(),
		hash:  maphash.String,
		m:     make(map[uint64]uint64),
		over:  make(map[uint64]map[uint32]uint32),
		slots: make(map[string]uint32),
	}
}

// add records that pool holds backend id.
func (x *backendIndex) add(pool, id string) {
	slot := x.slotOf(pool)
	x.sizes[slot]++
	h := x.hash(x.seed, id)
	v, ok := x.m[h]
	switch {
	case !ok:
		x.m[h] = uint64(slot)<<32 | 1
	case uint32(v>>32) == slot:
		x.m[h] = v + 1
	case uint32(v>>32) != manySlots:
		x.over[h] = map[uint32]uint32{uint32(v >> 32): uint32(v), slot: 1}
		x.m[h] = manySlots << 32
	default:
		x.over[h][slot]++
	}
}

// remove records that pool no longer holds backend id, which it held.
func (x *backendIndex) remove(pool, id string) {
	slot, ok := x.slots[pool]
	if !ok {
		return
	}
	h := x.hash(x.seed, id)
	v, ok := x.m[h]
	switch {
	case !ok:
		return
	case uint32(v>>32) == slot:
		if uint32(v) == 1 {
			delete(x.m, h)
		} else {
			x.m[h] = v - 1
		}
	case uint32(v>>32) != manySlots:
		return
	default:
		counts := x.over[h]
		n, ok := counts[slot]
		if !ok {
			return
		}
		if n == 1 {
			delete(counts, slot)
		} else {
			counts[slot] = n - 1
		}
		if len(counts) == 1 {
			// One pool left: back to a plain entry.
			for s, n := range counts {
				x.m[h] = uint64(s)<<32 | uint64(n)
			}
			delete(x.over, h)
		}
	}
	if x.sizes[slot]--; x.sizes[slot] == 0 {
		delete(x.slots, pool)
		x.names[slot] = ""
		x.free = append(x.free, slot)
	}
}

func (x *backendIndex) slotOf(pool string) uint32 {
	if slot, ok := x.slots[pool]; ok {
		return slot
	}
	var slot uint32
	if n := len(x.free); n > 0 {
		slot = x.free[n-1]
		x.free = x.free[:n-1]
		x.names[slot] = pool
	} else {
		slot = uint32(len(x.names))
		x.names = append(x.names, pool)
		x.sizes = append(x.sizes, 0)
	}
	x.slots[pool] = slot
	return slot
}

// lookup returns the backend with id in t, the table the index is in step
// with, or nil. Like Table.Backend, an id in several pools (for a moment,
// between two feed events) is found in the first by name.
func (x *backendIndex) lookup(t *Table, id string) *Backend {
	h := x.hash(x.seed, id)
	v, ok := x.m[h]
	if !ok {
		return nil
	}
	if slot := uint32(v >> 32); slot != manySlots {
		if p := t.byName[x.names[slot]]; p != nil {
			return p.Backend(id)
		}
		return nil
	}
	var found *Backend
	for slot := range x.over[h] {
		if p := t.byName[x.names[slot]]; p != nil {
			if b := p.Backend(id); b != nil && (found == nil || b.PoolName < found.PoolName) {
				found = b
			}
		}
	}
	return found
}

// update moves the index from prev to t, its successor: pools carried over
// cost nothing, patched pools their patch's backends, other changed pools
// their backends. Every removal comes before any addition, so that a
// backend moving between pools leaves no shared entry behind.
func (x *backendIndex) update(prev, t *Table, patches map[*Pool]*poolPatch) {
	if len(x.m) == 0 && len(prev.pools) == 0 {
		// The first table: size the map once instead of growing it
		// through a million inserts.
		n := 0
		for _, p := range t.pools {
			n += len(p.backends)
		}
		x.m = make(map[uint64]uint64, n)
	}
	for _, pp := range prev.pools {
		np := t.byName[pp.Name]
		if np == pp {
			continue
		}
		bs := pp.backends
		if patch := patches[np]; patch != nil && patch.prev == pp {
			bs = patch.dropped
		}
		for _, b := range bs {
			x.remove(pp.Name, b.ID)
		}
	}
	for _, np := range t.pools {
		pp := prev.byName[np.Name]
		if np == pp {
			continue
		}
		bs := np.backends
		if patch := patches[np]; patch != nil && patch.prev == pp {
			bs = patch.added
		}
		for _, b := range bs {
			x.add(np.Name, b.ID)
		}
	}
}
