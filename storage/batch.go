package storage

import (
	"encoding/binary"

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
type batchBuilder struct {
	buf   []byte
	count uint32
	key   []byte // scratch for keys built by the caller
	val   []byte // scratch for values built by the caller
}

// Record types of RocksDB's WriteBatch format (db/dbformat.h).
const (
	wbDeletion         = 0x0
	wbValue            = 0x1
	wbCFDeletion       = 0x4
	wbCFValue          = 0x5
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
}

func (w *batchBuilder) record(cf uint32, def, withCF byte) {
	if w.buf == nil {
		w.reset()
	}
	w.count++
	if cf == 0 {
		w.buf = append(w.buf, def)
		return
	}
	w.buf = append(w.buf, withCF)
	w.buf = binary.AppendUvarint(w.buf, uint64(cf))
}

func (w *batchBuilder) slice(b []byte) {
	w.buf = binary.AppendUvarint(w.buf, uint64(len(b)))
	w.buf = append(w.buf, b...)
}

// put adds key = value in the column family with id cf.
func (w *batchBuilder) put(cf uint32, key, value []byte) {
	w.record(cf, wbValue, wbCFValue)
	w.slice(key)
	w.slice(value)
}

// del adds a deletion of key in the column family with id cf.
func (w *batchBuilder) del(cf uint32, key []byte) {
	w.record(cf, wbDeletion, wbCFDeletion)
	w.slice(key)
}

// len is the number of operations in the batch.
func (w *batchBuilder) len() int { return int(w.count) }

// write commits the batch to s with wo, through Store.write so that the
// row cache drops what the batch replaces.
func (w *batchBuilder) write(s *Store, wo *grocksdb.WriteOptions) error {
	if w.buf == nil {
		w.reset()
	}
	binary.LittleEndian.PutUint32(w.buf[8:12], w.count)
	wb := grocksdb.WriteBatchFrom(w.buf)
	defer wb.Destroy()
	return s.write(wo, wb)
}
