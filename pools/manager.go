package pools

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

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

	// mu guards states and seeds, which rebuilds (Run goroutine) write.
	mu     sync.Mutex
	states map[string]*backendState
	seeds  map[string]storage.Observation

	// Owned by the Run goroutine.
	checkers  map[string]*runningChecker
	checkerWG sync.WaitGroup

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

type runningChecker struct {
	key    checkerKey
	cancel context.CancelFunc
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
		checkers:      make(map[string]*runningChecker),
		lastPersisted: make(map[string]persisted),
		stored:        make(map[string]bool),
	}
	m.table.Store(EmptyTable())
	m.collector = newCollector(m.Table, m.rebuilds.Load)
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
	defer func() {
		stopChecks()
		m.checkerWG.Wait()
	}()

	m.rebuild(checkCtx, pools, backends, true)
	m.mu.Lock()
	m.seeds = nil // only a restart seeds; later backends start fresh
	m.mu.Unlock()
	close(m.ready)
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
			m.rebuild(checkCtx, pools, backends, false)
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
// the live state of removed backends and reconciles health checkers.
func (m *Manager) rebuild(ctx context.Context, pools map[string]storage.Pool, backends map[string]storage.Backend, initial bool) {
	ps := make([]storage.Pool, 0, len(pools))
	for _, p := range pools {
		ps = append(ps, p)
	}
	bs := make([]storage.Backend, 0, len(backends))
	for _, b := range backends {
		bs = append(bs, b)
	}
	fresh := make(map[string]bool)
	t := buildTable(ps, bs, TableOptions{Region: m.cfg.Region, CookieKey: m.cfg.CookieKey, BackendRootCAs: m.cfg.BackendRootCAs, ClientCertificates: m.cfg.ClientCertificates}, m.table.Load(),
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
	m.mu.Unlock()

	m.reconcileCheckers(ctx, t, fresh, initial)
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
	m.states[b.ID] = s
	return s, true
}

// reconcileCheckers starts a checker per backend, replaces those whose
// target or settings changed and stops those of removed backends. On the
// initial load checks are spread over one interval; a backend added or
// moved later is checked at once.
func (m *Manager) reconcileCheckers(ctx context.Context, t *Table, fresh map[string]bool, initial bool) {
	seen := make(map[string]bool, len(t.backends))
	for _, p := range t.pools {
		for _, b := range p.backends {
			seen[b.ID] = true
			key := newCheckerKey(b, p.health)
			rc := m.checkers[b.ID]
			if rc != nil && rc.key == key && !fresh[b.ID] {
				continue
			}
			if rc != nil {
				rc.cancel()
			}
			delay := time.Duration(0)
			if initial && !isHeld(b.live) {
				delay = time.Duration(mrand.Int64N(int64(p.health.Interval)))
			}
			cctx, cancel := context.WithCancel(ctx)
			c := newChecker(p.Name, b, p.health, m.log)
			m.checkers[b.ID] = &runningChecker{key: key, cancel: cancel}
			m.checkerWG.Add(1)
			go func() {
				defer m.checkerWG.Done()
				c.run(cctx, delay)
			}()
		}
	}
	for id, rc := range m.checkers {
		if !seen[id] {
			rc.cancel()
			delete(m.checkers, id)
		}
	}
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
