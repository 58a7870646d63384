package admin

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"go.uber.org/zap"

	"github.com/singularity-ng/singularity-edge/apitypes"
	"github.com/singularity-ng/singularity-edge/storage"
)

// bulkBackends adds n backends to pool through the API, in arrays of
// apitypes.MaxBulkBackends.
func (h *harness) bulkBackends(pool string, n int) {
	h.t.Helper()
	for start := 0; start < n; start += apitypes.MaxBulkBackends {
		items := make([]map[string]any, 0, apitypes.MaxBulkBackends)
		for i := start; i < min(n, start+apitypes.MaxBulkBackends); i++ {
			items = append(items, map[string]any{"url": fmt.Sprintf("http://10.%d.%d.%d:80", i/65536, i/256%256, i%256)})
		}
		h.do("POST", "/api/pools/"+pool+"/backends", items).expect(h.t, http.StatusCreated, "")
	}
}

// TestBulkOfTheMaximum: the largest array the API takes fits the one
// transaction it is stored in, with its audit row; one more item is a 400
// naming the bound (it used to be a 413 from the store at 1,000 items, the
// documented maximum).
func TestBulkOfTheMaximum(t *testing.T) {
	if apitypes.MaxBulkBackends+1 != storage.MaxChangeSetRows {
		t.Fatalf("MaxBulkBackends %d + the audit row is not one transaction of %d rows", apitypes.MaxBulkBackends, storage.MaxChangeSetRows)
	}
	h := newHarness(t)
	h.createPool(map[string]any{"name": "big"})
	h.bulkBackends("big", apitypes.MaxBulkBackends)
	items := make([]map[string]any, apitypes.MaxBulkBackends+1)
	for i := range items {
		items[i] = map[string]any{"url": fmt.Sprintf("http://10.200.%d.%d:80", i/256, i%256)}
	}
	before := h.snapshot()
	r := h.do("POST", "/api/pools/big/backends", items)
	r.expect(t, http.StatusBadRequest, CodeInvalid)
	h.assertUnchanged(before, "a bulk over the bound")
}

// TestCascadeDeleteOfALargePool: a pool with more backends than one
// transaction holds is deleted with cascade (it answered 413 with 999 or
// more): the pool goes in the first commit with the first backends, the
// rest right after, and every commit is waited for with wait_all.
func TestCascadeDeleteOfALargePool(t *testing.T) {
	fr := &fakeReplication{}
	h := newHarness(t, withDeps(func(d *Deps) { d.Replication = fr }))
	h.createPool(map[string]any{"name": "big"})
	h.createPool(map[string]any{"name": "other"})
	kept := h.createBackend("other", map[string]any{"url": "http://127.0.0.1:9003"})
	const n = 2500
	h.bulkBackends("big", n)
	// Without cascade the refusal names the count it read: one chunk.
	before := h.snapshot()
	r := h.do("DELETE", "/api/pools/big", nil)
	r.expect(t, http.StatusConflict, CodeConflict, "name")
	if msg := r.errDetail(t).Message; !strings.Contains(msg, fmt.Sprintf("more than %d backends", poolTxBackends)) {
		t.Errorf("refusal %q does not say the pool has more than %d backends", msg, poolTxBackends)
	}
	h.assertUnchanged(before, "a delete without cascade")
	waitedBefore := len(fr.waited())
	idx := h.store.LastIndex()
	h.do("DELETE", "/api/pools/big?cascade=true&wait_all=10s", nil).expect(t, http.StatusNoContent, "")
	deleted := h.logs.FilterMessage("configuration changed").FilterField(zap.String("key", "big")).FilterField(zap.Int("backends_deleted", n)).Len()
	if deleted != 1 {
		t.Errorf("%d audit log lines of the delete say backends_deleted=%d, want 1", deleted, n)
	}
	// 998 with the pool and its audit row, then 1,000 and 502.
	if got := h.store.LastIndex() - idx; got != 3 {
		t.Errorf("the delete took %d commits, want 3", got)
	}
	if got := len(fr.waited()) - waitedBefore; got != 3 {
		t.Errorf("wait_all waited for %d commits, want 3", got)
	}
	h.do("GET", "/api/pools/big", nil).expect(t, http.StatusNotFound, CodeNotFound)
	all, err := h.store.ListBackends(context.Background(), "", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 1 || all[0].ID != kept.ID {
		t.Fatalf("%d backends left after the cascade, want only %s of pool other", len(all), kept.ID)
	}
}

// TestCreatePoolRemovesManyLeftovers: more leftover backends of an earlier
// pool than one transaction holds (a partition) no longer make a create
// of that name fail with 413; they go before it, and the pool starts
// empty.
func TestCreatePoolRemovesManyLeftovers(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	const n = 1500
	for start := 0; start < n; start += storage.MaxChangeSetRows {
		if _, err := h.store.Update(ctx, func(tx *storage.Tx) error {
			for i := start; i < min(n, start+storage.MaxChangeSetRows); i++ {
				b := storage.Backend{ID: fmt.Sprintf("b-left-%05d", i), PoolName: "web",
					Host: fmt.Sprintf("10.1.%d.%d", i/256, i%256), Port: 80, Scheme: "http", Weight: 1}
				if err := tx.PutBackend(&b); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	// A refused create removes nothing (the checks come first).
	h.createPool(map[string]any{"name": "owner", "hosts": []string{"taken.test"}})
	before := h.snapshot()
	h.do("POST", "/api/pools", `{"name":"web","hosts":["taken.test"]}`).expect(t, http.StatusConflict, CodeConflict, "hosts")
	h.assertUnchanged(before, "a refused create over many leftovers")

	h.createPool(map[string]any{"name": "web"})
	var page apitypes.List[apitypes.Backend]
	h.do("GET", "/api/pools/web/backends", nil).json(t, &page)
	if len(page.Items) != 0 {
		t.Fatalf("the new pool has %d backends nobody added to it", len(page.Items))
	}
	if _, err := h.store.GetBackend(ctx, "b-left-01499"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("leftover backend: %v, want not found", err)
	}
}

// countingPages counts the backend rows a transaction reads through
// firstBackends.
type countingPages struct {
	tx   *storage.Tx
	rows int
}

func (c *countingPages) BackendsByPoolPage(pool, after string, limit int) ([]storage.Backend, error) {
	bs, err := c.tx.BackendsByPoolPage(pool, after, limit)
	c.rows += len(bs)
	return bs, err
}

// TestFirstBackendsReadsOneChunk: the first commit of a pool's delete (and
// a create's check for leftovers) reads at most the chunk it removes and
// one row more, whatever the pool's size; it read every backend of the
// pool to count them.
func TestFirstBackendsReadsOneChunk(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	for _, n := range []int{0, 1, poolTxBackends, poolTxBackends + 1, 2500} {
		t.Run(fmt.Sprint(n, " backends"), func(t *testing.T) {
			pool := fmt.Sprint("p", n)
			for start := 0; start < n; start += storage.MaxChangeSetRows {
				if _, err := h.store.Update(ctx, func(tx *storage.Tx) error {
					for i := start; i < min(n, start+storage.MaxChangeSetRows); i++ {
						b := storage.Backend{ID: fmt.Sprintf("%s-%05d", pool, i), PoolName: pool,
							Host: fmt.Sprintf("10.2.%d.%d", i/256, i%256), Port: 80, Scheme: "http", Weight: 1}
						if err := tx.PutBackend(&b); err != nil {
							return err
						}
					}
					return nil
				}); err != nil {
					t.Fatal(err)
				}
			}
			var first []storage.Backend
			var more bool
			var read int
			if _, err := h.store.Update(ctx, func(tx *storage.Tx) error {
				c := &countingPages{tx: tx}
				var err error
				first, more, err = firstBackends(c, pool, poolTxBackends)
				read = c.rows
				return err
			}); err != nil {
				t.Fatal(err)
			}
			if want := min(n, poolTxBackends); len(first) != want || more != (n > poolTxBackends) {
				t.Fatalf("%d backends, more %v; want %d, more %v", len(first), more, want, n > poolTxBackends)
			}
			if n > 0 && first[0].ID != pool+"-00000" {
				t.Errorf("first backend %s, want the lowest id", first[0].ID)
			}
			if read > poolTxBackends+1 {
				t.Errorf("read %d backend rows, want at most %d", read, poolTxBackends+1)
			}
		})
	}
}
