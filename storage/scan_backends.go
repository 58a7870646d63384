package storage

import (
	"context"
	"fmt"

	"github.com/linxGnu/grocksdb"
	"google.golang.org/protobuf/encoding/protowire"
)

// BackendRef is a backend row decoded in place by ScanBackendsOfPool: its
// byte slices alias RocksDB's buffer and are valid only during the call
// that receives it. A reader that keeps a field copies it; one that keeps
// little of a row (a routing table keeps the id and the address, interns
// the scheme and region, and drops the pool name) allocates only for that.
type BackendRef struct {
	ID, PoolName, Host, Scheme, Region []byte
	Port, Weight                       int
	SSLVerify, Draining                bool
	// HasMetadata says the row has metadata; Backend decodes it.
	HasMetadata bool

	rec []byte
}

// Backend decodes the whole row, every field copied (its Version is not
// set: ScanBackendsOfPool does not decode it).
func (r *BackendRef) Backend() (Backend, error) {
	b, err := decodeBackend(r.rec)
	if err != nil {
		return Backend{}, corruptError(TableBackends, err)
	}
	return b, nil
}

// ScanBackendsOfPool calls fn with each live backend of pool, ordered by
// position (BackendPosition: address, then id), from one range scan of
// the covering pool index on one snapshot. Each row is decoded in place
// into one reused BackendRef: no allocation per row. An error from fn
// stops the scan and is returned.
func (s *Store) ScanBackendsOfPool(ctx context.Context, pool string, fn func(r *BackendRef) error) error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	if err := ctx.Err(); err != nil {
		return err
	}
	prefix := indexPrefix(idxBackendPool, pool)
	ro := grocksdb.NewDefaultReadOptions()
	defer ro.Destroy()
	ro.SetIterateUpperBound(prefixEnd(prefix))
	it := s.base.NewIteratorCF(ro, s.cfs[cfIndex])
	defer it.Close()
	nowMs := s.cfg.Now().UnixMilli()
	var ref BackendRef
	for it.Seek(prefix); it.Valid(); it.Next() {
		live, err := decodeBackendRef(it.Value().Data(), nowMs, &ref)
		if err != nil {
			id := rowKeyAt(string(it.Key().Data()[len(prefix):]))
			return corruptError(cfIndex, fmt.Errorf("backends of pool %q: entry of %q: %w", pool, id, err))
		}
		if !live {
			continue
		}
		if err := fn(&ref); err != nil {
			return err
		}
	}
	if err := it.Err(); err != nil {
		return readError(cfIndex, err)
	}
	return nil
}

// decodeBackendRef decodes a stored row's envelope and backend record into
// ref, aliasing b; live is false for a deleted or expired row.
func decodeBackendRef(b []byte, nowMs int64, ref *BackendRef) (live bool, err error) {
	body, err := checkFormat(b)
	if err != nil {
		return false, err
	}
	var r row
	hasRec := false
	err = decodeFields(body, func(f field) error {
		switch f.num {
		case 4:
			return f.bool(&r.deleted)
		case 5:
			hasRec = true
			if err := f.want(protowire.BytesType); err != nil {
				return err
			}
			r.rec = f.b
		case 6:
			var ms uint64
			if err := f.uint64(&ms); err != nil {
				return err
			}
			r.expires = int64(ms)
		}
		return nil
	})
	if err != nil {
		return false, err
	}
	if r.deleted || r.expiredAt(nowMs) {
		return false, nil
	}
	if !hasRec {
		return false, errWire("live row without a record")
	}
	*ref = BackendRef{rec: r.rec}
	err = decodeFields(r.rec, func(f field) error {
		switch f.num {
		case 1:
			return f.raw(&ref.ID)
		case 2:
			return f.raw(&ref.PoolName)
		case 3:
			return f.raw(&ref.Host)
		case 4:
			return f.int(&ref.Port)
		case 5:
			return f.raw(&ref.Scheme)
		case 6:
			return f.int(&ref.Weight)
		case 7:
			return f.bool(&ref.SSLVerify)
		case 8:
			return f.raw(&ref.Region)
		case 9:
			return f.bool(&ref.Draining)
		case 10:
			ref.HasMetadata = true
		}
		return nil
	})
	if err != nil {
		return false, corruptError(TableBackends, fmt.Errorf("backend record: %w", err))
	}
	return true, nil
}

// raw sets dst to the field's bytes without copying them.
func (f field) raw(dst *[]byte) error {
	if err := f.want(protowire.BytesType); err != nil {
		return err
	}
	*dst = f.b
	return nil
}
