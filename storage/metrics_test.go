package storage

import (
	"context"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

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
	next:
		for _, m := range f.GetMetric() {
			for _, lp := range m.GetLabel() {
				if want, ok := labels[lp.GetName()]; ok && want != lp.GetValue() {
					continue next
				}
			}
			return value(m), true
		}
	}
	return 0, false
}

func value(m *dto.Metric) float64 {
	if m.Counter != nil {
		return m.Counter.GetValue()
	}
	return m.Gauge.GetValue()
}

func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	s := openStore(t, func(c *Config) { c.Registerer = reg; c.NodeID = "n" })
	ctx := context.Background()
	for i := 0; i < 3; i++ {
		mustUpdate(t, s, func(tx *Tx) error { return tx.PutPool(samplePool("p")) })
	}
	cs := ChangeSet{Origin: "peer", Seq: 1, HLC: 5, Changes: []Change{poolChange(t, "p", "old", ver(5, "peer", 1)), poolChange(t, "q", "new", ver(5, "peer", 1))}}
	for i := 0; i < 2; i++ {
		if _, err := applySet(s, cs); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Compact(ctx, TablePools); err != nil {
		t.Fatal(err)
	}
	for range 3 { // a miss, a miss that fills (admission), a hit
		if _, err := s.GetPool(ctx, "p"); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"singularity_edge_storage_commits_total", nil, 3},
		{"singularity_edge_storage_apply_rows_total", map[string]string{"result": "applied"}, 1},
		{"singularity_edge_storage_apply_rows_total", map[string]string{"result": "skipped"}, 3},
		{"singularity_edge_storage_apply_duplicate_change_sets_total", nil, 1},
		{"singularity_edge_storage_feed_last_index", nil, 4},
		{"singularity_edge_storage_block_cache_capacity_bytes", nil, 8 << 20},
		{"singularity_edge_storage_row_cache_capacity_bytes", nil, defaultRowCacheSize},
		{"singularity_edge_storage_row_cache_lookups_total", map[string]string{"result": "hit"}, 1},
		{"singularity_edge_storage_row_cache_lookups_total", map[string]string{"result": "miss"}, 2},
	} {
		got, ok := metricValue(t, reg, tc.name, tc.labels)
		if !ok || got != tc.want {
			t.Errorf("%s%v = %v (found %v), want %v", tc.name, tc.labels, got, ok, tc.want)
		}
	}
	if got, ok := metricValue(t, reg, "singularity_edge_storage_table_sst_bytes", map[string]string{"table": TablePools}); !ok || got == 0 {
		t.Errorf("pools SST bytes = %v, %v", got, ok)
	}
	// Compaction and flush figures: RocksDB answers these properties (the
	// collector leaves out a DB-wide one it does not answer), and nothing
	// runs once Compact has returned.
	for _, prop := range []string{"rocksdb.num-running-compactions", "rocksdb.num-running-flushes"} {
		if _, ok := s.base.GetIntProperty(prop); !ok {
			t.Errorf("RocksDB does not answer %s", prop)
		}
	}
	for _, table := range TableNames() {
		if _, ok := s.base.GetIntPropertyCF("rocksdb.estimate-pending-compaction-bytes", s.cfs[table]); !ok {
			t.Errorf("RocksDB does not answer rocksdb.estimate-pending-compaction-bytes for %s", table)
		}
		if _, ok := metricValue(t, reg, "singularity_edge_storage_compaction_pending_bytes", map[string]string{"table": table}); !ok {
			t.Errorf("no compaction_pending_bytes for %s", table)
		}
	}
	for _, name := range []string{"singularity_edge_storage_compactions_running", "singularity_edge_storage_flushes_running"} {
		waitFor(t, name+" = 0", func() bool {
			got, ok := metricValue(t, reg, name, nil)
			return ok && got == 0
		})
	}
	// Close unregisters, so a store reopened in the same process can register.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(testConfig(t, s.Dir()))
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if err := reg.Register(newCollector(s2)); err != nil {
		t.Fatalf("register after close: %v", err)
	}
}
