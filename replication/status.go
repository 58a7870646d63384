package replication

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sort"
	"time"

	"go.uber.org/zap"

	"github.com/singularity-ng/singularity-edge/cluster"
)

// Members returns the membership with this node's replication view of
// every other member; it serves /api/cluster.
func (e *Engine) Members() []cluster.Member {
	ms := e.members.Members()
	now := e.cfg.Now()
	for i := range ms {
		if ms[i].Self || ms[i].ID == e.nodeID {
			continue
		}
		st, ok := e.status(ms[i].ID, now)
		if ok {
			ms[i].Replication = &st
		}
	}
	return ms
}

// Status returns the replication status of every peer by node id.
func (e *Engine) Status() map[string]cluster.ReplicationStatus {
	now := e.cfg.Now()
	e.mu.Lock()
	ids := make([]string, 0, len(e.peers))
	for id := range e.peers {
		ids = append(ids, id)
	}
	e.mu.Unlock()
	out := make(map[string]cluster.ReplicationStatus, len(ids))
	for _, id := range ids {
		if st, ok := e.status(id, now); ok {
			out[id] = st
		}
	}
	return out
}

func (e *Engine) status(id string, now time.Time) (cluster.ReplicationStatus, bool) {
	e.mu.Lock()
	p := e.peers[id]
	ownMax := e.ownMax
	if p == nil {
		e.mu.Unlock()
		return cluster.ReplicationStatus{}, false
	}
	p.mu.Lock()
	missing := NewRangeSet(Range{1, ownMax}).Minus(p.theirOwn)
	var oldest time.Time
	if len(missing) > 0 {
		// The oldest commit time we still know among the missing seqs.
		for _, r := range missing {
			for s := r.Lo; s <= r.Hi && s-r.Lo < 1000; s++ {
				if t, ok := e.ownTimes[s]; ok {
					oldest = t
					break
				}
			}
			if !oldest.IsZero() {
				break
			}
		}
	}
	st := cluster.ReplicationStatus{
		Connected:      p.session.Load(),
		PendingChanges: missing.Count(),
		BytesIn:        p.bytesIn.Load(),
		BytesOut:       p.bytesOut.Load(),
		LastError:      p.lastErr,
		// From its last Hello, whichever side opened the stream.
		EncryptionKeyDiffers: p.keyDiffers != "",
	}
	if !oldest.IsZero() && now.After(oldest) {
		st.LagSeconds = now.Sub(oldest).Seconds()
	}
	if !p.lastApplied.IsZero() {
		t := p.lastApplied
		st.LastAppliedAt = &t
	}
	if !p.lastContact.IsZero() {
		t := p.lastContact
		st.LastContact = &t
	}
	p.mu.Unlock()
	e.mu.Unlock()
	return st, true
}

// ErrWaitTimeout is returned by WaitApplied when some member did not apply
// the write in time; the result still names who did.
var ErrWaitTimeout = errors.New("not every alive member applied the write in time")

// WaitResult says who holds a local write.
type WaitResult struct {
	Seq     uint64
	Applied []string // member names
	Missing []MissingMember
}

// MissingMember is a member that does not (yet) hold the write.
type MissingMember struct {
	Name   string `json:"name"`
	NodeID string `json:"node_id"`
	State  string `json:"state"`
	// Reason: "pending" (waited for, did not apply in time), "not
	// connected" (alive, no stream: waited for a grace, see WaitApplied;
	// Flush waits for it), "encryption key
	// differs" (alive, streams refused: not waited for), or the member's
	// state at the call ("suspect", "dead", "left": reported, not waited
	// for).
	Reason string `json:"reason"`
}

// WaitApplied waits until every alive member with an up stream holds this
// node's change set seq, or ctx ends (then ErrWaitTimeout with the
// partial result). The members waited for are those alive with a stream
// when it is called, and stay so whatever their state becomes: one that
// turns suspect during the wait is the partition the wait exists to catch
// (it may still serve clients, and a CA, without the write). An alive
// member without a stream joins them if its stream comes up within
// connectGrace, counted from the call: a stream refused while the member
// bootstrapped (a node that just joined) is redialled only after
// DialBackoffMax, and a write made in that gap would otherwise report it
// "not connected" although it holds the write a few seconds later. Past
// the grace it is reported "not connected". Members suspect, dead or
// departed at the call, and those refused for their encryption key, are
// reported, never waited for.
func (e *Engine) WaitApplied(ctx context.Context, seq uint64) (WaitResult, error) {
	grace := time.NewTimer(e.connectGrace())
	defer grace.Stop()
	graceOver := false
	var targets []memberPeer
	isTarget := map[string]bool{}
	awaited := map[string]bool{} // alive without a stream at the call
	for first := true; ; first = false {
		e.mu.Lock()
		progress := e.progress
		e.mu.Unlock()
		changed := e.members.Changed()
		var now WaitResult
		up, _ := e.connectedPeers(&now)
		for _, t := range up {
			if !isTarget[t.m.ID] && (first || awaited[t.m.ID] && !graceOver) {
				isTarget[t.m.ID] = true
				targets = append(targets, t)
			}
		}
		res := WaitResult{Seq: seq}
		unconnected := 0
		for _, m := range now.Missing {
			if isTarget[m.NodeID] {
				continue // reported below, by whether it holds seq
			}
			if m.Reason == reasonNotConnected {
				if first {
					awaited[m.NodeID] = true
				}
				if awaited[m.NodeID] {
					unconnected++
				}
			}
			res.Missing = append(res.Missing, m)
		}
		var pending []memberPeer
		for _, t := range targets {
			if t.p.holds(seq) {
				res.Applied = append(res.Applied, t.m.Name)
			} else {
				pending = append(pending, t)
			}
		}
		sort.Strings(res.Applied)
		if len(pending) == 0 && (unconnected == 0 || graceOver) {
			return res, nil
		}
		select {
		case <-progress:
		case <-changed:
		case <-grace.C:
			graceOver = true
		case <-ctx.Done():
			for _, t := range pending {
				res.Missing = append(res.Missing, missingMember(t.m, "pending"))
			}
			return res, fmt.Errorf("%w: %d of %d applied seq %d", ErrWaitTimeout, len(res.Applied), len(targets)+unconnected, seq)
		}
	}
}

// connectGrace is how long WaitApplied waits for an alive member without
// a stream to get one: a refused dial is retried after DialBackoffMax,
// and the retry's handshake takes at most HandshakeTimeout.
func (e *Engine) connectGrace() time.Duration {
	return e.cfg.DialBackoffMax + e.cfg.HandshakeTimeout
}

// purgeLoop feeds the store the watermarks of every active member.
func (e *Engine) purgeLoop(ctx context.Context) {
	t := time.NewTicker(e.cfg.PurgeInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		wm, ok := e.purgeWatermarks()
		// Saved before the purge it allows: a restart then still knows
		// every member this purge waited for.
		if err := e.saveHeld(ctx); err != nil {
			e.log.Warn("tombstone purge skipped: cannot save the members it waits for", zap.Error(err))
			continue
		}
		if !ok {
			continue
		}
		res, err := e.store.Purge(ctx, wm)
		if err != nil {
			e.log.Warn("tombstone purge failed", zap.Error(err))
			continue
		}
		e.metrics.purged.Add(float64(res.Purged))
	}
}

// purgeWatermarks returns member → origin → contiguous watermark for every
// member heard from within EvictAfter, or false when one of them never
// reported its watermarks: it holds every origin at zero, so no tombstone
// can go. Alive and suspect members are heard now (the failure detector
// hears them); the others age from when anything was last heard of them,
// here or, for a member this node no longer sees (dead before a restart),
// in the record saved before (saveHeld). A member whose name another node
// id now holds (a rebuild, a restored backup) is gone at once: that node
// reports under its new id.
func (e *Engine) purgeWatermarks() (map[string]map[string]uint64, bool) {
	now := e.cfg.Now()
	e.holdMu.Lock()
	defer e.holdMu.Unlock()
	current := map[string]bool{}
	names := map[string]string{} // member name -> its current node id
	for _, m := range e.members.Members() {
		if m.Self || m.ID == "" || m.ID == e.nodeID {
			continue
		}
		current[m.ID] = true
		names[m.Name] = m.ID
		h, ok := e.held[m.ID]
		if !ok {
			// First sight: a member never heard from ages from now.
			h.HeardAt = now
		}
		h.Name = m.Name
		h.Live = m.State == cluster.StateAlive || m.State == cluster.StateSuspect
		if h.Live {
			h.HeardAt = now
		} else if m.LastSeen != nil && m.LastSeen.After(h.HeardAt) {
			h.HeardAt = *m.LastSeen
		}
		e.held[m.ID] = h
	}
	out := map[string]map[string]uint64{}
	ok := true
	for id, h := range e.held {
		if !current[id] {
			h.Live = false
		}
		e.mu.Lock()
		p := e.peers[id]
		e.mu.Unlock()
		if p != nil {
			p.mu.Lock()
			books := p.books
			p.mu.Unlock()
			if books != nil {
				h.Watermarks = make(map[string]uint64, len(books))
				for o, b := range books {
					h.Watermarks[o] = b.Watermark
				}
			}
			if t := p.lastHeard(); t.After(h.HeardAt) {
				h.HeardAt = t
			}
		}
		if now.Sub(h.HeardAt) > e.cfg.EvictAfter {
			delete(e.held, id) // evicted: it must rebuild if it returns
			continue
		}
		if n, named := names[h.Name]; named && n != id && h.Name != "" {
			delete(e.held, id)
			continue
		}
		e.held[id] = h
		if h.Watermarks == nil {
			ok = false
			continue
		}
		out[id] = maps.Clone(h.Watermarks)
	}
	if !ok {
		return nil, false
	}
	return out, true
}

// loadHeld adds the members saved by a previous run that this run does
// not know yet. One alive or suspect when saved may have been heard until
// the agent stopped, which is not recorded: it counts as heard now.
func (e *Engine) loadHeld(ctx context.Context) error {
	saved, err := e.store.PurgeMembers(ctx)
	if err != nil {
		return err
	}
	now := e.cfg.Now()
	e.holdMu.Lock()
	defer e.holdMu.Unlock()
	for id, h := range saved {
		if _, known := e.held[id]; known || id == e.nodeID {
			continue
		}
		if h.Live {
			h.HeardAt, h.Live = now, false
		}
		e.held[id] = h
	}
	return nil
}

// saveHeld saves what purge knows of the members it waits for.
func (e *Engine) saveHeld(ctx context.Context) error {
	e.holdMu.Lock()
	held := make(map[string]PurgeMember, len(e.held))
	for id, h := range e.held {
		h.Watermarks = maps.Clone(h.Watermarks)
		held[id] = h
	}
	e.holdMu.Unlock()
	return e.store.SavePurgeMembers(ctx, held)
}

// Flush waits until every alive member holds every change set this node
// has committed, for a graceful leave: a node that stops taking writes and
// then flushes leaves nothing behind that only it holds. Alive members
// without a stream are waited for (they may reconnect); suspect, dead and
// departed members, and those refused for their encryption key, are
// reported, never waited for. On ctx's end it
// returns ErrWaitTimeout with who holds everything and who does not.
func (e *Engine) Flush(ctx context.Context) (WaitResult, error) {
	// The target is what the store holds of this node, not what the
	// engine has read from the feed so far: a commit acknowledged just
	// before the flush may not have reached the push loop yet.
	books, err := e.store.Books(ctx)
	if err != nil {
		return WaitResult{}, fmt.Errorf("replication: flush: %w", err)
	}
	target := books[e.nodeID].Max
	for {
		e.mu.Lock()
		progress := e.progress
		e.mu.Unlock()
		changed := e.members.Changed()
		res, waiting := e.flushState(target)
		if len(waiting) == 0 {
			return res, nil
		}
		for _, p := range waiting {
			if p != nil {
				// Acknowledgements also arrive with a sync round's
				// books; ask for one now, not at the next period.
				p.triggerSync()
			}
		}
		t := time.NewTimer(250 * time.Millisecond)
		select {
		case <-progress:
		case <-changed:
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return res, fmt.Errorf("%w: %d member(s) do not hold every write of this node", ErrWaitTimeout, len(waiting))
		}
		t.Stop()
	}
}

// flushState says which members hold every own change set (Applied) and
// which do not (Missing) of this node's seqs 1..ownMax; waiting are the peers Flush waits for (nil for
// an alive member this node never had a stream with).
func (e *Engine) flushState(ownMax uint64) (WaitResult, []*peer) {
	res := WaitResult{Seq: ownMax}
	up, waiting := e.connectedPeers(&res)
	all := NewRangeSet(Range{1, ownMax}) // empty before the first own commit
	for _, t := range up {
		t.p.mu.Lock()
		missing := all.Minus(t.p.theirOwn)
		t.p.mu.Unlock()
		if len(missing) > 0 {
			res.Missing = append(res.Missing, missingMember(t.m, "pending"))
			waiting = append(waiting, t.p)
			continue
		}
		res.Applied = append(res.Applied, t.m.Name)
	}
	sort.Strings(res.Applied)
	return res, waiting
}

// memberPeer is an alive member and its up stream.
type memberPeer struct {
	m cluster.Member
	p *peer
}

// connectedPeers returns the alive members other than this node that have
// an up stream, and reports every other member in res.Missing: a suspect,
// dead or departed one with its state as the reason, an alive one refused
// for its key as "encryption key differs", an alive one without a stream
// as "not connected" (unconnected lists their peers, nil for a member this
// node never had a stream with).
func (e *Engine) connectedPeers(res *WaitResult) (up []memberPeer, unconnected []*peer) {
	for _, m := range e.members.Members() {
		if m.Self || m.ID == e.nodeID {
			continue
		}
		if m.State != cluster.StateAlive {
			res.Missing = append(res.Missing, missingMember(m, string(m.State)))
			continue
		}
		e.mu.Lock()
		p := e.peers[m.ID]
		e.mu.Unlock()
		if p != nil && p.key().differs != "" {
			// Refused until an operator fixes a key: not waited for.
			res.Missing = append(res.Missing, missingMember(m, "encryption key differs"))
			continue
		}
		if p == nil || !p.session.Load() {
			res.Missing = append(res.Missing, missingMember(m, reasonNotConnected))
			unconnected = append(unconnected, p)
			continue
		}
		up = append(up, memberPeer{m, p})
	}
	return up, unconnected
}

// reasonNotConnected is the Reason of an alive member without a stream.
const reasonNotConnected = "not connected"

func missingMember(m cluster.Member, reason string) MissingMember {
	return MissingMember{Name: m.Name, NodeID: m.ID, State: string(m.State), Reason: reason}
}
