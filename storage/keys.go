package storage

import (
	"encoding/binary"
	"fmt"
	"strings"
	"unicode/utf8"
)

// Column families besides the tables (see doc.go for the key formats).
const (
	cfIndex     = "index"
	cfChangelog = "changelog"
	cfFeed      = "feed"
	cfMeta      = "meta"
	cfDefault   = "default"
)

// internalFamilies lists the column families that are not tables.
func internalFamilies() []string { return []string{cfIndex, cfChangelog, cfFeed, cfMeta} }

// maxKeyLen bounds primary keys and indexed values; RocksDB would take more,
// but nothing legitimate needs it and it keeps index keys small.
const maxKeyLen = 512

// Meta keys.
const (
	metaNodeID   = "node_id"
	metaKeyCheck = "key_check"
	metaFormat   = "format"
	// metaIndexVersion is the indexVersion the index entries were last
	// brought up to (absent: 1, before the pools-by-certificate index).
	metaIndexVersion = "index_version"
)

// validateKey checks a primary key or an indexed value: index keys use NUL
// as the separator, so it must not occur inside one.
func validateKey(what, k string) error {
	switch {
	case k == "":
		return fmt.Errorf("%w: %s is empty", ErrInvalid, what)
	case len(k) > maxKeyLen:
		return fmt.Errorf("%w: %s is longer than %d bytes", ErrInvalid, what, maxKeyLen)
	case !utf8.ValidString(k):
		return fmt.Errorf("%w: %s is not valid UTF-8", ErrInvalid, what)
	case strings.IndexByte(k, 0) >= 0:
		return fmt.Errorf("%w: %s contains a NUL byte", ErrInvalid, what)
	}
	return nil
}

// validateIndexed checks an optional indexed value (empty allowed).
func validateIndexed(what, v string) error {
	if v == "" {
		return nil
	}
	return validateKey(what, v)
}

// ObservationKey is the primary key of an observation row and the Key of
// its Change: node id, NUL, backend id.
func ObservationKey(nodeID, backendID string) string { return nodeID + "\x00" + backendID }

// changelogKey: origin, NUL, big-endian seq (sorted by seq per origin).
func changelogKey(origin string, seq uint64) []byte {
	k := make([]byte, 0, len(origin)+9)
	k = append(k, origin...)
	k = append(k, 0)
	return binary.BigEndian.AppendUint64(k, seq)
}

func parseChangelogKey(k []byte) (origin string, seq uint64, ok bool) {
	if len(k) < 10 || k[len(k)-9] != 0 {
		return "", 0, false
	}
	return string(k[:len(k)-9]), binary.BigEndian.Uint64(k[len(k)-8:]), true
}

// feedKey: big-endian commit index.
func feedKey(index uint64) []byte { return binary.BigEndian.AppendUint64(nil, index) }

// prefixEnd returns the smallest key greater than every key with prefix p,
// or nil when there is none (p is all 0xff).
func prefixEnd(p []byte) []byte {
	end := append([]byte(nil), p...)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] != 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return nil
}
