// Package memhint installs RocksDB's memtable insert hint on the options
// of the store's index family: an option RocksDB's C API, and so
// grocksdb, does not expose.
//
// A backend's index entries are spread over its pool's partitions (by
// pool, by pool and address), and a batch of backends of many pools
// inserts each entry far from the previous one: RocksDB's skip list then
// searches every memtable insert from the top, which was most of the
// write time of batch apply and of local batches. RocksDB keeps, per
// partition, the position of the last insert when the family sets
// memtable_insert_with_hint_prefix_extractor, so an entry that lands next
// to its partition's previous one (ids or seqs that grow) is linked in
// without a search, and any other entry searches only below the levels
// that still bracket it. The hint changes no result, only the cost of an
// insert; it costs about 250 bytes of memtable per partition written, and
// only partitioned indexes (pools, nodes, time) get one.
//
// The partitions follow storage's index key layout (storage/index.go);
// storage's tests check the two against each other. The package is
// separate so that the storage benchmarks' raw RocksDB anchors can open
// their index families with the same hint as the store.
//
// memhint.cc sets the option on the C++ options inside the C API's
// handle (storage/internal/rocksabi); Install checks that layout first and
// leaves the options alone when it does not hold.
package memhint

// #cgo CXXFLAGS: -std=c++17 -O2
// #cgo LDFLAGS: -lrocksdb -lstdc++
// #include "memhint.h"
import "C"

import (
	"unsafe"

	"github.com/linxGnu/grocksdb"

	"github.com/singularity-ng/singularity-edge/storage/internal/rocksabi"
)

// Name is the name of the insert-hint extractor Install sets.
const Name = "singularity-edge.IndexPartition"

// Install sets the index partition hint on o, the options of an index
// family, and reports whether it could.
func Install(o *grocksdb.Options) bool {
	if !rocksabi.OptionsLayoutOK(o) {
		return false
	}
	C.edge_set_index_insert_hint(rocksabi.Handle(o))
	return true
}

// Installed returns the name of o's insert-hint extractor ("" when none
// is set).
func Installed(o *grocksdb.Options) string {
	return C.GoString(C.edge_insert_hint_name(rocksabi.Handle(o)))
}

// Partition returns the length of index key k's insert-hint partition
// (0: none), as the extractor computes it.
func Partition(k []byte) int {
	if len(k) == 0 {
		return 0
	}
	return int(C.edge_index_partition((*C.char)(unsafe.Pointer(&k[0])), C.size_t(len(k))))
}
