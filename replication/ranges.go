package replication

import (
	"fmt"
	"sort"
	"strings"
)

// Range is the inclusive span of change-set sequence numbers [Lo, Hi].
type Range struct{ Lo, Hi uint64 }

// RangeSet is a set of sequence numbers as sorted, disjoint, non-adjacent
// ranges. The zero value is empty. Methods never modify their receiver.
type RangeSet []Range

// NewRangeSet normalizes ranges (any order, overlapping, adjacent) into a
// RangeSet; ranges with Lo > Hi or Lo == 0 are dropped (seq 0 does not exist).
func NewRangeSet(ranges ...Range) RangeSet {
	rs := make([]Range, 0, len(ranges))
	for _, r := range ranges {
		if r.Lo == 0 || r.Lo > r.Hi {
			continue
		}
		rs = append(rs, r)
	}
	sort.Slice(rs, func(i, j int) bool { return rs[i].Lo < rs[j].Lo })
	out := rs[:0]
	for _, r := range rs {
		if n := len(out); n > 0 && (r.Lo <= out[n-1].Hi || r.Lo-1 == out[n-1].Hi) {
			if r.Hi > out[n-1].Hi {
				out[n-1].Hi = r.Hi
			}
			continue
		}
		out = append(out, r)
	}
	return RangeSet(out)
}

// Valid reports whether rs is normalized.
func (rs RangeSet) Valid() bool {
	for i, r := range rs {
		if r.Lo == 0 || r.Lo > r.Hi {
			return false
		}
		// Lo-1 rather than Hi+1: a range ending at the highest seq would
		// wrap to 0 and let the next one overlap it.
		if i > 0 && r.Lo-1 <= rs[i-1].Hi {
			return false
		}
	}
	return true
}

// Union returns rs ∪ other.
func (rs RangeSet) Union(other RangeSet) RangeSet {
	all := make([]Range, 0, len(rs)+len(other))
	all = append(all, rs...)
	all = append(all, other...)
	return NewRangeSet(all...)
}

// Minus returns the numbers in rs that are not in other.
func (rs RangeSet) Minus(other RangeSet) RangeSet {
	var out []Range
	j := 0
	for _, r := range rs {
		lo := r.Lo
		for j < len(other) && other[j].Hi < lo {
			j++
		}
		k := j
		for k < len(other) && other[k].Lo <= r.Hi {
			o := other[k]
			if o.Lo > lo {
				out = append(out, Range{lo, o.Lo - 1})
			}
			if o.Hi >= r.Hi {
				lo = r.Hi + 1
				break
			}
			lo = o.Hi + 1
			k++
		}
		if lo <= r.Hi && lo != 0 {
			out = append(out, Range{lo, r.Hi})
		}
	}
	return RangeSet(out)
}

// Intersect returns rs ∩ other.
func (rs RangeSet) Intersect(other RangeSet) RangeSet {
	return rs.Minus(rs.Minus(other))
}

// Contains reports whether seq is in rs.
func (rs RangeSet) Contains(seq uint64) bool {
	i := sort.Search(len(rs), func(i int) bool { return rs[i].Hi >= seq })
	return i < len(rs) && rs[i].Lo <= seq
}

// Count returns how many numbers rs holds.
func (rs RangeSet) Count() uint64 {
	var n uint64
	for _, r := range rs {
		n += r.Hi - r.Lo + 1
	}
	return n
}

// Max returns the highest number in rs, 0 when empty.
func (rs RangeSet) Max() uint64 {
	if len(rs) == 0 {
		return 0
	}
	return rs[len(rs)-1].Hi
}

// Truncate returns the lowest numbers of rs, at most n of them.
func (rs RangeSet) Truncate(n uint64) RangeSet {
	var out RangeSet
	for _, r := range rs {
		if n == 0 {
			break
		}
		if c := r.Hi - r.Lo + 1; c > n {
			r.Hi = r.Lo + n - 1
		}
		n -= r.Hi - r.Lo + 1
		out = append(out, r)
	}
	return out
}

func (rs RangeSet) String() string {
	parts := make([]string, len(rs))
	for i, r := range rs {
		if r.Lo == r.Hi {
			parts[i] = fmt.Sprint(r.Lo)
		} else {
			parts[i] = fmt.Sprintf("%d-%d", r.Lo, r.Hi)
		}
	}
	return "[" + strings.Join(parts, ",") + "]"
}

// Book is what a node holds of one origin's change sets: every seq up to
// Watermark, and above it every seq up to Max except the Gaps. It is the
// store's per-origin bookkeeping, and the only source of "seen".
type Book struct {
	Watermark uint64
	Gaps      RangeSet // within (Watermark+1 .. Max-1]
	Max       uint64
}

// BookOf returns the Book of a held set.
func BookOf(held RangeSet) Book {
	if len(held) == 0 {
		return Book{}
	}
	b := Book{Max: held.Max()}
	if held[0].Lo == 1 {
		b.Watermark = held[0].Hi
	}
	b.Gaps = NewRangeSet(Range{1, b.Max}).Minus(held)
	return b
}

// Held returns the seqs b holds.
func (b Book) Held() RangeSet {
	if b.Max == 0 {
		return nil
	}
	return NewRangeSet(Range{1, b.Max}).Minus(b.Gaps)
}

// Minus returns the seqs b holds and other does not: what a node with
// Book other can fetch from a node with Book b.
func (b Book) Minus(other Book) RangeSet { return b.Held().Minus(other.Held()) }

// Books is the bookkeeping of every origin a node has heard of.
type Books map[string]Book
