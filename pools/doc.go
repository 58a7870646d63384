// Package pools turns the pools and backends stored in the storage package
// into an in-memory routing table for the proxy, and keeps that table
// healthy.
//
// The pieces, from the request path outwards:
//
//   - Table: an immutable snapshot mapping host names to pools, built from
//     the stored configuration. Lookup is a couple of map reads and does not
//     allocate. The Manager swaps a new Table in atomically when the
//     configuration changes.
//   - Pool.Pick: chooses a backend with the pool's algorithm (round robin,
//     least connections, smooth weighted round robin, random, consistent
//     hashing, power of two choices), honouring sticky cookies, region
//     preference, fail-open and retry exclusions. Consistent hashing looks
//     the key up in a weighted Maglev table built with the Table (O(1) per
//     pick; see maglev.go); least connections and weighted round robin
//     still scan the pool's backends on every pick.
//   - Backend.Begin / Attempt.End: per-request accounting on atomics (current
//     connections, totals, bytes, latency) that also drives passive health:
//     consecutive failures eject a backend for a cooldown.
//   - Active health checks (TCP connect or HTTP(S) GET) with rise/fall
//     thresholds, run by one scheduler per agent under a budget of checks
//     per second (healthsched.go): backends sharing an address and check
//     share one probe, backends that stay down are checked less and less
//     often, and transitions are logged once per pool and burst.
//   - Manager: loads the store, follows its change feed, rebuilds the table
//     (coalescing bursts), runs health checkers, persists this node's
//     observations at a bounded rate (and deletes its observations of
//     backends that left the table) and exposes stats and Prometheus
//     metrics.
//
// Live per-backend state (counters and health) hangs off the backends and
// is carried from table to table by backend id, so that rebuilding the
// table after a configuration change keeps counters and health as they
// were. A rebuild rebuilds only the pools that changed; the others are
// carried over as they are.
package pools
