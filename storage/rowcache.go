package storage

import (
	"hash/maphash"
	"sort"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"github.com/linxGnu/grocksdb"
)

// The row cache holds decoded rows above RocksDB: certificates (private
// key decrypted), pools and backends by primary key, the backends of a
// pool as one list, and the certificate expiry index as one sorted list.
// A cached read is a map lookup and a copy of the value's maps and
// slices, where a RocksDB read is a cgo call, a block search, a decode
// and, for a certificate, an AES-GCM open.
//
// Invalidation. Every write of rows goes through Store.write (or, for the
// bulk paths that do not write batches, through beginTables), which before
// the RocksDB write opens the gate of every cached table it touches and
// drops the entries it touches, and closes the gates after the write.
// A reader takes the gate's value before it reads RocksDB and inserts
// what it read only if the gate still holds that value (checked under the
// shard lock that the writer's drop also takes) and no write was in
// flight when it started. So an entry is never older than the latest
// write: a write either precedes the reader's RocksDB read (the gate it
// saw is already the post-write one) or invalidates the reader's insert.
// Readers of several rows (a domain's certificates, the expiry window)
// compare the gate before and after and fall back to a snapshot read when
// it moved.
//
// Values in the cache are never handed out: a hit returns a copy whose
// maps and slices are the caller's (the clone* functions).

// gateGen and gateWriter pack a table's gate: the writers in flight in the
// low 20 bits, a generation above them. Opening and closing both change
// the value, so a reader that saw a value sees it again only if no write
// began or ended in between.
const (
	gateWriter = 1
	gateGen    = 1 << 20
)

type cacheGate struct{ v atomic.Uint64 }

func (g *cacheGate) open()  { g.v.Add(gateGen + gateWriter) }
func (g *cacheGate) close() { g.v.Add(gateGen - gateWriter) }

// token returns the gate's value and whether a reader may fill the cache
// from what it reads next (no write in flight).
func (g *cacheGate) token() (uint64, bool) {
	v := g.v.Load()
	return v, v&(gateGen-1) == 0
}

// Cached tables, indexed by their table id.
const (
	cacheCerts    = 1 // TableCertificates
	cachePools    = 2 // TablePools
	cacheBackends = 3 // TableBackends
	cacheTables   = 4
)

func cachedTable(name string) (byte, bool) {
	switch name {
	case TableCertificates:
		return cacheCerts, true
	case TablePools:
		return cachePools, true
	case TableBackends:
		return cacheBackends, true
	}
	return 0, false
}

// Kinds of entries.
const (
	kindRow          byte = iota // a row by primary key
	kindPoolBackends             // the live backends of a pool, by id
	kindDomainIDs                // the ids of the certificates covering a name
)

type cacheKey struct {
	table, kind byte
	key         string
}

type cacheEntry struct {
	value any
	size  int64
}

type cacheShard struct {
	mu    sync.Mutex
	lru   *simplelru.LRU[cacheKey, cacheEntry]
	bytes int64
}

// cacheShards spreads the lock; a pool's list (about 700 KB at 1,000
// backends with one metadata entry each) must fit a quarter of one
// shard's share (1.5 MiB of the default 64 MiB: about 2,000 backends).
const cacheShards = 8

// entryOverhead approximates what an entry costs beyond its value: the
// key, the LRU list element and the map slot.
const entryOverhead = 128

type rowCache struct {
	seed        maphash.Seed
	shardBudget int64
	shards      [cacheShards]cacheShard
	gates       [cacheTables]cacheGate

	// The expiry index of every certificate, sorted as the index family
	// holds it; nil when not loaded. Bounded by expiryBudget.
	expMu        sync.Mutex
	expiries     []CertificateExpiry
	expiryBudget int64
	// expiryOverflow: the index did not fit expiryBudget when last read;
	// readers scan the range they need until a write changes it.
	expiryOverflow atomic.Bool

	// seen is the admission filter of rows: a row is cached on its
	// second miss within about len(seen) misses of others, so one pass
	// over many rows (a random read of 1M backends, a large expiry
	// window) does not evict what is read often. Pointer-free, so the
	// collector does not scan it.
	seen [1 << 16]atomic.Uint64

	hits, misses atomic.Uint64
}

// newRowCache returns a cache of about budget bytes; budget <= 0 turns it
// off (every read goes to RocksDB, writes only move the gates).
func newRowCache(budget int64) *rowCache {
	c := &rowCache{seed: maphash.MakeSeed()}
	if budget <= 0 {
		return c
	}
	// A quarter for the expiry index, the rest for rows and lists.
	c.expiryBudget = budget / 4
	c.shardBudget = (budget - c.expiryBudget) / cacheShards
	for i := range c.shards {
		// The count bound is never reached: bytes bound the shard.
		c.shards[i].lru, _ = simplelru.NewLRU[cacheKey, cacheEntry](1<<30, nil)
	}
	return c
}

func (c *rowCache) enabled() bool { return c.shardBudget > 0 }

func (c *rowCache) shard(k cacheKey) *cacheShard {
	h := maphash.String(c.seed, k.key)
	return &c.shards[(h^uint64(k.kind)<<8^uint64(k.table))%cacheShards]
}

func (c *rowCache) get(k cacheKey) (any, bool) {
	if !c.enabled() {
		return nil, false
	}
	sh := c.shard(k)
	sh.mu.Lock()
	e, ok := sh.lru.Get(k)
	sh.mu.Unlock()
	if ok {
		c.hits.Add(1)
		return e.value, true
	}
	c.misses.Add(1)
	return nil, false
}

// put stores value unless the gate moved since tok was taken, and says
// whether it did; then the caller hands out only copies of value's maps
// and slices.
func (c *rowCache) put(tok uint64, k cacheKey, value any, size int64) bool {
	size += entryOverhead + int64(len(k.key))
	if !c.enabled() || size > c.shardBudget/4 {
		return false
	}
	sh := c.shard(k)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if c.gates[k.table].v.Load() != tok {
		return false
	}
	if old, ok := sh.lru.Peek(k); ok {
		sh.bytes -= old.size
	}
	sh.lru.Add(k, cacheEntry{value: value, size: size})
	sh.bytes += size
	for sh.bytes > c.shardBudget {
		_, old, ok := sh.lru.RemoveOldest()
		if !ok {
			break
		}
		sh.bytes -= old.size
	}
	return true
}

// admit reports whether a row missed just now should be cached: when it
// missed recently too.
func (c *rowCache) admit(k cacheKey) bool {
	h := maphash.String(c.seed, k.key) ^ uint64(k.table)<<56 ^ uint64(k.kind)<<48 | 1
	slot := &c.seen[h%uint64(len(c.seen))]
	if slot.Load() == h {
		return true
	}
	slot.Store(h)
	return false
}

func (c *rowCache) drop(k cacheKey) {
	if !c.enabled() {
		return
	}
	sh := c.shard(k)
	sh.mu.Lock()
	if old, ok := sh.lru.Peek(k); ok {
		sh.lru.Remove(k)
		sh.bytes -= old.size
	}
	sh.mu.Unlock()
}

// dropTable drops every entry of table (after a range deletion or a
// family replaced wholesale).
func (c *rowCache) dropTable(table byte) {
	if table == cacheCerts {
		c.dropExpiries()
	}
	if !c.enabled() {
		return
	}
	for i := range c.shards {
		sh := &c.shards[i]
		sh.mu.Lock()
		for _, k := range sh.lru.Keys() {
			if k.table == table {
				if old, ok := sh.lru.Peek(k); ok {
					sh.lru.Remove(k)
					sh.bytes -= old.size
				}
			}
		}
		sh.mu.Unlock()
	}
}

// dropExpiries forgets the expiry index (a write changed it).
func (c *rowCache) dropExpiries() {
	c.expMu.Lock()
	c.expiries = nil
	c.expiryOverflow.Store(false)
	c.expMu.Unlock()
}

// expiryList returns the cached expiry index (nil when not loaded). The
// slice is never modified in place: it is replaced or dropped.
func (c *rowCache) expiryList() []CertificateExpiry {
	c.expMu.Lock()
	defer c.expMu.Unlock()
	return c.expiries
}

// expiryEntrySize approximates an expiry entry: the struct and an id.
const expiryEntrySize = int64(unsafe.Sizeof(CertificateExpiry{})) + 24

// putExpiries stores the expiry index read under tok and says whether it
// did.
func (c *rowCache) putExpiries(tok uint64, list []CertificateExpiry) bool {
	c.expMu.Lock()
	defer c.expMu.Unlock()
	if c.gates[cacheCerts].v.Load() != tok {
		return false
	}
	if int64(len(list))*expiryEntrySize > c.expiryBudget {
		c.expiryOverflow.Store(true)
		return false
	}
	c.expiries = list
	return true
}

// cacheWrite is one write's hold on the gates it opened.
type cacheWrite struct {
	c      *rowCache
	opened [cacheTables]bool
}

// open opens table's gate once per write; it comes before the first drop
// of the table's entries, so no reader fills what the write replaces.
func (w *cacheWrite) open(table byte) {
	if !w.opened[table] {
		w.opened[table] = true
		w.c.gates[table].open()
	}
}

// end closes the gates the write opened. It runs whether the RocksDB
// write succeeded or not.
func (w *cacheWrite) end() {
	for t, o := range w.opened {
		if o {
			w.c.gates[t].close()
		}
	}
}

// beginTables opens the gates of the tables given by name (every cached
// table when none is given) and drops all their entries: for writes that
// do not go through Store.write (a family cleared or replaced, an ingest).
func (c *rowCache) beginTables(names ...string) *cacheWrite {
	w := &cacheWrite{c: c}
	if len(names) == 0 {
		names = []string{TableCertificates, TablePools, TableBackends}
	}
	for _, n := range names {
		t, ok := cachedTable(n)
		if n == cfIndex {
			// Lists and the expiry index are read from the index family.
			for _, t := range []byte{cacheCerts, cacheBackends} {
				w.open(t)
				c.dropTable(t)
			}
			continue
		}
		if ok {
			w.open(t)
			c.dropTable(t)
		}
	}
	return w
}

// beginBatch opens the gates of the cached tables a batch (rep, in
// RocksDB's WriteBatch format) writes and drops the entries it replaces:
// rows by key, the pool lists whose covering index entries it writes or
// deletes, the expiry index when an expiry entry changes. A range
// deletion drops everything of its family.
func (s *Store) beginBatch(rep []byte) *cacheWrite {
	c := s.cache
	w := &cacheWrite{c: c}
	var famTable [cacheTables]uint32
	for _, name := range []string{TableCertificates, TablePools, TableBackends} {
		t, _ := cachedTable(name)
		famTable[t] = s.cfs[name].ID()
	}
	idxFam := s.cfs[cfIndex].ID()
	var (
		lastPool    string
		droppedPool bool
	)
	err := eachBatchRecord(rep, func(cf uint32, key []byte, rangeDel bool) {
		if cf == idxFam {
			switch {
			case rangeDel:
				for _, t := range []byte{cacheCerts, cacheBackends} {
					w.open(t)
					c.dropTable(t)
				}
			case len(key) > 0 && key[0] == idxBackendPool:
				w.open(cacheBackends)
				// A bulk commit writes one pool's entries one after the
				// other (sorted): drop its list once.
				if pool, ok := indexValue(key); ok && (!droppedPool || string(pool) != lastPool) {
					lastPool, droppedPool = string(pool), true
					c.drop(cacheKey{cacheBackends, kindPoolBackends, lastPool})
				}
			case len(key) > 0 && key[0] == idxCertDomain:
				w.open(cacheCerts)
				if name, ok := indexValue(key); ok {
					c.drop(cacheKey{cacheCerts, kindDomainIDs, string(name)})
				}
			case len(key) > 0 && key[0] == idxCertExpiry:
				w.open(cacheCerts)
				c.dropExpiries()
			}
			return
		}
		for t := byte(1); t < cacheTables; t++ {
			if cf != famTable[t] {
				continue
			}
			w.open(t)
			if rangeDel {
				c.dropTable(t)
			} else {
				c.drop(cacheKey{t, kindRow, string(key)})
			}
		}
	})
	if err != nil {
		// A batch we cannot read is still written: drop everything it
		// could have touched.
		for t := byte(1); t < cacheTables; t++ {
			w.open(t)
			c.dropTable(t)
		}
	}
	return w
}

// cachedValue returns the cached value of k; a closed store has none
// (ErrClosed comes from the RocksDB read that follows a miss).
func (s *Store) cachedValue(k cacheKey) (any, bool) {
	select {
	case <-s.closing:
		return nil, false
	default:
	}
	return s.cache.get(k)
}

// write commits batch to RocksDB with the cache entries it replaces
// invalidated (see the top of this file). Every batch that writes rows or
// index entries goes through it or writeRep.
func (s *Store) write(wo *grocksdb.WriteOptions, batch *grocksdb.WriteBatch) error {
	if err := s.resumeAfterFailure(); err != nil {
		return err
	}
	w := s.beginBatch(batch.Data())
	defer w.end()
	return s.base.Write(wo, batch)
}

// writeRep is write for a batch built in Go (batchBuilder): one crossing
// into RocksDB, and the cache reads the batch where it is.
func (s *Store) writeRep(wo *grocksdb.WriteOptions, rep []byte) error {
	if err := s.resumeAfterFailure(); err != nil {
		return err
	}
	w := s.beginBatch(rep)
	defer w.end()
	return writeBatchRep(s.base, wo, rep)
}

// indexValue returns the indexed value of an entry "id | value | 0 | pk".
func indexValue(k []byte) ([]byte, bool) {
	for i := 1; i < len(k); i++ {
		if k[i] == 0 {
			return k[1:i], true
		}
	}
	return nil, false
}

// Sizes of cached values, as the Go heap holds them: the struct (boxed
// for a row, inline in a list), each string's bytes rounded up to the
// allocator's 16-byte classes, and maps at their real cost (a small map
// is a 48-byte header and one group of 8 slots, 288 bytes). The benchmark
// of RSS after reads checks the bound in practice.

func strSize(x string) int64 {
	if len(x) == 0 {
		return 0
	}
	return int64(len(x)+15) &^ 15
}

func metaSize(m map[string]string) int64 {
	if len(m) == 0 {
		return 0
	}
	n := int64(48 + 288)
	if len(m) > 8 {
		n = 48 + int64(len(m))*48
	}
	for k, v := range m {
		n += strSize(k) + strSize(v)
	}
	return n
}

func stringsSize(s []string) int64 {
	n := int64(16 * len(s))
	for _, x := range s {
		n += strSize(x)
	}
	return n
}

func backendSize(b *Backend) int64 {
	return int64(unsafe.Sizeof(*b)) + strSize(b.ID) + strSize(b.PoolName) + strSize(b.Host) + strSize(b.Scheme) +
		strSize(b.Region) + strSize(b.Version.Origin) + metaSize(b.Metadata)
}

func poolSize(p *Pool) int64 {
	n := int64(unsafe.Sizeof(*p)) + stringsSize(p.Hosts) + stringsSize(p.OnDemandAllow) + metaSize(p.Metadata)
	for _, x := range []string{p.Name, p.Algorithm, p.SSLMode, p.SSLDomain, p.SSLCertID, p.HealthCheck.Type, p.HealthCheck.Path,
		p.HashOn, p.StickyCookie, p.BackendCA, p.BackendServerName, p.BackendClientCertID, p.OnDemandAsk, p.Version.Origin} {
		n += strSize(x)
	}
	return n
}

func certificateSize(c *Certificate) int64 {
	n := int64(unsafe.Sizeof(*c)) + stringsSize(c.Names) + metaSize(c.Metadata)
	for _, x := range []string{c.ID, c.Domain, c.CertificatePEM, c.PrivateKeyPEM, c.ChainPEM, c.Issuer, c.Provider, c.Fingerprint,
		c.Version.Origin} {
		n += strSize(x)
	}
	return n
}

// cloneBackends copies a cached list for a caller.
func cloneBackends(list []Backend) []Backend {
	out := make([]Backend, len(list))
	copy(out, list)
	for i := range out {
		if out[i].Metadata != nil {
			out[i].Metadata = cloneMeta(out[i].Metadata)
		}
	}
	return out
}

// pageOf returns the backends of a cached list, ordered by position, whose
// position is strictly after `after`, at most limit (<= 0: all), copied.
func pageOf(list []Backend, after string, limit int) []Backend {
	i := 0
	if after != "" {
		i = sort.Search(len(list), func(i int) bool { return BackendPosition(&list[i]) > after })
	}
	list = list[i:]
	if limit > 0 && len(list) > limit {
		list = list[:limit]
	}
	if len(list) == 0 {
		return nil
	}
	return cloneBackends(list)
}

// CacheStats describes the row cache.
type CacheStats struct {
	Bytes, Budget int64
	Entries       int
	Expiries      int // certificates in the cached expiry index (0: not loaded)
	Hits, Misses  uint64
}

func (c *rowCache) stats() CacheStats {
	st := CacheStats{Budget: c.shardBudget*cacheShards + c.expiryBudget, Hits: c.hits.Load(), Misses: c.misses.Load()}
	if c.enabled() {
		for i := range c.shards {
			sh := &c.shards[i]
			sh.mu.Lock()
			st.Bytes += sh.bytes
			st.Entries += sh.lru.Len()
			sh.mu.Unlock()
		}
	}
	exp := c.expiryList()
	st.Expiries = len(exp)
	st.Bytes += int64(len(exp)) * expiryEntrySize
	return st
}

// CacheStats returns the row cache's size and hit counts.
func (s *Store) CacheStats() CacheStats { return s.cache.stats() }
