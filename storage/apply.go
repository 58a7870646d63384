package storage

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/linxGnu/grocksdb"
	"go.uber.org/zap"
)

// BatchResult says what ApplyBatch did.
type BatchResult struct {
	Sets       int    // change sets recorded (now in the bookkeeping)
	Duplicates int    // change sets already recorded before: nothing done
	Applied    int    // rows written (their version won)
	Skipped    int    // rows left alone (the stored version is newer or equal)
	Refused    int    // rows refused: older than the purge floor for an absent key, or already expired
	Index      uint64 // feed index of the last event; 0 when no row changed
	// FarAhead counts the sets whose HLC was more than the maximum clock
	// offset ahead of the local wall clock: stored, but the local clock
	// did not follow them (see ClockSkew).
	FarAhead int
}

// preparedSet is a validated change set with the index entries of its rows.
type preparedSet struct {
	ChangeSet
	idx [][][]byte // per change: its record's index entries
}

// ApplyBatch applies change sets from peers (one or more origins, in any
// order, duplicates allowed) in one RocksDB commit, together with the
// bookkeeping that records them as seen: a set is seen exactly when its
// rows are stored, also across a crash. Rows follow last-write-wins by
// (HLC, origin): a change is written only when its version is newer than
// the stored one (tombstones included). A change for a key that is absent
// here and older than the purge floor is refused (it would resurrect a
// purged delete), as is an expired observation or TTL row; the set is
// still recorded. The commit is not fsynced: a set lost to a power cut is
// missing from the bookkeeping too and is fetched again.
//
// A set of this node's own id with a seq above the last one it issued
// means the store went back in time (see ObserveOwnSeq): the store takes a
// new id first, then applies the set as any other origin's.
//
// Invalid input (unknown table, bad key, a change whose version is not its
// set's, more than MaxChangeSetRows rows) fails the whole batch with an
// error wrapping ErrInvalid or ErrTooLarge, and nothing is stored.
func (s *Store) ApplyBatch(ctx context.Context, sets []ChangeSet) (BatchResult, error) {
	var res BatchResult
	prepared := make([]preparedSet, 0, len(sets))
	for _, cs := range sets {
		p, err := prepareSet(cs)
		if err != nil {
			return res, err
		}
		prepared = append(prepared, p)
	}
	if err := s.enter(); err != nil {
		return res, err
	}
	defer s.leave()
	if err := ctx.Err(); err != nil {
		return res, err
	}
	return s.applyPrepared(prepared, nil, applyOptions{})
}

// ApplyAnswer applies a catch-up answer from a peer (its ChangeSets): the
// sets, and every seq of ans.Covered as seen, cleared seqs included, in one
// commit. Sets must be of ans.Origin with seqs inside ans.Covered.
func (s *Store) ApplyAnswer(ctx context.Context, ans Answer) (BatchResult, error) {
	var res BatchResult
	if err := validateKey("answer origin", ans.Origin); err != nil {
		return res, err
	}
	covered, err := RangesOf(ans.Covered...)
	if err != nil {
		return res, err
	}
	prepared := make([]preparedSet, 0, len(ans.Sets))
	for _, cs := range ans.Sets {
		if cs.Origin != ans.Origin || !covered.Contains(cs.Seq) {
			return res, fmt.Errorf("%w: answer for %s covering %s holds set %s/%d", ErrInvalid, ans.Origin, covered, cs.Origin, cs.Seq)
		}
		p, err := prepareSet(cs)
		if err != nil {
			return res, err
		}
		prepared = append(prepared, p)
	}
	if err := s.enter(); err != nil {
		return res, err
	}
	defer s.leave()
	if err := ctx.Err(); err != nil {
		return res, err
	}
	return s.applyPrepared(prepared, map[string]Ranges{ans.Origin: covered}, applyOptions{})
}

// prepareSet validates a change set and decodes its index entries.
func prepareSet(cs ChangeSet) (preparedSet, error) {
	wrap := func(err error) error { return fmt.Errorf("change set %s/%d: %w", cs.Origin, cs.Seq, err) }
	if err := validateKey("change set origin", cs.Origin); err != nil {
		return preparedSet{}, wrap(err)
	}
	if cs.Seq == 0 {
		return preparedSet{}, wrap(fmt.Errorf("%w: seq is 0", ErrInvalid))
	}
	if len(cs.Changes) > MaxChangeSetRows {
		return preparedSet{}, wrap(fmt.Errorf("%w: %d rows (at most %d)", ErrTooLarge, len(cs.Changes), MaxChangeSetRows))
	}
	own := Version{HLC: cs.HLC, Origin: cs.Origin, Seq: cs.Seq}
	seen := make(map[rowRef]bool, len(cs.Changes))
	p := preparedSet{ChangeSet: cs, idx: make([][][]byte, len(cs.Changes))}
	for i, c := range cs.Changes {
		def := lookupTable(c.Table)
		if def == nil {
			return preparedSet{}, wrap(fmt.Errorf("change %d: %w: %q", i, ErrUnknownTable, c.Table))
		}
		if err := def.checkKey(c.Key); err != nil {
			return preparedSet{}, wrap(fmt.Errorf("change %d: %w", i, err))
		}
		if c.Version != own || cs.HLC == 0 {
			return preparedSet{}, wrap(fmt.Errorf("change %d: %w: %s %q has version %s/%d/%d, not its set's", i, ErrInvalid,
				c.Table, c.Key, c.Version.Origin, c.Version.Seq, c.Version.HLC))
		}
		ref := rowRef{c.Table, c.Key}
		if seen[ref] {
			return preparedSet{}, wrap(fmt.Errorf("change %d: %w: %s %q appears twice", i, ErrInvalid, c.Table, c.Key))
		}
		seen[ref] = true
		if c.Expires < 0 {
			return preparedSet{}, wrap(fmt.Errorf("change %d: %w: negative expiry", i, ErrInvalid))
		}
		if c.Deleted {
			if len(c.Value) != 0 {
				return preparedSet{}, wrap(fmt.Errorf("change %d: %w: delete of %s %q carries a value", i, ErrInvalid, c.Table, c.Key))
			}
			continue
		}
		d, err := def.decode(c.Value)
		if err != nil {
			return preparedSet{}, wrap(fmt.Errorf("change %d: %w: %v", i, ErrInvalid, err))
		}
		if err := def.validate(d); err != nil {
			return preparedSet{}, wrap(fmt.Errorf("change %d: %w", i, err))
		}
		if d.key != c.Key {
			return preparedSet{}, wrap(fmt.Errorf("change %d: %w: key %q does not match its record (%q)", i, ErrInvalid, c.Key, d.key))
		}
		p.idx[i] = d.idx
	}
	return p, nil
}

// applyPrepared applies validated sets in one batch under the commit
// mutex, so no other commit (a local Update included) comes between
// reading the stored rows and writing the batch.
// applyOptions adapts applyPrepared to imports and snapshot ingest.
type applyOptions struct {
	// partialSets: sets may arrive in parts (an import or snapshot cut
	// between batches), so a seq already recorded is not a duplicate;
	// last-write-wins per row skips what is already stored.
	partialSets bool
	sync        bool // fsync the commit
	noFeed      bool // write no feed entries (snapshot ingest)
}

func (s *Store) applyPrepared(sets []preparedSet, covered map[string]Ranges, opts applyOptions) (BatchResult, error) {
	var res BatchResult
	s.commitMu.Lock()
	defer s.commitMu.Unlock()
	if err := s.refuseAfterSyncFailure(); err != nil {
		return res, err
	}

	for _, ps := range sets {
		if ps.Origin == s.NodeID() {
			if _, err := s.rotateIfBehindLocked(ps.Seq); err != nil {
				return res, err
			}
		}
	}
	for origin, rs := range covered {
		if origin == s.NodeID() {
			if _, err := s.rotateIfBehindLocked(rs.Max()); err != nil {
				return res, err
			}
		}
	}

	ro := grocksdb.NewDefaultReadOptions()
	defer ro.Destroy()
	wb := &s.batch
	wb.reset()
	wb.sortFamily(s.cfID[cfIndex])
	ids := s.cfID
	put := func(name string, k, v []byte) { wb.put(ids[name], k, v) }

	s.bkMu.RLock()
	staged := make(map[string]Ranges)
	for _, ps := range sets {
		if _, ok := staged[ps.Origin]; !ok {
			staged[ps.Origin] = s.bk[ps.Origin]
		}
	}
	clearedNew := false
	for origin, rs := range covered {
		before := s.bk[origin]
		if _, ok := staged[origin]; !ok {
			staged[origin] = before
		}
		clearedNew = clearedNew || !before.ContainsAll(rs)
	}
	s.bkMu.RUnlock()

	// current is the batch's view of rows it read or wrote, so that two
	// sets of one batch touching the same row are ordered correctly.
	current := make(map[rowRef]*row)
	load := func(def *tableDef, key string) (*row, error) {
		ref := rowRef{def.name, key}
		if r, ok := current[ref]; ok {
			return r, nil
		}
		v, err := s.base.GetCF(ro, s.cfs[def.name], []byte(key))
		if err != nil {
			return nil, readError(def.name, err)
		}
		defer v.Free()
		var r *row
		if v.Exists() {
			d, err := decodeRow(v.Data())
			if err != nil {
				return nil, corruptError(def.name, fmt.Errorf("row %q: %w", key, err))
			}
			r = &d
		}
		current[ref] = r
		return r, nil
	}

	// The stored rows of every key the batch touches, read up front in
	// one MultiGet per table rather than one Get per change.
	if err := s.prefetchRows(ro, sets, current); err != nil {
		return res, err
	}

	nowMs := s.cfg.Now().UnixMilli()
	// Indexes continue from the last one written, which may be ahead of
	// the published one while local commits wait for their WAL sync.
	first := s.nextIndexLocked()
	index := first - 1
	type seenSet struct {
		origin string
		ahead  bool
	}
	var recorded []seenSet
	type fedSet struct {
		index uint64
		set   *preparedSet
	}
	var fed []fedSet
	for k := range sets {
		ps := &sets[k]
		if !opts.partialSets && staged[ps.Origin].Contains(ps.Seq) {
			res.Duplicates++
			s.counts.applyDuplicate.Add(1)
			res.Skipped += len(ps.Changes)
			continue
		}
		winners := 0
		for i, c := range ps.Changes {
			def := lookupTable(c.Table)
			old, err := load(def, c.Key)
			if err != nil {
				return BatchResult{}, err
			}
			switch {
			case old != nil && !old.version.Less(c.Version):
				res.Skipped++
				continue
			case old == nil && c.Version.HLC <= s.purgeFloor && def.class == ClassReplicated:
				res.Refused++
				continue
			case c.Expires > 0 && c.Expires <= nowMs:
				res.Refused++
				continue
			}
			nr := &row{version: c.Version, deleted: c.Deleted, rec: c.Value, expires: c.Expires}
			oldIdx, err := rowEntries(def, c.Key, old)
			if err != nil {
				return BatchResult{}, corruptError(c.Table, err)
			}
			newIdx := entriesOf(def, c.Key, nr, ps.idx[i])
			writeIndexDiff(wb, ids[cfIndex], oldIdx, newIdx)
			wb.key = append(wb.key[:0], c.Key...)
			wb.val = appendRow(wb.val[:0], *nr)
			wb.put(ids[c.Table], wb.key, wb.val)
			putCovering(func(k, v []byte) { wb.put(ids[cfIndex], k, v) }, newIdx, wb.val)
			if old != nil {
				wb.key = appendClogKey(wb.key[:0], old.version.Origin, old.version.Seq, def.id, c.Key)
				wb.del(ids[cfChangelog], wb.key)
			}
			wb.key = appendClogKey(wb.key[:0], c.Version.Origin, c.Version.Seq, def.id, c.Key)
			wb.put(ids[cfChangelog], wb.key, nil)
			current[rowRef{c.Table, c.Key}] = nr
			winners++
			res.Applied++
		}
		staged[ps.Origin] = staged[ps.Origin].Add(ps.Seq)
		ahead := time.Duration(ps.HLC.Millis()-nowMs)*time.Millisecond > s.cfg.MaxClockOffset
		recorded = append(recorded, seenSet{ps.Origin, ahead})
		res.Sets++
		if winners > 0 && !opts.noFeed {
			index++
			put(cfFeed, feedKey(index), feedRef(ps.Origin, ps.Seq))
			fed = append(fed, fedSet{index, ps})
		}
	}
	if res.Sets == 0 && !clearedNew {
		s.counts.applySkipped.Add(uint64(res.Skipped))
		return res, nil
	}
	for origin, rs := range covered {
		staged[origin] = staged[origin].Union(rs)
	}
	for origin, rs := range staged {
		put(cfMeta, bkKey(origin), rs.AppendBinary(nil))
	}
	wo := s.woAsync
	if opts.sync {
		wo = s.wo
	}
	if err := wb.write(s, wo); err != nil {
		return BatchResult{}, s.noteWriteError(writeError(err))
	}
	s.noteWriteOK()

	// Only now, after the commit, does anything count as seen.
	s.bkMu.Lock()
	for origin, rs := range staged {
		s.bk[origin] = rs
	}
	for _, r := range recorded {
		if r.ahead {
			s.skewOrigins[r.origin]++
			res.FarAhead++
		}
	}
	s.bkMu.Unlock()
	for _, ps := range sets {
		if _, err := s.clock.Update(ps.HLC); err != nil && res.FarAhead > 0 {
			s.log.Warn("change set from a clock far ahead: stored, local clock not moved past the bound",
				zap.String("origin", ps.Origin), zap.Uint64("seq", ps.Seq), zap.Error(err))
		}
	}
	s.counts.applySets.Add(uint64(res.Sets))
	s.counts.applyApplied.Add(uint64(res.Applied))
	s.counts.applySkipped.Add(uint64(res.Skipped))
	s.counts.applyRefused.Add(uint64(res.Refused))
	// The events are kept for the feed's subscribers before their indexes
	// are published (feed.go). A set of an import may arrive in parts, and
	// its event holds the rows of every part: it is read from disk.
	if !opts.partialSets {
		for _, f := range fed {
			if ev, ok := s.appliedEvent(f.index, &f.set.ChangeSet, current); ok {
				s.feedCache.putEvent(ev)
			}
		}
	}
	// Published at once, unless a local commit written before it still
	// waits for its WAL sync: then with that sync (groupcommit.go).
	if index >= first {
		s.writtenLocked(index, false)
		res.Index = index
	}
	return res, nil
}

// appliedEvent builds the feed event of applied set cs at index from
// current, the batch's rows after its writes: the rows that hold cs's
// version, in change-log order, which is what materializing the event
// right after the commit gives. A row a later set of the same batch
// overwrote is left out, as is a skipped or refused one. false: the event
// is too large for the feed cache. Records are copied: the caller owns
// cs's values, and the cache keeps the event.
func (s *Store) appliedEvent(index uint64, cs *ChangeSet, current map[rowRef]*row) (Event, bool) {
	holds := func(c *Change) *row {
		r := current[rowRef{c.Table, c.Key}]
		if r == nil || r.version.Origin != cs.Origin || r.version.Seq != cs.Seq {
			return nil
		}
		return r
	}
	n, recs, size := 0, 0, setSizeBase+len(cs.Origin)
	for i := range cs.Changes {
		c := &cs.Changes[i]
		if r := holds(c); r != nil {
			n++
			recs += len(r.rec)
			size += changeSize(c.Table, c.Key, r.rec, cs.Origin)
		}
	}
	if size > feedCacheMaxBytes {
		return Event{}, false
	}
	ev := Event{Index: index, Set: ChangeSet{Origin: cs.Origin, Seq: cs.Seq}}
	if n == 0 {
		return ev, true
	}
	buf := make([]byte, 0, recs)
	changes := make([]Change, 0, n)
	for i := range cs.Changes {
		c := &cs.Changes[i]
		r := holds(c)
		if r == nil {
			continue
		}
		ch := rowChange(lookupTable(c.Table), c.Key, r, s.keys)
		if ch.Value != nil {
			at := len(buf)
			buf = append(buf, ch.Value...)
			ch.Value = buf[at:len(buf):len(buf)]
		}
		changes = append(changes, ch)
	}
	slices.SortFunc(changes, clogOrder)
	ev.Set.HLC = changes[len(changes)-1].Version.HLC
	ev.Set.Changes = changes
	return ev, true
}

// prefetchRows loads into current the stored row (nil when absent) of
// every key that sets change, in one MultiGet per table.
func (s *Store) prefetchRows(ro *grocksdb.ReadOptions, sets []preparedSet, current map[rowRef]*row) error {
	// Keys per table, in the order of the schema.
	keys := make([][]string, len(schema))
	for _, ps := range sets {
		for _, c := range ps.Changes {
			ref := rowRef{c.Table, c.Key}
			if _, ok := current[ref]; ok {
				continue
			}
			current[ref] = nil
			r := tableRank(c.Table)
			keys[r] = append(keys[r], c.Key)
		}
	}
	for r, ks := range keys {
		table := schema[r].name
		err := multiGet(s.base, ro, s.cfs[table], ks, func(i int, v []byte) error {
			d, err := decodeRow(v)
			if err != nil {
				return corruptError(table, fmt.Errorf("row %q: %w", ks[i], err))
			}
			current[rowRef{table, ks[i]}] = &d
			return nil
		})
		if errors.Is(err, ErrCorrupt) {
			return err
		}
		if err != nil {
			return readError(table, err)
		}
	}
	return nil
}

// ClockSkew returns, per origin, how many change sets arrived with an HLC
// more than the maximum clock offset ahead of the local wall clock.
func (s *Store) ClockSkew() map[string]uint64 {
	s.bkMu.RLock()
	defer s.bkMu.RUnlock()
	out := make(map[string]uint64, len(s.skewOrigins))
	for o, n := range s.skewOrigins {
		out[o] = n
	}
	return out
}

// Answer is what ChangeSets returns: the change sets of one origin that
// still have rows, in seq order, and the seqs the answer covers
// completely. Every seq in Covered without a set in Sets is cleared (all
// its rows were overwritten by versions the requester gets from their own
// sets). A requester marks exactly Covered as seen after applying Sets.
type Answer struct {
	Origin  string
	Sets    []ChangeSet
	Covered Ranges
}

// ChangeSets answers a catch-up request for the seqs want of origin: the
// seqs it covers are want ∩ this store's bookkeeping for origin (a seq
// this store has not seen is never covered, so a requester cannot mark a
// gap as seen), cut after maxBytes of sets (<= 0: no limit; the requester
// asks again for the rest). All of it is read from one consistent
// snapshot taken together with the bookkeeping. A store that holds ranges
// only partly (a table under resync, an unfinished bootstrap) answers
// ErrNotReady.
func (s *Store) ChangeSets(ctx context.Context, origin string, want Ranges, maxBytes int) (Answer, error) {
	if err := validateKey("origin", origin); err != nil {
		return Answer{}, err
	}
	if err := s.enter(); err != nil {
		return Answer{}, err
	}
	defer s.leave()
	if err := s.serving(); err != nil {
		return Answer{}, err
	}
	// The snapshot and the bookkeeping copy are taken under the commit
	// mutex: nothing commits between them, so they describe the same
	// state.
	s.commitMu.Lock()
	snap := s.base.NewSnapshot()
	s.bkMu.RLock()
	have := s.bk[origin]
	s.bkMu.RUnlock()
	ticket := s.writtenTicketLocked()
	s.commitMu.Unlock()
	defer s.base.ReleaseSnapshot(snap)
	// The answer may hold local change sets: only synced ones leave.
	if err := s.awaitSync(ticket); err != nil {
		return Answer{}, err
	}
	ro := grocksdb.NewDefaultReadOptions()
	defer ro.Destroy()
	ro.SetSnapshot(snap)

	covered := want.Intersect(have)
	if err := ctx.Err(); err != nil {
		return Answer{}, err
	}
	sets, upTo, err := s.readChangeSets(ro, origin, covered, maxBytes)
	if err != nil {
		return Answer{}, err
	}
	for i := range sets {
		sets[i] = sets[i].withKeys(s.keys)
	}
	return Answer{Origin: origin, Sets: sets, Covered: covered.Intersect(Span(1, upTo))}, nil
}
