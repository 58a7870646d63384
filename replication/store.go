package replication

import (
	"context"
	"errors"
	"io"
	"time"
)

// Errors a Store returns that the engine acts on.
var (
	// ErrNotReady: the store cannot serve the ranges asked for (it holds
	// them only partly: a gap, a table under resync, a bootstrap in
	// progress). The asking peer fetches them elsewhere.
	ErrNotReady = errors.New("store not ready to serve")
	// ErrTooStale: the asking peer is behind a tombstone purge for some
	// origin; catching up incrementally could resurrect deleted rows, so it
	// must rebuild from a snapshot.
	ErrTooStale = errors.New("peer too stale: purged past its watermark")
)

// EncodedSet is one change set (one committed transaction) as the store
// encodes it. The engine reads only the header fields; Data is opaque.
type EncodedSet struct {
	Origin string
	Seq    uint64
	HLC    uint64 // commit timestamp (48-bit Unix ms << 16 | logical)
	Data   []byte
}

// ChangeSetBatch answers Store.ChangeSets: Sets in seq order, and Covered,
// the part of the request the answer covers completely: the seqs of Sets
// plus the seqs that were cleared (every row of them overwritten since),
// which the asker marks held without data.
type ChangeSetBatch struct {
	Sets    []EncodedSet
	Covered RangeSet
}

// ApplyBatch is what the engine hands to Store.ApplyBatch: change sets from
// one or more origins, and per origin the ranges to mark held once they are
// applied (a superset of the sets' seqs: it includes cleared seqs).
type ApplyBatch struct {
	Sets    []EncodedSet
	Covered map[string]RangeSet
}

// ApplyResult reports the outcome of ApplyBatch.
type ApplyResult struct {
	Applied int // change sets that changed at least one row
}

// Feed delivers this node's own commits in seq order.
type Feed interface {
	// C yields each local commit once, in seq order.
	C() <-chan EncodedSet
	// Done is closed when the feed ends; Err says why.
	Done() <-chan struct{}
	Err() error
}

// SnapshotStats is what a snapshot carried: rows (tombstones included)
// and the bytes of the store's stream.
type SnapshotStats struct {
	Rows  int
	Bytes int64
}

// PurgeResult reports a tombstone purge.
type PurgeResult struct {
	Purged int
}

// PurgeMember is what tombstone purge knows of one member.
type PurgeMember struct {
	Name string
	// Watermarks is the member's contiguous watermark per origin as it
	// last reported it; nil when it never did: it then holds every origin
	// at zero.
	Watermarks map[string]uint64
	// HeardAt is the last time anything was heard from the member; purge
	// forgets it EvictAfter later.
	HeardAt time.Time
	// Live: alive or suspect when saved, so it may have been heard after
	// HeardAt.
	Live bool
}

// Store is what the replication engine needs of the local store.
type Store interface {
	// NodeID is this node's origin id; ClusterID keeps clusters apart.
	NodeID() string
	ClusterID() string
	// KeyFingerprint identifies the key the store seals private keys
	// with (storage.EncryptionKeyFingerprint: 16 bytes, empty without a
	// key). Peers whose fingerprints differ refuse each other.
	KeyFingerprint() []byte

	// Books returns the bookkeeping of every origin this store has heard
	// of (its own included).
	Books(ctx context.Context) (Books, error)

	// ChangeSets returns origin's change sets within want, in seq order,
	// stopping after about maxBytes. Covered may be less than want (the
	// next call continues); it is never more than the store holds. A store
	// that holds part of want only partly returns ErrNotReady; a purge past
	// the asker's watermark, ErrTooStale.
	ChangeSets(ctx context.Context, origin string, want RangeSet, maxBytes int) (ChangeSetBatch, error)

	// ApplyBatch applies remote change sets last-write-wins in one commit,
	// with the bookkeeping of Covered in the same commit. Idempotent; sets
	// of its own origin are accepted (a rebuilt node's history comes back).
	// A store that is bootstrapping returns ErrNotReady.
	ApplyBatch(ctx context.Context, b ApplyBatch) (ApplyResult, error)

	// LocalCommits subscribes to this node's own commits after seq.
	LocalCommits(ctx context.Context, afterSeq uint64) (Feed, error)

	// NeedsBootstrap reports an empty store that must be filled from a
	// peer before it is ready (a new node, or a table removed after
	// corruption). MarkReady records that it now holds the cluster's state.
	NeedsBootstrap(ctx context.Context) (bool, error)
	MarkReady(ctx context.Context) error

	// Snapshot writes a consistent snapshot (rows with their versions,
	// tombstones, and the bookkeeping read from the same view) to w; the
	// stream is the store's own format, opaque to the engine. Ingest fills
	// this store from one (rows keep their original versions, the
	// bookkeeping is adopted, nothing is originated); the store is still
	// not ready until MarkReady, after one catch-up round.
	// Both report what went through, for the bootstrap's log line and
	// figures.
	Snapshot(ctx context.Context, w io.Writer) (SnapshotStats, error)
	Ingest(ctx context.Context, r io.Reader) (SnapshotStats, error)

	// Purge removes tombstones every listed member has seen: watermarks
	// maps member node id → origin → contiguous watermark. Members absent
	// from the map are not active (evicted); the store applies its grace
	// period and re-checks each tombstone inside the purge commit.
	Purge(ctx context.Context, watermarks map[string]map[string]uint64) (PurgeResult, error)

	// SavePurgeMembers keeps, across restarts, what purge knows of every
	// member it still waits for (by node id); PurgeMembers reads back the
	// last save (none before the first).
	SavePurgeMembers(ctx context.Context, members map[string]PurgeMember) error
	PurgeMembers(ctx context.Context) (map[string]PurgeMember, error)

	// Rebuild discards the local state and takes a new node id, so that
	// the store needs a bootstrap (NeedsBootstrap true). The engine calls
	// it when this node is behind a tombstone purge (ErrTooStale), after a
	// peer acknowledged every change set of this node's origin.
	Rebuild(ctx context.Context) error

	// ObserveOwnOrigin tells the store that a peer holds seqs of this
	// node's origin up to maxSeq. If that is above what the store ever
	// issued, the store came back from the past (a restored backup) and
	// must take a new node id before its next write, and reports true:
	// the engine then ends (ErrNewIdentity), since peers know it by the
	// old id.
	ObserveOwnOrigin(ctx context.Context, maxSeq uint64) (bool, error)
}
