package storage

import (
	"bytes"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/linxGnu/grocksdb"
)

// Typed reads and writes of a transaction. Reads see the transaction's own
// buffered writes. Put* copy the record (later changes by the caller do not
// affect the transaction), set InsertedAt (kept from the stored row) and
// UpdatedAt, and write the committed Version back into the caller's record
// once Update commits.

// read returns the live row at ref: buffered (p) or stored (r).
func (t *Tx) read(ref rowRef) (*pending, *row, error) {
	p, r, live, err := t.current(ref)
	if err != nil {
		return nil, nil, err
	}
	if !live {
		return nil, nil, notFound(ref.table, ref.key)
	}
	return p, r, nil
}

// readRow returns the live row at ref: a copy of the transaction's
// buffered write, or the stored row as decode makes it.
func readRow[T any](t *Tx, ref rowRef, clone func(T) T, decode func(*row) (T, error)) (T, error) {
	p, r, err := t.read(ref)
	if err != nil {
		var zero T
		return zero, err
	}
	if p != nil {
		if v, ok := p.value.(*T); ok {
			return clone(*v), nil
		}
		// Written without a typed copy (PutBackend): decode what it
		// encoded, as a fresh value the caller owns.
		return decode(&row{rec: p.rec})
	}
	return decode(r)
}

// rowsByIndex returns, in key order, the rows of table that the index
// entries with prefix point at, read with get; see indexLookup for after
// and limit.
func rowsByIndex[T any](t *Tx, prefix []byte, table, after string, limit int, get func(key string) (T, error), decode func(*row) (T, error)) ([]T, error) {
	keys, err := t.indexLookup(prefix, table, after, limit)
	if err != nil {
		return nil, err
	}
	if !t.writable {
		// View: no buffered writes, so the rows come in one MultiGet
		// from the snapshot.
		return multiGetRows(t.s, t.ro, table, keys, t.now.UnixMilli(), decode)
	}
	out := make([]T, 0, len(keys))
	for _, k := range keys {
		v, err := get(k)
		if errors.Is(err, ErrNotFound) {
			// An expired row keeps its entries until ExpireRows removes it.
			if r, lerr := t.load(rowRef{table, k}); lerr == nil && r != nil && r.expiredAt(t.now.UnixMilli()) {
				continue
			}
		}
		if err != nil {
			return nil, indexRowError(table, k, err)
		}
		out = append(out, v)
	}
	return out, nil
}

// decodeStoredPool decodes a stored pool row, with its version.
func decodeStoredPool(r *row) (Pool, error) {
	p, err := decodePool(r.rec)
	if err != nil {
		return Pool{}, corruptError(TablePools, err)
	}
	p.Version = r.version
	return p, nil
}

// decodeStoredBackend decodes a stored backend row, with its version.
func decodeStoredBackend(r *row) (Backend, error) {
	b, err := decodeBackend(r.rec)
	if err != nil {
		return Backend{}, corruptError(TableBackends, err)
	}
	b.Version = r.version
	return b, nil
}

// decodeStoredObservation decodes a stored observation row, with its version.
func decodeStoredObservation(r *row) (Observation, error) {
	o, err := decodeObservation(r.rec)
	if err != nil {
		return Observation{}, corruptError(TableObservations, err)
	}
	o.Version = r.version
	return o, nil
}

// Pool returns the pool called name; ErrNotFound if absent or deleted.
func (t *Tx) Pool(name string) (Pool, error) {
	return readRow(t, rowRef{TablePools, name}, clonePool, decodeStoredPool)
}

// PutPool inserts or replaces the pool p.Name.
func (t *Tx) PutPool(p *Pool) error {
	if !t.writable {
		return ErrReadOnly
	}
	if err := validateKey("pool name", p.Name); err != nil {
		return err
	}
	if err := validateIndexed("pool ssl_domain", normalizeDomain(p.SSLDomain)); err != nil {
		return err
	}
	if err := validateIndexed("pool ssl_cert_id", p.SSLCertID); err != nil {
		return err
	}
	ref := rowRef{TablePools, p.Name}
	ins, err := t.insertedAt(ref)
	if err != nil {
		return err
	}
	cp := clonePool(*p)
	cp.InsertedAt, cp.UpdatedAt, cp.Version = ins, t.now, Version{}
	if err := t.put(ref, &pending{rec: encodePool(&cp), idx: poolIndexKeys(&cp), value: &cp,
		ver: &p.Version}); err != nil {
		return err
	}
	p.InsertedAt, p.UpdatedAt = cp.InsertedAt, cp.UpdatedAt
	return nil
}

// DeletePool deletes the pool, leaving a tombstone; ErrNotFound if absent.
func (t *Tx) DeletePool(name string) error { return t.remove(rowRef{TablePools, name}) }

// Backend returns the backend with id.
func (t *Tx) Backend(id string) (Backend, error) {
	return readRow(t, rowRef{TableBackends, id}, cloneBackend, decodeStoredBackend)
}

// PutBackend inserts or replaces the backend b.ID.
func (t *Tx) PutBackend(b *Backend) error {
	if !t.writable {
		return ErrReadOnly
	}
	if err := validateKey("backend id", b.ID); err != nil {
		return err
	}
	if err := validateIndexed("backend pool_name", b.PoolName); err != nil {
		return err
	}
	ref := rowRef{TableBackends, b.ID}
	ins, err := t.insertedAt(ref)
	if err != nil {
		return err
	}
	// A shallow copy is enough: the record is encoded here, and the
	// transaction's own reads decode it rather than keep a typed copy
	// (bulk writes would otherwise copy every row's metadata map once
	// more for reads that seldom come).
	cp := *b
	cp.InsertedAt, cp.UpdatedAt, cp.Version = normTime(ins), t.now, Version{}
	if err := t.put(ref, &pending{rec: encodeBackend(&cp), idx: backendIndexKeys(&cp),
		ver: &b.Version}); err != nil {
		return err
	}
	b.InsertedAt, b.UpdatedAt = cp.InsertedAt, cp.UpdatedAt
	return nil
}

// PutBackends puts every backend of bs, as PutBackend does one by one,
// reading the stored versions they replace in one MultiGet first: the
// path for bulk writes (imports, 1,000-row batches). Versions are written
// back into bs at commit.
func (t *Tx) PutBackends(bs []Backend) error {
	if !t.writable {
		return ErrReadOnly
	}
	keys := make([]string, 0, len(bs))
	for i := range bs {
		if err := validateKey("backend id", bs[i].ID); err != nil {
			return err
		}
		keys = append(keys, bs[i].ID)
	}
	// A transaction that starts with a bulk write gets its maps sized
	// once rather than grown (and rehashed) row by row.
	if len(t.writes) == 0 && len(t.old) == 0 && len(bs) > 8 {
		t.old = make(map[rowRef]*row, len(bs))
		t.writes = make(map[rowRef]*pending, len(bs))
		t.order = make([]rowRef, 0, len(bs))
	}
	if err := t.prefetch(TableBackends, keys); err != nil {
		return err
	}
	for i := range bs {
		if err := t.PutBackend(&bs[i]); err != nil {
			return err
		}
	}
	return nil
}

// DeleteBackend deletes the backend, leaving a tombstone.
func (t *Tx) DeleteBackend(id string) error { return t.remove(rowRef{TableBackends, id}) }

// Certificate returns the certificate with id, private key decrypted.
func (t *Tx) Certificate(id string) (Certificate, error) {
	return readRow(t, rowRef{TableCertificates, id}, cloneCertificate, t.s.decodeStoredCertificate)
}

func (s *Store) decodeStoredCertificate(r *row) (Certificate, error) {
	c, sealed, err := decodeCertificate(r.rec)
	if err != nil {
		return Certificate{}, corruptError(TableCertificates, err)
	}
	c.Version = r.version
	if sealed != nil {
		if c.PrivateKeyPEM, err = s.keys.openPrivateKey(c.ID, sealed); err != nil {
			return Certificate{}, err
		}
	}
	return c, nil
}

// PutCertificate inserts or replaces the certificate c.ID. A private key is
// sealed with the store's key; without a configured key it fails with
// ErrEncryptionKey.
func (t *Tx) PutCertificate(c *Certificate) error {
	if !t.writable {
		return ErrReadOnly
	}
	if err := validateKey("certificate id", c.ID); err != nil {
		return err
	}
	cp := cloneCertificate(*c)
	for _, n := range certificateNames(&cp) {
		if err := validateKey("certificate name", n); err != nil {
			return err
		}
	}
	var sealed []byte
	if cp.PrivateKeyPEM != "" {
		var err error
		if sealed, err = t.s.keys.sealPrivateKey(cp.ID, cp.PrivateKeyPEM); err != nil {
			return err
		}
	}
	ref := rowRef{TableCertificates, c.ID}
	ins, err := t.insertedAt(ref)
	if err != nil {
		return err
	}
	cp.InsertedAt, cp.UpdatedAt, cp.Version = ins, t.now, Version{}
	if err := t.put(ref, &pending{rec: encodeCertificate(&cp, sealed), idx: certificateIndexKeys(&cp), value: &cp,
		ver: &c.Version}); err != nil {
		return err
	}
	c.InsertedAt, c.UpdatedAt = cp.InsertedAt, cp.UpdatedAt
	return nil
}

// DeleteCertificate deletes the certificate, leaving a tombstone.
func (t *Tx) DeleteCertificate(id string) error { return t.remove(rowRef{TableCertificates, id}) }

// Observation returns what node nodeID observed of backend backendID.
func (t *Tx) Observation(nodeID, backendID string) (Observation, error) {
	return readRow(t, rowRef{TableObservations, ObservationKey(nodeID, backendID)}, cloneObservation, decodeStoredObservation)
}

// PutObservation stores this node's observation of a backend. o.NodeID
// must be the store's node id ("" is taken as it): a node writes only its
// own observations. UpdatedAt is set by the store.
//
// The store bounds the write rate: a row whose stored copy was written
// less than Config.ObservationMinInterval ago is refused with an error
// wrapping ErrRateLimited, and nothing is buffered, unless its health
// changes (a transition is written at once). A second write of the same
// row in one transaction replaces the first.
func (t *Tx) PutObservation(o *Observation) error {
	if !t.writable {
		return ErrReadOnly
	}
	if o.NodeID == "" {
		o.NodeID = t.s.NodeID()
	}
	if o.NodeID != t.s.NodeID() {
		return fmt.Errorf("%w: observation of node %q written on node %q", ErrInvalid, o.NodeID, t.s.NodeID())
	}
	if err := validateKey("observation backend_id", o.BackendID); err != nil {
		return err
	}
	cp := cloneObservation(*o)
	cp.UpdatedAt, cp.Version = t.now, Version{}
	ref := rowRef{TableObservations, ObservationKey(cp.NodeID, cp.BackendID)}
	if err := t.observationRate(ref, &cp); err != nil {
		return err
	}
	if err := t.put(ref, &pending{rec: encodeObservation(&cp), idx: observationIndexKeys(&cp), value: &cp,
		ver: &o.Version}); err != nil {
		return err
	}
	o.UpdatedAt = cp.UpdatedAt
	return nil
}

// observationRate enforces Config.ObservationMinInterval for a write of
// o at ref.
func (t *Tx) observationRate(ref rowRef, o *Observation) error {
	bound := t.s.cfg.ObservationMinInterval
	if bound <= 0 {
		return nil
	}
	p, r, live, err := t.current(ref)
	if err != nil || p != nil || !live {
		return err // buffered in this transaction: coalesced; absent: first write
	}
	stored, err := decodeObservation(r.rec)
	if err != nil {
		return corruptError(TableObservations, fmt.Errorf("row %q: %w", ref.key, err))
	}
	if stored.Healthy != o.Healthy {
		return nil
	}
	if age := t.now.Sub(stored.UpdatedAt); age >= 0 && age < bound {
		return &RateLimitError{BackendID: o.BackendID, NodeID: o.NodeID, Age: age, Bound: bound}
	}
	return nil
}

// RateLimitError is the error of an observation refused by the write-rate
// bound. It matches ErrRateLimited; RetryAfter says when the row may be
// written again, so a writer that must not lose it (a final flush at
// shutdown) can wait that long and write it.
type RateLimitError struct {
	BackendID, NodeID string
	Age, Bound        time.Duration
}

func (e *RateLimitError) Error() string {
	return fmt.Sprintf("%v: observation of backend %q by node %q was written %s ago; at most one write per %s "+
		"unless its health changes", ErrRateLimited, e.BackendID, e.NodeID, e.Age.Round(time.Millisecond), e.Bound)
}

func (e *RateLimitError) Unwrap() error { return ErrRateLimited }

// RetryAfter is the time left until the row may be written again.
func (e *RateLimitError) RetryAfter() time.Duration { return e.Bound - e.Age }

// DeleteObservation deletes this node's observation of a backend.
func (t *Tx) DeleteObservation(backendID string) error {
	if err := validateKey("observation backend_id", backendID); err != nil {
		return err
	}
	return t.remove(rowRef{TableObservations, ObservationKey(t.s.NodeID(), backendID)})
}

// BackendsByPool returns the backends of a pool, ordered by position
// (BackendPosition: address, then id).
func (t *Tx) BackendsByPool(pool string) ([]Backend, error) {
	return rowsByIndex(t, indexPrefix(idxBackendPool, pool), TableBackends, "", 0, t.Backend, decodeStoredBackend)
}

// PoolsBySSLDomain returns the pools whose ssl_domain is domain
// (case-insensitive), ordered by name.
func (t *Tx) PoolsBySSLDomain(domain string) ([]Pool, error) {
	return rowsByIndex(t, indexPrefix(idxPoolSSLDomain, normalizeDomain(domain)), TablePools, "", 0, t.Pool, decodeStoredPool)
}

// PoolsByCertificate returns the pools whose ssl_cert_id is certID,
// ordered by name: the pools that still use the certificate.
func (t *Tx) PoolsByCertificate(certID string) ([]Pool, error) {
	return rowsByIndex(t, indexPrefix(idxPoolCert, certID), TablePools, "", 0, t.Pool, decodeStoredPool)
}

// CertificatesByDomain returns the certificates whose Domain or SANs
// include domain exactly (case-insensitive; "*.example.com" finds wildcard
// certificates), ordered by id.
func (t *Tx) CertificatesByDomain(domain string) ([]Certificate, error) {
	return rowsByIndex(t, indexPrefix(idxCertDomain, normalizeDomain(domain)), TableCertificates, "", 0, t.Certificate, t.s.decodeStoredCertificate)
}

// indexRowError reports a row an index entry points at that cannot be read.
func indexRowError(table, key string, err error) error {
	if errors.Is(err, ErrNotFound) {
		return corruptError(cfIndex, fmt.Errorf("index entry for missing %s %q", singular(table), key))
	}
	return err
}

// iterator returns an iterator over family cf in the transaction's snapshot.
func (t *Tx) iterator(cf string) *grocksdb.Iterator {
	return t.s.base.NewIteratorCF(t.ro, t.s.cfs[cf])
}

// indexLookup returns, in index order, the row keys of the index entries
// with prefix whose position is strictly after `after`, at most limit
// (<= 0: all). An entry's position is its key after prefix, and its row
// key is the position after its last NUL: the position itself for most
// indexes, the id after the address for a pool's backends (row keys never
// hold a NUL). The transaction's buffered writes to table override the
// stored entries.
func (t *Tx) indexLookup(prefix []byte, table, after string, limit int) ([]string, error) {
	if t.done {
		return nil, errTxDone
	}
	hasWrites := false
	for ref := range t.writes {
		if ref.table == table {
			hasWrites = true
			break
		}
	}
	var positions []string
	it := t.iterator(cfIndex)
	defer it.Close()
	start := prefix
	if after != "" {
		start = append(append([]byte(nil), prefix...), after...)
	}
	for it.Seek(start); it.ValidForPrefix(prefix); it.Next() {
		pos := string(it.Key().Data()[len(prefix):])
		if pos == after {
			continue
		}
		positions = append(positions, pos)
		if !hasWrites && limit > 0 && len(positions) >= limit {
			break
		}
	}
	if err := it.Err(); err != nil {
		return nil, readError(cfIndex, err)
	}
	if hasWrites {
		set := make(map[string]bool, len(positions))
		for _, pos := range positions {
			set[pos] = true
		}
		for pos := range set {
			if _, ok := t.writes[rowRef{table, rowKeyAt(pos)}]; ok {
				delete(set, pos)
			}
		}
		for ref, p := range t.writes {
			if ref.table != table {
				continue
			}
			for _, ik := range p.idx {
				if !bytes.HasPrefix(ik, prefix) {
					continue
				}
				if pos := string(ik[len(prefix):]); rowKeyAt(pos) == ref.key && pos > after {
					set[pos] = true
				}
			}
		}
		positions = positions[:0]
		for pos := range set {
			positions = append(positions, pos)
		}
		sort.Strings(positions)
		if limit > 0 && len(positions) > limit {
			positions = positions[:limit]
		}
	}
	keys := make([]string, len(positions))
	for i, pos := range positions {
		keys[i] = rowKeyAt(pos)
	}
	return keys, nil
}

// rowKeyAt is the row key of an index entry at position pos
// (indexLookup).
func rowKeyAt(pos string) string {
	return pos[strings.LastIndexByte(pos, 0)+1:]
}

// scanRows calls fn for each live stored row of table whose key starts
// with prefix and sorts strictly after `after`, at most limit (<= 0: all).
func (t *Tx) scanRows(table, prefix, after string, limit int, fn func(key string, r *row) error) error {
	if t.done {
		return errTxDone
	}
	it := t.iterator(table)
	defer it.Close()
	start := prefix
	if after > prefix {
		start = after
	}
	n := 0
	for it.Seek([]byte(start)); it.ValidForPrefix([]byte(prefix)); it.Next() {
		key := string(it.Key().Data())
		if key == after {
			continue
		}
		r, err := decodeRow(it.Value().Data())
		if err != nil {
			return corruptError(table, fmt.Errorf("row %q: %w", key, err))
		}
		if r.deleted || r.expiredAt(t.now.UnixMilli()) {
			continue
		}
		if err := fn(key, &r); err != nil {
			return err
		}
		if n++; limit > 0 && n >= limit {
			break
		}
	}
	if err := it.Err(); err != nil {
		return readError(table, err)
	}
	return nil
}
