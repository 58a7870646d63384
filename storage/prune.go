package storage

import (
	"context"
	"errors"
	"fmt"

	"github.com/linxGnu/grocksdb"
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
	// ChangeLogBefore deletes change-log entries whose change-set HLC is
	// below it (0: keep all), except the newest entry of each origin (it
	// carries the version vector and the clock's high-water mark across
	// restarts) and entries a remaining feed entry refers to. Replication
	// decides the cut-off: a change set pruned here can no longer be
	// served by ChangeSetsSince.
	ChangeLogBefore HLC
}

// PruneResult counts what Prune deleted.
type PruneResult struct {
	FeedEntries int `json:"feed_entries"`
	ChangeSets  int `json:"change_sets"`
}

// Prune deletes old change-feed and change-log entries, which otherwise
// grow with every commit. Rows and tombstones are not touched. Commits wait
// while it runs (it holds the commit mutex so that no new feed entry can
// start referring to a change-log entry being deleted).
func (s *Store) Prune(ctx context.Context, opts PruneOptions) (PruneResult, error) {
	var res PruneResult
	if err := s.enter(); err != nil {
		return res, err
	}
	defer s.leave()
	s.commitMu.Lock()
	defer s.commitMu.Unlock()

	ro := grocksdb.NewDefaultReadOptions()
	defer ro.Destroy()
	batch := grocksdb.NewWriteBatch()
	defer batch.Destroy()

	last := s.lastIndex.Load()
	first := s.firstIndex.Load()
	if opts.KeepFeed > 0 && last > opts.KeepFeed {
		cut := last - opts.KeepFeed // delete indexes <= cut
		// A running subscriber that is further behind keeps its entries:
		// pruning them would end its subscription with ErrFeedPruned.
		if slowest, ok := s.slowestSubscriber(); ok && slowest < cut {
			cut = slowest
		}
		it := s.base.NewIteratorCF(ro, s.cfs[cfFeed])
		for it.SeekToFirst(); it.Valid(); it.Next() {
			k := it.Key().Data()
			if len(k) != 8 || beUint64(k) > cut {
				break
			}
			batch.DeleteCF(s.cfs[cfFeed], append([]byte(nil), k...))
			res.FeedEntries++
		}
		err := it.Err()
		it.Close()
		if err != nil {
			return PruneResult{}, readError(cfFeed, err)
		}
		first = max(first, cut+1)
	}

	if opts.ChangeLogBefore > 0 {
		refs, err := s.feedRefs(ro, first)
		if err != nil {
			return PruneResult{}, err
		}
		it := s.base.NewIteratorCF(ro, s.cfs[cfChangelog])
		defer it.Close()
		it.SeekToFirst()
		for it.Valid() {
			if err := ctx.Err(); err != nil {
				return PruneResult{}, err
			}
			key := append([]byte(nil), it.Key().Data()...)
			origin, seq, ok := parseChangelogKey(key)
			if !ok {
				return PruneResult{}, corruptError(cfChangelog, errors.New("malformed change-log key"))
			}
			hlc, err := changeLogHLC(it.Value().Data())
			if err != nil {
				return PruneResult{}, corruptError(cfChangelog, err)
			}
			it.Next()
			lastOfOrigin := !it.Valid()
			if !lastOfOrigin {
				next, _, _ := parseChangelogKey(it.Key().Data())
				lastOfOrigin = next != origin
			}
			if hlc < opts.ChangeLogBefore && !lastOfOrigin && !refs[changelogRef{origin, seq}] {
				batch.DeleteCF(s.cfs[cfChangelog], key)
				res.ChangeSets++
			}
		}
		if err := it.Err(); err != nil {
			return PruneResult{}, readError(cfChangelog, err)
		}
	}
	if batch.Count() == 0 {
		return res, nil
	}
	if err := s.db.Write(s.wo, batch); err != nil {
		return PruneResult{}, fmt.Errorf("storage: prune: %w", err)
	}
	s.firstIndex.Store(first)
	return res, nil
}

type changelogRef struct {
	origin string
	seq    uint64
}

// feedRefs returns the change-log entries the feed entries from index
// `from` on refer to.
func (s *Store) feedRefs(ro *grocksdb.ReadOptions, from uint64) (map[changelogRef]bool, error) {
	refs := make(map[changelogRef]bool)
	it := s.base.NewIteratorCF(ro, s.cfs[cfFeed])
	defer it.Close()
	for it.Seek(feedKey(from)); it.Valid(); it.Next() {
		var ref changelogRef
		err := decodeFields(it.Value().Data(), func(f field) error {
			switch f.num {
			case 1:
				return f.str(&ref.origin)
			case 2:
				return f.uint64(&ref.seq)
			}
			return nil
		})
		if err != nil {
			return nil, corruptError(cfFeed, err)
		}
		if ref.origin != "" {
			refs[ref] = true
		}
	}
	if err := it.Err(); err != nil {
		return nil, readError(cfFeed, err)
	}
	return refs, nil
}
