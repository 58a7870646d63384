package proxy

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/singularity-ng/singularity-edge/storage"
)

// BenchmarkH2HeldMemory measures what one HTTP/2 client connection can
// make the agent hold, per connection (b.N connections, all open at the
// end): heap in use and resident memory of the process, after a GC, less
// the figures before the connections opened. The process holds the test
// client's connections too, so "idle" (TLS, preface, SETTINGS, nothing
// else) is the anchor; the other cases add, per connection:
//   - frame_header: the 9-byte header of a 1 MiB frame and nothing more;
//   - full_frame: that frame's payload but its last byte;
//   - upload: POSTs on 4 streams whose bodies the backend never reads,
//     sent until the connection's flow-control window is all but full.
//
// Run with -benchtime 200x (200 connections):
//
//	go test -run '^$' -bench BenchmarkH2HeldMemory -benchtime 200x ./proxy/
func BenchmarkH2HeldMemory(b *testing.B) {
	for _, mode := range []string{"idle", "frame_header", "full_frame", "upload"} {
		b.Run(mode, func(b *testing.B) { benchH2Held(b, mode) })
	}
}

func benchH2Held(b *testing.B, mode string) {
	ca := newTestCA(b)
	certs := &testCerts{}
	certs.add("m.test", ca.issue(b, "m.test"))
	backend := stalledBackend(b)
	table := newTable(b, poolSpec{storage.Pool{Name: "m", SSLMode: "flexible", SSLDomain: "m.test"}, []string{"http://" + backend}})
	cfg := testConfig()
	cfg.HTTPAddr = ""
	cfg.MaxBackendConnsPerClient = 1 << 20 // one test client address opens them all
	cfg.IdleTimeout = time.Hour
	cfg.ReadTimeout = time.Hour
	cfg.MinBodyRate = 0
	p := startProxy(b, cfg, table, certs, nil)

	heap0, rss0 := heldMemory()
	conns := make([]*h2Raw, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		h := dialH2Raw(b, p.https, "m.test", ca.pool)
		conns = append(conns, h)
		switch mode {
		case "frame_header", "full_frame":
			// An extension frame type: read in full and ignored.
			var hdr [9]byte
			binary.BigEndian.PutUint32(hdr[:4], 1<<20<<8|0xfa)
			payload := []byte(nil)
			if mode == "full_frame" {
				payload = bytes.Repeat([]byte("x"), 1<<20-1)
			}
			if _, err := h.conn.Write(append(hdr[:], payload...)); err != nil {
				b.Fatal(err)
			}
		case "upload":
			// Four streams share the connection window (the server's
			// MaxUploadBufferPerConnection, 1 MiB): all of it but a
			// byte is sent, in 16 KiB frames.
			for s := uint32(1); s <= 7; s += 2 {
				if err := h.headers(s, false, ":method", "POST", ":scheme", "https", ":path", "/up", ":authority", "m.test", "content-length", strconv.Itoa(64<<20)); err != nil {
					b.Fatal(err)
				}
			}
			chunk := bytes.Repeat([]byte("u"), 16<<10)
			left := 1<<20 - 1
			for f := 0; left > 0; f++ {
				n := min(left, len(chunk))
				if err := h.fr.WriteData(uint32(1+2*(f%4)), false, chunk[:n]); err != nil {
					b.Fatal(err)
				}
				left -= n
			}
		}
	}
	// Let the server read what was sent.
	time.Sleep(2 * time.Second)
	b.StopTimer()
	heap1, rss1 := heldMemory()
	b.ReportMetric(float64(heap1-heap0)/float64(b.N), "heapB/conn")
	b.ReportMetric(float64(rss1-rss0)/float64(b.N), "rssB/conn")
	b.ReportMetric(0, "ns/op")
	for _, h := range conns {
		_ = h.conn.Close()
	}
}

// heldMemory returns the heap in use and the resident set size, in bytes,
// after a GC.
func heldMemory() (heap, rss int64) {
	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	status, err := os.ReadFile("/proc/self/status")
	if err == nil {
		if i := bytes.Index(status, []byte("VmRSS:")); i >= 0 {
			f := bytes.Fields(status[i+6:])
			if len(f) > 0 {
				kb, _ := strconv.ParseInt(string(f[0]), 10, 64)
				rss = kb << 10
			}
		}
	}
	return int64(ms.HeapInuse), rss
}

// stalledBackend accepts connections and never reads from them, with a
// small receive buffer, so that request bodies stay in the proxy.
func stalledBackend(tb testing.TB) string {
	tb.Helper()
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
		if err != nil {
			return err
		}
		return serr
	}}
	ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	var held []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				for _, c := range held {
					_ = c.Close()
				}
				return
			}
			held = append(held, c)
		}
	}()
	tb.Cleanup(func() {
		_ = ln.Close()
		<-done
	})
	return ln.Addr().String()
}
