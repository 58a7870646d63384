package storage

import (
	"context"
	"testing"
)

func TestPointLookups(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	mustUpdate(t, s, func(tx *Tx) error {
		if err := tx.PutPool(&Pool{Name: "web", SSLDomain: "www.example.com", Hosts: []string{"example.com", "www.example.com"}, Default: true}); err != nil {
			return err
		}
		if err := tx.PutPool(&Pool{Name: "api", Hosts: []string{"*.api.example.com"}}); err != nil {
			return err
		}
		if err := tx.PutBackend(sampleBackend("b1", "web")); err != nil {
			return err
		}
		return tx.PutObservation(&Observation{BackendID: "b1", PoolName: "web", Healthy: true})
	})
	err := s.View(ctx, func(tx *Tx) error {
		for host, want := range map[string]string{"www.example.com": "web", "EXAMPLE.com": "web", "*.api.example.com": "api", "x.api.example.com": ""} {
			ps, err := tx.PoolsByHost(host)
			if err != nil {
				return err
			}
			got := ""
			if len(ps) == 1 {
				got = ps[0].Name
			}
			if len(ps) > 1 || got != want {
				t.Errorf("PoolsByHost(%q) = %v, want %q", host, ps, want)
			}
		}
		defs, err := tx.DefaultPools()
		if err != nil || len(defs) != 1 || defs[0].Name != "web" {
			t.Errorf("DefaultPools = %v, %v; want [web]", defs, err)
		}
		bs, err := tx.BackendsByAddress("web", BackendAddress("http", "10.0.0.1", 8080))
		if err != nil || len(bs) != 1 || bs[0].ID != "b1" {
			t.Errorf("BackendsByAddress = %v, %v; want [b1]", bs, err)
		}
		if bs, _ := tx.BackendsByAddress("api", BackendAddress("http", "10.0.0.1", 8080)); len(bs) != 0 {
			t.Errorf("BackendsByAddress of another pool = %v, want none", bs)
		}
		obs, err := tx.ObservationsOf("b1")
		if err != nil || len(obs) != 1 || obs[0].NodeID != s.NodeID() {
			t.Errorf("ObservationsOf = %v, %v; want this node's", obs, err)
		}
		ps, err := tx.Pools("", 0)
		if err != nil || len(ps) != 2 {
			t.Errorf("Pools = %v, %v; want 2", ps, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// Moving the default flag and a host releases the old entries.
	mustUpdate(t, s, func(tx *Tx) error {
		return tx.PutPool(&Pool{Name: "web", SSLDomain: "www.example.com"})
	})
	_ = s.View(ctx, func(tx *Tx) error {
		if ps, _ := tx.PoolsByHost("example.com"); len(ps) != 0 {
			t.Errorf("example.com still indexed: %v", ps)
		}
		if ps, _ := tx.DefaultPools(); len(ps) != 0 {
			t.Errorf("default still indexed: %v", ps)
		}
		return nil
	})
}
