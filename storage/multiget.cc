// A MultiGet that crosses from Go into RocksDB once and copies the values
// out in one buffer (see multiget.go for why).

#include <rocksdb/c.h>
#include <stdlib.h>
#include <string.h>

#include <vector>

#include "multiget.h"
#include "perflevel.h"

extern "C" char* edge_multi_get(void* db, void* ro, void* cf, size_t n, const char* keys, const size_t* key_lens,
                                size_t* val_lens, char** out) {
  *out = nullptr;
  EdgeQuietPerfContext quiet;
  std::vector<const char*> ptrs(n);
  size_t off = 0;
  for (size_t i = 0; i < n; i++) {
    ptrs[i] = keys + off;
    off += key_lens[i];
  }
  std::vector<rocksdb_pinnableslice_t*> vals(n, nullptr);
  std::vector<char*> errs(n, nullptr);
  rocksdb_batched_multi_get_cf(static_cast<rocksdb_t*>(db), static_cast<const rocksdb_readoptions_t*>(ro),
                               static_cast<rocksdb_column_family_handle_t*>(cf), n, ptrs.data(), key_lens,
                               vals.data(), errs.data(), false);
  char* err = nullptr;
  size_t total = 0;
  for (size_t i = 0; i < n; i++) {
    if (errs[i] != nullptr) {
      if (err == nullptr) {
        err = errs[i];
      } else {
        free(errs[i]);
      }
    }
    val_lens[i] = static_cast<size_t>(-1);
    if (vals[i] != nullptr) {
      size_t len = 0;
      rocksdb_pinnableslice_value(vals[i], &len);
      val_lens[i] = len;
      total += len;
    }
  }
  char* buf = nullptr;
  if (err == nullptr && total > 0) {
    buf = static_cast<char*>(malloc(total));
    if (buf == nullptr) {
      err = strdup("edge_multi_get: out of memory");
    }
  }
  size_t pos = 0;
  for (size_t i = 0; i < n; i++) {
    if (vals[i] == nullptr) continue;
    if (buf != nullptr) {
      size_t len = 0;
      const char* v = rocksdb_pinnableslice_value(vals[i], &len);
      memcpy(buf + pos, v, len);
      pos += len;
    }
    rocksdb_pinnableslice_destroy(vals[i]);
  }
  *out = buf;
  return err;
}
