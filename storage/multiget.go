package storage

// #include <stdlib.h>
// #include "multiget.h"
import "C"

import (
	"errors"
	"unsafe"

	"github.com/linxGnu/grocksdb"
)

// One-crossing MultiGet.
//
// grocksdb's MultiGetCF allocates a C array per call and a C slice per
// key and hands each value back as its own object to free, so reading the
// stored versions of a 1,000-row commit cost about 1 µs per key, half of
// it in Go and cgo bookkeeping. multiGet passes the keys in one buffer,
// runs RocksDB's batched MultiGet (which also sorts the keys and checks
// the memtable and table filters per batch rather than per key), and gets
// the values back in one buffer: one cgo call and two allocations per
// batch.
//
// The C handles are the first field of grocksdb's DB, ReadOptions and
// ColumnFamilyHandle (as with Options in storage/internal/memhint);
// TestMultiGetMatchesGet pins the results against grocksdb's own reads.

// cHandle returns the C pointer that grocksdb keeps as the first field of
// the object p points to.
func cHandle[T any](p *T) unsafe.Pointer { return *(*unsafe.Pointer)(unsafe.Pointer(p)) }

// multiGet reads keys from column family cf and calls found with the
// index and value of every key that exists (value valid only during the
// call), in key order of the input.
func multiGet(db *grocksdb.DB, ro *grocksdb.ReadOptions, cf *grocksdb.ColumnFamilyHandle, keys []string, found func(i int, value []byte) error) error {
	if len(keys) == 0 {
		return nil
	}
	hdb, hro, hcf := cHandle(db), cHandle(ro), cHandle(cf)
	if hdb == nil || hro == nil || hcf == nil {
		return errors.New("storage: multiget: closed database, read options or column family")
	}
	size := 0
	for _, k := range keys {
		size += len(k)
	}
	buf := make([]byte, 0, size+1) // never empty: &buf[0] below
	lens := make([]C.size_t, 2*len(keys))
	keyLens, valLens := lens[:len(keys)], lens[len(keys):]
	for i, k := range keys {
		buf = append(buf, k...)
		keyLens[i] = C.size_t(len(k))
	}
	buf = append(buf, 0)
	var out *C.char
	cerr := C.edge_multi_get(hdb, hro, hcf, C.size_t(len(keys)),
		(*C.char)(unsafe.Pointer(&buf[0])), &keyLens[0], &valLens[0], &out)
	if out != nil {
		defer C.free(unsafe.Pointer(out))
	}
	if err := shimError(cerr); err != nil {
		return err
	}
	pos := uintptr(0)
	for i, n := range valLens {
		if n == ^C.size_t(0) {
			continue
		}
		var v []byte
		if n > 0 {
			v = unsafe.Slice((*byte)(unsafe.Add(unsafe.Pointer(out), pos)), int(n))
		} else {
			v = []byte{}
		}
		pos += uintptr(n)
		if err := found(i, v); err != nil {
			return err
		}
	}
	return nil
}
