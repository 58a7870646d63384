package storage

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// Many goroutines increment one counter with read-modify-write
// transactions; conflicts are retried, so no increment is lost.
func TestConcurrentIncrementsLoseNothing(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	mustUpdate(t, s, func(tx *Tx) error {
		return tx.PutPool(&Pool{Name: "counter", Metadata: map[string]string{"n": "0"}})
	})
	const workers, perWorker = 8, 25
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < perWorker; i++ {
				_, err := s.Update(ctx, func(tx *Tx) error {
					p, err := tx.Pool("counter")
					if err != nil {
						return err
					}
					n, _ := strconv.Atoi(p.Metadata["n"])
					p.Metadata["n"] = strconv.Itoa(n + 1)
					return tx.PutPool(&p)
				})
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	p, err := s.GetPool(ctx, "counter")
	if err != nil {
		t.Fatal(err)
	}
	if p.Metadata["n"] != strconv.Itoa(workers*perWorker) {
		t.Fatalf("counter = %s, want %d", p.Metadata["n"], workers*perWorker)
	}
	// Every commit got the next index and seq; versions grow with them.
	if s.LastIndex() != 1+workers*perWorker || s.Bookkeeping().Max(s.NodeID()) != 1+workers*perWorker {
		t.Fatalf("last index %d, vv %v", s.LastIndex(), s.Bookkeeping())
	}
	sets, err := changeSetsOf(s, s.NodeID())
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i < len(sets); i++ {
		if sets[i].Seq != sets[i-1].Seq+1 || sets[i].HLC <= sets[i-1].HLC {
			t.Fatalf("change set %d (seq %d, hlc %d) after seq %d hlc %d", i, sets[i].Seq, sets[i].HLC, sets[i-1].Seq, sets[i-1].HLC)
		}
	}
}

// Concurrent writers that move the same backends between pools never
// leave an orphaned or missing index entry (blind writes conflict too).
func TestConcurrentIndexedWritesKeepIndexesConsistent(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	var wg sync.WaitGroup
	for w := 0; w < 6; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < 30; i++ {
				_, err := s.Update(ctx, func(tx *Tx) error {
					for j := 0; j < 3; j++ {
						id := fmt.Sprintf("be-%d", (i+j)%5)
						if err := tx.PutBackend(sampleBackend(id, fmt.Sprintf("pool-%d", (w+i)%4))); err != nil {
							return err
						}
					}
					return nil
				})
				if err != nil {
					t.Error(err)
					return
				}
			}
		}(w)
	}
	wg.Wait()
	checkIndexes(t, s)
}

// A transaction is bounded so that its change set fits one replication
// frame: MaxChangeSetRows rows commit, one more is refused whole.
func TestLargeTransaction(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	put := func(n int) (Commit, error) {
		return s.Update(ctx, func(tx *Tx) error {
			for i := 0; i < n; i++ {
				if err := tx.PutBackend(sampleBackend(fmt.Sprintf("be-%05d", i), fmt.Sprintf("pool-%d", i%10))); err != nil {
					return err
				}
			}
			return nil
		})
	}
	if _, err := put(MaxChangeSetRows + 1); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("over the bound: %v", err)
	}
	if s.LastIndex() != 0 {
		t.Fatal("a refused transaction committed")
	}
	c, err := put(MaxChangeSetRows)
	if err != nil || c.Index != 1 {
		t.Fatalf("commit %+v %v", c, err)
	}
	big := sampleBackend("big", "p")
	big.Metadata = map[string]string{"blob": strings.Repeat("x", MaxChangeSetBytes)}
	if _, err := s.Update(ctx, func(tx *Tx) error { return tx.PutBackend(big) }); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("over the byte bound: %v", err)
	}
}

func TestNoWritesCommitsNothing(t *testing.T) {
	s := openStore(t)
	c, err := s.Update(context.Background(), func(tx *Tx) error {
		_, err := tx.Pool("absent")
		if !errors.Is(err, ErrNotFound) {
			return fmt.Errorf("absent pool: %v", err)
		}
		return nil
	})
	if err != nil || c != (Commit{}) || s.LastIndex() != 0 {
		t.Fatalf("commit %+v, err %v, last index %d", c, err, s.LastIndex())
	}
}

func TestUpdateHonoursContext(t *testing.T) {
	s := openStore(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Update(ctx, func(tx *Tx) error { return tx.PutPool(samplePool("p")) }); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
}

func TestCallerErrorsAreNotRetried(t *testing.T) {
	s := openStore(t)
	calls := 0
	_, err := s.Update(context.Background(), func(tx *Tx) error {
		calls++
		return errors.New("Resource busy: Operation failed. Try again. (the caller's words)")
	})
	if calls != 1 || err == nil {
		t.Fatalf("calls %d, err %v", calls, err)
	}
}

func TestTxUnusableAfterItsFunction(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	var kept *Tx
	mustUpdate(t, s, func(tx *Tx) error { kept = tx; return tx.PutPool(samplePool("p")) })
	if err := kept.PutPool(samplePool("q")); !errors.Is(err, errTxDone) {
		t.Fatalf("put after commit: %v", err)
	}
	if _, err := kept.BackendsByPool("p"); !errors.Is(err, errTxDone) {
		t.Fatalf("index read after commit: %v", err)
	}
	_ = s.View(ctx, func(tx *Tx) error { kept = tx; return nil })
	if _, err := kept.Pool("x"); !errors.Is(err, errTxDone) {
		t.Fatalf("read after view: %v", err)
	}
}
