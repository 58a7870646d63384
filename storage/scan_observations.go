package storage

import "context"

// ScanObservations calls fn with each live observation of node nodeID
// ("" = every node's), in key order (node, then backend id), on one
// snapshot. Unlike Observations it holds one row at a time, so an agent
// seeding a million backends at start does not first build a slice of a
// million rows. An error from fn stops the scan and is returned.
func (s *Store) ScanObservations(ctx context.Context, nodeID string, fn func(o *Observation) error) error {
	prefix := ""
	if nodeID != "" {
		prefix = nodeID + "\x00"
	}
	return s.View(ctx, func(tx *Tx) error {
		return tx.scanRows(TableObservations, prefix, "", 0, func(_ string, r *row) error {
			if err := ctx.Err(); err != nil {
				return err
			}
			o, err := decodeStoredObservation(r)
			if err != nil {
				return err
			}
			return fn(&o)
		})
	})
}
