package agent

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/singularity-ng/singularity-edge/admin"
	"github.com/singularity-ng/singularity-edge/apitypes"
	"github.com/singularity-ng/singularity-edge/discovery"
	"github.com/singularity-ng/singularity-edge/replication"
)

// Membership states of this node, as admin.Membership reports them.
const (
	stateLeaving = "leaving"
	stateLeft    = "left"
)

// leaveGossipTimeout bounds the goodbye broadcast of a leave.
const leaveGossipTimeout = 5 * time.Second

// membership carries out `cluster join` and `cluster leave` over the
// agent's discovery and replication (admin.Membership).
type membership struct {
	disc *discovery.Discovery
	repl *replication.Engine
	log  *zap.Logger

	mu    sync.Mutex
	state string // "", stateLeaving, stateLeft
}

var _ admin.Membership = (*membership)(nil)

// State implements admin.Membership.
func (m *membership) State() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.state
}

// Join implements admin.Membership.
func (m *membership) Join(ctx context.Context, addrs []string) (int, error) {
	if m.State() != "" {
		return 0, admin.ErrLeft
	}
	n, err := m.disc.Join(ctx, addrs)
	switch {
	case errors.Is(err, discovery.ErrLeft):
		return 0, fmt.Errorf("%w: %w", admin.ErrLeft, err)
	case errors.Is(err, discovery.ErrNoAnswer):
		return 0, fmt.Errorf("%w: %w", admin.ErrNoNodeAnswered, err)
	case errors.Is(err, discovery.ErrNotStarted):
		return 0, fmt.Errorf("%w: %w", admin.ErrStarting, err)
	}
	return n, err
}

// Leave implements admin.Membership. The admin API has already stopped
// taking writes; the flush then covers every write this node made.
func (m *membership) Leave(ctx context.Context, force bool) (apitypes.ClusterLeft, error) {
	m.mu.Lock()
	switch m.state {
	case stateLeft:
		m.mu.Unlock()
		return apitypes.ClusterLeft{}, admin.ErrLeft
	case stateLeaving:
		m.mu.Unlock()
		return apitypes.ClusterLeft{}, admin.ErrLeaving
	}
	m.state = stateLeaving
	m.mu.Unlock()
	m.log.Info("leaving the cluster: waiting until every alive member holds this node's writes", zap.Bool("force", force))

	wr, err := m.repl.Flush(ctx)
	res := apitypes.ClusterLeft{State: stateLeft, Flushed: err == nil, Applied: wr.Applied, Missing: []apitypes.ClusterMissing{}}
	if res.Applied == nil {
		res.Applied = []string{}
	}
	for _, mm := range wr.Missing {
		res.Missing = append(res.Missing, apitypes.ClusterMissing{Name: mm.Name, NodeID: mm.NodeID, State: mm.State, Reason: mm.Reason})
	}
	if err != nil && !force {
		m.mu.Lock()
		m.state = ""
		m.mu.Unlock()
		m.log.Warn("not leaving the cluster: some members do not hold every write of this node", zap.Error(err),
			zap.Any("missing", res.Missing))
		res.State = ""
		return res, fmt.Errorf("%w: %w", admin.ErrNotFlushed, err)
	}
	if err != nil {
		m.log.Warn("leaving the cluster although some members do not hold every write of this node (force)",
			zap.Error(err), zap.Any("missing", res.Missing))
	}
	// Gossip not-ready first, so no peer picks this node to bootstrap
	// from while it goes; then replication stops (nothing is left to
	// push, and a node that said goodbye must not keep streams open that
	// peers would redial), then the goodbye.
	if err := m.disc.SetReady(false); err != nil {
		m.log.Warn("could not gossip not-ready before leaving", zap.Error(err))
	}
	m.repl.Close()
	if err := m.disc.Leave(leaveGossipTimeout); err != nil {
		m.log.Warn("leaving gossip", zap.Error(err))
	}
	m.mu.Lock()
	m.state = stateLeft
	m.mu.Unlock()
	m.log.Info("left the cluster: not ready; stop this agent, or restart it to join again",
		zap.Bool("flushed", res.Flushed), zap.Strings("applied", res.Applied))
	return res, nil
}
