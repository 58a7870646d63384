package storage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// A full disk: a commit fails with ErrDiskFull (not a generic error), the
// store reports not ready with that cause, and once space is back a probe
// (what the health check does) makes it ready and writes go through
// again. It needs a small tmpfs, so it runs as root only.
func TestDiskFullAnswersAndRecovers(t *testing.T) {
	mnt, cfg := smallDiskStore(t, "24m", 1<<20)
	s, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	filler := fillDisk(t, mnt, "filler", 0)
	var failed error
	for i := 0; i < 2000 && failed == nil; i++ {
		_, failed = s.Update(ctx, func(tx *Tx) error {
			b := sampleBackend(fmt.Sprintf("b-%05d", i), "p")
			b.Metadata = map[string]string{"pad": strings.Repeat("z", 4096)}
			return tx.PutBackend(b)
		})
	}
	if !errors.Is(failed, ErrDiskFull) {
		t.Fatalf("commit on a full disk: %v", failed)
	}
	if err := s.Ready(); !errors.Is(err, ErrDiskFull) || !errors.Is(err, ErrNotReady) {
		t.Fatalf("Ready on a full disk: %v", err)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	waitWritable(t, s)
	if err := s.Ready(); err != nil {
		t.Fatalf("not ready after space is back: %v", err)
	}
	if _, err := s.Update(ctx, func(tx *Tx) error { return tx.PutPool(samplePool("after")) }); err != nil {
		t.Fatalf("write after space is back: %v", err)
	}
}

// A background flush that fails for lack of space (a memtable fills, its
// SST cannot be written) while the WAL still has room: RocksDB then holds a
// background error. Commits must answer ErrDiskFull rather than wait
// forever for a flush nobody retries, Ready must say so, writes must come
// back without a restart once space is freed, Close must return whether or
// not space came back (it cannot flush while the disk is full), and every
// acknowledged commit must be there after a reopen (the WAL holds what no
// flush wrote).
func TestDiskFullBackgroundFlush(t *testing.T) {
	for _, tc := range []struct {
		name            string
		freeBeforeClose bool
	}{
		{"space back before close", true},
		{"closed while full", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mnt, cfg := smallDiskStore(t, "24m", 1<<20)
			s, err := Open(cfg)
			if err != nil {
				t.Fatal(err)
			}
			closed := false
			defer func() {
				// After a failure: a commit that hung would keep Close
				// waiting too, so do not wait for it forever.
				if !closed {
					done := make(chan struct{})
					go func() { _ = s.Close(); close(done) }()
					select {
					case <-done:
					case <-time.After(hangBound):
					}
				}
			}()
			ctx := context.Background()
			// The WAL file was preallocated at open, before the filler;
			// with 3 MiB left the WAL's growth fits, the flush of the
			// memtables (atomic: every family at once) does not.
			filler := fillDisk(t, mnt, "filler", 3<<20)
			var acked []string
			commit := func(id string) error {
				err := commitPadded(t, s, id)
				if err == nil {
					acked = append(acked, id)
				}
				return err
			}
			// Commit until the flush has failed. Commits may fail
			// before (a WAL write without room), for lack of space only.
			var failed error
			for i, deadline := 0, time.Now().Add(hangBound); s.backgroundError() == nil; i++ {
				if time.Now().After(deadline) {
					t.Fatalf("no failed flush after %d commits (last error %v)", i, failed)
				}
				if err := commit(fmt.Sprintf("b-%05d", i)); err != nil {
					if !errors.Is(err, ErrDiskFull) {
						t.Fatalf("commit on a full disk: %v", err)
					}
					failed = err
				}
			}
			// The failed flush removed its partial file, so a resume
			// could now find room to flush and let the next commit
			// through: take the last bytes, so that it cannot.
			rest := fillDisk(t, mnt, "rest", 0)
			if err := commit("refused"); !errors.Is(err, ErrDiskFull) {
				t.Fatalf("commit after the failed flush, with the disk full: %v", err)
			}
			bg := s.backgroundError()
			if bg == nil || !strings.Contains(bg.Error(), ".sst") {
				t.Fatalf("background error %v: the test did not reach a failed flush", bg)
			}
			if !errors.Is(bg, ErrDiskFull) {
				t.Fatalf("background error not classified as a full disk: %v", bg)
			}
			if err := s.Ready(); !errors.Is(err, ErrDiskFull) || !errors.Is(err, ErrNotReady) {
				t.Fatalf("Ready after the failed flush: %v", err)
			}
			// The health probe and commits try to resume at the same
			// time, as they do in the agent: every one of them answers
			// a full disk (RocksDB answered the second Resume "Busy",
			// which reached callers as a generic error, a 500).
			var wg sync.WaitGroup
			errs := make(chan error, 4*10)
			for g := range 4 {
				wg.Go(func() {
					for i := range 10 {
						if g%2 == 0 {
							errs <- s.CheckWritable()
						} else {
							_, err := s.Update(ctx, func(tx *Tx) error {
								return tx.PutBackend(sampleBackend(fmt.Sprintf("c-%d-%d", g, i), "p"))
							})
							errs <- err
						}
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				if !errors.Is(err, ErrDiskFull) {
					t.Fatalf("concurrent resume on a full disk: %v", err)
				}
			}
			if tc.freeBeforeClose {
				if err := errors.Join(os.Remove(filler), os.Remove(rest)); err != nil {
					t.Fatal(err)
				}
				waitWritable(t, s)
				if err := s.Ready(); err != nil {
					t.Fatalf("not ready after space is back: %v", err)
				}
				for i := 0; i < 20; i++ {
					if err := commit(fmt.Sprintf("after-%02d", i)); err != nil {
						t.Fatalf("commit after space is back: %v", err)
					}
				}
			}
			noHang(t, "Close", func() { _ = s.Close() })
			closed = true
			if !tc.freeBeforeClose {
				if err := errors.Join(os.Remove(filler), os.Remove(rest)); err != nil {
					t.Fatal(err)
				}
			}
			s2, err := Open(cfg)
			if err != nil {
				t.Fatalf("reopen: %v", err)
			}
			defer s2.Close()
			for _, id := range acked {
				if _, err := s2.GetBackend(ctx, id); err != nil {
					t.Fatalf("acknowledged backend %s after reopen: %v", id, err)
				}
			}
			if err := s2.Ready(); err != nil {
				t.Fatalf("reopened store not ready: %v", err)
			}
		})
	}
}

// The agent's default write buffers on a disk filled to the last byte: the
// flush and resume attempts that fail make RocksDB log errors while nothing
// can be written, which RocksDB 7.8.3's own info log answers by aborting
// the process (a debug assertion in its file writer). The store must
// instead answer ErrDiskFull, resume once space is back, close, and reopen
// with every acknowledged commit.
func TestDiskFullDefaultOptionsDoesNotAbort(t *testing.T) {
	mnt := mountSmallDisk(t, "64m")
	cfg := DefaultConfig()
	cfg.Dir = filepath.Join(mnt, "data")
	cfg.BlockCacheSize = 8 << 20
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
	ctx := context.Background()
	filler := fillDisk(t, mnt, "filler", 0)
	// Commit until a flush has failed: RocksDB logs that failure, and then
	// every probe's resume logs another.
	var acked []string
	for i, deadline := 0, time.Now().Add(hangBound); s.backgroundError() == nil; i++ {
		if time.Now().After(deadline) {
			t.Fatalf("no failed flush after %d commits", i)
		}
		id := fmt.Sprintf("b-%05d", i)
		switch err := commitPadded(t, s, id); {
		case err == nil:
			acked = append(acked, id)
		case !errors.Is(err, ErrDiskFull):
			t.Fatalf("commit on a full disk: %v", err)
		}
	}
	// The failed flush removed its partial file: take those bytes too, or
	// a probe's resume could flush and succeed.
	rest := fillDisk(t, mnt, "rest", 0)
	// Each probe tries to resume, and the flush that fails logs errors.
	for i := 0; i < 50; i++ {
		if err := s.CheckWritable(); !errors.Is(err, ErrDiskFull) {
			t.Fatalf("probe on a full disk: %v", err)
		}
	}
	if err := s.Ready(); !errors.Is(err, ErrDiskFull) {
		t.Fatalf("Ready on a full disk: %v", err)
	}
	if err := errors.Join(os.Remove(filler), os.Remove(rest)); err != nil {
		t.Fatal(err)
	}
	waitWritable(t, s)
	noHang(t, "Close", func() { _ = s.Close() })
	closed = true
	s2, err := Open(cfg)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer s2.Close()
	for _, id := range acked {
		if _, err := s2.GetBackend(ctx, id); err != nil {
			t.Fatalf("acknowledged backend %s after reopen: %v", id, err)
		}
	}
}

// commitPadded commits backend id with 4 KiB of incompressible metadata,
// failing the test if the commit does not return within hangBound.
func commitPadded(t *testing.T, s *Store, id string) error {
	t.Helper()
	var err error
	noHang(t, "commit "+id, func() {
		_, err = s.Update(context.Background(), func(tx *Tx) error {
			b := sampleBackend(id, "p")
			b.Metadata = map[string]string{"pad": incompressible(id, 4096)}
			return tx.PutBackend(b)
		})
	})
	return err
}

// smallDiskStore mounts a small disk (mountSmallDisk) and returns it with
// the configuration of a store on it: WAL synced, memtables of
// writeBuffer bytes so that flushes come early.
func smallDiskStore(t *testing.T, size string, writeBuffer int64) (string, Config) {
	t.Helper()
	mnt := mountSmallDisk(t, size)
	cfg := testConfig(t, filepath.Join(mnt, "data"))
	cfg.SyncWAL = true
	cfg.WriteBufferSize = writeBuffer
	return mnt, cfg
}

// mountSmallDisk mounts a tmpfs of the given size on a temp dir: a disk
// the tests can fill. It needs root.
func mountSmallDisk(t *testing.T, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs")
	}
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Skipf("mount tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", "-l", mnt).Run() })
	return mnt
}

// fillDisk fills the disk mounted at mnt with a file, then gives back free
// bytes of it, and returns the file's path (removing it frees the disk).
func fillDisk(t *testing.T, mnt, name string, free int64) string {
	t.Helper()
	filler := filepath.Join(mnt, name)
	if out, err := exec.Command("dd", "if=/dev/zero", "of="+filler, "bs=64k", "count=1000000").CombinedOutput(); err == nil {
		t.Fatalf("filler fit: %s", out)
	}
	if free > 0 {
		st, err := os.Stat(filler)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(filler, st.Size()-free); err != nil {
			t.Fatal(err)
		}
	}
	return filler
}

// waitWritable calls CheckWritable, as the health check does, until it
// succeeds. RocksDB's own recovery from a full disk checks the free space
// every few seconds, so the first probes may still fail; the bound only
// catches a store that never recovers.
func waitWritable(t *testing.T, s *Store) {
	t.Helper()
	var err error
	for deadline := time.Now().Add(hangBound); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if err = s.CheckWritable(); err == nil {
			return
		}
	}
	t.Fatalf("not writable %v after space is back: %v", hangBound, err)
}

// hangBound is how long an operation may take before the test calls it
// hung: far above anything a working store needs.
const hangBound = 60 * time.Second

// noHang runs f and fails the test when it has not returned within
// hangBound.
func noHang(t *testing.T, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	select {
	case <-done:
	case <-time.After(hangBound):
		t.Fatalf("%s did not return within %v", what, hangBound)
	}
}

// incompressible returns n letters that do not compress, derived from
// seed, so that the SST files are as large as the data.
func incompressible(seed string, n int) string {
	x := uint64(14695981039346656037)
	for i := 0; i < len(seed); i++ {
		x = (x ^ uint64(seed[i])) * 1099511628211
	}
	b := make([]byte, n)
	for i := range b {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		b[i] = 'a' + byte(x%26)
	}
	return string(b)
}

// Only RocksDB's LOCK-file error means "in use by another process"; a
// message that merely contains "lock" (a block checksum mismatch) does not.
func TestOpenErrorLockClassification(t *testing.T) {
	for msg, want := range map[string]bool{
		"IO error: While lock file: /data/LOCK: Resource temporarily unavailable":                                   true,
		"IO error: lock hold by current process, acquire time 1 acquiring thread 2: /data/LOCK: No locks available": true,
		"Corruption: block checksum mismatch: stored = 1, computed = 2 in /data/000012.sst offset 0 size 10":        false,
		"Corruption: bad block type":       false,
		"Invalid argument: unlocked state": false,
	} {
		if got := isLockHeld(msg); got != want {
			t.Errorf("isLockHeld(%q) = %v, want %v", msg, got, want)
		}
	}
	// The real thing: a second open of the same directory.
	s := openStore(t)
	_, err := Open(testConfig(t, s.Dir()))
	if err == nil || !strings.Contains(err.Error(), "in use by another process") {
		t.Fatalf("second open: %v", err)
	}
}
