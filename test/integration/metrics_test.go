package integration

import (
	"net/http"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// The agent's /metrics gathers every part on one registry and parses with
// the Prometheus text parser.
func TestAgentMetricsParse(t *testing.T) {
	t.Parallel()
	token := newToken(t)
	// Per-backend series are opt-in per pool: pool m opts in.
	a := startAgent(t, agentOptions{token: token, args: []string{"--metrics-backend-pools", "m"}})
	b := startBackend(t, "m1", nil)
	if code := a.api(token, "POST", "/api/pools", map[string]any{"name": "m", "hosts": []string{"m.test"}}, nil); code != http.StatusCreated {
		t.Fatalf("create pool: %d", code)
	}
	if code := a.api(token, "POST", "/api/pools/m/backends", map[string]any{"url": b.url()}, nil); code != http.StatusCreated {
		t.Fatalf("add backend: %d", code)
	}
	client := &http.Client{Timeout: 5 * time.Second}
	waitFor(t, 10*time.Second, "traffic through the pool", func() bool {
		code, _ := proxyGet(t, client, a.http, "m.test")
		return code == http.StatusOK
	})

	resp, err := http.Get("http://" + a.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("/metrics does not parse: %v", err)
	}
	for _, name := range []string{
		"singularity_edge_proxy_requests_total",
		"singularity_edge_proxy_request_duration_seconds",
		"singularity_edge_backend_up",
		"singularity_edge_backend_requests_total",
		"singularity_edge_backend_request_duration_seconds",
		"singularity_edge_pool_backends",
		"singularity_edge_pool_requests_total",
		"singularity_edge_pool_request_duration_seconds",
		"singularity_edge_build_info",
		"singularity_edge_storage_commits_total",
		"singularity_edge_storage_table_sst_bytes",
		"singularity_edge_admin_requests_total",
		"go_goroutines",
		"process_resident_memory_bytes",
	} {
		if families[name] == nil {
			t.Errorf("metric family %s missing", name)
		}
	}
	if f := families["singularity_edge_backend_up"]; f != nil {
		labels := map[string]string{}
		for _, l := range f.GetMetric()[0].GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		if labels["pool"] != "m" || labels["backend"] == "" || labels["address"] == "" {
			t.Errorf("backend_up labels %v: want pool, backend id and address", labels)
		}
	}
	if f := families["singularity_edge_build_info"]; f != nil {
		labels := map[string]string{}
		for _, l := range f.GetMetric()[0].GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		if labels["version"] == "" || labels["commit"] == "" {
			t.Errorf("build_info labels %v: want version and commit", labels)
		}
	}
}
