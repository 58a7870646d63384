package storage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// The acme table holds what the certificate manager shares across the
// cluster besides certificates: ACME accounts (key sealed like certificate
// keys), challenge tokens, renewal leases, per-certificate renewal state
// and the rate-limit budget's events. The manager owns the layout of Data
// (JSON) and of keys (a kind prefix such as "account/" so each kind is one
// range scan); the store only adds what a row needs everywhere: a sealed
// secret, an expiry after which the row is dead (TTL), and replication.
//
// One table with kinds rather than one table per kind keeps this addition
// to a single declaration while the table declarations are being unified;
// splitting it later changes keys, not the manager.

// ACMERecord is one row of the acme table. Key: Key.
type ACMERecord struct {
	Key string `json:"key"`
	// Data is the manager's JSON for the row.
	Data json.RawMessage `json:"data,omitempty"`
	// Secret is sealed at rest with the store's key (AES-256-GCM, bound to
	// Key), like a certificate's private key. Never serialized in clear.
	Secret string `json:"-"`
	// ExpiresAt, when set, is when the row stops counting: readers skip it
	// and PurgeExpiredACME deletes it.
	ExpiresAt  time.Time `json:"expires_at,omitzero"`
	InsertedAt time.Time `json:"inserted_at"`
	UpdatedAt  time.Time `json:"updated_at"`
	Version    Version   `json:"version"`
}

// Expired reports whether the row's TTL has passed at now.
func (r *ACMERecord) Expired(now time.Time) bool {
	return !r.ExpiresAt.IsZero() && !now.Before(r.ExpiresAt)
}

const aadACMESecret = "singularity-edge/acme-secret/v1\x00"

func cloneACMERecord(r ACMERecord) ACMERecord {
	if len(r.Data) == 0 {
		r.Data = nil
	} else {
		r.Data = append(json.RawMessage(nil), r.Data...)
	}
	r.ExpiresAt = normTime(r.ExpiresAt)
	r.InsertedAt = normTime(r.InsertedAt)
	r.UpdatedAt = normTime(r.UpdatedAt)
	return r
}

// Record message: 1 key, 2 data, 3 secret (sealed), 4 expires_at,
// 5 inserted_at, 6 updated_at.
func encodeACMERecord(r *ACMERecord, sealed []byte) []byte {
	var e encoder
	e.str(1, r.Key)
	e.bytes(2, r.Data)
	e.bytes(3, sealed)
	e.time(4, r.ExpiresAt)
	e.time(5, r.InsertedAt)
	e.time(6, r.UpdatedAt)
	return e.b
}

func decodeACMERecord(b []byte) (ACMERecord, []byte, error) {
	var r ACMERecord
	var data, sealed []byte
	err := decodeFields(b, func(f field) error {
		switch f.num {
		case 1:
			return f.str(&r.Key)
		case 2:
			return f.bytes(&data)
		case 3:
			return f.bytes(&sealed)
		case 4:
			return f.time(&r.ExpiresAt)
		case 5:
			return f.time(&r.InsertedAt)
		case 6:
			return f.time(&r.UpdatedAt)
		}
		return nil
	})
	if err != nil {
		return ACMERecord{}, nil, fmt.Errorf("acme record: %w", err)
	}
	if len(data) > 0 {
		r.Data = append(json.RawMessage(nil), data...)
	}
	return r, sealed, nil
}

func (s *Store) decodeStoredACME(r *row) (ACMERecord, error) {
	a, sealed, err := decodeACMERecord(r.rec)
	if err != nil {
		return ACMERecord{}, corruptError(TableACME, err)
	}
	a.Version = r.version
	if sealed != nil {
		if a.Secret, err = s.keys.openACMESecret(a.Key, sealed); err != nil {
			return ACMERecord{}, err
		}
	}
	return a, nil
}

// ACMERecord decodes the row of a change in the acme table, its secret
// decrypted (a change decoded by UnmarshalChangeSet carries no key: a row
// with a secret fails there with ErrEncryptionKey). A delete returns an
// error wrapping ErrNotFound (check Deleted first).
func (c Change) ACMERecord() (ACMERecord, error) {
	if err := c.check(TableACME); err != nil {
		return ACMERecord{}, err
	}
	r, sealed, err := decodeACMERecord(c.Value)
	if err != nil {
		return ACMERecord{}, err
	}
	r.Version = c.Version
	if sealed != nil {
		if r.Secret, err = c.keys.openACMESecret(r.Key, sealed); err != nil {
			return ACMERecord{}, err
		}
	}
	return r, nil
}

// ACMERecord returns the row with key, secret decrypted; ErrNotFound when
// absent or deleted. An expired row is returned as stored: callers decide
// with Expired.
func (t *Tx) ACMERecord(key string) (ACMERecord, error) {
	return readRow(t, rowRef{TableACME, key}, cloneACMERecord, t.s.decodeStoredACME)
}

// PutACMERecord inserts or replaces the row r.Key. A secret is sealed with
// the store's key; without a configured key it fails with ErrEncryptionKey.
func (t *Tx) PutACMERecord(r *ACMERecord) error {
	if !t.writable {
		return ErrReadOnly
	}
	if err := validateKey("acme key", r.Key); err != nil {
		return err
	}
	if len(r.Data) > 0 && !json.Valid(r.Data) {
		return fmt.Errorf("%w: acme %q: data is not valid JSON", ErrInvalid, r.Key)
	}
	cp := cloneACMERecord(*r)
	var sealed []byte
	if cp.Secret != "" {
		var err error
		if sealed, err = t.s.keys.sealACMESecret(cp.Key, cp.Secret); err != nil {
			return err
		}
	}
	ref := rowRef{TableACME, r.Key}
	ins, err := t.insertedAt(ref)
	if err != nil {
		return err
	}
	cp.InsertedAt, cp.UpdatedAt, cp.Version = ins, t.now, Version{}
	if err := t.put(ref, &pending{rec: encodeACMERecord(&cp, sealed), value: &cp,
		ver: &r.Version}); err != nil {
		return err
	}
	r.InsertedAt, r.UpdatedAt = cp.InsertedAt, cp.UpdatedAt
	return nil
}

// DeleteACMERecord deletes the row, leaving a tombstone; ErrNotFound if
// absent.
func (t *Tx) DeleteACMERecord(key string) error { return t.remove(rowRef{TableACME, key}) }

// ACMERecords returns the live rows whose key starts with prefix, in key
// order, strictly after `after`, at most limit (<= 0: all). Expired rows
// are included; callers filter with Expired.
func (t *Tx) ACMERecords(prefix, after string, limit int) ([]ACMERecord, error) {
	var out []ACMERecord
	err := t.scanRows(TableACME, prefix, after, limit, func(_ string, r *row) error {
		a, err := t.s.decodeStoredACME(r)
		if err != nil {
			return err
		}
		out = append(out, a)
		return nil
	})
	return out, err
}

// GetACMERecord reads one row of the acme table.
func (s *Store) GetACMERecord(ctx context.Context, key string) (r ACMERecord, err error) {
	err = s.View(ctx, func(tx *Tx) error { r, err = tx.ACMERecord(key); return err })
	return r, err
}

// ListACMERecords reads the rows of the acme table whose key starts with
// prefix; see Tx.ACMERecords.
func (s *Store) ListACMERecords(ctx context.Context, prefix, after string, limit int) (out []ACMERecord, err error) {
	err = s.View(ctx, func(tx *Tx) error { out, err = tx.ACMERecords(prefix, after, limit); return err })
	return out, err
}

// ListACMERecordsBefore is ListACMERecords stopping at the first key at
// or after end: a range read (due rows up to a time) that reads no row
// past it.
func (s *Store) ListACMERecordsBefore(ctx context.Context, prefix, after, end string, limit int) (out []ACMERecord, err error) {
	err = s.View(ctx, func(tx *Tx) error {
		err := tx.scanRows(TableACME, prefix, after, limit, func(key string, r *row) error {
			if key >= end {
				return errStopScan
			}
			a, err := tx.s.decodeStoredACME(r)
			if err != nil {
				return err
			}
			out = append(out, a)
			return nil
		})
		if errors.Is(err, errStopScan) {
			return nil
		}
		return err
	})
	return out, err
}

var errStopScan = errors.New("storage: scan stopped")

// PurgeExpiredACME deletes the acme rows whose ExpiresAt is at or before
// now, at most limit per call (<= 0: 1000) so the transaction stays small,
// and returns how many it deleted. Every node may purge: two tombstones
// for one row merge under last-write-wins.
func (s *Store) PurgeExpiredACME(ctx context.Context, now time.Time, limit int) (int, error) {
	if limit <= 0 {
		limit = 1000
	}
	var keys []string
	err := s.View(ctx, func(tx *Tx) error {
		return tx.scanRows(TableACME, "", "", 0, func(key string, r *row) error {
			a, _, err := decodeACMERecord(r.rec)
			if err != nil {
				return corruptError(TableACME, err)
			}
			if a.Expired(now) && len(keys) < limit {
				keys = append(keys, key)
			}
			return nil
		})
	})
	if err != nil || len(keys) == 0 {
		return 0, err
	}
	n := 0
	_, err = s.Update(ctx, func(tx *Tx) error {
		n = 0
		for _, k := range keys {
			r, err := tx.ACMERecord(k)
			if errors.Is(err, ErrNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			// Re-checked inside the transaction: the row may have been
			// renewed since the scan.
			if !r.Expired(now) {
				continue
			}
			if err := tx.DeleteACMERecord(k); err != nil {
				return err
			}
			n++
		}
		return nil
	})
	return n, err
}
