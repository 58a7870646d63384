// Package bench measures the storage package against its anchor, plain
// RocksDB (grocksdb) opened with the same options, in the same run and the
// same process: transactional writes (rows, index entries, versions, change
// log and feed) against raw puts of the same bytes, point reads, index reads
// (the backends of one pool among 1,000 pools of 1,000 backends) and expiry
// range scans (100,000 certificates with real PEM sizes); then RSS after
// loading 1M backends (measured in a child process), on-disk size and the
// time to reopen.
//
// Run it with `make bench-storage`. Each benchmark does a fixed amount of
// work per iteration and reports rates with b.ReportMetric; -benchtime 1x
// runs it once. The data sets are built once per process, lazily, in a
// temporary directory under $TMPDIR that TestMain removes at the end, and a
// summary table (store | raw RocksDB | ratio) is printed after the run.
package bench

import (
	"context"
	"crypto/rand"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/linxGnu/grocksdb"
	"github.com/singularity-ng/singularity-edge/storage"
)

// shared holds the data sets of this process. It is package state because
// building 1M backends and 100k certificates once, not once per benchmark,
// is the point; TestMain owns its lifetime.
var shared = &suite{}

func TestMain(m *testing.M) {
	if mode := os.Getenv(childModeEnv); mode != "" {
		os.Exit(childMain(mode))
	}
	code := m.Run()
	shared.summary.print(os.Stdout)
	if err := shared.cleanup(); err != nil {
		fmt.Fprintln(os.Stderr, "storage bench cleanup:", err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

// suite is the data sets and open databases shared by the benchmarks.
type suite struct {
	summary summary

	rootOnce sync.Once
	root     string
	key      []byte
	base     time.Time // expiries are spread over certLifetime after it
	rootErr  error

	matOnce sync.Once
	mat     *certMaterial
	tmpl    *templates
	matErr  error

	beOnce      sync.Once
	beErr       error
	beDir       string
	beRawDir    string
	beClustDir  string
	beLoad      childReport
	beRawLoad   time.Duration
	beStore     *storage.Store
	beRaw       *rawDB
	beClustered *rawDB

	certOnce    sync.Once
	certErr     error
	certDir     string
	certRawDir  string
	certLoad    meter
	certRawLoad meter
	certStore   *storage.Store
	certRaw     *rawDB
}

func (s *suite) init(b *testing.B) {
	s.rootOnce.Do(func() {
		s.root, s.rootErr = os.MkdirTemp("", "storage-bench-")
		s.key = make([]byte, 32)
		if _, err := rand.Read(s.key); err != nil && s.rootErr == nil {
			s.rootErr = err
		}
		s.base = time.Now().UTC().Truncate(time.Second)
	})
	if s.rootErr != nil {
		b.Fatal(s.rootErr)
	}
}

// dir returns a new, not yet existing directory under the suite's root.
func (s *suite) dir(b *testing.B, name string) string {
	s.init(b)
	d, err := os.MkdirTemp(s.root, name+"-")
	if err != nil {
		b.Fatal(err)
	}
	if err := os.Remove(d); err != nil {
		b.Fatal(err)
	}
	return d
}

// templates returns the stored bytes of a template backend and certificate.
func (s *suite) templates(b *testing.B) (*templates, *certMaterial) {
	s.init(b)
	s.matOnce.Do(func() {
		if s.mat, s.matErr = newCertMaterial(); s.matErr != nil {
			return
		}
		s.tmpl, s.matErr = storedTemplates(context.Background(), filepath.Join(s.root, "templates"), s.key, s.mat, s.base)
		if s.matErr == nil {
			s.matErr = s.tmpl.checkTokens()
		}
	})
	if s.matErr != nil {
		b.Fatal(s.matErr)
	}
	return s.tmpl, s.mat
}

// backends returns the 1M-backend store (open) and its anchors: raw rows
// with the same index entries, and raw rows clustered by pool.
func (s *suite) backends(b *testing.B) (*storage.Store, *rawDB, *rawDB) {
	tmpl, _ := s.templates(b)
	s.beOnce.Do(func() { s.beErr = s.buildBackends(tmpl) })
	if s.beErr != nil {
		b.Fatal(s.beErr)
	}
	var err error
	if s.beStore == nil {
		if s.beStore, err = openBenchStore(s.beDir, 64<<20); err != nil {
			b.Fatal(err)
		}
	}
	if s.beRaw == nil {
		if s.beRaw, err = openRaw(s.beRawDir, defaultRawConfig()); err != nil {
			b.Fatal(err)
		}
	}
	if s.beClustered == nil {
		if s.beClustered, err = openRaw(s.beClustDir, defaultRawConfig()); err != nil {
			b.Fatal(err)
		}
	}
	return s.beStore, s.beRaw, s.beClustered
}

// closeBackends closes the parent's handles on the 1M data set, so that a
// child process or a reopen measurement can open it.
func (s *suite) closeBackends(b *testing.B) {
	for _, err := range []error{s.closeStore(&s.beStore), closeRaw(&s.beRaw), closeRaw(&s.beClustered)} {
		if err != nil {
			b.Fatal(err)
		}
	}
}

func (s *suite) closeStore(st **storage.Store) error {
	if *st == nil {
		return nil
	}
	err := (*st).Close()
	*st = nil
	return err
}

func closeRaw(r **rawDB) error {
	if *r == nil {
		return nil
	}
	err := (*r).close()
	*r = nil
	return err
}

// buildBackends creates the 1M-backend store in a child process (which
// reports the RSS after loading) and the anchor databases here.
func (s *suite) buildBackends(tmpl *templates) error {
	s.beDir = filepath.Join(s.root, "backends-1m")
	s.beRawDir = filepath.Join(s.root, "raw-backends-1m")
	s.beClustDir = filepath.Join(s.root, "raw-clustered-1m")
	rep, err := runChild(context.Background(), modeLoadBackends, s.beDir, 64<<20)
	if err != nil {
		return err
	}
	s.beLoad = rep

	raw, err := openRaw(s.beRawDir, defaultRawConfig())
	if err != nil {
		return err
	}
	wb := grocksdb.NewWriteBatch()
	defer wb.Destroy()
	start := time.Now()
	err = countersOff(func() error {
		for i := range numBackends {
			id := backendID(i)
			wb.PutCF(raw.cfs[rawRows], []byte(id), tmpl.backendBytes(i))
			wb.PutCF(raw.cfs[rawIndex], rawPoolIndexKey(poolName(poolOf(i)), id), nil)
			if wb.Count() >= 2*batchRows {
				if err := raw.write(wb); err != nil {
					return err
				}
				wb.Clear()
			}
		}
		return nil
	})()
	s.beRawLoad = time.Since(start)
	if err != nil {
		raw.close()
		return err
	}
	if err := raw.close(); err != nil {
		return err
	}

	clustered, err := openRaw(s.beClustDir, defaultRawConfig())
	if err != nil {
		return err
	}
	wb.Clear()
	for i := range numBackends {
		wb.PutCF(clustered.cfs[rawClustered], rawPoolIndexKey(poolName(poolOf(i)), backendID(i))[1:], tmpl.backendBytes(i))
		if wb.Count() >= batchRows {
			if err := clustered.write(wb); err != nil {
				clustered.close()
				return err
			}
			wb.Clear()
		}
	}
	return clustered.close()
}

// certificates returns the 100k-certificate store and its anchor.
func (s *suite) certificates(b *testing.B) (*storage.Store, *rawDB) {
	tmpl, mat := s.templates(b)
	s.certOnce.Do(func() { s.certErr = s.buildCertificates(tmpl, mat) })
	if s.certErr != nil {
		b.Fatal(s.certErr)
	}
	return s.certStore, s.certRaw
}

func (s *suite) buildCertificates(tmpl *templates, mat *certMaterial) error {
	ctx := context.Background()
	s.certDir = filepath.Join(s.root, "certificates-100k")
	s.certRawDir = filepath.Join(s.root, "raw-certificates-100k")
	cfg := storage.DefaultConfig()
	cfg.Dir, cfg.EncryptionKey = s.certDir, s.key
	st, err := storage.Open(cfg)
	if err != nil {
		return err
	}
	s.certStore = st
	recs := make([]storage.Certificate, numCerts)
	for i := range recs {
		recs[i] = mat.certRecord(certNum(i), expiryOf(s.base, i))
	}
	raw, err := openRaw(s.certRawDir, defaultRawConfig())
	if err != nil {
		return err
	}
	s.certRaw = raw
	wb := grocksdb.NewWriteBatch()
	defer wb.Destroy()
	// Certificates are ~5 KB: 500 per commit keeps a commit within the
	// change-set bound (storage.MaxChangeSetBytes).
	const certBatch = batchRows / 2
	for first := 0; first < numCerts; first += certBatch {
		batch := recs[first : first+certBatch]
		storeBatch := func() error {
			_, err := st.Update(ctx, func(tx *storage.Tx) error {
				for j := range batch {
					if err := tx.PutCertificate(&batch[j]); err != nil {
						return err
					}
				}
				return nil
			})
			return err
		}
		rawBatch := func() error {
			wb.Clear()
			for i := first; i < first+certBatch; i++ {
				id := certID(i)
				wb.PutCF(raw.cfs[rawRows], []byte(id), tmpl.certBytes(i))
				wb.PutCF(raw.cfs[rawIndex], rawExpiryKey(recs[i].ExpiresAt, id), nil)
				for _, n := range recs[i].Names {
					wb.PutCF(raw.cfs[rawIndex], rawCertDomainKey(n, id), nil)
				}
			}
			return raw.write(wb)
		}
		if err := rotate(first/certBatch, section{&s.certLoad, certBatch, storeBatch}, section{&s.certRawLoad, certBatch, countersOff(rawBatch)}); err != nil {
			return err
		}
	}
	return nil
}

func (s *suite) cleanup() error {
	var first error
	keep := func(err error) {
		if err != nil && first == nil {
			first = err
		}
	}
	keep(s.closeStore(&s.beStore))
	keep(s.closeStore(&s.certStore))
	keep(closeRaw(&s.beRaw))
	keep(closeRaw(&s.beClustered))
	keep(closeRaw(&s.certRaw))
	if s.root != "" {
		keep(os.RemoveAll(s.root))
	}
	return first
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

// reportMeters reports both sides' rates, their ratio and their
// foreground CPU per operation on b.
func reportMeters(b *testing.B, unit string, store, raw *meter) {
	b.ReportMetric(store.rate(), "store_"+unit)
	b.ReportMetric(raw.rate(), "raw_"+unit)
	if raw.rate() > 0 {
		b.ReportMetric(store.rate()/raw.rate(), "store/raw")
	}
	b.ReportMetric(store.cpuPerOp(), "store_cpu_us/op")
	b.ReportMetric(raw.cpuPerOp(), "raw_cpu_us/op")
}

// reportRates reports two plain rates (measured elsewhere) and their ratio.
func reportRates(b *testing.B, unit string, store, raw float64) {
	b.ReportMetric(store, "store_"+unit)
	b.ReportMetric(raw, "raw_"+unit)
	if raw > 0 {
		b.ReportMetric(store/raw, "store/raw")
	}
}

// section is one timed piece of work for a meter.
type section struct {
	m   *meter
	ops int
	f   func() error
}

// rotate runs the sections one after the other, starting with section
// round mod len, so that no side always runs first (after the other's
// background work) or last.
func rotate(round int, sections ...section) error {
	for i := range sections {
		s := sections[(round+i)%len(sections)]
		if err := s.m.run(s.ops, s.f); err != nil {
			return err
		}
	}
	return nil
}

// BenchmarkWriteSingleRow: one Update per row (PutBackend: the row, its
// index entries, a version, a change-log entry and a feed entry in one
// RocksDB commit) against one raw Put of the same row bytes, with the WAL
// fsynced on every commit (the store's default, storage.DefaultConfig) and
// without. A second anchor writes, per row, the entries the store writes
// (commitEntries) in one WriteBatch, with the store's insert hint: the gap
// to it is the store's machinery (the read of the old row, encoding,
// versions), not its write amplification. Store and anchors alternate in
// sections of 250 rows.
func BenchmarkWriteSingleRow(b *testing.B) {
	const sectionRows = 250
	for _, syncWAL := range []bool{true, false} {
		rows := 5000
		if !syncWAL {
			rows = 30000
		}
		b.Run("sync_wal="+onOff(syncWAL), func(b *testing.B) {
			tmpl, _ := shared.templates(b)
			ctx := context.Background()
			recs := make([]storage.Backend, rows)
			vals := make([][]byte, rows)
			for i := range rows {
				recs[i], vals[i] = makeBackend(i), tmpl.backendBytes(i)
			}
			var sm, rm, fm meter
			for range b.N {
				st, raw := openWritePair(b, syncWAL)
				full := openAnchor(b, syncWAL, true)
				wb := grocksdb.NewWriteBatch()
				for first := 0; first < rows; first += sectionRows {
					entries := make([][]rawEntry, sectionRows)
					for j := range entries {
						entries[j] = tmpl.commitEntries(synthetic, first+j, first+j+1, uint64(first+j+1))
					}
					storeRows := func() error {
						for i := first; i < first+sectionRows; i++ {
							if _, err := st.Update(ctx, func(tx *storage.Tx) error { return tx.PutBackend(&recs[i]) }); err != nil {
								return err
							}
						}
						return nil
					}
					rawPuts := func() error {
						for i := first; i < first+sectionRows; i++ {
							if err := raw.put(rawRows, []byte(recs[i].ID), vals[i]); err != nil {
								return err
							}
						}
						return nil
					}
					fullCommits := func() error {
						for _, es := range entries {
							if err := full.writeEntries(wb, es); err != nil {
								return err
							}
						}
						return nil
					}
					err := rotate(first/sectionRows, section{&sm, sectionRows, storeRows}, section{&rm, sectionRows, countersOff(rawPuts)},
						section{&fm, sectionRows, countersOff(fullCommits)})
					if err != nil {
						b.Fatal(err)
					}
				}
				wb.Destroy()
				closeWritePair(b, st, raw, full)
			}
			reportMeters(b, "rows/s", &sm, &rm)
			b.ReportMetric(fm.rate(), "raw_same_entries_rows/s")
			label := "single-row commits, WAL sync " + onOff(syncWAL) + defaultMark(syncWAL)
			shared.summary.compare(label, &sm, &rm, "rows/s", "ratio >= 0.5")
			shared.summary.compare(label+", anchor: the store's entries in one batch", &sm, &fm, "rows/s", "")
		})
	}
}

// openWritePair opens a fresh store and a fresh anchor with the given WAL
// sync setting.
func openWritePair(b *testing.B, syncWAL bool) (*storage.Store, *rawDB) {
	cfg := storage.DefaultConfig()
	cfg.Dir, cfg.SyncWAL = shared.dir(b, "write-store"), syncWAL
	st, err := storage.Open(cfg)
	if err != nil {
		b.Fatal(err)
	}
	return st, openAnchor(b, syncWAL, false)
}

// openAnchor opens a fresh raw database with the store's options, its
// insert hint on the index and clustered families when hint is set.
func openAnchor(b *testing.B, syncWAL, hint bool) *rawDB {
	cfg := defaultRawConfig()
	cfg.SyncWAL, cfg.IndexHint = syncWAL, hint
	raw, err := openRaw(shared.dir(b, "write-raw"), cfg)
	if err != nil {
		b.Fatal(err)
	}
	return raw
}

func closeWritePair(b *testing.B, st *storage.Store, raws ...*rawDB) {
	dirs := []string{st.Dir()}
	if err := st.Close(); err != nil {
		b.Fatal(err)
	}
	for _, r := range raws {
		dirs = append(dirs, r.dir)
		if err := r.close(); err != nil {
			b.Fatal(err)
		}
	}
	for _, d := range dirs {
		if err := os.RemoveAll(d); err != nil {
			b.Fatal(err)
		}
	}
}

func defaultMark(syncWAL bool) string {
	if syncWAL == storage.DefaultConfig().SyncWAL {
		return " (store default)"
	}
	return ""
}

// BenchmarkWriteBatched: Updates of 1,000 backends each (PutBackends, the
// bulk path: one MultiGet of the stored versions) against raw WriteBatches
// of 1,000 puts of the same row bytes. Three more anchors write, with the
// store's insert hint, exactly the keys and values a store commit writes
// in the order it writes them (commitEntries), the fewest any on-disk key
// layout needs (floorEntries) and what is left with every index in memory
// (memIndexEntries); the store also runs with 1,000 PutBackend calls per
// Update (store_putbackend_rows/s). The raw anchors run with RocksDB's
// perf counters off, as the store's writes do (countersOff); one more
// writes the bare rows with the counters on, as raw grocksdb does by
// default. The seven alternate batch by batch, and every anchor's entries
// are built before its timed section. Two workloads: the historical
// synthetic one (ascending ids over 1,000 pools: raw RocksDB's best case,
// every key appended) and the API's bulk writes (random ids, one pool per
// batch).
func BenchmarkWriteBatched(b *testing.B) {
	const rows = 100_000
	for _, w := range []writeWorkload{synthetic, apiBulk} {
		for _, syncWAL := range []bool{true, false} {
			name := "sync_wal=" + onOff(syncWAL)
			if w.apiIDs {
				name = "api_bulk/" + name
			}
			b.Run(name, func(b *testing.B) { benchWriteBatched(b, w, rows, syncWAL) })
		}
	}
}

func benchWriteBatched(b *testing.B, w writeWorkload, rows int, syncWAL bool) {
	tmpl, _ := shared.templates(b)
	ctx := context.Background()
	recs := make([]storage.Backend, rows)
	vals := make([][]byte, rows)
	for i := range rows {
		recs[i], vals[i] = w.backend(i), tmpl.workloadBytes(w, i)
	}
	var sm, rm, fm, lm, flm, mm, dm meter
	for range b.N {
		st, raw := openWritePair(b, syncWAL)
		full, floor, mem := openAnchor(b, syncWAL, true), openAnchor(b, syncWAL, true), openAnchor(b, syncWAL, true)
		counted := openAnchor(b, syncWAL, false)
		loop, loopRaw := openWritePair(b, syncWAL) // loopRaw stays empty
		wb := grocksdb.NewWriteBatch()
		for first := 0; first < rows; first += batchRows {
			batch := recs[first : first+batchRows]
			seq := uint64(first/batchRows + 1)
			fullEntries := tmpl.commitEntries(w, first, first+batchRows, seq)
			floorEntries := tmpl.floorEntries(w, first, first+batchRows, seq)
			memEntries := tmpl.memIndexEntries(w, first, first+batchRows, seq)
			storeBatch := func() error {
				_, err := st.Update(ctx, func(tx *storage.Tx) error {
					return tx.PutBackends(batch)
				})
				return err
			}
			loopBatch := func() error {
				_, err := loop.Update(ctx, func(tx *storage.Tx) error {
					for j := range batch {
						if err := tx.PutBackend(&batch[j]); err != nil {
							return err
						}
					}
					return nil
				})
				return err
			}
			bareRows := func(db *rawDB) func() error {
				return func() error {
					wb.Clear()
					for i := first; i < first+batchRows; i++ {
						wb.PutCF(db.cfs[rawRows], []byte(recs[i].ID), vals[i])
					}
					return db.write(wb)
				}
			}
			rawBatch, countedBatch := bareRows(raw), bareRows(counted)
			fullBatch := func() error { return full.writeEntries(wb, fullEntries) }
			floorBatch := func() error { return floor.writeEntries(wb, floorEntries) }
			memBatch := func() error { return mem.writeEntries(wb, memEntries) }
			err := rotate(first/batchRows, section{&sm, batchRows, storeBatch}, section{&rm, batchRows, countersOff(rawBatch)},
				section{&fm, batchRows, countersOff(fullBatch)}, section{&lm, batchRows, loopBatch}, section{&flm, batchRows, countersOff(floorBatch)},
				section{&mm, batchRows, countersOff(memBatch)}, section{&dm, batchRows, countedBatch})
			if err != nil {
				b.Fatal(err)
			}
		}
		wb.Destroy()
		closeWritePair(b, st, raw, full, floor, mem, counted)
		closeWritePair(b, loop, loopRaw)
	}
	reportMeters(b, "rows/s", &sm, &rm)
	b.ReportMetric(fm.rate(), "raw_same_entries_rows/s")
	b.ReportMetric(flm.rate(), "raw_floor_rows/s")
	b.ReportMetric(mm.rate(), "raw_memindex_rows/s")
	b.ReportMetric(lm.rate(), "store_putbackend_rows/s")
	b.ReportMetric(dm.rate(), "raw_default_counters_rows/s")
	label := fmt.Sprintf("batched commits (%d rows each), WAL sync %s%s", batchRows, onOff(syncWAL), defaultMark(syncWAL))
	if w.apiIDs {
		label = w.name + ", " + label
	}
	shared.summary.compare(label, &sm, &rm, "rows/s", "ratio >= 0.5")
	// The bare rows as raw grocksdb writes them by default: with RocksDB's
	// perf counters on, which the store's writes switch off.
	shared.summary.compare(label+", anchor with RocksDB's default perf counters", &sm, &dm, "rows/s", "")
	shared.summary.compare(label+", anchor: the store's entries", &sm, &fm, "rows/s", "")
	shared.summary.compare(label+", store with PutBackend per row", &lm, &rm, "rows/s", "")
	// Not the store: how close any layout could come to the goal.
	shared.summary.compare(label+", raw floor (fewest entries any on-disk layout needs) ÷ raw", &flm, &rm, "rows/s", "")
	// Nor this: the entries left with every index in memory.
	shared.summary.compare(label+", raw with indexes in memory (one entry per row) ÷ raw", &mm, &rm, "rows/s", "")
}

// BenchmarkWriteEntryCost prices each entry a store commit writes per
// backend, on the API bulk workload with the WAL fsynced (the store's
// default): raw WriteBatches of the store's entries (commitEntries), of
// those entries with one kind left out, and with the by-address entry the
// store wrote before index version 7, against the bare rows, alternating
// batch by batch. No store runs here; the figures say what a key layout
// with or without that entry costs (docs/ARCHITECTURE.md, storage).
func BenchmarkWriteEntryCost(b *testing.B) {
	const rows = 100_000
	changelog := func(e rawEntry) bool { return e.cf == rawChangelog }
	covering := func(e rawEntry) bool { return e.cf == rawIndex }
	variants := []struct {
		name    string
		drop    func(rawEntry) bool
		address bool // add the by-address entries of index version 6
	}{
		{"the store's entries", func(rawEntry) bool { return false }, false},
		{"the store's entries and a by-address entry (index version 6)", func(rawEntry) bool { return false }, true},
		{"without the change-log key", changelog, false},
		{"without the covering by-pool entry", covering, false},
	}
	tmpl, _ := shared.templates(b)
	w := apiBulk
	ids, vals := make([][]byte, rows), make([][]byte, rows)
	for i := range rows {
		ids[i], vals[i] = []byte(w.id(i)), tmpl.workloadBytes(w, i)
	}
	for range b.N {
		bare := openAnchor(b, true, false)
		dbs := make([]*rawDB, len(variants))
		for i := range dbs {
			dbs[i] = openAnchor(b, true, true)
		}
		meters := make([]meter, len(variants))
		var bm meter
		wb := grocksdb.NewWriteBatch()
		for first := 0; first < rows; first += batchRows {
			all := tmpl.commitEntries(w, first, first+batchRows, uint64(first/batchRows+1))
			byAddress := tmpl.byAddressEntries(w, first, first+batchRows)
			sections := []section{{&bm, batchRows, countersOff(func() error {
				wb.Clear()
				for i := first; i < first+batchRows; i++ {
					wb.PutCF(bare.cfs[rawRows], ids[i], vals[i])
				}
				return bare.write(wb)
			})}}
			for i, v := range variants {
				es := slices.DeleteFunc(slices.Clone(all), v.drop)
				if v.address {
					es = sortEntries(append(es, byAddress...))
				}
				db := dbs[i]
				sections = append(sections, section{&meters[i], batchRows, countersOff(func() error { return db.writeEntries(wb, es) })})
			}
			if err := rotate(first/batchRows, sections...); err != nil {
				b.Fatal(err)
			}
		}
		wb.Destroy()
		for _, db := range append(dbs, bare) {
			if err := db.close(); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(bm.rate(), "bare_rows/s")
		for i, v := range variants {
			shared.summary.compare(apiBulk.name+", raw batches of 1,000 rows, "+v.name+" ÷ bare rows", &meters[i], &bm, "rows/s", "")
		}
	}
}

// BenchmarkLoad reports how long building the data sets took: 1M backends
// (in the child process that then measured RSS, against raw batches of the
// same rows and index entries written here afterwards) and 100k
// certificates (store and anchor alternating batch by batch), in commits of
// 1,000 rows with the WAL fsynced.
func BenchmarkLoad(b *testing.B) {
	b.Run("backends=1M", func(b *testing.B) {
		shared.backends(b)
		store := perSecond(numBackends, time.Duration(shared.beLoad.LoadSeconds*float64(time.Second)))
		raw := perSecond(numBackends, shared.beRawLoad)
		reportRates(b, "rows/s", store, raw)
		shared.summary.rate("load 1M backends (1,000/commit; anchor: rows + index entries, not interleaved)", store, raw, "rows/s", "ratio >= 0.5")
	})
	b.Run("certificates=100k", func(b *testing.B) {
		shared.certificates(b)
		reportMeters(b, "rows/s", &shared.certLoad, &shared.certRawLoad)
		shared.summary.compare("load 100k certificates (500/commit; anchor: rows + index entries)", &shared.certLoad, &shared.certRawLoad, "rows/s", "ratio >= 0.5")
	})
}

// BenchmarkPointRead: GetBackend on the 1M-backend store and GetCertificate
// (private key decrypted) on the 100k-certificate store, against raw Gets
// of the same keys, alternating in sections of 5,000: at random ids over
// every row, and confined to a hot set (20,000 backends, 2,000
// certificates, the ones a front end serves most) that fits the block
// cache, every one read before measuring: the per-read cost when the block
// is cached, which random reads over 1M rows and a 64 MiB cache seldom are.
func BenchmarkPointRead(b *testing.B) {
	ctx := context.Background()
	backends := func(b *testing.B) (func(string) error, *rawDB) {
		st, raw, _ := shared.backends(b)
		return func(id string) error {
			be, err := st.GetBackend(ctx, id)
			if err == nil && be.ID != id {
				err = fmt.Errorf("GetBackend(%q) returned %q", id, be.ID)
			}
			return err
		}, raw
	}
	certificates := func(b *testing.B) (func(string) error, *rawDB) {
		st, raw := shared.certificates(b)
		return func(id string) error {
			c, err := st.GetCertificate(ctx, id)
			if err == nil && (c.ID != id || c.PrivateKeyPEM == "") {
				err = fmt.Errorf("GetCertificate(%q) returned %q without its key", id, c.ID)
			}
			return err
		}, raw
	}
	firstIDs := func(n int, id func(int) string) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = id(i)
		}
		return out
	}
	for _, tc := range []struct {
		name, summary, goal string
		open                func(*testing.B) (func(string) error, *rawDB)
		ids, warm           []string
	}{
		{"backends", "point read GetBackend, 1M backends", "", backends,
			randomIDs(1, 100_000, numBackends, backendID), randomIDs(2, 20_000, numBackends, backendID)},
		{"backends_cached", "point read GetBackend, hot set of 20k backends (cached blocks)", "store >= 250k reads/s", backends,
			randomIDs(11, 200_000, 20_000, backendID), firstIDs(20_000, backendID)},
		{"certificates_cached", "point read GetCertificate, hot set of 2k certs", "store >= 250k reads/s", certificates,
			randomIDs(13, 100_000, 2000, certID), firstIDs(2000, certID)},
		{"certificates", "point read GetCertificate (decrypts key), 100k certs", "", certificates,
			randomIDs(3, 20_000, numCerts, certID), randomIDs(4, 5_000, numCerts, certID)},
	} {
		b.Run(tc.name, func(b *testing.B) {
			storeRead, raw := tc.open(b)
			rawRead := func(id string) error { _, err := raw.get(rawRows, []byte(id)); return err }
			sm, rm := compareReads(b, tc.ids, tc.warm, storeRead, rawRead)
			reportMeters(b, "reads/s", sm, rm)
			shared.summary.compare(tc.summary, sm, rm, "reads/s", tc.goal)
		})
	}
}

func randomIDs(seed uint64, n, max int, id func(int) string) []string {
	rng := mrand.New(mrand.NewPCG(seed, seed))
	out := make([]string, n)
	for i := range out {
		out[i] = id(rng.IntN(max))
	}
	return out
}

// compareReads warms both sides with the warm-up ids (read twice: the
// store's row cache admits a row on its second miss, so that one pass
// over many rows does not evict the hot ones), then reads ids on both,
// alternating in sections of 5,000.
func compareReads(b *testing.B, ids, warm []string, storeRead, rawRead func(string) error) (store, raw *meter) {
	const size = 5000
	each := func(ids []string, f func(string) error) func() error {
		return func() error {
			for _, id := range ids {
				if err := f(id); err != nil {
					return err
				}
			}
			return nil
		}
	}
	var warmM meter
	for range 2 {
		if err := rotate(0, section{&warmM, 0, each(warm, storeRead)}, section{&warmM, 0, each(warm, rawRead)}); err != nil {
			b.Fatal(err)
		}
	}
	store, raw = &meter{}, &meter{}
	for range b.N {
		for first := 0; first < len(ids); first += size {
			part := ids[first:min(first+size, len(ids))]
			if err := rotate(first/size, section{store, len(part), each(part, storeRead)}, section{raw, len(part), each(part, rawRead)}); err != nil {
				b.Fatal(err)
			}
		}
	}
	return store, raw
}

// BenchmarkIndexRead: ListBackendsByPool (all 1,000 backends of one pool
// among 1,000 pools) against the same index prefix scan plus a Get per row
// in raw RocksDB, and against the lower bound: rows stored clustered by
// pool, one prefix scan. The three alternate in sections of 10 pools.
func BenchmarkIndexRead(b *testing.B) {
	ctx := context.Background()
	st, raw, clustered := shared.backends(b)
	const queries, size = 200, 10
	rng := mrand.New(mrand.NewPCG(5, 5))
	pools := make([]string, queries)
	for i := range pools {
		pools[i] = poolName(rng.IntN(numPools))
	}
	storeList := func(pools []string) func() error { return storePoolLists(ctx, st, pools) }
	var warm, sm, rm, cm meter
	if err := rotate(0, section{&warm, 0, storeList(pools[:size])}, section{&warm, 0, rawList(raw, rawIndexRead, pools[:size])},
		section{&warm, 0, rawList(clustered, rawClusteredRead, pools[:size])}); err != nil {
		b.Fatal(err)
	}
	for range b.N {
		for first := 0; first < queries; first += size {
			part := pools[first : first+size]
			err := rotate(first/size, section{&sm, len(part), storeList(part)}, section{&rm, len(part), rawList(raw, rawIndexRead, part)},
				section{&cm, len(part), rawList(clustered, rawClusteredRead, part)})
			if err != nil {
				b.Fatal(err)
			}
		}
	}
	reportMeters(b, "pools/s", &sm, &rm)
	b.ReportMetric(cm.rate(), "raw_clustered_pools/s")
	b.ReportMetric(sm.rate()*backendsPerPool, "store_rows/s")
	shared.summary.compare("ListBackendsByPool (1,000 of 1M rows; anchor: index scan + Gets)", &sm, &rm, "pools/s", "")
	shared.summary.compare("ListBackendsByPool (anchor: rows clustered by pool, one scan)", &sm, &cm, "pools/s", "")
}

// countBackends checks that a pool listing returned the whole pool.
func countBackends(pool string, n int, err error) error {
	if err == nil && n != backendsPerPool {
		err = fmt.Errorf("pool %s: %d backends, want %d", pool, n, backendsPerPool)
	}
	return err
}

// storePoolLists lists the backends of each pool through the store.
func storePoolLists(ctx context.Context, st *storage.Store, pools []string) func() error {
	return func() error {
		for _, p := range pools {
			bs, err := st.ListBackendsByPool(ctx, p, "", 0)
			if err := countBackends(p, len(bs), err); err != nil {
				return err
			}
		}
		return nil
	}
}

// rawList lists the backends of each pool in raw RocksDB with read.
func rawList(db *rawDB, read func(*rawDB, string) (int, error), pools []string) func() error {
	return func() error {
		for _, p := range pools {
			n, err := read(db, p)
			if err := countBackends(p, n, err); err != nil {
				return err
			}
		}
		return nil
	}
}

// BenchmarkIndexReadHot: ListBackendsByPool over a hot set of 20 pools
// (20,000 backends), each read once before measuring, against the same
// index scan plus a Get per row and the clustered scan in raw RocksDB:
// what a dashboard or API client polling a few pools costs, where the
// store answers from its row cache.
func BenchmarkIndexReadHot(b *testing.B) {
	ctx := context.Background()
	st, raw, clustered := shared.backends(b)
	const hot, queries, size = 20, 2000, 100
	rng := mrand.New(mrand.NewPCG(6, 6))
	set := make([]string, hot)
	for i := range set {
		set[i] = poolName(rng.IntN(numPools))
	}
	pools := make([]string, queries)
	for i := range pools {
		pools[i] = set[rng.IntN(hot)]
	}
	storeList := func(pools []string) func() error { return storePoolLists(ctx, st, pools) }
	var warm, sm, rm, cm meter
	if err := rotate(0, section{&warm, 0, storeList(set)}, section{&warm, 0, rawList(raw, rawIndexRead, set)},
		section{&warm, 0, rawList(clustered, rawClusteredRead, set)}); err != nil {
		b.Fatal(err)
	}
	for range b.N {
		for first := 0; first < queries; first += size {
			part := pools[first : first+size]
			// The raw anchors cost far more per query: a tenth of the
			// queries each, measured as rates.
			rawPart := part[:size/10]
			err := rotate(first/size, section{&sm, len(part), storeList(part)}, section{&rm, len(rawPart), rawList(raw, rawIndexRead, rawPart)},
				section{&cm, len(rawPart), rawList(clustered, rawClusteredRead, rawPart)})
			if err != nil {
				b.Fatal(err)
			}
		}
	}
	reportMeters(b, "pools/s", &sm, &rm)
	b.ReportMetric(cm.rate(), "raw_clustered_pools/s")
	shared.summary.compare("ListBackendsByPool, hot set of 20 pools (anchor: index scan + Gets)", &sm, &rm, "pools/s", "store >= 2,000 pools/s")
	shared.summary.compare("ListBackendsByPool, hot set of 20 pools (anchor: rows clustered by pool)", &sm, &cm, "pools/s", "")
}

// BenchmarkCertificatesByDomain: CertificatesByDomain on the 100k
// certificates at random domains, and on a hot set of 2,000, against the
// same index prefix scan plus a Get per certificate in raw RocksDB.
func BenchmarkCertificatesByDomain(b *testing.B) {
	ctx := context.Background()
	domain := func(i int) string { return "site-" + certNum(i) + ".example.com" }
	for _, c := range []struct {
		name string
		hot  int
		n    int
	}{{"random", numCerts, 20_000}, {"hot_2k", 2000, 100_000}} {
		b.Run(c.name, func(b *testing.B) {
			st, raw := shared.certificates(b)
			storeRead := func(d string) error {
				cs, err := st.CertificatesByDomain(ctx, d)
				if err == nil && (len(cs) != 1 || cs[0].Domain != d || cs[0].PrivateKeyPEM == "") {
					err = fmt.Errorf("CertificatesByDomain(%q): %d certificates", d, len(cs))
				}
				return err
			}
			rawRead := func(d string) error {
				prefix := []byte("\x01" + d + "\x00")
				it := raw.db.NewIteratorCF(raw.ro, raw.cfs[rawIndex])
				defer it.Close()
				n := 0
				for it.Seek(prefix); it.ValidForPrefix(prefix); it.Next() {
					if _, err := raw.get(rawRows, it.Key().Data()[len(prefix):]); err != nil {
						return err
					}
					n++
				}
				if n != 1 {
					return fmt.Errorf("raw: %d certificates for %q", n, d)
				}
				return it.Err()
			}
			warm := make([]string, min(c.hot, 5000))
			for i := range warm {
				warm[i] = domain(i % c.hot)
			}
			sm, rm := compareReads(b, randomIDs(12, c.n, c.hot, domain), warm, storeRead, rawRead)
			reportMeters(b, "reads/s", sm, rm)
			goal := ""
			if c.hot < numCerts {
				goal = "store >= 250k reads/s"
			}
			shared.summary.compare(fmt.Sprintf("CertificatesByDomain, %s (decrypts key)", c.name), sm, rm, "reads/s", goal)
		})
	}
}

// BenchmarkExpiryScan: CertificatesExpiringBefore on 100k certificates
// (about 1.8 KB certificate, 1.7 KB key, 1.5 KB chain each; expiries spread
// over 90 days): everything expiring within 30 days (a third of them), and
// the first 100 (a renewal loop's page), against the same index range scan
// plus a Get per row in raw RocksDB, alternating query by query.
func BenchmarkExpiryScan(b *testing.B) {
	ctx := context.Background()
	st, raw := shared.certificates(b)
	cutoff := shared.base.Add(30 * 24 * time.Hour)
	want := 0
	for i := range numCerts {
		if expiryOf(shared.base, i).Before(cutoff) {
			want++
		}
	}
	rawScan := func(limit int) (int, error) {
		end := rawExpiryKey(cutoff, "")
		it := raw.db.NewIteratorCF(raw.ro, raw.cfs[rawIndex])
		defer it.Close()
		n := 0
		for it.Seek([]byte{2}); it.Valid(); it.Next() {
			k := it.Key().Data()
			if k[0] != 2 || string(k[:rawExpiryKeyLen]) >= string(end) {
				break
			}
			if _, err := raw.get(rawRows, k[rawExpiryKeyLen:]); err != nil {
				return n, err
			}
			if n++; limit > 0 && n >= limit {
				break
			}
		}
		return n, it.Err()
	}
	storeScan := func(limit int) (int, error) {
		certs, err := st.CertificatesExpiringBefore(ctx, cutoff, limit)
		for i := 1; err == nil && i < len(certs); i++ {
			if certs[i].ExpiresAt.Before(certs[i-1].ExpiresAt) {
				err = fmt.Errorf("CertificatesExpiringBefore: %s before %s", certs[i].ID, certs[i-1].ID)
			}
		}
		return len(certs), err
	}
	// What a renewal loop needs: ids and expiries, from the index alone,
	// against the raw index scan without row reads.
	b.Run("ids_within_30d", func(b *testing.B) {
		rawKeys := func() (int, error) {
			ro := grocksdb.NewDefaultReadOptions()
			defer ro.Destroy()
			ro.SetIterateUpperBound(rawExpiryKey(cutoff, ""))
			it := raw.db.NewIteratorCF(ro, raw.cfs[rawIndex])
			defer it.Close()
			n := 0
			for it.Seek([]byte{2}); it.Valid(); it.Next() {
				if k := it.Key().Data(); len(k) > rawExpiryKeyLen {
					n++
				}
			}
			return n, it.Err()
		}
		storeKeys := func() (int, error) {
			exp, err := st.CertificateExpiries(ctx, cutoff, 0)
			return len(exp), err
		}
		scans := func(scan func() (int, error), n int) func() error {
			return func() error {
				for range n {
					got, err := scan()
					if err == nil && got != want {
						err = fmt.Errorf("%d certificates, want %d", got, want)
					}
					if err != nil {
						return err
					}
				}
				return nil
			}
		}
		const queries, per = 100, 5
		var warm, sm, rm meter
		if err := rotate(0, section{&warm, 0, scans(storeKeys, 1)}, section{&warm, 0, scans(rawKeys, 1)}); err != nil {
			b.Fatal(err)
		}
		for range b.N {
			for q := 0; q < queries; q += per {
				if err := rotate(q/per, section{&sm, per, scans(storeKeys, per)}, section{&rm, per, scans(rawKeys, per)}); err != nil {
					b.Fatal(err)
				}
			}
		}
		reportMeters(b, "scans/s", &sm, &rm)
		b.ReportMetric(1000/sm.rate(), "store_ms/scan")
		shared.summary.compare(fmt.Sprintf("CertificateExpiries within_30d, ids + expiries (%d/scan), scans", want), &sm, &rm, "scans/s", "store >= 100 scans/s (<= 10 ms)")
	})
	for _, c := range []struct {
		name    string
		limit   int
		queries int
	}{
		{"within_30d", 0, 4},
		{"first_100", 100, 400},
	} {
		b.Run(c.name, func(b *testing.B) {
			expect := want
			if c.limit > 0 {
				expect = min(want, c.limit)
			}
			scans := func(scan func(int) (int, error), n int) func() error {
				return func() error {
					for range n {
						got, err := scan(c.limit)
						if err == nil && got != expect {
							err = fmt.Errorf("%d certificates, want %d", got, expect)
						}
						if err != nil {
							return err
						}
					}
					return nil
				}
			}
			per := max(1, c.queries/20) // queries per section
			var warm, sm, rm meter
			if err := rotate(0, section{&warm, 0, scans(storeScan, 1)}, section{&warm, 0, scans(rawScan, 1)}); err != nil {
				b.Fatal(err)
			}
			for range b.N {
				for q := 0; q < c.queries; q += per {
					if err := rotate(q/per, section{&sm, per * expect, scans(storeScan, per)}, section{&rm, per * expect, scans(rawScan, per)}); err != nil {
						b.Fatal(err)
					}
				}
			}
			reportMeters(b, "certs/s", &sm, &rm)
			b.ReportMetric(sm.rate()/float64(expect), "store_scans/s")
			b.ReportMetric(rm.rate()/float64(expect), "raw_scans/s")
			shared.summary.compare(fmt.Sprintf("CertificatesExpiringBefore %s (%d certs/scan)", c.name, expect), &sm, &rm, "certs/s", "")
		})
	}
}

// BenchmarkRSS: the RSS of a child process that loaded the 1M backends
// (block cache 64 MiB), and of children that open the finished data set
// with block caches of 16, 64 and 256 MiB, scan every backend and then read
// at random; the anchor child does the same on raw RocksDB.
func BenchmarkRSS(b *testing.B) {
	ctx := context.Background()
	shared.backends(b)
	shared.closeBackends(b)
	load := shared.beLoad
	afterLoad, afterFree, afterLoadScan := load.stage(stageAfterLoad), load.stage(stageAfterFreeOS), load.stage(stageAfterScan)
	b.ReportMetric(mib(afterLoad.RSS), "load_rss_MiB")
	b.ReportMetric(mib(afterFree.RSS), "load_freed_rss_MiB")
	b.ReportMetric(mib(afterLoadScan.RSS), "load_scan_rss_MiB")
	b.ReportMetric(mib(afterLoadScan.HWM), "load_peak_rss_MiB")
	shared.summary.bytes("RSS after loading 1M backends (cache 64 MiB)", afterLoad.RSS, 0, "bounded by cache")
	shared.summary.bytes("  same, Go heap returned to the OS", afterFree.RSS, 0, "")
	shared.summary.bytes("  peak RSS while loading and scanning", afterLoadScan.HWM, 0, "")
	shared.summary.bytes("  left after Close (kept by the allocators)", load.stage(stageAfterClose).RSS, 0, "")
	b.ReportMetric(mib(load.stage(stageAfterClose).RSS), "load_closed_rss_MiB")
	b.Logf("load child: %s", stagesText(load))

	// The same load with a fifth of the data: if memory followed the data
	// size, this RSS would be much lower.
	small, err := runChildRows(ctx, modeLoadBackends, shared.dir(b, "backends-200k"), 64<<20, numBackends/5)
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("load child, 200k backends: %s", stagesText(small))
	smallLoad, smallScan := small.stage(stageAfterLoad), small.stage(stageAfterScan)
	b.ReportMetric(mib(smallLoad.RSS), "load200k_rss_MiB")
	b.ReportMetric(mib(smallScan.RSS), "load200k_scan_rss_MiB")
	shared.summary.bytes("RSS after loading 200k backends (cache 64 MiB), for comparison", smallLoad.RSS, 0, "")
	shared.summary.bytes("RSS after loading 1M backends, then a full scan", afterLoadScan.RSS, 0, "")
	shared.summary.bytes("RSS after loading 200k backends, then a full scan", smallScan.RSS, 0, "")

	emptyStore, err := runChild(ctx, modeEmptyStore, shared.dir(b, "empty-store"), 64<<20)
	if err != nil {
		b.Fatal(err)
	}
	emptyRaw, err := runChild(ctx, modeEmptyRaw, shared.dir(b, "empty-raw"), 64<<20)
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("empty store child: %s", stagesText(emptyStore))
	b.Logf("empty raw child: %s", stagesText(emptyRaw))
	es, er := emptyStore.stage(stageAfterOpen), emptyRaw.stage(stageAfterOpen)
	b.ReportMetric(mib(es.RSS), "empty_store_rss_MiB")
	b.ReportMetric(mib(er.RSS), "empty_raw_rss_MiB")
	shared.summary.bytes("RSS of a new, empty store (fixed cost)", es.RSS, er.RSS, "")

	rawRep, err := runChild(ctx, modeScanRaw, shared.beRawDir, 64<<20)
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("raw child (cache 64 MiB): %s", stagesText(rawRep))
	for _, cache := range []int64{16 << 20, 64 << 20, 256 << 20} {
		rep, err := runChild(ctx, modeScanStore, shared.beDir, cache)
		if err != nil {
			b.Fatal(err)
		}
		b.Logf("store child (cache %d MiB): %s", cache>>20, stagesText(rep))
		scan, random := rep.stage(stageAfterScan), rep.stage(stageAfterRandom)
		tag := fmt.Sprintf("cache%dMiB", cache>>20)
		b.ReportMetric(mib(scan.RSS), tag+"_scan_rss_MiB")
		b.ReportMetric(mib(random.RSS), tag+"_random_rss_MiB")
		b.ReportMetric(mib(random.GoResident), tag+"_go_resident_MiB")
		var rawScan, rawRandom uint64
		if cache == 64<<20 {
			rawScan, rawRandom = rawRep.stage(stageAfterScan).RSS, rawRep.stage(stageAfterRandom).RSS
			b.ReportMetric(mib(rawScan), "raw_scan_rss_MiB")
			b.ReportMetric(mib(rawRandom), "raw_random_rss_MiB")
		}
		shared.summary.bytes(fmt.Sprintf("RSS, 1M backends, cache %d MiB: open + full scan", cache>>20), scan.RSS, rawScan, "bounded by cache")
		shared.summary.bytes(fmt.Sprintf("  then 100k random Gets + 200 pool lists, cache %d MiB", cache>>20), random.RSS, rawRandom, "")
	}
}

func stagesText(r childReport) string {
	s := fmt.Sprintf("open %.2fs load %.1fs scan %.2fs;", r.OpenSeconds, r.LoadSeconds, r.ScanSeconds)
	for _, st := range r.Stages {
		s += fmt.Sprintf(" [%s: rss %.0f MiB, peak %.0f MiB, go %.0f MiB, block cache %.0f MiB, memtables %.0f MiB]",
			st.Stage, mib(st.RSS), mib(st.HWM), mib(st.GoResident), mib(st.CacheUsage), mib(st.Memtables))
	}
	return s
}

// BenchmarkDiskSize: the on-disk size of each data set after a full
// compaction of every column family, store against anchor (rows and index
// entries, no versions or change log).
func BenchmarkDiskSize(b *testing.B) {
	ctx := context.Background()
	for _, c := range []struct {
		name string
		open func(b *testing.B) (*storage.Store, *rawDB)
		dirs func() (string, string)
		stop func(b *testing.B)
	}{
		{
			name: "backends=1M",
			open: func(b *testing.B) (*storage.Store, *rawDB) { st, raw, _ := shared.backends(b); return st, raw },
			dirs: func() (string, string) { return shared.beDir, shared.beRawDir },
			stop: shared.closeBackends,
		},
		{
			name: "certificates=100k",
			open: func(b *testing.B) (*storage.Store, *rawDB) { return shared.certificates(b) },
			dirs: func() (string, string) { return shared.certDir, shared.certRawDir },
			stop: func(b *testing.B) {
				if err := shared.closeStore(&shared.certStore); err != nil {
					b.Fatal(err)
				}
				if err := closeRaw(&shared.certRaw); err != nil {
					b.Fatal(err)
				}
			},
		},
	} {
		b.Run(c.name, func(b *testing.B) {
			st, raw := c.open(b)
			start := time.Now()
			for _, f := range append(storage.TableNames(), "index", "changelog", "feed") {
				if err := st.Compact(ctx, f); err != nil {
					b.Fatal(err)
				}
			}
			compactStore := time.Since(start)
			start = time.Now()
			raw.compact()
			compactRaw := time.Since(start)
			stats, err := st.TableStats(ctx)
			if err != nil {
				b.Fatal(err)
			}
			for _, t := range stats {
				b.ReportMetric(mib(t.SSTBytes), t.Table+"_sst_MiB")
			}
			c.stop(b)
			storeDir, rawDir := c.dirs()
			storeSize, err := dirSize(storeDir)
			if err != nil {
				b.Fatal(err)
			}
			rawSize, err := dirSize(rawDir)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(mib(storeSize), "store_MiB")
			b.ReportMetric(mib(rawSize), "raw_MiB")
			b.ReportMetric(float64(storeSize)/float64(rawSize), "store/raw")
			shared.summary.bytes("on-disk size after compaction, "+c.name, storeSize, rawSize, "")
			var parts string
			for _, t := range stats {
				if t.SSTBytes > 0 {
					parts += fmt.Sprintf(" %s=%.1f", t.Table, mib(t.SSTBytes))
					if t.Table == "changelog" {
						shared.summary.bytes("  of which the change log, "+c.name, t.SSTBytes, 0, "")
					}
				}
			}
			b.Logf("SST MiB by column family:%s; compaction took %s (anchor %s)", parts, compactStore, compactRaw)
		})
	}
}

// BenchmarkReopen: Close then Open of the 1M-backend store (median of 3),
// with the default checksum verification of every table at open and with
// SkipVerifyOnOpen, against opening the anchor database.
func BenchmarkReopen(b *testing.B) {
	shared.backends(b)
	shared.closeBackends(b)
	const rounds = 3
	timeOpen := func(skipVerify bool) (open, closeDur time.Duration) {
		var opens, closes []time.Duration
		for range rounds * b.N {
			cfg := storage.DefaultConfig()
			cfg.Dir, cfg.SkipVerifyOnOpen = shared.beDir, skipVerify
			start := time.Now()
			st, err := storage.Open(cfg)
			if err != nil {
				b.Fatal(err)
			}
			opens = append(opens, time.Since(start))
			if _, err := st.GetBackend(context.Background(), backendID(numBackends-1)); err != nil {
				b.Fatal(err)
			}
			start = time.Now()
			if err := st.Close(); err != nil {
				b.Fatal(err)
			}
			closes = append(closes, time.Since(start))
		}
		return median(opens), median(closes)
	}
	verified, closeDur := timeOpen(false)
	unverified, _ := timeOpen(true)
	var rawOpens []time.Duration
	for range rounds * b.N {
		start := time.Now()
		raw, err := openRaw(shared.beRawDir, defaultRawConfig())
		if err != nil {
			b.Fatal(err)
		}
		rawOpens = append(rawOpens, time.Since(start))
		if _, err := raw.get(rawRows, []byte(backendID(numBackends-1))); err != nil {
			b.Fatal(err)
		}
		if err := raw.close(); err != nil {
			b.Fatal(err)
		}
	}
	rawOpen := median(rawOpens)
	b.ReportMetric(float64(verified.Milliseconds()), "store_open_ms")
	b.ReportMetric(float64(unverified.Milliseconds()), "store_open_noverify_ms")
	b.ReportMetric(float64(rawOpen.Milliseconds()), "raw_open_ms")
	b.ReportMetric(float64(closeDur.Milliseconds()), "store_close_ms")
	shared.summary.duration("reopen 1M backends (default: verify checksums)", verified, rawOpen, "< 1s")
	shared.summary.duration("reopen 1M backends (SkipVerifyOnOpen)", unverified, rawOpen, "< 1s")
	shared.summary.duration("close 1M-backend store", closeDur, 0, "")
}
