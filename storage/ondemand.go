package storage

import "sort"

// On-demand TLS allow patterns route names to a pool the way hosts do, so
// two on-demand pools must not list the same pattern: the index below
// lets the admin API refuse the second claim inside its transaction (commits
// are serialized, so two concurrent claims cannot both pass). Only pools with
// on_demand_tls are indexed: patterns kept on a pool that turned it off
// route nothing and claim nothing.

// poolOnDemandPatterns returns p's normalized, de-duplicated allow
// patterns when on-demand TLS is on.
func poolOnDemandPatterns(p *Pool) []string {
	if !p.OnDemandTLS {
		return nil
	}
	seen := make(map[string]bool, len(p.OnDemandAllow))
	var out []string
	for _, h := range p.OnDemandAllow {
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

func poolOnDemandKeys(p *Pool) [][]byte {
	var keys [][]byte
	for _, h := range poolOnDemandPatterns(p) {
		keys = append(keys, indexKey(idxPoolOnDemand, h, p.Name))
	}
	return keys
}

// PoolsByOnDemandPattern returns the pools with on_demand_tls whose
// on_demand_allow lists pattern exactly (case-insensitive), ordered by
// name.
func (t *Tx) PoolsByOnDemandPattern(pattern string) ([]Pool, error) {
	return rowsByIndex(t, indexPrefix(idxPoolOnDemand, normalizeDomain(pattern)), TablePools, "", 0, t.Pool, decodeStoredPool)
}
