package pools

import (
	"fmt"
	"testing"

	"github.com/singularity-ng/singularity-edge/storage"
)

func lookupName(p *Pool) string {
	if p == nil {
		return "<nil>"
	}
	return p.Name
}

func TestTableLookup(t *testing.T) {
	pools := []storage.Pool{
		{Name: "apex", SSLDomain: "example.com"},
		{Name: "www", Hosts: []string{"www.example.com", "WWW.other.org"}},
		{Name: "apps", SSLDomain: "*.apps.example.com"},
		{Name: "wild", Hosts: []string{"*.example.com"}},
		{Name: "zz-fallback", Default: true},
		{Name: "zz-second-default", Default: true},
		// Claims hosts already claimed by pools sorting before it.
		{Name: "zzz-late", SSLDomain: "example.com", Hosts: []string{"*.example.com"}},
	}
	tbl := NewTable(pools, nil, nil, TableOptions{})
	tests := []struct{ host, want string }{
		{"example.com", "apex"},
		{"EXAMPLE.com", "apex"},
		{"example.com:8443", "apex"},
		{"example.com.", "apex"},
		{"Example.Com.:443", "apex"},
		{"www.example.com", "www"},
		{"www.other.org", "www"},
		{"a.example.com", "wild"},
		{"A.Example.COM", "wild"},
		{"a.b.example.com", "zz-fallback"},      // wildcard covers one label only
		{"x.apps.example.com", "apps"},          // the more specific wildcard
		{"apps.example.com", "wild"},            // *.apps.example.com does not cover its base
		{"y.x.apps.example.com", "zz-fallback"}, // two labels deep
		{"unknown.org", "zz-fallback"},
		{"", "zz-fallback"},
		{"[::1]:443", "zz-fallback"},
		{".example.com", "zz-fallback"},
	}
	for _, tt := range tests {
		if got := lookupName(tbl.Lookup(tt.host)); got != tt.want {
			t.Errorf("Lookup(%q) = %s, want %s", tt.host, got, tt.want)
		}
	}

	if got := lookupName(tbl.Pool("www")); got != "www" {
		t.Errorf("Pool(www) = %s", got)
	}
	if got := lookupName(tbl.Pool("WWW")); got != "www" {
		t.Errorf("Pool(WWW) = %s", got)
	}
	if tbl.Pool("nope") != nil {
		t.Error("Pool(nope) not nil")
	}
	if got := lookupName(tbl.Default()); got != "zz-fallback" {
		t.Errorf("Default() = %s", got)
	}
	if n := len(tbl.Pools()); n != len(pools) {
		t.Errorf("Pools() has %d pools", n)
	}

	noDefault := NewTable(pools[:2], nil, nil, TableOptions{})
	if p := noDefault.Lookup("unknown.org"); p != nil {
		t.Errorf("Lookup without default pool = %s", p.Name)
	}
	if p := EmptyTable().Lookup("example.com"); p != nil {
		t.Error("empty table found a pool")
	}
}

func TestTableBackends(t *testing.T) {
	pools := []storage.Pool{{Name: "a"}, {Name: "b"}}
	backends := []storage.Backend{
		{ID: "b2", PoolName: "a", Host: "10.0.0.2", Port: 80},
		{ID: "b1", PoolName: "a", Host: "10.0.0.1", Port: 80, Weight: 3, Region: "iad"},
		{ID: "b3", PoolName: "b", Host: "::1", Port: 8080, Scheme: "https"},
		{ID: "orphan", PoolName: "gone", Host: "10.0.0.9", Port: 80},
		{ID: "b1", PoolName: "b", Host: "10.0.0.8", Port: 80}, // duplicate id: first pool keeps it
	}
	tbl := NewTable(pools, backends, nil, TableOptions{})
	a := tbl.Pool("a")
	if got := fmt.Sprint(ids(a.Backends())); got != "[b1 b2]" {
		t.Fatalf("pool a backends %s", got)
	}
	if got := fmt.Sprint(ids(tbl.Pool("b").Backends())); got != "[b3]" {
		t.Fatalf("pool b backends %s", got)
	}
	if tbl.Backend("orphan") != nil {
		t.Error("backend of a missing pool is in the table")
	}
	b3 := tbl.Backend("b3")
	if b3.Addr != "[::1]:8080" || b3.Scheme != "https" {
		t.Errorf("b3 addr %q scheme %q", b3.Addr, b3.Scheme)
	}
	b1 := a.Backend("b1")
	if b1.Weight != 3 || b1.Region != "iad" || b1.Scheme != "http" || !b1.Healthy() {
		t.Errorf("b1 %+v healthy=%v", b1, b1.Healthy())
	}
	if b2 := a.Backend("b2"); b2.Weight != 1 {
		t.Errorf("b2 weight %d, want the default 1", b2.Weight)
	}
}

func TestTableSeedsHealthFromObservations(t *testing.T) {
	pools := []storage.Pool{{Name: "a"}, {Name: "held", HoldNewBackends: true}}
	backends := []storage.Backend{
		{ID: "down", PoolName: "a", Host: "10.0.0.1", Port: 80},
		{ID: "up", PoolName: "a", Host: "10.0.0.2", Port: 80},
		{ID: "new", PoolName: "held", Host: "10.0.0.3", Port: 80},
		{ID: "known", PoolName: "held", Host: "10.0.0.4", Port: 80},
	}
	obs := []storage.Observation{
		{BackendID: "down", Healthy: false, TotalRequests: 42, LastError: "refused"},
		{BackendID: "known", Healthy: true},
	}
	tbl := NewTable(pools, backends, obs, TableOptions{})
	for id, want := range map[string]bool{"down": false, "up": true, "new": false, "known": true} {
		if got := tbl.Backend(id).Healthy(); got != want {
			t.Errorf("%s healthy = %v, want %v", id, got, want)
		}
	}
	st := tbl.Backend("down").State()
	if st.TotalRequests != 42 || st.LastError != "refused" {
		t.Errorf("seeded state %+v", st)
	}
}

func TestLookupDoesNotAllocate(t *testing.T) {
	tbl := benchTable(1000)
	for _, host := range []string{"pool-17.example.com", "POOL-17.Example.com:443", "x.wild-17.example.com", "X.WILD-17.example.com.", "nothing.org"} {
		if n := testing.AllocsPerRun(100, func() { tbl.Lookup(host) }); n != 0 {
			t.Errorf("Lookup(%q) allocates %v times", host, n)
		}
	}
	if n := testing.AllocsPerRun(100, func() { tbl.Pool("POOL-17") }); n != 0 {
		t.Errorf("Pool allocates %v times", n)
	}
}

func ids(bs []*Backend) []string {
	out := make([]string, len(bs))
	for i, b := range bs {
		out[i] = b.ID
	}
	return out
}

// benchTable builds n pools "pool-i" serving pool-i.example.com and
// *.wild-i.example.com, each with one backend, plus a default pool.
func benchTable(n int) *Table {
	pools := make([]storage.Pool, 0, n+1)
	backends := make([]storage.Backend, 0, n)
	for i := range n {
		name := fmt.Sprintf("pool-%d", i)
		pools = append(pools, storage.Pool{Name: name, SSLDomain: name + ".example.com", Hosts: []string{fmt.Sprintf("*.wild-%d.example.com", i)}})
		backends = append(backends, storage.Backend{ID: fmt.Sprintf("b-%d", i), PoolName: name, Host: "127.0.0.1", Port: 8000 + i%1000})
	}
	pools = append(pools, storage.Pool{Name: "zz-default", Default: true})
	return NewTable(pools, backends, nil, TableOptions{})
}
