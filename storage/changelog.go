package storage

import (
	"fmt"

	"github.com/linxGnu/grocksdb"
	"google.golang.org/protobuf/encoding/protowire"
)

// Change-log entries hold references, not rows.
//
// A commit writes its rows to their tables and, in the same RocksDB
// commit, one change-log entry that names them: per change its table, key,
// deleted flag and version. The row value is not copied a second time, which
// halves the bytes written per commit; under last-write-wins replication only
// ever needs the current version of a row, which is the one in its table.
//
//	byte 0   formatChangeRefs (2)
//	field 1  origin   bytes
//	field 2  seq      varint
//	field 3  hlc      varint
//	field 4  change   bytes, repeated:
//	           1 table, 2 key, 3 deleted,
//	           4 version {1 hlc, 2 origin, 3 seq}: absent when it equals the
//	             entry's own (hlc, origin, seq), as it does for every change
//	             of a local commit
//
// Fields 1-3 are numbered as in the ChangeSet wire format, so Prune and Open
// read the HLC of either format the same way. Entries written before this
// format (format byte 1: a marshalled ChangeSet with values) are still read;
// their values are ignored and their changes taken as references.
//
// materialize turns an entry back into a ChangeSet by reading each
// referenced row from one RocksDB snapshot: a row whose stored version is
// the reference's contributes its stored (sealed) value; a row that has since
// been overwritten (or removed) is left out. The newer version has a change-log
// entry and a feed event of its own, which carry it.
const formatChangeRefs byte = 2

// appendChangeRefs appends the change-log entry of a change set (values are
// not written) to dst and returns it.
func appendChangeRefs(dst []byte, cs *ChangeSet) []byte {
	e := encoder{b: append(dst, formatChangeRefs)}
	e.str(1, cs.Origin)
	e.uint(2, cs.Seq)
	e.uint(3, uint64(cs.HLC))
	own := Version{HLC: cs.HLC, Origin: cs.Origin, Seq: cs.Seq}
	for i := range cs.Changes {
		c := &cs.Changes[i]
		n := protowire.SizeTag(1) + protowire.SizeBytes(len(c.Table)) +
			protowire.SizeTag(2) + protowire.SizeBytes(len(c.Key))
		if c.Deleted {
			n += protowire.SizeTag(3) + 1
		}
		var ver []byte
		if c.Version != own {
			ver = encodeVersion(c.Version)
			n += protowire.SizeTag(4) + protowire.SizeBytes(len(ver))
		}
		// The nested message is written in place: its length is known.
		e.b = protowire.AppendTag(e.b, 4, protowire.BytesType)
		e.b = protowire.AppendVarint(e.b, uint64(n))
		e.str(1, c.Table)
		e.str(2, c.Key)
		e.bool(3, c.Deleted)
		if ver != nil {
			e.msg(4, ver, true)
		}
	}
	return e.b
}

// decodeChangeRefs decodes a change-log entry of either format into a
// ChangeSet without values.
func decodeChangeRefs(b []byte) (ChangeSet, error) {
	if len(b) == 0 {
		return ChangeSet{}, errWire("empty change-log entry")
	}
	switch b[0] {
	case formatV1:
		cs, err := UnmarshalChangeSet(b)
		for i := range cs.Changes {
			cs.Changes[i].Value = nil
		}
		return cs, err
	case formatChangeRefs:
	default:
		return ChangeSet{}, fmt.Errorf("%w: change-log entry format %d (this agent reads %d and %d)",
			ErrFormatVersion, b[0], formatV1, formatChangeRefs)
	}
	var cs ChangeSet
	var raw [][]byte
	err := decodeChangeSetFields(b[1:], &cs, func(m []byte) error {
		raw = append(raw, m)
		return nil
	})
	if err != nil {
		return ChangeSet{}, fmt.Errorf("change-log entry: %w", err)
	}
	own := Version{HLC: cs.HLC, Origin: cs.Origin, Seq: cs.Seq}
	cs.Changes = make([]Change, 0, len(raw))
	for _, m := range raw {
		// A change without a version of its own has the set's.
		c := Change{Version: own}
		if err := unmarshalChange(m, &c); err != nil {
			return ChangeSet{}, fmt.Errorf("change-log entry: %w", err)
		}
		c.Value = nil // references only: values are read from the rows
		cs.Changes = append(cs.Changes, c)
	}
	return cs, nil
}

// changeLogHLC reads only the HLC of a change-log entry (either format).
func changeLogHLC(b []byte) (HLC, error) {
	if len(b) == 0 {
		return 0, errWire("empty change-log entry")
	}
	if b[0] != formatV1 && b[0] != formatChangeRefs {
		return 0, fmt.Errorf("%w: change-log entry format %d", ErrFormatVersion, b[0])
	}
	var h uint64
	err := decodeFields(b[1:], func(f field) error {
		if f.num == 3 {
			return f.uint64(&h)
		}
		return nil
	})
	return HLC(h), err
}

// materialize fills in the values of a decoded change-log entry from the
// rows as of ro's snapshot. A change whose row no longer holds the
// referenced version has been superseded and is left out; the set itself
// (origin, seq, HLC) is kept even when no change remains, so that a peer
// applying it still records the seq. The changes can open sealed keys.
func (s *Store) materialize(ro *grocksdb.ReadOptions, refs ChangeSet) (ChangeSet, error) {
	out := ChangeSet{Origin: refs.Origin, Seq: refs.Seq, HLC: refs.HLC}
	if len(refs.Changes) == 0 {
		return out, nil
	}
	cfs := make(grocksdb.ColumnFamilyHandles, len(refs.Changes))
	keys := make([][]byte, len(refs.Changes))
	for i, c := range refs.Changes {
		if !isTable(c.Table) {
			return ChangeSet{}, corruptError(cfChangelog, fmt.Errorf("entry %s/%d refers to unknown table %q", refs.Origin, refs.Seq, c.Table))
		}
		cfs[i] = s.cfs[c.Table]
		keys[i] = []byte(c.Key)
	}
	vals, err := s.base.MultiGetCFMultiCF(ro, cfs, keys)
	if err != nil {
		return ChangeSet{}, readError(cfChangelog, err)
	}
	defer vals.Destroy()
	out.Changes = make([]Change, 0, len(refs.Changes))
	for i, c := range refs.Changes {
		if !vals[i].Exists() {
			continue // removed since (RemoveTable): superseded
		}
		r, err := decodeRow(vals[i].Data())
		if err != nil {
			return ChangeSet{}, corruptError(c.Table, fmt.Errorf("row %q: %w", c.Key, err))
		}
		if r.version != c.Version {
			continue // overwritten by a newer version, which has its own entry
		}
		ch := Change{Table: c.Table, Key: c.Key, Deleted: r.deleted, Version: r.version, keys: s.keys}
		if !r.deleted {
			ch.Value = r.rec
		}
		out.Changes = append(out.Changes, ch)
	}
	return out, nil
}
