package replication

// memStore is a test implementation of Store that models the store of
// issue 8 (gap-aware bookkeeping, a change log holding only current row
// versions, batch apply, snapshot and ingest) in memory. It exists only
// until that store lands: the engine tests that use it check the
// protocol's logic, not RocksDB. After the merge they are to be re-pointed
// at the storage adapter (see the report and docs/ARCHITECTURE.md).

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"time"
)

type memRow struct {
	Val     string
	Deleted bool
	HLC     uint64
	Origin  string
	Seq     uint64
}

func (r memRow) beats(o memRow) bool {
	if r.HLC != o.HLC {
		return r.HLC > o.HLC
	}
	return r.Origin > o.Origin
}

type memChange struct {
	Key     string
	Val     string
	Deleted bool
}

type memStore struct {
	id, cluster string

	mu        sync.Mutex
	rows      map[string]memRow
	clog      map[string]map[uint64][]string
	held      map[string]RangeSet
	seq, hlc  uint64
	needsBoot bool
	ready     bool
	subs      []chan EncodedSet
	observed  uint64
	written   []snapRow         // every local write ever, for oracles
	floor     map[string]uint64 // purged up to, per origin
	purges    []map[string]map[string]uint64
	// applyGate, when set, is called before every ApplyBatch (tests
	// block or fail applies with it).
	applyGate func() error
	clock     func() time.Time
}

func newMemStore(id string, empty bool) *memStore {
	return &memStore{id: id, cluster: "c1", rows: map[string]memRow{}, clog: map[string]map[uint64][]string{},
		held: map[string]RangeSet{}, needsBoot: empty, clock: time.Now}
}

func (s *memStore) NodeID() string    { return s.id }
func (s *memStore) ClusterID() string { return s.cluster }

// write commits a local transaction: key=value, or key=nil to delete.
func (s *memStore) write(kv map[string]*string) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seq++
	h := uint64(s.clock().UnixMilli()) << 16
	if h <= s.hlc {
		h = s.hlc + 1
	}
	for k := range kv {
		if r, ok := s.rows[k]; ok && r.HLC >= h {
			h = r.HLC + 1 // a local write beats the version it replaces
		}
	}
	s.hlc = h
	keys := make([]string, 0, len(kv))
	for k := range kv {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var changes []memChange
	for _, k := range keys {
		v := kv[k]
		r := memRow{HLC: h, Origin: s.id, Seq: s.seq}
		c := memChange{Key: k}
		if v == nil {
			r.Deleted, c.Deleted = true, true
		} else {
			r.Val, c.Val = *v, *v
		}
		s.putLocked(k, r)
		s.written = append(s.written, snapRow{k, r})
		changes = append(changes, c)
	}
	s.held[s.id] = s.held[s.id].Union(RangeSet{{s.seq, s.seq}})
	data, _ := json.Marshal(changes)
	set := EncodedSet{Origin: s.id, Seq: s.seq, HLC: h, Data: data}
	for _, ch := range s.subs {
		select {
		case ch <- set:
		default: // a slow subscriber misses it; catch-up covers
		}
	}
	return s.seq
}

func (s *memStore) putLocked(k string, r memRow) {
	if old, ok := s.rows[k]; ok {
		keys := s.clog[old.Origin][old.Seq]
		for i, kk := range keys {
			if kk == k {
				keys = append(keys[:i:i], keys[i+1:]...)
				break
			}
		}
		if len(keys) == 0 {
			delete(s.clog[old.Origin], old.Seq) // cleared
		} else {
			s.clog[old.Origin][old.Seq] = keys
		}
	}
	s.rows[k] = r
	if s.clog[r.Origin] == nil {
		s.clog[r.Origin] = map[uint64][]string{}
	}
	s.clog[r.Origin][r.Seq] = append(s.clog[r.Origin][r.Seq], k)
}

func (s *memStore) Books(context.Context) (Books, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := Books{}
	for o, h := range s.held {
		out[o] = BookOf(h)
	}
	return out, nil
}

func (s *memStore) ChangeSets(_ context.Context, origin string, want RangeSet, maxBytes int) (ChangeSetBatch, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.ready {
		return ChangeSetBatch{}, ErrNotReady
	}
	if f := s.floor[origin]; f > 0 && len(want.Intersect(RangeSet{{1, f}})) > 0 {
		return ChangeSetBatch{}, ErrTooStale
	}
	avail := want.Intersect(s.held[origin])
	var b ChangeSetBatch
	size := 0
	for _, r := range avail {
		for seq := r.Lo; seq <= r.Hi; seq++ {
			if size >= maxBytes {
				return b, nil
			}
			if keys := s.clog[origin][seq]; len(keys) > 0 {
				var changes []memChange
				var h uint64
				for _, k := range keys {
					row := s.rows[k]
					h = row.HLC
					changes = append(changes, memChange{Key: k, Val: row.Val, Deleted: row.Deleted})
				}
				data, _ := json.Marshal(changes)
				b.Sets = append(b.Sets, EncodedSet{Origin: origin, Seq: seq, HLC: h, Data: data})
				size += len(data)
			}
			b.Covered = b.Covered.Union(RangeSet{{seq, seq}})
		}
	}
	return b, nil
}

func (s *memStore) ApplyBatch(_ context.Context, b ApplyBatch) (ApplyResult, error) {
	s.mu.Lock()
	gate := s.applyGate
	s.mu.Unlock()
	if gate != nil {
		if err := gate(); err != nil {
			return ApplyResult{}, err
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.needsBoot {
		return ApplyResult{}, ErrNotReady
	}
	var res ApplyResult
	for _, set := range b.Sets {
		var changes []memChange
		if err := json.Unmarshal(set.Data, &changes); err != nil {
			return ApplyResult{}, err
		}
		won := false
		for _, c := range changes {
			r := memRow{Val: c.Val, Deleted: c.Deleted, HLC: set.HLC, Origin: set.Origin, Seq: set.Seq}
			if old, ok := s.rows[c.Key]; ok && !r.beats(old) {
				continue
			}
			s.putLocked(c.Key, r)
			won = true
		}
		if set.HLC > s.hlc {
			s.hlc = set.HLC
		}
		if won {
			res.Applied++
		}
	}
	for o, rs := range b.Covered {
		s.held[o] = s.held[o].Union(rs)
	}
	return res, nil
}

type memFeed struct {
	ch   chan EncodedSet
	done chan struct{}
}

func (f *memFeed) C() <-chan EncodedSet  { return f.ch }
func (f *memFeed) Done() <-chan struct{} { return f.done }
func (f *memFeed) Err() error            { return context.Canceled }

func (s *memStore) LocalCommits(ctx context.Context, after uint64) (Feed, error) {
	f := &memFeed{ch: make(chan EncodedSet, 100_000), done: make(chan struct{})}
	s.mu.Lock()
	s.subs = append(s.subs, f.ch)
	s.mu.Unlock()
	go func() { <-ctx.Done(); close(f.done) }()
	return f, nil
}

func (s *memStore) NeedsBootstrap(context.Context) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.needsBoot, nil
}

func (s *memStore) MarkReady(context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.needsBoot, s.ready = false, true
	return nil
}

func (s *memStore) isReady() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ready
}

type memSnapshot struct {
	h      SnapshotHeader
	chunks [][]byte
	n      int
}

func (m *memSnapshot) Header() SnapshotHeader { return m.h }
func (m *memSnapshot) Next(context.Context) ([]byte, error) {
	if len(m.chunks) == 0 {
		return nil, io.EOF
	}
	c := m.chunks[0]
	m.chunks = m.chunks[1:]
	return c, nil
}
func (m *memSnapshot) Trailer() []byte { return []byte(fmt.Sprint(m.n)) }
func (m *memSnapshot) Close() error    { return nil }

type snapRow struct {
	Key string
	memRow
}

func (s *memStore) Snapshot(context.Context) (SnapshotSource, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	snap := &memSnapshot{h: SnapshotHeader{Books: Books{}}}
	for o, h := range s.held {
		snap.h.Books[o] = BookOf(h)
	}
	keys := make([]string, 0, len(s.rows))
	for k := range s.rows {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for i := 0; i < len(keys); i += 100 {
		var rows []snapRow
		for _, k := range keys[i:min(i+100, len(keys))] {
			rows = append(rows, snapRow{k, s.rows[k]})
		}
		b, _ := json.Marshal(rows)
		snap.chunks = append(snap.chunks, b)
	}
	snap.n = len(keys)
	return snap, nil
}

type memSink struct {
	s    *memStore
	h    SnapshotHeader
	rows []snapRow
}

func (k *memSink) Write(_ context.Context, chunk []byte) error {
	var rows []snapRow
	if err := json.Unmarshal(chunk, &rows); err != nil {
		return err
	}
	k.rows = append(k.rows, rows...)
	return nil
}

func (k *memSink) Finish(_ context.Context, trailer []byte) error {
	if string(trailer) != fmt.Sprint(len(k.rows)) {
		return fmt.Errorf("snapshot has %d rows, trailer says %s", len(k.rows), trailer)
	}
	s := k.s
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range k.rows {
		s.putLocked(r.Key, r.memRow)
		if r.HLC > s.hlc {
			s.hlc = r.HLC
		}
	}
	for o, b := range k.h.Books {
		if o != s.id {
			s.held[o] = b.Held()
		}
	}
	s.needsBoot = false
	return nil
}

func (k *memSink) Abort() error { return nil }

func (s *memStore) Ingest(_ context.Context, h SnapshotHeader) (SnapshotSink, error) {
	return &memSink{s: s, h: h}, nil
}

func (s *memStore) Purge(_ context.Context, wm map[string]map[string]uint64) (PurgeResult, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.purges = append(s.purges, wm)
	return PurgeResult{}, nil
}

func (s *memStore) Rebuild(context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rows, s.clog, s.held = map[string]memRow{}, map[string]map[uint64][]string{}, map[string]RangeSet{}
	s.id += "-rebuilt"
	s.seq = 0
	s.needsBoot, s.ready = true, false
	return nil
}

func (s *memStore) ObserveOwnOrigin(_ context.Context, max uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if max > s.observed {
		s.observed = max
	}
	return nil
}

// dump is the oracle: every row with its version, tombstones included.
func (s *memStore) dump() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	keys := make([]string, 0, len(s.rows))
	for k := range s.rows {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		r := s.rows[k]
		fmt.Fprintf(&b, "%s=%q del=%v v=(%d,%s,%d)\n", k, r.Val, r.Deleted, r.HLC, r.Origin, r.Seq)
	}
	return b.String()
}

func (s *memStore) heldOf(origin string) RangeSet {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.held[origin]
}
