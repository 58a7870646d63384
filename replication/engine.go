package replication

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/singularity-ng/singularity-edge/cluster"
)

// Engine replicates the local store to and from every alive member.
type Engine struct {
	cfg     Config
	store   Store
	members Membership
	creds   *credentials
	log     *zap.Logger
	metrics *metrics

	nodeID string
	keyFP  []byte // the store's encryption-key fingerprint, sent in Hello
	// clusterID is empty while the store awaits a bootstrap: a new node
	// learns the cluster id from the snapshot it ingests.
	clusterID string // guarded by mu

	ln        net.Listener
	ready     chan struct{}
	readyOnce sync.Once
	// holdsState is true from markReady until a rebuild discards the
	// state; the ready gauge also needs the key to match (keyIsolated).
	holdsState atomic.Bool
	isolated   bool // guarded by mu: last logged keyIsolated

	mu       sync.Mutex
	peers    map[string]*peer // by node id
	progress chan struct{}    // closed and replaced when a peer acknowledges
	ownMax   uint64           // highest own seq committed
	ownTimes map[uint64]time.Time
	// ownTimesKeep own commit times are kept for the lag figures of
	// peers missing them; ownTimesPrunes counts passes over the map.
	ownTimesKeep   int
	ownTimesPrunes int

	// held is what tombstone purge knows of every member it waits for,
	// by node id (purgeWatermarks), saved in the store so that a restart
	// does not forget the members that were already dead.
	holdMu sync.Mutex
	held   map[string]PurgeMember

	wg     sync.WaitGroup
	cancel context.CancelFunc
	fatal  chan error // ends Run (a rebuild)
}

// ownTimesKeep is how many of its latest commit times the engine keeps for
// the lag of peers that miss them.
const ownTimesKeep = 100_000

// fail ends Run with err.
func (e *Engine) fail(err error) {
	select {
	case e.fatal <- err:
	default:
	}
}

// New builds an engine; Start listens, Run replicates.
func New(cfg Config, store Store, members Membership) (*Engine, error) {
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("replication: %w", err)
	}
	creds, err := newCredentials(cfg.Secrets)
	if err != nil {
		return nil, fmt.Errorf("replication: %w", err)
	}
	e := &Engine{
		cfg: cfg, store: store, members: members, creds: creds, log: cfg.Logger,
		nodeID: store.NodeID(), keyFP: store.KeyFingerprint(), clusterID: store.ClusterID(),
		ready: make(chan struct{}), peers: map[string]*peer{}, progress: make(chan struct{}),
		ownTimes: map[uint64]time.Time{}, ownTimesKeep: ownTimesKeep, fatal: make(chan error, 1),
		held: map[string]PurgeMember{},
	}
	e.metrics = newMetrics(cfg.Registerer, e)
	if len(e.keyFP) == 0 {
		e.log.Warn("EDGE_ENCRYPTION_KEY is not set: this node can store no certificate private keys and refuses peers " +
			"that have a key; set the same EDGE_ENCRYPTION_KEY on every node")
	}
	return e, nil
}

// Start binds the replication listener and serves peers (a bootstrapping
// node answers NotReady until it holds the cluster's state).
func (e *Engine) Start(ctx context.Context) error {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", e.cfg.Addr)
	if err != nil {
		return fmt.Errorf("replication listener %s: %w", e.cfg.Addr, err)
	}
	e.ln = ln
	return nil
}

// Addr is the bound listener address.
func (e *Engine) Addr() net.Addr {
	if e.ln == nil {
		return nil
	}
	return e.ln.Addr()
}

// Ready is closed once this node holds the cluster's state.
func (e *Engine) Ready() <-chan struct{} { return e.ready }

// Run bootstraps if needed, then pushes local commits, keeps a stream to
// every alive member, and purges tombstones, until ctx ends.
func (e *Engine) Run(ctx context.Context) error {
	if e.ln == nil {
		return errors.New("replication: Run before Start")
	}
	ctx, cancel := context.WithCancel(ctx)
	e.mu.Lock()
	e.cancel = cancel
	e.mu.Unlock()
	defer cancel()
	e.wg.Add(1)
	go func() { defer e.wg.Done(); e.accept(ctx) }()
	defer func() {
		cancel() // before waiting: the loops end on it
		_ = e.ln.Close()
		e.wg.Wait()
	}()

	books, err := e.store.Books(ctx)
	if err != nil {
		return fmt.Errorf("replication: reading bookkeeping: %w", err)
	}
	e.mu.Lock()
	e.ownMax = books[e.nodeID].Max
	e.mu.Unlock()
	if err := e.loadHeld(ctx); err != nil {
		return fmt.Errorf("replication: reading the members purge waits for: %w", err)
	}

	if err := e.bootstrap(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	// Streams to peers start after the bootstrap: a catch-up round from
	// an empty store would ask for everything from seq 1 and find itself
	// behind every purge.
	e.wg.Add(1)
	go func() { defer e.wg.Done(); e.watchMembers(ctx) }()
	feed, err := e.store.LocalCommits(ctx, books[e.nodeID].Max)
	if err != nil {
		return fmt.Errorf("replication: subscribing to local commits: %w", err)
	}
	e.wg.Add(1)
	go func() { defer e.wg.Done(); e.purgeLoop(ctx) }()
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-e.fatal:
			return err
		case <-feed.Done():
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("replication: local commit feed ended: %w", feed.Err())
		case set := <-feed.C():
			e.local(set)
		}
	}
}

// local queues a local commit for every connected peer.
func (e *Engine) local(set EncodedSet) {
	e.mu.Lock()
	if set.Seq > e.ownMax {
		e.ownMax = set.Seq
	}
	e.ownTimes[set.Seq] = hlcTime(set.HLC)
	// Keep the commit times of what some peer may still be missing;
	// anything older than the slowest acknowledgement, or than the last
	// ownTimesKeep commits, is dropped. The pass starts at twice that
	// many, so it runs once per ownTimesKeep commits at most: started at
	// ownTimesKeep, a peer that stays behind (down, or gone until
	// forgetPeers drops it) kept the map at the threshold, and every
	// commit walked all of it under e.mu.
	if len(e.ownTimes) > 2*e.ownTimesKeep {
		floor := e.ownMax
		for _, p := range e.peers {
			if w := BookOf(p.theirOwnLocked()).Watermark; w < floor {
				floor = w
			}
		}
		for s := range e.ownTimes {
			if s <= floor || s+uint64(e.ownTimesKeep) < e.ownMax {
				delete(e.ownTimes, s)
			}
		}
		e.ownTimesPrunes++
	}
	peers := make([]*peer, 0, len(e.peers))
	for _, p := range e.peers {
		if p.session.Load() {
			peers = append(peers, p)
		}
	}
	e.mu.Unlock()
	for _, p := range peers {
		p.enqueue(set, e.cfg.PeerQueueBytes, e.metrics)
	}
}

func (e *Engine) setClusterID(id string) {
	e.mu.Lock()
	e.clusterID = id
	e.mu.Unlock()
}

// hlcTime is the wall time of a 48/16-bit HLC.
func hlcTime(h uint64) time.Time { return time.UnixMilli(int64(h >> 16)) }

// peerFor returns the peer record of a node, creating it.
func (e *Engine) peerFor(id, name string) *peer {
	e.mu.Lock()
	defer e.mu.Unlock()
	p := e.peers[id]
	if p == nil {
		p = newPeer(id, name)
		p.created = e.cfg.Now()
		e.peers[id] = p
	}
	return p
}

// forgetPeers drops the record of every peer that is not an alive or
// suspect member (current) and from which nothing was heard for
// EvictAfter. Node ids change (a restored backup, a copied volume, a
// rebuild), and nothing else ever removed the old id's record: its
// pending sets and lag grew in /metrics forever, and its watermark held
// back the pruning of the commit times kept for the lag. Purge is not
// changed by it: it keeps its own record of the members it waits for
// (purgeWatermarks), which leaves out a member silent for EvictAfter too.
func (e *Engine) forgetPeers(current map[string]cluster.Member) {
	now := e.cfg.Now()
	e.mu.Lock()
	var gone []*peer
	for id, p := range e.peers {
		if _, ok := current[id]; ok {
			continue
		}
		if now.Sub(p.lastHeard()) > e.cfg.EvictAfter {
			delete(e.peers, id)
			gone = append(gone, p)
		}
	}
	e.mu.Unlock()
	for _, p := range gone {
		e.log.Info("forgot a replication peer not heard from for the eviction time",
			zap.String("peer", p.name), zap.String("peer_node_id", p.id), zap.Duration("evict_after", e.cfg.EvictAfter))
	}
}

// watchMembers keeps one outbound stream per alive member.
func (e *Engine) watchMembers(ctx context.Context) {
	type running struct {
		addr   string
		cancel context.CancelFunc
		done   chan struct{}
	}
	loops := map[string]*running{}
	defer func() {
		for _, r := range loops {
			r.cancel()
			<-r.done
		}
	}()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		changed := e.members.Changed()
		want := map[string]cluster.Member{}
		for _, m := range e.members.Members() {
			addr := m.Addresses[cluster.AddrReplication]
			if m.Self || m.ID == "" || m.ID == e.nodeID || addr == "" {
				continue
			}
			if m.State == cluster.StateAlive || m.State == cluster.StateSuspect {
				want[m.ID] = m
			}
		}
		e.forgetPeers(want)
		for id, r := range loops {
			if m, ok := want[id]; !ok || m.Addresses[cluster.AddrReplication] != r.addr {
				r.cancel()
				<-r.done
				delete(loops, id)
			}
		}
		for id, m := range want {
			if _, ok := loops[id]; ok {
				continue
			}
			p := e.peerFor(id, m.Name)
			lctx, cancel := context.WithCancel(ctx)
			r := &running{addr: m.Addresses[cluster.AddrReplication], cancel: cancel, done: make(chan struct{})}
			loops[id] = r
			go func() { defer close(r.done); e.runPeer(lctx, p, r.addr) }()
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-tick.C:
		}
	}
}

// dial opens an authenticated stream to addr.
func (e *Engine) dial(ctx context.Context, addr string, p *peer) (*conn, error) {
	dial := e.cfg.Dial
	if dial == nil {
		d := net.Dialer{Timeout: e.cfg.HandshakeTimeout, KeepAlive: 15 * time.Second}
		dial = d.DialContext
	}
	raw, err := dial(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	tc := tls.Client(raw, e.creds.client)
	var in, out *atomic.Uint64
	if p != nil {
		in, out = &p.bytesIn, &p.bytesOut
	}
	c := newConn(tc, e.cfg.MaxFrameSize, e.cfg.WriteTimeout, in, out)
	if err := e.handshake(ctx, tc, c); err != nil {
		_ = raw.Close()
		return nil, err
	}
	if p != nil && c.peer.NodeID != p.id {
		_ = c.close()
		return nil, fmt.Errorf("%s answered as node %s, expected %s", addr, c.peer.NodeID, p.id)
	}
	return c, nil
}

func (e *Engine) hello() hello {
	ready := false
	select {
	case <-e.ready:
		ready = true
	default:
	}
	e.mu.Lock()
	clusterID := e.clusterID
	e.mu.Unlock()
	return hello{Proto: protoVersion, ClusterID: clusterID, NodeID: e.nodeID, Name: e.cfg.Name, Ready: ready, KeyFingerprint: e.keyFP}
}

// runPeer keeps a stream to one peer up, reconnecting with backoff.
func (e *Engine) runPeer(ctx context.Context, p *peer, addr string) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		c, err := e.dial(ctx, addr, p)
		if err != nil {
			p.setErr(err)
			e.log.Debug("replication dial failed", zap.String("peer", p.name), zap.String("addr", addr), zap.Error(err))
			var rej *RejectError
			wait := backoff
			if errors.As(err, &rej) {
				wait = e.cfg.DialBackoffMax
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
			backoff = min(backoff*2, e.cfg.DialBackoffMax)
			continue
		}
		backoff = 100 * time.Millisecond
		err = e.session(ctx, p, c)
		if ctx.Err() == nil {
			p.setErr(err)
			e.log.Info("replication stream ended", zap.String("peer", p.name), zap.Error(err))
		}
	}
}

// session runs one outbound stream: a reader, a pusher and a syncer.
func (e *Engine) session(ctx context.Context, p *peer, c *conn) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	p.startSession()
	defer p.endSession()
	e.log.Debug("replication stream up", zap.String("peer", p.name))
	go func() { <-ctx.Done(); _ = c.close() }()

	syncResp := make(chan frame, 16)
	window := newPushWindow()
	var wg sync.WaitGroup
	wg.Add(3)
	go func() {
		defer wg.Done()
		for {
			// The server answers every sync round, so silence for
			// IdleTimeout is a dead path (see Config.IdleTimeout).
			f, err := c.recv(e.cfg.IdleTimeout)
			if err != nil {
				cancel(fmt.Errorf("read: %w", err))
				return
			}
			p.touch(e.cfg.Now())
			switch f.typ {
			case msgAck:
				covered, err := decodeAck(f.payload)
				if err != nil {
					cancel(err)
					return
				}
				window.ack()
				e.acked(p, covered[e.nodeID])
			case msgSyncState, msgSyncRows, msgSyncDone, msgReject:
				select {
				case syncResp <- f:
				case <-ctx.Done():
					return
				}
			default:
				cancel(fmt.Errorf("%w: unexpected %s from server", ErrBadFrame, f.typ))
				return
			}
		}
	}()
	go func() {
		defer wg.Done()
		if err := e.pushLoop(ctx, p, c, window); err != nil {
			cancel(fmt.Errorf("push: %w", err))
		}
	}()
	go func() {
		defer wg.Done()
		next := func() (frame, error) {
			select {
			case f := <-syncResp:
				return f, nil
			case <-ctx.Done():
				return frame{}, context.Cause(ctx)
			}
		}
		// The first round on a stream, and a round asked for because a
		// push went missing, fetch everything; a periodic one what the
		// peer held at the round before.
		var settled Books
		for {
			theirs, err := e.catchUp(ctx, p, c, next, settled)
			if err != nil {
				if errors.Is(err, ErrRebuilt) {
					e.fail(err)
				}
				cancel(fmt.Errorf("sync: %w", err))
				return
			}
			settled = theirs
			t := time.NewTimer(jitter(e.cfg.SyncInterval))
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-p.syncNow:
				t.Stop()
				settled = nil
			case <-t.C:
			}
		}
	}()
	wg.Wait()
	return context.Cause(ctx)
}

func jitter(d time.Duration) time.Duration {
	return d - d/4 + time.Duration(rand.Int64N(int64(d/2)+1))
}

// pushWindow counts a stream's push frames not acknowledged yet; the
// reader signals acked when an ack arrives.
type pushWindow struct {
	unacked atomic.Int32
	acked   chan struct{}
}

func newPushWindow() *pushWindow { return &pushWindow{acked: make(chan struct{}, 1)} }

func (w *pushWindow) ack() {
	w.unacked.Add(-1)
	select {
	case w.acked <- struct{}{}:
	default:
	}
}

// pushLoop sends queued local commits, coalescing what accumulated.
//
// A frame per commit costs the peer a store commit per set: in
// BenchmarkApplyFrames a set applied alone costs about twice the CPU of
// one applied among sixteen. So the stream is self-clocked: with no frame
// unacknowledged a commit goes at once (after PushDelay); while one is,
// commits accumulate until its ack arrives or PushInterval has passed
// since it was sent, then go in one frame (one commit and one ack on the
// peer). An idle or fast peer sees no added delay; a busy one gets fewer,
// larger frames; a far one (whose acks take a round trip) waits at most
// PushInterval.
func (e *Engine) pushLoop(ctx context.Context, p *peer, c *conn, w *pushWindow) error {
	var last time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-p.queued:
		}
		if e.cfg.PushDelay > 0 {
			// Let a few more commits join the frame.
			if !sleepCtx(ctx, e.cfg.PushDelay) {
				return nil
			}
		}
		if w.unacked.Load() > 0 {
			if rem := e.cfg.PushInterval - time.Since(last); rem > 0 {
				t := time.NewTimer(rem)
			wait:
				for w.unacked.Load() > 0 {
					select {
					case <-ctx.Done():
						t.Stop()
						return nil
					case <-t.C:
						break wait
					case <-w.acked:
					}
				}
				t.Stop()
			}
		}
		for {
			sets := p.take(e.cfg.PushBatchBytes)
			if len(sets) == 0 {
				break
			}
			w.unacked.Add(1)
			if err := c.send(msgPush, encodeSets(sets)); err != nil {
				return err
			}
			last = time.Now()
			e.metrics.pushed.Add(float64(len(sets)))
			e.metrics.pushFrames.Inc()
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// catchUp runs one anti-entropy round over an outbound stream: swap
// bookkeeping, then fetch from the peer every range it holds and this node
// does not, and return the peer's bookkeeping.
//
// With settled (the peer's bookkeeping at the previous round), only what
// the peer held then is fetched. What it got since is mostly on its way
// here by push, from it or from the origin itself; fetching that too cost
// both nodes a second transfer and apply of about one set in ten at 1,000
// writes a second (benchcluster). A set lost for good is then fetched one
// round later, and a gap in a push stream asks for a full round at once.
func (e *Engine) catchUp(ctx context.Context, p *peer, c *conn, next func() (frame, error), settled Books) (Books, error) {
	mine, err := e.store.Books(ctx)
	if err != nil {
		return nil, err
	}
	if err := c.send(msgSyncState, encodeBooks(mine)); err != nil {
		return nil, err
	}
	f, err := next()
	if err != nil {
		return nil, err
	}
	if f.typ != msgSyncState {
		return nil, fmt.Errorf("%w: %s in answer to sync-state", ErrBadFrame, f.typ)
	}
	theirs, err := decodeBooks(f.payload)
	if err != nil {
		return nil, err
	}
	e.recordBooks(ctx, p, theirs, mine)
	origins := make([]string, 0, len(theirs))
	for o := range theirs {
		origins = append(origins, o)
	}
	sort.Strings(origins)
	for _, o := range origins {
		need := roundNeed(o, theirs, mine, settled)
		for len(need) > 0 {
			// At most 64 ranges per request keeps the frame small;
			// the rest follows in the next request.
			req := need
			if len(req) > 64 {
				req = req[:64]
			}
			got, err := e.fetch(ctx, c, next, o, req)
			if errors.Is(err, ErrTooStale) {
				return nil, e.rebuild(ctx, p, c, mine, theirs, err)
			}
			if err != nil {
				return nil, err
			}
			if len(got) == 0 {
				break // the peer could not serve it now; next round
			}
			need = need.Minus(got)
		}
	}
	p.synced(e.cfg.Now())
	e.metrics.syncRounds.Inc()
	return theirs, nil
}

// roundNeed is what a catch-up round fetches of origin: what the peer
// holds and this node does not, and with settled, only what the peer held
// at the round before.
func roundNeed(origin string, theirs, mine, settled Books) RangeSet {
	need := theirs[origin].Minus(mine[origin])
	if settled != nil {
		need = need.Intersect(settled[origin].Held())
	}
	return need
}

// fetch asks for one origin's ranges and applies the answer; it returns
// what was covered.
func (e *Engine) fetch(ctx context.Context, c *conn, next func() (frame, error), origin string, want RangeSet) (RangeSet, error) {
	if err := c.send(msgSyncRequest, syncRequest{Origin: origin, Want: want}.encode()); err != nil {
		return nil, err
	}
	var covered RangeSet
	for {
		f, err := next()
		if err != nil {
			return covered, err
		}
		switch f.typ {
		case msgSyncRows:
			rows, err := decodeSyncRows(f.payload)
			if err != nil {
				return covered, err
			}
			if rows.Origin != origin || len(rows.Covered.Minus(want)) > 0 {
				return covered, fmt.Errorf("%w: rows outside the request", ErrBadFrame)
			}
			if _, err := e.store.ApplyBatch(ctx, ApplyBatch{Sets: rows.Sets, Covered: map[string]RangeSet{origin: rows.Covered}}); err != nil {
				return covered, fmt.Errorf("applying %s %v: %w", origin, rows.Covered, err)
			}
			e.metrics.applied.WithLabelValues("sync").Add(float64(len(rows.Sets)))
			covered = covered.Union(rows.Covered)
		case msgSyncDone:
			d, err := decodeSyncDone(f.payload)
			if err != nil {
				return covered, err
			}
			switch d.Code {
			case 0, rejectNotReady:
			case rejectTooStale:
				e.metrics.tooStale.Inc()
				return covered, fmt.Errorf("origin %s: %w", origin, ErrTooStale)
			default:
				e.log.Warn("peer could not serve a sync request", zap.String("origin", origin), zap.Uint64("code", d.Code))
			}
			return covered, nil
		default:
			return covered, fmt.Errorf("%w: %s in answer to sync-request", ErrBadFrame, f.typ)
		}
	}
}

// recordBooks keeps a peer's bookkeeping for status, waiting and purge,
// and checks whether the peer holds more of our own origin than we ever
// issued (we came back from the past).
func (e *Engine) recordBooks(ctx context.Context, p *peer, theirs, mine Books) {
	p.setBooks(theirs, e.cfg.Now())
	e.acked(p, theirs[e.nodeID].Held())
	if t := theirs[e.nodeID].Max; t > mine[e.nodeID].Max {
		rotated, err := e.store.ObserveOwnOrigin(ctx, t)
		if err != nil {
			e.log.Error("peer holds newer writes of this node's origin", zap.String("peer", p.name), zap.Uint64("their_max", t), zap.Error(err))
		}
		if rotated {
			e.log.Error("a peer holds newer writes of this node's origin: the store took a new node id; restarting replication under it",
				zap.String("peer", p.name), zap.Uint64("their_max", t), zap.Uint64("our_max", mine[e.nodeID].Max))
			e.fail(ErrNewIdentity)
		}
	}
}

// acked records that a peer holds these seqs of our origin.
func (e *Engine) acked(p *peer, own RangeSet) {
	if len(own) == 0 {
		return
	}
	p.addOwn(own, e.cfg.Now())
	e.mu.Lock()
	close(e.progress)
	e.progress = make(chan struct{})
	e.mu.Unlock()
}

// accept serves inbound streams.
func (e *Engine) accept(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		raw, err := e.ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(50 * time.Millisecond)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			e.serve(ctx, raw)
		}()
	}
}

// serve answers one inbound stream: pushes, sync requests, snapshots.
func (e *Engine) serve(ctx context.Context, raw net.Conn) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { <-ctx.Done(); _ = raw.Close() }()
	tc := tls.Server(raw, e.creds.server)
	c := newConn(tc, e.cfg.MaxFrameSize, e.cfg.WriteTimeout, nil, nil)
	if err := e.handshake(ctx, tc, c); err != nil {
		e.log.Debug("replication handshake refused", zap.Stringer("from", raw.RemoteAddr()), zap.Error(err))
		return
	}
	p := e.peerFor(c.peer.NodeID, c.peer.Name)
	c.in, c.out = &p.bytesIn, &p.bytesOut
	lastPushed := map[string]uint64{}
	// The client syncs every SyncInterval, so silence for IdleTimeout
	// is a dead path (see Config.IdleTimeout). A joiner that asked for a
	// snapshot sends nothing while it ingests, which takes as long as
	// the state is large: that stream is not bounded.
	idle := e.cfg.IdleTimeout
	for {
		f, err := c.recv(idle)
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				e.log.Debug("replication stream from peer ended", zap.String("peer", p.name), zap.Error(err))
			}
			return
		}
		p.touch(e.cfg.Now())
		if f.typ == msgSnapshotRequest {
			idle = 0
		}
		if err := e.handle(ctx, p, c, f, lastPushed); err != nil {
			e.log.Info("replication stream from peer closed", zap.String("peer", p.name), zap.Error(err))
			return
		}
	}
}

func (e *Engine) handle(ctx context.Context, p *peer, c *conn, f frame, lastPushed map[string]uint64) error {
	switch f.typ {
	case msgPush:
		sets, err := decodePush(f.payload)
		if err != nil {
			return err
		}
		covered := map[string]RangeSet{}
		gap := false
		for _, s := range sets {
			covered[s.Origin] = covered[s.Origin].Union(RangeSet{{s.Seq, s.Seq}})
			if last := lastPushed[s.Origin]; last != 0 && s.Seq > last+1 {
				gap = true
			}
			if s.Seq > lastPushed[s.Origin] {
				lastPushed[s.Origin] = s.Seq
			}
		}
		if _, err := e.store.ApplyBatch(ctx, ApplyBatch{Sets: sets, Covered: covered}); err != nil {
			if errors.Is(err, ErrNotReady) {
				return c.send(msgAck, encodeAck(nil))
			}
			return fmt.Errorf("applying a push: %w", err)
		}
		e.metrics.applied.WithLabelValues("push").Add(float64(len(sets)))
		p.applied(e.cfg.Now())
		if gap {
			// A push went missing: fetch it from the pusher now rather
			// than at the next period.
			p.triggerSync()
		}
		return c.send(msgAck, encodeAck(covered))
	case msgSyncState:
		theirs, err := decodeBooks(f.payload)
		if err != nil {
			return err
		}
		mine, err := e.store.Books(ctx)
		if err != nil {
			return err
		}
		e.recordBooks(ctx, p, theirs, mine)
		return c.send(msgSyncState, encodeBooks(mine))
	case msgSyncRequest:
		req, err := decodeSyncRequest(f.payload)
		if err != nil {
			return err
		}
		return e.serveSync(ctx, c, req)
	case msgSnapshotRequest:
		return e.serveSnapshot(ctx, c)
	}
	return fmt.Errorf("%w: unexpected %s from client", ErrBadFrame, f.typ)
}

func (e *Engine) serveSync(ctx context.Context, c *conn, req syncRequest) error {
	want := req.Want
	for len(want) > 0 {
		b, err := e.store.ChangeSets(ctx, req.Origin, want, e.cfg.SyncChunkBytes)
		switch {
		case errors.Is(err, ErrNotReady):
			return c.send(msgSyncDone, syncDone{Origin: req.Origin, Code: rejectNotReady}.encode())
		case errors.Is(err, ErrTooStale):
			return c.send(msgSyncDone, syncDone{Origin: req.Origin, Code: rejectTooStale}.encode())
		case err != nil:
			_ = c.send(msgSyncDone, syncDone{Origin: req.Origin, Code: rejectInternal}.encode())
			return fmt.Errorf("serving %s %v: %w", req.Origin, want, err)
		}
		b.Covered = b.Covered.Intersect(want)
		if len(b.Covered) == 0 {
			break
		}
		if err := c.send(msgSyncRows, syncRows{Origin: req.Origin, Covered: b.Covered, Sets: b.Sets}.encode()); err != nil {
			return err
		}
		want = want.Minus(b.Covered)
	}
	return c.send(msgSyncDone, syncDone{Origin: req.Origin}.encode())
}

func (e *Engine) serveSnapshot(ctx context.Context, c *conn) error {
	select {
	case <-e.ready:
	default:
		return c.send(msgReject, reject{Code: rejectNotReady, Reason: "not ready"}.encode())
	}
	// The header frame says a snapshot follows; the store's stream (its
	// own framing and checksums) travels in chunk frames.
	if err := c.send(msgSnapshotHeader, nil); err != nil {
		return err
	}
	w := &chunkWriter{c: c, m: e.metrics}
	start := e.cfg.Now()
	st, err := e.store.Snapshot(ctx, w)
	if err != nil {
		// Closing the stream without an end frame fails the ingest.
		return fmt.Errorf("snapshot: %w", err)
	}
	if err := c.send(msgSnapshotEnd, nil); err != nil {
		return err
	}
	took := e.cfg.Now().Sub(start)
	e.log.Info("served a snapshot", zap.String("peer", c.peer.Name), zap.Int("rows", st.Rows), zap.Int64("bytes", st.Bytes),
		zap.Duration("took", took), zap.Float64("mb_per_second", perSecond(float64(st.Bytes)/1e6, took)))
	return nil
}

// chunkWriter sends what the store writes as snapshot-chunk frames. The
// store writes through a buffer, so each Write is a sizeable chunk.
type chunkWriter struct {
	c *conn
	m *metrics
}

func (w *chunkWriter) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if err := w.c.send(msgSnapshotChunk, p); err != nil {
		return 0, err
	}
	w.m.snapshotBytes.WithLabelValues("out").Add(float64(len(p)))
	return len(p), nil
}

// chunkReader reads snapshot-chunk frames until the end frame (io.EOF).
type chunkReader struct {
	c    *conn
	idle time.Duration
	m    *metrics
	buf  []byte
	end  bool
}

func (r *chunkReader) Read(p []byte) (int, error) {
	for len(r.buf) == 0 {
		if r.end {
			return 0, io.EOF
		}
		f, err := r.c.recv(r.idle)
		if err != nil {
			return 0, err
		}
		switch f.typ {
		case msgSnapshotChunk:
			r.m.snapshotBytes.WithLabelValues("in").Add(float64(len(f.payload)))
			r.buf = f.payload
		case msgSnapshotEnd:
			r.end = true
		default:
			return 0, fmt.Errorf("%w: %s inside a snapshot", ErrBadFrame, f.typ)
		}
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

// Close stops Run's loops (Run returns) and closes the listener.
func (e *Engine) Close() {
	e.mu.Lock()
	cancel := e.cancel
	e.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	if e.ln != nil {
		_ = e.ln.Close()
	}
}
