package storage

import (
	"fmt"
	"math"
	"slices"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
)

// Low-level helpers for the hand-written protobuf wire format (see codec.go).

// encoder appends fields. Zero values are omitted, as in proto3, so a field
// added later costs nothing in rows that do not use it.
type encoder struct{ b []byte }

func (e *encoder) str(num protowire.Number, s string) {
	if s == "" {
		return
	}
	e.b = protowire.AppendTag(e.b, num, protowire.BytesType)
	e.b = protowire.AppendString(e.b, s)
}

func (e *encoder) bytes(num protowire.Number, v []byte) {
	if len(v) == 0 {
		return
	}
	e.b = protowire.AppendTag(e.b, num, protowire.BytesType)
	e.b = protowire.AppendBytes(e.b, v)
}

func (e *encoder) uint(num protowire.Number, v uint64) {
	if v == 0 {
		return
	}
	e.b = protowire.AppendTag(e.b, num, protowire.VarintType)
	e.b = protowire.AppendVarint(e.b, v)
}

func (e *encoder) sint(num protowire.Number, v int64) {
	if v == 0 {
		return
	}
	e.b = protowire.AppendTag(e.b, num, protowire.VarintType)
	e.b = protowire.AppendVarint(e.b, protowire.EncodeZigZag(v))
}

func (e *encoder) bool(num protowire.Number, v bool) {
	if v {
		e.uint(num, 1)
	}
}

// strs writes every element, empty ones included, so the slice round-trips.
func (e *encoder) strs(num protowire.Number, v []string) {
	for _, s := range v {
		e.b = protowire.AppendTag(e.b, num, protowire.BytesType)
		e.b = protowire.AppendString(e.b, s)
	}
}

// time writes a nested {1: seconds (sint64), 2: nanoseconds} message, like
// google.protobuf.Timestamp, so every year x509 allows (0001-9999) fits.
// The nested message is sized first and appended in place: every record
// has two or three times, and a scratch encoder each cost an allocation.
func (e *encoder) time(num protowire.Number, t time.Time) {
	if t.IsZero() {
		return
	}
	sec, nsec := protowire.EncodeZigZag(t.Unix()), uint64(t.Nanosecond())
	n := 0
	if sec != 0 {
		n += 1 + protowire.SizeVarint(sec)
	}
	if nsec != 0 {
		n += 1 + protowire.SizeVarint(nsec)
	}
	e.b = protowire.AppendTag(e.b, num, protowire.BytesType)
	e.b = protowire.AppendVarint(e.b, uint64(n))
	e.uint(1, sec)
	e.uint(2, nsec)
}

// msg writes a nested message; always=false omits an empty one.
func (e *encoder) msg(num protowire.Number, m []byte, always bool) {
	if len(m) == 0 && !always {
		return
	}
	e.b = protowire.AppendTag(e.b, num, protowire.BytesType)
	e.b = protowire.AppendBytes(e.b, m)
}

// metadata writes one {1: key, 2: value} entry per map key, sorted so that
// equal maps encode to equal bytes. Entries are sized and appended in
// place, and the keys of a small map are sorted on the stack.
func (e *encoder) metadata(num protowire.Number, m map[string]string) {
	if len(m) == 0 {
		return
	}
	var small [8]string
	keys := small[:0]
	if len(m) > len(small) {
		keys = make([]string, 0, len(m))
	}
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		v := m[k]
		n := 0
		if k != "" {
			n += 1 + protowire.SizeBytes(len(k))
		}
		if v != "" {
			n += 1 + protowire.SizeBytes(len(v))
		}
		e.b = protowire.AppendTag(e.b, num, protowire.BytesType)
		e.b = protowire.AppendVarint(e.b, uint64(n))
		e.str(1, k)
		e.str(2, v)
	}
}

// field is one decoded field: u for varint/fixed types, b for bytes.
type field struct {
	num protowire.Number
	typ protowire.Type
	u   uint64
	b   []byte
}

func errWire(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrCorrupt, fmt.Sprintf(format, args...))
}

// decodeFields calls fn for every field of b. Unknown field numbers are the
// caller's to ignore; that is what keeps old readers working on new rows.
func decodeFields(b []byte, fn func(f field) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return errWire("bad field tag: %v", protowire.ParseError(n))
		}
		b = b[n:]
		f := field{num: num, typ: typ}
		switch typ {
		case protowire.VarintType:
			f.u, n = protowire.ConsumeVarint(b)
		case protowire.Fixed64Type:
			f.u, n = protowire.ConsumeFixed64(b)
		case protowire.Fixed32Type:
			var v uint32
			v, n = protowire.ConsumeFixed32(b)
			f.u = uint64(v)
		case protowire.BytesType:
			f.b, n = protowire.ConsumeBytes(b)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return errWire("field %d: %v", num, protowire.ParseError(n))
		}
		b = b[n:]
		if err := fn(f); err != nil {
			return err
		}
	}
	return nil
}

func (f field) want(typ protowire.Type) error {
	if f.typ != typ {
		return errWire("field %d has wire type %d, want %d", f.num, f.typ, typ)
	}
	return nil
}

func (f field) str(dst *string) error {
	if err := f.want(protowire.BytesType); err != nil {
		return err
	}
	*dst = string(f.b)
	return nil
}

func (f field) appendStr(dst *[]string) error {
	if err := f.want(protowire.BytesType); err != nil {
		return err
	}
	*dst = append(*dst, string(f.b))
	return nil
}

func (f field) bytes(dst *[]byte) error {
	if err := f.want(protowire.BytesType); err != nil {
		return err
	}
	*dst = append([]byte(nil), f.b...)
	return nil
}

func (f field) uint64(dst *uint64) error {
	if err := f.want(protowire.VarintType); err != nil {
		return err
	}
	*dst = f.u
	return nil
}

func (f field) int64(dst *int64) error {
	if err := f.want(protowire.VarintType); err != nil {
		return err
	}
	*dst = protowire.DecodeZigZag(f.u)
	return nil
}

func (f field) int(dst *int) error {
	var v int64
	if err := f.int64(&v); err != nil {
		return err
	}
	*dst = int(v)
	return nil
}

func (f field) duration(dst *time.Duration) error {
	var v int64
	if err := f.int64(&v); err != nil {
		return err
	}
	*dst = time.Duration(v)
	return nil
}

func (f field) bool(dst *bool) error {
	if err := f.want(protowire.VarintType); err != nil {
		return err
	}
	*dst = f.u != 0
	return nil
}

// maxUnixSeconds is the latest Unix time a time.Time holds: it counts
// seconds from year 1 in an int64, so a later one wraps around to a time
// long past. Every time the encoder writes is at most this; a record
// with more did not come from an agent.
const maxUnixSeconds = math.MaxInt64 - 62135596800 // seconds from year 1 to 1970

func (f field) time(dst *time.Time) error {
	if err := f.want(protowire.BytesType); err != nil {
		return err
	}
	var sec int64
	var nsec uint64
	err := decodeFields(f.b, func(g field) error {
		switch g.num {
		case 1:
			return g.int64(&sec)
		case 2:
			return g.uint64(&nsec)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if nsec >= uint64(time.Second) {
		return errWire("field %d: nanoseconds out of range", f.num)
	}
	if sec > maxUnixSeconds {
		return errWire("field %d: seconds out of range", f.num)
	}
	*dst = time.Unix(sec, int64(nsec)).UTC()
	return nil
}

func (f field) metadataEntry(dst *map[string]string) error {
	if err := f.want(protowire.BytesType); err != nil {
		return err
	}
	var k, v string
	err := decodeFields(f.b, func(g field) error {
		switch g.num {
		case 1:
			return g.str(&k)
		case 2:
			return g.str(&v)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if *dst == nil {
		*dst = make(map[string]string)
	}
	(*dst)[k] = v
	return nil
}
