package storage

import (
	"encoding/binary"
	"fmt"
	"slices"
	"sort"
	"strings"
)

// Range is an inclusive range of change-set sequence numbers, Lo <= Hi.
type Range struct {
	Lo, Hi uint64
}

// Ranges is a set of sequence numbers as sorted, disjoint, non-adjacent
// inclusive ranges. The zero value is the empty set. Operations return new
// sets and never modify their operands.
type Ranges []Range

// RangesOf returns the set of the given ranges (in any order, overlapping
// or not). A range with Lo > Hi or Lo == 0 is invalid: seqs start at 1.
func RangesOf(rs ...Range) (Ranges, error) {
	var out Ranges
	for _, r := range rs {
		if r.Lo == 0 || r.Lo > r.Hi {
			return nil, fmt.Errorf("%w: range %d..%d", ErrInvalid, r.Lo, r.Hi)
		}
		out = out.Union(Ranges{r})
	}
	return out, nil
}

// Span returns the set lo..hi (empty when hi < lo or lo == 0).
func Span(lo, hi uint64) Ranges {
	if lo == 0 || hi < lo {
		return nil
	}
	return Ranges{{lo, hi}}
}

// Contains reports whether seq is in the set.
func (rs Ranges) Contains(seq uint64) bool {
	i, found := slices.BinarySearchFunc(rs, seq, func(r Range, s uint64) int {
		switch {
		case r.Hi < s:
			return -1
		case r.Lo > s:
			return 1
		}
		return 0
	})
	_ = i
	return found
}

// ContainsAll reports whether every seq of other is in the set.
func (rs Ranges) ContainsAll(other Ranges) bool { return len(other.Minus(rs)) == 0 }

// Add returns the set with seq added.
func (rs Ranges) Add(seq uint64) Ranges { return rs.Union(Ranges{{seq, seq}}) }

// Union returns rs ∪ other.
func (rs Ranges) Union(other Ranges) Ranges {
	if len(other) == 0 {
		return slices.Clone(rs)
	}
	if len(rs) == 0 {
		return slices.Clone(other)
	}
	all := make([]Range, 0, len(rs)+len(other))
	all = append(append(all, rs...), other...)
	slices.SortFunc(all, func(a, b Range) int {
		switch {
		case a.Lo < b.Lo:
			return -1
		case a.Lo > b.Lo:
			return 1
		}
		return 0
	})
	out := Ranges{all[0]}
	for _, r := range all[1:] {
		last := &out[len(out)-1]
		if last.Hi == ^uint64(0) || r.Lo <= last.Hi+1 {
			last.Hi = max(last.Hi, r.Hi)
			continue
		}
		out = append(out, r)
	}
	return out
}

// Minus returns rs \ other: catch-up asks a peer for "its seen minus mine".
func (rs Ranges) Minus(other Ranges) Ranges {
	var out Ranges
	j := 0
	for _, r := range rs {
		lo := r.Lo
		for j < len(other) && other[j].Hi < lo {
			j++
		}
		k := j
		for lo <= r.Hi {
			if k >= len(other) || other[k].Lo > r.Hi {
				out = append(out, Range{lo, r.Hi})
				break
			}
			o := other[k]
			if o.Lo > lo {
				out = append(out, Range{lo, o.Lo - 1})
			}
			if o.Hi >= r.Hi {
				break
			}
			lo = o.Hi + 1
			k++
		}
	}
	return out
}

// Intersect returns rs ∩ other.
func (rs Ranges) Intersect(other Ranges) Ranges { return rs.Minus(rs.Minus(other)) }

// Max returns the highest seq in the set (0 when empty).
func (rs Ranges) Max() uint64 {
	if len(rs) == 0 {
		return 0
	}
	return rs[len(rs)-1].Hi
}

// Watermark returns the contiguous watermark: the highest w such that
// every seq 1..w is in the set (0 when 1 is missing).
func (rs Ranges) Watermark() uint64 {
	if len(rs) == 0 || rs[0].Lo != 1 {
		return 0
	}
	return rs[0].Hi
}

// Gaps returns the seqs between 1 and Max that are not in the set.
func (rs Ranges) Gaps() Ranges { return Span(1, rs.Max()).Minus(rs) }

// Count returns how many seqs the set holds (saturating).
func (rs Ranges) Count() uint64 {
	var n uint64
	for _, r := range rs {
		c := r.Hi - r.Lo + 1
		if c == 0 || n+c < n {
			return ^uint64(0)
		}
		n += c
	}
	return n
}

// String formats the set as "1-5,7,9-12".
func (rs Ranges) String() string {
	var b strings.Builder
	for i, r := range rs {
		if i > 0 {
			b.WriteByte(',')
		}
		if r.Lo == r.Hi {
			fmt.Fprintf(&b, "%d", r.Lo)
		} else {
			fmt.Fprintf(&b, "%d-%d", r.Lo, r.Hi)
		}
	}
	return b.String()
}

// maxWireRanges bounds the ranges a decoded set may hold, so that a
// malformed or hostile frame cannot make the decoder allocate without limit.
const maxWireRanges = 1 << 20

// AppendBinary appends the compact encoding of rs to dst: a uvarint count,
// then per range the uvarint distance from the previous range's end (from
// 0 for the first) and the uvarint length minus one. A mostly contiguous
// bookkeeping of millions of seqs encodes in a few bytes.
func (rs Ranges) AppendBinary(dst []byte) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(rs)))
	var prev uint64
	for _, r := range rs {
		dst = binary.AppendUvarint(dst, r.Lo-prev)
		dst = binary.AppendUvarint(dst, r.Hi-r.Lo)
		prev = r.Hi
	}
	return dst
}

// MarshalBinary encodes rs (see AppendBinary).
func (rs Ranges) MarshalBinary() ([]byte, error) { return rs.AppendBinary(nil), nil }

// UnmarshalBinary decodes a set written by AppendBinary; the whole input
// must be consumed and the set must be canonical (sorted, disjoint,
// non-adjacent, seqs >= 1).
func (rs *Ranges) UnmarshalBinary(b []byte) error {
	out, rest, err := decodeRanges(b)
	if err != nil {
		return err
	}
	if len(rest) != 0 {
		return errWire("ranges: %d trailing bytes", len(rest))
	}
	*rs = out
	return nil
}

// decodeRanges decodes one encoded set from the front of b.
func decodeRanges(b []byte) (Ranges, []byte, error) {
	n, k := binary.Uvarint(b)
	if k <= 0 || k != uvarintLen(n) {
		return nil, nil, errWire("ranges: bad count")
	}
	b = b[k:]
	if n > maxWireRanges || n > uint64(len(b))/2 {
		return nil, nil, errWire("ranges: count %d too large", n)
	}
	out := make(Ranges, 0, n)
	var prev uint64
	for i := uint64(0); i < n; i++ {
		d, k1 := binary.Uvarint(b)
		if k1 <= 0 {
			return nil, nil, errWire("ranges: bad range %d", i)
		}
		l, k2 := binary.Uvarint(b[k1:])
		if k2 <= 0 || k1 != uvarintLen(d) || k2 != uvarintLen(l) {
			return nil, nil, errWire("ranges: bad range %d", i)
		}
		b = b[k1+k2:]
		// Canonical: the first range starts at >= 1, later ones leave a
		// hole of at least one seq after the previous one.
		if (i == 0 && d == 0) || (i > 0 && d < 2) {
			return nil, nil, errWire("ranges: range %d is not canonical", i)
		}
		lo := prev + d
		hi := lo + l
		if lo < prev || hi < lo {
			return nil, nil, errWire("ranges: range %d overflows", i)
		}
		out = append(out, Range{lo, hi})
		prev = hi
	}
	return out, b, nil
}

// uvarintLen is the length of the shortest encoding of v: a longer one is
// refused, so that every set has exactly one encoding.
func uvarintLen(v uint64) int {
	n := 1
	for v >= 0x80 {
		v >>= 7
		n++
	}
	return n
}

// maxWireOrigins bounds the origins a decoded Bookkeeping may hold.
const maxWireOrigins = 1 << 16

// AppendBinary appends the compact encoding of b to dst, origins sorted:
// a uvarint count, then per origin a uvarint length, the origin's bytes
// and its Ranges (Ranges.AppendBinary). Replication sends it as the
// "what I have" of a sync round.
func (b Bookkeeping) AppendBinary(dst []byte) []byte {
	origins := make([]string, 0, len(b))
	for o := range b {
		origins = append(origins, o)
	}
	sort.Strings(origins)
	dst = binary.AppendUvarint(dst, uint64(len(origins)))
	for _, o := range origins {
		dst = binary.AppendUvarint(dst, uint64(len(o)))
		dst = append(dst, o...)
		dst = b[o].AppendBinary(dst)
	}
	return dst
}

// MarshalBinary encodes b (see AppendBinary).
func (b Bookkeeping) MarshalBinary() ([]byte, error) { return b.AppendBinary(nil), nil }

// UnmarshalBinary decodes what AppendBinary wrote: origins valid, sorted
// and distinct, every Ranges canonical, the whole input consumed.
func (b *Bookkeeping) UnmarshalBinary(data []byte) error {
	n, k := binary.Uvarint(data)
	if k <= 0 || k != uvarintLen(n) || n > maxWireOrigins || n > uint64(len(data)) {
		return errWire("bookkeeping: bad origin count")
	}
	data = data[k:]
	out := make(Bookkeeping, n)
	prev := ""
	for i := uint64(0); i < n; i++ {
		l, k := binary.Uvarint(data)
		if k <= 0 || k != uvarintLen(l) || l > uint64(len(data)-k) {
			return errWire("bookkeeping: bad origin %d", i)
		}
		origin := string(data[k : k+int(l)])
		data = data[k+int(l):]
		if err := validateKey("origin", origin); err != nil {
			return errWire("bookkeeping: origin %d: %v", i, err)
		}
		if i > 0 && origin <= prev {
			return errWire("bookkeeping: origins not sorted")
		}
		prev = origin
		rs, rest, err := decodeRanges(data)
		if err != nil {
			return err
		}
		data = rest
		out[origin] = rs
	}
	if len(data) != 0 {
		return errWire("bookkeeping: %d trailing bytes", len(data))
	}
	*b = out
	return nil
}
