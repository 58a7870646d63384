package pools

import (
	"slices"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/singularity-ng/singularity-edge/internal/ratelog"
)

// MetricsConfig chooses the series a Manager exports. By default every
// series is per pool, so a scrape costs the same with 10 or 1,000,000
// backends; per-backend series are opt-in per pool (what HAProxy users
// expect on a small pool), and capped.
type MetricsConfig struct {
	// BackendPools names the pools whose backends get series of their own;
	// "*" names every pool. Empty: none.
	BackendPools []string
	// MaxBackends caps the backends with series of their own, all pools
	// together (the first by pool and backend id); the rest are counted in
	// singularity_edge_metrics_backends_omitted.
	MaxBackends int
	// LatencyBuckets are the upper bounds, in seconds, of the request
	// duration histograms.
	LatencyBuckets []float64
}

// DefaultMetricsConfig returns pool-level series only, a cap of 10,000
// backends for the opt-in, and buckets from 1 ms to 10 s.
func DefaultMetricsConfig() MetricsConfig {
	return MetricsConfig{
		MaxBackends:    10_000,
		LatencyBuckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
	}
}

func (c MetricsConfig) withDefaults() MetricsConfig {
	def := DefaultMetricsConfig()
	if c.MaxBackends <= 0 {
		c.MaxBackends = def.MaxBackends
	}
	if len(c.LatencyBuckets) == 0 {
		c.LatencyBuckets = def.LatencyBuckets
	}
	return c
}

func (c MetricsConfig) perBackend(pool string) bool {
	return slices.Contains(c.BackendPools, "*") || slices.Contains(c.BackendPools, pool)
}

// poolState is the live, per-node state of one pool: totals over its
// backends, kept by the request path next to the backends' own counters
// so that they stay monotonic when backends come and go. Like backendState
// it outlives Tables.
type poolState struct {
	conns     atomic.Int64
	requests  atomic.Int64
	failures  atomic.Int64
	bytesIn   atomic.Int64
	bytesOut  atomic.Int64
	ejections atomic.Int64
	latency   prometheus.Observer // nil without metrics
	// events aggregates the pool's passive ejections into log lines (the
	// Manager's health logger); nil outside a Manager.
	events *ratelog.Logger
	// activity queues the pool's backends for the Manager's next
	// persist (Backend.noteActivity); nil outside a Manager.
	activity *activityLog
}

// backendHist is a backend's own latency histogram (opt-in pools only).
type backendHist struct{ o prometheus.Observer }

// collector exports pool state (and backend state for opted-in pools) by
// reading the live atomics at scrape time; the request path only adds to
// atomics and, for latency, to a histogram child it holds.
type collector struct {
	cfg      MetricsConfig
	table    func() *Table
	rebuilds func() int64

	poolLatency    *prometheus.HistogramVec
	backendLatency *prometheus.HistogramVec

	// mu guards the children that forget deletes.
	mu           sync.Mutex
	poolChildren map[string]bool
	backendKids  map[[3]string]bool
	opted        map[string]bool // pools whose backends had histograms at the last forget
	omitted      atomic.Int64

	poolRequests    *prometheus.Desc
	poolFailures    *prometheus.Desc
	poolConns       *prometheus.Desc
	poolBytesIn     *prometheus.Desc
	poolBytesOut    *prometheus.Desc
	poolEjections   *prometheus.Desc
	poolBackends    *prometheus.Desc
	backendUp       *prometheus.Desc
	activeConns     *prometheus.Desc
	requests        *prometheus.Desc
	failures        *prometheus.Desc
	bytesIn         *prometheus.Desc
	bytesOut        *prometheus.Desc
	ejections       *prometheus.Desc
	healthChecks    *prometheus.Desc
	omittedDesc     *prometheus.Desc
	tableRebuilds   *prometheus.Desc
	tablePoolsTotal *prometheus.Desc
	healthTargets   *prometheus.Desc
	targets         func() int
}

func newCollector(table func() *Table, rebuilds func() int64, cfg MetricsConfig) *collector {
	cfg = cfg.withDefaults()
	pl := []string{"pool"}
	bl := []string{"pool", "backend", "address"}
	return &collector{
		cfg:      cfg,
		table:    table,
		rebuilds: rebuilds,
		poolLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "singularity_edge_pool_request_duration_seconds",
			Help:    "Duration of requests to the pool's backends, from sending the request to the end of the response.",
			Buckets: cfg.LatencyBuckets,
		}, pl),
		backendLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "singularity_edge_backend_request_duration_seconds",
			Help:    "Duration of requests to the backend (pools with per-backend metrics only).",
			Buckets: cfg.LatencyBuckets,
		}, bl),
		poolChildren: make(map[string]bool),
		backendKids:  make(map[[3]string]bool),
		opted:        make(map[string]bool),
		poolRequests: prometheus.NewDesc("singularity_edge_pool_requests_total",
			"Requests sent to the pool's backends (retries count once per attempt).", pl, nil),
		poolFailures: prometheus.NewDesc("singularity_edge_pool_failures_total",
			"Requests to the pool's backends that failed with a connection error or a 5xx answer.", pl, nil),
		poolConns: prometheus.NewDesc("singularity_edge_pool_active_connections",
			"Requests in flight to the pool's backends.", pl, nil),
		poolBytesIn: prometheus.NewDesc("singularity_edge_pool_received_bytes_total",
			"Bytes received from the pool's backends.", pl, nil),
		poolBytesOut: prometheus.NewDesc("singularity_edge_pool_sent_bytes_total",
			"Bytes sent to the pool's backends.", pl, nil),
		poolEjections: prometheus.NewDesc("singularity_edge_pool_ejections_total",
			"Times passive health checks ejected one of the pool's backends.", pl, nil),
		poolBackends: prometheus.NewDesc("singularity_edge_pool_backends",
			"Backends of the pool by state (healthy, unhealthy, draining).", []string{"pool", "state"}, nil),
		backendUp: prometheus.NewDesc("singularity_edge_backend_up",
			"1 when the backend can take new requests (passing active checks, not ejected, not draining), else 0.", bl, nil),
		activeConns: prometheus.NewDesc("singularity_edge_backend_active_connections",
			"Requests in flight to the backend.", bl, nil),
		requests: prometheus.NewDesc("singularity_edge_backend_requests_total",
			"Requests sent to the backend.", bl, nil),
		failures: prometheus.NewDesc("singularity_edge_backend_failures_total",
			"Requests to the backend that failed with a connection error or a 5xx answer.", bl, nil),
		bytesIn: prometheus.NewDesc("singularity_edge_backend_received_bytes_total",
			"Bytes received from the backend.", bl, nil),
		bytesOut: prometheus.NewDesc("singularity_edge_backend_sent_bytes_total",
			"Bytes sent to the backend.", bl, nil),
		ejections: prometheus.NewDesc("singularity_edge_backend_ejections_total",
			"Times passive health checks ejected the backend.", bl, nil),
		healthChecks: prometheus.NewDesc("singularity_edge_backend_health_checks_total",
			"Active health checks of the backend by result (pass, fail).", []string{"pool", "backend", "address", "result"}, nil),
		omittedDesc: prometheus.NewDesc("singularity_edge_metrics_backends_omitted",
			"Backends of pools with per-backend metrics left without series of their own because of the cap.", nil, nil),
		tableRebuilds: prometheus.NewDesc("singularity_edge_pools_table_rebuilds_total",
			"Routing table rebuilds after configuration changes.", nil, nil),
		tablePoolsTotal: prometheus.NewDesc("singularity_edge_pools",
			"Pools in the routing table.", nil, nil),
		healthTargets: prometheus.NewDesc("singularity_edge_health_check_targets",
			"Distinct addresses checked by active health checks (backends sharing an address and check share one).", nil, nil),
	}
}

// newPoolState returns the live state of a pool with its latency child.
func (c *collector) newPoolState(pool string) *poolState {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.poolChildren[pool] = true
	return &poolState{latency: c.poolLatency.WithLabelValues(pool)}
}

// forget removes the series of pools and backends that left the table,
// and gives the backends of opted-in pools (up to the cap) their own
// latency histogram; it runs after every rebuild.
func (c *collector) forget(t *Table) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for pool := range c.poolChildren {
		if t.byName[pool] == nil {
			c.poolLatency.DeleteLabelValues(pool)
			delete(c.poolChildren, pool)
		}
	}
	keep := make(map[[3]string]bool)
	n, omitted := 0, 0
	for _, p := range t.pools {
		want := c.cfg.perBackend(p.Name)
		if !want && !c.opted[p.Name] {
			// Never had histograms: nothing to clear (and no pass over
			// its backends on every rebuild).
			continue
		}
		for _, b := range p.backends {
			if !want {
				b.live.hist.Store(nil)
				continue
			}
			if n >= c.cfg.MaxBackends {
				omitted++
				b.live.hist.Store(nil)
				continue
			}
			n++
			k := [3]string{p.Name, b.ID, b.Addr}
			keep[k] = true
			if h := b.live.hist.Load(); h == nil || !c.backendKids[k] {
				b.live.hist.Store(&backendHist{o: c.backendLatency.WithLabelValues(k[:]...)})
			}
		}
	}
	for k := range c.backendKids {
		if !keep[k] {
			c.backendLatency.DeleteLabelValues(k[:]...)
		}
	}
	c.backendKids = keep
	c.omitted.Store(int64(omitted))
	clear(c.opted)
	for _, p := range t.pools {
		if c.cfg.perBackend(p.Name) {
			c.opted[p.Name] = true
		}
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		c.poolRequests, c.poolFailures, c.poolConns, c.poolBytesIn, c.poolBytesOut, c.poolEjections, c.poolBackends,
		c.backendUp, c.activeConns, c.requests, c.failures, c.bytesIn, c.bytesOut, c.ejections, c.healthChecks,
		c.omittedDesc, c.tableRebuilds, c.tablePoolsTotal, c.healthTargets,
	} {
		ch <- d
	}
	c.poolLatency.Describe(ch)
	c.backendLatency.Describe(ch)
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	t := c.table()
	ch <- prometheus.MustNewConstMetric(c.tableRebuilds, prometheus.CounterValue, float64(c.rebuilds()))
	ch <- prometheus.MustNewConstMetric(c.tablePoolsTotal, prometheus.GaugeValue, float64(len(t.pools)))
	ch <- prometheus.MustNewConstMetric(c.omittedDesc, prometheus.GaugeValue, float64(c.omitted.Load()))
	if c.targets != nil {
		ch <- prometheus.MustNewConstMetric(c.healthTargets, prometheus.GaugeValue, float64(c.targets()))
	}
	n := 0
	for _, p := range t.pools {
		st := p.Stats()
		ch <- prometheus.MustNewConstMetric(c.poolBackends, prometheus.GaugeValue, float64(st.HealthyBackends), p.Name, "healthy")
		ch <- prometheus.MustNewConstMetric(c.poolBackends, prometheus.GaugeValue, float64(st.UnhealthyBackends), p.Name, "unhealthy")
		ch <- prometheus.MustNewConstMetric(c.poolBackends, prometheus.GaugeValue, float64(st.DrainingBackends), p.Name, "draining")
		if ps := p.state; ps != nil {
			ch <- prometheus.MustNewConstMetric(c.poolRequests, prometheus.CounterValue, float64(ps.requests.Load()), p.Name)
			ch <- prometheus.MustNewConstMetric(c.poolFailures, prometheus.CounterValue, float64(ps.failures.Load()), p.Name)
			ch <- prometheus.MustNewConstMetric(c.poolConns, prometheus.GaugeValue, float64(ps.conns.Load()), p.Name)
			ch <- prometheus.MustNewConstMetric(c.poolBytesIn, prometheus.CounterValue, float64(ps.bytesIn.Load()), p.Name)
			ch <- prometheus.MustNewConstMetric(c.poolBytesOut, prometheus.CounterValue, float64(ps.bytesOut.Load()), p.Name)
			ch <- prometheus.MustNewConstMetric(c.poolEjections, prometheus.CounterValue, float64(ps.ejections.Load()), p.Name)
		}
		if !c.cfg.perBackend(p.Name) {
			continue
		}
		for _, b := range p.backends {
			if n >= c.cfg.MaxBackends {
				break
			}
			n++
			s := b.live
			up := 0.0
			if b.Available() {
				up = 1
			}
			l := []string{p.Name, b.ID, b.Addr}
			ch <- prometheus.MustNewConstMetric(c.backendUp, prometheus.GaugeValue, up, l...)
			ch <- prometheus.MustNewConstMetric(c.activeConns, prometheus.GaugeValue, float64(s.conns.Load()), l...)
			ch <- prometheus.MustNewConstMetric(c.requests, prometheus.CounterValue, float64(s.requests.Load()), l...)
			ch <- prometheus.MustNewConstMetric(c.failures, prometheus.CounterValue, float64(s.failures.Load()), l...)
			ch <- prometheus.MustNewConstMetric(c.bytesIn, prometheus.CounterValue, float64(s.bytesIn.Load()), l...)
			ch <- prometheus.MustNewConstMetric(c.bytesOut, prometheus.CounterValue, float64(s.bytesOut.Load()), l...)
			ch <- prometheus.MustNewConstMetric(c.ejections, prometheus.CounterValue, float64(s.ejections.Load()), l...)
			ch <- prometheus.MustNewConstMetric(c.healthChecks, prometheus.CounterValue, float64(s.checksPassed.Load()), p.Name, b.ID, b.Addr, "pass")
			ch <- prometheus.MustNewConstMetric(c.healthChecks, prometheus.CounterValue, float64(s.checksFailed.Load()), p.Name, b.ID, b.Addr, "fail")
		}
	}
	c.poolLatency.Collect(ch)
	c.backendLatency.Collect(ch)
}
