package proxy

import (
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/singularity-ng/singularity-edge/storage"
)

// metricValue finds one sample by name and labels in a registry.
func metricValue(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) (float64, bool) {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	metrics:
		for _, m := range f.GetMetric() {
			got := map[string]string{}
			for _, lp := range m.GetLabel() {
				got[lp.GetName()] = lp.GetValue()
			}
			for k, v := range labels {
				if got[k] != v {
					continue metrics
				}
			}
			return sampleValue(m), true
		}
	}
	return 0, false
}

func sampleValue(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Histogram != nil:
		return float64(m.Histogram.GetSampleCount())
	}
	return 0
}

func TestMetrics(t *testing.T) {
	ca := newTestCA(t)
	certs := &testCerts{}
	certs.add("m.test", ca.issue(t, "m.test"))
	backend := newEcho(t, "m")
	ptBackend := httptest.NewUnstartedServer(echoHandler("pt"))
	ptBackend.TLS = &tls.Config{Certificates: []tls.Certificate{ca.issue(t, "pt.test")}}
	ptBackend.StartTLS()
	t.Cleanup(ptBackend.Close)
	table := newTable(t,
		poolSpec{storage.Pool{Name: "m", SSLMode: "flexible", SSLDomain: "m.test", AllowHTTP: true}, []string{backend.URL}},
		poolSpec{storage.Pool{Name: "pt", SSLMode: "passthrough", SSLDomain: "pt.test"}, []string{ptBackend.URL}},
	)
	reg := prometheus.NewRegistry()
	cfg := testConfig()
	cfg.Registerer = reg
	p := startProxy(t, cfg, table, certs, nil)

	c := client(p.http, nil, false)
	for i := 0; i < 5; i++ {
		readAll(t, get(t, c, "http://m.test/"))
	}
	readAll(t, get(t, c, "http://unknown.test/"))
	tc := client(p.https, ca.pool, false)
	readAll(t, get(t, tc, "https://m.test/"))
	readAll(t, get(t, tc, "https://pt.test/"))
	tc.CloseIdleConnections()

	for _, tc := range []struct {
		name   string
		labels map[string]string
		min    float64
		max    float64
	}{
		{"singularity_edge_proxy_requests_total", map[string]string{"pool": "m", "code_class": "2xx"}, 6, 6},
		{"singularity_edge_proxy_requests_total", map[string]string{"pool": "none", "code_class": "4xx"}, 1, 1},
		{"singularity_edge_proxy_request_duration_seconds", map[string]string{"pool": "m"}, 6, 6},
		{"singularity_edge_tls_handshakes_total", map[string]string{"result": "ok"}, 1, 1},
		{"singularity_edge_tls_handshakes_total", map[string]string{"result": "passthrough"}, 1, 1},
		{"singularity_edge_proxy_active_connections", map[string]string{"listener": "http"}, 0, 10},
	} {
		v, ok := metricValue(t, reg, tc.name, tc.labels)
		if !ok || v < tc.min || v > tc.max {
			t.Errorf("%s%v = %v (found %v), want %v..%v", tc.name, tc.labels, v, ok, tc.min, tc.max)
		}
	}
	waitFor(t, "passthrough bytes counted", func() bool {
		v, ok := metricValue(t, reg, "singularity_edge_passthrough_bytes_total", nil)
		return ok && v > 1000
	})
	c.CloseIdleConnections()
	waitFor(t, "active connections back to 0", func() bool {
		v, _ := metricValue(t, reg, "singularity_edge_proxy_active_connections", map[string]string{"listener": "http"})
		w, _ := metricValue(t, reg, "singularity_edge_proxy_active_connections", map[string]string{"listener": "https"})
		return v == 0 && w == 0
	})

	// A second Server on the same registry is refused, not silently unmeasured.
	if _, err := New(cfg, p.router, nil, nil); err == nil {
		t.Fatal("second registration accepted")
	}
}

func TestAccessLog(t *testing.T) {
	backend := newEcho(t, "a")
	table := newTable(t, poolSpec{storage.Pool{Name: "a", Hosts: []string{"a.test"}}, []string{backend.URL}})
	for _, tc := range []struct {
		mode string
		want int
	}{
		{"off", 0},
		{"on", 10},
		{"sample:5", 2},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			core, logs := observer.New(zapcore.InfoLevel)
			cfg := testConfig()
			cfg.AccessLog = tc.mode
			cfg.Logger = zap.New(core)
			p := startProxy(t, cfg, table, nil, nil)
			c := client(p.http, nil, false)
			for i := 0; i < 10; i++ {
				req, _ := http.NewRequest("GET", "http://a.test/path/x?token=SECRET", nil)
				req.Header.Set("Authorization", "Bearer SECRET")
				resp, err := c.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				readAll(t, resp)
			}
			// The entry is written after the response, so the client can
			// be faster than the last log line.
			waitFor(t, "access entries", func() bool { return len(logs.FilterMessage("access").All()) >= tc.want })
			entries := logs.FilterMessage("access").All()
			if len(entries) != tc.want {
				t.Fatalf("%d access entries, want %d", len(entries), tc.want)
			}
			for _, e := range entries {
				fields := e.ContextMap()
				if fields["path"] != "/path/x" || fields["pool"] != "a" || fields["status"] != int64(200) || fields["method"] != "GET" {
					t.Fatalf("entry %v", fields)
				}
				for k, v := range fields {
					if s, ok := v.(string); ok && strings.Contains(s, "SECRET") {
						t.Fatalf("secret logged in %s: %q", k, s)
					}
				}
			}
		})
	}
}
