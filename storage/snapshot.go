package storage

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"sort"
	"strconv"
	"sync"

	"github.com/linxGnu/grocksdb"
	"go.uber.org/zap"
)

// Snapshot stream.
//
// A new node bootstraps from a peer's snapshot instead of catching up from
// seq 1 of every origin: a sequential read of the tables, and bookkeeping
// that is exact because it is read from the same RocksDB snapshot as the
// rows. The stream is a sequence of frames:
//
//	frame   = type(1) | uvarint(len) | payload(len) | crc32c(type|payload) (4, big-endian)
//	'H'     header: 1 format (varint), 2 cluster id, 3 source node id,
//	        4 purge floor (varint), 5 bookkeeping entry (repeated:
//	        {1 origin, 2 Ranges.AppendBinary})
//	'R'     rows of one table: table id(1), then repeated
//	        uvarint(len key) key uvarint(len value) value (the row envelope)
//	'E'     end: 1 rows (varint), 2 frames (varint)
//
// Every table is included, tombstones and TTL rows too. A payload is at
// most maxSnapshotFrame bytes, so the reader never allocates more than that
// for one frame whatever the input says.
const (
	snapshotFormat   = 1
	frameHeader      = 'H'
	frameRows        = 'R'
	frameEnd         = 'E'
	snapshotChunk    = 1 << 20 // rows per 'R' frame are cut at about this size
	maxSnapshotFrame = 8 << 20
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// SnapshotInfo describes a snapshot written or ingested.
type SnapshotInfo struct {
	ClusterID   string      `json:"cluster_id"`
	Source      string      `json:"source"` // node id of the store that wrote it
	Rows        int         `json:"rows"`
	Bytes       int64       `json:"bytes"`
	Bookkeeping Bookkeeping `json:"bookkeeping"`
	PurgeFloor  HLC         `json:"purge_floor"`
}

// snapshotHeader is the decoded 'H' frame.
type snapshotHeader struct {
	format     uint64
	cluster    string
	source     string
	purgeFloor HLC
	bk         Bookkeeping
}

func (h *snapshotHeader) encode() []byte {
	var e encoder
	e.uint(1, h.format)
	e.str(2, h.cluster)
	e.str(3, h.source)
	e.uint(4, uint64(h.purgeFloor))
	origins := make([]string, 0, len(h.bk))
	for o := range h.bk {
		origins = append(origins, o)
	}
	sort.Strings(origins)
	for _, o := range origins {
		var m encoder
		m.str(1, o)
		m.msg(2, h.bk[o].AppendBinary(nil), true)
		e.msg(5, m.b, true)
	}
	return e.b
}

func decodeSnapshotHeader(b []byte) (snapshotHeader, error) {
	h := snapshotHeader{bk: make(Bookkeeping)}
	err := decodeFields(b, func(f field) error {
		switch f.num {
		case 1:
			return f.uint64(&h.format)
		case 2:
			return f.str(&h.cluster)
		case 3:
			return f.str(&h.source)
		case 4:
			var v uint64
			if err := f.uint64(&v); err != nil {
				return err
			}
			h.purgeFloor = HLC(v)
		case 5:
			var origin string
			var rs Ranges
			err := decodeFields(f.b, func(g field) error {
				switch g.num {
				case 1:
					return g.str(&origin)
				case 2:
					return rs.UnmarshalBinary(g.b)
				}
				return nil
			})
			if err != nil {
				return err
			}
			if err := validateKey("snapshot origin", origin); err != nil {
				return err
			}
			h.bk[origin] = rs
		}
		return nil
	})
	if err != nil {
		return h, fmt.Errorf("%w: snapshot header: %v", ErrInvalid, err)
	}
	if h.format != snapshotFormat {
		return h, fmt.Errorf("%w: snapshot format %d (this agent reads %d)", ErrFormatVersion, h.format, snapshotFormat)
	}
	if err := validateKey("snapshot cluster id", h.cluster); err != nil {
		return h, err
	}
	return h, nil
}

// frameWriter writes frames and counts bytes.
type frameWriter struct {
	w      *bufio.Writer
	n      int64
	frames int
}

func (fw *frameWriter) frame(typ byte, payload []byte) error {
	var hdr [1 + binary.MaxVarintLen64]byte
	hdr[0] = typ
	k := binary.PutUvarint(hdr[1:], uint64(len(payload)))
	crc := crc32.Update(crc32.Update(0, crcTable, hdr[:1]), crcTable, payload)
	var tail [4]byte
	binary.BigEndian.PutUint32(tail[:], crc)
	for _, b := range [][]byte{hdr[:1+k], payload, tail[:]} {
		if _, err := fw.w.Write(b); err != nil {
			return fmt.Errorf("storage: snapshot: write: %w", err)
		}
		fw.n += int64(len(b))
	}
	fw.frames++
	return nil
}

// frameReader reads frames, checking sizes and checksums.
type frameReader struct {
	r   *bufio.Reader
	buf []byte
	n   int64
}

// next returns the next frame; the payload is valid until the next call.
func (fr *frameReader) next() (byte, []byte, error) {
	typ, err := fr.r.ReadByte()
	if err != nil {
		if errors.Is(err, io.EOF) {
			return 0, nil, fmt.Errorf("%w: snapshot ends without an end frame", ErrInvalid)
		}
		return 0, nil, fmt.Errorf("storage: snapshot: read: %w", err)
	}
	size, err := binary.ReadUvarint(fr.r)
	if err != nil {
		return 0, nil, fmt.Errorf("%w: snapshot frame length: %v", ErrInvalid, err)
	}
	if size > maxSnapshotFrame {
		return 0, nil, fmt.Errorf("%w: snapshot frame of %d bytes (at most %d)", ErrInvalid, size, maxSnapshotFrame)
	}
	if cap(fr.buf) < int(size)+4 {
		fr.buf = make([]byte, int(size)+4)
	}
	b := fr.buf[:size+4]
	if _, err := io.ReadFull(fr.r, b); err != nil {
		return 0, nil, fmt.Errorf("%w: snapshot frame cut short: %v", ErrInvalid, err)
	}
	payload := b[:size]
	crc := crc32.Update(crc32.Update(0, crcTable, []byte{typ}), crcTable, payload)
	if binary.BigEndian.Uint32(b[size:]) != crc {
		return 0, nil, fmt.Errorf("%w: snapshot frame checksum mismatch", ErrCorrupt)
	}
	fr.n += int64(size) + 5
	return typ, payload, nil
}

// snapshotRow is one row of an 'R' frame.
type snapshotRow struct {
	key, value []byte
}

// decodeRowsFrame splits an 'R' payload into its table and rows; the rows
// alias payload.
func decodeRowsFrame(payload []byte, rows []snapshotRow) (*tableDef, []snapshotRow, error) {
	if len(payload) < 1 {
		return nil, nil, fmt.Errorf("%w: empty rows frame", ErrInvalid)
	}
	def := tableByID(payload[0])
	if def == nil {
		return nil, nil, fmt.Errorf("%w: rows frame of unknown table id %d", ErrInvalid, payload[0])
	}
	b := payload[1:]
	rows = rows[:0]
	for len(b) > 0 {
		var kv [2][]byte
		for i := range kv {
			n, k := binary.Uvarint(b)
			if k <= 0 || n > uint64(len(b)-k) {
				return nil, nil, fmt.Errorf("%w: malformed rows frame", ErrInvalid)
			}
			kv[i] = b[k : k+int(n)]
			b = b[k+int(n):]
		}
		rows = append(rows, snapshotRow{key: kv[0], value: kv[1]})
	}
	return def, rows, nil
}

// Snapshot writes a consistent snapshot of every table (tombstones and
// TTL rows included) and the bookkeeping, the purge floor and the cluster
// id, all read from one RocksDB snapshot taken under the commit lock, so
// that the bookkeeping claims exactly the sets whose rows are in it.
// Writes continue meanwhile; the snapshot pins old data until it returns.
func (s *Store) Snapshot(ctx context.Context, w io.Writer) (SnapshotInfo, error) {
	if err := s.enter(); err != nil {
		return SnapshotInfo{}, err
	}
	defer s.leave()
	if err := s.serving(); err != nil {
		return SnapshotInfo{}, err
	}
	s.commitMu.Lock()
	snap := s.base.NewSnapshot()
	h := snapshotHeader{format: snapshotFormat, source: s.NodeID(), purgeFloor: s.purgeFloor, bk: s.Bookkeeping()}
	h.cluster = s.ClusterID()
	ticket := s.writtenTicketLocked()
	s.commitMu.Unlock()
	defer s.base.ReleaseSnapshot(snap)
	if err := s.awaitSync(ticket); err != nil {
		return SnapshotInfo{}, err
	}
	ro := grocksdb.NewDefaultReadOptions()
	defer ro.Destroy()
	ro.SetSnapshot(snap)
	ro.SetFillCache(false)

	fw := &frameWriter{w: bufio.NewWriterSize(w, 1<<16)}
	info := SnapshotInfo{ClusterID: h.cluster, Source: h.source, Bookkeeping: h.bk, PurgeFloor: h.purgeFloor}
	if err := fw.frame(frameHeader, h.encode()); err != nil {
		return info, err
	}
	chunk := make([]byte, 0, snapshotChunk+4096)
	for _, def := range schema {
		it := s.base.NewIteratorCF(ro, s.cfs[def.name])
		chunk = append(chunk[:0], def.id)
		flush := func() error {
			if len(chunk) <= 1 {
				return nil
			}
			err := fw.frame(frameRows, chunk)
			chunk = append(chunk[:0], def.id)
			return err
		}
		for it.SeekToFirst(); it.Valid(); it.Next() {
			k, v := it.Key().Data(), it.Value().Data()
			chunk = binary.AppendUvarint(chunk, uint64(len(k)))
			chunk = append(chunk, k...)
			chunk = binary.AppendUvarint(chunk, uint64(len(v)))
			chunk = append(chunk, v...)
			info.Rows++
			if len(chunk) >= snapshotChunk {
				if err := ctx.Err(); err != nil {
					it.Close()
					return info, err
				}
				if err := flush(); err != nil {
					it.Close()
					return info, err
				}
			}
		}
		err := it.Err()
		it.Close()
		if err != nil {
			return info, readError(def.name, err)
		}
		if err := flush(); err != nil {
			return info, err
		}
	}
	var e encoder
	e.uint(1, uint64(info.Rows))
	e.uint(2, uint64(fw.frames))
	if err := fw.frame(frameEnd, e.b); err != nil {
		return info, err
	}
	if err := fw.w.Flush(); err != nil {
		return info, fmt.Errorf("storage: snapshot: write: %w", err)
	}
	info.Bytes = fw.n
	return info, nil
}

// Ingest replaces this store's rows with a peer's snapshot: every row
// with its original version, indexes and change log rebuilt from them, the
// sender's bookkeeping, purge floor and cluster id adopted. It originates
// nothing, so it is refused (ErrInvalid) on a store that has committed
// local writes; rows already here (a catch-up or ingest cut short) are
// replaced, since rows of two cuts would make the bookkeeping wrong. The
// store is not ready from the start of the ingest until MarkCaughtUp after
// the first catch-up round; a crash in between leaves it not ready, and a
// second Ingest starts over. Once RocksDB has held a background error
// since the store opened it is refused with ErrNotReady naming a restart
// (flushWaitRefused: its final flush might never end). Run it before
// starting feed consumers: it writes no feed events.
func (s *Store) Ingest(ctx context.Context, r io.Reader) (SnapshotInfo, error) {
	if err := s.enter(); err != nil {
		return SnapshotInfo{}, err
	}
	defer s.leave()
	s.commitMu.Lock()
	defer s.commitMu.Unlock()
	// No decoded row is cached from before the ingest or filled during it.
	defer s.cache.beginTables(TableNames()...).end()
	if s.localSeq > 0 {
		return SnapshotInfo{}, fmt.Errorf("%w: this store has committed %d local change sets; ingest only into a new store", ErrInvalid, s.localSeq)
	}
	// The rows go without the WAL, so the ingest ends with a flush it
	// waits for. Refused before anything is written.
	if err := s.flushWaitRefused("storage: ingest not started"); err != nil {
		return SnapshotInfo{}, err
	}
	fr := &frameReader{r: bufio.NewReaderSize(r, 1<<16)}
	typ, payload, err := fr.next()
	if err != nil {
		return SnapshotInfo{}, err
	}
	if typ != frameHeader {
		return SnapshotInfo{}, fmt.Errorf("%w: snapshot does not start with a header", ErrInvalid)
	}
	h, err := decodeSnapshotHeader(payload)
	if err != nil {
		return SnapshotInfo{}, err
	}
	if s.cfg.ClusterID != "" && h.cluster != s.cfg.ClusterID {
		return SnapshotInfo{}, fmt.Errorf("%w: snapshot of cluster %q, this node is configured for %q", ErrClusterMismatch, h.cluster, s.cfg.ClusterID)
	}
	if h.bk.Max(s.NodeID()) > 0 {
		return SnapshotInfo{}, fmt.Errorf("%w: the snapshot holds seqs of this node's id %s", ErrInvalid, s.NodeID())
	}
	info := SnapshotInfo{ClusterID: h.cluster, Source: h.source, Bookkeeping: h.bk, PurgeFloor: h.purgeFloor}

	// Not ready from here on, durably, and claiming nothing: the rows go
	// before the bookkeeping that describes them comes back.
	start := grocksdb.NewWriteBatch()
	defer start.Destroy()
	start.PutCF(s.cfs[cfMeta], []byte(metaState), []byte(stateIngesting))
	start.DeleteRangeCF(s.cfs[cfMeta], []byte(metaBKPrefix), prefixEnd([]byte(metaBKPrefix)))
	if err := s.base.Write(s.wo, start); err != nil {
		return info, s.noteWriteError(fmt.Errorf("storage: ingest: %w", err))
	}
	s.state.Store(stateIngesting)
	s.bkMu.Lock()
	s.bk = make(map[string]Ranges)
	s.bkMu.Unlock()
	for _, name := range append(TableNames(), cfIndex, cfChangelog) {
		if err := s.clearFamily(name, false); err != nil {
			return info, err
		}
	}
	// One pass: each row with its index entries and change-log key, in
	// large batches without the WAL: the state key above makes a crash
	// restart the ingest, and the memtables are flushed before the ingest
	// is recorded as done.
	wo := grocksdb.NewDefaultWriteOptions()
	wo.DisableWAL(true)
	defer wo.Destroy()
	ingested := append(TableNames(), cfIndex, cfChangelog)
	restore, err := s.bulkLoadOptions(ingested)
	if err != nil {
		return info, err
	}
	defer func() {
		if rerr := restore(); rerr != nil {
			s.log.Error("ingest: restoring the families' write options", zap.Error(rerr))
		}
	}()
	pw := newParallelWriter(s.base, wo, ingestWriters)
	defer pw.close()
	batch := pw.batch()
	var rows []snapshotRow
	ended := false
	for !ended {
		if err := ctx.Err(); err != nil {
			return info, err
		}
		typ, payload, err := fr.next()
		if err != nil {
			return info, err
		}
		switch typ {
		case frameRows:
			def, rs, err := decodeRowsFrame(payload, rows)
			if err != nil {
				return info, err
			}
			rows = rs
			for _, row := range rows {
				if err := def.checkKey(string(row.key)); err != nil {
					return info, fmt.Errorf("%w: snapshot row: %v", ErrInvalid, err)
				}
				d, err := decodeRow(row.value)
				if err != nil {
					return info, fmt.Errorf("%w: snapshot row %s/%q: %v", ErrInvalid, def.name, row.key, err)
				}
				if d.version.Origin == "" || d.version.Seq == 0 || !h.bk[d.version.Origin].Contains(d.version.Seq) {
					return info, fmt.Errorf("%w: snapshot row %s/%q at %s/%d outside the snapshot's bookkeeping",
						ErrInvalid, def.name, row.key, d.version.Origin, d.version.Seq)
				}
				batch.PutCF(s.cfs[def.name], row.key, row.value)
				entries, err := rowEntries(def, string(row.key), &d)
				if err != nil {
					return info, fmt.Errorf("%w: snapshot row %s/%q: %v", ErrInvalid, def.name, row.key, err)
				}
				for _, k := range entries {
					if !coveringIndex(k) { // written once, with its envelope, below
						batch.PutCF(s.cfs[cfIndex], k, nil)
					}
				}
				putCovering(func(k, v []byte) { batch.PutCF(s.cfs[cfIndex], k, v) }, entries, row.value)
				batch.PutCF(s.cfs[cfChangelog], clogKeyOf(def, string(row.key), d.version), nil)
			}
			info.Rows += len(rows)
			if batch.Count() >= ingestBatchEntries {
				if err := pw.write(batch); err != nil {
					return info, s.noteWriteError(fmt.Errorf("storage: ingest: %w", err))
				}
				batch = pw.batch()
			}
		case frameEnd:
			werr := pw.write(batch)
			if cerr := pw.close(); werr == nil {
				werr = cerr
			}
			if werr != nil {
				return info, s.noteWriteError(fmt.Errorf("storage: ingest: %w", werr))
			}
			var want uint64
			err := decodeFields(payload, func(f field) error {
				if f.num == 1 {
					return f.uint64(&want)
				}
				return nil
			})
			if err != nil || want != uint64(info.Rows) {
				return info, fmt.Errorf("%w: snapshot holds %d rows, its end frame says %d (%v)", ErrInvalid, info.Rows, want, err)
			}
			ended = true
		default:
			return info, fmt.Errorf("%w: unknown snapshot frame %q", ErrInvalid, typ)
		}
	}
	info.Bytes = fr.n
	// A background error during the ingest (and a resume by the health
	// probe) leaves the ingest unfinished: a restart starts it over.
	if err := s.flushWaitRefused("storage: ingest not finished"); err != nil {
		return info, err
	}
	fo := grocksdb.NewDefaultFlushOptions()
	fo.SetWait(true)
	defer fo.Destroy()
	for _, name := range ingested {
		if err := s.base.FlushCF(s.cfs[name], fo); err != nil {
			return info, s.noteWriteError(fmt.Errorf("storage: ingest: flush %s: %w", name, err))
		}
	}
	// Adopt the bookkeeping, purge floor and cluster id in one batch, and
	// move to "catching up".
	meta := grocksdb.NewWriteBatch()
	defer meta.Destroy()
	meta.DeleteRangeCF(s.cfs[cfMeta], []byte(metaBKPrefix), prefixEnd([]byte(metaBKPrefix)))
	for o, rs := range h.bk {
		meta.PutCF(s.cfs[cfMeta], bkKey(o), rs.AppendBinary(nil))
	}
	meta.PutCF(s.cfs[cfMeta], []byte(metaPurgeFloor), binary.BigEndian.AppendUint64(nil, uint64(h.purgeFloor)))
	meta.PutCF(s.cfs[cfMeta], []byte(metaClusterID), []byte(h.cluster))
	meta.PutCF(s.cfs[cfMeta], []byte(metaState), []byte(stateCatchingUp))
	if err := s.base.Write(s.wo, meta); err != nil {
		return info, s.noteWriteError(fmt.Errorf("storage: ingest: %w", err))
	}
	s.bkMu.Lock()
	s.bk = make(map[string]Ranges, len(h.bk))
	for o, rs := range h.bk {
		s.bk[o] = rs
	}
	s.clusterID = h.cluster
	s.bkMu.Unlock()
	s.purgeFloor = h.purgeFloor
	s.state.Store(stateCatchingUp)
	s.log.Info("snapshot ingested; catching up before ready", zap.String("source", h.source),
		zap.String("cluster_id", h.cluster), zap.Int("rows", info.Rows), zap.Int64("bytes", info.Bytes))
	return info, nil
}

// ingestWriters is how many batches an ingest writes at once while it
// decodes the next: RocksDB inserts concurrent writers' batches into the
// memtables in parallel, and the memtable inserts are most of an ingest's
// CPU.
const ingestWriters = 2

// parallelWriter writes batches from n goroutines. The keys of an ingest
// are all distinct, so the order in which batches land does not matter.
type parallelWriter struct {
	db      *grocksdb.DB
	wo      *grocksdb.WriteOptions
	full    chan *grocksdb.WriteBatch
	free    chan *grocksdb.WriteBatch
	wg      sync.WaitGroup
	mu      sync.Mutex
	err     error
	closed  bool
	batches []*grocksdb.WriteBatch
}

func newParallelWriter(db *grocksdb.DB, wo *grocksdb.WriteOptions, n int) *parallelWriter {
	w := &parallelWriter{db: db, wo: wo, full: make(chan *grocksdb.WriteBatch), free: make(chan *grocksdb.WriteBatch, n+1)}
	// n being written and one being filled.
	for range n + 1 {
		b := grocksdb.NewWriteBatch()
		w.batches = append(w.batches, b)
		w.free <- b
	}
	for range n {
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			for b := range w.full {
				if err := w.firstErr(); err == nil {
					if err := w.db.Write(w.wo, b); err != nil {
						w.mu.Lock()
						if w.err == nil {
							w.err = err
						}
						w.mu.Unlock()
					}
				}
				b.Clear()
				w.free <- b
			}
		}()
	}
	return w
}

func (w *parallelWriter) firstErr() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// batch returns an empty batch to fill.
func (w *parallelWriter) batch() *grocksdb.WriteBatch { return <-w.free }

// write hands a filled batch (from batch) to a writer; it returns the
// first error of an earlier write, if any.
func (w *parallelWriter) write(b *grocksdb.WriteBatch) error {
	if err := w.firstErr(); err != nil {
		w.free <- b
		return err
	}
	w.full <- b
	return nil
}

// close waits for every batch handed over to be written, frees the
// batches and returns the first write error. It may be called twice.
func (w *parallelWriter) close() error {
	if !w.closed {
		w.closed = true
		close(w.full)
		w.wg.Wait()
		for _, b := range w.batches {
			b.Destroy()
		}
	}
	return w.firstErr()
}

// ingestBatchEntries is how many entries (rows, index entries, change-log
// keys) an ingest gathers before one WAL-less write: about 4 MB of backends.
const ingestBatchEntries = 32 << 10

// bulkLoadOptions relaxes, for the families an ingest writes, the limits
// that make RocksDB slow down or stop writes while compaction catches up:
// auto compaction off, L0 and pending-bytes triggers out of reach. An ingest writes the whole data set in WAL-less
// batches as fast as it can; with the normal limits most of its time went
// into write stalls (L0 slowdown at 20 files, a 16 MB/s delayed write
// rate) behind compactions of data that is still arriving. restore puts
// the options the store was opened with back, and RocksDB then compacts
// the freshly written files in the background.
func (s *Store) bulkLoadOptions(names []string) (restore func() error, err error) {
	var done []string
	restore = func() error {
		var first error
		for _, name := range done {
			f := s.opts.forFamily(name)
			err := s.base.SetOptionsCF(s.cfs[name],
				[]string{"level0_slowdown_writes_trigger", "level0_stop_writes_trigger", "soft_pending_compaction_bytes_limit",
					"hard_pending_compaction_bytes_limit", "disable_auto_compactions"},
				[]string{strconv.Itoa(f.GetLevel0SlowdownWritesTrigger()), strconv.Itoa(f.GetLevel0StopWritesTrigger()),
					strconv.FormatUint(f.GetSoftPendingCompactionBytesLimit(), 10), strconv.FormatUint(f.GetHardPendingCompactionBytesLimit(), 10), "false"})
			if err != nil && first == nil {
				first = fmt.Errorf("storage: restore options of %s: %w", name, err)
			}
		}
		return first
	}
	for _, name := range names {
		err := s.base.SetOptionsCF(s.cfs[name],
			[]string{"disable_auto_compactions", "level0_slowdown_writes_trigger", "level0_stop_writes_trigger",
				"soft_pending_compaction_bytes_limit", "hard_pending_compaction_bytes_limit"},
			[]string{"true", "100000", "100000", "0", "0"})
		if err != nil {
			rerr := restore()
			return nil, errors.Join(fmt.Errorf("storage: bulk-load options of %s: %w", name, err), rerr)
		}
		done = append(done, name)
	}
	return restore, nil
}
