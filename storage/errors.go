package storage

import "errors"

// Sentinel errors. Callers test them with errors.Is; the store wraps them
// with context (table, key) but never with key material.
var (
	// ErrNotFound: the row does not exist or is a tombstone.
	ErrNotFound = errors.New("storage: not found")
	// ErrReadOnly: a write was attempted inside View.
	ErrReadOnly = errors.New("storage: read-only transaction")
	// ErrEncryptionKey: the encryption key is missing, malformed or not the
	// key the stored private keys were encrypted with.
	ErrEncryptionKey = errors.New("storage: encryption key")
	// ErrCorrupt: stored bytes failed a checksum or could not be decoded.
	ErrCorrupt = errors.New("storage: data corrupt")
	// ErrClosed: the store was closed.
	ErrClosed = errors.New("storage: store closed")
	// ErrInvalid: the input was rejected before anything was stored.
	ErrInvalid = errors.New("storage: invalid input")
	// ErrUnknownTable: a table name the store does not know.
	ErrUnknownTable = errors.New("storage: unknown table")
	// ErrFormatVersion: bytes written by a newer, incompatible format.
	ErrFormatVersion = errors.New("storage: unsupported format version")
	// ErrNotReady: the store cannot serve (or the node should not take
	// traffic) yet: a table is under resync, a snapshot ingest or the first
	// catch-up after it is not finished, or a commit failed for lack of
	// space. Ready says which.
	ErrNotReady = errors.New("storage: not ready")
	// ErrTooLarge: a transaction or change set exceeds the change-set size
	// bound (MaxChangeSetRows rows or MaxChangeSetBytes bytes).
	ErrTooLarge = errors.New("storage: change set too large")
	// ErrRateLimited: an observation was written again sooner than
	// Config.ObservationMinInterval allows without a health change.
	ErrRateLimited = errors.New("storage: observation written too often")
	// ErrDiskFull: RocksDB could not write (a commit's WAL write, a flush
	// or a compaction in the background) for lack of space. Writes resume
	// by themselves once space is freed (for a compaction: room for it).
	ErrDiskFull = errors.New("storage: disk full")
	// ErrCommitFailed: Ready's answer while the last commit failed (it
	// wraps that commit's error too).
	ErrCommitFailed = errors.New("storage: last commit failed")
	// ErrClusterMismatch: a snapshot or store belongs to another cluster.
	ErrClusterMismatch = errors.New("storage: cluster id mismatch")
)
