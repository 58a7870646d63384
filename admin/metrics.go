package admin

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// requestMetrics counts admin requests by route pattern (bounded: the
// patterns of routes(), or "unmatched"), method and status.
type requestMetrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

func (m *requestMetrics) observe(route, method string, status int, elapsed time.Duration) {
	m.requests.WithLabelValues(route, method, statusLabel(status)).Inc()
	m.duration.WithLabelValues(route).Observe(elapsed.Seconds())
}

// registerMetrics registers the request metrics and the storage collector
// (and, when asked, the Go runtime and process collectors) on reg.
func registerMetrics(reg prometheus.Registerer, store Store, runtime bool) (*requestMetrics, error) {
	m := &requestMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "singularity_edge_admin_requests_total",
			Help: "Admin API requests by route pattern, method and status code.",
		}, []string{"route", "method", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "singularity_edge_admin_request_duration_seconds",
			Help:    "Admin API request latency by route pattern.",
			Buckets: []float64{.001, .005, .01, .05, .1, .5, 1, 5, 30},
		}, []string{"route"}),
	}
	cs := []prometheus.Collector{m.requests, m.duration, newStorageCollector(store)}
	if runtime {
		cs = append(cs, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("admin: register metrics: %w", err)
		}
	}
	return m, nil
}

// storageCollector reads the store's table statistics at scrape time, so
// the figures are as fresh as the scrape and cost nothing in between.
type storageCollector struct {
	store         Store
	estimatedKeys *prometheus.Desc
	liveData      *prometheus.Desc
	sst           *prometheus.Desc
	memtable      *prometheus.Desc
	cacheUsage    *prometheus.Desc
	cacheCapacity *prometheus.Desc
}

// scrapeTimeout bounds the statistics read of one scrape.
const scrapeTimeout = 5 * time.Second

func newStorageCollector(store Store) *storageCollector {
	table := []string{"table"}
	return &storageCollector{
		store: store,
		estimatedKeys: prometheus.NewDesc("singularity_edge_storage_table_estimated_keys",
			"RocksDB's estimate of the keys in a table (column family), tombstones included.", table, nil),
		liveData: prometheus.NewDesc("singularity_edge_storage_table_live_data_bytes",
			"RocksDB's estimate of the live data in a table.", table, nil),
		sst: prometheus.NewDesc("singularity_edge_storage_table_sst_bytes",
			"Size of a table's SST files on disk.", table, nil),
		memtable: prometheus.NewDesc("singularity_edge_storage_table_memtable_bytes",
			"Memory held by a table's memtables.", table, nil),
		cacheUsage: prometheus.NewDesc("singularity_edge_storage_block_cache_usage_bytes",
			"Memory in use by the block cache shared by all tables.", nil, nil),
		cacheCapacity: prometheus.NewDesc("singularity_edge_storage_block_cache_capacity_bytes",
			"Capacity of the block cache shared by all tables.", nil, nil),
	}
}

func (c *storageCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.estimatedKeys, c.liveData, c.sst, c.memtable, c.cacheUsage, c.cacheCapacity} {
		ch <- d
	}
}

func (c *storageCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), scrapeTimeout)
	defer cancel()
	stats, err := c.store.TableStats(ctx)
	if err != nil {
		// The scrape reports the failure for these families and keeps the
		// others (the handler continues on error).
		ch <- prometheus.NewInvalidMetric(c.estimatedKeys, fmt.Errorf("storage table stats: %w", err))
		return
	}
	for _, t := range stats {
		ch <- prometheus.MustNewConstMetric(c.estimatedKeys, prometheus.GaugeValue, float64(t.EstimatedKeys), t.Table)
		ch <- prometheus.MustNewConstMetric(c.liveData, prometheus.GaugeValue, float64(t.LiveDataBytes), t.Table)
		ch <- prometheus.MustNewConstMetric(c.sst, prometheus.GaugeValue, float64(t.SSTBytes), t.Table)
		ch <- prometheus.MustNewConstMetric(c.memtable, prometheus.GaugeValue, float64(t.MemtableBytes), t.Table)
	}
	if len(stats) > 0 {
		ch <- prometheus.MustNewConstMetric(c.cacheUsage, prometheus.GaugeValue, float64(stats[0].BlockCacheUsage))
		ch <- prometheus.MustNewConstMetric(c.cacheCapacity, prometheus.GaugeValue, float64(stats[0].BlockCacheCapacity))
	}
}

// handleMetrics serves the Gatherer. It is open on connections to a
// loopback address (only local processes reach those) or when
// MetricsPublic is set; otherwise it needs the token like the API.
func (s *Server) handleMetrics(w http.ResponseWriter, r *http.Request) {
	if !s.cfg.MetricsPublic && !isLoopbackAddr(localAddr(r)) {
		if err := s.token.check(r); err != nil {
			s.writeError(w, r, err)
			return
		}
	}
	s.promHandler.ServeHTTP(w, r)
}

func (s *Server) newMetricsHandler() http.Handler {
	return promhttp.HandlerFor(s.gather, promhttp.HandlerOpts{
		ErrorHandling: promhttp.ContinueOnError,
		ErrorLog:      zapPromLogger{s},
	})
}

// zapPromLogger sends promhttp's gathering errors to the admin logger.
type zapPromLogger struct{ s *Server }

func (l zapPromLogger) Println(v ...any) {
	l.s.logger.Warn("metrics gathering: " + fmt.Sprint(v...))
}

func localAddr(r *http.Request) net.Addr {
	a, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	return a
}
