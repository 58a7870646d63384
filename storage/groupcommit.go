package storage

import (
	"errors"
	"fmt"
	"sync"
)

// Group commit.
//
// A local commit must be durable (Config.SyncWAL) before Update returns
// and before its feed index is published: a replication peer that saw a
// local seq a crash then lost would later receive that seq again with
// other content. Syncing the WAL inside the commit mutex made every
// commit pay one fsync alone while every other writer queued behind it.
// Instead the batch is written without sync under the mutex (the next
// transaction sees it), the mutex is released, and the committer waits
// for a WAL sync that covers its write. One waiter at a time runs
// DB.FlushWAL(sync=true); the others wait on a condition, and one sync
// covers every write that reached the WAL before it started (the WAL is
// written in commit order: every write happens under the commit mutex).
//
// Publication (lastIndex and the feed notification) follows the syncs:
// the published index is the highest allocated index below the first
// local commit that is not yet synced. Remote applies are written
// without sync by design (a lost apply is fetched again), so they
// publish at once unless a local commit before them still waits.
//
// A failed sync is sticky: the batches already in the memtable may be
// visible to reads yet lost by a crash, and RocksDB does not say which,
// so the store refuses every later write (ErrCommitFailed) and Ready
// reports it until the store is reopened.

// errSyncFailed marks the sticky failure of a WAL sync.
var errSyncFailed = errors.New("storage: WAL sync failed; reopen the store")

// groupCommit is the state of the WAL syncer, guarded by mu.
type groupCommit struct {
	mu   sync.Mutex
	cond *sync.Cond

	written uint64 // ticket of the latest local write that needs a sync
	synced  uint64 // every ticket up to it is durable
	syncing bool   // a waiter runs FlushWAL now
	err     error  // sticky: a sync failed
	// unsynced are the local commits written but not synced, in ticket
	// (and index) order; maxIndex is the highest index written so far.
	unsynced []pendingSync
	maxIndex uint64

	// flush syncs the WAL: DB.FlushWAL; tests replace it to block or fail.
	flush func() error
	syncs uint64 // WAL syncs run (tests check the coalescing)
}

type pendingSync struct{ ticket, index uint64 }

func (g *groupCommit) init(flush func() error) {
	g.cond = sync.NewCond(&g.mu)
	g.flush = flush
}

// failed returns the sticky sync error, if any.
func (g *groupCommit) failed() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.err
}

// nextIndexLocked returns the feed index for the next write; the caller
// holds commitMu. Indexes are allocated here, not from lastIndex, which
// lags behind writes that wait for their sync.
func (s *Store) nextIndexLocked() uint64 {
	s.gc.mu.Lock()
	defer s.gc.mu.Unlock()
	return max(s.gc.maxIndex, s.lastIndex.Load()) + 1
}

// writtenLocked records a write that reached RocksDB (the caller holds
// commitMu, so writes are recorded in WAL order). index is its highest
// feed index (0: none). A write that needs a sync gets a ticket to wait
// for with awaitSync; any other write is published as soon as no earlier
// local commit waits for its sync.
func (s *Store) writtenLocked(index uint64, needSync bool) (ticket uint64) {
	g := &s.gc
	g.mu.Lock()
	defer g.mu.Unlock()
	g.maxIndex = max(g.maxIndex, index)
	if needSync {
		g.written++
		ticket = g.written
		g.unsynced = append(g.unsynced, pendingSync{ticket, index})
		return ticket
	}
	s.publishLocked()
	return 0
}

// publishLocked publishes every index that needs no more syncing: up to
// the first unsynced local commit, or everything written. The caller
// holds gc.mu; publication only moves forward.
func (s *Store) publishLocked() {
	g := &s.gc
	upTo := g.maxIndex
	if len(g.unsynced) > 0 {
		upTo = g.unsynced[0].index - 1
	}
	if upTo > s.lastIndex.Load() {
		s.committed(upTo)
	}
}

// awaitSync returns once a WAL sync covers ticket, running the sync
// itself when no other waiter does. A failed sync fails every waiter
// whose write it did not cover, and every later one.
func (s *Store) awaitSync(ticket uint64) error {
	g := &s.gc
	g.mu.Lock()
	defer g.mu.Unlock()
	for g.synced < ticket {
		if g.err != nil {
			return g.err
		}
		if g.syncing {
			g.cond.Wait()
			continue
		}
		// Everything written so far is in the WAL before FlushWAL starts.
		target := g.written
		g.syncing = true
		g.mu.Unlock()
		err := g.flush()
		g.mu.Lock()
		g.syncing = false
		g.syncs++
		if err != nil {
			g.err = fmt.Errorf("%w: %w", errSyncFailed, err)
			s.noteWriteError(writeError(err))
		} else {
			g.synced = target
			n := 0
			for n < len(g.unsynced) && g.unsynced[n].ticket <= target {
				n++
			}
			g.unsynced = append(g.unsynced[:0], g.unsynced[n:]...)
			s.publishLocked()
		}
		g.cond.Broadcast()
	}
	return nil
}

// writtenTicketLocked returns the ticket of the latest local write; the
// caller holds commitMu, so a RocksDB snapshot taken under the same lock
// holds no local commit above it. Whatever hands such a snapshot's local
// change sets to a peer (the feed, ChangeSets, Snapshot) first waits with
// awaitSync for this ticket: a peer must never learn a local seq that a
// crash could still lose, since this node would then reuse it.
func (s *Store) writtenTicketLocked() uint64 {
	s.gc.mu.Lock()
	defer s.gc.mu.Unlock()
	return s.gc.written
}

// refuseAfterSyncFailure refuses a write after a failed WAL sync.
func (s *Store) refuseAfterSyncFailure() error {
	if err := s.gc.failed(); err != nil {
		return fmt.Errorf("%w: %w", ErrCommitFailed, err)
	}
	return nil
}
