package storage

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

// collect reads n events from sub, failing on a gap or after 10s.
func collect(t *testing.T, sub *Subscription, after uint64, n int, slow bool) []Event {
	t.Helper()
	var out []Event
	timeout := time.After(10 * time.Second)
	for len(out) < n {
		select {
		case ev, ok := <-sub.Events():
			if !ok {
				t.Fatalf("events closed after %d of %d: %v", len(out), n, sub.Err())
			}
			if ev.Index != after+uint64(len(out))+1 {
				t.Fatalf("event index %d, want %d", ev.Index, after+uint64(len(out))+1)
			}
			out = append(out, ev)
			if slow && len(out)%10 == 0 {
				time.Sleep(10 * time.Millisecond)
			}
		case <-timeout:
			t.Fatalf("timed out after %d of %d events", len(out), n)
		}
	}
	return out
}

func TestFeedOrderNoGaps(t *testing.T) {
	s := openStore(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// 50 commits before anyone subscribes.
	for i := 0; i < 50; i++ {
		mustUpdate(t, s, func(tx *Tx) error { return tx.PutPool(samplePool(fmt.Sprint("early", i))) })
	}
	fromStart := s.Subscribe(ctx, 0)   // starts behind: reads the persisted feed
	fromMiddle := s.Subscribe(ctx, 20) // starts in the middle
	live := s.Subscribe(ctx, s.LastIndex())
	slow := s.Subscribe(ctx, 0)

	// 300 more commits from several writers while they read.
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < 75; i++ {
				if _, err := s.Update(ctx, func(tx *Tx) error {
					return tx.PutBackend(sampleBackend(fmt.Sprintf("w%d-%d", w, i), "p"))
				}); err != nil {
					t.Error(err)
					return
				}
			}
		}(w)
	}
	var got sync.Map
	var rg sync.WaitGroup
	for name, c := range map[string]struct {
		sub   *Subscription
		after uint64
		slow  bool
	}{"start": {fromStart, 0, false}, "middle": {fromMiddle, 20, false}, "live": {live, 50, false}, "slow": {slow, 0, true}} {
		rg.Add(1)
		go func() {
			defer rg.Done()
			got.Store(name, collect(t, c.sub, c.after, 350-int(c.after), c.slow))
		}()
	}
	wg.Wait()
	rg.Wait()
	if t.Failed() {
		return
	}
	evs, _ := got.Load("start")
	events := evs.([]Event)
	// Each event is the commit at its index, with its change set.
	seen := make(map[string]bool)
	var lastHLC HLC
	for _, ev := range events {
		if len(ev.Set.Changes) != 1 || ev.Set.Origin != s.NodeID() || ev.Set.HLC <= lastHLC {
			t.Fatalf("event %d: %+v", ev.Index, ev.Set)
		}
		lastHLC = ev.Set.HLC
		seen[ev.Set.Changes[0].Key] = true
	}
	if len(seen) != 350 {
		t.Fatalf("%d distinct rows in the feed, want 350", len(seen))
	}
	first := events[0].Set.Changes[0]
	if p, err := first.Pool(); err != nil || p.Name != "early0" || p.Version != first.Version {
		t.Fatalf("first event decodes to %+v, %v", p, err)
	}
}

func TestFeedCarriesDeletesAndAppliedSubsets(t *testing.T) {
	s := openStore(t, func(c *Config) { c.EncryptionKey = testKey(t) })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	mustUpdate(t, s, func(tx *Tx) error {
		if err := tx.PutCertificate(sampleCert("c1", "a.example.com", time.Now().Add(time.Hour))); err != nil {
			return err
		}
		return tx.PutCertificate(sampleCert("c2", "b.example.com", time.Now().Add(time.Hour)))
	})
	mustUpdate(t, s, func(tx *Tx) error { return tx.PutPool(samplePool("keep")) })
	mustUpdate(t, s, func(tx *Tx) error { return tx.DeleteCertificate("c1") })
	// A peer's set where one row loses (older than ours) and one wins.
	cs := ChangeSet{Origin: "peer", Seq: 1, HLC: 5, Changes: []Change{
		poolChange(t, "keep", "old", ver(5, "peer", 1)),
		poolChange(t, "fresh", "new", ver(5, "peer", 1)),
	}}
	if res, err := applySet(s, cs); err != nil || res.Applied != 1 || res.Index != 4 {
		t.Fatalf("apply %+v %v", res, err)
	}
	// A set where nothing wins: no event.
	if res, err := applySet(s, ChangeSet{Origin: "peer", Seq: 2, HLC: 6, Changes: []Change{poolChange(t, "keep", "old", ver(6, "peer", 2))}}); err != nil || res.Index != 0 {
		t.Fatalf("losing apply %+v %v", res, err)
	}
	mustUpdate(t, s, func(tx *Tx) error { return tx.PutPool(samplePool("last")) })

	mustUpdate(t, s, func(tx *Tx) error { return tx.PutPool(samplePool("last")) })

	// Subscribed after the commits, with the events the commits kept in
	// memory gone (as after a restart): events are read as the rows are
	// now.
	dropFeedCache(s)
	evs := collect(t, s.Subscribe(ctx, 0), 0, 6, false)
	// Event 1 wrote c1 and c2; c1 was deleted by event 3 since, so event 1
	// carries only c2 (the delete carries c1's newest version).
	if len(evs[0].Set.Changes) != 1 || evs[0].Set.Changes[0].Key != "c2" {
		t.Fatalf("event 1 carries %+v", evs[0].Set.Changes)
	}
	cert, err := evs[0].Set.Changes[0].Certificate()
	if err != nil || cert.PrivateKeyPEM != testKeyPEM {
		t.Fatalf("certificate from feed: %v", err)
	}
	// Event 5 (pool "last") was overwritten by event 6: still delivered,
	// with no changes.
	if evs[4].Set.Seq == 0 || len(evs[4].Set.Changes) != 0 {
		t.Fatalf("superseded event 5: %+v", evs[4].Set)
	}
	if p, err := evs[5].Set.Changes[0].Pool(); err != nil || p.Name != "last" || p.Version != evs[5].Set.Changes[0].Version {
		t.Fatalf("event 6: %+v %v", p, err)
	}
	del := evs[2].Set.Changes[0]
	if !del.Deleted || del.Value != nil || del.Key != "c1" {
		t.Fatalf("delete event %+v", del)
	}
	if _, err := del.Certificate(); !errors.Is(err, ErrNotFound) {
		t.Fatalf("decoding a delete: %v", err)
	}
	applied := evs[3].Set
	if applied.Origin != "peer" || len(applied.Changes) != 1 || applied.Changes[0].Key != "fresh" {
		t.Fatalf("applied event carries %+v", applied)
	}
	// Over the wire the key is not available to decrypt.
	wire, err := UnmarshalChangeSet(evs[0].Set.Marshal())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := wire.Changes[0].Certificate(); !errors.Is(err, ErrEncryptionKey) {
		t.Fatalf("certificate without key: %v", err)
	}
}

func TestSubscriptionEnds(t *testing.T) {
	s := openStore(t)
	ctx, cancel := context.WithCancel(context.Background())
	sub := s.Subscribe(ctx, 0)
	cancel()
	waitClosed(t, sub)
	if !errors.Is(sub.Err(), context.Canceled) {
		t.Fatalf("err %v", sub.Err())
	}

	s2, err := Open(testConfig(t, t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	sub = s2.Subscribe(context.Background(), 0)
	mustUpdate(t, s2, func(tx *Tx) error { return tx.PutPool(samplePool("p")) })
	// Not reading the event: Close must still end the subscription.
	if err := s2.Close(); err != nil {
		t.Fatal(err)
	}
	waitClosed(t, sub)
	if !errors.Is(sub.Err(), ErrClosed) {
		t.Fatalf("err %v", sub.Err())
	}
	after := s2.Subscribe(context.Background(), 0)
	waitClosed(t, after)
	if !errors.Is(after.Err(), ErrClosed) {
		t.Fatalf("subscribe after close: %v", after.Err())
	}
}

func waitClosed(t *testing.T, sub *Subscription) {
	t.Helper()
	select {
	case <-sub.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("subscription did not end")
	}
	for range sub.Events() {
	}
}

// A fake feed delivers what it is sent, in order, and ends like a real one.
func TestNewSubscription(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events := make(chan Event, 2)
	events <- Event{Index: 1}
	events <- Event{Index: 2}
	close(events)
	var src FeedSource = fakeFeed{sub: NewSubscription(ctx, events)}
	sub := src.Subscribe(ctx, 0)
	for want := uint64(1); want <= 2; want++ {
		select {
		case ev := <-sub.Events():
			if ev.Index != want {
				t.Fatalf("event %d, want %d", ev.Index, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("no event")
		}
	}
	waitClosed(t, sub)
	if sub.Err() != nil {
		t.Fatalf("err %v", sub.Err())
	}
	other := NewSubscription(ctx, make(chan Event))
	cancel()
	waitClosed(t, other)
	if other.Err() == nil {
		t.Fatal("cancelled subscription without an error")
	}
}

type fakeFeed struct{ sub *Subscription }

func (f fakeFeed) Subscribe(context.Context, uint64) *Subscription { return f.sub }

// subscribeN starts n subscriptions after index start, ended with the
// test.
func subscribeN(t *testing.T, s *Store, start uint64, n int) []*Subscription {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	subs := make([]*Subscription, n)
	for i := range subs {
		subs[i] = s.Subscribe(ctx, start)
	}
	return subs
}

// dropFeedCache empties the feed cache, as a restart does, so that the
// events published so far are read from disk.
func dropFeedCache(s *Store) {
	c := &s.feedCache
	c.mu.Lock()
	clear(c.slots[:])
	c.mu.Unlock()
}

// Subscribers that read the same events from disk share one read of each:
// five subscribers (the agent runs as many) over 200 commits no longer in
// memory materialize 200 events, not 1,000, and every subscriber still
// gets every event with its rows.
func TestFeedSubscribersShareReads(t *testing.T) {
	s := openStore(t)
	const subscribers, commits = 5, 200
	start := s.LastIndex()
	for i := range commits {
		mustUpdate(t, s, func(tx *Tx) error { return tx.PutPool(samplePool(fmt.Sprint("shared", i))) })
	}
	dropFeedCache(s)
	before := s.feedCache.materialized.Load()
	subs := subscribeN(t, s, start, subscribers)
	var wg sync.WaitGroup
	for i, sub := range subs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j, ev := range collect(t, sub, start, commits, i == 0) {
				if len(ev.Set.Changes) != 1 || ev.Set.Changes[0].Key != fmt.Sprint("shared", j) {
					t.Errorf("subscriber %d, event %d: %+v", i, ev.Index, ev.Set.Changes)
					return
				}
			}
		}()
	}
	wg.Wait()
	if got := s.feedCache.materialized.Load() - before; got != commits {
		t.Fatalf("%d subscribers read %d commits with %d change-log reads, want %d", subscribers, commits, got, commits)
	}
}

// TestFeedCaughtUpSubscribersDoNotRead: a subscriber that has delivered
// everything published waits for the next commit instead of reading the
// feed again to find nothing, so one commit costs each subscriber one
// read.
func TestFeedCaughtUpSubscribersDoNotRead(t *testing.T) {
	s := openStore(t)
	const subscribers, commits = 3, 50
	start := s.LastIndex()
	subs := subscribeN(t, s, start, subscribers)
	before := s.feedCache.reads.Load()
	for i := range commits {
		mustUpdate(t, s, func(tx *Tx) error { return tx.PutPool(samplePool(fmt.Sprint("caught-up", i))) })
		for _, sub := range subs {
			collect(t, sub, start+uint64(i), 1, false)
		}
	}
	// A subscriber reads only when something is published after its
	// cursor, so each read delivers at least one event.
	if got, most := s.feedCache.reads.Load()-before, uint64(subscribers*commits); got > most {
		t.Fatalf("%d subscribers read the feed %d times for %d commits, want at most %d", subscribers, got, commits, most)
	}
}
