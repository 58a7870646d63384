// Options that RocksDB's C API does not expose (memhint.cc, memhint.go).
#ifndef EDGE_STORAGE_MEMHINT_H
#define EDGE_STORAGE_MEMHINT_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

// opts is a rocksdb_options_t*.
void edge_set_index_insert_hint(void* opts);
const char* edge_insert_hint_name(void* opts);
// The length of the insert-hint partition of an index key, or 0 when the
// key has none.
size_t edge_index_partition(const char* key, size_t n);

#ifdef __cplusplus
}
#endif

#endif
