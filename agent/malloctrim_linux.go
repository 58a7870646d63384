//go:build linux && cgo

package agent

// #include <malloc.h>
import "C"

// releaseCMemory hands the C heap's free pages back to the OS. RocksDB
// allocates through glibc's malloc: the start-up reads (the routing table,
// the certificate index, the deferred verification, with their block and
// read-ahead buffers) leave free chunks scattered over several arenas,
// which glibc keeps mapped, tens of MiB at a million rows. It returns
// whether any memory was released.
func releaseCMemory() bool {
	return C.malloc_trim(0) == 1
}
