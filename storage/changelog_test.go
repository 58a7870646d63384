package storage

import (
	"bytes"
	"context"
	"reflect"
	"testing"
)

// rawChangeLog returns the stored change-log entry of origin/seq.
func rawChangeLog(t *testing.T, s *Store, origin string, seq uint64) []byte {
	t.Helper()
	b, err := s.getRaw(cfChangelog, changelogKey(origin, seq))
	if err != nil || b == nil {
		t.Fatalf("change-log entry %s/%d: %v", origin, seq, err)
	}
	return b
}

func TestChangeLogHoldsReferencesOnly(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	p := samplePool("web")
	p.Metadata = map[string]string{"owner": "a-long-enough-marker-value-to-find"}
	c := mustUpdate(t, s, func(tx *Tx) error {
		if err := tx.PutPool(p); err != nil {
			return err
		}
		return tx.PutBackend(sampleBackend("b1", "web"))
	})
	entry := rawChangeLog(t, s, s.NodeID(), c.Version.Seq)
	if entry[0] != formatChangeRefs {
		t.Fatalf("format byte %d", entry[0])
	}
	if bytes.Contains(entry, []byte("a-long-enough-marker")) {
		t.Fatalf("change-log entry holds a copy of the row: %q", entry)
	}
	refs, err := decodeChangeRefs(entry)
	if err != nil {
		t.Fatal(err)
	}
	want := []Change{
		{Table: TablePools, Key: "web", Version: c.Version},
		{Table: TableBackends, Key: "b1", Version: c.Version},
	}
	if refs.Origin != s.NodeID() || refs.Seq != c.Version.Seq || refs.HLC != c.Version.HLC || !reflect.DeepEqual(refs.Changes, want) {
		t.Fatalf("decoded %+v", refs)
	}

	// A peer's set: versions that differ from the set's are kept per change.
	cs := ChangeSet{Origin: "peer", Seq: 4, HLC: 900, Changes: []Change{
		poolChange(t, "relayed", "random", ver(800, "other", 2)),
		deleteChange(TableBackends, "gone", ver(900, "peer", 4)),
	}}
	if _, err := s.Apply(ctx, cs); err != nil {
		t.Fatal(err)
	}
	refs, err = decodeChangeRefs(rawChangeLog(t, s, "peer", 4))
	if err != nil {
		t.Fatal(err)
	}
	want = []Change{
		{Table: TablePools, Key: "relayed", Version: ver(800, "other", 2)},
		{Table: TableBackends, Key: "gone", Deleted: true, Version: ver(900, "peer", 4)},
	}
	if !reflect.DeepEqual(refs.Changes, want) {
		t.Fatalf("peer entry %+v", refs.Changes)
	}
	sets, err := s.ChangeSetsSince(ctx, "peer", 0, 0)
	if err != nil || len(sets) != 1 || len(sets[0].Changes) != 2 {
		t.Fatalf("peer sets %+v %v", sets, err)
	}
	if got, err := sets[0].Changes[0].Pool(); err != nil || got.Algorithm != "random" || got.Version != ver(800, "other", 2) {
		t.Fatalf("materialized %+v %v", got, err)
	}
	if !sets[0].Changes[1].Deleted || sets[0].Changes[1].Value != nil {
		t.Fatalf("materialized delete %+v", sets[0].Changes[1])
	}
}

func TestChangeSetsSinceLeavesOutSuperseded(t *testing.T) {
	a := openStore(t, func(c *Config) { c.NodeID = "a" })
	ctx := context.Background()
	mustUpdate(t, a, func(tx *Tx) error { // seq 1: both rows superseded below
		if err := tx.PutPool(samplePool("p1")); err != nil {
			return err
		}
		return tx.PutPool(samplePool("p2"))
	})
	mustUpdate(t, a, func(tx *Tx) error { // seq 2: p1 current, p3 superseded
		p := samplePool("p1")
		p.Algorithm = "random"
		if err := tx.PutPool(p); err != nil {
			return err
		}
		return tx.PutPool(samplePool("p3"))
	})
	mustUpdate(t, a, func(tx *Tx) error { return tx.DeletePool("p2") }) // seq 3
	mustUpdate(t, a, func(tx *Tx) error {                               // seq 4
		p := samplePool("p3")
		p.Algorithm = "least_connections"
		return tx.PutPool(p)
	})
	sets, err := a.ChangeSetsSince(ctx, "a", 0, 0)
	if err != nil || len(sets) != 4 {
		t.Fatalf("%d sets, %v", len(sets), err)
	}
	keys := func(cs ChangeSet) []string {
		var out []string
		for _, c := range cs.Changes {
			out = append(out, c.Key)
		}
		return out
	}
	wantKeys := [][]string{nil, {"p1"}, {"p2"}, {"p3"}}
	for i, cs := range sets {
		if cs.Seq != uint64(i+1) || !reflect.DeepEqual(keys(cs), wantKeys[i]) {
			t.Fatalf("set %d: seq %d keys %v, want %v", i, cs.Seq, keys(cs), wantKeys[i])
		}
	}
	if p, err := sets[1].Changes[0].Pool(); err != nil || p.Algorithm != "random" {
		t.Fatalf("p1 in set 2: %+v %v", p, err)
	}

	// Replicas fed the materialized sets (through the wire format), in
	// order and in reverse, converge and record every seq.
	var replicas []*Store
	for _, name := range []string{"r1", "r2"} {
		r := openStore(t, func(c *Config) { c.NodeID = name })
		for i := range sets {
			cs := sets[i]
			if name == "r2" {
				cs = sets[len(sets)-1-i]
			}
			decoded, err := UnmarshalChangeSet(cs.Marshal())
			if err != nil {
				t.Fatal(err)
			}
			if _, err := r.Apply(ctx, decoded); err != nil {
				t.Fatal(err)
			}
		}
		assertSameRows(t, a, r)
		if vv := r.VersionVector(); vv["a"] != 4 {
			t.Fatalf("replica %s version vector %v", name, vv)
		}
		replicas = append(replicas, r)
	}
	// r1 writes over one of a's rows; a writes on. r1 ships its sets to a,
	// and relays a's sets (some now superseded on r1) and its own to c,
	// which also hears from a directly. All converge.
	r1 := replicas[0]
	mustUpdate(t, r1, func(tx *Tx) error {
		p := samplePool("p1")
		p.Algorithm = "weighted_round_robin"
		return tx.PutPool(p)
	})
	mustUpdate(t, a, func(tx *Tx) error { return tx.PutPool(samplePool("p4")) })
	c := openStore(t, func(c *Config) { c.NodeID = "c" })
	for _, route := range []struct {
		from, to *Store
		origin   string
	}{{r1, a, "r1"}, {r1, c, "a"}, {r1, c, "r1"}, {a, c, "a"}, {a, r1, "a"}} {
		sets, err := route.from.ChangeSetsSince(ctx, route.origin, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, cs := range sets {
			if _, err := route.to.Apply(ctx, cs); err != nil {
				t.Fatal(err)
			}
		}
	}
	assertSameRows(t, a, r1)
	assertSameRows(t, a, c)
	if p, err := c.GetPool(ctx, "p1"); err != nil || p.Algorithm != "weighted_round_robin" {
		t.Fatalf("p1 on c: %+v %v", p, err)
	}
	if !reflect.DeepEqual(a.VersionVector(), c.VersionVector()) {
		t.Fatalf("version vectors %v vs %v", a.VersionVector(), c.VersionVector())
	}
}

// reopenAs reopens a closed store's directory with the same config.
func reopenAs(t *testing.T, closed *Store) *Store {
	t.Helper()
	s, err := Open(closed.cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// Stores written before the reference format hold marshalled change sets
// in the change log and inline subsets in the feed; both still read.
func TestChangeLogReadsLegacyEntries(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	cs := ChangeSet{Origin: "old", Seq: 1, HLC: 500, Changes: []Change{
		poolChange(t, "legacy", "random", ver(500, "old", 1)),
	}}
	res, err := s.Apply(ctx, cs)
	if err != nil || res.Index == 0 {
		t.Fatalf("apply %+v %v", res, err)
	}
	// Rewrite both entries the way the previous format stored them.
	var inline encoder
	inline.msg(3, cs.Marshal(), true)
	if err := s.base.PutCF(s.wo, s.cfs[cfChangelog], changelogKey("old", 1), cs.Marshal()); err != nil {
		t.Fatal(err)
	}
	if err := s.base.PutCF(s.wo, s.cfs[cfFeed], feedKey(res.Index), inline.b); err != nil {
		t.Fatal(err)
	}
	sets, err := s.ChangeSetsSince(ctx, "old", 0, 0)
	if err != nil || len(sets) != 1 || len(sets[0].Changes) != 1 {
		t.Fatalf("legacy sets %+v %v", sets, err)
	}
	if p, err := sets[0].Changes[0].Pool(); err != nil || p.Name != "legacy" {
		t.Fatalf("legacy change %+v %v", p, err)
	}
	subCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	evs := collect(t, s.Subscribe(subCtx, res.Index-1), res.Index-1, 1, false)
	if len(evs[0].Set.Changes) != 1 || evs[0].Set.Changes[0].Key != "legacy" {
		t.Fatalf("legacy feed entry %+v", evs[0].Set)
	}
	cancel()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = reopenAs(t, s)
	if vv := s.VersionVector(); vv["old"] != 1 {
		t.Fatalf("version vector after reopen %v", vv)
	}
	if s.Clock().Last() < 500 {
		t.Fatalf("clock %d below the legacy entry's HLC", s.Clock().Last())
	}
}
