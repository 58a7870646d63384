package admin

import (
	"net/http"
	"strconv"
	"strings"

	"github.com/singularity-ng/singularity-edge/internal/fielderr"
	"github.com/singularity-ng/singularity-edge/storage"
)

// etag renders a row version as a strong entity tag: "<hlc>-<origin>".
// (HLC, origin) identifies a version uniquely, which is all If-Match needs.
func etag(v storage.Version) string {
	return `"` + strconv.FormatUint(uint64(v.HLC), 10) + "-" + v.Origin + `"`
}

// rowVersion is the version of a row written in a committed transaction:
// the one the store set on the record, else the commit's.
func rowVersion(v storage.Version, c storage.Commit) storage.Version {
	if v.IsZero() {
		return c.Version
	}
	return v
}

// ifMatch is a parsed If-Match header: absent (no precondition), "*" (the
// row must exist), or a list of entity tags one of which must be current.
type ifMatch struct {
	present bool
	any     bool
	tags    []string
}

// ifMatchExample is the form the API's own ETags take, for messages.
const ifMatchExample = `"*" or a comma-separated list of quoted entity tags such as "1732623000000-node1"`

// parseIfMatch reads If-Match as RFC 9110 (13.1.1) writes it: "*" or a
// list of entity tags. A header that is sent but names nothing (empty,
// only commas) or is not in that form is a malformed precondition: 400
// naming the header. A 412 would tell the client its tag is stale when it
// sent none, and a client that sent an empty header almost always meant
// to send one (an unset variable), so it is not read as "no precondition"
// either. A weak tag is well formed but never matches: If-Match compares
// strongly.
func parseIfMatch(r *http.Request) (ifMatch, error) {
	values := r.Header.Values("If-Match")
	if len(values) == 0 {
		return ifMatch{}, nil
	}
	m := ifMatch{present: true}
	elements := 0
	for _, v := range values {
		rest := v
		for {
			rest = strings.TrimLeft(rest, " \t")
			if rest == "" {
				break
			}
			if rest[0] == ',' {
				// Empty list elements are allowed (RFC 9110 5.6.1).
				rest = rest[1:]
				continue
			}
			elements++
			if rest[0] == '*' {
				m.any = true
				rest = rest[1:]
			} else {
				tag, weak, after, ok := cutEntityTag(rest)
				if !ok {
					return ifMatch{}, errIfMatch("must be " + ifMatchExample)
				}
				if weak {
					tag = "" // keeps the check failing; no ETag is empty
				}
				m.tags = append(m.tags, tag)
				rest = after
			}
			rest = strings.TrimLeft(rest, " \t")
			if rest != "" && rest[0] != ',' {
				return ifMatch{}, errIfMatch("must be " + ifMatchExample + "; separate entity tags with commas")
			}
		}
	}
	switch {
	case elements == 0:
		return ifMatch{}, errIfMatch(`is empty; send the ETag of the version you read (such as "1732623000000-node1"), or "*", or leave the header out`)
	case m.any && elements > 1:
		return ifMatch{}, errIfMatch(`"*" stands alone; it cannot be listed with entity tags`)
	}
	return m, nil
}

// cutEntityTag reads the entity tag at the start of s (RFC 9110 8.8.3: an
// optional W/ and a quoted string of etagc characters) and returns it with
// its quotes, whether it is weak, and what follows it.
func cutEntityTag(s string) (tag string, weak bool, rest string, ok bool) {
	if strings.HasPrefix(s, "W/") {
		weak, s = true, s[2:]
	}
	if s == "" || s[0] != '"' {
		return "", false, "", false
	}
	for i := 1; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"':
			return s[:i+1], weak, s[i+1:], true
		case c == 0x21, c >= 0x23 && c <= 0x7e, c >= 0x80:
		default:
			return "", false, "", false
		}
	}
	return "", false, "", false // no closing quote
}

// errIfMatch is a malformed If-Match header: 400 naming the header.
func errIfMatch(msg string) *apiError {
	return errInvalid("If-Match "+msg, fielderr.FieldError{Field: "If-Match", Message: msg})
}

// check runs inside the write's transaction against the current version.
func (m ifMatch) check(current storage.Version) error {
	if !m.present || m.any {
		return nil
	}
	cur := etag(current)
	for _, t := range m.tags {
		if t == cur {
			return nil
		}
	}
	return &apiError{Status: http.StatusPreconditionFailed, Code: CodePreconditionFailed,
		Message: "If-Match does not name the current version " + cur + "; read the object again and retry"}
}
