package storage

import (
	"bytes"
	"context"
	"fmt"
	"reflect"
	"testing"
	"time"
)

// diskEvents returns events (after, upTo] as a fresh subscriber from
// index 0 reads them from disk now: the feed cache is emptied first.
func diskEvents(t *testing.T, s *Store, after, upTo uint64) []Event {
	t.Helper()
	dropFeedCache(s)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	all := collect(t, s.Subscribe(ctx, 0), 0, int(upTo), false)
	return all[after:]
}

// sameEvent reports, field by field, how got (from memory) differs from
// want (materialized from disk).
func sameEvent(t *testing.T, step string, got, want Event) {
	t.Helper()
	g, w := got.Set, want.Set
	if got.Index != want.Index || g.Origin != w.Origin || g.Seq != w.Seq || g.HLC != w.HLC {
		t.Fatalf("%s: event %d %s/%d hlc %d from memory, %d %s/%d hlc %d from disk", step,
			got.Index, g.Origin, g.Seq, g.HLC, want.Index, w.Origin, w.Seq, w.HLC)
	}
	if len(g.Changes) != len(w.Changes) {
		t.Fatalf("%s: event %d: %d changes from memory, %d from disk:\n%+v\n%+v", step, got.Index, len(g.Changes), len(w.Changes), g.Changes, w.Changes)
	}
	for i := range g.Changes {
		a, b := g.Changes[i], w.Changes[i]
		switch {
		case a.Table != b.Table || a.Key != b.Key:
			t.Fatalf("%s: event %d change %d is %s %q from memory, %s %q from disk", step, got.Index, i, a.Table, a.Key, b.Table, b.Key)
		case a.Deleted != b.Deleted:
			t.Fatalf("%s: event %d %s %q: deleted %v from memory, %v from disk", step, got.Index, a.Table, a.Key, a.Deleted, b.Deleted)
		case a.Version != b.Version:
			t.Fatalf("%s: event %d %s %q: version %+v from memory, %+v from disk", step, got.Index, a.Table, a.Key, a.Version, b.Version)
		case !bytes.Equal(a.Value, b.Value) || (a.Value == nil) != (b.Value == nil):
			t.Fatalf("%s: event %d %s %q: record %x from memory, %x from disk", step, got.Index, a.Table, a.Key, a.Value, b.Value)
		case a.Expires != b.Expires:
			t.Fatalf("%s: event %d %s %q: expires %d from memory, %d from disk", step, got.Index, a.Table, a.Key, a.Expires, b.Expires)
		case a.keys != b.keys || a.keys == nil:
			t.Fatalf("%s: event %d %s %q: keyring %p from memory, %p from disk", step, got.Index, a.Table, a.Key, a.keys, b.keys)
		}
	}
	// Whatever the fields above miss (nil against empty slices included).
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%s: event %d differs:\n%+v\n%+v", step, got.Index, got, want)
	}
}

// TestFeedEventsFromMemoryMatchDisk: the event a caught-up subscriber
// gets from memory, built by the commit or apply that wrote it, equals
// the event materialized from disk right after that commit, for local
// commits of every shape and remote applies (partial, duplicate, several
// sets of a batch touching the same row).
func TestFeedEventsFromMemoryMatchDisk(t *testing.T) {
	s := openStore(t, func(c *Config) { c.EncryptionKey = testKey(t) })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	live := s.Subscribe(ctx, 0)
	expires := time.Now().Add(24 * time.Hour)
	ahead := func(step int64) HLC { return NewHLC(time.Now().UnixMilli()+200, uint16(step)) }
	remote := func(origin string, seq uint64, h HLC, changes ...Change) ChangeSet {
		for i := range changes {
			changes[i].Version = Version{HLC: h, Origin: origin, Seq: seq}
		}
		return ChangeSet{Origin: origin, Seq: seq, HLC: h, Changes: changes}
	}
	pool := func(name, algo string) Change { return poolChange(t, name, algo, Version{}) }
	backend := func(id, pool string) Change {
		return Change{Table: TableBackends, Key: id, Value: encodeBackend(sampleBackend(id, pool))}
	}
	apply := func(sets ...ChangeSet) error {
		_, err := s.ApplyBatch(ctx, sets)
		return err
	}
	update := func(fn func(tx *Tx) error) error {
		_, err := s.Update(ctx, fn)
		return err
	}
	many := func(prefix string, n int) []Backend {
		bs := make([]Backend, n)
		for i := range bs {
			bs[i] = *sampleBackend(fmt.Sprintf("%s-%04d", prefix, i), "web")
		}
		return bs
	}

	steps := []struct {
		name   string
		events int  // events the step publishes
		large  bool // its set is over feedCacheMaxBytes: read from disk
		check  func(mem []Event)
		run    func() error
	}{
		{"put", 1, false, nil, func() error { return update(func(tx *Tx) error { return tx.PutPool(samplePool("web")) }) }},
		{"multi-table set", 1, false, func(mem []Event) {
			// Change-log order: table id, then key.
			if got := fmt.Sprint(keysOf(mem[0])); got != "[c-1 api b-1 b-2 "+ObservationKey(s.NodeID(), "b-1")+"]" {
				t.Fatalf("multi-table set carries %s", got)
			}
			if c, err := mem[0].Set.Changes[0].Certificate(); err != nil || c.PrivateKeyPEM != testKeyPEM {
				t.Fatalf("certificate from memory: %v", err)
			}
			if mem[0].Set.Changes[4].Expires == 0 {
				t.Fatal("observation without expiry")
			}
		}, func() error {
			return update(func(tx *Tx) error {
				// Written out of table and key order.
				if err := tx.PutBackend(sampleBackend("b-2", "web")); err != nil {
					return err
				}
				if err := tx.PutBackend(sampleBackend("b-1", "web")); err != nil {
					return err
				}
				if err := tx.PutPool(samplePool("api")); err != nil {
					return err
				}
				if err := tx.PutObservation(&Observation{BackendID: "b-1", PoolName: "web", Healthy: true}); err != nil {
					return err
				}
				return tx.PutCertificate(sampleCert("c-1", "web.example.com", expires))
			})
		}},
		{"overwrite", 1, false, nil, func() error {
			return update(func(tx *Tx) error {
				p := samplePool("web")
				p.Algorithm = "random"
				return tx.PutPool(p)
			})
		}},
		{"delete", 1, false, nil, func() error { return update(func(tx *Tx) error { return tx.DeleteBackend("b-2") }) }},
		{"delete and put", 1, false, nil, func() error {
			return update(func(tx *Tx) error {
				if err := tx.DeleteCertificate("c-1"); err != nil {
					return err
				}
				return tx.PutPool(samplePool("static"))
			})
		}},
		{"bulk PutBackends", 1, false, nil, func() error {
			return update(func(tx *Tx) error { return tx.PutBackends(many("bulk", 50)) })
		}},
		{"bulk PutBackends over the cache's limit", 1, true, nil, func() error {
			return update(func(tx *Tx) error { return tx.PutBackends(many("huge", 400)) })
		}},
		{"remote set", 1, false, nil, func() error {
			del := deleteChange(TablePools, "api", Version{})
			return apply(remote("peer", 1, ahead(1), backend("r-2", "web"), pool("remote", "round_robin"), backend("r-1", "web"), del))
		}},
		{"remote set applied in part: older rows skipped", 1, false, func(mem []Event) {
			if got := fmt.Sprint(keysOf(mem[0])); got != "[remote-2]" {
				t.Fatalf("partly applied set carries %s", got)
			}
		}, func() error {
			return apply(remote("peer", 2, NewHLC(1, 0), pool("web", "old"), pool("remote-2", "random"), backend("b-1", "old")))
		}},
		{"remote set applied twice", 0, false, nil, func() error {
			return apply(remote("peer", 1, ahead(1), backend("r-2", "web"), pool("remote", "round_robin"), backend("r-1", "web"),
				deleteChange(TablePools, "api", Version{})))
		}},
		{"one set twice in a batch", 1, false, nil, func() error {
			cs := remote("peer", 3, ahead(3), pool("twice", "random"))
			return apply(cs, cs)
		}},
		{"sets of one batch overwriting each other", 4, false, func(mem []Event) {
			// The second set took "contested" from the first; the fourth
			// took the third's only row, which leaves an event without
			// changes (and without an HLC, as from disk).
			want := []string{"[solo]", "[contested]", "[]", "[gone]"}
			for i, ev := range mem {
				if got := fmt.Sprint(keysOf(ev)); got != want[i] {
					t.Fatalf("set %d of the batch carries %s, want %s", i, got, want[i])
				}
			}
			if mem[2].Set.HLC != 0 || mem[2].Set.Changes != nil {
				t.Fatalf("emptied set: %+v", mem[2].Set)
			}
		}, func() error {
			return apply(
				remote("peer-a", 1, ahead(4), pool("contested", "a"), pool("solo", "a")),
				remote("peer-b", 1, ahead(5), pool("contested", "b")),
				remote("peer-a", 2, ahead(6), pool("gone", "a")),
				remote("peer-b", 2, ahead(7), pool("gone", "b")),
			)
		}},
		{"remote observation with expiry", 1, false, nil, func() error {
			o := &Observation{NodeID: "peer", BackendID: "b-1", PoolName: "web", Healthy: false, UpdatedAt: time.Now().UTC()}
			c := Change{Table: TableObservations, Key: ObservationKey("peer", "b-1"), Value: encodeObservation(o),
				Expires: time.Now().Add(time.Hour).UnixMilli()}
			return apply(remote("peer", 4, ahead(8), c))
		}},
		{"catch-up answer", 1, false, nil, func() error {
			_, err := s.ApplyAnswer(ctx, Answer{Origin: "peer-c", Covered: Span(1, 3),
				Sets: []ChangeSet{remote("peer-c", 2, ahead(9), pool("answered", "random"), backend("r-3", "answered"))}})
			return err
		}},
		{"local overwrite of remote rows", 1, false, nil, func() error {
			return update(func(tx *Tx) error {
				if err := tx.PutPool(samplePool("contested")); err != nil {
					return err
				}
				return tx.DeleteBackend("r-1")
			})
		}},
	}
	var last uint64
	for _, step := range steps {
		before := s.feedCache.materialized.Load()
		if err := step.run(); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		now := s.LastIndex()
		if now != last+uint64(step.events) {
			t.Fatalf("%s: published %d events, want %d", step.name, now-last, step.events)
		}
		mem := collect(t, live, last, step.events, false)
		if got := s.feedCache.materialized.Load() - before; !step.large && got != 0 {
			t.Fatalf("%s: the caught-up subscriber read %d events from disk", step.name, got)
		}
		for i, want := range diskEvents(t, s, last, now) {
			sameEvent(t, step.name, mem[i], want)
		}
		if step.check != nil {
			step.check(mem)
		}
		last = now
	}
}

// withKeyring returns a copy of ev whose changes open keys with k: an
// event of the store before a restart compared with one after it.
func withKeyring(ev Event, k *keyring) Event {
	ev.Set.Changes = append([]Change(nil), ev.Set.Changes...)
	ev.Set = ev.Set.withKeys(k)
	return ev
}

// keysOf returns the keys an event carries, in order.
func keysOf(ev Event) []string {
	var keys []string
	for _, c := range ev.Set.Changes {
		keys = append(keys, c.Key)
	}
	return keys
}

// TestFeedCaughtUpSubscribersTakeEventsFromMemory: subscribers that keep
// up with N local commits and N remote applies read none of them from
// disk (not one read of the feed, not one event materialized); a
// subscriber that starts behind, after a restart or once the cache has
// moved on, reads exactly the events no longer in memory from disk, and
// gets every event.
func TestFeedCaughtUpSubscribersTakeEventsFromMemory(t *testing.T) {
	cfg := testConfig(t, t.TempDir())
	s, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { s.Close() }()
	const subscribers, n = 3, 100
	subs := subscribeN(t, s, 0, subscribers)
	reads, materialized := s.feedCache.reads.Load(), s.feedCache.materialized.Load()
	var delivered []Event
	for i := range n {
		mustUpdate(t, s, func(tx *Tx) error { return tx.PutBackend(sampleBackend(fmt.Sprint("local-", i), "web")) })
		v := Version{HLC: NewHLC(time.Now().UnixMilli(), 0), Origin: "peer", Seq: uint64(i + 1)}
		b := sampleBackend(fmt.Sprint("remote-", i), "web")
		if _, err := applySet(s, ChangeSet{Origin: "peer", Seq: v.Seq, HLC: v.HLC, Changes: []Change{
			{Table: TableBackends, Key: b.ID, Version: v, Value: encodeBackend(b)}}}); err != nil {
			t.Fatal(err)
		}
		for j, sub := range subs {
			evs := collect(t, sub, uint64(2*i), 2, false)
			if j == 0 {
				delivered = append(delivered, evs...)
			}
		}
	}
	if got := s.feedCache.reads.Load() - reads; got != 0 {
		t.Fatalf("caught-up subscribers read the feed %d times", got)
	}
	if got := s.feedCache.materialized.Load() - materialized; got != 0 {
		t.Fatalf("caught-up subscribers materialized %d events", got)
	}

	// Behind after a restart: every event from disk, each once, equal
	// to what the caught-up subscribers got (no row was overwritten).
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if s, err = Open(cfg); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for i, ev := range collect(t, s.Subscribe(ctx, 0), 0, 2*n, false) {
		sameEvent(t, "after a restart", ev, withKeyring(delivered[i], s.keys))
	}
	if got := s.feedCache.materialized.Load(); got != 2*n {
		t.Fatalf("a subscriber from index 0 after a restart materialized %d of %d events", got, 2*n)
	}

	// Behind the cache: of 2n+extra events, the first 2n+extra-512 are no
	// longer in memory and are read from disk, the rest are not.
	const extra = 500
	for i := range extra {
		mustUpdate(t, s, func(tx *Tx) error { return tx.PutPool(samplePool(fmt.Sprint("more-", i))) })
	}
	before := s.feedCache.materialized.Load()
	evs := collect(t, s.Subscribe(ctx, 0), 0, 2*n+extra, false)
	if got, want := s.feedCache.materialized.Load()-before, uint64(2*n+extra-feedCacheSlots); got != want {
		t.Fatalf("a subscriber behind the cache materialized %d events, want %d", got, want)
	}
	for i, ev := range evs[:2*n] {
		sameEvent(t, "behind the cache", ev, withKeyring(delivered[i], s.keys))
	}
}

// TestFeedUnsyncedCommitNotDelivered: the event of a local commit whose
// WAL sync has not completed is kept in memory but delivered to no
// subscriber (caught up, or starting anew), and neither is a remote
// apply written after it; both arrive, in order, once the sync is done.
func TestFeedUnsyncedCommitNotDelivered(t *testing.T) {
	s := syncedStore(t)
	gate := gateSyncs(t, s, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	live := s.Subscribe(ctx, 0)
	done := make(chan commitResult, 1)
	go func() {
		c, err := putBackendUpdate(s, "unsynced")
		done <- commitResult{c, err}
	}()
	recv(t, gate.entered, "the WAL sync")
	if res, err := applySet(s, remoteSet(t, 1)); err != nil || res.Index != 2 {
		t.Fatalf("apply after the unsynced commit: %+v, %v", res, err)
	}
	// Both events are in the cache, neither is published.
	for index := uint64(1); index <= 2; index++ {
		s.feedCache.mu.Lock()
		slot := s.feedCache.slots[index%feedCacheSlots]
		s.feedCache.mu.Unlock()
		if slot == nil || slot.index != index {
			t.Fatalf("event %d not kept in memory: %+v", index, slot)
		}
		if ev, ok := s.nextEvent(index); ok {
			t.Fatalf("unpublished event %d handed out: %+v", index, ev)
		}
	}
	// A new subscriber looks at once; the caught-up one is woken as a
	// commit would wake it.
	fresh := s.Subscribe(ctx, 0)
	s.notifyMu.Lock()
	close(s.notify)
	s.notify = make(chan struct{})
	s.notifyMu.Unlock()
	for name, sub := range map[string]*Subscription{"caught-up": live, "new": fresh} {
		select {
		case ev := <-sub.Events():
			t.Fatalf("%s subscriber got event %d before its commit's WAL sync", name, ev.Index)
		case <-time.After(200 * time.Millisecond):
		}
	}
	gate.release <- struct{}{}
	if r := recv(t, done, "the Update"); r.err != nil || r.c.Index != 1 {
		t.Fatalf("Update: %+v", r)
	}
	for name, sub := range map[string]*Subscription{"caught-up": live, "new": fresh} {
		evs := collect(t, sub, 0, 2, false)
		if evs[0].Set.Origin != s.NodeID() || evs[1].Set.Origin != "remote" {
			t.Fatalf("%s subscriber got %+v", name, evs)
		}
	}
	if got := s.feedCache.materialized.Load(); got != 0 {
		t.Fatalf("%d events read from disk", got)
	}
}
