package storage

import "errors"

// Sentinel errors. Callers test them with errors.Is; the store wraps them
// with context (table, key) but never with key material.
var (
	// ErrNotFound: the row does not exist or is a tombstone.
	ErrNotFound = errors.New("storage: not found")
	// ErrConflict: a transaction kept conflicting with concurrent writers
	// and gave up after a bounded number of retries.
	ErrConflict = errors.New("storage: transaction conflict")
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
)
