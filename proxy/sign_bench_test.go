package proxy

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"testing"
)

// BenchmarkHandshakeSignature is the server's signature in a full TLS 1.3
// handshake (RSA-PSS for RSA-2048, ECDSA for P-256), the part of S2b that
// Go's crypto decides: compare with `openssl speed rsa2048 ecdsap256` run
// on the same core (docs/BENCHMARKS.md).
func BenchmarkHandshakeSignature(b *testing.B) {
	digest := sha256.Sum256([]byte("transcript"))
	b.Run("rsa2048-pss", func(b *testing.B) {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			b.Fatal(err)
		}
		opts := &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256}
		b.ResetTimer()
		for b.Loop() {
			if _, err := k.Sign(rand.Reader, digest[:], opts); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("ecdsa-p256", func(b *testing.B) {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			b.Fatal(err)
		}
		b.ResetTimer()
		for b.Loop() {
			if _, err := k.Sign(rand.Reader, digest[:], crypto.SHA256); err != nil {
				b.Fatal(err)
			}
		}
	})
}
