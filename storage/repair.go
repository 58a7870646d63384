package storage

import (
	"fmt"
	"strings"
	"time"

	"github.com/linxGnu/grocksdb"
)

// metaResyncPrefix marks a table emptied by RemoveTable: "resync/<table>".
const metaResyncPrefix = "resync/"

// tableIndexes lists the index ids whose entries belong to rows of table.
func tableIndexes(table string) []byte {
	switch table {
	case TableCertificates:
		return []byte{idxCertDomain, idxCertExpiry}
	case TablePools:
		return []byte{idxPoolSSLDomain, idxPoolCert, idxPoolHost, idxPoolDefault}
	case TableBackends:
		return []byte{idxBackendPool, idxBackendAddr}
	case TableObservations:
		return []byte{idxObsHealth, idxObsBackend}
	}
	return nil
}

// RemoveTable empties one table of the stopped store in cfg.Dir: the way
// out of a damaged table when no backup is at hand. The table's RocksDB
// files are dropped without being read, its index entries are deleted, and
// the table is marked for resync (TablesToResync) so that replication
// fetches its rows from peers in full; the change log's version vector
// still says which change sets this node has seen, so ordinary catch-up
// alone would not bring them back. Other tables are not touched.
func RemoveTable(cfg Config, table string) error {
	if !isTable(table) {
		return fmt.Errorf("%w: %q", ErrUnknownTable, table)
	}
	if cfg.Dir == "" {
		return fmt.Errorf("%w: Config.Dir is empty", ErrInvalid)
	}
	if cfg.BlockCacheSize <= 0 {
		cfg.BlockCacheSize = defaultBlockCacheSize
	}
	if cfg.WriteBufferSize <= 0 {
		cfg.WriteBufferSize = defaultWriteBufferSize
	}
	s := &Store{cfg: cfg, cfs: make(map[string]*grocksdb.ColumnFamilyHandle)}
	if cfg.Logger != nil {
		s.log = cfg.Logger
	} else {
		s.log = DefaultConfig().Logger
	}
	if err := s.openDB(); err != nil {
		return err
	}
	err := s.removeTable(table)
	if cerr := s.closeDB(true); err == nil {
		err = cerr
	}
	return err
}

func (s *Store) removeTable(table string) error {
	old := s.cfs[table]
	if err := s.base.DropColumnFamily(old); err != nil {
		return fmt.Errorf("storage: drop table %s: %w", table, err)
	}
	fresh, err := s.base.CreateColumnFamily(s.opts.forFamily(table), table)
	if err != nil {
		return fmt.Errorf("storage: recreate table %s: %w", table, err)
	}
	for i, h := range s.handles {
		if h == old {
			s.handles[i] = fresh
		}
	}
	old.Destroy()
	s.cfs[table] = fresh

	batch := grocksdb.NewWriteBatch()
	defer batch.Destroy()
	for _, id := range tableIndexes(table) {
		batch.DeleteRangeCF(s.cfs[cfIndex], []byte{id}, []byte{id + 1})
		batch.DeleteRangeCF(s.cfs[cfIndex], []byte{idxGuard, id}, []byte{idxGuard, id + 1})
	}
	batch.PutCF(s.cfs[cfMeta], []byte(metaResyncPrefix+table), []byte(time.Now().UTC().Format(time.RFC3339)))
	// The base DB: OptimisticTransactionDB.Write does not take range
	// deletions. Nothing else writes, the store is not open.
	if err := s.base.Write(s.wo, batch); err != nil {
		return fmt.Errorf("storage: remove index entries of %s: %w", table, err)
	}
	return nil
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

// MarkResynced clears the resync mark of a table once replication has
// fetched its rows from a peer.
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
