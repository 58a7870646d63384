package storage

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A node that is a cluster of one purges its tombstones once they are
// older than the grace period (Prune with Standalone), and only then; a
// clustered node's Prune leaves them to the replication engine.
func TestStandalonePrunePurgesTombstones(t *testing.T) {
	ctx := context.Background()
	wall := &fakeWall{t: time.Now()}
	s := openStore(t, func(c *Config) { c.NodeID = "solo"; c.Now = wall.now })
	putPools(t, s, "gone", "stays")
	del := mustUpdate(t, s, func(tx *Tx) error { return tx.DeletePool("gone") })
	grace := time.Hour
	opts := PruneOptions{Standalone: true, TombstoneGrace: grace}

	if res, err := s.Prune(ctx, opts); err != nil || res.Tombstones != 0 {
		t.Fatalf("standalone prune before the grace period: %+v %v", res, err)
	}
	wall.set(wall.now().Add(2 * grace))
	if res, err := s.Prune(ctx, PruneOptions{}); err != nil || res.Tombstones != 0 {
		t.Fatalf("clustered prune purged tombstones: %+v %v", res, err)
	}
	if _, ok := rawTable(t, s, TablePools)["gone"]; !ok {
		t.Fatal("tombstone gone without a standalone prune")
	}
	res, err := s.Prune(ctx, opts)
	if err != nil || res.Tombstones != 1 {
		t.Fatalf("standalone prune after the grace period: %+v %v", res, err)
	}
	if _, ok := rawTable(t, s, TablePools)["gone"]; ok {
		t.Fatal("tombstone still stored")
	}
	if _, err := s.GetPool(ctx, "stays"); err != nil {
		t.Fatalf("live row: %v", err)
	}
	if s.PurgeFloor() != del.Version.HLC {
		t.Fatalf("purge floor %s, want %s", s.PurgeFloor(), del.Version.HLC)
	}
	if h := s.PurgeHorizon()["solo"]; h != del.Version.Seq {
		t.Fatalf("purge horizon of its own origin %d, want %d", h, del.Version.Seq)
	}
}

// The purge horizon is the lowest watermark per origin over the members and
// this node, kept in meta: it survives a reopen and a backup's restore,
// and it only rises.
func TestPurgeHorizonInMeta(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	wall := &fakeWall{t: time.Now()}
	s, err := Open(withConfig(testConfig(t, dir), func(c *Config) { c.NodeID = "a"; c.Now = wall.now }))
	if err != nil {
		t.Fatal(err)
	}
	putPools(t, s, "p1", "p2", "p3")
	mustUpdate(t, s, func(tx *Tx) error { return tx.DeletePool("p1") })
	if got := s.PurgeHorizon(); len(got) != 0 {
		t.Fatalf("horizon before any purge: %v", got)
	}
	members := map[string]map[string]uint64{"b": {"a": 1}}
	if _, err := s.PurgeTombstones(ctx, members, time.Hour); err != nil {
		t.Fatal(err)
	}
	if got := s.PurgeHorizon()["a"]; got != 1 {
		t.Fatalf("horizon %d, want b's watermark 1", got)
	}
	// A lower watermark later does not lower it.
	members["b"]["a"] = 0
	if _, err := s.PurgeTombstones(ctx, members, time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, func(c *Config) { c.Dir = dir; c.NodeID = "a"; c.Now = wall.now })
	if got := s.PurgeHorizon()["a"]; got != 1 {
		t.Fatalf("horizon after reopen %d, want 1", got)
	}
}

// A horizon file left by an older agent moves into meta at Open, once,
// keeping the higher seq per origin; a damaged one stops Open with a
// sentence naming it.
func TestHorizonFileMigrates(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(withConfig(testConfig(t, dir), func(c *Config) { c.NodeID = "a" }))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.PurgeTombstones(context.Background(), map[string]map[string]uint64{}, time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, legacyHorizonFile)
	if err := os.WriteFile(file, []byte(`{"c":8,"d":3}`), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err = Open(withConfig(testConfig(t, dir), func(c *Config) { c.NodeID = "a" }))
	if err != nil {
		t.Fatal(err)
	}
	if got := s.PurgeHorizon(); got["c"] != 8 || got["d"] != 3 {
		t.Fatalf("horizon after migration %v", got)
	}
	if _, err := os.Stat(file); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("horizon file left behind: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, func(c *Config) { c.Dir = dir; c.NodeID = "a" })
	if got := s.PurgeHorizon(); got["c"] != 8 || got["d"] != 3 {
		t.Fatalf("horizon after a second open %v", got)
	}
	s.Close()

	if err := os.WriteFile(file, []byte(`{"c":`), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = Open(withConfig(testConfig(t, dir), func(c *Config) { c.NodeID = "a" }))
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), legacyHorizonFile) {
		t.Fatalf("Open with a damaged horizon file: %v", err)
	}
}

// The store bounds this node's observation writes: a row rewritten sooner
// than ObservationMinInterval is refused unless its health changed;
// PutObservations skips such rows, commits the others and says so.
func TestObservationWriteRateBound(t *testing.T) {
	ctx := context.Background()
	wall := &fakeWall{t: time.Now()}
	s := openStore(t, func(c *Config) { c.NodeID = "n1"; c.Now = wall.now; c.ObservationMinInterval = 10 * time.Second })
	obs := func(id string, healthy bool, reqs int64) Observation {
		return Observation{BackendID: id, PoolName: "web", Healthy: healthy, TotalRequests: reqs}
	}
	if err := s.PutObservations(ctx, []Observation{obs("b1", true, 1), obs("b2", true, 1)}); err != nil {
		t.Fatal(err)
	}
	wall.set(wall.now().Add(time.Second))

	// Same health, too soon: refused, nothing buffered.
	_, err := s.Update(ctx, func(tx *Tx) error {
		o := obs("b1", true, 2)
		return tx.PutObservation(&o)
	})
	if !errors.Is(err, ErrRateLimited) || !strings.Contains(err.Error(), `"b1"`) {
		t.Fatalf("second write within the interval: %v, want ErrRateLimited naming the backend", err)
	}
	// A health transition goes through at once; a row written twice in
	// one transaction is coalesced.
	_, err = s.Update(ctx, func(tx *Tx) error {
		o := obs("b1", false, 3)
		if err := tx.PutObservation(&o); err != nil {
			return err
		}
		o = obs("b1", false, 4)
		return tx.PutObservation(&o)
	})
	if err != nil {
		t.Fatalf("health transition: %v", err)
	}
	// A batch: b2 is too soon and skipped, b3 is new and written.
	wall.set(wall.now().Add(time.Second))
	err = s.PutObservations(ctx, []Observation{obs("b2", true, 5), obs("b3", true, 1)})
	if !errors.Is(err, ErrRateLimited) || !strings.Contains(err.Error(), "1 of 2") {
		t.Fatalf("batch with one row too soon: %v", err)
	}
	// The writer learns which rows wait and for how long (b2 was written
	// 2 s ago under a 10 s bound), so it can keep them pending.
	var skipped *SkippedObservationsError
	if !errors.As(err, &skipped) || len(skipped.BackendIDs) != 1 || skipped.BackendIDs[0] != "b2" ||
		skipped.RetryAfter != 8*time.Second {
		t.Fatalf("skipped rows %+v, want b2 retrying after 8s", skipped)
	}
	got := map[string]int64{}
	for _, o := range mustObservations(t, s) {
		got[o.BackendID] = o.TotalRequests
	}
	if got["b1"] != 4 || got["b2"] != 1 || got["b3"] != 1 {
		t.Fatalf("stored observations %v, want b1=4 b2=1 b3=1", got)
	}
	// After the interval the same row is written again.
	wall.set(wall.now().Add(10 * time.Second))
	if err := s.PutObservations(ctx, []Observation{obs("b2", true, 6)}); err != nil {
		t.Fatalf("write after the interval: %v", err)
	}
}

func mustObservations(t *testing.T, s *Store) []Observation {
	t.Helper()
	var out []Observation
	err := s.View(context.Background(), func(tx *Tx) error {
		for _, id := range []string{"b1", "b2", "b3"} {
			o, err := tx.Observation(s.NodeID(), id)
			if errors.Is(err, ErrNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			out = append(out, o)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func withConfig(cfg Config, mutate func(*Config)) Config {
	mutate(&cfg)
	return cfg
}
