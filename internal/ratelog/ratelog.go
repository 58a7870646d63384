// Package ratelog aggregates bursts of similar log lines into one line with
// a count. When a thousand backends of a pool fail within a second, the
// operator needs one line saying so, not a thousand lines that push
// everything else out of the log.
//
// Events are grouped by a key (say, "backend unhealthy" and the pool). The
// first event of a burst opens it; after Delay one line is written with
// the number of events so far and a few example subjects. Events that keep
// coming are written the same way once per Window; a key that stays quiet
// for a Window is forgotten, and its next event opens a new burst.
package ratelog

import (
	"context"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Config configures a Logger.
type Config struct {
	// Delay is how long the first event of a burst waits for more of the
	// same key before its line is written.
	Delay time.Duration
	// Window is the least time between two lines of one key.
	Window time.Duration
	// Examples is how many subjects a line names at most.
	Examples int
	// Now is the clock; nil = time.Now.
	Now func() time.Time
}

// DefaultConfig returns the configuration used for zero fields.
func DefaultConfig() Config {
	return Config{Delay: time.Second, Window: 10 * time.Second, Examples: 5, Now: time.Now}
}

// Logger aggregates events by key. It is safe for concurrent use.
type Logger struct {
	cfg Config
	log *zap.Logger

	mu     sync.Mutex
	bursts map[string]*burst
}

type burst struct {
	level    zapcore.Level
	msg      string
	fields   []zap.Field
	count    int
	total    int
	examples []string
	lastErr  string
	first    time.Time
	emitAt   time.Time
}

// New returns a Logger writing to log.
func New(cfg Config, log *zap.Logger) *Logger {
	def := DefaultConfig()
	if cfg.Delay <= 0 {
		cfg.Delay = def.Delay
	}
	if cfg.Window <= 0 {
		cfg.Window = def.Window
	}
	if cfg.Examples <= 0 {
		cfg.Examples = def.Examples
	}
	if cfg.Now == nil {
		cfg.Now = def.Now
	}
	return &Logger{cfg: cfg, log: log, bursts: make(map[string]*burst)}
}

// Event records one event. key groups events into bursts; msg, level and
// fields are those of the burst's first event and are written on each of
// its lines; subject (a backend id, say) is named among the examples
// (each once); err,
// when not nil, is reported as the burst's last error.
func (l *Logger) Event(level zapcore.Level, key, msg, subject string, err error, fields ...zap.Field) {
	now := l.cfg.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.bursts[key]
	if b == nil {
		b = &burst{level: level, msg: msg, fields: fields, first: now, emitAt: now.Add(l.cfg.Delay)}
		l.bursts[key] = b
	}
	if b.count == 0 {
		b.first = now
	}
	b.count++
	b.total++
	// One backend failing a thousand times is one example, not five
	// copies of it.
	if len(b.examples) < l.cfg.Examples && !slices.Contains(b.examples, subject) {
		b.examples = append(b.examples, subject)
	}
	if err != nil {
		b.lastErr = err.Error()
	}
}

// Flush writes the lines that are due: bursts whose delay or window ended
// with events not yet written. With all set it writes every pending line
// (on shutdown).
func (l *Logger) Flush(all bool) {
	now := l.cfg.Now()
	type line struct {
		b      burst
		fields []zap.Field
	}
	var out []line
	l.mu.Lock()
	for key, b := range l.bursts {
		if !all && now.Before(b.emitAt) {
			continue
		}
		if b.count == 0 {
			// A whole window without events: the burst is over.
			delete(l.bursts, key)
			continue
		}
		fields := make([]zap.Field, 0, len(b.fields)+5)
		fields = append(fields, b.fields...)
		fields = append(fields, zap.Int("count", b.count), zap.Strings("examples", b.examples),
			zap.Duration("over", now.Sub(b.first).Round(time.Millisecond)))
		if b.total > b.count {
			fields = append(fields, zap.Int("burst_total", b.total))
		}
		if b.lastErr != "" {
			fields = append(fields, zap.String("last_error", b.lastErr))
		}
		out = append(out, line{b: *b, fields: fields})
		b.count, b.examples, b.lastErr = 0, nil, ""
		b.emitAt = now.Add(l.cfg.Window)
	}
	l.mu.Unlock()
	for _, ln := range out {
		if ce := l.log.Check(ln.b.level, ln.b.msg); ce != nil {
			ce.Write(ln.fields...)
		}
	}
}

// Pending is the number of keys with an open burst.
func (l *Logger) Pending() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.bursts)
}

// Run flushes due lines until ctx ends, then writes what is pending.
func (l *Logger) Run(ctx context.Context) {
	t := time.NewTicker(min(l.cfg.Delay, l.cfg.Window) / 2)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			l.Flush(true)
			return
		case <-t.C:
			l.Flush(false)
		}
	}
}
