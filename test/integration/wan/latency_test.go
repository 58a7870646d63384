package wan

// Latency injected in-process, for kernels without tc netem: a memberlist
// Transport that holds every gossip packet and stream byte for the one-way
// delay towards its destination, and a net.Conn that holds the bytes of a
// replication stream for the delay in both directions.

import (
	"net"
	"os"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// delayFunc is the one-way delay from this node to addr (host:port).
type delayFunc func(addr string) time.Duration

// delayTransport delays what this node sends: packets by scheduling their
// write, streams it dials by wrapping the connection (both directions, so
// the accepting side is left unwrapped and no byte is delayed twice).
type delayTransport struct {
	memberlist.Transport
	delay delayFunc
}

func (t *delayTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	d := t.delay(addr)
	if d <= 0 {
		return t.Transport.WriteTo(b, addr)
	}
	buf := append([]byte(nil), b...)
	time.AfterFunc(d, func() { _, _ = t.Transport.WriteTo(buf, addr) })
	return time.Now(), nil
}

func (t *delayTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	c, err := t.Transport.DialTimeout(addr, timeout)
	if err != nil {
		return nil, err
	}
	if d := t.delay(addr); d > 0 {
		return newDelayConn(c, d), nil
	}
	return c, nil
}

// chunk is data in flight, deliverable at due.
type chunk struct {
	due  time.Time
	data []byte
	err  error
}

// delayConn delays every byte written by d before it reaches the peer,
// and every byte read by d after it arrived: a link with d of latency
// each way, bandwidth unchanged. Read deadlines are honoured; writes are
// buffered (like a socket buffer) and never block on the delay.
type delayConn struct {
	net.Conn
	d time.Duration

	out chan chunk
	in  chan chunk

	mu       sync.Mutex
	werr     error
	deadline time.Time
	pending  *chunk

	closeOnce sync.Once
	closed    chan struct{}
}

func newDelayConn(c net.Conn, d time.Duration) *delayConn {
	dc := &delayConn{Conn: c, d: d, out: make(chan chunk, 4096), in: make(chan chunk, 4096), closed: make(chan struct{})}
	go dc.sendLoop()
	go dc.recvLoop()
	return dc
}

func (c *delayConn) sendLoop() {
	defer c.Conn.Close()
	write := func(ch chunk) bool {
		sleepUntil(ch.due, nil)
		if _, err := c.Conn.Write(ch.data); err != nil {
			c.mu.Lock()
			c.werr = err
			c.mu.Unlock()
			return false
		}
		return true
	}
	for {
		select {
		case ch := <-c.out:
			if !write(ch) {
				return
			}
		case <-c.closed:
			// What was written before Close still reaches the peer, as
			// on a socket; then the connection closes.
			for {
				select {
				case ch := <-c.out:
					if !write(ch) {
						return
					}
				default:
					return
				}
			}
		}
	}
}

func (c *delayConn) recvLoop() {
	for {
		buf := make([]byte, 32<<10)
		n, err := c.Conn.Read(buf)
		ch := chunk{due: time.Now().Add(c.d), data: buf[:n], err: err}
		select {
		case c.in <- ch:
		case <-c.closed:
			return
		}
		if err != nil {
			return
		}
	}
}

func sleepUntil(t time.Time, stop <-chan struct{}) bool {
	d := time.Until(t)
	if d <= 0 {
		return true
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return true
	case <-stop:
		return false
	}
}

func (c *delayConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	err := c.werr
	c.mu.Unlock()
	if err != nil {
		return 0, err
	}
	select {
	case c.out <- chunk{due: time.Now().Add(c.d), data: append([]byte(nil), p...)}:
		return len(p), nil
	case <-c.closed:
		return 0, net.ErrClosed
	}
}

func (c *delayConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	deadline, ch := c.deadline, c.pending
	c.pending = nil
	c.mu.Unlock()
	var timeout <-chan time.Time
	if !deadline.IsZero() {
		tm := time.NewTimer(time.Until(deadline))
		defer tm.Stop()
		timeout = tm.C
	}
	if ch == nil {
		select {
		case got := <-c.in:
			ch = &got
		case <-timeout:
			return 0, os.ErrDeadlineExceeded
		case <-c.closed:
			return 0, net.ErrClosed
		}
	}
	if wait := time.Until(ch.due); wait > 0 {
		tm := time.NewTimer(wait)
		select {
		case <-tm.C:
		case <-timeout:
			tm.Stop()
			c.keep(ch)
			return 0, os.ErrDeadlineExceeded
		case <-c.closed:
			tm.Stop()
			return 0, net.ErrClosed
		}
	}
	n := copy(p, ch.data)
	if n < len(ch.data) {
		c.keep(&chunk{due: ch.due, data: ch.data[n:], err: ch.err})
		return n, nil
	}
	if ch.err != nil {
		if n > 0 {
			c.keep(&chunk{due: ch.due, err: ch.err})
			return n, nil
		}
		return 0, ch.err
	}
	return n, nil
}

func (c *delayConn) keep(ch *chunk) {
	c.mu.Lock()
	c.pending = ch
	c.mu.Unlock()
}

func (c *delayConn) SetDeadline(t time.Time) error {
	_ = c.SetReadDeadline(t)
	return c.SetWriteDeadline(t)
}

func (c *delayConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	c.deadline = t
	c.mu.Unlock()
	return nil
}

// SetWriteDeadline: writes are buffered and never block on the delay; a
// dead peer shows up as a write error of the send loop.
func (c *delayConn) SetWriteDeadline(time.Time) error { return nil }

// Close returns at once; the bytes written before it are delivered after
// their delay, then the underlying connection closes.
func (c *delayConn) Close() error {
	c.closeOnce.Do(func() { close(c.closed) })
	return nil
}

var _ net.Conn = (*delayConn)(nil)

// memberlistTransport is the transport type discovery's WrapTransport
// takes.
type memberlistTransport = memberlist.Transport
