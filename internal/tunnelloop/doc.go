// Package tunnelloop relays established TCP tunnels (two connected
// sockets, bytes copied both ways until both ends closed) on event-loop
// threads of its own, outside the Go scheduler.
//
// Why: a goroutine per direction costs a netpoller wake-up, a goroutine
// switch and the runtime's idle bookkeeping for every record that crosses
// the tunnel. For SNI passthrough of request/response traffic that was a
// fifth of the proxy's CPU per request beside nginx's stream module, whose
// single epoll loop serves every ready socket of one wake-up with the same
// recv and send calls. A loop written in Go still needs a P to run: with
// GOMAXPROCS=1 a goroutine blocked in epoll_wait holds the only P until
// sysmon takes it back, and every return from the wait competes with the
// rest of the program for it. So the loop is a small C thread (loop.c)
// that never runs Go code; Go hands it sockets and reads back what
// happened to them (bytes moved, why a tunnel ended).
//
// What a loop does per tunnel: edge-triggered epoll on both sockets; recv
// into a buffer and send it on, parking a direction after a short read as
// nginx does (a FIN or error that came with the data is flagged by the
// event); splice(2) through a pipe once a read fills the buffer (bulk);
// one buffer or pipe per direction at most, and a full send buffer stops
// reading the other side (backpressure); a FIN is passed on with
// shutdown(SHUT_WR) while the other direction keeps flowing; a reset or
// failed send resets the other side too; a tunnel that received nothing
// either way for IdleTimeout is closed. Bytes are counted per tunnel
// (its Result) and per loop (Group.Moved, read at any time): nothing
// wakes Go while a tunnel runs.
//
// Limits: Linux with cgo only (New returns ErrUnsupported elsewhere; the
// caller keeps its goroutine relay). The sockets are plain TCP: nothing
// is buffered on the Go side when they are handed over, and the caller
// must not use the connections afterwards.
package tunnelloop

import (
	"errors"
	"fmt"
	"time"
)

// Config configures a Group.
type Config struct {
	// Loops is the number of event-loop threads; tunnels are spread over
	// them in turn.
	Loops int
	// IdleTimeout closes a tunnel that received nothing either way for
	// this long.
	IdleTimeout time.Duration
	// BufferSize is a direction's read buffer; a read that fills it
	// switches the direction to splice(2).
	BufferSize int
	// PipeSize is the kernel pipe a direction splices through.
	PipeSize int
}

// DefaultConfig returns one loop, the proxy's hour of idleness, 32 KiB
// buffers and 256 KiB pipes.
func DefaultConfig() Config {
	return Config{
		Loops:       1,
		IdleTimeout: time.Hour,
		BufferSize:  32 << 10,
		PipeSize:    256 << 10,
	}
}

func (c Config) validate() error {
	var errs []error
	if c.Loops < 1 || c.Loops > 1024 {
		errs = append(errs, fmt.Errorf("tunnelloop: Loops must be between 1 and 1024, got %d", c.Loops))
	}
	if c.IdleTimeout < time.Millisecond {
		errs = append(errs, fmt.Errorf("tunnelloop: IdleTimeout must be at least 1ms, got %v", c.IdleTimeout))
	}
	if c.BufferSize < 1024 || c.BufferSize > 16<<20 {
		errs = append(errs, fmt.Errorf("tunnelloop: BufferSize must be between 1 KiB and 16 MiB, got %d", c.BufferSize))
	}
	if c.PipeSize < 4096 || c.PipeSize > 16<<20 {
		errs = append(errs, fmt.Errorf("tunnelloop: PipeSize must be between 4 KiB and 16 MiB, got %d", c.PipeSize))
	}
	return errors.Join(errs...)
}

var (
	// ErrUnsupported: no event loop on this platform or build (not Linux,
	// or cgo off).
	ErrUnsupported = errors.New("tunnelloop: not supported on this platform or build")
	// ErrClosed: the Group was closed.
	ErrClosed = errors.New("tunnelloop: closed")
)

// Reason says why a tunnel ended.
type Reason int

const (
	// EOF: both directions ended with a FIN, each passed on.
	EOF Reason = iota + 1
	// Reset: a socket failed (reset by its peer, broken pipe); the other
	// socket was reset too. Result.Err has the cause.
	Reset
	// Idle: nothing was received either way for IdleTimeout.
	Idle
	// Killed: Tunnel.Kill or Group.Close.
	Killed
)

func (r Reason) String() string {
	switch r {
	case EOF:
		return "eof"
	case Reset:
		return "reset"
	case Idle:
		return "idle"
	case Killed:
		return "killed"
	}
	return fmt.Sprintf("Reason(%d)", int(r))
}

// Result is what a tunnel did.
type Result struct {
	// AToB and BToA are the bytes delivered each way (a and b as given
	// to Add).
	AToB, BToA int64
	Reason     Reason
	// Err is the socket error of a Reset.
	Err error
}
