//go:build linux && cgo

package tunnelloop

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/singularity-ng/singularity-edge/internal/nettest"
)

// rig is a tunnel between a client and a server: client <-> [a | loop | b] <-> server.
type rig struct {
	client, server *net.TCPConn
	tun            *Tunnel
}

func newRig(t *testing.T, g *Group) rig {
	t.Helper()
	client, a := nettest.TCPPair(t)
	b, server := nettest.TCPPair(t)
	tun, err := g.Add(a, b)
	if err != nil {
		t.Fatal(err)
	}
	return rig{client: client, server: server, tun: tun}
}

func newGroup(t *testing.T, mod func(*Config)) *Group {
	t.Helper()
	cfg := DefaultConfig()
	if mod != nil {
		mod(&cfg)
	}
	g, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	return g
}

func wait(t *testing.T, tun *Tunnel) Result {
	t.Helper()
	select {
	case <-tun.Done():
		return tun.Result()
	case <-time.After(20 * time.Second):
		t.Fatal("tunnel did not end")
	}
	return Result{}
}

func expectEOF(t *testing.T, c *net.TCPConn, who string) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
	var b [1]byte
	if n, err := c.Read(b[:]); n != 0 || err != io.EOF {
		t.Fatalf("%s: want EOF, got %d bytes, %v", who, n, err)
	}
}

func recvErr(t *testing.T, errc <-chan error) {
	t.Helper()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("writer did not finish")
	}
}

// TestBothWaysThenHalfClose: writes from 1 byte to 300 KiB both ways at
// once (short reads take recv/send, full buffers switch to splice and
// back), every byte compared; then each side half-closes in turn: the
// FIN reaches the other end while the opposite direction still flows.
// The result counts and the Group's byte count add up to what was sent.
func TestBothWaysThenHalfClose(t *testing.T) {
	g := newGroup(t, func(c *Config) { c.BufferSize = 16 << 10; c.PipeSize = 64 << 10 })
	for _, closer := range []string{"client", "server"} {
		t.Run(closer+" closes first", func(t *testing.T) {
			movedBefore := g.Moved()
			r := newRig(t, g)
			sizes := []int{1, 5, 100, 1500, 16<<10 - 1, 16 << 10, 16<<10 + 1, 300 << 10, 3, 64 << 10, 7}
			up, down := nettest.Pattern(1, 2<<20), nettest.Pattern(2, 2<<20)
			upErr, downErr := nettest.SendSized(r.client, up, sizes), nettest.SendSized(r.server, down, sizes)
			var wg sync.WaitGroup
			var gotUp, gotDown []byte
			var errUp, errDown error
			wg.Add(2)
			go func() { defer wg.Done(); gotUp, errUp = nettest.ReadN(r.server, len(up)) }()
			go func() { defer wg.Done(); gotDown, errDown = nettest.ReadN(r.client, len(down)) }()
			wg.Wait()
			if errUp != nil || !bytes.Equal(gotUp, up) {
				t.Fatalf("client->server differs (err %v)", errUp)
			}
			if errDown != nil || !bytes.Equal(gotDown, down) {
				t.Fatalf("server->client differs (err %v)", errDown)
			}
			recvErr(t, upErr)
			recvErr(t, downErr)

			first, other := r.client, r.server
			if closer == "server" {
				first, other = r.server, r.client
			}
			if err := first.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			expectEOF(t, other, "after half-close")
			// The other direction still works.
			if _, err := other.Write([]byte("after")); err != nil {
				t.Fatal(err)
			}
			if got, err := nettest.ReadN(first, 5); err != nil || string(got) != "after" {
				t.Fatalf("after half-close: %q, %v", got, err)
			}
			if err := other.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			expectEOF(t, first, "after both closed")
			res := wait(t, r.tun)
			if res.Reason != EOF || res.Err != nil {
				t.Fatalf("result %+v, want EOF", res)
			}
			wantAB, wantBA := int64(len(up)), int64(len(down))
			if closer == "client" {
				wantBA += 5
			} else {
				wantAB += 5
			}
			if res.AToB != wantAB || res.BToA != wantBA {
				t.Fatalf("moved %d/%d, want %d/%d", res.AToB, res.BToA, wantAB, wantBA)
			}
			if moved := g.Moved() - movedBefore; moved != uint64(wantAB+wantBA) {
				t.Fatalf("Group.Moved grew by %d bytes, want %d", moved, wantAB+wantBA)
			}
		})
	}
}

// TestDataThenFINTogether: data and the FIN that follows it, sent before
// the tunnel even starts, both arrive (the FIN flagged with the data's
// event is not lost by the short-read rule).
func TestDataThenFINTogether(t *testing.T) {
	g := newGroup(t, nil)
	client, a := nettest.TCPPair(t)
	b, server := nettest.TCPPair(t)
	if _, err := client.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	if err := client.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond) // let both reach a's queue (correct either way)
	tun, err := g.Add(a, b)
	if err != nil {
		t.Fatal(err)
	}
	got, err := nettest.ReadN(server, 5)
	if err != nil || string(got) != "hello" {
		t.Fatalf("got %q, %v", got, err)
	}
	expectEOF(t, server, "server")
	server.Close()
	res := wait(t, tun)
	if res.AToB != 5 {
		t.Fatalf("moved %d, want 5", res.AToB)
	}
}

// TestResetPropagates: a peer that resets its connection makes the loop
// reset the other side too, and the result says Reset with the cause.
func TestResetPropagates(t *testing.T) {
	g := newGroup(t, nil)
	for _, who := range []string{"server", "client"} {
		t.Run(who+" resets", func(t *testing.T) {
			r := newRig(t, g)
			// Traffic first, so that the tunnel is established both ways.
			if _, err := r.client.Write([]byte("ping")); err != nil {
				t.Fatal(err)
			}
			if _, err := nettest.ReadN(r.server, 4); err != nil {
				t.Fatal(err)
			}
			resetter, other := r.server, r.client
			if who == "client" {
				resetter, other = r.client, r.server
			}
			if err := resetter.SetLinger(0); err != nil {
				t.Fatal(err)
			}
			resetter.Close()
			_ = other.SetReadDeadline(time.Now().Add(20 * time.Second))
			var b [1]byte
			_, err := other.Read(b[:])
			if !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("other side read: %v, want a reset", err)
			}
			res := wait(t, r.tun)
			if res.Reason != Reset || !errors.Is(res.Err, syscall.ECONNRESET) {
				t.Fatalf("result %+v, want Reset with ECONNRESET", res)
			}
		})
	}
}

// TestBackpressure: a server that does not read stops the loop from
// reading the client once the kernel buffers and the loop's one buffer
// per direction are full: the client's write blocks instead of the loop
// buffering without bound. When the server reads again, every byte
// arrives in order.
func TestBackpressure(t *testing.T) {
	g := newGroup(t, nil)
	r := newRig(t, g)
	// Counting words: every 8 bytes differ, cheap to make under -race.
	data := make([]byte, 128<<20)
	for i := 0; i < len(data); i += 8 {
		binary.LittleEndian.PutUint64(data[i:], uint64(i))
	}
	written := 0
	for written < len(data) {
		_ = r.client.SetWriteDeadline(time.Now().Add(500 * time.Millisecond))
		n, err := r.client.Write(data[written:min(written+1<<20, len(data))])
		written += n
		if err != nil {
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatal(err)
			}
			break
		}
	}
	// The kernel buffers of the four sockets on the way hold at most
	// twice tcp_wmem's and tcp_rmem's maxima (Debian: 4 and 6 MiB; 32 MiB
	// receive on some hosts, 72 MiB in all); the loop adds at most one
	// buffer or pipe. 128 MiB accepted means it buffered.
	if written == len(data) {
		t.Fatalf("all %d bytes were accepted with nobody reading", written)
	}
	_ = r.client.SetWriteDeadline(time.Time{})
	errc := nettest.SendSized(r.client, data[written:], []int{1 << 20})
	got, err := nettest.ReadN(r.server, len(data))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("server got %d bytes (err %v), or they differ", len(got), err)
	}
	recvErr(t, errc)
}

// TestIdleTimeout: a tunnel with nothing moving either way is closed
// after the idle timeout; both peers see the end.
func TestIdleTimeout(t *testing.T) {
	g := newGroup(t, func(c *Config) { c.IdleTimeout = 300 * time.Millisecond })
	r := newRig(t, g)
	if _, err := r.client.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := nettest.ReadN(r.server, 1); err != nil {
		t.Fatal(err)
	}
	res := wait(t, r.tun)
	if res.Reason != Idle || res.AToB != 1 {
		t.Fatalf("result %+v, want Idle after 1 byte", res)
	}
	expectEOF(t, r.client, "client")
	expectEOF(t, r.server, "server")
}

// TestKillAndClose: Kill ends one tunnel (both peers see the end); Close
// ends every other one and refuses new ones.
func TestKillAndClose(t *testing.T) {
	g := newGroup(t, func(c *Config) { c.Loops = 2 })
	rigs := make([]rig, 5)
	for i := range rigs {
		rigs[i] = newRig(t, g)
	}
	rigs[0].tun.Kill()
	if res := wait(t, rigs[0].tun); res.Reason != Killed {
		t.Fatalf("killed tunnel: %+v", res)
	}
	expectEOF(t, rigs[0].client, "killed client")
	expectEOF(t, rigs[0].server, "killed server")
	rigs[0].tun.Kill() // after the end: nothing happens

	if _, err := rigs[1].client.Write([]byte("abc")); err != nil {
		t.Fatal(err)
	}
	if _, err := nettest.ReadN(rigs[1].server, 3); err != nil {
		t.Fatal(err)
	}
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	// The count survives the loops (read from Go's copy, not freed memory).
	if moved := g.Moved(); moved != 3 {
		t.Fatalf("Moved after Close = %d, want 3", moved)
	}
	for i, r := range rigs[1:] {
		select {
		case <-r.tun.Done():
		default:
			t.Fatalf("tunnel %d still running after Close", i+1)
		}
		if res := r.tun.Result(); res.Reason != Killed {
			t.Fatalf("tunnel %d: %+v, want Killed", i+1, res)
		}
		expectEOF(t, r.client, "client")
	}
	a, b := nettest.TCPPair(t)
	if _, err := g.Add(a, b); !errors.Is(err, ErrClosed) {
		t.Fatalf("Add after Close: %v, want ErrClosed", err)
	}
	// Refused: the connections are still the caller's.
	if _, err := a.Write([]byte("x")); err != nil {
		t.Fatalf("connection unusable after a refused Add: %v", err)
	}
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestManyTunnelsNoLeak: 200 tunnels on one loop exchange data at once,
// end every way a tunnel ends (FIN, reset, kill, Close), and afterwards
// the process has exactly the descriptors it had before.
func TestManyTunnelsNoLeak(t *testing.T) {
	// The runtime's netpoller opens its descriptors with the first
	// connection of the process.
	w1, w2 := nettest.TCPPair(t)
	w1.Close()
	w2.Close()
	before := openFDs(t)
	cfg := DefaultConfig()
	cfg.Loops = 1
	g, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	const n = 200
	type pair struct{ client, server *net.TCPConn }
	pairs := make([]pair, n)
	tuns := make([]*Tunnel, n)
	for i := range pairs {
		client, a := nettest.TCPPair(t)
		b, server := nettest.TCPPair(t)
		pairs[i] = pair{client, server}
		if tuns[i], err = g.Add(a, b); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i, p := range pairs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msg := nettest.Pattern(uint64(i), 1+i*97%70000)
			for range 3 {
				if _, err := p.client.Write(msg); err != nil {
					errs <- err
					return
				}
				got, err := nettest.ReadN(p.server, len(msg))
				if err != nil || !bytes.Equal(got, msg) {
					errs <- errors.New("request differs")
					return
				}
				if _, err := p.server.Write(got); err != nil {
					errs <- err
					return
				}
				if back, err := nettest.ReadN(p.client, len(msg)); err != nil || !bytes.Equal(back, msg) {
					errs <- errors.New("response differs")
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for i, p := range pairs {
		switch i % 4 {
		case 0: // clean end both ways
			p.client.CloseWrite()
			p.server.CloseWrite()
			wait(t, tuns[i])
		case 1:
			p.server.SetLinger(0)
			p.server.Close()
			wait(t, tuns[i])
		case 2:
			tuns[i].Kill()
			wait(t, tuns[i])
		}
	}
	g.Close()
	for i := range pairs {
		if tuns[i].Result().Reason == 0 {
			t.Fatalf("tunnel %d has no result after Close", i)
		}
		pairs[i].client.Close()
		pairs[i].server.Close()
	}
	if after := openFDs(t); after != before {
		t.Fatalf("%d descriptors open before, %d after", before, after)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*Config)
	}{
		{"no loops", func(c *Config) { c.Loops = 0 }},
		{"idle zero", func(c *Config) { c.IdleTimeout = 0 }},
		{"tiny buffer", func(c *Config) { c.BufferSize = 10 }},
		{"tiny pipe", func(c *Config) { c.PipeSize = 10 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfig()
			tc.mod(&cfg)
			if g, err := New(cfg); err == nil {
				g.Close()
				t.Fatal("accepted")
			}
		})
	}
}
