package agent

import (
	"context"
	"time"

	"go.uber.org/zap"

	"github.com/singularity-ng/singularity-edge/storage"
)

// pruneInterval is how often the change feed and change log are trimmed.
const pruneInterval = 10 * time.Minute

// pruneLoop trims the change feed, which grows with every commit
// (observations alone add one every few seconds) and only serves in-process
// subscribers, which keep up, so a bounded tail suffices; and it removes
// expired rows (observations of nodes that left). The change log needs no
// pruning: it keeps only current row versions. The audit table keeps its
// newest Config.AuditKeep rows. A node without replication also purges
// its tombstones older than storage.DefaultTombstoneGrace.
func (a *Agent) pruneLoop(ctx context.Context) error {
	ticker := time.NewTicker(pruneInterval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
		}
		// Without a replication engine this node is a cluster of one:
		// nothing else purges its tombstones, and no member holds its
		// origin, so the store purges them after the grace period.
		res, err := a.store.Prune(ctx, storage.PruneOptions{KeepFeed: a.cfg.FeedRetention, Standalone: a.repl == nil})
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			a.logger.Warn("pruning the change feed failed", zap.Error(err))
			continue
		}
		expired, err := a.store.ExpireRows(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			a.logger.Warn("removing expired rows failed", zap.Error(err))
			continue
		}
		audit, err := a.store.PruneAudit(ctx, 0)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			a.logger.Warn("trimming the audit table failed", zap.Error(err))
			continue
		}
		if res.FeedEntries+res.Tombstones+expired.Removed+audit > 0 {
			a.logger.Info("pruned", zap.Int("feed_entries", res.FeedEntries), zap.Int("tombstones", res.Tombstones),
				zap.Int("expired_rows", expired.Removed), zap.Int("audit_rows", audit))
		}
	}
}
