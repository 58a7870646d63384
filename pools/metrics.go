package pools

import (
	"github.com/prometheus/client_golang/prometheus"
)

// collector exports backend and pool state by reading the live atomics at
// scrape time, so the request path never touches a metric object.
type collector struct {
	table    func() *Table
	rebuilds func() int64

	backendUp       *prometheus.Desc
	activeConns     *prometheus.Desc
	requests        *prometheus.Desc
	failures        *prometheus.Desc
	bytesIn         *prometheus.Desc
	bytesOut        *prometheus.Desc
	latency         *prometheus.Desc
	ejections       *prometheus.Desc
	healthChecks    *prometheus.Desc
	poolBackends    *prometheus.Desc
	tableRebuilds   *prometheus.Desc
	tablePoolsTotal *prometheus.Desc
}

func newCollector(table func() *Table, rebuilds func() int64) *collector {
	bl := []string{"pool", "backend"}
	return &collector{
		table:    table,
		rebuilds: rebuilds,
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
		latency: prometheus.NewDesc("singularity_edge_backend_latency_seconds",
			"Exponentially weighted moving average of request latency to the backend.", bl, nil),
		ejections: prometheus.NewDesc("singularity_edge_backend_ejections_total",
			"Times passive health checks ejected the backend.", bl, nil),
		healthChecks: prometheus.NewDesc("singularity_edge_backend_health_checks_total",
			"Active health checks of the backend by result (pass, fail).", []string{"pool", "backend", "result"}, nil),
		poolBackends: prometheus.NewDesc("singularity_edge_pool_backends",
			"Backends of the pool by state (healthy, unhealthy, draining).", []string{"pool", "state"}, nil),
		tableRebuilds: prometheus.NewDesc("singularity_edge_pools_table_rebuilds_total",
			"Routing table rebuilds after configuration changes.", nil, nil),
		tablePoolsTotal: prometheus.NewDesc("singularity_edge_pools",
			"Pools in the routing table.", nil, nil),
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		c.backendUp, c.activeConns, c.requests, c.failures, c.bytesIn, c.bytesOut,
		c.latency, c.ejections, c.healthChecks, c.poolBackends, c.tableRebuilds, c.tablePoolsTotal,
	} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	t := c.table()
	ch <- prometheus.MustNewConstMetric(c.tableRebuilds, prometheus.CounterValue, float64(c.rebuilds()))
	ch <- prometheus.MustNewConstMetric(c.tablePoolsTotal, prometheus.GaugeValue, float64(len(t.pools)))
	for _, p := range t.pools {
		st := p.Stats()
		ch <- prometheus.MustNewConstMetric(c.poolBackends, prometheus.GaugeValue, float64(st.HealthyBackends), p.Name, "healthy")
		ch <- prometheus.MustNewConstMetric(c.poolBackends, prometheus.GaugeValue, float64(st.UnhealthyBackends), p.Name, "unhealthy")
		ch <- prometheus.MustNewConstMetric(c.poolBackends, prometheus.GaugeValue, float64(st.DrainingBackends), p.Name, "draining")
		for _, b := range p.backends {
			s := b.live
			up := 0.0
			if b.Available() {
				up = 1
			}
			ch <- prometheus.MustNewConstMetric(c.backendUp, prometheus.GaugeValue, up, p.Name, b.ID)
			ch <- prometheus.MustNewConstMetric(c.activeConns, prometheus.GaugeValue, float64(s.conns.Load()), p.Name, b.ID)
			ch <- prometheus.MustNewConstMetric(c.requests, prometheus.CounterValue, float64(s.requests.Load()), p.Name, b.ID)
			ch <- prometheus.MustNewConstMetric(c.failures, prometheus.CounterValue, float64(s.failures.Load()), p.Name, b.ID)
			ch <- prometheus.MustNewConstMetric(c.bytesIn, prometheus.CounterValue, float64(s.bytesIn.Load()), p.Name, b.ID)
			ch <- prometheus.MustNewConstMetric(c.bytesOut, prometheus.CounterValue, float64(s.bytesOut.Load()), p.Name, b.ID)
			ch <- prometheus.MustNewConstMetric(c.latency, prometheus.GaugeValue, float64(s.latencyEWMA.Load())/1e9, p.Name, b.ID)
			ch <- prometheus.MustNewConstMetric(c.ejections, prometheus.CounterValue, float64(s.ejections.Load()), p.Name, b.ID)
			ch <- prometheus.MustNewConstMetric(c.healthChecks, prometheus.CounterValue, float64(s.checksPassed.Load()), p.Name, b.ID, "pass")
			ch <- prometheus.MustNewConstMetric(c.healthChecks, prometheus.CounterValue, float64(s.checksFailed.Load()), p.Name, b.ID, "fail")
		}
	}
}
