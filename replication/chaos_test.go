package replication

// Protocol property test over real RocksDB stores: random writes and deletes on every
// node while the membership is cut into random partitions and engines are
// stopped and restarted mid-stream; after the last heal every node holds
// exactly what a sequential last-write-wins oracle computes from every
// write ever committed.

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/singularity-ng/singularity-edge/storage"
)

func TestChaosConvergesToLWWOracle(t *testing.T) {
	if testing.Short() {
		t.Skip("long")
	}
	tc := newTestCluster()
	ids := []string{"a", "b", "c", "d"}
	stores := map[string]*testStore{}
	nodes := map[string]*node{}
	for _, id := range ids {
		stores[id] = newTestStore(t, id)
		nodes[id] = startEngine(t, tc, id, stores[id], [][]byte{testSecret('k')})
	}
	// Writes start once every node holds the cluster's state (the agent
	// refuses writes before).
	for _, id := range ids {
		waitReady(t, nodes[id])
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

	// The oracle: for each key, the newest version (last-write-wins)
	// among every version any node ever wrote, taken from the writes
	// themselves.
	oracle := map[string]written{}
	writes := 0
	for _, s := range stores {
		s.mu.Lock()
		for _, w := range s.written {
			writes++
			if o, ok := oracle[w.Key]; !ok || o.Version.Less(w.Version) {
				oracle[w.Key] = w
			}
		}
		s.mu.Unlock()
	}
	got := poolRows(t, stores["a"])
	if len(got) != len(oracle) {
		t.Fatalf("a holds %d pool rows, the oracle %d", len(got), len(oracle))
	}
	for k, w := range oracle {
		r, ok := got[k]
		if !ok || r.Version != w.Version || r.Deleted != w.Deleted || (!w.Deleted && r.Row.Algorithm != w.Val) {
			t.Fatalf("key %s: store holds %+v (present %v), the oracle %+v", k, r, ok, w)
		}
	}
	// Every node holds every origin's full range.
	for _, id := range ids {
		for _, o := range ids {
			if h, own := stores[id].heldOf(o), stores[o].heldOf(o); h.String() != own.String() {
				t.Fatalf("%s holds %v of %s, which issued %v", id, h, o, own)
			}
		}
	}
	t.Logf("%d rounds, %d writes, %d keys", round, writes, len(oracle))
}

// poolRow is one line of the store's export for the pools table.
type poolRow struct {
	Key     string          `json:"key"`
	Version storage.Version `json:"version"`
	Deleted bool            `json:"deleted"`
	Row     struct {
		Algorithm string `json:"algorithm"`
	} `json:"row"`
}

func poolRows(t *testing.T, s *testStore) map[string]poolRow {
	t.Helper()
	out := map[string]poolRow{}
	for _, line := range strings.Split(s.dump(), "\n") {
		if !strings.Contains(line, `"table":"pools"`) {
			continue
		}
		var r poolRow
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatal(err)
		}
		out[r.Key] = r
	}
	return out
}
