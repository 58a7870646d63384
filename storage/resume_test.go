package storage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/linxGnu/grocksdb"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// failedFlush commits on a nearly full disk until a background flush has
// failed, then takes the last bytes, so that no resume can flush: RocksDB
// holds a background error. It returns the files whose removal frees the
// disk.
func failedFlush(t *testing.T, s *Store, mnt string) []string {
	t.Helper()
	filler := fillDisk(t, mnt, "filler", 3<<20)
	for i, deadline := 0, time.Now().Add(hangBound); s.backgroundError() == nil; i++ {
		if time.Now().After(deadline) {
			t.Fatalf("no failed flush after %d commits", i)
		}
		if err := commitPadded(t, s, fmt.Sprintf("b-%05d", i)); err != nil && !errors.Is(err, ErrDiskFull) {
			t.Fatalf("commit on a full disk: %v", err)
		}
	}
	rest := fillDisk(t, mnt, "rest", 0)
	if err := commitPadded(t, s, "refused"); !errors.Is(err, ErrDiskFull) {
		t.Fatalf("commit after the failed flush, with the disk full: %v", err)
	}
	if err := s.backgroundError(); !errors.Is(err, ErrDiskFull) {
		t.Fatalf("background error %v, want a full disk", err)
	}
	return []string{filler, rest}
}

func freeDisk(t *testing.T, files []string) {
	t.Helper()
	for _, f := range files {
		if err := os.Remove(f); err != nil {
			t.Fatal(err)
		}
	}
}

// While RocksDB holds a background error it refuses a manual compaction
// without running it, and its C API says nothing: `db compact` answered
// success. It must fail with the cause and change nothing (no resume
// either). Once space is back it is still refused, naming the restart
// after which it runs: its flush could wait forever until then
// (TestWaitingFlushesAfterBackgroundError).
func TestCompactRefusedWhileBackgroundError(t *testing.T) {
	mnt, cfg := smallDiskStore(t, "24m", 1<<20)
	s, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	defer func() {
		if !closed {
			noHang(t, "Close", func() { _ = s.Close() })
		}
	}()
	files := failedFlush(t, s, mnt)
	ctx := context.Background()
	attempts := s.counts.resumeAttempts.Load()
	for _, table := range []string{TableBackends, TablePools} {
		var cerr error
		noHang(t, "Compact", func() { cerr = s.Compact(ctx, table) })
		if !errors.Is(cerr, ErrDiskFull) {
			t.Fatalf("compact %s with a background error held: %v, want ErrDiskFull", table, cerr)
		}
	}
	if err := s.backgroundError(); !errors.Is(err, ErrDiskFull) {
		t.Fatalf("background error after the refused compaction: %v, want it still held", err)
	}
	if got := s.counts.resumeAttempts.Load(); got != attempts {
		t.Fatalf("the refused compaction made %d resume attempts, want none", got-attempts)
	}
	freeDisk(t, files)
	waitWritable(t, s)
	var cerr error
	noHang(t, "Compact", func() { cerr = s.Compact(ctx, TableBackends) })
	refusedForRestart(t, "Compact once space is back", cerr)
	noHang(t, "Close", func() { _ = s.Close() })
	closed = true
	s2, err := Open(cfg)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer func() { noHang(t, "Close", func() { _ = s2.Close() }) }()
	noHang(t, "Compact", func() { cerr = s2.Compact(ctx, TableBackends) })
	if cerr != nil {
		t.Fatalf("compact after a restart: %v", cerr)
	}
}

// On a full disk the health probe (every 2 s) and every commit tried to
// write again each time, a flush against the full disk. Attempts are
// paced: after a failed one the next waits 2 s, then twice as long each
// time, up to a minute; freeing space ends the wait at once, and a write
// that succeeds starts the pacing over.
func TestDiskFullResumePaced(t *testing.T) {
	mnt, cfg := smallDiskStore(t, "24m", 1<<20)
	offset := stillClock(&cfg)
	s, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { noHang(t, "Close", func() { _ = s.Close() }) }()
	files := failedFlush(t, s, mnt)
	probe := func() {
		t.Helper()
		if err := s.CheckWritable(); !errors.Is(err, ErrDiskFull) {
			t.Fatalf("probe on a full disk: %v", err)
		}
	}
	advance := func(d time.Duration) { offset.Add(int64(d)) }
	attempts := func() uint64 { return s.counts.resumeAttempts.Load() }

	// Whatever the commits above left, the wait is over after a minute:
	// one attempt, then none until its wait is over.
	advance(resumeWaitMax + time.Second)
	n := attempts()
	for range 10 {
		probe()
	}
	if got := attempts() - n; got != 1 {
		t.Fatalf("10 probes at once on a full disk made %d attempts, want 1", got)
	}
	wait := s.pace.wait
	if wait < resumeWaitMin || wait > resumeWaitMax {
		t.Fatalf("wait after a failed attempt %v, want within [%v, %v]", wait, resumeWaitMin, resumeWaitMax)
	}
	for range 6 {
		n = attempts()
		advance(wait - time.Millisecond)
		probe()
		if _, err := s.Update(context.Background(), func(tx *Tx) error { return tx.PutPool(samplePool("p")) }); !errors.Is(err, ErrDiskFull) {
			t.Fatalf("commit on a full disk: %v", err)
		}
		if got := attempts() - n; got != 0 {
			t.Fatalf("attempts before the wait of %v was over: %d", wait, got)
		}
		advance(time.Millisecond)
		probe()
		if got := attempts() - n; got != 1 {
			t.Fatalf("attempts once the wait of %v was over: %d, want 1", wait, got)
		}
		next := s.pace.wait
		if want := min(2*wait, resumeWaitMax); next != want {
			t.Fatalf("wait after %v: %v, want %v", wait, next, want)
		}
		wait = next
	}
	if wait != resumeWaitMax {
		t.Fatalf("wait %v after doubling, want the cap %v", wait, resumeWaitMax)
	}

	// Space comes back: the next probe tries at once, with no time
	// passing, and writes go through.
	freeDisk(t, files)
	n = attempts()
	waitWritable(t, s)
	if attempts() == n {
		t.Fatal("writes came back without an attempt")
	}
	if s.pace.wait != 0 {
		t.Fatalf("wait %v after writes came back, want none", s.pace.wait)
	}
	if err := commitPadded(t, s, "after"); err != nil {
		t.Fatalf("commit after space is back: %v", err)
	}
}

// Once RocksDB has held a background error, Close must not flush. RocksDB
// 7.8.3 can leave a flush request on its queue after a failed resume, and
// every flush job after it then takes an older request than its own: Close
// hung in its flush, waiting for an immutable memtable that no job would
// flush (TestCompactRefusedWhileBackgroundError under load; closeDB). Close
// says that it skips the flush, the commit made after the resume stays in
// the WAL (a Close that flushed mostly left nothing to replay; not always,
// since after a resume RocksDB does not wait for the flush and Close may
// stop it before it runs), and a reopen replays it.
func TestCloseAfterBackgroundErrorLeavesMemtablesToWAL(t *testing.T) {
	mnt, cfg := smallDiskStore(t, "24m", 1<<20)
	core, logs := observer.New(zapcore.WarnLevel)
	cfg.Logger = zap.New(core)
	s, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	defer func() {
		if !closed {
			_ = s.Close()
		}
	}()
	files := failedFlush(t, s, mnt)
	freeDisk(t, files)
	waitWritable(t, s)
	if err := commitPadded(t, s, "after"); err != nil {
		t.Fatalf("commit after space is back: %v", err)
	}
	noHang(t, "Close", func() { _ = s.Close() })
	closed = true
	if n := logs.FilterMessageSnippet("closing without flushing the memtables after a background error").Len(); n != 1 {
		t.Fatalf("Close said %d times that it skips its flush after a background error, want once", n)
	}
	if n := walEntries(t, cfg.Dir); n == 0 {
		t.Fatal("Close flushed the memtables after a background error: the WAL holds nothing to replay")
	}
	s2, err := Open(cfg)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer s2.Close()
	if _, err := s2.GetBackend(context.Background(), "after"); err != nil {
		t.Fatalf("backend committed after the resume, after a reopen: %v", err)
	}
}

// walEntries opens the database in dir read-only, which replays its WAL
// into the memtables without flushing them, and returns the number of
// entries they hold: what the WAL held that no flush had written.
func walEntries(t *testing.T, dir string) uint64 {
	t.Helper()
	opts := grocksdb.NewDefaultOptions()
	defer opts.Destroy()
	names, err := grocksdb.ListColumnFamilies(opts, dir)
	if err != nil {
		t.Fatal(err)
	}
	cfOpts := make([]*grocksdb.Options, len(names))
	for i := range cfOpts {
		cfOpts[i] = opts
	}
	db, handles, err := grocksdb.OpenDbForReadOnlyColumnFamilies(opts, dir, names, cfOpts, false)
	if err != nil {
		t.Fatalf("open read-only: %v", err)
	}
	defer db.Close()
	var n uint64
	for _, h := range handles {
		for _, p := range []string{"rocksdb.num-entries-active-mem-table", "rocksdb.num-entries-imm-mem-tables"} {
			v, _ := db.GetIntPropertyCF(p, h)
			n += v
		}
		h.Destroy()
	}
	return n
}
