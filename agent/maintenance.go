package agent

import (
	"context"
	"time"

	"go.uber.org/zap"

	"github.com/singularity-ng/singularity-edge/storage"
)

// pruneInterval is how often the change feed and change log are trimmed.
const pruneInterval = 10 * time.Minute

// pruneLoop trims the change feed and the change log, which otherwise grow
// with every commit (observations alone add one every few seconds). The
// feed only serves in-process subscribers, which keep up, so a bounded tail
// suffices; the change log is what peers catch up from, so it keeps
// ChangeLogRetention of history.
func (a *Agent) pruneLoop(ctx context.Context) error {
	ticker := time.NewTicker(pruneInterval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
		}
		cutoff := time.Now().Add(-a.cfg.ChangeLogRetention)
		res, err := a.store.Prune(ctx, storage.PruneOptions{
			KeepFeed:        a.cfg.FeedRetention,
			ChangeLogBefore: storage.NewHLC(cutoff.UnixMilli(), 0),
		})
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			a.logger.Warn("pruning the change log failed", zap.Error(err))
			continue
		}
		if res.FeedEntries+res.ChangeSets > 0 {
			a.logger.Info("pruned change history", zap.Int("feed_entries", res.FeedEntries), zap.Int("change_sets", res.ChangeSets))
		}
	}
}
