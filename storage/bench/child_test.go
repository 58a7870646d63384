package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strconv"
	"time"

	"github.com/singularity-ng/singularity-edge/storage"
)

// Memory is measured in a child process (this test binary run again with
// childModeEnv set) so that the parent's heap, its other data sets and its
// other RocksDB instances do not count: the child holds one store and
// nothing else, as an agent would.
const (
	childModeEnv  = "STORAGE_BENCH_CHILD"
	childDirEnv   = "STORAGE_BENCH_DIR"
	childCacheEnv = "STORAGE_BENCH_CACHE"
	childRowsEnv  = "STORAGE_BENCH_ROWS" // backends to load (load mode)

	modeLoadBackends = "load-backends" // create the 1M-backend store, then scan it
	modeScanStore    = "scan-store"    // open the store, scan it, read at random
	modeScanRaw      = "scan-raw"      // the same on the anchor database
	modeEmptyStore   = "empty-store"   // open a new, empty store: the fixed cost
	modeEmptyRaw     = "empty-raw"     // the same for the anchor
)

// memStage is the process's memory at one point of a child run.
type memStage struct {
	Stage string `json:"stage"`
	RSS   uint64 `json:"rss"`
	HWM   uint64 `json:"hwm"` // peak RSS so far
	// GoResident is what the Go runtime holds from the OS (Sys minus the
	// heap it released): the part of RSS that is not RocksDB.
	GoResident uint64 `json:"go_resident"`
	CacheUsage uint64 `json:"cache_usage"` // RocksDB block cache
	Memtables  uint64 `json:"memtables"`
}

// childReport is what a child prints (one JSON line on stdout).
type childReport struct {
	Mode        string     `json:"mode"`
	CacheBytes  int64      `json:"cache_bytes"`
	Rows        int        `json:"rows"`
	LoadSeconds float64    `json:"load_seconds"`
	OpenSeconds float64    `json:"open_seconds"`
	ScanSeconds float64    `json:"scan_seconds"`
	Stages      []memStage `json:"stages"`
}

func (r childReport) stage(name string) memStage {
	for _, s := range r.Stages {
		if s.Stage == name {
			return s
		}
	}
	return memStage{}
}

// Stage names.
const (
	stageAfterLoad    = "after load"
	stageAfterFreeOS  = "after load, Go heap returned to the OS"
	stageAfterOpen    = "after open"
	stageAfterScan    = "after full scan"
	stageAfterRandom  = "after random reads"
	stageAfterClose   = "after Close"
	randomReads       = 100_000
	randomPoolQueries = 200
)

// runChild runs this binary in child mode and returns its report.
func runChild(ctx context.Context, mode, dir string, cache int64) (childReport, error) {
	return runChildRows(ctx, mode, dir, cache, numBackends)
}

// runChildRows is runChild with the number of backends the load mode writes.
func runChildRows(ctx context.Context, mode, dir string, cache int64, rows int) (childReport, error) {
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childModeEnv+"="+mode, childDirEnv+"="+dir, childCacheEnv+"="+strconv.FormatInt(cache, 10),
		childRowsEnv+"="+strconv.Itoa(rows))
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return childReport{}, fmt.Errorf("child %s: %w", mode, err)
	}
	lines := bytes.Split(bytes.TrimSpace(out), []byte("\n"))
	var rep childReport
	if err := json.Unmarshal(lines[len(lines)-1], &rep); err != nil {
		return childReport{}, fmt.Errorf("child %s: report: %w (output %q)", mode, err, out)
	}
	return rep, nil
}

// childMain is the child's whole life; it returns the exit code.
func childMain(mode string) int {
	cache, err := strconv.ParseInt(os.Getenv(childCacheEnv), 10, 64)
	if err != nil {
		fmt.Fprintln(os.Stderr, "child: bad", childCacheEnv, err)
		return 2
	}
	rows, err := strconv.Atoi(os.Getenv(childRowsEnv))
	if err != nil || rows <= 0 || rows%batchRows != 0 {
		fmt.Fprintln(os.Stderr, "child: bad", childRowsEnv, os.Getenv(childRowsEnv))
		return 2
	}
	rep := childReport{Mode: mode, CacheBytes: cache, Rows: rows}
	dir := os.Getenv(childDirEnv)
	ctx := context.Background()
	switch mode {
	case modeLoadBackends:
		err = childLoadBackends(ctx, dir, &rep)
	case modeScanStore:
		err = childScanStore(ctx, dir, &rep)
	case modeScanRaw:
		err = childScanRaw(dir, &rep)
	case modeEmptyStore:
		err = childEmptyStore(ctx, dir, &rep)
	case modeEmptyRaw:
		err = childEmptyRaw(dir, &rep)
	default:
		err = fmt.Errorf("unknown mode %q", mode)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "child", mode+":", err)
		return 1
	}
	b, err := json.Marshal(rep)
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 1
	}
	fmt.Println(string(b))
	return 0
}

func measure(name string, cacheUsage, memtables uint64) (memStage, error) {
	st, err := procStatus("VmRSS", "VmHWM")
	if err != nil {
		return memStage{}, err
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return memStage{Stage: name, RSS: st["VmRSS"], HWM: st["VmHWM"], GoResident: ms.Sys - ms.HeapReleased,
		CacheUsage: cacheUsage, Memtables: memtables}, nil
}

func storeMemory(ctx context.Context, st *storage.Store) (cache, memtables uint64, err error) {
	stats, err := st.TableStats(ctx)
	if err != nil {
		return 0, 0, err
	}
	for _, t := range stats {
		cache = t.BlockCacheUsage
		memtables += t.MemtableBytes
	}
	return cache, memtables, nil
}

func (r *childReport) measureStore(ctx context.Context, st *storage.Store, name string) error {
	cache, mt, err := storeMemory(ctx, st)
	if err != nil {
		return err
	}
	m, err := measure(name, cache, mt)
	if err != nil {
		return err
	}
	r.Stages = append(r.Stages, m)
	return nil
}

func openBenchStore(dir string, cache int64) (*storage.Store, error) {
	cfg := storage.DefaultConfig()
	cfg.Dir, cfg.BlockCacheSize = dir, cache
	return storage.Open(cfg)
}

// loadBackends writes the pools and backends 0..rows-1, batchRows per
// commit, and returns how long the backends took.
func loadBackends(ctx context.Context, st *storage.Store, rows int) (time.Duration, error) {
	_, err := st.Update(ctx, func(tx *storage.Tx) error {
		for p := range numPools {
			pool := makePool(p)
			if err := tx.PutPool(&pool); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	recs := make([]storage.Backend, batchRows)
	start := time.Now()
	for first := 0; first < rows; first += batchRows {
		for j := range recs {
			recs[j] = makeBackend(first + j)
		}
		_, err := st.Update(ctx, func(tx *storage.Tx) error {
			for j := range recs {
				if err := tx.PutBackend(&recs[j]); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return 0, err
		}
	}
	return time.Since(start), nil
}

// scanBackends lists every backend page by page, as the routing table load does.
func scanBackends(ctx context.Context, st *storage.Store) (int, error) {
	n, after := 0, ""
	for {
		page, err := st.ListBackends(ctx, after, batchRows)
		if err != nil {
			return n, err
		}
		n += len(page)
		if len(page) < batchRows {
			return n, nil
		}
		after = page[len(page)-1].ID
	}
}

func childLoadBackends(ctx context.Context, dir string, rep *childReport) error {
	st, err := openBenchStore(dir, rep.CacheBytes)
	if err != nil {
		return err
	}
	defer st.Close()
	load, err := loadBackends(ctx, st, rep.Rows)
	if err != nil {
		return err
	}
	rep.LoadSeconds = load.Seconds()
	if err := rep.measureStore(ctx, st, stageAfterLoad); err != nil {
		return err
	}
	debug.FreeOSMemory()
	if err := rep.measureStore(ctx, st, stageAfterFreeOS); err != nil {
		return err
	}
	start := time.Now()
	n, err := scanBackends(ctx, st)
	if err != nil {
		return err
	}
	if n != rep.Rows {
		return fmt.Errorf("scan found %d backends, want %d", n, rep.Rows)
	}
	rep.ScanSeconds = time.Since(start).Seconds()
	if err := rep.measureStore(ctx, st, stageAfterScan); err != nil {
		return err
	}
	if err := st.Close(); err != nil {
		return err
	}
	// With the store closed RocksDB holds nothing: what is left is what
	// the allocators keep (glibc malloc's free lists and arenas, Go's heap).
	debug.FreeOSMemory()
	m, err := measure(stageAfterClose, 0, 0)
	if err != nil {
		return err
	}
	rep.Stages = append(rep.Stages, m)
	return nil
}

func childScanStore(ctx context.Context, dir string, rep *childReport) error {
	start := time.Now()
	st, err := openBenchStore(dir, rep.CacheBytes)
	if err != nil {
		return err
	}
	defer st.Close()
	rep.OpenSeconds = time.Since(start).Seconds()
	if err := rep.measureStore(ctx, st, stageAfterOpen); err != nil {
		return err
	}
	start = time.Now()
	n, err := scanBackends(ctx, st)
	if err != nil {
		return err
	}
	if n != numBackends {
		return fmt.Errorf("scan found %d backends, want %d", n, numBackends)
	}
	rep.Rows, rep.ScanSeconds = n, time.Since(start).Seconds()
	if err := rep.measureStore(ctx, st, stageAfterScan); err != nil {
		return err
	}
	rng := rand.New(rand.NewPCG(7, 7))
	for range randomReads {
		if _, err := st.GetBackend(ctx, backendID(rng.IntN(numBackends))); err != nil {
			return err
		}
	}
	for range randomPoolQueries {
		if _, err := st.ListBackendsByPool(ctx, poolName(rng.IntN(numPools)), "", 0); err != nil {
			return err
		}
	}
	if err := rep.measureStore(ctx, st, stageAfterRandom); err != nil {
		return err
	}
	return st.Close()
}

func childScanRaw(dir string, rep *childReport) error {
	cfg := defaultRawConfig()
	cfg.BlockCacheSize = rep.CacheBytes
	start := time.Now()
	raw, err := openRaw(dir, cfg)
	if err != nil {
		return err
	}
	defer raw.close()
	rep.OpenSeconds = time.Since(start).Seconds()
	stage := func(name string) error {
		m, err := measure(name, raw.cacheUsage(), raw.memtableBytes())
		if err == nil {
			rep.Stages = append(rep.Stages, m)
		}
		return err
	}
	if err := stage(stageAfterOpen); err != nil {
		return err
	}
	start = time.Now()
	n := 0
	it := raw.db.NewIteratorCF(raw.ro, raw.cfs[rawRows])
	for it.SeekToFirst(); it.Valid(); it.Next() {
		// A caller keeps what it reads: copy, as ListBackends' decode does.
		_ = append([]byte(nil), it.Value().Data()...)
		n++
	}
	err = it.Err()
	it.Close()
	if err != nil {
		return err
	}
	if n != numBackends {
		return fmt.Errorf("raw scan found %d rows, want %d", n, numBackends)
	}
	rep.Rows, rep.ScanSeconds = n, time.Since(start).Seconds()
	if err := stage(stageAfterScan); err != nil {
		return err
	}
	rng := rand.New(rand.NewPCG(7, 7))
	for range randomReads {
		if _, err := raw.get(rawRows, []byte(backendID(rng.IntN(numBackends)))); err != nil {
			return err
		}
	}
	for range randomPoolQueries {
		if _, err := rawIndexRead(raw, poolName(rng.IntN(numPools))); err != nil {
			return err
		}
	}
	if err := stage(stageAfterRandom); err != nil {
		return err
	}
	return raw.close()
}

// rawIndexRead is the anchor of ListBackendsByPool: the same index prefix
// scan, then a point read of each row.
func rawIndexRead(raw *rawDB, pool string) (int, error) {
	prefix := rawPoolIndexPrefix(pool)
	it := raw.db.NewIteratorCF(raw.ro, raw.cfs[rawIndex])
	defer it.Close()
	n := 0
	for it.Seek(prefix); it.ValidForPrefix(prefix); it.Next() {
		if _, err := raw.get(rawRows, it.Key().Data()[len(prefix):]); err != nil {
			return n, err
		}
		n++
	}
	return n, it.Err()
}

// rawClusteredRead is the lower bound of a pool's backends: rows stored
// under pool NUL id, one prefix scan and nothing else.
func rawClusteredRead(raw *rawDB, pool string) (int, error) {
	prefix := rawPoolIndexPrefix(pool)[1:]
	it := raw.db.NewIteratorCF(raw.ro, raw.cfs[rawClustered])
	defer it.Close()
	n := 0
	for it.Seek(prefix); it.ValidForPrefix(prefix); it.Next() {
		_ = append([]byte(nil), it.Value().Data()...)
		n++
	}
	return n, it.Err()
}

// childEmptyStore measures what an open store costs before it holds any
// data: RocksDB's fixed allocations (table readers, the optimistic
// transaction lock table, arenas) and the Go runtime.
func childEmptyStore(ctx context.Context, dir string, rep *childReport) error {
	start := time.Now()
	st, err := openBenchStore(dir, rep.CacheBytes)
	if err != nil {
		return err
	}
	defer st.Close()
	rep.OpenSeconds = time.Since(start).Seconds()
	if err := rep.measureStore(ctx, st, stageAfterOpen); err != nil {
		return err
	}
	return st.Close()
}

func childEmptyRaw(dir string, rep *childReport) error {
	cfg := defaultRawConfig()
	cfg.BlockCacheSize = rep.CacheBytes
	start := time.Now()
	raw, err := openRaw(dir, cfg)
	if err != nil {
		return err
	}
	defer raw.close()
	rep.OpenSeconds = time.Since(start).Seconds()
	m, err := measure(stageAfterOpen, raw.cacheUsage(), raw.memtableBytes())
	if err != nil {
		return err
	}
	rep.Stages = append(rep.Stages, m)
	return raw.close()
}
