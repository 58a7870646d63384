package storage

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"time"

	"github.com/linxGnu/grocksdb"
)

// Commit describes a committed transaction.
type Commit struct {
	Index   uint64  // node-local commit index: the change-feed position
	Version Version // version of every row the transaction wrote
}

// maxAttempts bounds how often Update and Apply run a transaction that
// keeps conflicting with concurrent writers before ErrConflict.
const maxAttempts = 32

type rowRef struct{ table, key string }

// pending is a buffered write of a transaction.
type pending struct {
	deleted bool
	rec     []byte   // encoded record; nil for a delete
	idx     [][]byte // index entries of the new row
	value   any      // typed copy for read-your-writes (Pool, Backend, ...)
	expires int64    // Unix ms (TTL tables); observation rows get theirs at commit
	setVer  func(Version)
}

// Tx is a transaction (Update) or a consistent read-only snapshot (View).
// Writes are buffered and become visible to the transaction's own reads;
// they reach RocksDB at commit, where versions are assigned in commit
// order. A Tx must not be used after its function returns.
type Tx struct {
	s      *Store
	txn    *grocksdb.Transaction // nil: read-only
	ro     *grocksdb.ReadOptions
	now    time.Time
	old    map[rowRef]*row // rows as read from the snapshot (nil: absent)
	writes map[rowRef]*pending
	order  []rowRef
	index  uint64               // last commit index when the transaction began
	wb     *grocksdb.WriteBatch // the commit's writes, built under the commit mutex
	done   bool                 // fn returned: the RocksDB transaction and snapshot are gone
	// guards records the partition guards (index.go) this transaction has
	// read with GetForUpdate or written, so each is touched once.
	guards map[string]guardUse
}

type guardUse uint8

const (
	guardRead guardUse = 1 << iota
	guardWritten
)

// errTxDone: a Tx was used after its function returned.
var errTxDone = errors.New("storage: transaction used after its function returned")

// LastIndex returns the commit index of the latest commit when the
// transaction's snapshot was taken: every commit up to it is visible to the
// transaction (later ones may be too). Subscribe from it after loading state
// in a View to miss nothing.
func (t *Tx) LastIndex() uint64 { return t.index }

// Update runs fn in a transaction and commits its writes atomically: rows,
// index entries, the change-log entry and the feed entry in one RocksDB
// commit. Every row fn reads or writes, and every index partition it scans
// (BackendsByPool, PoolsBySSLDomain, PoolsByCertificate,
// CertificatesByDomain), is checked for conflicting commits by other
// transactions; on a conflict fn runs again (so it must have no
// side effects outside tx), at most a bounded number of times, then Update
// fails with ErrConflict. An error from fn aborts the transaction and is
// returned unchanged. A transaction without writes commits nothing and
// returns a zero Commit.
func (s *Store) Update(ctx context.Context, fn func(tx *Tx) error) (Commit, error) {
	if err := s.enter(); err != nil {
		return Commit{}, err
	}
	defer s.leave()
	var lastErr error
	for attempt := 0; attempt < maxAttempts; attempt++ {
		if err := ctx.Err(); err != nil {
			return Commit{}, err
		}
		c, err := s.tryUpdate(fn)
		if err == nil || !isRetryable(err) {
			return c, err
		}
		s.counts.conflictRetry.Add(1)
		lastErr = err
		backoff(attempt)
	}
	s.counts.conflictFailed.Add(1)
	return Commit{}, fmt.Errorf("%w: gave up after %d attempts: %v", ErrConflict, maxAttempts, lastErr)
}

func (s *Store) tryUpdate(fn func(tx *Tx) error) (Commit, error) {
	index := s.lastIndex.Load()
	// The transaction itself writes nothing (commit), so it needs no
	// synced WAL write of its own.
	txn := s.db.TransactionBegin(s.woAsync, s.txo, nil)
	defer txn.Destroy()
	snap := txn.GetSnapshot()
	defer snap.Destroy()
	ro := grocksdb.NewDefaultReadOptions()
	defer ro.Destroy()
	ro.SetSnapshot(snap)

	tx := &Tx{s: s, txn: txn, ro: ro, now: s.cfg.Now().UTC().Round(0), index: index,
		old: make(map[rowRef]*row), writes: make(map[rowRef]*pending)}
	err := fn(tx)
	tx.done = true
	if err != nil {
		_ = txn.Rollback()
		return Commit{}, err
	}
	if len(tx.writes) == 0 {
		_ = txn.Rollback()
		return Commit{}, nil
	}
	return tx.commit()
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
	// lastIndex is published after the RocksDB commit, so every commit up
	// to it is in the snapshot taken next.
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

// conflictError is a RocksDB optimistic-transaction conflict: Busy (a
// tracked key was written after the snapshot) or TryAgain (the memtable
// history no longer covers the snapshot). Only errors from RocksDB are
// classified, so an error returned by the caller's fn is never retried
// because of its text.
type conflictError struct{ err error }

func (e *conflictError) Error() string { return e.err.Error() }
func (e *conflictError) Unwrap() error { return e.err }

// rocksConflict wraps err in a conflictError when RocksDB reports one.
func rocksConflict(err error) (error, bool) {
	msg := err.Error()
	if strings.HasPrefix(msg, "Resource busy") || strings.HasPrefix(msg, "Operation failed. Try again") {
		return &conflictError{err: err}, true
	}
	return err, false
}

func isRetryable(err error) bool {
	var c *conflictError
	return errors.As(err, &c)
}

func backoff(attempt int) {
	d := time.Duration(attempt+1) * 200 * time.Microsecond
	time.Sleep(d/2 + rand.N(d))
}

// commit writes the buffered rows, assigns the version under the commit
// mutex and commits. The version's HLC is above the version of every row
// the transaction replaces (the causal-overwrite rule), even when that row
// came from a clock far ahead: a local edit made after seeing a row always
// wins over it.
func (t *Tx) commit() (Commit, error) {
	s := t.s
	refs := t.sortedWrites()
	if len(refs) > MaxChangeSetRows {
		return Commit{}, fmt.Errorf("%w: %d rows (at most %d per transaction)", ErrTooLarge, len(refs), MaxChangeSetRows)
	}
	size := 0
	for _, ref := range refs {
		size += len(ref.key) + len(t.writes[ref].rec)
	}
	if size > MaxChangeSetBytes {
		return Commit{}, fmt.Errorf("%w: %d bytes (at most %d per transaction)", ErrTooLarge, size, MaxChangeSetBytes)
	}

	s.commitMu.Lock()
	defer s.commitMu.Unlock()
	seq := s.localSeq + 1
	index := s.lastIndex.Load() + 1
	reading := s.clock.Now()
	h := reading
	for _, ref := range refs {
		if old := t.old[ref]; old != nil && old.version.HLC >= h {
			h = old.version.HLC + 1
		}
	}
	v := Version{HLC: h, Origin: s.NodeID(), Seq: seq}
	nowMs := t.now.UnixMilli()
	// The writes go into a plain batch, not into the RocksDB transaction:
	// the transaction only validates what was read (every written row was
	// read first, and index scans read their partition's guard), and the
	// batch is written under the commit mutex right after the validation,
	// so no commit comes between them. Untracked writes skip the
	// transaction's per-key locking and indexing, most of a commit's cost.
	t.wb = grocksdb.NewWriteBatch()
	defer func() { t.wb.Destroy(); t.wb = nil }()

	// RocksDB copies keys and values into the transaction's batch, so one
	// key and one value buffer serve every row.
	var keyBuf, valBuf []byte
	for _, ref := range refs {
		p := t.writes[ref]
		def := lookupTable(ref.table)
		old := t.old[ref]
		nr := row{version: v, deleted: p.deleted, rec: p.rec, expires: p.expires}
		if def.class == ClassObservation {
			nr.expires = nowMs + s.cfg.ObservationTTL.Milliseconds()
		}
		oldIdx, err := rowEntries(def, ref.key, old)
		if err != nil {
			return Commit{}, corruptError(ref.table, err)
		}
		var recIdx [][]byte
		if !p.deleted {
			recIdx = p.idx
		}
		newIdx := entriesOf(def, ref.key, &nr, recIdx)
		if err := t.writeIndex(oldIdx, newIdx); err != nil {
			return Commit{}, err
		}
		keyBuf = append(keyBuf[:0], ref.key...)
		valBuf = appendRow(valBuf[:0], nr)
		t.wb.PutCF(s.cfs[ref.table], keyBuf, valBuf)
		putCovering(func(k, v []byte) { t.wb.PutCF(s.cfs[cfIndex], k, v) }, newIdx, valBuf)
		if old != nil {
			t.wb.DeleteCF(s.cfs[cfChangelog], clogKeyOf(def, ref.key, old.version))
		}
		t.wb.PutCF(s.cfs[cfChangelog], clogKeyOf(def, ref.key, v), nil)
	}
	// The local seq has one key per commit (never written twice, so no
	// two transactions conflict on it); the previous one is deleted after
	// the commit.
	t.wb.PutCF(s.cfs[cfMeta], localSeqKey(seq), binary.BigEndian.AppendUint64(nil, uint64(reading)))
	t.wb.PutCF(s.cfs[cfFeed], feedKey(index), feedRef(v.Origin, v.Seq))
	// Validation: fails (retried as a conflict) when a key read with
	// GetForUpdate changed since the snapshot. It writes nothing.
	if err := t.txn.Commit(); err != nil {
		return Commit{}, t.s.noteWriteError(writeError(err))
	}
	if err := s.base.Write(s.wo, t.wb); err != nil {
		return Commit{}, t.s.noteWriteError(writeError(err))
	}
	s.noteWriteOK()
	s.localSeq = seq
	s.bkMu.Lock()
	s.bk[v.Origin] = s.bk[v.Origin].Add(seq)
	s.bkMu.Unlock()
	if seq > 1 {
		// Not synced, not checked: a leftover older key is harmless
		// (Open takes the highest) and the next commit retries nothing.
		_ = s.base.DeleteCF(s.woAsync, s.cfs[cfMeta], localSeqKey(seq-1))
	}
	s.counts.commits.Add(1)
	s.committed(index)
	for _, ref := range refs {
		if p := t.writes[ref]; p.setVer != nil {
			p.setVer(v)
		}
	}
	return Commit{Index: index, Version: v}, nil
}

// writeIndex replaces a row's index entries oldIdx by newIdx and writes
// the guard of every partition that gains or loses an entry, so that a
// concurrent transaction that scanned one of them conflicts.
func (t *Tx) writeIndex(oldIdx, newIdx [][]byte) error {
	remove, add := diffKeys(oldIdx, newIdx)
	for _, k := range remove {
		t.wb.DeleteCF(t.s.cfs[cfIndex], k)
	}
	for _, k := range add {
		if !coveringIndex(k) { // written once, with its envelope, by putCovering
			t.wb.PutCF(t.s.cfs[cfIndex], k, nil)
		}
	}
	for _, changed := range [][][]byte{remove, add} {
		for _, k := range changed {
			g := guardOfEntry(k)
			if g == nil || t.guards[string(g)]&guardWritten != 0 {
				continue
			}
			t.wb.PutCF(t.s.cfs[cfIndex], g, nil)
			t.markGuard(g, guardWritten)
		}
	}
	return nil
}

func (t *Tx) markGuard(g []byte, use guardUse) {
	if t.guards == nil {
		t.guards = make(map[string]guardUse)
	}
	t.guards[string(g)] |= use
}

// readGuard reads the guard of the partition prefix scans with
// GetForUpdate (Update only), so that a commit changing the partition
// after this transaction's snapshot makes it conflict.
func (t *Tx) readGuard(prefix []byte) error {
	if t.txn == nil {
		return nil
	}
	g := guardOfPrefix(prefix)
	if g == nil || t.guards[string(g)]&guardRead != 0 {
		return nil
	}
	v, err := t.txn.GetForUpdateWithCF(t.ro, t.s.cfs[cfIndex], g)
	if err != nil {
		if c, ok := rocksConflict(err); ok {
			return c
		}
		return readError(cfIndex, err)
	}
	v.Free()
	t.markGuard(g, guardRead)
	return nil
}

func writeError(err error) error {
	if c, ok := rocksConflict(err); ok {
		return c // retried by the caller
	}
	if strings.Contains(err.Error(), "Corruption") {
		return corruptError("", err)
	}
	if isDiskFull(err.Error()) {
		return fmt.Errorf("%w: commit: %v", ErrDiskFull, err)
	}
	return fmt.Errorf("storage: commit: %w", err)
}

func (t *Tx) sortedWrites() []rowRef {
	refs := make([]rowRef, 0, len(t.writes))
	for ref := range t.writes {
		refs = append(refs, ref)
	}
	sort.Slice(refs, func(i, j int) bool {
		if refs[i].table != refs[j].table {
			return tableRank(refs[i].table) < tableRank(refs[j].table)
		}
		return refs[i].key < refs[j].key
	})
	return refs
}

// load returns the stored row as of the snapshot (nil when absent). In an
// Update it reads with GetForUpdate so that a concurrent commit to the row
// makes this transaction conflict.
func (t *Tx) load(ref rowRef) (*row, error) {
	if r, ok := t.old[ref]; ok {
		return r, nil
	}
	if t.done {
		return nil, errTxDone
	}
	var (
		v   *grocksdb.Slice
		err error
	)
	cf := t.s.cfs[ref.table]
	if t.txn != nil {
		v, err = t.txn.GetForUpdateWithCF(t.ro, cf, []byte(ref.key))
	} else {
		v, err = t.s.base.GetCF(t.ro, cf, []byte(ref.key))
	}
	if err != nil {
		if c, ok := rocksConflict(err); ok {
			return nil, c
		}
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
	if t.txn == nil {
		return ErrReadOnly
	}
	if t.done {
		return errTxDone
	}
	// Read (and track) the stored row: its index entries are removed at
	// commit, and a concurrent writer of the same row must conflict.
	if _, err := t.load(ref); err != nil {
		return err
	}
	if _, ok := t.writes[ref]; !ok {
		t.order = append(t.order, ref)
	}
	t.writes[ref] = p
	return nil
}

func (t *Tx) remove(ref rowRef) error {
	if t.txn == nil {
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
