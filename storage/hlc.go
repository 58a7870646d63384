package storage

import (
	"fmt"
	"sync"
	"time"
)

// HLC layout: the upper 48 bits are milliseconds since the Unix epoch (good
// until the year 10889), the lower 16 bits a logical counter that orders
// events within one millisecond.
const (
	hlcLogicalBits = 16
	hlcLogicalMask = 1<<hlcLogicalBits - 1
)

// NewHLC builds a timestamp from wall milliseconds and a logical counter.
func NewHLC(ms int64, logical uint16) HLC {
	return HLC(uint64(ms)<<hlcLogicalBits | uint64(logical))
}

// Millis returns the physical part in milliseconds since the Unix epoch.
func (h HLC) Millis() int64 { return int64(uint64(h) >> hlcLogicalBits) }

// Logical returns the logical counter.
func (h HLC) Logical() uint16 { return uint16(uint64(h) & hlcLogicalMask) }

// Time returns the physical part as a time.
func (h HLC) Time() time.Time { return time.UnixMilli(h.Millis()).UTC() }

// String formats h as "<RFC3339 ms>/<logical>".
func (h HLC) String() string {
	return fmt.Sprintf("%s/%d", h.Time().Format("2006-01-02T15:04:05.000Z07:00"), h.Logical())
}

// Clock is a hybrid logical clock. Now never returns a value lower than or
// equal to one it returned or witnessed before, even when the wall clock
// steps back. Safe for concurrent use.
type Clock struct {
	mu        sync.Mutex
	wall      func() time.Time
	maxOffset time.Duration
	last      HLC
	skew      uint64 // remote timestamps beyond maxOffset seen by Update
}

// NewClock returns a clock reading wall (time.Now when nil). Remote
// timestamps more than maxOffset ahead of wall are still accepted by Update
// but counted and reported as skew.
func NewClock(wall func() time.Time, maxOffset time.Duration) *Clock {
	if wall == nil {
		wall = time.Now
	}
	return &Clock{wall: wall, maxOffset: maxOffset}
}

// ClockSkewError reports a remote timestamp further ahead of the local wall
// clock than the configured maximum offset.
type ClockSkewError struct {
	Remote HLC
	Ahead  time.Duration
	Max    time.Duration
}

func (e *ClockSkewError) Error() string {
	return fmt.Sprintf("storage: remote clock %s is %s ahead of local wall clock (max offset %s)", e.Remote, e.Ahead, e.Max)
}

// Now returns a new timestamp greater than every timestamp issued or
// witnessed before.
func (c *Clock) Now() HLC {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.last = c.next(c.last, NewHLC(c.wall().UnixMilli(), 0))
	return c.last
}

// next returns the smallest timestamp greater than last that is not below
// wall. When the logical counter would overflow, the physical part moves one
// millisecond ahead of the wall clock; the wall clock catches up with it.
func (c *Clock) next(last, wall HLC) HLC {
	if wall > last {
		return wall
	}
	if last.Logical() == hlcLogicalMask {
		return NewHLC(last.Millis()+1, 0)
	}
	return last + 1
}

// Update witnesses a remote timestamp so that later local timestamps
// follow it, but never past the bound: the clock stays within the maximum
// offset of the local wall clock, so one peer with a wrong date cannot drag
// every version in the cluster forward. A remote timestamp beyond the bound
// is reported with a *ClockSkewError and counted (Skew); the caller still
// stores the data (convergence matters more), and a local write to a row
// that carries it still wins, because commits version a row above the
// version they replace rather than by the clock alone.
func (c *Clock) Update(remote HLC) (HLC, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	wallNow := c.wall()
	var err error
	bound := c.bound(wallNow)
	if ahead := time.Duration(remote.Millis()-wallNow.UnixMilli()) * time.Millisecond; c.maxOffset > 0 && ahead > c.maxOffset {
		c.skew++
		err = &ClockSkewError{Remote: remote, Ahead: ahead, Max: c.maxOffset}
	}
	if remote > bound {
		remote = bound
	}
	if remote > c.last {
		c.last = remote
	}
	c.last = c.next(c.last, NewHLC(wallNow.UnixMilli(), 0))
	return c.last, err
}

// bound is the highest timestamp the clock may reach at wall time now.
func (c *Clock) bound(now time.Time) HLC {
	if c.maxOffset <= 0 {
		return HLC(^uint64(0))
	}
	return NewHLC(now.Add(c.maxOffset).UnixMilli(), 0)
}

// Witness raises the clock to at least h, within the bound and without
// counting skew. Open uses it with the reading stored by the last commit.
func (c *Clock) Witness(h HLC) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if b := c.bound(c.wall()); h > b {
		h = b
	}
	if h > c.last {
		c.last = h
	}
}

// Last returns the highest timestamp issued or witnessed.
func (c *Clock) Last() HLC {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.last
}

// Skew returns how many remote timestamps exceeded the maximum offset.
func (c *Clock) Skew() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.skew
}
