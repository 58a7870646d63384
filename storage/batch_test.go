package storage

import (
	"bytes"
	"fmt"
	"math"
	"runtime"
	"strings"
	"testing"

	"github.com/linxGnu/grocksdb"
)

// TestBatchBuilderMatchesRocksDB: the batch built in Go is byte for byte
// what grocksdb's WriteBatch builds for the same operations, and a store
// commit through it reads back.
func TestBatchBuilderMatchesRocksDB(t *testing.T) {
	s := openStore(t)
	long := []byte(strings.Repeat("v", 300)) // a length that needs a two-byte varint
	type op struct {
		cf    string
		key   []byte
		value []byte
		del   bool
	}
	ops := []op{
		{cfDefault, []byte("k0"), []byte("v0"), false},
		{cfMeta, []byte("test/long"), long, false},
		{cfMeta, []byte("test/empty"), nil, false},
		{cfMeta, []byte("test/absent"), nil, true},
		{cfDefault, []byte("gone"), nil, true},
		{cfMeta, []byte(strings.Repeat("m", 200)), []byte{}, false},
	}
	want := grocksdb.NewWriteBatch()
	defer want.Destroy()
	var got batchBuilder
	for _, o := range ops {
		h := s.cfs[o.cf]
		if o.del {
			want.DeleteCF(h, o.key)
			got.del(s.cfID[o.cf], o.key)
		} else {
			want.PutCF(h, o.key, o.value)
			got.put(s.cfID[o.cf], o.key, o.value)
		}
	}
	if got.len() != want.Count() {
		t.Fatalf("count %d, want %d", got.len(), want.Count())
	}
	if err := got.write(s, s.woAsync); err != nil {
		t.Fatal(err)
	}
	// write fills in the count; the sequence stays 0 in our buffer.
	if !bytes.Equal(got.buf, want.Data()) {
		t.Fatalf("batch bytes differ:\n got %x\nwant %x", got.buf, want.Data())
	}
	v, err := s.base.GetCF(s.roLatest, s.cfs[cfMeta], []byte("test/long"))
	if err != nil {
		t.Fatal(err)
	}
	defer v.Free()
	if !bytes.Equal(v.Data(), long) {
		t.Fatalf("read back %d bytes, want %d", len(v.Data()), len(long))
	}
	got.reset()
	if got.len() != 0 || len(got.buf) != wbHeaderLen {
		t.Fatalf("reset left %d ops, %d bytes", got.len(), len(got.buf))
	}
}

// TestBatchBuilderSortsHeldFamily: the records of the sorted family reach
// the batch in key order after the others, two records of one key in the
// order they were added, and the batch means what was added.
func TestBatchBuilderSortsHeldFamily(t *testing.T) {
	s := openStore(t)
	meta := s.cfID[cfMeta] // any family: the index family in the store
	var got batchBuilder
	got.reset()
	got.sortFamily(meta)
	got.put(meta, []byte("test/c"), []byte("3"))
	got.put(0, []byte("d"), []byte("default"))
	got.put(meta, []byte("test/a"), []byte("1"))
	got.put(meta, []byte("test/b"), nil)
	got.del(meta, []byte("test/b")) // after its put: b ends deleted
	got.put(meta, []byte("test/a"), []byte("2"))
	got.put(meta, []byte("a/z"), []byte("first byte first"))
	got.put(meta, nil, []byte("empty key"))

	want := grocksdb.NewWriteBatch()
	defer want.Destroy()
	h := s.cfs[cfMeta]
	want.Put([]byte("d"), []byte("default"))
	want.PutCF(h, nil, []byte("empty key"))
	want.PutCF(h, []byte("a/z"), []byte("first byte first"))
	want.PutCF(h, []byte("test/a"), []byte("1"))
	want.PutCF(h, []byte("test/a"), []byte("2"))
	want.PutCF(h, []byte("test/b"), nil)
	want.DeleteCF(h, []byte("test/b"))
	want.PutCF(h, []byte("test/c"), []byte("3"))

	if err := got.write(s, s.woAsync); err != nil {
		t.Fatal(err)
	}
	if got.len() != want.Count() {
		t.Fatalf("count %d, want %d", got.len(), want.Count())
	}
	if !bytes.Equal(got.buf, want.Data()) {
		t.Fatalf("batch bytes differ:\n got %x\nwant %x", got.buf, want.Data())
	}
	for k, v := range map[string]string{"test/a": "2", "test/b": "", "test/c": "3"} {
		sl, err := s.base.GetCF(s.roLatest, h, []byte(k))
		if err != nil {
			t.Fatal(err)
		}
		if string(sl.Data()) != v {
			t.Errorf("%q = %q, want %q", k, sl.Data(), v)
		}
		sl.Free()
	}
	// reset ends the sorting: the next batch keeps its order.
	got.reset()
	got.put(meta, []byte("test/z"), nil)
	got.put(meta, []byte("test/y"), nil)
	got.appendHeld()
	if z, y := bytes.Index(got.buf, []byte("test/z")), bytes.Index(got.buf, []byte("test/y")); z < 0 || y < z {
		t.Fatalf("after reset the records were reordered: %x", got.buf)
	}
}

// TestEachBatchRecordMatchesRocksDB: the Go reader of the WriteBatch
// format finds the family, key and kind of every record grocksdb's own
// iterator finds, and refuses what it cannot read.
func TestEachBatchRecordMatchesRocksDB(t *testing.T) {
	s := openStore(t)
	wb := grocksdb.NewWriteBatch()
	defer wb.Destroy()
	long := bytes.Repeat([]byte("k"), 300)
	wb.Put([]byte("d"), []byte("v"))
	wb.PutCF(s.cfs[cfMeta], long, long)
	wb.Delete([]byte("gone"))
	wb.DeleteCF(s.cfs[cfIndex], []byte("\x04pool\x00b"))
	wb.SingleDeleteCF(s.cfs[cfMeta], []byte("single"))
	wb.SingleDelete([]byte("single0"))
	wb.MergeCF(s.cfs[cfMeta], []byte("merged"), []byte("x"))
	wb.PutLogData([]byte("blob"))
	wb.DeleteRangeCF(s.cfs[cfIndex], []byte("a"), []byte("b"))
	wb.DeleteRange([]byte("c"), []byte("d"))

	type rec struct {
		cf       uint32
		key      string
		rangeDel bool
	}
	var want []rec
	it := wb.NewIterator()
	for it.Next() {
		r := it.Record()
		if r.Type == grocksdb.WriteBatchLogDataRecord {
			continue
		}
		rangeDel := r.Type == grocksdb.WriteBatchCFRangeDeletion || r.Type == grocksdb.WriteBatchRangeDeletion
		want = append(want, rec{uint32(r.CF), string(r.Key), rangeDel})
	}
	if it.Error() != nil {
		t.Fatal(it.Error())
	}
	var got []rec
	rep := wb.Data()
	if err := eachBatchRecord(rep, func(cf uint32, key []byte, rangeDel bool) {
		got = append(got, rec{cf, string(key), rangeDel})
	}); err != nil {
		t.Fatal(err)
	}
	if len(got) != 9 || fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("records\n got %v\nwant %v", got, want)
	}
	for _, bad := range [][]byte{
		rep[:wbHeaderLen-1], // no header
		rep[:len(rep)-1],    // last record cut short
		append(rep[:wbHeaderLen:wbHeaderLen], 0x9, 1, 'x'),     // a transaction marker
		append(rep[:wbHeaderLen:wbHeaderLen], wbCFValue, 0x80), // a family id cut short
	} {
		if err := eachBatchRecord(bad, func(uint32, []byte, bool) {}); err == nil {
			t.Errorf("%x: read without error", bad)
		}
	}
}

// FuzzEachBatchRecord: any bytes are read or refused, differentially
// against grocksdb's own reader of the format: what the store reads is
// what grocksdb reads, and the store refuses only what grocksdb refuses,
// a record type the store's writers never produce, or a family id that
// does not fit RocksDB's 32 bits.
func FuzzEachBatchRecord(f *testing.F) {
	var b batchBuilder
	b.put(3, []byte("key"), []byte("value"))
	b.del(0, []byte("k"))
	b.put(0x80, []byte("two-byte family"), nil)
	f.Add(b.buf)
	f.Add(make([]byte, wbHeaderLen))
	f.Add(append(make([]byte, wbHeaderLen), wbCFRangeDeletion, 2, 1, 'a', 1, 'b', wbLogData, 1, 'x', wbSingleDeletion, 0))
	f.Fuzz(func(t *testing.T, rep []byte) {
		type rec struct {
			cf       uint64
			key      string
			rangeDel bool
		}
		var ours []rec
		ourErr := eachBatchRecord(rep, func(cf uint32, key []byte, rangeDel bool) {
			ours = append(ours, rec{uint64(cf), string(key), rangeDel})
		})

		wb := grocksdb.WriteBatchFrom(rep)
		defer wb.Destroy()
		var theirs []rec
		excused := false // a record the store need not read
		it := wb.NewIterator()
		theirErr := func() (err error) {
			// grocksdb's reader slices past the end on some lengths
			// (a varint above the int range): that is a refusal too.
			defer func() {
				if p := recover(); p != nil {
					err = fmt.Errorf("grocksdb panicked: %v", p)
				}
			}()
			for it.Next() {
				r := it.Record()
				switch r.Type {
				case grocksdb.WriteBatchLogDataRecord:
					continue
				case grocksdb.WriteBatchDeletionRecord, grocksdb.WriteBatchValueRecord, grocksdb.WriteBatchMergeRecord,
					grocksdb.WriteBatchSingleDeletionRecord, grocksdb.WriteBatchRangeDeletion,
					grocksdb.WriteBatchCFDeletionRecord, grocksdb.WriteBatchCFValueRecord, grocksdb.WriteBatchCFMergeRecord,
					grocksdb.WriteBatchCFSingleDeletionRecord, grocksdb.WriteBatchCFRangeDeletion:
					if uint64(r.CF) > math.MaxUint32 {
						excused = true
					}
				default:
					excused = true
				}
				rangeDel := r.Type == grocksdb.WriteBatchCFRangeDeletion || r.Type == grocksdb.WriteBatchRangeDeletion
				theirs = append(theirs, rec{uint64(r.CF), string(r.Key), rangeDel})
			}
			return it.Error()
		}()
		if len(rep) < wbHeaderLen {
			if ourErr == nil {
				t.Fatal("a batch shorter than its header was read")
			}
			return
		}
		switch {
		case ourErr == nil && theirErr != nil:
			t.Fatalf("read what grocksdb refuses (%v): %v", theirErr, ours)
		case ourErr == nil && fmt.Sprint(ours) != fmt.Sprint(theirs):
			t.Fatalf("records\n ours   %v\n theirs %v", ours, theirs)
		case ourErr != nil && theirErr == nil && !excused:
			t.Fatalf("refused (%v) what grocksdb reads: %v", ourErr, theirs)
		}
	})
}

// TestWritesRunWithoutPerfCounters: the store's writes and MultiGets run
// with RocksDB's perf counters off on their thread and leave the thread's
// level as they found it.
func TestWritesRunWithoutPerfCounters(t *testing.T) {
	s := openStore(t)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	grocksdb.SetPerfLevel(grocksdb.KEnableCount)
	pc := grocksdb.NewPerfContext()
	defer pc.Destroy()
	const comparisons = 0 // rocksdb_user_key_comparison_count
	meta := s.cfID[cfMeta]

	var wb batchBuilder
	write := func(n int) {
		t.Helper()
		wb.reset()
		for i := range n {
			wb.put(meta, fmt.Appendf(nil, "test/%03d", (i*7)%n), []byte("v"))
		}
		if err := wb.write(s, s.woAsync); err != nil {
			t.Fatal(err)
		}
	}
	write(100) // a memtable with keys to compare against
	pc.Reset()
	write(100)
	keys := []string{"test/001", "test/050", "test/099"}
	if err := multiGet(s.base, s.roLatest, s.cfs[cfMeta], keys, func(int, []byte) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if n := pc.Metric(comparisons); n != 0 {
		t.Fatalf("the store's write and MultiGet counted %d key comparisons", n)
	}
	// The thread's own level is back: a grocksdb write on it counts.
	raw := grocksdb.NewWriteBatch()
	defer raw.Destroy()
	for i := range 100 {
		raw.PutCF(s.cfs[cfMeta], fmt.Appendf(nil, "test/%03d", (i*7)%100), []byte("w"))
	}
	if err := s.base.Write(s.woAsync, raw); err != nil {
		t.Fatal(err)
	}
	if n := pc.Metric(comparisons); n == 0 {
		t.Fatal("a grocksdb write after the store's counted no key comparison: the thread's level was not restored")
	}
}
