package proxy

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/singularity-ng/singularity-edge/internal/tunnelloop"
)

// metrics holds the proxy's collectors. Children are resolved once (per
// listener, per handshake result, per pool on first use) so that the
// request path increments a cached counter instead of hashing label values.
type metrics struct {
	requests   *prometheus.CounterVec
	duration   *prometheus.HistogramVec
	active     *prometheus.GaugeVec
	handshakes *prometheus.CounterVec

	activeHTTP, activeHTTPS           prometheus.Gauge
	hsOK, hsFailed, hsRefused, hsACME prometheus.Counter
	hsPassthrough                     prometheus.Counter
	passthroughBytes                  *passthroughCounter
	// limited counts clients cut or refused by a limit, by limit.
	limited                        *prometheus.CounterVec
	h2ResetFloods, upgradesRefused prometheus.Counter
	// proxyHeadersIgnored counts PROXY headers from peers outside
	// Config.ProxyProtocolFrom.
	proxyHeadersIgnored          prometheus.Counter
	exchangesRefused, slowBodies prometheus.Counter
	pools                        sync.Map // pool name -> *poolMetrics
	noPool                       *poolMetrics
	codeClasses                  [6]string
}

// poolMetrics are the cached children of one pool.
type poolMetrics struct {
	name     string
	codes    [6]prometheus.Counter // by status/100; [0] for anything outside 1xx-5xx
	duration prometheus.Observer
}

// noPoolLabel is the pool label of requests no pool served (unknown host,
// bad request).
const noPoolLabel = "none"

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "singularity_edge_proxy_requests_total",
			Help: "HTTP requests answered by the proxy, by pool and status class (1xx-5xx).",
		}, []string{"pool", "code_class"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "singularity_edge_proxy_request_duration_seconds",
			Help:    "Time from a request head being read to its response being written, by pool.",
			Buckets: []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30},
		}, []string{"pool"}),
		active: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "singularity_edge_proxy_active_connections",
			Help: "Client connections currently open, by listener (http, https).",
		}, []string{"listener"}),
		handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "singularity_edge_tls_handshakes_total",
			Help: "Client TLS connections by outcome: ok (terminated), failed, refused (SNI not served over TLS here), acme (TLS-ALPN-01 challenge), passthrough.",
		}, []string{"result"}),
		passthroughBytes: &passthroughCounter{desc: prometheus.NewDesc("singularity_edge_passthrough_bytes_total",
			"Bytes relayed by SNI passthrough connections, both directions.", nil, nil)},
		limited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "singularity_edge_proxy_limited_total",
			Help: "Clients cut or refused by a limit: h2_resets (HTTP/2 connection closed for cancelling too many streams), upgrades (an upgrade, or an SNI passthrough connection, refused: too many tunnels at once), client_exchanges (503: too many requests in flight from one client address), slow_body (a body sent or read below the minimum rate).",
		}, []string{"limit"}),
		proxyHeadersIgnored: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "singularity_edge_proxy_protocol_ignored_total",
			Help: "PROXY protocol headers whose addresses were ignored because the peer that sent them is not in --proxy-protocol-from (a proxy left out of that list, or a client forging its address).",
		}),
		codeClasses: [6]string{"other", "1xx", "2xx", "3xx", "4xx", "5xx"},
	}
	m.h2ResetFloods = m.limited.WithLabelValues("h2_resets")
	m.upgradesRefused = m.limited.WithLabelValues("upgrades")
	m.exchangesRefused = m.limited.WithLabelValues("client_exchanges")
	m.slowBodies = m.limited.WithLabelValues("slow_body")
	m.activeHTTP = m.active.WithLabelValues("http")
	m.activeHTTPS = m.active.WithLabelValues("https")
	m.hsOK = m.handshakes.WithLabelValues("ok")
	m.hsFailed = m.handshakes.WithLabelValues("failed")
	m.hsRefused = m.handshakes.WithLabelValues("refused")
	m.hsACME = m.handshakes.WithLabelValues("acme")
	m.hsPassthrough = m.handshakes.WithLabelValues("passthrough")
	m.noPool = m.forPool(noPoolLabel)
	if reg != nil {
		for _, c := range []prometheus.Collector{m.requests, m.duration, m.active, m.handshakes, m.passthroughBytes, m.limited, m.proxyHeadersIgnored} {
			if err := reg.Register(c); err != nil {
				var are prometheus.AlreadyRegisteredError
				if errors.As(err, &are) {
					return nil, fmt.Errorf("proxy: metrics already registered (one Server per registry): %w", err)
				}
				return nil, fmt.Errorf("proxy: register metrics: %w", err)
			}
		}
	}
	return m, nil
}

// forPool returns the cached children for a pool, creating them once.
func (m *metrics) forPool(name string) *poolMetrics {
	if v, ok := m.pools.Load(name); ok {
		return v.(*poolMetrics)
	}
	pm := &poolMetrics{name: name, duration: m.duration.WithLabelValues(name)}
	for i, class := range m.codeClasses {
		pm.codes[i] = m.requests.WithLabelValues(name, class)
	}
	v, _ := m.pools.LoadOrStore(name, pm)
	return v.(*poolMetrics)
}

func (pm *poolMetrics) observe(status int, seconds float64) {
	class := status / 100
	if class < 1 || class > 5 {
		class = 0
	}
	pm.codes[class].Inc()
	pm.duration.Observe(seconds)
}

// byteCounter is what the goroutine relay counts moved bytes with.
type byteCounter interface{ Add(float64) }

// passthroughCounter is singularity_edge_passthrough_bytes_total: the
// bytes Go code moved (peeked ClientHellos, the goroutine relay) plus those
// the event loops delivered, read from the loops at collection, so that a
// running tunnel wakes nothing in Go to be counted.
type passthroughCounter struct {
	desc  *prometheus.Desc
	bytes atomic.Uint64
	loops atomic.Pointer[tunnelloop.Group]
}

func (c *passthroughCounter) Add(v float64) { c.bytes.Add(uint64(v)) }

func (c *passthroughCounter) value() float64 {
	n := c.bytes.Load()
	if g := c.loops.Load(); g != nil {
		n += g.Moved()
	}
	return float64(n)
}

func (c *passthroughCounter) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *passthroughCounter) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, c.value())
}
