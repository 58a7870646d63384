// Sets RocksDB's memtable_insert_with_hint_prefix_extractor, which the C
// API lacks, on the index family (see memhint.go for why).

#include <rocksdb/options.h>
#include <rocksdb/slice_transform.h>

#include "memhint.h"
// The C++ options inside the C API's handle; memhint.go checks the layout
// at run time before using it.
#include "rocksabi.h"

namespace {

// Index ids (storage/index.go) whose entries are partitioned: by time (2 cert
// expiry, 7 tombstones, 8 row expiry) the partition is the id byte; by
// pool (4 backends by pool, 11 backends by address: "pool scheme://...")
// and by node (5 observations by health) it runs up to the first NUL or
// space. The other indexes are unique per row and get no hint.
size_t partition(const char* k, size_t n) {
  if (n < 2) return 0;
  switch (static_cast<unsigned char>(k[0])) {
    case 2:
    case 7:
    case 8:
      return 1;
    case 4:
    case 5:
    case 11:
      for (size_t i = 1; i < n; i++) {
        if (k[i] == 0 || k[i] == ' ') return i;
      }
      return n;
  }
  return 0;
}

class IndexPartition : public rocksdb::SliceTransform {
 public:
  const char* Name() const override { return "singularity-edge.IndexPartition"; }
  rocksdb::Slice Transform(const rocksdb::Slice& key) const override {
    return rocksdb::Slice(key.data(), partition(key.data(), key.size()));
  }
  bool InDomain(const rocksdb::Slice& key) const override {
    return partition(key.data(), key.size()) > 0;
  }
};

}  // namespace

extern "C" void edge_set_index_insert_hint(void* opts) {
  static_cast<rocksdb_options_t*>(opts)->rep.memtable_insert_with_hint_prefix_extractor =
      std::make_shared<IndexPartition>();
}

extern "C" const char* edge_insert_hint_name(void* opts) {
  auto& t = static_cast<rocksdb_options_t*>(opts)->rep.memtable_insert_with_hint_prefix_extractor;
  return t ? t->Name() : "";
}

extern "C" size_t edge_index_partition(const char* key, size_t n) { return partition(key, n); }
