package replication

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/singularity-ng/singularity-edge/storage"
)

// BenchmarkPropagation measures commit-on-one to applied-on-every-other
// latency across 5 engines over TLS on loopback, each on its own RocksDB
// store, next to two anchors measured in the same run: a plain TCP round
// trip on loopback, and one local commit on the origin store. Reported:
// p50/p99 propagation, the anchors' p50, and wire bytes per write per peer.
func BenchmarkPropagation(b *testing.B) {
	tc := newTestCluster()
	var nodes []*node
	for i := range 5 {
		id := fmt.Sprintf("n%d", i)
		nodes = append(nodes, startEngineB(b, tc, id))
	}
	origin := nodes[0]
	deadline := time.Now().Add(30 * time.Second)
	for {
		st := origin.eng.Status()
		up := 0
		for _, s := range st {
			if s.Connected {
				up++
			}
		}
		if up == 4 {
			break
		}
		if time.Now().After(deadline) {
			b.Fatal("streams not up")
		}
		time.Sleep(10 * time.Millisecond)
	}
	var lat, commit []time.Duration
	bytesBefore := sumBytesOut(origin)
	b.ResetTimer()
	for i := range b.N {
		start := time.Now()
		seq := origin.store.write(map[string]*string{fmt.Sprintf("k%d", i): str("0123456789abcdef0123456789abcdef")})
		commit = append(commit, time.Since(start))
		for _, n := range nodes[1:] {
			for !n.store.heldOf(origin.id).Contains(seq) {
				time.Sleep(20 * time.Microsecond)
			}
		}
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	bytesPerWrite := float64(sumBytesOut(origin)-bytesBefore) / float64(b.N) / 4
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
	b.ReportMetric(bytesPerWrite, "wire-B/write/peer")
	b.ReportMetric(float64(tcpRoundTrip(b).Microseconds()), "anchor-tcp-rtt-p50-µs")
	sort.Slice(commit, func(i, j int) bool { return commit[i] < commit[j] })
	b.ReportMetric(float64(commit[len(commit)/2].Microseconds()), "anchor-local-commit-p50-µs")
	for _, n := range nodes {
		n.stop()
	}
}

func sumBytesOut(n *node) uint64 {
	var s uint64
	for _, st := range n.eng.Status() {
		s += st.BytesOut
	}
	return s
}

// tcpRoundTrip is the anchor: the median of 1000 one-byte echoes over a
// loopback TCP connection.
func tcpRoundTrip(b *testing.B) time.Duration {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		_, _ = io.Copy(c, c)
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	var ds []time.Duration
	buf := []byte{1}
	for range 1000 {
		s := time.Now()
		_, _ = c.Write(buf)
		_, _ = io.ReadFull(c, buf)
		ds = append(ds, time.Since(s))
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return ds[len(ds)/2]
}

func startEngineB(b *testing.B, tc *testCluster, id string) *node {
	cfg := DefaultConfig()
	cfg.Addr = "127.0.0.1:0"
	cfg.Name = id
	cfg.Secrets = [][]byte{testSecret('k')}
	cfg.BootstrapAloneAfter = time.Second
	store := newTestStore(b, id)
	e, err := New(cfg, store, tc.view(id))
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := contextWithCancel()
	if err := e.Start(ctx); err != nil {
		b.Fatal(err)
	}
	tc.add(id, "r", e.Addr().String())
	done := make(chan struct{})
	go func() { defer close(done); _ = e.Run(ctx) }()
	return &node{id: id, store: store, eng: e, stop: func() { cancel(); <-done }, exited: done}
}

func contextWithCancel() (context.Context, context.CancelFunc) {
	return context.WithCancel(context.Background())
}

// BenchmarkBootstrap measures a new engine filling an empty RocksDB store
// from a peer that holds rows backends (in sets of 1,000, the store's
// change-set bound) until it is ready (snapshot, ingest, one catch-up),
// next to the anchor of writing the same rows as local commits on the
// peer in the same run. EDGE_BENCH_BOOTSTRAP_ROWS overrides the 100,000
// rows (a multiple of 1,000; the figure is 1,000,000).
func BenchmarkBootstrap(b *testing.B) {
	rows := 100_000
	if v := os.Getenv("EDGE_BENCH_BOOTSTRAP_ROWS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 || n%1000 != 0 {
			b.Fatalf("EDGE_BENCH_BOOTSTRAP_ROWS=%q: want a positive multiple of 1000", v)
		}
		rows = n
	}
	for range b.N {
		tc := newTestCluster()
		src := startEngineB(b, tc, "src")
		select {
		case <-src.eng.Ready():
		case <-time.After(30 * time.Second):
			b.Fatal("source not ready")
		}
		ctx := context.Background()
		start := time.Now()
		for i := 0; i < rows; i += 1000 {
			_, err := src.store.db.Update(ctx, func(tx *storage.Tx) error {
				for j := i; j < i+1000; j++ {
					if err := tx.PutBackend(&storage.Backend{ID: fmt.Sprintf("b%07d", j), PoolName: fmt.Sprintf("pool-%03d", j%100),
						Host: "10.0.0.1", Port: 8080 + j%1000, Scheme: "http", Weight: 1, Region: "r"}); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				b.Fatal(err)
			}
		}
		local := time.Since(start)

		start = time.Now()
		dst := startEngineB(b, tc, "dst")
		select {
		case <-dst.eng.Ready():
		case <-time.After(5 * time.Minute):
			b.Fatal("new node not ready")
		}
		took := time.Since(start)
		if got := dst.store.heldOf("src"); got.String() != src.store.heldOf("src").String() {
			b.Fatalf("dst holds %v of src, src %v", got, src.store.heldOf("src"))
		}
		mb := testutil.ToFloat64(dst.eng.metrics.snapshotBytes.WithLabelValues("in")) / (1 << 20)
		b.ReportMetric(float64(rows)/took.Seconds(), "bootstrap-rows/s")
		b.ReportMetric(took.Seconds(), "bootstrap-s")
		b.ReportMetric(mb/took.Seconds(), "bootstrap-MB/s")
		b.ReportMetric(mb, "snapshot-MB")
		b.ReportMetric(float64(rows)/local.Seconds(), "anchor-local-commit-rows/s")
		dst.stop()
		src.stop()
	}
}

// BenchmarkApplyFrames measures the receiving side of pushes: 2,000
// single-backend change sets applied to an empty RocksDB store in push
// frames of 1, 4 and 16 sets (one store ApplyBatch, one commit, per
// frame). Reported per set: wall and process CPU microseconds. Frames of
// one set are the anchor: what a push per commit costs.
func BenchmarkApplyFrames(b *testing.B) {
	const sets = 2000
	src := newTestStore(b, "src")
	ctx := context.Background()
	for i := range sets {
		if _, err := src.db.Update(ctx, func(tx *storage.Tx) error {
			return tx.PutBackend(&storage.Backend{ID: fmt.Sprintf("b%07d", i), PoolName: fmt.Sprintf("pool-%02d", i%10),
				Host: fmt.Sprintf("10.0.%d.%d", i/250, i%250), Port: 8080, Scheme: "http", Weight: 1, Region: "r"})
		}); err != nil {
			b.Fatal(err)
		}
	}
	ans, err := src.ChangeSets(ctx, "src", RangeSet{{1, sets}}, 64<<20)
	if err != nil || len(ans.Sets) != sets {
		b.Fatalf("%d sets, %v", len(ans.Sets), err)
	}
	for _, k := range []int{1, 4, 16} {
		b.Run(fmt.Sprintf("sets-per-frame=%d", k), func(b *testing.B) {
			var wall, cpu time.Duration
			for range b.N {
				dst := newTestStore(b, "dst")
				w0, c0 := time.Now(), processCPU()
				for i := 0; i < sets; i += k {
					frame := ans.Sets[i:min(i+k, sets)]
					covered := RangeSet{}
					for _, s := range frame {
						covered = covered.Union(RangeSet{{s.Seq, s.Seq}})
					}
					if _, err := dst.ApplyBatch(ctx, ApplyBatch{Sets: frame, Covered: map[string]RangeSet{"src": covered}}); err != nil {
						b.Fatal(err)
					}
				}
				wall += time.Since(w0)
				cpu += processCPU() - c0
			}
			b.ReportMetric(float64(wall.Microseconds())/float64(b.N*sets), "wall-µs/set")
			b.ReportMetric(float64(cpu.Microseconds())/float64(b.N*sets), "cpu-µs/set")
		})
	}
}

// processCPU is the process's user+system CPU time so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
