package admin

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/singularity-ng/singularity-edge/apitypes"
	"github.com/singularity-ng/singularity-edge/pools"
	"github.com/singularity-ng/singularity-edge/storage"
)

// readCountingStore counts the transactions opened through the API's
// store and the observations it reads by key.
type readCountingStore struct {
	*storage.Store
	views, observations atomic.Int64
}

func (c *readCountingStore) View(ctx context.Context, fn func(tx *storage.Tx) error) error {
	c.views.Add(1)
	return c.Store.View(ctx, fn)
}

func (c *readCountingStore) GetObservation(ctx context.Context, nodeID, backendID string) (storage.Observation, error) {
	c.observations.Add(1)
	return c.Store.GetObservation(ctx, nodeID, backendID)
}

// fixedTable is a routing table that the test sets.
type fixedTable struct{ t atomic.Pointer[pools.Table] }

func (f *fixedTable) Table() *pools.Table { return f.t.Load() }

// storedStatsInOneTransaction is how the API computed a pool's stored
// statistics before: every backend row of the pool and its observation,
// in one transaction.
func storedStatsInOneTransaction(t *testing.T, st *storage.Store, pool string) apitypes.PoolStats {
	t.Helper()
	out := apitypes.PoolStats{Source: "stored"}
	err := st.View(context.Background(), func(tx *storage.Tx) error {
		backends, err := tx.BackendsByPool(pool)
		if err != nil {
			return err
		}
		out.TotalBackends = len(backends)
		for _, b := range backends {
			o, err := tx.Observation(st.NodeID(), b.ID)
			ok := err == nil
			if err != nil && !errors.Is(err, storage.ErrNotFound) {
				return err
			}
			switch {
			case b.Draining:
				out.DrainingBackends++
			case !ok:
			case o.Healthy:
				out.HealthyBackends++
			default:
				out.UnhealthyBackends++
			}
			if ok {
				out.CurrentConnections += o.CurrentConnections
				out.TotalRequests += o.TotalRequests
				out.TotalFailures += o.TotalFailures
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// A pool's statistics are the same as before whether the routing table
// has the pool or not, and for a pool it does not have yet they are read
// one backend at a time, outside a transaction: before, one transaction
// read every backend row of the pool into a list and kept each row and
// observation it read until the response was built, so a GET of a large
// pool not yet routed held all of it at once.
func TestPoolStatsWithoutTheRoutingTable(t *testing.T) {
	st := openStore(t, testEncryptionKey())
	cs := &readCountingStore{Store: st}
	table := &fixedTable{}
	h := newHarnessOn(t, st, withDeps(func(d *Deps) { d.Store, d.Pools = cs, table }))
	ctx := context.Background()
	h.createPool(map[string]any{"name": "web"})
	h.createPool(map[string]any{"name": "other"})
	// Backends of each kind the statistics count, with and without an
	// observation of this node, and one of another pool.
	var obs []storage.Observation
	for i, kind := range []string{"healthy", "healthy", "unhealthy", "unobserved", "draining", "draining unobserved"} {
		body := map[string]any{"url": fmt.Sprintf("http://10.0.0.%d:80", i+1)}
		if kind == "draining" || kind == "draining unobserved" {
			body["draining"] = true
		}
		b := h.createBackend("web", body)
		if kind == "unobserved" || kind == "draining unobserved" {
			continue
		}
		obs = append(obs, storage.Observation{NodeID: st.NodeID(), BackendID: b.ID, PoolName: "web", Region: "iad",
			Healthy: kind != "unhealthy", CurrentConnections: int64(i + 1), TotalRequests: int64(10 * (i + 1)), TotalFailures: int64(i), LastCheck: time.Now()})
	}
	other := h.createBackend("other", map[string]any{"url": "http://10.0.1.1:80"})
	obs = append(obs, storage.Observation{NodeID: st.NodeID(), BackendID: other.ID, PoolName: "other", Healthy: true,
		CurrentConnections: 100, TotalRequests: 1000, LastCheck: time.Now()})
	if err := st.PutObservations(ctx, obs); err != nil {
		t.Fatal(err)
	}

	want := storedStatsInOneTransaction(t, st, "web")
	if want.TotalBackends != 6 || want.HealthyBackends != 2 || want.UnhealthyBackends != 1 || want.DrainingBackends != 2 || want.CurrentConnections == 0 {
		t.Fatalf("the test's pool is not what it means to be: %+v", want)
	}
	cs.views.Store(0)
	var got apitypes.Pool
	h.do("GET", "/api/pools/web", nil).json(t, &got)
	if got.Stats != want {
		t.Fatalf("stored stats %+v, want %+v (as before)", got.Stats, want)
	}
	if v, o := cs.views.Load(), cs.observations.Load(); v != 0 || o != 6 {
		t.Fatalf("the GET opened %d transactions and read %d observations, want none and one per backend", v, o)
	}
	var page apitypes.List[apitypes.Pool]
	h.do("GET", "/api/pools", nil).json(t, &page)
	if len(page.Items) != 2 || page.Items[1].Name != "web" || page.Items[1].Stats != want {
		t.Fatalf("listed %+v, want web's stats %+v", page.Items, want)
	}

	// In the routing table: the table's statistics, as before.
	ps, err := st.ListPools(ctx, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	bs, err := st.ListBackends(ctx, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	table.t.Store(pools.NewTable(ps, bs, obs, pools.TableOptions{Region: "iad"}))
	live := table.Table().Pool("web").Stats()
	wantLive := apitypes.PoolStats{TotalBackends: live.TotalBackends, HealthyBackends: live.HealthyBackends,
		UnhealthyBackends: live.UnhealthyBackends, DrainingBackends: live.DrainingBackends, CurrentConnections: live.CurrentConnections,
		TotalRequests: live.TotalRequests, TotalFailures: live.TotalFailures, Source: "live"}
	cs.observations.Store(0)
	h.do("GET", "/api/pools/web", nil).json(t, &got)
	if got.Stats != wantLive || live.TotalBackends != 6 {
		t.Fatalf("live stats %+v, want the table's %+v", got.Stats, wantLive)
	}
	if o := cs.observations.Load(); o != 0 {
		t.Fatalf("a routed pool's GET read %d observations", o)
	}
}
