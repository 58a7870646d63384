package admin

import (
	"context"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/singularity-ng/singularity-edge/pools"
	"github.com/singularity-ng/singularity-edge/storage"
)

// TestPatchThatChangesNothing: a PATCH whose every field equals the stored
// value answers 200 with the stored object and its ETag, and commits
// nothing: no new version (so nothing replicates), no audit row, no log
// line; ?wait_all= waits for the stored version, which this node wrote. A
// PATCH that changes one field still commits.
func TestPatchThatChangesNothing(t *testing.T) {
	fr := &fakeReplication{}
	h := newHarness(t, withDeps(func(d *Deps) { d.Replication = fr }))
	h.createPool(map[string]any{
		"name": "web", "algorithm": "random", "hosts": []string{"a.test", "b.test"},
		"health_check": map[string]any{"type": "http", "path": "/up", "rise": 3},
		"metadata":     map[string]string{"team": "shop"},
	})
	h.createBackend("web", map[string]any{"id": "b1", "url": "http://10.0.0.1:8080", "weight": 4, "metadata": map[string]string{"rack": "r1"}})

	for _, tc := range []struct {
		name, path, body string
		change           bool
	}{
		{"pool: the same name", "/api/pools/web", `{"name":"web"}`, false},
		{"pool: the same algorithm", "/api/pools/web", `{"algorithm":"random"}`, false},
		{"pool: the same hosts", "/api/pools/web", `{"hosts":["a.test","b.test"]}`, false},
		{"pool: the same check fields", "/api/pools/web", `{"health_check":{"type":"http","path":"/up","rise":3}}`, false},
		{"pool: the same metadata key", "/api/pools/web", `{"metadata":{"team":"shop"}}`, false},
		{"pool: removing a key that is not there", "/api/pools/web", `{"metadata":{"gone":null}}`, false},
		{"pool: the defaults it has", "/api/pools/web", `{"ssl_mode":"off","fail_open":false,"default":false,"auto_cert":true}`, false},
		{"pool: several fields at once", "/api/pools/web", `{"algorithm":"random","hosts":["a.test","b.test"],"metadata":{"team":"shop"},"prefer_region":false}`, false},
		{"pool: one field changes", "/api/pools/web", `{"algorithm":"random","fail_open":true}`, true},
		{"pool: hosts in another order", "/api/pools/web", `{"hosts":["b.test","a.test"]}`, true},
		{"backend: the same id", "/api/pools/web/backends/b1", `{"id":"b1"}`, false},
		{"backend: the same address as a URL", "/api/pools/web/backends/b1", `{"url":"http://10.0.0.1:8080"}`, false},
		{"backend: the same address by parts", "/api/pools/web/backends/b1", `{"host":"10.0.0.1","port":8080,"scheme":"http"}`, false},
		{"backend: the same weight and metadata", "/api/pools/web/backends/b1", `{"weight":4,"draining":false,"metadata":{"rack":"r1"}}`, false},
		{"backend: the weight changes", "/api/pools/web/backends/b1", `{"weight":5}`, true},
		{"backend: a metadata key is added", "/api/pools/web/backends/b1", `{"metadata":{"zone":"z1"}}`, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cur := h.do("GET", tc.path, nil)
			cur.expect(t, http.StatusOK, "")
			before := h.snapshot()
			audits := len(h.auditRows())
			logs := h.logs.FilterMessage("configuration changed").Len()
			waits := len(fr.waited())

			r := h.do("PATCH", tc.path+"?wait_all=5s", tc.body, withHeader("If-Match", cur.Header.Get("ETag")))
			r.expect(t, http.StatusOK, "")
			if tc.change {
				if r.Header.Get("ETag") == cur.Header.Get("ETag") || h.store.LastIndex() == before.LastIndex ||
					len(h.auditRows()) != audits+1 || len(fr.waited()) != waits+1 {
					t.Fatalf("a PATCH that changes a field did not commit, audit and wait")
				}
				return
			}
			if got, want := r.Header.Get("ETag"), cur.Header.Get("ETag"); got != want {
				t.Errorf("ETag %s, want the stored %s", got, want)
			}
			if string(r.Body) != string(cur.Body) {
				t.Errorf("answer is not the stored object:\n got %s\nwant %s", r.Body, cur.Body)
			}
			if after := h.snapshot(); !reflect.DeepEqual(before, after) {
				t.Errorf("the store changed: last index %d -> %d", before.LastIndex, after.LastIndex)
			}
			if n := len(h.auditRows()); n != audits {
				t.Errorf("%d audit rows, want %d", n, audits)
			}
			if n := h.logs.FilterMessage("configuration changed").Len(); n != logs {
				t.Errorf("%d configuration log lines, want %d", n, logs)
			}
			// wait_all waits for the stored version, which this node wrote.
			var stored storage.Version
			if err := h.store.View(context.Background(), func(tx *storage.Tx) error {
				if strings.Contains(tc.path, "/backends/") {
					b, err := tx.Backend("b1")
					stored = b.Version
					return err
				}
				p, err := tx.Pool("web")
				stored = p.Version
				return err
			}); err != nil {
				t.Fatal(err)
			}
			if w := fr.waited(); len(w) != waits+1 || w[len(w)-1] != stored.Seq {
				t.Errorf("wait_all waited for %v, want one wait for the stored version's seq %d", w[waits:], stored.Seq)
			}
		})
	}
}

// TestSamePoolAndBackendCompareEveryField: changing any one field of a
// pool or backend makes it differ, except the times and the version the
// store sets; a slice or map left empty equals one that is absent.
func TestSamePoolAndBackendCompareEveryField(t *testing.T) {
	storeSet := map[string]bool{"InsertedAt": true, "UpdatedAt": true, "Version": true}
	for _, tc := range []struct {
		name string
		zero any
		same func(a, b any) bool
	}{
		{"pool", storage.Pool{}, func(a, b any) bool { return samePool(a.(storage.Pool), b.(storage.Pool)) }},
		{"backend", storage.Backend{}, func(a, b any) bool { return sameBackend(a.(storage.Backend), b.(storage.Backend)) }},
	} {
		typ := reflect.TypeOf(tc.zero)
		for i := range typ.NumField() {
			f := typ.Field(i)
			changed := reflect.New(typ).Elem()
			setNonZero(t, changed.Field(i), f)
			same := tc.same(tc.zero, changed.Interface())
			if same != storeSet[f.Name] {
				t.Errorf("%s: with %s changed, same = %v", tc.name, f.Name, same)
			}
			if f.Type.Kind() == reflect.Slice || f.Type.Kind() == reflect.Map {
				empty := reflect.New(typ).Elem()
				if f.Type.Kind() == reflect.Slice {
					empty.Field(i).Set(reflect.MakeSlice(f.Type, 0, 0))
				} else {
					empty.Field(i).Set(reflect.MakeMap(f.Type))
				}
				if !tc.same(tc.zero, empty.Interface()) {
					t.Errorf("%s: an empty %s differs from an absent one", tc.name, f.Name)
				}
			}
		}
	}
}

// setNonZero gives v, a field of a storage record, a value other than its
// zero value (one level into nested structs).
func setNonZero(t *testing.T, v reflect.Value, f reflect.StructField) {
	t.Helper()
	switch {
	case f.Type == reflect.TypeOf(time.Time{}):
		v.Set(reflect.ValueOf(time.Unix(1, 0)))
		return
	case f.Type == reflect.TypeOf(storage.Version{}):
		v.Set(reflect.ValueOf(storage.Version{HLC: 1}))
		return
	}
	switch v.Kind() {
	case reflect.String:
		v.SetString("x")
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Int, reflect.Int64:
		v.SetInt(1)
	case reflect.Slice:
		v.Set(reflect.ValueOf([]string{"x"}))
	case reflect.Map:
		v.Set(reflect.ValueOf(map[string]string{"x": "y"}))
	case reflect.Struct:
		// One changed field of the nested struct is enough.
		setNonZero(t, v.Field(0), v.Type().Field(0))
	default:
		t.Fatalf("field %s of kind %s: teach setNonZero about it", f.Name, v.Kind())
	}
}

// A PATCH that changes nothing of a pool another node wrote answers at
// once with ?wait_all=: that version came through replication, and
// spreading it is its origin's (no wait of this node covers another's
// change set).
func TestPatchThatChangesNothingWrittenElsewhere(t *testing.T) {
	ctx := context.Background()
	fr := &fakeReplication{}
	h := newHarness(t, withDeps(func(d *Deps) { d.Replication = fr }))
	other := openStore(t, testEncryptionKey())
	if _, err := other.Update(ctx, func(tx *storage.Tx) error {
		p := pools.DefaultPool()
		p.Name, p.Algorithm = "web", "random"
		return tx.PutPool(&p)
	}); err != nil {
		t.Fatal(err)
	}
	ans, err := other.ChangeSets(ctx, other.NodeID(), other.Bookkeeping()[other.NodeID()], 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.store.ApplyAnswer(ctx, ans); err != nil {
		t.Fatal(err)
	}
	cur := h.do("GET", "/api/pools/web", nil)
	cur.expect(t, http.StatusOK, "")
	r := h.do("PATCH", "/api/pools/web?wait_all=5s", `{"algorithm":"random"}`)
	r.expect(t, http.StatusOK, "")
	if r.Header.Get("ETag") != cur.Header.Get("ETag") {
		t.Errorf("ETag %s, want the stored %s", r.Header.Get("ETag"), cur.Header.Get("ETag"))
	}
	if w := fr.waited(); len(w) != 0 {
		t.Errorf("waited for %v: this node cannot wait for another node's change set", w)
	}
}
