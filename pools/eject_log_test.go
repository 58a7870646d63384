package pools

import (
	"errors"
	"net"
	"slices"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/singularity-ng/singularity-edge/internal/ratelog"
	"github.com/singularity-ng/singularity-edge/storage"
)

// A flood of passive ejections in one pool is one warn line with a count,
// naming the backends with their addresses, the streak and the cooldown.
func TestPassiveEjectionsLoggedAggregated(t *testing.T) {
	st := openStore(t, t.TempDir())
	ln1, ln2 := liveListener(t), liveListener(t)
	putPool(t, st, storage.Pool{Name: "web", HealthCheckInterval: time.Hour,
		HealthCheck: storage.HealthCheck{Rise: 1, Fall: 1, Timeout: 200 * time.Millisecond, MaxFails: 2, Cooldown: time.Minute}})
	putBackend(t, st, storage.Backend{ID: "b1", PoolName: "web", Host: "127.0.0.1", Port: ln1.Addr().(*net.TCPAddr).Port})
	putBackend(t, st, storage.Backend{ID: "b2", PoolName: "web", Host: "127.0.0.1", Port: ln2.Addr().(*net.TCPAddr).Port})

	core, logs := observer.New(zapcore.InfoLevel)
	cfg := testManagerConfig(t, st, nil)
	cfg.Logger = zap.New(core)
	// The first line of a burst waits for the rest; a long window keeps
	// the test's ejections in one burst.
	cfg.HealthLog = ratelog.Config{Delay: 200 * time.Millisecond, Window: time.Hour}
	m := NewManager(cfg, st)
	stop := runManager(t, m)

	for _, id := range []string{"b1", "b2"} {
		b := m.Table().Backend(id)
		b.Begin().End(Result{Status: 503})
		b.Begin().End(Result{Err: errors.New("connection refused")})
		if !b.Ejected() {
			t.Fatalf("%s not ejected after 2 failures", id)
		}
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	lines := logs.FilterMessage("backend ejected by passive checks").All()
	if len(lines) != 1 {
		t.Fatalf("%d ejection lines, want 1 aggregated line: %v", len(lines), lines)
	}
	l := lines[0]
	f := l.ContextMap()
	if l.Level != zapcore.WarnLevel || f["pool"] != "web" || f["count"] != int64(2) || f["consecutive_failures"] != int64(2) ||
		f["cooldown"] != time.Minute || f["last_error"] != "connection refused" {
		t.Fatalf("ejection line: level %v fields %v", l.Level, f)
	}
	examples, _ := f["examples"].([]any)
	for _, want := range []string{"b1@" + ln1.Addr().String(), "b2@" + ln2.Addr().String()} {
		if !slices.Contains(examples, any(want)) {
			t.Fatalf("examples %v lack %s", examples, want)
		}
	}
}

// The per-backend counters the dashboard shows: 5xx answers (within the
// failures), retries taken over from another backend, and since when the
// active checks hold the backend down.
func TestBackendFailureCounters(t *testing.T) {
	st := openStore(t, t.TempDir())
	live := liveListener(t)
	putPool(t, st, storage.Pool{Name: "p", HealthCheckInterval: time.Second,
		HealthCheck: storage.HealthCheck{Rise: 1, Fall: 1, Timeout: 200 * time.Millisecond}})
	putBackend(t, st, storage.Backend{ID: "down", PoolName: "p", Host: "127.0.0.1", Port: portOf(t, closedAddr(t))})
	putBackend(t, st, storage.Backend{ID: "up", PoolName: "p", Host: "127.0.0.1", Port: portOf(t, live.Addr().String())})
	m := NewManager(testManagerConfig(t, st, nil), st)
	runManager(t, m)
	waitFor(t, 10*time.Second, "backend on a dead port down", func() bool { return !m.Table().Backend("down").State().DownSince.IsZero() })
	if ds := m.Table().Backend("down").State().DownSince; time.Since(ds) < 0 || time.Since(ds) > time.Minute {
		t.Fatalf("down since %v", ds)
	}

	up := m.Table().Backend("up")
	up.Begin().End(Result{Status: 502})
	up.Begin().End(Result{Status: 200})
	up.Begin().End(Result{Err: errors.New("reset")})
	up.NoteRetry()
	waitFor(t, 10*time.Second, "live backend healthy", func() bool { return m.Table().Backend("up").Healthy() })
	got := m.Table().Backend("up").State()
	if got.Status5xx != 1 || got.TotalFailures != 2 || got.Retries != 1 || !got.DownSince.IsZero() {
		t.Fatalf("counters: 5xx %d failures %d retries %d down since %v", got.Status5xx, got.TotalFailures, got.Retries, got.DownSince)
	}
}
