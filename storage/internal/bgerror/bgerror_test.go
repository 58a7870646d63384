package bgerror

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/linxGnu/grocksdb"
)

func openDB(t *testing.T, o *grocksdb.Options) (*grocksdb.DB, string) {
	t.Helper()
	dir := t.TempDir()
	o.SetCreateIfMissing(true)
	db, err := grocksdb.OpenDb(o, dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	return db, dir
}

// A healthy database: the layouts hold, there is no background error, and
// Resume has nothing to do.
func TestWatchAndResumeOnAHealthyDB(t *testing.T) {
	o := grocksdb.NewDefaultOptions()
	defer o.Destroy()
	o.SetWriteBufferSize(3 << 20)
	w := NewWatch(o)
	if w == nil {
		t.Fatal("NewWatch refused grocksdb's Options layout")
	}
	defer w.Destroy()
	if got := o.GetWriteBufferSize(); got != 3<<20 {
		t.Fatalf("write buffer size %d after the layout probe, want %d", got, 3<<20)
	}
	db, dir := openDB(t, o)
	if !CanResume(db, dir) {
		t.Fatal("CanResume refused grocksdb's DB layout")
	}
	if CanResume(db, dir+"-other") {
		t.Fatal("CanResume accepted another directory")
	}
	wo := grocksdb.NewDefaultWriteOptions()
	defer wo.Destroy()
	if err := db.Put(wo, []byte("k"), []byte("v")); err != nil {
		t.Fatal(err)
	}
	if err := w.Err(); err != nil {
		t.Fatalf("background error on a healthy database: %v", err)
	}
	if err := Resume(db); err != nil {
		t.Fatalf("Resume with nothing to resume: %v", err)
	}
	if w.Count() != 0 {
		t.Fatalf("%d background errors counted", w.Count())
	}
}

// The replacement info log writes RocksDB's lines to its file, and a file
// that refuses every write (/dev/full answers ENOSPC) costs lines, not the
// process.
func TestLogger(t *testing.T) {
	for _, tc := range []struct {
		name    string
		path    func(dir string) string
		maxSize int64
		want    bool // lines expected in the file
		rolled  bool // path.old expected
	}{
		{"writable file", func(dir string) string { return filepath.Join(dir, "LOG") }, 1 << 20, true, false},
		{"rolls over past its size", func(dir string) string { return filepath.Join(dir, "LOG") }, 512, false, true},
		{"full device", func(string) string { return "/dev/full" }, 1 << 20, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := os.Stat("/dev/full"); err != nil && tc.name == "full device" {
				t.Skip("no /dev/full")
			}
			logDir := t.TempDir()
			path := tc.path(logDir)
			o := grocksdb.NewDefaultOptions()
			defer o.Destroy()
			if !InstallLogger(o, path, tc.maxSize, grocksdb.InfoInfoLogLevel) {
				t.Fatal("InstallLogger refused grocksdb's Options layout")
			}
			db, _ := openDB(t, o)
			wo := grocksdb.NewDefaultWriteOptions()
			defer wo.Destroy()
			fo := grocksdb.NewDefaultFlushOptions()
			defer fo.Destroy()
			fo.SetWait(true)
			// Each flush logs several lines at INFO.
			for i := 0; i < 5; i++ {
				if err := db.Put(wo, []byte{byte(i)}, []byte("v")); err != nil {
					t.Fatal(err)
				}
				if err := db.Flush(fo); err != nil {
					t.Fatal(err)
				}
			}
			if tc.rolled {
				if _, err := os.Stat(path + ".old"); err != nil {
					t.Fatalf("no rolled-over log: %v", err)
				}
			}
			if !tc.want {
				return
			}
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(b), "flush") {
				t.Fatalf("LOG has no flush lines:\n%.2000s", b)
			}
		})
	}
}

// SwitchMemtables reaches the C++ handles of the families it is given
// (FamilyLayoutOK) and moves writes to a new WAL file without waiting.
func TestSwitchMemtables(t *testing.T) {
	o := grocksdb.NewDefaultOptions()
	defer o.Destroy()
	o.SetCreateIfMissing(true)
	o.SetCreateIfMissingColumnFamilies(true)
	o.SetAtomicFlush(true)
	dir := t.TempDir()
	names := []string{"default", "rows"}
	db, handles, err := grocksdb.OpenDbColumnFamilies(o, dir, names, []*grocksdb.Options{o, o})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	defer func() {
		for _, h := range handles {
			h.Destroy()
		}
	}()
	for i, h := range handles {
		if !FamilyLayoutOK(h, names[i]) {
			t.Fatalf("FamilyLayoutOK refused grocksdb's handle of %s", names[i])
		}
		if FamilyLayoutOK(h, names[i]+"-other") {
			t.Fatalf("FamilyLayoutOK accepted another name for %s", names[i])
		}
	}
	wo := grocksdb.NewDefaultWriteOptions()
	defer wo.Destroy()
	if err := db.PutCF(wo, handles[1], []byte("k"), []byte("v")); err != nil {
		t.Fatal(err)
	}
	before := lastLog(t, dir)
	if err := SwitchMemtables(db, handles); err != nil {
		t.Fatalf("SwitchMemtables: %v", err)
	}
	if got := lastLog(t, dir); got <= before {
		t.Fatalf("WAL file %d after the switch, want one after %d", got, before)
	}
	ro := grocksdb.NewDefaultReadOptions()
	defer ro.Destroy()
	v, err := db.GetCF(ro, handles[1], []byte("k"))
	if err != nil || string(v.Data()) != "v" {
		t.Fatalf("read after the switch: %q %v", v.Data(), err)
	}
	v.Free()
}

// lastLog returns the number of the newest WAL file in dir.
func lastLog(t *testing.T, dir string) int {
	t.Helper()
	names, err := filepath.Glob(filepath.Join(dir, "*.log"))
	if err != nil {
		t.Fatal(err)
	}
	last := 0
	for _, n := range names {
		var num int
		if _, err := fmt.Sscanf(filepath.Base(n), "%d.log", &num); err == nil {
			last = max(last, num)
		}
	}
	return last
}
