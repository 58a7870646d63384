package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"
)

func TestAuditCommitsWithItsChange(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	mustUpdate(t, s, func(tx *Tx) error {
		if err := tx.PutPool(&Pool{Name: "web", Algorithm: "round_robin", SSLMode: "off"}); err != nil {
			return err
		}
		return tx.PutAudit(&AuditEntry{Action: "create", Kind: "pool", Object: "web", Changes: []string{"algorithm: - -> round_robin"}})
	})
	// A transaction that fails writes neither the change nor its audit row.
	boom := errors.New("refused")
	if _, err := s.Update(ctx, func(tx *Tx) error {
		if err := tx.PutPool(&Pool{Name: "api", Algorithm: "round_robin", SSLMode: "off"}); err != nil {
			return err
		}
		if err := tx.PutAudit(&AuditEntry{Action: "create", Kind: "pool", Object: "api"}); err != nil {
			return err
		}
		return boom
	}); !errors.Is(err, boom) {
		t.Fatalf("Update = %v, want %v", err, boom)
	}
	got, err := s.ListAudit(ctx, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Object != "web" || got[0].NodeID != s.NodeID() || got[0].Version.IsZero() || len(got[0].Changes) != 1 {
		t.Fatalf("audit rows = %+v, want the one for web", got)
	}
	if err := checkAuditKey(got[0].ID); err != nil {
		t.Fatal(err)
	}
}

func TestAuditListNewestFirstAndPrune(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	for i := range 25 {
		mustUpdate(t, s, func(tx *Tx) error {
			return tx.PutAudit(&AuditEntry{Action: "update", Kind: "pool", Object: fmt.Sprintf("p%02d", i)})
		})
	}
	page, err := s.ListAudit(ctx, "", 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(page) != 10 || page[0].Object != "p24" || page[9].Object != "p15" {
		t.Fatalf("first page = %v", objects(page))
	}
	next, err := s.ListAudit(ctx, page[9].ID, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(next) != 10 || next[0].Object != "p14" {
		t.Fatalf("second page = %v", objects(next))
	}
	n, err := s.PruneAudit(ctx, 7)
	if err != nil || n != 18 {
		t.Fatalf("PruneAudit = %d, %v; want 18 deleted", n, err)
	}
	all, err := s.ListAudit(ctx, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 7 || all[0].Object != "p24" || all[6].Object != "p18" {
		t.Fatalf("after prune = %v, want the newest 7", objects(all))
	}
	if n, err := s.PruneAudit(ctx, 7); err != nil || n != 0 {
		t.Fatalf("second PruneAudit = %d, %v; want 0", n, err)
	}
}

func objects(es []AuditEntry) []string {
	out := make([]string, len(es))
	for i, e := range es {
		out[i] = e.Object
	}
	return out
}

func TestPruneAuditUsesConfiguredBound(t *testing.T) {
	s := openStore(t, func(c *Config) { c.AuditKeep = 3 })
	ctx := context.Background()
	for i := range 5 {
		mustUpdate(t, s, func(tx *Tx) error {
			return tx.PutAudit(&AuditEntry{Action: "update", Kind: "pool", Object: fmt.Sprintf("p%d", i)})
		})
	}
	if n, err := s.PruneAudit(ctx, 0); err != nil || n != 2 {
		t.Fatalf("PruneAudit = %d, %v; want 2 deleted", n, err)
	}
	if all, err := s.ListAudit(ctx, "", 0); err != nil || len(all) != 3 {
		t.Fatalf("after prune: %v, %v; want 3 rows", objects(all), err)
	}
}

// Audit rows replicate like any replicated table: a change set carries
// the row with its change, and the peer lists it.
func TestAuditReplicates(t *testing.T) {
	ctx := context.Background()
	a := openStore(t, func(c *Config) { c.NodeID = "a" })
	b := openStore(t, func(c *Config) { c.NodeID = "b" })
	mustUpdate(t, a, func(tx *Tx) error {
		if err := tx.PutPool(&Pool{Name: "web", Algorithm: "round_robin", SSLMode: "off"}); err != nil {
			return err
		}
		return tx.PutAudit(&AuditEntry{Action: "create", Kind: "pool", Object: "web"})
	})
	sets, err := changeSetsOf(a, "a")
	if err != nil || len(sets) != 1 {
		t.Fatalf("%d sets, %v", len(sets), err)
	}
	if _, err := b.ApplyBatch(ctx, sets); err != nil {
		t.Fatal(err)
	}
	got, err := b.ListAudit(ctx, "", 0)
	if err != nil || len(got) != 1 || got[0].Object != "web" || got[0].NodeID != "a" {
		t.Fatalf("peer's audit rows: %+v, %v", got, err)
	}
	assertSameRows(t, a, b)
}

func TestAuditExportImport(t *testing.T) {
	ctx := context.Background()
	src := openStore(t)
	mustUpdate(t, src, func(tx *Tx) error {
		return tx.PutAudit(&AuditEntry{Action: "delete", Kind: "pool", Object: "old", Changes: []string{"name: \"old\" -> -"}})
	})
	var buf bytes.Buffer
	if _, err := src.Export(ctx, &buf); err != nil {
		t.Fatal(err)
	}
	dst := openStore(t)
	if _, err := dst.Import(ctx, &buf); err != nil {
		t.Fatal(err)
	}
	want, _ := src.ListAudit(ctx, "", 0)
	got, err := dst.ListAudit(ctx, "", 0)
	if err != nil || len(got) != 1 || got[0].ID != want[0].ID || got[0].Changes[0] != want[0].Changes[0] {
		t.Fatalf("imported audit rows %+v (%v), want %+v", got, err, want)
	}
}
