package storage

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"testing"
)

// The block cache, which also holds index and filter blocks, stays within
// its configured capacity while far more data than fits is read.
func TestBlockCacheBoundsReads(t *testing.T) {
	const capacity = 512 << 10
	s := openStore(t, func(c *Config) { c.BlockCacheSize = capacity; c.WriteBufferSize = 1 << 20 })
	ctx := context.Background()
	for batch := 0; batch < 25; batch++ {
		mustUpdate(t, s, func(tx *Tx) error {
			for i := 0; i < 1000; i++ {
				b := sampleBackend(fmt.Sprintf("be-%d-%05d", batch, i), fmt.Sprintf("pool-%d", i%50))
				note := make([]byte, 64)
				_, _ = rand.Read(note)
				b.Metadata = map[string]string{"note": hex.EncodeToString(note)} // incompressible
				if err := tx.PutBackend(b); err != nil {
					return err
				}
			}
			return nil
		})
	}
	for _, table := range []string{TableBackends, cfIndex} {
		if err := s.Compact(ctx, table); err != nil {
			t.Fatal(err)
		}
	}
	stats, err := s.TableStats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var sst uint64
	for _, st := range stats {
		sst += st.SSTBytes
	}
	if sst < 4*capacity {
		t.Fatalf("only %d bytes of SST files: the test needs data well beyond the cache", sst)
	}
	for round := 0; round < 3; round++ {
		all, err := s.ListBackends(ctx, "", 0)
		if err != nil || len(all) != 25000 {
			t.Fatalf("list: %d, %v", len(all), err)
		}
		for p := 0; p < 50; p += 7 {
			if _, err := s.ListBackendsByPool(ctx, fmt.Sprintf("pool-%d", p), "", 0); err != nil {
				t.Fatal(err)
			}
		}
		stats, _ = s.TableStats(ctx)
		if stats[0].BlockCacheUsage > stats[0].BlockCacheCapacity || stats[0].BlockCacheCapacity != capacity {
			t.Fatalf("block cache usage %d above capacity %d", stats[0].BlockCacheUsage, stats[0].BlockCacheCapacity)
		}
	}
	t.Logf("SST %d bytes, block cache usage %d of %d", sst, stats[0].BlockCacheUsage, stats[0].BlockCacheCapacity)
}
