package storage

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"
)

// Export format: JSON lines, independent of RocksDB and of the binary row
// encoding, so it survives upgrades of either. The first line is a header:
//
//	{"format":"singularity-edge-export","version":1,"node_id":...,"exported_at":...,"last_index":...}
//
// then one line per row of every table, tombstones included:
//
//	{"table":"pools","key":"web","version":{"hlc":..,"origin":..,"seq":..},"deleted":false,"row":{...}}
//
// "row" is the record in its JSON form (absent for a tombstone). A
// certificate's private key is never written in clear: its line carries
// "private_key_sealed", the key exactly as stored (AES-256-GCM sealed with
// EDGE_ENCRYPTION_KEY, base64), so an import needs the same key.
const (
	exportFormat  = "singularity-edge-export"
	exportVersion = 1
	importBatch   = 1000
	maxExportLine = 64 << 20
)

type exportHeader struct {
	Format     string    `json:"format"`
	Version    int       `json:"version"`
	NodeID     string    `json:"node_id"`
	ExportedAt time.Time `json:"exported_at"`
	LastIndex  uint64    `json:"last_index"`
}

type exportLine struct {
	Table            string          `json:"table"`
	Key              string          `json:"key"`
	Version          Version         `json:"version"`
	Deleted          bool            `json:"deleted,omitempty"`
	Expires          int64           `json:"expires,omitempty"` // Unix ms
	Row              json.RawMessage `json:"row,omitempty"`
	PrivateKeySealed []byte          `json:"private_key_sealed,omitempty"`
}

// Export writes every row (tombstones and versions included) of one
// consistent snapshot to w as JSON lines and returns the number of rows.
func (s *Store) Export(ctx context.Context, w io.Writer) (int, error) {
	bw := bufio.NewWriterSize(w, 1<<16)
	enc := json.NewEncoder(bw)
	enc.SetEscapeHTML(false)
	n := 0
	err := s.View(ctx, func(tx *Tx) error {
		if err := enc.Encode(exportHeader{Format: exportFormat, Version: exportVersion, NodeID: s.NodeID(),
			ExportedAt: time.Now().UTC(), LastIndex: s.lastIndex.Load()}); err != nil {
			return err
		}
		for _, table := range TableNames() {
			it := tx.iterator(table)
			for it.SeekToFirst(); it.Valid(); it.Next() {
				if n%1024 == 0 {
					if err := ctx.Err(); err != nil {
						it.Close()
						return err
					}
				}
				key := string(it.Key().Data())
				line, err := exportRow(table, key, it.Value().Data())
				if err != nil {
					it.Close()
					return err
				}
				if err := enc.Encode(line); err != nil {
					it.Close()
					return err
				}
				n++
			}
			err := it.Err()
			it.Close()
			if err != nil {
				return readError(table, err)
			}
		}
		return nil
	})
	if err != nil {
		return n, err
	}
	return n, bw.Flush()
}

func exportRow(table, key string, value []byte) (exportLine, error) {
	r, err := decodeRow(value)
	if err != nil {
		return exportLine{}, corruptError(table, fmt.Errorf("row %q: %w", key, err))
	}
	line := exportLine{Table: table, Key: key, Version: r.version, Deleted: r.deleted, Expires: r.expires}
	if r.deleted {
		return line, nil
	}
	var rec any
	switch table {
	case TableCertificates:
		c, sealed, err := decodeCertificate(r.rec)
		if err != nil {
			return exportLine{}, corruptError(table, err)
		}
		rec, line.PrivateKeySealed = c, sealed
	case TablePools:
		rec, err = decodePool(r.rec)
	case TableBackends:
		rec, err = decodeBackend(r.rec)
	case TableObservations:
		rec, err = decodeObservation(r.rec)
	case TableACME:
		a, sealed, err := decodeACMERecord(r.rec)
		if err != nil {
			return exportLine{}, corruptError(table, err)
		}
		rec, line.PrivateKeySealed = a, sealed
	case TableAudit:
		rec, err = decodeAudit(r.rec)
	}
	if err != nil {
		return exportLine{}, corruptError(table, err)
	}
	if line.Row, err = json.Marshal(rec); err != nil {
		return exportLine{}, err
	}
	return line, nil
}

// Import reads an export and applies its rows with Apply's rules: per row,
// the newer version wins, so importing into an empty store reproduces the
// exported rows and versions, and importing twice changes nothing the second
// time. It reads the export twice. The first pass checks every line and
// writes nothing, so a bad line (named in the error), a read error or a
// cancelled context changes nothing. The second writes the rows in batches
// of 1000, each atomic and recorded as a change set so that peers receive
// them. The export is not written in one commit: that would hold all of it
// in memory and in one WAL record (gigabytes for the million backends of
// the scale target). So a write that fails in the second pass (a full
// disk, the store closing) leaves the batches before it stored, and its
// error says how many rows and which lines; since the rest was checked,
// importing the same export again completes it (the rows already stored
// are skipped). An r that is an io.Seeker is read again from where it
// stood; another is copied to a temporary file during the first pass. It
// returns how many rows were written.
func (s *Store) Import(ctx context.Context, r io.Reader) (int, error) {
	again, done, err := readTwice(r)
	if err != nil {
		return 0, err
	}
	defer done()
	if _, err := s.importPass(ctx, again.first, nil); err != nil {
		return 0, err
	}
	second, err := again.second()
	if err != nil {
		return 0, err
	}
	applied, line := 0, 0 // line: the last of the batches written
	_, err = s.importPass(ctx, second, func(sets []preparedSet, last int) error {
		n, err := s.importBatch(ctx, sets)
		applied += n
		if err == nil {
			line = last
		}
		return err
	})
	if err != nil && line > 0 {
		return applied, fmt.Errorf("storage: import stopped with %d rows written, those of lines 2 to %d: %w; "+
			"every line was checked before the first write: importing the same export again writes the rest", applied, line, err)
	}
	return applied, err
}

// twoPasses is an import's input, read twice.
type twoPasses struct {
	first  io.Reader
	second func() (io.Reader, error)
}

// readTwice returns r for the first pass, and how to read it again: from
// the offset r stood at when it is an io.Seeker, else from a temporary
// copy that the first pass writes. done removes the copy.
func readTwice(r io.Reader) (twoPasses, func(), error) {
	if sk, ok := r.(io.ReadSeeker); ok {
		if at, err := sk.Seek(0, io.SeekCurrent); err == nil {
			return twoPasses{first: r, second: func() (io.Reader, error) {
				if _, err := sk.Seek(at, io.SeekStart); err != nil {
					return nil, fmt.Errorf("storage: import: read the export again: %w", err)
				}
				return r, nil
			}}, func() {}, nil
		}
	}
	f, err := os.CreateTemp("", "singularity-edge-import-*.jsonl")
	if err != nil {
		return twoPasses{}, nil, fmt.Errorf("storage: import: copy of the export: %w", err)
	}
	done := func() {
		f.Close()
		os.Remove(f.Name())
	}
	w := bufio.NewWriterSize(f, 1<<16)
	return twoPasses{first: io.TeeReader(r, &copyWriter{w: w}), second: func() (io.Reader, error) {
		if err := w.Flush(); err != nil {
			return nil, fmt.Errorf("storage: import: copy of the export: %w", err)
		}
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return nil, fmt.Errorf("storage: import: copy of the export: %w", err)
		}
		return f, nil
	}}, done, nil
}

// copyWriter names a failed write to the import's copy as such: a
// TeeReader hands it to the reader as its own read error.
type copyWriter struct{ w io.Writer }

func (c *copyWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	if err != nil {
		err = fmt.Errorf("storage: import: copy of the export: %w", err)
	}
	return n, err
}

// importPass reads an export, checks every line and groups the rows into
// prepared change sets of at most importBatch rows and MaxChangeSetBytes
// bytes, which it hands to write with the number of the batch's last line
// (nil: the check only). It returns the number of rows read.
func (s *Store) importPass(ctx context.Context, r io.Reader, write func(sets []preparedSet, last int) error) (int, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 1<<16), maxExportLine)
	if !sc.Scan() {
		if err := sc.Err(); err != nil {
			return 0, fmt.Errorf("storage: import: %w", err)
		}
		return 0, fmt.Errorf("%w: import: empty input", ErrInvalid)
	}
	var h exportHeader
	if err := json.Unmarshal(sc.Bytes(), &h); err != nil || h.Format != exportFormat {
		return 0, fmt.Errorf("%w: import: line 1 is not a %s header", ErrInvalid, exportFormat)
	}
	if h.Version < 1 || h.Version > exportVersion {
		return 0, fmt.Errorf("%w: import: export version %d (this agent reads up to %d)", ErrFormatVersion, h.Version, exportVersion)
	}
	rows, lineNo := 0, 1
	var batch []Change
	batchBytes, batchFirst, batchLast := 0, 0, 0
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		sets, err := prepareImport(batch)
		batch, batchBytes = batch[:0], 0
		if err != nil {
			return fmt.Errorf("storage: import lines %d to %d: %w", batchFirst, batchLast, err)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if write == nil {
			return nil
		}
		return write(sets, batchLast)
	}
	for sc.Scan() {
		lineNo++
		if len(sc.Bytes()) == 0 {
			continue
		}
		c, err := s.importLine(sc.Bytes())
		if err != nil {
			// A read that fails hands out the partial line before it
			// reports its error: the read error is the cause.
			if rerr := sc.Err(); rerr != nil {
				return rows, fmt.Errorf("storage: import: read line %d: %w", lineNo, rerr)
			}
			return rows, fmt.Errorf("storage: import line %d: %w", lineNo, err)
		}
		if len(batch) > 0 && batchBytes+len(c.Key)+len(c.Value) > MaxChangeSetBytes {
			if err := flush(); err != nil {
				return rows, err
			}
		}
		if len(batch) == 0 {
			batchFirst = lineNo
		}
		batch = append(batch, c)
		batchBytes += len(c.Key) + len(c.Value)
		batchLast = lineNo
		rows++
		if len(batch) >= importBatch {
			if err := flush(); err != nil {
				return rows, err
			}
		}
	}
	if err := sc.Err(); err != nil {
		return rows, fmt.Errorf("storage: import: %w", err)
	}
	return rows, flush()
}

func (s *Store) importLine(b []byte) (Change, error) {
	var line exportLine
	if err := json.Unmarshal(b, &line); err != nil {
		return Change{}, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if !isTable(line.Table) {
		return Change{}, fmt.Errorf("%w: %q", ErrUnknownTable, line.Table)
	}
	c := Change{Table: line.Table, Key: line.Key, Deleted: line.Deleted, Version: line.Version, Expires: line.Expires}
	if line.Deleted {
		return c, nil
	}
	if len(line.Row) == 0 {
		return Change{}, fmt.Errorf("%w: live row without \"row\"", ErrInvalid)
	}
	var err error
	switch line.Table {
	case TableCertificates:
		var cert Certificate
		if err = json.Unmarshal(line.Row, &cert); err == nil {
			cert = cloneCertificate(cert)
			if line.PrivateKeySealed != nil {
				// Refuse keys this store could not decrypt later.
				if _, err := s.keys.openPrivateKey(cert.ID, line.PrivateKeySealed); err != nil {
					return Change{}, err
				}
			}
			c.Value = encodeCertificate(&cert, line.PrivateKeySealed)
		}
	case TablePools:
		var p Pool
		if err = json.Unmarshal(line.Row, &p); err == nil {
			p = clonePool(p)
			c.Value = encodePool(&p)
		}
	case TableBackends:
		var be Backend
		if err = json.Unmarshal(line.Row, &be); err == nil {
			be = cloneBackend(be)
			c.Value = encodeBackend(&be)
		}
	case TableObservations:
		var o Observation
		if err = json.Unmarshal(line.Row, &o); err == nil {
			o = cloneObservation(o)
			c.Value = encodeObservation(&o)
		}
	case TableACME:
		var a ACMERecord
		if err = json.Unmarshal(line.Row, &a); err == nil {
			a = cloneACMERecord(a)
			if line.PrivateKeySealed != nil {
				if _, err := s.keys.openACMESecret(a.Key, line.PrivateKeySealed); err != nil {
					return Change{}, err
				}
			}
			c.Value = encodeACMERecord(&a, line.PrivateKeySealed)
		}
	case TableAudit:
		var a AuditEntry
		if err = json.Unmarshal(line.Row, &a); err == nil {
			a = cloneAudit(a)
			c.Value = encodeAudit(&a)
		}
	}
	if err != nil {
		return Change{}, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	return c, nil
}

// prepareImport groups the rows of one batch of an export into their
// change sets (a set may arrive in parts, one per batch) and checks them.
func prepareImport(changes []Change) ([]preparedSet, error) {
	sets, err := groupIntoSets(changes)
	if err != nil {
		return nil, err
	}
	prepared := make([]preparedSet, 0, len(sets))
	for _, cs := range sets {
		p, err := prepareSet(cs)
		if err != nil {
			return nil, err
		}
		prepared = append(prepared, p)
	}
	return prepared, nil
}

// importBatch writes the rows of an export with their original versions
// and last-write-wins against the stored rows (so a second import of the
// same export writes nothing), and records their seqs in the bookkeeping:
// an export holds every current row of each set it contains, so the store
// can serve those seqs to peers. Nothing is originated: importing one
// export on two nodes makes no competing versions. The sets are applied
// like a catch-up, one batch, synced.
func (s *Store) importBatch(ctx context.Context, sets []preparedSet) (int, error) {
	if err := s.enter(); err != nil {
		return 0, err
	}
	defer s.leave()
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	res, err := s.applyPrepared(sets, nil, applyOptions{partialSets: true, sync: true})
	if err != nil {
		return 0, err
	}
	return res.Applied, nil
}

// groupIntoSets groups rows by their version into change sets, in the
// order their first row came.
func groupIntoSets(changes []Change) ([]ChangeSet, error) {
	type setKey struct {
		origin string
		seq    uint64
	}
	idx := make(map[setKey]int)
	var out []ChangeSet
	for _, c := range changes {
		k := setKey{c.Version.Origin, c.Version.Seq}
		i, ok := idx[k]
		if !ok {
			i = len(out)
			idx[k] = i
			out = append(out, ChangeSet{Origin: k.origin, Seq: k.seq, HLC: c.Version.HLC})
		}
		out[i].Changes = append(out[i].Changes, c)
	}
	return out, nil
}
