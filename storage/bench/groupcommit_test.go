package bench

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/singularity-ng/singularity-edge/storage"
)

// BenchmarkConcurrentCommits: N goroutines commit single-row Updates
// (PutBackend) with the WAL fsynced (the store's default), against the
// anchor: N goroutines each doing a raw RocksDB Put with sync=true of a
// row of the same size. ns/op is per commit; commits/s is the aggregate.
// With one fsync per commit the store stays near the one-writer rate
// whatever N; group commit lets one WAL sync cover every commit written
// while the previous sync ran, as RocksDB's own write group does for
// the anchor.
func BenchmarkConcurrentCommits(b *testing.B) {
	for _, writers := range []int{1, 8, 64} {
		b.Run(fmt.Sprintf("writers=%d/store", writers), func(b *testing.B) {
			cfg := storage.DefaultConfig()
			cfg.Dir, cfg.SyncWAL = b.TempDir(), true
			st, err := storage.Open(cfg)
			if err != nil {
				b.Fatal(err)
			}
			defer st.Close()
			ctx := context.Background()
			runConcurrent(b, writers, func(i int) error {
				rec := makeBackend(i)
				_, err := st.Update(ctx, func(tx *storage.Tx) error { return tx.PutBackend(&rec) })
				return err
			})
		})
		b.Run(fmt.Sprintf("writers=%d/raw_sync_put", writers), func(b *testing.B) {
			rcfg := defaultRawConfig()
			rcfg.SyncWAL = true
			raw, err := openRaw(b.TempDir(), rcfg)
			if err != nil {
				b.Fatal(err)
			}
			defer raw.close()
			val := make([]byte, 300)
			runConcurrent(b, writers, func(i int) error {
				return countersOff(func() error {
					return raw.put(rawRows, []byte(fmt.Sprintf("backend-%09d", i)), val)
				})()
			})
		})
	}
}

// runConcurrent runs b.N calls of op spread over writers goroutines.
func runConcurrent(b *testing.B, writers int, op func(i int) error) {
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	b.ResetTimer()
	for range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= b.N {
					return
				}
				if err := op(i); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "commits/s")
}
