// One-crossing write of a batch built in Go (write.cc, batch.go).
#ifndef EDGE_STORAGE_WRITE_H
#define EDGE_STORAGE_WRITE_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

// edge_write writes the len bytes at rep, a batch in RocksDB's WriteBatch
// format, to db with write options wo. Returns NULL, or the error
// (malloc'd, freed by the caller).
char* edge_write(void* db, void* wo, const char* rep, size_t len);

#ifdef __cplusplus
}
#endif

#endif
