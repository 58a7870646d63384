package pools

import (
	"container/heap"
	"context"
	"errors"
	"hash/maphash"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// HealthSchedule bounds the active health checks of one agent. Checks are
// not run by a goroutine per backend: one scheduler keeps the backends'
// check targets in a queue ordered by when each is due, and starts them no
// faster than Budget per second and no more than Concurrency at a time.
//
// When the backends' intervals ask for more checks per second than the
// budget allows, every target is still checked in turn (the queue is
// ordered by due time, so none starves), but less often than its
// interval: with 1,000,000 targets, a 10 s interval and a budget of 1,000
// checks per second, each is checked about every 1,000 s. Passive health
// (failed requests eject a backend at once) then carries the signal for
// backends under traffic; the active checks find the idle ones and bring
// ejected ones back.
type HealthSchedule struct {
	// Budget is the most checks the agent starts per second, all pools
	// together.
	Budget float64
	// Burst is how many checks may start at once after an idle spell; 0 =
	// a tenth of a second's budget.
	Burst int
	// Concurrency bounds the checks in flight (each holds a socket until
	// it answers or times out).
	Concurrency int
	// Jitter spreads checks: each next check is due after the interval
	// scaled by a random factor in [1-Jitter, 1+Jitter].
	Jitter float64
	// MaxDownInterval caps the back-off of a target that keeps failing:
	// after its pool's fall threshold each further failure doubles its
	// interval, up to this, so dead backends cost little and are still
	// noticed when they come back within MaxDownInterval.
	MaxDownInterval time.Duration
}

// DefaultHealthSchedule is the schedule used for zero fields.
func DefaultHealthSchedule() HealthSchedule {
	return HealthSchedule{Budget: 1000, Concurrency: 256, Jitter: 0.1, MaxDownInterval: 2 * time.Minute}
}

func (h HealthSchedule) withDefaults() HealthSchedule {
	def := DefaultHealthSchedule()
	if h.Budget <= 0 {
		h.Budget = def.Budget
	}
	if h.Burst <= 0 {
		h.Burst = max(1, int(h.Budget/10))
	}
	if h.Concurrency <= 0 {
		h.Concurrency = def.Concurrency
	}
	if h.Jitter < 0 || h.Jitter >= 1 {
		h.Jitter = def.Jitter
	}
	if h.MaxDownInterval <= 0 {
		h.MaxDownInterval = def.MaxDownInterval
	}
	return h
}

// targetKey is what a probe depends on. Backends with the same key (the
// same address checked the same way, possibly in several pools) share one
// target and one probe; each applies the result with its own pool's
// rise/fall thresholds. The way of checking is interned to a small number
// (probeKind) so that a million keys stay small.
type targetKey struct {
	addr string
	kind uint32
}

// probeKind is how an address is checked.
type probeKind struct {
	sslVerify bool
	// tls is the backend's TLS settings (BackendTLS.Key): backends at one
	// address behind pools with different CA bundles, server names or
	// client certificates must not share a probe.
	tls        string
	kind, path string
	host       string // Host of HTTP checks: pools at one address may name it differently
	expected   int
	timeout    time.Duration
}

// keyOf returns b's target key under hc; the caller holds s.mu.
func (s *healthScheduler) keyOf(b *Backend, hc *healthConfig) targetKey {
	pk := probeKind{sslVerify: b.SSLVerify, tls: b.TLS().Key(), kind: hc.Type, path: hc.Path, host: hc.Host, expected: hc.ExpectedStatus, timeout: hc.Timeout}
	id, ok := s.kinds[pk]
	if !ok {
		id = uint32(len(s.kinds))
		s.kinds[pk] = id
	}
	return targetKey{addr: b.Addr, kind: id}
}

// healthSub is one backend watching a target; its pool's thresholds are
// the backend's hc.
type healthSub struct {
	b *Backend
}

func (s healthSub) hc() *healthConfig { return s.b.hc }

// target is one probe destination. Fields are guarded by the scheduler's
// mutex. There is one per distinct address (a million at full size), so
// it is kept small (80 bytes): times as Unix nanoseconds, counters as
// int32, the interval computed from the subscribers when needed.
type target struct {
	key     targetKey
	subs    []healthSub
	next    *target // the next target whose key has the same hash (targetIndex)
	due     int64   // Unix ns
	fall    int32   // the largest fall threshold of its subscribers
	streak  int32   // consecutive failed probes
	idx     int32   // position in the due queue; -1 when not queued
	running bool
	removed bool
}

// interval is the shortest check interval of tg's subscribers.
func (tg *target) interval() time.Duration {
	var iv time.Duration
	for _, sub := range tg.subs {
		if hc := sub.hc(); iv == 0 || hc.Interval < iv {
			iv = hc.Interval
		}
	}
	return iv
}

// targetIndex finds a target by its key. It is keyed by a 64-bit hash of
// the key, not the key: a map slot then holds 16 bytes instead of 32,
// about 40 MB less at a million targets. Targets whose keys share a hash
// are chained through target.next.
type targetIndex struct {
	seed maphash.Seed
	m    map[uint64]*target
	n    int
}

func newTargetIndex(size int) targetIndex {
	return targetIndex{seed: maphash.MakeSeed(), m: make(map[uint64]*target, size)}
}

func (x *targetIndex) hash(k targetKey) uint64 {
	return maphash.String(x.seed, k.addr) ^ (uint64(k.kind)+1)*0x9e3779b97f4a7c15
}

func (x *targetIndex) get(k targetKey) *target { return x.getHashed(x.hash(k), k) }

// add indexes tg, whose key must not be indexed yet.
func (x *targetIndex) add(tg *target) { x.addHashed(x.hash(tg.key), tg) }

func (x *targetIndex) remove(tg *target) { x.removeHashed(x.hash(tg.key), tg) }

func (x *targetIndex) getHashed(h uint64, k targetKey) *target {
	for tg := x.m[h]; tg != nil; tg = tg.next {
		if tg.key == k {
			return tg
		}
	}
	return nil
}

func (x *targetIndex) addHashed(h uint64, tg *target) {
	tg.next = x.m[h]
	x.m[h] = tg
	x.n++
}

func (x *targetIndex) removeHashed(h uint64, tg *target) {
	if head := x.m[h]; head == tg {
		if tg.next == nil {
			delete(x.m, h)
		} else {
			x.m[h] = tg.next
		}
	} else {
		for p := head; ; p = p.next {
			if p == nil {
				return // not indexed
			}
			if p.next == tg {
				p.next = tg.next
				break
			}
		}
	}
	tg.next = nil
	x.n--
}

func (x *targetIndex) len() int { return x.n }

// dueTime is when the target is due.
func (tg *target) dueTime() time.Time { return time.Unix(0, tg.due) }

// dueQueue is a min-heap of targets by due time.
type dueQueue []*target

func (q dueQueue) Len() int           { return len(q) }
func (q dueQueue) Less(i, j int) bool { return q[i].due < q[j].due }
func (q dueQueue) Swap(i, j int) {
	q[i], q[j] = q[j], q[i]
	q[i].idx, q[j].idx = int32(i), int32(j)
}
func (q *dueQueue) Push(x any) {
	t := x.(*target)
	t.idx = int32(len(*q))
	*q = append(*q, t)
}
func (q *dueQueue) Pop() any {
	old := *q
	t := old[len(old)-1]
	old[len(old)-1] = nil
	t.idx = -1
	*q = old[:len(old)-1]
	return t
}

// probeFunc performs one check of a target's first subscriber and
// returns nil when it passes.
type probeFunc func(ctx context.Context, sub healthSub) error

// transitionFunc reports a backend whose health verdict flipped.
type transitionFunc func(b *Backend, up bool, hc *healthConfig, err error)

// healthScheduler runs every active check of a Manager (see HealthSchedule).
type healthScheduler struct {
	cfg     HealthSchedule
	probe   probeFunc
	onFlip  transitionFunc
	limiter *rate.Limiter
	rnd     *rand.Rand

	mu       sync.Mutex
	targets  targetIndex
	kinds    map[probeKind]uint32
	byPool   map[*Pool][]*target // the targets each pool's backends watch
	last     *Table              // the table reconciled last
	queue    dueQueue
	inflight int
	wake     chan struct{}

	textMu sync.Mutex
	texts  map[string]string // shared check error texts (errorText)

	wg sync.WaitGroup
}

func newHealthScheduler(cfg HealthSchedule, probe probeFunc, onFlip transitionFunc) *healthScheduler {
	cfg = cfg.withDefaults()
	return &healthScheduler{
		cfg:     cfg,
		probe:   probe,
		onFlip:  onFlip,
		limiter: rate.NewLimiter(rate.Limit(cfg.Budget), cfg.Burst),
		rnd:     rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())),
		targets: newTargetIndex(0),
		kinds:   make(map[probeKind]uint32),
		byPool:  make(map[*Pool][]*target),
		wake:    make(chan struct{}, 1),
		texts:   make(map[string]string),
	}
}

// reconcile makes the targets match table t. Only pools that are not the
// same object as in the table reconciled last are looked at: a rebuild
// carries unchanged pools over, so a change to one pool costs that pool.
// Backends in fresh (new, or moved to another address) are checked at
// once unless initial, where every target's first check is spread at
// random over its interval so that a restart does not probe everything in
// the same second.
//
// A pool in patches that replaces its patch's prev (patchPool) moves only
// the subscriptions of the backends the patch added and dropped.
func (s *healthScheduler) reconcile(t *Table, fresh map[string]bool, patches map[*Pool]*poolPatch, initial bool, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.targets.len() == 0 {
		// First table: size the map once instead of growing it through
		// a million inserts.
		n := 0
		for _, p := range t.pools {
			n += len(p.backends)
		}
		s.targets = newTargetIndex(n)
		if initial {
			s.queue = slices.Grow(s.queue, n)
		}
	}
	patched := func(p *Pool) *poolPatch {
		if pt := patches[p]; pt != nil && s.last != nil && s.last.Pool(p.Name) == pt.prev {
			return pt
		}
		return nil
	}
	if s.last != nil {
		for _, pp := range s.last.pools {
			if np := t.Pool(pp.Name); np != pp && (np == nil || patched(np) == nil) {
				s.detach(pp)
			}
		}
	}
	for _, p := range t.pools {
		if s.last != nil && s.last.Pool(p.Name) == p {
			continue
		}
		if pt := patched(p); pt != nil {
			s.applyPatch(p, pt, fresh, now)
			continue
		}
		s.attach(p, fresh, initial, now)
	}
	if initial {
		heap.Init(&s.queue)
	}
	s.last = t
	s.signal()
}

// detach removes the subscriptions of pool p's backends; targets left
// without subscribers are dropped.
func (s *healthScheduler) detach(p *Pool) {
	for _, tg := range s.byPool[p] {
		subs := tg.subs[:0]
		for _, sub := range tg.subs {
			if sub.hc() != p.health {
				subs = append(subs, sub)
			}
		}
		clear(tg.subs[len(subs):])
		tg.subs = subs
		if len(subs) == 0 {
			tg.removed = true
			if tg.idx >= 0 {
				heap.Remove(&s.queue, int(tg.idx))
			}
			s.targets.remove(tg)
			continue
		}
		tg.settle()
	}
	delete(s.byPool, p)
}

// attach subscribes pool p's backends to their targets, creating those
// that do not exist yet. With initial set the new targets are appended to
// the queue unordered: reconcile orders it once (heap.Init, linear) rather
// than a million heap.Push calls.
func (s *healthScheduler) attach(p *Pool, fresh map[string]bool, initial bool, now time.Time) {
	nowNs := now.UnixNano()
	mine := make([]*target, 0, len(p.backends))
	for _, b := range p.backends {
		tg := s.subscribe(b, p.health, fresh, initial, nowNs)
		if len(mine) == 0 || mine[len(mine)-1] != tg {
			mine = append(mine, tg)
		}
	}
	s.byPool[p] = slices.Clip(mine)
}

// subscribe subscribes backend b, whose pool's health settings are hc, to
// its target, creating the target if it does not exist yet, and returns it.
func (s *healthScheduler) subscribe(b *Backend, hc *healthConfig, fresh map[string]bool, initial bool, nowNs int64) *target {
	k := s.keyOf(b, hc)
	tg := s.targets.get(k)
	if tg == nil {
		tg = &target{key: k, idx: -1, due: nowNs}
		if initial && !isHeld(b.live) {
			tg.due = nowNs + s.rnd.Int64N(int64(hc.Interval))
		}
		s.targets.add(tg)
	}
	tg.subs = append(tg.subs, healthSub{b: b})
	// A new subscriber can only raise the largest fall threshold: no
	// pass over the others (settle), which made a target shared by
	// n backends cost n² here.
	tg.fall = max(tg.fall, int32(hc.Fall))
	if !initial && fresh[b.ID] && tg.due > nowNs {
		tg.due = nowNs
		if tg.idx >= 0 {
			heap.Fix(&s.queue, int(tg.idx))
		}
	}
	if tg.idx < 0 && !tg.running {
		if initial {
			tg.idx = int32(len(s.queue))
			s.queue = append(s.queue, tg)
		} else {
			heap.Push(&s.queue, tg)
		}
	}
	return tg
}

// applyPatch moves the subscriptions of pool patch.prev to p, its patched
// successor (same health settings): only the dropped and added backends
// are looked at, not every backend of the pool.
func (s *healthScheduler) applyPatch(p *Pool, patch *poolPatch, fresh map[string]bool, now time.Time) {
	mine := s.byPool[patch.prev]
	delete(s.byPool, patch.prev)
	removed := false
	for _, b := range patch.dropped {
		tg := s.targets.get(s.keyOf(b, p.health))
		if tg == nil {
			continue
		}
		subs := tg.subs[:0]
		for _, sub := range tg.subs {
			if sub.b != b {
				subs = append(subs, sub)
			}
		}
		clear(tg.subs[len(subs):])
		tg.subs = subs
		if len(subs) > 0 {
			tg.settle()
			continue
		}
		tg.removed, removed = true, true
		if tg.idx >= 0 {
			heap.Remove(&s.queue, int(tg.idx))
		}
		s.targets.remove(tg)
	}
	if removed {
		// A target may stay listed while other pools' backends keep it
		// (detach then finds none of this pool's subscribers on it);
		// removed ones go.
		mine = slices.DeleteFunc(mine, func(tg *target) bool { return tg.removed })
	}
	nowNs := now.UnixNano()
	for _, b := range patch.added {
		tg := s.subscribe(b, p.health, fresh, false, nowNs)
		n := 0
		for _, sub := range tg.subs {
			if sub.hc() == p.health {
				n++
			}
		}
		if n == 1 { // b is the pool's first subscriber
			mine = append(mine, tg)
		}
	}
	s.byPool[p] = mine
}

// settle recomputes the target's fall threshold (the largest of its
// subscribers').
func (tg *target) settle() {
	tg.fall = 0
	for _, sub := range tg.subs {
		tg.fall = max(tg.fall, int32(sub.hc().Fall))
	}
}

func (s *healthScheduler) signal() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// next takes the targets whose checks may start at now: due, within the
// budget and the concurrency bound. wait is how long until more may start
// (0 with nothing queued: wait for a wake-up).
func (s *healthScheduler) next(now time.Time) (start []*target, wait time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.queue) > 0 && s.inflight < s.cfg.Concurrency {
		tg := s.queue[0]
		if d := tg.due - now.UnixNano(); d > 0 {
			return start, time.Duration(d)
		}
		r := s.limiter.ReserveN(now, 1)
		if d := r.DelayFrom(now); d > 0 {
			r.CancelAt(now)
			return start, d
		}
		heap.Pop(&s.queue)
		tg.running = true
		s.inflight++
		start = append(start, tg)
	}
	return start, 0
}

// done records a finished probe of tg and queues its next check.
func (s *healthScheduler) done(tg *target, err error, now time.Time) []healthSub {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.inflight--
	tg.running = false
	s.signal()
	if tg.removed {
		return nil
	}
	if err == nil {
		tg.streak = 0
	} else {
		tg.streak++
	}
	tg.due = now.Add(s.nextInterval(tg)).UnixNano()
	heap.Push(&s.queue, tg)
	return append([]healthSub(nil), tg.subs...)
}

// nextInterval is tg's interval, backed off while it stays down, with
// jitter.
func (s *healthScheduler) nextInterval(tg *target) time.Duration {
	base := tg.interval()
	iv := base
	if extra := tg.streak - tg.fall; extra > 0 && iv < s.cfg.MaxDownInterval {
		iv <<= min(extra, 16)
		iv = min(iv, max(s.cfg.MaxDownInterval, base))
	}
	if j := s.cfg.Jitter; j > 0 {
		iv = time.Duration(float64(iv) * (1 - j + 2*j*s.rnd.Float64()))
	}
	return max(iv, minRuntimeInterval)
}

// run starts checks as they come due until ctx ends, then waits for the
// checks in flight.
func (s *healthScheduler) run(ctx context.Context) {
	defer s.wg.Wait()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		start, wait := s.next(time.Now())
		for _, tg := range start {
			s.wg.Add(1)
			go s.check(ctx, tg)
		}
		if len(start) > 0 && wait == 0 {
			continue
		}
		var timerC <-chan time.Time
		if wait > 0 {
			timer.Reset(wait)
			timerC = timer.C
		}
		select {
		case <-ctx.Done():
			return
		case <-s.wake:
		case <-timerC:
		}
		timer.Stop()
	}
}

// check probes tg once and applies the result to its subscribers.
func (s *healthScheduler) check(ctx context.Context, tg *target) {
	defer s.wg.Done()
	s.mu.Lock()
	var sub healthSub
	if len(tg.subs) > 0 {
		sub = tg.subs[0]
	}
	s.mu.Unlock()
	if sub.b == nil {
		s.done(tg, nil, time.Now())
		return
	}
	start := time.Now()
	err := s.probe(ctx, sub)
	if ctx.Err() != nil {
		// Stopped mid-check: the result says nothing about the backend.
		return
	}
	s.apply(s.done(tg, err, time.Now()), tg.key.addr, err, start)
}

// apply applies one probe result to every backend watching the target.
func (s *healthScheduler) apply(subs []healthSub, addr string, err error, at time.Time) {
	text := ""
	if err != nil {
		text = s.errorText(err)
	}
	for _, sub := range subs {
		up, flipped := sub.b.live.recordCheckText(addr, sub.hc(), err, text, at)
		sub.b.noteActivity(sub.b.live.pool.Load())
		if flipped && s.onFlip != nil {
			s.onFlip(sub.b, up, sub.hc(), err)
		}
	}
}

// maxErrorTexts bounds the distinct check error texts kept for sharing.
const maxErrorTexts = 1024

// errorText is what backends keep of a failed check. A dial error's text
// names the address ("dial tcp 10.0.0.1:80: connect: connection
// refused"), which makes it unique per backend: a million backends down
// would hold a million copies of one sentence. The address is the
// backend's own and shown beside it, so it is left out, and the few
// distinct texts that remain are shared.
func (s *healthScheduler) errorText(err error) string {
	msg := err.Error()
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" && op.Err != nil {
		msg = "dial " + op.Net + ": " + op.Err.Error()
	}
	s.textMu.Lock()
	defer s.textMu.Unlock()
	if v, ok := s.texts[msg]; ok {
		return v
	}
	if len(s.texts) < maxErrorTexts {
		s.texts[msg] = msg
	}
	return msg
}

// targetCount is the number of distinct probe targets.
func (s *healthScheduler) targetCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.targets.len()
}

// recordCheck applies one check result to the rise/fall counters and flips
// the healthy flag on a threshold. flipped reports a transition, up its
// direction. A result for an address the backend no longer has is
// ignored.
func (s *backendState) recordCheck(addr string, hc *healthConfig, err error, at time.Time) (up, flipped bool) {
	text := ""
	if err != nil {
		text = err.Error()
	}
	return s.recordCheckText(addr, hc, err, text, at)
}

// recordCheckText is recordCheck with the error's text given (shared
// between backends: see healthScheduler.errorText).
func (s *backendState) recordCheckText(addr string, hc *healthConfig, err error, text string, at time.Time) (up, flipped bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.addr != addr {
		return false, false
	}
	s.lastCheck = unixNano(at)
	if err == nil {
		s.checksPassed.Add(1)
		s.passes++
		s.fails = 0
		s.lastError = ""
		// A held-back new backend joins on its first pass.
		if !s.healthy.Load() && (int(s.passes) >= hc.Rise || s.held) {
			s.healthy.Store(true)
			s.downSince.Store(0)
			s.held = false
			return true, true
		}
		return false, false
	}
	s.checksFailed.Add(1)
	s.fails++
	s.passes = 0
	s.lastError = text
	if s.healthy.Load() && int(s.fails) >= hc.Fall {
		s.healthy.Store(false)
		s.downSince.Store(time.Now().UnixNano())
		return false, true
	}
	return false, false
}

// probeWith returns the probe the Manager uses: the check of health.go,
// built per probe so that idle targets hold no client or logger.
func probeWith() probeFunc {
	return func(ctx context.Context, sub healthSub) error {
		c := newChecker(sub.b.PoolName, sub.b, *sub.hc())
		if c.client != nil {
			defer c.client.CloseIdleConnections()
		}
		return c.check(ctx)
	}
}
