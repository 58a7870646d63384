package storage

import (
	"errors"
	"fmt"
	"net"
	"sort"
	"strconv"
)

// Point lookups the admin API needs so that a write or a single-object
// read costs the same with ten rows or a million: who serves a host name,
// which pool is the default, whether a pool already has a backend at an
// address, and every node's observation of one backend. Each is one index
// partition; a write that checks one inside Update cannot race another
// claim of the same host or address, because transactions are serialized.

// poolServedNames returns the normalized, de-duplicated host names a pool
// serves: its ssl_domain and every entry of hosts.
func poolServedNames(p *Pool) []string {
	seen := make(map[string]bool, 1+len(p.Hosts))
	var out []string
	for _, h := range append([]string{p.SSLDomain}, p.Hosts...) {
		h = normalizeDomain(h)
		if h == "" || seen[h] {
			continue
		}
		seen[h] = true
		out = append(out, h)
	}
	sort.Strings(out)
	return out
}

const defaultPoolValue = "default"

func poolLookupKeys(p *Pool) [][]byte {
	var keys [][]byte
	for _, h := range poolServedNames(p) {
		keys = append(keys, indexKey(idxPoolHost, h, p.Name))
	}
	if p.Default {
		keys = append(keys, indexKey(idxPoolDefault, defaultPoolValue, p.Name))
	}
	return append(keys, poolOnDemandKeys(p)...)
}

// BackendAddress is the form of a backend's address its pool's index
// orders and finds it by: scheme://host:port.
func BackendAddress(scheme, host string, port int) string {
	return scheme + "://" + net.JoinHostPort(host, strconv.Itoa(port))
}

// BackendPosition is b's place in its pool's list (Tx.BackendsByPoolPage,
// Store.ListBackendsByPool, Store.ScanBackendsOfPool): its address
// (BackendAddress), NUL, its id. Lists are ordered by it, and a page
// starts after the position of the last backend of the one before.
func BackendPosition(b *Backend) string {
	return string(appendBackendPosition(nil, b))
}

// PoolsByHost returns the pools whose ssl_domain or hosts include host
// exactly (case-insensitive; a wildcard finds the same wildcard), ordered
// by name.
func (t *Tx) PoolsByHost(host string) ([]Pool, error) {
	return rowsByIndex(t, indexPrefix(idxPoolHost, normalizeDomain(host)), TablePools, "", 0, t.Pool, decodeStoredPool)
}

// DefaultPools returns the pools marked default, ordered by name.
func (t *Tx) DefaultPools() ([]Pool, error) {
	return rowsByIndex(t, indexPrefix(idxPoolDefault, defaultPoolValue), TablePools, "", 0, t.Pool, decodeStoredPool)
}

// BackendsByAddress returns the backends of pool at scheme://host:port
// (as BackendAddress renders it), ordered by id: the entries of one
// address in the pool's index, so it costs the same however many
// backends the pool has.
func (t *Tx) BackendsByAddress(pool, addr string) ([]Backend, error) {
	prefix := append(indexPrefix(idxBackendPool, pool), addr...)
	return rowsByIndex(t, append(prefix, 0), TableBackends, "", 0, t.Backend, decodeStoredBackend)
}

// ObservationsOf returns every node's observation of backend backendID,
// ordered by node id.
func (t *Tx) ObservationsOf(backendID string) ([]Observation, error) {
	nodes, err := t.indexLookup(indexPrefix(idxObsBackend, backendID), TableObservations, "", 0)
	if err != nil {
		return nil, err
	}
	out := make([]Observation, 0, len(nodes))
	for _, n := range nodes {
		o, err := t.Observation(n, backendID)
		if errors.Is(err, ErrNotFound) {
			continue // expired: its entries stay until ExpireRows removes the row
		}
		if err != nil {
			return nil, indexRowError(TableObservations, ObservationKey(n, backendID), err)
		}
		out = append(out, o)
	}
	return out, nil
}

// Pools lists pools by name inside the transaction: keys strictly after
// `after`, at most limit (<= 0: all). Buffered writes are not included.
func (t *Tx) Pools(after string, limit int) ([]Pool, error) {
	var out []Pool
	err := t.scanRows(TablePools, "", after, limit, func(key string, r *row) error {
		p, err := decodeStoredPool(r)
		if err != nil {
			return fmt.Errorf("pool %q: %w", key, err)
		}
		out = append(out, p)
		return nil
	})
	return out, err
}

// BackendsByPoolPage returns at most limit backends of pool (<= 0: all)
// whose position (BackendPosition) is strictly after `after` ("": from
// the start), ordered by position: one page read by key.
func (t *Tx) BackendsByPoolPage(pool, after string, limit int) ([]Backend, error) {
	return rowsByIndex(t, indexPrefix(idxBackendPool, pool), TableBackends, after, limit, t.Backend, decodeStoredBackend)
}
