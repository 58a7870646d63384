package storage

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strings"
)

// Private keys are sealed with AES-256-GCM inside the record encoding, so
// they are encrypted in every place the encoded row goes: SST files, the
// WAL, the change log, change sets sent to peers, backups and exports.
// Sealed layout: one algorithm byte (1 = AES-256-GCM), a 12-byte random
// nonce, then ciphertext and tag. The additional data binds the ciphertext
// to its certificate id, so a sealed key cannot be moved to another row.
const (
	sealAESGCM       byte = 1
	encryptionKeyLen      = 32
	aadPrivateKey         = "singularity-edge/certificate-private-key/v1\x00"
	aadKeyCheck           = "singularity-edge/key-check/v1"
	keyCheckPlain         = "singularity-edge key check"
	fingerprintLabel      = "singularity-edge/encryption-key-fingerprint/v1"
)

// KeyFingerprintSize is the length of an encryption key's fingerprint.
const KeyFingerprintSize = 16

// EncryptionKeyFingerprint identifies an encryption key so that two nodes
// can tell whether they hold the same one without sending it: the first 16
// bytes of HMAC-SHA256 keyed with the key over a label used for nothing
// else. HMAC is a PRF, so the fingerprint says nothing about the key but
// equality, and the label keeps it apart from every other use of the key.
// No key (nil) has the empty fingerprint, which no key has.
func EncryptionKeyFingerprint(key []byte) []byte {
	if key == nil {
		return nil
	}
	m := hmac.New(sha256.New, key)
	m.Write([]byte(fingerprintLabel))
	return m.Sum(nil)[:KeyFingerprintSize]
}

// keyring seals and opens private keys. A nil *keyring or one without an
// AEAD has no key: sealing fails and opening reports ErrEncryptionKey.
type keyring struct {
	aead        cipher.AEAD
	fingerprint []byte // EncryptionKeyFingerprint of the key; nil without one
}

func newKeyring(key []byte) (*keyring, error) {
	if key == nil {
		return &keyring{}, nil
	}
	if len(key) != encryptionKeyLen {
		return nil, fmt.Errorf("%w: must be %d bytes, got %d", ErrEncryptionKey, encryptionKeyLen, len(key))
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrEncryptionKey, err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrEncryptionKey, err)
	}
	return &keyring{aead: aead, fingerprint: EncryptionKeyFingerprint(key)}, nil
}

func (k *keyring) hasKey() bool { return k != nil && k.aead != nil }

// EncryptionKeyFingerprint is the fingerprint of the key the store seals
// private keys with (see EncryptionKeyFingerprint), empty without a key.
// Replication compares it with every peer's: a peer with another key could
// open none of the private keys this store sends it.
func (s *Store) EncryptionKeyFingerprint() []byte {
	if !s.keys.hasKey() {
		return nil
	}
	return append([]byte(nil), s.keys.fingerprint...)
}

func (k *keyring) seal(aad string, plain []byte) ([]byte, error) {
	if !k.hasKey() {
		return nil, fmt.Errorf("%w: no encryption key configured (set EDGE_ENCRYPTION_KEY) to store a private key", ErrEncryptionKey)
	}
	out := make([]byte, 1+k.aead.NonceSize(), 1+k.aead.NonceSize()+len(plain)+k.aead.Overhead())
	out[0] = sealAESGCM
	if _, err := rand.Read(out[1:]); err != nil {
		return nil, fmt.Errorf("storage: nonce: %w", err)
	}
	return k.aead.Seal(out, out[1:1+k.aead.NonceSize()], plain, []byte(aad)), nil
}

func (k *keyring) open(aad string, sealed []byte) ([]byte, error) {
	if !k.hasKey() {
		return nil, fmt.Errorf("%w: no encryption key configured to decrypt a stored private key", ErrEncryptionKey)
	}
	ns := k.aead.NonceSize()
	if len(sealed) < 1+ns+k.aead.Overhead() || sealed[0] != sealAESGCM {
		return nil, fmt.Errorf("%w: sealed private key is malformed", ErrCorrupt)
	}
	plain, err := k.aead.Open(nil, sealed[1:1+ns], sealed[1+ns:], []byte(aad))
	if err != nil {
		return nil, fmt.Errorf("%w: stored private key does not decrypt with the configured key", ErrEncryptionKey)
	}
	return plain, nil
}

func (k *keyring) sealPrivateKey(certID, pem string) ([]byte, error) {
	return k.seal(aadPrivateKey+certID, []byte(pem))
}

func (k *keyring) openPrivateKey(certID string, sealed []byte) (string, error) {
	plain, err := k.open(aadPrivateKey+certID, sealed)
	if err != nil {
		return "", fmt.Errorf("certificate %q: %w", certID, err)
	}
	return string(plain), nil
}

func (k *keyring) sealACMESecret(key, secret string) ([]byte, error) {
	return k.seal(aadACMESecret+key, []byte(secret))
}

func (k *keyring) openACMESecret(key string, sealed []byte) (string, error) {
	plain, err := k.open(aadACMESecret+key, sealed)
	if err != nil {
		return "", fmt.Errorf("acme record %q: %w", key, err)
	}
	return string(plain), nil
}

// ParseEncryptionKey parses EDGE_ENCRYPTION_KEY: 64 hex characters or the
// standard or URL base64 encoding (padded or not) of 32 bytes. Errors never
// repeat the input.
func ParseEncryptionKey(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, fmt.Errorf("%w: empty", ErrEncryptionKey)
	}
	if len(s) == 2*encryptionKeyLen {
		if b, err := hex.DecodeString(s); err == nil {
			return b, nil
		}
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(s); err == nil {
			if len(b) != encryptionKeyLen {
				return nil, fmt.Errorf("%w: decodes to %d bytes, want %d", ErrEncryptionKey, len(b), encryptionKeyLen)
			}
			return b, nil
		}
	}
	return nil, fmt.Errorf("%w: want 64 hex characters or base64 of %d bytes", ErrEncryptionKey, encryptionKeyLen)
}
