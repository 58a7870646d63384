package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"testing"
	"time"

	"github.com/linxGnu/grocksdb"
)

// TestMultiGetMatchesGet pins the one-crossing MultiGet (multiget.go,
// which reads grocksdb's C handles) against grocksdb's own Get: present,
// absent, empty and repeated keys, in memtables and in flushed files.
func TestMultiGetMatchesGet(t *testing.T) {
	s := openStore(t)
	cf := s.cfs[cfMeta]
	put := func(k, v string) {
		if err := s.base.PutCF(s.wo, cf, []byte(k), []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	put("mg/flushed", "in a table file")
	fo := grocksdb.NewDefaultFlushOptions()
	defer fo.Destroy()
	fo.SetWait(true)
	if err := s.base.FlushCF(cf, fo); err != nil {
		t.Fatal(err)
	}
	put("mg/a", "alpha")
	put("mg/empty", "")
	put("mg/big", string(bytes.Repeat([]byte("x"), 100_000)))
	keys := []string{"mg/missing", "mg/a", "mg/empty", "mg/big", "mg/flushed", "mg/a", "", "mg/zzz"}
	got := make(map[int]string)
	err := multiGet(s.base, s.roLatest, cf, keys, func(i int, v []byte) error {
		if _, dup := got[i]; dup {
			return fmt.Errorf("key %d reported twice", i)
		}
		got[i] = string(v)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := make(map[int]string)
	for i, k := range keys {
		v, err := s.base.GetCF(s.roLatest, cf, []byte(k))
		if err != nil {
			t.Fatal(err)
		}
		if v.Exists() {
			want[i] = string(v.Data())
		}
		v.Free()
	}
	if !maps.Equal(got, want) {
		t.Fatalf("multiGet found %d keys, Get %d; differing: %v", len(got), len(want), diffIndexes(got, want))
	}
	if _, ok := got[2]; !ok {
		t.Fatal("a key with an empty value was reported absent")
	}

	// An error from the callback stops the read and comes back unchanged.
	stop := errors.New("stop")
	if err := multiGet(s.base, s.roLatest, cf, keys, func(int, []byte) error { return stop }); !errors.Is(err, stop) {
		t.Fatalf("callback error: got %v", err)
	}
	if err := multiGet(s.base, s.roLatest, cf, nil, func(int, []byte) error { return stop }); err != nil {
		t.Fatalf("no keys: %v", err)
	}
}

func diffIndexes(a, b map[int]string) []int {
	var out []int
	for i := range 16 {
		va, oka := a[i]
		vb, okb := b[i]
		if oka != okb || len(va) != len(vb) || va != vb {
			out = append(out, i)
		}
	}
	return out
}

// TestPutBackendsMatchesPutBackend: the bulk path (one MultiGet of the
// stored versions first, no typed copy kept) stores exactly what
// PutBackend one by one stores, keeps InsertedAt of replaced rows, moves
// index entries of rows that change pool, reads its own writes inside the
// transaction and writes the versions back.
func TestPutBackendsMatchesPutBackend(t *testing.T) {
	ctx := context.Background()
	clock := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	now := func() time.Time { return clock }
	one := openStore(t, func(c *Config) { c.Now = now })
	bulk := openStore(t, func(c *Config) { c.Now = now })

	initial := func() []Backend {
		var bs []Backend
		for i := range 20 {
			b := *sampleBackend(fmt.Sprintf("be-%02d", i), fmt.Sprintf("pool-%d", i%3))
			b.Port = 8000 + i
			bs = append(bs, b)
		}
		return bs
	}
	for _, s := range []*Store{one, bulk} {
		mustUpdate(t, s, func(tx *Tx) error {
			for _, name := range []string{"pool-0", "pool-1", "pool-2", "pool-3"} {
				if err := tx.PutPool(samplePool(name)); err != nil {
					return err
				}
			}
			bs := initial()
			for i := range bs[:10] {
				if err := tx.PutBackend(&bs[i]); err != nil {
					return err
				}
			}
			return nil
		})
	}
	inserted := clock
	clock = clock.Add(time.Hour)

	// Rows 5..19: half replace stored rows (5..9, one moved to another
	// pool, one with metadata), half are new; row 12 is written twice.
	next := func() []Backend {
		bs := initial()[5:]
		bs[0].PoolName = "pool-3"
		bs[1].Metadata = map[string]string{"k": "v"}
		again := bs[7]
		again.Weight = 7
		return append(bs, again)
	}
	want := next()
	c1 := mustUpdate(t, one, func(tx *Tx) error {
		for i := range want {
			if err := tx.PutBackend(&want[i]); err != nil {
				return err
			}
		}
		return nil
	})
	got := next()
	c2 := mustUpdate(t, bulk, func(tx *Tx) error {
		if err := tx.PutBackends(got); err != nil {
			return err
		}
		// Read-your-writes: the transaction sees the rows it wrote, the
		// later write of be-12 included, and the caller's later edits
		// do not leak into them.
		got[1].Metadata["k"] = "changed by the caller"
		for _, w := range []Backend{next()[1], next()[len(got)-1]} {
			b, err := tx.Backend(w.ID)
			if err != nil {
				return err
			}
			if b.Weight != w.Weight || b.PoolName != w.PoolName || !maps.Equal(b.Metadata, w.Metadata) {
				return fmt.Errorf("own write of %s read back as %+v, want %+v", w.ID, b, w)
			}
		}
		in3, err := tx.BackendsByPoolPage("pool-3", "", 0)
		if err != nil {
			return err
		}
		if len(in3) != 1 || in3[0].ID != "be-05" {
			return fmt.Errorf("pool-3 lists %d backends inside the transaction, want be-05 (buffered)", len(in3))
		}
		return nil
	})
	got[1].Metadata["k"] = "v"
	if c1.Version.Seq != c2.Version.Seq {
		t.Fatalf("seqs differ: %d and %d", c1.Version.Seq, c2.Version.Seq)
	}
	for i := range got {
		// A row written twice gets the version in its last write only,
		// as with PutBackend.
		if (got[i].Version == c2.Version) != (want[i].Version == c1.Version) || (i != 7 && got[i].Version != c2.Version) {
			t.Fatalf("%s (#%d): version %+v written back, want %+v", got[i].ID, i, got[i].Version, c2.Version)
		}
		if !got[i].InsertedAt.Equal(want[i].InsertedAt) || !got[i].UpdatedAt.Equal(want[i].UpdatedAt) {
			t.Fatalf("%s: times %v/%v, PutBackend gave %v/%v", got[i].ID, got[i].InsertedAt, got[i].UpdatedAt,
				want[i].InsertedAt, want[i].UpdatedAt)
		}
	}
	for _, id := range []string{"be-05", "be-09", "be-10", "be-12", "be-19"} {
		a, err := one.GetBackend(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		b, err := bulk.GetBackend(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		a.Version, b.Version = Version{}, Version{}
		if fmt.Sprint(a) != fmt.Sprint(b) {
			t.Fatalf("%s differs:\n PutBackend:  %+v\n PutBackends: %+v", id, a, b)
		}
		wantIns := inserted
		if id >= "be-10" {
			wantIns = clock
		}
		if !b.InsertedAt.Equal(wantIns) {
			t.Fatalf("%s: InsertedAt %v, want %v", id, b.InsertedAt, wantIns)
		}
	}
	assertSameRecords(t, one, bulk)
	for _, pool := range []string{"pool-0", "pool-1", "pool-2", "pool-3"} {
		a, err := one.ListBackendsByPool(ctx, pool, "", 0)
		if err != nil {
			t.Fatal(err)
		}
		b, err := bulk.ListBackendsByPool(ctx, pool, "", 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(a) != len(b) {
			t.Fatalf("%s: %d backends against %d", pool, len(b), len(a))
		}
	}
	checkIndexes(t, bulk)

	// A bad id is refused before anything is read or buffered.
	_, err := bulk.Update(ctx, func(tx *Tx) error {
		return tx.PutBackends([]Backend{*sampleBackend("ok", "pool-0"), *sampleBackend("", "pool-0")})
	})
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("empty id: got %v, want ErrInvalid", err)
	}
	if err := bulk.View(ctx, func(tx *Tx) error { return tx.PutBackends(nil) }); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("PutBackends in View: got %v, want ErrReadOnly", err)
	}
}
