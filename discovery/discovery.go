package discovery

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"go.uber.org/zap"

	"github.com/singularity-ng/singularity-edge/cluster"
)

// ErrDifferentCluster is returned (and the member refused) when a node
// advertises another cluster id.
var ErrDifferentCluster = errors.New("member of a different cluster")

// ErrLeft is returned by Join after this node left the cluster: memberlist
// cannot rejoin once it has left; the agent must be restarted.
var ErrLeft = errors.New("this node left the cluster; restart the agent to join again")

// ErrNotStarted is returned by Join before Start.
var ErrNotStarted = errors.New("gossip is not started yet")

// ErrNoAnswer is returned by Join when no node answered at any address.
var ErrNoAnswer = errors.New("no node answered")

// Discovery is this node's membership: memberlist plus the sources it is
// fed from.
type Discovery struct {
	cfg     Config
	addrs   resolved
	log     *zap.Logger
	metrics *metrics

	// ml is set by Start; the admin API may ask for Members before that.
	ml atomic.Pointer[memberlist.Memberlist]
	// left is set by Leave: memberlist is shut down and must not be used.
	left atomic.Bool

	mu      sync.Mutex
	meta    Meta
	members map[string]*memberRecord // by member name, self excluded
	changed chan struct{}            // closed and replaced on every change
	known   []knownPeer              // last saved
	// rounds counts finished resolution rounds; othersNamed says whether
	// the last one failed somewhere or named any node but this one.
	rounds      int
	othersNamed bool

	startedAt time.Time // set by Start
}

type memberRecord struct {
	name     string
	addr     netip.AddrPort
	meta     Meta
	state    cluster.State
	lastSeen time.Time
	heard    time.Time // when this node first heard of it
	rtt      time.Duration
	offsets  []time.Duration // recent clock-offset samples
	// suspect: alive to memberlist, but this node's last probe of it
	// got no ack (markSuspect); a probe answered, or news of it from
	// memberlist (joined again, updated, failed, left), ends it.
	suspect bool
}

// New validates cfg and prepares Discovery; Start binds the sockets.
func New(cfg Config) (*Discovery, error) {
	addrs, err := cfg.validate()
	if err != nil {
		return nil, fmt.Errorf("discovery: %w", err)
	}
	d := &Discovery{
		cfg:     cfg,
		addrs:   addrs,
		log:     cfg.Logger,
		meta:    cfg.Meta,
		members: map[string]*memberRecord{},
		changed: make(chan struct{}),
	}
	d.metrics = newMetrics(cfg.Registerer, d)
	return d, nil
}

// Start binds the gossip sockets; Run then resolves and joins. A node alone
// is fine: it is the first of its cluster.
func (d *Discovery) Start(ctx context.Context) error {
	keyring, err := d.cfg.Keys.Keyring()
	if err != nil {
		return err
	}
	d.mu.Lock()
	d.startedAt = d.cfg.Now()
	d.mu.Unlock()
	mc := memberlist.DefaultWANConfig()
	t := d.cfg.Timings
	mc.Name = d.cfg.Name
	mc.BindAddr = d.addrs.bind.Addr().String()
	mc.BindPort = int(d.addrs.bind.Port())
	mc.AdvertiseAddr = d.addrs.advertise.Addr().String()
	mc.AdvertisePort = int(d.addrs.advertise.Port())
	mc.Label = d.cfg.label()
	mc.Keyring = keyring
	mc.SecretKey = nil
	mc.GossipVerifyIncoming = true
	mc.GossipVerifyOutgoing = true
	mc.ProbeInterval, mc.ProbeTimeout = t.ProbeInterval, t.ProbeTimeout
	mc.SuspicionMult, mc.SuspicionMaxTimeoutMult = t.SuspicionMult, t.SuspicionMaxMult
	mc.GossipInterval, mc.GossipNodes = t.GossipInterval, t.GossipNodes
	mc.GossipToTheDeadTime = t.GossipToTheDeadTime
	mc.PushPullInterval = t.PushPullInterval
	mc.TCPTimeout = t.TCPTimeout
	mc.IndirectChecks = t.IndirectChecks
	mc.RetransmitMult = t.RetransmitMult
	mc.UDPBufferSize = t.UDPBufferSize
	mc.DeadNodeReclaimTime = t.DeadNodeReclaimTime
	mc.Delegate = (*delegate)(d)
	mc.Events = (*delegate)(d)
	mc.Alive = (*delegate)(d)
	mc.Merge = (*delegate)(d)
	mc.Ping = (*delegate)(d)
	mc.LogOutput = nil
	mc.Logger = log.New(&logBridge{log: d.log.Named("memberlist"), dropped: d.metrics.dropped, suspect: d.markSuspect}, "", 0)
	// Names are resolved by us, never by memberlist's DNS fallback.
	mc.DNSConfigPath = "/nonexistent"

	if d.cfg.WrapTransport != nil {
		nt, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{
			BindAddrs: []string{mc.BindAddr}, BindPort: mc.BindPort, Logger: mc.Logger})
		if err != nil {
			return fmt.Errorf("gossip on %s: %w", d.cfg.BindAddr, err)
		}
		mc.Transport = d.cfg.WrapTransport(nt)
	}
	ml, err := memberlist.Create(mc)
	if err != nil {
		return fmt.Errorf("gossip on %s: %w", d.cfg.BindAddr, err)
	}
	d.ml.Store(ml)
	if d.cfg.PeersFile != "" {
		if peers, err := loadPeers(d.cfg.PeersFile); err != nil {
			d.log.Warn("last known members unreadable; starting without them", zap.Error(err))
		} else {
			d.mu.Lock()
			d.known = peers
			d.mu.Unlock()
		}
	}
	d.log.Info("gossip started", zap.String("name", d.cfg.Name), zap.Stringer("bind", d.addrs.bind),
		zap.Stringer("advertise", d.addrs.advertise), zap.String("label", d.cfg.label()),
		zap.Int("keys", len(d.cfg.Keys.All())))
	return nil
}

// Run re-resolves the sources and joins whatever is not alive until ctx
// ends.
func (d *Discovery) Run(ctx context.Context) error {
	if d.cfg.Health != nil {
		done := make(chan struct{})
		hctx, cancel := context.WithCancel(ctx)
		go func() { defer close(done); d.gossipHealth(hctx) }()
		defer func() { cancel(); <-done }()
	}
	// The first round runs at once; it is not in Start, because joining
	// unreachable candidates can take a TCP timeout.
	d.resolveAndJoin(ctx)
	d.saveKnown()
	for {
		interval := d.cfg.ResolveInterval
		if d.aliveOthers() == 0 {
			interval = d.cfg.StartupResolveInterval
		}
		t := time.NewTimer(jitter(interval))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		d.resolveAndJoin(ctx)
		d.saveKnown()
		d.forgetGone()
	}
}

// forgetGone drops the record of every member dead or departed and not
// seen alive for PeersMaxAge. Each Machine a deploy or a scale-down
// replaced stayed in /api/cluster and `cluster status` as dead forever
// (a bluegreen deploy replaces every Machine), and in the loops that walk
// the members. PeersMaxAge (72 h) is longer than replication's eviction
// time (24 h), so tombstone purge has stopped waiting for such a member
// before it goes from here; a member that comes back is added again by
// memberlist. A node that does not hold the cluster's state (Meta.Ready)
// forgets nobody: an empty node that lost sight of its cluster must go on
// seeing that one exists, or it would start a cluster of its own.
func (d *Discovery) forgetGone() {
	if d.cfg.PeersMaxAge <= 0 {
		return
	}
	now := d.cfg.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.meta.Ready {
		return
	}
	forgot := false
	for name, r := range d.members {
		if r.state != cluster.StateDead && r.state != cluster.StateLeft {
			continue
		}
		seen := r.lastSeen
		if seen.IsZero() {
			seen = r.heard // never seen alive: aged from when it was first heard of
		}
		if now.Sub(seen) > d.cfg.PeersMaxAge {
			delete(d.members, name)
			forgot = true
			d.log.Info("forgot a member gone longer than the peers' maximum age", zap.String("name", name),
				zap.String("state", string(r.state)), zap.Time("last_seen", r.lastSeen), zap.String("node_id", r.meta.NodeID))
		}
	}
	if forgot {
		d.notifyLocked()
	}
}

// jitter spreads d by ±10 % so agents started together do not resolve in
// lockstep.
func jitter(d time.Duration) time.Duration {
	n := time.Now().UnixNano()
	return d - d/10 + time.Duration(n%int64(d/5+1))
}

// resolveAndJoin asks every source and joins the candidates that are not
// alive members.
func (d *Discovery) resolveAndJoin(ctx context.Context) {
	if d.left.Load() {
		return
	}
	var lists [][]Candidate
	found, failed := 0, false
	for _, s := range d.cfg.Sources {
		qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		cands, err := s.Candidates(qctx)
		cancel()
		if err != nil {
			d.metrics.resolveErrors.WithLabelValues(s.Name()).Inc()
			d.log.Warn("discovery source failed", zap.String("source", s.Name()), zap.Error(err))
			failed = true
			continue
		}
		found += len(cands)
		lists = append(lists, cands)
	}
	if found == 0 || failed {
		// A source failed (a DNS outage) or none found anything:
		// add the last members we saw, so a cluster survives its
		// resolver.
		d.mu.Lock()
		known := peersAsCandidates(d.known, d.cfg.Now(), d.cfg.PeersMaxAge)
		d.mu.Unlock()
		lists = append(lists, known)
	}
	port := d.addrs.advertise.Port()
	var targets []string
	alive := d.aliveAddrs()
	// A node back on a new address under its old name is refused by the
	// members that declared it dead less than DeadNodeReclaimTime ago,
	// and they look at it again only at its next push/pull (15-30 s
	// later, at random). So for a while after the start this node joins
	// the candidates it sees alive too, each join a push/pull, until a
	// round after the reclaim time has passed.
	d.mu.Lock()
	rejoin := d.cfg.Now().Sub(d.startedAt) < d.cfg.Timings.DeadNodeReclaimTime+2*d.cfg.ResolveInterval
	d.mu.Unlock()
	self := d.addrs.advertise.String()
	others := failed
	for _, c := range mergeCandidates(port, lists...) {
		addr := c.JoinAddr(port)
		if addr == self {
			continue
		}
		others = true
		if alive[addr] && !rejoin {
			continue
		}
		targets = append(targets, addr)
	}
	d.mu.Lock()
	if !others {
		// Remembered members count even when a source answered: a node
		// that was part of a cluster is not the first of a new one.
		for _, c := range peersAsCandidates(d.known, d.cfg.Now(), d.cfg.PeersMaxAge) {
			if c.JoinAddr(port) != self {
				others = true
			}
		}
	}
	first := d.rounds == 0
	d.rounds++
	d.othersNamed = others
	if first {
		// Wake whoever waits on Alone (an empty store deciding whether
		// to start the cluster's state).
		d.notifyLocked()
	}
	d.mu.Unlock()
	if len(targets) > 0 {
		d.join(ctx, targets)
	}
}

// Alone reports whether this node knows of no other node at all: the last
// resolution round finished with every source answering and naming no node
// but this one, no member is remembered from an earlier run, and no other
// node ever joined. It is false before the first round. An empty store that
// is alone is the first node of a new cluster and need not wait for peers
// that nothing says exist.
func (d *Discovery) Alone() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.rounds > 0 && !d.othersNamed && len(d.members) == 0
}

// join joins every target concurrently: memberlist's Join tries
// addresses one after another, and one unreachable address would hold up
// the rest for a whole TCP timeout.
func (d *Discovery) join(ctx context.Context, targets []string) int {
	sem := make(chan struct{}, d.cfg.JoinParallel)
	var wg sync.WaitGroup
	var mu sync.Mutex
	joined := 0
	for _, t := range targets {
		if ctx.Err() != nil {
			break
		}
		sem <- struct{}{}
		wg.Add(1)
		go func(addr string) {
			defer wg.Done()
			defer func() { <-sem }()
			n, err := d.ml.Load().Join([]string{addr})
			if err != nil || n == 0 {
				d.metrics.joins.WithLabelValues("failed").Inc()
				d.log.Debug("join failed", zap.String("addr", addr), zap.Error(err))
				return
			}
			d.metrics.joins.WithLabelValues("ok").Inc()
			mu.Lock()
			joined += n
			mu.Unlock()
		}(t)
	}
	wg.Wait()
	return joined
}

// Join joins the given host:port addresses (IP literals) now, for the
// `cluster join` command. It returns how many nodes answered.
func (d *Discovery) Join(ctx context.Context, addrs []string) (int, error) {
	if d.left.Load() {
		return 0, ErrLeft
	}
	if d.ml.Load() == nil {
		return 0, ErrNotStarted
	}
	var targets []string
	for _, a := range addrs {
		c, err := parseSeed(a)
		if err != nil {
			return 0, fmt.Errorf("%q: %w", a, err)
		}
		targets = append(targets, c.JoinAddr(d.addrs.advertise.Port()))
	}
	n := d.join(ctx, targets)
	if n == 0 {
		return 0, fmt.Errorf("%w at %s", ErrNoAnswer, strings.Join(targets, ", "))
	}
	d.log.Info("joined on request", zap.Strings("addresses", targets), zap.Int("contacted", n))
	return n, nil
}

// SetReady changes this node's advertised readiness and gossips it.
func (d *Discovery) SetReady(ready bool) error {
	return d.update(func(m *Meta) bool {
		changed := m.Ready != ready
		m.Ready = ready
		return changed
	})
}

// SetHealth changes this node's advertised readiness verdict (Meta.Health)
// and gossips it.
func (d *Discovery) SetHealth(status string) error {
	return d.update(func(m *Meta) bool {
		changed := m.Health != status
		m.Health = status
		return changed
	})
}

// update applies change to this node's metadata and gossips it when change
// reports a difference.
func (d *Discovery) update(change func(*Meta) bool) error {
	if d.left.Load() {
		return nil
	}
	d.mu.Lock()
	changed := change(&d.meta)
	d.mu.Unlock()
	ml := d.ml.Load()
	if !changed || ml == nil {
		return nil
	}
	return ml.UpdateNode(d.cfg.Timings.TCPTimeout)
}

// gossipHealth asks Config.Health every HealthInterval and gossips a
// change, so that the members show whether this node can do its job, not
// only whether it holds the cluster's state.
func (d *Discovery) gossipHealth(ctx context.Context) {
	t := time.NewTicker(d.cfg.HealthInterval)
	defer t.Stop()
	for {
		if err := d.SetHealth(d.cfg.Health()); err != nil {
			d.log.Warn("cannot gossip this node's health", zap.Error(err))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Leave tells the others this node is going, then stops gossip. It may be
// called again (the agent leaves on request, then again at shutdown); only
// the first call does anything.
func (d *Discovery) Leave(timeout time.Duration) error {
	ml := d.ml.Load()
	if ml == nil || d.left.Swap(true) {
		return nil
	}
	d.saveKnown()
	d.mu.Lock()
	d.meta.Leaving = true
	d.mu.Unlock()
	if err := ml.UpdateNode(timeout); err != nil {
		d.log.Warn("could not announce leaving", zap.Error(err))
	}
	err := ml.Leave(timeout)
	return errors.Join(err, ml.Shutdown())
}

// Self returns this node's metadata.
func (d *Discovery) Self() Meta {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.meta
}

// Changed returns a channel closed at the next membership change.
func (d *Discovery) Changed() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.changed
}

func (d *Discovery) notifyLocked() {
	close(d.changed)
	d.changed = make(chan struct{})
}

// Members returns every member this node knows, itself first.
func (d *Discovery) Members() []cluster.Member {
	now := d.cfg.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]cluster.Member, 0, 1+len(d.members))
	self := d.meta
	selfState := cluster.StateAlive
	if d.left.Load() {
		selfState = cluster.StateLeft
	}
	out = append(out, cluster.Member{
		ID: self.NodeID, Name: d.cfg.Name, Region: self.Region, MachineID: self.MachineID,
		Addresses: addresses(self, d.addrs.advertise.String()),
		State:     selfState, Version: self.AgentVersion, Ready: self.Ready && selfState == cluster.StateAlive, Self: true, LastSeen: &now,
		Health: health(self, selfState),
	})
	for _, r := range d.members {
		m := cluster.Member{
			ID: r.meta.NodeID, Name: r.name, Region: r.meta.Region, MachineID: r.meta.MachineID,
			Addresses: addresses(r.meta, r.addr.String()),
			State:     r.state, Version: r.meta.AgentVersion,
			// What a dead or departed member last gossiped is not a
			// readiness: it serves nothing now.
			Ready: r.meta.Ready && r.state == cluster.StateAlive,
			RTTMS: float64(r.rtt) / float64(time.Millisecond), ClockOffsetMS: float64(median(r.offsets)) / float64(time.Millisecond),
			CookieKeyDiffers: d.cookieKeyDiffersLocked(r.meta),
		}
		if m.State == cluster.StateAlive && r.suspect {
			m.State = cluster.StateSuspect
		}
		m.Health = health(r.meta, m.State)
		if !r.lastSeen.IsZero() {
			ls := r.lastSeen
			m.LastSeen = &ls
		}
		out = append(out, m)
	}
	sort.SliceStable(out[1:], func(i, j int) bool { return out[1+i].Name < out[1+j].Name })
	return out
}

// health is a member's Health: what it last gossiped while it is alive or
// suspect (it may still serve); nothing for a dead or departed one.
func health(m Meta, st cluster.State) string {
	if st != cluster.StateAlive && st != cluster.StateSuspect {
		return ""
	}
	return m.Health
}

func addresses(m Meta, gossip string) map[string]string {
	a := map[string]string{cluster.AddrGossip: gossip}
	if m.ReplicationAddr != "" {
		a[cluster.AddrReplication] = m.ReplicationAddr
	}
	if m.AdminAddr != "" {
		a[cluster.AddrAdmin] = m.AdminAddr
	}
	return a
}

func (d *Discovery) aliveOthers() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for _, r := range d.members {
		if r.state == cluster.StateAlive {
			n++
		}
	}
	return n
}

func (d *Discovery) aliveAddrs() map[string]bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := map[string]bool{}
	for _, r := range d.members {
		if r.state == cluster.StateAlive {
			out[r.addr.String()] = true
		}
	}
	return out
}

// saveKnown writes the alive members (and those remembered, not seen too
// long ago) to PeersFile.
func (d *Discovery) saveKnown() {
	if d.cfg.PeersFile == "" {
		return
	}
	now := d.cfg.Now()
	d.mu.Lock()
	byName := map[string]knownPeer{}
	for _, p := range d.known {
		if d.cfg.PeersMaxAge <= 0 || now.Sub(p.LastSeen) <= d.cfg.PeersMaxAge {
			byName[p.Name] = p
		}
	}
	for _, r := range d.members {
		if r.state != cluster.StateAlive {
			continue
		}
		byName[r.name] = knownPeer{Name: r.name, Addr: r.addr.String(), MachineID: r.meta.MachineID, Region: r.meta.Region, LastSeen: now}
	}
	peers := make([]knownPeer, 0, len(byName))
	for _, p := range byName {
		peers = append(peers, p)
	}
	d.known = peers
	d.mu.Unlock()
	if err := savePeers(d.cfg.PeersFile, append([]knownPeer(nil), peers...)); err != nil {
		d.log.Warn("cannot save last known members", zap.String("file", d.cfg.PeersFile), zap.Error(err))
	}
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

// delegate implements memberlist's delegate interfaces on Discovery.
type delegate Discovery

func (g *delegate) d() *Discovery { return (*Discovery)(g) }

// NodeMeta returns this node's encoded metadata.
func (g *delegate) NodeMeta(limit int) []byte {
	d := g.d()
	d.mu.Lock()
	b, err := d.meta.Encode()
	d.mu.Unlock()
	if err != nil || len(b) > limit {
		d.log.Error("node metadata does not fit", zap.Error(err), zap.Int("limit", limit))
		return nil
	}
	return b
}

// NotifyMsg, GetBroadcasts, LocalState and MergeRemoteState are unused:
// gossip carries membership only.
func (g *delegate) NotifyMsg([]byte)                           {}
func (g *delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (g *delegate) LocalState(join bool) []byte                { return nil }
func (g *delegate) MergeRemoteState(buf []byte, join bool)     {}

// NotifyAlive refuses a node of another cluster or with unreadable
// metadata before memberlist adds it.
func (g *delegate) NotifyAlive(n *memberlist.Node) error {
	return g.d().check(n)
}

// NotifyMerge refuses a push/pull merge that would bring in a node of
// another cluster.
func (g *delegate) NotifyMerge(peers []*memberlist.Node) error {
	for _, n := range peers {
		if err := g.d().check(n); err != nil {
			return err
		}
	}
	return nil
}

func (d *Discovery) check(n *memberlist.Node) error {
	if n.Name == d.cfg.Name {
		return nil
	}
	m, err := DecodeMeta(n.Meta)
	if err != nil {
		d.metrics.rejected.WithLabelValues("meta").Inc()
		return fmt.Errorf("node %s: %w", n.Name, err)
	}
	if m.ClusterID != d.cfg.Meta.ClusterID {
		d.metrics.rejected.WithLabelValues("cluster_id").Inc()
		return fmt.Errorf("node %s (cluster %q, ours %q): %w", n.Name, m.ClusterID, d.cfg.Meta.ClusterID, ErrDifferentCluster)
	}
	return nil
}

func (g *delegate) NotifyJoin(n *memberlist.Node)   { g.d().upsert(n, cluster.StateAlive) }
func (g *delegate) NotifyUpdate(n *memberlist.Node) { g.d().upsert(n, cluster.StateAlive) }
func (g *delegate) NotifyLeave(n *memberlist.Node) {
	// memberlist's Node.State is not updated on this path (nodeState
	// shadows it), so a graceful leave is told by the Leaving flag the
	// node gossiped just before it left.
	state := cluster.StateDead
	if m, err := DecodeMeta(n.Meta); err == nil && m.Leaving {
		state = cluster.StateLeft
	}
	g.d().upsert(n, state)
}

func (d *Discovery) upsert(n *memberlist.Node, state cluster.State) {
	if n.Name == d.cfg.Name {
		return
	}
	meta, _ := DecodeMeta(n.Meta) // checked in NotifyAlive
	addr, _ := netip.AddrFromSlice(n.Addr)
	d.mu.Lock()
	defer d.mu.Unlock()
	r := d.members[n.Name]
	if r == nil {
		r = &memberRecord{name: n.Name, heard: d.cfg.Now()}
		d.members[n.Name] = r
	}
	old := r.state
	wasDiffering := d.cookieKeyDiffersLocked(r.meta)
	r.addr = netip.AddrPortFrom(addr.Unmap(), n.Port)
	r.meta = meta
	if differs := d.cookieKeyDiffersLocked(meta); differs && !wasDiffering {
		d.log.Error("sticky-session cookie key differs from a member's: neither honours the other's cookies, so a client "+
			"whose requests reach both loses its backend; set the same EDGE_COOKIE_KEY (or, without one, the same "+
			"EDGE_ENCRYPTION_KEY) on every node", zap.String("member", n.Name), zap.String("node_id", meta.NodeID),
			zap.String("region", meta.Region))
	} else if !differs && wasDiffering {
		d.log.Info("sticky-session cookie key of a member matches this node's again", zap.String("member", n.Name))
	}
	r.state = state
	r.suspect = false
	if state == cluster.StateAlive {
		r.lastSeen = d.cfg.Now()
	}
	if old != state {
		d.log.Info("member "+string(state), zap.String("name", n.Name), zap.Stringer("addr", r.addr),
			zap.String("region", meta.Region), zap.String("node_id", meta.NodeID))
	}
	d.notifyLocked()
}

// cookieKeyDiffersLocked reports whether m's sticky-cookie key is known to
// differ from this node's: both fingerprints are known and unequal (an
// agent older than the fingerprint sends none).
func (d *Discovery) cookieKeyDiffersLocked(m Meta) bool {
	return m.CookieKeyFP != "" && d.meta.CookieKeyFP != "" && m.CookieKeyFP != d.meta.CookieKeyFP
}

// markSuspect records that this node's probe of name got no ack, direct or
// indirect: memberlist now suspects it and declares it dead unless it
// answers or refutes within the suspicion timeout. Until then it shows as
// suspect (in /api/cluster, and to WaitApplied and Flush, which do not
// wait for it) instead of alive.
func (d *Discovery) markSuspect(name string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	r := d.members[name]
	if r == nil || r.state != cluster.StateAlive || r.suspect {
		return
	}
	r.suspect = true
	d.log.Info("member suspect", zap.String("name", name), zap.Stringer("addr", r.addr),
		zap.String("region", r.meta.Region), zap.String("node_id", r.meta.NodeID))
	d.notifyLocked()
}

// AckPayload carries our wall clock on every probe ack, so the prober can
// estimate the clock offset between us.
func (g *delegate) AckPayload() []byte {
	return binary.BigEndian.AppendUint64(nil, uint64(g.d().cfg.Now().UnixNano()))
}

// NotifyPingComplete records the round trip and the clock offset:
// remote - (now - rtt/2).
func (g *delegate) NotifyPingComplete(n *memberlist.Node, rtt time.Duration, payload []byte) {
	d := g.d()
	now := d.cfg.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	r := d.members[n.Name]
	if r == nil {
		return
	}
	r.lastSeen = now
	r.rtt = rtt
	if r.suspect {
		r.suspect = false
		d.log.Info("member answers probes again", zap.String("name", r.name), zap.Stringer("addr", r.addr))
		d.notifyLocked()
	}
	if len(payload) == 8 {
		remote := time.Unix(0, int64(binary.BigEndian.Uint64(payload)))
		off := remote.Sub(now.Add(-rtt / 2))
		r.offsets = append(r.offsets, off)
		if len(r.offsets) > 9 {
			r.offsets = r.offsets[len(r.offsets)-9:]
		}
	}
}
