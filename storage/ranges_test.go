package storage

import (
	"math/rand/v2"
	"testing"
)

func mustRanges(t testing.TB, rs ...Range) Ranges {
	t.Helper()
	out, err := RangesOf(rs...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestRanges(t *testing.T) {
	a := mustRanges(t, Range{1, 5}, Range{7, 7}, Range{10, 20})
	tests := []struct {
		name string
		got  Ranges
		want string
	}{
		{"canonical", mustRanges(t, Range{10, 20}, Range{7, 7}, Range{1, 3}, Range{2, 5}), "1-5,7,10-20"},
		{"adjacent merge", mustRanges(t, Range{1, 2}, Range{3, 4}), "1-4"},
		{"minus", a.Minus(mustRanges(t, Range{3, 12})), "1-2,13-20"},
		{"minus nothing", a.Minus(nil), "1-5,7,10-20"},
		{"minus all", a.Minus(Span(1, 100)), ""},
		{"minus inner", Span(1, 10).Minus(mustRanges(t, Range{2, 2}, Range{5, 6})), "1,3-4,7-10"},
		{"intersect", a.Intersect(Span(4, 11)), "4-5,7,10-11"},
		{"union", a.Union(Span(6, 9)), "1-20"},
		{"gaps", a.Gaps(), "6,8-9"},
		{"add", a.Add(6), "1-7,10-20"},
	}
	for _, tc := range tests {
		if tc.got.String() != tc.want {
			t.Errorf("%s: %s, want %s", tc.name, tc.got, tc.want)
		}
	}
	if a.Watermark() != 5 || a.Max() != 20 || !a.Contains(7) || a.Contains(8) || a.Count() != 17 {
		t.Fatalf("watermark %d max %d count %d", a.Watermark(), a.Max(), a.Count())
	}
	if Span(2, 3).Watermark() != 0 {
		t.Fatal("watermark without seq 1")
	}
	if _, err := RangesOf(Range{0, 3}); err == nil {
		t.Fatal("seq 0 accepted")
	}
	if _, err := RangesOf(Range{5, 3}); err == nil {
		t.Fatal("Lo > Hi accepted")
	}
}

// Minus, Intersect and Union agree with a bitmap model.
func TestRangesModel(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	random := func() (Ranges, [64]bool) {
		var set [64]bool
		var rs Ranges
		for i := 0; i < rng.IntN(6); i++ {
			lo := 1 + rng.Uint64N(60)
			hi := lo + rng.Uint64N(4)
			rs = rs.Union(Span(lo, hi))
			for s := lo; s <= hi; s++ {
				set[s] = true
			}
		}
		return rs, set
	}
	for i := 0; i < 2000; i++ {
		a, sa := random()
		b, sb := random()
		minus, inter, union := a.Minus(b), a.Intersect(b), a.Union(b)
		for s := uint64(1); s < 64; s++ {
			if minus.Contains(s) != (sa[s] && !sb[s]) || inter.Contains(s) != (sa[s] && sb[s]) || union.Contains(s) != (sa[s] || sb[s]) {
				t.Fatalf("seq %d: %s vs %s: minus %s inter %s union %s", s, a, b, minus, inter, union)
			}
		}
		var back Ranges
		if err := back.UnmarshalBinary(a.AppendBinary(nil)); err != nil || back.String() != a.String() {
			t.Fatalf("round trip %s: %s %v", a, back, err)
		}
	}
}

// FuzzRanges: any bytes either fail to decode or decode to a canonical set
// that encodes back to the same bytes.
func FuzzRanges(f *testing.F) {
	f.Add(Span(1, 1000).AppendBinary(nil))
	f.Add(Ranges{{1, 5}, {7, 7}, {10, 1 << 40}}.AppendBinary(nil))
	f.Add([]byte{0})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, b []byte) {
		var rs Ranges
		if err := rs.UnmarshalBinary(b); err != nil {
			return
		}
		for i, r := range rs {
			if r.Lo == 0 || r.Lo > r.Hi || (i > 0 && r.Lo <= rs[i-1].Hi+1) {
				t.Fatalf("not canonical: %v", rs)
			}
		}
		if got := rs.AppendBinary(nil); string(got) != string(b) {
			t.Fatalf("re-encoding differs: %x vs %x", got, b)
		}
		_ = rs.Minus(Span(1, rs.Max()/2+1))
	})
}

// FuzzBookkeeping: any bytes either fail to decode or decode to a
// bookkeeping that encodes back to the same bytes.
func FuzzBookkeeping(f *testing.F) {
	f.Add(Bookkeeping{"a": Span(1, 10), "b": Ranges{{1, 2}, {5, 5}}}.AppendBinary(nil))
	f.Add(Bookkeeping{}.AppendBinary(nil))
	f.Add([]byte{1, 1, 'a', 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		var bk Bookkeeping
		if err := bk.UnmarshalBinary(b); err != nil {
			return
		}
		if got := bk.AppendBinary(nil); string(got) != string(b) {
			t.Fatalf("re-encoding differs: %x vs %x", got, b)
		}
	})
}
