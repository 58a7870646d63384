package admin

import (
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

// registerMetrics registers the request metrics and, when asked, the Go
// runtime and process collectors on reg. The storage figures are not
// admin's: the store exports them itself (storage.Config.Registerer).
func registerMetrics(reg prometheus.Registerer, runtime bool) (*requestMetrics, error) {
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
	cs := []prometheus.Collector{m.requests, m.duration}
	if runtime {
		cs = append(cs, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	for i, c := range cs {
		if err := reg.Register(c); err != nil {
			// Leave the registry as it was, so that a corrected retry
			// does not trip over this attempt's half.
			for _, done := range cs[:i] {
				reg.Unregister(done)
			}
			return nil, fmt.Errorf("admin: register metrics: %w", err)
		}
	}
	return m, nil
}

// handleMetrics serves the Gatherer. It is open on connections to a
// loopback address (only local processes reach those, as long as a
// browser page is refused: checkLocalCaller) or when MetricsPublic is set;
// otherwise it needs the token like the API.
func (s *Server) handleMetrics(w http.ResponseWriter, r *http.Request) {
	if err := s.checkMetricsAccess(r); err != nil {
		s.writeError(w, r, err)
		return
	}
	s.promHandler.ServeHTTP(w, r)
}

func (s *Server) checkMetricsAccess(r *http.Request) error {
	if s.cfg.MetricsPublic {
		return nil
	}
	if !s.token.enabled || isLoopbackAddr(localAddr(r)) {
		err := checkLocalCaller(r)
		if err != nil && s.token.enabled && s.token.check(r) == nil {
			return nil
		}
		return err
	}
	return s.token.check(r)
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
