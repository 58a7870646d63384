package storage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// A full disk: a commit fails with ErrDiskFull (not a generic error), the
// store reports not ready with that cause, and once space is back a probe
// (what the health check does) makes it ready and writes go through
// again. It needs a small tmpfs, so it runs as root only.
func TestDiskFullAnswersAndRecovers(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs")
	}
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Skipf("mount tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", "-l", mnt).Run() })
	cfg := testConfig(t, filepath.Join(mnt, "data"))
	cfg.SyncWAL = true
	cfg.WriteBufferSize = 1 << 20
	s, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	// Fill the disk with a file we can delete later.
	filler := filepath.Join(mnt, "filler")
	if out, err := exec.Command("dd", "if=/dev/zero", "of="+filler, "bs=1M", "count=64").CombinedOutput(); err == nil {
		t.Fatalf("filler fit: %s", out)
	}
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
	if err := s.CheckWritable(); err != nil {
		t.Fatalf("probe after space is back: %v", err)
	}
	if err := s.Ready(); err != nil {
		t.Fatalf("not ready after space is back: %v", err)
	}
	if _, err := s.Update(ctx, func(tx *Tx) error { return tx.PutPool(samplePool("after")) }); err != nil {
		t.Fatalf("write after space is back: %v", err)
	}
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
