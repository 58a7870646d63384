package admin

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/singularity-ng/singularity-edge/storage"
)

// BenchmarkAPIBackendLoad creates backends one request at a time through
// the admin API (HTTP, JSON, validation, one store transaction each with
// its index checks) spread over 1,000 pools, and reports the request rate
// over the first and the last 1,000 requests. A write that read or
// tracked every backend of its pool slows down as the pools fill; one
// made of index lookups keeps its rate. BENCH_API_BACKENDS sets the total
// (default 20,000; `make bench-api` runs the seed's 1,000,000) and
// BENCH_API_POOLS the pools (default 1,000). The WAL is
// not synced per commit, so the figures show the API and store's work,
// not the disk's fsync latency.
func BenchmarkAPIBackendLoad(b *testing.B) {
	total := 20000
	if v := os.Getenv("BENCH_API_BACKENDS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 2000 {
			b.Fatalf("BENCH_API_BACKENDS=%q: want a number of at least 2000", v)
		}
		total = n
	}
	pools := 1000
	if v := os.Getenv("BENCH_API_POOLS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			b.Fatalf("BENCH_API_POOLS=%q: want a positive number", v)
		}
		pools = n
	}
	const window, workers = 1000, 4
	for range b.N {
		cfg := storage.DefaultConfig()
		cfg.Dir = b.TempDir()
		cfg.SyncWAL = false
		st, err := storage.Open(cfg)
		if err != nil {
			b.Fatal(err)
		}
		acfg := DefaultConfig()
		acfg.Token = testToken
		srv, err := New(acfg, Deps{Store: st})
		if err != nil {
			b.Fatal(err)
		}
		ts := httptest.NewServer(srv.Handler())
		client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: workers}}
		post := func(path, body string) {
			req, _ := http.NewRequest(http.MethodPost, ts.URL+path, bytes.NewBufferString(body))
			req.Header.Set("Authorization", "Bearer "+testToken)
			req.Header.Set("Content-Type", "application/json")
			resp, err := client.Do(req)
			if err != nil {
				b.Fatal(err)
			}
			_ = resp.Body.Close()
			if resp.StatusCode != http.StatusCreated {
				b.Fatalf("POST %s: status %d", path, resp.StatusCode)
			}
		}
		for p := range pools {
			post("/api/pools", fmt.Sprintf(`{"name":"p%04d"}`, p))
		}
		var next atomic.Int64
		var mu sync.Mutex
		var firstEnd, lastStart time.Time
		start := time.Now()
		var wg sync.WaitGroup
		for range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					i := next.Add(1) - 1
					if i >= int64(total) {
						return
					}
					if i == int64(total-window) {
						mu.Lock()
						lastStart = time.Now()
						mu.Unlock()
					}
					pool := i % int64(pools)
					post(fmt.Sprintf("/api/pools/p%04d/backends", pool),
						fmt.Sprintf(`{"host":"10.%d.%d.%d","port":%d}`, (i>>16)&255, (i>>8)&255, i&255, 8000+i/(1<<24)))
					if i == window-1 {
						mu.Lock()
						firstEnd = time.Now()
						mu.Unlock()
					}
				}
			}()
		}
		wg.Wait()
		end := time.Now()
		ts.Close()
		if err := st.Close(); err != nil {
			b.Fatal(err)
		}
		first := float64(window) / firstEnd.Sub(start).Seconds()
		last := float64(window) / end.Sub(lastStart).Seconds()
		b.ReportMetric(first, "req/s_first_1000")
		b.ReportMetric(last, "req/s_last_1000")
		b.ReportMetric(first/last, "slowdown")
		b.ReportMetric(float64(total)/end.Sub(start).Seconds(), "req/s_overall")
		b.Logf("%d backends in %d pools: %.0f req/s over the first %d, %.0f req/s over the last %d (%.2fx), %s in all",
			total, pools, first, window, last, window, first/last, end.Sub(start).Round(time.Second))
	}
}
