package storage

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/linxGnu/grocksdb"
)

// The feed column family maps every commit index (big-endian) to the
// change set committed at it: a reference {1: origin, 2: seq} to its
// change-log entry, itself a list of references to rows (changelog.go).
// Stores written before that format may still hold entries {3: a
// marshalled ChangeSet} (the applied subset of a partial Apply); they are
// read as references too.

func feedRef(origin string, seq uint64) []byte {
	var e encoder
	e.str(1, origin)
	e.uint(2, seq)
	return e.b
}

// feedBatch is how many events a subscriber reads from disk at a time.
const feedBatch = 256

// readFeed returns up to max events after index `after`, in index order.
func (s *Store) readFeed(after uint64, max int) ([]Event, error) {
	if err := s.enter(); err != nil {
		return nil, err
	}
	defer s.leave()
	s.feedCache.reads.Add(1)
	// One snapshot for the feed, the change log and the rows, so that a
	// row overwritten after the snapshot still shows in its own event.
	// It is taken under the commit mutex, and every local commit in it is
	// synced before it is read: an event never reflects (by leaving out a
	// row a later commit overwrote) a commit a crash could still lose.
	s.commitMu.Lock()
	ro, release := s.snapshotReads()
	ticket := s.writtenTicketLocked()
	s.commitMu.Unlock()
	defer release()
	if err := s.awaitSync(ticket); err != nil {
		return nil, err
	}
	last := s.lastIndex.Load()
	it := s.base.NewIteratorCF(ro, s.cfs[cfFeed])
	defer it.Close()
	var out []Event
	for it.Seek(feedKey(after + 1)); it.Valid() && len(out) < max; it.Next() {
		k := it.Key().Data()
		if len(k) != 8 {
			return nil, corruptError(cfFeed, fmt.Errorf("malformed feed key"))
		}
		index := beUint64(k)
		if index > last {
			break // not published yet
		}
		origin, seq, err := decodeFeedValue(it.Value().Data())
		if err != nil || len(it.Value().Data()) == 0 {
			return nil, corruptError(cfFeed, fmt.Errorf("entry %d: %v", index, err))
		}
		ev, err := s.feedEvent(ro, index, origin, seq)
		if err != nil {
			return nil, err
		}
		out = append(out, ev)
	}
	if err := it.Err(); err != nil {
		return nil, readError(cfFeed, err)
	}
	return out, nil
}

// Every subscriber (routing table, certificate cache, replication, ...)
// reads every event, and materializing one (a change-log seek and a
// MultiGet of its rows) was most of the feed's CPU. feedCache keeps the
// latest events, so that a subscriber rarely reads one from disk: the
// commit and apply paths put each event they write into it, built from
// the rows they hold in memory (putEvent), and a subscriber whose next
// event is there takes it without a snapshot or an iterator (nextEvent).
// A subscriber that is further behind reads from disk, and the event it
// materializes is kept too, so that the others reading it share it.
// Events are read-only for subscribers. An event built at its commit, or
// materialized from an earlier snapshot, may hold a row a later commit
// has overwritten since; that is what a subscriber reading at that moment
// would have got, and the later commit's event follows it, so applying
// events in order still ends at the latest state.
const (
	feedCacheSlots    = 512
	feedCacheMaxBytes = 32 << 10 // larger sets go through disk, shared only while being read
)

type feedCache struct {
	mu    sync.Mutex
	slots [feedCacheSlots]*feedSlot
	// materialized counts change-log reads, reads the feed reads, for
	// tests.
	materialized, reads atomic.Uint64
}

// feedSlot is one event: put by the commit that wrote it (done nil), or
// filled by the subscriber that claimed it to read it from disk, while
// the others wait for it rather than read it again.
type feedSlot struct {
	index  uint64
	origin string // with seq: a feed rebuilt under the same indexes (repair) never matches an old slot
	seq    uint64
	done   chan struct{} // closed once ev or err is set; nil: set from the start
	ev     Event
	err    error
}

// putEvent keeps the event a commit has just written, before its index is
// published. The caller holds the commit mutex and has built ev from the
// rows the commit wrote, exactly as materializing it from disk right
// after the commit would give them (same order, bytes, expiries; see
// TestFeedEventsFromMemoryMatchDisk); a set too large to keep is left to
// be read from disk.
func (c *feedCache) putEvent(ev Event) {
	if ev.Set.size() > feedCacheMaxBytes {
		return
	}
	slot := &feedSlot{index: ev.Index, origin: ev.Set.Origin, seq: ev.Set.Seq, ev: ev}
	c.mu.Lock()
	c.slots[ev.Index%feedCacheSlots] = slot
	c.mu.Unlock()
}

// nextEvent returns the event at index from the cache, if the cache holds
// it complete and index is published and not pruned. Publication is what
// makes a local commit deliverable: its index is published only once its
// WAL sync is done (groupcommit.go), so an event built at commit time is
// never handed out before its commit is durable.
func (s *Store) nextEvent(index uint64) (Event, bool) {
	if index > s.lastIndex.Load() || index < s.firstIndex.Load() {
		return Event{}, false
	}
	c := &s.feedCache
	c.mu.Lock()
	slot := c.slots[index%feedCacheSlots]
	c.mu.Unlock()
	if slot == nil || slot.index != index {
		return Event{}, false
	}
	if slot.done != nil {
		select {
		case <-slot.done:
		default:
			return Event{}, false // being read from disk: readFeed shares it
		}
	}
	if slot.err != nil {
		return Event{}, false
	}
	return slot.ev, true
}

// feedEvent returns the event at index, materializing it from ro unless
// another subscriber has (or is), or the commit kept it.
func (s *Store) feedEvent(ro *grocksdb.ReadOptions, index uint64, origin string, seq uint64) (Event, error) {
	c := &s.feedCache
	c.mu.Lock()
	i := index % feedCacheSlots
	slot := c.slots[i]
	if slot != nil && slot.index > index {
		// The slot holds a later event, which subscribers that are
		// caught up still need: read this one without keeping it.
		c.mu.Unlock()
		return s.materializeEvent(ro, index, origin, seq)
	}
	owner := slot == nil || slot.index != index || slot.origin != origin || slot.seq != seq
	if owner {
		slot = &feedSlot{index: index, origin: origin, seq: seq, done: make(chan struct{})}
		c.slots[i] = slot
	}
	c.mu.Unlock()
	if !owner {
		if slot.done != nil {
			<-slot.done
		}
		if slot.err == nil {
			return slot.ev, nil
		}
		// The reader that claimed it failed: read it ourselves.
		return s.materializeEvent(ro, index, origin, seq)
	}
	slot.ev, slot.err = s.materializeEvent(ro, index, origin, seq)
	close(slot.done)
	if slot.err != nil || slot.ev.Set.size() > feedCacheMaxBytes {
		c.mu.Lock()
		if c.slots[i] == slot {
			c.slots[i] = nil
		}
		c.mu.Unlock()
	}
	return slot.ev, slot.err
}

func (s *Store) materializeEvent(ro *grocksdb.ReadOptions, index uint64, origin string, seq uint64) (Event, error) {
	s.feedCache.materialized.Add(1)
	cs, err := s.materialize(ro, origin, seq)
	if err != nil {
		return Event{}, err
	}
	return Event{Index: index, Set: cs.withKeys(s.keys)}, nil
}

// decodeFeedValue returns the change set a feed entry refers to.
func decodeFeedValue(v []byte) (origin string, seq uint64, err error) {
	var inline []byte
	err = decodeFields(v, func(f field) error {
		switch f.num {
		case 1:
			return f.str(&origin)
		case 2:
			return f.uint64(&seq)
		case 3:
			return f.bytes(&inline)
		}
		return nil
	})
	if err != nil {
		return "", 0, err
	}
	if inline != nil {
		// An entry of an older layout: the change set itself.
		var cs ChangeSet
		if err := decodeChangeSetFields(inline[1:], &cs, func([]byte) error { return nil }); err != nil {
			return "", 0, err
		}
		return cs.Origin, cs.Seq, nil
	}
	return origin, seq, nil
}

// Subscription delivers change-feed events in commit-index order.
type Subscription struct {
	ch     chan Event
	cursor atomic.Uint64 // index of the last event delivered
	mu     sync.Mutex
	err    error
	done   chan struct{}
}

// Subscribe starts delivering every event with an index greater than
// afterIndex, in order and without gaps: a subscriber that keeps up takes
// each event from memory, as its commit wrote it, once the commit is
// published (durable); one that starts or falls further behind than the
// feed cache reads the persisted feed. Events is closed when ctx ends or the store closes; Err
// then says why (ErrFeedPruned when the events it needs were pruned).
//
// An event carries the rows of its change set as they are when the event
// is read (for a subscriber that keeps up: as its commit wrote them): a
// row that a later commit has overwritten by then is left out of the
// event (the later commit's event carries the newer value), so an event can
// have fewer changes than its commit wrote, or none; it is delivered all
// the same, and applying the events in order still ends at the latest
// state. To follow a table without missing a change: read it in View, then
// Subscribe(ctx, tx.LastIndex()) with the index the View reported. Events
// already reflected in the view may be delivered again; applying them is
// idempotent because each carries the row's full value and version.
func (s *Store) Subscribe(ctx context.Context, afterIndex uint64) *Subscription {
	sub := &Subscription{ch: make(chan Event, 64), done: make(chan struct{})}
	s.stateMu.Lock()
	if s.closed {
		s.stateMu.Unlock()
		sub.finish(ErrClosed)
		return sub
	}
	s.subs.Add(1)
	sub.cursor.Store(afterIndex)
	s.live.Store(sub, struct{}{})
	s.stateMu.Unlock()
	go func() {
		defer s.subs.Done()
		defer s.live.Delete(sub)
		sub.finish(s.runSubscription(ctx, sub, afterIndex))
	}()
	return sub
}

func (s *Store) runSubscription(ctx context.Context, sub *Subscription, cursor uint64) error {
	deliver := func(ev Event) error {
		select {
		case sub.ch <- ev:
			cursor = ev.Index
			sub.cursor.Store(cursor)
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case <-s.closing:
			return ErrClosed
		}
	}
	for {
		// Take the waiter before looking so a commit between the look and
		// the wait still wakes us.
		wait := s.commitWaiter()
		// One look at the published index per round: a publication after
		// it closes wait, rather than sending this round to disk for an
		// event the cache holds.
		last := s.lastIndex.Load()
		// The events the cache still holds are delivered from memory.
		for cursor < last {
			ev, ok := s.nextEvent(cursor + 1)
			if !ok {
				break
			}
			if err := deliver(ev); err != nil {
				return err
			}
		}
		if cursor >= last {
			// Caught up: a read now would find nothing, and costs the
			// commit mutex, a snapshot and an iterator (at a thousand
			// commits a second, once per commit and subscriber).
			select {
			case <-wait:
				continue
			case <-ctx.Done():
				return ctx.Err()
			case <-s.closing:
				return ErrClosed
			}
		}
		events, err := s.readFeed(cursor, feedBatch)
		if err != nil {
			return err
		}
		for _, ev := range events {
			if ev.Index != cursor+1 {
				// Prune deletes from the front only, so a gap means the
				// entries this subscriber needs are gone.
				if first := s.firstIndex.Load(); cursor+1 < first {
					return fmt.Errorf("%w: wanted index %d, oldest kept is %d", ErrFeedPruned, cursor+1, first)
				}
				return corruptError(cfFeed, fmt.Errorf("feed jumps from index %d to %d", cursor, ev.Index))
			}
			if err := deliver(ev); err != nil {
				return err
			}
		}
		if len(events) > 0 {
			continue
		}
		select {
		case <-wait:
		case <-ctx.Done():
			return ctx.Err()
		case <-s.closing:
			return ErrClosed
		}
	}
}

// slowestSubscriber returns the lowest index a running subscription has
// delivered, and false when none runs.
func (s *Store) slowestSubscriber() (uint64, bool) {
	var lowest uint64
	found := false
	s.live.Range(func(k, _ any) bool {
		c := k.(*Subscription).cursor.Load()
		if !found || c < lowest {
			lowest, found = c, true
		}
		return true
	})
	return lowest, found
}

func (sub *Subscription) finish(err error) {
	sub.mu.Lock()
	sub.err = err
	sub.mu.Unlock()
	close(sub.ch)
	close(sub.done)
}

// Events returns the channel of events. It is closed when the context
// passed to Subscribe ends or the store closes.
func (sub *Subscription) Events() <-chan Event { return sub.ch }

// Done is closed after Events is closed.
func (sub *Subscription) Done() <-chan struct{} { return sub.done }

// Err returns why Events was closed: the context's error, ErrClosed, or a
// read error. nil while the subscription runs.
func (sub *Subscription) Err() error {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	return sub.err
}

// FeedSource is what a consumer of the change feed needs: consumers
// (pools, certs) declare it, or the subset they use, and take it instead
// of *Store, so that their tests can hand them a fake built with
// NewSubscription.
type FeedSource interface {
	Subscribe(ctx context.Context, afterIndex uint64) *Subscription
}

// NewSubscription returns a Subscription that delivers the events sent on
// events, in the order sent: a feed for a consumer's tests. Events is
// closed when events is closed (Err then nil) or ctx ends (Err ctx.Err()).
func NewSubscription(ctx context.Context, events <-chan Event) *Subscription {
	sub := &Subscription{ch: make(chan Event), done: make(chan struct{})}
	go func() {
		for {
			select {
			case ev, ok := <-events:
				if !ok {
					sub.finish(nil)
					return
				}
				select {
				case sub.ch <- ev:
					sub.cursor.Store(ev.Index)
				case <-ctx.Done():
					sub.finish(ctx.Err())
					return
				}
			case <-ctx.Done():
				sub.finish(ctx.Err())
				return
			}
		}
	}()
	return sub
}
