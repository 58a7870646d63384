package replication

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/singularity-ng/singularity-edge/storage"
)

// TestVisibleLagObservesNewRemoteSets: the adapter's lag histogram gets one
// sample per remote set that reaches the feed after LocalCommits
// subscribed, measured from the set's commit time on its origin; sets
// replayed by the subscription's overlap and the node's own commits are
// not samples.
func TestVisibleLagObservesNewRemoteSets(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// The origin's clock runs 90 s behind: its sets look 90 s old here.
	const behind = 90 * time.Second
	originCfg := testStorageConfig(t.TempDir(), "origin")
	originCfg.Now = func() time.Time { return time.Now().Add(-behind) }
	origin := openTestStore(t, originCfg)

	reg := prometheus.NewRegistry()
	cfg := testStorageConfig(t.TempDir(), "here")
	db, err := storage.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	here, err := NewRocksStore(db, RocksConfig{TombstoneGrace: time.Hour, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}

	alg := "round_robin"
	copySet := func(seq uint64) {
		t.Helper()
		b, err := origin.ChangeSets(ctx, "origin", RangeSet{{seq, seq}}, 1<<20)
		if err != nil || len(b.Sets) != 1 {
			t.Fatalf("reading origin set %d: %v (%d sets)", seq, err, len(b.Sets))
		}
		if _, err := here.ApplyBatch(ctx, ApplyBatch{Sets: b.Sets, Covered: map[string]RangeSet{"origin": {{seq, seq}}}}); err != nil {
			t.Fatal(err)
		}
	}
	copySet(origin.write(map[string]*string{"before": &alg})) // replayed by the overlap: no sample

	feed, err := here.LocalCommits(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Update(ctx, func(tx *storage.Tx) error { // own commit: no sample
		return tx.PutPool(&storage.Pool{Name: "own", Algorithm: alg})
	}); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-feed.C():
		if s.Origin != "here" {
			t.Fatalf("feed delivered a set of %q", s.Origin)
		}
	case <-ctx.Done():
		t.Fatal("own commit not delivered")
	}
	copySet(origin.write(map[string]*string{"a": &alg}))
	copySet(origin.write(map[string]*string{"b": &alg}))

	var h *dto.Histogram
	for {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == "singularity_edge_replication_visible_lag_seconds" {
				h = mf.GetMetric()[0].GetHistogram()
			}
		}
		if h != nil && h.GetSampleCount() >= 2 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("want 2 samples, have %v", h)
		case <-time.After(10 * time.Millisecond):
		}
	}
	// Let a wrongly observed replay or own commit show.
	time.Sleep(100 * time.Millisecond)
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() == "singularity_edge_replication_visible_lag_seconds" {
			h = mf.GetMetric()[0].GetHistogram()
		}
	}
	if h.GetSampleCount() != 2 {
		t.Fatalf("samples = %d, want 2 (the two sets applied after subscribing)", h.GetSampleCount())
	}
	if mean := h.GetSampleSum() / 2; mean < behind.Seconds()-1 || mean > behind.Seconds()+10 {
		t.Fatalf("mean lag %.1f s, want about %v (the origin's commit time, not the apply time)", mean, behind)
	}
}
