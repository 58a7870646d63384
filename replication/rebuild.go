package replication

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"
)

// ErrRebuilt ends Run after this node found itself behind a tombstone purge:
// its own unreplicated writes were handed to a peer and the store discarded
// its state under a new node id. The agent restarts in-process: it closes
// the store, CompleteRebuild empties it, and the reopened store needs a
// bootstrap and fills itself from a peer.
var ErrRebuilt = errors.New("replication: this node was too stale to catch up and discarded its state; restart to bootstrap from a peer")

// ErrNewIdentity ends Run after the store took a new node id because a
// peer holds newer writes of the old one (this node came back from the
// past: a restored backup, a copied volume). Peers know this node by its
// id, so the caller starts a new Engine on the same store.
var ErrNewIdentity = errors.New("replication: the store took a new node id; start a new engine")

// rebuild pushes this node's own change sets the peer lacks, waits until
// the peer acknowledged them, then has the store discard its state.
func (e *Engine) rebuild(ctx context.Context, p *peer, c *conn, mine, theirs Books, cause error) error {
	e.log.Error("this node is behind a tombstone purge; handing over its own writes, then rebuilding",
		zap.String("peer", p.name), zap.Error(cause))
	own := mine[e.nodeID].Minus(theirs[e.nodeID])
	want := own
	// sent is what must be acknowledged: the seqs that still hold rows
	// (cleared seqs have nothing to hand over).
	var sent RangeSet
	for len(want) > 0 {
		b, err := e.store.ChangeSets(ctx, e.nodeID, want, e.cfg.SyncChunkBytes)
		if err != nil {
			return fmt.Errorf("reading own writes to hand over: %w", err)
		}
		b.Covered = b.Covered.Intersect(want)
		if len(b.Covered) == 0 {
			return fmt.Errorf("own writes %v not readable", want)
		}
		if len(b.Sets) > 0 {
			if err := c.send(msgPush, encodeSets(b.Sets)); err != nil {
				return err
			}
			for _, s := range b.Sets {
				sent = sent.Union(RangeSet{{s.Seq, s.Seq}})
			}
		}
		want = want.Minus(b.Covered)
	}
	deadline := time.NewTimer(2 * e.cfg.HandshakeTimeout)
	defer deadline.Stop()
	for {
		e.mu.Lock()
		progress := e.progress
		e.mu.Unlock()
		if len(e.unacked(p, sent)) == 0 {
			break
		}
		select {
		case <-progress:
		case <-deadline.C:
			return fmt.Errorf("peer %s did not acknowledge this node's own writes; not rebuilding", p.name)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if err := e.store.Rebuild(ctx); err != nil {
		return fmt.Errorf("rebuilding the store: %w", err)
	}
	e.holdsState.Store(false)
	_ = e.members.SetReady(false)
	return ErrRebuilt
}

// unacked returns the seqs of sent the peer has not acknowledged.
func (e *Engine) unacked(p *peer, sent RangeSet) RangeSet {
	p.mu.Lock()
	defer p.mu.Unlock()
	return sent.Minus(p.theirOwn)
}
