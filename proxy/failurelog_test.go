package proxy

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/singularity-ng/singularity-edge/internal/ratelog"
	"github.com/singularity-ng/singularity-edge/storage"
)

// failureLogProxy starts a proxy whose failure log holds every event
// until Shutdown, so a test sees exactly one line per burst.
func failureLogProxy(t *testing.T, specs ...poolSpec) (*testProxy, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zapcore.InfoLevel) // the default level: debug lines do not count
	cfg := testConfig()
	cfg.Logger = zap.New(core)
	cfg.FailureLog = ratelog.Config{Delay: time.Hour, Window: time.Hour}
	return startProxy(t, cfg, newTable(t, specs...), nil, nil), logs
}

func shutdown(t *testing.T, p *testProxy) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := p.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestUpstreamFailuresLoggedAggregated(t *testing.T) {
	dead := deadAddr(t)
	p, logs := failureLogProxy(t,
		poolSpec{storage.Pool{Name: "dead", Hosts: []string{"dead.test"}}, []string{"http://" + dead}},
		poolSpec{storage.Pool{Name: "empty", Hosts: []string{"empty.test"}}, nil},
	)
	c := client(p.http, nil, false)
	for range 10 {
		if resp := get(t, c, "http://dead.test/"); resp.StatusCode != http.StatusBadGateway {
			t.Fatalf("dead backend: status %d", resp.StatusCode)
		} else {
			readAll(t, resp)
		}
	}
	for range 3 {
		if resp := get(t, c, "http://empty.test/"); resp.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("empty pool: status %d", resp.StatusCode)
		} else {
			readAll(t, resp)
		}
	}
	shutdown(t, p)

	lines := logs.FilterMessage("proxy: requests failed").All()
	if len(lines) != 2 {
		t.Fatalf("%d failure lines, want one per pool and reason: %v", len(lines), lines)
	}
	byPool := map[string]map[string]any{}
	for _, l := range lines {
		if l.Level != zapcore.WarnLevel {
			t.Fatalf("failure line at %v, want warn", l.Level)
		}
		f := l.ContextMap()
		byPool[f["pool"].(string)] = f
	}
	d := byPool["dead"]
	if d["reason"] != "connect_failed" || d["status"] != int64(502) || d["count"] != int64(10) || d["last_error"] == "" {
		t.Fatalf("dead pool line: %v", d)
	}
	if ex, _ := d["examples"].([]any); !slices.Contains(ex, any(dead)) {
		t.Fatalf("dead pool line does not name the backend %s: %v", dead, d)
	}
	e := byPool["empty"]
	if e["reason"] != "no_available_backend" || e["status"] != int64(503) || e["count"] != int64(3) {
		t.Fatalf("empty pool line: %v", e)
	}
}

func TestUnknownSNILoggedAggregated(t *testing.T) {
	p, logs := failureLogProxy(t, poolSpec{storage.Pool{Name: "a", Hosts: []string{"a.test"}}, nil})
	for range 4 {
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", p.https,
			&tls.Config{ServerName: "nobody.test", InsecureSkipVerify: true})
		if err == nil {
			conn.Close()
			t.Fatal("handshake for an unknown name succeeded")
		}
	}
	shutdown(t, p)
	lines := logs.FilterMessage("tls: handshakes failed").All()
	if len(lines) != 1 {
		t.Fatalf("%d TLS failure lines, want 1: %v", len(lines), lines)
	}
	f := lines[0].ContextMap()
	if lines[0].Level != zapcore.WarnLevel || f["reason"] != "unknown_sni" || f["count"] != int64(4) {
		t.Fatalf("TLS failure line: %v %v", lines[0].Level, f)
	}
	if ex, _ := f["examples"].([]any); !slices.Contains(ex, any("nobody.test")) {
		t.Fatalf("TLS failure line does not name the SNI: %v", f)
	}
}

// With the access log on, a proxied request's line carries the backend
// and the upstream timing; a failed one's the reason and the backend
// address it failed on.
func TestAccessLogUpstreamTimingAndError(t *testing.T) {
	backend := newEcho(t, "a")
	dead := deadAddr(t)
	core, logs := observer.New(zapcore.InfoLevel)
	cfg := testConfig()
	cfg.Logger = zap.New(core)
	cfg.AccessLog = "on"
	p := startProxy(t, cfg, newTable(t,
		poolSpec{storage.Pool{Name: "a", Hosts: []string{"a.test"}}, []string{backend.URL}},
		poolSpec{storage.Pool{Name: "dead", Hosts: []string{"dead.test"}}, []string{"http://" + dead}},
	), nil, nil)
	c := client(p.http, nil, false)
	readAll(t, get(t, c, "http://a.test/ok"))
	if resp := get(t, c, "http://dead.test/x"); resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("dead backend: status %d", resp.StatusCode)
	} else {
		readAll(t, resp)
	}
	waitFor(t, "two access lines", func() bool { return logs.FilterMessage("access").Len() >= 2 })
	byPool := map[string]map[string]any{}
	for _, l := range logs.FilterMessage("access").All() {
		f := l.ContextMap()
		byPool[f["pool"].(string)] = f
	}
	ok := byPool["a"]
	connect, _ := ok["upstream_connect"].(time.Duration)
	first, _ := ok["upstream_first_byte"].(time.Duration)
	total, _ := ok["upstream_total"].(time.Duration)
	if ok["backend"] != strings.TrimPrefix(backend.URL, "http://") || connect <= 0 || first <= 0 || total < first || ok["error"] != nil {
		t.Fatalf("proxied request's access line: %v", ok)
	}
	bad := byPool["dead"]
	if bad["status"] != int64(502) || bad["error"] != "connect_failed" || bad["backend"] != dead || bad["error_detail"] == "" {
		t.Fatalf("failed request's access line: %v", bad)
	}
}

// A request retried on another backend counts on the backend that took it.
func TestRetryCountedOnBackend(t *testing.T) {
	live := newEcho(t, "live")
	dead := deadAddr(t)
	table := newTable(t, poolSpec{storage.Pool{Name: "r", Hosts: []string{"r.test"}}, []string{"http://" + dead, live.URL}})
	p := startProxy(t, testConfig(), table, nil, nil)
	c := client(p.http, nil, false)
	for range 4 {
		resp := get(t, c, "http://r.test/")
		readAll(t, resp)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d, want the retry to answer 200", resp.StatusCode)
		}
	}
	if n := table.Backend("r-2").State().Retries; n < 1 {
		t.Fatalf("live backend retries = %d, want at least 1", n)
	}
	if n := table.Backend("r-1").State().Retries; n != 0 {
		t.Fatalf("dead backend retries = %d, want 0", n)
	}
}
