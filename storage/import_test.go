package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"testing"
)

// storedState is everything an import could change: every row as Export
// writes it (versions and tombstones included), the bookkeeping and the
// last commit index.
func storedState(t *testing.T, s *Store) string {
	t.Helper()
	var buf bytes.Buffer
	if _, err := s.Export(context.Background(), &buf); err != nil {
		t.Fatal(err)
	}
	_, rows, _ := strings.Cut(buf.String(), "\n") // the header says when
	return fmt.Sprintf("rows:\n%s\nbookkeeping: %v\nlast index: %d", rows, s.Bookkeeping(), s.LastIndex())
}

// cutReader hands out r until it has given at bytes, then calls at's
// function and returns its error (nil: r goes on).
type cutReader struct {
	r    io.Reader
	left int
	cut  func() error
}

func (c *cutReader) Read(p []byte) (int, error) {
	if c.left <= 0 {
		if c.cut != nil {
			err := c.cut()
			c.cut = nil
			if err != nil {
				return 0, err
			}
		}
		return c.r.Read(p)
	}
	n, err := c.r.Read(p[:min(len(p), c.left)])
	c.left -= n
	return n, err
}

// An Import that fails on its input changes nothing. It applied the
// export in batches of 1,000 rows as it read them, so a bad line, a read
// error or a cancelled context past the first thousand rows left those
// rows stored, their seqs claimed and feed entries behind (the CLI checks
// an export against a scratch store first; the storage API did not). Now
// a first pass checks every line before the second writes any. Both a
// seekable input (read again) and a stream (copied) are covered.
func TestImportFailureChangesNothing(t *testing.T) {
	ctx := context.Background()
	key := testKey(t)
	src := openStore(t, func(c *Config) { c.EncryptionKey = key; c.NodeID = "src" })
	fill(t, src, "x", 1200) // about 5,000 rows: several batches of 1,000
	var buf bytes.Buffer
	rows, err := src.Export(ctx, &buf)
	if err != nil {
		t.Fatal(err)
	}
	export := buf.String()
	half := len(export) / 2
	for _, tc := range []struct {
		name  string
		input func(cancel context.CancelFunc) io.Reader
		want  error
	}{
		{"bad line at the end", func(context.CancelFunc) io.Reader {
			return strings.NewReader(export + "{nope\n")
		}, ErrInvalid},
		{"bad line at the end of a stream", func(context.CancelFunc) io.Reader {
			return io.MultiReader(strings.NewReader(export), strings.NewReader("{nope\n"))
		}, ErrInvalid},
		{"row refused at the end", func(context.CancelFunc) io.Reader {
			return strings.NewReader(export + `{"table":"pools","key":"k","version":{"hlc":1,"origin":"o","seq":1},"row":{"name":"other"}}` + "\n")
		}, ErrInvalid},
		{"unknown table at the end", func(context.CancelFunc) io.Reader {
			return strings.NewReader(export + `{"table":"x","key":"k","version":{"hlc":1,"origin":"o","seq":1},"row":{}}` + "\n")
		}, ErrUnknownTable},
		{"read error half way", func(context.CancelFunc) io.Reader {
			return &cutReader{r: strings.NewReader(export), left: half, cut: func() error { return io.ErrUnexpectedEOF }}
		}, io.ErrUnexpectedEOF},
		{"cancelled half way", func(cancel context.CancelFunc) io.Reader {
			return &cutReader{r: strings.NewReader(export), left: half, cut: func() error { cancel(); return nil }}
		}, context.Canceled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dst := openStore(t, func(c *Config) { c.EncryptionKey = key; c.NodeID = "dst" })
			fill(t, dst, "own", 10)
			before := storedState(t, dst)
			ctx, cancel := context.WithCancel(ctx)
			defer cancel()
			n, err := dst.Import(ctx, tc.input(cancel))
			if !errors.Is(err, tc.want) {
				t.Fatalf("import: %v, want %v", err, tc.want)
			}
			if n != 0 {
				t.Errorf("a failed import says it wrote %d rows", n)
			}
			if after := storedState(t, dst); after != before {
				t.Fatalf("a failed import changed the store:\nbefore %.300s\nafter  %.300s", before, after)
			}
		})
	}
	// The same export, whole, goes in, from a stream too.
	for name, in := range map[string]io.Reader{
		"seekable": strings.NewReader(export),
		"stream":   io.MultiReader(strings.NewReader(export)),
	} {
		t.Run(name, func(t *testing.T) {
			dst := openStore(t, func(c *Config) { c.EncryptionKey = key; c.NodeID = "dst" })
			if n, err := dst.Import(ctx, in); err != nil || n != rows {
				t.Fatalf("import: %d of %d rows, %v", n, rows, err)
			}
			assertSameRows(t, src, dst)
			if !reflect.DeepEqual(dst.Bookkeeping()["src"], src.Bookkeeping()["src"].Intersect(dst.Bookkeeping()["src"])) {
				t.Fatalf("bookkeeping after the import: %v", dst.Bookkeeping())
			}
		})
	}
}

// A write that fails in the second pass (here a full disk) leaves the
// batches before it stored: the export is not written in one commit, which
// would hold all of it in memory and in one WAL record. The error says so
// (how many rows, which lines) and that importing again completes it,
// which it does once space is back.
func TestImportWriteFailureSaysWhatIsLeft(t *testing.T) {
	ctx := context.Background()
	src := openStore(t, func(c *Config) { c.NodeID = "src" })
	// 12 MiB of rows that do not compress.
	putPadded(t, src, 15)
	var buf bytes.Buffer
	rows, err := src.Export(ctx, &buf)
	if err != nil {
		t.Fatal(err)
	}
	mnt, cfg := smallDiskStore(t, "64m", 1<<20)
	cfg.NodeID = "dst"
	dst, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { noHang(t, "Close", func() { _ = dst.Close() }) }()
	// Room for the first batches (4 MiB each, in the WAL, then flushed),
	// not for the 12 MiB.
	filler := fillDisk(t, mnt, "filler", 9<<20)
	var n int
	noHang(t, "Import", func() { n, err = dst.Import(ctx, bytes.NewReader(buf.Bytes())) })
	if !errors.Is(err, ErrDiskFull) {
		t.Fatalf("import onto a full disk: %v, want ErrDiskFull", err)
	}
	if n == 0 || n >= rows || !strings.Contains(err.Error(), fmt.Sprintf("%d rows written, those of lines 2 to ", n)) ||
		!strings.Contains(err.Error(), "importing the same export again writes the rest") {
		t.Fatalf("import stopped by a full disk after %d of %d rows: %v", n, rows, err)
	}
	freeDisk(t, []string{filler})
	waitWritable(t, dst)
	if _, err := dst.Import(ctx, bytes.NewReader(buf.Bytes())); err != nil {
		t.Fatalf("import again once space is back: %v", err)
	}
	assertSameRows(t, src, dst)
}
