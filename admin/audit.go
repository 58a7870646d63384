package admin

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strings"

	"go.uber.org/zap"
)

// audit logs a configuration change at info level, the default: the
// action, the object, every changed field as "field: old -> new", and who
// asked (address, user agent, request id, and whether the request carried
// the admin token). before is nil for a create and after for a delete;
// both are API views, which never hold a private key.
func (s *Server) audit(r *http.Request, action, kind, key string, before, after any, extra ...zap.Field) {
	fields := []zap.Field{
		zap.String("action", action),
		zap.String("kind", kind),
		zap.String("key", key),
		zap.Strings("changes", changedFields(before, after)),
		zap.String("request_id", requestID(r.Context())),
		zap.String("remote", r.RemoteAddr),
		zap.String("user_agent", r.UserAgent()),
		zap.Bool("token", s.token.enabled),
	}
	s.logger.Info("configuration changed", append(fields, extra...)...)
}

// auditSkip are the fields of a view that are not configuration.
var auditSkip = map[string]bool{
	"inserted_at": true, "updated_at": true, "version": true, "stats": true,
	"observations": true, "url": true,
}

// changedFields compares two API views field by field (nested objects by
// dotted name) and renders each difference as "field: old -> new". A nil
// side shows as "-".
func changedFields(before, after any) []string {
	old, new := flatten(before), flatten(after)
	keys := make([]string, 0, len(old)+len(new))
	seen := map[string]bool{}
	for _, m := range []map[string]string{old, new} {
		for k := range m {
			if !seen[k] {
				seen[k] = true
				keys = append(keys, k)
			}
		}
	}
	sort.Strings(keys)
	out := []string{}
	for _, k := range keys {
		o, ok := old[k]
		n, nk := new[k]
		if ok == nk && o == n {
			continue
		}
		if !ok {
			o = "-"
		}
		if !nk {
			n = "-"
		}
		out = append(out, fmt.Sprintf("%s: %s -> %s", k, o, n))
	}
	return out
}

func flatten(v any) map[string]string {
	out := map[string]string{}
	if v == nil {
		return out
	}
	b, err := json.Marshal(v)
	if err != nil {
		return out
	}
	var m map[string]any
	if json.Unmarshal(b, &m) != nil {
		return out
	}
	var walk func(prefix string, m map[string]any)
	walk = func(prefix string, m map[string]any) {
		for k, v := range m {
			if prefix == "" && auditSkip[k] {
				continue
			}
			name := prefix + k
			if sub, ok := v.(map[string]any); ok && k != "metadata" {
				walk(name+".", sub)
				continue
			}
			b, _ := json.Marshal(v)
			out[name] = strings.TrimSpace(string(b))
		}
	}
	walk("", m)
	return out
}
