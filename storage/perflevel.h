// RocksDB's per-thread perf counters, off while the store's shims
// (write.cc, multiget.cc) run.
#ifndef EDGE_STORAGE_PERFLEVEL_H
#define EDGE_STORAGE_PERFLEVEL_H

#include <rocksdb/perf_level.h>

// RocksDB counts, by default, every key comparison and block read of a
// thread in its perf context (PerfLevel kEnableCount). The store never
// reads those counters, and a memtable insert compares keys a dozen
// times, each count a thread-local access through the shared library's
// TLS resolver: with counting off, raw batches of 1,000 rows ran 14-17 %
// faster (docs/ARCHITECTURE.md, storage, ninth pass). The level belongs
// to the thread, and Go runs cgo calls on whichever thread it has, so a
// shim turns counting off for its own call and puts the thread's level
// back: nothing else that calls RocksDB on that thread sees a change.
class EdgeQuietPerfContext {
 public:
  EdgeQuietPerfContext() : prev_(rocksdb::GetPerfLevel()) { rocksdb::SetPerfLevel(rocksdb::PerfLevel::kDisable); }
  ~EdgeQuietPerfContext() { rocksdb::SetPerfLevel(prev_); }
  EdgeQuietPerfContext(const EdgeQuietPerfContext&) = delete;
  EdgeQuietPerfContext& operator=(const EdgeQuietPerfContext&) = delete;

 private:
  rocksdb::PerfLevel prev_;
};

#endif
