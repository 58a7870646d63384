package storage

import (
	"bytes"
	"encoding/binary"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Secondary indexes live in the "index" column family. Every entry is a
// key with an empty value; the first byte says which index it belongs to
// and every entry ends with what is needed to find its row. Entries are
// written and removed in the same transaction as the row, so an index
// never disagrees with its rows, also after a crash.
const (
	idxGuard         byte = 0 // 0 | index id | value: partition guards, index version <= 4 only (migrate.go)
	idxCertDomain    byte = 1 // 1 | lower(name) | 0 | cert id  (Domain and every SAN)
	idxCertExpiry    byte = 2 // 2 | be64(unix s ^ 1<<63) | be32(ns) | cert id
	idxPoolSSLDomain byte = 3 // 3 | lower(ssl_domain) | 0 | pool name
	idxBackendPool   byte = 4 // 4 | pool name | 0 | scheme://host:port | 0 | backend id (covering)
	idxObsHealth     byte = 5 // 5 | node id | 0 | healthy (0/1) | backend id
	idxPoolCert      byte = 6 // 6 | ssl_cert_id | 0 | pool name
	idxTombstone     byte = 7 // 7 | be64(hlc) | table id | key: tombstones by age (PurgeTombstones)
	idxExpiry        byte = 8 // 8 | be64(expires ms) | table id | key: rows by expiry (ExpireRows)
	// 9 to 12 are the admin API's uniqueness and point lookups (lookup.go).
	idxPoolHost    byte = 9  // 9 | lower(served host) | 0 | pool name  (ssl_domain and every host)
	idxPoolDefault byte = 10 // 10 | "default" | 0 | pool name
	idxBackendAddr byte = 11 // index version <= 6 only: 11 | pool name " " scheme://host:port | 0 | backend id
	idxObsBackend  byte = 12 // 12 | backend id | 0 | node id
	// 13 | lower(on_demand_allow pattern) | 0 | pool name, for pools
	// with on_demand_tls only (ondemand.go)
	idxPoolOnDemand byte = 13
)

// coveringIndex reports whether an index's entries carry a copy of their
// row's envelope as value, so that reading a partition is one range scan
// instead of one random lookup per row. The backends of a pool are read
// whole and often (the routing table, the API), so that index covers.
func coveringIndex(k []byte) bool { return len(k) > 0 && k[0] == idxBackendPool }

// putCovering writes the row envelope into every covering entry of
// entries (whether new or kept: the envelope changed with the version).
func putCovering(put func(k, v []byte), entries [][]byte, envelope []byte) {
	for _, k := range entries {
		if coveringIndex(k) {
			put(k, envelope)
		}
	}
}

// tombstoneEntry is the index entry of a tombstone of a replicated table.
func tombstoneEntry(h HLC, tableID byte, key string) []byte {
	k := make([]byte, 0, 10+len(key))
	k = append(k, idxTombstone)
	k = binary.BigEndian.AppendUint64(k, uint64(h))
	k = append(k, tableID)
	return append(k, key...)
}

// expiryEntry is the index entry of a row with an expiry.
func expiryEntry(ms int64, tableID byte, key string) []byte {
	k := make([]byte, 0, 10+len(key))
	k = append(k, idxExpiry)
	k = binary.BigEndian.AppendUint64(k, uint64(ms))
	k = append(k, tableID)
	return append(k, key...)
}

// parseTimedEntry splits a tombstone or expiry entry.
func parseTimedEntry(k []byte) (at uint64, def *tableDef, key string, ok bool) {
	if len(k) < 11 || (k[0] != idxTombstone && k[0] != idxExpiry) {
		return 0, nil, "", false
	}
	def = tableByID(k[9])
	if def == nil {
		return 0, nil, "", false
	}
	return binary.BigEndian.Uint64(k[1:9]), def, string(k[10:]), true
}

// Index scans inside Update need no guarding against phantoms: Update runs
// under the commit mutex (tx.go), so no entry changes while it scans.

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

// backendIndexKeys returns a backend's one entry, in its pool's
// partition by position (backendPosition): a pool's backends are listed
// and paged by address, and the entries of one address are the address
// lookup (Tx.BackendsByAddress), so no second entry is needed for it.
func backendIndexKeys(b *Backend) [][]byte {
	if b.PoolName == "" {
		return nil
	}
	k := make([]byte, 0, len(b.PoolName)+len(b.Scheme)+len(b.Host)+len(b.ID)+16)
	k = append(k, idxBackendPool)
	k = append(k, b.PoolName...)
	k = append(k, 0)
	return [][]byte{appendBackendPosition(k, b)}
}

// appendBackendPosition appends b's position in its pool to dst: its
// address as BackendAddress renders it, NUL, its id. An id holds no NUL
// (validateKey), so the id is what follows the last NUL (rowKeyAt).
func appendBackendPosition(dst []byte, b *Backend) []byte {
	dst = append(dst, b.Scheme...)
	dst = append(dst, "://"...)
	// net.JoinHostPort: brackets around a host with a colon (IPv6).
	if strings.IndexByte(b.Host, ':') >= 0 {
		dst = append(dst, '[')
		dst = append(dst, b.Host...)
		dst = append(dst, ']')
	} else {
		dst = append(dst, b.Host...)
	}
	dst = append(dst, ':')
	dst = strconv.AppendInt(dst, int64(b.Port), 10)
	dst = append(dst, 0)
	return append(dst, b.ID...)
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

// rowEntries returns the index entries of a stored row: its record's
// entries when live, its tombstone entry when it is a tombstone of a
// replicated table, and its expiry entry when it expires. None for an
// absent row.
func rowEntries(def *tableDef, key string, r *row) ([][]byte, error) {
	if r == nil {
		return nil, nil
	}
	var recIdx [][]byte
	if !r.deleted {
		d, err := def.decode(r.rec)
		if err != nil {
			return nil, err
		}
		recIdx = d.idx
	}
	return entriesOf(def, key, r, recIdx), nil
}

// entriesOf is rowEntries with the record's entries already known.
func entriesOf(def *tableDef, key string, r *row, recIdx [][]byte) [][]byte {
	out := recIdx
	if r.deleted && def.class == ClassReplicated {
		out = append(out[:len(out):len(out)], tombstoneEntry(r.version.HLC, def.id, key))
	}
	if r.expires > 0 {
		out = append(out[:len(out):len(out)], expiryEntry(r.expires, def.id, key))
	}
	return out
}

// containsKey reports whether set holds k (index entry sets are a few
// keys: a linear scan beats a map).
func containsKey(set [][]byte, k []byte) bool {
	for _, s := range set {
		if bytes.Equal(s, k) {
			return true
		}
	}
	return false
}

// diffKeys returns the keys of old not in new and of new not in old.
func diffKeys(old, new [][]byte) (remove, add [][]byte) {
	for _, k := range old {
		if !containsKey(new, k) {
			remove = append(remove, k)
		}
	}
	for _, k := range new {
		if !containsKey(old, k) {
			add = append(add, k)
		}
	}
	return remove, add
}
