package admin

import (
	"net/http"
	"strconv"
	"strings"

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

func parseIfMatch(r *http.Request) (ifMatch, error) {
	values := r.Header.Values("If-Match")
	if len(values) == 0 {
		return ifMatch{}, nil
	}
	m := ifMatch{present: true}
	for _, v := range values {
		for _, part := range strings.Split(v, ",") {
			tag := strings.TrimSpace(part)
			switch {
			case tag == "":
			case tag == "*":
				m.any = true
			case strings.HasPrefix(tag, "W/"):
				// If-Match uses strong comparison: a weak tag never
				// matches, so keep it only to fail the check.
				m.tags = append(m.tags, "")
			case len(tag) >= 2 && tag[0] == '"' && tag[len(tag)-1] == '"':
				m.tags = append(m.tags, tag)
			default:
				return ifMatch{}, errInvalid(`If-Match must be "*" or a list of quoted entity tags such as "1732623000000-node1"`)
			}
		}
	}
	return m, nil
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
