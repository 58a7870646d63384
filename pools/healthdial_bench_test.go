//go:build linux

package pools

import (
	"context"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/singularity-ng/singularity-edge/storage"
)

// BenchmarkTCPCheck is the CPU of one TCP health check (the checker's dial
// and close) beside its floor, a blocking socket, connect and close with
// no poller: the difference is what Go's dial adds around the kernel
// (registering with the poller, parking until the connect completes, the
// deadline), which a non-blocking connect with a timeout and cancellation
// needs in any form. Measured in this package's history: a dial through
// os.NewFile and RawConn cost the same as net.Dialer, refused and
// accepted. cpu-ns/op is the process's user+system CPU per check
// (accepted: the listener's accept and close included).
func BenchmarkTCPCheck(b *testing.B) {
	for _, accepted := range []bool{false, true} {
		name := "refused"
		if accepted {
			name = "accepted"
		}
		addr := func(b *testing.B) string {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			if !accepted {
				ln.Close()
				return ln.Addr().String()
			}
			go acceptAndClose(ln)
			b.Cleanup(func() { ln.Close() })
			return ln.Addr().String()
		}
		b.Run(name+"/checker", func(b *testing.B) {
			ta, err := net.ResolveTCPAddr("tcp", addr(b))
			if err != nil {
				b.Fatal(err)
			}
			p := NewTable([]storage.Pool{{Name: "p", HealthCheck: storage.HealthCheck{Timeout: time.Second}}},
				[]storage.Backend{{ID: "b", PoolName: "p", Host: ta.IP.String(), Port: ta.Port}}, nil, TableOptions{}).Pool("p")
			c := newChecker("p", p.Backend("b"), *p.health)
			measureCPU(b, func() error { return c.check(context.Background()) }, accepted)
		})
		b.Run(name+"/floor", func(b *testing.B) {
			ta, err := net.ResolveTCPAddr("tcp", addr(b))
			if err != nil {
				b.Fatal(err)
			}
			sa := &syscall.SockaddrInet4{Port: ta.Port}
			copy(sa.Addr[:], ta.IP.To4())
			measureCPU(b, func() error {
				fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
				if err != nil {
					return err
				}
				err = syscall.Connect(fd, sa)
				_ = syscall.Close(fd)
				return err
			}, accepted)
		})
	}
}

func measureCPU(b *testing.B, check func() error, wantOK bool) {
	var ru0, ru1 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	for b.Loop() {
		if err := check(); (err == nil) != wantOK {
			b.Fatalf("check: %v", err)
		}
	}
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	cpu := ru1.Utime.Nano() + ru1.Stime.Nano() - ru0.Utime.Nano() - ru0.Stime.Nano()
	b.ReportMetric(float64(cpu)/float64(b.N), "cpu-ns/op")
}
