package storage

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/linxGnu/grocksdb"
)

// Reads outside a transaction. Each runs on one consistent snapshot, so an
// index and its rows agree within one call. List* are paginated: keys
// strictly after `after`, at most limit rows (<= 0: no limit), in key order.

// GetPool returns the pool called name.
func (s *Store) GetPool(ctx context.Context, name string) (Pool, error) {
	return getCached(ctx, s, cachePools, TablePools, name, decodeStoredPool, clonePool, poolSize)
}

// GetBackend returns the backend with id.
func (s *Store) GetBackend(ctx context.Context, id string) (Backend, error) {
	return getCached(ctx, s, cacheBackends, TableBackends, id, decodeStoredBackend, cloneBackend, backendSize)
}

// GetCertificate returns the certificate with id, private key decrypted.
func (s *Store) GetCertificate(ctx context.Context, id string) (Certificate, error) {
	return getCached(ctx, s, cacheCerts, TableCertificates, id, s.decodeStoredCertificate, cloneCertificate, certificateSize)
}

// GetObservation returns node nodeID's observation of a backend.
// Observations are rewritten all the time and carry an expiry: they are
// not cached.
func (s *Store) GetObservation(ctx context.Context, nodeID, backendID string) (Observation, error) {
	if err := s.enter(); err != nil {
		return Observation{}, err
	}
	defer s.leave()
	if err := ctx.Err(); err != nil {
		return Observation{}, err
	}
	o, _, err := getLive(s, TableObservations, ObservationKey(nodeID, backendID), decodeStoredObservation)
	return o, err
}

// getCached reads one row through the row cache (rowcache.go): a hit is
// a copy of the cached value; a miss reads RocksDB and fills the cache
// unless a write of the table began or ended meanwhile.
func getCached[T any](ctx context.Context, s *Store, table byte, name, key string, decode func(*row) (T, error),
	clone func(T) T, size func(*T) int64) (T, error) {
	var zero T
	if err := ctx.Err(); err != nil {
		return zero, err
	}
	// A hit does not touch RocksDB, so it need not hold off Close.
	k := cacheKey{table, kindRow, key}
	if v, ok := s.cachedValue(k); ok {
		return clone(v.(T)), nil
	}
	if err := s.enter(); err != nil {
		return zero, err
	}
	defer s.leave()
	tok, fill := s.cache.gates[table].token()
	d, expires, err := getLive(s, name, key, decode)
	if err != nil {
		return zero, err
	}
	if fill && expires == 0 && s.cache.admit(k) && s.cache.put(tok, k, d, size(&d)) {
		return clone(d), nil
	}
	return d, nil
}

// getLive reads one row without a snapshot (a single Get is atomic) into
// a pinned slice, so that the only copies are the decoded record's. It
// returns the row's expiry too (0: none).
func getLive[T any](s *Store, table, key string, decode func(*row) (T, error)) (T, int64, error) {
	var zero T
	h, err := s.base.GetPinnedCF(s.roLatest, s.cfs[table], []byte(key))
	if err != nil {
		return zero, 0, readError(table, err)
	}
	defer h.Destroy()
	if !h.Exists() {
		return zero, 0, notFound(table, key)
	}
	// The record is decoded before the handle is destroyed, so it need
	// not be copied out of RocksDB's memory first.
	r, err := decodeRowBorrowed(h.Data())
	if err != nil {
		return zero, 0, corruptError(table, fmt.Errorf("row %q: %w", key, err))
	}
	if r.deleted || r.expiredAt(s.cfg.Now().UnixMilli()) {
		return zero, 0, notFound(table, key)
	}
	d, err := decode(&r)
	return d, r.expires, err
}

// multiGetRows reads the rows of table at keys (found through an index)
// in one MultiGet from ro's snapshot and decodes the live ones; an index
// entry without its row is damage, an expired row is skipped.
func multiGetRows[T any](s *Store, ro *grocksdb.ReadOptions, table string, keys []string, nowMs int64, decode func(*row) (T, error)) ([]T, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	bkeys := make([][]byte, len(keys))
	for i, k := range keys {
		bkeys[i] = []byte(k)
	}
	vals, err := s.base.MultiGetCF(ro, s.cfs[table], bkeys...)
	if err != nil {
		return nil, readError(table, err)
	}
	defer vals.Destroy()
	out := make([]T, 0, len(keys))
	for i, v := range vals {
		if !v.Exists() {
			return nil, indexRowError(table, keys[i], notFound(table, keys[i]))
		}
		r, err := decodeRowBorrowed(v.Data()) // decoded before vals is destroyed
		if err != nil {
			return nil, corruptError(table, fmt.Errorf("row %q: %w", keys[i], err))
		}
		if r.expiredAt(nowMs) {
			continue
		}
		if r.deleted {
			return nil, indexRowError(table, keys[i], notFound(table, keys[i]))
		}
		d, err := decode(&r)
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, nil
}

// ListPools lists pools by name.
func (s *Store) ListPools(ctx context.Context, after string, limit int) ([]Pool, error) {
	return listRows(ctx, s, TablePools, "", after, limit, decodeStoredPool)
}

// ListBackends lists backends by id.
func (s *Store) ListBackends(ctx context.Context, after string, limit int) ([]Backend, error) {
	return listRows(ctx, s, TableBackends, "", after, limit, decodeStoredBackend)
}

// ListBackendsByPool lists the backends of a pool whose position
// (BackendPosition) is strictly after `after` ("": from the start), at
// most limit (<= 0: all), ordered by position. The whole list
// of a pool is cached (rowcache.go) when it fits; otherwise it is one
// range scan of the covering index, whose entries hold the rows, outside
// a transaction (one iterator is one consistent snapshot), with the
// partition's end as the iterator's bound.
func (s *Store) ListBackendsByPool(ctx context.Context, pool, after string, limit int) ([]Backend, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	k := cacheKey{cacheBackends, kindPoolBackends, pool}
	if v, ok := s.cachedValue(k); ok {
		return pageOf(v.([]Backend), after, limit), nil
	}
	if err := s.enter(); err != nil {
		return nil, err
	}
	defer s.leave()
	tok, fill := s.cache.gates[cacheBackends].token()
	if !fill || after != "" || !s.cache.enabled() {
		out, _, err := s.scanPoolBackends(pool, after, limit)
		return out, err
	}
	// From the start: read up to what a cached list may hold, so that a
	// pool that fits is cached whole and a larger one costs a bounded
	// overshoot of the page asked for.
	max := listCacheRows
	if limit > max || limit <= 0 {
		max = limit
	}
	out, complete, err := s.scanPoolBackends(pool, "", max)
	if err != nil {
		return nil, err
	}
	if complete {
		size := int64(24)
		for i := range out {
			size += backendSize(&out[i])
		}
		if s.cache.put(tok, k, out, size) {
			return pageOf(out, "", limit), nil
		}
	}
	if limit > 0 && len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}

// listCacheRows is how many backends ListBackendsByPool reads ahead of a
// page to cache a pool's whole list: about what one cached list may hold.
const listCacheRows = 2048

// scanPoolBackends reads the live backends of pool whose position is
// after `after`, at most limit (<= 0: all); complete says the scan
// reached the end of the pool.
func (s *Store) scanPoolBackends(pool, after string, limit int) (out []Backend, complete bool, err error) {
	prefix := indexPrefix(idxBackendPool, pool)
	ro := grocksdb.NewDefaultReadOptions()
	defer ro.Destroy()
	ro.SetIterateUpperBound(prefixEnd(prefix))
	it := s.base.NewIteratorCF(ro, s.cfs[cfIndex])
	defer it.Close()
	if after != "" {
		start := append(append([]byte(nil), prefix...), after...)
		it.Seek(start)
		if it.Valid() && string(it.Key().Data()) == string(start) {
			it.Next()
		}
	} else {
		it.Seek(prefix)
	}
	nowMs := s.cfg.Now().UnixMilli()
	complete = true
	for ; it.Valid(); it.Next() {
		if limit > 0 && len(out) >= limit {
			complete = false
			break
		}
		r, err := decodeRowBorrowed(it.Value().Data())
		if err != nil {
			id := rowKeyAt(string(it.Key().Data()[len(prefix):]))
			return nil, false, corruptError(cfIndex, fmt.Errorf("backends of pool %q: entry of %q: %w", pool, id, err))
		}
		if r.deleted || r.expiredAt(nowMs) {
			continue
		}
		b, err := decodeStoredBackend(&r)
		if err != nil {
			return nil, false, err
		}
		out = append(out, b)
	}
	if err := it.Err(); err != nil {
		return nil, false, readError(cfIndex, err)
	}
	return out, complete, nil
}

// ListCertificates lists certificates by id, private keys decrypted.
func (s *Store) ListCertificates(ctx context.Context, after string, limit int) ([]Certificate, error) {
	return listRows(ctx, s, TableCertificates, "", after, limit, s.decodeStoredCertificate)
}

// PoolsBySSLDomain returns the pools whose ssl_domain is domain.
func (s *Store) PoolsBySSLDomain(ctx context.Context, domain string) (out []Pool, err error) {
	err = s.View(ctx, func(tx *Tx) error { out, err = tx.PoolsBySSLDomain(domain); return err })
	return out, err
}

// PoolsByCertificate returns the pools whose ssl_cert_id is certID.
func (s *Store) PoolsByCertificate(ctx context.Context, certID string) (out []Pool, err error) {
	err = s.View(ctx, func(tx *Tx) error { out, err = tx.PoolsByCertificate(certID); return err })
	return out, err
}

// CertificatesByDomain returns the certificates covering domain exactly,
// ordered by id.
func (s *Store) CertificatesByDomain(ctx context.Context, domain string) ([]Certificate, error) {
	if err := s.enter(); err != nil {
		return nil, err
	}
	defer s.leave()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if out, ok, err := s.certificatesByDomainCached(normalizeDomain(domain)); ok || err != nil {
		return out, err
	}
	var out []Certificate
	err := s.View(ctx, func(tx *Tx) (err error) { out, err = tx.CertificatesByDomain(domain); return err })
	return out, err
}

// certificatesByDomainCached reads the domain's index partition without
// a snapshot and its rows through the cache; ok is false when a write of
// certificates began or ended meanwhile (the caller then reads a
// snapshot), so the answer is always one state of the table.
func (s *Store) certificatesByDomainCached(domain string) (out []Certificate, ok bool, err error) {
	gate := &s.cache.gates[cacheCerts]
	tok, quiet := gate.token()
	if !quiet {
		return nil, false, nil
	}
	// The ids come from the cache too (an empty list as well: a TLS
	// front end asks for names no certificate covers all the time).
	var ids []string
	k := cacheKey{cacheCerts, kindDomainIDs, domain}
	if v, hit := s.cache.get(k); hit {
		ids = v.([]string)
	} else {
		prefix := indexPrefix(idxCertDomain, domain)
		ro := grocksdb.NewDefaultReadOptions()
		defer ro.Destroy()
		ro.SetIterateUpperBound(prefixEnd(prefix))
		it := s.base.NewIteratorCF(ro, s.cfs[cfIndex])
		defer it.Close()
		for it.Seek(prefix); it.Valid(); it.Next() {
			ids = append(ids, string(it.Key().Data()[len(prefix):]))
		}
		if err := it.Err(); err != nil {
			return nil, false, readError(cfIndex, err)
		}
		if s.cache.admit(k) {
			// ids is never modified once cached: certificatesByID only reads it.
			s.cache.put(tok, k, ids, stringsSize(ids)+24)
		}
	}
	out, err = s.certificatesByID(tok, ids)
	if gate.v.Load() != tok {
		return nil, false, nil
	}
	return out, err == nil, err
}

// certificatesByID returns the live certificates ids, in order: cached
// ones copied, the others in one MultiGet (filling the cache under tok).
// An id without its row is index damage; an expired row is skipped.
func (s *Store) certificatesByID(tok uint64, ids []string) ([]Certificate, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	out := make([]Certificate, len(ids))
	have := make([]bool, len(ids))
	var miss []string
	var missAt []int
	for i, id := range ids {
		if v, ok := s.cache.get(cacheKey{cacheCerts, kindRow, id}); ok {
			out[i], have[i] = cloneCertificate(v.(Certificate)), true
			continue
		}
		miss = append(miss, id)
		missAt = append(missAt, i)
	}
	// A large window is read, not cached: it would evict the rows
	// read one by one (a TLS front end's), and would not fit anyway.
	fill := len(miss) <= maxFillPerRead
	if len(miss) > 0 {
		bkeys := make([][]byte, len(miss))
		for i, k := range miss {
			bkeys[i] = []byte(k)
		}
		vals, err := s.base.MultiGetCF(s.roLatest, s.cfs[TableCertificates], bkeys...)
		if err != nil {
			return nil, readError(TableCertificates, err)
		}
		defer vals.Destroy()
		nowMs := s.cfg.Now().UnixMilli()
		for j, v := range vals {
			id := miss[j]
			if !v.Exists() {
				return nil, indexRowError(TableCertificates, id, notFound(TableCertificates, id))
			}
			r, err := decodeRowBorrowed(v.Data()) // decoded before vals is destroyed
			if err != nil {
				return nil, corruptError(TableCertificates, fmt.Errorf("row %q: %w", id, err))
			}
			if r.expiredAt(nowMs) {
				continue
			}
			if r.deleted {
				return nil, indexRowError(TableCertificates, id, notFound(TableCertificates, id))
			}
			c, err := s.decodeStoredCertificate(&r)
			if err != nil {
				return nil, err
			}
			i := missAt[j]
			k := cacheKey{cacheCerts, kindRow, id}
			if fill && r.expires == 0 && s.cache.admit(k) && s.cache.put(tok, k, c, certificateSize(&c)) {
				c = cloneCertificate(c)
			}
			out[i], have[i] = c, true
		}
	}
	n := 0
	for i := range out {
		if have[i] {
			out[n] = out[i]
			n++
		}
	}
	return out[:n], nil
}

// maxFillPerRead bounds the rows one multi-row read may add to the cache.
const maxFillPerRead = 256

// CertificateForServerName finds the certificate a TLS handshake for
// serverName should use: one covering the exact name, else one covering
// the wildcard one label up ("a.b.example.com" -> "*.b.example.com").
// Among several, the latest expiry wins. ErrNotFound when none matches.
func (s *Store) CertificateForServerName(ctx context.Context, serverName string) (Certificate, error) {
	name := normalizeDomain(serverName)
	if err := validateKey("server name", name); err != nil {
		return Certificate{}, err
	}
	candidates := []string{name}
	if _, parent, ok := strings.Cut(name, "."); ok && parent != "" && !strings.HasPrefix(name, "*.") {
		candidates = append(candidates, "*."+parent)
	}
	for _, cand := range candidates {
		certs, err := s.CertificatesByDomain(ctx, cand)
		if err != nil {
			return Certificate{}, err
		}
		if len(certs) == 0 {
			continue
		}
		best := certs[0]
		for _, c := range certs[1:] {
			if c.ExpiresAt.After(best.ExpiresAt) {
				best = c
			}
		}
		return best, nil
	}
	return Certificate{}, fmt.Errorf("certificate for %q: %w", name, ErrNotFound)
}

// CertificatesExpiringBefore returns certificates whose ExpiresAt is before
// t, soonest first, at most limit (<= 0: all). The window comes from the
// cached expiry index and the rows through the row cache; when a write
// of certificates runs meanwhile, from one snapshot instead.
func (s *Store) CertificatesExpiringBefore(ctx context.Context, t time.Time, limit int) ([]Certificate, error) {
	if err := s.enter(); err != nil {
		return nil, err
	}
	defer s.leave()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	gate := &s.cache.gates[cacheCerts]
	if tok, quiet := gate.token(); quiet {
		// The window is read after tok, cached or not, so an unmoved
		// gate means window and rows are one state of the table.
		exp, _, err := s.expiriesBefore(t, limit)
		if err != nil {
			return nil, err
		}
		ids := make([]string, len(exp))
		for i, e := range exp {
			ids[i] = e.ID
		}
		out, err := s.certificatesByID(tok, ids)
		if gate.v.Load() == tok {
			return out, err
		}
	}
	var out []Certificate
	err := s.View(ctx, func(tx *Tx) error {
		it := tx.iterator(cfIndex)
		defer it.Close()
		end := expiryKey(t)
		var ids []string
		for it.Seek([]byte{idxCertExpiry}); it.Valid(); it.Next() {
			k := it.Key().Data()
			if k[0] != idxCertExpiry || len(k) < expiryKeyLen || string(k[:expiryKeyLen]) >= string(end) {
				break
			}
			ids = append(ids, string(k[expiryKeyLen:]))
			if limit > 0 && len(ids) >= limit {
				break
			}
		}
		if err := it.Err(); err != nil {
			return readError(cfIndex, err)
		}
		var err error
		out, err = multiGetRows(s, tx.ro, TableCertificates, ids, tx.now.UnixMilli(), s.decodeStoredCertificate)
		return err
	})
	return out, err
}

// CertificateExpiry is a certificate's id and expiry, as the expiry index
// holds them.
type CertificateExpiry struct {
	ID        string
	ExpiresAt time.Time
}

// CertificateExpiries returns the id and expiry of every certificate whose
// ExpiresAt is before t, soonest first, at most limit (<= 0: all), read
// from the expiry index alone, which the row cache holds whole (a
// binary search and a copy of the window). A renewal loop needs no more
// to decide what is due; reading and decrypting every certificate of a
// 30-day window (CertificatesExpiringBefore) costs far more. It then
// reads the ones it renews with GetCertificate.
func (s *Store) CertificateExpiries(ctx context.Context, t time.Time, limit int) ([]CertificateExpiry, error) {
	if err := s.enter(); err != nil {
		return nil, err
	}
	defer s.leave()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	out, _, err := s.expiriesBefore(t, limit)
	return out, err
}

// expiriesBefore answers CertificateExpiries from the cached expiry index,
// loading it first when it is not (cached false: it could not be kept,
// and the answer was read from the index family's range alone).
func (s *Store) expiriesBefore(t time.Time, limit int) (out []CertificateExpiry, cached bool, err error) {
	list := s.cache.expiryList()
	if list == nil && s.cache.expiryBudget > 0 && !s.cache.expiryOverflow.Load() {
		tok, fill := s.cache.gates[cacheCerts].token()
		full, err := s.scanExpiries(time.Time{}, 0)
		if err != nil {
			return nil, false, err
		}
		if full == nil {
			full = []CertificateExpiry{} // loaded, empty
		}
		if fill && s.cache.putExpiries(tok, full) {
			list = full
		}
	}
	if list == nil {
		out, err := s.scanExpiries(t, limit)
		return out, false, err
	}
	n := sort.Search(len(list), func(i int) bool { return !list[i].ExpiresAt.Before(t) })
	if limit > 0 && n > limit {
		n = limit
	}
	if n == 0 {
		return nil, true, nil
	}
	return slices.Clone(list[:n]), true, nil
}

// scanExpiries reads the expiry index up to t (zero: all of it), at most
// limit entries (<= 0: all). One iterator reads one implicit snapshot;
// the upper bound lets RocksDB stop at t by itself.
func (s *Store) scanExpiries(t time.Time, limit int) ([]CertificateExpiry, error) {
	ro := grocksdb.NewDefaultReadOptions()
	defer ro.Destroy()
	if t.IsZero() {
		ro.SetIterateUpperBound([]byte{idxCertExpiry + 1})
	} else {
		ro.SetIterateUpperBound(expiryKey(t))
	}
	it := s.base.NewIteratorCF(ro, s.cfs[cfIndex])
	defer it.Close()
	var out []CertificateExpiry
	for it.Seek([]byte{idxCertExpiry}); it.Valid(); it.Next() {
		k := it.Key().Data()
		if len(k) <= expiryKeyLen || k[0] != idxCertExpiry {
			return nil, corruptError(cfIndex, fmt.Errorf("malformed certificate expiry entry %x", k))
		}
		sec := int64(binary.BigEndian.Uint64(k[1:9]) ^ (1 << 63))
		nsec := int64(binary.BigEndian.Uint32(k[9:13]))
		out = append(out, CertificateExpiry{ID: string(k[expiryKeyLen:]), ExpiresAt: time.Unix(sec, nsec).UTC()})
		if limit > 0 && len(out) >= limit {
			break
		}
	}
	if err := it.Err(); err != nil {
		return nil, readError(cfIndex, err)
	}
	return out, nil
}

// Observations returns the observations of node nodeID ("" = all nodes),
// ordered by node and backend id.
func (s *Store) Observations(ctx context.Context, nodeID string) ([]Observation, error) {
	prefix := ""
	if nodeID != "" {
		prefix = nodeID + "\x00"
	}
	return listRows(ctx, s, TableObservations, prefix, "", 0, decodeStoredObservation)
}

// listRows returns the live rows of table that scanRows finds, decoded
// with decode, on one snapshot.
func listRows[T any](ctx context.Context, s *Store, table, prefix, after string, limit int, decode func(*row) (T, error)) ([]T, error) {
	var out []T
	err := s.View(ctx, func(tx *Tx) error {
		return tx.scanRows(table, prefix, after, limit, func(_ string, r *row) error {
			v, err := decode(r)
			if err != nil {
				return err
			}
			out = append(out, v)
			return nil
		})
	})
	return out, err
}

// ObservationsByHealth returns node nodeID's observations ("" = every
// node's) whose Healthy equals healthy, ordered by node and backend id.
func (s *Store) ObservationsByHealth(ctx context.Context, nodeID string, healthy bool) ([]Observation, error) {
	var out []Observation
	err := s.View(ctx, func(tx *Tx) error {
		var refs [][2]string
		prefix := []byte{idxObsHealth}
		if nodeID != "" {
			prefix = obsHealthPrefix(nodeID, healthy)
		}
		it := tx.iterator(cfIndex)
		defer it.Close()
		for it.Seek(prefix); it.ValidForPrefix(prefix); it.Next() {
			node, rest, ok := strings.Cut(string(it.Key().Data()[1:]), "\x00")
			if !ok || len(rest) < 2 {
				return corruptError(cfIndex, fmt.Errorf("malformed observation index key"))
			}
			if (rest[0] == 1) != healthy {
				continue
			}
			refs = append(refs, [2]string{node, rest[1:]})
		}
		if err := it.Err(); err != nil {
			return readError(cfIndex, err)
		}
		for _, ref := range refs {
			o, err := tx.Observation(ref[0], ref[1])
			if errors.Is(err, ErrNotFound) {
				continue // expired, not yet removed by ExpireRows
			}
			if err != nil {
				return indexRowError(TableObservations, ObservationKey(ref[0], ref[1]), err)
			}
			out = append(out, o)
		}
		return nil
	})
	return out, err
}

// PutObservations stores observations of this node in one transaction.
// Rows refused by the write-rate bound (Tx.PutObservation) are skipped and
// the rest committed; the error is then a *SkippedObservationsError (it
// matches ErrRateLimited) naming the skipped rows.
func (s *Store) PutObservations(ctx context.Context, obs []Observation) error {
	var skipped *SkippedObservationsError
	_, err := s.Update(ctx, func(tx *Tx) error {
		skipped = nil
		for i := range obs {
			o := obs[i]
			err := tx.PutObservation(&o)
			var limited *RateLimitError
			if errors.As(err, &limited) {
				if skipped == nil {
					skipped = &SkippedObservationsError{Of: len(obs), First: limited}
				}
				skipped.BackendIDs = append(skipped.BackendIDs, o.BackendID)
				skipped.RetryAfter = max(skipped.RetryAfter, limited.RetryAfter())
				continue
			}
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil && skipped != nil {
		return skipped
	}
	return err
}

// SkippedObservationsError says which rows PutObservations skipped under
// the write-rate bound (the others were committed) and when all of them
// may be written again.
type SkippedObservationsError struct {
	BackendIDs []string
	Of         int
	RetryAfter time.Duration
	First      *RateLimitError
}

func (e *SkippedObservationsError) Error() string {
	return fmt.Sprintf("%d of %d observations skipped (first: %v)", len(e.BackendIDs), e.Of, e.First)
}

func (e *SkippedObservationsError) Unwrap() error { return e.First }

// DeleteObservations deletes this node's observations of the backends
// backendIDs in one transaction, leaving tombstones (which replicate, so
// peers drop the rows too). A backend without a live observation is
// skipped.
func (s *Store) DeleteObservations(ctx context.Context, backendIDs []string) error {
	_, err := s.Update(ctx, func(tx *Tx) error {
		for _, id := range backendIDs {
			if err := tx.DeleteObservation(id); err != nil && !errors.Is(err, ErrNotFound) {
				return err
			}
		}
		return nil
	})
	return err
}
