package pools

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/singularity-ng/singularity-edge/storage"
)

// failingSource fails PutObservations while fail is set.
type failingSource struct {
	*storage.Store
	fail atomic.Bool
}

func (s *failingSource) PutObservations(ctx context.Context, obs []storage.Observation) error {
	if s.fail.Load() {
		return errors.New("injected write failure")
	}
	return s.Store.PutObservations(ctx, obs)
}

// TestPersistWritesEveryBackendWithActivity drives each way a backend gets
// news (a request, a request still in flight, a health check, a failed write, activity
// through a backend of an earlier table after the backend moved pools)
// and persists by hand: after each persist, every backend this node has a
// view of must have a row equal to its live state. Rows the store refuses
// (its write-rate bound) and check times held back until the refresh must
// be written by a later persist without any new activity: persist looks
// only at backends queued by activity, so one that is dropped from the
// queue is never written.
func TestPersistWritesEveryBackendWithActivity(t *testing.T) {
	cfg := storage.DefaultConfig()
	cfg.Dir = t.TempDir()
	cfg.NodeID = "node-a"
	cfg.SyncWAL = false
	cfg.ObservationMinInterval = time.Second
	st, err := storage.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	ctx := context.Background()
	putPool(t, st, storage.Pool{Name: "a", HealthCheckInterval: time.Hour, HealthCheck: storage.HealthCheck{Fall: 1, Rise: 1}})
	// Another way of checking: a backend moving in gets a target of its
	// own, checked at once.
	putPool(t, st, storage.Pool{Name: "b", HealthCheckInterval: time.Hour, HealthCheck: storage.HealthCheck{Fall: 1, Rise: 1, Timeout: 2 * time.Second}})
	for i := range 6 {
		putBackend(t, st, storage.Backend{ID: fmt.Sprintf("b%d", i), PoolName: "a", Host: "127.0.0.1", Port: 3000 + i})
	}
	mcfg := testManagerConfig(t, st, nil)
	mcfg.ObservationInterval = time.Hour // persists only when the test calls it
	mcfg.ObservationRefresh = 400 * time.Millisecond
	src := &failingSource{Store: st}
	m := NewManager(mcfg, src)
	runManager(t, m)

	// persist persists, waiting out the store's write-rate bound.
	persist := func() {
		t.Helper()
		for range 5 {
			err := m.persist(ctx)
			var limited *storage.SkippedObservationsError
			if !errors.As(err, &limited) {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			time.Sleep(limited.RetryAfter)
		}
		t.Fatal("observations still refused after five tries")
	}
	// check compares every stored row with the backend's live state.
	check := func(step string) {
		t.Helper()
		obs, err := st.Observations(ctx, st.NodeID())
		if err != nil {
			t.Fatal(err)
		}
		rows := map[string]storage.Observation{}
		for _, o := range obs {
			rows[o.BackendID] = o
		}
		for _, p := range m.Table().Pools() {
			for _, b := range p.Backends() {
				want := m.observation(b)
				got, ok := rows[b.ID]
				if want.LastCheck.IsZero() && want.TotalRequests == 0 {
					if ok {
						t.Errorf("%s: row for %s, which this node never checked nor used", step, b.ID)
					}
					continue
				}
				if !ok {
					t.Errorf("%s: no row for %s", step, b.ID)
					continue
				}
				got.UpdatedAt, got.Version, got.LastCheck, want.LastCheck = time.Time{}, storage.Version{}, got.LastCheck.UTC(), want.LastCheck.UTC()
				if !got.LastCheck.Equal(want.LastCheck) {
					t.Errorf("%s: %s stored with check time %v, live %v", step, b.ID, got.LastCheck, want.LastCheck)
				}
				got.LastCheck, want.LastCheck = time.Time{}, time.Time{}
				if got != want {
					t.Errorf("%s: %s stored as\n%+v\nlive\n%+v", step, b.ID, got, want)
				}
			}
		}
		if t.Failed() {
			t.FailNow()
		}
	}
	backend := func(id string) *Backend {
		t.Helper()
		b := m.Table().Backend(id)
		if b == nil {
			t.Fatalf("backend %s not in the table", id)
		}
		return b
	}
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}
	checkResult := func(b *Backend, err error) {
		m.health.apply([]healthSub{{b: b}}, b.Addr, err, time.Now())
	}

	persist()
	check("before any activity")

	backend("b0").Begin().End(Result{Status: 200, BytesIn: 10, BytesOut: 20})
	backend("b1").Begin().End(Result{Status: 502})
	inflight := backend("b2").Begin()
	checkResult(backend("b3"), refused)
	persist()
	check("requests, one in flight, a failed check")

	inflight.End(Result{Status: 200})
	checkResult(backend("b3"), nil)
	persist()
	check("the request ended, the check passed")

	// Written less than the store's bound ago: refused, then written by
	// the next persist with no new activity.
	backend("b0").Begin().End(Result{Status: 200})
	persist()
	backend("b0").Begin().End(Result{Status: 200})
	err = m.persist(ctx)
	var limited *storage.SkippedObservationsError
	if !errors.As(err, &limited) {
		t.Fatalf("persist right after a write: %v, want the store's write-rate refusal", err)
	}
	time.Sleep(limited.RetryAfter)
	persist()
	check("a refused row")

	// A write that fails: the rows go again at the next persist.
	backend("b1").Begin().End(Result{Status: 200})
	src.fail.Store(true)
	if err := m.persist(ctx); err == nil {
		t.Fatal("persist with a failing store succeeded")
	}
	src.fail.Store(false)
	persist()
	check("a failed write")

	// Only the check time is new: held back until the refresh, then
	// written with no new activity.
	checkResult(backend("b4"), refused)
	persist()
	check("b4 checked")
	first := backend("b4").State().LastCheck
	time.Sleep(10 * time.Millisecond)
	checkResult(backend("b4"), refused)
	persist()
	obs, err := st.Observations(ctx, st.NodeID())
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range obs {
		if o.BackendID == "b4" && !o.LastCheck.Equal(first) {
			t.Fatalf("b4's new check time written before the refresh: %v, first %v", o.LastCheck, first)
		}
	}
	time.Sleep(mcfg.ObservationRefresh)
	persist()
	check("b4's check time at the refresh")

	// b5 moves to pool b; activity through the backend of the table
	// before the move is persisted as the moved backend's.
	old := backend("b5")
	putBackend(t, st, storage.Backend{ID: "b5", PoolName: "b", Host: "127.0.0.1", Port: 3005})
	waitFor(t, 10*time.Second, "b5 in pool b and checked", func() bool {
		b := m.Table().Pool("b").Backend("b5")
		return b != nil && b.State().ChecksFailed > 0
	})
	persist()
	check("b5 checked in pool b")
	old.Begin().End(Result{Status: 200})
	persist()
	check("activity through a backend of an earlier table")
	if got := backend("b5").State().TotalRequests; got != 1 {
		t.Fatalf("b5 has %d requests, want 1", got)
	}
}
