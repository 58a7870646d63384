package storage

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// ErrFeedPruned: a subscription asked for feed entries that Prune already
// deleted. The subscriber must reload its state (View) and subscribe again
// from the index its View reports (Tx.LastIndex).
var ErrFeedPruned = errors.New("storage: change feed pruned past the requested index")

// PruneOptions says what Prune may delete. Zero values delete nothing.
type PruneOptions struct {
	// KeepFeed keeps the newest KeepFeed feed entries and deletes older
	// ones (0: keep all), except those a running subscription has not
	// delivered yet. The newest entry is always kept.
	KeepFeed uint64
	// Standalone says this node is a cluster of one (no replication
	// engine, which otherwise runs PurgeTombstones with the members'
	// watermarks): Prune then also purges tombstones older than
	// TombstoneGrace, which is safe because no other member holds any
	// origin. A node that later joins a cluster is bootstrapped from a
	// snapshot by its peers, or hands them its current rows.
	Standalone bool
	// TombstoneGrace is how old a tombstone must be for a standalone
	// purge (0: DefaultTombstoneGrace).
	TombstoneGrace time.Duration
}

// PruneResult counts what Prune deleted.
type PruneResult struct {
	FeedEntries int `json:"feed_entries"`
	// Tombstones purged (Standalone only).
	Tombstones int `json:"tombstones"`
}

// Prune deletes old change-feed entries, which otherwise grow with every
// commit. The change log needs no pruning: it holds one key per current
// row version (changelog.go). Prune does not take the commit lock: new
// commits only append feed entries above the ones it deletes, so it is one
// range deletion whatever the number of entries. A standalone node's
// tombstones are purged first (PruneOptions.Standalone).
func (s *Store) Prune(ctx context.Context, opts PruneOptions) (PruneResult, error) {
	var res PruneResult
	if err := s.enter(); err != nil {
		return res, err
	}
	defer s.leave()
	if err := ctx.Err(); err != nil {
		return res, err
	}
	if opts.Standalone {
		grace := opts.TombstoneGrace
		if grace <= 0 {
			grace = DefaultTombstoneGrace
		}
		purged, err := s.PurgeTombstones(ctx, nil, grace)
		res.Tombstones = purged.Removed
		if err != nil {
			return res, err
		}
	}
	last := s.lastIndex.Load()
	first := s.firstIndex.Load()
	if opts.KeepFeed == 0 || last <= opts.KeepFeed {
		return res, nil
	}
	cut := last - opts.KeepFeed // delete indexes <= cut
	// A running subscriber that is further behind keeps its entries:
	// pruning them would end its subscription with ErrFeedPruned.
	if slowest, ok := s.slowestSubscriber(); ok && slowest < cut {
		cut = slowest
	}
	if cut < first {
		return res, nil
	}
	// Publish the new first index before deleting, so that a subscriber
	// reading a gap meanwhile reports ErrFeedPruned rather than damage.
	s.firstIndex.Store(cut + 1)
	if err := s.base.DeleteRangeCF(s.woAsync, s.cfs[cfFeed], feedKey(first), feedKey(cut+1)); err != nil {
		return res, s.noteWriteError(fmt.Errorf("storage: prune feed: %w", err))
	}
	res.FeedEntries = int(cut + 1 - first)
	return res, nil
}
