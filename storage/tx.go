package storage

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/linxGnu/grocksdb"
)

// Commit describes a committed transaction.
type Commit struct {
	Index   uint64  // node-local commit index: the change-feed position
	Version Version // version of every row the transaction wrote
}

type rowRef struct{ table, key string }

// pending is a buffered write of a transaction.
type pending struct {
	deleted bool
	rec     []byte   // encoded record; nil for a delete
	idx     [][]byte // index entries of the new row
	value   any      // typed copy for read-your-writes (Pool, Backend, ...)
	expires int64    // Unix ms (TTL tables); observation rows get theirs at commit
	ver     *Version // the caller's copy, given the version at commit
	old     *row     // the stored row it replaces (nil: none), as put read it
}

// Tx is a transaction (Update) or a consistent read-only snapshot (View).
// Writes are buffered and become visible to the transaction's own reads;
// they reach RocksDB at commit, where versions are assigned in commit
// order. A Tx must not be used after its function returns.
type Tx struct {
	s        *Store
	writable bool // Update (under the commit mutex); false: View
	ro       *grocksdb.ReadOptions
	now      time.Time
	old      map[rowRef]*row // rows as read from the snapshot (nil: absent)
	writes   map[rowRef]*pending
	order    []rowRef      // the keys of writes, in first-write order
	index    uint64        // last commit index when the transaction began
	wb       *batchBuilder // the commit's writes, built under the commit mutex
	done     bool          // fn returned: the snapshot is gone
}

// errTxDone: a Tx was used after its function returned.
var errTxDone = errors.New("storage: transaction used after its function returned")

// LastIndex returns the commit index of the latest commit when the
// transaction's snapshot was taken: every commit up to it is visible to the
// transaction (later ones may be too). Subscribe from it after loading state
// in a View to miss nothing.
func (t *Tx) LastIndex() uint64 { return t.index }

// Update runs fn in a transaction and commits its writes atomically: rows,
// index entries, the change-log entry and the feed entry in one RocksDB
// commit.
//
// Transactions are serialized: fn runs under the store's commit mutex
// and reads the latest committed state, and nothing else commits until
// its writes are in RocksDB. Every transaction is therefore serializable
// against every other commit (local, applied from peers, purges) without
// conflict detection or retries: what fn read, index scans included, is
// what its writes are based on, and fn runs exactly once. Keep fn short
// (it holds off every other writer) and free of calls back into the
// store's writing methods (Update, ApplyBatch, ...), which would wait for
// the mutex fn's own Update holds. An error from fn aborts the
// transaction and is returned unchanged. A transaction without writes
// commits nothing and returns a zero Commit. With Config.SyncWAL, Update
// returns only once a WAL sync covers the commit; the sync runs after the
// mutex is released and is shared with concurrent commits
// (groupcommit.go), and the commit's feed index is published after it.
func (s *Store) Update(ctx context.Context, fn func(tx *Tx) error) (Commit, error) {
	if err := s.enter(); err != nil {
		return Commit{}, err
	}
	defer s.leave()
	if err := ctx.Err(); err != nil {
		return Commit{}, err
	}
	c, ticket, err := s.updateLocked(ctx, fn)
	if err != nil || ticket == 0 {
		return c, err
	}
	// Acknowledge only once the WAL sync covers the commit (groupcommit.go).
	if err := s.awaitSync(ticket); err != nil {
		return Commit{}, err
	}
	return c, nil
}

// updateLocked runs fn and writes its commit under the commit mutex. The
// ticket, when not 0, is the WAL sync the commit waits for.
func (s *Store) updateLocked(ctx context.Context, fn func(tx *Tx) error) (Commit, uint64, error) {
	s.commitMu.Lock()
	defer s.commitMu.Unlock()
	if err := ctx.Err(); err != nil {
		return Commit{}, 0, err
	}
	if err := s.refuseAfterSyncFailure(); err != nil {
		return Commit{}, 0, err
	}
	// Under the mutex nothing commits, so the latest state is a
	// consistent one: point reads need no snapshot, and an iterator pins
	// its own implicit one.
	tx := &Tx{s: s, writable: true, ro: s.roLatest, now: s.cfg.Now().UTC().Round(0), index: s.lastIndex.Load(),
		old: make(map[rowRef]*row), writes: make(map[rowRef]*pending)}
	err := fn(tx)
	tx.done = true
	if err != nil {
		return Commit{}, 0, err
	}
	if len(tx.writes) == 0 {
		return Commit{}, 0, nil
	}
	return tx.commitLocked()
}

// View runs fn on a consistent snapshot. Writes fail with ErrReadOnly.
func (s *Store) View(ctx context.Context, fn func(tx *Tx) error) error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	if err := ctx.Err(); err != nil {
		return err
	}
	// lastIndex is published after the RocksDB commit (and its WAL sync),
	// so every commit up to it is in the snapshot taken next.
	index := s.lastIndex.Load()
	ro, release := s.snapshotReads()
	defer release()
	tx := &Tx{s: s, ro: ro, now: s.cfg.Now().UTC().Round(0), old: make(map[rowRef]*row), index: index}
	defer func() { tx.done = true }()
	return fn(tx)
}

// snapshotReads returns read options pinned to a new snapshot of the
// database, and the function that releases both.
func (s *Store) snapshotReads() (*grocksdb.ReadOptions, func()) {
	snap := s.base.NewSnapshot()
	ro := grocksdb.NewDefaultReadOptions()
	ro.SetSnapshot(snap)
	return ro, func() {
		ro.Destroy()
		s.base.ReleaseSnapshot(snap)
	}
}

// commitLocked writes the buffered rows with the next version and commits
// them; the caller (Update) holds the commit mutex. The version's HLC is above the version of every row
// the transaction replaces (the causal-overwrite rule), even when that row
// came from a clock far ahead: a local edit made after seeing a row always
// wins over it.
func (t *Tx) commitLocked() (Commit, uint64, error) {
	s := t.s
	refs := t.sortedWrites()
	if len(refs) > MaxChangeSetRows {
		return Commit{}, 0, fmt.Errorf("%w: %d rows (at most %d per transaction)", ErrTooLarge, len(refs), MaxChangeSetRows)
	}
	size := 0
	evSize := setSizeBase + len(s.NodeID())
	ps := make([]*pending, len(refs))
	for i, ref := range refs {
		p := t.writes[ref]
		ps[i] = p
		size += len(ref.key) + len(p.rec)
		evSize += changeSize(ref.table, ref.key, p.rec, s.NodeID())
	}
	if size > MaxChangeSetBytes {
		return Commit{}, 0, fmt.Errorf("%w: %d bytes (at most %d per transaction)", ErrTooLarge, size, MaxChangeSetBytes)
	}
	// The commit's feed event, built from the rows as written: subscribers
	// take it from the feed cache instead of reading it back (feed.go). A
	// set too large for the cache is read from disk.
	var changes []Change
	if evSize <= feedCacheMaxBytes {
		changes = make([]Change, 0, len(refs))
	}

	seq := s.localSeq + 1
	index := s.nextIndexLocked()
	reading := s.clock.Now()
	h := reading
	for _, p := range ps {
		if p.old != nil && p.old.version.HLC >= h {
			h = p.old.version.HLC + 1
		}
	}
	v := Version{HLC: h, Origin: s.NodeID(), Seq: seq}
	nowMs := t.now.UnixMilli()
	wb := &s.batch
	wb.reset()
	wb.sortFamily(s.cfID[cfIndex])
	t.wb = wb
	defer func() { t.wb = nil }()
	ids := s.cfID

	for i, ref := range refs {
		p := ps[i]
		def := lookupTable(ref.table)
		old := p.old
		nr := row{version: v, deleted: p.deleted, rec: p.rec, expires: p.expires}
		if def.class == ClassObservation {
			nr.expires = nowMs + s.cfg.ObservationTTL.Milliseconds()
		}
		oldIdx, err := rowEntries(def, ref.key, old)
		if err != nil {
			return Commit{}, 0, corruptError(ref.table, err)
		}
		var recIdx [][]byte
		if !p.deleted {
			recIdx = p.idx
		}
		newIdx := entriesOf(def, ref.key, &nr, recIdx)
		t.writeIndex(oldIdx, newIdx)
		wb.key = append(wb.key[:0], ref.key...)
		wb.val = appendRow(wb.val[:0], nr)
		wb.put(ids[ref.table], wb.key, wb.val)
		putCovering(func(k, v []byte) { wb.put(ids[cfIndex], k, v) }, newIdx, wb.val)
		if old != nil {
			wb.key = appendClogKey(wb.key[:0], old.version.Origin, old.version.Seq, def.id, ref.key)
			wb.del(ids[cfChangelog], wb.key)
		}
		wb.key = appendClogKey(wb.key[:0], v.Origin, v.Seq, def.id, ref.key)
		wb.put(ids[cfChangelog], wb.key, nil)
		if changes != nil {
			changes = append(changes, rowChange(def, ref.key, &nr, s.keys))
		}
	}
	// The local seq has one key per commit, replacing the previous one in
	// the same batch (Open takes the highest key, so a leftover of an
	// older agent, which deleted it after the commit, is harmless).
	wb.put(ids[cfMeta], localSeqKey(seq), binary.BigEndian.AppendUint64(nil, uint64(reading)))
	if seq > 1 {
		wb.del(ids[cfMeta], localSeqKey(seq-1))
	}
	wb.put(ids[cfFeed], feedKey(index), feedRef(v.Origin, v.Seq))
	// With SyncWAL the batch is written without sync and the commit waits
	// for a coalesced WAL sync after the mutex is released (groupcommit.go).
	if err := wb.write(s, s.woAsync); err != nil {
		return Commit{}, 0, t.s.noteWriteError(writeError(err))
	}
	s.noteWriteOK()
	s.localSeq = seq
	s.bkMu.Lock()
	s.bk[v.Origin] = s.bk[v.Origin].Add(seq)
	s.bkMu.Unlock()
	s.counts.commits.Add(1)
	if changes != nil {
		// Before the index is published: a subscriber woken by it finds
		// the event. It is delivered only once published, after the sync.
		if !slices.IsSortedFunc(changes, clogOrder) {
			slices.SortFunc(changes, clogOrder)
		}
		s.feedCache.putEvent(Event{Index: index, Set: ChangeSet{Origin: v.Origin, Seq: v.Seq, HLC: v.HLC, Changes: changes}})
	}
	ticket := s.writtenLocked(index, s.cfg.SyncWAL)
	for _, p := range ps {
		if p.ver != nil {
			*p.ver = v
		}
	}
	return Commit{Index: index, Version: v}, ticket, nil
}

// writeIndex replaces a row's index entries oldIdx by newIdx; an entry
// in both is left alone (its key, and its empty value, did not change).
func (t *Tx) writeIndex(oldIdx, newIdx [][]byte) {
	writeIndexDiff(t.wb, t.s.cfID[cfIndex], oldIdx, newIdx)
}

// writeIndexDiff adds to wb the index changes from oldIdx to newIdx:
// deletes for entries that went, puts for entries that came, except
// covering entries, which putCovering writes with their envelope.
func writeIndexDiff(wb *batchBuilder, cf uint32, oldIdx, newIdx [][]byte) {
	for _, k := range oldIdx {
		if !containsKey(newIdx, k) {
			wb.del(cf, k)
		}
	}
	for _, k := range newIdx {
		if !coveringIndex(k) && !containsKey(oldIdx, k) {
			wb.put(cf, k, nil)
		}
	}
}

func writeError(err error) error {
	if strings.Contains(err.Error(), "Corruption") {
		return corruptError("", err)
	}
	if isDiskFull(err.Error()) {
		return fmt.Errorf("%w: commit: %v", ErrDiskFull, err)
	}
	return fmt.Errorf("storage: commit: %w", err)
}

// sortedWrites returns the written rows by table (schema order) and key,
// so that each family's entries reach the memtable in key order.
func (t *Tx) sortedWrites() []rowRef {
	refs := slices.Clone(t.order)
	slices.SortFunc(refs, func(a, b rowRef) int {
		if a.table != b.table {
			return cmp.Compare(tableRank(a.table), tableRank(b.table))
		}
		return strings.Compare(a.key, b.key)
	})
	return refs
}

// load returns the stored row as the transaction sees it (nil when absent).
func (t *Tx) load(ref rowRef) (*row, error) {
	if r, ok := t.old[ref]; ok {
		return r, nil
	}
	if t.done {
		return nil, errTxDone
	}
	v, err := t.s.base.GetCF(t.ro, t.s.cfs[ref.table], []byte(ref.key))
	if err != nil {
		return nil, readError(ref.table, err)
	}
	defer v.Free()
	var r *row
	if v.Exists() {
		decoded, err := decodeRow(v.Data())
		if err != nil {
			return nil, corruptError(ref.table, fmt.Errorf("row %q: %w", ref.key, err))
		}
		r = &decoded
	}
	t.old[ref] = r
	return r, nil
}

// prefetch loads, in one MultiGet, the stored rows of the keys of table
// that the transaction has not read yet, so that writing many rows costs
// one crossing into RocksDB instead of one Get per row. The rows land where
// load would put them; a key read here is never read again.
func (t *Tx) prefetch(table string, keys []string) error {
	if t.done {
		return errTxDone
	}
	want := make([]string, 0, len(keys))
	for _, k := range keys {
		ref := rowRef{table, k}
		if _, ok := t.old[ref]; ok {
			continue
		}
		if _, ok := t.writes[ref]; ok {
			continue
		}
		t.old[ref] = nil // absent unless multiGet finds it
		want = append(want, k)
	}
	err := multiGet(t.s.base, t.ro, t.s.cfs[table], want, func(i int, v []byte) error {
		r, err := decodeRow(v)
		if err != nil {
			return corruptError(table, fmt.Errorf("row %q: %w", want[i], err))
		}
		t.old[rowRef{table, want[i]}] = &r
		return nil
	})
	if err != nil {
		for _, k := range want {
			delete(t.old, rowRef{table, k}) // read again by load, not trusted as absent
		}
		if errors.Is(err, ErrCorrupt) {
			return err
		}
		return readError(table, err)
	}
	return nil
}

// current returns the transaction's view of a row: its own buffered write
// or the stored row. live is false for an absent row or a tombstone.
func (t *Tx) current(ref rowRef) (p *pending, r *row, live bool, err error) {
	if p, ok := t.writes[ref]; ok {
		return p, nil, !p.deleted, nil
	}
	r, err = t.load(ref)
	if err != nil {
		return nil, nil, false, err
	}
	return nil, r, r != nil && !r.deleted && !r.expiredAt(t.now.UnixMilli()), nil
}

func (t *Tx) put(ref rowRef, p *pending) error {
	if !t.writable {
		return ErrReadOnly
	}
	if t.done {
		return errTxDone
	}
	// Read the stored row: its index entries are removed at commit.
	old, err := t.load(ref)
	if err != nil {
		return err
	}
	p.old = old
	if _, ok := t.writes[ref]; !ok {
		t.order = append(t.order, ref)
	}
	t.writes[ref] = p
	return nil
}

func (t *Tx) remove(ref rowRef) error {
	if !t.writable {
		return ErrReadOnly
	}
	_, _, live, err := t.current(ref)
	if err != nil {
		return err
	}
	if !live {
		return fmt.Errorf("%s %q: %w", singular(ref.table), ref.key, ErrNotFound)
	}
	return t.put(ref, &pending{deleted: true})
}

// insertedAt returns when the live row at ref was first inserted, or now.
func (t *Tx) insertedAt(ref rowRef) (time.Time, error) {
	p, r, live, err := t.current(ref)
	if err != nil || !live {
		return t.now, err
	}
	var ins time.Time
	if p != nil {
		switch v := p.value.(type) {
		case *Certificate:
			ins = v.InsertedAt
		case *Pool:
			ins = v.InsertedAt
		case *Backend:
			ins = v.InsertedAt
		case *ACMERecord:
			ins = v.InsertedAt
		case nil: // written without a typed copy (PutBackend)
			d, err := decodeRecord(ref.table, p.rec)
			if err != nil {
				return t.now, corruptError(ref.table, err)
			}
			ins = d.insertedAt
		}
	} else {
		d, err := decodeRecord(ref.table, r.rec)
		if err != nil {
			return t.now, corruptError(ref.table, err)
		}
		ins = d.insertedAt
	}
	if ins.IsZero() {
		return t.now, nil
	}
	return ins, nil
}

// notFound wraps ErrNotFound with the row it is about.
func notFound(table, key string) error {
	return fmt.Errorf("%s %q: %w", singular(table), key, ErrNotFound)
}
