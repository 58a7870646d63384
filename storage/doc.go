// Package storage is the node's embedded database: RocksDB (through
// grocksdb) with typed tables, secondary indexes, optimistic transactions,
// hybrid-logical-clock versions, a change log and a change feed, and the
// operations around them (stats, compaction, backup, restore, checkpoint,
// export, import, verification).
//
// # Data layout
//
// One RocksDB database per node, one column family per table plus four
// internal ones. Every write of a transaction (rows, index entries, the
// change-log entry, the feed entry) goes into one RocksDB commit, so they
// are all there after a crash or none is.
//
//	family        key                                   value
//	certificates  certificate id                        row envelope
//	pools         pool name                             row envelope
//	backends      backend id                            row envelope
//	observations  node id 0x00 backend id               row envelope
//	index         see below                             empty
//	changelog     origin node id 0x00 be64(seq)         change-set references: origin, seq, HLC and
//	                                                    per change table, key, deleted, version
//	                                                    (no row values; changelog.go)
//	feed          be64(commit index)                    {origin, seq} reference to the change log
//	meta          "node_id", "format", "key_check",     node id, format byte, sealed key-check value,
//	              "index_version", "resync/<table>"     index set version, time RemoveTable emptied the table
//
// A row envelope (codec.go) is a format-version byte followed by protobuf
// wire fields: the row's Version (HLC, origin, seq), a deleted flag and the
// record. Deleted rows stay as tombstones (envelope without record) so that
// last-write-wins can order a delete against an update that arrives later;
// reads, lists and indexes skip them.
//
// Index keys (index.go) start with one byte naming the index; values and
// primary keys may not contain 0x00, which separates them:
//
//	0x00 index id value                   partition guard of a guarded index (below); empty value
//	0x01 lower(name) 0x00 cert id         certificates by domain: Domain and every SAN (guarded)
//	0x02 be64(unix s ^ 1<<63) be32(ns) id certificates by expires_at (byte order = time order)
//	0x03 lower(ssl_domain) 0x00 pool name pools by ssl_domain (guarded)
//	0x04 pool name 0x00 backend id        backends by pool (guarded)
//	0x05 node id 0x00 healthy byte id     observations by (node, healthy)
//	0x06 ssl_cert_id 0x00 pool name       pools by certificate (guarded)
//
// A partition is the set of entries of one index with one value (the
// backends of pool "web"). Its guard key, 0x00 index id value (for example
// 0x00 0x04 "web"), makes index scans safe inside transactions: every
// commit that adds or removes an entry of a guarded partition also writes
// its guard, and every scan of one inside Update reads the guard with
// GetForUpdate, so a commit that changes a partition after a transaction's
// snapshot makes that transaction conflict if it scanned the partition,
// just as a commit to a row it read would (no phantoms: "delete the pool
// if it has no backends" and "add a backend to it" cannot both commit).
// Guards belong to no row: Verify only checks their form, exports and
// change sets never carry them, and they stay when their partition
// empties. The expiry and observation indexes are not scanned inside
// transactions and have none. Open adds the entries of indexes newer than
// the store's "index_version" (index_version 2 added 0x06 and guards).
//
// # Versions, change log and feed
//
// Update buffers a transaction's writes; reads inside it use GetForUpdate,
// so RocksDB's optimistic concurrency control detects a concurrent commit to
// any row the transaction read or wrote, or to any index partition it
// scanned (through the partition's guard), and Update retries (bounded,
// then ErrConflict). At commit, under one mutex, the transaction gets its
// Version (HLC from the node's Clock, origin = node id, seq = the next
// per-origin sequence) and its commit index (the next feed position), and
// RocksDB commits. Assigning these under the mutex that also covers the
// commit means a later commit never carries a smaller HLC, seq or index.
//
// The commit index, the version vector and the clock's high-water mark are
// not stored in a shared key (every transaction would conflict on it): Open
// recovers them from the last feed key and the last change-log entry of
// each origin, both written in every commit.
//
// Apply applies a peer's ChangeSet with last-write-wins per row by (HLC,
// origin), records it in the change log under its origin and seq, and adds
// a feed event when at least one row changed. Subscribe reads the feed from
// disk when behind and waits for commits when caught up, so a subscriber
// sees every commit in order.
//
// The change log holds references, not rows: a commit's entry lists, per
// change, its table, key, deleted flag and version, and the row itself is
// only in its table (same RocksDB commit). This halves the bytes written per
// commit, and loses nothing replication needs: under last-write-wins only
// the current version of a row ever has to be shipped. A change set is
// materialized (ChangeSetsSince, feed events) by reading the referenced rows
// from one RocksDB snapshot: a row that still holds the referenced version
// contributes its stored value (private keys still sealed); a row since
// overwritten by a newer version is left out, because the newer version has
// its own change-log entry and feed event that carry it. So a materialized
// change set or event may have fewer changes than were committed, or none;
// it is still returned (a peer applying an empty set records its seq) and
// still delivered (Subscribe never skips an event), and a consumer that
// applies events in order ends with the latest state. Apply's duplicate
// detection reads only the change-log key, and Open's recovery reads only
// versions, so neither needs the values. ChangeSet.Marshal, the format sent
// to peers, still carries values.
//
// The change log and the feed grow with every commit; Prune deletes old
// entries (the newest change set of each origin and the newest feed entry
// always stay, since Open recovers the counters from them). A subscriber
// whose position was pruned gets ErrFeedPruned and reloads. Tombstones are
// never purged by this package: when that is safe is replication's call.
//
// # Damage and recovery
//
// Open reads every table with checksum verification (Config.SkipVerifyOnOpen
// turns it off; verify.go: the key space of each table is cut into ranges at
// its SST file boundaries and inside big files, and the ranges are read
// concurrently, one goroutine per CPU, so that every block is still read)
// and fails on a damaged table with ErrCorrupt naming the table and the way
// out: Restore from a backup, or RemoveTable, which
// empties just that table and marks it for a full resync from peers
// (TablesToResync). Verify checks checksums and that every index entry and
// every row agree, both ways.
//
// # Encryption
//
// Certificate private keys are sealed with AES-256-GCM (Config.EncryptionKey)
// inside the record encoding, so they are never in clear on disk, in the
// change log, in change sets sent to peers, in backups or in exports. A
// sealed key-check value in meta makes Open fail with ErrEncryptionKey when
// the key is missing or is not the one the store was created with.
//
// # Memory
//
// One LRU block cache (Config.BlockCacheSize) is shared by every column
// family and also holds index and filter blocks; memtables are bounded per
// family and in total. Memory therefore does not grow with the data size.
//
// # Metrics
//
// With Config.Registerer set, the store exports singularity_edge_storage_*
// metrics (commits, conflict retries, applied and skipped rows, clock skew,
// feed position, per-table RocksDB sizes and pending compaction bytes,
// running compactions and flushes, block cache usage), read at scrape time.
package storage
