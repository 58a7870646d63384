package storage

import (
	"fmt"
	"strings"
	"time"

	"github.com/linxGnu/grocksdb"
	"go.uber.org/zap"
)

// metaResyncPrefix marks a table emptied by RemoveTable: "resync/<table>".
const metaResyncPrefix = "resync/"

// RemoveTable empties one table of the stopped store in cfg.Dir: the way
// out of a damaged table when no backup is at hand. The table's RocksDB
// files are dropped without being read, the bookkeeping is reset (so the
// next catch-up fetches every origin in full) and the node takes a new id,
// the index and change log are rebuilt from the other tables, and the
// table is marked for resync: the store is not ready (Ready, ChangeSets)
// until MarkResynced after a catch-up round. Other tables' rows stay.
func RemoveTable(cfg Config, table string) error {
	if !isTable(table) {
		return fmt.Errorf("%w: %q", ErrUnknownTable, table)
	}
	s, err := openOffline(cfg)
	if err != nil {
		return err
	}
	err = s.removeTable(table)
	if cerr := s.closeDB(true); err == nil {
		err = cerr
	}
	return err
}

// openOffline opens the RocksDB of the stopped store in cfg.Dir without
// the store's checks, for repairs.
func openOffline(cfg Config) (*Store, error) {
	if cfg.Dir == "" {
		return nil, fmt.Errorf("%w: Config.Dir is empty", ErrInvalid)
	}
	if cfg.BlockCacheSize <= 0 {
		cfg.BlockCacheSize = defaultBlockCacheSize
	}
	if cfg.WriteBufferSize <= 0 {
		cfg.WriteBufferSize = defaultWriteBufferSize
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &Store{cfg: cfg, cfs: make(map[string]*grocksdb.ColumnFamilyHandle), bk: make(map[string]Ranges)}
	if cfg.Logger != nil {
		s.log = cfg.Logger
	} else {
		s.log = DefaultConfig().Logger
	}
	if err := s.openDB(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Store) removeTable(table string) error {
	if err := s.replaceFamily(table); err != nil {
		return err
	}
	// Every seq the bookkeeping claims may have had rows in the table, so
	// it claims nothing any more: catch-up fetches every origin again
	// (last-write-wins skips what is still here). The node's own seqs
	// become a remote origin too, under a new id, so that its next write
	// reuses none of them.
	stored, err := s.getRaw(cfMeta, []byte(metaNodeID))
	if err != nil {
		return err
	}
	fresh, err := randomID(8)
	if err != nil {
		return err
	}
	batch := grocksdb.NewWriteBatch()
	defer batch.Destroy()
	batch.DeleteRangeCF(s.cfs[cfMeta], []byte(metaBKPrefix), prefixEnd([]byte(metaBKPrefix)))
	batch.DeleteRangeCF(s.cfs[cfMeta], []byte(metaLocalSeq), prefixEnd([]byte(metaLocalSeq)))
	if stored != nil {
		batch.PutCF(s.cfs[cfMeta], []byte(metaNodeID), []byte(fresh))
		batch.PutCF(s.cfs[cfMeta], []byte(metaRotated), stored)
	}
	batch.PutCF(s.cfs[cfMeta], []byte(metaResyncPrefix+table), []byte(time.Now().UTC().Format(time.RFC3339)))
	// Nothing else writes, the store is not open.
	wo := grocksdb.NewDefaultWriteOptions()
	wo.SetSync(true)
	defer wo.Destroy()
	if err := s.base.Write(wo, batch); err != nil {
		return fmt.Errorf("storage: reset bookkeeping after removing %s: %w", table, err)
	}
	s.log.Warn("table removed: bookkeeping reset, node id renewed; the store is not ready until the table is resynced",
		zap.String("table", table), zap.String("old_node_id", string(stored)), zap.String("new_node_id", fresh))
	// Index entries and change-log keys of the table's rows are gone with
	// them: rebuild both from what is left.
	_, err = s.rebuildDerived(true, true)
	return err
}

// TablesToResync lists the tables RemoveTable emptied that have not been
// marked resynced since.
func (s *Store) TablesToResync() ([]string, error) {
	if err := s.enter(); err != nil {
		return nil, err
	}
	defer s.leave()
	ro := grocksdb.NewDefaultReadOptions()
	defer ro.Destroy()
	it := s.base.NewIteratorCF(ro, s.cfs[cfMeta])
	defer it.Close()
	var out []string
	prefix := []byte(metaResyncPrefix)
	for it.Seek(prefix); it.ValidForPrefix(prefix); it.Next() {
		out = append(out, strings.TrimPrefix(string(it.Key().Data()), metaResyncPrefix))
	}
	if err := it.Err(); err != nil {
		return nil, readError(cfMeta, err)
	}
	return out, nil
}

// MarkResynced clears the resync mark of a table once a catch-up round
// from a peer has completed (every origin fetched again).
func (s *Store) MarkResynced(table string) error {
	if !isTable(table) {
		return fmt.Errorf("%w: %q", ErrUnknownTable, table)
	}
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	return s.base.DeleteCF(s.wo, s.cfs[cfMeta], []byte(metaResyncPrefix+table))
}
