package storage

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"
)

func TestACMERecords(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	cfg.EncryptionKey = testKey(t)
	s, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	secret := "AccountKeyMaterialForTests0123456789"
	now := time.Now().UTC()
	recs := []*ACMERecord{
		{Key: "account/https://ca.test/dir", Data: json.RawMessage(`{"uri":"https://ca.test/acct/1"}`), Secret: secret},
		{Key: "token/a", Data: json.RawMessage(`{"key_auth":"x"}`), ExpiresAt: now.Add(-time.Second)},
		{Key: "token/b", Data: json.RawMessage(`{"key_auth":"y"}`), ExpiresAt: now.Add(time.Hour)},
	}
	mustUpdate(t, s, func(tx *Tx) error {
		for _, r := range recs {
			if err := tx.PutACMERecord(r); err != nil {
				return err
			}
		}
		return nil
	})
	if recs[0].Version.IsZero() {
		t.Fatal("version not written back")
	}
	got, err := s.GetACMERecord(ctx, "account/https://ca.test/dir")
	if err != nil || got.Secret != secret || string(got.Data) != `{"uri":"https://ca.test/acct/1"}` {
		t.Fatalf("GetACMERecord = %+v, %v", got, err)
	}
	if hits := grepDir(t, dir, []byte(secret)); len(hits) > 0 {
		t.Fatalf("acme secret in clear in %v", hits)
	}
	var export bytes.Buffer
	if _, err := s.Export(ctx, &export); err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(export.Bytes(), []byte(secret)) {
		t.Fatal("export holds the acme secret in clear")
	}

	tokens, err := s.ListACMERecords(ctx, "token/", "", 0)
	if err != nil || len(tokens) != 2 || tokens[0].Key != "token/a" {
		t.Fatalf("ListACMERecords = %+v, %v", tokens, err)
	}
	if !tokens[0].Expired(now) || tokens[1].Expired(now) {
		t.Fatal("Expired disagrees with ExpiresAt")
	}
	n, err := s.PurgeExpiredACME(ctx, now, 0)
	if err != nil || n != 1 {
		t.Fatalf("PurgeExpiredACME = %d, %v; want 1", n, err)
	}
	if _, err := s.GetACMERecord(ctx, "token/a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("expired token survived the purge: %v", err)
	}
	if _, err := s.GetACMERecord(ctx, "token/b"); err != nil {
		t.Fatalf("live token purged: %v", err)
	}

	// Invalid input is refused, nothing stored.
	if _, err := s.Update(ctx, func(tx *Tx) error {
		return tx.PutACMERecord(&ACMERecord{Key: "bad", Data: json.RawMessage(`{`)})
	}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("invalid JSON: %v", err)
	}

	// Import into a store with the same key reproduces the rows, the
	// secret still sealed and readable.
	cfg2 := testConfig(t, t.TempDir())
	cfg2.EncryptionKey = cfg.EncryptionKey
	s2, err := Open(cfg2)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if _, err := s2.Import(ctx, bytes.NewReader(export.Bytes())); err != nil {
		t.Fatal(err)
	}
	if got, err := s2.GetACMERecord(ctx, "account/https://ca.test/dir"); err != nil || got.Secret != secret {
		t.Fatalf("after import: %+v, %v", got, err)
	}
	if err := s.Verify(ctx); err != nil {
		t.Fatal(err)
	}
}

// A sealed secret is bound to its key: moved to another row it does not open.
func TestACMESecretBoundToKey(t *testing.T) {
	k, err := newKeyring(testKey(t))
	if err != nil {
		t.Fatal(err)
	}
	sealed, err := k.seal(aadACMESecret+"account/a", []byte("s"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := k.open(aadACMESecret+"account/b", sealed); !errors.Is(err, ErrEncryptionKey) {
		t.Fatalf("moved secret opened: %v", err)
	}
}

// The feed's acme changes decode to the row as written, secret opened,
// so that a subscriber never reads the table back.
func TestACMERecordFromFeed(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cfg := testConfig(t, t.TempDir())
	cfg.EncryptionKey = testKey(t)
	s, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	sub := s.Subscribe(ctx, s.LastIndex())

	exp := time.Now().Add(time.Hour).UTC().Truncate(time.Millisecond)
	want := &ACMERecord{Key: "account/x", Data: json.RawMessage(`{"uri":"u"}`), Secret: "sealed-secret", ExpiresAt: exp}
	mustUpdate(t, s, func(tx *Tx) error { return tx.PutACMERecord(want) })
	ev := recv(t, sub.Events(), "the put's event")
	if len(ev.Set.Changes) != 1 {
		t.Fatalf("event has %d changes", len(ev.Set.Changes))
	}
	got, err := ev.Set.Changes[0].ACMERecord()
	if err != nil {
		t.Fatal(err)
	}
	if got.Key != want.Key || string(got.Data) != string(want.Data) || got.Secret != want.Secret ||
		!got.ExpiresAt.Equal(exp) || got.Version != want.Version {
		t.Fatalf("decoded %+v, wrote %+v", got, want)
	}

	mustUpdate(t, s, func(tx *Tx) error { return tx.DeleteACMERecord(want.Key) })
	ev = recv(t, sub.Events(), "the delete's event")
	if ch := ev.Set.Changes[0]; !ch.Deleted {
		t.Fatal("delete not marked")
	} else if _, err := ch.ACMERecord(); !errors.Is(err, ErrNotFound) {
		t.Fatalf("decoding a delete: %v", err)
	}
}
