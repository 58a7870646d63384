package storage

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const (
	crashModeEnv     = "STORAGE_CRASH_CHILD_MODE" // "apply" or "ingest"
	crashSnapshotEnv = "STORAGE_CRASH_CHILD_SNAPSHOT"
)

// remoteSet is change set seq of origin "remote" in the apply crash test:
// a new backend, and an update of one of ten shared pools.
func remoteSet(t testing.TB, seq uint64) ChangeSet {
	v := Version{HLC: HLC(1_000_000 + seq), Origin: "remote", Seq: seq}
	b := sampleBackend(fmt.Sprintf("r-%06d", seq), fmt.Sprintf("pool-%d", seq%5))
	p := samplePool(fmt.Sprintf("shared-%d", seq%10))
	p.Algorithm = fmt.Sprint("algo-", seq)
	return ChangeSet{Origin: "remote", Seq: seq, HLC: v.HLC, Changes: []Change{
		{Table: TableBackends, Key: b.ID, Version: v, Value: encodeBackend(b)},
		{Table: TablePools, Key: p.Name, Version: v, Value: encodePool(p)},
	}}
}

// TestCrashClusterChild is the child of TestCrashDuringApplyAndIngest:
// in "apply" mode it applies batches of remote sets forever (printing
// "ack <last seq>"); in "ingest" mode it ingests a snapshot file and
// prints "ingested". It does nothing in a normal test run.
func TestCrashClusterChild(t *testing.T) {
	mode, dir := os.Getenv(crashModeEnv), os.Getenv(crashDirEnv)
	if mode == "" || dir == "" {
		t.Skip("child process of TestCrashDuringApplyAndIngest")
	}
	cfg := DefaultConfig()
	cfg.Dir = dir
	cfg.WriteBufferSize = 1 << 20
	cfg.SkipVerifyOnOpen = true
	s, err := Open(cfg)
	if err != nil {
		fmt.Println("open error:", err)
		os.Exit(1)
	}
	ctx := context.Background()
	switch mode {
	case "apply":
		start, _ := strconv.Atoi(os.Getenv(crashStartEnv))
		rng := rand.New(rand.NewPCG(uint64(start), 1))
		for seq := uint64(start); ; {
			n := 1 + rng.IntN(200)
			batch := make([]ChangeSet, 0, n)
			for i := 0; i < n; i++ {
				batch = append(batch, remoteSet(t, seq+uint64(i)))
			}
			// Out of order inside the batch, as the network delivers.
			rng.Shuffle(len(batch), func(i, j int) { batch[i], batch[j] = batch[j], batch[i] })
			if _, err := s.ApplyBatch(ctx, batch); err != nil {
				fmt.Println("apply error:", err)
				os.Exit(1)
			}
			seq += uint64(n)
			fmt.Printf("ack %d\n", seq-1)
		}
	case "ingest":
		f, err := os.Open(os.Getenv(crashSnapshotEnv))
		if err != nil {
			fmt.Println("open snapshot error:", err)
			os.Exit(1)
		}
		fmt.Println("start")
		if _, err := s.Ingest(ctx, bufio.NewReader(f)); err != nil {
			fmt.Println("ingest error:", err)
			os.Exit(1)
		}
		fmt.Println("ingested")
		select {} // wait for the kill
	}
}

// runCrashChild starts the child in mode and kills it with SIGKILL once
// kill(line) says so; it returns the lines the child printed.
func runCrashChild(t *testing.T, mode, dir string, env []string, kill func(line string) bool) []string {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashClusterChild$", "-test.count=1")
	cmd.Env = append(append(os.Environ(), crashModeEnv+"="+mode, crashDirEnv+"="+dir), env...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var lines []string
	killed := false
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		line := sc.Text()
		if strings.Contains(line, "error") {
			_ = cmd.Process.Kill()
			t.Fatalf("child: %s", line)
		}
		lines = append(lines, line)
		if !killed && kill(line) {
			if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			killed = true
		}
	}
	_ = cmd.Wait()
	if !killed {
		t.Fatalf("%s child exited by itself: %v", mode, lines)
	}
	return lines
}

// checkBookkeepingHoldsRows fails when the bookkeeping of "remote" claims
// a seq whose rows are missing.
func checkBookkeepingHoldsRows(t *testing.T, s *Store, round int) {
	t.Helper()
	ctx := context.Background()
	for _, r := range s.Bookkeeping()["remote"] {
		for seq := r.Lo; seq <= r.Hi; seq++ {
			if _, err := s.GetBackend(ctx, fmt.Sprintf("r-%06d", seq)); err != nil {
				t.Fatalf("round %d: seq %d claimed but its backend is missing: %v", round, seq, err)
			}
		}
	}
	if err := s.Verify(ctx); err != nil {
		t.Fatalf("round %d: %v", round, err)
	}
}

// TestCrashDuringApplyAndIngest kills a child with SIGKILL while it applies
// batches of remote sets and while it ingests a snapshot. After each kill:
// the bookkeeping never claims a seq whose rows are missing, every index
// and change-log key agrees with the rows, and a second catch-up or ingest
// completes.
func TestCrashDuringApplyAndIngest(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns processes")
	}
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 9))

	dir := t.TempDir()
	next := uint64(1)
	for round := 0; round < 3; round++ {
		killAfter := 3 + rng.IntN(20)
		acks := 0
		runCrashChild(t, "apply", dir, []string{crashStartEnv + "=" + strconv.FormatUint(next, 10)}, func(line string) bool {
			var last uint64
			if _, err := fmt.Sscanf(line, "ack %d", &last); err == nil {
				next = last + 1
				acks++
			}
			return acks >= killAfter
		})
		s, err := Open(testConfig(t, dir))
		if err != nil {
			t.Fatalf("round %d: reopen: %v", round, err)
		}
		checkBookkeepingHoldsRows(t, s, round)
		// A process crash loses nothing the kernel had: every acked seq
		// is there (unsynced applies only risk a power cut).
		if w := s.Bookkeeping().Watermark("remote"); w < next-1 {
			t.Fatalf("round %d: watermark %d below acked %d", round, w, next-1)
		}
		// Catch-up after the crash: everything up to a new head applies,
		// whatever was cut.
		head := s.Bookkeeping().Max("remote") + 50
		var sets []ChangeSet
		for seq := uint64(1); seq <= head; seq++ {
			sets = append(sets, remoteSet(t, seq))
		}
		if _, err := s.ApplyBatch(ctx, sets); err != nil {
			t.Fatal(err)
		}
		if got := s.Bookkeeping()["remote"].String(); got != fmt.Sprintf("1-%d", head) {
			t.Fatalf("round %d: after catch-up %s", round, got)
		}
		next = head + 1
		checkBookkeepingHoldsRows(t, s, round)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}

	// Ingest: a snapshot file of a store with some thousands of rows.
	src := openStore(t, func(c *Config) { c.NodeID = "src" })
	for lo := 0; lo < 20000; lo += MaxChangeSetRows {
		mustUpdate(t, src, func(tx *Tx) error {
			for i := lo; i < lo+MaxChangeSetRows; i++ {
				b := sampleBackend(fmt.Sprintf("s-%06d", i), fmt.Sprintf("pool-%d", i%50))
				b.Metadata = map[string]string{"pad": strings.Repeat("y", 100)}
				if err := tx.PutBackend(b); err != nil {
					return err
				}
			}
			return nil
		})
	}
	var buf bytes.Buffer
	if _, err := src.Snapshot(ctx, &buf); err != nil {
		t.Fatal(err)
	}
	snapFile := filepath.Join(t.TempDir(), "snapshot")
	if err := os.WriteFile(snapFile, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	for round := 0; round < 3; round++ {
		idir := t.TempDir()
		delay := time.Duration(rng.IntN(400)) * time.Millisecond
		runCrashChild(t, "ingest", idir, []string{crashSnapshotEnv + "=" + snapFile}, func(line string) bool {
			if line == "start" {
				time.Sleep(delay)
				return true
			}
			return line == "ingested"
		})
		s, err := Open(testConfig(t, idir))
		if err != nil {
			t.Fatalf("ingest round %d: reopen: %v", round, err)
		}
		// Either the ingest finished (catching up) or not (ingesting):
		// never ready, and the bookkeeping claims nothing it lacks.
		readyErr := s.Ready()
		if readyErr == nil {
			t.Fatalf("ingest round %d: ready after a killed ingest", round)
		}
		for _, r := range s.Bookkeeping()["src"] {
			for seq := r.Lo; seq <= r.Hi; seq++ {
				ans, err := src.ChangeSets(ctx, "src", Span(seq, seq), 0)
				if err != nil {
					t.Fatal(err)
				}
				for _, cs := range ans.Sets {
					for _, c := range cs.Changes {
						if _, err := s.GetBackend(ctx, c.Key); err != nil {
							t.Fatalf("ingest round %d (after %s): seq %d claimed, %s missing", round, delay, seq, c.Key)
						}
					}
				}
			}
		}
		// A second ingest completes.
		if _, err := s.Ingest(ctx, bytes.NewReader(buf.Bytes())); err != nil {
			t.Fatalf("ingest round %d: second ingest: %v", round, err)
		}
		if err := s.MarkCaughtUp(); err != nil {
			t.Fatal(err)
		}
		assertSameRows(t, src, s)
		if err := s.Verify(ctx); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		t.Logf("ingest round %d: killed %s after start; at reopen: %v", round, delay, readyErr)
	}
}
