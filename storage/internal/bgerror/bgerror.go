// Package bgerror lets the store live through a full disk: see and clear
// RocksDB's background error, and log without aborting, none of which
// RocksDB's C API, and so grocksdb, exposes.
//
// When a flush fails (ENOSPC above all), RocksDB records a background
// error and refuses every write until DB::Resume succeeds or the database
// is reopened. The store needs to know that the error is
// there (it is not ready while it is, even when no commit has failed yet:
// the flush that failed ran in the background) and to call Resume once the
// cause is gone, so that writes come back without a restart.
//
// InstallLogger replaces RocksDB's info log writer, which aborts the
// process once the disk is full (see there).
//
// Watch adds an EventListener to the options that makes a failed flush, and
// a compaction that ran out of space, a hard background error (RocksDB
// ignores both without paranoid checks: writes then stall forever, and a
// compaction is retried every second, see bgerror.cc), records what such a
// compaction needs (CompactionNeed), remembers the error RocksDB holds
// (OnBackgroundError) until a recovery clears it
// (OnErrorRecoveryEnd), and turns off RocksDB's own recovery from a full
// disk (OnErrorRecoveryBegin), which waits for the free space of a whole
// write buffer and refuses DB::Resume meanwhile. Resume calls DB::Resume.
// SwitchMemtables is a flush that waits for nothing, which the C API's
// flush options cannot ask for.
//
// bgerror.cc reaches the C++ objects inside the C API's handles
// (storage/internal/rocksabi). NewWatch, InstallLogger, CanResume and
// FamilyLayoutOK check those layouts at run time and refuse when they do
// not hold.
package bgerror

// #cgo CXXFLAGS: -std=c++17 -O2
// #cgo LDFLAGS: -lrocksdb -lstdc++
// #include <stdlib.h>
// #include "bgerror.h"
import "C"

import (
	"errors"
	"unsafe"

	"github.com/linxGnu/grocksdb"

	"github.com/singularity-ng/singularity-edge/storage/internal/rocksabi"
)

// cHandle returns the C pointer inside grocksdb's object p.
func cHandle[T any](p *T) unsafe.Pointer { return rocksabi.Handle(p) }

// Watch remembers the background error of the database opened with the
// options it was installed on.
type Watch struct {
	h unsafe.Pointer
}

// NewWatch installs a background-error listener on o, the database
// options, before the database is opened with them. It returns nil when
// grocksdb's Options layout is not the one this package knows.
func NewWatch(o *grocksdb.Options) *Watch {
	if !rocksabi.OptionsLayoutOK(o) {
		return nil
	}
	return &Watch{h: C.edge_bgerror_watch(cHandle(o))}
}

// Err returns the background error the database holds now, or nil.
func (w *Watch) Err() error {
	if w == nil || w.h == nil {
		return nil
	}
	msg := C.edge_bgerror_get(w.h)
	if msg == nil {
		return nil
	}
	defer C.free(unsafe.Pointer(msg))
	return errors.New(C.GoString(msg))
}

// Count returns how many background errors RocksDB reported since the
// watch was installed (whether cleared since or not).
func (w *Watch) Count() int {
	if w == nil || w.h == nil {
		return 0
	}
	return int(C.edge_bgerror_count(w.h))
}

// Reason says which background work the error held now came from:
// "flush", "compaction", "write", "memtable", "manifest", or "" when none is
// held.
func (w *Watch) Reason() string {
	if w == nil || w.h == nil {
		return ""
	}
	return reasonName(int(C.edge_bgerror_reason(w.h)))
}

// Reasons are the values Reason and CountFor know.
var Reasons = []string{"flush", "compaction", "write", "memtable", "manifest"}

// reasonName maps rocksdb::BackgroundErrorReason (listener.h, 7.8.3).
func reasonName(r int) string {
	switch r {
	case 0, 5: // kFlush, kFlushNoWAL
		return "flush"
	case 1:
		return "compaction"
	case 2:
		return "write"
	case 3:
		return "memtable"
	case 4, 6: // kManifestWrite, kManifestWriteNoWAL
		return "manifest"
	}
	return ""
}

// CountFor returns how many background errors of reason (one of Reasons)
// RocksDB reported since the watch was installed.
func (w *Watch) CountFor(reason string) int {
	if w == nil || w.h == nil {
		return 0
	}
	n := 0
	for r := 0; r <= 6; r++ {
		if reasonName(r) == reason {
			n += int(C.edge_bgerror_count_for(w.h, C.int(r)))
		}
	}
	return n
}

// CompactionNeed returns the bytes the compactions that ran out of space
// (since the last recovery, and not run successfully since) read as
// input: about the free space they need to run again. 0 when none did.
func (w *Watch) CompactionNeed() uint64 {
	if w == nil || w.h == nil {
		return 0
	}
	return uint64(C.edge_bgerror_compaction_need(w.h))
}

// ManualFailures returns how many manual compactions (CompactRange, whose C
// API returns no status) failed since the watch was installed, and the
// last one's error. A manual compaction that runs out of space only fails:
// it stops no writes.
func (w *Watch) ManualFailures() (int, error) {
	if w == nil || w.h == nil {
		return 0, nil
	}
	var last *C.char
	n := int(C.edge_bgerror_manual_failures(w.h, &last))
	if last == nil {
		return n, nil
	}
	defer C.free(unsafe.Pointer(last))
	return n, errors.New(C.GoString(last))
}

// Destroy releases the watch. The listener itself lives as long as the
// database or the options that hold it.
func (w *Watch) Destroy() {
	if w != nil && w.h != nil {
		C.edge_bgerror_watch_destroy(w.h)
		w.h = nil
	}
}

// InstallLogger makes o's database write its info log to path with a
// logger that drops a line it cannot write, renaming the file to path.old
// past maxSize. RocksDB's own logger, once a line fails for lack of space,
// aborts the whole process on the next one (an assertion in its file
// writer that RocksDB 7.8.3 as packaged leaves on), and RocksDB logs an
// error every few seconds while it waits for space. It reports false, and
// leaves o alone, when grocksdb's Options layout is not the one this
// package knows.
func InstallLogger(o *grocksdb.Options, path string, maxSize int64, level grocksdb.InfoLogLevel) bool {
	if !rocksabi.OptionsLayoutOK(o) {
		return false
	}
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	C.edge_set_info_log(cHandle(o), cpath, C.long(maxSize), C.int(level))
	return true
}

// CanResume reports whether Resume may be used on db, the database opened
// in dir: the C++ database inside grocksdb's handle must answer dir as its
// name.
func CanResume(db *grocksdb.DB, dir string) bool {
	h := cHandle(db)
	return h != nil && C.GoString(C.edge_db_name(h)) == dir
}

// Resume runs DB::Resume on db: it clears a recoverable background error
// by flushing every memtable, and answers nil at once when there is no
// error. Only call it on a db for which CanResume is true.
func Resume(db *grocksdb.DB) error {
	msg := C.edge_db_resume(cHandle(db))
	if msg == nil {
		return nil
	}
	defer C.free(unsafe.Pointer(msg))
	return errors.New(C.GoString(msg))
}

// FamilyLayoutOK reports whether the C++ column family handle sits where
// SwitchMemtables looks for it in grocksdb's handle h, of the family name.
func FamilyLayoutOK(h *grocksdb.ColumnFamilyHandle, name string) bool {
	p := cHandle(h)
	return p != nil && C.GoString(C.edge_cf_name(p)) == name
}

// SwitchMemtables flushes the families cfs of db atomically without
// waiting: not for the flush to end, nor, before it, until one more
// immutable memtable would not stall writes, which the C API's flush
// always waits for. The memtables with data are switched, so later writes
// go to a new WAL file; the flush runs when RocksDB gets to it. Only call
// it on a db for which CanResume is true and with handles for which
// FamilyLayoutOK is.
func SwitchMemtables(db *grocksdb.DB, cfs []*grocksdb.ColumnFamilyHandle) error {
	if len(cfs) == 0 {
		return nil
	}
	hs := make([]unsafe.Pointer, len(cfs))
	for i, h := range cfs {
		hs[i] = cHandle(h)
	}
	// hs is Go memory holding C pointers only, which cgo allows.
	msg := C.edge_db_switch_memtables(cHandle(db), &hs[0], C.int(len(hs)))
	if msg == nil {
		return nil
	}
	defer C.free(unsafe.Pointer(msg))
	return errors.New(C.GoString(msg))
}
