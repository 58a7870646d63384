package ratelog

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time      { return c.t }
func (c *fakeClock) add(d time.Duration) { c.t = c.t.Add(d) }
func newTest() (*Logger, *fakeClock, *observer.ObservedLogs) {
	core, logs := observer.New(zapcore.DebugLevel)
	clk := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	l := New(Config{Delay: time.Second, Window: 10 * time.Second, Examples: 3, Now: clk.now}, zap.New(core))
	return l, clk, logs
}

func countOf(t *testing.T, e observer.LoggedEntry) int64 {
	t.Helper()
	v, ok := e.ContextMap()["count"].(int64)
	if !ok {
		t.Fatalf("line %q has no count: %v", e.Message, e.ContextMap())
	}
	return v
}

func TestBurstIsOneLinePerKeyWithCounts(t *testing.T) {
	l, clk, logs := newTest()
	for i := range 1000 {
		pool := fmt.Sprintf("pool-%d", i%2)
		l.Event(zapcore.WarnLevel, "down/"+pool, "backend unhealthy", fmt.Sprintf("b%d", i), errors.New("connection refused"), zap.String("pool", pool))
	}
	l.Flush(false)
	if n := logs.Len(); n != 0 {
		t.Fatalf("%d lines before the delay ended", n)
	}
	clk.add(time.Second)
	l.Flush(false)
	entries := logs.TakeAll()
	if len(entries) != 2 {
		t.Fatalf("got %d lines for a burst over two pools, want 2", len(entries))
	}
	for _, e := range entries {
		if got := countOf(t, e); got != 500 {
			t.Errorf("count = %d, want 500", got)
		}
		ctx := e.ContextMap()
		if ex := ctx["examples"].([]any); len(ex) != 3 {
			t.Errorf("examples = %v, want 3", ex)
		}
		if ctx["last_error"] != "connection refused" || e.Level != zapcore.WarnLevel {
			t.Errorf("line %v at %s", ctx, e.Level)
		}
	}
}

func TestSustainedBurstWritesOncePerWindow(t *testing.T) {
	l, clk, logs := newTest()
	// One event every 100 ms for 30 s.
	for i := range 300 {
		l.Event(zapcore.WarnLevel, "k", "backend unhealthy", fmt.Sprint(i), nil)
		clk.add(100 * time.Millisecond)
		l.Flush(false)
	}
	clk.add(10 * time.Second)
	l.Flush(false)
	entries := logs.TakeAll()
	// The first line after the delay, then one per 10 s window.
	if len(entries) < 3 || len(entries) > 5 {
		t.Fatalf("%d lines for a 30 s burst, want one per window", len(entries))
	}
	var sum int64
	for _, e := range entries {
		sum += countOf(t, e)
	}
	if sum != 300 {
		t.Errorf("counts add up to %d, want 300", sum)
	}
	// A quiet window closes the burst; the next event opens a new one.
	clk.add(10 * time.Second)
	l.Flush(false)
	if p := l.Pending(); p != 0 {
		t.Errorf("%d bursts still open after a quiet window", p)
	}
}

func TestFlushAllWritesPending(t *testing.T) {
	l, _, logs := newTest()
	l.Event(zapcore.InfoLevel, "k", "backend healthy", "b1", nil)
	l.Flush(true)
	if logs.Len() != 1 || countOf(t, logs.All()[0]) != 1 {
		t.Fatalf("lines = %v", logs.All())
	}
}

func TestExamplesNameEachSubjectOnce(t *testing.T) {
	l, _, logs := newTest()
	for range 10 {
		l.Event(zapcore.WarnLevel, "k", "requests failed", "10.0.0.1:80", nil)
	}
	l.Event(zapcore.WarnLevel, "k", "requests failed", "10.0.0.2:80", nil)
	l.Flush(true)
	entries := logs.TakeAll()
	if len(entries) != 1 || countOf(t, entries[0]) != 11 {
		t.Fatalf("lines %v", entries)
	}
	if ex := entries[0].ContextMap()["examples"].([]any); len(ex) != 2 {
		t.Fatalf("examples = %v, want each address once", ex)
	}
}
