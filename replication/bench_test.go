package replication

import (
	"context"
	"fmt"
	"io"
	"net"
	"sort"
	"testing"
	"time"
)

// BenchmarkPropagation measures commit-on-one to applied-on-every-other
// latency across 5 engines over TLS on loopback, with the in-memory store
// model (so it measures the protocol and the transport, not RocksDB), next
// to the anchor of a plain TCP round trip on loopback in the same run.
// Reported: p50/p99 propagation, anchor p50, and wire bytes per write per
// peer.
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
	var lat []time.Duration
	bytesBefore := sumBytesOut(origin)
	b.ResetTimer()
	for i := range b.N {
		start := time.Now()
		seq := origin.store.write(map[string]*string{fmt.Sprintf("k%d", i): str("0123456789abcdef0123456789abcdef")})
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
