package storage

import (
	"path/filepath"

	"github.com/linxGnu/grocksdb"

	"github.com/singularity-ng/singularity-edge/storage/internal/bgerror"
	"github.com/singularity-ng/singularity-edge/storage/internal/memhint"
)

// rocksOptions holds the RocksDB options of one open store. Memory is
// bounded by design: one LRU block cache shared by every column family holds
// data, index and filter blocks (SetCacheIndexAndFilterBlocks), so table
// readers do not grow outside it with the data size; memtables are at most
// two of WriteBufferSize per family, and db_write_buffer_size caps their sum.
type rocksOptions struct {
	db     *grocksdb.Options
	cache  *grocksdb.Cache
	bbto   *grocksdb.BlockBasedTableOptions
	family map[string]*grocksdb.Options
	wbs    uint64
	// indexHint: the index family has its insert hint (storage/internal/memhint).
	indexHint bool
	// bgErr remembers RocksDB's background error (nil when grocksdb's
	// layout does not allow the listener; health.go then relies on failed
	// commits alone).
	bgErr *bgerror.Watch
}

func newRocksOptions(cfg Config) *rocksOptions {
	o := &rocksOptions{
		cache:  grocksdb.NewLRUCache(uint64(cfg.BlockCacheSize)),
		bbto:   grocksdb.NewDefaultBlockBasedTableOptions(),
		family: make(map[string]*grocksdb.Options),
		wbs:    uint64(cfg.WriteBufferSize),
	}
	o.bbto.SetBlockCache(o.cache)
	o.bbto.SetCacheIndexAndFilterBlocks(true)
	o.bbto.SetCacheIndexAndFilterBlocksWithHighPriority(true)
	o.bbto.SetPinL0FilterAndIndexBlocksInCache(true)
	o.bbto.SetFilterPolicy(grocksdb.NewBloomFilterFull(10))
	o.bbto.SetFormatVersion(5)

	o.db = grocksdb.NewDefaultOptions()
	o.db.SetCreateIfMissing(true)
	o.db.SetCreateIfMissingColumnFamilies(true)
	// Not paranoid: with paranoid checks a commit whose WAL write fails
	// (ENOSPC) stops every later write until DB::Resume, and a damaged
	// table file fails open without naming its table. Without them the
	// failed commit returns its error (ErrDiskFull) and the next one, once
	// space is back, succeeds. A failed flush, which RocksDB would then
	// ignore and never retry (writes would wait forever once the memtables
	// fill), is made a background error by bgErr's listener: writes fail
	// with it until health.go's resume flushes again. So is a compaction
	// that ran out of space (RocksDB would rerun it every second and
	// stall writes for good): resume waits for room for it. Damage is still
	// caught: every family's checksums are verified at each start
	// (verify.go) and reads verify their blocks.
	o.db.SetParanoidChecks(false)
	o.bgErr = bgerror.NewWatch(o.db)
	// Rows, index entries and the change log of one commit are in different
	// families; atomic flush keeps the flushed SST set consistent across
	// them even where no WAL is replayed (checkpoints, flushed backups).
	o.db.SetAtomicFlush(true)
	// A bounded WAL keeps reopen fast: past it RocksDB flushes memtables.
	o.db.SetMaxTotalWalSize(4 * o.wbs)
	o.db.SetDbWriteBufferSize(4 * o.wbs)
	// Table files are opened lazily (and verified by the checksum scan)
	// so that a damaged table is reported by name, not as a failed open.
	o.db.SetMaxOpenFiles(512)
	o.db.SetKeepLogFileNum(3)
	o.db.SetMaxLogFileSize(4 << 20)
	o.db.SetMaxBackgroundJobs(2)
	o.db.SetBytesPerSync(1 << 20)
	o.db.SetInfoLogLevel(grocksdb.WarnInfoLogLevel)
	// RocksDB's own LOG writer aborts the process on a full disk
	// (storage/internal/bgerror). Where grocksdb's layout does not allow
	// the replacement, RocksDB keeps its own.
	bgerror.InstallLogger(o.db, filepath.Join(cfg.Dir, "LOG"), 4<<20, grocksdb.WarnInfoLogLevel)
	o.db.SetLevelCompactionDynamicLevelBytes(true)
	o.db.SetBlockBasedTableFactory(o.bbto)
	o.db.SetWriteBufferSize(1 << 20)
	o.db.SetMaxWriteBufferNumber(2)
	return o
}

// forFamily returns the options of column family name.
func (o *rocksOptions) forFamily(name string) *grocksdb.Options {
	if f, ok := o.family[name]; ok {
		return f
	}
	f := grocksdb.NewDefaultOptions()
	f.SetBlockBasedTableFactory(o.bbto)
	f.SetLevelCompactionDynamicLevelBytes(true)
	f.SetMaxWriteBufferNumber(2)
	switch name {
	case cfDefault, cfMeta:
		f.SetWriteBufferSize(1 << 20)
	default:
		f.SetWriteBufferSize(o.wbs)
	}
	if isTable(name) {
		// A whole-key bloom filter on the memtables: a commit reads the
		// old row of every key it writes; for new keys (most of a bulk
		// insert) the filter answers without a skiplist search. It costs
		// 2% of the write buffer per memtable. The index family has
		// none: it is only ever range-scanned, never read by key, so a
		// filter there would only cost every insert a hash.
		f.SetMemtableWholeKeyFiltering(true)
		f.SetMemTablePrefixBloomSizeRatio(0.02)
	}
	if name == cfIndex {
		// Without it the store still works, with slower index inserts.
		o.indexHint = memhint.Install(f)
	}
	o.family[name] = f
	return f
}

func (o *rocksOptions) destroy() {
	for _, f := range o.family {
		f.Destroy()
	}
	o.db.Destroy()
	o.bgErr.Destroy()
	o.bbto.Destroy()
	o.cache.Destroy()
}
