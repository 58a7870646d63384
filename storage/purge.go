package storage

import (
	"context"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/linxGnu/grocksdb"
)

// purgeSlice bounds the rows one purge or expiry batch handles, and so the
// time it holds the commit lock.
const purgeSlice = 512

// PurgeResult counts what PurgeTombstones or ExpireRows removed.
type PurgeResult struct {
	Removed int `json:"removed"`
	// Kept counts candidates left in place: a member's watermark does not
	// cover them yet, or the row changed since it was picked.
	Kept int `json:"kept"`
}

// PurgeTombstones removes tombstones by this rule:
//
//	a tombstone goes when it is older than grace AND every active member's
//	contiguous watermark for its origin covers its seq (re-checked in the
//	purge batch).
//
// members maps each active member's node id to its contiguous watermark
// per origin (Bookkeeping.Watermark, as the member last reported it); the
// caller (cluster membership) leaves out members evicted for longer than
// the eviction time, which must then rebuild from a snapshot. This store's
// own bookkeeping counts as one more member. A member that has not
// reported an origin blocks every tombstone of it.
//
// A purged tombstone raises the purge floor: ApplyBatch then refuses a
// change older than the floor for a key that is absent here, which is
// what a late, older write to a purged key looks like. Before the first
// removal the purge horizon (horizon.go) rises to the lowest watermark per
// origin over the members and this node, in meta under the commit lock:
// every state of the store that lacks a purged tombstone (a checkpoint, a
// backup, a snapshot) records the horizon too. Work is done in slices of a
// few hundred rows, each its own batch under the commit lock.
//
// A node that is a cluster of one passes no members: then its own
// watermarks alone decide (Prune does it with PruneOptions.Standalone).
func (s *Store) PurgeTombstones(ctx context.Context, members map[string]map[string]uint64, grace time.Duration) (PurgeResult, error) {
	var res PurgeResult
	if err := s.enter(); err != nil {
		return res, err
	}
	defer s.leave()
	cutoff := NewHLC(s.cfg.Now().Add(-grace).UnixMilli(), 0)
	s.bkMu.RLock()
	low := make(map[string]uint64, len(s.bk))
	for o, rs := range s.bk {
		low[o] = rs.Watermark()
		for _, wm := range members {
			low[o] = min(low[o], wm[o])
		}
	}
	s.bkMu.RUnlock()
	if err := s.raiseHorizon(low); err != nil {
		return res, err
	}
	covered := func(v Version) bool {
		s.bkMu.RLock()
		ok := s.bk[v.Origin].Watermark() >= v.Seq
		s.bkMu.RUnlock()
		for _, wm := range members {
			if wm[v.Origin] < v.Seq {
				return false
			}
		}
		return ok
	}
	start := []byte{idxTombstone}
	end := binary.BigEndian.AppendUint64([]byte{idxTombstone}, uint64(cutoff))
	for {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		cands, next, err := s.timedCandidates(start, end)
		if err != nil {
			return res, err
		}
		if len(cands) == 0 {
			return res, nil
		}
		removed, kept, err := s.removeRows(cands, func(def *tableDef, r *row, at uint64) bool {
			return r.deleted && def.class == ClassReplicated && uint64(r.version.HLC) == at && r.version.HLC < cutoff && covered(r.version)
		}, true)
		res.Removed += removed
		res.Kept += kept
		s.counts.tombstonesPurged.Add(uint64(removed))
		if err != nil || next == nil {
			return res, err
		}
		start = next
	}
}

// ExpireRows removes, locally and without replicating anything, the rows
// whose expiry has passed (observations, TTL tables; tombstones of them
// included). Every node does it by itself, so N nodes never write N
// tombstones, and a stale copy arriving later is refused as expired.
func (s *Store) ExpireRows(ctx context.Context) (PurgeResult, error) {
	var res PurgeResult
	if err := s.enter(); err != nil {
		return res, err
	}
	defer s.leave()
	nowMs := s.cfg.Now().UnixMilli()
	start := []byte{idxExpiry}
	end := binary.BigEndian.AppendUint64([]byte{idxExpiry}, uint64(nowMs)+1)
	for {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		cands, next, err := s.timedCandidates(start, end)
		if err != nil {
			return res, err
		}
		if len(cands) == 0 {
			return res, nil
		}
		removed, kept, err := s.removeRows(cands, func(_ *tableDef, r *row, at uint64) bool {
			return r.expires > 0 && uint64(r.expires) == at && r.expires <= nowMs
		}, false)
		res.Removed += removed
		res.Kept += kept
		s.counts.rowsExpired.Add(uint64(removed))
		if err != nil || next == nil {
			return res, err
		}
		start = next
	}
}

type timedCandidate struct {
	entry []byte
	at    uint64
	def   *tableDef
	key   string
}

// timedCandidates reads up to purgeSlice tombstone or expiry entries in
// [start, end) and returns where the next slice starts (nil: done).
func (s *Store) timedCandidates(start, end []byte) ([]timedCandidate, []byte, error) {
	ro := grocksdb.NewDefaultReadOptions()
	defer ro.Destroy()
	ro.SetIterateUpperBound(end)
	it := s.base.NewIteratorCF(ro, s.cfs[cfIndex])
	defer it.Close()
	var out []timedCandidate
	for it.Seek(start); it.Valid(); it.Next() {
		k := append([]byte(nil), it.Key().Data()...)
		if len(out) == purgeSlice {
			return out, k, nil
		}
		at, def, key, ok := parseTimedEntry(k)
		if !ok {
			return nil, nil, corruptError(cfIndex, fmt.Errorf("malformed entry %q", k))
		}
		out = append(out, timedCandidate{entry: k, at: at, def: def, key: key})
	}
	if err := it.Err(); err != nil {
		return nil, nil, readError(cfIndex, err)
	}
	return out, nil, nil
}

// removeRows deletes, in one batch under the commit lock, the candidates
// whose stored row still passes keep (re-read inside the lock, so a row
// written since it was picked stays): the row, its change-log key and its
// index entries. With floor, the purge floor rises to the newest version
// removed.
func (s *Store) removeRows(cands []timedCandidate, ok func(def *tableDef, r *row, at uint64) bool, floor bool) (int, int, error) {
	s.commitMu.Lock()
	defer s.commitMu.Unlock()
	ro := grocksdb.NewDefaultReadOptions()
	defer ro.Destroy()
	batch := grocksdb.NewWriteBatch()
	defer batch.Destroy()
	removed, kept := 0, 0
	newFloor := s.purgeFloor
	for _, c := range cands {
		v, err := s.base.GetCF(ro, s.cfs[c.def.name], []byte(c.key))
		if err != nil {
			return 0, 0, readError(c.def.name, err)
		}
		var r *row
		if v.Exists() {
			d, derr := decodeRow(v.Data())
			if derr != nil {
				v.Free()
				return 0, 0, corruptError(c.def.name, fmt.Errorf("row %q: %w", c.key, derr))
			}
			r = &d
		}
		v.Free()
		if r == nil {
			// A stale entry (the row went another way): drop it.
			batch.DeleteCF(s.cfs[cfIndex], c.entry)
			continue
		}
		if !ok(c.def, r, c.at) {
			kept++
			continue
		}
		entries, err := rowEntries(c.def, c.key, r)
		if err != nil {
			return 0, 0, corruptError(c.def.name, err)
		}
		for _, k := range entries {
			batch.DeleteCF(s.cfs[cfIndex], k)
		}
		batch.DeleteCF(s.cfs[c.def.name], []byte(c.key))
		batch.DeleteCF(s.cfs[cfChangelog], clogKeyOf(c.def, c.key, r.version))
		if floor && r.version.HLC > newFloor {
			newFloor = r.version.HLC
		}
		removed++
	}
	if batch.Count() == 0 {
		return 0, kept, nil
	}
	if newFloor > s.purgeFloor {
		batch.PutCF(s.cfs[cfMeta], []byte(metaPurgeFloor), binary.BigEndian.AppendUint64(nil, uint64(newFloor)))
	}
	if err := s.write(s.wo, batch); err != nil {
		return 0, 0, s.noteWriteError(writeError(err))
	}
	s.noteWriteOK()
	s.purgeFloor = newFloor
	return removed, kept, nil
}

// PurgeFloor returns the newest version of a purged tombstone: older
// changes for keys absent here are refused.
func (s *Store) PurgeFloor() HLC {
	s.commitMu.Lock()
	defer s.commitMu.Unlock()
	return s.purgeFloor
}
