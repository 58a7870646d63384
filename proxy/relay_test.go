package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/singularity-ng/singularity-edge/storage"

	"github.com/singularity-ng/singularity-edge/internal/nettest"
)

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// TestRelayBothWaysHalfClose drives the TCP-to-TCP relay directly: writes
// of every size from 1 byte to 300 KiB each way at once (small records
// take the recv/send path, full buffers switch to splice and back), with
// every byte compared; then a half-close each way in turn: the FIN reaches
// the other end while the opposite direction keeps flowing, and the byte
// counts and the counter match what was sent.
func TestRelayBothWaysHalfClose(t *testing.T) {
	s := &Server{cfg: testConfig()}
	client, clientProxy := nettest.TCPPair(t)
	proxyBackend, backend := nettest.TCPPair(t)
	counter := prometheus.NewCounter(prometheus.CounterOpts{Name: "relayed_bytes"})
	type moved struct{ up, down int64 }
	done := make(chan moved, 1)
	go func() {
		up, down := s.tunnel(newRawTCPConn(clientProxy), proxyBackend, counter)
		done <- moved{up, down}
	}()

	sizes := []int{1, 5, 100, 1500, 16 << 10, bodyBufSize - 1, bodyBufSize, bodyBufSize + 1, 300 << 10, 3, 64 << 10, 7}
	var up, down bytes.Buffer
	for i, n := range sizes {
		up.Write(nettest.Pattern(uint64(i), n))
		down.Write(nettest.Pattern(uint64(100+i), n))
	}
	// Each side writes its stream in the listed sizes while the other
	// side reads it; both directions at the same time.
	upErr, downErr := nettest.SendSized(client, up.Bytes(), sizes), nettest.SendSized(backend, down.Bytes(), sizes)
	var wg sync.WaitGroup
	var gotUp, gotDown []byte
	var errUp, errDown error
	wg.Add(2)
	go func() { defer wg.Done(); gotUp, errUp = nettest.ReadN(backend, up.Len()) }()
	go func() { defer wg.Done(); gotDown, errDown = nettest.ReadN(client, down.Len()) }()
	wg.Wait()
	if errUp != nil || !bytes.Equal(gotUp, up.Bytes()) {
		t.Fatalf("client->backend differs (%d of %d bytes, err %v)", len(gotUp), up.Len(), errUp)
	}
	if errDown != nil || !bytes.Equal(gotDown, down.Bytes()) {
		t.Fatalf("backend->client differs (%d of %d bytes, err %v)", len(gotDown), down.Len(), errDown)
	}
	for _, errc := range []<-chan error{upErr, downErr} {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}

	// Half-close client->backend: the backend sees EOF, and can still
	// answer.
	if err := client.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	_ = backend.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := backend.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("backend after the client's half-close: %d bytes, %v; want EOF", n, err)
	}
	tail := nettest.Pattern(7, 200<<10)
	if _, err := backend.Write(tail); err != nil {
		t.Fatalf("backend answer after half-close: %v", err)
	}
	if err := backend.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	_ = client.SetReadDeadline(time.Now().Add(10 * time.Second))
	rest, err := io.ReadAll(client)
	if err != nil || !bytes.Equal(rest, tail) {
		t.Fatalf("answer after half-close: %d of %d bytes, err %v", len(rest), len(tail), err)
	}

	var m moved
	select {
	case m = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("tunnel did not end after both half-closes")
	}
	wantDown := int64(down.Len() + len(tail))
	if m.up != int64(up.Len()) || m.down != wantDown {
		t.Fatalf("tunnel counted %d up, %d down; want %d, %d", m.up, m.down, up.Len(), wantDown)
	}
	if got := counterValue(t, counter); got != float64(int64(up.Len())+wantDown) {
		t.Fatalf("counter %v, want %d", got, int64(up.Len())+wantDown)
	}
}

// TestRelayDataThenFIN: a few bytes and the FIN sent back to back (they
// usually arrive in one wake-up). The relay must deliver both: a relay
// that parked after the short recv never saw the FIN and hung.
func TestRelayDataThenFIN(t *testing.T) {
	s := &Server{cfg: testConfig()}
	for i := 0; i < 20; i++ {
		client, clientProxy := nettest.TCPPair(t)
		proxyBackend, backend := nettest.TCPPair(t)
		done := make(chan struct{})
		go func() {
			defer close(done)
			s.tunnel(clientProxy, proxyBackend, nil)
		}()
		if _, err := client.Write([]byte("last words")); err != nil {
			t.Fatal(err)
		}
		if err := client.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		_ = backend.SetReadDeadline(time.Now().Add(10 * time.Second))
		got, err := io.ReadAll(backend)
		if err != nil || string(got) != "last words" {
			t.Fatalf("round %d: backend got %q, %v; want the bytes then EOF", i, got, err)
		}
		_ = backend.Close()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("round %d: tunnel did not end", i)
		}
	}
}

// TestPassthroughPingPong: 500 request/response exchanges of 1 byte to
// 2 KB through a passthrough tunnel, then the client's half-close: the
// backend's last bytes after it still arrive. Run with the event loop
// (asserted to carry the tunnel) and with the goroutine relay it falls
// back to; the byte counter matches the traffic in both.
func TestPassthroughPingPong(t *testing.T) {
	ca := newTestCA(t)
	backend := nettest.TLSEcho(t, ca.issue(t, "pp.test"), "bye")
	table := newTable(t, poolSpec{storage.Pool{Name: "pp", SSLMode: "passthrough", SSLDomain: "pp.test"}, []string{"https://" + backend.String()}})
	for _, tc := range []struct {
		name  string
		loops int
	}{
		{"event loop", 0},
		{"goroutine relay", -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig()
			cfg.TunnelEventLoops = tc.loops
			cfg.Registerer = prometheus.NewRegistry()
			p := startProxy(t, cfg, table, nil, nil)
			if (p.loops != nil) != (tc.loops >= 0) {
				t.Fatalf("event loops running: %v", p.loops != nil)
			}
			c, err := tls.Dial("tcp", p.https, &tls.Config{ServerName: "pp.test", RootCAs: ca.pool})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(30 * time.Second))
			buf := make([]byte, 2048)
			for i := 0; i < 500; i++ {
				msg := nettest.Pattern(uint64(i), 1+i*4%2000)
				if _, err := c.Write(msg); err != nil {
					t.Fatalf("exchange %d: %v", i, err)
				}
				if _, err := io.ReadFull(c, buf[:len(msg)]); err != nil || !bytes.Equal(buf[:len(msg)], msg) {
					t.Fatalf("exchange %d: echo differs (%v)", i, err)
				}
			}
			if got := tunnelsInLoops(p.Server); got != (tc.loops >= 0) {
				t.Fatalf("tunnel on an event loop: %v", got)
			}
			if err := c.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			rest, err := io.ReadAll(c)
			if err != nil || string(rest) != "bye" {
				t.Fatalf("after the client's half-close: %q, %v; want \"bye\"", rest, err)
			}
			// TLS's CloseWrite sends close_notify, not a FIN: the
			// client's close ends the tunnel. Then the counter holds
			// every byte of both directions (TLS records included, so
			// at least the payloads).
			c.Close()
			waitFor(t, "passthrough connection to end", func() bool { return activeConns(p.Server) == 0 })
			var payload float64
			for i := 0; i < 500; i++ {
				payload += 2 * float64(1+i*4%2000)
			}
			if got := p.metrics.passthroughBytes.value(); got < payload {
				t.Fatalf("passthrough bytes counted %v, want at least %v", got, payload)
			}
		})
	}
}

// tunnelsInLoops reports whether some connection of s is relayed by an
// event loop right now.
func tunnelsInLoops(s *Server) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for tc := range s.conns {
		if tc.tunnel.Load() != nil {
			return true
		}
	}
	return false
}

func activeConns(s *Server) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// TestShutdownCutsPassthroughTunnels: Shutdown waits for tunnels on the
// event loops like any busy connection, and when its deadline passes it
// closes them (the client sees the end) and reports the cut; the loops
// are stopped and a second connection is refused.
func TestShutdownCutsPassthroughTunnels(t *testing.T) {
	backend, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { backend.Close() })
	go func() {
		for {
			c, err := backend.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }() // raw echo: the ClientHello comes back
		}
	}()
	table := newTable(t, poolSpec{storage.Pool{Name: "sc", SSLMode: "passthrough", SSLDomain: "sc.test"}, []string{"https://" + backend.Addr().String()}})
	r := &testRouter{}
	r.t.Store(table)
	cfg := testConfig()
	cfg.HTTPAddr = ""
	s, err := New(cfg, r, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if s.loops == nil {
		t.Skip("no event loops in this build")
	}
	_, addr := s.Addrs()
	c, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	hello := captureClientHello(t, &tls.Config{ServerName: "sc.test", InsecureSkipVerify: true})
	if _, err := c.Write(hello); err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.ReadFull(c, make([]byte, len(hello))); err != nil {
		t.Fatalf("echo of the ClientHello: %v", err)
	}
	waitFor(t, "tunnel on the event loop", func() bool { return tunnelsInLoops(s) })

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := s.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown with a tunnel open: %v, want the deadline", err)
	}
	if n, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("client after Shutdown: %d bytes, %v; want EOF", n, err)
	}
	if c2, err := net.DialTimeout("tcp", addr.String(), time.Second); err == nil {
		c2.Close()
		t.Fatal("listener still accepting after Shutdown")
	}
}

// TestRawTCPConnSemantics: the raw-syscall connection reads and writes
// like *net.TCPConn: a write larger than the socket buffers completes,
// end of stream is io.EOF itself, a deadline is os.ErrDeadlineExceeded
// and a net.Error timeout, a closed connection is net.ErrClosed, and a
// reset peer is the syscall's error.
func TestRawTCPConnSemantics(t *testing.T) {
	a, peer := nettest.TCPPair(t)
	c := newRawTCPConn(a)
	if tcp, ok := unwrapTCP(c); !ok || tcp != a {
		t.Fatalf("unwrapTCP = %v, %v", tcp, ok)
	}

	big := nettest.Pattern(1, 8<<20)
	errc := make(chan error, 1)
	go func() {
		n, err := c.Write(big)
		if err == nil && n != len(big) {
			err = errors.New("short write")
		}
		errc <- err
	}()
	_ = peer.SetReadDeadline(time.Now().Add(20 * time.Second))
	got := make([]byte, len(big))
	for off := 0; off < len(got); {
		n, err := peer.Read(got[off:min(off+4096, len(got))]) // slow reader: the writer hits EAGAIN
		if err != nil {
			t.Fatal(err)
		}
		off += n
	}
	select {
	case err := <-errc:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("write did not return")
	}
	if !bytes.Equal(got, big) {
		t.Fatal("8 MiB write arrived altered")
	}

	if _, err := peer.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	rb := make([]byte, 16)
	if n, err := io.ReadAtLeast(c, rb, 5); err != nil || string(rb[:n]) != "hello" {
		t.Fatalf("read %q, %v", rb[:n], err)
	}

	_ = c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	_, err := c.Read(rb)
	var ne net.Error
	if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read past the deadline: %v", err)
	}

	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if err := peer.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if n, err := c.Read(rb); n != 0 || err != io.EOF {
		t.Fatalf("read at end of stream: %d, %v; want io.EOF", n, err)
	}

	// The peer resets: writing fails with the kernel's error.
	_ = peer.SetLinger(0)
	_ = peer.Close()
	var werr error
	deadline := time.Now().Add(10 * time.Second)
	for werr == nil && time.Now().Before(deadline) {
		_, werr = c.Write([]byte("x"))
		time.Sleep(time.Millisecond)
	}
	if !errors.Is(werr, syscall.ECONNRESET) && !errors.Is(werr, syscall.EPIPE) {
		t.Fatalf("write to a reset peer: %v", werr)
	}

	_ = c.Close()
	if _, err := c.Read(rb); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read after Close: %v", err)
	}
	if _, err := c.Write(rb); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write after Close: %v", err)
	}
}

// inqRelay returns a relay from clientProxy to proxyBackend, the proxy's
// ends of two loopback connections (client and backend are the others),
// and skips the test on kernels without TCP_INQ.
func inqRelay(t *testing.T, s *Server) (r *relay, client, clientProxy, proxyBackend, backend *net.TCPConn) {
	t.Helper()
	client, clientProxy = nettest.TCPPair(t)
	proxyBackend, backend = nettest.TCPPair(t)
	r, err := s.newRelay(proxyBackend, clientProxy)
	if err != nil {
		t.Fatal(err)
	}
	if !r.inq {
		t.Skip("kernel without TCP_INQ")
	}
	return r, client, clientProxy, proxyBackend, backend
}

// TestRelayParksAfterShortRecv: with TCP_INQ a direction parks as soon as
// a recv leaves the socket empty, instead of paying a recv that only says
// EAGAIN: one recv per record in a ping-pong (plus the one that reads the
// FIN), where reading until EAGAIN takes two.
func TestRelayParksAfterShortRecv(t *testing.T) {
	s := &Server{cfg: testConfig()}
	r, client, clientProxy, proxyBackend, backend := inqRelay(t, s)
	done := make(chan int64, 1)
	go func() { done <- r.run(proxyBackend, clientProxy, proxyBackend) }()
	const records = 200
	got := make([]byte, 100)
	_ = backend.SetReadDeadline(time.Now().Add(20 * time.Second))
	for i := range records {
		want := nettest.Pattern(uint64(i), len(got))
		if _, err := client.Write(want); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(backend, got); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("record %d: %v, or the bytes differ", i, err)
		}
	}
	if err := client.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if n, err := backend.Read(got); n != 0 || err != io.EOF {
		t.Fatalf("after the client's FIN: %d bytes, %v; want EOF", n, err)
	}
	select {
	case moved := <-done:
		if moved != records*100 {
			t.Fatalf("relay moved %d bytes, want %d", moved, records*100)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("relay did not end after the FIN")
	}
	// A wake-up may find data that raised one more event than it needed;
	// reading until EAGAIN would make this 2*records+1.
	if limit := records + records/4 + 1; r.recvs > limit {
		t.Fatalf("%d recv calls for %d records, want at most %d", r.recvs, records, limit)
	}
}

// TestRelayDataThenResetFound: a reset that arrives with the last data,
// in one readiness event, is not reported by TCP_INQ; the direction parks
// after that data and finds the reset at its next recheck instead of
// waiting for the idle timeout.
func TestRelayDataThenResetFound(t *testing.T) {
	s := &Server{cfg: testConfig()}
	for i := range 5 {
		r, client, clientProxy, proxyBackend, backend := inqRelay(t, s)
		r.recheck = 100 * time.Millisecond
		if _, err := client.Write([]byte("last words")); err != nil {
			t.Fatal(err)
		}
		if err := client.SetLinger(0); err != nil {
			t.Fatal(err)
		}
		_ = client.Close() // RST
		// Let the netpoller take the event (data and reset together)
		// before the relay first reads.
		time.Sleep(50 * time.Millisecond)
		done := make(chan struct{})
		go func() {
			defer close(done)
			r.run(proxyBackend, clientProxy, proxyBackend)
		}()
		_ = backend.SetReadDeadline(time.Now().Add(10 * time.Second))
		got, err := io.ReadAll(backend)
		if err != nil || string(got) != "last words" {
			t.Fatalf("round %d: backend got %q, %v; want the bytes, then the close", i, got, err)
		}
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("round %d: relay did not end after the reset", i)
		}
	}
}

// TestWriteThenRead: the request goes out, the answer that comes later is
// read with a single recv (a Write then Read would first pay a recv that
// finds the socket empty); a request larger than the socket takes is
// reported as partly sent with nothing read; the read deadline, the
// peer's FIN and a closed connection give Read's errors.
func TestWriteThenRead(t *testing.T) {
	a, peer := nettest.TCPPair(t)
	c := newRawTCPConn(a).(*rawTCPConn)
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_ = peer.SetReadDeadline(time.Now().Add(10 * time.Second))
	rb := make([]byte, 64)
	for i := range 20 {
		go func() {
			req := make([]byte, 7)
			if _, err := io.ReadFull(peer, req); err != nil {
				return
			}
			time.Sleep(5 * time.Millisecond) // the answer comes after the proxy waits
			_, _ = peer.Write(append([]byte("re:"), req...))
		}()
		before := c.recvs
		wn, rn, full, err := c.writeThenRead([]byte("request"), rb)
		if err != nil || full || wn != 7 || string(rb[:rn]) != "re:request" {
			t.Fatalf("exchange %d: wrote %d, read %q, full %v, %v", i, wn, rb[:rn], full, err)
		}
		if recvs := c.recvs - before; recvs != 1 {
			t.Fatalf("exchange %d: %d recv calls, want 1 (no recv before the answer)", i, recvs)
		}
	}

	// More than the socket buffers hold, with the peer not reading.
	big := nettest.Pattern(3, 16<<20)
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_ = peer.SetReadDeadline(time.Now().Add(20 * time.Second))
	wn, rn, full, err := c.writeThenRead(big, rb)
	if err != nil || !full || wn <= 0 || wn >= len(big) || rn != 0 {
		t.Fatalf("oversized request: wrote %d of %d, read %d, full %v, %v", wn, len(big), rn, full, err)
	}
	done := make(chan error, 1)
	go func() { _, err := c.Write(big[wn:]); done <- err }()
	got := make([]byte, len(big))
	if _, err := io.ReadFull(peer, got); err != nil || !bytes.Equal(got, big) {
		t.Fatalf("oversized request arrived altered: %v", err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("rest of the oversized request not written")
	}

	// Sent, then no answer before the read deadline.
	_ = c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	_, _, _, err = c.writeThenRead([]byte("x"), rb)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("no answer: %v, want the read deadline", err)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	// The answer is a FIN: the peer reads the request, then shuts its
	// side. (A FIN that arrived before the call is the caller's to find:
	// the call resets the poller's readiness, and pooled connections are
	// peeked with socketEmpty just before; see writeThenRead.) So the peer
	// waits for "y" itself, behind the unanswered "x": shutting after "x"
	// alone could send the FIN before the call, which a loaded machine
	// showed.
	go func() {
		req := make([]byte, 2)
		if _, err := io.ReadFull(peer, req); err == nil {
			_ = peer.CloseWrite()
		}
	}()
	if _, rn, _, err := c.writeThenRead([]byte("y"), rb); rn != 0 || err != io.EOF {
		t.Fatalf("answer is a FIN: %d bytes, %v; want io.EOF", rn, err)
	}
	_ = c.Close()
	if _, _, _, err := c.writeThenRead([]byte("z"), rb); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("closed connection: %v, want net.ErrClosed", err)
	}
}
