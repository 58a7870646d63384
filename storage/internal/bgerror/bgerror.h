// RocksDB background-error handling that the C API lacks (bgerror.cc,
// bgerror.go).
#ifndef EDGE_STORAGE_BGERROR_H
#define EDGE_STORAGE_BGERROR_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// A watch holds a listener that remembers the database's background error.
// opts is a rocksdb_options_t*; the watch must outlive the database opened
// with them.
void* edge_bgerror_watch(void* opts);
void edge_bgerror_watch_destroy(void* watch);
// The background error the database holds now, malloc'd (freed by the
// caller), or NULL when it holds none.
char* edge_bgerror_get(void* watch);
// The number of background errors reported since the watch was created.
size_t edge_bgerror_count(void* watch);
// The rocksdb::BackgroundErrorReason of the error held now, or -1.
int edge_bgerror_reason(void* watch);
// The number of background errors of one reason reported so far.
size_t edge_bgerror_count_for(void* watch, int reason);
// The number of manual compactions (CompactRange) that failed, and the last
// one's status in *last (malloc'd, or NULL).
size_t edge_bgerror_manual_failures(void* watch, char** last);
// The input bytes of the compactions that failed for lack of space since
// the last recovery and have not succeeded since (0: none).
uint64_t edge_bgerror_compaction_need(void* watch);

// db is a rocksdb_t*. edge_db_name returns DB::GetName() (the layout probe);
// edge_db_resume runs DB::Resume() and returns NULL or its error (malloc'd).
const char* edge_db_name(void* db);
char* edge_db_resume(void* db);
// cf is a rocksdb_column_family_handle_t*: its family's name (the layout
// probe). edge_db_switch_memtables flushes the n families of cfs without
// waiting for anything (FlushOptions wait and allow_write_stall) and
// returns NULL or its error (malloc'd).
const char* edge_cf_name(void* cf);
char* edge_db_switch_memtables(void* db, void** cfs, int n);

// Sets opts' info log to a file logger at path that drops what it cannot
// write (infolog.cc). level is a rocksdb::InfoLogLevel.
void edge_set_info_log(void* opts, const char* path, long max_size, int level);

#ifdef __cplusplus
}
#endif

#endif
