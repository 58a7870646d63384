package storage

import (
	"encoding/binary"
	"fmt"

	"github.com/linxGnu/grocksdb"
	"go.uber.org/zap"
)

// formatCurrent is the store layout (meta/format):
//
//	1  the change log held one entry per change set ever committed
//	   (history, pruned by time); "seen" was the highest seq per origin
//	2  one change-log key per current row version, bookkeeping per origin,
//	   local seq in meta (changelog.go, identity.go)
const formatCurrent byte = 2

// indexVersion numbers the set of secondary indexes (index.go). A store
// whose index_version is older has its index family rebuilt from the
// tables at Open.
//
//	1  certificates by domain and expiry, pools by ssl_domain, backends by
//	   pool, observations by health
//	2  pools by ssl_cert_id; partition guards
//	3  tombstones by age, rows by expiry; backends by pool covering (the
//	   entry's value is the row)
//	4  pools by served host and by default flag, backends by address,
//	   observations by backend
//	5  no partition guards: commits are serialized (tx.go), so nothing
//	   reads them (the rebuild clears the family, guards included)
//	6  pools by on-demand allow pattern
//	7  backends by pool ordered by address, then id: one entry serves the
//	   pool's list and the address lookup, no backends by address
const indexVersion byte = 7

// migrateChangelog brings a format-1 store to format 2: the bookkeeping of
// each origin is the set of seqs that still have an entry in the old log
// (a pruned seq becomes a gap and is fetched again: never claim what is
// not held), the local seq is the highest seq of the node's own id, and
// the change log and the indexes are rebuilt from the tables.
func (s *Store) migrateChangelog() error {
	f, err := s.getRaw(cfMeta, []byte(metaFormat))
	if err != nil {
		return err
	}
	if len(f) == 1 && f[0] >= formatCurrent {
		return nil
	}
	// A migration cut short after the bookkeeping was derived must not
	// read the half-rebuilt log as the old one.
	done, err := s.getRaw(cfMeta, []byte(metaMigrated))
	if err != nil {
		return err
	}
	if done == nil {
		if err := s.deriveOldBookkeeping(); err != nil {
			return err
		}
	}
	rows, err := s.rebuildDerived(true, true)
	if err != nil {
		return err
	}
	batch := grocksdb.NewWriteBatch()
	defer batch.Destroy()
	batch.PutCF(s.cfs[cfMeta], []byte(metaFormat), []byte{formatCurrent})
	batch.PutCF(s.cfs[cfMeta], []byte(metaIndexVersion), []byte{indexVersion})
	batch.DeleteCF(s.cfs[cfMeta], []byte(metaMigrated))
	if err := s.base.Write(s.wo, batch); err != nil {
		return fmt.Errorf("storage: write format: %w", err)
	}
	s.log.Info("store layout migrated: change log keeps current versions only, bookkeeping per origin", zap.Int("rows", rows))
	return nil
}

// metaMigrated marks that deriveOldBookkeeping is done.
const metaMigrated = "migrate_bookkeeping_done"

// deriveOldBookkeeping writes, from a format-1 change log, the
// bookkeeping of every origin and the local seq, with the marker.
func (s *Store) deriveOldBookkeeping() error {
	ro := grocksdb.NewDefaultReadOptions()
	defer ro.Destroy()
	seen := make(map[string]Ranges)
	it := s.base.NewIteratorCF(ro, s.cfs[cfChangelog])
	for it.SeekToFirst(); it.Valid(); it.Next() {
		k := it.Key().Data()
		if len(k) < 10 || k[len(k)-9] != 0 {
			continue // not a format-1 key
		}
		origin := string(k[:len(k)-9])
		seq := binary.BigEndian.Uint64(k[len(k)-8:])
		rs := seen[origin]
		if n := len(rs); n > 0 && rs[n-1].Hi+1 == seq {
			rs[n-1].Hi = seq
		} else {
			rs = rs.Union(Span(seq, seq))
		}
		seen[origin] = rs
	}
	err := it.Err()
	it.Close()
	if err != nil {
		return corruptError(cfChangelog, err)
	}
	batch := grocksdb.NewWriteBatch()
	defer batch.Destroy()
	self := s.NodeID()
	for origin, rs := range seen {
		if origin == self {
			batch.PutCF(s.cfs[cfMeta], localSeqKey(rs.Max()), binary.BigEndian.AppendUint64(nil, 0))
			continue
		}
		batch.PutCF(s.cfs[cfMeta], bkKey(origin), rs.AppendBinary(nil))
	}
	batch.PutCF(s.cfs[cfMeta], []byte(metaMigrated), []byte{1})
	if err := s.base.Write(s.wo, batch); err != nil {
		return fmt.Errorf("storage: migrate bookkeeping: %w", err)
	}
	return nil
}

// upgradeIndexes rebuilds the index family from the tables when the
// store's index version is older than this agent's.
func (s *Store) upgradeIndexes() error {
	stored, err := s.getRaw(cfMeta, []byte(metaIndexVersion))
	if err != nil {
		return err
	}
	have := byte(1)
	if len(stored) == 1 {
		have = stored[0]
	}
	if have >= indexVersion {
		return nil
	}
	rows, err := s.rebuildDerived(true, false)
	if err != nil {
		return err
	}
	if err := s.base.PutCF(s.wo, s.cfs[cfMeta], []byte(metaIndexVersion), []byte{indexVersion}); err != nil {
		return fmt.Errorf("storage: write index version: %w", err)
	}
	s.log.Info("secondary indexes upgraded", zap.Int("from", int(have)), zap.Int("to", int(indexVersion)), zap.Int("rows", rows))
	return nil
}

// replaceFamily drops column family name and creates it empty: the files
// are not read, so a damaged family goes too.
func (s *Store) replaceFamily(name string) error {
	defer s.cache.beginTables(name).end()
	old := s.cfs[name]
	if err := s.base.DropColumnFamily(old); err != nil {
		return fmt.Errorf("storage: drop %s: %w", name, err)
	}
	fresh, err := s.base.CreateColumnFamily(s.opts.forFamily(name), name)
	if err != nil {
		return fmt.Errorf("storage: recreate %s: %w", name, err)
	}
	for i, h := range s.handles {
		if h == old {
			s.handles[i] = fresh
		}
	}
	old.Destroy()
	s.cfs[name] = fresh
	s.cfID[name] = fresh.ID()
	return nil
}

// clearFamily empties a column family: by dropping and recreating it
// (drop; its files are not read, so a damaged family goes too) or by one
// range deletion over every key the store writes (keys are UTF-8 or start
// with a byte below 0xff: UTF-8 never holds 0xff).
func (s *Store) clearFamily(name string, drop bool) error {
	if drop {
		return s.replaceFamily(name)
	}
	defer s.cache.beginTables(name).end()
	wo := grocksdb.NewDefaultWriteOptions()
	wo.SetSync(true)
	defer wo.Destroy()
	if err := s.base.DeleteRangeCF(wo, s.cfs[name], []byte{}, []byte{0xff}); err != nil {
		return s.noteWriteError(fmt.Errorf("storage: clear %s: %w", name, err))
	}
	return nil
}

// rebuildDerived recreates the index family and/or the change log from
// the tables: both are functions of the rows (every index entry, and one
// change-log key per row at its version). It runs while nothing else
// writes (Open, RebuildIndexes, Ingest) and returns how many rows it read.
func (s *Store) rebuildDerived(index, changelog bool) (int, error) {
	for _, f := range []struct {
		name string
		do   bool
	}{{cfIndex, index}, {cfChangelog, changelog}} {
		if !f.do {
			continue
		}
		if err := s.clearFamily(f.name, true); err != nil {
			return 0, err
		}
	}
	ro := grocksdb.NewDefaultReadOptions()
	defer ro.Destroy()
	ro.SetFillCache(false)
	batch := grocksdb.NewWriteBatch()
	defer batch.Destroy()
	flush := func(wo *grocksdb.WriteOptions) error {
		if batch.Count() == 0 {
			return nil
		}
		if err := s.write(wo, batch); err != nil {
			return s.noteWriteError(fmt.Errorf("storage: rebuild: %w", err))
		}
		batch.Clear()
		return nil
	}
	rows := 0
	for _, def := range schema {
		it := s.base.NewIteratorCF(ro, s.cfs[def.name])
		for it.SeekToFirst(); it.Valid(); it.Next() {
			key := string(it.Key().Data())
			r, err := decodeRow(it.Value().Data())
			if err != nil {
				it.Close()
				return rows, corruptError(def.name, fmt.Errorf("row %q: %w", key, err))
			}
			if index {
				entries, err := rowEntries(def, key, &r)
				if err != nil {
					it.Close()
					return rows, corruptError(def.name, fmt.Errorf("row %q: %w", key, err))
				}
				for _, k := range entries {
					if !coveringIndex(k) { // written once, with its envelope, below
						batch.PutCF(s.cfs[cfIndex], k, nil)
					}
				}
				putCovering(func(k, v []byte) { batch.PutCF(s.cfs[cfIndex], k, v) }, entries, it.Value().Data())
			}
			if changelog {
				batch.PutCF(s.cfs[cfChangelog], clogKeyOf(def, key, r.version), nil)
			}
			rows++
			if batch.Count() >= 10000 {
				if err := flush(s.woAsync); err != nil {
					it.Close()
					return rows, err
				}
			}
		}
		err := it.Err()
		it.Close()
		if err != nil {
			return rows, corruptError(def.name, err)
		}
	}
	if err := flush(s.woAsync); err != nil {
		return rows, err
	}
	// Make the unsynced batches durable before the caller records that
	// the rebuild is done.
	if err := s.base.FlushWAL(true); err != nil {
		return rows, fmt.Errorf("storage: rebuild: sync: %w", err)
	}
	return rows, nil
}
