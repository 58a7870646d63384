package storage

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/linxGnu/grocksdb"
	"go.uber.org/zap"
)

// Identity.
//
// A node writes versions under its node id, numbering its change sets
// 1, 2, 3, ... Peers decide "seen" by (origin, seq), so an id must never
// issue a seq twice. Two ways a store can go back in time are closed here:
//
//   - A restored backup or a copied checkpoint holds an old local seq.
//     meta/incarnation is a random value also written to the file
//     IDENTITY in the data directory, outside RocksDB. Backups and
//     checkpoints copy RocksDB's files only, and Restore deletes IDENTITY,
//     so a store whose meta incarnation has no matching file is a copy: Open
//     gives it a new node id (logged at error level). Its rows keep their
//     versions; the old id's seqs become an ordinary remote origin.
//   - A peer may hold higher seqs of our id than we do (a copy this check
//     could not see, such as a whole data directory copied with the file).
//     ObserveOwnSeq, or an applied set of our own id above our seq, takes a
//     new id before the next local write.
//
// meta/cluster_id keeps clusters apart: replication compares it in its
// handshake, and Ingest refuses a snapshot of another cluster.

const (
	metaIncarnation = "incarnation"
	metaClusterID   = "cluster_id"
	metaRotated     = "rotated_from" // the ids this store wrote under before
	metaState       = "state"        // "" ready, "ingesting", "catching_up"
	metaPurgeFloor  = "purge_floor"
	metaBKPrefix    = "bk/"   // bk/<origin> -> Ranges: the seqs of origin applied here
	metaLocalSeq    = "lseq/" // lseq/<be64 seq> -> be64 clock reading at that commit
	identityFile    = "IDENTITY"
)

// Readiness states kept in meta/state.
const (
	stateReady      = ""
	stateIngesting  = "ingesting"
	stateCatchingUp = "catching_up"
)

func randomID(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("storage: generate id: %w", err)
	}
	return hex.EncodeToString(b), nil
}

func localSeqKey(seq uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte(metaLocalSeq), seq)
}

func bkKey(origin string) []byte { return []byte(metaBKPrefix + origin) }

// NodeID returns the id this node writes versions with. It changes only
// when the store finds it has gone back in time (see ObserveOwnSeq).
func (s *Store) NodeID() string { return *s.nodeID.Load() }

// ClusterID returns the id of the cluster this store belongs to.
func (s *Store) ClusterID() string {
	s.bkMu.RLock()
	defer s.bkMu.RUnlock()
	return s.clusterID
}

// loadIdentity reads or creates the node id, incarnation and cluster id,
// and takes a new node id when the store is a copy (see above). It runs in
// Open before anything is committed.
func (s *Store) loadIdentity() error {
	stored, err := s.getRaw(cfMeta, []byte(metaNodeID))
	if err != nil {
		return err
	}
	batch := grocksdb.NewWriteBatch()
	defer batch.Destroy()
	var id string
	fresh := stored == nil
	switch {
	case fresh:
		id = s.cfg.NodeID
		if id == "" {
			if id, err = randomID(8); err != nil {
				return err
			}
		}
		batch.PutCF(s.cfs[cfMeta], []byte(metaNodeID), []byte(id))
		batch.PutCF(s.cfs[cfMeta], []byte(metaFormat), []byte{formatCurrent})
		batch.PutCF(s.cfs[cfMeta], []byte(metaIndexVersion), []byte{indexVersion})
	default:
		id = string(stored)
		rotated, err := s.getRaw(cfMeta, []byte(metaRotated))
		if err != nil {
			return err
		}
		if s.cfg.NodeID != "" && id != s.cfg.NodeID && rotated == nil {
			return fmt.Errorf("%w: data directory belongs to node %q, not %q (a node id never changes; bootstrap a new node from a snapshot)",
				ErrInvalid, stored, s.cfg.NodeID)
		}
	}

	inc, err := s.getRaw(cfMeta, []byte(metaIncarnation))
	if err != nil {
		return err
	}
	file, ferr := os.ReadFile(filepath.Join(s.cfg.Dir, identityFile))
	if ferr != nil && !errors.Is(ferr, os.ErrNotExist) {
		return fmt.Errorf("storage: read %s: %w", identityFile, ferr)
	}
	if inc != nil && strings.TrimSpace(string(file)) != string(inc) {
		// A copy: restored backup, copied checkpoint or volume snapshot.
		old := id
		if id, err = randomID(8); err != nil {
			return err
		}
		seq, _, err := s.readLocalSeq()
		if err != nil {
			return err
		}
		s.log.Error("STORE IS A COPY (restored backup or copied checkpoint): taking a new node id so that peers accept its new writes",
			zap.String("old_node_id", old), zap.String("new_node_id", id), zap.Uint64("old_last_seq", seq))
		s.stageRotation(batch, old, id, seq)
	}
	newInc, err := randomID(16)
	if err != nil {
		return err
	}
	if inc == nil || batch.Count() > 0 {
		batch.PutCF(s.cfs[cfMeta], []byte(metaIncarnation), []byte(newInc))
	} else {
		newInc = string(inc)
	}

	cluster, err := s.getRaw(cfMeta, []byte(metaClusterID))
	if err != nil {
		return err
	}
	switch {
	case cluster == nil && s.cfg.ClusterID != "":
		cluster = []byte(s.cfg.ClusterID)
		batch.PutCF(s.cfs[cfMeta], []byte(metaClusterID), cluster)
	case cluster == nil:
		c, err := randomID(8)
		if err != nil {
			return err
		}
		cluster = []byte(c)
		batch.PutCF(s.cfs[cfMeta], []byte(metaClusterID), cluster)
	case s.cfg.ClusterID != "" && string(cluster) != s.cfg.ClusterID:
		return fmt.Errorf("%w: data directory belongs to cluster %q, not %q", ErrClusterMismatch, cluster, s.cfg.ClusterID)
	}
	if batch.Count() > 0 {
		wo := grocksdb.NewDefaultWriteOptions()
		wo.SetSync(true)
		defer wo.Destroy()
		if err := s.base.Write(wo, batch); err != nil {
			return fmt.Errorf("storage: write identity: %w", err)
		}
	}
	// The file last, after meta is durable: a crash in between leaves a
	// mismatch, which only costs one more new id.
	if string(file) != newInc {
		if err := writeFileSync(filepath.Join(s.cfg.Dir, identityFile), []byte(newInc)); err != nil {
			return err
		}
	}
	s.nodeID.Store(&id)
	s.clusterID = string(cluster)
	return nil
}

// stageRotation puts into batch what moves the store from id old (which
// issued seqs 1..lastSeq) to id fresh: the old id's seqs become a remote
// origin's bookkeeping and the local seq restarts.
func (s *Store) stageRotation(batch *grocksdb.WriteBatch, old, fresh string, lastSeq uint64) {
	batch.PutCF(s.cfs[cfMeta], []byte(metaNodeID), []byte(fresh))
	batch.PutCF(s.cfs[cfMeta], []byte(metaRotated), []byte(old))
	have := s.bkFromDisk(old).Union(Span(1, lastSeq))
	batch.PutCF(s.cfs[cfMeta], bkKey(old), have.AppendBinary(nil))
	batch.DeleteRangeCF(s.cfs[cfMeta], []byte(metaLocalSeq), prefixEnd([]byte(metaLocalSeq)))
}

// bkFromDisk reads the persisted bookkeeping of origin (nil on error or
// absence: only used while rotating, where absence is the normal case).
func (s *Store) bkFromDisk(origin string) Ranges {
	b, err := s.getRaw(cfMeta, bkKey(origin))
	if err != nil || b == nil {
		return nil
	}
	var rs Ranges
	if rs.UnmarshalBinary(b) != nil {
		return nil
	}
	return rs
}

// readLocalSeq returns the last local seq and the clock reading stored
// with it.
func (s *Store) readLocalSeq() (uint64, HLC, error) {
	ro := grocksdb.NewDefaultReadOptions()
	defer ro.Destroy()
	it := s.base.NewIteratorCF(ro, s.cfs[cfMeta])
	defer it.Close()
	it.SeekForPrev(localSeqKey(^uint64(0)))
	if !it.ValidForPrefix([]byte(metaLocalSeq)) {
		return 0, 0, it.Err()
	}
	k, v := it.Key().Data(), it.Value().Data()
	if len(k) != len(metaLocalSeq)+8 || len(v) != 8 {
		return 0, 0, corruptError(cfMeta, errors.New("malformed local seq"))
	}
	return beUint64(k[len(metaLocalSeq):]), HLC(beUint64(v)), nil
}

// loadBookkeeping reads every origin's bookkeeping, the local seq, the
// purge floor and the readiness state into memory.
func (s *Store) loadBookkeeping() error {
	ro := grocksdb.NewDefaultReadOptions()
	defer ro.Destroy()
	it := s.base.NewIteratorCF(ro, s.cfs[cfMeta])
	defer it.Close()
	prefix := []byte(metaBKPrefix)
	for it.Seek(prefix); it.ValidForPrefix(prefix); it.Next() {
		origin := string(it.Key().Data()[len(prefix):])
		var rs Ranges
		if err := rs.UnmarshalBinary(it.Value().Data()); err != nil {
			return corruptError(cfMeta, fmt.Errorf("bookkeeping of %q: %w", origin, err))
		}
		s.bk[origin] = rs
	}
	if err := it.Err(); err != nil {
		return readError(cfMeta, err)
	}
	seq, hw, err := s.readLocalSeq()
	if err != nil {
		return err
	}
	s.localSeq = seq
	if seq > 0 {
		s.bk[s.NodeID()] = s.bk[s.NodeID()].Union(Span(1, seq))
	}
	s.clock.Witness(hw)
	if b, err := s.getRaw(cfMeta, []byte(metaPurgeFloor)); err != nil {
		return err
	} else if len(b) == 8 {
		s.purgeFloor = HLC(beUint64(b))
	}
	st, err := s.getRaw(cfMeta, []byte(metaState))
	if err != nil {
		return err
	}
	s.state.Store(string(st))
	return nil
}

// Bookkeeping is, per origin node id, the set of change-set seqs this
// store has applied (its own commits included). It alone decides "seen":
// it is written in the same RocksDB batch as the rows it describes.
type Bookkeeping map[string]Ranges

// Watermark returns the contiguous watermark of origin: every seq up to
// it has been applied.
func (b Bookkeeping) Watermark(origin string) uint64 { return b[origin].Watermark() }

// Max returns the highest seq of origin applied.
func (b Bookkeeping) Max(origin string) uint64 { return b[origin].Max() }

// Gaps returns the seqs of origin below Max not applied.
func (b Bookkeeping) Gaps(origin string) Ranges { return b[origin].Gaps() }

// Bookkeeping returns a copy of the store's bookkeeping.
func (s *Store) Bookkeeping() Bookkeeping {
	s.bkMu.RLock()
	defer s.bkMu.RUnlock()
	out := make(Bookkeeping, len(s.bk))
	for o, rs := range s.bk {
		out[o] = rs
	}
	return out
}

// ObserveOwnSeq tells the store that a peer holds seqs of this node's id
// up to peerMax (from the peer's bookkeeping). If that is above the last
// seq this store issued, the store has gone back in time: it takes a new
// node id at once, before any further local write, and reports true.
func (s *Store) ObserveOwnSeq(peerMax uint64) (bool, error) {
	if err := s.enter(); err != nil {
		return false, err
	}
	defer s.leave()
	s.commitMu.Lock()
	defer s.commitMu.Unlock()
	return s.rotateIfBehindLocked(peerMax)
}

// rotateIfBehindLocked takes a new node id when seq is above the local
// seq. The caller holds commitMu.
func (s *Store) rotateIfBehindLocked(seq uint64) (bool, error) {
	if seq <= s.localSeq {
		return false, nil
	}
	old := s.NodeID()
	fresh, err := randomID(8)
	if err != nil {
		return false, err
	}
	batch := grocksdb.NewWriteBatch()
	defer batch.Destroy()
	s.stageRotation(batch, old, fresh, s.localSeq)
	wo := grocksdb.NewDefaultWriteOptions()
	wo.SetSync(true)
	defer wo.Destroy()
	if err := s.base.Write(wo, batch); err != nil {
		return false, s.noteWriteError(fmt.Errorf("storage: rotate node id: %w", err))
	}
	s.log.Error("PEER HOLDS NEWER WRITES OF THIS NODE ID: the store went back in time; taking a new node id",
		zap.String("old_node_id", old), zap.String("new_node_id", fresh),
		zap.Uint64("local_seq", s.localSeq), zap.Uint64("peer_seq", seq))
	s.bkMu.Lock()
	s.bk[old] = s.bk[old].Union(Span(1, s.localSeq))
	s.bkMu.Unlock()
	s.localSeq = 0
	s.nodeID.Store(&fresh)
	s.counts.identityRotations.Add(1)
	return true, nil
}

// writeFileSync writes a small file and fsyncs it and its directory.
func writeFileSync(path string, b []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("storage: write %s: %w", path, err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("storage: write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("storage: sync %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("storage: write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("storage: write %s: %w", path, err)
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}
