package proxy

import (
	"crypto/rand"
	"encoding/hex"
	"sync/atomic"
)

// requestIDs generates X-Request-Id values: a random per-process prefix and
// a counter, 32 hex characters. Unique without a syscall or a lock per
// request; they identify requests, they are not secrets.
type requestIDs struct {
	prefix [16]byte // hex of 8 random bytes
	next   atomic.Uint64
}

// init seeds the prefix and the counter from crypto/rand.
func (r *requestIDs) init() {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read does not fail on supported platforms
	hex.Encode(r.prefix[:], b[:8])
	r.next.Store(uint64(b[8])<<56 | uint64(b[9])<<48 | uint64(b[10])<<40 | uint64(b[11])<<32)
}

const hexDigits = "0123456789abcdef"

// appendNew appends a fresh id to dst.
func (r *requestIDs) appendNew(dst []byte) []byte {
	n := r.next.Add(1)
	dst = append(dst, r.prefix[:]...)
	for shift := 60; shift >= 0; shift -= 4 {
		dst = append(dst, hexDigits[(n>>uint(shift))&0xf])
	}
	return dst
}

// maxRequestIDLen bounds an incoming X-Request-Id that is passed on.
const maxRequestIDLen = 128

// validRequestID accepts client-supplied ids made of visible ASCII without
// separators that could split a header list or a log field.
func validRequestID(v []byte) bool {
	if len(v) == 0 || len(v) > maxRequestIDLen {
		return false
	}
	for _, c := range v {
		if c <= ' ' || c >= 0x7f || c == ',' || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}
