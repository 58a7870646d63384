package storage

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
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
// time. Rows are applied in batches of 1000, each atomic and recorded as a
// local change set so that peers receive them; a bad line stops the import
// with an error naming the line, after the batches before it. It returns
// how many rows were written.
func (s *Store) Import(ctx context.Context, r io.Reader) (int, error) {
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
	applied := 0
	var batch []Change
	batchBytes := 0
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		n, err := s.importBatch(ctx, batch)
		applied += n
		batch, batchBytes = batch[:0], 0
		return err
	}
	for lineNo := 2; sc.Scan(); lineNo++ {
		if len(sc.Bytes()) == 0 {
			continue
		}
		c, err := s.importLine(sc.Bytes())
		if err != nil {
			return applied, fmt.Errorf("storage: import line %d: %w", lineNo, err)
		}
		if len(batch) > 0 && batchBytes+len(c.Key)+len(c.Value) > MaxChangeSetBytes {
			if err := flush(); err != nil {
				return applied, err
			}
		}
		batch = append(batch, c)
		batchBytes += len(c.Key) + len(c.Value)
		if len(batch) >= importBatch {
			if err := flush(); err != nil {
				return applied, err
			}
		}
	}
	if err := sc.Err(); err != nil {
		return applied, fmt.Errorf("storage: import: %w", err)
	}
	return applied, flush()
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

// importBatch writes the rows of an export with their original versions
// and last-write-wins against the stored rows (so a second import of the
// same export writes nothing), and records their seqs in the bookkeeping:
// an export holds every current row of each set it contains, so the store
// can serve those seqs to peers. Nothing is originated: importing one
// export on two nodes makes no competing versions. The rows are grouped
// into their change sets and applied like a catch-up, one batch, synced.
func (s *Store) importBatch(ctx context.Context, changes []Change) (int, error) {
	sets, err := groupIntoSets(changes)
	if err != nil {
		return 0, fmt.Errorf("storage: import: %w", err)
	}
	prepared := make([]preparedSet, 0, len(sets))
	for _, cs := range sets {
		p, err := prepareSet(cs)
		if err != nil {
			return 0, fmt.Errorf("storage: import: %w", err)
		}
		prepared = append(prepared, p)
	}
	if err := s.enter(); err != nil {
		return 0, err
	}
	defer s.leave()
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	res, err := s.applyPrepared(prepared, nil, applyOptions{partialSets: true, sync: true})
	return res.Applied, err
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
