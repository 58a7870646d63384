package replication

// The engine tests run over real RocksDB stores (storage.Store in a temp
// dir each) through the adapter RocksStore. Rows are pools: the key is the
// pool name, the value its algorithm field, nil deletes it. The oracle is
// the store's own row-by-row export, versions and tombstones included.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/singularity-ng/singularity-edge/storage"
)

// written is one row version a test wrote, for the LWW oracle.
type written struct {
	Key     string
	Val     string
	Deleted bool
	Version storage.Version
}

type testStore struct {
	*RocksStore
	t   testing.TB
	db  *storage.Store
	cfg storage.Config

	mu        sync.Mutex
	written   []written
	applyGate func() error // when set, ApplyBatch waits on it (a stalled peer)
}

func testStorageConfig(dir, id string) storage.Config {
	cfg := storage.DefaultConfig()
	cfg.Dir = dir
	cfg.NodeID = id
	cfg.SyncWAL = false
	cfg.SkipVerifyOnOpen = true
	cfg.BlockCacheSize = 8 << 20
	cfg.WriteBufferSize = 4 << 20
	return cfg
}

// newTestStore opens a new, empty RocksDB store with node id id (and a
// cluster id of its own, which it gives up when it ingests a snapshot).
func newTestStore(t testing.TB, id string) *testStore {
	t.Helper()
	return openTestStore(t, testStorageConfig(t.TempDir(), id))
}

// newClusterStore opens a new store in cluster clusterID: for tests that
// fill stores directly rather than through a bootstrap.
func newClusterStore(t testing.TB, id, clusterID string) *testStore {
	t.Helper()
	cfg := testStorageConfig(t.TempDir(), id)
	cfg.ClusterID = clusterID
	return openTestStore(t, cfg)
}

func openTestStore(t testing.TB, cfg storage.Config) *testStore {
	t.Helper()
	db, err := storage.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	rs, err := NewRocksStore(db, DefaultRocksConfig())
	if err != nil {
		t.Fatal(err)
	}
	ts := &testStore{RocksStore: rs, t: t, db: db, cfg: cfg}
	t.Cleanup(func() { _ = db.Close() })
	return ts
}

func (s *testStore) ApplyBatch(ctx context.Context, b ApplyBatch) (ApplyResult, error) {
	s.mu.Lock()
	gate := s.applyGate
	s.mu.Unlock()
	if gate != nil {
		if err := gate(); err != nil {
			return ApplyResult{}, err
		}
	}
	return s.RocksStore.ApplyBatch(ctx, b)
}

// write commits one transaction and returns its seq (0 when it changed
// nothing: only deletes of absent rows).
func (s *testStore) write(kv map[string]*string) uint64 {
	s.t.Helper()
	c, err := s.db.Update(context.Background(), func(tx *storage.Tx) error {
		for k, v := range kv {
			if v == nil {
				if err := tx.DeletePool(k); err != nil && !errors.Is(err, storage.ErrNotFound) {
					return err
				}
				continue
			}
			if err := tx.PutPool(&storage.Pool{Name: k, Algorithm: *v}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		s.t.Errorf("write %v: %v", kv, err)
		return 0
	}
	if c.Version.Seq == 0 {
		return 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, v := range kv {
		w := written{Key: k, Deleted: v == nil, Version: c.Version}
		if v != nil {
			w.Val = *v
		}
		s.written = append(s.written, w)
	}
	return c.Version.Seq
}

// dump is every row of every table with its version and tombstone flag,
// from the store's export (its header line, which names the node, left
// out).
func (s *testStore) dump() string {
	var buf bytes.Buffer
	if _, err := s.db.Export(context.Background(), &buf); err != nil {
		return "export failed: " + err.Error()
	}
	_, rows, _ := strings.Cut(buf.String(), "\n")
	return rows
}

func (s *testStore) heldOf(origin string) RangeSet {
	return fromRanges(s.db.Bookkeeping()[origin])
}

func (s *testStore) isReady() bool { return s.db.Ready() == nil }

// reopen closes the store and opens it again from its directory (a
// process restart: the disk survives).
func (s *testStore) reopen() *testStore {
	s.t.Helper()
	if err := s.db.Close(); err != nil {
		s.t.Fatal(err)
	}
	n := openTestStore(s.t, s.cfg)
	s.mu.Lock()
	n.written = s.written
	s.mu.Unlock()
	return n
}

// copyDir copies a stopped store's directory (a volume snapshot: the
// store cannot tell it was copied).
func copyDir(t testing.TB, from string) string {
	t.Helper()
	to := t.TempDir()
	if err := os.CopyFS(to, os.DirFS(from)); err != nil {
		t.Fatal(fmt.Errorf("copy %s: %w", from, err))
	}
	return to
}
