package storage

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A damaged SST footer (bad magic number, unreadable format version or
// block handles) is the damage RocksDB meets while opening table files,
// before any read. It must not make the store unopenable or blame the
// MANIFEST: Open names the table and the remedies, the named remedy
// (remove-table) works on it, and a damaged index family is rebuilt.
func TestDamagedSSTFooter(t *testing.T) {
	for _, tc := range []struct {
		name   string
		family string
		bytes  int64 // overwritten at the end of the family's largest file
	}{
		{"table magic number", TablePools, 8},
		{"table footer", TablePools, 53},
		{"index footer", cfIndex, 53},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg := testConfig(t, dir)
			s, err := Open(cfg)
			if err != nil {
				t.Fatal(err)
			}
			fill(t, s, "p", 2000)
			if err := s.Close(); err != nil { // flushes every family to SST files
				t.Fatal(err)
			}
			skip := cfg
			skip.SkipVerifyOnOpen = true
			if s, err = Open(skip); err != nil {
				t.Fatal(err)
			}
			var sst string
			var size int64
			for _, f := range s.base.GetLiveFilesMetaData() {
				if f.ColumnFamilyName == tc.family && f.Size > size {
					sst, size = filepath.Join(dir, f.Name), f.Size
				}
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			if sst == "" || size < 1024 {
				t.Fatalf("no %s SST file (%q, %d bytes)", tc.family, sst, size)
			}
			fh, err := os.OpenFile(sst, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := fh.WriteAt(bytes.Repeat([]byte{0x5a}, int(tc.bytes)), size-tc.bytes); err != nil {
				t.Fatal(err)
			}
			fh.Close()

			s, err = Open(cfg)
			if tc.family == cfIndex {
				if err != nil {
					t.Fatalf("open with a damaged index footer: %v", err)
				}
				defer s.Close()
				if err := s.Verify(context.Background()); err != nil {
					t.Fatalf("index not rebuilt: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("open: %v", err)
			}
			for _, want := range []string{`table "pools"`, "singularity-edge db remove-table pools --yes"} {
				if !strings.Contains(err.Error(), want) {
					t.Fatalf("error %q lacks %q", err, want)
				}
			}
			if strings.Contains(err.Error(), "MANIFEST") {
				t.Fatalf("error blames the MANIFEST: %v", err)
			}
			if err := RemoveTable(cfg, TablePools); err != nil {
				t.Fatalf("remove-table, the named remedy: %v", err)
			}
			s, err = Open(cfg)
			if err != nil {
				t.Fatalf("open after remove-table: %v", err)
			}
			defer s.Close()
			if bs, err := s.ListBackends(context.Background(), "", 0); err != nil || len(bs) == 0 {
				t.Fatalf("other tables after remove-table: %d, %v", len(bs), err)
			}
		})
	}
}
