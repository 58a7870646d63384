package storage

import (
	"testing"
	"time"

	"github.com/singularity-ng/singularity-edge/storage/internal/memhint"
)

func TestIndexInsertHintInstalled(t *testing.T) {
	ro := newRocksOptions(DefaultConfig())
	defer ro.destroy()
	idx := ro.forFamily(cfIndex)
	if !ro.indexHint {
		t.Fatal("the index family's insert hint was not installed (grocksdb's Options layout check failed)")
	}
	if got := memhint.Installed(idx); got != memhint.Name {
		t.Fatalf("index family insert hint %q", got)
	}
	if got, want := idx.GetWriteBufferSize(), uint64(DefaultConfig().WriteBufferSize); got != want {
		t.Fatalf("write buffer size %d after the layout probe, want %d", got, want)
	}
	for _, name := range []string{cfChangelog, TableBackends} {
		if got := memhint.Installed(ro.forFamily(name)); got != "" {
			t.Fatalf("family %s has insert hint %q", name, got)
		}
	}
}

func TestIndexPartition(t *testing.T) {
	b := &Backend{ID: "be-1", PoolName: "web", Scheme: "http", Host: "10.0.0.1", Port: 80}
	o := &Observation{NodeID: "node-a", BackendID: "be-1", Healthy: true}
	for _, tc := range []struct {
		name string
		key  []byte
		want string
	}{
		{"backends by pool", backendIndexKeys(b)[0], "\x04web"},
		{"observations by health", observationIndexKeys(o)[0], "\x05node-a"},
		{"tombstones", tombstoneEntry(42, 3, "be-1"), "\x07"},
		{"expiry", expiryEntry(42, 3, "be-1"), "\x08"},
		{"certificate expiry", expiryKey(time.Unix(1700000000, 0)), "\x02"},
		{"certificate domain: unique, no hint", indexKey(idxCertDomain, "example.com", "c1"), ""},
		{"observations by backend: unique, no hint", indexKey(idxObsBackend, "be-1", "node-a"), ""},
		{"one byte", []byte{idxBackendPool}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := string(tc.key[:memhint.Partition(tc.key)]); got != tc.want {
				t.Fatalf("partition of %q is %q, want %q", tc.key, got, tc.want)
			}
		})
	}
}

// TestBackendIndexKeysMatchLookup: the entry built in one allocation is
// the one the by-pool scans and the address lookup (lookup.go) search for:
// the pool's prefix, then the backend's position, whose address is
// BackendAddress's and whose row key (rowKeyAt) is the id.
func TestBackendIndexKeysMatchLookup(t *testing.T) {
	for _, b := range []*Backend{
		{ID: "be-1", PoolName: "web", Scheme: "http", Host: "10.0.0.1", Port: 80},
		{ID: "be-2", PoolName: "web", Scheme: "https", Host: "2001:db8::1", Port: 8443},
		{ID: "be-3", PoolName: "api-eu", Scheme: "http", Host: "app.internal", Port: 0},
		{ID: "x", PoolName: "p", Scheme: "", Host: "", Port: 65535},
	} {
		got := backendIndexKeys(b)
		addr := BackendAddress(b.Scheme, b.Host, b.Port)
		want := indexKey(idxBackendPool, b.PoolName, addr+"\x00"+b.ID)
		if len(got) != 1 || string(got[0]) != string(want) {
			t.Fatalf("backend %s: entries %q, want %q", b.ID, got, want)
		}
		pos := string(got[0][len(indexPrefix(idxBackendPool, b.PoolName)):])
		if pos != BackendPosition(b) || rowKeyAt(pos) != b.ID {
			t.Fatalf("backend %s: position %q, BackendPosition %q, row key %q", b.ID, pos, BackendPosition(b), rowKeyAt(pos))
		}
	}
	if backendIndexKeys(&Backend{ID: "be-1"}) != nil {
		t.Fatal("a backend without a pool has index entries")
	}
}
