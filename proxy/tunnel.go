package proxy

import (
	"errors"
	"io"
	"net"
	"os"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
)

// tunnel copies client->backend and backend->client until both directions
// end, one fails, or nothing moved either way for TunnelIdleTimeout. It
// returns the bytes copied each way; counter, when set, also counts them as
// they move (passthrough connections live long).
//
// Between two TCP connections (passthrough, plain-HTTP upgrades) the copy
// is splice(2) through (*net.TCPConn).ReadFrom: the bytes never enter user
// space and the goroutine wakes once per MiB or per idle window, not per
// TLS record. Idleness is then read from the kernel (TCP_INFO's time since
// data last arrived on each socket) when a window's deadline passes, so no
// per-read deadline is needed. Other pairs (TLS upgrades) copy through a
// pooled buffer with a deadline renewed as bytes move.
func (s *Server) tunnel(client, backend net.Conn, counter prometheus.Counter) (toBackend, toClient int64) {
	var active [2]atomic.Int64 // last time each direction moved bytes
	now := time.Now().UnixNano()
	active[0].Store(now)
	active[1].Store(now)
	done := make(chan int64, 1)
	ctcp, cok := client.(*net.TCPConn)
	btcp, bok := backend.(*net.TCPConn)
	if cok && bok {
		go func() { done <- s.splicePipe(btcp, ctcp, btcp, counter) }()
		toClient = s.splicePipe(ctcp, btcp, ctcp, counter)
		toBackend = <-done
		return toBackend, toClient
	}
	go func() { done <- s.pipe(backend, client, &active[0], &active[1], counter) }()
	toClient = s.pipe(client, backend, &active[1], &active[0], counter)
	toBackend = <-done
	return toBackend, toClient
}

// pipe copies src to dst. The read deadline is renewed as bytes move;
// when it passes and the other direction was quiet as long, the tunnel is
// idle and both connections are closed. On EOF the write side of dst is
// closed so that the peer sees the half-close, and the other direction
// goes on.
func (s *Server) pipe(dst, src net.Conn, mine, other *atomic.Int64, counter prometheus.Counter) int64 {
	idle := s.cfg.TunnelIdleTimeout
	bp := s.getBodyBuf()
	defer s.putBodyBuf(bp)
	buf := *bp
	var total int64
	var rdl, wdl time.Time
	now := time.Now()
	for {
		if want := now.Add(idle); needDeadline(rdl, want, idle) {
			if src.SetReadDeadline(want) != nil {
				closeBoth(dst, src)
				return total
			}
			rdl = want
		}
		n, err := src.Read(buf)
		now = time.Now()
		if n > 0 {
			mine.Store(now.UnixNano())
			if want := now.Add(idle); needDeadline(wdl, want, idle) {
				_ = dst.SetWriteDeadline(want)
				wdl = want
			}
			w, werr := dst.Write(buf[:n])
			total += int64(w)
			if counter != nil {
				counter.Add(float64(w))
			}
			if werr != nil {
				closeBoth(dst, src)
				return total
			}
		}
		if err == nil {
			continue
		}
		if err == io.EOF {
			closeWrite(dst)
			return total
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			quiet := now.Sub(time.Unix(0, max(mine.Load(), other.Load())))
			if quiet < idle {
				rdl = time.Time{}
				continue
			}
		}
		closeBoth(dst, src)
		return total
	}
}

// spliceChunk is how many bytes one ReadFrom moves before the counter is
// updated; it bounds nothing else.
const spliceChunk = 1 << 20

// splicePipe copies src to dst with splice(2). other is the socket the
// opposite direction reads from: the tunnel is idle only when neither
// received data for TunnelIdleTimeout.
func (s *Server) splicePipe(dst, src, other *net.TCPConn, counter prometheus.Counter) int64 {
	idle := s.cfg.TunnelIdleTimeout
	var total int64
	wait := idle
	lr := io.LimitedReader{R: src}
	for {
		if src.SetReadDeadline(time.Now().Add(wait)) != nil {
			closeBoth(dst, src)
			return total
		}
		lr.N = spliceChunk
		n, err := dst.ReadFrom(&lr)
		total += n
		if counter != nil && n > 0 {
			counter.Add(float64(n))
		}
		switch {
		case err == nil && lr.N > 0:
			// The limit was not reached: src ended.
			closeWrite(dst)
			return total
		case err == nil:
			wait = idle
			continue
		case errors.Is(err, os.ErrDeadlineExceeded):
			q1, ok1 := sinceDataReceived(src)
			q2, ok2 := sinceDataReceived(other)
			if ok1 && ok2 {
				if quiet := min(q1, q2); quiet < idle {
					wait = max(idle-quiet, time.Second)
					continue
				}
			} else if n > 0 {
				wait = idle
				continue
			}
		}
		closeBoth(dst, src)
		return total
	}
}

// sinceDataReceived is how long ago c's socket last received data
// (TCP_INFO, millisecond resolution).
func sinceDataReceived(c *net.TCPConn) (time.Duration, bool) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, false
	}
	var info *unix.TCPInfo
	var ierr error
	if err := rc.Control(func(fd uintptr) {
		info, ierr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	}); err != nil || ierr != nil {
		return 0, false
	}
	return time.Duration(info.Last_data_recv) * time.Millisecond, true
}

func closeWrite(c net.Conn) {
	type halfCloser interface{ CloseWrite() error }
	if hc, ok := c.(halfCloser); ok {
		if hc.CloseWrite() == nil {
			return
		}
	}
	_ = c.Close()
}

func closeBoth(a, b net.Conn) {
	_ = a.Close()
	_ = b.Close()
}
