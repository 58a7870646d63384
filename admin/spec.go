package admin

import (
	"fmt"
	"math"
	"time"

	"github.com/singularity-ng/singularity-edge/apitypes"
	"github.com/singularity-ng/singularity-edge/internal/fielderr"
)

// Request fields are apitypes.Optional: these helpers copy a field that
// was sent onto the record and leave an omitted one alone (the record
// already holds the default, or for a PATCH the stored value). A scalar
// sent as null is refused: null neither is a value nor means "default"
// here, and guessing would store something the client did not send.

const nullMessage = "must not be null; leave the field out to keep its default (create) or its value (update)"

func apply[T any](errs *fielderr.List, field string, o apitypes.Optional[T], dst *T) {
	if !o.Set {
		return
	}
	if o.Null {
		errs.Add(field, nullMessage)
		return
	}
	*dst = o.Value
}

// maxMillis is the largest millisecond count that fits a time.Duration.
const maxMillis = math.MaxInt64 / int64(time.Millisecond)

func applyMillis(errs *fielderr.List, field string, o apitypes.Optional[int64], dst *time.Duration) {
	if !o.Set {
		return
	}
	switch {
	case o.Null:
		errs.Add(field, nullMessage)
	case o.Value < 0:
		errs.Add(field, fmt.Sprintf("must not be negative (milliseconds), got %d", o.Value))
	case o.Value > maxMillis:
		errs.Add(field, fmt.Sprintf("is too large (milliseconds), got %d", o.Value))
	default:
		*dst = time.Duration(o.Value) * time.Millisecond
	}
}

// applyMetadata applies a metadata field. "metadata": null removes every
// key. On create the map is taken as sent and a null value is refused; on
// update (merge) the map merges key by key and a null value deletes its
// key, as in a JSON merge patch (RFC 7396).
func applyMetadata(errs *fielderr.List, o apitypes.Optional[apitypes.Metadata], dst *map[string]string, merge bool) {
	if !o.Set {
		return
	}
	if o.Null {
		*dst = nil
		return
	}
	out := map[string]string{}
	if merge {
		for k, v := range *dst {
			out[k] = v
		}
	}
	for k, v := range o.Value {
		switch {
		case v != nil:
			out[k] = *v
		case merge:
			delete(out, k)
		default:
			errs.Add("metadata", fmt.Sprintf("value of %q is null; null deletes a key in an update, a new object takes strings only", k))
		}
	}
	if len(out) == 0 {
		out = nil
	}
	*dst = out
}
