package replication

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/singularity-ng/singularity-edge/storage"
)

// rebuildFile, beside the store's RocksDB directory, marks a store that
// must discard its state at the next start (CompleteRebuild), after it
// handed its own writes to a peer. (The purge horizon, once a file here
// too, lives in the store's meta: storage.Store.PurgeHorizon.)
const rebuildFile = "REBUILD_REQUIRED"

// RocksConfig configures the adapter over the real store.
type RocksConfig struct {
	// TombstoneGrace is how old a tombstone must be before a purge may
	// remove it (on top of every member having seen it).
	TombstoneGrace time.Duration

	// Registerer, when set, receives the adapter's metrics: the lag
	// from a remote change set's commit on its origin to its event in
	// this node's feed.
	Registerer prometheus.Registerer
}

// DefaultRocksConfig returns the adapter defaults: tombstones live at
// least a day, so that a member down for hours still catches up
// incrementally.
func DefaultRocksConfig() RocksConfig {
	return RocksConfig{TombstoneGrace: 24 * time.Hour}
}

// RocksStore is the engine's Store over *storage.Store (RocksDB).
type RocksStore struct {
	s   *storage.Store
	cfg RocksConfig

	// awaiting is set while the store needs a bootstrap and has not
	// ingested one: applying pushes then would fill the bookkeeping of an
	// empty store, which would look bootstrapped after a restart.
	awaiting atomic.Bool

	visibleLag prometheus.Histogram
}

// NewRocksStore wraps an open store.
func NewRocksStore(s *storage.Store, cfg RocksConfig) (*RocksStore, error) {
	r := &RocksStore{s: s, cfg: cfg, visibleLag: prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "singularity_edge_replication_visible_lag_seconds",
		Help: "Time from a remote change set's commit on its origin (its HLC) to its event in this node's feed, " +
			"where the routing table and the API see it; includes the clock offset between the two nodes.",
		// Fine around the one- and two-second goals of replication lag.
		Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, .75, 1, 1.25, 1.5, 2, 3, 5, 10, 30, 60},
	})}
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(r.visibleLag); err != nil {
			return nil, fmt.Errorf("replication: registering the store adapter's metrics: %w", err)
		}
	}
	return r, nil
}

// NodeID implements Store.
func (r *RocksStore) NodeID() string { return r.s.NodeID() }

// ClusterID implements Store.
func (r *RocksStore) ClusterID() string { return r.s.ClusterID() }

// KeyFingerprint implements Store.
func (r *RocksStore) KeyFingerprint() []byte { return r.s.EncryptionKeyFingerprint() }

// Books implements Store.
func (r *RocksStore) Books(ctx context.Context) (Books, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	bk := r.s.Bookkeeping()
	out := make(Books, len(bk))
	for o, rs := range bk {
		out[o] = BookOf(fromRanges(rs))
	}
	return out, nil
}

// ChangeSets implements Store.
func (r *RocksStore) ChangeSets(ctx context.Context, origin string, want RangeSet, maxBytes int) (ChangeSetBatch, error) {
	// Tombstones up to the purge horizon may be gone: an answer there
	// could lack deletes.
	if h := r.s.PurgeHorizon()[origin]; h > 0 && len(want.Intersect(RangeSet{{1, h}})) > 0 {
		return ChangeSetBatch{}, fmt.Errorf("%w: %s seqs %v asked, tombstones purged up to %d", ErrTooStale, origin, want, h)
	}
	ans, err := r.s.ChangeSets(ctx, origin, toRanges(want), maxBytes)
	if err != nil {
		return ChangeSetBatch{}, mapErr(err)
	}
	out := ChangeSetBatch{Covered: fromRanges(ans.Covered), Sets: make([]EncodedSet, len(ans.Sets))}
	for i, cs := range ans.Sets {
		out.Sets[i] = encodeSet(cs)
	}
	return out, nil
}

func encodeSet(cs storage.ChangeSet) EncodedSet {
	return EncodedSet{Origin: cs.Origin, Seq: cs.Seq, HLC: uint64(cs.HLC), Data: cs.Marshal()}
}

// ApplyBatch implements Store: a push (every covered seq has its set)
// goes through the store's ApplyBatch in one commit; a catch-up answer,
// whose covered ranges include cleared seqs, through ApplyAnswer per
// origin.
func (r *RocksStore) ApplyBatch(ctx context.Context, b ApplyBatch) (ApplyResult, error) {
	if r.awaiting.Load() {
		return ApplyResult{}, fmt.Errorf("%w: awaiting a bootstrap", ErrNotReady)
	}
	sets := make([]storage.ChangeSet, 0, len(b.Sets))
	byOrigin := map[string][]storage.ChangeSet{}
	seqs := map[string]RangeSet{}
	for _, e := range b.Sets {
		cs, err := storage.UnmarshalChangeSet(e.Data)
		if err != nil {
			return ApplyResult{}, fmt.Errorf("change set %s/%d: %w", e.Origin, e.Seq, err)
		}
		if cs.Origin != e.Origin || cs.Seq != e.Seq {
			return ApplyResult{}, fmt.Errorf("%w: change set %s/%d framed as %s/%d", ErrBadFrame, cs.Origin, cs.Seq, e.Origin, e.Seq)
		}
		sets = append(sets, cs)
		byOrigin[cs.Origin] = append(byOrigin[cs.Origin], cs)
		seqs[cs.Origin] = seqs[cs.Origin].Union(RangeSet{{cs.Seq, cs.Seq}})
	}
	push := true
	for o, cov := range b.Covered {
		if cov.String() != seqs[o].String() {
			push = false
		}
	}
	var res ApplyResult
	if push {
		br, err := r.s.ApplyBatch(ctx, sets)
		if err != nil {
			return res, mapErr(err)
		}
		res.Applied = br.Sets - br.Duplicates
		return res, nil
	}
	for o, cov := range b.Covered {
		br, err := r.s.ApplyAnswer(ctx, storage.Answer{Origin: o, Sets: byOrigin[o], Covered: toRanges(cov)})
		if err != nil {
			return res, mapErr(err)
		}
		res.Applied += br.Sets - br.Duplicates
	}
	return res, nil
}

// LocalCommits implements Store over the change feed, which carries
// every commit on this node (applied ones too): only this node's own sets
// above afterSeq are delivered. The subscription starts a little before
// the newest commit, so that a commit made between the engine reading its
// bookkeeping and subscribing is still pushed; older ones reach peers by
// catch-up.
func (r *RocksStore) LocalCommits(ctx context.Context, afterSeq uint64) (Feed, error) {
	const overlap = 4096
	from := r.s.LastIndex()
	from -= min(from, overlap)
	// Events up to the newest at subscription are replayed (the
	// overlap): their lag was observed when they were new, if at all.
	replayed := r.s.LastIndex()
	sub := r.s.Subscribe(ctx, from)
	f := &rocksFeed{ch: make(chan EncodedSet, 64), done: make(chan struct{})}
	go func() {
		defer close(f.done)
		last := afterSeq
		for ev := range sub.Events() {
			if ev.Set.Origin != r.s.NodeID() {
				if ev.Index > replayed {
					r.visibleLag.Observe(max(0, time.Since(ev.Set.HLC.Time()).Seconds()))
				}
				continue
			}
			if ev.Set.Seq <= last {
				continue
			}
			last = ev.Set.Seq
			select {
			case f.ch <- encodeSet(ev.Set):
			case <-ctx.Done():
				f.err = ctx.Err()
				return
			}
		}
		f.err = sub.Err()
	}()
	return f, nil
}

type rocksFeed struct {
	ch   chan EncodedSet
	done chan struct{}
	err  error // written before done is closed
}

func (f *rocksFeed) C() <-chan EncodedSet  { return f.ch }
func (f *rocksFeed) Done() <-chan struct{} { return f.done }
func (f *rocksFeed) Err() error {
	select {
	case <-f.done:
		return f.err
	default:
		return nil
	}
}

// NeedsBootstrap implements Store: a store that holds nothing of any
// origin, or one whose ingest, first catch-up or table resync is
// unfinished (a crash mid-bootstrap, a table removed after corruption).
func (r *RocksStore) NeedsBootstrap(ctx context.Context) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	need := len(r.s.Bookkeeping()) == 0
	if err := r.s.Ready(); err != nil {
		if !errors.Is(err, storage.ErrNotReady) || errors.Is(err, storage.ErrCommitFailed) {
			return false, err
		}
		need = true
	}
	r.awaiting.Store(need)
	return need, nil
}

// MarkReady implements Store: the first catch-up after an ingest is done,
// and tables under resync are whole again.
func (r *RocksStore) MarkReady(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := r.s.MarkCaughtUp(); err != nil {
		return err
	}
	tables, err := r.s.TablesToResync()
	if err != nil {
		return err
	}
	for _, t := range tables {
		if err := r.s.MarkResynced(t); err != nil {
			return err
		}
	}
	r.awaiting.Store(false)
	return nil
}

// Snapshot implements Store.
func (r *RocksStore) Snapshot(ctx context.Context, w io.Writer) (SnapshotStats, error) {
	info, err := r.s.Snapshot(ctx, w)
	return SnapshotStats{Rows: info.Rows, Bytes: info.Bytes}, mapErr(err)
}

// Ingest implements Store. Once the rows are in, catch-up applies are
// accepted (the store stays not ready until MarkReady).
func (r *RocksStore) Ingest(ctx context.Context, rd io.Reader) (SnapshotStats, error) {
	info, err := r.s.Ingest(ctx, rd)
	if err != nil {
		return SnapshotStats{}, mapErr(err)
	}
	r.awaiting.Store(false)
	return SnapshotStats{Rows: info.Rows, Bytes: info.Bytes}, nil
}

// Purge implements Store. The store raises its purge horizon (the lowest
// watermark per origin over the members and this node) in the same batch
// as the tombstones it removes: every removed tombstone is at or below
// it, so a peer asking for seqs at or below it was not among the members
// and must rebuild.
func (r *RocksStore) Purge(ctx context.Context, watermarks map[string]map[string]uint64) (PurgeResult, error) {
	res, err := r.s.PurgeTombstones(ctx, watermarks, r.cfg.TombstoneGrace)
	return PurgeResult{Purged: res.Removed}, mapErr(err)
}

// SavePurgeMembers implements Store.
func (r *RocksStore) SavePurgeMembers(ctx context.Context, members map[string]PurgeMember) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	out := make(map[string]storage.PurgeMember, len(members))
	for id, m := range members {
		out[id] = storage.PurgeMember{Name: m.Name, Watermarks: m.Watermarks, HeardAt: m.HeardAt, Live: m.Live}
	}
	return mapErr(r.s.SavePurgeMembers(out))
}

// PurgeMembers implements Store.
func (r *RocksStore) PurgeMembers(ctx context.Context) (map[string]PurgeMember, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	saved, err := r.s.PurgeMembers()
	if err != nil {
		return nil, mapErr(err)
	}
	out := make(map[string]PurgeMember, len(saved))
	for id, m := range saved {
		out[id] = PurgeMember{Name: m.Name, Watermarks: m.Watermarks, HeardAt: m.HeardAt, Live: m.Live}
	}
	return out, nil
}

// Rebuild implements Store: it marks the store to be discarded at the
// next start (CompleteRebuild, before storage.Open), because a live
// RocksDB cannot drop its tables under its readers. The engine ends with
// ErrRebuilt; the agent then restarts in-process, closing the store first.
func (r *RocksStore) Rebuild(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return writeFileSync(filepath.Join(r.s.Dir(), rebuildFile), []byte(time.Now().UTC().Format(time.RFC3339)+"\n"))
}

// CompleteRebuild discards the state of the stopped store in cfg.Dir if a
// rebuild was requested: every table is emptied (storage.RemoveTable,
// which also renews the node id and resets the bookkeeping), so that the
// store needs a bootstrap when it opens. It reports whether it did.
func CompleteRebuild(cfg storage.Config) (bool, error) {
	marker := filepath.Join(cfg.Dir, rebuildFile)
	if _, err := os.Stat(marker); errors.Is(err, os.ErrNotExist) {
		return false, nil
	} else if err != nil {
		return false, err
	}
	for _, t := range storage.TableNames() {
		if err := storage.RemoveTable(cfg, t); err != nil {
			return false, fmt.Errorf("replication: rebuild: removing %s: %w", t, err)
		}
	}
	if err := os.Remove(marker); err != nil {
		return false, err
	}
	return true, nil
}

// ObserveOwnOrigin implements Store.
func (r *RocksStore) ObserveOwnOrigin(ctx context.Context, maxSeq uint64) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	return r.s.ObserveOwnSeq(maxSeq)
}

// mapErr turns the store's errors the engine acts on into the engine's.
func mapErr(err error) error {
	if err != nil && errors.Is(err, storage.ErrNotReady) && !errors.Is(err, ErrNotReady) {
		return fmt.Errorf("%w: %w", ErrNotReady, err)
	}
	return err
}

func toRanges(rs RangeSet) storage.Ranges {
	out := make(storage.Ranges, len(rs))
	for i, r := range rs {
		out[i] = storage.Range{Lo: r.Lo, Hi: r.Hi}
	}
	return out
}

func fromRanges(rs storage.Ranges) RangeSet {
	out := make(RangeSet, len(rs))
	for i, r := range rs {
		out[i] = Range{Lo: r.Lo, Hi: r.Hi}
	}
	return out
}

func writeFileSync(path string, b []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

var _ Store = (*RocksStore)(nil)
