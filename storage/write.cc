// A write of a batch built in Go that crosses into RocksDB once (see
// batch.go for why).

#include "write.h"

#include <rocksdb/c.h>

#include "perflevel.h"

extern "C" char* edge_write(void* db, void* wo, const char* rep, size_t len) {
  EdgeQuietPerfContext quiet;
  rocksdb_writebatch_t* wb = rocksdb_writebatch_create_from(rep, len);
  char* err = nullptr;
  rocksdb_write(static_cast<rocksdb_t*>(db), static_cast<const rocksdb_writeoptions_t*>(wo), wb, &err);
  rocksdb_writebatch_destroy(wb);
  return err;
}
