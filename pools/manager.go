package pools

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"hash/maphash"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/singularity-ng/singularity-edge/internal/ratelog"
	"github.com/singularity-ng/singularity-edge/storage"
)

// Source is what the Manager needs from the store. *storage.Store
// satisfies it.
type Source interface {
	// ListPools and ListBackends return rows with keys strictly after
	// `after`, at most limit.
	ListPools(ctx context.Context, after string, limit int) ([]storage.Pool, error)
	ListBackends(ctx context.Context, after string, limit int) ([]storage.Backend, error)
	// ListBackendsByPool returns the backends of pool whose position
	// (storage.BackendPosition: address, then id) is strictly after
	// `after`, at most limit, ordered by position (an index scan: a
	// rebuild of one pool reads that pool's rows only).
	ListBackendsByPool(ctx context.Context, pool, after string, limit int) ([]storage.Backend, error)
	// ScanBackendsOfPool calls fn with each backend of pool ordered by
	// position, decoded in place (see storage.BackendRef): the first
	// table is built from it without a copy of every row.
	ScanBackendsOfPool(ctx context.Context, pool string, fn func(r *storage.BackendRef) error) error
	// ScanObservations calls fn with each of nodeID's observations.
	ScanObservations(ctx context.Context, nodeID string, fn func(o *storage.Observation) error) error
	// PutObservations writes this node's observations in one transaction.
	PutObservations(ctx context.Context, obs []storage.Observation) error
	// DeleteObservations deletes this node's observations of the backends
	// backendIDs in one transaction, skipping those it has none of.
	DeleteObservations(ctx context.Context, backendIDs []string) error
	// LastIndex is the feed position of the latest commit.
	LastIndex() uint64
	// Subscribe delivers every commit after afterIndex, in order.
	Subscribe(ctx context.Context, afterIndex uint64) *storage.Subscription
}

// Config configures a Manager.
type Config struct {
	// NodeID is this agent's store node id; observations are written and
	// read under it. Required.
	NodeID string
	// Region is this agent's region (e.g. a Fly region), for pools with
	// prefer_region, and recorded in observations.
	Region string
	// CookieKey signs sticky-session cookies. Agents sharing it honour each
	// other's cookies. Empty: a random key per process (stickiness then
	// holds only on this agent and not across restarts).
	CookieKey []byte
	// ObservationInterval is how often this node's observations (health
	// and counters) are persisted; only rows that changed are written.
	ObservationInterval time.Duration
	// ObservationRefresh is how often a row whose only change is the time
	// of the last health check is rewritten, so that other regions see
	// the checks are still running without a write per check.
	ObservationRefresh time.Duration
	// RebuildDelay coalesces bursts of configuration changes: the table is
	// rebuilt at most once per RebuildDelay, RebuildDelay after the first
	// change of a burst.
	RebuildDelay time.Duration
	// PageSize is the page size of the initial scans.
	PageSize int
	// Health bounds the active health checks (see HealthSchedule).
	Health HealthSchedule
	// HealthLog aggregates health transitions into one line per pool and
	// burst (see internal/ratelog).
	HealthLog ratelog.Config
	// Metrics chooses which series the Manager exports (see MetricsConfig).
	Metrics MetricsConfig
	// BackendRootCAs verify backend certificates (pools without their own
	// CA bundle); nil = the system roots. ClientCertificates finds the
	// client certificates pools present to their backends.
	BackendRootCAs     *x509.CertPool
	ClientCertificates ClientCertificateSource
	Logger             *zap.Logger
	Registerer         prometheus.Registerer // nil = no metrics
}

// DefaultConfig returns a Config with the defaults filled in; NodeID must
// still be set.
func DefaultConfig() Config {
	return Config{
		ObservationInterval: 5 * time.Second,
		ObservationRefresh:  time.Minute,
		RebuildDelay:        50 * time.Millisecond,
		PageSize:            1000,
		Health:              DefaultHealthSchedule(),
		HealthLog:           ratelog.DefaultConfig(),
		Metrics:             DefaultMetricsConfig(),
		Logger:              zap.NewNop(),
	}
}

// observationBatch bounds the rows per PutObservations transaction. Each
// holds the store's commit lock while it writes: at 500 rows that was
// tens of milliseconds on a busy machine, which an admin write arriving
// meanwhile waited out; 100 rows keep the wait short, and the WAL syncs
// of consecutive batches are coalesced by the store's group commit.
const observationBatch = 100

// shutdownPersistTimeout bounds the final observation write on shutdown.
const shutdownPersistTimeout = 5 * time.Second

// Manager keeps the routing table in step with the store: it loads pools
// and backends, follows the change feed, rebuilds and swaps the Table,
// runs active health checks, and persists this node's observations.
type Manager struct {
	cfg     Config
	src     Source
	log     *zap.Logger
	table   atomic.Pointer[Table]
	ready   chan struct{}
	running atomic.Bool

	rebuilds atomic.Int64

	// mu guards poolStates, which rebuilds (Run goroutine) write.
	mu         sync.Mutex
	poolStates map[string]*poolState

	// Owned by the Run goroutine: the pools' configuration, the pools to
	// rebuild from their rows in the store (dirty: their configuration
	// changed, or too many of their backends did), and the backend rows
	// that changed since the last rebuild in other pools (pending, by
	// pool and id; nil: the backend left the pool), which the rebuild
	// patches into the pools of the previous table. pendingAt is the pool
	// each pending row puts its backend in. Backend rows are not kept
	// beyond a rebuild: the table holds what it needs.
	pools     map[string]storage.Pool
	dirty     map[string]bool
	pending   map[string]map[string]*storage.Backend
	pendingAt map[string]string
	staged    int // rows in pending
	// index finds the pool a backend is in in the published table
	// (finding it by id alone costs a search of every pool); it is
	// updated with every table the Run goroutine stores.
	index backendIndex

	health    *healthScheduler
	healthLog *ratelog.Logger

	// activity queues the backends persist looks at (see
	// Backend.noteActivity).
	activity  activityLog
	persistMu sync.Mutex
	// gone holds the ids of backends that left the table while this node
	// had (or may have had) an observation row of them in the store;
	// persist deletes those rows.
	gone     map[string]bool
	obsSeed  maphash.Seed
	lastTook time.Duration // duration of the last rebuild

	collector *collector
}

// NewManager returns a Manager over src. Its Table is empty until Run has
// loaded the store (see Ready).
func NewManager(cfg Config, src Source) *Manager {
	def := DefaultConfig()
	if cfg.ObservationInterval <= 0 {
		cfg.ObservationInterval = def.ObservationInterval
	}
	if cfg.ObservationRefresh <= 0 {
		cfg.ObservationRefresh = def.ObservationRefresh
	}
	if cfg.RebuildDelay <= 0 {
		cfg.RebuildDelay = def.RebuildDelay
	}
	if cfg.PageSize <= 0 {
		cfg.PageSize = def.PageSize
	}
	if cfg.Logger == nil {
		cfg.Logger = def.Logger
	}
	if len(cfg.CookieKey) == 0 {
		cfg.CookieKey = make([]byte, 32)
		_, _ = rand.Read(cfg.CookieKey) // crypto/rand.Read never fails on supported platforms
	} else {
		cfg.CookieKey = append([]byte(nil), cfg.CookieKey...)
	}
	m := &Manager{
		cfg:        cfg,
		src:        src,
		log:        cfg.Logger,
		ready:      make(chan struct{}),
		poolStates: make(map[string]*poolState),
		pools:      make(map[string]storage.Pool),
		dirty:      make(map[string]bool),
		pending:    make(map[string]map[string]*storage.Backend),
		pendingAt:  make(map[string]string),
		index:      newBackendIndex(),
		gone:       make(map[string]bool),
		obsSeed:    maphash.MakeSeed(),
	}
	m.table.Store(EmptyTable())
	m.healthLog = ratelog.New(cfg.HealthLog, cfg.Logger)
	m.health = newHealthScheduler(cfg.Health, probeWith(), m.logTransition)
	m.collector = newCollector(m.Table, m.rebuilds.Load, cfg.Metrics)
	m.collector.targets = m.health.targetCount
	return m
}

// Table returns the current routing table; never nil.
func (m *Manager) Table() *Table { return m.table.Load() }

// Ready is closed once Run has built the first table from the store.
func (m *Manager) Ready() <-chan struct{} { return m.ready }

// Stats returns per-pool backend counts and totals, sorted by pool name.
func (m *Manager) Stats() []PoolStats {
	t := m.table.Load()
	out := make([]PoolStats, 0, len(t.pools))
	for _, p := range t.pools {
		out = append(out, p.Stats())
	}
	return out
}

// BackendStates returns the live state of every backend of pool, sorted by
// id; nil when the pool does not exist.
func (m *Manager) BackendStates(pool string) []BackendState {
	p := m.table.Load().Pool(pool)
	if p == nil {
		return nil
	}
	out := make([]BackendState, 0, len(p.backends))
	for _, b := range p.backends {
		out = append(out, b.State())
	}
	return out
}

// Run loads the pools and backends, builds the first table (closing
// Ready), then follows the change feed until ctx ends, rebuilding the
// table on pool and backend changes, running health checks and persisting
// observations every ObservationInterval. It returns nil when ctx ends,
// and an error when the store fails or the feed ends early. Run may be
// called once.
func (m *Manager) Run(ctx context.Context) error {
	if !m.running.CompareAndSwap(false, true) {
		return errors.New("pools: Manager.Run called more than once")
	}
	if m.cfg.NodeID == "" {
		return errors.New("pools: Config.NodeID is required")
	}
	if r := m.cfg.Registerer; r != nil {
		if err := r.Register(m.collector); err != nil {
			return fmt.Errorf("pools: register metrics: %w", err)
		}
		defer r.Unregister(m.collector)
	}

	// The index is read before the scans: anything committed during them
	// is delivered again by the feed, and applying a row twice is harmless.
	index := m.src.LastIndex()
	start := time.Now()
	if err := m.loadPools(ctx); err != nil {
		return err
	}
	seeds, err := m.loadSeeds(ctx)
	if err != nil {
		return err
	}

	checkCtx, stopChecks := context.WithCancel(ctx)
	var checkWG sync.WaitGroup
	defer func() {
		stopChecks()
		checkWG.Wait()
	}()

	nBackends, err := m.initialTable(ctx, seeds)
	if err != nil {
		return err
	}
	// Ready once the table routes: what follows costs a pass over every
	// backend (a million map entries for the health targets), and the
	// checks it schedules are spread over an interval anyway.
	close(m.ready)
	readyAfter := time.Since(start)
	t := m.table.Load()
	m.health.reconcile(t, nil, nil, true, time.Now())
	m.index.update(EmptyTable(), t, nil)
	// Observation rows of backends that are no longer configured go at
	// the first persist: the seeds left once the table's backends are
	// crossed out.
	for _, p := range t.pools {
		for _, b := range p.backends {
			delete(seeds, b.ID)
		}
	}
	m.persistMu.Lock()
	for id := range seeds {
		m.gone[id] = true
	}
	m.persistMu.Unlock()
	seeds = nil // only a restart seeds; later backends start fresh
	checkWG.Add(2)
	go func() {
		defer checkWG.Done()
		m.health.run(checkCtx)
	}()
	go func() {
		defer checkWG.Done()
		m.healthLog.Run(checkCtx)
	}()
	m.log.Info("routing table loaded", zap.Int("pools", len(m.pools)), zap.Int("backends", nBackends),
		zap.Uint64("index", index), zap.Duration("ready_after", readyAfter.Round(time.Millisecond)),
		zap.Duration("took", time.Since(start).Round(time.Millisecond)))

	persistCtx, stopPersist := context.WithCancel(ctx)
	var persistWG sync.WaitGroup
	persistWG.Add(1)
	go func() {
		defer persistWG.Done()
		m.persistLoop(persistCtx)
	}()
	defer func() {
		stopPersist()
		persistWG.Wait()
		// Last words: what this node saw up to shutdown, so a restart
		// resumes from it.
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownPersistTimeout)
		defer cancel()
		err := m.persist(fctx)
		var limited *storage.SkippedObservationsError
		if errors.As(err, &limited) {
			// A periodic write less than the store's write-rate bound
			// ago: these are the node's last words, so wait the bound
			// out once rather than lose them.
			select {
			case <-time.After(limited.RetryAfter):
				err = m.persist(fctx)
			case <-fctx.Done():
			}
		}
		if err != nil {
			m.log.Warn("final observation write failed", zap.Error(err))
		}
	}()

	sub := m.src.Subscribe(ctx, index)
	var (
		timer   *time.Timer
		timerC  <-chan time.Time
		lastIdx = index
	)
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-sub.Events():
			if !ok {
				if ctx.Err() != nil {
					return nil
				}
				err := sub.Err()
				if err == nil {
					err = errors.New("subscription closed")
				}
				return fmt.Errorf("pools: change feed ended after index %d: %w", lastIdx, err)
			}
			lastIdx = ev.Index
			if m.apply(ev) && timerC == nil {
				// A rebuild costs in proportion to the changed pools plus
				// a pass over the health targets; under a stream of
				// writes at scale, waiting as long as the last one took
				// keeps rebuilds to at most half of a core.
				delay := max(m.cfg.RebuildDelay, m.lastTook)
				if timer == nil {
					timer = time.NewTimer(delay)
				} else {
					timer.Reset(delay)
				}
				timerC = timer.C
			}
		case <-timerC:
			timerC = nil
			m.rebuild(ctx)
		}
	}
}

// loadPools reads every pool into m.pools and marks them dirty.
func (m *Manager) loadPools(ctx context.Context) error {
	for after := ""; ; {
		page, err := m.src.ListPools(ctx, after, m.cfg.PageSize)
		if err != nil {
			return fmt.Errorf("pools: list pools: %w", err)
		}
		for _, p := range page {
			m.pools[p.Name] = p
		}
		if len(page) < m.cfg.PageSize {
			break
		}
		after = page[len(page)-1].Name
	}
	for name := range m.pools {
		m.dirty[name] = true
	}
	return nil
}

// seed is what a restart restores of a backend from this node's last
// observation of it: the part of the row the live state holds, and what
// persist needs to know the store already has it.
type seed struct {
	healthy   bool
	requests  int64
	failures  int64
	bytesIn   int64
	bytesOut  int64
	latency   time.Duration
	lastCheck int64 // Unix ns
	lastError string
	sum       uint64 // observationSum of the stored row
	at        int64  // when it was written, Unix ns
}

// loadSeeds reads this node's observations, one row at a time, into the
// seeds of the first table.
func (m *Manager) loadSeeds(ctx context.Context) (map[string]*seed, error) {
	seeds := make(map[string]*seed)
	err := m.src.ScanObservations(ctx, m.cfg.NodeID, func(o *storage.Observation) error {
		if o.NodeID != m.cfg.NodeID {
			return nil
		}
		sd := &seed{
			healthy: o.Healthy, requests: o.TotalRequests, failures: o.TotalFailures,
			bytesIn: o.BytesIn, bytesOut: o.BytesOut, latency: o.LatencyAvg,
			lastCheck: unixNano(o.LastCheck), lastError: o.LastError,
			at: max(o.UpdatedAt.UnixNano(), 1),
		}
		// What was persisted is what the store holds: a restart does not
		// rewrite every row.
		o.CurrentConnections, o.UpdatedAt, o.Version = 0, time.Time{}, storage.Version{}
		sd.sum = m.observationSum(*o)
		seeds[o.BackendID] = sd
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("pools: load observations: %w", err)
	}
	return seeds, nil
}

// initialTable builds the first table: each pool from its own index
// partition (so the rows in memory at once are one pool's per worker),
// GOMAXPROCS pools at a time, each backend's live state seeded from
// seeds. It returns the number of backends.
func (m *Manager) initialTable(ctx context.Context, seeds map[string]*seed) (int, error) {
	start := time.Now()
	names := make([]string, 0, len(m.pools))
	for name := range m.pools {
		names = append(names, name)
	}
	sort.Strings(names)
	states := make([]*poolState, len(names))
	for i, name := range names {
		states[i] = m.poolStateFor(name)
	}
	opts := TableOptions{Region: m.cfg.Region, CookieKey: m.cfg.CookieKey,
		BackendRootCAs: m.cfg.BackendRootCAs, ClientCertificates: m.cfg.ClientCertificates}
	built := make([]*Pool, len(names))
	var (
		next     atomic.Int64
		total    atomic.Int64
		errOnce  sync.Once
		firstErr error
		wg       sync.WaitGroup
	)
	for range min(runtime.GOMAXPROCS(0), max(len(names), 1)) {
		wg.Go(func() {
			// Reused from pool to pool: what a row leaves behind is its
			// id and address strings, which the table keeps.
			var rows []backendRow
			var buf []byte
			interned := make(map[string]string)
			for {
				i := int(next.Add(1)) - 1
				if i >= len(names) {
					return
				}
				sp := m.pools[names[i]]
				rows = rows[:0]
				err := m.src.ScanBackendsOfPool(ctx, sp.Name, func(r *storage.BackendRef) error {
					row := backendRow{port: r.Port, scheme: internBytes(interned, r.Scheme), region: internBytes(interned, r.Region),
						weight: r.Weight, sslVerify: r.SSLVerify, draining: r.Draining}
					buf = appendHostPort(buf[:0], r.Host, r.Port)
					row.addr = string(buf)
					row.host = hostOf(row.addr, string(r.Host))
					row.id = string(r.ID)
					if r.HasMetadata {
						full, err := r.Backend()
						if err != nil {
							return err
						}
						row.metadata = full.Metadata
					}
					rows = append(rows, row)
					return nil
				})
				if err != nil {
					errOnce.Do(func() { firstErr = fmt.Errorf("pools: list backends of pool %q: %w", sp.Name, err) })
					next.Store(int64(len(names))) // stop the other workers
					return
				}
				// A pool holds its backends in id order (Pool.backends);
				// the store lists them by address.
				slices.SortFunc(rows, func(a, b backendRow) int { return strings.Compare(a.id, b.id) })
				ps := states[i]
				// The pool's states in one allocation (a million small
				// objects cost a second of start-up). A later rebuild
				// carries a state over by pointer, so the slab lives
				// while any of its states does: never more than this.
				slab := make([]backendState, len(rows))
				pb := startPool(&sp, len(rows), func(id, addr string, sp *storage.Pool) *backendState {
					s := &slab[0]
					slab = slab[1:]
					s.init(addr, sp.HoldNewBackends)
					if sd := seeds[id]; sd != nil {
						s.restore(sd)
					}
					s.pool.Store(ps)
					return s
				})
				for _, r := range rows {
					pb.add(r)
				}
				clear(rows) // the strings now belong to the pool
				p := pb.finish(m.cfg.Region, m.cfg.CookieKey, nil)
				p.setBackendTLS(&sp, opts)
				p.state = ps
				built[i] = p
				total.Add(int64(len(p.backends)))
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		return 0, firstErr
	}
	byName := make(map[string]*Pool, len(built))
	ps := make([]storage.Pool, 0, len(names))
	for i, p := range built {
		byName[p.Name] = p
		ps = append(ps, m.pools[names[i]])
	}
	t := assembleTable(ps, m.cfg.Region, nil, func(sp *storage.Pool, _ *Pool) *Pool { return byName[sp.Name] })
	m.table.Store(t)
	m.rebuilds.Add(1)
	clear(m.dirty)
	m.collector.forget(t)
	m.lastTook = time.Since(start)
	return int(total.Load()), nil
}

// backendsOf reads the backends of pool from the store, in id order.
func (m *Manager) backendsOf(ctx context.Context, pool string) ([]storage.Backend, error) {
	var out []storage.Backend
	for after := ""; ; {
		page, err := m.src.ListBackendsByPool(ctx, pool, after, m.cfg.PageSize)
		if err != nil {
			return nil, fmt.Errorf("pools: list backends of pool %q: %w", pool, err)
		}
		out = append(out, page...)
		if len(page) < m.cfg.PageSize {
			slices.SortFunc(out, func(a, b storage.Backend) int { return strings.Compare(a.ID, b.ID) })
			return out, nil
		}
		after = storage.BackendPosition(&page[len(page)-1])
	}
}

// apply folds one committed change set into the pools' configuration and
// the changes the next rebuild makes, and reports whether anything
// changed.
func (m *Manager) apply(ev storage.Event) bool {
	changed := false
	for _, c := range ev.Set.Changes {
		switch c.Table {
		case storage.TablePools:
			changed = true
			m.markDirty(c.Key)
			if c.Deleted {
				delete(m.pools, c.Key)
				continue
			}
			p, err := c.Pool()
			if err != nil {
				m.log.Error("undecodable pool in change feed", zap.String("key", c.Key), zap.Uint64("index", ev.Index), zap.Error(err))
				continue
			}
			m.pools[p.Name] = p
		case storage.TableBackends:
			changed = true
			// The backend leaves the pool it is in: the table's (a bare
			// key is all a delete carries), and the one a change since
			// the last rebuild put it in.
			if old := m.index.lookup(m.table.Load(), c.Key); old != nil {
				m.stage(old.PoolName, c.Key, nil)
			}
			if at, ok := m.pendingAt[c.Key]; ok {
				m.stage(at, c.Key, nil)
				delete(m.pendingAt, c.Key)
			}
			if c.Deleted {
				continue
			}
			b, err := c.Backend()
			if err != nil {
				m.log.Error("undecodable backend in change feed", zap.String("key", c.Key), zap.Uint64("index", ev.Index), zap.Error(err))
				continue
			}
			m.stage(b.PoolName, c.Key, &b)
			m.pendingAt[c.Key] = b.PoolName
		}
	}
	return changed
}

// maxPending bounds the backend rows staged for one pool, and maxStaged
// those staged for every pool together: a pool with more changes than
// that (a bulk load, a replication catch-up) is read afresh from the
// store instead of holding every row in memory until the rebuild.
const (
	maxPending = 4096
	maxStaged  = 65536
)

// stage records that backend id of pool now has row (nil: it left the
// pool), for the next rebuild to patch in.
func (m *Manager) stage(pool, id string, row *storage.Backend) {
	if m.dirty[pool] {
		return // read afresh at the rebuild
	}
	rows := m.pending[pool]
	if rows == nil {
		rows = make(map[string]*storage.Backend)
		m.pending[pool] = rows
	}
	if _, ok := rows[id]; !ok {
		m.staged++
	}
	rows[id] = row
	if len(rows) > maxPending || m.staged > maxStaged {
		m.markDirty(pool)
	}
}

// markDirty makes the next rebuild read pool afresh from the store.
func (m *Manager) markDirty(pool string) {
	m.dirty[pool] = true
	m.staged -= len(m.pending[pool])
	delete(m.pending, pool)
}

// rebuild builds a table from the previous one: pools that did not change
// are carried over as they are, pools with staged backend changes are
// patched, and dirty ones are rebuilt from their rows read from the
// store. It swaps the table in, notes the backends that left it and
// reconciles the health checks.
func (m *Manager) rebuild(ctx context.Context) {
	start := time.Now()
	prev := m.table.Load()
	ps := make([]storage.Pool, 0, len(m.pools))
	for _, p := range m.pools {
		ps = append(ps, p)
	}
	staged := make(map[string][]backendChange, len(m.pending))
	for name, rows := range m.pending {
		if _, ok := m.pools[name]; !ok {
			continue // not a pool (yet): read whole when it comes
		}
		if prev.byName[name] == nil {
			m.dirty[name] = true // new to the table: read whole
			continue
		}
		cs := make([]backendChange, 0, len(rows))
		for id, row := range rows {
			cs = append(cs, backendChange{id: id, row: row})
		}
		slices.SortFunc(cs, func(a, b backendChange) int { return strings.Compare(a.id, b.id) })
		staged[name] = cs
	}
	clear(m.pending)
	clear(m.pendingAt)
	m.staged = 0
	changed := make(map[string][]storage.Backend, len(m.dirty))
	for name := range m.dirty {
		if _, ok := m.pools[name]; !ok {
			continue
		}
		bs, err := m.backendsOf(ctx, name)
		if err != nil {
			// Keep the pool as it was; the next change retries it.
			m.log.Error("cannot read the backends of a changed pool; it keeps its previous backends", zap.String("pool", name), zap.Error(err))
			continue
		}
		changed[name] = bs
	}
	fresh := make(map[string]bool)
	stateFor := func(id, addr string, p *storage.Pool) *backendState {
		// The index is still prev's until the new table is stored.
		old := m.index.lookup(prev, id)
		if old != nil && old.PoolName != p.Name {
			// Moved from another pool, or for a moment in two: the
			// pool's own backend keeps its state.
			if pp := prev.byName[p.Name]; pp != nil {
				if own := pp.Backend(id); own != nil {
					old = own
				}
			}
		}
		s, isNew := m.stateFor(old, addr, p)
		if isNew {
			fresh[id] = true
		}
		return s
	}
	opts := TableOptions{Region: m.cfg.Region, CookieKey: m.cfg.CookieKey, poolState: m.poolStateFor,
		BackendRootCAs: m.cfg.BackendRootCAs, ClientCertificates: m.cfg.ClientCertificates}
	patches := make(map[*Pool]*poolPatch, len(staged))
	t := assembleTable(ps, m.cfg.Region, prev, func(sp *storage.Pool, prevPool *Pool) *Pool {
		if bs, ok := changed[sp.Name]; ok || prevPool == nil {
			return buildPool(sp, bs, opts, m.cfg.CookieKey, stateFor, prevPool)
		}
		if cs, ok := staged[sp.Name]; ok {
			p, patch := patchPool(prevPool, sp, cs, m.cfg.Region, m.cfg.CookieKey, stateFor)
			patches[p] = patch
			return p
		}
		return prevPool
	})
	m.table.Store(t)
	m.index.update(prev, t, patches)
	m.rebuilds.Add(1)
	for name := range changed {
		delete(m.dirty, name)
	}
	for name := range m.dirty {
		if _, ok := m.pools[name]; !ok {
			delete(m.dirty, name)
		}
	}
	m.noteRemoved(prev, t, patches)

	m.mu.Lock()
	for name := range m.poolStates {
		if t.byName[name] == nil {
			delete(m.poolStates, name)
		}
	}
	m.mu.Unlock()

	m.health.reconcile(t, fresh, patches, false, time.Now())
	m.collector.forget(t)
	m.lastTook = time.Since(start)
	m.log.Debug("routing table rebuilt", zap.Int("pools", len(t.pools)), zap.Int("rebuilt", len(changed)),
		zap.Int("patched", len(patches)), zap.Duration("took", m.lastTook))
}

// noteRemoved records, for persist, the backends of prev that are not in
// t: their observation rows are deleted. A patched pool's are among those
// its patch dropped.
func (m *Manager) noteRemoved(prev, t *Table, patches map[*Pool]*poolPatch) {
	var gone []string
	for _, pp := range prev.pools {
		np := t.byName[pp.Name]
		if np == pp {
			continue
		}
		bs := pp.backends
		if patch := patches[np]; patch != nil {
			bs = patch.dropped
		}
		for _, b := range bs {
			if np == nil || np.Backend(b.ID) == nil {
				gone = append(gone, b.ID)
			}
		}
	}
	if len(gone) == 0 {
		return
	}
	m.persistMu.Lock()
	for _, id := range gone {
		m.gone[id] = true
	}
	m.persistMu.Unlock()
}

// stateFor returns the live state of a backend: old's, the backend of
// that id in the previous table (in its pool, or in another pool it moved
// from; nil if none), or a new one. isNew also reports a state reset
// because the address changed. (Only the first table seeds states from
// stored observations: see initialTable.)
func (m *Manager) stateFor(old *Backend, addr string, p *storage.Pool) (s *backendState, isNew bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if old != nil {
		s = old.live
		s.pool.Store(m.poolStateLocked(p.Name))
		s.mu.Lock()
		moved := s.addr != addr
		s.mu.Unlock()
		if moved {
			s.resetHealth(addr, p.HoldNewBackends)
			return s, true
		}
		return s, false
	}
	s = newBackendState(addr, p.HoldNewBackends)
	s.pool.Store(m.poolStateLocked(p.Name))
	return s, true
}

// poolStateFor returns the live state of pool name, creating it the first
// time the pool is seen.
func (m *Manager) poolStateFor(name string) *poolState {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.poolStateLocked(name)
}

func (m *Manager) poolStateLocked(name string) *poolState {
	ps := m.poolStates[name]
	if ps == nil {
		ps = m.collector.newPoolState(name)
		ps.events = m.healthLog
		ps.activity = &m.activity
		m.poolStates[name] = ps
	}
	return ps
}

func isHeld(s *backendState) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.held
}

func (m *Manager) persistLoop(ctx context.Context) {
	ticker := time.NewTicker(m.cfg.ObservationInterval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
			if err := m.persist(ctx); err != nil && ctx.Err() == nil {
				m.log.Warn("persisting observations failed; retrying next interval", zap.Error(err))
			}
		}
	}
}

// persist writes the observations that changed since the last successful
// write and deletes this node's observations of backends no longer in the
// routing table (deleted, or their pool is gone), so that rows of removed
// backends do not accumulate. A backend that comes back is observed and
// written afresh. What was last written is kept per backend as a hash in
// its live state, not as a copy of the row.
//
// Only the backends with activity since the last persist are looked at
// (the activity log): a pass over every backend at every interval was most
// of the cost at a million backends of which a few had news. A backend
// that has news the store cannot take yet (only a newer check time, before
// ObservationRefresh; a row refused by the write-rate bound) is queued
// again for the next persist.
func (m *Manager) persist(ctx context.Context) error {
	m.persistMu.Lock()
	defer m.persistMu.Unlock()
	// Taken before the table is loaded: a backend queued by now is in
	// this table or a newer one, never only in a table after it.
	active := m.activity.take()
	defer m.activity.recycle(active)
	for _, b := range active {
		// Before the state is read: activity from here on queues the
		// backend again.
		b.live.queued.Store(false)
	}
	t := m.table.Load()
	now := time.Now().UTC()
	type pending struct {
		obs storage.Observation
		b   *Backend
		sum uint64
	}
	// Written in batches as they fill: no list of every changed row.
	var (
		batch      = make([]pending, 0, observationBatch)
		rows       = make([]storage.Observation, 0, observationBatch)
		skippedErr *storage.SkippedObservationsError
	)
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		rows = rows[:0]
		for _, c := range batch {
			o := c.obs
			o.UpdatedAt = now
			rows = append(rows, o)
		}
		var skipped map[string]bool
		if err := m.src.PutObservations(ctx, rows); err != nil {
			// Rows refused by the store's write-rate bound stay pending
			// for the next write; the rest of the batch is committed.
			var limited *storage.SkippedObservationsError
			if !errors.As(err, &limited) {
				for _, c := range batch {
					c.b.requeue() // for the next persist to try again
				}
				return fmt.Errorf("pools: put %d observations: %w", len(rows), err)
			}
			if skippedErr == nil {
				skippedErr = limited
			}
			skipped = make(map[string]bool, len(limited.BackendIDs))
			for _, id := range limited.BackendIDs {
				skipped[id] = true
			}
		}
		for _, c := range batch {
			if skipped[c.obs.BackendID] {
				c.b.requeue()
				continue
			}
			s := c.b.live
			s.persistSum, s.persistCheck, s.persistAt = c.sum, unixNano(c.obs.LastCheck), now.UnixNano()
			delete(m.gone, c.obs.BackendID)
		}
		batch = batch[:0]
		return nil
	}
	for i, qb := range active {
		b := t.current(qb)
		if b == nil {
			continue // left the table: its row goes with m.gone
		}
		s := b.live
		o := m.observation(b)
		if s.persistAt == 0 && o.LastCheck.IsZero() && o.TotalRequests == 0 {
			// Never checked nor used here: this node has no view of it
			// yet. (After an import of a million backends, writing a
			// million empty rows at once would be the agent's largest
			// job.)
			continue
		}
		sum := m.observationSum(o)
		if s.persistAt != 0 && s.persistSum == sum {
			if s.persistCheck == unixNano(o.LastCheck) {
				continue // the store has all of it
			}
			if now.UnixNano()-s.persistAt < int64(m.cfg.ObservationRefresh) {
				// Only the check time is new: written at the refresh.
				b.requeue()
				continue
			}
		}
		batch = append(batch, pending{obs: o, b: b, sum: sum})
		if len(batch) == observationBatch {
			if err := flush(); err != nil {
				for _, qb := range active[i+1:] {
					qb.requeue() // not looked at yet
				}
				return err
			}
		}
	}
	if err := flush(); err != nil {
		return err
	}

	var gone []string
	for id := range m.gone {
		if t.Backend(id) == nil {
			gone = append(gone, id)
		} else {
			// It moved to another pool and is observed there.
			delete(m.gone, id)
		}
	}
	sort.Strings(gone)
	for len(gone) > 0 {
		n := min(len(gone), observationBatch)
		if err := m.src.DeleteObservations(ctx, gone[:n]); err != nil {
			return fmt.Errorf("pools: delete %d observations of removed backends: %w", n, err)
		}
		for _, id := range gone[:n] {
			delete(m.gone, id)
		}
		gone = gone[n:]
	}
	if skippedErr != nil {
		return skippedErr
	}
	return nil
}

// observationSum hashes an observation without the time and the error of
// the last check: a row whose only news is the latest check (a backend
// that is still down says "connection refused" again) is rewritten every
// ObservationRefresh, not every ObservationInterval.
func (m *Manager) observationSum(o storage.Observation) uint64 {
	o.LastCheck, o.LastError = time.Time{}, ""
	return maphash.Comparable(m.obsSeed, o)
}

// observation is this node's view of b, without UpdatedAt and Version so
// that two views compare equal when nothing changed.
func (m *Manager) observation(b *Backend) storage.Observation {
	st := b.State()
	return storage.Observation{
		NodeID:             m.cfg.NodeID,
		BackendID:          b.ID,
		PoolName:           b.PoolName,
		Region:             m.cfg.Region,
		Healthy:            st.Healthy,
		CurrentConnections: st.CurrentConnections,
		TotalRequests:      st.TotalRequests,
		TotalFailures:      st.TotalFailures,
		BytesIn:            st.BytesIn,
		BytesOut:           st.BytesOut,
		LatencyAvg:         st.LatencyAvg,
		LastCheck:          st.LastCheck.UTC(),
		LastError:          st.LastError,
	}
}

// logTransition reports a health verdict that flipped, aggregated per pool
// and direction: a burst of failures is one line with a count.
func (m *Manager) logTransition(b *Backend, up bool, hc *healthConfig, err error) {
	if up {
		m.healthLog.Event(zap.InfoLevel, "up\x00"+b.PoolName, "backend healthy", b.ID, nil,
			zap.String("pool", b.PoolName), zap.Int("rise", hc.Rise))
		return
	}
	m.healthLog.Event(zap.WarnLevel, "down\x00"+b.PoolName, "backend unhealthy", b.ID, err,
		zap.String("pool", b.PoolName), zap.Int("fall", hc.Fall))
}
