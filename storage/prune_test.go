package storage

import (
	"context"
	"errors"
	"fmt"
	"testing"
)

func TestPrune(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	s, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := applySet(s, ChangeSet{Origin: "peer", Seq: 3, HLC: 10, Changes: []Change{poolChange(t, "peer-pool", "x", ver(10, "peer", 3))}}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 99; i++ {
		mustUpdate(t, s, func(tx *Tx) error { return tx.PutPool(samplePool(fmt.Sprint("p", i))) })
	}
	if s.LastIndex() != 100 {
		t.Fatalf("last index %d", s.LastIndex())
	}
	res, err := s.Prune(ctx, PruneOptions{KeepFeed: 10})
	if err != nil {
		t.Fatal(err)
	}
	if res.FeedEntries != 90 {
		t.Fatalf("pruned %+v", res)
	}
	if info := s.Info(); info.FirstIndex != 91 || info.LastIndex != 100 {
		t.Fatalf("info %+v", info)
	}
	// The change log is not touched: every change set is still served.
	sets, err := changeSetsOf(s, s.NodeID())
	if err != nil || len(sets) != 99 || sets[0].Seq != 1 {
		t.Fatalf("change log after prune: %d sets, %v", len(sets), err)
	}
	if peer, _ := changeSetsOf(s, "peer"); len(peer) != 1 {
		t.Fatalf("peer's change set gone")
	}
	subCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	behind := s.Subscribe(subCtx, 0)
	waitClosed(t, behind)
	if !errors.Is(behind.Err(), ErrFeedPruned) {
		t.Fatalf("subscriber behind the prune: %v", behind.Err())
	}
	evs := collect(t, s.Subscribe(subCtx, 90), 90, 10, false)
	if evs[9].Set.Seq != 99 {
		t.Fatalf("last event %+v", evs[9].Set)
	}
	if pools, _ := s.ListPools(ctx, "", 0); len(pools) != 100 {
		t.Fatalf("%d pools", len(pools))
	}
	cancel()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if info := s.Info(); info.FirstIndex != 91 || info.LastIndex != 100 || info.Watermarks[s.NodeID()] != 99 || info.Seen["peer"] != "3" {
		t.Fatalf("after reopen %+v", info)
	}
	if c := mustUpdate(t, s, func(tx *Tx) error { return tx.PutPool(samplePool("next")) }); c.Index != 101 || c.Version.Seq != 100 {
		t.Fatalf("commit after prune %+v", c)
	}
}

func TestViewLastIndexThenSubscribeMissesNothing(t *testing.T) {
	s := openStore(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for i := 0; i < 5; i++ {
		mustUpdate(t, s, func(tx *Tx) error { return tx.PutPool(samplePool(fmt.Sprint("p", i))) })
	}
	var index uint64
	var n int
	if err := s.View(ctx, func(tx *Tx) error {
		index = tx.LastIndex()
		pools, err := s.ListPools(ctx, "", 0)
		n = len(pools)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if index != 5 || n != 5 {
		t.Fatalf("view index %d, %d pools", index, n)
	}
	sub := s.Subscribe(ctx, index)
	mustUpdate(t, s, func(tx *Tx) error { return tx.PutPool(samplePool("after")) })
	ev := collect(t, sub, index, 1, false)[0]
	if ev.Set.Changes[0].Key != "after" {
		t.Fatalf("event %+v", ev.Set)
	}
}

// Prune keeps the feed entries a running subscriber has not read yet, so a
// slow consumer (the routing table, the certificate cache) is never cut off.
func TestPruneKeepsWhatARunningSubscriberNeeds(t *testing.T) {
	s := openStore(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	slow := s.Subscribe(ctx, 0) // nobody reads it yet: it stalls after its buffer
	for i := 0; i < 300; i++ {
		mustUpdate(t, s, func(tx *Tx) error { return tx.PutPool(samplePool(fmt.Sprint("p", i))) })
	}
	res, err := s.Prune(ctx, PruneOptions{KeepFeed: 10})
	if err != nil {
		t.Fatal(err)
	}
	if res.FeedEntries >= 290 {
		t.Fatalf("pruned %d feed entries past a running subscriber", res.FeedEntries)
	}
	evs := collect(t, slow, 0, 300, false)
	if evs[len(evs)-1].Index != 300 {
		t.Fatalf("slow subscriber ended at %d", evs[len(evs)-1].Index)
	}
	// Once it has read everything, the entries behind it can go.
	cancel()
	waitClosed(t, slow)
	res, err = s.Prune(context.Background(), PruneOptions{KeepFeed: 10})
	if err != nil || s.Info().FirstIndex != 291 {
		t.Fatalf("prune after the subscriber ended: %+v %v, first index %d", res, err, s.Info().FirstIndex)
	}
}
