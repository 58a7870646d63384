package storage

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"sort"
	"strings"
	"time"
)

// Secondary indexes live in the "index" column family. Every entry is a
// key with an empty value; the first byte says which index it belongs to
// and every entry ends with what is needed to find its row. Entries are
// written and removed in the same transaction as the row, so an index
// never disagrees with its rows, also after a crash.
const (
	idxGuard         byte = 0 // 0 | index id | value: partition guards, see below
	idxCertDomain    byte = 1 // 1 | lower(name) | 0 | cert id  (Domain and every SAN)
	idxCertExpiry    byte = 2 // 2 | be64(unix s ^ 1<<63) | be32(ns) | cert id
	idxPoolSSLDomain byte = 3 // 3 | lower(ssl_domain) | 0 | pool name
	idxBackendPool   byte = 4 // 4 | pool name | 0 | backend id
	idxObsHealth     byte = 5 // 5 | node id | 0 | healthy (0/1) | backend id
	idxPoolCert      byte = 6 // 6 | ssl_cert_id | 0 | pool name
	// 7 to 10 are the admin API's uniqueness and point lookups (lookup.go).
	idxPoolHost    byte = 7  // 7 | lower(served host) | 0 | pool name  (ssl_domain and every host)
	idxPoolDefault byte = 8  // 8 | "default" | 0 | pool name
	idxBackendAddr byte = 9  // 9 | pool name " " scheme://host:port | 0 | backend id
	idxObsBackend  byte = 10 // 10 | backend id | 0 | node id
)

// Partition guards. RocksDB's optimistic transactions detect a conflict
// only on keys a transaction read with GetForUpdate or wrote; an index scan
// reads a range, so a concurrent commit that adds an entry to the scanned
// range (a phantom) would go unnoticed, and "the pool has no backends, so
// delete it" and "add a backend to the pool" could both commit. Each
// partition of a guarded index (all entries with one indexed value) has a
// guard key, idxGuard | index id | value, with an empty value. Every write
// that adds or removes an entry of the partition also writes its guard in
// the same commit, and every scan of the partition inside Update reads the
// guard with GetForUpdate, so the scan and the change conflict and one of
// the transactions runs again. Guards stay when their partition empties:
// one small key per indexed value ever used.
//
// The guarded indexes are those Tx scans by value. The expiry index is
// only range-read outside transactions, and the observation-health index
// only in View, so their writers (observation flushes are frequent) pay
// nothing.
func guardedIndex(id byte) bool {
	switch id {
	case idxCertDomain, idxPoolSSLDomain, idxBackendPool, idxPoolCert,
		idxPoolHost, idxPoolDefault, idxBackendAddr:
		return true
	}
	return false
}

// guardKey returns the guard of the partition (id, value).
func guardKey(id byte, value []byte) []byte {
	k := make([]byte, 0, 2+len(value))
	k = append(k, idxGuard, id)
	return append(k, value...)
}

// guardOfPrefix returns the guard of the partition an indexPrefix scans,
// or nil when the index is not guarded.
func guardOfPrefix(prefix []byte) []byte {
	if len(prefix) < 2 || !guardedIndex(prefix[0]) || prefix[len(prefix)-1] != 0 {
		return nil
	}
	return guardKey(prefix[0], prefix[1:len(prefix)-1])
}

// guardOfEntry returns the guard of the partition an index entry belongs
// to, or nil when its index is not guarded.
func guardOfEntry(k []byte) []byte {
	if len(k) < 2 || !guardedIndex(k[0]) {
		return nil
	}
	end := bytes.IndexByte(k[1:], 0)
	if end < 0 {
		return nil
	}
	return guardKey(k[0], k[1:1+end])
}

func indexPrefix(id byte, value string) []byte {
	k := make([]byte, 0, 2+len(value))
	k = append(k, id)
	k = append(k, value...)
	return append(k, 0)
}

func indexKey(id byte, value, pk string) []byte {
	return append(indexPrefix(id, value), pk...)
}

// normalizeDomain lower-cases a DNS name and drops a trailing dot.
func normalizeDomain(d string) string {
	return strings.TrimSuffix(strings.ToLower(strings.TrimSpace(d)), ".")
}

// certificateNames returns the normalized, de-duplicated names a
// certificate is indexed under: its Domain and every SAN.
func certificateNames(c *Certificate) []string {
	seen := make(map[string]bool, 1+len(c.Names))
	var out []string
	for _, n := range append([]string{c.Domain}, c.Names...) {
		n = normalizeDomain(n)
		if n == "" || seen[n] {
			continue
		}
		seen[n] = true
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// expiryKey encodes t so that byte order is time order, negative Unix
// times included (flipping the sign bit).
func expiryKey(t time.Time) []byte {
	k := make([]byte, 1, 13)
	k[0] = idxCertExpiry
	k = binary.BigEndian.AppendUint64(k, uint64(t.Unix())^(1<<63))
	return binary.BigEndian.AppendUint32(k, uint32(t.Nanosecond()))
}

const expiryKeyLen = 13

func certificateIndexKeys(c *Certificate) [][]byte {
	var keys [][]byte
	for _, n := range certificateNames(c) {
		keys = append(keys, indexKey(idxCertDomain, n, c.ID))
	}
	if !c.ExpiresAt.IsZero() {
		keys = append(keys, append(expiryKey(c.ExpiresAt), c.ID...))
	}
	return keys
}

func poolIndexKeys(p *Pool) [][]byte {
	var keys [][]byte
	if d := normalizeDomain(p.SSLDomain); d != "" {
		keys = append(keys, indexKey(idxPoolSSLDomain, d, p.Name))
	}
	if p.SSLCertID != "" {
		keys = append(keys, indexKey(idxPoolCert, p.SSLCertID, p.Name))
	}
	return append(keys, poolLookupKeys(p)...)
}

func backendIndexKeys(b *Backend) [][]byte {
	if b.PoolName == "" {
		return nil
	}
	return [][]byte{indexKey(idxBackendPool, b.PoolName, b.ID), backendAddrKey(b)}
}

func obsHealthPrefix(nodeID string, healthy bool) []byte {
	k := indexPrefix(idxObsHealth, nodeID)
	if healthy {
		return append(k, 1)
	}
	return append(k, 0)
}

func observationIndexKeys(o *Observation) [][]byte {
	return [][]byte{append(obsHealthPrefix(o.NodeID, o.Healthy), o.BackendID...),
		indexKey(idxObsBackend, o.BackendID, o.NodeID)}
}

// decodedRecord is a record decoded from its bytes without decrypting
// anything: enough to know its key and its index entries.
type decodedRecord struct {
	key  string
	idx  [][]byte
	cert *Certificate
	pool *Pool
	be   *Backend
	obs  *Observation
	acme *ACMERecord
}

// decodeRecord decodes the record bytes of a row of table.
func decodeRecord(table string, rec []byte) (decodedRecord, error) {
	var d decodedRecord
	switch table {
	case TableCertificates:
		c, _, err := decodeCertificate(rec)
		if err != nil {
			return d, err
		}
		d.key, d.idx, d.cert = c.ID, certificateIndexKeys(&c), &c
	case TablePools:
		p, err := decodePool(rec)
		if err != nil {
			return d, err
		}
		d.key, d.idx, d.pool = p.Name, poolIndexKeys(&p), &p
	case TableBackends:
		b, err := decodeBackend(rec)
		if err != nil {
			return d, err
		}
		d.key, d.idx, d.be = b.ID, backendIndexKeys(&b), &b
	case TableObservations:
		o, err := decodeObservation(rec)
		if err != nil {
			return d, err
		}
		d.key, d.idx, d.obs = ObservationKey(o.NodeID, o.BackendID), observationIndexKeys(&o), &o
	case TableACME:
		a, _, err := decodeACMERecord(rec)
		if err != nil {
			return d, err
		}
		d.key, d.acme = a.Key, &a
	default:
		return d, fmt.Errorf("%w: %q", ErrUnknownTable, table)
	}
	return d, nil
}

// validateRecord checks what the store needs of a record it did not build
// itself (Apply, Import): a valid key and valid indexed values.
func validateRecord(table string, d decodedRecord) error {
	switch table {
	case TableCertificates:
		if err := validateKey("certificate id", d.cert.ID); err != nil {
			return err
		}
		for _, n := range certificateNames(d.cert) {
			if err := validateKey("certificate name", n); err != nil {
				return err
			}
		}
	case TablePools:
		if err := validateKey("pool name", d.pool.Name); err != nil {
			return err
		}
		if err := validateIndexed("pool ssl_domain", normalizeDomain(d.pool.SSLDomain)); err != nil {
			return err
		}
		if err := validateIndexed("pool ssl_cert_id", d.pool.SSLCertID); err != nil {
			return err
		}
		for _, h := range d.pool.Hosts {
			if err := validateIndexed("pool host", normalizeDomain(h)); err != nil {
				return err
			}
		}
	case TableBackends:
		if err := validateKey("backend id", d.be.ID); err != nil {
			return err
		}
		return validateIndexed("backend pool_name", d.be.PoolName)
	case TableObservations:
		if err := validateKey("observation node_id", d.obs.NodeID); err != nil {
			return err
		}
		return validateKey("observation backend_id", d.obs.BackendID)
	case TableACME:
		return validateKey("acme key", d.acme.Key)
	}
	return nil
}

// rowIndexKeys returns the index entries of a stored row (none for an
// absent row or a tombstone).
func rowIndexKeys(table string, r *row) ([][]byte, error) {
	if r == nil || r.deleted {
		return nil, nil
	}
	d, err := decodeRecord(table, r.rec)
	if err != nil {
		return nil, err
	}
	return d.idx, nil
}

// diffKeys returns the keys of old not in new and of new not in old.
func diffKeys(old, new [][]byte) (remove, add [][]byte) {
	has := func(set [][]byte, k []byte) bool {
		for _, s := range set {
			if bytes.Equal(s, k) {
				return true
			}
		}
		return false
	}
	for _, k := range old {
		if !has(new, k) {
			remove = append(remove, k)
		}
	}
	for _, k := range new {
		if !has(old, k) {
			add = append(add, k)
		}
	}
	return remove, add
}
