package agent

import (
	"context"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"

	"go.uber.org/zap"
)

// gcPercentFor returns the GOGC value that lets the heap grow by about
// headroom bytes past live before the next collection: 100 (the runtime's
// default) for a small heap, less for a large one, never below 10.
//
// The default pacing lets a heap grow to twice its live size. An agent
// holding a million backends has a live heap of hundreds of MiB that
// hardly changes at rest and little garbage (health checks, admin reads):
// doubling it doubles the resident memory and buys no speed. Sizing
// the headroom in bytes keeps the collections as rare as the garbage rate
// allows, at a cost in CPU proportional to that rate, not to the live size.
func gcPercentFor(live, headroom uint64) int {
	if live == 0 || headroom == 0 {
		return 100
	}
	return int(max(10, min(100, headroom*100/live)))
}

// tuneGC sets the collector's target from the live heap after every
// collection until ctx ends: the target follows the live heap as it grows
// at start (the routing table, then the certificate index) instead of
// lagging it, which let the heap reach half again its live size. It does
// nothing when headroom is 0 or GOGC is set in the environment (the
// operator's choice wins).
func tuneGC(ctx context.Context, headroom uint64, log *zap.Logger) {
	if headroom == 0 || os.Getenv("GOGC") != "" {
		return
	}
	sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	var mu sync.Mutex // the first call and the finalizer goroutine
	last := 0
	retune := func() bool {
		if ctx.Err() != nil {
			return false
		}
		mu.Lock()
		defer mu.Unlock()
		metrics.Read(sample)
		if sample[0].Value.Kind() == metrics.KindUint64 {
			live := sample[0].Value.Uint64()
			if pct := gcPercentFor(live, headroom); pct != last {
				debug.SetGCPercent(pct)
				log.Debug("collector target set from the live heap", zap.Uint64("live_bytes", live), zap.Int("gogc", pct))
				last = pct
			}
		}
		return true
	}
	retune()
	afterEachGC(retune)
}

// gcSentinel is an object nothing references: its finalizer runs after
// the collection that finds it. It holds a pointer so that it is not a
// tiny allocation (whose finalizers may never run).
type gcSentinel struct{ _ *byte }

// afterEachGC calls f after every collection until f returns false.
func afterEachGC(f func() bool) {
	runtime.SetFinalizer(&gcSentinel{}, func(*gcSentinel) {
		if f() {
			afterEachGC(f)
		}
	})
}
