// Command benchscale measures one agent loaded at scale: it generates pools,
// backends and ECDSA certificates, imports them with `db import`, starts the
// agent and reports time to ready, memory, CPU at rest, admin API latency,
// /metrics size and proxy latency beside the goals of issue 13.
//
// `make bench-scale` runs it with the full size (1,000 pools x 1,000
// backends, 100,000 certificates); -pools, -backends and -certs shrink it.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/singularity-ng/singularity-edge/storage"
)

type options struct {
	bin          string
	work         string
	pools        int
	backends     int
	certs        int
	settle       time.Duration
	cpuWindow    time.Duration
	loadFor      time.Duration
	conc         int
	samples      int
	keep         bool
	reuse        bool
	pprofAddr    string
	prepareOnly  bool
	upstreamPort int
	agentArgs    string
}

func main() {
	var o options
	flag.StringVar(&o.bin, "bin", "bin/singularity-edge", "agent binary")
	flag.StringVar(&o.work, "work", "", "work directory (default: a new temporary directory)")
	flag.IntVar(&o.pools, "pools", 1000, "pools")
	flag.IntVar(&o.backends, "backends", 1000, "backends per pool")
	flag.IntVar(&o.certs, "certs", 100_000, "ECDSA certificates")
	flag.DurationVar(&o.settle, "settle", time.Minute, "time between the first and the second RSS reading")
	flag.DurationVar(&o.cpuWindow, "cpu-window", 10*time.Second, "window over which CPU at rest is measured")
	flag.DurationVar(&o.loadFor, "load", 10*time.Second, "proxy load duration per agent")
	flag.IntVar(&o.conc, "concurrency", 16, "proxy load connections")
	flag.IntVar(&o.samples, "samples", 200, "admin API requests per operation")
	flag.BoolVar(&o.keep, "keep", false, "keep the work directory")
	flag.BoolVar(&o.reuse, "reuse", false, "reuse the data directory in -work if it is already imported")
	flag.StringVar(&o.pprofAddr, "pprof-addr", "", "pass --pprof-addr to the loaded agent (loopback)")
	flag.IntVar(&o.upstreamPort, "upstream-port", 18099, "port of the measured pool's upstreams (fixed, so that -reuse finds them)")
	flag.StringVar(&o.agentArgs, "agent-args", "", "extra flags for the loaded agent, space-separated (e.g. --health-check-budget 5000)")
	flag.BoolVar(&o.prepareOnly, "prepare-only", false, "generate and import into -work, then stop (run again with -reuse)")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "benchscale:", err)
		os.Exit(1)
	}
}

// result is one line of the report.
type result struct{ what, measured, goal string }

func run(o options) error {
	bin, err := filepath.Abs(o.bin)
	if err != nil {
		return err
	}
	o.bin = bin
	if o.work == "" {
		if o.work, err = os.MkdirTemp("", "edge-bench-scale."); err != nil {
			return err
		}
		if !o.keep {
			defer os.RemoveAll(o.work)
		}
	}
	// The store's key is kept beside it, so that -reuse can open it again.
	keyFile := filepath.Join(o.work, "encryption-key")
	keyHex := os.Getenv("EDGE_ENCRYPTION_KEY")
	if b, err := os.ReadFile(keyFile); err == nil && keyHex == "" {
		keyHex = strings.TrimSpace(string(b))
	}
	if keyHex == "" {
		k := make([]byte, 32)
		_, _ = rand.Read(k)
		keyHex = hex.EncodeToString(k)
	}
	if err := os.WriteFile(keyFile, []byte(keyHex+"\n"), 0o600); err != nil {
		return err
	}
	token := "bench-scale-token"
	env := append(os.Environ(), "EDGE_ENCRYPTION_KEY="+keyHex, "EDGE_ADMIN_TOKEN="+token)

	// Upstreams for the measured pool: one plain HTTP listener per backend,
	// each on its own loopback address (a pool refuses two backends at one
	// address).
	ups, stopUps, err := startUpstreams(o.backends, o.upstreamPort)
	if err != nil {
		return err
	}
	defer stopUps()

	var results []result
	add := func(what, measured, goal string) {
		results = append(results, result{what, measured, goal})
		fmt.Printf("  %-44s %s\n", what, measured)
	}

	data := filepath.Join(o.work, "data")
	export := filepath.Join(o.work, "export.jsonl")
	if _, err := os.Stat(filepath.Join(data, "CURRENT")); !(o.reuse && err == nil) {
		start := time.Now()
		n, err := generate(o, keyHex, ups, export)
		if err != nil {
			return fmt.Errorf("generate: %w", err)
		}
		fmt.Printf("generated %d rows in %s\n", n, time.Since(start).Round(time.Millisecond))
		start = time.Now()
		cmd := exec.Command(o.bin, "db", "import", "--data-dir", data, export)
		cmd.Env, cmd.Stdout, cmd.Stderr = env, os.Stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("db import: %w", err)
		}
		add("db import", time.Since(start).Round(time.Millisecond).String(), "")
		_ = os.Remove(export)
	}
	if o.prepareOnly {
		return nil
	}

	a, err := startAgent(o, env, data, token, o.pprofAddr, strings.Fields(o.agentArgs)...)
	if err != nil {
		return err
	}
	defer a.stop()
	add("start until /api/health ready", a.ready.Round(time.Millisecond).String(), "≤ 5 s")
	// Wall time depends on what else the machine runs; the CPU the agent
	// spent getting ready does not.
	add("CPU time spent until ready", fmt.Sprintf("%.1f s", a.readyCPU), "")
	// The certificate index loads after readiness (handshakes wait for
	// it): the figures at rest are taken once it has.
	if d, cpu, err := a.waitLog("certificate cache loaded", 5*time.Minute); err != nil {
		add("certificate index loaded", "error: "+err.Error(), "")
	} else {
		add("certificate index loaded (from start)", fmt.Sprintf("%s, CPU %.1f s", d.Round(time.Millisecond), cpu), "")
	}
	// The checksum verification of every family runs after readiness,
	// beside the certificate index.
	// (An agent that verifies at Open, before readiness, never logs it.)
	if d, _, err := a.waitLog("every column family verified", 90*time.Second); err != nil {
		add("store verified (from start)", "not logged: verified at Open", "")
	} else {
		add("store verified (from start)", d.Round(time.Millisecond).String(), "")
	}
	// The start-up garbage is handed back once the index has loaded.
	if _, _, err := a.waitLog("start-up garbage returned", time.Minute); err != nil {
		add("start-up garbage returned", "error: "+err.Error(), "")
	}
	time.Sleep(5 * time.Second)
	rss0 := a.rss()
	add("RSS at rest (5 s after the start-up garbage is returned)", mib(rss0), "≤ 1 GiB")
	if o.pprofAddr != "" {
		// Profiles of the agent at rest, for `go tool pprof`.
		go fetch("http://"+o.pprofAddr+"/debug/pprof/profile?seconds="+strconv.Itoa(int(o.cpuWindow.Seconds())), filepath.Join(o.work, "cpu-rest.pb.gz"))
	}
	cpu := a.cpu(o.cpuWindow)
	if o.pprofAddr != "" {
		fetch("http://"+o.pprofAddr+"/debug/pprof/heap", filepath.Join(o.work, "heap-rest.pb.gz"))
	}
	add(fmt.Sprintf("CPU at rest (%s window)", o.cpuWindow), fmt.Sprintf("%.1f %% of a core", cpu*100), "the check budget; idle otherwise")

	pool := poolName(0)
	size, lines, took, err := a.scrape()
	if err != nil {
		add("/metrics", "error: "+err.Error(), "≤ 5 MB, ≤ 1 s")
	} else {
		add("/metrics size, series lines, scrape time", fmt.Sprintf("%.2f MB, %d lines, %s", float64(size)/1e6, lines, ms(took)), "≤ 5 MB, ≤ 1 s")
	}
	loaded, err := proxyLatency(a.httpAddr, pool, o.conc, o.loadFor)
	if err != nil {
		return fmt.Errorf("proxy load: %w", err)
	}
	if wait := o.settle - time.Since(a.readyAt); wait > 0 {
		time.Sleep(wait)
	}
	add(fmt.Sprintf("RSS %s after ready", o.settle), mib(a.rss()), "≤ 1 GiB")
	add("unhealthy log lines since start", strconv.Itoa(a.logLines("backend")), "one per pool per burst")
	// The admin API last: its reads can keep the agent busy after a
	// client gave up, which would blur the figures above.
	ops := []struct{ name, method, path string }{
		{"GET /api/pools?limit=10", "GET", "/api/pools?limit=10"},
		{"GET /api/pools/{name}", "GET", "/api/pools/" + pool},
		{"GET /api/pools/{name}/backends?limit=10", "GET", "/api/pools/" + pool + "/backends?limit=10"},
		{"PATCH /api/pools/{name}/backends/{id}", "PATCH", "/api/pools/" + pool + "/backends/" + backendID(0, 1)},
	}
	for _, op := range ops {
		p50, p99, err := a.adminLatency(op.method, op.path, o.samples)
		if err != nil {
			msg := "error: " + err.Error()
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				msg = "no answer within 10 s"
			}
			add(op.name, msg, "p99 ≤ 50 ms")
			continue
		}
		add(op.name+" p50 / p99", fmt.Sprintf("%s / %s", ms(p50), ms(p99)), "p99 ≤ 50 ms")
	}
	a.stop()

	// The same pool on an otherwise empty agent.
	small := o
	small.pools, small.backends, small.certs = 1, o.backends, 0
	sdata := filepath.Join(o.work, "data-empty")
	_ = os.RemoveAll(sdata)
	if _, err := generate(small, keyHex, ups, export); err != nil {
		return err
	}
	cmd := exec.Command(o.bin, "db", "import", "--data-dir", sdata, export)
	cmd.Env, cmd.Stderr = env, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("db import (empty agent): %w", err)
	}
	b, err := startAgent(o, env, sdata, token, "")
	if err != nil {
		return err
	}
	defer b.stop()
	time.Sleep(2 * time.Second)
	empty, err := proxyLatency(b.httpAddr, pool, o.conc, o.loadFor)
	if err != nil {
		return fmt.Errorf("proxy load (empty agent): %w", err)
	}
	b.stop()
	add("proxy p50 / p99, loaded agent", fmt.Sprintf("%s / %s (%.0f req/s)", ms(loaded.p50), ms(loaded.p99), loaded.rps), "beside the empty agent")
	add("proxy p50 / p99, empty agent", fmt.Sprintf("%s / %s (%.0f req/s)", ms(empty.p50), ms(empty.p99), empty.rps), "")

	fmt.Printf("\n%d pools x %d backends, %d certificates; GOMAXPROCS %d\n\n", o.pools, o.backends, o.certs, runtime.GOMAXPROCS(0))
	fmt.Printf("| %s | %s | %s |\n|---|---|---|\n", "measure", "measured", "goal")
	for _, r := range results {
		fmt.Printf("| %s | %s | %s |\n", r.what, r.measured, r.goal)
	}
	return nil
}

func poolName(i int) string     { return fmt.Sprintf("pool-%04d", i) }
func backendID(p, i int) string { return fmt.Sprintf("p%04d-b%04d", p, i) }
func mib(b int64) string        { return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)) }
func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/1e6) }
func percentile(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	slices.Sort(d)
	return d[min(len(d)-1, int(q*float64(len(d))))]
}

// --- data generation ---

// generate writes an export: the certificates through a scratch store (so
// their keys are sealed exactly as an agent seals them), then pools and
// backends as JSON lines. Pool 0's backends point at the upstreams; every
// other backend at its own loopback address where nothing listens.
func generate(o options, keyHex string, ups []string, out string) (int, error) {
	key, err := storage.ParseEncryptionKey(keyHex)
	if err != nil {
		return 0, err
	}
	scratch, err := os.MkdirTemp(o.work, "scratch.")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(scratch)
	cfg := storage.DefaultConfig()
	cfg.Dir = scratch
	cfg.EncryptionKey = key
	st, err := storage.Open(cfg)
	if err != nil {
		return 0, err
	}
	defer st.Close()
	if o.certs > 0 {
		fmt.Printf("generating %d ECDSA certificates\n", o.certs)
		if err := generateCerts(context.Background(), st, o.certs); err != nil {
			return 0, err
		}
	}
	f, err := os.Create(out)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	w := bufio.NewWriterSize(f, 1<<20)
	n, err := st.Export(context.Background(), w)
	if err != nil {
		return 0, err
	}
	origin := st.NodeID()
	hlc := storage.HLC(uint64(time.Now().UnixMilli()) << 16)
	seq := uint64(1)
	line := func(table, key string, row any) error {
		b, err := json.Marshal(row)
		if err != nil {
			return err
		}
		seq++
		hlc++
		l := map[string]any{"table": table, "key": key, "version": storage.Version{HLC: hlc, Origin: origin, Seq: seq}, "row": json.RawMessage(b)}
		enc, err := json.Marshal(l)
		if err != nil {
			return err
		}
		_, err = w.Write(append(enc, '\n'))
		n++
		return err
	}
	now := time.Now().UTC()
	for p := range o.pools {
		name := poolName(p)
		pool := storage.Pool{
			Name: name, Algorithm: "round_robin", SSLMode: "off",
			Hosts:               []string{name + ".bench.test"},
			HealthCheckInterval: 10 * time.Second,
			HealthCheck:         storage.HealthCheck{Type: "tcp", Timeout: 2 * time.Second, Rise: 2, Fall: 3, MaxFails: 3, Cooldown: 10 * time.Second},
			InsertedAt:          now, UpdatedAt: now,
		}
		if err := line(storage.TablePools, name, pool); err != nil {
			return 0, err
		}
		for b := range o.backends {
			id := backendID(p, b)
			host, port := "", 9
			if p == 0 {
				h, ps, _ := net.SplitHostPort(ups[b%len(ups)])
				host = h
				port, _ = strconv.Atoi(ps)
			} else {
				// A distinct loopback address per backend: refused at once.
				k := p*o.backends + b
				host = fmt.Sprintf("127.%d.%d.%d", 1+k>>16, (k>>8)&0xff, k&0xff)
			}
			be := storage.Backend{ID: id, PoolName: name, Host: host, Port: port, Scheme: "http", Weight: 1, Region: "local",
				InsertedAt: now, UpdatedAt: now}
			if err := line(storage.TableBackends, id, be); err != nil {
				return 0, err
			}
		}
	}
	return n, w.Flush()
}

// generateCerts stores n ECDSA P-256 leaf certificates, each with its own
// key and two names, issued by one intermediate (as Let's Encrypt's are).
func generateCerts(ctx context.Context, st *storage.Store, n int) error {
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Bench Intermediate E1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(5 * 365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	ca, _ := x509.ParseCertificate(caDER)
	chainPEM := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}))

	type made struct {
		i    int
		cert storage.Certificate
	}
	jobs := make(chan int)
	outc := make(chan made, 256)
	var wg sync.WaitGroup
	var firstErr atomic.Value
	for range runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			for i := range jobs {
				c, err := makeCert(i, ca, caKey, chainPEM)
				if err != nil {
					firstErr.CompareAndSwap(nil, err)
					continue
				}
				outc <- made{i, c}
			}
		})
	}
	go func() {
		for i := range n {
			jobs <- i
		}
		close(jobs)
		wg.Wait()
		close(outc)
	}()
	batch := make([]storage.Certificate, 0, 500)
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		_, err := st.Update(ctx, func(tx *storage.Tx) error {
			for i := range batch {
				if err := tx.PutCertificate(&batch[i]); err != nil {
					return err
				}
			}
			return nil
		})
		batch = batch[:0]
		return err
	}
	for m := range outc {
		batch = append(batch, m.cert)
		if len(batch) == cap(batch) {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	if err, _ := firstErr.Load().(error); err != nil {
		return err
	}
	return flush()
}

func makeCert(i int, ca *x509.Certificate, caKey *ecdsa.PrivateKey, chainPEM string) (storage.Certificate, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return storage.Certificate{}, err
	}
	domain := fmt.Sprintf("site-%06d.bench.test", i)
	names := []string{domain, "www." + domain}
	notBefore := time.Now().Add(-24 * time.Hour)
	notAfter := notBefore.Add(90 * 24 * time.Hour).Add(time.Duration(i) * time.Second)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(int64(i) + 2), Subject: pkix.Name{CommonName: domain}, DNSNames: names,
		NotBefore: notBefore, NotAfter: notAfter,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
	if err != nil {
		return storage.Certificate{}, err
	}
	kder, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return storage.Certificate{}, err
	}
	sum := sha256.Sum256(der)
	return storage.Certificate{
		ID: fmt.Sprintf("cert-%06d", i), Domain: domain, Names: names,
		CertificatePEM: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		PrivateKeyPEM:  string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})),
		ChainPEM:       chainPEM, Issuer: ca.Subject.CommonName, NotBefore: notBefore, ExpiresAt: notAfter,
		Provider: "upload", Fingerprint: hex.EncodeToString(sum[:]),
	}, nil
}

// --- upstreams ---

func startUpstreams(n, port int) ([]string, func(), error) {
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok\n")
	}), ReadHeaderTimeout: 5 * time.Second}
	var lns []net.Listener
	for i := range n {
		ln, err := net.Listen("tcp", net.JoinHostPort(fmt.Sprintf("127.200.%d.%d", (i+1)>>8, (i+1)&0xff), strconv.Itoa(port)))
		if err != nil {
			for _, l := range lns {
				_ = l.Close()
			}
			return nil, nil, err
		}
		lns = append(lns, ln)
	}
	addrs := make([]string, 0, n)
	for _, ln := range lns {
		go func() { _ = srv.Serve(ln) }()
		addrs = append(addrs, ln.Addr().String())
	}
	return addrs, func() { _ = srv.Close() }, nil
}

// --- the agent under test ---

type agentProc struct {
	cmd       *exec.Cmd
	token     string
	admin     string
	httpAddr  string
	ready     time.Duration
	readyCPU  float64 // CPU seconds spent until ready
	readyAt   time.Time
	startedAt time.Time
	log       *bytes.Buffer
	logMu     *sync.Mutex
	stopOnce  sync.Once
	clockTick float64
	exited    chan struct{} // closed when the process has exited
	logFile   *os.File
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func freePort() string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func startAgent(o options, env []string, data, token, pprofAddr string, extra ...string) (*agentProc, error) {
	a := &agentProc{token: token, admin: freePort(), httpAddr: freePort(), log: &bytes.Buffer{}, logMu: &sync.Mutex{}, clockTick: 100}
	args := []string{"agent", "--data-dir", data, "--http-addr", a.httpAddr, "--https-addr", "",
		"--admin-addr", a.admin}
	if pprofAddr != "" {
		args = append(args, "--pprof-addr", pprofAddr)
	}
	args = append(args, extra...)
	a.cmd = exec.Command(o.bin, args...)
	a.cmd.Env = env
	lw := lockedWriter{a.logMu, a.log}
	logFile, err := os.Create(data + ".log")
	if err != nil {
		return nil, err
	}
	mw := io.MultiWriter(lw, logFile)
	a.cmd.Stdout, a.cmd.Stderr = mw, mw
	start := time.Now()
	a.startedAt = start
	a.logFile = logFile
	if err := a.cmd.Start(); err != nil {
		return nil, err
	}
	a.exited = make(chan struct{})
	go func() {
		_ = a.cmd.Wait()
		_ = a.logFile.Close()
		close(a.exited)
	}()
	deadline := time.Now().Add(3 * time.Minute)
	for {
		resp, err := http.Get("http://" + a.admin + "/api/health")
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			a.stop()
			return nil, fmt.Errorf("agent not ready after 3 minutes; log:\n%s", a.tail())
		}
		select {
		case <-a.exited:
			return nil, fmt.Errorf("agent exited; log:\n%s", a.tail())
		default:
		}
		time.Sleep(20 * time.Millisecond)
	}
	a.readyAt = time.Now()
	a.ready = a.readyAt.Sub(start)
	a.readyCPU = a.cpuTicks() / a.clockTick
	return a, nil
}

// waitLog waits until the agent's log has a line containing msg and
// returns the time since the agent started and its CPU seconds then.
func (a *agentProc) waitLog(msg string, limit time.Duration) (time.Duration, float64, error) {
	deadline := time.Now().Add(limit)
	for {
		a.logMu.Lock()
		found := bytes.Contains(a.log.Bytes(), []byte(msg))
		a.logMu.Unlock()
		if found {
			return time.Since(a.startedAt), a.cpuTicks() / a.clockTick, nil
		}
		if time.Now().After(deadline) {
			return 0, 0, fmt.Errorf("no %q in the log after %s", msg, limit)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (a *agentProc) tail() string {
	a.logMu.Lock()
	defer a.logMu.Unlock()
	b := a.log.Bytes()
	return string(b[max(0, len(b)-4000):])
}

func (a *agentProc) logLines(substr string) int {
	a.logMu.Lock()
	defer a.logMu.Unlock()
	n := 0
	for l := range strings.SplitSeq(a.log.String(), "\n") {
		if strings.Contains(l, substr) && strings.Contains(l, "unhealthy") {
			n++
		}
	}
	return n
}

func (a *agentProc) stop() {
	a.stopOnce.Do(func() {
		_ = a.cmd.Process.Signal(os.Interrupt)
		select {
		case <-a.exited:
		case <-time.After(30 * time.Second):
			_ = a.cmd.Process.Kill()
			<-a.exited
		}
	})
}

func (a *agentProc) rss() int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", a.cmd.Process.Pid))
	if err != nil {
		return -1
	}
	for l := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return -1
}

// cpuTicks is utime+stime of the agent in clock ticks.
func (a *agentProc) cpuTicks() float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", a.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	u, _ := strconv.ParseFloat(f[11], 64)
	k, _ := strconv.ParseFloat(f[12], 64)
	return u + k
}

// cpu is the agent's CPU use over window, as a fraction of one core.
func (a *agentProc) cpu(window time.Duration) float64 {
	t0, w0 := a.cpuTicks(), time.Now()
	time.Sleep(window)
	return (a.cpuTicks() - t0) / a.clockTick / time.Since(w0).Seconds()
}

func (a *agentProc) adminLatency(method, path string, n int) (p50, p99 time.Duration, err error) {
	c := &http.Client{Timeout: 10 * time.Second}
	var d []time.Duration
	for i := range n {
		var body io.Reader
		if method == "PATCH" {
			body = strings.NewReader(fmt.Sprintf(`{"weight":%d}`, 1+i%5))
		}
		req, _ := http.NewRequest(method, "http://"+a.admin+path, body)
		req.Header.Set("Authorization", "Bearer "+a.token)
		if body != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		start := time.Now()
		resp, err := c.Do(req)
		if err != nil {
			// One timeout says enough; the next samples would only add
			// minutes to the run.
			return 0, 0, err
		}
		b, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		d = append(d, time.Since(start))
		if resp.StatusCode >= 300 {
			return 0, 0, fmt.Errorf("%s %s: %d %s", method, path, resp.StatusCode, bytes.TrimSpace(b[:min(len(b), 200)]))
		}
	}
	return percentile(d, 0.5), percentile(d, 0.99), nil
}

func (a *agentProc) scrape() (size, lines int, took time.Duration, err error) {
	req, _ := http.NewRequest("GET", "http://"+a.admin+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+a.token)
	start := time.Now()
	resp, err := (&http.Client{Timeout: 2 * time.Minute}).Do(req)
	if err != nil {
		return 0, 0, 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	took = time.Since(start)
	if err != nil {
		return 0, 0, 0, err
	}
	for l := range bytes.SplitSeq(b, []byte("\n")) {
		if len(l) > 0 && l[0] != '#' {
			lines++
		}
	}
	return len(b), lines, took, nil
}

type loadResult struct {
	p50, p99 time.Duration
	rps      float64
}

// proxyLatency sends GETs for pool's host through the proxy from conc
// keep-alive connections for d.
func proxyLatency(addr, pool string, conc int, d time.Duration) (loadResult, error) {
	tr := &http.Transport{MaxIdleConnsPerHost: conc, MaxConnsPerHost: conc}
	c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	defer tr.CloseIdleConnections()
	var mu sync.Mutex
	var all []time.Duration
	var failed atomic.Int64
	stop := time.Now().Add(d)
	var wg sync.WaitGroup
	for range conc {
		wg.Go(func() {
			var mine []time.Duration
			for time.Now().Before(stop) {
				req, _ := http.NewRequest("GET", "http://"+addr+"/", nil)
				req.Host = pool + ".bench.test"
				start := time.Now()
				resp, err := c.Do(req)
				if err != nil {
					failed.Add(1)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				_ = resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					failed.Add(1)
					continue
				}
				mine = append(mine, time.Since(start))
			}
			mu.Lock()
			all = append(all, mine...)
			mu.Unlock()
		})
	}
	wg.Wait()
	if len(all) == 0 {
		return loadResult{}, errors.New("no request succeeded")
	}
	if f := failed.Load(); f > int64(len(all))/100 {
		return loadResult{}, fmt.Errorf("%d of %d requests failed", f, f+int64(len(all)))
	}
	return loadResult{p50: percentile(all, 0.5), p99: percentile(all, 0.99), rps: float64(len(all)) / d.Seconds()}, nil
}

// fetch saves url's body to path, best effort (profiles are a by-product).
func fetch(url, path string) {
	resp, err := http.Get(url)
	if err != nil {
		fmt.Fprintln(os.Stderr, "profile:", err)
		return
	}
	defer resp.Body.Close()
	f, err := os.Create(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, "profile:", err)
		return
	}
	defer f.Close()
	_, _ = io.Copy(f, resp.Body)
}
