package storage

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const crashWritersEnv = "STORAGE_CRASH_CHILD_WRITERS"

// TestCrashConcurrentChild is the child of TestCrashConcurrentCommits:
// writers goroutines commit one backend each per Update (with SyncWAL,
// so through group commit) forever, printing "ack <writer> <n>" after
// each Update returns. It does nothing in a normal test run.
func TestCrashConcurrentChild(t *testing.T) {
	dir := os.Getenv(crashDirEnv)
	writers, _ := strconv.Atoi(os.Getenv(crashWritersEnv))
	if dir == "" || writers == 0 {
		t.Skip("child process of TestCrashConcurrentCommits")
	}
	start, _ := strconv.Atoi(os.Getenv(crashStartEnv))
	cfg := DefaultConfig()
	cfg.Dir = dir
	cfg.NodeID = "crash-node"
	cfg.WriteBufferSize = 1 << 20
	cfg.SyncWAL = true
	s, err := Open(cfg)
	if err != nil {
		fmt.Println("open error:", err)
		os.Exit(1)
	}
	var mu sync.Mutex // one whole line per ack
	for w := 0; w < writers; w++ {
		go func() {
			for n := start; ; n++ {
				id := fmt.Sprintf("g%02d-%06d", w, n)
				b := sampleBackend(id, fmt.Sprintf("pool-%d", n%5))
				if _, err := s.Update(context.Background(), func(tx *Tx) error { return tx.PutBackend(b) }); err != nil {
					fmt.Println("update error:", err)
					os.Exit(1)
				}
				mu.Lock()
				fmt.Printf("ack %d %d\n", w, n)
				mu.Unlock()
			}
		}()
	}
	select {}
}

// TestCrashConcurrentCommits kills a child committing from many
// goroutines with SIGKILL and checks, after each kill, that every
// acknowledged commit is there and the feed has no gap.
func TestCrashConcurrentCommits(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns processes")
	}
	const writers = 16
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 11))
	next := 0 // every writer starts its round at n = next
	for round := 0; round < 3; round++ {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashConcurrentChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), crashDirEnv+"="+dir, crashStartEnv+"="+strconv.Itoa(next),
			crashWritersEnv+"="+strconv.Itoa(writers))
		cmd.Stderr = os.Stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		killAfter := 50 + rng.IntN(400)
		acked := make(map[string]bool)
		maxN := next
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			line := sc.Text()
			if !strings.HasPrefix(line, "ack ") {
				if strings.Contains(line, "error") {
					t.Fatalf("child: %s", line)
				}
				continue
			}
			var w, n int
			if _, err := fmt.Sscanf(line, "ack %d %d", &w, &n); err != nil {
				t.Fatalf("bad line %q", line)
			}
			acked[fmt.Sprintf("g%02d-%06d", w, n)] = true
			maxN = max(maxN, n+1)
			if len(acked) == killAfter {
				if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
					t.Fatal(err)
				}
			}
		}
		_ = cmd.Wait()
		if len(acked) < killAfter {
			t.Fatalf("round %d: child exited after %d acks", round, len(acked))
		}

		s, err := Open(testConfig(t, dir))
		if err != nil {
			t.Fatalf("round %d: reopen after SIGKILL: %v", round, err)
		}
		ctx := context.Background()
		for id := range acked {
			if _, err := s.GetBackend(ctx, id); err != nil {
				t.Fatalf("round %d: acknowledged backend %s: %v", round, id, err)
			}
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
		if uint64(len(events)) < uint64(len(acked)) {
			t.Fatalf("round %d: %d commits on disk, %d acknowledged this round", round, len(events), len(acked))
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		t.Logf("round %d: killed after %d acks, %d commits on disk", round, len(acked), len(events))
		next = maxN // ids of a later round never collide with this one's
	}
}
