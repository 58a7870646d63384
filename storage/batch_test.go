package storage

import (
	"bytes"
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
