package certs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/singularity-ng/singularity-edge/storage"
)

// keyOnDemand prefixes on-demand requests in the acme table:
// "ondemand/<name>", a TTL row, replicated like every acme row so the
// certificate's owner sees it.
const keyOnDemand = "ondemand/"

// PutOnDemandRequest implements OnDemandStore.
func (b *StoreBackend) PutOnDemandRequest(ctx context.Context, r OnDemandRequest, expires time.Time) error {
	_, err := b.store.Update(ctx, func(tx *storage.Tx) error {
		return putJSON(tx, keyOnDemand+r.Name, r, "", expires)
	})
	return err
}

// OnDemandRequests implements OnDemandStore. Readers skip expired rows.
func (b *StoreBackend) OnDemandRequests(ctx context.Context) ([]OnDemandRequest, error) {
	recs, err := b.store.ListACMERecords(ctx, keyOnDemand, "", 0)
	if err != nil {
		return nil, err
	}
	now := b.now()
	out := make([]OnDemandRequest, 0, len(recs))
	for _, r := range recs {
		if r.Expired(now) {
			continue
		}
		var req OnDemandRequest
		if err := json.Unmarshal(r.Data, &req); err != nil {
			return nil, fmt.Errorf("certs: stored on-demand request %s: %w", r.Key, err)
		}
		out = append(out, req)
	}
	return out, nil
}

// WatchOnDemandRequests implements OnDemandStore over the store's change
// feed. A subscription that ends early (the feed pruned past it) starts
// again from the newest commit; the caller's periodic rescan covers what
// it missed.
func (b *StoreBackend) WatchOnDemandRequests(ctx context.Context, wake chan<- struct{}) {
	for ctx.Err() == nil {
		sub := b.store.Subscribe(ctx, b.store.LastIndex())
		for ev := range sub.Events() {
			for _, c := range ev.Set.Changes {
				if c.Table == storage.TableACME && !c.Deleted && strings.HasPrefix(c.Key, keyOnDemand) {
					select {
					case wake <- struct{}{}:
					default:
					}
					break
				}
			}
		}
		if err := sub.Err(); errors.Is(err, storage.ErrClosed) {
			return
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

var _ OnDemandStore = (*StoreBackend)(nil)
