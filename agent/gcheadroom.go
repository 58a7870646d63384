package agent

import (
	"context"
	"os"
	"runtime/debug"
	"runtime/metrics"
	"time"

	"go.uber.org/zap"
)

// gcHeadroomInterval is how often the collector's target is recomputed
// from the live heap.
const gcHeadroomInterval = 30 * time.Second

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

// tuneGC sets the collector's target from the live heap now and every
// gcHeadroomInterval until ctx ends. It does nothing when headroom is 0 or
// GOGC is set in the environment (the operator's choice wins).
func tuneGC(ctx context.Context, headroom uint64, log *zap.Logger) {
	if headroom == 0 || os.Getenv("GOGC") != "" {
		return
	}
	sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	last := 0
	t := time.NewTicker(gcHeadroomInterval)
	defer t.Stop()
	for {
		metrics.Read(sample)
		if sample[0].Value.Kind() == metrics.KindUint64 {
			live := sample[0].Value.Uint64()
			if pct := gcPercentFor(live, headroom); pct != last {
				debug.SetGCPercent(pct)
				log.Debug("collector target set from the live heap", zap.Uint64("live_bytes", live), zap.Int("gogc", pct))
				last = pct
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
