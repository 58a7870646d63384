package proxy

import (
	"errors"
	"io"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// tunnel copies client->backend and backend->client until both directions
// end, one fails, or nothing moved either way for TunnelIdleTimeout. It
// returns the bytes copied each way; counter, when set, also counts them as
// they move (passthrough connections live long).
//
// Passthrough connections come here only when no event loop takes them
// (Config.TunnelEventLoops, loopTunnel); upgraded connections always do.
// Between two TCP connections (passthrough, plain-HTTP upgrades) the copy
// is splice(2) through a pipe per direction (splicer): the bytes never
// enter user space, no buffer is held while a direction waits, and each
// readiness event costs one wake-up and non-blocking raw syscalls.
// Idleness is read from the kernel (TCP_INFO's time since data last
// arrived on each socket) when a window's deadline passes, so no per-read
// deadline is needed. Other pairs (TLS upgrades) copy through a pooled
// buffer with a deadline renewed as bytes move.
func (s *Server) tunnel(client, backend net.Conn, counter byteCounter) (toBackend, toClient int64) {
	var active [2]atomic.Int64 // last time each direction moved bytes
	now := time.Now().UnixNano()
	active[0].Store(now)
	active[1].Store(now)
	done := make(chan int64, 1)
	ctcp, cok := unwrapTCP(client)
	btcp, bok := unwrapTCP(backend)
	if cok && bok {
		if spliced, ok := s.spliceTunnel(ctcp, btcp, counter); ok {
			return spliced[0], spliced[1]
		}
	}
	go func() { done <- s.pipe(backend, client, &active[0], &active[1], counter) }()
	toClient = s.pipe(client, backend, &active[1], &active[0], counter)
	toBackend = <-done
	return toBackend, toClient
}

// spliceTunnel relays both directions between two TCP connections (see
// relay). ok is false, with nothing read from either side, when the
// connections expose no file descriptor; the caller then copies through
// buffers.
func (s *Server) spliceTunnel(client, backend *net.TCPConn, counter byteCounter) (moved [2]int64, ok bool) {
	up, err := s.newRelay(backend, client)
	if err != nil {
		return moved, false
	}
	down, err := s.newRelay(client, backend)
	if err != nil {
		return moved, false
	}
	up.counter, down.counter = counter, counter
	done := make(chan int64, 1)
	go func() { done <- up.run(backend, client, backend) }()
	moved[1] = down.run(client, backend, client)
	moved[0] = <-done
	return moved, true
}

// pipe copies src to dst. The read deadline is renewed as bytes move;
// when it passes and the other direction was quiet as long, the tunnel is
// idle and both connections are closed. On EOF the write side of dst is
// closed so that the peer sees the half-close, and the other direction
// goes on.
func (s *Server) pipe(dst, src net.Conn, mine, other *atomic.Int64, counter byteCounter) int64 {
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

// splicePipeSize is the kernel pipe a direction in bulk mode moves its
// bytes through: one splice(2) in and one out move up to this much.
const splicePipeSize = 256 << 10

// resetRecheck is the longest a relay direction parks without reading its
// socket again (see run).
const resetRecheck = 30 * time.Second

// counterFlush is how many relayed bytes accumulate before the byte
// counter is updated (and always when a direction ends).
const counterFlush = 1 << 20

// relay moves one direction of a TCP-to-TCP tunnel. It is built for the
// two shapes of passthrough traffic, measured against nginx's stream
// proxy on one core:
//
//   - Request/response traffic (records of a few KiB): recv(2) into a
//     pooled buffer and send(2) it on, then park as soon as TCP_INQ says
//     the socket holds nothing more (no data, no FIN). nginx parks after
//     a short read the same way, knowing a FIN is pending from
//     EPOLLRDHUP, which the netpoller does not report. Without TCP_INQ,
//     recv until EAGAIN: one syscall more per record, a third of the
//     syscalls of a request/response exchange.
//   - Bulk (a recv filled the buffer): splice(2) through a pipe, so the
//     bytes never enter user space, until a splice moves less than a
//     buffer's worth.
//
// The syscalls are raw (no entersyscall/exitsyscall): every fd is
// non-blocking, so a call never sleeps in the kernel. With the runtime's
// bookkeeping, the scheduler's monitor found the single P (GOMAXPROCS=1
// in the harness) "in a syscall" during the loopback sends, woke every
// 20 µs to hand it to another thread, and cost about a fifth of the
// passthrough's CPU. Waiting stays with the netpoller through
// syscall.RawConn, so deadlines and Close still wake a parked direction,
// and the fds cannot be closed (and reused) while a callback runs.
//
// The whole direction runs inside one RawConn.Read call on src, with the
// write to dst nested in it, so a wake-up costs one RawConn call, not one
// per syscall.
type relay struct {
	s           *Server
	src, dst    syscall.RawConn
	buf         *[]byte // read mode's buffer, held only while awake
	out         []byte  // bytes still to send in read mode
	pr, pw      int     // bulk mode's pipe (-1 until bulk traffic is seen)
	pending     int     // bytes in the pipe
	bulk        bool
	eof         bool  // src ended
	errno       error // a syscall's failure
	writeErr    error // dst's RawConn failure (closed, deadline)
	onReadable  func(uintptr) bool
	sendOut     func(uintptr) bool
	drainPipe   func(uintptr) bool
	moved, owed int64 // bytes delivered to dst; not yet counted
	counter     byteCounter

	// recvmsg(2)'s arguments, bound once. With TCP_INQ on src the kernel
	// appends how many bytes are still queued after each recv, and counts
	// a received FIN as one, so a short recv that leaves the socket empty
	// can park without the recv that would only say EAGAIN (see
	// readable). inq is false when the option could not be set.
	msg     unix.Msghdr
	iov     unix.Iovec
	cmsg    [inqCmsgSpace]byte
	inq     bool
	recheck time.Duration // resetRecheck; shorter in tests
	recvs   int           // recv calls made; read by tests
}

// inqCmsgSpace holds one TCP_CM_INQ control message (an int32).
const inqCmsgSpace = 24

// enableInq turns TCP_INQ on for fd; false when the kernel refuses it
// (before Linux 4.18), and the relay then reads until EAGAIN.
func enableInq(rc syscall.RawConn) bool {
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_TCP, unix.TCP_INQ, 1)
	}); err != nil {
		return false
	}
	return serr == nil
}

func (s *Server) newRelay(dst, src *net.TCPConn) (*relay, error) {
	srcRaw, err := src.SyscallConn()
	if err != nil {
		return nil, err
	}
	dstRaw, err := dst.SyscallConn()
	if err != nil {
		return nil, err
	}
	r := &relay{s: s, src: srcRaw, dst: dstRaw, pr: -1, pw: -1, recheck: resetRecheck}
	r.inq = enableInq(srcRaw) && unix.CmsgSpace(4) <= inqCmsgSpace
	r.msg.Iov = &r.iov
	r.msg.SetIovlen(1)
	// Bound once: a method value made per call would allocate per call.
	r.onReadable = r.readable
	r.sendOut = r.send
	r.drainPipe = r.drain
	return r, nil
}

func (r *relay) close() {
	r.releaseBuf()
	if r.pr >= 0 {
		_ = unix.Close(r.pr)
		_ = unix.Close(r.pw)
	}
}

func (r *relay) releaseBuf() {
	if r.buf != nil {
		r.s.putBodyBuf(r.buf)
		r.buf = nil
	}
}

// startBulk makes the pipe; false (stay in read mode) when the process is
// out of file descriptors.
func (r *relay) startBulk() bool {
	if r.pr < 0 {
		var p [2]int
		if unix.Pipe2(p[:], unix.O_NONBLOCK|unix.O_CLOEXEC) != nil {
			return false
		}
		// A larger pipe halves the syscalls of bulk transfers; the
		// default (64 KiB) still works when the limit refuses it.
		_, _ = unix.FcntlInt(uintptr(p[1]), unix.F_SETPIPE_SZ, splicePipeSize)
		r.pr, r.pw = p[0], p[1]
	}
	r.bulk = true
	r.releaseBuf()
	return true
}

// recv reads from src into p. queued is how many bytes (a FIN counts as
// one) the socket still held after the read, or -1 when unknown (no
// TCP_INQ).
func (r *relay) recv(fd uintptr, p []byte) (n, queued int, errno syscall.Errno) {
	r.recvs++
	if !r.inq {
		m, _, e := unix.RawSyscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)), 0, 0, 0)
		return int(m), -1, e
	}
	r.iov.Base = &p[0]
	r.iov.SetLen(len(p))
	r.msg.Control = &r.cmsg[0]
	r.msg.SetControllen(len(r.cmsg))
	m, _, e := unix.RawSyscall(unix.SYS_RECVMSG, fd, uintptr(unsafe.Pointer(&r.msg)), 0)
	r.iov.Base = nil // the pooled buffer goes back to the pool
	if e != 0 {
		return 0, -1, e
	}
	return int(m), r.queued(), 0
}

// queued reads the TCP_CM_INQ control message of the last recvmsg; -1
// when there is none.
func (r *relay) queued() int {
	hdr := unix.CmsgLen(0)
	if uint64(r.msg.Controllen) < uint64(unix.CmsgLen(4)) {
		return -1
	}
	h := (*unix.Cmsghdr)(unsafe.Pointer(&r.cmsg[0]))
	if h.Level != unix.SOL_TCP || h.Type != unix.TCP_CM_INQ || uint64(h.Len) < uint64(unix.CmsgLen(4)) {
		return -1
	}
	return int(*(*int32)(unsafe.Pointer(&r.cmsg[hdr])))
}

func rawSend(fd uintptr, p []byte) (int, syscall.Errno) {
	n, _, e := unix.RawSyscall6(unix.SYS_SENDTO, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)), unix.MSG_NOSIGNAL, 0, 0)
	return int(n), e
}

func rawSplice(in, out uintptr, n int) (int, syscall.Errno) {
	m, _, e := unix.RawSyscall6(unix.SYS_SPLICE, in, 0, out, 0, uintptr(n), unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
	return int(m), e
}

// readable runs (under src's RawConn.Read) whenever src may have data; it
// returns false to wait for the next arrival and true to end the
// direction (eof, errno or writeErr says why).
func (r *relay) readable(fd uintptr) bool {
	for {
		if r.bulk {
			n, e := rawSplice(fd, uintptr(r.pw), splicePipeSize)
			switch {
			case e == unix.EINTR:
				continue
			case e == unix.EAGAIN:
				return false
			case e != 0:
				r.errno = e
				return true
			case n == 0:
				r.eof = true
				return true
			}
			r.pending = n
			if !r.deliver(r.drainPipe) {
				return true
			}
			if n < bodyBufSize {
				r.bulk = false // small again: recv's short read is cheaper
			}
			continue
		}
		if r.buf == nil {
			r.buf = r.s.getBodyBuf()
		}
		buf := *r.buf
		n, queued, e := r.recv(fd, buf)
		switch {
		case e == unix.EINTR:
			continue
		case e == unix.EAGAIN:
			r.releaseBuf()
			return false
		case e != 0:
			r.errno = e
			return true
		case n == 0:
			r.eof = true
			return true
		}
		r.out = buf[:n]
		if !r.deliver(r.sendOut) {
			return true
		}
		if n == len(buf) {
			r.startBulk()
			continue
		}
		// A short recv does not prove the socket drained: a FIN that
		// arrived with the data is reported only by the next recv, and
		// its edge-triggered event is already consumed, so parking
		// could wait forever. TCP_INQ says so (a pending FIN counts as
		// a queued byte); anything arriving after this recv raises a
		// new event. Without it, ask again until EAGAIN.
		if queued == 0 {
			r.releaseBuf()
			return false
		}
	}
}

// deliver writes what src gave to dst (parking while dst is full); false
// when the direction must end.
func (r *relay) deliver(f func(uintptr) bool) bool {
	if err := r.dst.Write(f); err != nil {
		r.writeErr = err
		return false
	}
	if r.errno != nil {
		return false
	}
	if r.owed >= counterFlush {
		r.flush()
	}
	return true
}

func (r *relay) send(fd uintptr) bool {
	for len(r.out) > 0 {
		n, e := rawSend(fd, r.out)
		switch e {
		case 0:
			r.out = r.out[n:]
			r.moved += int64(n)
			r.owed += int64(n)
		case unix.EINTR:
		case unix.EAGAIN:
			return false
		default:
			r.errno = e
			return true
		}
	}
	return true
}

func (r *relay) drain(fd uintptr) bool {
	for r.pending > 0 {
		n, e := rawSplice(uintptr(r.pr), fd, r.pending)
		switch e {
		case 0:
			r.pending -= n
			r.moved += int64(n)
			r.owed += int64(n)
		case unix.EINTR:
		case unix.EAGAIN:
			return false
		default:
			r.errno = e
			return true
		}
	}
	return true
}

func (r *relay) flush() {
	if r.counter != nil && r.owed > 0 {
		r.counter.Add(float64(r.owed))
	}
	r.owed = 0
}

// run relays src to dst until src ends, either side fails, or the tunnel
// is idle. other is the socket the opposite direction reads from: the
// tunnel is idle only when neither received data for TunnelIdleTimeout.
func (r *relay) run(dst, src, other *net.TCPConn) int64 {
	defer r.close()
	defer r.flush()
	idle := r.s.cfg.TunnelIdleTimeout
	// window bounds how long a direction sleeps before it looks at the
	// socket again: a reset that came in the same readiness event as the
	// last data is not reported by TCP_INQ (only a FIN is), so with the
	// recv-until-EAGAIN skipped it is found by the recv that follows each
	// window.
	window := func(d time.Duration) time.Duration {
		if r.inq {
			return min(d, r.recheck)
		}
		return d
	}
	if src.SetReadDeadline(time.Now().Add(window(idle))) != nil {
		closeBoth(dst, src)
		return 0
	}
	for {
		err := r.src.Read(r.onReadable)
		switch {
		case err == nil && r.eof && r.errno == nil && r.writeErr == nil:
			closeWrite(dst)
			return r.moved
		case errors.Is(err, os.ErrDeadlineExceeded):
			// The window passed: idle only if neither socket received
			// anything for the whole timeout (TCP_INFO), so that moving
			// bytes never pays for a deadline reset.
			r.releaseBuf()
			q1, ok1 := sinceDataReceived(src)
			q2, ok2 := sinceDataReceived(other)
			if ok1 && ok2 {
				if quiet := min(q1, q2); quiet < idle {
					if src.SetReadDeadline(time.Now().Add(window(max(idle-quiet, time.Second)))) == nil {
						continue
					}
				}
			}
		}
		closeBoth(dst, src)
		return r.moved
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
