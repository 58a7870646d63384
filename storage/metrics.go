package storage

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/singularity-ng/singularity-edge/storage/internal/bgerror"
)

// counters are the store's event counts, read by the metrics collector.
type counters struct {
	commits           atomic.Uint64 // local transactions committed
	applyApplied      atomic.Uint64 // rows written by Apply and Import
	applySkipped      atomic.Uint64 // rows Apply and Import left alone (older or equal)
	applyDuplicate    atomic.Uint64 // change sets ApplyBatch had already recorded
	applyRefused      atomic.Uint64 // rows refused by the purge floor or already expired
	applySets         atomic.Uint64 // change sets ApplyBatch recorded
	identityRotations atomic.Uint64 // new node ids taken after going back in time
	tombstonesPurged  atomic.Uint64
	rowsExpired       atomic.Uint64
	commitFailures    atomic.Uint64 // commits that failed for a storage reason (space, I/O)
	resumeAttempts    atomic.Uint64 // attempts to write again after a failure (resumeAfterFailure)
}

// collector exposes the store's counters and RocksDB figures. It reads
// them at scrape time, so nothing is done per commit beyond an atomic add.
type collector struct {
	s *Store

	commits, applyRows, applyDuplicate, clockSkew                             *prometheus.Desc
	lastIndex, keys, liveBytes, sstBytes, memBytes, cacheUsage, cacheCapacity *prometheus.Desc
	compactionsRunning, compactionPending, flushesRunning                     *prometheus.Desc
	rowCacheBytes, rowCacheCapacity, rowCacheLookups                          *prometheus.Desc
	bgErrors, bgErrorHeld, compactionNeed, resumeAttempts                     *prometheus.Desc
}

func newCollector(s *Store) *collector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("singularity_edge_storage_"+name, help, labels, nil)
	}
	return &collector{
		s:                  s,
		commits:            d("commits_total", "Local transactions committed."),
		applyRows:          d("apply_rows_total", "Rows of change sets applied from peers or imports, by result (applied: newer version written; skipped: stored version newer or equal).", "result"),
		applyDuplicate:     d("apply_duplicate_change_sets_total", "Change sets received again after they had been applied."),
		clockSkew:          d("clock_skew_events_total", "Peer HLC timestamps further ahead of the local wall clock than the maximum offset."),
		lastIndex:          d("feed_last_index", "Commit index of the latest commit (change-feed position)."),
		keys:               d("table_estimated_keys", "RocksDB's estimate of the keys in a table (tombstones and not yet compacted versions included).", "table"),
		liveBytes:          d("table_live_data_bytes", "RocksDB's estimate of the live data size of a table.", "table"),
		sstBytes:           d("table_sst_bytes", "Size of a table's SST files.", "table"),
		memBytes:           d("table_memtable_bytes", "Memory used by a table's memtables.", "table"),
		cacheUsage:         d("block_cache_usage_bytes", "Bytes in the block cache shared by all tables."),
		cacheCapacity:      d("block_cache_capacity_bytes", "Capacity of the block cache shared by all tables."),
		compactionsRunning: d("compactions_running", "Compactions RocksDB is running now (all tables and internal families)."),
		compactionPending: d("compaction_pending_bytes",
			"RocksDB's estimate of the bytes compaction has to rewrite to bring a table's levels within their target sizes.", "table"),
		flushesRunning:   d("flushes_running", "Memtable flushes RocksDB is running now (all tables and internal families)."),
		rowCacheBytes:    d("row_cache_bytes", "Estimated bytes of decoded rows, lists and the expiry index in the row cache."),
		rowCacheCapacity: d("row_cache_capacity_bytes", "Budget of the row cache (Config.RowCacheSize)."),
		rowCacheLookups:  d("row_cache_lookups_total", "Row cache lookups by result (hit, miss).", "result"),
		bgErrors: d("background_errors_total",
			"Background errors RocksDB reported, by the work that failed (flush, compaction, write, memtable, manifest); a flush or compaction that ran out of space is one.", "reason"),
		bgErrorHeld: d("background_error",
			"1 while RocksDB holds a background error, by the work that failed: every write is refused until it is cleared (the store resumes by itself once space is back).", "reason"),
		compactionNeed: d("compaction_space_needed_bytes",
			"Input bytes of the compactions that ran out of space and have not run since: about the free space they need (0 when none)."),
		resumeAttempts: d("resume_attempts_total",
			"Attempts to make writes possible again after a failed one (a resume or a flush); while the disk stays full they come at most once a minute, at once when space is freed."),
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.commits, c.applyRows, c.applyDuplicate,
		c.clockSkew, c.lastIndex, c.keys, c.liveBytes, c.sstBytes, c.memBytes, c.cacheUsage, c.cacheCapacity,
		c.compactionsRunning, c.compactionPending, c.flushesRunning, c.rowCacheBytes, c.rowCacheCapacity, c.rowCacheLookups,
		c.bgErrors, c.bgErrorHeld, c.compactionNeed, c.resumeAttempts} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	s := c.s
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v), labels...)
	}
	counter(c.commits, s.counts.commits.Load())
	counter(c.applyRows, s.counts.applyApplied.Load(), "applied")
	counter(c.applyRows, s.counts.applySkipped.Load(), "skipped")
	counter(c.applyDuplicate, s.counts.applyDuplicate.Load())
	counter(c.clockSkew, s.clock.Skew())
	gauge(c.lastIndex, s.lastIndex.Load())
	rc := s.cache.stats()
	gauge(c.rowCacheBytes, uint64(rc.Bytes))
	gauge(c.rowCacheCapacity, uint64(rc.Budget))
	counter(c.rowCacheLookups, rc.Hits, "hit")
	counter(c.rowCacheLookups, rc.Misses, "miss")
	if err := s.enter(); err != nil {
		return // closed: no RocksDB figures
	}
	defer s.leave()
	held := s.opts.bgErr.Reason()
	for _, r := range bgerror.Reasons {
		counter(c.bgErrors, uint64(s.opts.bgErr.CountFor(r)), r)
		v := uint64(0)
		if r == held {
			v = 1
		}
		gauge(c.bgErrorHeld, v, r)
	}
	gauge(c.compactionNeed, s.opts.bgErr.CompactionNeed())
	counter(c.resumeAttempts, s.counts.resumeAttempts.Load())
	for _, t := range TableNames() {
		cf := s.cfs[t]
		prop := func(name string) uint64 {
			v, _ := s.base.GetIntPropertyCF(name, cf)
			return v
		}
		gauge(c.keys, prop("rocksdb.estimate-num-keys"), t)
		gauge(c.liveBytes, prop("rocksdb.estimate-live-data-size"), t)
		gauge(c.sstBytes, prop("rocksdb.total-sst-files-size"), t)
		gauge(c.memBytes, prop("rocksdb.cur-size-all-mem-tables"), t)
		gauge(c.compactionPending, prop("rocksdb.estimate-pending-compaction-bytes"), t)
	}
	// DB-wide figures: RocksDB answers them for the database, not per
	// family. A property it does not answer is left out, not reported as 0.
	if v, ok := s.base.GetIntProperty("rocksdb.num-running-compactions"); ok {
		gauge(c.compactionsRunning, v)
	}
	if v, ok := s.base.GetIntProperty("rocksdb.num-running-flushes"); ok {
		gauge(c.flushesRunning, v)
	}
	gauge(c.cacheUsage, s.opts.cache.GetUsage())
	gauge(c.cacheCapacity, s.opts.cache.GetCapacity())
}
