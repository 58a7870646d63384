package storage

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseEncryptionKey(t *testing.T) {
	key := bytes.Repeat([]byte{0xab}, 32)
	tests := []struct {
		name, in string
		ok       bool
	}{
		{"hex", hex.EncodeToString(key), true},
		{"hex upper with space", " " + strings.ToUpper(hex.EncodeToString(key)) + "\n", true},
		{"base64", base64.StdEncoding.EncodeToString(key), true},
		{"raw base64", base64.RawStdEncoding.EncodeToString(key), true},
		{"url base64", base64.URLEncoding.EncodeToString(key), true},
		{"empty", "", false},
		{"short hex", hex.EncodeToString(key[:16]), false},
		{"base64 of 16 bytes", base64.StdEncoding.EncodeToString(key[:16]), false},
		{"garbage", "not a key at all!!", false},
	}
	for _, tc := range tests {
		got, err := ParseEncryptionKey(tc.in)
		if tc.ok {
			if err != nil || !bytes.Equal(got, key) {
				t.Errorf("%s: %x, %v", tc.name, got, err)
			}
			continue
		}
		if !errors.Is(err, ErrEncryptionKey) {
			t.Errorf("%s: err = %v", tc.name, err)
		}
		if tc.in != "" && err != nil && strings.Contains(err.Error(), strings.TrimSpace(tc.in)) {
			t.Errorf("%s: error repeats the input", tc.name)
		}
	}
}

// grepDir reports which files under dir contain needle.
func grepDir(t *testing.T, dir string, needle []byte) []string {
	t.Helper()
	var hits []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if bytes.Contains(b, needle) {
			hits = append(hits, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return hits
}

func TestPrivateKeyEncryptedAtRest(t *testing.T) {
	dir := t.TempDir()
	key := testKey(t)
	cfg := testConfig(t, dir)
	cfg.EncryptionKey = key
	s, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	secret := []byte("PrivateKeyMaterialForTests0123456789")
	cert := sampleCert("c1", "example.com", time.Now().Add(time.Hour))
	mustUpdate(t, s, func(tx *Tx) error { return tx.PutCertificate(cert) })
	// Public parts are stored as they are, so the scan would see the key
	// if it were stored in clear.
	if hits := grepDir(t, dir, []byte("MIIBc1")); len(hits) == 0 {
		t.Fatal("certificate PEM not found in the WAL: the scan is not looking at the data")
	}
	if hits := grepDir(t, dir, secret); len(hits) > 0 {
		t.Fatalf("private key in clear in %v (WAL)", hits)
	}
	got, err := s.GetCertificate(ctx, "c1")
	if err != nil || got.PrivateKeyPEM != testKeyPEM {
		t.Fatalf("GetCertificate: %v", err)
	}
	backupDir := filepath.Join(t.TempDir(), "backup")
	if _, err := s.Backup(ctx, backupDir); err != nil {
		t.Fatal(err)
	}
	var export bytes.Buffer
	if _, err := s.Export(ctx, &export); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil { // flushes to SST files
		t.Fatal(err)
	}
	if hits := grepDir(t, dir, []byte("MIIBc1")); len(hits) == 0 {
		t.Fatal("certificate PEM not found after flush")
	}
	for _, d := range []string{dir, backupDir} {
		if hits := grepDir(t, d, secret); len(hits) > 0 {
			t.Fatalf("private key in clear in %v", hits)
		}
	}
	if bytes.Contains(export.Bytes(), secret) || !bytes.Contains(export.Bytes(), []byte("private_key_sealed")) {
		t.Fatal("export holds the private key in clear or lacks the sealed key")
	}

	// Wrong key: Open fails clearly.
	cfg.EncryptionKey = testKey(t)
	if _, err := Open(cfg); !errors.Is(err, ErrEncryptionKey) {
		t.Fatalf("open with wrong key: %v", err)
	}
	// Missing key.
	cfg.EncryptionKey = nil
	if _, err := Open(cfg); !errors.Is(err, ErrEncryptionKey) {
		t.Fatalf("open without key: %v", err)
	}
	// Malformed key.
	cfg.EncryptionKey = key[:16]
	if _, err := Open(cfg); !errors.Is(err, ErrEncryptionKey) {
		t.Fatalf("open with short key: %v", err)
	}
	// The right key still opens it.
	cfg.EncryptionKey = key
	s, err = Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got, err := s.GetCertificate(ctx, "c1"); err != nil || got.PrivateKeyPEM != testKeyPEM {
		t.Fatalf("after reopen: %v", err)
	}
}

// A sealed key that arrived by Apply (no key check written yet) still makes
// a key mandatory at the next open.
func TestSealedKeyFromPeerRequiresKey(t *testing.T) {
	ctx := context.Background()
	key := testKey(t)
	peer := openStore(t, func(c *Config) { c.EncryptionKey = key })
	mustUpdate(t, peer, func(tx *Tx) error {
		return tx.PutCertificate(sampleCert("c1", "example.com", time.Now().Add(time.Hour)))
	})
	sets, err := changeSetsOf(peer, peer.NodeID())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	s, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := applySet(s, sets[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetCertificate(ctx, "c1"); !errors.Is(err, ErrEncryptionKey) {
		t.Fatalf("reading without key: %v", err)
	}
	s.Close()
	if _, err := Open(cfg); !errors.Is(err, ErrEncryptionKey) {
		t.Fatalf("open without key: %v", err)
	}
	cfg.EncryptionKey = testKey(t)
	if _, err := Open(cfg); !errors.Is(err, ErrEncryptionKey) {
		t.Fatalf("open with another key: %v", err)
	}
	cfg.EncryptionKey = key
	s, err = Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got, err := s.GetCertificate(ctx, "c1"); err != nil || got.PrivateKeyPEM != testKeyPEM {
		t.Fatalf("with the right key: %v", err)
	}
}

func TestSealedKeyIsBoundToItsCertificate(t *testing.T) {
	k, err := newKeyring(testKey(t))
	if err != nil {
		t.Fatal(err)
	}
	sealed, err := k.sealPrivateKey("a", "secret")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := k.openPrivateKey("b", sealed); !errors.Is(err, ErrEncryptionKey) {
		t.Fatalf("opened under another id: %v", err)
	}
	if got, err := k.openPrivateKey("a", sealed); err != nil || got != "secret" {
		t.Fatalf("open: %q %v", got, err)
	}
	if _, err := k.openPrivateKey("a", sealed[:5]); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("truncated: %v", err)
	}
}

func TestEncryptionKeyFingerprint(t *testing.T) {
	k1, k2 := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	fp1 := EncryptionKeyFingerprint(k1)
	tests := []struct {
		name  string
		a, b  []byte
		equal bool
	}{
		{"same key", fp1, EncryptionKeyFingerprint(bytes.Clone(k1)), true},
		{"different keys", fp1, EncryptionKeyFingerprint(k2), false},
		{"key and no key", fp1, EncryptionKeyFingerprint(nil), false},
		{"no key twice", EncryptionKeyFingerprint(nil), EncryptionKeyFingerprint(nil), true},
	}
	for _, tc := range tests {
		if got := bytes.Equal(tc.a, tc.b); got != tc.equal {
			t.Errorf("%s: equal = %v, want %v (%x, %x)", tc.name, got, tc.equal, tc.a, tc.b)
		}
	}
	if len(fp1) != KeyFingerprintSize || len(EncryptionKeyFingerprint(nil)) != 0 {
		t.Fatalf("sizes: %d and %d", len(fp1), len(EncryptionKeyFingerprint(nil)))
	}
	// Nodes of different versions compare fingerprints: the derivation is
	// part of the replication protocol and must not change.
	if got := hex.EncodeToString(fp1); got != "c635d8e28c9fb4629e40394e75757e86" {
		t.Fatalf("fingerprint of the test key changed: %s", got)
	}

	// A store reports the fingerprint of the key it opened with.
	s := openStore(t, func(c *Config) { c.EncryptionKey = k1 })
	if got := s.EncryptionKeyFingerprint(); !bytes.Equal(got, fp1) {
		t.Fatalf("store fingerprint %x, want %x", got, fp1)
	}
	if got := openStore(t).EncryptionKeyFingerprint(); len(got) != 0 {
		t.Fatalf("store without a key: fingerprint %x, want none", got)
	}
}
