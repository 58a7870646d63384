package storage

import (
	"context"
	"errors"
	"fmt"
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
}

// PruneResult counts what Prune deleted.
type PruneResult struct {
	FeedEntries int `json:"feed_entries"`
}

// Prune deletes old change-feed entries, which otherwise grow with every
// commit. The change log needs no pruning: it holds one key per current
// row version (changelog.go). Prune does not take the commit lock: new
// commits only append feed entries above the ones it deletes, so it is one
// range deletion whatever the number of entries.
func (s *Store) Prune(ctx context.Context, opts PruneOptions) (PruneResult, error) {
	var res PruneResult
	if err := s.enter(); err != nil {
		return res, err
	}
	defer s.leave()
	if err := ctx.Err(); err != nil {
		return res, err
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
