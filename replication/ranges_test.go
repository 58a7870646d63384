package replication

import (
	"testing"
)

func TestNewRangeSet(t *testing.T) {
	got := NewRangeSet(Range{5, 7}, Range{1, 2}, Range{3, 3}, Range{6, 9}, Range{0, 4}, Range{12, 11}, Range{11, 11})
	want := RangeSet{{1, 3}, {5, 9}, {11, 11}} // {0,4} is dropped: seq 0 does not exist
	if got.String() != want.String() || !got.Valid() {
		t.Fatalf("got %v want %v", got, want)
	}
}

func TestRangeSetOps(t *testing.T) {
	tests := []struct {
		name       string
		a, b       RangeSet
		minus, and RangeSet
	}{
		{"disjoint", RangeSet{{1, 3}}, RangeSet{{5, 6}}, RangeSet{{1, 3}}, nil},
		{"inside", RangeSet{{1, 10}}, RangeSet{{3, 4}, {7, 7}}, RangeSet{{1, 2}, {5, 6}, {8, 10}}, RangeSet{{3, 4}, {7, 7}}},
		{"cover", RangeSet{{3, 4}}, RangeSet{{1, 10}}, nil, RangeSet{{3, 4}}},
		{"edges", RangeSet{{1, 5}, {8, 12}}, RangeSet{{5, 8}}, RangeSet{{1, 4}, {9, 12}}, RangeSet{{5, 5}, {8, 8}}},
		{"empty", nil, RangeSet{{1, 2}}, nil, nil},
		{"max", RangeSet{{1, ^uint64(0)}}, RangeSet{{2, ^uint64(0)}}, RangeSet{{1, 1}}, RangeSet{{2, ^uint64(0)}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.a.Minus(tc.b); got.String() != tc.minus.String() {
				t.Errorf("minus = %v want %v", got, tc.minus)
			}
			if got := tc.a.Intersect(tc.b); got.String() != tc.and.String() {
				t.Errorf("intersect = %v want %v", got, tc.and)
			}
		})
	}
}

func TestBook(t *testing.T) {
	held := NewRangeSet(Range{1, 4}, Range{7, 7}, Range{10, 12})
	b := BookOf(held)
	if b.Watermark != 4 || b.Max != 12 || b.Gaps.String() != "[5-6,8-9]" {
		t.Fatalf("book %+v", b)
	}
	if b.Held().String() != held.String() {
		t.Fatalf("held %v", b.Held())
	}
	mine := BookOf(NewRangeSet(Range{1, 5}, Range{9, 9}))
	if got := b.Minus(mine); got.String() != "[7,10-12]" {
		t.Fatalf("theirs minus mine = %v", got)
	}
	if (Book{}).Held() != nil || BookOf(nil).Max != 0 {
		t.Fatal("empty book")
	}
	if got := BookOf(NewRangeSet(Range{3, 4})); got.Watermark != 0 || got.Gaps.String() != "[1-2]" {
		t.Fatalf("book without seq 1: %+v", got)
	}
}

func FuzzRangeSet(f *testing.F) {
	f.Add([]byte{1, 5, 3, 9, 20, 22}, []byte{2, 4, 21, 30})
	f.Fuzz(func(t *testing.T, a, b []byte) {
		mk := func(p []byte) RangeSet {
			var rs []Range
			for i := 0; i+1 < len(p); i += 2 {
				rs = append(rs, Range{uint64(p[i]), uint64(p[i+1])})
			}
			return NewRangeSet(rs...)
		}
		x, y := mk(a), mk(b)
		m := x.Minus(y)
		if !m.Valid() || !x.Union(y).Valid() || !x.Intersect(y).Valid() {
			t.Fatalf("invalid result for %v %v", x, y)
		}
		for s := uint64(0); s < 260; s++ {
			if m.Contains(s) != (x.Contains(s) && !y.Contains(s)) {
				t.Fatalf("%d: %v minus %v = %v", s, x, y, m)
			}
			if x.Union(y).Contains(s) != (x.Contains(s) || y.Contains(s)) {
				t.Fatalf("%d: union", s)
			}
		}
		if x.Minus(y).Count()+x.Intersect(y).Count() != x.Count() {
			t.Fatal("counts")
		}
		if BookOf(x).Held().String() != x.String() {
			t.Fatalf("book of %v", x)
		}
	})
}

func TestRoundNeed(t *testing.T) {
	held := func(rs ...Range) Book { return BookOf(NewRangeSet(rs...)) }
	theirs := Books{"c": held(Range{1, 100}), "b": held(Range{1, 50})}
	mine := Books{"c": held(Range{1, 40}, Range{60, 70}), "b": held(Range{1, 50})}
	for _, tc := range []struct {
		name    string
		settled Books
		origin  string
		want    string
	}{
		{"first round: everything missing", nil, "c", "[41-59,71-100]"},
		{"periodic: only what the peer held a round ago", Books{"c": held(Range{1, 80})}, "c", "[41-59,71-80]"},
		{"periodic: the peer had none of it then", Books{"b": held(Range{1, 50})}, "c", "[]"},
		{"nothing missing", Books{"b": held(Range{1, 50})}, "b", "[]"},
		{"origin unknown to the peer", nil, "z", "[]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := roundNeed(tc.origin, theirs, mine, tc.settled).String(); got != tc.want {
				t.Fatalf("roundNeed = %s, want %s", got, tc.want)
			}
		})
	}
}
