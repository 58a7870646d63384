package pools

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"sort"
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
	// Observations returns nodeID's observations.
	Observations(ctx context.Context, nodeID string) ([]storage.Observation, error)
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
	Metrics    MetricsConfig
	Logger     *zap.Logger
	Registerer prometheus.Registerer // nil = no metrics
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

// observationBatch bounds the rows per PutObservations transaction.
const observationBatch = 500

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

	// mu guards states, poolStates and seeds, which rebuilds (Run
	// goroutine) write.
	mu         sync.Mutex
	states     map[string]*backendState
	poolStates map[string]*poolState
	seeds      map[string]storage.Observation

	health    *healthScheduler
	healthLog *ratelog.Logger

	persistMu     sync.Mutex
	lastPersisted map[string]persisted
	// stored holds the ids of the backends this node has an observation
	// row of in the store (loaded at start, then written by persist), so
	// that persist deletes the rows of backends that left the table.
	stored map[string]bool

	collector *collector
}

// persisted is the last observation written for a backend and when.
type persisted struct {
	obs storage.Observation
	at  time.Time
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
		cfg:           cfg,
		src:           src,
		log:           cfg.Logger,
		ready:         make(chan struct{}),
		states:        make(map[string]*backendState),
		poolStates:    make(map[string]*poolState),
		lastPersisted: make(map[string]persisted),
		stored:        make(map[string]bool),
	}
	m.table.Store(EmptyTable())
	m.healthLog = ratelog.New(cfg.HealthLog, cfg.Logger)
	m.health = newHealthScheduler(cfg.Health, probeWith(cfg.Logger), m.logTransition)
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
	pools, backends, err := m.load(ctx)
	if err != nil {
		return err
	}
	obs, err := m.src.Observations(ctx, m.cfg.NodeID)
	if err != nil {
		return fmt.Errorf("pools: load observations: %w", err)
	}
	m.mu.Lock()
	m.seeds = make(map[string]storage.Observation, len(obs))
	for _, o := range obs {
		if o.NodeID == m.cfg.NodeID {
			m.seeds[o.BackendID] = o
		}
	}
	m.mu.Unlock()
	m.persistMu.Lock()
	for _, o := range obs {
		if o.NodeID == m.cfg.NodeID {
			m.stored[o.BackendID] = true
		}
	}
	m.persistMu.Unlock()

	checkCtx, stopChecks := context.WithCancel(ctx)
	var checkWG sync.WaitGroup
	defer func() {
		stopChecks()
		checkWG.Wait()
	}()

	m.rebuild(pools, backends, true)
	m.mu.Lock()
	m.seeds = nil // only a restart seeds; later backends start fresh
	m.mu.Unlock()
	close(m.ready)
	checkWG.Add(2)
	go func() {
		defer checkWG.Done()
		m.health.run(checkCtx)
	}()
	go func() {
		defer checkWG.Done()
		m.healthLog.Run(checkCtx)
	}()
	m.log.Info("routing table loaded", zap.Int("pools", len(pools)), zap.Int("backends", len(backends)), zap.Uint64("index", index))

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
		if err := m.persist(fctx); err != nil {
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
			if m.apply(ev, pools, backends) && timerC == nil {
				if timer == nil {
					timer = time.NewTimer(m.cfg.RebuildDelay)
				} else {
					timer.Reset(m.cfg.RebuildDelay)
				}
				timerC = timer.C
			}
		case <-timerC:
			timerC = nil
			m.rebuild(pools, backends, false)
		}
	}
}

// load scans every pool and backend page by page.
func (m *Manager) load(ctx context.Context) (map[string]storage.Pool, map[string]storage.Backend, error) {
	pools := make(map[string]storage.Pool)
	for after := ""; ; {
		page, err := m.src.ListPools(ctx, after, m.cfg.PageSize)
		if err != nil {
			return nil, nil, fmt.Errorf("pools: list pools: %w", err)
		}
		for _, p := range page {
			pools[p.Name] = p
		}
		if len(page) < m.cfg.PageSize {
			break
		}
		after = page[len(page)-1].Name
	}
	backends := make(map[string]storage.Backend)
	for after := ""; ; {
		page, err := m.src.ListBackends(ctx, after, m.cfg.PageSize)
		if err != nil {
			return nil, nil, fmt.Errorf("pools: list backends: %w", err)
		}
		for _, b := range page {
			backends[b.ID] = b
		}
		if len(page) < m.cfg.PageSize {
			break
		}
		after = page[len(page)-1].ID
	}
	return pools, backends, nil
}

// apply folds one committed change set into the configuration maps and
// reports whether pools or backends changed.
func (m *Manager) apply(ev storage.Event, pools map[string]storage.Pool, backends map[string]storage.Backend) bool {
	changed := false
	for _, c := range ev.Set.Changes {
		switch c.Table {
		case storage.TablePools:
			changed = true
			if c.Deleted {
				delete(pools, c.Key)
				continue
			}
			p, err := c.Pool()
			if err != nil {
				m.log.Error("undecodable pool in change feed", zap.String("key", c.Key), zap.Uint64("index", ev.Index), zap.Error(err))
				continue
			}
			pools[p.Name] = p
		case storage.TableBackends:
			changed = true
			if c.Deleted {
				delete(backends, c.Key)
				continue
			}
			b, err := c.Backend()
			if err != nil {
				m.log.Error("undecodable backend in change feed", zap.String("key", c.Key), zap.Uint64("index", ev.Index), zap.Error(err))
				continue
			}
			backends[b.ID] = b
		}
	}
	return changed
}

// rebuild builds a table from the configuration maps, swaps it in, forgets
// the live state of removed backends and reconciles health checks.
func (m *Manager) rebuild(pools map[string]storage.Pool, backends map[string]storage.Backend, initial bool) {
	ps := make([]storage.Pool, 0, len(pools))
	for _, p := range pools {
		ps = append(ps, p)
	}
	bs := make([]storage.Backend, 0, len(backends))
	for _, b := range backends {
		bs = append(bs, b)
	}
	fresh := make(map[string]bool)
	opts := TableOptions{Region: m.cfg.Region, CookieKey: m.cfg.CookieKey, poolState: m.poolStateFor}
	t := buildTable(ps, bs, opts, m.table.Load(),
		func(b *storage.Backend, p *storage.Pool) *backendState {
			s, isNew := m.stateFor(b, p)
			if isNew {
				fresh[b.ID] = true
			}
			return s
		})
	m.table.Store(t)
	m.rebuilds.Add(1)

	m.mu.Lock()
	for id := range m.states {
		if t.backends[id] == nil {
			delete(m.states, id)
		}
	}
	for name := range m.poolStates {
		if t.byName[name] == nil {
			delete(m.poolStates, name)
		}
	}
	m.mu.Unlock()

	m.health.reconcile(t, fresh, initial, time.Now())
	m.collector.forget(t)
	m.log.Debug("routing table rebuilt", zap.Int("pools", len(t.pools)), zap.Int("backends", len(t.backends)))
}

// stateFor returns the live state of a backend, creating it (seeded from
// this node's last observation, if any) the first time the id is seen.
// isNew also reports a state reset because the address changed.
func (m *Manager) stateFor(b *storage.Backend, p *storage.Pool) (s *backendState, isNew bool) {
	addr := backendAddr(b)
	m.mu.Lock()
	defer m.mu.Unlock()
	if s = m.states[b.ID]; s != nil {
		s.mu.Lock()
		moved := s.addr != addr
		s.mu.Unlock()
		s.pool.Store(m.poolStateLocked(p.Name))
		if moved {
			s.resetHealth(addr, p.HoldNewBackends)
			return s, true
		}
		return s, false
	}
	s = newBackendState(addr, p.HoldNewBackends)
	if o, ok := m.seeds[b.ID]; ok {
		s.seed(o)
	}
	s.pool.Store(m.poolStateLocked(p.Name))
	m.states[b.ID] = s
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
// written afresh.
func (m *Manager) persist(ctx context.Context) error {
	m.persistMu.Lock()
	defer m.persistMu.Unlock()
	t := m.table.Load()
	now := time.Now().UTC()
	ids := make([]string, 0, len(t.backends))
	for id := range t.backends {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var changed []storage.Observation
	for _, id := range ids {
		o := m.observation(t.backends[id])
		if last, ok := m.lastPersisted[id]; ok && sameObservation(last.obs, o) &&
			(last.obs.LastCheck.Equal(o.LastCheck) || now.Sub(last.at) < m.cfg.ObservationRefresh) {
			continue
		}
		changed = append(changed, o)
	}
	for id := range m.lastPersisted {
		if t.backends[id] == nil {
			delete(m.lastPersisted, id)
		}
	}
	for len(changed) > 0 {
		n := min(len(changed), observationBatch)
		batch := make([]storage.Observation, n)
		copy(batch, changed[:n])
		for i := range batch {
			batch[i].UpdatedAt = now
		}
		if err := m.src.PutObservations(ctx, batch); err != nil {
			return fmt.Errorf("pools: put %d observations: %w", n, err)
		}
		for _, o := range changed[:n] {
			m.lastPersisted[o.BackendID] = persisted{obs: o, at: now}
			m.stored[o.BackendID] = true
		}
		changed = changed[n:]
	}

	var gone []string
	for id := range m.stored {
		if t.backends[id] == nil {
			gone = append(gone, id)
		}
	}
	sort.Strings(gone)
	for len(gone) > 0 {
		n := min(len(gone), observationBatch)
		if err := m.src.DeleteObservations(ctx, gone[:n]); err != nil {
			return fmt.Errorf("pools: delete %d observations of removed backends: %w", n, err)
		}
		for _, id := range gone[:n] {
			delete(m.stored, id)
		}
		gone = gone[n:]
	}
	return nil
}

// sameObservation compares two views of a backend, ignoring the time of
// the last check.
func sameObservation(a, b storage.Observation) bool {
	a.LastCheck, b.LastCheck = time.Time{}, time.Time{}
	return a == b
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
