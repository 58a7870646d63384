// Package itest is what the integration tests under test/ share: the
// agent binary, built once per test binary; processes of the module's go
// tools (Pebble and pebble-challtestsrv) whose output the tests read; and
// Pebble with challtestsrv as its DNS, the ACME server every ACME test
// runs against.
package itest

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// RunWithAgent is a TestMain: it builds the agent (BuildAgent with
// prefix), stores its path in *bin, runs the tests and removes the binary,
// and returns the exit code for os.Exit.
func RunWithAgent(m *testing.M, prefix string, bin *string) int {
	path, cleanup, err := BuildAgent(prefix)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer cleanup()
	*bin = path
	return m.Run()
}

// BuildAgent builds the singularity-edge binary into a new temporary
// directory whose name starts with prefix, and returns the binary's path
// and a function that removes the directory.
func BuildAgent(prefix string) (bin string, cleanup func(), err error) {
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		return "", nil, err
	}
	bin = filepath.Join(dir, "singularity-edge")
	build := exec.Command("go", "build", "-o", bin, "github.com/singularity-ng/singularity-edge/cmd/singularity-edge")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		os.RemoveAll(dir)
		return "", nil, fmt.Errorf("building the agent: %w", err)
	}
	return bin, func() { os.RemoveAll(dir) }, nil
}

// SyncBuffer is a bytes.Buffer safe for the concurrent writes of a child's
// stdout and stderr.
type SyncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Tail returns the last n lines of s.
func Tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Tool is a running process of one of the module's go tools (go.mod's
// tool directives).
type Tool struct {
	Out    *SyncBuffer // stdout and stderr
	cmd    *exec.Cmd
	exited chan struct{}
}

// toolPaths caches `go tool -n` answers: the go command builds a tool
// once and caches it, and the test runs the binary itself so that it
// signals the tool, not the go command.
var toolPaths sync.Map

// StartTool starts go tool name with args, env added to the test's
// environment. The tool is killed when the test ends; its output is
// logged (the last 80 lines) when the test failed.
func StartTool(t testing.TB, env []string, name string, args ...string) *Tool {
	t.Helper()
	path, ok := toolPaths.Load(name)
	if !ok {
		out, err := exec.Command("go", "tool", "-n", name).Output()
		if err != nil {
			t.Fatalf("go tool -n %s: %v", name, err)
		}
		path, _ = toolPaths.LoadOrStore(name, strings.TrimSpace(string(out)))
	}
	p := &Tool{cmd: exec.Command(path.(string), args...), Out: &SyncBuffer{}, exited: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = p.Out, p.Out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		select {
		case <-p.exited:
		case <-time.After(10 * time.Second):
			t.Errorf("%s did not exit", name)
		}
		if t.Failed() {
			t.Logf("%s output (tail):\n%s", name, Tail(p.Out.String(), 80))
		}
	})
	return p
}

// Stop kills the tool and waits until it has exited (at most 10 s).
func (p *Tool) Stop(t testing.TB) {
	t.Helper()
	_ = p.cmd.Process.Kill()
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		t.Fatal("tool did not exit after kill")
	}
}

// waitFor polls cond every 50 ms until it holds, failing the test after
// limit.
func waitFor(t testing.TB, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", limit, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
