// Package rocksabi is what the store's cgo shims (storage/internal/bgerror,
// storage/internal/memhint) share to reach the C++ objects inside
// grocksdb's handles: RocksDB's C API lacks some options and calls they
// need, so they use the C++ API on the object the handle holds.
//
// grocksdb keeps each C handle as the first field of its Options and DB,
// and the C API's handle holds its C++ object first (rocksabi.h, as
// rocksdb/c.cc declares it). Neither is a promise of either library, so
// OptionsLayoutOK checks both at run time: a value written through
// grocksdb must read back through the C++ options. A shim does nothing
// when the check fails.
package rocksabi

// #cgo CXXFLAGS: -std=c++17 -O2
// #cgo LDFLAGS: -lrocksdb -lstdc++
// #include "rocksabi.h"
import "C"

import (
	"unsafe"

	"github.com/linxGnu/grocksdb"
)

// Handle returns the C pointer that grocksdb keeps as the first field of
// the object p points to (a rocksdb_options_t* for an Options, a
// rocksdb_t* for a DB).
func Handle[T any](p *T) unsafe.Pointer { return *(*unsafe.Pointer)(unsafe.Pointer(p)) }

// WriteBufferSize reads o's write buffer size through the C++ options
// inside its handle.
func WriteBufferSize(o *grocksdb.Options) uint64 {
	return uint64(C.edge_abi_write_buffer_size(Handle(o)))
}

// OptionsLayoutOK probes that the C++ options sit where the shims look for
// them, with a value nobody uses, then restores the value o had.
func OptionsLayoutOK(o *grocksdb.Options) bool {
	if Handle(o) == nil {
		return false
	}
	want := o.GetWriteBufferSize()
	const probe = 0x5eed_4321
	o.SetWriteBufferSize(probe)
	ok := WriteBufferSize(o) == probe
	o.SetWriteBufferSize(want)
	return ok
}
