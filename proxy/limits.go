package proxy

import (
	"math"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// addrLimits counts the backend exchanges in flight per client address,
// over all of its connections. Each address has an atomic counter, so the
// request path costs a lock-free map read and two atomic adds even when
// every connection comes from one address (a load test, a NAT gateway);
// the janitor removes the counters of addresses with nothing in flight.
type addrLimits struct {
	m sync.Map // netip.Addr -> *atomic.Int64
}

// swept marks a counter the janitor is removing: an acquire that lands on
// it starts over with a fresh one.
const swept = math.MinInt64 / 2

// acquire takes one of max slots of a; false when all are taken.
func (l *addrLimits) acquire(a netip.Addr, max int) bool {
	for {
		v, ok := l.m.Load(a)
		if !ok {
			v, _ = l.m.LoadOrStore(a, new(atomic.Int64))
		}
		c := v.(*atomic.Int64)
		n := c.Add(1)
		if n < 0 {
			runtime.Gosched() // the janitor is deleting it
			continue
		}
		if n > int64(max) {
			c.Add(-1)
			return false
		}
		return true
	}
}

// release gives back a slot taken by acquire. A counter above zero is
// never swept, so this is the one acquire incremented.
func (l *addrLimits) release(a netip.Addr) {
	if v, ok := l.m.Load(a); ok {
		v.(*atomic.Int64).Add(-1)
	}
}

// sweep removes the counters of addresses with no exchange in flight.
func (l *addrLimits) sweep() {
	l.m.Range(func(k, v any) bool {
		if v.(*atomic.Int64).CompareAndSwap(0, swept) {
			l.m.Delete(k)
		}
		return true
	})
}

// acquireExchange takes a backend exchange slot for a client; trusted
// proxies are not counted (their address carries many clients). release
// says whether releaseExchange must be called.
func (s *Server) acquireExchange(info *connInfo) (ok, release bool) {
	if info.trusted {
		return true, false
	}
	a := info.client.Addr().Unmap()
	if !s.exchanges.acquire(a, s.cfg.MaxBackendConnsPerClientAddr) {
		s.metrics.exchangesRefused.Inc()
		return false, false
	}
	return true, true
}

func (s *Server) releaseExchange(info *connInfo) {
	s.exchanges.release(info.client.Addr().Unmap())
}

// rateClock tracks one body transfer for the MinBodyRate bound. Only the
// time spent waiting on the client counts (blocked in a read of its body
// or a write of its response): a backend that produces a response slowly,
// or reads a request body slowly, is not the client's doing (Kestrel's
// MinResponseDataRate counts the same way). The client must keep
// blocked <= BodyRateGrace + n/MinBodyRate; the bound becomes the
// deadline of each read or write, so it costs no timer of its own.
type rateClock struct {
	n       int64         // bytes moved so far
	blocked time.Duration // time spent waiting on the client
}

// waited adds the time an operation started at start waited on the
// client, and returns now.
func (rc *rateClock) waited(start time.Time) time.Time {
	now := time.Now()
	rc.blocked += now.Sub(start)
	return now
}

// rateDeadline is the deadline of a read or write starting at now, when
// n bytes will have moved once it completes: the earlier of the pause
// bound (now + idle) and the moment the time blocked on the client would
// exceed what MinBodyRate allows for n bytes. slack is how much earlier
// than that a deadline already set may stay (deadlines are moved
// coarsely, see needDeadline); it is kept small against the rate bound so
// that a client at the minimum rate is not cut early by more than an
// eighth of the grace period.
func (s *Server) rateDeadline(rc *rateClock, n int64, now time.Time, idle time.Duration) (time.Time, time.Duration) {
	d, slack := now.Add(idle), idle/8
	if rate := s.cfg.MinBodyRate; rate > 0 {
		allowed := s.cfg.BodyRateGrace.Seconds() + float64(n)/float64(rate) - rc.blocked.Seconds()
		if allowed < idle.Seconds() {
			d, slack = now.Add(time.Duration(allowed*float64(time.Second))), min(slack, s.cfg.BodyRateGrace/8)
		}
	}
	return d, slack
}

// moveDeadline reports whether a deadline set at cur must move to want.
func moveDeadline(cur, want time.Time, slack time.Duration) bool {
	return cur.After(want) || want.Sub(cur) > slack
}
