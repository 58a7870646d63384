package storage

import (
	"bytes"
	"context"
	"fmt"
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
			if err := s.verifyRange(r, &stop); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := s.verifyTables(TableNames()); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ListBackends(context.Background(), "", 1); err != nil {
		t.Fatal(err)
	}
}
