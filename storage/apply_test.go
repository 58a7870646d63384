package storage

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"
)

func poolChange(t testing.TB, name, algo string, v Version) Change {
	t.Helper()
	p := Pool{Name: name, Algorithm: algo, SSLDomain: name + ".example.com"}
	return Change{Table: TablePools, Key: name, Version: v, Value: encodePool(&p)}
}

func deleteChange(table, key string, v Version) Change {
	return Change{Table: table, Key: key, Deleted: true, Version: v}
}

func ver(hlc uint64, origin string, seq uint64) Version {
	return Version{HLC: HLC(hlc), Origin: origin, Seq: seq}
}

func TestApplyLastWriteWins(t *testing.T) {
	ctx := context.Background()
	u1 := ChangeSet{Origin: "a", Seq: 1, HLC: 100, Changes: []Change{poolChange(t, "p", "round_robin", ver(100, "a", 1))}}
	del := ChangeSet{Origin: "b", Seq: 1, HLC: 200, Changes: []Change{deleteChange(TablePools, "p", ver(200, "b", 1))}}
	u2 := ChangeSet{Origin: "a", Seq: 2, HLC: 300, Changes: []Change{poolChange(t, "p", "random", ver(300, "a", 2))}}
	tieA := ChangeSet{Origin: "a", Seq: 3, HLC: 400, Changes: []Change{poolChange(t, "p", "tie-a", ver(400, "a", 3))}}
	tieB := ChangeSet{Origin: "b", Seq: 2, HLC: 400, Changes: []Change{poolChange(t, "p", "tie-b", ver(400, "b", 2))}}

	tests := []struct {
		name    string
		order   []ChangeSet
		want    string // algorithm of the live row; "" = deleted
		applied []int
	}{
		{"update then delete", []ChangeSet{u1, del}, "", []int{1, 1}},
		{"delete then older update", []ChangeSet{del, u1}, "", []int{1, 0}},
		{"delete then newer update", []ChangeSet{del, u2}, "random", []int{1, 1}},
		{"newer update then delete", []ChangeSet{u2, del}, "random", []int{1, 0}},
		{"all reversed", []ChangeSet{u2, del, u1}, "random", []int{1, 0, 0}},
		{"equal HLC: origin breaks the tie", []ChangeSet{tieB, tieA}, "tie-b", []int{1, 0}},
		{"equal HLC, other order", []ChangeSet{tieA, tieB}, "tie-b", []int{1, 1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := openStore(t)
			for i, cs := range tc.order {
				res, err := applySet(s, cs)
				if err != nil {
					t.Fatal(err)
				}
				if res.Applied != tc.applied[i] || res.Applied+res.Skipped != 1 {
					t.Fatalf("apply %d: %+v, want %d applied", i, res, tc.applied[i])
				}
				if (res.Index != 0) != (res.Applied > 0) {
					t.Fatalf("apply %d: feed index %d with %d applied", i, res.Index, res.Applied)
				}
			}
			p, err := s.GetPool(ctx, "p")
			if tc.want == "" {
				if !errors.Is(err, ErrNotFound) {
					t.Fatalf("want deleted, got %+v, %v", p, err)
				}
				if got, _ := s.PoolsBySSLDomain(ctx, "p.example.com"); len(got) != 0 {
					t.Fatalf("index entry of deleted pool: %v", got)
				}
				return
			}
			if err != nil || p.Algorithm != tc.want {
				t.Fatalf("got %+v, %v; want algorithm %q", p, err, tc.want)
			}
		})
	}
}

func TestApplyIdempotentAndEqualVersionNoop(t *testing.T) {
	s := openStore(t)
	cs := ChangeSet{Origin: "peer", Seq: 7, HLC: 1000, Changes: []Change{
		poolChange(t, "p", "random", ver(1000, "peer", 7)),
		{Table: TableBackends, Key: "b1", Version: ver(1000, "peer", 7), Value: encodeBackend(sampleBackend("b1", "p"))},
	}}
	res, err := applySet(s, cs)
	if err != nil || res.Applied != 2 || res.Index != 1 || res.Sets != 1 {
		t.Fatalf("first apply: %+v %v", res, err)
	}
	res, err = applySet(s, cs)
	if err != nil || res.Duplicates != 1 || res.Applied != 0 || res.Index != 0 {
		t.Fatalf("second apply: %+v %v", res, err)
	}
	if s.LastIndex() != 1 {
		t.Fatalf("last index %d: a no-op produced a feed event", s.LastIndex())
	}
	// Seq 7 alone is seen: 1..6 are gaps, not claimed.
	bk := s.Bookkeeping()
	if bk.Max("peer") != 7 || bk.Watermark("peer") != 0 || bk.Gaps("peer").String() != "1-6" {
		t.Fatalf("bookkeeping %v", bk)
	}
	// The local clock witnessed the peer's HLC: a local write now wins.
	if s.Clock().Last() < 1000 {
		t.Fatalf("clock %d did not witness the change sets", s.Clock().Last())
	}
	c := mustUpdate(t, s, func(tx *Tx) error { return tx.PutPool(samplePool("p")) })
	if !cs.Changes[0].Version.Less(c.Version) {
		t.Fatalf("local version %+v not newer than applied %+v", c.Version, cs.Changes[0].Version)
	}
}

func TestApplyRejectsBadInput(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	good := poolChange(t, "p", "x", ver(5, "o", 1))
	bad := []ChangeSet{
		{Origin: "", Seq: 1, HLC: 5, Changes: []Change{good}},
		{Origin: "o", Seq: 0, HLC: 5, Changes: []Change{good}},
		{Origin: "o", Seq: 1, HLC: 5, Changes: []Change{good, {Table: "nope", Key: "k", Version: ver(5, "o", 1)}}},
		{Origin: "o", Seq: 1, HLC: 5, Changes: []Change{good, {Table: TablePools, Key: "q", Version: ver(5, "o", 1), Value: []byte{0xff, 0xff}}}},
		{Origin: "o", Seq: 1, HLC: 5, Changes: []Change{good, {Table: TablePools, Key: "other", Version: ver(5, "o", 1), Value: good.Value}}},
		{Origin: "o", Seq: 1, HLC: 5, Changes: []Change{good, good}},
		{Origin: "o", Seq: 1, HLC: 5, Changes: []Change{{Table: TablePools, Key: "p", Value: good.Value}}},
		{Origin: "o", Seq: 1, HLC: 5, Changes: []Change{{Table: TablePools, Key: "p", Deleted: true, Version: ver(5, "o", 1), Value: good.Value}}},
		{Origin: "o", Seq: 1, HLC: 5, Changes: []Change{{Table: TableObservations, Key: "no-separator", Deleted: true, Version: ver(5, "o", 1)}}},
		// A change whose version is not its set's.
		{Origin: "o", Seq: 2, HLC: 5, Changes: []Change{good}},
		{Origin: "o", Seq: 1, HLC: 5, Changes: make([]Change, MaxChangeSetRows+1)},
	}
	for i, cs := range bad {
		if _, err := applySet(s, cs); err == nil {
			t.Errorf("change set %d accepted", i)
		}
	}
	if _, err := applySet(s, bad[2]); !errors.Is(err, ErrUnknownTable) {
		t.Errorf("unknown table: %v", err)
	}
	if _, err := applySet(s, bad[len(bad)-1]); !errors.Is(err, ErrTooLarge) {
		t.Errorf("too large: %v", err)
	}
	// One bad set fails the whole batch.
	ok := ChangeSet{Origin: "o", Seq: 1, HLC: 5, Changes: []Change{good}}
	if _, err := s.ApplyBatch(ctx, []ChangeSet{ok, bad[3]}); err == nil {
		t.Error("batch with a bad set accepted")
	}
	if s.LastIndex() != 0 || len(s.Bookkeeping()) != 0 || len(rawTable(t, s, TablePools)) != 0 {
		t.Fatal("a rejected change set stored something")
	}
}

// Three nodes write conflicting rows; two replicas receive all their change
// sets duplicated and in different random orders and must end equal, row
// by row, to each other and to the nodes after a full exchange.
func TestApplyConvergence(t *testing.T) {
	ctx := context.Background()
	nodes := make([]*Store, 3)
	for i := range nodes {
		id := fmt.Sprintf("node-%d", i)
		nodes[i] = openStore(t, func(c *Config) { c.NodeID = id })
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for round := 0; round < 40; round++ {
		n := nodes[rng.IntN(len(nodes))]
		_, err := n.Update(ctx, func(tx *Tx) error {
			for k := 0; k < 1+rng.IntN(3); k++ {
				name := fmt.Sprintf("p%d", rng.IntN(6))
				switch rng.IntN(4) {
				case 0:
					if err := tx.DeletePool(name); err != nil && !errors.Is(err, ErrNotFound) {
						return err
					}
				default:
					p := samplePool(name)
					p.Algorithm = fmt.Sprintf("algo-%d-%d", round, k)
					p.SSLDomain = fmt.Sprintf("d%d.example.com", rng.IntN(3))
					if err := tx.PutPool(p); err != nil {
						return err
					}
				}
				b := sampleBackend(fmt.Sprintf("b%d", rng.IntN(8)), fmt.Sprintf("p%d", rng.IntN(6)))
				if err := tx.PutBackend(b); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		// Sometimes a node learns about another node's writes before writing.
		if rng.IntN(3) == 0 {
			from := nodes[rng.IntN(len(nodes))]
			sets, _ := changeSetsOf(from, from.NodeID())
			for _, cs := range sets {
				if _, err := applySet(n, cs); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	var all []ChangeSet
	for _, n := range nodes {
		sets, err := changeSetsOf(n, n.NodeID())
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, sets...)
	}
	feed := func(s *Store, seed uint64) {
		sets := append(append([]ChangeSet(nil), all...), all[:len(all)/2]...)
		r := rand.New(rand.NewPCG(seed, seed))
		r.Shuffle(len(sets), func(i, j int) { sets[i], sets[j] = sets[j], sets[i] })
		for _, cs := range sets {
			// Through the wire format, as replication will.
			decoded, err := UnmarshalChangeSet(cs.Marshal())
			if err != nil {
				t.Fatal(err)
			}
			if _, err := applySet(s, decoded); err != nil {
				t.Fatal(err)
			}
		}
	}
	x := openStore(t, func(c *Config) { c.NodeID = "replica-x" })
	y := openStore(t, func(c *Config) { c.NodeID = "replica-y" })
	feed(x, 10)
	feed(y, 20)
	checkIndexes(t, x)
	checkIndexes(t, y)
	assertSameRows(t, x, y)
	for _, n := range nodes {
		for _, cs := range all {
			if _, err := applySet(n, cs); err != nil {
				t.Fatal(err)
			}
		}
		checkIndexes(t, n)
		assertSameRows(t, x, n)
	}
	_ = reflect.DeepEqual
	// Every row holds the highest version any change set carried for it.
	best := make(map[rowRef]Version)
	for _, cs := range all {
		for _, c := range cs.Changes {
			ref := rowRef{c.Table, c.Key}
			if v, ok := best[ref]; !ok || v.Less(c.Version) {
				best[ref] = c.Version
			}
		}
	}
	for ref, v := range best {
		r, err := decodeRow(rawTable(t, x, ref.table)[ref.key])
		if err != nil || r.version != v {
			t.Fatalf("%v: version %+v, want %+v (%v)", ref, r.version, v, err)
		}
	}
}

func TestChangeSetsBudgetAndCoverage(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	for i := 0; i < 10; i++ {
		mustUpdate(t, s, func(tx *Tx) error { return tx.PutPool(samplePool(fmt.Sprint("p", i))) })
	}
	// Overwrite p2: seq 3 is cleared, its row now under seq 11.
	mustUpdate(t, s, func(tx *Tx) error { return tx.PutPool(samplePool("p2")) })
	ans, err := s.ChangeSets(ctx, s.NodeID(), Span(2, 6), 0)
	if err != nil || len(ans.Sets) != 4 || ans.Covered.String() != "2-6" {
		t.Fatalf("answer %+v, %v", ans, err)
	}
	for _, cs := range ans.Sets {
		if cs.Seq == 3 {
			t.Fatalf("cleared seq 3 answered with %+v", cs)
		}
	}
	p, err := ans.Sets[0].Changes[0].Pool()
	if err != nil || p.Name != "p1" || p.Version.Seq != 2 {
		t.Fatalf("decoded %+v, %v", p, err)
	}
	// A byte budget cuts the answer after whole sets; Covered says where.
	ans, err = s.ChangeSets(ctx, s.NodeID(), Span(1, 11), 1)
	if err != nil || len(ans.Sets) != 1 || ans.Covered.String() != "1" {
		t.Fatalf("budgeted answer %+v, %v", ans, err)
	}
	// Seqs never seen are never covered.
	ans, err = s.ChangeSets(ctx, s.NodeID(), Span(5, 20), 0)
	if err != nil || ans.Covered.String() != "5-11" {
		t.Fatalf("answer beyond max: %+v, %v", ans.Covered, err)
	}
	if ans, _ := s.ChangeSets(ctx, "unknown-origin", Span(1, 5), 0); len(ans.Sets) != 0 || len(ans.Covered) != 0 {
		t.Fatalf("unknown origin: %+v", ans)
	}
}
