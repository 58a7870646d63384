package replication

import (
	"sync"
	"sync/atomic"
	"time"
)

// peer is this node's replication state of one member, shared by the
// outbound stream (pushes, catch-up) and inbound streams from it.
type peer struct {
	id   string
	name string

	session  atomic.Bool // an outbound stream is up
	bytesIn  atomic.Uint64
	bytesOut atomic.Uint64

	queued  chan struct{} // signalled when sets are queued
	syncNow chan struct{} // signalled to run a catch-up now

	mu          sync.Mutex
	queue       []EncodedSet
	queueBytes  int
	theirOwn    RangeSet // seqs of our origin the peer holds
	books       Books    // the peer's last reported bookkeeping
	booksAt     time.Time
	lastContact time.Time
	lastApplied time.Time // last time it acknowledged our sets
	lastSync    time.Time
	lastErr     string
	created     time.Time // when this node made the record

	// What its last Hello of this protocol version said (keySeen): the
	// refusal when its encryption key differs from ours ("" when it
	// matches), and whether it held the cluster's state.
	keySeen    bool
	keyDiffers string
	keyAt      time.Time
	peerReady  bool
}

func newPeer(id, name string) *peer {
	return &peer{id: id, name: name, queued: make(chan struct{}, 1), syncNow: make(chan struct{}, 1)}
}

// lastHeard is the last time anything came from the peer (a frame, a
// Hello), or when the record was made if nothing ever did.
func (p *peer) lastHeard() time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	t := p.created
	for _, u := range []time.Time{p.lastContact, p.booksAt, p.keyAt, p.lastApplied} {
		if u.After(t) {
			t = u
		}
	}
	return t
}

func (p *peer) startSession() {
	p.session.Store(true)
	p.mu.Lock()
	p.lastErr = ""
	p.mu.Unlock()
}

func (p *peer) endSession() {
	p.session.Store(false)
	p.mu.Lock()
	p.queue, p.queueBytes = nil, 0
	p.mu.Unlock()
}

// enqueue adds a local commit; beyond max bytes the oldest are dropped
// (the peer's own catch-up fetches them).
func (p *peer) enqueue(s EncodedSet, max int, m *metrics) {
	p.mu.Lock()
	p.queue = append(p.queue, s)
	p.queueBytes += len(s.Data)
	dropped := 0
	for p.queueBytes > max && len(p.queue) > 1 {
		p.queueBytes -= len(p.queue[0].Data)
		p.queue = p.queue[1:]
		dropped++
	}
	p.mu.Unlock()
	if dropped > 0 {
		m.pushDropped.Add(float64(dropped))
	}
	select {
	case p.queued <- struct{}{}:
	default:
	}
}

// take removes up to about max bytes of queued sets (at least one).
func (p *peer) take(max int) []EncodedSet {
	p.mu.Lock()
	defer p.mu.Unlock()
	n, size := 0, 0
	for n < len(p.queue) && (n == 0 || size+len(p.queue[n].Data) <= max) {
		size += len(p.queue[n].Data)
		n++
	}
	out := append([]EncodedSet(nil), p.queue[:n]...)
	p.queue = p.queue[n:]
	p.queueBytes -= size
	return out
}

func (p *peer) triggerSync() {
	select {
	case p.syncNow <- struct{}{}:
	default:
	}
}

func (p *peer) touch(now time.Time) {
	p.mu.Lock()
	p.lastContact = now
	p.mu.Unlock()
}

func (p *peer) applied(now time.Time) {
	p.mu.Lock()
	p.lastContact = now
	p.mu.Unlock()
}

func (p *peer) synced(now time.Time) {
	p.mu.Lock()
	p.lastSync = now
	p.mu.Unlock()
}

func (p *peer) setErr(err error) {
	if err == nil {
		return
	}
	p.mu.Lock()
	p.lastErr = err.Error()
	p.mu.Unlock()
}

func (p *peer) setBooks(b Books, now time.Time) {
	p.mu.Lock()
	p.books, p.booksAt = b, now
	p.mu.Unlock()
}

func (p *peer) addOwn(own RangeSet, now time.Time) {
	p.mu.Lock()
	p.theirOwn = p.theirOwn.Union(own)
	p.lastApplied = now
	p.mu.Unlock()
}

// theirOwnLocked is for callers holding the engine's lock, not p.mu.
func (p *peer) theirOwnLocked() RangeSet {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.theirOwn
}

func (p *peer) holds(seq uint64) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.theirOwn.Contains(seq)
}

// peerKey is what the last Hello from a peer said of its key.
type peerKey struct {
	seen      bool
	differs   string
	at        time.Time
	peerReady bool
}

// setKey records a Hello's key comparison and returns the previous
// refusal ("" when the key matched or was not seen).
func (p *peer) setKey(differs string, ready bool, now time.Time) (was string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	was = p.keyDiffers
	p.keySeen, p.keyDiffers, p.keyAt, p.peerReady = true, differs, now, ready
	return was
}

func (p *peer) key() peerKey {
	p.mu.Lock()
	defer p.mu.Unlock()
	return peerKey{seen: p.keySeen, differs: p.keyDiffers, at: p.keyAt, peerReady: p.peerReady}
}
