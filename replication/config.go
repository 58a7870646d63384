package replication

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/singularity-ng/singularity-edge/cluster"
)

// Membership is what the engine needs of discovery.
type Membership interface {
	// Members lists every known member, this node included (Self).
	Members() []cluster.Member
	// Changed is closed at the next membership change.
	Changed() <-chan struct{}
	// SetReady advertises this node's readiness.
	SetReady(ready bool) error
	// Alone is true when nothing names any other node (no seed, no DNS
	// answer but this node, none remembered, none ever joined): an empty
	// store then starts the cluster's state at once instead of waiting
	// BootstrapAloneAfter for peers nothing says exist.
	Alone() bool
}

// Config configures the Engine.
type Config struct {
	// Addr is the replication listener (host:port); it is advertised in
	// the gossip metadata. Name is this member's name (logs, Hello).
	Addr string
	Name string
	// Region prefers same-region peers for bootstrap.
	Region string
	// Secrets are the gossip secrets, primary first (EDGE_GOSSIP_KEY,
	// then EDGE_GOSSIP_KEYS); the stream identities derive from them.
	Secrets [][]byte

	MaxFrameSize int
	// PushBatchBytes and PushDelay coalesce local commits into one Push
	// frame under load; PeerQueueBytes bounds what waits per peer (the
	// oldest is dropped beyond it and fetched by the peer's catch-up).
	PushBatchBytes int
	PushDelay      time.Duration
	PeerQueueBytes int
	// PushInterval bounds how long commits wait for the ack of the
	// previous Push frame to one peer: a stream with no frame
	// unacknowledged sends a commit at once (after PushDelay); while one
	// is, commits accumulate until its ack or PushInterval after it was
	// sent, and go in one frame, which the peer applies in one commit.
	// 0 sends a frame per wake-up.
	PushInterval time.Duration
	// SyncInterval is the period of anti-entropy with each peer (jittered
	// ±25 %); a sync also runs on every (re)connection and on a gap.
	SyncInterval     time.Duration
	SyncChunkBytes   int
	HandshakeTimeout time.Duration
	WriteTimeout     time.Duration
	// IdleTimeout ends a stream on which nothing arrived for this long.
	// Both ends hear from each other at least every SyncInterval×1.25
	// (the client's sync round and the server's answer), so silence means
	// the path is gone while the TCP connection is not: a firewall or
	// NAT that drops the flow, a route lost on one side. Without a bound
	// such a stream stays "connected", pushes pile up in the socket and
	// nothing replicates until TCP's retransmissions give up (about 15
	// minutes with Linux defaults). It must exceed twice SyncInterval.
	IdleTimeout    time.Duration
	DialBackoffMax time.Duration
	// BootstrapAloneAfter: an empty node that sees no ready peer for this
	// long becomes ready by itself (the first node of a cluster; among
	// several new nodes, the one with the lowest node id). It applies
	// only when other nodes are known; a node that is Alone is ready at
	// once.
	BootstrapAloneAfter time.Duration
	// PurgeInterval runs the tombstone purge; EvictAfter forgets a member
	// whose bookkeeping was not heard for that long: purge stops waiting
	// for it, and once it is no alive or suspect member either, its peer
	// record (status, metrics) goes too.
	PurgeInterval time.Duration
	EvictAfter    time.Duration

	// Dial opens the TCP connection of an outbound stream (TLS runs over
	// it); nil uses a net.Dialer with HandshakeTimeout. Tests wrap the
	// connection to add latency between regions.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)

	Logger     *zap.Logger
	Registerer prometheus.Registerer
	Now        func() time.Time
}

// DefaultConfig returns the defaults (see docs/ARCHITECTURE.md).
func DefaultConfig() Config {
	return Config{
		MaxFrameSize:        DefaultMaxFrameSize,
		PushBatchBytes:      64 << 10,
		PushDelay:           2 * time.Millisecond,
		PushInterval:        10 * time.Millisecond,
		PeerQueueBytes:      4 << 20,
		SyncInterval:        2 * time.Second,
		SyncChunkBytes:      256 << 10,
		HandshakeTimeout:    10 * time.Second,
		WriteTimeout:        10 * time.Second,
		IdleTimeout:         30 * time.Second,
		DialBackoffMax:      5 * time.Second,
		BootstrapAloneAfter: 10 * time.Second,
		PurgeInterval:       10 * time.Minute,
		EvictAfter:          24 * time.Hour,
		Logger:              zap.NewNop(),
		Now:                 time.Now,
	}
}

func (c *Config) validate() error {
	var errs []error
	if _, _, err := net.SplitHostPort(c.Addr); err != nil {
		errs = append(errs, err)
	}
	if len(c.Secrets) == 0 {
		errs = append(errs, errors.New("no gossip secret"))
	}
	if c.MaxFrameSize < 1<<16 || c.PushBatchBytes <= 0 || c.PushBatchBytes > c.MaxFrameSize/2 ||
		c.SyncChunkBytes <= 0 || c.SyncChunkBytes > c.MaxFrameSize/2 || c.PeerQueueBytes < c.PushBatchBytes {
		errs = append(errs, errors.New("frame, batch, chunk and queue sizes are inconsistent"))
	}
	if c.PushDelay < 0 || c.PushInterval < 0 {
		errs = append(errs, errors.New("push delay and interval must not be negative"))
	}
	if c.SyncInterval <= 0 || c.HandshakeTimeout <= 0 || c.WriteTimeout <= 0 || c.DialBackoffMax <= 0 ||
		c.PurgeInterval <= 0 || c.EvictAfter <= 0 || c.BootstrapAloneAfter <= 0 {
		errs = append(errs, errors.New("intervals and timeouts must be positive"))
	}
	if c.IdleTimeout < 2*c.SyncInterval {
		errs = append(errs, fmt.Errorf("idle timeout %s must be at least twice the sync interval %s", c.IdleTimeout, c.SyncInterval))
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return errors.Join(errs...)
}
