package storage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// A compaction that runs out of space while flushes still fit. RocksDB
// 7.8.3 without paranoid checks ignores it (kNoError): it runs the
// compaction again every second, each time writing until the disk is full,
// while level 0 grows until writes stall for good, and the store said
// ready throughout. Now: writes are refused with ErrDiskFull and the store
// is not ready with that cause; the metrics show it; freeing space that
// lets a flush through but not the compaction changes nothing (a resume
// then made the store say ready at every probe while the compaction kept
// failing); once the compaction fits, writes come back by themselves (the
// probe resumes) and the compaction runs. It needs a small tmpfs, so it
// runs as root only.
func TestDiskFullCompaction(t *testing.T) {
	mnt, cfg := smallDiskStore(t, "64m", 4<<20)
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	s, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { noHang(t, "Close", func() { _ = s.Close() }) }()
	// round commits n backends of 4 KiB (and as much of their by-pool
	// index entries) and flushes them: one level-0 file per family.
	// RocksDB compacts a family's level 0 at 4 files. Every round's ids
	// spread over the same range, so that the files overlap and a
	// compaction has to merge them (files of disjoint ranges are moved
	// down a level without being rewritten, which needs no space).
	round := func(r, n int) error {
		for i := range n {
			if err := commitPadded(t, s, fmt.Sprintf("b-%03d-%d", i, r)); err != nil {
				return err
			}
		}
		return s.flushAll()
	}
	for r := range 3 {
		if err := round(r, 750); err != nil { // 3 MiB
			t.Fatal(err)
		}
	}
	// Room for the fourth round's WAL and flush (about 2 MiB each, the
	// WAL deleted after the flush: about 4 MiB to spare), not for a
	// compaction of 3 + 3 + 3 + 1 MiB (about 4 MiB short). small is the
	// part freed first: not enough for the compaction either.
	small := filepath.Join(mnt, "small")
	if err := os.WriteFile(small, make([]byte, 3<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	filler := fillDisk(t, mnt, "filler", 8<<20)
	// The fourth round's flushes take a family at a time, and each brings
	// its family to RocksDB's trigger: a compaction that started after the
	// first would take the space the others' flushes were counted on.
	// Compactions start once every family has flushed.
	setAutoCompaction(t, s, false)
	if err := round(3, 250); err != nil {
		t.Fatalf("fourth round (its flush fits): %v", err)
	}
	setAutoCompaction(t, s, true)
	deadline := time.Now().Add(hangBound)
	for s.opts.bgErr.Reason() != "compaction" {
		if time.Now().After(deadline) {
			t.Fatalf("no compaction out of space reported within %v (background error %v)", hangBound, s.backgroundError())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := s.Ready(); !errors.Is(err, ErrDiskFull) || !errors.Is(err, ErrNotReady) {
		t.Fatalf("Ready after a compaction ran out of space: %v", err)
	}
	if err := commitPadded(t, s, "refused"); !errors.Is(err, ErrDiskFull) {
		t.Fatalf("commit after a compaction ran out of space: %v", err)
	}
	if got := reasonMetric(t, reg, "singularity_edge_storage_background_error", "compaction"); got != 1 {
		t.Fatalf("background_error{reason=compaction} = %v, want 1", got)
	}
	if got := reasonMetric(t, reg, "singularity_edge_storage_background_errors_total", "compaction"); got < 1 {
		t.Fatalf("background_errors_total{reason=compaction} = %v, want at least 1", got)
	}
	if s.opts.bgErr.CompactionNeed() == 0 {
		t.Fatal("the compaction that ran out of space recorded no need")
	}
	// Room for a flush, not for the compaction: still not ready, every
	// probe says so.
	if err := os.Remove(small); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		if err := s.CheckWritable(); !errors.Is(err, ErrDiskFull) {
			t.Fatalf("probe with room for a flush but not for the compaction: %v", err)
		}
		if err := s.Ready(); !errors.Is(err, ErrDiskFull) {
			t.Fatalf("Ready with room for a flush but not for the compaction: %v", err)
		}
	}
	// Room for the compaction: the probe resumes, writes go through, and
	// the compaction runs.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	waitWritable(t, s)
	for deadline := time.Now().Add(hangBound); s.opts.bgErr.CompactionNeed() != 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the compaction did not run within %v after space came back (%v)", hangBound, s.backgroundError())
		}
	}
	if err := s.Ready(); err != nil {
		t.Fatalf("not ready after space is back: %v", err)
	}
	if err := commitPadded(t, s, "after"); err != nil {
		t.Fatalf("commit after space is back: %v", err)
	}
	if got := reasonMetric(t, reg, "singularity_edge_storage_background_error", "compaction"); got != 0 {
		t.Fatalf("background_error{reason=compaction} = %v after recovery, want 0", got)
	}
}

// setAutoCompaction turns RocksDB's automatic compactions of every family
// of s on or off; turning them on schedules what is due.
func setAutoCompaction(t *testing.T, s *Store, on bool) {
	t.Helper()
	for _, n := range append(TableNames(), internalFamilies()...) {
		if err := s.base.SetOptionsCF(s.cfs[n], []string{"disable_auto_compactions"}, []string{strconv.FormatBool(!on)}); err != nil {
			t.Fatalf("auto compactions of %s on=%v: %v", n, on, err)
		}
	}
}

// reasonMetric is the value of family name's series for reason.
func reasonMetric(t *testing.T, reg *prometheus.Registry, name, reason string) float64 {
	t.Helper()
	v, ok := metricValue(t, reg, name, map[string]string{"reason": reason})
	if !ok {
		t.Fatalf("no series %s{reason=%q}", name, reason)
	}
	return v
}

// A manual compaction (`db compact`, which the high-disk-use runbook runs
// to free space) that runs out of space fails to its caller with
// ErrDiskFull (RocksDB's C API returns no status for it, and it answered
// success) and stops nothing: the store stays ready and commits go on.
// Once there is room it succeeds.
func TestDiskFullManualCompaction(t *testing.T) {
	mnt, cfg := smallDiskStore(t, "64m", 4<<20)
	s, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { noHang(t, "Close", func() { _ = s.Close() }) }()
	// Three level-0 files per family: below RocksDB's trigger (4), so
	// nothing compacts by itself. Their keys interleave, so that a
	// compaction must rewrite them all (files apart are only moved).
	for r := range 3 {
		for i := range 500 {
			if err := commitPadded(t, s, fmt.Sprintf("b-%04d", 3*i+r)); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.flushAll(); err != nil {
			t.Fatal(err)
		}
	}
	filler := fillDisk(t, mnt, "filler", 4<<20)
	ctx := context.Background()
	var cerr error
	noHang(t, "Compact", func() { cerr = s.Compact(ctx, "backends") })
	if !errors.Is(cerr, ErrDiskFull) {
		t.Fatalf("manual compaction without room: %v, want ErrDiskFull", cerr)
	}
	if err := s.backgroundError(); err != nil {
		t.Fatalf("a manual compaction out of space left a background error: %v", err)
	}
	// RocksDB deletes the failed compaction's output on its own thread,
	// after the caller returned.
	for deadline := time.Now().Add(hangBound); ; time.Sleep(50 * time.Millisecond) {
		if free, err := freeBytes(mnt); err == nil && free >= 3<<20 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the failed compaction's output was not deleted")
		}
	}
	if err := s.Ready(); err != nil {
		t.Fatalf("not ready after a manual compaction ran out of space: %v", err)
	}
	if err := commitPadded(t, s, "after-manual"); err != nil {
		t.Fatalf("commit after a manual compaction ran out of space: %v", err)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	noHang(t, "Compact", func() { cerr = s.Compact(ctx, "backends") })
	if cerr != nil {
		t.Fatalf("manual compaction with room: %v", cerr)
	}
}
