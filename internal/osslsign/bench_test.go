package osslsign

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"testing"
)

// BenchmarkSign is the server's signature of a full TLS 1.3 handshake:
// this package's Signer beside the Go key it wraps (the anchor), run in
// the same invocation. Compare with `openssl speed rsa2048 ecdsap256` on
// the same core.
func BenchmarkSign(b *testing.B) {
	digest := digestOf(crypto.SHA256, "transcript")
	pss := &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256}
	rsaKey := testRSAKey(b)
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct {
		name string
		key  crypto.Signer
		opts crypto.SignerOpts
	}{
		{"rsa2048-pss", rsaKey, pss},
		{"rsa2048-pkcs1v15", rsaKey, crypto.SHA256},
		{"ecdsa-p256", ecKey, crypto.SHA256},
	} {
		b.Run(bc.name+"/go", func(b *testing.B) {
			for b.Loop() {
				if _, err := bc.key.Sign(rand.Reader, digest, bc.opts); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(bc.name+"/openssl", func(b *testing.B) {
			var c Counters
			s := newSigner(b, bc.key, &c)
			for b.Loop() {
				if _, err := s.Sign(rand.Reader, digest, bc.opts); err != nil {
					b.Fatal(err)
				}
			}
			if Available() && c.OpenSSL.Load() == 0 {
				b.Fatal("OpenSSL made no signature")
			}
		})
	}
}

// BenchmarkFirstSign is a certificate's first handshake signature, key
// import included (what a handshake pays after the certificate cache
// parsed the certificate again), beside Go's signature alone.
func BenchmarkFirstSign(b *testing.B) {
	digest := digestOf(crypto.SHA256, "transcript")
	pss := &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256}
	key := testRSAKey(b)
	b.Run("rsa2048-pss/go", func(b *testing.B) {
		for b.Loop() {
			if _, err := key.Sign(rand.Reader, digest, pss); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("rsa2048-pss/openssl", func(b *testing.B) {
		for b.Loop() {
			s := newSigner(b, key, nil)
			if _, err := s.Sign(rand.Reader, digest, pss); err != nil {
				b.Fatal(err)
			}
		}
	})
}
