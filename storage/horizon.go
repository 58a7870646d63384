package storage

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/linxGnu/grocksdb"
	"go.uber.org/zap"
)

// The purge horizon says, per origin, up to which seq this node may have
// purged tombstones: every tombstone PurgeTombstones removes is at or below
// the lowest contiguous watermark of its origin over the members it was
// given and this node. An answer for seqs at or below it may lack deletes,
// so replication refuses to serve them (the asker was not among the
// members and must rebuild from a snapshot).
//
// It lives in meta under purge_horizon/<origin>, written under the commit
// lock before the batches that remove the tombstones it covers, so every
// state of the store (after a crash, in a checkpoint, a backup or a
// snapshot) that lacks a purged tombstone also holds a horizon covering
// it. Agents before this one kept it in a JSON file beside the store,
// which a backup or a copied checkpoint left behind; Open moves that file
// into meta once.
const (
	metaHorizonPrefix = "purge_horizon/" // purge_horizon/<origin> -> be64 seq
	// legacyHorizonFile is where the replication adapter kept the horizon
	// (origin -> seq, JSON) before it moved into meta.
	legacyHorizonFile = "REPLICATION_PURGED"
)

func horizonKey(origin string) []byte { return []byte(metaHorizonPrefix + origin) }

// PurgeHorizon returns, per origin, the seq up to which this store may
// have purged tombstones (origins without a purge are absent).
func (s *Store) PurgeHorizon() map[string]uint64 {
	s.bkMu.RLock()
	defer s.bkMu.RUnlock()
	out := make(map[string]uint64, len(s.horizon))
	for o, seq := range s.horizon {
		out[o] = seq
	}
	return out
}

// loadHorizon reads the purge horizon from meta.
func (s *Store) loadHorizon() error {
	s.horizon = make(map[string]uint64)
	ro := grocksdb.NewDefaultReadOptions()
	defer ro.Destroy()
	prefix := []byte(metaHorizonPrefix)
	it := s.base.NewIteratorCF(ro, s.cfs[cfMeta])
	defer it.Close()
	for it.Seek(prefix); it.ValidForPrefix(prefix); it.Next() {
		v := it.Value().Data()
		if len(v) != 8 {
			return corruptError(cfMeta, fmt.Errorf("malformed purge horizon %q", it.Key().Data()))
		}
		s.horizon[string(it.Key().Data()[len(prefix):])] = binary.BigEndian.Uint64(v)
	}
	if err := it.Err(); err != nil {
		return readError(cfMeta, err)
	}
	return nil
}

// raiseHorizonLocked adds to batch the horizon entries that low raises and
// returns the horizon after the batch commits. The caller holds commitMu
// (or is Open), the only writer of the horizon; it installs the result
// under bkMu, which readers take.
func (s *Store) raiseHorizonLocked(batch *grocksdb.WriteBatch, low map[string]uint64) map[string]uint64 {
	var next map[string]uint64
	for o, seq := range low {
		if seq <= s.horizon[o] {
			continue
		}
		if next == nil {
			next = make(map[string]uint64, len(s.horizon)+len(low))
			for k, v := range s.horizon {
				next[k] = v
			}
		}
		next[o] = seq
		batch.PutCF(s.cfs[cfMeta], horizonKey(o), binary.BigEndian.AppendUint64(nil, seq))
	}
	if next == nil {
		return s.horizon
	}
	return next
}

// raiseHorizon raises the horizon to low where low is higher, synced.
func (s *Store) raiseHorizon(low map[string]uint64) error {
	s.commitMu.Lock()
	defer s.commitMu.Unlock()
	batch := grocksdb.NewWriteBatch()
	defer batch.Destroy()
	next := s.raiseHorizonLocked(batch, low)
	if batch.Count() == 0 {
		return nil
	}
	if err := s.base.Write(s.wo, batch); err != nil {
		return s.noteWriteError(writeError(err))
	}
	s.bkMu.Lock()
	s.horizon = next
	s.bkMu.Unlock()
	return nil
}

// migrateHorizonFile moves a horizon file left by an older agent into meta
// (keeping the higher seq where both have one), synced, then removes the
// file. A crash in between leaves the file, and the next Open moves it
// again: raising is idempotent.
func (s *Store) migrateHorizonFile() error {
	path := filepath.Join(s.cfg.Dir, legacyHorizonFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("storage: read %s: %w", legacyHorizonFile, err)
	}
	var old map[string]uint64
	if err := json.Unmarshal(b, &old); err != nil {
		return fmt.Errorf("%w: %s is not a purge horizon (%v): it was written by an older agent; "+
			"fix or remove it by hand", ErrCorrupt, path, err)
	}
	for o := range old {
		if o == "" || strings.IndexByte(o, 0) >= 0 {
			return fmt.Errorf("%w: %s names origin %q", ErrCorrupt, path, o)
		}
	}
	batch := grocksdb.NewWriteBatch()
	defer batch.Destroy()
	next := s.raiseHorizonLocked(batch, old)
	if batch.Count() > 0 {
		if err := s.base.Write(s.wo, batch); err != nil {
			return s.noteWriteError(fmt.Errorf("storage: migrate %s: %w", legacyHorizonFile, err))
		}
	}
	s.bkMu.Lock()
	s.horizon = next
	s.bkMu.Unlock()
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("storage: remove %s after moving it into the store: %w", legacyHorizonFile, err)
	}
	s.log.Info("purge horizon moved from its file into the store", zap.Int("origins", len(old)))
	return nil
}
