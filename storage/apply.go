package storage

import (
	"context"
	"fmt"

	"github.com/linxGnu/grocksdb"
	"go.uber.org/zap"
)

// ApplyResult says what Apply did with a change set.
type ApplyResult struct {
	Applied int    // rows written (their version was newer than the stored one)
	Skipped int    // rows left alone (stored version newer or equal)
	Index   uint64 // feed index of the event; 0 when nothing changed
	// Duplicate: the change set was already in the change log, so it had
	// been applied before; nothing was done.
	Duplicate bool
}

// preparedChange is a validated change with the index entries of its row.
type preparedChange struct {
	Change
	idx [][]byte
}

// Apply applies a change set from another node: atomically, idempotently,
// last-write-wins per row by (HLC, origin). A row is written only when the
// change's version is newer than the stored one (tombstones included), so a
// delete beats an older update and loses to a newer one, and an equal
// version is a no-op. Index entries follow the rows. The change set is
// recorded in the change log under its origin and seq (replicas can relay
// it and VersionVector counts it) even when no row won; a feed event is
// emitted only when at least one row changed. Like every event it carries
// only rows whose stored version is the change's, so a feed consumer never
// sees a losing value. The local
// clock witnesses cs.HLC. Invalid input fails with an error and stores
// nothing.
func (s *Store) Apply(ctx context.Context, cs ChangeSet) (ApplyResult, error) {
	if err := validateKey("change set origin", cs.Origin); err != nil {
		return ApplyResult{}, err
	}
	if cs.Seq == 0 {
		return ApplyResult{}, fmt.Errorf("%w: change set seq is 0", ErrInvalid)
	}
	prepared, err := prepareChanges(cs.Changes)
	if err != nil {
		return ApplyResult{}, fmt.Errorf("change set %s/%d: %w", cs.Origin, cs.Seq, err)
	}
	if err := s.enter(); err != nil {
		return ApplyResult{}, err
	}
	defer s.leave()
	s.witness(cs.HLC)
	for _, c := range prepared {
		s.witness(c.Version.HLC)
	}
	var lastErr error
	for attempt := 0; attempt < maxAttempts; attempt++ {
		if err := ctx.Err(); err != nil {
			return ApplyResult{}, err
		}
		res, err := s.tryApply(prepared, &cs)
		if err == nil || !isRetryable(err) {
			return res, err
		}
		s.counts.conflictRetry.Add(1)
		lastErr = err
		backoff(attempt)
	}
	s.counts.conflictFailed.Add(1)
	return ApplyResult{}, fmt.Errorf("%w: gave up after %d attempts: %v", ErrConflict, maxAttempts, lastErr)
}

func (s *Store) witness(h HLC) {
	if h == 0 {
		return
	}
	if _, err := s.clock.Update(h); err != nil {
		s.log.Warn("peer clock ahead of ours", zap.Error(err))
	}
}

// prepareChanges validates changes and decodes their index entries.
func prepareChanges(changes []Change) ([]preparedChange, error) {
	seen := make(map[rowRef]bool, len(changes))
	out := make([]preparedChange, 0, len(changes))
	for i, c := range changes {
		if !isTable(c.Table) {
			return nil, fmt.Errorf("change %d: %w: %q", i, ErrUnknownTable, c.Table)
		}
		if err := validateRowKey(c.Table, c.Key); err != nil {
			return nil, fmt.Errorf("change %d: %w", i, err)
		}
		if c.Version.HLC == 0 || c.Version.Origin == "" {
			return nil, fmt.Errorf("change %d: %w: %s %q has no version", i, ErrInvalid, c.Table, c.Key)
		}
		ref := rowRef{c.Table, c.Key}
		if seen[ref] {
			return nil, fmt.Errorf("change %d: %w: %s %q appears twice", i, ErrInvalid, c.Table, c.Key)
		}
		seen[ref] = true
		p := preparedChange{Change: c}
		if c.Deleted {
			if c.Value != nil {
				return nil, fmt.Errorf("change %d: %w: delete of %s %q carries a value", i, ErrInvalid, c.Table, c.Key)
			}
		} else {
			d, err := decodeRecord(c.Table, c.Value)
			if err != nil {
				return nil, fmt.Errorf("change %d: %w", i, err)
			}
			if err := validateRecord(c.Table, d); err != nil {
				return nil, fmt.Errorf("change %d: %w", i, err)
			}
			if d.key != c.Key {
				return nil, fmt.Errorf("change %d: %w: key %q does not match its record (%q)", i, ErrInvalid, c.Key, d.key)
			}
			p.idx = d.idx
		}
		p.keys = nil
		out = append(out, p)
	}
	return out, nil
}

// tryApply runs one attempt. With record set, the change set is recorded
// under its own origin/seq; without, the winning rows are recorded as a new
// local change set (Import).
func (s *Store) tryApply(changes []preparedChange, record *ChangeSet) (ApplyResult, error) {
	txn := s.db.TransactionBegin(s.wo, s.txo, nil)
	defer txn.Destroy()
	snap := txn.GetSnapshot()
	defer snap.Destroy()
	ro := grocksdb.NewDefaultReadOptions()
	defer ro.Destroy()
	ro.SetSnapshot(snap)
	tx := &Tx{s: s, txn: txn, ro: ro, old: make(map[rowRef]*row)}

	var res ApplyResult
	if record != nil {
		v, err := txn.GetForUpdateWithCF(ro, s.cfs[cfChangelog], changelogKey(record.Origin, record.Seq))
		if err != nil {
			_ = txn.Rollback()
			return res, writeError(err)
		}
		seen := v.Exists()
		v.Free()
		if seen {
			_ = txn.Rollback()
			s.counts.applyDuplicate.Add(1)
			s.counts.applySkipped.Add(uint64(len(changes)))
			return ApplyResult{Skipped: len(changes), Duplicate: true}, nil
		}
	}

	var winners []Change
	for _, c := range changes {
		ref := rowRef{c.Table, c.Key}
		old, err := tx.load(ref)
		if err != nil {
			_ = txn.Rollback()
			return ApplyResult{}, err
		}
		if old != nil && !old.version.Less(c.Version) {
			res.Skipped++
			continue
		}
		oldIdx, err := rowIndexKeys(c.Table, old)
		if err != nil {
			_ = txn.Rollback()
			return ApplyResult{}, corruptError(c.Table, err)
		}
		if err := tx.writeIndex(oldIdx, c.idx); err != nil {
			_ = txn.Rollback()
			return ApplyResult{}, err
		}
		if err := txn.PutCF(s.cfs[c.Table], []byte(c.Key), encodeRow(row{version: c.Version, deleted: c.Deleted, rec: c.Value})); err != nil {
			_ = txn.Rollback()
			return ApplyResult{}, writeError(err)
		}
		winners = append(winners, Change{Table: c.Table, Key: c.Key, Deleted: c.Deleted, Version: c.Version})
		res.Applied++
	}
	if record == nil && len(winners) == 0 {
		_ = txn.Rollback()
		s.counts.applySkipped.Add(uint64(res.Skipped))
		return res, nil
	}

	s.commitMu.Lock()
	defer s.commitMu.Unlock()
	var logged ChangeSet
	if record != nil {
		logged = ChangeSet{Origin: record.Origin, Seq: record.Seq, HLC: record.HLC, Changes: record.Changes}
	} else {
		s.vvMu.Lock()
		seq := s.vv[s.nodeID] + 1
		s.vvMu.Unlock()
		logged = ChangeSet{Origin: s.nodeID, Seq: seq, HLC: s.clock.Now(), Changes: winners}
	}
	if err := txn.PutCF(s.cfs[cfChangelog], changelogKey(logged.Origin, logged.Seq), appendChangeRefs(nil, &logged)); err != nil {
		_ = txn.Rollback()
		return ApplyResult{}, writeError(err)
	}
	index := s.lastIndex.Load()
	if len(winners) > 0 {
		index++
		// The event refers to the whole logged set: the changes that lost
		// are not current, so materialize leaves them out of the event.
		if err := txn.PutCF(s.cfs[cfFeed], feedKey(index), feedRef(logged.Origin, logged.Seq)); err != nil {
			_ = txn.Rollback()
			return ApplyResult{}, writeError(err)
		}
	}
	if err := txn.Commit(); err != nil {
		return ApplyResult{}, writeError(err)
	}
	s.vvMu.Lock()
	if logged.Seq > s.vv[logged.Origin] {
		s.vv[logged.Origin] = logged.Seq
	}
	s.vvMu.Unlock()
	s.counts.applyApplied.Add(uint64(res.Applied))
	s.counts.applySkipped.Add(uint64(res.Skipped))
	if len(winners) > 0 {
		s.committed(index)
		res.Index = index
	}
	return res, nil
}

// VersionVector returns, per origin node, the highest change-set seq this
// store has recorded (its own commits and applied change sets). Change sets
// applied out of order can leave gaps below it; ChangeSetsSince shows them.
func (s *Store) VersionVector() map[string]uint64 {
	s.vvMu.Lock()
	defer s.vvMu.Unlock()
	out := make(map[string]uint64, len(s.vv))
	for k, v := range s.vv {
		out[k] = v
	}
	return out
}

// ChangeSetsSince returns the recorded change sets of origin with seq
// greater than afterSeq, in seq order, at most limit (<= 0: all), read
// from one consistent snapshot. Each set carries the current value of the
// rows it wrote; a change whose row has since been overwritten by a newer
// version is left out (that version is carried by its own change set, and
// last-write-wins never needs the older one), so a set may have fewer
// changes than it was committed with, or none: it is returned all the same,
// so that a peer applying it records its seq.
func (s *Store) ChangeSetsSince(ctx context.Context, origin string, afterSeq uint64, limit int) ([]ChangeSet, error) {
	if err := validateKey("origin", origin); err != nil {
		return nil, err
	}
	if err := s.enter(); err != nil {
		return nil, err
	}
	defer s.leave()
	ro, release := s.snapshotReads()
	defer release()
	it := s.base.NewIteratorCF(ro, s.cfs[cfChangelog])
	defer it.Close()
	prefix := []byte(origin + "\x00")
	var out []ChangeSet
	for it.Seek(changelogKey(origin, afterSeq+1)); it.ValidForPrefix(prefix); it.Next() {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		refs, err := decodeChangeRefs(it.Value().Data())
		if err != nil {
			return nil, corruptError(cfChangelog, err)
		}
		cs, err := s.materialize(ro, refs)
		if err != nil {
			return nil, err
		}
		out = append(out, cs)
		if limit > 0 && len(out) >= limit {
			break
		}
	}
	if err := it.Err(); err != nil {
		return nil, readError(cfChangelog, err)
	}
	return out, nil
}
