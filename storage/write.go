package storage

// #include <stdlib.h>
// #include "write.h"
import "C"

import (
	"errors"
	"unsafe"

	"github.com/linxGnu/grocksdb"
)

// writeBatchRep writes rep, a batch in RocksDB's WriteBatch format, to db
// in one cgo call (write.cc), with RocksDB's perf counters off on the
// calling thread.
func writeBatchRep(db *grocksdb.DB, wo *grocksdb.WriteOptions, rep []byte) error {
	hdb, hwo := cHandle(db), cHandle(wo)
	if hdb == nil || hwo == nil {
		return errors.New("storage: write: closed database or write options")
	}
	cerr := C.edge_write(hdb, hwo, (*C.char)(unsafe.Pointer(&rep[0])), C.size_t(len(rep)))
	return shimError(cerr)
}

// shimError turns the error a shim returns (malloc'd, or NULL) into a Go
// error, freeing it.
func shimError(cerr *C.char) error {
	if cerr == nil {
		return nil
	}
	msg := C.GoString(cerr)
	C.free(unsafe.Pointer(cerr))
	return errors.New(msg)
}
