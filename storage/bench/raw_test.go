package bench

import (
	"fmt"

	"github.com/linxGnu/grocksdb"

	"github.com/singularity-ng/singularity-edge/storage/internal/memhint"
)

// rawDB is the anchor: a plain RocksDB (no transactions, no versions, no
// change log) opened with the options storage uses for its own database
// (storage/options.go, mirrored here because they are unexported), so the
// difference between the two is what the store adds on top of RocksDB.
type rawDB struct {
	dir     string
	db      *grocksdb.DB
	cfs     map[string]*grocksdb.ColumnFamilyHandle
	handles []*grocksdb.ColumnFamilyHandle
	opts    *grocksdb.Options
	cfOpts  []*grocksdb.Options
	bbto    *grocksdb.BlockBasedTableOptions
	cache   *grocksdb.Cache
	wo      *grocksdb.WriteOptions
	ro      *grocksdb.ReadOptions
}

// rawConfig mirrors the storage.Config fields that shape RocksDB.
type rawConfig struct {
	BlockCacheSize  int64
	WriteBufferSize int64
	SyncWAL         bool
	// IndexHint installs the store's memtable insert hint
	// (storage/internal/memhint) on the index and clustered families.
	IndexHint bool
}

func defaultRawConfig() rawConfig {
	return rawConfig{BlockCacheSize: 64 << 20, WriteBufferSize: 16 << 20, SyncWAL: true}
}

// Column families of the anchor database.
const (
	rawRows      = "rows"      // primary key -> row bytes
	rawIndex     = "index"     // secondary index entries, empty values
	rawClustered = "clustered" // pool name NUL backend id -> row bytes
	rawChangelog = "changelog" // origin NUL be64(seq) table-id key -> empty (one per current row version)
	rawFeed      = "feed"      // be64(commit index) -> {origin, seq}
)

func openRaw(dir string, cfg rawConfig) (*rawDB, error) {
	r := &rawDB{dir: dir, cfs: make(map[string]*grocksdb.ColumnFamilyHandle)}
	r.cache = grocksdb.NewLRUCache(uint64(cfg.BlockCacheSize))
	r.bbto = grocksdb.NewDefaultBlockBasedTableOptions()
	r.bbto.SetBlockCache(r.cache)
	r.bbto.SetCacheIndexAndFilterBlocks(true)
	r.bbto.SetCacheIndexAndFilterBlocksWithHighPriority(true)
	r.bbto.SetPinL0FilterAndIndexBlocksInCache(true)
	r.bbto.SetFilterPolicy(grocksdb.NewBloomFilterFull(10))
	r.bbto.SetFormatVersion(5)

	wbs := uint64(cfg.WriteBufferSize)
	r.opts = grocksdb.NewDefaultOptions()
	r.opts.SetCreateIfMissing(true)
	r.opts.SetCreateIfMissingColumnFamilies(true)
	r.opts.SetParanoidChecks(true)
	r.opts.SetAtomicFlush(true)
	r.opts.SetMaxTotalWalSize(4 * wbs)
	r.opts.SetDbWriteBufferSize(4 * wbs)
	r.opts.SetMaxOpenFiles(512)
	r.opts.SetKeepLogFileNum(3)
	r.opts.SetMaxLogFileSize(4 << 20)
	r.opts.SetMaxBackgroundJobs(2)
	r.opts.SetBytesPerSync(1 << 20)
	r.opts.SetInfoLogLevel(grocksdb.WarnInfoLogLevel)
	r.opts.SetLevelCompactionDynamicLevelBytes(true)
	r.opts.SetBlockBasedTableFactory(r.bbto)
	r.opts.SetWriteBufferSize(1 << 20)
	r.opts.SetMaxWriteBufferNumber(2)

	names := []string{"default", rawRows, rawIndex, rawClustered, rawChangelog, rawFeed}
	for _, n := range names {
		f := grocksdb.NewDefaultOptions()
		f.SetBlockBasedTableFactory(r.bbto)
		f.SetLevelCompactionDynamicLevelBytes(true)
		f.SetMaxWriteBufferNumber(2)
		if n == "default" {
			f.SetWriteBufferSize(1 << 20)
		} else {
			f.SetWriteBufferSize(wbs)
		}
		if cfg.IndexHint && (n == rawIndex || n == rawClustered) && !memhint.Install(f) {
			r.cfOpts = append(r.cfOpts, f)
			r.destroyOptions()
			return nil, fmt.Errorf("open raw rocksdb %s: the insert hint does not fit grocksdb's Options", dir)
		}
		r.cfOpts = append(r.cfOpts, f)
	}
	db, handles, err := grocksdb.OpenDbColumnFamilies(r.opts, dir, names, r.cfOpts)
	if err != nil {
		r.destroyOptions()
		return nil, fmt.Errorf("open raw rocksdb %s: %w", dir, err)
	}
	r.db, r.handles = db, handles
	for i, n := range names {
		r.cfs[n] = handles[i]
	}
	r.wo = grocksdb.NewDefaultWriteOptions()
	r.wo.SetSync(cfg.SyncWAL)
	r.ro = grocksdb.NewDefaultReadOptions()
	return r, nil
}

func (r *rawDB) destroyOptions() {
	for _, f := range r.cfOpts {
		f.Destroy()
	}
	r.opts.Destroy()
	r.bbto.Destroy()
	r.cache.Destroy()
}

// close flushes the memtables (as storage's Close does, so the next open
// replays no WAL) and closes the database. Closing twice is a no-op.
func (r *rawDB) close() error {
	if r.db == nil {
		return nil
	}
	fo := grocksdb.NewDefaultFlushOptions()
	fo.SetWait(true)
	var err error
	for _, h := range r.handles {
		if ferr := r.db.FlushCF(h, fo); ferr != nil && err == nil {
			err = ferr
		}
	}
	fo.Destroy()
	for _, h := range r.handles {
		h.Destroy()
	}
	r.db.Close()
	r.db = nil
	r.wo.Destroy()
	r.ro.Destroy()
	r.destroyOptions()
	return err
}

func (r *rawDB) put(cf string, key, value []byte) error {
	return r.db.PutCF(r.wo, r.cfs[cf], key, value)
}

func (r *rawDB) write(wb *grocksdb.WriteBatch) error {
	return r.db.Write(r.wo, wb)
}

// writeEntries writes es in one batch (wb is cleared first).
func (r *rawDB) writeEntries(wb *grocksdb.WriteBatch, es []rawEntry) error {
	wb.Clear()
	for _, e := range es {
		wb.PutCF(r.cfs[e.cf], e.key, e.value)
	}
	return r.write(wb)
}

// get returns a copy of the value, as a caller that keeps it needs.
func (r *rawDB) get(cf string, key []byte) ([]byte, error) {
	v, err := r.db.GetCF(r.ro, r.cfs[cf], key)
	if err != nil {
		return nil, err
	}
	defer v.Free()
	if !v.Exists() {
		return nil, fmt.Errorf("raw get %s %q: not found", cf, key)
	}
	return append([]byte(nil), v.Data()...), nil
}

// compact compacts every column family, as the store's Compact does per table.
func (r *rawDB) compact() {
	for _, h := range r.handles {
		r.db.CompactRangeCF(h, grocksdb.Range{})
	}
}

// cacheUsage is the block cache's current usage in bytes.
func (r *rawDB) cacheUsage() uint64 { return r.cache.GetUsage() }

// memtableBytes is the memory of every family's memtables.
func (r *rawDB) memtableBytes() uint64 {
	var total uint64
	for _, h := range r.handles {
		v, _ := r.db.GetIntPropertyCF("rocksdb.cur-size-all-mem-tables", h)
		total += v
	}
	return total
}
