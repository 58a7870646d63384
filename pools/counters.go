package pools

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/singularity-ng/singularity-edge/internal/ratelog"
	"github.com/singularity-ng/singularity-edge/storage"
)

// latencyShift sets the EWMA smoothing factor to 1/2^latencyShift: each new
// sample moves the average an eighth of the way towards it.
const latencyShift = 3

// backendState is the live, per-node state of one backend: counters and
// health. It is keyed by backend id and outlives Tables, so a configuration
// change (which rebuilds the Table) keeps counters and health. Everything
// read on the request path is an atomic.
type backendState struct {
	conns    atomic.Int64
	requests atomic.Int64
	failures atomic.Int64
	bytesIn  atomic.Int64
	bytesOut atomic.Int64
	// latencyEWMA is an exponentially weighted moving average in
	// nanoseconds; 0 until the first sample.
	latencyEWMA atomic.Int64

	// ejectedUntil is the Unix time in nanoseconds until which passive
	// checks keep the backend out of rotation; 0 when not ejected.
	ejectedUntil atomic.Int64
	// status5xx counts 5xx answers (within failures, which also counts
	// connection errors); retries counts requests sent to this backend
	// after another backend failed them.
	status5xx atomic.Int64
	retries   atomic.Int64
	// downSince is the Unix time in nanoseconds when active checks last
	// marked the backend unhealthy; 0 while healthy or when unknown (a
	// verdict seeded from a stored observation).
	downSince atomic.Int64

	// The 4-byte fields together, so that they pack into 32 bytes (a
	// million states: every 8 bytes is 8 MB). Ejections and checks are
	// 32-bit: one per check interval at most, they would take a century
	// to wrap.
	//
	// healthy is the active-check verdict.
	healthy atomic.Bool
	// queued: the backend is in its Manager's activity log, waiting for
	// the next persist (see Backend.noteActivity).
	queued       atomic.Bool
	consecFails  atomic.Int32
	ejections    atomic.Uint32
	checksPassed atomic.Uint32
	checksFailed atomic.Uint32
	// Guarded by mu (below), like the rest of the active-check
	// bookkeeping: consecutive passing and failing checks, and whether a
	// new backend is held back until its first passing check.
	passes int32
	fails  int32
	held   bool

	// pool is the live state of the backend's pool, whose totals the
	// request path keeps beside the backend's; nil outside a Manager.
	pool atomic.Pointer[poolState]
	// hist is the backend's own latency histogram when its pool has
	// per-backend metrics; nil otherwise.
	hist atomic.Pointer[backendHist]

	// What the Manager last persisted of this backend, guarded by its
	// persistMu: a hash of the observation without the check time, that
	// time, and when it was written (Unix ns; 0 = never).
	persistSum   uint64
	persistCheck int64
	persistAt    int64

	// mu guards passes, fails, held and the fields below; only health
	// checkers and readers of BackendState take it, never the request
	// path.
	mu        sync.Mutex
	lastCheck int64 // Unix ns of the last check; 0 = none
	lastError string
	addr      string // address the health verdict was made for
}

func newBackendState(addr string, held bool) *backendState {
	s := &backendState{}
	s.init(addr, held)
	return s
}

// init sets up a zero state, for one allocated in a slab (initialTable:
// one allocation per pool instead of one per backend).
func (s *backendState) init(addr string, held bool) {
	s.addr, s.held = addr, held
	s.healthy.Store(!held)
}

// seed restores what this node last observed of the backend (before a
// restart): health and cumulative totals. Current connections are not
// restored: they ended with the old process.
func (s *backendState) seed(o storage.Observation) {
	s.healthy.Store(o.Healthy)
	s.requests.Store(o.TotalRequests)
	s.failures.Store(o.TotalFailures)
	s.bytesIn.Store(o.BytesIn)
	s.bytesOut.Store(o.BytesOut)
	s.latencyEWMA.Store(int64(o.LatencyAvg))
	s.mu.Lock()
	s.held = false
	s.lastCheck = unixNano(o.LastCheck)
	s.lastError = o.LastError
	s.mu.Unlock()
}

// restore is seed for the first table's compact seeds.
func (s *backendState) restore(sd *seed) {
	s.healthy.Store(sd.healthy)
	s.requests.Store(sd.requests)
	s.failures.Store(sd.failures)
	s.bytesIn.Store(sd.bytesIn)
	s.bytesOut.Store(sd.bytesOut)
	s.latencyEWMA.Store(int64(sd.latency))
	s.held = false
	s.lastCheck = sd.lastCheck
	s.lastError = sd.lastError
	s.persistSum, s.persistCheck, s.persistAt = sd.sum, sd.lastCheck, sd.at
}

// resetHealth forgets the health verdict, used when a backend's address
// changes: the old verdict was about another server.
func (s *backendState) resetHealth(addr string, held bool) {
	s.mu.Lock()
	s.addr = addr
	s.passes, s.fails = 0, 0
	s.held = held
	s.lastError = ""
	s.mu.Unlock()
	s.healthy.Store(!held)
	s.ejectedUntil.Store(0)
	s.consecFails.Store(0)
}

// ejected reports whether passive checks currently keep the backend out.
// It reads the clock only while an ejection is pending.
func (s *backendState) ejected() bool {
	until := s.ejectedUntil.Load()
	if until == 0 {
		return false
	}
	if time.Now().UnixNano() < until {
		return true
	}
	// Cooldown over: clear it so later picks skip the clock read.
	s.ejectedUntil.CompareAndSwap(until, 0)
	return false
}

// available reports whether new requests may go to the backend on health
// grounds (draining is configuration and checked by the caller).
func (s *backendState) available() bool {
	return s.healthy.Load() && !s.ejected()
}

func (s *backendState) observeLatency(d time.Duration) {
	sample := int64(d)
	for {
		old := s.latencyEWMA.Load()
		next := sample
		if old != 0 {
			next = old + (sample-old)>>latencyShift
		}
		if s.latencyEWMA.CompareAndSwap(old, next) {
			return
		}
	}
}

// Backend is one upstream server in a Table. The configuration fields are
// read-only; live counters and health are shared with every other Table
// built by the same Manager for the same backend id.
type Backend struct {
	ID        string
	PoolName  string
	Host      string
	Port      int
	Addr      string // host:port, ready for net.Dial
	Scheme    string // "http" or "https"
	Region    string
	Weight    int
	SSLVerify bool
	Draining  bool
	Metadata  map[string]string

	live        *backendState
	hc          *healthConfig // the pool's: passive-check thresholds
	stickyValue string
	hashSeed    uint64 // consistent-hash pools only
	tls         *BackendTLS
}

// Result is the outcome of one request to a backend, reported by Attempt.End.
type Result struct {
	// Status is the HTTP status from the backend; 0 when there was none
	// (connection error, or a non-HTTP passthrough connection).
	Status int
	// Err is a failure talking to the backend (dial, TLS, reset, timeout).
	// Leave it nil when the client gave up: context.Canceled is not held
	// against the backend.
	Err      error
	BytesIn  int64 // bytes received from the backend
	BytesOut int64 // bytes sent to the backend
	// Latency of the attempt; 0 = measured from Begin.
	Latency time.Duration
}

// Attempt is one request in flight to a backend. End must be called exactly
// once; further calls are ignored. An Attempt is used by one goroutine.
type Attempt struct {
	b     *Backend
	start time.Time
	ended bool
}

// Begin counts a request and a current connection to b. Call End on the
// returned Attempt when the request is over.
func (b *Backend) Begin() *Attempt {
	// Kept small enough to inline, so that the Attempt can live on the
	// caller's stack when it does not escape there.
	return &Attempt{b: b, start: b.begin()}
}

func (b *Backend) begin() time.Time {
	b.live.conns.Add(1)
	b.live.requests.Add(1)
	if ps := b.live.pool.Load(); ps != nil {
		ps.conns.Add(1)
		ps.requests.Add(1)
		b.noteActivity(ps)
	}
	return time.Now()
}

// noteActivity queues b for the next persist of its Manager's
// observations, after something that can change its observation happened
// (a request began or ended, a check ran): persist then reads only the
// backends with activity, not every backend. A backend is queued once
// until persist takes the queue; persist clears the flag before it reads
// the state, so activity after that read queues it again. ps is the
// state's pool (nil outside a Manager: nothing persists).
func (b *Backend) noteActivity(ps *poolState) {
	s := b.live
	if ps == nil || ps.activity == nil || s.queued.Load() {
		return
	}
	if s.queued.CompareAndSwap(false, true) {
		ps.activity.add(b)
	}
}

// End records the outcome: it releases the current connection, adds bytes
// and latency, and feeds passive health. MaxFails consecutive failures (a
// connection error or a 5xx) eject the backend for the pool's cooldown; any
// success resets the streak.
func (a *Attempt) End(r Result) {
	if a == nil || a.ended {
		return
	}
	a.ended = true
	b := a.b
	s := b.live
	ps := s.pool.Load()
	s.conns.Add(-1)
	if r.BytesIn != 0 {
		s.bytesIn.Add(r.BytesIn)
	}
	if r.BytesOut != 0 {
		s.bytesOut.Add(r.BytesOut)
	}
	lat := r.Latency
	if lat <= 0 {
		lat = time.Since(a.start)
	}
	s.observeLatency(lat)
	if ps != nil {
		ps.conns.Add(-1)
		if r.BytesIn != 0 {
			ps.bytesIn.Add(r.BytesIn)
		}
		if r.BytesOut != 0 {
			ps.bytesOut.Add(r.BytesOut)
		}
		if ps.latency != nil {
			ps.latency.Observe(lat.Seconds())
		}
	}
	if h := s.hist.Load(); h != nil {
		h.o.Observe(lat.Seconds())
	}

	if r.Status >= 500 {
		s.status5xx.Add(1)
	}
	switch outcomeOf(r) {
	case outcomeFailure:
		s.failures.Add(1)
		if ps != nil {
			ps.failures.Add(1)
		}
		if mf := b.hc.MaxFails; mf > 0 && s.consecFails.Add(1) >= int32(mf) {
			s.consecFails.Store(0)
			s.ejectedUntil.Store(time.Now().Add(b.hc.Cooldown).UnixNano())
			s.ejections.Add(1)
			if ps != nil {
				ps.ejections.Add(1)
				if ps.events != nil {
					b.logEjection(ps.events, r)
				}
			}
		}
	case outcomeSuccess:
		if s.consecFails.Load() != 0 {
			s.consecFails.Store(0)
		}
	}
	b.noteActivity(ps)
}

// logEjection reports a passive ejection at warn level, aggregated per
// pool: a flood of ejections is one line per burst with a count, naming a
// few backends as "id@address" and the last failure.
func (b *Backend) logEjection(events *ratelog.Logger, r Result) {
	err := r.Err
	if err == nil {
		err = fmt.Errorf("HTTP status %d", r.Status)
	}
	events.Event(zapcore.WarnLevel, "eject\x00"+b.PoolName, "backend ejected by passive checks", b.ID+"@"+b.Addr, err,
		zap.String("pool", b.PoolName), zap.Int("consecutive_failures", b.hc.MaxFails), zap.Duration("cooldown", b.hc.Cooldown))
}

type outcome uint8

const (
	outcomeSuccess outcome = iota
	outcomeFailure
	// outcomeNeutral: the client gave up; says nothing about the backend.
	outcomeNeutral
)

func outcomeOf(r Result) outcome {
	switch {
	case r.Status >= 500:
		return outcomeFailure
	case r.Err == nil:
		return outcomeSuccess
	case errors.Is(r.Err, context.Canceled):
		return outcomeNeutral
	default:
		return outcomeFailure
	}
}

// NoteRetry counts a request sent to b after another backend failed it.
func (b *Backend) NoteRetry() { b.live.retries.Add(1) }

// Healthy reports the active health-check verdict.
func (b *Backend) Healthy() bool { return b.live.healthy.Load() }

// Ejected reports whether passive checks currently keep b out of rotation.
func (b *Backend) Ejected() bool { return b.live.ejected() }

// Available reports whether Pick may choose b for a new request: healthy,
// not ejected, not draining.
func (b *Backend) Available() bool { return !b.Draining && b.live.available() }

// CurrentConnections is the number of requests in flight to b.
func (b *Backend) CurrentConnections() int64 { return b.live.conns.Load() }

// StickyValue is b's signed sticky-cookie value for its pool.
func (b *Backend) StickyValue() string { return b.stickyValue }

// BackendState is a point-in-time view of one backend for the admin API and
// the dashboard.
type BackendState struct {
	ID                 string    `json:"id"`
	PoolName           string    `json:"pool_name"`
	Addr               string    `json:"addr"`
	Scheme             string    `json:"scheme"`
	Region             string    `json:"region,omitempty"`
	Weight             int       `json:"weight"`
	Healthy            bool      `json:"healthy"` // active checks
	Ejected            bool      `json:"ejected"` // passive checks
	EjectedUntil       time.Time `json:"ejected_until,omitzero"`
	Draining           bool      `json:"draining"`
	Available          bool      `json:"available"` // Pick may choose it
	CurrentConnections int64     `json:"current_connections"`
	TotalRequests      int64     `json:"total_requests"`
	TotalFailures      int64     `json:"total_failures"`
	Status5xx          int64     `json:"status_5xx"`
	Retries            int64     `json:"retries"`
	// DownSince is when active checks marked the backend unhealthy (zero
	// while healthy, or when this node has not seen the transition).
	DownSince    time.Time     `json:"down_since,omitzero"`
	BytesIn      int64         `json:"bytes_in"`
	BytesOut     int64         `json:"bytes_out"`
	LatencyAvg   time.Duration `json:"latency_avg"`
	Ejections    int64         `json:"ejections"`
	ChecksPassed int64         `json:"checks_passed"`
	ChecksFailed int64         `json:"checks_failed"`
	LastCheck    time.Time     `json:"last_check,omitzero"`
	LastError    string        `json:"last_error,omitempty"`
}

// State returns a snapshot of b's configuration and live state.
func (b *Backend) State() BackendState {
	s := b.live
	st := BackendState{
		ID:                 b.ID,
		PoolName:           b.PoolName,
		Addr:               b.Addr,
		Scheme:             b.Scheme,
		Region:             b.Region,
		Weight:             b.Weight,
		Healthy:            s.healthy.Load(),
		Ejected:            s.ejected(),
		Draining:           b.Draining,
		CurrentConnections: s.conns.Load(),
		TotalRequests:      s.requests.Load(),
		TotalFailures:      s.failures.Load(),
		Status5xx:          s.status5xx.Load(),
		Retries:            s.retries.Load(),
		BytesIn:            s.bytesIn.Load(),
		BytesOut:           s.bytesOut.Load(),
		LatencyAvg:         time.Duration(s.latencyEWMA.Load()),
		Ejections:          int64(s.ejections.Load()),
		ChecksPassed:       int64(s.checksPassed.Load()),
		ChecksFailed:       int64(s.checksFailed.Load()),
	}
	if ds := s.downSince.Load(); ds != 0 && !st.Healthy {
		st.DownSince = time.Unix(0, ds)
	}
	if st.Ejected {
		st.EjectedUntil = time.Unix(0, s.ejectedUntil.Load())
	}
	st.Available = st.Healthy && !st.Ejected && !st.Draining
	s.mu.Lock()
	if s.lastCheck != 0 {
		st.LastCheck = time.Unix(0, s.lastCheck)
	}
	st.LastError = s.lastError
	s.mu.Unlock()
	return st
}

// unixNano is t in Unix nanoseconds, 0 for the zero time.
func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// requeue queues b for the next persist whatever it did since: persist
// has news of it that it could not write yet.
func (b *Backend) requeue() {
	if ps := b.live.pool.Load(); ps != nil && ps.activity != nil && b.live.queued.CompareAndSwap(false, true) {
		ps.activity.add(b)
	}
}

// activityLog is the queue of backends with activity since the Manager
// last persisted its observations (Backend.noteActivity adds, persist
// takes). The request path adds a backend at most once per persist.
type activityLog struct {
	mu    sync.Mutex
	bs    []*Backend
	spare []*Backend // the buffer of the take before last, reused
}

func (l *activityLog) add(b *Backend) {
	l.mu.Lock()
	l.bs = append(l.bs, b)
	l.mu.Unlock()
}

// take returns the queued backends and empties the queue; hand the slice
// back with recycle once done with it.
func (l *activityLog) take() []*Backend {
	l.mu.Lock()
	defer l.mu.Unlock()
	bs := l.bs
	l.bs, l.spare = l.spare, nil
	return bs
}

// recycle gives take's slice back for reuse, so that a steady stream of
// activity does not allocate the queue again every persist.
func (l *activityLog) recycle(bs []*Backend) {
	clear(bs)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.spare == nil {
		l.spare = bs[:0]
	}
}
