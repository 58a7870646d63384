package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/linxGnu/grocksdb"
)

// The verification ranges of a table cover every key exactly once, also
// when big files are cut inside.
func TestVerifyRangesCoverEveryKey(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	s, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	const n = 3000
	fo := grocksdb.NewDefaultFlushOptions()
	defer fo.Destroy()
	for first := 0; first < n; first += 500 {
		mustUpdate(t, s, func(tx *Tx) error {
			for i := first; i < first+500; i++ {
				if err := tx.PutBackend(sampleBackend(fmt.Sprintf("be-%05d", i), "p")); err != nil {
					return err
				}
			}
			return nil
		})
		// A flush per batch: several SST files.
		if err := s.base.FlushCF(s.cfs[TableBackends], fo); err != nil {
			t.Fatal(err)
		}
	}
	defer s.Close()
	files := s.base.GetLiveFilesMetaData()
	for _, split := range []int64{verifySplitBytes, 1024} {
		ranges := tableRanges(TableBackends, files, split)
		if len(ranges) < 2 {
			t.Fatalf("split %d: %d ranges", split, len(ranges))
		}
		seen := 0
		for i, r := range ranges {
			if i > 0 && !bytes.Equal(ranges[i-1].upper, r.lower) {
				t.Fatalf("ranges %d and %d are not contiguous", i-1, i)
			}
			ro := grocksdb.NewDefaultReadOptions()
			if r.upper != nil {
				ro.SetIterateUpperBound(r.upper)
			}
			it := s.base.NewIteratorCF(ro, s.cfs[TableBackends])
			if r.lower != nil {
				it.Seek(r.lower)
			} else {
				it.SeekToFirst()
			}
			for ; it.Valid(); it.Next() {
				seen++
			}
			it.Close()
			ro.Destroy()
		}
		if ranges[0].lower != nil || ranges[len(ranges)-1].upper != nil || seen != n {
			t.Fatalf("split %d: %d ranges saw %d of %d keys", split, len(ranges), seen, n)
		}
		var stop atomic.Bool
		for _, r := range ranges {
			if err := s.verifyRange(context.Background(), r, &stop); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := s.verifyTables(context.Background(), TableNames()); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ListBackends(context.Background(), "", 1); err != nil {
		t.Fatal(err)
	}
}

// damageLargestSST overwrites bytes in the middle of family's largest SST
// file of the closed store in cfg.Dir.
func damageLargestSST(t *testing.T, cfg Config, family string) {
	t.Helper()
	cfg.SkipVerifyOnOpen, cfg.VerifyInBackground = true, false
	s, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var sst string
	var size int64
	for _, f := range s.base.GetLiveFilesMetaData() {
		if f.ColumnFamilyName == family && f.Size > size {
			sst, size = filepath.Join(cfg.Dir, f.Name), f.Size
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if sst == "" || size < 8192 {
		t.Fatalf("no %s SST file big enough (%q, %d bytes)", family, sst, size)
	}
	fh, err := os.OpenFile(sst, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	if _, err := fh.WriteAt(bytes.Repeat([]byte{0x5a}, 256), size/2); err != nil {
		t.Fatal(err)
	}
}

func verifyMarked(t *testing.T, dir string) bool {
	t.Helper()
	_, err := os.Stat(filepath.Join(dir, verifyPendingFile))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	return err == nil
}

// With Config.VerifyInBackground, Open returns without reading every
// family and VerifyDeferred does it later. Damage it finds is reported as
// ErrCorrupt naming the family, and the next Open verifies before it
// returns (failing for a table, rebuilding a derived family), as it does
// after a deferred verification that never completed.
func TestDeferredVerification(t *testing.T) {
	ctx := context.Background()
	newStore := func(t *testing.T) Config {
		cfg := testConfig(t, t.TempDir())
		s, err := Open(cfg)
		if err != nil {
			t.Fatal(err)
		}
		fill(t, s, "p", 2000)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		cfg.VerifyInBackground = true
		return cfg
	}

	t.Run("clean", func(t *testing.T) {
		cfg := newStore(t)
		s, err := Open(cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if !verifyMarked(t, cfg.Dir) {
			t.Fatal("no mark while the verification is owed")
		}
		if err := s.VerifyDeferred(ctx); err != nil {
			t.Fatal(err)
		}
		if verifyMarked(t, cfg.Dir) {
			t.Fatal("mark left after a clean verification")
		}
		if err := s.VerifyDeferred(ctx); err != nil {
			t.Fatalf("second call: %v", err)
		}
	})

	t.Run("interrupted", func(t *testing.T) {
		cfg := newStore(t)
		s, err := Open(cfg)
		if err != nil {
			t.Fatal(err)
		}
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if err := s.VerifyDeferred(cctx); !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled verification: %v", err)
		}
		s.Close()
		if !verifyMarked(t, cfg.Dir) {
			t.Fatal("mark removed by a verification that did not complete")
		}
		// The next Open owes nothing more: it verified before returning.
		s, err = Open(cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if verifyMarked(t, cfg.Dir) || s.verifyOwed.Load() {
			t.Fatal("Open after an interrupted verification did not verify")
		}
	})

	t.Run("damaged table", func(t *testing.T) {
		cfg := newStore(t)
		damageLargestSST(t, cfg, TablePools)
		s, err := Open(cfg)
		if err != nil {
			t.Fatalf("deferred open: %v", err)
		}
		err = s.VerifyDeferred(ctx)
		s.Close()
		if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), `table "pools"`) {
			t.Fatalf("deferred verification: %v", err)
		}
		if !verifyMarked(t, cfg.Dir) {
			t.Fatal("mark removed after damage was found")
		}
		if _, err := Open(cfg); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "singularity-edge db remove-table pools") {
			t.Fatalf("open after the damage was found: %v", err)
		}
	})

	t.Run("damaged index", func(t *testing.T) {
		cfg := newStore(t)
		damageLargestSST(t, cfg, cfIndex)
		s, err := Open(cfg)
		if err != nil {
			t.Fatalf("deferred open: %v", err)
		}
		err = s.VerifyDeferred(ctx)
		s.Close()
		if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), `"index"`) {
			t.Fatalf("deferred verification: %v", err)
		}
		s, err = Open(cfg)
		if err != nil {
			t.Fatalf("open after the damage was found: %v", err)
		}
		defer s.Close()
		if err := s.Verify(ctx); err != nil {
			t.Fatalf("index not rebuilt at open: %v", err)
		}
		if verifyMarked(t, cfg.Dir) {
			t.Fatal("mark left after the rebuild")
		}
		if bs, err := s.ListBackendsByPool(ctx, "p-003", "", 0); err != nil || len(bs) == 0 {
			t.Fatalf("index read after rebuild: %d, %v", len(bs), err)
		}
	})
}
