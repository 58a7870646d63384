package admin

import (
	"bytes"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	dto "github.com/prometheus/client_model/go"

	"github.com/singularity-ng/singularity-edge/storage"
)

func scrape(t *testing.T, h *harness) map[string]*dto.MetricFamily {
	t.Helper()
	r := h.do("GET", "/metrics", nil, noAuth)
	r.expect(t, http.StatusOK, "")
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(bytes.NewReader(r.Body))
	if err != nil {
		t.Fatalf("parse /metrics: %v\n%s", err, r.Body)
	}
	return families
}

// newHarnessWithStoreMetrics opens a store that registers its
// singularity_edge_storage_* metrics on the registry admin serves, the way
// the agent wires them.
func newHarnessWithStoreMetrics(t *testing.T, opts ...harnessOption) (*harness, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	cfg := storage.DefaultConfig()
	cfg.Dir = t.TempDir()
	cfg.EncryptionKey = testEncryptionKey()
	cfg.SyncWAL = false
	cfg.BlockCacheSize = 8 << 20
	cfg.Registerer = reg
	st, err := storage.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	opts = append([]harnessOption{withConfig(func(c *Config) { c.Registerer, c.Gatherer = reg, reg })}, opts...)
	return newHarnessOn(t, st, opts...), reg
}

func TestMetrics(t *testing.T) {
	h, _ := newHarnessWithStoreMetrics(t)
	h.createPool(map[string]any{"name": "web"})
	h.do("GET", "/api/pools/nope", nil)

	families := scrape(t, h)
	for _, name := range []string{
		"singularity_edge_storage_table_estimated_keys",
		"singularity_edge_storage_table_live_data_bytes",
		"singularity_edge_storage_table_sst_bytes",
		"singularity_edge_storage_table_memtable_bytes",
		"singularity_edge_storage_block_cache_usage_bytes",
		"singularity_edge_storage_block_cache_capacity_bytes",
		"singularity_edge_storage_commits_total",
		"singularity_edge_storage_compactions_running",
		"singularity_edge_storage_compaction_pending_bytes",
		"singularity_edge_storage_flushes_running",
		"singularity_edge_admin_requests_total",
		"singularity_edge_admin_request_duration_seconds",
	} {
		if families[name] == nil {
			t.Errorf("family %s missing", name)
		}
	}
	tables := map[string]bool{}
	for _, m := range families["singularity_edge_storage_table_memtable_bytes"].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "table" {
				if tables[l.GetValue()] {
					t.Errorf("table %s served twice", l.GetValue())
				}
				tables[l.GetValue()] = true
			}
		}
	}
	for _, want := range []string{"pools", "backends", "certificates", "observations"} {
		if !tables[want] {
			t.Errorf("no storage metrics for table %s (have %v)", want, tables)
		}
	}
	if v := families["singularity_edge_storage_block_cache_capacity_bytes"].GetMetric()[0].GetGauge().GetValue(); v != 8<<20 {
		t.Errorf("block cache capacity %v", v)
	}
	if v := families["singularity_edge_storage_commits_total"].GetMetric()[0].GetCounter().GetValue(); v != 1 {
		t.Errorf("storage commits %v, want 1 (the pool)", v)
	}

	// Requests are counted by route pattern, not by raw path.
	counts := map[string]float64{}
	for _, m := range families["singularity_edge_admin_requests_total"].GetMetric() {
		key := ""
		for _, l := range m.GetLabel() {
			key += l.GetName() + "=" + l.GetValue() + ","
		}
		counts[key] = m.GetCounter().GetValue()
	}
	if counts["code=201,method=POST,route=POST /api/pools,"] != 1 || counts["code=404,method=GET,route=GET /api/pools/{name},"] != 1 {
		t.Errorf("request counts %v", counts)
	}

	// Runtime collectors only when asked for.
	if families["go_goroutines"] != nil {
		t.Error("runtime collectors registered without RegisterRuntimeCollectors")
	}
	h2 := newHarness(t, withConfig(func(c *Config) { c.RegisterRuntimeCollectors = true }))
	families = scrape(t, h2)
	if families["go_goroutines"] == nil || families["process_open_fds"] == nil {
		t.Error("runtime collectors missing")
	}
}

// Admin exports no storage figures of its own: a store that registers
// nowhere leaves them out of /metrics, private registry or not.
func TestMetricsAdminOnly(t *testing.T) {
	for name, opt := range map[string]harnessOption{
		"shared registry":  withConfig(func(*Config) {}),
		"private registry": withConfig(func(c *Config) { c.Registerer, c.Gatherer = nil, nil }),
	} {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, opt)
			h.do("GET", "/api/cluster", nil).expect(t, http.StatusOK, "")
			families := scrape(t, h)
			if families["singularity_edge_admin_requests_total"] == nil {
				t.Fatal("admin request metrics missing")
			}
			for fam := range families {
				if strings.HasPrefix(fam, "singularity_edge_storage_") {
					t.Errorf("admin serves storage family %s itself", fam)
				}
			}
		})
	}
}

func TestMetricsStoreClosed(t *testing.T) {
	h, _ := newHarnessWithStoreMetrics(t)
	h.do("GET", "/api/cluster", nil).expect(t, http.StatusOK, "")
	if scrape(t, h)["singularity_edge_storage_commits_total"] == nil {
		t.Fatal("storage metrics missing while the store is open")
	}
	if err := h.store.Close(); err != nil {
		t.Fatal(err)
	}
	// Close unregisters the store's collector; the rest is still served.
	families := scrape(t, h)
	if families["singularity_edge_admin_requests_total"] == nil {
		t.Fatal("metrics lost with the store closed")
	}
	if families["singularity_edge_storage_commits_total"] != nil {
		t.Fatal("storage metrics served after the store closed")
	}
}
