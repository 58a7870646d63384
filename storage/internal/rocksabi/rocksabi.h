// The C++ objects inside RocksDB's C API handles, for the store's cgo shims
// (storage/internal/bgerror, storage/internal/memhint) that reach options
// and calls the C API lacks. rocksabi.go checks the layouts at run time.
// Each shim's directory holds a symbolic link to this file rather than
// an -I flag: Go's build cache hashes the headers in a package's own
// directory only, so through -I an edit here left the shims' objects
// stale.
#ifndef EDGE_STORAGE_ROCKSABI_H
#define EDGE_STORAGE_ROCKSABI_H

#include <stddef.h>

#ifdef __cplusplus
#include <rocksdb/db.h>
#include <rocksdb/options.h>

// As rocksdb/c.cc declares them: each handle holds its C++ object first.
struct rocksdb_t {
  rocksdb::DB* rep;
};
struct rocksdb_options_t {
  rocksdb::Options rep;
};
struct rocksdb_column_family_handle_t {
  rocksdb::ColumnFamilyHandle* rep;
};

extern "C" {
#endif

// opts is a rocksdb_options_t*: its write buffer size read through the C++
// options, the layout probe.
size_t edge_abi_write_buffer_size(void* opts);

#ifdef __cplusplus
}
#endif

#endif
