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
	// the one stored in Dir.
	NodeID string
	// EncryptionKey is the 32-byte AES-256-GCM key for private keys at
	// rest (see ParseEncryptionKey). nil means none: then no certificate
	// with a private key can be stored.
	EncryptionKey []byte
	// BlockCacheSize bounds the shared RocksDB block cache (data, index
	// and filter blocks of every table). 0 means 64 MiB.
	BlockCacheSize int64
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
	// MaxClockOffset is how far ahead of the local wall clock a peer's HLC
	// may be before Apply counts it as clock skew. 0 means 500ms.
	MaxClockOffset time.Duration
	Logger         *zap.Logger
	// Registerer receives the singularity_edge_storage_* metrics; nil
	// registers none. Close unregisters them.
	Registerer prometheus.Registerer
}

// Defaults used when a Config field is zero.
const (
	defaultBlockCacheSize  = 64 << 20
	defaultWriteBufferSize = 16 << 20
	defaultMaxClockOffset  = 500 * time.Millisecond
)

// DefaultConfig returns the configuration the agent starts from.
func DefaultConfig() Config {
	return Config{
		Dir:             "data",
		BlockCacheSize:  defaultBlockCacheSize,
		WriteBufferSize: defaultWriteBufferSize,
		SyncWAL:         true,
		MaxClockOffset:  defaultMaxClockOffset,
		Logger:          zap.NewNop(),
	}
}
