package bench

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/singularity-ng/singularity-edge/storage"
)

// processCPU is the CPU time of every thread of the process so far: the
// feed's cost is spread over the subscribers' goroutines.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkFeedSubscribers: what a replicated write costs a store whose
// feed has the agent's five subscribers keeping up, against the anchor of
// the same writes without subscribers. An op is one local commit (one
// backend) and one applied remote set (one backend), as an agent of the
// cluster sees them, and with subscribers every one of them receives both
// events before the next op. cpu-µs/op is the process's CPU (all threads)
// per op; the difference between the two variants is the feed's. The
// remote sets come from a second store's change log, made before the
// timer starts.
func BenchmarkFeedSubscribers(b *testing.B) {
	for _, n := range []int{0, 5} {
		b.Run(fmt.Sprintf("subscribers=%d", n), func(b *testing.B) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			sets := feedRemoteSets(ctx, b, b.N)
			cfg := storage.DefaultConfig()
			cfg.Dir = b.TempDir()
			st, err := storage.Open(cfg)
			if err != nil {
				b.Fatal(err)
			}
			defer st.Close()
			got := make(chan uint64, 2*n)
			for range n {
				sub := st.Subscribe(ctx, 0)
				go func() {
					for ev := range sub.Events() {
						got <- ev.Index
					}
				}()
			}
			// await waits until every subscriber has delivered index.
			await := func(index uint64) {
				for left := n; left > 0; {
					select {
					case i := <-got:
						if i == index {
							left--
						}
					case <-time.After(time.Minute):
						b.Fatalf("subscribers did not deliver event %d", index)
					}
				}
			}
			b.ResetTimer()
			cpu0 := processCPU()
			for i := range b.N {
				rec := makeBackend(i)
				if _, err := st.Update(ctx, func(tx *storage.Tx) error { return tx.PutBackend(&rec) }); err != nil {
					b.Fatal(err)
				}
				res, err := st.ApplyBatch(ctx, sets[i:i+1])
				if err != nil {
					b.Fatal(err)
				}
				await(res.Index)
			}
			cpu := processCPU() - cpu0
			b.StopTimer()
			b.ReportMetric(float64(cpu)/float64(time.Microsecond)/float64(b.N), "cpu-µs/op")
		})
	}
}

// feedRemoteSets returns n one-backend change sets committed on another
// store, read back from its change log as a peer sends them.
func feedRemoteSets(ctx context.Context, b *testing.B, n int) []storage.ChangeSet {
	b.Helper()
	cfg := storage.DefaultConfig()
	cfg.Dir, cfg.SyncWAL = b.TempDir(), false
	src, err := storage.Open(cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer src.Close()
	for i := range n {
		rec := makeBackend(1_000_000 + i)
		if _, err := src.Update(ctx, func(tx *storage.Tx) error { return tx.PutBackend(&rec) }); err != nil {
			b.Fatal(err)
		}
	}
	ans, err := src.ChangeSets(ctx, src.NodeID(), storage.Span(1, uint64(n)), 0)
	if err != nil {
		b.Fatal(err)
	}
	if len(ans.Sets) != n {
		b.Fatalf("%d remote sets, want %d", len(ans.Sets), n)
	}
	return ans.Sets
}
