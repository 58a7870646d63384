package pools

import (
	"errors"
	"fmt"
	"net"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/singularity-ng/singularity-edge/storage"
)

// scaleRows returns pools x perPool backends at distinct addresses, as the
// scale benchmark stores them.
func scaleRows(pools, perPool int) ([]storage.Pool, []storage.Backend) {
	ps := make([]storage.Pool, 0, pools)
	bs := make([]storage.Backend, 0, pools*perPool)
	for p := range pools {
		name := fmt.Sprintf("pool-%04d", p)
		ps = append(ps, storage.Pool{Name: name, Algorithm: AlgorithmRoundRobin, Hosts: []string{name + ".test"},
			HealthCheckInterval: 10 * time.Second, HealthCheck: storage.HealthCheck{Type: HealthCheckTCP, Timeout: time.Second}})
		for b := range perPool {
			k := p*perPool + b
			bs = append(bs, storage.Backend{ID: fmt.Sprintf("p%04d-b%04d", p, b), PoolName: name,
				Host: fmt.Sprintf("127.%d.%d.%d", 1+k>>16, (k>>8)&0xff, k&0xff), Port: 9, Scheme: "http", Weight: 1, Region: "local"})
		}
	}
	return ps, bs
}

// liveBytesPerBackend builds a table of pools x perPool backends with live
// states, health targets and id index, as a Manager holds them, and returns the
// heap bytes it keeps per backend.
func liveBytesPerBackend(pools, perPool int) float64 {
	ps, bs := scaleRows(pools, perPool)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	t := buildTable(ps, bs, TableOptions{CookieKey: []byte("k")}, nil, func(_, addr string, sp *storage.Pool) *backendState {
		return newBackendState(addr, sp.HoldNewBackends)
	})
	h := newHealthScheduler(HealthSchedule{}, nil, nil)
	h.reconcile(t, nil, nil, true, time.Now())
	x := newBackendIndex()
	x.update(EmptyTable(), t, nil)
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(t)
	runtime.KeepAlive(h)
	runtime.KeepAlive(&x)
	runtime.KeepAlive(bs) // the rows are the store's: counted on neither side
	return float64(after.HeapAlloc-before.HeapAlloc) / float64(pools*perPool)
}

// The routing table, live state and health targets of a backend stay
// within a bound: a map, goroutine, timer or string per backend added
// back would break it (the figure was ~1,100 bytes before they were made
// compact, ~590 after, ~540 with the health targets indexed by hash and
// the state's 4-byte fields packed, ~565 with the Manager's id index).
func TestTableBytesPerBackend(t *testing.T) {
	if testing.Short() {
		t.Skip("builds 100,000 backends")
	}
	const bound = 600
	if got := liveBytesPerBackend(100, 1000); got > bound {
		t.Fatalf("%.0f bytes per backend, want at most %d", got, bound)
	}
}

// BenchmarkTableBuild reports the time and the retained bytes per backend
// of a table of 100 pools x 1,000 backends with its health targets.
func BenchmarkTableBuild(b *testing.B) {
	ps, bs := scaleRows(100, 1000)
	b.ReportAllocs()
	for b.Loop() {
		t := buildTable(ps, bs, TableOptions{CookieKey: []byte("k")}, nil, func(_, addr string, sp *storage.Pool) *backendState {
			return newBackendState(addr, sp.HoldNewBackends)
		})
		h := newHealthScheduler(HealthSchedule{}, nil, nil)
		h.reconcile(t, nil, nil, true, time.Now())
	}
	b.StopTimer()
	b.ReportMetric(liveBytesPerBackend(100, 1000), "bytes/backend")
}

func TestAppendHostPortMatchesJoinHostPort(t *testing.T) {
	for _, c := range []struct {
		host string
		port int
	}{{"10.0.0.1", 80}, {"backend.internal", 8443}, {"::1", 9}, {"fd00::1%eth0", 65535}, {"", 0}} {
		got := string(appendHostPort([]byte("junk"), []byte(c.host), c.port))
		want := "junk" + net.JoinHostPort(c.host, strconv.Itoa(c.port))
		if got != want {
			t.Errorf("appendHostPort(%q, %d) = %q, want %q", c.host, c.port, got, want)
		}
		addr := net.JoinHostPort(c.host, strconv.Itoa(c.port))
		if h := hostOf(addr, c.host); h != c.host {
			t.Errorf("hostOf(%q, %q) = %q", addr, c.host, h)
		}
	}
}

// Plain legs checked without TLS share one BackendTLS per pool; a TLS leg
// and an https check keep their own (its server name is the backend's).
func TestPlainLegsShareBackendTLS(t *testing.T) {
	ps, bs := scaleRows(1, 3)
	bs[2].Scheme = "https"
	tbl := buildTable(ps, bs, TableOptions{}, nil, func(_, addr string, sp *storage.Pool) *backendState { return newBackendState(addr, false) })
	be := tbl.Pool(ps[0].Name).Backends()
	if be[0].TLS() != be[1].TLS() || be[0].TLS().Enabled || be[0].TLS().Key() != plainTLSKey {
		t.Fatalf("plain legs: %+v / %+v", be[0].TLS(), be[1].TLS())
	}
	if tl := be[2].TLS(); tl == be[0].TLS() || !tl.Enabled || tl.ServerName != bs[2].Host {
		t.Fatalf("TLS leg: %+v", tl)
	}
	ps[0].HealthCheck.Type = HealthCheckHTTPS
	tbl = buildTable(ps, bs, TableOptions{}, nil, func(_, addr string, sp *storage.Pool) *backendState { return newBackendState(addr, false) })
	be = tbl.Pool(ps[0].Name).Backends()
	if be[0].TLS() == be[1].TLS() || be[0].TLS().ServerName != bs[0].Host {
		t.Fatalf("plain legs under an https check share settings: %+v / %+v", be[0].TLS(), be[1].TLS())
	}
}

// A dial error's text leaves out the address, so that every backend
// refusing connections shares one string.
func TestCheckErrorTextShared(t *testing.T) {
	s := newHealthScheduler(HealthSchedule{}, nil, nil)
	dial := func(addr string) error {
		_, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			t.Skip("something listens on the closed port")
		}
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	a, b := s.errorText(dial(addr)), s.errorText(dial(addr))
	if a != b || strings.Contains(a, addr) || !strings.Contains(a, "refused") {
		t.Fatalf("texts %q and %q", a, b)
	}
	if unsafe.StringData(a) != unsafe.StringData(b) {
		t.Fatal("the same text is held twice")
	}
	other := errors.New("HTTP status 503, expected 2xx or 3xx")
	if got := s.errorText(other); got != other.Error() {
		t.Fatalf("non-dial error text %q", got)
	}
}
