package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// fillMixed writes pools, backends, certificates, observations and
// tombstones in transactions within the change-set bound.
func fillMixed(t testing.TB, s *Store, prefix string, n int) {
	t.Helper()
	for lo := 0; lo < n; lo += 200 {
		mustUpdate(t, s, func(tx *Tx) error {
			for i := lo; i < min(n, lo+200); i++ {
				name := fmt.Sprintf("%s-%05d", prefix, i)
				if err := tx.PutBackend(sampleBackend(name, fmt.Sprintf("%s-pool-%d", prefix, i%7))); err != nil {
					return err
				}
				if i%10 == 0 {
					if err := tx.PutPool(samplePool(name)); err != nil {
						return err
					}
					if err := tx.PutCertificate(sampleCert(name, name+".example.com", time.Now().Add(time.Duration(i)*time.Hour))); err != nil {
						return err
					}
					if err := tx.PutObservation(&Observation{BackendID: name, Healthy: i%20 == 0}); err != nil {
						return err
					}
				}
			}
			return nil
		})
		mustUpdate(t, s, func(tx *Tx) error {
			return tx.DeleteBackend(fmt.Sprintf("%s-%05d", prefix, lo))
		})
	}
}

// Snapshot a store while writes continue, ingest into an empty store,
// catch up: both stores hold the same rows (versions, tombstones), the new
// store originated nothing, and it is not ready until MarkCaughtUp.
func TestSnapshotIngestCatchUp(t *testing.T) {
	ctx := context.Background()
	key := testKey(t)
	src := openStore(t, func(c *Config) { c.NodeID = "src"; c.EncryptionKey = key })
	fillMixed(t, src, "a", 3000)
	var buf bytes.Buffer
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := src.Update(ctx, func(tx *Tx) error { return tx.PutPool(samplePool(fmt.Sprint("during-", i%50))) }); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	info, err := src.Snapshot(ctx, &buf)
	close(stop)
	wg.Wait()
	if err != nil || info.Rows < 3000 || info.ClusterID != src.ClusterID() {
		t.Fatalf("snapshot %+v %v", info, err)
	}
	dst := openStore(t, func(c *Config) { c.NodeID = "dst"; c.EncryptionKey = key })
	got, err := dst.Ingest(ctx, bytes.NewReader(buf.Bytes()))
	if err != nil || got.Rows != info.Rows {
		t.Fatalf("ingest %+v %v", got, err)
	}
	if err := dst.Ready(); !errors.Is(err, ErrNotReady) {
		t.Fatalf("ready before catch-up: %v", err)
	}
	// Ingest turned compaction and the write-stall triggers off for its
	// families; they are back as the store opened them.
	for family, opts := range persistedFamilyOptions(t, dst.Dir()) {
		if opts["disable_auto_compactions"] != "false" || opts["level0_slowdown_writes_trigger"] != "20" ||
			opts["level0_stop_writes_trigger"] != "36" || opts["hard_pending_compaction_bytes_limit"] == "0" {
			t.Fatalf("family %s after ingest: %v", family, opts)
		}
	}
	if _, err := dst.ChangeSets(ctx, "src", Span(1, 1), 0); !errors.Is(err, ErrNotReady) {
		t.Fatalf("served before catch-up: %v", err)
	}
	if dst.ClusterID() != src.ClusterID() {
		t.Fatalf("cluster id %s, want %s", dst.ClusterID(), src.ClusterID())
	}
	if err := dst.Verify(ctx); err != nil {
		t.Fatal(err)
	}
	catchUp(t, dst, src)
	if err := dst.MarkCaughtUp(); err != nil {
		t.Fatal(err)
	}
	if err := dst.Ready(); err != nil {
		t.Fatalf("not ready after catch-up: %v", err)
	}
	assertSameRows(t, src, dst)
	if fmt.Sprint(dst.Bookkeeping()) != fmt.Sprint(src.Bookkeeping()) {
		t.Fatalf("bookkeeping %v vs %v", dst.Bookkeeping(), src.Bookkeeping())
	}
	if dst.Bookkeeping().Max("dst") != 0 || dst.Info().LastIndex > src.Info().LastIndex {
		t.Fatalf("ingest originated something: %v", dst.Bookkeeping())
	}
	if c, err := dst.GetCertificate(ctx, "a-00010"); err != nil || c.PrivateKeyPEM != testKeyPEM {
		t.Fatalf("certificate after ingest: %v", err)
	}
	// A store with local writes refuses an ingest.
	if _, err := src.Ingest(ctx, bytes.NewReader(buf.Bytes())); !errors.Is(err, ErrInvalid) {
		t.Fatalf("ingest into a store with local writes: %v", err)
	}
	// Another cluster's snapshot is refused by a node configured for its own.
	other := openStore(t, func(c *Config) { c.ClusterID = "other-cluster" })
	if _, err := other.Ingest(ctx, bytes.NewReader(buf.Bytes())); !errors.Is(err, ErrClusterMismatch) {
		t.Fatalf("ingest from another cluster: %v", err)
	}
}

// A damaged or cut snapshot is refused with an error, never half-adopted
// as ready.
func TestIngestRefusesDamagedSnapshot(t *testing.T) {
	ctx := context.Background()
	key := testKey(t)
	src := openStore(t, func(c *Config) { c.EncryptionKey = key })
	fillMixed(t, src, "a", 300)
	var buf bytes.Buffer
	if _, err := src.Snapshot(ctx, &buf); err != nil {
		t.Fatal(err)
	}
	full := buf.Bytes()
	flipped := bytes.Clone(full)
	flipped[len(flipped)/2] ^= 0x40
	for name, b := range map[string][]byte{"cut": full[:len(full)-10], "flipped": flipped, "empty": nil} {
		dst := openStore(t, func(c *Config) { c.EncryptionKey = key })
		if _, err := dst.Ingest(ctx, bytes.NewReader(b)); err == nil {
			t.Fatalf("%s snapshot ingested", name)
		}
		if len(dst.Bookkeeping()) != 0 {
			t.Fatalf("%s: bookkeeping adopted from a failed ingest", name)
		}
		if name != "empty" && dst.Ready() == nil {
			t.Fatalf("%s: ready after a failed ingest", name)
		}
		// A second ingest of a good snapshot completes.
		if _, err := dst.Ingest(ctx, bytes.NewReader(full)); err != nil {
			t.Fatalf("%s: second ingest: %v", name, err)
		}
		if err := dst.MarkCaughtUp(); err != nil {
			t.Fatal(err)
		}
		assertSameRows(t, src, dst)
	}
}

// FuzzSnapshotFrames feeds arbitrary bytes to the snapshot frame reader
// and the header and rows decoders: no panic, no allocation beyond the
// frame bound, and a decoded header re-encodes to a header that decodes
// the same.
func FuzzSnapshotFrames(f *testing.F) {
	h := snapshotHeader{format: snapshotFormat, cluster: "c", source: "s", purgeFloor: 9,
		bk: Bookkeeping{"a": Span(1, 10), "b": Ranges{{1, 2}, {5, 5}}}}
	var buf bytes.Buffer
	fw := &frameWriter{w: bufioWriter(&buf)}
	_ = fw.frame(frameHeader, h.encode())
	_ = fw.frame(frameRows, append([]byte{3, 1, 'k', 3}, encodeRow(row{version: ver(5, "a", 1), deleted: true})[:3]...))
	_ = fw.frame(frameEnd, []byte{8, 1})
	_ = fw.w.Flush()
	f.Add(buf.Bytes())
	f.Add([]byte{'H', 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, b []byte) {
		fr := &frameReader{r: bufioReader(b)}
		var rows []snapshotRow
		for i := 0; i < 64; i++ {
			typ, payload, err := fr.next()
			if err != nil {
				return
			}
			if len(payload) > maxSnapshotFrame {
				t.Fatalf("frame of %d bytes", len(payload))
			}
			switch typ {
			case frameHeader:
				h, err := decodeSnapshotHeader(payload)
				if err != nil {
					continue
				}
				again, err := decodeSnapshotHeader(h.encode())
				if err != nil || fmt.Sprint(again) != fmt.Sprint(h) {
					t.Fatalf("header round trip: %v vs %v (%v)", again, h, err)
				}
			case frameRows:
				_, rows, _ = decodeRowsFrame(payload, rows)
				for _, r := range rows {
					_, _ = decodeRow(r.value)
				}
			}
		}
	})
}

// persistedFamilyOptions reads the newest OPTIONS file RocksDB wrote in
// dir (it writes one on every option change): per column family, the
// options that an ingest relaxes.
func persistedFamilyOptions(t *testing.T, dir string) map[string]map[string]string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "OPTIONS-*"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no OPTIONS file in %s: %v", dir, err)
	}
	newest := files[0]
	for _, f := range files[1:] {
		if len(f) > len(newest) || (len(f) == len(newest) && f > newest) {
			newest = f
		}
	}
	data, err := os.ReadFile(newest)
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]map[string]string)
	var cur map[string]string
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if name, ok := strings.CutPrefix(line, "[CFOptions \""); ok {
			cur = make(map[string]string)
			out[strings.TrimSuffix(name, "\"]")] = cur
			continue
		}
		if strings.HasPrefix(line, "[") {
			cur = nil
			continue
		}
		if k, v, ok := strings.Cut(line, "="); ok && cur != nil {
			switch k {
			case "disable_auto_compactions", "level0_slowdown_writes_trigger", "level0_stop_writes_trigger", "hard_pending_compaction_bytes_limit":
				cur[k] = v
			}
		}
	}
	if len(out) == 0 {
		t.Fatalf("no column families in %s", newest)
	}
	return out
}
