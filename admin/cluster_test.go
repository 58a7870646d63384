package admin

import (
	"net/http"
	"testing"
	"time"
)

func TestClusterSingleNodeDefault(t *testing.T) {
	h := newHarness(t)
	var c clusterResponse
	r := h.do("GET", "/api/cluster", nil)
	r.expect(t, http.StatusOK, "")
	r.json(t, &c)
	if c.NodeID != h.store.NodeID() || len(c.Members) != 1 {
		t.Fatalf("cluster %+v", c)
	}
	m := c.Members[0]
	if m.ID != h.store.NodeID() || m.Name != "edge-test" || m.Region != "iad" || m.State != "alive" || !m.Self || m.Version != "test" {
		t.Fatalf("member %+v", m)
	}
	if m.Replication != nil || m.Addresses == nil {
		t.Fatalf("member %+v", m)
	}
	if len(c.Regions) != 1 || c.Regions[0] != (regionSummary{Region: "iad", Members: 1, Alive: 1}) {
		t.Fatalf("regions %+v", c.Regions)
	}
}

// A node without a membership layer says ready in GET /api/cluster exactly
// when /api/health does: `cluster status` and the dashboard showed a lone
// agent as "not ready" while it served.
func TestClusterSingleNodeReady(t *testing.T) {
	single := func(d *Deps) {
		d.Cluster = SingleMember{ID: "x", Name: "edge-test", Region: "iad", State: "alive", Self: true}
	}
	notYet := make(chan struct{})
	tests := []struct {
		name  string
		opts  []harnessOption
		ready bool
	}{
		{"no cluster, ready", nil, true},
		{"single member, ready", []harnessOption{withDeps(single)}, true},
		{"single member, starting", []harnessOption{withDeps(single), withDeps(func(d *Deps) { d.Ready = notYet })}, false},
		{"no cluster, starting", []harnessOption{withDeps(func(d *Deps) { d.Ready = notYet })}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, tc.opts...)
			var c clusterResponse
			r := h.do("GET", "/api/cluster", nil)
			r.expect(t, http.StatusOK, "")
			r.json(t, &c)
			if len(c.Members) != 1 || !c.Members[0].Self || c.Members[0].Ready != tc.ready {
				t.Fatalf("members %+v, want this node alone with ready %v", c.Members, tc.ready)
			}
			health := h.do("GET", "/api/health", nil)
			if (health.Status == http.StatusOK) != tc.ready {
				t.Errorf("/api/health %d while the member says ready %v", health.Status, tc.ready)
			}
		})
	}
}

type staticCluster []Member

func (s staticCluster) Members() []Member { return s }

func TestClusterMembersByRegion(t *testing.T) {
	seen := time.Now().UTC().Truncate(time.Second)
	st := openStore(t, testEncryptionKey())
	members := staticCluster{
		{ID: "n3", Name: "syd-1", Region: "syd", State: "suspect", LastSeen: &seen,
			Replication: &ReplicationStatus{Connected: true, PendingChanges: 4, LagSeconds: 0.8}},
		{ID: st.NodeID(), Name: "iad-1", Region: "iad", State: "alive", Addresses: map[string]string{"gossip": "10.0.0.1:7946"}},
		{ID: "n2", Name: "iad-2", Region: "iad", State: "alive"},
	}
	h := newHarnessOn(t, st, withDeps(func(d *Deps) { d.Cluster = members }))
	var c clusterResponse
	h.do("GET", "/api/cluster", nil).json(t, &c)
	if len(c.Members) != 3 || c.Members[0].Name != "iad-1" || c.Members[1].Name != "iad-2" || c.Members[2].Name != "syd-1" {
		t.Fatalf("members not sorted by region, name: %+v", c.Members)
	}
	if !c.Members[0].Self || c.Members[1].Self || c.Members[1].Addresses == nil {
		t.Fatalf("self/addresses: %+v", c.Members)
	}
	if r := c.Members[2].Replication; r == nil || r.PendingChanges != 4 || c.Members[2].LastSeen == nil {
		t.Fatalf("replication %+v", c.Members[2])
	}
	want := []regionSummary{{Region: "iad", Members: 2, Alive: 2}, {Region: "syd", Members: 1, Alive: 0}}
	if len(c.Regions) != 2 || c.Regions[0] != want[0] || c.Regions[1] != want[1] {
		t.Fatalf("regions %+v", c.Regions)
	}
	// The caller's slice is not modified.
	if members[1].Self {
		t.Fatal("Members() result was mutated")
	}
}

func TestSingleMember(t *testing.T) {
	addrs := map[string]string{"admin": "127.0.0.1:4000"}
	c := SingleMember{ID: "n1", Name: "one", Region: "iad", State: "alive", Addresses: addrs}
	ms := c.Members()
	if len(ms) != 1 || !ms[0].Self || ms[0].ID != "n1" {
		t.Fatalf("members %+v", ms)
	}
	ms[0].Addresses["x"] = "y"
	if _, ok := addrs["x"]; ok {
		t.Fatal("Members shares its address map")
	}
}
