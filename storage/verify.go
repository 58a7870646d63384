package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/linxGnu/grocksdb"
	"go.uber.org/zap"
)

// verifySplitBytes is about how much SST data one verification range
// covers: small enough that every CPU gets a share of one big table, large
// enough that the per-range iterator setup is noise.
const verifySplitBytes = 8 << 20

// verifyRange is one key range [lower, upper) of a table to verify; nil
// bounds are open.
type verifyRange struct {
	table        string
	lower, upper []byte
}

// verifyTables reads every entry of the tables with checksum verification,
// without filling the block cache, and fails with ErrCorrupt naming the
// first damaged table found. The key space of each table is cut into
// ranges at the boundaries of its SST files (and inside big files), and
// the ranges are read concurrently, one goroutine per CPU: together they
// cover every key, so every data block of every file is read, as a single
// scan would, in a fraction of the time.
func (s *Store) verifyTables(ctx context.Context, tables []string) error {
	var ranges []verifyRange
	files := s.base.GetLiveFilesMetaData()
	for _, table := range tables {
		ranges = append(ranges, tableRanges(table, files, verifySplitBytes)...)
	}
	workers := min(runtime.GOMAXPROCS(0), len(ranges))
	next := atomic.Int64{}
	var (
		failed   atomic.Bool
		mu       sync.Mutex
		firstErr error
		wg       sync.WaitGroup
	)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !failed.Load() {
				i := int(next.Add(1) - 1)
				if i >= len(ranges) {
					return
				}
				if err := s.verifyRange(ctx, ranges[i], &failed); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					failed.Store(true)
					return
				}
			}
		}()
	}
	wg.Wait()
	return firstErr
}

// verifyRange reads every entry of one range; stop ends it early when
// another range already failed, ctx with its error.
func (s *Store) verifyRange(ctx context.Context, r verifyRange, stop *atomic.Bool) error {
	ro := grocksdb.NewDefaultReadOptions()
	defer ro.Destroy()
	ro.SetVerifyChecksums(true)
	ro.SetFillCache(false)
	ro.SetReadaheadSize(2 << 20)
	if r.upper != nil {
		ro.SetIterateUpperBound(r.upper)
	}
	it := s.base.NewIteratorCF(ro, s.cfs[r.table])
	defer it.Close()
	if r.lower != nil {
		it.Seek(r.lower)
	} else {
		it.SeekToFirst()
	}
	for n := 0; it.Valid(); n++ {
		if n%4096 == 0 {
			if stop.Load() {
				return nil
			}
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		it.Next()
	}
	if err := it.Err(); err != nil {
		return corruptError(r.table, err)
	}
	return nil
}

// tableRanges cuts the key space of table into contiguous ranges at the
// smallest key of each of its SST files and, inside a file bigger than
// splitBytes, at evenly interpolated keys. The first range starts at
// the beginning and the last is open-ended, so the ranges cover every key
// whatever the files hold.
func tableRanges(table string, files []grocksdb.LiveFileMetadata, splitBytes int64) []verifyRange {
	var cuts [][]byte
	for _, f := range files {
		if f.ColumnFamilyName != table || len(f.SmallestKey) == 0 {
			continue
		}
		cuts = append(cuts, f.SmallestKey)
		if parts := int(f.Size / splitBytes); parts > 1 {
			cuts = append(cuts, interpolateKeys(f.SmallestKey, f.LargestKey, parts)...)
		}
	}
	sort.Slice(cuts, func(i, j int) bool { return bytes.Compare(cuts[i], cuts[j]) < 0 })
	out := []verifyRange{{table: table}}
	for _, c := range cuts {
		last := &out[len(out)-1]
		if last.lower != nil && bytes.Compare(c, last.lower) <= 0 {
			continue
		}
		last.upper = c
		out = append(out, verifyRange{table: table, lower: c})
	}
	return out
}

// interpolateKeys returns parts-1 keys evenly spaced between lo and hi,
// reading both as big-endian numbers padded to the same length.
func interpolateKeys(lo, hi []byte, parts int) [][]byte {
	width := max(len(lo), len(hi)) + 1
	pad := func(b []byte) *big.Int {
		p := make([]byte, width)
		copy(p, b)
		return new(big.Int).SetBytes(p)
	}
	a, b := pad(lo), pad(hi)
	if a.Cmp(b) >= 0 {
		return nil
	}
	span := new(big.Int).Sub(b, a)
	out := make([][]byte, 0, parts-1)
	for i := 1; i < parts; i++ {
		k := new(big.Int).Mul(span, big.NewInt(int64(i)))
		k.Div(k, big.NewInt(int64(parts)))
		k.Add(k, a)
		out = append(out, bytes.TrimRight(k.FillBytes(make([]byte, width)), "\x00"))
	}
	return out
}

// verifyFamilies verifies every column family at Open. The tables and
// meta hold what cannot be derived, so damage there fails Open with the
// way out (restore, or remove-table and resync). The index family and the
// change log are functions of the tables and the feed is node-local, so
// damage there is repaired here: the family is recreated and rebuilt from
// the tables (the feed restarts empty), and Open goes on.
func (s *Store) verifyFamilies() error {
	ctx := context.Background()
	if err := s.verifyTables(ctx, append(TableNames(), cfMeta)); err != nil {
		return err
	}
	for _, cf := range []string{cfIndex, cfChangelog, cfFeed} {
		err := s.verifyTables(ctx, []string{cf})
		if err == nil {
			continue
		}
		s.log.Error("damaged internal column family: rebuilding it from the tables", zap.String("family", cf), zap.Error(err))
		if err := s.repairFamily(cf); err != nil {
			return err
		}
	}
	return nil
}

// repairFamily recreates a derived family (index, changelog, feed).
func (s *Store) repairFamily(cf string) error {
	switch cf {
	case cfIndex:
		_, err := s.rebuildDerived(true, false)
		return err
	case cfChangelog:
		_, err := s.rebuildDerived(false, true)
		return err
	case cfFeed:
		if err := s.replaceFamily(cfFeed); err != nil {
			return err
		}
		s.lastIndex.Store(0)
		s.firstIndex.Store(1)
		return nil
	}
	return fmt.Errorf("%w: %q is not a derived family", ErrInvalid, cf)
}

// RebuildIndexes recreates the index family and the change log from the
// tables in the stopped store in cfg.Dir: the remedy for a damaged index
// or change-log family named in ErrCorrupt messages (Open also does it by
// itself when its verification finds the damage).
func RebuildIndexes(cfg Config) error {
	s, err := openOffline(cfg)
	if err != nil {
		return err
	}
	_, err = s.rebuildDerived(true, true)
	if cerr := s.closeDB(true); err == nil {
		err = cerr
	}
	return err
}

// verifyPendingFile, in the data directory, records that a verification
// Open deferred (Config.VerifyInBackground) has not completed clean: it
// was interrupted, or it found damage. An Open that finds it verifies
// before it returns, as without the option, and so repairs a damaged
// derived family or fails with the way out for a damaged table.
const verifyPendingFile = "VERIFY_PENDING"

// deferVerification writes the mark that a verification is owed, synced,
// so that a crash before it completes makes the next Open verify.
func (s *Store) deferVerification() error {
	path := filepath.Join(s.cfg.Dir, verifyPendingFile)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("storage: mark the deferred verification: %w", err)
	}
	_, err = f.WriteString("a verification deferred at Open has not completed; the next Open verifies every family\n")
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = syncDir(s.cfg.Dir)
	}
	if err != nil {
		return fmt.Errorf("storage: mark the deferred verification: %w", err)
	}
	s.verifyOwed.Store(true)
	return nil
}

// verificationPending reports whether an earlier deferred verification
// did not complete clean.
func (s *Store) verificationPending() (bool, error) {
	_, err := os.Stat(filepath.Join(s.cfg.Dir, verifyPendingFile))
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, os.ErrNotExist):
		return false, nil
	}
	return false, fmt.Errorf("storage: look for a deferred verification: %w", err)
}

// clearVerificationMark removes the mark once every family verified clean.
func (s *Store) clearVerificationMark() error {
	err := os.Remove(filepath.Join(s.cfg.Dir, verifyPendingFile))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("storage: clear the deferred verification mark: %w", err)
	}
	return nil
}

// VerifyDeferred runs the checksum verification that Open left to the
// caller (Config.VerifyInBackground), while the store serves: every
// column family is read as Open would. When all are sound it removes the
// mark that makes the next Open verify. A damaged family fails it with
// ErrCorrupt naming the family and the way out, and the mark stays, so
// that a restart verifies at Open: that rebuilds a derived family from the
// tables, or fails with the way out for a table, exactly as a
// verification at Open would have. The caller must stop serving on that
// error. Until it returns, reads are still safe: each verifies the
// checksums of the blocks it reads, so a damaged block fails the read
// rather than serving wrong data.
//
// It returns nil at once when no verification is owed (Open verified, or
// SkipVerifyOnOpen), and ctx.Err() or ErrClosed when stopped early.
func (s *Store) VerifyDeferred(ctx context.Context) error {
	if !s.verifyOwed.Load() {
		return nil
	}
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		// Close waits for running operations: end this one early.
		select {
		case <-s.closing:
			cancel()
		case <-ctx.Done():
		}
	}()
	start := time.Now()
	if err := s.verifyTables(ctx, append(append(TableNames(), cfMeta), cfIndex, cfChangelog, cfFeed)); err != nil {
		if errors.Is(err, ErrCorrupt) {
			return err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return err
	}
	if err := s.clearVerificationMark(); err != nil {
		return err
	}
	s.verifyOwed.Store(false)
	s.log.Info("every column family verified", zap.Duration("took", time.Since(start).Round(time.Millisecond)))
	return nil
}

// syncDir makes a file created or removed in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
