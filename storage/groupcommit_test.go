package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"
)

// syncGate replaces a store's WAL sync with one that reports each call
// on entered and waits for release (or fails with fail) before syncing.
type syncGate struct {
	entered chan struct{}
	release chan struct{}
	fail    error
}

func gateSyncs(t *testing.T, s *Store, fail error) *syncGate {
	t.Helper()
	g := &syncGate{entered: make(chan struct{}, 100), release: make(chan struct{}, 100), fail: fail}
	s.gc.mu.Lock()
	real := s.gc.flush
	s.gc.flush = func() error {
		g.entered <- struct{}{}
		<-g.release
		if g.fail != nil {
			return g.fail
		}
		return real()
	}
	s.gc.mu.Unlock()
	// A failing test must not leave a commit blocked in its sync: the
	// store's Close (an earlier cleanup, so run after this) waits for it.
	t.Cleanup(func() { close(g.release) })
	return g
}

func recv[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(20 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

func syncedStore(t *testing.T) *Store {
	return openStore(t, func(c *Config) { c.SyncWAL = true })
}

// waitWritten waits until n local commits have been written.
func waitWritten(t *testing.T, s *Store, n uint64) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		s.gc.mu.Lock()
		w := s.gc.written
		s.gc.mu.Unlock()
		if w >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d commits written", w, n)
		}
		time.Sleep(time.Millisecond)
	}
}

func putBackendUpdate(s *Store, id string) (Commit, error) {
	return s.Update(context.Background(), func(tx *Tx) error { return tx.PutBackend(sampleBackend(id, "pool")) })
}

type commitResult struct {
	c   Commit
	err error
}

// TestGroupCommitPublishesAfterSync: a local commit is neither
// acknowledged nor published (lastIndex, feed) before its WAL sync, and a
// remote apply written after it is not published past it.
func TestGroupCommitPublishesAfterSync(t *testing.T) {
	s := syncedStore(t)
	gate := gateSyncs(t, s, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sub := s.Subscribe(ctx, 0)

	done := make(chan commitResult, 1)
	go func() {
		c, err := putBackendUpdate(s, "local-1")
		done <- commitResult{c, err}
	}()
	recv(t, gate.entered, "the WAL sync")
	// The commit is in RocksDB (the next transaction sees it) but not synced.
	if err := s.View(ctx, func(tx *Tx) error { _, err := tx.Backend("local-1"); return err }); err != nil {
		t.Fatalf("written commit not visible: %v", err)
	}
	if got := s.LastIndex(); got != 0 {
		t.Fatalf("index %d published before its WAL sync", got)
	}
	select {
	case r := <-done:
		t.Fatalf("Update acknowledged before its WAL sync: %+v", r)
	default:
	}
	// A remote apply written after the unsynced commit takes the next
	// index and waits for the sync to be published.
	res, err := applySet(s, remoteSet(t, 1))
	if err != nil {
		t.Fatal(err)
	}
	if res.Index != 2 {
		t.Fatalf("apply took index %d, want 2", res.Index)
	}
	if got := s.LastIndex(); got != 0 {
		t.Fatalf("apply published index %d past an unsynced local commit", got)
	}

	gate.release <- struct{}{}
	r := recv(t, done, "the Update")
	if r.err != nil || r.c.Index != 1 {
		t.Fatalf("Update: %+v", r)
	}
	if got := s.LastIndex(); got != 2 {
		t.Fatalf("last index %d after the sync, want 2", got)
	}
	for want := uint64(1); want <= 2; want++ {
		if ev := recv(t, sub.Events(), "a feed event"); ev.Index != want {
			t.Fatalf("event index %d, want %d", ev.Index, want)
		}
	}
	s.gc.mu.Lock()
	syncs := s.gc.syncs
	s.gc.mu.Unlock()
	if syncs != 1 {
		t.Fatalf("%d syncs, want 1", syncs)
	}
}

// TestGroupCommitCoalesces: commits written while a sync runs are all
// covered by the next single sync.
func TestGroupCommitCoalesces(t *testing.T) {
	s := syncedStore(t)
	gate := gateSyncs(t, s, nil)
	const n = 32
	results := make(chan commitResult, n+1)
	commit := func(i int) {
		c, err := putBackendUpdate(s, fmt.Sprintf("b-%03d", i))
		results <- commitResult{c, err}
	}
	go commit(0)
	recv(t, gate.entered, "the first sync")
	for i := 1; i <= n; i++ {
		go commit(i)
	}
	waitWritten(t, s, n+1)
	gate.release <- struct{}{} // the first sync
	recv(t, gate.entered, "the second sync")
	gate.release <- struct{}{}
	seen := make(map[uint64]bool)
	for i := 0; i <= n; i++ {
		r := recv(t, results, "an Update")
		if r.err != nil {
			t.Fatal(r.err)
		}
		if seen[r.c.Index] {
			t.Fatalf("index %d given twice", r.c.Index)
		}
		seen[r.c.Index] = true
	}
	s.gc.mu.Lock()
	syncs := s.gc.syncs
	s.gc.mu.Unlock()
	if syncs != 2 {
		t.Fatalf("%d WAL syncs for %d commits, want 2", syncs, n+1)
	}
	if got := s.LastIndex(); got != n+1 {
		t.Fatalf("last index %d, want %d", got, n+1)
	}
}

// TestGroupCommitConcurrent: many goroutines commit with real syncs; every
// commit is acknowledged with its own index, all are published, and
// there are never more syncs than commits.
func TestGroupCommitConcurrent(t *testing.T) {
	s := syncedStore(t)
	const writers, each = 16, 10
	var wg sync.WaitGroup
	errs := make(chan error, writers*each)
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				if _, err := putBackendUpdate(s, fmt.Sprintf("w%d-%d", w, i)); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if got := s.LastIndex(); got != writers*each {
		t.Fatalf("last index %d, want %d", got, writers*each)
	}
	s.gc.mu.Lock()
	syncs := s.gc.syncs
	s.gc.mu.Unlock()
	if syncs == 0 || syncs > writers*each {
		t.Fatalf("%d syncs for %d commits", syncs, writers*each)
	}
	t.Logf("%d commits, %d WAL syncs", writers*each, syncs)
}

// TestGroupCommitSyncFailure: a failed WAL sync fails its waiters, and
// the store then refuses writes and reports not ready.
func TestGroupCommitSyncFailure(t *testing.T) {
	s := syncedStore(t)
	ioErr := errors.New("IO error: fsync: input/output error")
	gate := gateSyncs(t, s, ioErr)
	done := make(chan commitResult, 1)
	go func() {
		c, err := putBackendUpdate(s, "lost")
		done <- commitResult{c, err}
	}()
	recv(t, gate.entered, "the WAL sync")
	gate.release <- struct{}{}
	r := recv(t, done, "the Update")
	if !errors.Is(r.err, errSyncFailed) {
		t.Fatalf("Update after a failed sync: %+v", r)
	}
	if got := s.LastIndex(); got != 0 {
		t.Fatalf("index %d published after a failed sync", got)
	}
	if err := s.Ready(); !errors.Is(err, ErrNotReady) {
		t.Fatalf("Ready after a failed sync: %v", err)
	}
	if _, err := putBackendUpdate(s, "next"); !errors.Is(err, ErrCommitFailed) {
		t.Fatalf("Update after a failed sync: %v", err)
	}
	if _, err := applySet(s, remoteSet(t, 1)); !errors.Is(err, ErrCommitFailed) {
		t.Fatalf("apply after a failed sync: %v", err)
	}
	// The refused writes never reached a sync.
	select {
	case <-gate.entered:
		t.Fatal("a refused write synced the WAL")
	default:
	}
}

// TestGroupCommitWithoutSync: with SyncWAL off a commit is published at
// once and never syncs the WAL.
func TestGroupCommitWithoutSync(t *testing.T) {
	s := openStore(t) // testConfig: SyncWAL false
	for i := 1; i <= 3; i++ {
		c, err := putBackendUpdate(s, fmt.Sprint("b-", i))
		if err != nil || c.Index != uint64(i) || s.LastIndex() != uint64(i) {
			t.Fatalf("commit %d: %+v, last index %d, %v", i, c, s.LastIndex(), err)
		}
	}
	s.gc.mu.Lock()
	defer s.gc.mu.Unlock()
	if s.gc.syncs != 0 || s.gc.written != 0 {
		t.Fatalf("SyncWAL off: %d syncs, %d tickets", s.gc.syncs, s.gc.written)
	}
}

// TestGroupCommitUnsyncedNeverLeaves: a local change set whose WAL sync
// failed is in RocksDB (the memtable), yet neither ChangeSets nor a
// Snapshot hands it to a peer, nor does the feed deliver it.
func TestGroupCommitUnsyncedNeverLeaves(t *testing.T) {
	s := syncedStore(t)
	gate := gateSyncs(t, s, errors.New("IO error: fsync failed"))
	done := make(chan commitResult, 1)
	go func() {
		c, err := putBackendUpdate(s, "unsynced")
		done <- commitResult{c, err}
	}()
	recv(t, gate.entered, "the WAL sync")
	gate.release <- struct{}{}
	if r := recv(t, done, "the Update"); r.err == nil {
		t.Fatal("Update acknowledged after a failed sync")
	}
	ctx := context.Background()
	if ans, err := s.ChangeSets(ctx, s.NodeID(), Span(1, 1), 1<<20); !errors.Is(err, errSyncFailed) {
		t.Fatalf("ChangeSets of an unsynced local seq: %+v, %v", ans, err)
	}
	if _, err := s.Snapshot(ctx, io.Discard); !errors.Is(err, errSyncFailed) {
		t.Fatalf("Snapshot holding an unsynced local seq: %v", err)
	}
	if events, err := s.readFeed(0, 10); len(events) != 0 {
		t.Fatalf("feed delivered %d events of an unsynced commit (%v)", len(events), err)
	}
}
