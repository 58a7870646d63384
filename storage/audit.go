package storage

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// TableAudit holds one row per configuration change. It is a replicated
// table like the configuration it records, so it travels with replication
// like any table; it is bounded by PruneAudit.
const TableAudit = "audit"

// DefaultAuditKeep is how many audit rows PruneAudit keeps by default.
const DefaultAuditKeep = 10000

// AuditEntry records one configuration change: who asked, what changed
// (each field as "field: old -> new") and when. The admin API builds the
// changes from its views, which never carry private keys or PEM data.
// Key: ID, which sorts by time, then node, then a per-node sequence, so
// listing newest first is one range scan.
type AuditEntry struct {
	ID        string    `json:"id"`
	Time      time.Time `json:"time"`
	NodeID    string    `json:"node_id"`
	Action    string    `json:"action"` // create, update, delete
	Kind      string    `json:"kind"`   // pool, backend, backends, certificate
	Object    string    `json:"object"` // the key of the changed object
	Changes   []string  `json:"changes"`
	Remote    string    `json:"remote"`
	UserAgent string    `json:"user_agent"`
	RequestID string    `json:"request_id"`
	Token     bool      `json:"token"` // the request carried the admin token
	Version   Version   `json:"version"`
}

// auditKey builds the sortable key of an audit row: fixed-width hex time
// in nanoseconds, the node id, and a fixed-width hex sequence.
func auditKey(t time.Time, node string, seq uint64) string {
	return fmt.Sprintf("%016x-%s-%016x", uint64(t.UnixNano()), node, seq)
}

func checkAuditKey(k string) error {
	if err := validateKey("audit key", k); err != nil {
		return err
	}
	if len(k) < 16+1+1+1+16 || k[16] != '-' || k[len(k)-17] != '-' {
		return fmt.Errorf("%w: audit key %q is not time-node-seq", ErrInvalid, k)
	}
	return nil
}

func encodeAudit(a *AuditEntry) []byte {
	var e encoder
	e.str(1, a.ID)
	e.time(2, a.Time)
	e.str(3, a.NodeID)
	e.str(4, a.Action)
	e.str(5, a.Kind)
	e.str(6, a.Object)
	e.strs(7, a.Changes)
	e.str(8, a.Remote)
	e.str(9, a.UserAgent)
	e.str(10, a.RequestID)
	e.bool(11, a.Token)
	return e.b
}

func decodeAudit(b []byte) (AuditEntry, error) {
	var a AuditEntry
	err := decodeFields(b, func(f field) error {
		switch f.num {
		case 1:
			return f.str(&a.ID)
		case 2:
			return f.time(&a.Time)
		case 3:
			return f.str(&a.NodeID)
		case 4:
			return f.str(&a.Action)
		case 5:
			return f.str(&a.Kind)
		case 6:
			return f.str(&a.Object)
		case 7:
			return f.appendStr(&a.Changes)
		case 8:
			return f.str(&a.Remote)
		case 9:
			return f.str(&a.UserAgent)
		case 10:
			return f.str(&a.RequestID)
		case 11:
			return f.bool(&a.Token)
		}
		return nil
	})
	if err != nil {
		return AuditEntry{}, fmt.Errorf("audit record: %w", err)
	}
	return a, nil
}

func decodeStoredAudit(r *row) (AuditEntry, error) {
	a, err := decodeAudit(r.rec)
	if err != nil {
		return AuditEntry{}, corruptError(TableAudit, err)
	}
	a.Version = r.version
	return a, nil
}

func cloneAudit(a AuditEntry) AuditEntry {
	a.Changes = cloneStrings(a.Changes)
	return a
}

// PutAudit records a in the transaction, so the audit row commits or
// rolls back with the change it describes. The store sets ID, Time and
// NodeID; the caller's values for them are ignored.
func (t *Tx) PutAudit(a *AuditEntry) error {
	if !t.writable {
		return ErrReadOnly
	}
	cp := cloneAudit(*a)
	cp.Time, cp.NodeID, cp.Version = t.now, t.s.NodeID(), Version{}
	cp.ID = auditKey(cp.Time, cp.NodeID, t.s.auditSeq.Add(1))
	if err := checkAuditKey(cp.ID); err != nil {
		return err
	}
	if err := t.put(rowRef{TableAudit, cp.ID}, &pending{rec: encodeAudit(&cp), value: &cp,
		ver: &a.Version}); err != nil {
		return err
	}
	a.ID, a.Time, a.NodeID = cp.ID, cp.Time, cp.NodeID
	return nil
}

// ListAudit returns audit rows newest first, starting strictly before the
// key `after` (the ID of the last row of the previous page; "" = newest),
// at most limit (<= 0: all).
func (s *Store) ListAudit(ctx context.Context, after string, limit int) ([]AuditEntry, error) {
	var out []AuditEntry
	err := s.View(ctx, func(tx *Tx) error {
		return tx.scanAuditNewest(after, func(_ string, r *row) (bool, error) {
			a, err := decodeStoredAudit(r)
			if err != nil {
				return false, err
			}
			out = append(out, a)
			return limit <= 0 || len(out) < limit, nil
		})
	})
	return out, err
}

// scanAuditNewest walks the live audit rows from the newest (or from just
// before `after`) to the oldest while fn returns true.
func (t *Tx) scanAuditNewest(after string, fn func(key string, r *row) (bool, error)) error {
	if t.done {
		return errTxDone
	}
	it := t.iterator(TableAudit)
	defer it.Close()
	if after == "" {
		it.SeekToLast()
	} else {
		it.SeekForPrev([]byte(after))
	}
	for ; it.Valid(); it.Prev() {
		key := string(it.Key().Data())
		if key == after {
			continue
		}
		r, err := decodeRow(it.Value().Data())
		if err != nil {
			return corruptError(TableAudit, fmt.Errorf("row %q: %w", key, err))
		}
		if r.deleted {
			continue
		}
		more, err := fn(key, &r)
		if err != nil || !more {
			return err
		}
	}
	if err := it.Err(); err != nil {
		return readError(TableAudit, err)
	}
	return nil
}

// auditPruneBatch bounds the rows one PruneAudit transaction deletes, so
// the pass never holds the commit lock for long.
const auditPruneBatch = 512

// PruneAudit deletes the oldest audit rows beyond the newest keep, in
// small transactions (a maintenance pass: it runs beside writers and
// never holds the commit lock for long). It returns how many it deleted.
// keep <= 0 means Config.AuditKeep.
func (s *Store) PruneAudit(ctx context.Context, keep int) (int, error) {
	if keep <= 0 {
		keep = s.cfg.AuditKeep
	}
	if keep <= 0 {
		keep = DefaultAuditKeep
	}
	var victims []string
	err := s.View(ctx, func(tx *Tx) error {
		n := 0
		return tx.scanAuditNewest("", func(key string, _ *row) (bool, error) {
			if n++; n > keep {
				victims = append(victims, key)
			}
			return true, nil
		})
	})
	if err != nil {
		return 0, fmt.Errorf("storage: prune audit: %w", err)
	}
	deleted := 0
	for len(victims) > 0 {
		batch := victims[:min(auditPruneBatch, len(victims))]
		victims = victims[len(batch):]
		if _, err := s.Update(ctx, func(tx *Tx) error {
			for _, k := range batch {
				if err := tx.remove(rowRef{TableAudit, k}); err != nil && !errors.Is(err, ErrNotFound) {
					return err
				}
			}
			return nil
		}); err != nil {
			return deleted, fmt.Errorf("storage: prune audit: %w", err)
		}
		deleted += len(batch)
	}
	return deleted, nil
}
