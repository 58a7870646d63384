package storage

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/linxGnu/grocksdb"
)

// Info describes the open store.
type Info struct {
	NodeID          string   `json:"node_id"`
	Dir             string   `json:"dir"`
	Tables          []string `json:"tables"`
	Running         bool     `json:"running"`
	LastIndex       uint64   `json:"last_index"`
	FirstIndex      uint64   `json:"first_index"` // oldest change-feed entry kept
	HLC             HLC      `json:"hlc"`
	ClockSkewEvents uint64   `json:"clock_skew_events"`
	ClusterID       string   `json:"cluster_id"`
	// Watermarks is the contiguous watermark per origin; Seen the seqs
	// applied per origin as ranges ("1-120,125"), gaps visible.
	Watermarks map[string]uint64 `json:"watermarks"`
	Seen       map[string]string `json:"seen"`
}

// Info returns the node id, data directory, tables, whether the store is
// open, and the replication counters.
func (s *Store) Info() Info {
	s.stateMu.Lock()
	running := !s.closed
	s.stateMu.Unlock()
	bk := s.Bookkeeping()
	watermarks := make(map[string]uint64, len(bk))
	seen := make(map[string]string, len(bk))
	for o, rs := range bk {
		watermarks[o] = rs.Watermark()
		seen[o] = rs.String()
	}
	return Info{
		NodeID:          s.NodeID(),
		Dir:             s.cfg.Dir,
		Tables:          TableNames(),
		Running:         running,
		LastIndex:       s.lastIndex.Load(),
		FirstIndex:      s.firstIndex.Load(),
		HLC:             s.clock.Last(),
		ClockSkewEvents: s.clock.Skew(),
		ClusterID:       s.ClusterID(),
		Watermarks:      watermarks,
		Seen:            seen,
	}
}

// TableStats are RocksDB's figures for one column family. Key counts and
// live data size are RocksDB estimates (tombstones and overwritten versions
// not yet compacted away are counted).
type TableStats struct {
	Table              string `json:"table"`
	Internal           bool   `json:"internal"` // index, changelog, feed, meta
	EstimatedKeys      uint64 `json:"estimated_keys"`
	LiveDataBytes      uint64 `json:"live_data_bytes"`
	SSTBytes           uint64 `json:"sst_bytes"`
	MemtableBytes      uint64 `json:"memtable_bytes"`
	BlockCacheUsage    uint64 `json:"block_cache_usage_bytes"`    // shared by all tables
	BlockCacheCapacity uint64 `json:"block_cache_capacity_bytes"` // shared by all tables
}

// TableStats returns statistics for every table, then every internal
// column family.
func (s *Store) TableStats(ctx context.Context) ([]TableStats, error) {
	if err := s.enter(); err != nil {
		return nil, err
	}
	defer s.leave()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	usage, capacity := s.opts.cache.GetUsage(), s.opts.cache.GetCapacity()
	var out []TableStats
	for _, n := range append(TableNames(), internalFamilies()...) {
		cf := s.cfs[n]
		prop := func(name string) uint64 {
			v, _ := s.base.GetIntPropertyCF(name, cf)
			return v
		}
		out = append(out, TableStats{
			Table:              n,
			Internal:           !isTable(n),
			EstimatedKeys:      prop("rocksdb.estimate-num-keys"),
			LiveDataBytes:      prop("rocksdb.estimate-live-data-size"),
			SSTBytes:           prop("rocksdb.total-sst-files-size"),
			MemtableBytes:      prop("rocksdb.cur-size-all-mem-tables"),
			BlockCacheUsage:    usage,
			BlockCacheCapacity: capacity,
		})
	}
	return out, nil
}

func (s *Store) family(name string) (*grocksdb.ColumnFamilyHandle, error) {
	if !isTable(name) && !containsString(internalFamilies(), name) {
		return nil, fmt.Errorf("%w: %q", ErrUnknownTable, name)
	}
	return s.cfs[name], nil
}

// RocksDBStats returns RocksDB's "rocksdb.stats" report for a table (or an
// internal column family): compaction, level and stall statistics.
func (s *Store) RocksDBStats(table string) (string, error) {
	if err := s.enter(); err != nil {
		return "", err
	}
	defer s.leave()
	cf, err := s.family(table)
	if err != nil {
		return "", err
	}
	return s.base.GetPropertyCF("rocksdb.stats", cf), nil
}

// Compact compacts the full key range of a table, dropping overwritten
// versions and deleted index entries. It blocks until done, and fails
// (ErrDiskFull for lack of space) when the compaction did: RocksDB's C
// API returns no status for it, so the store's background-error listener
// reports it. While RocksDB holds a background error it refuses a manual
// compaction without running it, and nothing else would say so: Compact
// then fails with that error (ErrDiskFull, or ErrNotReady for another
// cause) and changes nothing (it does not try to resume either). Once
// RocksDB has held one since the store opened, resumed or not, it fails
// with ErrNotReady naming a restart as the remedy (flushWaitRefused).
func (s *Store) Compact(ctx context.Context, table string) error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	cf, err := s.family(table)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := s.compactRefused(table); err != nil {
		return err
	}
	// CompactRange first flushes the memtables and waits for it.
	if err := s.flushWaitRefused(fmt.Sprintf("storage: compact %s not run", table)); err != nil {
		return err
	}
	before, _ := s.opts.bgErr.ManualFailures()
	s.base.CompactRangeCF(cf, grocksdb.Range{})
	if after, err := s.opts.bgErr.ManualFailures(); after > before && err != nil {
		return diskFullError(fmt.Errorf("storage: compact %s: %w", table, err))
	}
	// One that arose meanwhile may have stopped it part way.
	return s.compactRefused(table)
}

// compactRefused returns the error a manual compaction of table fails with
// while RocksDB holds a background error.
func (s *Store) compactRefused(table string) error {
	bg := s.backgroundError()
	if bg == nil {
		return nil
	}
	if errors.Is(bg, ErrDiskFull) {
		return fmt.Errorf("storage: compact %s not run: %w", table, bg)
	}
	return fmt.Errorf("%w: storage: compact %s not run: %w", ErrNotReady, table, bg)
}

// Verify reads every table with checksum verification and checks that the
// secondary indexes and the rows agree both ways: every live row has all
// its index entries and every index entry belongs to a live row that
// produces it. It returns an error wrapping ErrCorrupt describing the
// first few disagreements.
func (s *Store) Verify(ctx context.Context) error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	ro, release := s.snapshotReads()
	defer release()
	ro.SetVerifyChecksums(true)
	ro.SetFillCache(false)

	want := make(map[string]string)      // index key -> "table/key" of its row
	clog := make(map[string]string)      // change-log key -> "table/key" of its row
	wantValue := make(map[string]string) // covering index key -> its row's envelope
	var problems []string
	bk := s.Bookkeeping()
	// While a table is under resync or a bootstrap is unfinished the
	// bookkeeping legitimately lags the rows.
	checkClaims := s.serving() == nil
	for _, def := range schema {
		table := def.name
		if err := ctx.Err(); err != nil {
			return err
		}
		it := s.base.NewIteratorCF(ro, s.cfs[table])
		for it.SeekToFirst(); it.Valid(); it.Next() {
			key := string(it.Key().Data())
			r, err := decodeRow(it.Value().Data())
			if err != nil {
				it.Close()
				return corruptError(table, fmt.Errorf("row %q: %w", key, err))
			}
			if !r.deleted {
				d, err := decodeRecord(table, r.rec)
				if err != nil {
					it.Close()
					return corruptError(table, fmt.Errorf("row %q: %w", key, err))
				}
				if d.key != key {
					it.Close()
					return corruptError(table, fmt.Errorf("row %q holds a record keyed %q", key, d.key))
				}
			}
			entries, err := rowEntries(def, key, &r)
			if err != nil {
				it.Close()
				return corruptError(table, fmt.Errorf("row %q: %w", key, err))
			}
			for _, k := range entries {
				want[string(k)] = table + "/" + key
				if coveringIndex(k) {
					wantValue[string(k)] = string(it.Value().Data())
				}
			}
			clog[string(clogKeyOf(def, key, r.version))] = table + "/" + key
			// The bookkeeping must claim the seq of every stored row:
			// a row whose set is not "seen" would be served by nobody.
			if checkClaims && !bk[r.version.Origin].Contains(r.version.Seq) {
				problems = append(problems, fmt.Sprintf("row %s/%s at %s/%d not in the bookkeeping", table, key, r.version.Origin, r.version.Seq))
			}
		}
		err := it.Err()
		it.Close()
		if err != nil {
			return corruptError(table, err)
		}
	}
	cit := s.base.NewIteratorCF(ro, s.cfs[cfChangelog])
	for cit.SeekToFirst(); cit.Valid(); cit.Next() {
		k := string(cit.Key().Data())
		if _, ok := clog[k]; !ok {
			problems = append(problems, fmt.Sprintf("change-log key %q has no row at its version", k))
			continue
		}
		delete(clog, k)
	}
	err := cit.Err()
	cit.Close()
	if err != nil {
		return corruptError(cfChangelog, err)
	}
	for k, rowName := range clog {
		problems = append(problems, fmt.Sprintf("row %s lacks change-log key %q", rowName, k))
	}
	it := s.base.NewIteratorCF(ro, s.cfs[cfIndex])
	defer it.Close()
	for it.SeekToFirst(); it.Valid(); it.Next() {
		k := string(it.Key().Data())
		if _, ok := want[k]; !ok {
			problems = append(problems, fmt.Sprintf("index entry %q has no row", k))
			continue
		}
		if string(it.Value().Data()) != wantValue[k] {
			problems = append(problems, fmt.Sprintf("index entry %q has a value that is not its row's", k))
		}
		delete(want, k)
	}
	if err := it.Err(); err != nil {
		return corruptError(cfIndex, err)
	}
	for k, rowName := range want {
		problems = append(problems, fmt.Sprintf("row %s lacks index entry %q", rowName, k))
	}
	if len(problems) == 0 {
		return nil
	}
	sort.Strings(problems)
	if len(problems) > 10 {
		problems = append(problems[:10], fmt.Sprintf("and %d more", len(problems)-10))
	}
	return corruptError(cfIndex, fmt.Errorf("%s", strings.Join(problems, "; ")))
}
