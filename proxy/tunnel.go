package proxy

import (
	"errors"
	"io"
	"net"
	"os"
	"sync/atomic"
	"time"
)

// tunnel copies client->backend and backend->client until both directions
// end, one fails, or nothing moved either way for TunnelIdleTimeout. Between
// two *net.TCPConn, io.Copy uses splice(2): the bytes never enter user
// space. It returns the bytes copied each way.
func (s *Server) tunnel(client, backend net.Conn) (toBackend, toClient int64) {
	var active [2]atomic.Int64 // last time each direction moved bytes
	now := time.Now().UnixNano()
	active[0].Store(now)
	active[1].Store(now)
	done := make(chan int64, 1)
	go func() { done <- s.pipe(backend, client, &active[0], &active[1]) }()
	toClient = s.pipe(client, backend, &active[1], &active[0])
	toBackend = <-done
	return toBackend, toClient
}

// pipe copies src to dst. The read deadline is renewed every idle period;
// when a period passes without bytes in this direction and the other one
// was quiet as long, the tunnel is idle and both connections are closed.
// On EOF the write side of dst is closed so that the peer sees the
// half-close, and the other direction goes on.
func (s *Server) pipe(dst, src net.Conn, mine, other *atomic.Int64) int64 {
	idle := s.cfg.TunnelIdleTimeout
	var total int64
	for {
		if err := src.SetReadDeadline(time.Now().Add(idle)); err != nil {
			closeBoth(dst, src)
			return total
		}
		n, err := io.Copy(dst, src)
		total += n
		now := time.Now()
		if n > 0 {
			mine.Store(now.UnixNano())
		}
		if err == nil {
			closeWrite(dst)
			return total
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			quiet := now.Sub(time.Unix(0, max(mine.Load(), other.Load())))
			if quiet < idle {
				continue
			}
		}
		closeBoth(dst, src)
		return total
	}
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
