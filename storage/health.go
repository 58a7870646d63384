package storage

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/linxGnu/grocksdb"
	"go.uber.org/zap"

	"github.com/singularity-ng/singularity-edge/storage/internal/bgerror"
)

// writeFailure is the last commit that failed for a storage reason.
type writeFailure struct {
	err error
	at  time.Time
}

// isDiskFull recognizes RocksDB's out-of-space errors: ENOSPC from the WAL
// (that commit fails), a flush (RocksDB then holds a background error and
// refuses writes until resume clears it) or a compaction (retried later).
func isDiskFull(msg string) bool {
	m := strings.ToLower(msg)
	return strings.Contains(m, "no space left") || strings.Contains(m, "enospc") ||
		strings.Contains(m, "space limit") || strings.Contains(m, "nospace")
}

// diskFullError wraps err with ErrDiskFull when it is for lack of space.
func diskFullError(err error) error {
	if isDiskFull(err.Error()) && !errors.Is(err, ErrDiskFull) {
		return fmt.Errorf("%w: %v", ErrDiskFull, err)
	}
	return err
}

// backgroundError returns the error RocksDB holds after a failed flush, a
// compaction that ran out of space (or another background failure it does
// not ignore), or nil. While it holds one, every write fails.
func (s *Store) backgroundError() error {
	if err := s.opts.bgErr.Err(); err != nil {
		work := s.opts.bgErr.Reason()
		if work == "" {
			work = "write"
		}
		return diskFullError(fmt.Errorf("storage: background %s failed: %w", work, err))
	}
	return nil
}

// compactionRoom fails while the background error held comes from a
// compaction that ran out of space and the volume has less free space
// than that compaction read plus one write buffer (the reserve RocksDB's
// own space manager keeps for flushes and logs). Resume would succeed
// with less (its flush fits), RocksDB would run the compaction again, it
// would fail again, and the store would say ready between the two at
// every health check.
func (s *Store) compactionRoom() error {
	if s.opts.bgErr.Reason() != "compaction" {
		return nil
	}
	need := s.opts.bgErr.CompactionNeed()
	if need == 0 {
		return nil
	}
	need += s.opts.wbs
	free, err := freeBytes(s.cfg.Dir)
	if err != nil || free >= need {
		return nil // resume tries; a compaction that fails again says so
	}
	return fmt.Errorf("%w: a compaction ran out of space; writes resume once %d bytes are free (%d now)", ErrDiskFull, need, free)
}

// freeBytes returns the space that an unprivileged process can still use on
// dir's filesystem.
func freeBytes(dir string) (uint64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return uint64(st.Bavail) * uint64(st.Bsize), nil
}

// resume clears RocksDB's background error once its cause is gone: DB::Resume
// flushes the memtables that a failed flush left behind, lets writes in
// again and schedules the compactions that stopped. It does nothing (and
// costs a mutex) when there is no error, and fails, leaving the error in
// place, while the disk is still full or has no room yet for a compaction
// that ran out of space (compactionRoom).
func (s *Store) resume() error {
	if !s.canResume {
		return nil
	}
	s.resumeMu.Lock()
	defer s.resumeMu.Unlock()
	if s.opts.bgErr.Err() == nil {
		return nil // another caller resumed while this one waited
	}
	if err := s.compactionRoom(); err != nil {
		return err
	}
	if err := bgerror.Resume(s.base); err != nil {
		// The cause is the background error still held (a full disk
		// answers ErrDiskFull), whatever Resume's own status says.
		if bg := s.backgroundError(); bg != nil {
			return fmt.Errorf("%w (resume writes: %v)", bg, err)
		}
		return diskFullError(fmt.Errorf("storage: resume writes: %w", err))
	}
	return nil
}

// resumeAfterFailure makes the next write safe after a failed one, and
// fails when it cannot yet, so that writes come back by themselves once
// space is freed, without a restart, and without losing any. RocksDB's
// background error is cleared with resume. A write that failed without
// one (its WAL append ran out of space) may have left part of its record
// at the end of the log, and RocksDB, without paranoid checks, appends the
// next commit after it; recovery stops at that tear and loses every
// commit behind it. Flushing every family first moves writes to a new log
// and makes the torn one obsolete.
//
// Attempts are paced (resumePacer): the health probe every 2 s and every
// commit would otherwise each flush against a full disk. Between them the
// failure still held is answered as it is.
func (s *Store) resumeAfterFailure() error {
	bg := s.opts.bgErr.Err() != nil
	f := s.writeErr.Load()
	if !bg && f == nil {
		return nil
	}
	if !s.pace.due(s.cfg.Now(), s.spaceForFlush) {
		if err := s.backgroundError(); err != nil {
			return err
		}
		if f != nil {
			return f.err
		}
		// Cleared meanwhile by another caller's attempt.
		return nil
	}
	if !bg && !s.canSwitch {
		// Checked before the pacing: this refusal does not pass with
		// time or space, and answering the first failure meanwhile would
		// promise that writes resume by themselves.
		if err := s.flushWaitRefused("a write failed and the log it may have torn cannot be retired"); err != nil {
			return err
		}
	}
	s.counts.resumeAttempts.Add(1)
	var err error
	if bg {
		err = s.resume()
	} else if ferr := s.retireTornLog(); ferr != nil {
		err = diskFullError(fmt.Errorf("storage: retire the log of a failed write: %w", ferr))
	}
	s.pace.done(s.cfg.Now(), err)
	return err
}

// Bounds of the wait between two attempts to write again after a failure.
const (
	resumeWaitMin = 2 * time.Second
	resumeWaitMax = time.Minute
)

// resumePacer spaces the attempts to write again after a failure: the wait
// doubles after each one that fails, from resumeWaitMin up to
// resumeWaitMax, and is over at once when there is room for a flush again
// (space was freed) or after a write succeeds. So a full disk costs one
// flush attempt a minute, and writes still come back as soon as space is
// freed.
type resumePacer struct {
	mu   sync.Mutex
	wait time.Duration // after the last failed attempt; 0: none failed
	next time.Time     // no attempt before, unless there is room again
}

// due reports whether an attempt may be made now: none failed yet, the
// wait is over, or room says there is space again.
func (p *resumePacer) due(now time.Time, room func() bool) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.wait == 0 || !now.Before(p.next) || room()
}

// done records an attempt's outcome.
func (p *resumePacer) done(now time.Time, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err == nil {
		p.wait, p.next = 0, time.Time{}
		return
	}
	p.wait = min(max(2*p.wait, resumeWaitMin), resumeWaitMax)
	p.next = now.Add(p.wait)
}

// reset ends the wait (a write succeeded).
func (p *resumePacer) reset() {
	p.mu.Lock()
	p.wait, p.next = 0, time.Time{}
	p.mu.Unlock()
}

// spaceForFlush reports whether the volume has room to flush every
// memtable, plus the write buffer RocksDB keeps in reserve: what an
// attempt to write again needs first.
func (s *Store) spaceForFlush() bool {
	need := s.opts.wbs
	for _, n := range append(TableNames(), internalFamilies()...) {
		if v, ok := s.base.GetIntPropertyCF("rocksdb.cur-size-all-mem-tables", s.cfs[n]); ok {
			need += v
		}
	}
	free, err := freeBytes(s.cfg.Dir)
	return err == nil && free >= need
}

// retireTornLog moves writes off the WAL file that a failed write may have
// torn, so that no commit is appended behind the tear. It flushes every
// family and waits for it, which also makes that file obsolete. Once
// RocksDB has held a background error since the store opened, a flush that
// is waited for may never end (flushMayNeverEnd): it then only switches
// the memtables, without waiting for anything, which starts a new WAL
// file. The torn one stays until its memtables are flushed; recovery
// reads it to the tear and goes on with the next file, whose first commit
// takes the sequence number the failed write did not use.
func (s *Store) retireTornLog() error {
	if !s.flushMayNeverEnd() {
		return s.flushAll()
	}
	families := append(TableNames(), internalFamilies()...)
	handles := make([]*grocksdb.ColumnFamilyHandle, len(families))
	for i, n := range families {
		handles[i] = s.cfs[n]
	}
	if err := bgerror.SwitchMemtables(s.base, handles); err != nil {
		return fmt.Errorf("switch memtables: %w", err)
	}
	return nil
}

// flushMayNeverEnd reports whether a flush that is waited for may never
// end: RocksDB has held a background error since the store opened, resumed
// or not. In RocksDB 7.8.3 a flush job scheduled during a DB::Resume that
// fails, and run after it, returns without taking its flush request off
// the queue, so every later flush job takes an older request than the one
// it was scheduled for and flushes too little; an immutable memtable is
// left that no job will flush, and a manual flush (which first waits until
// one more memtable would not stall writes) waits for it with no
// background work running. Close hung so after a failed flush, a resume
// and a compaction on a loaded machine, and a backup after a compaction
// in 3 runs of 13 (TestWaitingFlushesAfterBackgroundError). Nothing but
// opening RocksDB again clears that state. Every path that would wait for
// a flush asks this first: Close skips the flush (closeDB), a backup or
// checkpoint copies the WAL (flushBeforeCopy), a torn log is retired
// without waiting (retireTornLog), and the rest is refused
// (flushWaitRefused).
func (s *Store) flushMayNeverEnd() bool { return s.opts.bgErr.Count() > 0 }

// flushWaitRefused returns the error, wrapping ErrNotReady, that an
// operation which must wait for a flush (a manual compaction, an ingest,
// retiring a torn log where the flush that waits for nothing is not
// reachable) fails with once such a flush may never end
// (flushMayNeverEnd); nil before. The operation would otherwise hold the
// store, and Close, with it. The remedy named is a restart; the WAL keeps
// every acknowledged commit across it.
func (s *Store) flushWaitRefused(what string) error {
	if !s.flushMayNeverEnd() {
		return nil
	}
	n := s.opts.bgErr.Count()
	return fmt.Errorf("%w: %s: RocksDB has held %d background error(s) since the store opened, and after one "+
		"RocksDB 7.8.3 may never finish a flush that is waited for; restart the agent (the WAL keeps every commit), "+
		"then try again", ErrNotReady, what, n)
}

// flushAll flushes the memtables of every family and waits for it.
func (s *Store) flushAll() error {
	fo := grocksdb.NewDefaultFlushOptions()
	defer fo.Destroy()
	fo.SetWait(true)
	for _, n := range append(TableNames(), internalFamilies()...) {
		if err := s.base.FlushCF(s.cfs[n], fo); err != nil {
			return fmt.Errorf("flush %s: %w", n, err)
		}
	}
	return nil
}

// noteWriteError classifies a failed write, remembers it for Ready, and
// returns the error to hand the caller: ErrDiskFull (wrapped) for lack of
// space.
func (s *Store) noteWriteError(err error) error {
	if err == nil {
		return nil
	}
	err = diskFullError(err)
	s.counts.commitFailures.Add(1)
	if prev := s.writeErr.Swap(&writeFailure{err: err, at: s.cfg.Now()}); prev == nil {
		s.log.Error("store cannot commit", zap.Error(err))
	}
	return err
}

// noteWriteOK clears a remembered write failure after a commit succeeded.
func (s *Store) noteWriteOK() {
	if s.writeErr.Load() != nil {
		s.pace.reset()
		if prev := s.writeErr.Swap(nil); prev != nil {
			s.log.Info("store commits again", zap.NamedError("after", prev.err))
		}
	}
}

// Ready returns nil when the store can commit and serve, or an error
// wrapping ErrNotReady that says why not: the last commit failed, or RocksDB
// holds a background error after a failed flush (both wrap ErrDiskFull when
// for lack of space), a table is under resync, or a
// snapshot ingest or the catch-up after it is not finished. Health checks
// and replication's "may I serve ranges" both ask it.
func (s *Store) Ready() error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	if err := s.refuseAfterSyncFailure(); err != nil {
		return fmt.Errorf("%w: %w", ErrNotReady, err)
	}
	if f := s.writeErr.Load(); f != nil {
		return fmt.Errorf("%w: %w at %s: %w", ErrNotReady, ErrCommitFailed, f.at.UTC().Format(time.RFC3339), f.err)
	}
	if err := s.backgroundError(); err != nil {
		// A failed flush refuses the next commit before it is tried.
		return fmt.Errorf("%w: %w: %w", ErrNotReady, ErrCommitFailed, err)
	}
	switch st, _ := s.state.Load().(string); st {
	case stateIngesting:
		if err := s.flushWaitRefused("snapshot ingest not finished, and cannot be"); err != nil {
			return err
		}
		return fmt.Errorf("%w: snapshot ingest not finished", ErrNotReady)
	case stateCatchingUp:
		return fmt.Errorf("%w: first catch-up after the snapshot not finished", ErrNotReady)
	}
	tables, err := s.TablesToResync()
	if err != nil {
		return err
	}
	if len(tables) > 0 {
		return fmt.Errorf("%w: tables under resync: %s", ErrNotReady, strings.Join(tables, ", "))
	}
	return nil
}

// CheckWritable clears RocksDB's background error if there is one and its
// cause is gone, then tries a small synced write and reports whether the
// store can commit now. A health check calls it when Ready reports a failed
// commit or a background error, so that the node becomes ready again as soon
// as space is back even while nothing else writes.
func (s *Store) CheckWritable() error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	if err := s.resumeAfterFailure(); err != nil {
		return s.noteWriteError(err)
	}
	if err := s.base.PutCF(s.wo, s.cfs[cfMeta], []byte(metaProbe), []byte(s.cfg.Now().UTC().Format(time.RFC3339Nano))); err != nil {
		return s.noteWriteError(fmt.Errorf("storage: probe write: %w", err))
	}
	s.noteWriteOK()
	return nil
}

const metaProbe = "probe"

// serving fails with ErrNotReady when the store must not answer for
// ranges: a table under resync or an unfinished bootstrap means that some
// seqs the bookkeeping claims have rows missing here.
func (s *Store) serving() error {
	switch st, _ := s.state.Load().(string); st {
	case stateIngesting, stateCatchingUp:
		return fmt.Errorf("%w: bootstrap not finished (%s)", ErrNotReady, st)
	}
	tables, err := s.TablesToResync()
	if err != nil {
		return err
	}
	if len(tables) > 0 {
		return fmt.Errorf("%w: tables under resync: %s", ErrNotReady, strings.Join(tables, ", "))
	}
	return nil
}

// MarkCaughtUp records that the first catch-up round after a snapshot
// ingest (or a table resync) completed: the store is ready again.
func (s *Store) MarkCaughtUp() error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	if st, _ := s.state.Load().(string); st == stateIngesting {
		return fmt.Errorf("%w: snapshot ingest not finished", ErrNotReady)
	}
	if err := s.base.DeleteCF(s.wo, s.cfs[cfMeta], []byte(metaState)); err != nil {
		return s.noteWriteError(fmt.Errorf("storage: mark caught up: %w", err))
	}
	s.state.Store(stateReady)
	return nil
}
