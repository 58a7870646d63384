package storage

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"
)

// ScanBackendsOfPool must see exactly what ListBackendsByPool returns
// (live rows of that pool, in id order, every field), decoded in place.
func TestScanBackendsOfPoolMatchesList(t *testing.T) {
	ctx := context.Background()
	s := openStore(t)
	mustUpdate(t, s, func(tx *Tx) error {
		for _, p := range []string{"a", "b"} {
			if err := tx.PutPool(samplePool(p)); err != nil {
				return err
			}
		}
		for i := range 5 {
			b := sampleBackend(fmt.Sprintf("a-%d", i), "a")
			b.Host, b.Port, b.Weight, b.SSLVerify, b.Draining = fmt.Sprintf("10.0.0.%d", i), 8000+i, i+1, i%2 == 0, i == 3
			if i == 1 {
				b.Host = "fd00::1" // an IPv6 literal
			}
			if i == 2 {
				b.Metadata = map[string]string{"rack": "r2", "zone": "z"}
			}
			if err := tx.PutBackend(b); err != nil {
				return err
			}
		}
		return tx.PutBackend(sampleBackend("b-0", "b"))
	})
	mustUpdate(t, s, func(tx *Tx) error { return tx.DeleteBackend("a-4") })

	want, err := s.ListBackendsByPool(ctx, "a", "", 0)
	if err != nil {
		t.Fatal(err)
	}
	var got []Backend
	err = s.ScanBackendsOfPool(ctx, "a", func(r *BackendRef) error {
		b := Backend{ID: string(r.ID), PoolName: string(r.PoolName), Host: string(r.Host), Port: r.Port,
			Scheme: string(r.Scheme), Weight: r.Weight, SSLVerify: r.SSLVerify, Region: string(r.Region), Draining: r.Draining}
		full, err := r.Backend()
		if err != nil {
			return err
		}
		if r.HasMetadata != (len(full.Metadata) > 0) {
			t.Errorf("%s: HasMetadata %v, metadata %v", b.ID, r.HasMetadata, full.Metadata)
		}
		b.Metadata, b.InsertedAt, b.UpdatedAt = full.Metadata, full.InsertedAt, full.UpdatedAt
		got = append(got, b)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for i := range want {
		want[i].Version = Version{}
	}
	if !reflect.DeepEqual(got, want) || len(got) != 4 {
		t.Fatalf("scan:\n%+v\nlist:\n%+v", got, want)
	}

	stop := errors.New("stop")
	n := 0
	if err := s.ScanBackendsOfPool(ctx, "a", func(*BackendRef) error { n++; return stop }); !errors.Is(err, stop) || n != 1 {
		t.Fatalf("callback error: %v after %d rows", err, n)
	}
	if err := s.ScanBackendsOfPool(ctx, "nope", func(*BackendRef) error { t.Fatal("row of a missing pool"); return nil }); err != nil {
		t.Fatal(err)
	}
}

func TestScanObservations(t *testing.T) {
	ctx := context.Background()
	s := openStore(t)
	node := s.NodeID()
	now := time.Now().UTC().Truncate(time.Millisecond)
	obs := []Observation{
		{NodeID: node, BackendID: "b1", PoolName: "p", Healthy: true, TotalRequests: 7, LastCheck: now},
		{NodeID: node, BackendID: "b2", PoolName: "p", LastError: "refused", LastCheck: now},
	}
	if err := s.PutObservations(ctx, obs); err != nil {
		t.Fatal(err)
	}
	want, err := s.Observations(ctx, node)
	if err != nil {
		t.Fatal(err)
	}
	var got []Observation
	if err := s.ScanObservations(ctx, node, func(o *Observation) error { got = append(got, *o); return nil }); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) || len(got) != 2 {
		t.Fatalf("scan %+v, list %+v", got, want)
	}
	if err := s.ScanObservations(ctx, "other-node", func(*Observation) error { t.Fatal("another node's row"); return nil }); err != nil {
		t.Fatal(err)
	}
}
