package storage

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
)

func TestRekey(t *testing.T) {
	ctx := context.Background()
	oldKey, newKey := testKey(t), testKey(t)
	cfg := testConfig(t, t.TempDir())
	cfg.EncryptionKey = oldKey

	s, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	exp := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	noKey := sampleCert("nokey", "plain.example.com", exp, "plain.example.com")
	noKey.PrivateKeyPEM = ""
	if _, err := s.Update(ctx, func(tx *Tx) error {
		for _, c := range []*Certificate{
			sampleCert("c1", "a.example.com", exp, "a.example.com"),
			sampleCert("c2", "b.example.com", exp, "b.example.com"),
			sampleCert("gone", "c.example.com", exp, "c.example.com"),
			noKey,
		} {
			if err := tx.PutCertificate(c); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Update(ctx, func(tx *Tx) error { return tx.DeleteCertificate("gone") }); err != nil {
		t.Fatal(err)
	}
	before, err := s.GetCertificate(ctx, "c1")
	if err != nil {
		t.Fatal(err)
	}
	lastIndex := s.LastIndex()

	// A running store holds the lock: Rekey must not touch it.
	if _, err := Rekey(cfg, newKey); err == nil {
		t.Fatal("Rekey ran on an open store")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	res, err := Rekey(cfg, newKey)
	if err != nil {
		t.Fatalf("Rekey: %v", err)
	}
	if res.Certificates != 2 {
		t.Errorf("resealed %d certificates, want 2 (c1, c2; not the deleted one or the one without a key)", res.Certificates)
	}

	// The old key no longer opens the store.
	if _, err := Open(cfg); !errors.Is(err, ErrEncryptionKey) {
		t.Fatalf("Open with the old key after Rekey: %v, want ErrEncryptionKey", err)
	}
	cfg.EncryptionKey = newKey
	s2, err := Open(cfg)
	if err != nil {
		t.Fatalf("Open with the new key: %v", err)
	}
	defer s2.Close()
	after, err := s2.GetCertificate(ctx, "c1")
	if err != nil {
		t.Fatal(err)
	}
	if after.PrivateKeyPEM != testKeyPEM || after.Version != before.Version || after.Fingerprint != before.Fingerprint {
		t.Errorf("c1 after Rekey: key ok %v, version %v (was %v)", after.PrivateKeyPEM == testKeyPEM, after.Version, before.Version)
	}
	if got := s2.LastIndex(); got != lastIndex {
		t.Errorf("Rekey committed: last index %d, was %d", got, lastIndex)
	}
	if _, err := s2.GetCertificate(ctx, "gone"); !errors.Is(err, ErrNotFound) {
		t.Errorf("deleted certificate after Rekey: %v", err)
	}
	if err := s2.Verify(ctx); err != nil {
		t.Errorf("Verify after Rekey: %v", err)
	}
}

func TestRekeyRefuses(t *testing.T) {
	key := testKey(t)
	cfg := testConfig(t, t.TempDir())
	cfg.EncryptionKey = key
	s, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	wrong := cfg
	wrong.EncryptionKey = testKey(t)
	noCurrent := cfg
	noCurrent.EncryptionKey = nil
	tests := []struct {
		name   string
		cfg    Config
		newKey []byte
		want   error
	}{
		{"same key", cfg, key, ErrInvalid},
		{"wrong current key", wrong, testKey(t), ErrEncryptionKey},
		{"no current key", noCurrent, testKey(t), ErrEncryptionKey},
		{"no new key", cfg, nil, ErrEncryptionKey},
		{"short new key", cfg, []byte("short"), ErrEncryptionKey},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Rekey(tc.cfg, tc.newKey); !errors.Is(err, tc.want) {
				t.Errorf("Rekey: %v, want %v", err, tc.want)
			}
		})
	}
	// Refusals leave the store on its key.
	s, err = Open(cfg)
	if err != nil {
		t.Fatalf("store no longer opens with its key: %v", err)
	}
	s.Close()
}

func TestReplaceBytesFieldKeepsOtherFields(t *testing.T) {
	var msg []byte
	msg = protowire.AppendTag(msg, 1, protowire.BytesType)
	msg = protowire.AppendString(msg, "id")
	msg = protowire.AppendTag(msg, 5, protowire.BytesType)
	msg = protowire.AppendBytes(msg, []byte("old"))
	msg = protowire.AppendTag(msg, 99, protowire.VarintType) // a field from a newer version
	msg = protowire.AppendVarint(msg, 7)

	out, err := replaceBytesField(msg, 5, []byte("new"))
	if err != nil {
		t.Fatal(err)
	}
	got := map[protowire.Number][]byte{}
	for b := out; len(b) > 0; {
		n, typ, l := protowire.ConsumeTag(b)
		m := protowire.ConsumeFieldValue(n, typ, b[l:])
		if l < 0 || m < 0 {
			t.Fatalf("output does not parse: %x", out)
		}
		got[n] = append(got[n], b[l:l+m]...)
		b = b[l+m:]
	}
	if v, _ := protowire.ConsumeBytes(got[5]); !bytes.Equal(v, []byte("new")) {
		t.Errorf("field 5 = %q", v)
	}
	if v, _ := protowire.ConsumeBytes(got[1]); string(v) != "id" {
		t.Errorf("field 1 = %q", v)
	}
	if v, _ := protowire.ConsumeVarint(got[99]); v != 7 {
		t.Errorf("unknown field 99 lost: %v", got[99])
	}
	if _, err := replaceBytesField([]byte{0xff}, 5, nil); err == nil {
		t.Error("a truncated message was accepted")
	}
}
