package storage

import (
	"fmt"

	"github.com/linxGnu/grocksdb"
	"go.uber.org/zap"
)

// indexVersion numbers the set of secondary indexes (index.go). A store
// whose index_version is older lacks the entries of the indexes added
// since; Open adds them.
//
//	1  certificates by domain and expiry, pools by ssl_domain, backends by
//	   pool, observations by health
//	2  pools by ssl_cert_id; partition guards
//	3  pools by served host and by default flag, backends by address,
//	   observations by backend
const indexVersion byte = 3

// upgradeIndexes writes the index entries of every live row when the
// store's index version is older than this agent's, then records the new
// version. Index entries are keys with empty values, so writing one that
// exists changes nothing; entries of a removed index would stay, but no
// index has been removed. Guards need no backfill: reading an absent guard
// tracks it just as well. It runs in Open, before any transaction.
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
	ro := grocksdb.NewDefaultReadOptions()
	defer ro.Destroy()
	batch := grocksdb.NewWriteBatch()
	defer batch.Destroy()
	flush := func() error {
		if batch.Count() == 0 {
			return nil
		}
		if err := s.base.Write(s.wo, batch); err != nil {
			return fmt.Errorf("storage: write index entries: %w", err)
		}
		batch.Clear()
		return nil
	}
	rows := 0
	for _, table := range TableNames() {
		it := s.base.NewIteratorCF(ro, s.cfs[table])
		for it.SeekToFirst(); it.Valid(); it.Next() {
			r, err := decodeRow(it.Value().Data())
			if err != nil {
				it.Close()
				return corruptError(table, fmt.Errorf("row %q: %w", it.Key().Data(), err))
			}
			keys, err := rowIndexKeys(table, &r)
			if err != nil {
				it.Close()
				return corruptError(table, err)
			}
			for _, k := range keys {
				batch.PutCF(s.cfs[cfIndex], k, nil)
			}
			rows++
			if batch.Count() >= 1000 {
				if err := flush(); err != nil {
					it.Close()
					return err
				}
			}
		}
		err := it.Err()
		it.Close()
		if err != nil {
			return corruptError(table, err)
		}
	}
	batch.PutCF(s.cfs[cfMeta], []byte(metaIndexVersion), []byte{indexVersion})
	if err := flush(); err != nil {
		return err
	}
	s.log.Info("secondary indexes upgraded", zap.Int("from", int(have)), zap.Int("to", int(indexVersion)), zap.Int("rows", rows))
	return nil
}
