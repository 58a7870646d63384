// Command benchcluster measures sustained writes on a cluster of agent
// processes: -rate writes a second (default 1,000) for -duration (default
// a minute) through the admin APIs of -agents agents (default 3) on
// loopback, spread evenly, and reports replication lag p50/p99, CPU and
// RSS per agent, beside the anchor: the same writes on one agent without
// peers, run first in the same invocation.
//
// Lag is measured two ways. Every remote change set (the writes, their
// audit rows and the agents' health observations) is timed by the agents
// themselves, from its commit on its origin to its event in the
// receiver's feed (singularity_edge_replication_visible_lag_seconds, read from each
// agent's /metrics before and after the writes). A sample of the writes
// is also polled through every other agent's API, from the
// acknowledgement to the row being readable: the end-to-end check.
//
// `make bench-cluster` runs it with the figures; goals: lag p99
// under 2 s, the rate sustained.
package main

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

type options struct {
	bin      string
	work     string
	rate     int
	duration time.Duration
	agents   int
	pools    int
	conc     int
	sampleEv int
	keep     bool
	pprof    bool
}

func main() {
	var o options
	flag.StringVar(&o.bin, "bin", "bin/singularity-edge", "agent binary")
	flag.StringVar(&o.work, "work", "", "work directory (default: a new temporary one)")
	flag.IntVar(&o.rate, "rate", 1000, "writes per second, all agents together")
	flag.DurationVar(&o.duration, "duration", time.Minute, "how long the writes run")
	flag.IntVar(&o.agents, "agents", 3, "agents in the cluster")
	flag.IntVar(&o.pools, "pools", 10, "pools the backends are spread over")
	flag.IntVar(&o.conc, "conc", 64, "concurrent requests at most")
	// Polling is a load of its own (one GET every 5 to 25 ms per agent
	// and sampled write until it shows); the agents time every set.
	flag.IntVar(&o.sampleEv, "sample-every", 250, "poll one write in this many on every agent until it is readable")
	flag.BoolVar(&o.keep, "keep", false, "keep the work directory")
	flag.BoolVar(&o.pprof, "pprof", false, "serve pprof on each agent's address at the base port + 4 (profiling a run)")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "benchcluster:", err)
		os.Exit(1)
	}
}

func run(o options) error {
	if o.work == "" {
		d, err := os.MkdirTemp("", "benchcluster-")
		if err != nil {
			return err
		}
		o.work = d
	}
	if !o.keep {
		defer os.RemoveAll(o.work)
	}
	fmt.Printf("benchcluster: %d writes/s for %s; anchor: 1 agent without peers, then %d agents (shared machine: read ratios)\n",
		o.rate, o.duration, o.agents)

	anchor, err := phase(o, 1, false)
	if err != nil {
		return fmt.Errorf("anchor: %w", err)
	}
	clus, err := phase(o, o.agents, true)
	if err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	report(o, anchor, clus)
	return nil
}

// result is one phase's figures.
type result struct {
	agents             int
	sent, ok, failed   int64
	elapsed            time.Duration
	writeP50, writeP99 time.Duration
	lag                []time.Duration
	lagMissing         int
	visible            histogram     // the agents' lag histograms over the write window and drain, summed
	drain              time.Duration // after the last write, until every agent holds every write
	cpu                []float64     // fraction of one core, over the write window
	genCPU             float64       // this process (the load generator), likewise
	rssEnd, rssMax     []int64
}

func phase(o options, n int, clustered bool) (*result, error) {
	dir := filepath.Join(o.work, fmt.Sprintf("phase-%d", n))
	token := randHex(16)
	enc := randHex(32)
	gk := make([]byte, 32)
	_, _ = rand.Read(gk)
	gossipKey := base64.StdEncoding.EncodeToString(gk)
	base, err := freeBase(n)
	if err != nil {
		return nil, err
	}
	var procs []*proc
	defer func() {
		for _, p := range procs {
			p.stop()
		}
	}()
	for i := range n {
		ip := fmt.Sprintf("127.0.0.%d", 41+i)
		args := []string{"agent", "--data-dir", filepath.Join(dir, fmt.Sprintf("m%d", i+1)),
			"--node-name", fmt.Sprintf("m%d", i+1), "--region", fmt.Sprintf("r%d", i+1),
			"--http-addr", net.JoinHostPort(ip, strconv.Itoa(base+3)), "--https-addr", "",
			"--admin-addr", net.JoinHostPort(ip, strconv.Itoa(base+2))}
		if clustered {
			args = append(args, "--app", "bench", "--gossip-preset", "local",
				"--gossip-addr", net.JoinHostPort(ip, strconv.Itoa(base)))
			if i > 0 {
				args = append(args, "--join", net.JoinHostPort("127.0.0.41", strconv.Itoa(base)))
			}
		}
		if o.pprof {
			args = append(args, "--pprof-addr", net.JoinHostPort(ip, strconv.Itoa(base+4)))
			fmt.Printf("m%d pprof: http://%s/debug/pprof/\n", i+1, net.JoinHostPort(ip, strconv.Itoa(base+4)))
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
		p, err := startProc(o.bin, args, []string{"EDGE_ADMIN_TOKEN=" + token, "EDGE_ENCRYPTION_KEY=" + enc, "EDGE_GOSSIP_KEY=" + gossipKey},
			filepath.Join(dir, fmt.Sprintf("m%d.log", i+1)), "http://"+net.JoinHostPort(ip, strconv.Itoa(base+2)), token)
		if err != nil {
			return nil, err
		}
		procs = append(procs, p)
	}
	if clustered {
		if err := waitAll(procs, func(p *proc) bool { return p.connectedPeers() == n-1 }, 2*time.Minute); err != nil {
			return nil, fmt.Errorf("replication streams up: %w", err)
		}
	}
	for i := range o.pools {
		body := map[string]any{"name": fmt.Sprintf("bench-%02d", i), "algorithm": "round_robin",
			"health_check_interval": 3600000}
		if code, b := procs[0].do(http.MethodPost, "/api/pools", body); code != http.StatusCreated {
			return nil, fmt.Errorf("creating pool: %d %s", code, b)
		}
	}
	if err := waitAll(procs, func(p *proc) bool { return p.status("/api/pools/bench-00") == http.StatusOK }, time.Minute); err != nil {
		return nil, err
	}

	res := &result{agents: n}
	var visible0 histogram
	if clustered {
		if visible0, err = visibleLag(procs); err != nil {
			return nil, err
		}
	}
	cpu0 := make([]float64, n)
	for i, p := range procs {
		cpu0[i] = p.cpuSeconds()
	}
	gen0 := selfCPUSeconds()
	res.rssMax = make([]int64, n)
	stopRSS := make(chan struct{})
	var rssWG sync.WaitGroup
	rssWG.Add(1)
	go func() {
		defer rssWG.Done()
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			for i, p := range procs {
				res.rssMax[i] = max(res.rssMax[i], p.rss())
			}
			select {
			case <-stopRSS:
				return
			case <-t.C:
			}
		}
	}()

	var (
		mu       sync.Mutex
		lat      []time.Duration
		lastKeys = map[int]string{} // agent → path of its last acknowledged write
		sampleWG sync.WaitGroup
	)
	jobs := make(chan int, o.conc)
	var workers sync.WaitGroup
	for range o.conc {
		workers.Add(1)
		go func() {
			defer workers.Done()
			for i := range jobs {
				a := i % n
				pool := fmt.Sprintf("bench-%02d", i%o.pools)
				body := map[string]any{"host": fmt.Sprintf("127.%d.%d.%d", 1+(i>>16)&0xff, (i>>8)&0xff, i&0xff), "port": 9}
				t0 := time.Now()
				code, b := procs[a].do(http.MethodPost, "/api/pools/"+pool+"/backends", body)
				d := time.Since(t0)
				acked := time.Now()
				if code != http.StatusCreated {
					atomic.AddInt64(&res.failed, 1)
					continue
				}
				atomic.AddInt64(&res.ok, 1)
				var be struct {
					ID string `json:"id"`
				}
				_ = json.Unmarshal(b, &be)
				path := "/api/pools/" + pool + "/backends/" + be.ID
				mu.Lock()
				lat = append(lat, d)
				lastKeys[a] = path
				mu.Unlock()
				if n > 1 && i%o.sampleEv == 0 {
					sampleWG.Add(1)
					go func() {
						defer sampleWG.Done()
						l, ok := visibleEverywhere(procs, a, path, acked, 30*time.Second)
						mu.Lock()
						if ok {
							res.lag = append(res.lag, l)
						} else {
							res.lagMissing++
						}
						mu.Unlock()
					}()
				}
			}
		}()
	}
	total := int(float64(o.rate) * o.duration.Seconds())
	start := time.Now()
	for i := range total {
		due := start.Add(time.Duration(float64(i) / float64(o.rate) * float64(time.Second)))
		if d := time.Until(due); d > 0 {
			time.Sleep(d)
		}
		// The window is fixed: what the agents could not take in it is
		// reported as not sustained, not sent later.
		if time.Since(start) >= o.duration {
			break
		}
		jobs <- i // blocks while every worker waits for an answer
		res.sent++
	}
	close(jobs)
	workers.Wait()
	res.elapsed = time.Since(start)
	writesDone := time.Now()
	for i, p := range procs {
		res.cpu = append(res.cpu, (p.cpuSeconds()-cpu0[i])/res.elapsed.Seconds())
	}
	res.genCPU = (selfCPUSeconds() - gen0) / res.elapsed.Seconds()
	if n > 1 {
		// Drain: every agent's last acknowledged write readable everywhere.
		deadline := writesDone.Add(2 * time.Minute)
		for _, path := range lastKeys {
			for _, p := range procs {
				for p.status(path) != http.StatusOK && time.Now().Before(deadline) {
					time.Sleep(10 * time.Millisecond)
				}
			}
		}
		res.drain = time.Since(writesDone)
		visible1, err := visibleLag(procs)
		if err != nil {
			return nil, err
		}
		res.visible = visible1.minus(visible0)
	}
	sampleWG.Wait()
	close(stopRSS)
	rssWG.Wait()
	for i, p := range procs {
		res.rssEnd = append(res.rssEnd, p.rss())
		res.rssMax[i] = max(res.rssMax[i], res.rssEnd[i])
	}
	res.writeP50, res.writeP99 = pct(lat, 0.5), pct(lat, 0.99)
	return res, nil
}

// visibleEverywhere polls every agent but the origin until path answers
// 200 and returns the time from acked to the last one. It polls every
// 5 ms for the first 100 ms after the acknowledgement and every 25 ms
// after that: at a thousand writes a second the sampled writes' polls
// were a load of their own on the agents (with 5 ms throughout, about
// 300 GETs a second per agent at a lag of 150 ms), and 25 ms is a
// resolution of 1.25 % of the 2 s goal.
func visibleEverywhere(procs []*proc, origin int, path string, acked time.Time, limit time.Duration) (time.Duration, bool) {
	var last time.Time
	for i, p := range procs {
		if i == origin {
			continue
		}
		for p.status(path) != http.StatusOK {
			since := time.Since(acked)
			if since > limit {
				return 0, false
			}
			if since < 100*time.Millisecond {
				time.Sleep(5 * time.Millisecond)
			} else {
				time.Sleep(25 * time.Millisecond)
			}
		}
		last = time.Now()
	}
	return last.Sub(acked), true
}

func report(o options, anchor, clus *result) {
	fmt.Println()
	fmt.Printf("| metric | %d agents | anchor: 1 agent, no peers | goal |\n|---|---:|---:|---|\n", clus.agents)
	rate := func(r *result) string {
		return fmt.Sprintf("%.0f/s (%d ok, %d failed)", float64(r.ok)/r.elapsed.Seconds(), r.ok, r.failed)
	}
	fmt.Printf("| writes acknowledged (offered %d in %s) | %s | %s | %d/s sustained |\n",
		int(float64(o.rate)*o.duration.Seconds()), o.duration, rate(clus), rate(anchor), o.rate)
	fmt.Printf("| write latency p50 / p99 | %s / %s | %s / %s | |\n", ms(clus.writeP50), ms(clus.writeP99), ms(anchor.writeP50), ms(anchor.writeP99))
	fmt.Printf("| sampled writes, acknowledged to readable on every agent, p50 / p99 / max (%d samples, %d never seen) | %s / %s / %s | n/a | p99 < 2 s |\n",
		len(clus.lag), clus.lagMissing, ms(pct(clus.lag, 0.5)), ms(pct(clus.lag, 0.99)), ms(pct(clus.lag, 1)))
	if v := clus.visible; v.total() > 0 {
		fmt.Printf("| lag of every remote set, commit to feed (agents' histograms, %.0f sets) p50 / p99 / max | %s / %s / ≤ %s | n/a | p99 < 2 s |\n",
			v.total(), secs(v.quantile(0.5)), secs(v.quantile(0.99)), secs(v.maxBound()))
	}
	fmt.Printf("| drain after the last write | %s | n/a | bounded |\n", ms(clus.drain))
	fmt.Printf("| CPU per agent (cores) | %s | %s | |\n", floats(clus.cpu), floats(anchor.cpu))
	fmt.Printf("| load generator CPU (cores, same machine) | %.2f | %.2f | |\n", clus.genCPU, anchor.genCPU)
	fmt.Printf("| RSS per agent at end / max | %s / %s | %s / %s | |\n", mibs(clus.rssEnd), mibs(clus.rssMax), mibs(anchor.rssEnd), mibs(anchor.rssMax))
	var sum, asum float64
	for _, c := range clus.cpu {
		sum += c
	}
	for _, c := range anchor.cpu {
		asum += c
	}
	if asum > 0 {
		fmt.Printf("| CPU, all agents ÷ anchor | %.2f | 1 | |\n", sum/asum)
	}
	perWrite := func(cores float64, r *result) string {
		if r.ok == 0 {
			return "n/a"
		}
		return fmt.Sprintf("%.0f µs", cores*r.elapsed.Seconds()/float64(r.ok)*1e6)
	}
	fmt.Printf("| CPU per acknowledged write, all agents | %s | %s | |\n", perWrite(sum, clus), perWrite(asum, anchor))
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/1e6) }

func secs(s float64) string { return ms(time.Duration(s * float64(time.Second))) }

// histogram is a Prometheus histogram: cumulative counts by upper bound,
// +Inf last.
type histogram struct {
	bounds []float64
	counts []float64
}

const visibleLagMetric = "singularity_edge_replication_visible_lag_seconds_bucket"

// visibleLag reads every agent's lag histogram and sums them.
func visibleLag(procs []*proc) (histogram, error) {
	var sum histogram
	for _, p := range procs {
		code, b := p.do(http.MethodGet, "/metrics", nil)
		if code != http.StatusOK {
			return sum, fmt.Errorf("reading %s/metrics: %d", p.api, code)
		}
		var h histogram
		for _, line := range strings.Split(string(b), "\n") {
			rest, ok := strings.CutPrefix(line, visibleLagMetric+`{le="`)
			if !ok {
				continue
			}
			le, count, ok := strings.Cut(rest, `"} `)
			if !ok {
				return sum, fmt.Errorf("%s/metrics: malformed line %q", p.api, line)
			}
			bound, err1 := strconv.ParseFloat(le, 64)
			n, err2 := strconv.ParseFloat(count, 64)
			if err := errors.Join(err1, err2); err != nil {
				return sum, fmt.Errorf("%s/metrics: line %q: %w", p.api, line, err)
			}
			h.bounds, h.counts = append(h.bounds, bound), append(h.counts, n)
		}
		if len(h.bounds) == 0 {
			return histogram{}, nil // an agent from before the metric: only the polled samples
		}
		if sum.bounds == nil {
			sum = histogram{bounds: h.bounds, counts: make([]float64, len(h.counts))}
		}
		if len(h.bounds) != len(sum.bounds) {
			return sum, fmt.Errorf("%s/metrics: %d buckets, another agent has %d", p.api, len(h.bounds), len(sum.bounds))
		}
		for i, c := range h.counts {
			sum.counts[i] += c
		}
	}
	return sum, nil
}

func (h histogram) minus(o histogram) histogram {
	out := histogram{bounds: h.bounds, counts: make([]float64, len(h.counts))}
	for i := range h.counts {
		out.counts[i] = h.counts[i] - o.counts[i]
	}
	return out
}

func (h histogram) total() float64 {
	if len(h.counts) == 0 {
		return 0
	}
	return h.counts[len(h.counts)-1]
}

// quantile interpolates linearly inside the bucket that holds it, as
// PromQL's histogram_quantile does.
func (h histogram) quantile(q float64) float64 {
	rank := q * h.total()
	lower, below := 0.0, 0.0
	for i, c := range h.counts {
		if c >= rank {
			if math.IsInf(h.bounds[i], 1) {
				return lower
			}
			if c == below {
				return h.bounds[i]
			}
			return lower + (h.bounds[i]-lower)*(rank-below)/(c-below)
		}
		lower, below = h.bounds[i], c
	}
	return lower
}

// maxBound is the upper bound of the highest non-empty bucket.
func (h histogram) maxBound() float64 {
	for i, c := range h.counts {
		if c == h.total() {
			return h.bounds[i]
		}
	}
	return math.Inf(1)
}

func floats(fs []float64) string {
	var s []string
	for _, f := range fs {
		s = append(s, fmt.Sprintf("%.2f", f))
	}
	return strings.Join(s, ", ")
}

func mibs(bs []int64) string {
	var s []string
	for _, b := range bs {
		s = append(s, fmt.Sprintf("%.0f", float64(b)/(1<<20)))
	}
	return strings.Join(s, ", ") + " MiB"
}

func pct(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[min(len(s)-1, int(float64(len(s))*q))]
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// freeBase is a port base with base..base+4 free on every agent address.
func freeBase(n int) (int, error) {
	for range 200 {
		r, _ := rand.Int(rand.Reader, big.NewInt(20000))
		base := 20000 + int(r.Int64())
		ok := true
		var closers []io.Closer
		for i := range n {
			for p := base; p < base+5 && ok; p++ {
				addr := net.JoinHostPort(fmt.Sprintf("127.0.0.%d", 41+i), strconv.Itoa(p))
				l, err := net.Listen("tcp", addr)
				if err != nil {
					ok = false
					break
				}
				closers = append(closers, l)
				u, err := net.ListenPacket("udp", addr)
				if err != nil {
					ok = false
					break
				}
				closers = append(closers, u)
			}
		}
		for _, c := range closers {
			c.Close()
		}
		if ok {
			return base, nil
		}
	}
	return 0, errors.New("no free ports")
}

// proc is one agent process.
type proc struct {
	cmd    *exec.Cmd
	api    string
	token  string
	client *http.Client
	exited chan struct{}
	log    string
}

func startProc(bin string, args, env []string, logPath, api, token string) (*proc, error) {
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	p := &proc{api: api, token: token, log: logPath, exited: make(chan struct{}),
		client: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 256, MaxConnsPerHost: 0}}}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = lf, lf
	if err := p.cmd.Start(); err != nil {
		lf.Close()
		return nil, err
	}
	go func() { _ = p.cmd.Wait(); lf.Close(); close(p.exited) }()
	deadline := time.Now().Add(2 * time.Minute)
	for p.status("/api/health") != http.StatusOK {
		select {
		case <-p.exited:
			return nil, fmt.Errorf("agent exited; see %s", logPath)
		default:
		}
		if time.Now().After(deadline) {
			p.stop()
			return nil, fmt.Errorf("agent not ready after 2 minutes; see %s", logPath)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return p, nil
}

func (p *proc) stop() {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.exited:
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

func (p *proc) do(method, path string, body any) (int, []byte) {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, p.api+path, rd)
	req.Header.Set("Authorization", "Bearer "+p.token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return 0, []byte(err.Error())
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func (p *proc) status(path string) int {
	code, _ := p.do(http.MethodGet, path, nil)
	return code
}

func (p *proc) connectedPeers() int {
	code, b := p.do(http.MethodGet, "/api/cluster", nil)
	if code != http.StatusOK {
		return -1
	}
	var c struct {
		Members []struct {
			Self        bool `json:"self"`
			Replication *struct {
				Connected bool `json:"connected"`
			} `json:"replication"`
		} `json:"members"`
	}
	if json.Unmarshal(b, &c) != nil {
		return -1
	}
	n := 0
	for _, m := range c.Members {
		if !m.Self && m.Replication != nil && m.Replication.Connected {
			n++
		}
	}
	return n
}

func waitAll(procs []*proc, cond func(*proc) bool, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for _, p := range procs {
		for !cond(p) {
			if time.Now().After(deadline) {
				return fmt.Errorf("timed out after %s; see %s", limit, p.log)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return nil
}

// cpuSeconds is the process's user+system CPU time (clock ticks of 1/100 s).
func (p *proc) cpuSeconds() float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	u, _ := strconv.ParseFloat(f[11], 64)
	k, _ := strconv.ParseFloat(f[12], 64)
	return (u + k) / 100
}

// selfCPUSeconds is this process's user and system CPU time.
func selfCPUSeconds() float64 {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

func (p *proc) rss() int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		return -1
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return -1
}
