package agent

import (
	"fmt"
	"time"

	"go.uber.org/zap"
)

// FaultClockOffsetEnv is a fault-injection knob for the cluster tests: a
// duration ("2h", "-90s") added to the wall clock the store versions its
// writes with. Go reads the wall clock through the vDSO, so libfaketime
// cannot skew one agent process; this is the one place that can. Only the
// store's clock moves (HLC versions, the clock bound, purge ages): gossip,
// TLS and timers keep the real clock, as they would on a Machine whose
// clock is wrong but whose kernel timers run. Never set it in production.
const FaultClockOffsetEnv = "EDGE_FAULT_CLOCK_OFFSET"

// storeClock returns the wall clock for the store: nil (time.Now) unless
// FaultClockOffsetEnv is set, then time.Now shifted by it. A value that is
// not a duration is refused rather than ignored.
func storeClock(getenv func(string) string, logger *zap.Logger) (func() time.Time, error) {
	v := getenv(FaultClockOffsetEnv)
	if v == "" {
		return nil, nil
	}
	off, err := time.ParseDuration(v)
	if err != nil {
		return nil, fmt.Errorf("%s=%q: want a Go duration such as 2h or -90s: %w", FaultClockOffsetEnv, v, err)
	}
	logger.Warn("fault injection: the store's clock is offset from the wall clock (tests only)",
		zap.String("env", FaultClockOffsetEnv), zap.Duration("offset", off))
	return func() time.Time { return time.Now().Add(off) }, nil
}
