package cluster

// Recovery scenarios with agent processes: a crash in the middle of a
// bootstrap, a join against a large state while writes continue, a node
// restored from an old backup, and a node whose clock is two hours ahead.
// The oracles are the invariants, checked through /api/db (the
// store's bookkeeping: which seqs of which origin a node holds) and the
// `db export` dumps of the stopped stores.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/singularity-ng/singularity-edge/storage"

	"github.com/singularity-ng/singularity-edge/test/itest"
)

// largeBackendsEnv sets the size of the large-state join (default 100,000
// backends, so the suite stays fast; the scale is 1,000,000).
const largeBackendsEnv = "EDGE_IT_LARGE_BACKENDS"

// dbInfo is the part of GET /api/db the tests read.
type dbInfo struct {
	NodeID          string            `json:"node_id"`
	HLC             uint64            `json:"hlc"`
	ClockSkewEvents uint64            `json:"clock_skew_events"`
	Watermarks      map[string]uint64 `json:"watermarks"`
	Ready           string            `json:"ready"`
}

func (a *agent) dbInfo() (dbInfo, error) {
	var d dbInfo
	b, err := a.get("/api/db")
	if err != nil {
		return d, err
	}
	return d, json.Unmarshal(b, &d)
}

func (a *agent) mustDBInfo() dbInfo {
	a.t.Helper()
	d, err := a.dbInfo()
	if err != nil {
		a.t.Fatalf("%s: /api/db: %v", a.name, err)
	}
	return d
}

// covers reports which origin of want got holds fewer contiguous seqs of
// ("" when it holds at least as many of every one).
func covers(got, want map[string]uint64) string {
	for o, w := range want {
		if got[o] < w {
			return fmt.Sprintf("origin %s: holds up to seq %d, the cluster had %d", o, got[o], w)
		}
	}
	return ""
}

// health is the status of GET /api/health (0 when it does not answer).
func (a *agent) health() int {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + a.addr(a.ports.admin()) + "/api/health")
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// newJoiner prepares (does not start) an agent with an empty volume, or the
// given one, that joins the cluster through seed: same cluster secrets as
// seed, its own admin token.
func newJoiner(t *testing.T, seed *agent, name, ip, dataDir string, env ...string) *agent {
	t.Helper()
	if dataDir == "" {
		dataDir = t.TempDir()
	}
	n := &agent{t: t, name: name, ip: ip, ports: seed.ports, dataDir: dataDir, token: randHex(t, 16)}
	n.env = append(append(append([]string{}, seed.env...), "EDGE_ADMIN_TOKEN="+n.token), env...)
	n.args = []string{"--app", "edge-it", "--gossip-preset", "local", "--join", net.JoinHostPort(seed.ip, strconv.Itoa(seed.ports.gossip()))}
	t.Cleanup(func() {
		if n.cmd != nil {
			n.stop()
		}
	})
	return n
}

// awaitReady polls /api/health until the agent says ready and returns
// whether it answered 503 (not ready) first. Every moment it is not ready
// yet, notReady runs (when non-nil) so a test can check what "not ready"
// must mean.
func (a *agent) awaitReady(limit time.Duration) (sawNotReady bool) {
	a.t.Helper()
	deadline := time.Now().Add(limit)
	exited := a.exited
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			a.t.Fatalf("agent %s exited before it was ready:\n%s", a.name, itest.Tail(a.log.String(), 60))
		default:
		}
		switch a.health() {
		case http.StatusOK:
			return sawNotReady
		case http.StatusServiceUnavailable:
			sawNotReady = true
		}
		time.Sleep(50 * time.Millisecond)
	}
	a.t.Fatalf("%s not ready after %s:\n%s", a.name, limit, itest.Tail(a.log.String(), 60))
	return false
}

// writer keeps writing pools through the admin APIs of agents until
// stopped: creates, a patch of the previous pool and a delete of every
// third one, so updates and tombstones flow during the scenario.
type writer struct {
	stop   chan struct{}
	done   chan struct{}
	writes atomic.Int64
}

func startWriter(prefix string, agents ...*agent) *writer {
	w := &writer{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for j := 0; ; j++ {
			select {
			case <-w.stop:
				return
			default:
			}
			a := agents[j%len(agents)]
			name := fmt.Sprintf("%s-%d", prefix, j)
			a.mustDo(http.MethodPost, "/api/pools", pool(name, "v"), http.StatusCreated)
			if j > 0 {
				a.mustDo(http.MethodPatch, fmt.Sprintf("/api/pools/%s-%d", prefix, j-1),
					map[string]any{"metadata": map[string]string{"v": "patched"}}, http.StatusOK, http.StatusNotFound)
			}
			if j%3 == 2 {
				a.mustDo(http.MethodDelete, fmt.Sprintf("/api/pools/%s-%d", prefix, j-2), nil, http.StatusNoContent, http.StatusOK, http.StatusNotFound)
			}
			w.writes.Add(1)
			time.Sleep(5 * time.Millisecond)
		}
	}()
	return w
}

func (w *writer) halt(t *testing.T) {
	t.Helper()
	close(w.stop)
	select {
	case <-w.done:
	case <-time.After(30 * time.Second):
		t.Fatal("writer did not stop")
	}
}

// loadState writes pools × perPool backends into a stopped agent's data
// directory with `db import`, as rows of one foreign origin (as if written
// by a former member), the way an operator seeds a large state.
func loadState(t *testing.T, dataDir string, env []string, pools, perPool int) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "state.jsonl")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	enc := json.NewEncoder(w)
	_ = enc.Encode(map[string]any{"format": "singularity-edge-export", "version": 1, "node_id": "seeder", "exported_at": time.Now().UTC()})
	now := time.Now().UTC()
	hlc := storage.NewHLC(now.Add(-time.Minute).UnixMilli(), 0)
	seq := uint64(0)
	line := func(table, key string, row any) {
		seq++
		hlc++
		b, err := json.Marshal(row)
		if err != nil {
			t.Fatal(err)
		}
		_ = enc.Encode(map[string]any{"table": table, "key": key,
			"version": storage.Version{HLC: hlc, Origin: "seeder-origin", Seq: seq}, "row": json.RawMessage(b)})
	}
	for p := range pools {
		name := fmt.Sprintf("big-%04d", p)
		// Health checks once an hour: the scenario measures replication,
		// not 100,000 probes of closed ports.
		line(storage.TablePools, name, storage.Pool{Name: name, Algorithm: "round_robin", SSLMode: "off",
			HealthCheckInterval: time.Hour,
			HealthCheck:         storage.HealthCheck{Type: "tcp", Timeout: 2 * time.Second, Rise: 2, Fall: 3},
			InsertedAt:          now, UpdatedAt: now})
		for b := range perPool {
			id := fmt.Sprintf("p%04d-b%05d", p, b)
			// One address per backend, as the API requires within a pool
			// (and as a real fleet has): loopback, so a check is refused
			// at once. All of them on one address made the health
			// scheduler's start quadratic (one target, a million
			// subscribers), which no real configuration is.
			n := p*perPool + b
			host := fmt.Sprintf("127.%d.%d.%d", 1+n>>16&0xff, n>>8&0xff, n&0xff)
			line(storage.TableBackends, id, storage.Backend{ID: id, PoolName: name, Host: host, Port: 9,
				Scheme: "http", Weight: 1, Region: "local", InsertedAt: now, UpdatedAt: now})
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	cmd := exec.Command(binary, "db", "import", "--data-dir", dataDir, path)
	cmd.Env = append(os.Environ(), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("db import: %v: %s", err, out)
	}
}

// startLoadedCluster starts n agents whose first one holds pools × perPool
// imported backends; the others bootstrap from it.
func startLoadedCluster(t *testing.T, n int, addrs []string, pools, perPool int) []*agent {
	t.Helper()
	return startClusterWith(t, n, addrs, nil, func(i int, c *agentConfig) {
		// A million rows take minutes to open on m1 and to bootstrap on
		// the others.
		c.startLimit = 15 * time.Minute
		if i == 0 {
			c.dataDir = t.TempDir()
			start := time.Now()
			loadState(t, c.dataDir, c.env, pools, perPool)
			t.Logf("imported %d backends into m1 in %s", pools*perPool, time.Since(start).Round(time.Millisecond))
		}
	})
}

// dumpFile writes a stopped agent's `db export` rows (header left out) to
// a file and returns its path: large states are compared as files.
func (a *agent) dumpFile() string {
	a.t.Helper()
	path := filepath.Join(a.t.TempDir(), a.name+".jsonl")
	f, err := os.Create(path)
	if err != nil {
		a.t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command(binary, "db", "export", "--data-dir", a.dataDir, "-")
	cmd.Env = a.env
	var errb bytes.Buffer
	out, err := cmd.StdoutPipe()
	if err != nil {
		a.t.Fatal(err)
	}
	cmd.Stderr = &errb
	if err := cmd.Start(); err != nil {
		a.t.Fatal(err)
	}
	r := bufio.NewReaderSize(out, 1<<20)
	if _, err := r.ReadString('\n'); err != nil { // the header
		a.t.Fatalf("db export of %s: %v: %s", a.name, err, errb.String())
	}
	if _, err := r.WriteTo(f); err != nil {
		a.t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		a.t.Fatalf("db export of %s: %v: %s", a.name, err, errb.String())
	}
	return path
}

// sameLargeDumps stops every agent and compares their dumps line by line
// through files; it returns the number of rows compared.
//
// Observation rows are left out: with a million backends, each on its own
// address, every agent checks about 280 of them a second (a one-hour
// interval) and persists its view every 5 s and once more as it stops, so
// the last views of an agent written while the others stop differ between
// stopped stores. Their replication is what TestObservationsPerRegion
// checks; every configuration table is compared here.
func sameLargeDumps(t *testing.T, agents []*agent) int {
	t.Helper()
	for _, a := range agents {
		a.stop()
	}
	want := agents[0].dumpFile()
	rows := 0
	for i, a := range agents[1:] {
		got := a.dumpFile()
		n, diff := compareFiles(want, got)
		if diff != "" {
			t.Fatalf("dumps of %s and %s differ: %s", agents[0].name, a.name, diff)
		}
		if i == 0 {
			rows = n
		}
	}
	return rows
}

func compareFiles(a, b string) (int, string) {
	fa, err := os.Open(a)
	if err != nil {
		return 0, err.Error()
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		return 0, err.Error()
	}
	defer fb.Close()
	sa, sb := &skipScanner{bufio.NewScanner(fa)}, &skipScanner{bufio.NewScanner(fb)}
	sa.Buffer(make([]byte, 1<<16), 64<<20)
	sb.Buffer(make([]byte, 1<<16), 64<<20)
	for n := 1; ; n++ {
		oka, okb := sa.Scan(), sb.Scan()
		switch {
		case !oka && !okb:
			return n - 1, ""
		case oka != okb:
			return n, fmt.Sprintf("one ends at line %d (%q / %q)", n, sa.Text(), sb.Text())
		case !bytes.Equal(sa.Bytes(), sb.Bytes()):
			return n, fmt.Sprintf("line %d:\n%s\n%s", n, sa.Text(), sb.Text())
		}
	}
}

// skipScanner scans a dump's lines, leaving out observation rows.
type skipScanner struct{ *bufio.Scanner }

var observationLine = []byte(`{"table":"observations",`)

func (s *skipScanner) Scan() bool {
	for s.Scanner.Scan() {
		if !bytes.HasPrefix(s.Bytes(), observationLine) {
			return true
		}
	}
	return false
}

// dumpRow is one line of a dump.
type dumpRow struct {
	Table   string          `json:"table"`
	Key     string          `json:"key"`
	Version storage.Version `json:"version"`
	Deleted bool            `json:"deleted"`
	Row     json.RawMessage `json:"row"`
}

// poolRows parses the pools of a dump by name.
func poolRows(t *testing.T, dump string) map[string]dumpRow {
	t.Helper()
	out := map[string]dumpRow{}
	for _, l := range strings.Split(strings.TrimSpace(dump), "\n") {
		var r dumpRow
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatalf("dump line %q: %v", l, err)
		}
		if r.Table == storage.TablePools {
			out[r.Key] = r
		}
	}
	return out
}

func metaV(t *testing.T, r dumpRow) string {
	t.Helper()
	var p struct {
		Metadata map[string]string `json:"metadata"`
	}
	if err := json.Unmarshal(r.Row, &p); err != nil {
		t.Fatalf("pool %s: %v", r.Key, err)
	}
	return p.Metadata["v"]
}

// kill -9 of a new member while it streams its bootstrap snapshot: it never
// said ready; restarted on the same (half-filled) volume it bootstraps
// again, says not ready until it holds everything the cluster had, then
// converges with the others.
func TestKillDuringBootstrap(t *testing.T) {
	addrs := ips(3)
	agents := startLoadedCluster(t, 2, addrs, 40, 1000)
	w := startWriter("live", agents...)
	m3 := newJoiner(t, agents[0], "m3", addrs[2], "")
	m3.startNoWait()
	waitFor(t, "m3 streaming its snapshot", func() bool {
		if m3.health() == http.StatusOK {
			t.Fatal("m3 said ready during its bootstrap")
		}
		return m3.metric("singularity_edge_replication_snapshot_bytes_total", `direction="in"`) > 0
	})
	m3.kill()
	if strings.Contains(m3.log.String(), "bootstrapped from peer") {
		t.Fatal("the kill came after the bootstrap ended: the test did not crash it mid-way")
	}
	before := agents[0].mustDBInfo().Watermarks
	m3.startNoWait()
	sawNotReady := m3.awaitReady(90 * time.Second)
	if !sawNotReady {
		t.Log("m3 was ready at its first health answer after the restart")
	}
	if miss := covers(m3.mustDBInfo().Watermarks, before); miss != "" {
		t.Fatalf("m3 said ready without the cluster's state: %s", miss)
	}
	if !strings.Contains(m3.log.String(), "bootstrapped from peer") {
		t.Fatalf("restarted m3 did not finish a bootstrap:\n%s", itest.Tail(m3.log.String(), 40))
	}
	w.halt(t)
	all := append(agents, m3)
	waitFor(t, "the agents converge", func() bool { return settled(all) })
	rows := sameLargeDumps(t, all)
	t.Logf("%d rows identical on 3 agents after %d writes during the scenario", rows, w.writes.Load())
}

// A new member joins a cluster holding a large state (EDGE_IT_LARGE_BACKENDS,
// default 100,000) while writes continue on the others: it says not ready
// until it holds every seq the cluster had when it started, then matches
// the others exactly. The time to ready and to identical is reported.
func TestJoinLargeStateUnderWrites(t *testing.T) {
	total := 100_000
	if v := os.Getenv(largeBackendsEnv); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1000 {
			t.Fatalf("%s=%q: want a number of backends >= 1000", largeBackendsEnv, v)
		}
		total = n
	}
	addrs := ips(3)
	agents := startLoadedCluster(t, 2, addrs, total/1000, 1000)
	w := startWriter("live", agents...)
	time.Sleep(time.Second)
	before := agents[0].mustDBInfo().Watermarks
	m3 := newJoiner(t, agents[0], "m3", addrs[2], "")
	start := time.Now()
	m3.startNoWait()
	usage := watchUsage(agents[0], agents[1], m3)
	sawNotReady := m3.awaitReady(10 * time.Minute)
	ready := time.Since(start)
	usage.stop()
	reportBootstrap(t, m3, append(agents, m3), usage)
	if miss := covers(m3.mustDBInfo().Watermarks, before); miss != "" {
		t.Fatalf("m3 said ready without the cluster's state: %s", miss)
	}
	if !sawNotReady {
		t.Log("m3's first health answer was already ready")
	}
	if !strings.Contains(m3.log.String(), "bootstrapped from peer") {
		t.Fatal("m3 did not bootstrap from a snapshot")
	}
	// Writes go on a little while m3 serves, then stop so it can match.
	time.Sleep(2 * time.Second)
	w.halt(t)
	all := append(agents, m3)
	// Five minutes: at a million rows on a loaded machine the joiner's
	// routing table alone took 95 s to load after its bootstrap.
	waitForWithin(t, "the agents converge", 5*time.Minute, func() bool { return settled(all) })
	identical := time.Since(start)
	rows := sameLargeDumps(t, all)
	t.Logf("join of a %d-backend cluster under writes: ready after %s, converged after %s; "+
		"%d rows identical on 3 agents, %d writes during the join (%s for more)",
		total, ready.Round(time.Millisecond), identical.Round(time.Millisecond), rows, w.writes.Load(), largeBackendsEnv)
}

// usage samples the CPU time and resident memory of agent processes while
// a scenario runs.
type usage struct {
	agents  []*agent
	cpu0    []float64
	cpu     []float64
	rssMax  []int64
	start   time.Time
	elapsed time.Duration
	quit    chan struct{}
	done    chan struct{}
}

func watchUsage(agents ...*agent) *usage {
	u := &usage{agents: agents, cpu0: make([]float64, len(agents)), cpu: make([]float64, len(agents)),
		rssMax: make([]int64, len(agents)), start: time.Now(), quit: make(chan struct{}), done: make(chan struct{})}
	for i, a := range agents {
		u.cpu0[i], _ = procUsage(a)
	}
	go func() {
		defer close(u.done)
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			for i, a := range agents {
				c, rss := procUsage(a)
				u.rssMax[i] = max(u.rssMax[i], rss)
				if c > 0 {
					u.cpu[i] = c - u.cpu0[i]
				}
			}
			select {
			case <-u.quit:
				return
			case <-t.C:
			}
		}
	}()
	return u
}

func (u *usage) stop() {
	close(u.quit)
	<-u.done
	u.elapsed = time.Since(u.start)
}

// procUsage reads an agent process's user+system CPU seconds and resident
// set size from /proc (0, 0 when it is not running).
func procUsage(a *agent) (cpu float64, rss int64) {
	if a.cmd == nil || a.cmd.Process == nil {
		return 0, 0
	}
	pid := a.cmd.Process.Pid
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
		s := string(b)
		if i := strings.LastIndexByte(s, ')'); i > 0 && i+2 < len(s) {
			f := strings.Fields(s[i+2:])
			if len(f) > 12 {
				u, _ := strconv.ParseFloat(f[11], 64)
				k, _ := strconv.ParseFloat(f[12], 64)
				cpu = (u + k) / 100 // clock ticks of 1/100 s
			}
		}
	}
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid)); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
				kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
				rss = kb << 10
			}
		}
	}
	return cpu, rss
}

// logFields returns the fields of the last JSON log line of a whose
// message is msg (nil when there is none).
func logFields(a *agent, msg string) map[string]any {
	var found map[string]any
	for _, l := range strings.Split(a.log.String(), "\n") {
		if !strings.Contains(l, `"msg":"`+msg+`"`) {
			continue
		}
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil {
			found = m
		}
	}
	return found
}

// reportBootstrap logs the figures of a joiner's bootstrap: what the
// snapshot carried and how fast it went (from the joiner's and the
// server's log lines), and CPU and peak RSS of every agent while it ran.
func reportBootstrap(t *testing.T, joiner *agent, agents []*agent, u *usage) {
	t.Helper()
	f := logFields(joiner, "bootstrapped from peer")
	if f == nil {
		t.Fatalf("%s logged no bootstrap", joiner.name)
	}
	t.Logf("bootstrap of %s from %v: %.0f rows, %.1f MB; ingest %.1f s (%.0f rows/s, %.1f MB/s), catch-up %.1f s, ready after %.1f s",
		joiner.name, f["peer"], f["rows"], num(f["bytes"])/1e6, num(f["ingest"]), num(f["rows_per_second"]), num(f["mb_per_second"]),
		num(f["catch_up"]), num(f["took"]))
	for _, a := range agents {
		if s := logFields(a, "served a snapshot"); s != nil && s["peer"] == joiner.name {
			t.Logf("%s served it: %.0f rows, %.1f MB in %.1f s (%.1f MB/s)", a.name, s["rows"], num(s["bytes"])/1e6, num(s["took"]), num(s["mb_per_second"]))
		}
	}
	for i, a := range u.agents {
		t.Logf("%s during the bootstrap (%.1f s): CPU %.1f s (%.2f cores), peak RSS %.0f MiB",
			a.name, u.elapsed.Seconds(), u.cpu[i], u.cpu[i]/u.elapsed.Seconds(), float64(u.rssMax[i])/(1<<20))
	}
}

func num(v any) float64 {
	f, _ := v.(float64)
	return f
}

// A member restored from an old backup (docs/runbooks/backup-and-restore.md:
// online `db backup`, stop, `db restore --force`, start) rejoins under a new
// node id, catches up, and neither loses an acknowledged write (its own
// writes after the backup come back from the peers) nor resurrects a row
// deleted after the backup; its new writes replicate.
func TestRestoredFromOldBackupRejoins(t *testing.T) {
	agents := startCluster(t, 3, ips(3), nil)
	m1, m3 := agents[0], agents[2]
	for i := range 6 {
		m3.mustDo(http.MethodPost, "/api/pools", pool(fmt.Sprintf("old-%d", i), "at-backup"), http.StatusCreated)
	}
	waitFor(t, "the old pools everywhere", func() bool { return settled(agents) })

	backups := filepath.Join(t.TempDir(), "backups")
	cli := exec.Command(binary, "db", "backup", backups, "--api", "http://"+m3.addr(m3.ports.admin()))
	cli.Env = append(os.Environ(), "EDGE_ADMIN_TOKEN="+m3.token)
	if out, err := cli.CombinedOutput(); err != nil {
		t.Fatalf("db backup: %v: %s", err, out)
	}

	// After the backup: m3's own acknowledged writes, and deletes and
	// updates of rows the backup holds, on m3 and elsewhere.
	for i := range 4 {
		m3.mustDo(http.MethodPost, "/api/pools", pool(fmt.Sprintf("m3-after-%d", i), "acked"), http.StatusCreated)
	}
	m3.mustDo(http.MethodDelete, "/api/pools/old-0", nil, http.StatusNoContent, http.StatusOK)
	m1.mustDo(http.MethodDelete, "/api/pools/old-1", nil, http.StatusNoContent, http.StatusOK)
	m3.mustDo(http.MethodPatch, "/api/pools/old-2", map[string]any{"metadata": map[string]string{"v": "m3-after"}}, http.StatusOK)
	m1.mustDo(http.MethodPatch, "/api/pools/old-3", map[string]any{"metadata": map[string]string{"v": "m1-after"}}, http.StatusOK)
	waitFor(t, "the later writes everywhere", func() bool { return settled(agents) })
	oldID := m3.mustDBInfo().NodeID

	// The volume is lost: a crash, then the restore over it.
	m3.kill()
	restore := exec.Command(binary, "db", "restore", backups, "--data-dir", m3.dataDir, "--force")
	restore.Env = m3.env
	if out, err := restore.CombinedOutput(); err != nil {
		t.Fatalf("db restore: %v: %s", err, out)
	}
	m3.start()
	if id := m3.mustDBInfo().NodeID; id == oldID || id == "" {
		t.Fatalf("restored m3 came back as node %q (before: %s): it must take a new identity", id, oldID)
	}
	waitFor(t, "restored m3 catches up", func() bool { return settled(agents) })
	m3.mustDo(http.MethodPost, "/api/pools", pool("m3-new-identity", "x"), http.StatusCreated)
	m3.mustDo(http.MethodPatch, "/api/pools/old-4", map[string]any{"metadata": map[string]string{"v": "m3-new"}}, http.StatusOK)
	waitFor(t, "m3's new writes everywhere", func() bool { return settled(agents) })

	dump := sameDumps(t, agents)
	rows := poolRows(t, dump)
	for name, want := range map[string]string{
		"m3-after-0": "acked", "m3-after-3": "acked", "old-2": "m3-after", "old-3": "m1-after",
		"old-4": "m3-new", "old-5": "at-backup", "m3-new-identity": "x",
	} {
		r, ok := rows[name]
		if !ok || r.Deleted || metaV(t, r) != want {
			t.Errorf("pool %s after the restore: %+v, want v=%s", name, r, want)
		}
	}
	for _, name := range []string{"old-0", "old-1"} {
		if r := rows[name]; !r.Deleted {
			t.Errorf("pool %s was deleted after the backup and came back: %+v", name, r)
		}
	}
	if r := rows["m3-new-identity"]; r.Version.Origin == oldID {
		t.Errorf("m3's new write carries its old node id %s", oldID)
	}
}

// A member whose clock is two hours ahead (EDGE_FAULT_CLOCK_OFFSET): its
// writes replicate, but they do not drag the others' clocks beyond the HLC
// bound (their own new rows keep versions near the real time), a later
// write elsewhere to a row it wrote still wins, and once its clock is
// corrected the order of new writes is the real order.
func TestClockTwoHoursAhead(t *testing.T) {
	agents := startClusterWith(t, 3, ips(3), nil, func(i int, c *agentConfig) {
		if i == 2 {
			c.env = append(c.env, "EDGE_FAULT_CLOCK_OFFSET=2h")
		}
	})
	m1, m2, m3 := agents[0], agents[1], agents[2]
	for _, p := range []string{"p-a", "p-b", "p-c"} {
		m1.mustDo(http.MethodPost, "/api/pools", pool(p, "m1"), http.StatusCreated)
	}
	waitFor(t, "the pools everywhere", func() bool { return settled(agents) })

	// The skewed member writes; its writes reach everyone.
	m3.mustDo(http.MethodPatch, "/api/pools/p-a", map[string]any{"metadata": map[string]string{"v": "m3-skewed"}}, http.StatusOK)
	m3.mustDo(http.MethodPost, "/api/pools", pool("m3-pool", "skewed"), http.StatusCreated)
	waitFor(t, "m3's writes everywhere", func() bool {
		return settled(agents) && strings.Contains(m1.poolList(), "p-a=m3-skewed")
	})
	for _, a := range []*agent{m1, m2} {
		d := a.mustDBInfo()
		if d.ClockSkewEvents == 0 {
			t.Errorf("%s counted no clock skew from m3", a.name)
		}
		// The bound is 500 ms; a second of slack for the request.
		if ahead := time.Until(storage.HLC(d.HLC).Time()); ahead > 1500*time.Millisecond {
			t.Errorf("%s's clock was dragged %s ahead by m3", a.name, ahead)
		}
	}

	// Later writes elsewhere: an update of the row m3 wrote, a delete of
	// its pool, a fresh write.
	time.Sleep(20 * time.Millisecond)
	m1.mustDo(http.MethodPatch, "/api/pools/p-a", map[string]any{"metadata": map[string]string{"v": "m1-later"}}, http.StatusOK)
	m2.mustDo(http.MethodDelete, "/api/pools/m3-pool", nil, http.StatusNoContent, http.StatusOK)
	m2.mustDo(http.MethodPatch, "/api/pools/p-b", map[string]any{"metadata": map[string]string{"v": "m2"}}, http.StatusOK)
	waitFor(t, "the later writes everywhere", func() bool { return settled(agents) })
	if got := m3.poolList(); !strings.Contains(got, "p-a=m1-later") || strings.Contains(got, "m3-pool") {
		t.Fatalf("a later write lost to m3's clock:\n%s", got)
	}

	// The clock is corrected (a restart without the offset, same data).
	m3.stop()
	m3.env = append(m3.env, "EDGE_FAULT_CLOCK_OFFSET=")
	m3.start()
	waitFor(t, "corrected m3 caught up", func() bool { return settled(agents) })
	m1.mustDo(http.MethodPatch, "/api/pools/p-c", map[string]any{"metadata": map[string]string{"v": "m1"}}, http.StatusOK)
	waitFor(t, "m1's write everywhere", func() bool { return settled(agents) })
	time.Sleep(20 * time.Millisecond)
	m3.mustDo(http.MethodPatch, "/api/pools/p-c", map[string]any{"metadata": map[string]string{"v": "m3-corrected"}}, http.StatusOK)
	m3.mustDo(http.MethodPatch, "/api/pools/p-a", map[string]any{"metadata": map[string]string{"v": "m3-corrected"}}, http.StatusOK)
	m3.mustDo(http.MethodPost, "/api/pools", pool("m3-fresh", "x"), http.StatusCreated)
	waitFor(t, "m3's corrected writes everywhere", func() bool { return settled(agents) })
	time.Sleep(20 * time.Millisecond)
	m2.mustDo(http.MethodPatch, "/api/pools/p-c", map[string]any{"metadata": map[string]string{"v": "m2-last"}}, http.StatusOK)
	waitFor(t, "the last write everywhere", func() bool { return settled(agents) })

	checked := time.Now()
	rows := poolRows(t, sameDumps(t, agents))
	for name, want := range map[string]string{"p-a": "m3-corrected", "p-b": "m2", "p-c": "m2-last", "m3-fresh": "x"} {
		if r := rows[name]; r.Deleted || metaV(t, r) != want {
			t.Errorf("pool %s: v=%s deleted=%v, want v=%s", name, metaV(t, r), r.Deleted, want)
		}
	}
	if r := rows["m3-pool"]; !r.Deleted {
		t.Errorf("m3-pool, deleted after m3 wrote it with a clock ahead, is back: %+v", r)
	}
	// Rows no skewed version touched carry real-time versions.
	for _, name := range []string{"p-b", "p-c", "m3-fresh"} {
		if ahead := rows[name].Version.HLC.Time().Sub(checked); ahead > time.Second {
			t.Errorf("pool %s is versioned %s in the future", name, ahead)
		}
	}
}
