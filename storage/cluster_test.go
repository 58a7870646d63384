package storage

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"testing"
	"time"

	"github.com/linxGnu/grocksdb"
)

// countFamily counts the keys of a column family.
func countFamily(t testing.TB, s *Store, cf string) int {
	t.Helper()
	ro := grocksdb.NewDefaultReadOptions()
	defer ro.Destroy()
	it := s.base.NewIteratorCF(ro, s.cfs[cf])
	defer it.Close()
	n := 0
	for it.SeekToFirst(); it.Valid(); it.Next() {
		n++
	}
	return n
}

func putPools(t testing.TB, s *Store, names ...string) Commit {
	t.Helper()
	return mustUpdate(t, s, func(tx *Tx) error {
		for _, n := range names {
			if err := tx.PutPool(samplePool(n)); err != nil {
				return err
			}
		}
		return nil
	})
}

// Sets delivered out of order with some dropped: the bookkeeping shows
// exactly the gaps, nothing unapplied is claimed, and a catch-up from the
// origin fills exactly them.
func TestGapsAndCatchUp(t *testing.T) {
	ctx := context.Background()
	a := openStore(t, func(c *Config) { c.NodeID = "a" })
	b := openStore(t, func(c *Config) { c.NodeID = "b" })
	for i := 1; i <= 12; i++ {
		putPools(t, a, fmt.Sprint("p", i))
	}
	sets, err := changeSetsOf(a, "a")
	if err != nil || len(sets) != 12 {
		t.Fatalf("%d sets, %v", len(sets), err)
	}
	dropped := map[uint64]bool{3: true, 4: true, 9: true, 12: true}
	var deliver []ChangeSet
	for _, cs := range sets {
		if !dropped[cs.Seq] {
			deliver = append(deliver, cs)
		}
	}
	rand.New(rand.NewPCG(3, 4)).Shuffle(len(deliver), func(i, j int) { deliver[i], deliver[j] = deliver[j], deliver[i] })
	if _, err := b.ApplyBatch(ctx, deliver[:4]); err != nil {
		t.Fatal(err)
	}
	if _, err := b.ApplyBatch(ctx, deliver[4:]); err != nil {
		t.Fatal(err)
	}
	bk := b.Bookkeeping()
	if bk.Watermark("a") != 2 || bk.Max("a") != 11 || bk.Gaps("a").String() != "3-4,9" {
		t.Fatalf("bookkeeping %s: watermark %d max %d gaps %s", bk["a"], bk.Watermark("a"), bk.Max("a"), bk.Gaps("a"))
	}
	for seq := range dropped {
		if _, err := b.GetPool(ctx, fmt.Sprint("p", seq)); !errors.Is(err, ErrNotFound) {
			t.Fatalf("pool of dropped seq %d present: %v", seq, err)
		}
	}
	want := a.Bookkeeping()["a"].Minus(bk["a"])
	if want.String() != "3-4,9,12" {
		t.Fatalf("their seen minus mine = %s", want)
	}
	res := catchUp(t, b, a)
	if res.Sets != 4 || res.Applied != 4 {
		t.Fatalf("catch-up %+v: want exactly the 4 missing sets", res)
	}
	assertSameRows(t, a, b)
	if got := b.Bookkeeping()["a"].String(); got != "1-12" {
		t.Fatalf("after catch-up %s", got)
	}
	if res := catchUp(t, b, a); res.Sets != 0 {
		t.Fatalf("second catch-up fetched %+v", res)
	}
}

// Rows overwritten many times: the change log holds one key per row,
// whatever the history, and a catch-up from zero (through a relay) gives
// the full state row by row, versions and tombstones included.
func TestChangeLogBoundedAndCatchUpFromZero(t *testing.T) {
	a := openStore(t, func(c *Config) { c.NodeID = "a" })
	b := openStore(t, func(c *Config) { c.NodeID = "b" })
	const rows = 50
	for round := 0; round < 20; round++ {
		w := a
		if round%3 == 0 {
			w = b
		}
		mustUpdate(t, w, func(tx *Tx) error {
			for i := 0; i < rows; i++ {
				name := fmt.Sprint("p", i)
				if (i+round)%7 == 0 {
					if err := tx.DeletePool(name); err != nil && !errors.Is(err, ErrNotFound) {
						return err
					}
					continue
				}
				if err := tx.PutPool(samplePool(name)); err != nil {
					return err
				}
			}
			return nil
		})
		catchUp(t, a, b)
		catchUp(t, b, a)
	}
	assertSameRows(t, a, b)
	if n, r := countFamily(t, a, cfChangelog), len(rawTable(t, a, TablePools)); n != r {
		t.Fatalf("change log has %d keys for %d rows after 20 rounds", n, r)
	}
	// A new store from zero, through b (a relay for a's origin).
	c := openStore(t, func(c *Config) { c.NodeID = "c" })
	catchUp(t, c, b)
	assertSameRows(t, a, c)
	if fmt.Sprint(c.Bookkeeping()) != fmt.Sprint(a.Bookkeeping()) {
		t.Fatalf("bookkeeping %v vs %v", c.Bookkeeping(), a.Bookkeeping())
	}
	checkIndexes(t, c)
}

// A restored backup takes a new node id at its next start, so its new
// writes are not mistaken for the seqs its old id already issued; a peer
// that held the old history and applies the new one holds every row.
func TestRestoredBackupTakesNewIdentity(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	src, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	old := src.NodeID()
	peer := openStore(t, func(c *Config) { c.NodeID = "peer" })
	putPools(t, src, "before")
	backups := filepath.Join(t.TempDir(), "backups")
	if _, err := src.Backup(ctx, backups); err != nil {
		t.Fatal(err)
	}
	putPools(t, src, "after-1")
	putPools(t, src, "after-2")
	catchUp(t, peer, src)
	if err := src.Close(); err != nil {
		t.Fatal(err)
	}
	if err := Restore(ctx, backups, dir, 0); err != nil {
		t.Fatal(err)
	}
	restored, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer restored.Close()
	if restored.NodeID() == old {
		t.Fatal("restored store kept its node id")
	}
	c := putPools(t, restored, "restored-write")
	if c.Version.Origin != restored.NodeID() || c.Version.Seq != 1 {
		t.Fatalf("first write after restore %+v", c.Version)
	}
	catchUp(t, peer, restored)
	for _, name := range []string{"before", "after-1", "after-2", "restored-write"} {
		if _, err := peer.GetPool(ctx, name); err != nil {
			t.Fatalf("peer lacks %s: %v", name, err)
		}
	}
	// A store that learns from a peer that its id issued more than it
	// holds takes a new id before its next write.
	other := openStore(t, func(c *Config) { c.NodeID = "x" })
	putPools(t, other, "x1")
	rotated, err := other.ObserveOwnSeq(5)
	if err != nil || !rotated || other.NodeID() == "x" {
		t.Fatalf("ObserveOwnSeq: %v %v %s", rotated, err, other.NodeID())
	}
	if c := putPools(t, other, "x2"); c.Version.Origin == "x" {
		t.Fatal("wrote under the old id")
	}
	if got := other.Bookkeeping()["x"].String(); got != "1" {
		t.Fatalf("old id's seqs %q", got)
	}
}

// A table under resync: the store refuses to serve and is not ready until
// a catch-up and MarkResynced; the catch-up brings the rows back.
func TestResyncNotReady(t *testing.T) {
	ctx := context.Background()
	peer := openStore(t, func(c *Config) { c.NodeID = "peer" })
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	s, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	putPools(t, s, "mine")
	putPools(t, peer, "theirs")
	catchUp(t, s, peer)
	catchUp(t, peer, s)
	s.Close()
	if err := RemoveTable(cfg, TablePools); err != nil {
		t.Fatal(err)
	}
	s, err = Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Ready(); !errors.Is(err, ErrNotReady) {
		t.Fatalf("Ready with a table under resync: %v", err)
	}
	if _, err := s.ChangeSets(ctx, "peer", Span(1, 1), 0); !errors.Is(err, ErrNotReady) {
		t.Fatalf("served a range while resyncing: %v", err)
	}
	catchUp(t, s, peer)
	if err := s.MarkResynced(TablePools); err != nil {
		t.Fatal(err)
	}
	if err := s.Ready(); err != nil {
		t.Fatalf("not ready after resync: %v", err)
	}
	assertSameRows(t, s, peer)
}

// Tombstone purge: never while an active member's watermark is below the
// tombstone or before the grace period; then purged, and a late, older
// write to the purged key is refused by the purge floor.
func TestPurgeTombstones(t *testing.T) {
	ctx := context.Background()
	wall := &fakeWall{t: time.Now()}
	a := openStore(t, func(c *Config) { c.NodeID = "a"; c.Now = wall.now })
	putPools(t, a, "gone", "stays")
	old := ChangeSet{Origin: "late", Seq: 1, HLC: NewHLC(wall.now().Add(-time.Minute).UnixMilli(), 0),
		Changes: []Change{poolChange(t, "gone", "resurrected", Version{HLC: NewHLC(wall.now().Add(-time.Minute).UnixMilli(), 0), Origin: "late", Seq: 1})}}
	del := mustUpdate(t, a, func(tx *Tx) error { return tx.DeletePool("gone") })
	grace := time.Hour
	members := map[string]map[string]uint64{"b": {"a": del.Version.Seq - 1}}
	if res, err := a.PurgeTombstones(ctx, members, grace); err != nil || res.Removed != 0 {
		t.Fatalf("purged before grace: %+v %v", res, err)
	}
	wall.set(wall.now().Add(2 * grace))
	if res, err := a.PurgeTombstones(ctx, members, grace); err != nil || res.Removed != 0 || res.Kept != 1 {
		t.Fatalf("purged while b's watermark is below: %+v %v", res, err)
	}
	members["b"]["a"] = del.Version.Seq
	if res, err := a.PurgeTombstones(ctx, members, grace); err != nil || res.Removed != 1 {
		t.Fatalf("purge: %+v %v", res, err)
	}
	if _, ok := rawTable(t, a, TablePools)["gone"]; ok {
		t.Fatal("tombstone still stored")
	}
	if a.PurgeFloor() != del.Version.HLC {
		t.Fatalf("purge floor %s, want %s", a.PurgeFloor(), del.Version.HLC)
	}
	res, err := applySet(a, old)
	if err != nil || res.Refused != 1 || res.Sets != 1 {
		t.Fatalf("late older write: %+v %v", res, err)
	}
	if _, err := a.GetPool(ctx, "gone"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("purged key resurrected: %v", err)
	}
	// The seq of the purged tombstone is cleared: still served as covered.
	ans, err := a.ChangeSets(ctx, "a", Span(del.Version.Seq, del.Version.Seq), 0)
	if err != nil || len(ans.Sets) != 0 || ans.Covered.String() != fmt.Sprint(del.Version.Seq) {
		t.Fatalf("answer for the purged seq %+v %v", ans, err)
	}
}

// Observations expire: readers stop seeing them at once, ExpireRows
// removes them locally, and an expired copy arriving later is refused.
func TestObservationsExpire(t *testing.T) {
	ctx := context.Background()
	wall := &fakeWall{t: time.Now()}
	a := openStore(t, func(c *Config) { c.NodeID = "a"; c.Now = wall.now; c.ObservationTTL = time.Minute })
	b := openStore(t, func(c *Config) { c.NodeID = "b"; c.Now = wall.now; c.ObservationTTL = time.Minute })
	if err := a.PutObservations(ctx, []Observation{{BackendID: "be1", Healthy: true}}); err != nil {
		t.Fatal(err)
	}
	ans, err := a.ChangeSets(ctx, "a", Span(1, 1), 0)
	if err != nil || len(ans.Sets) != 1 || ans.Sets[0].Changes[0].Expires == 0 {
		t.Fatalf("observation set %+v %v", ans, err)
	}
	if obs, _ := a.ObservationsByHealth(ctx, "a", true); len(obs) != 1 {
		t.Fatalf("fresh observation not listed: %v", obs)
	}
	wall.set(wall.now().Add(2 * time.Minute))
	if obs, _ := a.Observations(ctx, "a"); len(obs) != 0 {
		t.Fatalf("expired observation still read: %v", obs)
	}
	if obs, _ := a.ObservationsByHealth(ctx, "a", true); len(obs) != 0 {
		t.Fatalf("expired observation listed by health: %v", obs)
	}
	res, err := a.ExpireRows(ctx)
	if err != nil || res.Removed != 1 {
		t.Fatalf("ExpireRows %+v %v", res, err)
	}
	if n := len(rawTable(t, a, TableObservations)); n != 0 {
		t.Fatalf("%d observation rows left", n)
	}
	br, err := b.ApplyAnswer(ctx, ans)
	if err != nil || br.Refused != 1 || br.Sets != 1 {
		t.Fatalf("expired copy applied: %+v %v", br, err)
	}
}

// Many sets from several origins in one batch, two of them touching the
// same row: the newest version wins and the feed has one event per set
// that changed something.
func TestApplyBatchManySets(t *testing.T) {
	ctx := context.Background()
	s := openStore(t)
	var sets []ChangeSet
	for o := 0; o < 3; o++ {
		origin := fmt.Sprint("o", o)
		for seq := uint64(1); seq <= 50; seq++ {
			h := HLC(1000*seq + uint64(o))
			sets = append(sets, ChangeSet{Origin: origin, Seq: seq, HLC: h, Changes: []Change{
				poolChange(t, fmt.Sprintf("p%d", seq%10), origin, Version{HLC: h, Origin: origin, Seq: seq}),
			}})
		}
	}
	rand.New(rand.NewPCG(5, 6)).Shuffle(len(sets), func(i, j int) { sets[i], sets[j] = sets[j], sets[i] })
	res, err := s.ApplyBatch(ctx, sets)
	if err != nil || res.Sets != 150 {
		t.Fatalf("batch %+v %v", res, err)
	}
	for o := 0; o < 3; o++ {
		if got := s.Bookkeeping()[fmt.Sprint("o", o)].String(); got != "1-50" {
			t.Fatalf("origin %d: %s", o, got)
		}
	}
	for i := 0; i < 10; i++ {
		seq := uint64(50 - (50-i)%10)
		if seq > 50 {
			seq -= 10
		}
		p, err := s.GetPool(ctx, fmt.Sprint("p", i))
		if err != nil || p.Version.Seq%10 != uint64(i) || p.Version.Origin != "o2" || p.Version.Seq < 41 {
			t.Fatalf("p%d: %+v %v", i, p.Version, err)
		}
	}
	if n, r := countFamily(t, s, cfChangelog), len(rawTable(t, s, TablePools)); n != r {
		t.Fatalf("change log %d keys for %d rows", n, r)
	}
}

// A store of the previous layout (one change-log entry per set ever
// committed, no bookkeeping) is migrated at Open: the bookkeeping is the
// seqs that had entries, the local seq continues, the change log is
// rebuilt from the rows.
func TestMigrateFormat1ChangeLog(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	s, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		putPools(t, s, fmt.Sprint("mine-", i))
	}
	for _, seq := range []uint64{1, 2, 5} {
		cs := ChangeSet{Origin: "peer", Seq: seq, HLC: HLC(100 + seq), Changes: []Change{
			poolChange(t, fmt.Sprint("peer-", seq), "x", Version{HLC: HLC(100 + seq), Origin: "peer", Seq: seq})}}
		if _, err := applySet(s, cs); err != nil {
			t.Fatal(err)
		}
	}
	want := fmt.Sprint(s.Bookkeeping())
	self := s.NodeID()
	// Turn it into a format-1 store.
	batch := grocksdb.NewWriteBatch()
	batch.DeleteRangeCF(s.cfs[cfChangelog], []byte{}, []byte{0xff})
	for origin, rs := range s.Bookkeeping() {
		for _, r := range rs {
			for seq := r.Lo; seq <= r.Hi; seq++ {
				batch.PutCF(s.cfs[cfChangelog], clogSetPrefix(origin, seq), []byte{formatV1})
			}
		}
	}
	batch.DeleteRangeCF(s.cfs[cfMeta], []byte(metaBKPrefix), prefixEnd([]byte(metaBKPrefix)))
	batch.DeleteRangeCF(s.cfs[cfMeta], []byte(metaLocalSeq), prefixEnd([]byte(metaLocalSeq)))
	batch.PutCF(s.cfs[cfMeta], []byte(metaFormat), []byte{1})
	if err := s.base.Write(s.wo, batch); err != nil {
		t.Fatal(err)
	}
	batch.Destroy()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open(cfg)
	if err != nil {
		t.Fatalf("open format 1: %v", err)
	}
	defer s.Close()
	if got := fmt.Sprint(s.Bookkeeping()); got != want || s.NodeID() != self {
		t.Fatalf("bookkeeping after migration %s, want %s", got, want)
	}
	if err := s.Verify(context.Background()); err != nil {
		t.Fatal(err)
	}
	if c := putPools(t, s, "after"); c.Version.Seq != 4 {
		t.Fatalf("first commit after migration: seq %d", c.Version.Seq)
	}
}
