package storage

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/linxGnu/grocksdb"
	"go.uber.org/zap"

	"github.com/singularity-ng/singularity-edge/storage/internal/bgerror"
)

// Store is the node's embedded database. It is safe for concurrent use.
type Store struct {
	cfg    Config
	log    *zap.Logger
	nodeID atomic.Pointer[string]
	keys   *keyring
	clock  *Clock

	// base is a plain RocksDB: the store serializes its own commits
	// (commitMu), so it needs no RocksDB transactions (tx.go).
	base    *grocksdb.DB
	cfs     map[string]*grocksdb.ColumnFamilyHandle
	cfID    map[string]uint32 // column family ids, for batches built in Go (batch.go)
	handles []*grocksdb.ColumnFamilyHandle
	opts    *rocksOptions
	wo      *grocksdb.WriteOptions // local commits: Config.SyncWAL
	woAsync *grocksdb.WriteOptions // remote applies: a lost apply is fetched again
	// roLatest reads the latest committed state (point reads: one Get is
	// atomic, no snapshot needed). Read options are immutable once built,
	// so one serves every goroutine.
	roLatest *grocksdb.ReadOptions
	// cache holds decoded rows; every write of rows invalidates what it
	// replaces (rowcache.go).
	cache *rowCache

	backupMu sync.Mutex // one BackupEngine at a time

	// commitMu serializes every commit: an Update runs its function, gets
	// its HLC, seq and feed index and writes its batch under it, so that
	// transactions are serializable and a later commit never carries a
	// smaller seq or index. Every write of rows, index, change log, feed
	// and bookkeeping happens under it. localSeq, purgeFloor and horizon
	// change only under it. The WAL sync of a local commit happens after
	// it is released (group commit, groupcommit.go).
	commitMu   sync.Mutex
	batch      batchBuilder // the commit's WriteBatch, under commitMu
	localSeq   uint64
	purgeFloor HLC
	// horizon is the purge horizon per origin (horizon.go): written
	// under commitMu, installed and read under bkMu.
	horizon   map[string]uint64
	lastIndex atomic.Uint64
	// auditSeq orders the audit rows one node writes in the same
	// nanosecond (storage/audit.go).
	auditSeq   atomic.Uint64
	firstIndex atomic.Uint64 // oldest feed entry kept (Prune deletes older ones)

	// bkMu guards the in-memory copy of the bookkeeping (and the purge
	// horizon), which changes only after the batch that persists it has
	// committed.
	bkMu        sync.RWMutex
	bk          map[string]Ranges
	clusterID   string
	skewOrigins map[string]uint64 // change sets received far ahead of our clock, per origin

	state atomic.Value // string: meta/state (ready, ingesting, catching_up)
	// verifyOwed: Open deferred the verification of every family to
	// VerifyDeferred (Config.VerifyInBackground).
	verifyOwed atomic.Bool
	writeErr   atomic.Pointer[writeFailure]
	// canResume: DB::Resume is reachable through grocksdb's handle
	// (health.go, storage/internal/bgerror); canSwitch: so is a flush
	// that waits for nothing (retireTornLog).
	canResume bool
	canSwitch bool
	// resumeMu serializes DB::Resume: the health probe and a commit may
	// both find the background error, and RocksDB answers the second
	// Resume "Busy" while the first is recovering.
	resumeMu sync.Mutex
	// pace spaces the attempts to write again while the disk stays full
	// (health.go).
	pace resumePacer
	gc   groupCommit // WAL syncs of local commits (groupcommit.go)

	counts    counters
	collector *collector

	notifyMu sync.Mutex
	notify   chan struct{} // closed and replaced after every commit

	// Lifecycle: every operation enters (fails once closed) and leaves;
	// Close waits for the active ones before closing RocksDB.
	stateMu sync.Mutex
	idle    *sync.Cond
	active  int
	closed  bool
	closing chan struct{}
	subs    sync.WaitGroup
	// live holds the running subscriptions, so that Prune keeps the feed
	// entries a subscriber has not read yet.
	live sync.Map // *Subscription -> struct{}
	// feedCache keeps the latest events, put by the commits that wrote
	// them, for subscribers (feed.go).
	feedCache feedCache
}

// Open opens the store in cfg.Dir, creating the directory and every column
// family on first open. A damaged table fails Open with an error wrapping
// ErrCorrupt that names the table and the way out; a missing or wrong
// encryption key fails it with ErrEncryptionKey.
func Open(cfg Config) (*Store, error) {
	if cfg.Dir == "" {
		return nil, fmt.Errorf("%w: Config.Dir is empty", ErrInvalid)
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.BlockCacheSize <= 0 {
		cfg.BlockCacheSize = defaultBlockCacheSize
	}
	if cfg.WriteBufferSize <= 0 {
		cfg.WriteBufferSize = defaultWriteBufferSize
	}
	if cfg.MaxClockOffset <= 0 {
		cfg.MaxClockOffset = defaultMaxClockOffset
	}
	if cfg.ObservationTTL <= 0 {
		cfg.ObservationTTL = defaultObservationTTL
	}
	if cfg.ObservationMinInterval == 0 {
		cfg.ObservationMinInterval = defaultObservationMinInterval
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.NodeID != "" {
		if err := validateKey("node id", cfg.NodeID); err != nil {
			return nil, err
		}
	}
	keys, err := newKeyring(cfg.EncryptionKey)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("storage: create data dir: %w", err)
	}

	s := &Store{
		cfg:   cfg,
		log:   cfg.Logger,
		keys:  keys,
		clock: NewClock(cfg.Now, cfg.MaxClockOffset),
		cfs:   make(map[string]*grocksdb.ColumnFamilyHandle),
		bk:    make(map[string]Ranges),

		skewOrigins: make(map[string]uint64),
		notify:      make(chan struct{}),
		closing:     make(chan struct{}),
	}
	s.idle = sync.NewCond(&s.stateMu)
	if err := s.openDB(); err != nil {
		return nil, err
	}
	if err := s.init(); err != nil {
		s.closeDB(false)
		return nil, err
	}
	if cfg.Registerer != nil {
		s.collector = newCollector(s)
		if err := cfg.Registerer.Register(s.collector); err != nil {
			s.closeDB(false)
			return nil, fmt.Errorf("storage: register metrics: %w", err)
		}
	}
	s.log.Info("store opened", zap.String("dir", cfg.Dir), zap.String("node_id", s.NodeID()),
		zap.String("cluster_id", s.ClusterID()),
		zap.Uint64("last_index", s.lastIndex.Load()))
	return s, nil
}

func (s *Store) openDB() error {
	s.opts = newRocksOptions(s.cfg)
	names := []string{cfDefault}
	names = append(names, TableNames()...)
	names = append(names, internalFamilies()...)
	// A newer agent may have added families; RocksDB wants all of them.
	if existing, err := grocksdb.ListColumnFamilies(s.opts.db, s.cfg.Dir); err == nil {
		for _, n := range existing {
			if !containsString(names, n) {
				names = append(names, n)
			}
		}
	}
	cfOpts := make([]*grocksdb.Options, len(names))
	for i, n := range names {
		cfOpts[i] = s.opts.forFamily(n)
	}
	// Stores written by agents that opened an optimistic-transaction
	// database are plain RocksDB on disk: nothing to convert.
	db, handles, err := grocksdb.OpenDbColumnFamilies(s.opts.db, s.cfg.Dir, names, cfOpts)
	if err != nil {
		s.opts.destroy()
		return openError(s.cfg.Dir, err)
	}
	s.base = db
	s.canResume = bgerror.CanResume(db, s.cfg.Dir)
	s.handles = handles
	s.cfID = make(map[string]uint32, len(names))
	s.canSwitch = s.canResume
	for i, n := range names {
		s.cfs[n] = handles[i]
		s.cfID[n] = handles[i].ID()
		s.canSwitch = s.canSwitch && bgerror.FamilyLayoutOK(handles[i], n)
	}
	s.wo = grocksdb.NewDefaultWriteOptions()
	s.wo.SetSync(s.cfg.SyncWAL)
	s.woAsync = grocksdb.NewDefaultWriteOptions()
	s.gc.init(func() error { return db.FlushWAL(true) })
	s.roLatest = grocksdb.NewDefaultReadOptions()
	rowCache := s.cfg.RowCacheSize
	if rowCache == 0 {
		rowCache = defaultRowCacheSize
	}
	s.cache = newRowCache(rowCache)
	return nil
}

// openError turns a RocksDB open failure into an error that says what is
// damaged and what to do.
func openError(dir string, err error) error {
	msg := err.Error()
	if strings.Contains(msg, "Corruption") {
		table := tableFromMessage(msg)
		return corruptError(table, err)
	}
	if isLockHeld(msg) {
		return fmt.Errorf("storage: open %s: data directory is in use by another process: %w", dir, err)
	}
	return fmt.Errorf("storage: open %s: %w", dir, err)
}

// isLockHeld recognizes RocksDB's "the LOCK file is held" open error
// (IO error: lock <dir>/LOCK: Resource temporarily unavailable, or "lock
// hold by current process"), and nothing else that merely contains
// "lock" (a block checksum mismatch, for one).
func isLockHeld(msg string) bool {
	return strings.Contains(msg, "/LOCK:") || strings.Contains(msg, "lock hold by current process") ||
		strings.Contains(msg, "LOCK: Resource temporarily unavailable")
}

// tableFromMessage finds a column family name in a RocksDB error message.
func tableFromMessage(msg string) string {
	for _, n := range append(TableNames(), internalFamilies()...) {
		if strings.Contains(msg, "column family "+n) || strings.Contains(msg, "'"+n+"'") {
			return n
		}
	}
	return ""
}

// corruptError names the damaged table and the way out. Every remedy it
// names works: restore, remove-table for a table, a restart for the
// derived families, which Open rebuilds from the tables by itself
// (RebuildIndexes does the same on a stopped store).
func corruptError(table string, err error) error {
	switch {
	case table == "":
		return fmt.Errorf("%w: the database is damaged (%v): restore from a backup with `singularity-edge db restore`",
			ErrCorrupt, err)
	case table == cfIndex || table == cfChangelog || table == cfFeed:
		return fmt.Errorf("%w: internal family %q is damaged (%v): restart the agent: Open verifies it and rebuilds it "+
			"from the tables", ErrCorrupt, table, err)
	case table == cfMeta:
		return fmt.Errorf("%w: internal family %q is damaged (%v): restore from a backup with `singularity-edge db restore`, "+
			"or bootstrap the node again from a peer's snapshot", ErrCorrupt, table, err)
	}
	return fmt.Errorf("%w: table %q is damaged (%v): restore from a backup with `singularity-edge db restore`, "+
		"or empty it with `singularity-edge db remove-table %s --yes` and let peers resync it",
		ErrCorrupt, table, err, table)
}

// init loads or creates the identity, brings an older layout up to date,
// loads the bookkeeping and the commit counters, checks the encryption key
// and verifies every column family.
func (s *Store) init() error {
	if err := s.loadIdentity(); err != nil {
		return err
	}
	if err := s.migrateChangelog(); err != nil {
		return err
	}
	if err := s.loadBookkeeping(); err != nil {
		return err
	}
	if err := s.loadHorizon(); err != nil {
		return err
	}
	if err := s.migrateHorizonFile(); err != nil {
		return err
	}
	if err := s.recoverFeed(); err != nil {
		return err
	}
	if err := s.checkEncryptionKey(); err != nil {
		return err
	}
	if err := s.upgradeIndexes(); err != nil {
		return err
	}
	if s.cfg.SkipVerifyOnOpen {
		return nil
	}
	pending, err := s.verificationPending()
	if err != nil {
		return err
	}
	if s.cfg.VerifyInBackground && !pending {
		return s.deferVerification()
	}
	if pending {
		s.log.Warn("the last deferred verification did not complete clean: verifying every column family before opening")
	}
	if err := s.verifyFamilies(); err != nil {
		return err
	}
	return s.clearVerificationMark()
}

// recoverFeed recovers the commit index from the first and last feed keys.
func (s *Store) recoverFeed() error {
	ro := grocksdb.NewDefaultReadOptions()
	defer ro.Destroy()
	it := s.base.NewIteratorCF(ro, s.cfs[cfFeed])
	defer it.Close()
	it.SeekToLast()
	if it.Valid() {
		k := it.Key().Data()
		if len(k) != 8 {
			return corruptError(cfFeed, errors.New("malformed feed key"))
		}
		s.lastIndex.Store(beUint64(k))
	}
	if it.SeekToFirst(); it.Valid() && len(it.Key().Data()) == 8 {
		s.firstIndex.Store(beUint64(it.Key().Data()))
	} else {
		s.firstIndex.Store(1)
	}
	if err := it.Err(); err != nil {
		return corruptError(cfFeed, err)
	}
	return nil
}

// checkEncryptionKey: the key-check value in meta is sealed with the key
// the first time a key is configured. A later open must present the same
// key; a store holding sealed private keys must present one at all.
func (s *Store) checkEncryptionKey() error {
	check, err := s.getRaw(cfMeta, []byte(metaKeyCheck))
	if err != nil {
		return err
	}
	if check != nil {
		if !s.keys.hasKey() {
			return fmt.Errorf("%w: this store holds encrypted private keys; set EDGE_ENCRYPTION_KEY to the key it was created with", ErrEncryptionKey)
		}
		if _, err := s.keys.open(aadKeyCheck, check); err != nil {
			return fmt.Errorf("%w: EDGE_ENCRYPTION_KEY is not the key this store was created with", ErrEncryptionKey)
		}
		return nil
	}
	// No key check yet: a sealed private key may still have arrived by
	// Apply or Import before a key was configured.
	sealed, id, err := s.anySealedKey()
	if err != nil {
		return err
	}
	if !s.keys.hasKey() {
		if sealed != nil {
			return fmt.Errorf("%w: certificate %q has an encrypted private key; set EDGE_ENCRYPTION_KEY", ErrEncryptionKey, id)
		}
		return nil
	}
	if sealed != nil {
		if _, err := s.keys.openPrivateKey(id, sealed); err != nil {
			return fmt.Errorf("%w: EDGE_ENCRYPTION_KEY does not decrypt the stored private keys", ErrEncryptionKey)
		}
	}
	check, err = s.keys.seal(aadKeyCheck, []byte(keyCheckPlain))
	if err != nil {
		return err
	}
	if err := s.base.PutCF(s.wo, s.cfs[cfMeta], []byte(metaKeyCheck), check); err != nil {
		return fmt.Errorf("storage: write key check: %w", err)
	}
	return nil
}

func (s *Store) anySealedKey() ([]byte, string, error) {
	ro := grocksdb.NewDefaultReadOptions()
	defer ro.Destroy()
	it := s.base.NewIteratorCF(ro, s.cfs[TableCertificates])
	defer it.Close()
	for it.SeekToFirst(); it.Valid(); it.Next() {
		r, err := decodeRow(it.Value().Data())
		if err != nil {
			return nil, "", corruptError(TableCertificates, err)
		}
		if r.deleted {
			continue
		}
		c, sealed, err := decodeCertificate(r.rec)
		if err != nil {
			return nil, "", corruptError(TableCertificates, err)
		}
		if sealed != nil {
			return sealed, c.ID, nil
		}
	}
	if err := it.Err(); err != nil {
		return nil, "", corruptError(TableCertificates, err)
	}
	return nil, "", nil
}

// Dir returns the data directory.
func (s *Store) Dir() string { return s.cfg.Dir }

// Close stops subscriptions, waits for running operations, flushes the
// memtables (so the next open replays no WAL) and closes RocksDB. Once
// RocksDB has held a background error since open (a flush or compaction
// that failed, resumed or not) it closes without flushing: the WAL holds
// every acknowledged commit, which the next open replays
// (flushMayNeverEnd says why a flush is not safe then).
func (s *Store) Close() error {
	s.stateMu.Lock()
	if s.closed {
		s.stateMu.Unlock()
		return nil
	}
	s.closed = true
	close(s.closing)
	for s.active > 0 {
		s.idle.Wait()
	}
	s.stateMu.Unlock()
	s.subs.Wait()
	if s.collector != nil {
		s.cfg.Registerer.Unregister(s.collector)
	}
	return s.closeDB(true)
}

// closeDB flushes the memtables first when flush is set, unless a flush
// that is waited for may never end (flushMayNeverEnd). The WAL holds every
// acknowledged commit, which the next open replays.
func (s *Store) closeDB(flush bool) error {
	var err error
	if flush && s.flushMayNeverEnd() {
		s.log.Warn("closing without flushing the memtables after a background error: the next open replays the WAL",
			zap.Error(s.backgroundError()))
		flush = false
	}
	if flush {
		if ferr := s.flushAll(); ferr != nil {
			err = fmt.Errorf("storage: %w", ferr)
		}
	}
	for _, h := range s.handles {
		h.Destroy()
	}
	s.base.Close()
	s.wo.Destroy()
	s.woAsync.Destroy()
	s.roLatest.Destroy()
	s.opts.destroy()
	s.log.Info("store closed", zap.String("dir", s.cfg.Dir))
	return err
}

// enter registers a running operation; it fails once Close has begun.
func (s *Store) enter() error {
	s.stateMu.Lock()
	defer s.stateMu.Unlock()
	if s.closed {
		return ErrClosed
	}
	s.active++
	return nil
}

func (s *Store) leave() {
	s.stateMu.Lock()
	s.active--
	if s.active == 0 {
		s.idle.Broadcast()
	}
	s.stateMu.Unlock()
}

// committed publishes a new commit index to subscribers.
func (s *Store) committed(index uint64) {
	s.lastIndex.Store(index)
	s.notifyMu.Lock()
	close(s.notify)
	s.notify = make(chan struct{})
	s.notifyMu.Unlock()
}

func (s *Store) commitWaiter() <-chan struct{} {
	s.notifyMu.Lock()
	defer s.notifyMu.Unlock()
	return s.notify
}

// LastIndex returns the commit index of the latest commit (0: none yet).
func (s *Store) LastIndex() uint64 { return s.lastIndex.Load() }

// Clock returns the store's hybrid logical clock.
func (s *Store) Clock() *Clock { return s.clock }

// getRaw reads the latest value of key in family cf (nil when absent).
func (s *Store) getRaw(cf string, key []byte) ([]byte, error) {
	ro := grocksdb.NewDefaultReadOptions()
	defer ro.Destroy()
	v, err := s.base.GetCF(ro, s.cfs[cf], key)
	if err != nil {
		return nil, readError(cf, err)
	}
	defer v.Free()
	if !v.Exists() {
		return nil, nil
	}
	return append([]byte(nil), v.Data()...), nil
}

// readError classifies a RocksDB read error.
func readError(cf string, err error) error {
	if strings.Contains(err.Error(), "Corruption") {
		return corruptError(cf, err)
	}
	return fmt.Errorf("storage: read %s: %w", cf, err)
}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func beUint64(b []byte) uint64 {
	_ = b[7]
	return uint64(b[0])<<56 | uint64(b[1])<<48 | uint64(b[2])<<40 | uint64(b[3])<<32 |
		uint64(b[4])<<24 | uint64(b[5])<<16 | uint64(b[6])<<8 | uint64(b[7])
}
