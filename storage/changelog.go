package storage

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"fmt"
	"strings"

	"github.com/linxGnu/grocksdb"
)

// The change log holds one key per current row version, and nothing else:
//
//	origin 0x00 be64(seq) table-id key   (empty value)
//
// A commit (local or applied) that writes a row deletes the key of the
// version it replaces and puts the key of the new one, in the same batch.
// So the log is complete by construction: every change set of origin O
// that this store has seen (its bookkeeping says so) is exactly the rows
// found under O's prefix at that seq, and a seen seq with no key left is
// *cleared*: all of its rows were overwritten by newer versions, which are
// under their own seqs. Its size is bounded by the rows and tombstones,
// not by history, and it needs no pruning. The key sorts a change set's
// rows together and sets in seq order, so serving a range of seqs is one
// iterator pass.

// clogSetPrefix is the prefix of every key of change set origin/seq.
func clogSetPrefix(origin string, seq uint64) []byte {
	k := make([]byte, 0, len(origin)+9)
	k = append(k, origin...)
	k = append(k, 0)
	return binary.BigEndian.AppendUint64(k, seq)
}

// clogKey is the change-log key of row key of the table with id tableID,
// written by change set origin/seq.
func clogKey(origin string, seq uint64, tableID byte, key string) []byte {
	return appendClogKey(make([]byte, 0, len(origin)+10+len(key)), origin, seq, tableID, key)
}

// appendClogKey appends clogKey(origin, seq, tableID, key) to dst.
func appendClogKey(dst []byte, origin string, seq uint64, tableID byte, key string) []byte {
	dst = append(dst, origin...)
	dst = append(dst, 0)
	dst = binary.BigEndian.AppendUint64(dst, seq)
	dst = append(dst, tableID)
	return append(dst, key...)
}

// clogKeyOf is the change-log key of a stored row version.
func clogKeyOf(def *tableDef, key string, v Version) []byte {
	return clogKey(v.Origin, v.Seq, def.id, key)
}

// parseClogKey splits a change-log key.
func parseClogKey(k []byte) (origin string, seq uint64, def *tableDef, key string, ok bool) {
	i := bytes.IndexByte(k, 0)
	if i <= 0 || len(k) < i+10 {
		return "", 0, nil, "", false
	}
	def = tableByID(k[i+9])
	if def == nil {
		return "", 0, nil, "", false
	}
	return string(k[:i]), binary.BigEndian.Uint64(k[i+1 : i+9]), def, string(k[i+10:]), true
}

// readChangeSets reads, from ro's snapshot, the change sets of origin with
// seqs in want (the caller has checked that the store has seen all of
// them), in seq order, stopping after the set that brings the encoded
// size past maxBytes (<= 0: no limit). It returns the sets that have rows
// (cleared seqs have none) and the highest seq it went through.
func (s *Store) readChangeSets(ro *grocksdb.ReadOptions, origin string, want Ranges, maxBytes int) ([]ChangeSet, uint64, error) {
	it := s.base.NewIteratorCF(ro, s.cfs[cfChangelog])
	defer it.Close()
	var (
		out   []ChangeSet
		size  int
		upTo  uint64
		cur   *ChangeSet
		batch []rowRefAt
	)
	flush := func() error {
		if cur == nil {
			return nil
		}
		if err := s.fillChanges(ro, cur, batch); err != nil {
			return err
		}
		if len(cur.Changes) > 0 {
			out = append(out, *cur)
			size += cur.size()
		}
		upTo = cur.Seq
		cur, batch = nil, batch[:0]
		return nil
	}
	prefix := []byte(origin + "\x00")
	for _, r := range want {
		it.Seek(clogSetPrefix(origin, r.Lo))
		for ; it.ValidForPrefix(prefix); it.Next() {
			o, seq, def, key, ok := parseClogKey(it.Key().Data())
			if !ok || o != origin {
				return nil, 0, corruptError(cfChangelog, fmt.Errorf("malformed change-log key %q", it.Key().Data()))
			}
			if seq > r.Hi {
				break
			}
			if cur == nil || cur.Seq != seq {
				if err := flush(); err != nil {
					return nil, 0, err
				}
				if maxBytes > 0 && size >= maxBytes {
					return out, upTo, nil
				}
				cur = &ChangeSet{Origin: origin, Seq: seq}
			}
			batch = append(batch, rowRefAt{def: def, key: key})
		}
		if err := it.Err(); err != nil {
			return nil, 0, readError(cfChangelog, err)
		}
		if err := flush(); err != nil {
			return nil, 0, err
		}
		if maxBytes > 0 && size >= maxBytes {
			// Everything up to the end of this range was read.
			return out, r.Hi, nil
		}
		upTo = r.Hi
	}
	return out, upTo, nil
}

type rowRefAt struct {
	def *tableDef
	key string
}

// fillChanges reads the rows refs of change set cs and appends those that
// still hold cs's version (all of them, by construction of the log, unless
// the snapshot caught a row mid-way, which it cannot: keys and rows share
// a batch).
func (s *Store) fillChanges(ro *grocksdb.ReadOptions, cs *ChangeSet, refs []rowRefAt) error {
	if len(refs) == 0 {
		return nil
	}
	cfs := make(grocksdb.ColumnFamilyHandles, len(refs))
	keys := make([][]byte, len(refs))
	for i, r := range refs {
		cfs[i] = s.cfs[r.def.name]
		keys[i] = []byte(r.key)
	}
	vals, err := s.base.MultiGetCFMultiCF(ro, cfs, keys)
	if err != nil {
		return readError(cfChangelog, err)
	}
	defer vals.Destroy()
	for i, ref := range refs {
		if !vals[i].Exists() {
			return corruptError(cfChangelog, fmt.Errorf("entry %s/%d refers to missing %s %q", cs.Origin, cs.Seq, ref.def.singular, ref.key))
		}
		r, err := decodeRow(vals[i].Data())
		if err != nil {
			return corruptError(ref.def.name, fmt.Errorf("row %q: %w", ref.key, err))
		}
		if r.version.Origin != cs.Origin || r.version.Seq != cs.Seq {
			return corruptError(cfChangelog, fmt.Errorf("entry %s/%d refers to %s %q at version %s/%d",
				cs.Origin, cs.Seq, ref.def.singular, ref.key, r.version.Origin, r.version.Seq))
		}
		cs.HLC = r.version.HLC
		cs.Changes = append(cs.Changes, rowChange(ref.def, ref.key, &r, s.keys))
	}
	return nil
}

// rowChange is the change that stored row r of table def is read back as:
// also what the commit and apply paths build their feed events from
// (feed.go), so that an event from memory equals one materialized from
// disk. The record and expiry come out as a write and a read would give
// them (no empty record, no negative expiry) for a row not read back.
func rowChange(def *tableDef, key string, r *row, keys *keyring) Change {
	ch := Change{Table: def.name, Key: key, Deleted: r.deleted, Version: r.version, Expires: max(r.expires, 0), keys: keys}
	if !r.deleted && len(r.rec) > 0 {
		ch.Value = r.rec
	}
	return ch
}

// clogOrder orders the changes of a set as the change log holds them, by
// table id, then key.
func clogOrder(a, b Change) int {
	if c := cmp.Compare(lookupTable(a.Table).id, lookupTable(b.Table).id); c != 0 {
		return c
	}
	return strings.Compare(a.Key, b.Key)
}

// materialize reads change set origin/seq as of ro's snapshot: the rows
// that still hold its version. A set whose rows were all overwritten since
// has no changes (its seq is cleared).
func (s *Store) materialize(ro *grocksdb.ReadOptions, origin string, seq uint64) (ChangeSet, error) {
	sets, _, err := s.readChangeSets(ro, origin, Span(seq, seq), 0)
	if err != nil {
		return ChangeSet{}, err
	}
	if len(sets) == 0 {
		return ChangeSet{Origin: origin, Seq: seq}, nil
	}
	return sets[0], nil
}
