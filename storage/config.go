package storage

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// Config configures Open. Start from DefaultConfig.
type Config struct {
	// Dir is the data directory; it is created on first open.
	Dir string
	// NodeID names this node in versions and change sets. "" generates a
	// random id on first open and persists it; a non-empty id must match
	// the one stored in Dir (unless the store has since taken a new id,
	// see ObserveOwnSeq).
	NodeID string
	// ClusterID is the cluster this store belongs to. "" takes the stored
	// one, or a random one on first open (the first node of a cluster);
	// a node joining a cluster adopts the cluster's id through Ingest. A
	// non-empty id must match the stored one.
	ClusterID string
	// Now is the wall clock (time.Now when nil); tests pass a fake.
	Now func() time.Time
	// ObservationTTL is how long an observation row counts after it was
	// written (0: 10 minutes). Writers refresh well within it.
	ObservationTTL time.Duration
	// ObservationMinInterval bounds this node's observation write rate:
	// a row is rewritten at most once per interval unless its health
	// changes (a transition is always written at once). A faster write
	// is refused with ErrRateLimited (PutObservations skips such rows
	// and commits the rest). 0 means 1s; negative turns the bound off.
	ObservationMinInterval time.Duration
	// AuditKeep is how many audit rows PruneAudit keeps (0: 10,000).
	AuditKeep int
	// EncryptionKey is the 32-byte AES-256-GCM key for private keys at
	// rest (see ParseEncryptionKey). nil means none: then no certificate
	// with a private key can be stored.
	EncryptionKey []byte
	// BlockCacheSize bounds the shared RocksDB block cache (data, index
	// and filter blocks of every table). 0 means 64 MiB.
	BlockCacheSize int64
	// RowCacheSize bounds the cache of decoded rows above RocksDB
	// (rowcache.go): certificates, pools and backends by key, the
	// backends of a pool, the certificate expiry index. It is Go heap:
	// a full 64 MiB cache measured 88 MiB of RSS under the default GOGC
	// (docs/ARCHITECTURE.md). 0 means 64 MiB; negative turns it off.
	RowCacheSize int64
	// WriteBufferSize is the memtable size per column family (at most two
	// per family). 0 means 16 MiB.
	WriteBufferSize int64
	// SyncWAL fsyncs the write-ahead log on every commit (DefaultConfig:
	// true). Without it a commit survives a process crash but not a power
	// loss.
	SyncWAL bool
	// SkipVerifyOnOpen skips reading every table with checksum
	// verification at Open. Verification turns a damaged table into a
	// clear error at start instead of a read error later.
	SkipVerifyOnOpen bool
	// VerifyInBackground leaves that verification to VerifyDeferred,
	// which the caller runs once it serves (and stops serving when it
	// fails). Reads verify the checksums of the blocks they read in any
	// case. A mark file records that it is owed: an Open that finds the
	// mark of one that did not complete clean verifies before returning.
	VerifyInBackground bool
	// MaxClockOffset bounds the local clock: it never runs further ahead
	// of the wall clock than this, whatever peers send; a change set
	// further ahead is stored but counted per origin as clock skew. 0
	// means 500ms.
	MaxClockOffset time.Duration
	Logger         *zap.Logger
	// Registerer receives the singularity_edge_storage_* metrics; nil
	// registers none. Close unregisters them.
	Registerer prometheus.Registerer
}

// Defaults used when a Config field is zero.
const (
	defaultBlockCacheSize  = 64 << 20
	defaultRowCacheSize    = 64 << 20
	defaultWriteBufferSize = 16 << 20
	defaultMaxClockOffset  = 500 * time.Millisecond
	defaultObservationTTL  = 10 * time.Minute
	// One write per second per observation row: with 1M backends and
	// every one of them changing all the time a node writes at most 1M
	// rows/s, which no node does; the pools manager writes every 5s
	// (ObservationInterval) and only rows that changed, well inside it.
	defaultObservationMinInterval = time.Second
	// DefaultTombstoneGrace is how old a tombstone must be before a node
	// that is a cluster of one purges it (PruneOptions.Standalone).
	DefaultTombstoneGrace = 24 * time.Hour
)

// The change-set size bound: a transaction (and so a change set) holds at
// most MaxChangeSetRows rows and MaxChangeSetBytes bytes of keys and
// values, so that every change set fits one replication frame and the
// replication protocol never deals with partial sets. Update refuses a
// larger transaction with ErrTooLarge; Import splits into sets within it.
const (
	MaxChangeSetRows  = 1000
	MaxChangeSetBytes = 4 << 20
)

// DefaultConfig returns the configuration the agent starts from.
func DefaultConfig() Config {
	return Config{
		Dir:                    "data",
		BlockCacheSize:         defaultBlockCacheSize,
		RowCacheSize:           defaultRowCacheSize,
		WriteBufferSize:        defaultWriteBufferSize,
		SyncWAL:                true,
		MaxClockOffset:         defaultMaxClockOffset,
		ObservationTTL:         defaultObservationTTL,
		ObservationMinInterval: defaultObservationMinInterval,
		AuditKeep:              DefaultAuditKeep,
		Now:                    time.Now,
		Logger:                 zap.NewNop(),
	}
}
