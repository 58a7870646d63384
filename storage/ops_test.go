package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fill writes pools, backends, certificates and observations, including
// updates and deletes, so that every table has live rows and tombstones.
func fill(t *testing.T, s *Store, prefix string, n int) {
	t.Helper()
	const per = MaxChangeSetRows / 4 // up to four rows per i
	for lo := 0; lo < n; lo += per {
		fillRange(t, s, prefix, lo, min(n, lo+per))
	}
}

func fillRange(t *testing.T, s *Store, prefix string, lo, hi int) {
	t.Helper()
	mustUpdate(t, s, func(tx *Tx) error {
		for i := lo; i < hi; i++ {
			name := fmt.Sprintf("%s-%03d", prefix, i)
			if err := tx.PutPool(samplePool(name)); err != nil {
				return err
			}
			if err := tx.PutBackend(sampleBackend(name, fmt.Sprintf("%s-%03d", prefix, i%7))); err != nil {
				return err
			}
			if err := tx.PutObservation(&Observation{BackendID: name, Healthy: i%2 == 0}); err != nil {
				return err
			}
			if s.keys.hasKey() {
				if err := tx.PutCertificate(sampleCert(name, name+".example.com", time.Now().Add(time.Duration(i)*time.Hour))); err != nil {
					return err
				}
			}
		}
		return nil
	})
	mustUpdate(t, s, func(tx *Tx) error {
		for i := lo; i < hi; i++ {
			if i%5 != 0 {
				continue
			}
			name := fmt.Sprintf("%s-%03d", prefix, i)
			if err := tx.DeleteBackend(name); err != nil {
				return err
			}
			p := samplePool(name)
			p.SSLDomain = "changed.example.com"
			if err := tx.PutPool(p); err != nil {
				return err
			}
		}
		return nil
	})
}

func TestTableStatsCompactAndRocksDBStats(t *testing.T) {
	s := openStore(t, func(c *Config) { c.BlockCacheSize = 16 << 20 })
	ctx := context.Background()
	fill(t, s, "p", 200)
	for _, table := range append(TableNames(), cfIndex) {
		if err := s.Compact(ctx, table); err != nil {
			t.Fatal(err)
		}
	}
	stats, err := s.TableStats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	byName := make(map[string]TableStats)
	for _, st := range stats {
		byName[st.Table] = st
		if st.BlockCacheCapacity != 16<<20 {
			t.Fatalf("%s: cache capacity %d", st.Table, st.BlockCacheCapacity)
		}
	}
	if len(stats) != len(TableNames())+len(internalFamilies()) {
		t.Fatalf("%d stats", len(stats))
	}
	if st := byName[TablePools]; st.EstimatedKeys < 150 || st.SSTBytes == 0 || st.Internal {
		t.Fatalf("pools stats %+v", st)
	}
	if st := byName[cfIndex]; !st.Internal || st.EstimatedKeys == 0 {
		t.Fatalf("index stats %+v", st)
	}
	out, err := s.RocksDBStats(TableBackends)
	if err != nil || !strings.Contains(out, "Compaction Stats") || !strings.Contains(out, TableBackends) {
		t.Fatalf("RocksDBStats: %v\n%s", err, out)
	}
	if _, err := s.RocksDBStats("nope"); !errors.Is(err, ErrUnknownTable) {
		t.Fatalf("unknown table: %v", err)
	}
	if err := s.Compact(ctx, "nope"); !errors.Is(err, ErrUnknownTable) {
		t.Fatalf("unknown table: %v", err)
	}
	info := s.Info()
	if !info.Running || info.NodeID != s.NodeID() || info.LastIndex != 2 || len(info.Tables) != len(schema) {
		t.Fatalf("info %+v", info)
	}
}

func TestBackupRestoreRoundTrip(t *testing.T) {
	ctx := context.Background()
	key := testKey(t)
	src := openStore(t, func(c *Config) { c.EncryptionKey = key })
	fill(t, src, "a", 50)
	backupDir := filepath.Join(t.TempDir(), "backups")
	first, err := src.Backup(ctx, backupDir)
	if err != nil {
		t.Fatal(err)
	}
	snap1 := filepath.Join(t.TempDir(), "snap1")
	if err := src.Checkpoint(ctx, snap1); err != nil {
		t.Fatal(err)
	}
	fill(t, src, "b", 50)
	second, err := src.Backup(ctx, backupDir)
	if err != nil {
		t.Fatal(err)
	}
	list, err := ListBackups(backupDir)
	if err != nil || len(list) != 2 || list[0].ID != first.ID || list[1].ID != second.ID || first.ID >= second.ID {
		t.Fatalf("ListBackups %v %v", list, err)
	}
	if second.NumFiles == 0 || second.Timestamp.IsZero() {
		t.Fatalf("backup info %+v", second)
	}
	// The store is open: restoring over it is refused.
	err = Restore(ctx, backupDir, src.Dir(), 0)
	t.Logf("restore over open store: %v", err)
	if err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("restore over an open store: %v", err)
	}

	// Backup 1 into a fresh dir equals the checkpoint taken with it.
	restored1 := filepath.Join(t.TempDir(), "r1")
	if err := Restore(ctx, backupDir, restored1, first.ID); err != nil {
		t.Fatal(err)
	}
	r1 := openStore(t, func(c *Config) { c.Dir = restored1; c.EncryptionKey = key })
	cp := openStore(t, func(c *Config) { c.Dir = snap1; c.EncryptionKey = key })
	assertSameRows(t, r1, cp)
	// A restored backup and a copied checkpoint both take a new node id:
	// the source's seqs are already held by its peers.
	if r1.NodeID() == src.NodeID() || cp.NodeID() == src.NodeID() || r1.NodeID() == cp.NodeID() || r1.LastIndex() != cp.LastIndex() {
		t.Fatalf("restored node %q index %d", r1.NodeID(), r1.LastIndex())
	}
	if c, err := r1.GetCertificate(ctx, "a-001"); err != nil || c.PrivateKeyPEM != testKeyPEM {
		t.Fatalf("restored certificate: %v", err)
	}

	// The latest backup over an existing, stopped store replaces it.
	other := filepath.Join(t.TempDir(), "other")
	o, err := Open(testConfig(t, other))
	if err != nil {
		t.Fatal(err)
	}
	fill(t, o, "zzz", 10)
	o.Close()
	if err := Restore(ctx, backupDir, other, 0); err != nil {
		t.Fatal(err)
	}
	r2 := openStore(t, func(c *Config) { c.Dir = other; c.EncryptionKey = key })
	assertSameRows(t, r2, src)
	if _, err := r2.GetPool(ctx, "zzz-001"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("old data survived the restore: %v", err)
	}

	if err := Restore(ctx, backupDir, t.TempDir(), 999); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown backup id: %v", err)
	}
	if _, err := ListBackups(t.TempDir()); !errors.Is(err, ErrNotFound) {
		t.Fatalf("not a backup dir: %v", err)
	}
	if err := src.Checkpoint(ctx, snap1); !errors.Is(err, ErrInvalid) {
		t.Fatalf("checkpoint into an existing dir: %v", err)
	}
}

func TestExportImport(t *testing.T) {
	ctx := context.Background()
	key := testKey(t)
	src := openStore(t, func(c *Config) { c.EncryptionKey = key; c.NodeID = "src" })
	fill(t, src, "x", 40)
	var buf bytes.Buffer
	n, err := src.Export(ctx, &buf)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != n+1 || !strings.Contains(lines[0], `"format":"singularity-edge-export"`) || !strings.Contains(lines[0], `"version":1`) {
		t.Fatalf("%d rows, %d lines, header %s", n, len(lines), lines[0])
	}
	if !strings.Contains(buf.String(), `"deleted":true`) {
		t.Fatal("export lacks tombstones")
	}
	export := buf.Bytes()

	// Into an empty store: equal row by row, versions included; the seqs
	// are recorded, so this store serves them to peers; nothing is
	// originated.
	dst := openStore(t, func(c *Config) { c.EncryptionKey = key; c.NodeID = "dst" })
	ctxSub, cancel := context.WithCancel(ctx)
	defer cancel()
	sub := dst.Subscribe(ctxSub, 0)
	applied, err := dst.Import(ctx, bytes.NewReader(export))
	if err != nil || applied != n {
		t.Fatalf("import: %d of %d, %v", applied, n, err)
	}
	assertSameRows(t, src, dst)
	checkIndexes(t, dst)
	if ev := <-sub.Events(); ev.Set.Origin != "src" || len(ev.Set.Changes) == 0 {
		t.Fatalf("import feed event: origin %s, %d changes", ev.Set.Origin, len(ev.Set.Changes))
	}
	if dst.Bookkeeping().Max("dst") != 0 || fmt.Sprint(dst.Bookkeeping()["src"]) != fmt.Sprint(src.Bookkeeping()["src"].Intersect(dst.Bookkeeping()["src"])) {
		t.Fatalf("import originated or claimed wrongly: %v", dst.Bookkeeping())
	}
	// Idempotent.
	applied, err = dst.Import(ctx, bytes.NewReader(export))
	if err != nil || applied != 0 {
		t.Fatalf("second import: %d, %v", applied, err)
	}
	// Into a store with newer local writes: those win.
	mustUpdate(t, dst, func(tx *Tx) error {
		p := samplePool("x-001")
		p.Algorithm = "newer"
		return tx.PutPool(p)
	})
	if _, err := dst.Import(ctx, bytes.NewReader(export)); err != nil {
		t.Fatal(err)
	}
	if p, _ := dst.GetPool(ctx, "x-001"); p.Algorithm != "newer" {
		t.Fatalf("import overwrote a newer row: %+v", p)
	}
	// A store with another key refuses the sealed keys and stores nothing.
	wrong := openStore(t, func(c *Config) { c.EncryptionKey = testKey(t) })
	if _, err := wrong.Import(ctx, bytes.NewReader(export)); !errors.Is(err, ErrEncryptionKey) {
		t.Fatalf("import with another key: %v", err)
	}
	if wrong.LastIndex() != 0 {
		t.Fatal("failed import stored rows")
	}
	bad := map[string]string{
		"empty":          "",
		"no header":      `{"table":"pools"}` + "\n",
		"future version": `{"format":"singularity-edge-export","version":9}` + "\n",
		"bad line":       `{"format":"singularity-edge-export","version":1}` + "\n{nope\n",
		"unknown table":  `{"format":"singularity-edge-export","version":1}` + "\n" + `{"table":"x","key":"k","version":{"hlc":1,"origin":"o","seq":1},"row":{}}` + "\n",
		"key mismatch":   `{"format":"singularity-edge-export","version":1}` + "\n" + `{"table":"pools","key":"k","version":{"hlc":1,"origin":"o","seq":1},"row":{"name":"other"}}` + "\n",
	}
	empty := openStore(t)
	for name, in := range bad {
		if _, err := empty.Import(ctx, strings.NewReader(in)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if empty.LastIndex() != 0 {
		t.Fatal("bad import stored rows")
	}
}

// A damaged SST file of one table makes Open fail with an error that names
// the table and the way out.
func TestCorruptTableNamedAtOpen(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	s, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	fill(t, s, "p", 2000)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	cfg.SkipVerifyOnOpen = true
	s, err = Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var sst string
	var size int64
	for _, f := range s.base.GetLiveFilesMetaData() {
		if f.ColumnFamilyName == TablePools && f.Size > size {
			sst, size = filepath.Join(dir, f.Name), f.Size
		}
	}
	s.Close()
	if sst == "" || size < 8192 {
		t.Fatalf("no pools SST file big enough (%q, %d bytes)", sst, size)
	}
	fh, err := os.OpenFile(sst, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fh.WriteAt(bytes.Repeat([]byte{0x5a}, 256), size/2); err != nil {
		t.Fatal(err)
	}
	fh.Close()

	cfg.SkipVerifyOnOpen = false
	_, err = Open(cfg)
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("open: %v", err)
	}
	t.Logf("open error: %v", err)
	for _, want := range []string{`table "pools"`, "singularity-edge db restore", "singularity-edge db remove-table pools --yes", "let peers resync it"} {
		if !strings.Contains(err.Error(), want) {
			t.Fatalf("error %q lacks %q", err, want)
		}
	}
	// Without the verification at open, reading the table names it too.
	cfg.SkipVerifyOnOpen = true
	s, err = Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.ListPools(context.Background(), "", 0)
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), `table "pools"`) {
		t.Fatalf("list: %v", err)
	}
	// Other tables still work.
	backends, err := s.ListBackends(context.Background(), "", 0)
	if err != nil {
		t.Fatalf("backends: %v", err)
	}
	s.Close()

	// The way out without a backup: remove the table, then resync it.
	if err := RemoveTable(cfg, TablePools); err != nil {
		t.Fatal(err)
	}
	cfg.SkipVerifyOnOpen = false
	s, err = Open(cfg)
	if err != nil {
		t.Fatalf("open after RemoveTable: %v", err)
	}
	ctx := context.Background()
	checkIndexes(t, s)
	if pools, err := s.ListPools(ctx, "", 0); err != nil || len(pools) != 0 {
		t.Fatalf("pools after removal: %d, %v", len(pools), err)
	}
	if after, err := s.ListBackends(ctx, "", 0); err != nil || len(after) != len(backends) {
		t.Fatalf("backends after removal: %d of %d, %v", len(after), len(backends), err)
	}
	if tables, err := s.TablesToResync(); err != nil || len(tables) != 1 || tables[0] != TablePools {
		t.Fatalf("TablesToResync = %v, %v", tables, err)
	}
	mustUpdate(t, s, func(tx *Tx) error { return tx.PutPool(samplePool("p-000")) })
	checkIndexes(t, s)
	if err := s.MarkResynced(TablePools); err != nil {
		t.Fatal(err)
	}
	if tables, _ := s.TablesToResync(); len(tables) != 0 {
		t.Fatalf("still marked: %v", tables)
	}
	s.Close()
}

// A damaged index (or change-log) family no longer lets the store start
// "ready" while every write fails: Open verifies it, rebuilds it from the
// tables, and the store reads, writes and verifies clean afterwards.
func TestDamagedIndexFamilyRebuiltAtOpen(t *testing.T) {
	for _, family := range []string{cfIndex, cfChangelog} {
		t.Run(family, func(t *testing.T) {
			dir := t.TempDir()
			cfg := testConfig(t, dir)
			s, err := Open(cfg)
			if err != nil {
				t.Fatal(err)
			}
			fill(t, s, "p", 2000)
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			cfg.SkipVerifyOnOpen = true
			s, err = Open(cfg)
			if err != nil {
				t.Fatal(err)
			}
			var sst string
			var size int64
			for _, f := range s.base.GetLiveFilesMetaData() {
				if f.ColumnFamilyName == family && f.Size > size {
					sst, size = filepath.Join(dir, f.Name), f.Size
				}
			}
			s.Close()
			if sst == "" || size < 8192 {
				t.Fatalf("no %s SST file big enough (%q, %d bytes)", family, sst, size)
			}
			fh, err := os.OpenFile(sst, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := fh.WriteAt(bytes.Repeat([]byte{0x5a}, 256), size/2); err != nil {
				t.Fatal(err)
			}
			fh.Close()

			cfg.SkipVerifyOnOpen = false
			s, err = Open(cfg)
			if err != nil {
				t.Fatalf("open with a damaged %s family: %v", family, err)
			}
			defer s.Close()
			ctx := context.Background()
			if err := s.Verify(ctx); err != nil {
				t.Fatalf("after rebuild: %v", err)
			}
			if err := s.Ready(); err != nil {
				t.Fatalf("not ready after rebuild: %v", err)
			}
			if bs, err := s.ListBackendsByPool(ctx, "p-003", "", 0); err != nil || len(bs) == 0 {
				t.Fatalf("index read after rebuild: %d, %v", len(bs), err)
			}
			if _, err := s.Update(ctx, func(tx *Tx) error { return tx.PutBackend(sampleBackend("new", "p-003")) }); err != nil {
				t.Fatalf("write after rebuild: %v", err)
			}
			if sets, err := changeSetsOf(s, s.NodeID()); err != nil || len(sets) == 0 {
				t.Fatalf("change log after rebuild: %d, %v", len(sets), err)
			}
		})
	}
}
