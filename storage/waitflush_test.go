package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// afterFailedResumes brings a store on a small disk through a failed
// flush, resumes that fail while the disk stays full, and the resume that
// succeeds once space is back, then commits a few rows that stay in the
// memtables: the state in which RocksDB 7.8.3 may have left a flush
// request queued, so that a flush that is waited for never ends (flushMayNeverEnd).
// It returns the store and the ids of those rows.
func afterFailedResumes(t *testing.T) (*Store, []string) {
	t.Helper()
	mnt, cfg := smallDiskStore(t, "24m", 1<<20)
	// Each probe below is an attempt to resume, not one paced away.
	offset := stillClock(&cfg)
	s, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { noHang(t, "Close", func() { _ = s.Close() }) })
	files := failedFlush(t, s, mnt)
	for range 10 {
		offset.Add(int64(resumeWaitMax + time.Second))
		if err := s.CheckWritable(); !errors.Is(err, ErrDiskFull) {
			t.Fatalf("probe on a full disk: %v", err)
		}
	}
	freeDisk(t, files)
	waitWritable(t, s)
	var ids []string
	for i := range 5 {
		id := fmt.Sprintf("after-%d", i)
		if err := commitPadded(t, s, id); err != nil {
			t.Fatalf("commit after space is back: %v", err)
		}
		ids = append(ids, id)
	}
	return s, ids
}

// memtableEntries returns the entries the backends family holds in its
// memtables: what no flush has written yet.
func memtableEntries(s *Store) uint64 {
	var n uint64
	for _, p := range []string{"rocksdb.num-entries-active-mem-table", "rocksdb.num-entries-imm-mem-tables"} {
		v, _ := s.base.GetIntPropertyCF(p, s.cfs[TableBackends])
		n += v
	}
	return n
}

// refusedForRestart fails the test unless err is the refusal of an
// operation that would wait for a flush after a background error: not
// ready, naming the restart that clears it.
func refusedForRestart(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, ErrNotReady) || errors.Is(err, ErrDiskFull) || !strings.Contains(err.Error(), "restart the agent") {
		t.Fatalf("%s after a background error: %v, want ErrNotReady naming a restart", what, err)
	}
}

// Once RocksDB has held a background error (a failed flush, failed
// resumes, then one that succeeded), every operation that waited for a
// flush could wait forever in RocksDB 7.8.3 (flushMayNeverEnd): a backup after a
// compaction hung so in 3 of 13 runs, and Close with it, since the
// backup had entered the store. None may wait for a flush now: a compaction is
// refused with the restart that clears the state; a backup and a
// checkpoint copy the WAL instead of flushing, and what they copy opens
// with every acknowledged commit; after a failed write, writes move to a
// new WAL file with a flush that waits for nothing, and go on.
func TestWaitingFlushesAfterBackgroundError(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		run  func(t *testing.T, s *Store, ids []string)
	}{
		{"compact", func(t *testing.T, s *Store, _ []string) {
			var err error
			noHang(t, "Compact", func() { err = s.Compact(ctx, TableBackends) })
			refusedForRestart(t, "Compact", err)
		}},
		{"backup", func(t *testing.T, s *Store, ids []string) {
			// What hung: a compaction (run, or refused now), then a
			// backup.
			noHang(t, "Compact", func() { _ = s.Compact(ctx, TableBackends) })
			backups := filepath.Join(t.TempDir(), "backups")
			var err error
			noHang(t, "Backup", func() { _, err = s.Backup(ctx, backups) })
			if err != nil {
				t.Fatalf("backup after a background error: %v", err)
			}
			if memtableEntries(s) == 0 {
				t.Fatal("the memtables were flushed (compaction or backup) after a background error")
			}
			restored := filepath.Join(t.TempDir(), "restored")
			if err := Restore(ctx, backups, restored, 0); err != nil {
				t.Fatalf("restore: %v", err)
			}
			holdsAll(t, restored, ids)
		}},
		{"checkpoint", func(t *testing.T, s *Store, ids []string) {
			noHang(t, "Compact", func() { _ = s.Compact(ctx, TableBackends) })
			dir := filepath.Join(t.TempDir(), "checkpoint")
			var err error
			noHang(t, "Checkpoint", func() { err = s.Checkpoint(ctx, dir) })
			if err != nil {
				t.Fatalf("checkpoint after a background error: %v", err)
			}
			if memtableEntries(s) == 0 {
				t.Fatal("the memtables were flushed (compaction or checkpoint) after a background error")
			}
			holdsAll(t, dir, ids)
		}},
		{"torn log", func(t *testing.T, s *Store, ids []string) {
			// A commit whose WAL append failed, as noteWriteError
			// records it: the next write first moves writes off the log
			// it may have torn, without waiting for a flush.
			_ = s.noteWriteError(errors.New("IO error: No space left on device: While appending to file: 000042.log"))
			logBefore := lastWAL(t, s.Dir())
			var err error
			noHang(t, "CheckWritable", func() { err = s.CheckWritable() })
			if err != nil {
				t.Fatalf("probe after a failed write: %v", err)
			}
			if got := lastWAL(t, s.Dir()); got <= logBefore {
				t.Fatalf("WAL file %d after the failed write was retired, want one after %d", got, logBefore)
			}
			if err := s.Ready(); err != nil {
				t.Fatalf("not ready after the failed write was retired: %v", err)
			}
			noHang(t, "commit", func() { err = commitPadded(t, s, "next") })
			if err != nil {
				t.Fatalf("commit after the failed write was retired: %v", err)
			}
			noHang(t, "Close", func() { _ = s.Close() })
			holdsAll(t, s.Dir(), append(ids, "next"))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, ids := afterFailedResumes(t)
			tc.run(t, s, ids)
		})
	}
}

// holdsAll opens the store copied into dir and fails the test unless it
// holds every backend of ids.
func holdsAll(t *testing.T, dir string, ids []string) {
	t.Helper()
	c, err := Open(testConfig(t, dir))
	if err != nil {
		t.Fatalf("open the copy: %v", err)
	}
	defer c.Close()
	for _, id := range ids {
		if _, err := c.GetBackend(context.Background(), id); err != nil {
			t.Fatalf("backend %s in the copy: %v", id, err)
		}
	}
}

// An ingest writes its rows without the WAL and ends with a flush it waits
// for. One that failed on a full disk (a bootstrap onto a volume too
// small) leaves a background error behind, resumed once space is back;
// the next ingest must not start, since its flush could wait forever, and
// the store must say that only a restart lets it finish.
func TestIngestAfterBackgroundError(t *testing.T) {
	ctx := context.Background()
	src := openStore(t, func(c *Config) { c.NodeID = "src" })
	// 16 MiB of rows that do not compress.
	putPadded(t, src, 20)
	var snap bytes.Buffer
	if _, err := src.Snapshot(ctx, &snap); err != nil {
		t.Fatal(err)
	}
	mnt, cfg := smallDiskStore(t, "64m", 1<<20)
	cfg.NodeID = "dst"
	s, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { noHang(t, "Close", func() { _ = s.Close() }) }()
	filler := fillDisk(t, mnt, "filler", 8<<20)
	noHang(t, "Ingest", func() { _, err = s.Ingest(ctx, bytes.NewReader(snap.Bytes())) })
	if !errors.Is(err, ErrDiskFull) {
		t.Fatalf("ingest onto a full disk: %v, want ErrDiskFull", err)
	}
	if s.opts.bgErr.Count() == 0 {
		t.Fatal("the ingest failed without a background error: the test did not reach the state it is about")
	}
	freeDisk(t, []string{filler})
	waitWritable(t, s)
	noHang(t, "Ingest", func() { _, err = s.Ingest(ctx, bytes.NewReader(snap.Bytes())) })
	refusedForRestart(t, "Ingest", err)
	refusedForRestart(t, "Ready", s.Ready())
}

// lastWAL returns the number of the newest WAL file in dir.
func lastWAL(t *testing.T, dir string) int {
	t.Helper()
	names, err := filepath.Glob(filepath.Join(dir, "*.log"))
	if err != nil {
		t.Fatal(err)
	}
	last := 0
	for _, n := range names {
		var num int
		if _, err := fmt.Sscanf(filepath.Base(n), "%d.log", &num); err == nil {
			last = max(last, num)
		}
	}
	return last
}

// A WAL append that fails for lack of space after a background error was
// resumed: the log it tore is retired by switching to a new WAL file, not
// by a flush that is waited for, so it stays on disk and recovery reads
// past its tear. Every commit acknowledged before and after it must be
// there after a reopen that replays both files.
func TestTornLogAfterBackgroundErrorRecovers(t *testing.T) {
	s, ids := afterFailedResumes(t)
	mnt := filepath.Dir(s.Dir())
	filler := fillDisk(t, mnt, "filler2", 0)
	var failed error
	for i := 0; failed == nil; i++ {
		if i == 2000 {
			t.Fatal("no commit failed on a full disk")
		}
		id := fmt.Sprintf("full-%04d", i)
		if failed = commitPadded(t, s, id); failed == nil {
			ids = append(ids, id)
		}
	}
	if !errors.Is(failed, ErrDiskFull) {
		t.Fatalf("commit on a full disk: %v", failed)
	}
	if s.backgroundError() != nil || !strings.Contains(failed.Error(), ".log") {
		t.Skipf("the first failure was not a WAL append (%v, background error %v)", failed, s.backgroundError())
	}
	logBefore := lastWAL(t, s.Dir())
	freeDisk(t, []string{filler})
	waitWritable(t, s)
	if got := lastWAL(t, s.Dir()); got <= logBefore {
		t.Fatalf("WAL file %d after the torn one was retired, want one after %d", got, logBefore)
	}
	for i := range 5 {
		id := fmt.Sprintf("next-%d", i)
		if err := commitPadded(t, s, id); err != nil {
			t.Fatalf("commit after space is back: %v", err)
		}
		ids = append(ids, id)
	}
	noHang(t, "Close", func() { _ = s.Close() })
	holdsAll(t, s.Dir(), ids)
}
