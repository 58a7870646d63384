package replication

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"time"

	"go.uber.org/zap"

	"github.com/singularity-ng/singularity-edge/cluster"
)

// bootstrap fills an empty store from the nearest ready peer, catches up,
// and only then marks the node ready.
func (e *Engine) bootstrap(ctx context.Context) error {
	need, err := e.store.NeedsBootstrap(ctx)
	if err != nil {
		return fmt.Errorf("replication: %w", err)
	}
	if !need {
		return e.markReady(ctx)
	}
	e.setClusterID("")
	e.log.Info("store is empty: bootstrapping from a peer before serving")
	start := e.cfg.Now()
	for {
		var ready, notReady []cluster.Member
		unreachable := 0 // members known but suspect or dead: they may hold the cluster's state
		for _, m := range e.members.Members() {
			if m.Self || m.ID == e.nodeID {
				continue
			}
			if m.State == cluster.StateSuspect || m.State == cluster.StateDead {
				unreachable++
				continue
			}
			if m.State != cluster.StateAlive || m.Addresses[cluster.AddrReplication] == "" {
				continue
			}
			if m.Ready {
				ready = append(ready, m)
			} else {
				notReady = append(notReady, m)
			}
		}
		// Nearest first: same region, then the shortest round trip.
		sort.SliceStable(ready, func(i, j int) bool {
			ri, rj := ready[i].Region == e.cfg.Region, ready[j].Region == e.cfg.Region
			if ri != rj {
				return ri
			}
			return ready[i].RTTMS < ready[j].RTTMS
		})
		for _, m := range ready {
			if k := e.peerFor(m.ID, m.Name).key(); k.differs != "" && e.cfg.Now().Sub(k.at) < e.cfg.DialBackoffMax {
				// Refused for its key a moment ago (and logged then):
				// ask again only as often as a stream would.
				continue
			}
			st, err := e.snapshotFrom(ctx, m)
			if err == nil {
				e.log.Info("bootstrapped from peer", zap.String("peer", m.Name), zap.Duration("took", e.cfg.Now().Sub(start)),
					zap.Int("rows", st.Rows), zap.Int64("bytes", st.Bytes),
					zap.Duration("ingest", st.ingest), zap.Duration("catch_up", st.catchUp),
					zap.Float64("rows_per_second", perSecond(float64(st.Rows), st.ingest)),
					zap.Float64("mb_per_second", perSecond(float64(st.Bytes)/1e6, st.ingest)))
				return e.markReady(ctx)
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			e.metrics.bootstrapFailures.Inc()
			if !errors.Is(err, ErrEncryptionKeyDiffers) {
				e.log.Warn("bootstrap from peer failed", zap.String("peer", m.Name), zap.Error(err))
			}
		}
		// Only a node that sees no other member that could hold state
		// starts the cluster's state: an empty node cut off from an
		// existing cluster must not become ready with nothing. A ready
		// peer refused for its encryption key counts: a node with the
		// wrong key waits, it does not start a cluster of its own.
		if len(ready) == 0 && unreachable == 0 && len(notReady) == 0 && e.members.Alone() {
			e.log.Info("no other node is known (no seed, no DNS answer but this node, none remembered): this node starts the cluster's state")
			return e.markReady(ctx)
		}
		if len(ready) == 0 && unreachable == 0 && e.cfg.Now().Sub(start) >= e.cfg.BootstrapAloneAfter {
			first := true
			for _, m := range notReady {
				if m.ID < e.nodeID {
					first = false
				}
			}
			if first {
				e.log.Info("no ready peer: this node starts the cluster's state", zap.Int("other_new_members", len(notReady)))
				return e.markReady(ctx)
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-e.members.Changed():
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func (e *Engine) markReady(ctx context.Context) error {
	e.setClusterID(e.store.ClusterID())
	if err := e.store.MarkReady(ctx); err != nil {
		return fmt.Errorf("replication: marking the store ready: %w", err)
	}
	// Before Ready closes: whoever waits for it reads the ready gauge
	// (singularity_edge_replication_ready) from holdsState, and saw 0
	// for a moment (TestBootstrapRefusedForEncryptionKey, under load).
	e.holdsState.Store(true)
	e.readyOnce.Do(func() { close(e.ready) })
	if err := e.members.SetReady(true); err != nil {
		e.log.Warn("could not gossip readiness", zap.Error(err))
	}
	return nil
}

// bootstrapStats is one bootstrap's figures for its log line.
type bootstrapStats struct {
	SnapshotStats
	ingest, catchUp time.Duration
}

func perSecond(n float64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return n / d.Seconds()
}

// snapshotFrom streams a snapshot from m into the store, then runs one
// catch-up round over the same stream for what was written meanwhile.
func (e *Engine) snapshotFrom(ctx context.Context, m cluster.Member) (bootstrapStats, error) {
	var st bootstrapStats
	p := e.peerFor(m.ID, m.Name)
	c, err := e.dial(ctx, m.Addresses[cluster.AddrReplication], p)
	if err != nil {
		return st, err
	}
	defer c.close()
	if err := c.send(msgSnapshotRequest, nil); err != nil {
		return st, err
	}
	idle := 2 * e.cfg.HandshakeTimeout
	t0 := e.cfg.Now()
	f, err := c.recv(idle)
	if err != nil {
		return st, err
	}
	switch f.typ {
	case msgReject:
		r, _ := decodeReject(f.payload)
		return st, &RejectError{Code: r.Code, Reason: r.Reason}
	case msgSnapshotHeader:
	default:
		return st, fmt.Errorf("%w: %s instead of a snapshot header", ErrBadFrame, f.typ)
	}
	r := &chunkReader{c: c, idle: idle, m: e.metrics}
	st.SnapshotStats, err = e.store.Ingest(ctx, r)
	if err != nil {
		return st, fmt.Errorf("ingesting the snapshot of %s: %w", m.Name, err)
	}
	e.setClusterID(e.store.ClusterID())
	// The store stops at its own end marker; the engine's end frame
	// follows it.
	if n, err := io.Copy(io.Discard, r); err != nil || n != 0 {
		return st, fmt.Errorf("%w: snapshot of %s: %d bytes after the store's end, %v", ErrBadFrame, m.Name, n, err)
	}
	t1 := e.cfg.Now()
	st.ingest = t1.Sub(t0)
	next := func() (frame, error) { return c.recv(idle) }
	_, err = e.catchUp(ctx, p, c, next, nil)
	st.catchUp = e.cfg.Now().Sub(t1)
	return st, err
}
