package replication

import (
	"bytes"
	"context"
	"crypto/tls"
	"sort"

	"go.uber.org/zap"

	"github.com/singularity-ng/singularity-edge/cluster"
)

// Every node of a cluster must seal private keys with the same
// EDGE_ENCRYPTION_KEY: change sets and snapshots carry them sealed, and the
// store checks its key only against its own rows when it opens. So Hello
// carries the key's fingerprint (storage.EncryptionKeyFingerprint) and
// both sides of a stream refuse a peer whose fingerprint differs: nothing
// is pushed, synced or bootstrapped across it. A node whose key differs
// from that of every peer it has reached that holds the cluster's state
// reports itself not ready.

// handshake runs the stream handshake in either role, records what the
// peer's Hello said of its key, and counts a refusal.
func (e *Engine) handshake(ctx context.Context, tc *tls.Conn, c *conn) error {
	err := handshake(ctx, tc, c, e.hello(), e.cfg.HandshakeTimeout)
	// A Hello of another version is refused by its version; its
	// fingerprint, if it has one, means nothing to this one.
	if h := c.peer; h.Proto == protoVersion && h.NodeID != "" && h.NodeID != e.nodeID {
		e.observeKey(h, err)
	}
	if err != nil {
		e.metrics.handshakeFailure(err)
	}
	return err
}

// observeKey records whether a peer's key matches this node's, logging a
// mismatch once per peer (again only if it changes) rather than at every
// reconnection.
func (e *Engine) observeKey(h hello, err error) {
	differs := ""
	if !bytes.Equal(h.KeyFingerprint, e.keyFP) {
		differs = keyDiffers(h, hello{KeyFingerprint: e.keyFP})
	}
	p := e.peerFor(h.NodeID, h.Name)
	was := p.setKey(differs, h.Ready, e.cfg.Now())
	switch {
	case differs != "" && differs != was:
		e.log.Error("encryption key differs from a peer's: set the same EDGE_ENCRYPTION_KEY on every node; "+
			"no change sets or snapshots are exchanged with it until then",
			zap.String("peer", h.Name), zap.String("peer_node_id", h.NodeID),
			zap.String("peer_key", describeKey(h.KeyFingerprint)), zap.String("this_node_key", describeKey(e.keyFP)))
	case differs == "" && was != "":
		e.log.Info("encryption key of a peer matches this node's again: replication with it resumes", zap.String("peer", h.Name))
	}
	if differs != "" {
		// The outbound stream records its own refusal; an inbound one
		// would leave none in the peer's status.
		p.setErr(err)
	}
	e.checkIsolation()
}

// keyIsolated reports whether this node's key differs from that of every
// alive peer whose Hello it has seen, and at least one of those holds the
// cluster's state; it returns their names. A new node that joins with
// the wrong key is not ready itself, so it cannot make the established
// nodes not ready. Two established nodes whose keys differ are both
// isolated: nothing tells which key is the right one.
func (e *Engine) keyIsolated() (bool, []string) {
	alive := map[string]bool{}
	for _, m := range e.members.Members() {
		if !m.Self && m.ID != e.nodeID && m.State == cluster.StateAlive {
			alive[m.ID] = true
		}
	}
	e.mu.Lock()
	peers := make([]*peer, 0, len(e.peers))
	for id, p := range e.peers {
		if alive[id] {
			peers = append(peers, p)
		}
	}
	e.mu.Unlock()
	var differ []string
	for _, p := range peers {
		k := p.key()
		if !k.seen {
			continue
		}
		if k.differs == "" {
			return false, nil
		}
		if k.peerReady {
			differ = append(differ, p.name)
		}
	}
	sort.Strings(differ)
	return len(differ) > 0, differ
}

// KeyIsolated reports whether this node's EDGE_ENCRYPTION_KEY differs
// from that of every alive peer it has reached, one of which holds the
// cluster's state (so it replicates nothing), and names those peers. The
// agent's readiness answers from it.
func (e *Engine) KeyIsolated() (bool, []string) { return e.keyIsolated() }

// checkIsolation logs when this node becomes key-isolated and when it
// stops being so; the ready gauge reads keyIsolated at every scrape.
func (e *Engine) checkIsolation() {
	isolated, peers := e.keyIsolated()
	e.mu.Lock()
	changed := isolated != e.isolated
	e.isolated = isolated
	e.mu.Unlock()
	switch {
	case changed && isolated:
		e.log.Error("this node's encryption key differs from that of every peer that holds the cluster's state: "+
			"it replicates nothing and reports itself not ready (singularity_edge_replication_ready 0); "+
			"set the same EDGE_ENCRYPTION_KEY on every node",
			zap.Strings("peers", peers), zap.String("this_node_key", describeKey(e.keyFP)))
	case changed:
		e.log.Info("this node's encryption key matches a peer's again")
	}
}

// replicationReady is the ready gauge: this node holds the cluster's state
// and its key is not refused by every peer that holds it too.
func (e *Engine) replicationReady() bool {
	if !e.holdsState.Load() {
		return false
	}
	isolated, _ := e.keyIsolated()
	return !isolated
}
