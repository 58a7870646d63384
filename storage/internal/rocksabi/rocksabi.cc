// The layout probe of rocksabi.go.

#include "rocksabi.h"

extern "C" size_t edge_abi_write_buffer_size(void* opts) {
  return static_cast<rocksdb_options_t*>(opts)->rep.write_buffer_size;
}
