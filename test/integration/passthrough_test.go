package integration

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/singularity-ng/singularity-edge/internal/nettest"
)

// TestPassthroughThroughAgent: the agent binary relays an SNI passthrough
// pool's TLS connections end to end, on its event loops (the default on
// Linux) and on the goroutine relay (--tunnel-event-loops -1):
// request/response exchanges and a bulk stream both ways arrive byte for
// byte, the client's half-close reaches the backend, which can still
// answer, and /metrics counts the relayed bytes. The loops' threads are
// there only when they are asked for.
func TestPassthroughThroughAgent(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		args  []string
		loops bool
	}{
		{"event loops", nil, true},
		{"goroutine relay", []string{"--tunnel-event-loops", "-1"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			a := passthroughThroughAgent(t, tc.args)
			if got := tunnelThreads(t, a.cmd.Process.Pid); (got > 0) != tc.loops {
				t.Errorf("%d edge-tunnel threads in the agent, want them: %v", got, tc.loops)
			}
		})
	}
}

// tunnelThreads counts the threads of process pid named as the tunnel
// event loops name theirs.
func tunnelThreads(t *testing.T, pid int) int {
	t.Helper()
	comms, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/comm", pid))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, f := range comms {
		if b, err := os.ReadFile(f); err == nil && strings.TrimSpace(string(b)) == "edge-tunnel" {
			n++
		}
	}
	return n
}

func passthroughThroughAgent(t *testing.T, args []string) *agentProc {
	certPEM, keyPEM, roots := selfSignedCert(t, "pt.test")
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	backendAddr := nettest.TLSEcho(t, cert, "bye")

	token := newToken(t)
	a := startAgent(t, agentOptions{token: token, args: args})
	if code := a.api(token, "POST", "/api/pools", map[string]any{"name": "pt", "ssl_mode": "passthrough", "ssl_domain": "pt.test"}, nil); code != http.StatusCreated {
		t.Fatalf("create pool: %d", code)
	}
	host, portNum := backendAddr.IP.String(), backendAddr.Port
	if code := a.api(token, "POST", "/api/pools/pt/backends", map[string]any{"host": host, "port": portNum, "scheme": "https"}, nil); code != http.StatusCreated {
		t.Fatalf("add backend: %d", code)
	}

	var c *tls.Conn
	waitFor(t, 10*time.Second, "a passthrough connection", func() bool {
		c, err = tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", a.https, &tls.Config{ServerName: "pt.test", RootCAs: roots})
		return err == nil
	})
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(60 * time.Second))
	var sent int64
	buf := make([]byte, 64<<10)
	for i := range 300 {
		msg := bytes.Repeat([]byte{byte(i)}, 1+i*37%3000)
		if _, err := c.Write(msg); err != nil {
			t.Fatalf("exchange %d: %v", i, err)
		}
		if _, err := io.ReadFull(c, buf[:len(msg)]); err != nil || !bytes.Equal(buf[:len(msg)], msg) {
			t.Fatalf("exchange %d: echo differs (%v)", i, err)
		}
		sent += int64(len(msg))
	}
	bulk := make([]byte, 4<<20)
	for i := range bulk {
		bulk[i] = byte(i * 13)
	}
	go func() { _, _ = c.Write(bulk) }()
	got := make([]byte, len(bulk))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, bulk) {
		t.Fatalf("bulk echo differs (%v)", err)
	}
	sent += int64(len(bulk))
	if err := c.CloseWrite(); err != nil { // close_notify: the backend answers "bye"
		t.Fatal(err)
	}
	rest, err := io.ReadAll(c)
	if err != nil || string(rest) != "bye" {
		t.Fatalf("after the client's close_notify: %q, %v", rest, err)
	}
	c.Close()

	// Both directions carried the payload (plus TLS framing).
	waitFor(t, 10*time.Second, "passthrough bytes in /metrics", func() bool {
		resp, err := http.Get("http://" + a.admin + "/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		parser := expfmt.NewTextParser(model.UTF8Validation)
		families, err := parser.TextToMetricFamilies(resp.Body)
		if err != nil {
			t.Fatalf("/metrics does not parse: %v", err)
		}
		f := families["singularity_edge_passthrough_bytes_total"]
		return f != nil && len(f.Metric) == 1 && f.Metric[0].GetCounter().GetValue() >= float64(2*sent)
	})
	return a
}
