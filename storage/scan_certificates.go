package storage

import (
	"context"
	"time"
)

// scanCertBatch is how many certificates ScanCertificatesExpiringBefore
// reads with one MultiGet.
const scanCertBatch = 256

// ScanCertificatesExpiringBefore calls fn with each certificate whose
// ExpiresAt is before t, soonest first, private key decrypted, on one
// snapshot. It reads them scanCertBatch at a time, so that a pass over
// 100,000 certificates holds one batch where CertificatesExpiringBefore
// holds them all. An error from fn stops the scan and is returned.
func (s *Store) ScanCertificatesExpiringBefore(ctx context.Context, t time.Time, fn func(c *Certificate) error) error {
	return s.View(ctx, func(tx *Tx) error {
		it := tx.iterator(cfIndex)
		defer it.Close()
		end := expiryKey(t)
		ids := make([]string, 0, scanCertBatch)
		flush := func() error {
			rows, err := multiGetRows(s, tx.ro, TableCertificates, ids, tx.now.UnixMilli(), s.decodeStoredCertificate)
			if err != nil {
				return err
			}
			ids = ids[:0]
			for i := range rows {
				if err := fn(&rows[i]); err != nil {
					return err
				}
			}
			return ctx.Err()
		}
		for it.Seek([]byte{idxCertExpiry}); it.Valid(); it.Next() {
			k := it.Key().Data()
			if k[0] != idxCertExpiry || len(k) < expiryKeyLen || string(k[:expiryKeyLen]) >= string(end) {
				break
			}
			ids = append(ids, string(k[expiryKeyLen:]))
			if len(ids) == scanCertBatch {
				if err := flush(); err != nil {
					return err
				}
			}
		}
		if err := it.Err(); err != nil {
			return readError(cfIndex, err)
		}
		return flush()
	})
}
