//go:build !linux || !cgo

package tunnelloop

import "net"

// Group is unavailable in this build: New returns ErrUnsupported.
type Group struct{}

// Tunnel is unavailable in this build.
type Tunnel struct{}

// New returns ErrUnsupported: the loop needs Linux and cgo.
func New(cfg Config) (*Group, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return nil, ErrUnsupported
}

// Add returns ErrUnsupported.
func (g *Group) Add(a, b *net.TCPConn) (*Tunnel, error) {
	return nil, ErrUnsupported
}

// Moved is 0.
func (g *Group) Moved() uint64 { return 0 }

// Close does nothing.
func (g *Group) Close() error { return nil }

// Done is never closed.
func (t *Tunnel) Done() <-chan struct{} { return nil }

// Result is empty.
func (t *Tunnel) Result() Result { return Result{} }

// Kill does nothing.
func (t *Tunnel) Kill() {}
