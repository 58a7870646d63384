package bench

import (
	"runtime"
	"syscall"
	"time"

	"github.com/linxGnu/grocksdb"
)

// meter accumulates the wall time and the calling thread's CPU time of
// timed sections, and how many operations they did. The machine is shared
// and noisy, so benchmarks alternate short store and anchor sections (both
// sides see the same noise) and also report foreground CPU per operation,
// which other processes do not inflate. Foreground CPU is this thread's
// only: RocksDB's background flushes and compactions and Go's GC workers
// run on other threads and are not in it.
type meter struct {
	wall time.Duration
	cpu  time.Duration
	ops  int
}

// rusageThread is Linux's RUSAGE_THREAD (the syscall package lacks it).
const rusageThread = 1

func threadCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(rusageThread, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// run times f, which does ops operations, on one locked OS thread so that
// the thread's CPU time is f's (cgo calls run on the calling thread).
func (m *meter) run(ops int, f func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	c0, t0 := threadCPU(), time.Now()
	err := f()
	m.wall += time.Since(t0)
	m.cpu += threadCPU() - c0
	m.ops += ops
	return err
}

// rate is operations per wall-clock second.
func (m *meter) rate() float64 { return perSecond(m.ops, m.wall) }

// cpuPerOp is foreground CPU microseconds per operation.
func (m *meter) cpuPerOp() float64 {
	if m.ops == 0 {
		return 0
	}
	return float64(m.cpu) / float64(time.Microsecond) / float64(m.ops)
}

// countersOff returns f run with RocksDB's perf counters off on its
// thread, as the store's writes run (storage/perflevel.h), so that a raw
// write anchor does the same RocksDB work as the store and the ratio
// measures what the store adds, not a counter it switches off.
func countersOff(f func() error) func() error {
	return func() error {
		runtime.LockOSThread() // the level belongs to the thread
		defer runtime.UnlockOSThread()
		grocksdb.SetPerfLevel(grocksdb.KDisable)
		defer grocksdb.SetPerfLevel(grocksdb.KEnableCount)
		return f()
	}
}
