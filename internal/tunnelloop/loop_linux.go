//go:build linux && cgo

package tunnelloop

/*
#cgo CFLAGS: -O2 -Wall
#include "loop.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// Group is a set of event loops; Add spreads tunnels over them.
type Group struct {
	loops  []*loop
	next   atomic.Uint32
	ids    atomic.Uint64
	closed atomic.Bool
	once   sync.Once
	// freeMu orders Moved's reads of the C loops before their release
	// by Close; final holds their last count afterwards.
	freeMu sync.RWMutex
	freed  bool
	final  uint64
}

// loop is one C loop thread and the goroutine that reads its records.
type loop struct {
	c      *C.tl_loop
	notify *os.File // a duplicate of the loop's record eventfd, in the netpoller
	recs   []C.tl_record

	mu      sync.Mutex
	tunnels map[uint64]*Tunnel // not yet ended
	stopped bool               // TL_REC_STOPPED seen: the thread is gone
	done    chan struct{}      // closed when dispatch returns
}

// errLost is the Result.Err of a tunnel whose loop stopped without
// reporting it (a bug in the loop, never expected).
var errLost = errors.New("tunnelloop: loop stopped without reporting the tunnel")

// Tunnel is one relayed pair of sockets.
type Tunnel struct {
	l    *loop
	h    *C.tl_tunnel // nil once ended (under l.mu)
	res  Result
	done chan struct{}
}

// New starts cfg.Loops loop threads.
func New(cfg Config) (*Group, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	g := &Group{}
	for range cfg.Loops {
		l, err := newLoop(cfg)
		if err != nil {
			_ = g.Close()
			return nil, err
		}
		g.loops = append(g.loops, l)
	}
	return g, nil
}

func newLoop(cfg Config) (*loop, error) {
	c, err := C.tl_loop_new(C.int64_t(cfg.IdleTimeout.Milliseconds()), C.uint32_t(cfg.BufferSize), C.uint32_t(cfg.PipeSize))
	if c == nil {
		return nil, fmt.Errorf("tunnelloop: start loop: %w", err)
	}
	// A duplicate, so that the os.File and the loop each close their own.
	nfd, err := unix.FcntlInt(uintptr(C.tl_loop_notify_fd(c)), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		C.tl_loop_free(c)
		return nil, fmt.Errorf("tunnelloop: duplicate eventfd: %w", err)
	}
	l := &loop{
		c:       c,
		notify:  os.NewFile(uintptr(nfd), "tunnelloop-records"), // non-blocking: in the netpoller
		recs:    make([]C.tl_record, 128),
		tunnels: make(map[uint64]*Tunnel),
		done:    make(chan struct{}),
	}
	go l.dispatch()
	return l, nil
}

// Add hands a and b to a loop, which relays them until both directions
// end, one fails, the tunnel is idle, or Kill. On success a and b are
// closed on the Go side (the loop holds its own descriptors) and must not
// be used. On failure a and b are untouched.
func (g *Group) Add(a, b *net.TCPConn) (*Tunnel, error) {
	if g.closed.Load() {
		return nil, ErrClosed
	}
	fa, err := dupConn(a)
	if err != nil {
		return nil, err
	}
	fb, err := dupConn(b)
	if err != nil {
		_ = unix.Close(fa)
		return nil, err
	}
	l := g.loops[int(g.next.Add(1))%len(g.loops)]
	id := g.ids.Add(1)
	t := &Tunnel{l: l, done: make(chan struct{})}

	// Under l.mu until the Go descriptors are closed: the loop's records
	// for t are dispatched only after t is registered, and t is released
	// only after the caller's descriptors are gone.
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stopped {
		_ = unix.Close(fa)
		_ = unix.Close(fb)
		return nil, ErrClosed
	}
	var h *C.tl_tunnel
	if rc := C.tl_add(l.c, C.int(fa), C.int(fb), C.uint64_t(id), &h); rc != 0 {
		_ = unix.Close(fa)
		_ = unix.Close(fb)
		if syscall.Errno(rc) == unix.ESHUTDOWN {
			return nil, ErrClosed
		}
		return nil, fmt.Errorf("tunnelloop: add: %w", syscall.Errno(rc))
	}
	t.h = h
	l.tunnels[id] = t
	_ = a.Close()
	_ = b.Close()
	return t, nil
}

// Moved is the number of bytes the loops delivered so far, every tunnel
// and direction together, those of running tunnels included (for a byte
// counter; each tunnel's own totals are in its Result).
func (g *Group) Moved() uint64 {
	g.freeMu.RLock()
	defer g.freeMu.RUnlock()
	if g.freed {
		return g.final
	}
	return g.moved()
}

func (g *Group) moved() uint64 {
	var n uint64
	for _, l := range g.loops {
		n += uint64(C.tl_loop_moved(l.c))
	}
	return n
}

// dupConn duplicates c's descriptor (close-on-exec, and non-blocking like
// every socket of the Go runtime: the flag belongs to the shared open
// file).
func dupConn(c *net.TCPConn) (int, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return -1, fmt.Errorf("tunnelloop: %w", err)
	}
	fd := -1
	var derr error
	if err := rc.Control(func(s uintptr) {
		fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return -1, fmt.Errorf("tunnelloop: %w", err)
	}
	if derr != nil {
		return -1, fmt.Errorf("tunnelloop: duplicate socket: %w", derr)
	}
	return fd, nil
}

// Close ends every tunnel (Killed), waits for their results to be
// delivered and stops the loops. Add fails with ErrClosed afterwards.
func (g *Group) Close() error {
	g.once.Do(func() {
		g.closed.Store(true)
		for _, l := range g.loops {
			C.tl_loop_stop(l.c)
		}
		for _, l := range g.loops {
			<-l.done
		}
		g.freeMu.Lock()
		defer g.freeMu.Unlock()
		g.final = g.moved() // the threads are gone: final
		g.freed = true
		for _, l := range g.loops {
			C.tl_loop_free(l.c) // joins the thread
			_ = l.notify.Close()
		}
	})
	return nil
}

// dispatch delivers the loop's records until the loop stops.
func (l *loop) dispatch() {
	defer close(l.done)
	var b [8]byte
	for {
		// The eventfd is read before taking records: a record pushed
		// after the last take finds the queue empty and signals again.
		if _, err := l.notify.Read(b[:]); err != nil {
			// Only a closed file fails, and it is closed after this
			// goroutine ends: unreachable, but never spin.
			return
		}
		for {
			n := int(C.tl_take(l.c, &l.recs[0], C.int(len(l.recs))))
			for i := range n {
				if l.handle(&l.recs[i]) {
					return
				}
			}
			if n < len(l.recs) {
				break
			}
		}
	}
}

// handle applies one record; true when the loop stopped.
func (l *loop) handle(r *C.tl_record) bool {
	switch r.kind {
	case C.TL_REC_DONE:
		l.mu.Lock()
		t := l.tunnels[uint64(r.cookie)]
		delete(l.tunnels, uint64(r.cookie))
		if t != nil {
			// Queued after any Kill of t (same queue, same lock).
			C.tl_release(l.c, t.h)
			t.h = nil
		}
		l.mu.Unlock()
		if t == nil {
			return false
		}
		t.res = Result{AToB: int64(r.a[0]), BToA: int64(r.a[1]), Reason: Reason(r.reason)}
		if r.err != 0 {
			t.res.Err = os.NewSyscallError("tunnel", syscall.Errno(r.err))
		}
		close(t.done)
	case C.TL_REC_STOPPED:
		// The loop ends and reports every tunnel before it stops. Should
		// one be missing, it is reported here rather than leaving its
		// caller waiting forever.
		l.mu.Lock()
		l.stopped = true
		left := l.tunnels
		l.tunnels = nil
		l.mu.Unlock()
		for _, t := range left {
			t.res = Result{Reason: Killed, Err: errLost}
			close(t.done)
		}
		return true
	}
	return false
}

// Done is closed when the tunnel ended and Result is set.
func (t *Tunnel) Done() <-chan struct{} { return t.done }

// Result is what the tunnel did; valid once Done is closed.
func (t *Tunnel) Result() Result { return t.res }

// Kill ends the tunnel (Killed) unless it already ended; its sockets are
// closed, not reset. Done is closed once the loop has done so.
func (t *Tunnel) Kill() {
	t.l.mu.Lock()
	defer t.l.mu.Unlock()
	if t.h != nil && !t.l.stopped {
		C.tl_kill(t.l.c, t.h)
	}
}
