package storage

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const (
	crashDirEnv   = "STORAGE_CRASH_CHILD_DIR"
	crashStartEnv = "STORAGE_CRASH_CHILD_START"
)

// TestCrashChild is the child process of TestCrashSafety: it commits
// transactions forever and prints "ack <n> <index>" after each Update
// returns. It does nothing in a normal test run.
func TestCrashChild(t *testing.T) {
	dir := os.Getenv(crashDirEnv)
	if dir == "" {
		t.Skip("child process of TestCrashSafety")
	}
	start, _ := strconv.Atoi(os.Getenv(crashStartEnv))
	cfg := DefaultConfig()
	cfg.Dir = dir
	cfg.NodeID = "crash-node"
	cfg.WriteBufferSize = 1 << 20 // small memtables: flushes happen while we write
	// Every transaction rewrites one of 20 observations, far faster than
	// the write-rate bound allows: the bound is not what this test is about.
	cfg.ObservationMinInterval = -1
	s, err := Open(cfg)
	if err != nil {
		fmt.Println("open error:", err)
		os.Exit(1)
	}
	ctx := context.Background()
	for n := start; ; n++ {
		c, err := s.Update(ctx, func(tx *Tx) error { return crashTxn(tx, n) })
		if err != nil {
			fmt.Println("update error:", err)
			os.Exit(1)
		}
		fmt.Printf("ack %d %d\n", n, c.Index)
	}
}

// crashTxn is transaction n of the crash test: a new backend, an indexed
// field change of an older one, a pool, an observation flip, and a
// temporary row deleted by the next transaction.
func crashTxn(tx *Tx, n int) error {
	b := sampleBackend(fmt.Sprintf("b-%06d", n), fmt.Sprintf("pool-%d", n%5))
	b.Metadata = map[string]string{"pad": strings.Repeat("x", 200)}
	if err := tx.PutBackend(b); err != nil {
		return err
	}
	if n > 0 {
		old, err := tx.Backend(fmt.Sprintf("b-%06d", n-1))
		if err == nil {
			old.PoolName = fmt.Sprintf("moved-%d", n%3)
			if err := tx.PutBackend(&old); err != nil {
				return err
			}
		}
		if err := tx.DeletePool(fmt.Sprintf("tmp-%06d", n-1)); err != nil && !errors.Is(err, ErrNotFound) {
			return err
		}
	}
	if err := tx.PutPool(&Pool{Name: fmt.Sprintf("tmp-%06d", n), SSLDomain: fmt.Sprintf("t%d.example.com", n%4)}); err != nil {
		return err
	}
	return tx.PutObservation(&Observation{BackendID: fmt.Sprintf("b-%06d", n%20), Healthy: n%2 == 0})
}

// TestCrashSafety kills a writing child process with SIGKILL at random
// points and checks, after each kill, that every acknowledged commit is
// there and every index agrees with its rows.
func TestCrashSafety(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns processes")
	}
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	next := 0
	var maxIndex uint64
	for round := 0; round < 5; round++ {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), crashDirEnv+"="+dir, crashStartEnv+"="+strconv.Itoa(next))
		cmd.Stderr = os.Stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		killAfter := 20 + rng.IntN(300)
		acked := 0
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			line := sc.Text()
			if !strings.HasPrefix(line, "ack ") {
				if strings.Contains(line, "error") {
					t.Fatalf("child: %s", line)
				}
				continue
			}
			var n int
			var index uint64
			if _, err := fmt.Sscanf(line, "ack %d %d", &n, &index); err != nil {
				t.Fatalf("bad line %q", line)
			}
			next, maxIndex = n+1, max(maxIndex, index)
			if acked++; acked == killAfter {
				if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
					t.Fatal(err)
				}
			}
		}
		_ = cmd.Wait()
		if acked < killAfter {
			t.Fatalf("round %d: child exited after %d acks", round, acked)
		}

		cfg := testConfig(t, dir)
		s, err := Open(cfg)
		if err != nil {
			t.Fatalf("round %d: reopen after SIGKILL: %v", round, err)
		}
		ctx := context.Background()
		for n := 0; n < next; n++ {
			if _, err := s.GetBackend(ctx, fmt.Sprintf("b-%06d", n)); err != nil {
				t.Fatalf("round %d: acknowledged backend %d: %v", round, n, err)
			}
		}
		// Transaction next-1 was acknowledged: its temporary pool exists
		// unless a later (unacknowledged but committed) one deleted it; the
		// one before it was deleted by an acknowledged transaction.
		if next >= 2 {
			if _, err := s.GetPool(ctx, fmt.Sprintf("tmp-%06d", next-2)); !errors.Is(err, ErrNotFound) {
				t.Fatalf("round %d: tmp pool %d survived its acknowledged delete: %v", round, next-2, err)
			}
		}
		if s.LastIndex() < maxIndex {
			t.Fatalf("round %d: last index %d below acknowledged %d", round, s.LastIndex(), maxIndex)
		}
		if err := s.Verify(ctx); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		events, err := s.readFeed(0, int(s.LastIndex())+10)
		if err != nil || uint64(len(events)) != s.LastIndex() {
			t.Fatalf("round %d: feed has %d events, last index %d, %v", round, len(events), s.LastIndex(), err)
		}
		for i, ev := range events {
			if ev.Index != uint64(i+1) || ev.Set.Seq != uint64(i+1) {
				t.Fatalf("round %d: event %d has index %d seq %d", round, i, ev.Index, ev.Set.Seq)
			}
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		t.Logf("round %d: killed after %d acks, %d commits on disk", round, acked, len(events))
	}
}
