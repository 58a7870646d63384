// One-crossing MultiGet for the store (multiget.cc, multiget.go).
#ifndef EDGE_STORAGE_MULTIGET_H
#define EDGE_STORAGE_MULTIGET_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

// edge_multi_get reads n keys of one column family with RocksDB's batched
// MultiGet. keys holds the keys back to back, key_lens their lengths.
// Found values are copied back to back into one malloc'd buffer (*out,
// freed by the caller with free; NULL when nothing was found) and
// val_lens[i] is the length of key i's value or (size_t)-1 when absent.
// Returns NULL, or the first error (malloc'd, freed by the caller).
char* edge_multi_get(void* db, void* ro, void* cf, size_t n, const char* keys, const size_t* key_lens,
                     size_t* val_lens, char** out);

#ifdef __cplusplus
}
#endif

#endif
