// Package nettest holds socket helpers for the tests of packages that
// relay bytes between connections: connected loopback TCP pairs, a TLS
// echo backend, and byte patterns in which a lost, repeated or reordered
// chunk shows.
package nettest

import (
	"crypto/tls"
	"io"
	"math/rand/v2"
	"net"
	"testing"
	"time"
)

// TCPPair returns the two ends of a loopback TCP connection, closed when
// the test ends.
func TCPPair(t testing.TB) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() { c, err := ln.Accept(); ch <- res{c, err} }()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	var r res
	select {
	case r = <-ch:
	case <-time.After(10 * time.Second):
		t.Fatal("accept timed out")
	}
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() { a.Close(); r.c.Close() })
	return a.(*net.TCPConn), r.c.(*net.TCPConn)
}

// Pattern is n pseudo-random bytes from seed: they differ from any
// shifted copy of themselves, so a lost, repeated or reordered chunk
// shows in a comparison.
func Pattern(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// SendSized writes data to c in pieces of the given sizes, cycling
// through them, from a goroutine, and reports the first write error (nil
// once everything is written).
func SendSized(c net.Conn, data []byte, sizes []int) <-chan error {
	errc := make(chan error, 1)
	go func() {
		for i := 0; len(data) > 0; i++ {
			n := min(sizes[i%len(sizes)], len(data))
			if _, err := c.Write(data[:n]); err != nil {
				errc <- err
				return
			}
			data = data[n:]
		}
		errc <- nil
	}()
	return errc
}

// ReadN reads exactly n bytes from c, giving up after 20 s.
func ReadN(c net.Conn, n int) ([]byte, error) {
	_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
	got := make([]byte, n)
	_, err := io.ReadFull(c, got)
	return got, err
}

// TLSEcho serves TLS with cert on a loopback port until the test ends and
// returns its address. Each connection is echoed until the client closes
// its side (close_notify or EOF), then gets trailer, which a client that
// half-closed must still receive, and is closed.
func TLSEcho(t testing.TB, cert tls.Certificate, trailer string) *net.TCPAddr {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
				if trailer != "" {
					_, _ = c.Write([]byte(trailer))
				}
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr)
}
