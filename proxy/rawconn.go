package proxy

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// rawTCPConn is a *net.TCPConn whose Read and Write issue recv(2) and
// send(2) as raw syscalls, waiting for readiness through the netpoller
// (syscall.RawConn) exactly as net's own Read and Write do.
//
// Why: a socket is non-blocking, so these calls never sleep in the kernel,
// but the runtime's syscall bookkeeping (entersyscall/exitsyscall) marks
// the P as "in a syscall" for their duration. A loopback send runs the
// receiver's TCP stack inline, long enough that sysmon, seeing the only P
// (GOMAXPROCS=1) in a syscall, takes it back and hands it to another
// thread; sysmon then polls every 20 µs. Profiled under the proxy
// benchmark, that cost 10 % of the HTTP proxy's CPU and 17 % of the
// passthrough's, and the thread hand-offs added context switches to the
// latency tail. Raw calls keep the P running; a long-running goroutine is
// still preempted between calls as usual.
//
// Everything else (deadlines, Close, CloseWrite, addresses) is the
// embedded *net.TCPConn's. unwrapTCP gives code that needs the
// *net.TCPConn itself (splicing, TCP_INFO) the original.
type rawTCPConn struct {
	*net.TCPConn
	rc syscall.RawConn

	// Read and Write run concurrently; each has its own state and its
	// own callback, bound once so that a call allocates nothing.
	rp      []byte
	rn      int
	rerr    syscall.Errno
	readFn  func(uintptr) bool
	wp      []byte
	wn      int
	werr    syscall.Errno
	writeFn func(uintptr) bool

	// writeThenRead's state: it runs under Read's lock only.
	sending     bool
	wfull       bool
	writeReadFn func(uintptr) bool
	recvs       int // recv calls made by Read and writeThenRead; read by tests
}

// newRawTCPConn wraps c; any other net.Conn, or a TCP connection without
// a file descriptor, is returned as it is.
func newRawTCPConn(c net.Conn) net.Conn {
	tcp, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	rc, err := tcp.SyscallConn()
	if err != nil {
		return c
	}
	rc2 := &rawTCPConn{TCPConn: tcp, rc: rc}
	rc2.readFn = rc2.doRead
	rc2.writeFn = rc2.doWrite
	rc2.writeReadFn = rc2.doWriteRead
	return rc2
}

// unwrapTCP returns the *net.TCPConn under c, if any.
func unwrapTCP(c net.Conn) (*net.TCPConn, bool) {
	switch t := c.(type) {
	case *net.TCPConn:
		return t, true
	case *rawTCPConn:
		return t.TCPConn, true
	}
	return nil, false
}

func (c *rawTCPConn) doRead(fd uintptr) bool {
	for {
		c.recvs++
		n, _, e := unix.RawSyscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&c.rp[0])), uintptr(len(c.rp)), 0, 0, 0)
		switch e {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		}
		c.rn, c.rerr = int(n), e
		return true
	}
}

func (c *rawTCPConn) doWrite(fd uintptr) bool {
	for len(c.wp) > 0 {
		n, _, e := unix.RawSyscall6(unix.SYS_SENDTO, fd, uintptr(unsafe.Pointer(&c.wp[0])), uintptr(len(c.wp)), unix.MSG_NOSIGNAL, 0, 0)
		switch e {
		case 0:
			c.wp = c.wp[n:]
			c.wn += int(n)
		case unix.EINTR:
		case unix.EAGAIN:
			return false
		default:
			c.werr = e
			return true
		}
	}
	return true
}

// Read reads like (*net.TCPConn).Read: io.EOF at end of stream, a
// *net.OpError otherwise (os.ErrDeadlineExceeded and net.ErrClosed
// included).
func (c *rawTCPConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.rp, c.rn, c.rerr = p, 0, 0
	err := c.rc.Read(c.readFn)
	n, errno := c.rn, c.rerr
	c.rp = nil
	if err != nil {
		return 0, c.opError("read", unwrapRawError(err))
	}
	if errno != 0 {
		return 0, c.opError("read", os.NewSyscallError("recvfrom", errno))
	}
	if n == 0 {
		return 0, io.EOF
	}
	return n, nil
}

// Write writes all of p like (*net.TCPConn).Write, or fails.
func (c *rawTCPConn) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.wp, c.wn, c.werr = p, 0, 0
	err := c.rc.Write(c.writeFn)
	n, errno := c.wn, c.werr
	c.wp = nil
	if err != nil {
		return n, c.opError("write", unwrapRawError(err))
	}
	if errno != 0 {
		return n, c.opError("write", os.NewSyscallError("sendto", errno))
	}
	return n, nil
}

func (c *rawTCPConn) doWriteRead(fd uintptr) bool {
	if c.sending {
		if !c.doWrite(fd) {
			c.wfull = true // the send buffer is full: finish with Write
			return true
		}
		c.sending = false
		// Sent (or failed): wait for the answer before the first recv.
		return c.werr != 0
	}
	return c.doRead(fd)
}

// writeThenRead sends w, then waits for the peer's answer and reads it
// into r, like Write followed by Read but inside one RawConn.Read: the
// netpoller's read readiness is reset before the send, so the answer
// cannot arrive unnoticed, and no recv runs before it. A plain Read right
// after a Write finds the socket empty, pays a recv that returns EAGAIN,
// then parks; request/response exchanges paid that once per request.
//
// The reset also forgets readiness signalled before the call: data or a
// FIN that arrived earlier is noticed only with the next event on the
// socket (the answer, a reset, the read deadline). Callers check first:
// a pooled connection is peeked with socketEmpty just before its reuse.
//
// When the socket cannot take all of w without waiting, wn bytes went
// out, nothing was read, and full is true: the caller finishes with
// Write (and its write deadline) and Read. Only the read deadline
// applies here; the send never waits. Errors are shaped like Write's and
// Read's, io.EOF included.
func (c *rawTCPConn) writeThenRead(w, r []byte) (wn, rn int, full bool, err error) {
	if len(w) == 0 || len(r) == 0 {
		return 0, 0, false, errors.New("proxy: writeThenRead needs bytes to send and room to read")
	}
	c.wp, c.wn, c.werr, c.wfull, c.sending = w, 0, 0, false, true
	c.rp, c.rn, c.rerr = r, 0, 0
	rerr := c.rc.Read(c.writeReadFn)
	wn, rn, full = c.wn, c.rn, c.wfull
	sending, werr, rerrno := c.sending, c.werr, c.rerr
	c.wp, c.rp = nil, nil
	switch {
	case werr != 0:
		return wn, 0, false, c.opError("write", os.NewSyscallError("sendto", werr))
	case full:
		return wn, 0, true, nil
	case rerr != nil && sending:
		return wn, 0, false, c.opError("write", unwrapRawError(rerr))
	case rerr != nil:
		return wn, 0, false, c.opError("read", unwrapRawError(rerr))
	case rerrno != 0:
		return wn, 0, false, c.opError("read", os.NewSyscallError("recvfrom", rerrno))
	case rn == 0:
		return wn, 0, false, io.EOF
	}
	return wn, rn, false, nil
}

// unwrapRawError takes the cause out of the *net.OpError that
// RawConn.Read/Write return (Op "raw-read"), so that the error is shaped
// like net's own read and write errors.
func unwrapRawError(err error) error {
	if oe, ok := err.(*net.OpError); ok && oe.Err != nil {
		return oe.Err
	}
	return err
}

func (c *rawTCPConn) opError(op string, err error) error {
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}

// socketEmpty peeks at a non-blocking socket: true when it has neither
// data nor end of stream to read (recv would return EAGAIN). A raw
// syscall for the reason given on rawTCPConn: pooled backend connections
// are checked this way before every reuse.
func socketEmpty(fd uintptr) bool {
	var b [1]byte
	_, _, e := unix.RawSyscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), 1, unix.MSG_PEEK|unix.MSG_DONTWAIT, 0, 0)
	return e == unix.EAGAIN
}
