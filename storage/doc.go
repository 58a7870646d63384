// Package storage is the node's embedded database: RocksDB (through
// grocksdb) with typed tables, secondary indexes, serialized transactions,
// bounded hybrid-logical-clock versions, gap-aware bookkeeping per origin,
// a change log of current row versions, batch apply, snapshot streaming
// and ingest, tombstone purge, a change feed, and the operations around
// them (stats, compaction, backup, restore, checkpoint, export, import,
// verification).
//
// # Data layout
//
// One RocksDB database per node, one column family per table (declared
// once in schema.go) plus four internal ones. Every write of a commit
// (rows, index entries, change-log keys, bookkeeping, feed entry) goes into
// one RocksDB batch, so they are all there after a crash or none is.
//
//	family        key                                   value
//	certificates  certificate id                        row envelope
//	pools         pool name                             row envelope
//	backends      backend id                            row envelope
//	observations  node id 0x00 backend id               row envelope (with expiry)
//	index         see below                             empty
//	changelog     origin 0x00 be64(seq) table-id key    empty: one key per current row version
//	feed          be64(commit index)                    {origin, seq}
//	meta          node_id, incarnation, cluster_id,     identity (identity.go), bookkeeping
//	              bk/<origin>, lseq/<be64 seq>,         Ranges per origin, the local seq and the
//	              purge_floor, state, format,           clock reading of the last commit, purge
//	              key_check, index_version,             floor, readiness, layout, key check,
//	              resync/<table>, probe,                index set, tables under resync,
//	              purge_members                         what purge knows of the members (JSON)
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
//	0x00 index id value                   partition guards of index versions <= 4 (deleted at Open)
//	0x01 lower(name) 0x00 cert id         certificates by domain: Domain and every SAN
//	0x02 be64(unix s ^ 1<<63) be32(ns) id certificates by expires_at (byte order = time order)
//	0x03 lower(ssl_domain) 0x00 pool name pools by ssl_domain
//	0x04 pool name 0x00 backend id        backends by pool (value: the row, covering)
//	0x05 node id 0x00 healthy byte id     observations by (node, healthy)
//	0x06 ssl_cert_id 0x00 pool name       pools by certificate
//	0x07 be64(hlc) table-id key           tombstones of replicated tables by age (PurgeTombstones)
//	0x08 be64(expires ms) table-id key    rows with an expiry (ExpireRows)
//
// Open adds the entries of indexes newer than the store's "index_version"
// (migrate.go); version 5 dropped the partition guards that optimistic
// transactions needed against phantoms.
//
// # Versions, bookkeeping and the change log
//
// Transactions are serialized: Update runs its function under the commit
// mutex, which every write of rows, indexes, change log, feed and
// bookkeeping takes (local commits, ApplyBatch, purge, expiry, ingest), and
// reads the latest state. What a transaction read, index scans included,
// cannot change before it commits: no conflict detection, no retries, no
// phantoms ("delete the pool if it has no backends" and "add a backend to
// it" cannot both commit). The database is a plain RocksDB DB; writes are
// one WriteBatch per commit. Update buffers the writes; at commit the
// transaction gets its Version: HLC = max(clock, every replaced row's HLC + 1) (a local edit
// always beats the row it replaces, even one from a clock far ahead),
// origin = node id, seq = the next local seq (one per transaction, kept in
// meta under a key of its own per commit). A transaction holds at most MaxChangeSetRows rows and
// MaxChangeSetBytes bytes (ErrTooLarge), so its change set fits one
// replication frame.
//
// The clock (hlc.go) never runs more than Config.MaxClockOffset ahead of
// Config.Now: a peer's far-ahead HLC is stored with its rows but does not
// drag the clock, and the origin is counted (ClockSkew).
//
// Bookkeeping (identity.go) is, per origin, the Ranges of seqs applied
// here, persisted under meta bk/<origin> in the same batch as the rows, and
// the only source of "seen": Watermark (contiguous), Gaps and Max derive
// from it. ApplyBatch applies many change sets of any origins in one
// unsynced batch (a lost apply is lost with its bookkeeping and fetched
// again); the in-memory copy changes only after the commit.
//
// The change log (changelog.go) keeps one key per current row version: a
// commit deletes the key of the version it replaces. It is therefore
// complete by construction and bounded by the rows: the change set origin/
// seq is exactly the rows under that prefix, and a seen seq with no keys is
// cleared (overwritten by newer sets). ChangeSets answers a range with the
// sets that have rows and the ranges it covers completely (want ∩ seen);
// ApplyAnswer records the covered seqs, cleared ones included. A store
// with a table under resync or an unfinished bootstrap answers ErrNotReady
// and Ready reports it.
//
// Snapshot streams every table (tombstones included) with the bookkeeping,
// purge floor and cluster id read under the same RocksDB snapshot; Ingest
// writes the rows with their original versions, rebuilds the index and the
// change log from them, adopts the bookkeeping and originates nothing. The
// store is not ready until MarkCaughtUp after one catch-up round. Ingest
// writes WAL-less 32k-entry batches from two goroutines with compaction
// and write-stall triggers off for its families (restored afterwards), and
// flushes before it records the bookkeeping.
//
// Read paths that matter for speed go through the row cache of decoded
// rows (rowcache.go, Config.RowCacheSize), which every write batch
// invalidates through Store.write before it reaches RocksDB: GetBackend,
// GetPool and GetCertificate are a cache hit or one pinned Get;
// ListBackendsByPool is a cached list or one bounded range scan of the
// covering index outside a transaction; CertificateExpiries answers from
// the cached expiry index (what a renewal loop needs), where
// CertificatesExpiringBefore also reads and decrypts every certificate.
//
// Identity: a restored backup or copied checkpoint takes a new node id at
// its next Open (the IDENTITY file beside RocksDB must match
// meta/incarnation); ObserveOwnSeq or an applied set of our id above our
// seq takes a new id before the next write. Tombstones go by the rule in
// PurgeTombstones; expired observation and TTL rows by ExpireRows.
//
// The feed maps commit indexes to {origin, seq}; a subscriber reads the
// set's current rows from one snapshot, so an event carries rows as they
// are when read (an overwritten row travels with the newer event). Prune
// deletes old feed entries with one range deletion, without the commit
// lock. Consumers take the feed through an interface of their own (pools,
// certs: Subscribe(ctx, afterIndex) *Subscription).
//
// # Damage and recovery
//
// Open reads every column family with checksum verification
// (Config.SkipVerifyOnOpen turns it off; verify.go: the key space of each
// family is cut into ranges at its SST file boundaries and inside big
// files, and the ranges are read concurrently, one goroutine per CPU, so
// that every block is still read). With Config.VerifyInBackground Open
// leaves that to VerifyDeferred, which the caller runs once it serves; a
// VERIFY_PENDING file makes the next Open verify synchronously when the
// deferred verification did not complete clean. A damaged table or meta fails Open with
// ErrCorrupt naming it and the way out: Restore from a backup, or
// RemoveTable, which empties just that table, resets the bookkeeping, takes
// a new node id and marks the table for resync (not ready until
// MarkResynced after a catch-up). A damaged index, change log or feed is a
// function of the tables: Open rebuilds it and goes on. Verify checks
// checksums and that rows, index entries, change-log keys and bookkeeping
// agree, both ways.
//
// A commit that fails for lack of space returns ErrDiskFull and makes Ready
// report it; RocksDB runs without paranoid checks so that a failed WAL
// write does not stop writes for good, and the next commit (or
// CheckWritable, which the health check calls) succeeds once space is back.
// A flush that fails, which RocksDB would then ignore and never retry (once
// the memtables fill every write would wait forever), is made a background
// error that refuses every write with ErrDiskFull and makes Ready report it;
// the next commit or CheckWritable calls DB::Resume, which flushes again and
// lets writes in once there is room for the memtables. A compaction that ran
// out of space is made the same error; resume then waits until the volume
// has room for that compaction's input. Close does not flush
// while the error holds: the WAL keeps every acknowledged commit for the
// next open. RocksDB's info log is written by a logger that drops what a
// full disk refuses (storage/internal/bgerror).
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
// metrics (commits, applied and skipped rows, clock skew,
// feed position, per-table RocksDB sizes and pending compaction bytes,
// running compactions and flushes, block cache usage, background errors by
// the work that failed and the space a compaction out of space needs), read
// at scrape time.
package storage
