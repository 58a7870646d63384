package admin

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"sort"

	"go.uber.org/zap"

	"github.com/singularity-ng/singularity-edge/apitypes"
	"github.com/singularity-ng/singularity-edge/storage"
)

// recordAudit writes the audit row of a change inside the transaction
// that makes it, so the row commits or rolls back with the change: the
// action, the object, every changed field as "field: old -> new", and who
// asked (address, user agent, request id, and whether the admin token
// was required). before is nil for a create and after for a delete; both
// are API views, and flatten drops PEM and key fields whatever the view.
func (s *Server) recordAudit(tx *storage.Tx, r *http.Request, action, kind, key string, before, after any) (storage.AuditEntry, error) {
	e := storage.AuditEntry{
		Action:    action,
		Kind:      kind,
		Object:    key,
		Changes:   changedFields(before, after),
		Remote:    r.RemoteAddr,
		UserAgent: r.UserAgent(),
		RequestID: requestID(r.Context()),
		Token:     s.token.enabled,
	}
	if err := tx.PutAudit(&e); err != nil {
		return storage.AuditEntry{}, fmt.Errorf("audit row: %w", err)
	}
	return e, nil
}

// logAudit logs a committed change at info level, the default.
func (s *Server) logAudit(e storage.AuditEntry, extra ...zap.Field) {
	fields := []zap.Field{
		zap.String("action", e.Action),
		zap.String("kind", e.Kind),
		zap.String("key", e.Object),
		zap.Strings("changes", e.Changes),
		zap.String("audit_id", e.ID),
		zap.String("request_id", e.RequestID),
		zap.String("remote", e.Remote),
		zap.String("user_agent", e.UserAgent),
		zap.Bool("token", e.Token),
	}
	s.logger.Info("configuration changed", append(fields, extra...)...)
}

// auditSkip are the fields of a view that are not configuration.
var auditSkip = map[string]bool{
	"inserted_at": true, "updated_at": true, "version": true, "stats": true,
	"observations": true, "url": true,
	// Certificate material never enters the audit trail, even when a
	// view carries it.
	"certificate": true, "chain": true, "private_key": true,
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

// flatten returns the fields of v's JSON encoding, nested objects by
// dotted name (metadata whole), each as its raw JSON: a value is shown as
// the view's own encoding of it, not decoded and encoded again.
func flatten(v any) map[string]string {
	out := map[string]string{}
	if v == nil {
		return out
	}
	b, err := json.Marshal(v)
	if err != nil {
		return out
	}
	if !flattenObject(out, "", b) {
		clear(out)
	}
	return out
}

// flattenObject adds the fields of the JSON object b to out. It scans
// rather than decodes (every write through the API is audited, and
// decoding each view into a map of raw values cost more than the rest
// of the audit row): b comes from encoding/json, so it is valid and
// compact, and a false return (not an object) is the only failure.
func flattenObject(out map[string]string, prefix string, b []byte) bool {
	if len(b) < 2 || b[0] != '{' || b[len(b)-1] != '}' {
		return false
	}
	for i := 1; i < len(b)-1; {
		keyEnd := jsonValueEnd(b, i)
		if b[i] != '"' || keyEnd < 0 || keyEnd >= len(b) || b[keyEnd] != ':' {
			return false
		}
		key := string(b[i+1 : keyEnd-1])
		if bytes.IndexByte(b[i:keyEnd], '\\') >= 0 && json.Unmarshal(b[i:keyEnd], &key) != nil {
			return false
		}
		i = keyEnd + 1
		end := jsonValueEnd(b, i)
		if end < 0 || end > len(b)-1 {
			return false
		}
		if val := b[i:end]; prefix != "" || !auditSkip[key] {
			name := prefix + key
			if val[0] != '{' || key == "metadata" || !flattenObject(out, name+".", val) {
				out[name] = string(val)
			}
		}
		i = end
		if b[i] == ',' {
			i++
		}
	}
	return true
}

// jsonValueEnd returns the index just past the compact JSON value that
// starts at b[i], or -1 when b ends inside it.
func jsonValueEnd(b []byte, i int) int {
	if i >= len(b) {
		return -1
	}
	depth := 0
	for j := i; j < len(b); j++ {
		switch b[j] {
		case '"':
			for j++; j < len(b) && b[j] != '"'; j++ {
				if b[j] == '\\' {
					j++
				}
			}
			if j >= len(b) {
				return -1
			}
		case '{', '[':
			depth++
			continue
		case '}', ']':
			if depth == 0 {
				return j // the end of a scalar inside an object or array
			}
			depth--
		case ',':
			if depth == 0 {
				return j
			}
			continue
		default:
			continue
		}
		if depth == 0 {
			return j + 1
		}
	}
	return -1
}

// bulkAuditView summarises a bulk backend create for its one audit row:
// the count and the first and last ids (the ids are generated in order).
func bulkAuditView(created []storage.Backend) map[string]any {
	return map[string]any{
		"count": len(created),
		"first": created[0].ID,
		"last":  created[len(created)-1].ID,
	}
}

// handleListAudit lists the audit rows newest first; ?after= takes the
// "next" cursor of the previous page.
func (s *Server) handleListAudit(w http.ResponseWriter, r *http.Request) {
	pg, err := parsePage(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	rows, err := s.store.ListAudit(r.Context(), pg.After, pg.Limit+1)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	resp, err := pageOf(rows, pg.Limit, func(e storage.AuditEntry) string { return e.ID },
		func(e storage.AuditEntry) (apitypes.AuditEntry, error) {
			changes := e.Changes
			if changes == nil {
				changes = []string{}
			}
			return apitypes.AuditEntry{
				ID: e.ID, Time: e.Time, NodeID: e.NodeID, Action: e.Action, Kind: e.Kind, Object: e.Object,
				Changes: changes, Remote: e.Remote, UserAgent: e.UserAgent, RequestID: e.RequestID, Token: e.Token,
			}, nil
		})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, resp)
}
