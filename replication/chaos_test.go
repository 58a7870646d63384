package replication

// Protocol property test with the in-memory store model (re-point at the
// storage adapter after the merge): random writes and deletes on every
// node while the membership is cut into random partitions and engines are
// stopped and restarted mid-stream; after the last heal every node holds
// exactly what a sequential last-write-wins oracle computes from every
// write ever committed.

import (
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"testing"
	"time"
)

func TestChaosConvergesToLWWOracle(t *testing.T) {
	if testing.Short() {
		t.Skip("long")
	}
	tc := newTestCluster()
	ids := []string{"a", "b", "c", "d"}
	stores := map[string]*memStore{}
	nodes := map[string]*node{}
	for _, id := range ids {
		stores[id] = newMemStore(id, false)
		nodes[id] = startEngine(t, tc, id, stores[id], [][]byte{testSecret('k')})
	}
	rng := rand.New(rand.NewPCG(1, 2))
	deadline := time.Now().Add(6 * time.Second)
	round := 0
	for time.Now().Before(deadline) {
		round++
		switch rng.IntN(4) {
		case 0: // random partition
			perm := rng.Perm(len(ids))
			cut := 1 + rng.IntN(len(ids)-1)
			var g1, g2 []string
			for i, p := range perm {
				if i < cut {
					g1 = append(g1, ids[p])
				} else {
					g2 = append(g2, ids[p])
				}
			}
			tc.partition(g1, g2)
		case 1: // heal
			tc.partition(ids)
		case 2: // restart an engine; its store (the disk) survives
			id := ids[rng.IntN(len(ids))]
			nodes[id].stop()
			nodes[id] = startEngine(t, tc, id, stores[id], [][]byte{testSecret('k')})
		}
		for range 20 {
			id := ids[rng.IntN(len(ids))]
			k := fmt.Sprintf("k%d", rng.IntN(30))
			if rng.IntN(5) == 0 {
				stores[id].write(map[string]*string{k: nil})
			} else {
				stores[id].write(map[string]*string{k: str(fmt.Sprintf("%s-%d", id, round))})
			}
		}
		time.Sleep(time.Duration(rng.IntN(150)) * time.Millisecond)
	}
	tc.partition(ids)
	all := make([]*node, 0, len(ids))
	for _, id := range ids {
		all = append(all, nodes[id])
	}
	waitConverged(t, all...)

	// The oracle: for each key, the highest (hlc, origin) among every
	// version any node ever wrote, taken from the writes themselves.
	oracle := map[string]memRow{}
	writes := 0
	for _, s := range stores {
		s.mu.Lock()
		for _, w := range s.written {
			writes++
			if o, ok := oracle[w.Key]; !ok || w.memRow.beats(o) {
				oracle[w.Key] = w.memRow
			}
		}
		s.mu.Unlock()
	}
	keys := make([]string, 0, len(oracle))
	for k := range oracle {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var want strings.Builder
	for _, k := range keys {
		r := oracle[k]
		fmt.Fprintf(&want, "%s=%q del=%v v=(%d,%s,%d)\n", k, r.Val, r.Deleted, r.HLC, r.Origin, r.Seq)
	}
	if got := stores["a"].dump(); got != want.String() {
		t.Fatalf("converged state differs from the LWW oracle:\n got %s\nwant %s", got, want.String())
	}
	// Every node holds every origin's full range.
	for _, id := range ids {
		for _, o := range ids {
			if h, own := stores[id].heldOf(o), stores[o].heldOf(o); h.String() != own.String() {
				t.Fatalf("%s holds %v of %s, which issued %v", id, h, o, own)
			}
		}
	}
	t.Logf("%d rounds, %d writes, %d keys", round, writes, len(keys))
}
