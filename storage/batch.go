package storage

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"

	"github.com/linxGnu/grocksdb"
)

// batchBuilder builds a commit's RocksDB WriteBatch in Go memory, in
// RocksDB's own WriteBatch format, and hands it over in one copy.
//
// Adding entries through grocksdb costs a cgo call per key and value and
// grows a C++ string as it goes; a commit of 1,000 backends makes about
// 5,000 such calls. Here keys are built in place (append helpers into one
// buffer that lives as long as the store and is used under the commit
// mutex), and the batch crosses into RocksDB once. The format is
// RocksDB's documented WriteBatch layout (db/write_batch.cc): a 12-byte
// header (fixed64 sequence, set by RocksDB on write, and fixed32 count),
// then one record per operation. The count is kept by the same calls that
// add records (RocksDB trusts it: a wrong count is found only after the
// records are in the memtable), and TestBatchBuilderMatchesRocksDB pins
// the encoding against grocksdb's.
//
// The records of one family (sortFamily: the index family, whose entries
// a commit spreads over many partitions) are held aside and added in key
// order when the batch is written. RocksDB's memtable remembers where its
// last insert went, so keys that arrive in order are linked in next to
// each other, and keys in random order are each searched for from the top:
// a 1,000-backend commit's by-address entries, in address order instead of
// the order of their random ids, cost 14 % less of the whole batch
// (docs/ARCHITECTURE.md, storage, ninth pass). Two records of one key keep
// their order and the batch means what it meant.
type batchBuilder struct {
	buf   []byte
	count uint32
	key   []byte // scratch for keys built by the caller
	val   []byte // scratch for values built by the caller

	sorted   bool   // whether sortCF's records are held and sorted
	sortCF   uint32 // the family whose records are sorted
	held     []byte // sortCF's records, in the batch's record format
	heldRecs []heldRecord
	grouped  []heldRecord // scratch for appendHeld
}

// heldRecord locates one held record and its key in batchBuilder.held.
type heldRecord struct {
	start, end       int // the record
	keyStart, keyEnd int // its key
}

// Record types of RocksDB's WriteBatch format (db/dbformat.h).
const (
	wbDeletion         = 0x0
	wbValue            = 0x1
	wbMerge            = 0x2
	wbLogData          = 0x3
	wbCFDeletion       = 0x4
	wbCFValue          = 0x5
	wbCFMerge          = 0x6
	wbSingleDeletion   = 0x7
	wbCFSingleDeletion = 0x8
	wbCFRangeDeletion  = 0xE
	wbRangeDeletion    = 0xF
	wbHeaderLen        = 12
	wbInitialCapacity  = 1 << 20 // a 1,000-row commit of backends
	wbRetainedCapacity = 8 << 20 // a larger buffer is dropped after its commit
)

// reset empties the batch, keeping its buffer unless it grew past
// wbRetainedCapacity (one huge commit must not pin its size for good).
func (w *batchBuilder) reset() {
	if cap(w.buf) > wbRetainedCapacity || w.buf == nil {
		w.buf = make([]byte, wbHeaderLen, wbInitialCapacity)
	}
	w.buf = w.buf[:wbHeaderLen]
	clear(w.buf)
	w.count = 0
	if cap(w.held) > wbRetainedCapacity {
		w.held = nil
	}
	w.held, w.heldRecs = w.held[:0], w.heldRecs[:0]
	w.sorted = false
}

// sortFamily makes the records of the family with id cf, from here to
// the next reset, reach the batch in key order.
func (w *batchBuilder) sortFamily(cf uint32) {
	w.sorted, w.sortCF = true, cf
}

// add appends one record to the batch, or holds it when it belongs to
// the sorted family.
func (w *batchBuilder) add(cf uint32, def, withCF byte, key, value []byte, hasValue bool) {
	if w.buf == nil {
		w.reset()
	}
	w.count++
	if !w.sorted || cf != w.sortCF {
		w.buf = appendRecord(w.buf, cf, def, withCF, key, value, hasValue)
		return
	}
	start := len(w.held)
	w.held = appendRecord(w.held, cf, def, withCF, key, value, hasValue)
	keyStart := start + 1 + uvarintLen(uint64(len(key)))
	if cf != 0 {
		keyStart += uvarintLen(uint64(cf))
	}
	w.heldRecs = append(w.heldRecs, heldRecord{start: start, end: len(w.held), keyStart: keyStart, keyEnd: keyStart + len(key)})
}

// appendRecord appends one record of RocksDB's WriteBatch format.
func appendRecord(dst []byte, cf uint32, def, withCF byte, key, value []byte, hasValue bool) []byte {
	if cf == 0 {
		dst = append(dst, def)
	} else {
		dst = append(dst, withCF)
		dst = binary.AppendUvarint(dst, uint64(cf))
	}
	dst = binary.AppendUvarint(dst, uint64(len(key)))
	dst = append(dst, key...)
	if hasValue {
		dst = binary.AppendUvarint(dst, uint64(len(value)))
		dst = append(dst, value...)
	}
	return dst
}

// put adds key = value in the column family with id cf.
func (w *batchBuilder) put(cf uint32, key, value []byte) {
	w.add(cf, wbValue, wbCFValue, key, value, true)
}

// del adds a deletion of key in the column family with id cf.
func (w *batchBuilder) del(cf uint32, key []byte) {
	w.add(cf, wbDeletion, wbCFDeletion, key, nil, false)
}

// appendHeld adds the held records to the batch in key order.
func (w *batchBuilder) appendHeld() {
	if len(w.heldRecs) == 0 {
		return
	}
	held := w.held
	// First by the key's first byte (an index's id), keeping the order of
	// addition: a counting sort, one pass. A commit's entries of one index
	// often come in key order already (a pool's by-pool entries follow
	// the sorted rows), and only the groups that do not are sorted.
	var starts [heldGroups + 1]int // group g's slots: starts[g] to starts[g+1]
	for _, r := range w.heldRecs {
		starts[groupOf(held, r)+1]++
	}
	for g := 1; g < len(starts); g++ {
		starts[g] += starts[g-1]
	}
	next := starts
	w.grouped = slices.Grow(w.grouped[:0], len(w.heldRecs))[:len(w.heldRecs)]
	for _, r := range w.heldRecs {
		g := groupOf(held, r)
		w.grouped[next[g]] = r
		next[g]++
	}
	// Bytewise, as the family's comparator orders them; records of one
	// key in the order they were added.
	order := func(a, b heldRecord) int {
		if c := bytes.Compare(held[a.keyStart:a.keyEnd], held[b.keyStart:b.keyEnd]); c != 0 {
			return c
		}
		return cmp.Compare(a.start, b.start)
	}
	for g := range heldGroups {
		group := w.grouped[starts[g]:starts[g+1]]
		if !slices.IsSortedFunc(group, order) {
			slices.SortFunc(group, order)
		}
	}
	for _, r := range w.grouped {
		w.buf = append(w.buf, held[r.start:r.end]...)
	}
	w.held, w.heldRecs = w.held[:0], w.heldRecs[:0]
}

// heldGroups is the number of groups appendHeld sorts held records into:
// one for an empty key and one per first byte.
const heldGroups = 257

// groupOf is the group of a held record for appendHeld: 0 for an empty
// key, else its first byte plus one.
func groupOf(held []byte, r heldRecord) int {
	if r.keyStart == r.keyEnd {
		return 0
	}
	return int(held[r.keyStart]) + 1
}

// len is the number of operations in the batch.
func (w *batchBuilder) len() int { return int(w.count) }

// write commits the batch to s with wo, through Store.writeRep so that
// the row cache drops what the batch replaces.
func (w *batchBuilder) write(s *Store, wo *grocksdb.WriteOptions) error {
	if w.buf == nil {
		w.reset()
	}
	w.appendHeld()
	binary.LittleEndian.PutUint32(w.buf[8:12], w.count)
	return s.writeRep(wo, w.buf)
}

// eachBatchRecord calls fn with the family id and key of every record of
// rep, a batch in RocksDB's WriteBatch format, and whether it is a range
// deletion (key is then the range's start). It reads the record types the
// store's writers produce (puts, deletes, merges, range deletions, log
// data) and returns an error at any other, or at a record cut short.
func eachBatchRecord(rep []byte, fn func(cf uint32, key []byte, rangeDel bool)) error {
	if len(rep) < wbHeaderLen {
		return errors.New("write batch shorter than its header")
	}
	b := rep[wbHeaderLen:]
	for len(b) > 0 {
		typ := b[0]
		b = b[1:]
		var cf uint32
		switch typ {
		case wbCFDeletion, wbCFValue, wbCFMerge, wbCFSingleDeletion, wbCFRangeDeletion:
			v, n := binary.Uvarint(b)
			if n <= 0 || v > math.MaxUint32 {
				return errors.New("write batch: bad column family id")
			}
			cf, b = uint32(v), b[n:]
		}
		parts := 1 // the key, or a log record's blob
		switch typ {
		case wbDeletion, wbCFDeletion, wbSingleDeletion, wbCFSingleDeletion, wbLogData:
		case wbValue, wbCFValue, wbMerge, wbCFMerge, wbRangeDeletion, wbCFRangeDeletion:
			parts = 2
		default:
			return fmt.Errorf("write batch: record type %#x not read here", typ)
		}
		var key []byte
		for i := range parts {
			l, n := binary.Uvarint(b)
			if n <= 0 || l > uint64(len(b)-n) {
				return errors.New("write batch: record cut short")
			}
			if i == 0 {
				key = b[n : n+int(l)]
			}
			b = b[n+int(l):]
		}
		if typ != wbLogData {
			fn(cf, key, typ == wbRangeDeletion || typ == wbCFRangeDeletion)
		}
	}
	return nil
}
