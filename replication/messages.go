package replication

import (
	"encoding/binary"
	"fmt"
	"sort"
)

// protoVersion is the replication protocol version in Hello. Version 2
// added the encryption-key fingerprint; version 1 decoders refuse its
// Hello (trailing bytes), so the two cannot stream to each other.
const protoVersion = 2

// keyFingerprintSize is storage.KeyFingerprintSize, kept here so that
// the wire format does not depend on the store package.
const keyFingerprintSize = 16

// enc builds a payload.
type enc struct{ b []byte }

func (e *enc) uvarint(v uint64) { e.b = binary.AppendUvarint(e.b, v) }
func (e *enc) bytes(p []byte)   { e.uvarint(uint64(len(p))); e.b = append(e.b, p...) }
func (e *enc) str(s string)     { e.uvarint(uint64(len(s))); e.b = append(e.b, s...) }
func (e *enc) bool(v bool) {
	if v {
		e.b = append(e.b, 1)
	} else {
		e.b = append(e.b, 0)
	}
}
func (e *enc) ranges(rs RangeSet) {
	e.uvarint(uint64(len(rs)))
	var prev uint64
	for _, r := range rs {
		// Deltas keep long range sets small.
		e.uvarint(r.Lo - prev)
		e.uvarint(r.Hi - r.Lo)
		prev = r.Hi
	}
}
func (e *enc) set(s EncodedSet) {
	e.str(s.Origin)
	e.uvarint(s.Seq)
	e.uvarint(s.HLC)
	e.bytes(s.Data)
}
func (e *enc) books(bs Books) {
	origins := make([]string, 0, len(bs))
	for o := range bs {
		origins = append(origins, o)
	}
	sort.Strings(origins)
	e.uvarint(uint64(len(origins)))
	for _, o := range origins {
		b := bs[o]
		e.str(o)
		e.uvarint(b.Max)
		e.ranges(b.Held())
	}
}
func (e *enc) rangeMap(m map[string]RangeSet) {
	origins := make([]string, 0, len(m))
	for o := range m {
		origins = append(origins, o)
	}
	sort.Strings(origins)
	e.uvarint(uint64(len(origins)))
	for _, o := range origins {
		e.str(o)
		e.ranges(m[o])
	}
}

// dec reads a payload; the first error sticks and every later read
// returns zero values, so decoders check once at the end.
type dec struct {
	b   []byte
	err error
}

func (d *dec) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s", ErrBadFrame, what)
	}
	d.b = nil
}

func (d *dec) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("bad varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *dec) bytes() []byte {
	n := d.uvarint()
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.fail("length past end")
		return nil
	}
	p := d.b[:n:n]
	d.b = d.b[n:]
	return p
}

func (d *dec) str() string { return string(d.bytes()) }

func (d *dec) bool() bool {
	if d.err != nil {
		return false
	}
	if len(d.b) == 0 {
		d.fail("missing bool")
		return false
	}
	v := d.b[0]
	d.b = d.b[1:]
	if v > 1 {
		d.fail("bad bool")
	}
	return v == 1
}

// count reads a collection length and refuses one that could not fit in
// what is left (each element takes at least minSize bytes), so a forged
// count cannot make us allocate.
func (d *dec) count(minSize int) int {
	n := d.uvarint()
	if d.err != nil {
		return 0
	}
	if n > uint64(len(d.b)/minSize) {
		d.fail("count past end")
		return 0
	}
	return int(n)
}

func (d *dec) ranges() RangeSet {
	n := d.count(2)
	rs := make(RangeSet, 0, n)
	var prev uint64
	for range n {
		lo := prev + d.uvarint()
		hi := lo + d.uvarint()
		if d.err != nil {
			return nil
		}
		// lo-1 rather than prev+1, which wraps to 0 after a range that
		// ends at the highest seq and would let a repeat of it through.
		if lo < prev || hi < lo || lo == 0 || (len(rs) > 0 && lo-1 <= prev) {
			d.fail("ranges not sorted and disjoint")
			return nil
		}
		rs = append(rs, Range{lo, hi})
		prev = hi
	}
	return rs
}

func (d *dec) set() EncodedSet {
	return EncodedSet{Origin: d.str(), Seq: d.uvarint(), HLC: d.uvarint(), Data: d.bytes()}
}

func (d *dec) books() Books {
	n := d.count(3)
	bs := make(Books, n)
	for range n {
		o := d.str()
		max := d.uvarint()
		held := d.ranges()
		if d.err != nil {
			return nil
		}
		if held.Max() != max {
			d.fail("book max does not match its ranges")
			return nil
		}
		bs[o] = BookOf(held)
	}
	return bs
}

func (d *dec) rangeMap() map[string]RangeSet {
	n := d.count(2)
	m := make(map[string]RangeSet, n)
	for range n {
		o := d.str()
		m[o] = d.ranges()
	}
	return m
}

func (d *dec) done() error {
	if d.err == nil && len(d.b) != 0 {
		d.fail("trailing bytes")
	}
	return d.err
}

// hello opens a stream in both directions.
type hello struct {
	Proto     uint64
	ClusterID string
	NodeID    string
	Name      string
	Ready     bool
	// KeyFingerprint identifies the node's EDGE_ENCRYPTION_KEY
	// (storage.EncryptionKeyFingerprint): 16 bytes, or empty for none.
	KeyFingerprint []byte
}

func (h hello) encode() []byte {
	var e enc
	e.uvarint(h.Proto)
	e.str(h.ClusterID)
	e.str(h.NodeID)
	e.str(h.Name)
	e.bool(h.Ready)
	if h.Proto >= 2 {
		// A version 1 Hello ended at Ready (the tests speak it as an
		// older build would).
		e.bytes(h.KeyFingerprint)
	}
	return e.b
}

// decodeHello decodes a Hello of this protocol version strictly, and of
// another version only as far as the fields every version starts with, so
// that the handshake can refuse it by its version rather than as garbage.
func decodeHello(p []byte) (hello, error) {
	d := dec{b: p}
	h := hello{Proto: d.uvarint(), ClusterID: d.str(), NodeID: d.str(), Name: d.str(), Ready: d.bool()}
	switch {
	case h.Proto < 2:
		// Version 1 ended here.
	case h.Proto == protoVersion:
		h.KeyFingerprint = d.bytes()
		if n := len(h.KeyFingerprint); n != 0 && n != keyFingerprintSize {
			d.fail("bad encryption key fingerprint")
		}
	default:
		return h, d.err
	}
	return h, d.done()
}

// Reject codes.
const (
	rejectDifferentCluster = 1
	rejectProto            = 2
	rejectNotReady         = 3
	rejectTooStale         = 4
	rejectInternal         = 5
	rejectSelf             = 6
	rejectEncryptionKey    = 7
)

type reject struct {
	Code   uint64
	Reason string
}

func (r reject) encode() []byte {
	var e enc
	e.uvarint(r.Code)
	e.str(r.Reason)
	return e.b
}

func decodeReject(p []byte) (reject, error) {
	d := dec{b: p}
	r := reject{Code: d.uvarint(), Reason: d.str()}
	return r, d.done()
}

func encodeSets(sets []EncodedSet) []byte {
	var e enc
	e.uvarint(uint64(len(sets)))
	for _, s := range sets {
		e.set(s)
	}
	return e.b
}

func decodeSets(d *dec) []EncodedSet {
	n := d.count(4)
	sets := make([]EncodedSet, 0, n)
	for range n {
		s := d.set()
		if d.err != nil {
			return nil
		}
		if s.Seq == 0 || s.Origin == "" {
			d.fail("change set without origin or seq")
			return nil
		}
		sets = append(sets, s)
	}
	return sets
}

func decodePush(p []byte) ([]EncodedSet, error) {
	d := dec{b: p}
	sets := decodeSets(&d)
	return sets, d.done()
}

func encodeAck(covered map[string]RangeSet) []byte {
	var e enc
	e.rangeMap(covered)
	return e.b
}

func decodeAck(p []byte) (map[string]RangeSet, error) {
	d := dec{b: p}
	m := d.rangeMap()
	return m, d.done()
}

func encodeBooks(bs Books) []byte {
	var e enc
	e.books(bs)
	return e.b
}

func decodeBooks(p []byte) (Books, error) {
	d := dec{b: p}
	bs := d.books()
	return bs, d.done()
}

type syncRequest struct {
	Origin string
	Want   RangeSet
}

func (r syncRequest) encode() []byte {
	var e enc
	e.str(r.Origin)
	e.ranges(r.Want)
	return e.b
}

func decodeSyncRequest(p []byte) (syncRequest, error) {
	d := dec{b: p}
	r := syncRequest{Origin: d.str(), Want: d.ranges()}
	return r, d.done()
}

// syncRows carries part of the answer to a syncRequest.
type syncRows struct {
	Origin  string
	Covered RangeSet
	Sets    []EncodedSet
}

func (r syncRows) encode() []byte {
	var e enc
	e.str(r.Origin)
	e.ranges(r.Covered)
	e.b = append(e.b, encodeSets(r.Sets)...)
	return e.b
}

func decodeSyncRows(p []byte) (syncRows, error) {
	d := dec{b: p}
	r := syncRows{Origin: d.str(), Covered: d.ranges()}
	r.Sets = decodeSets(&d)
	if d.err == nil {
		for _, s := range r.Sets {
			if s.Origin != r.Origin || !r.Covered.Contains(s.Seq) {
				d.fail("change set outside the rows' origin or range")
				break
			}
		}
	}
	return r, d.done()
}

// syncDone ends the answer to a syncRequest; Code is 0 or a reject code.
type syncDone struct {
	Origin string
	Code   uint64
}

func (s syncDone) encode() []byte {
	var e enc
	e.str(s.Origin)
	e.uvarint(s.Code)
	return e.b
}

func decodeSyncDone(p []byte) (syncDone, error) {
	d := dec{b: p}
	s := syncDone{Origin: d.str(), Code: d.uvarint()}
	return s, d.done()
}

// decodePayload decodes any frame's payload (used by the fuzzer: every
// decoder must refuse garbage without panicking or over-allocating).
func decodePayload(f frame) error {
	var err error
	switch f.typ {
	case msgHello:
		_, err = decodeHello(f.payload)
	case msgReject:
		_, err = decodeReject(f.payload)
	case msgPush:
		_, err = decodePush(f.payload)
	case msgAck:
		_, err = decodeAck(f.payload)
	case msgSyncState:
		_, err = decodeBooks(f.payload)
	case msgSyncRequest:
		_, err = decodeSyncRequest(f.payload)
	case msgSyncRows:
		_, err = decodeSyncRows(f.payload)
	case msgSyncDone:
		_, err = decodeSyncDone(f.payload)
	case msgSnapshotRequest, msgSnapshotHeader, msgSnapshotChunk, msgSnapshotEnd:
	}
	return err
}
