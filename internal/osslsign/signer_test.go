package osslsign

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	_ "crypto/sha1"
	_ "crypto/sha256"
	_ "crypto/sha512"
	"errors"
	"fmt"
	"sync"
	"testing"
)

// Keys are generated once per test binary: RSA generation takes a while.
var (
	keysOnce sync.Once
	rsaKey   *rsa.PrivateKey
	rsaErr   error
)

func testRSAKey(tb testing.TB) *rsa.PrivateKey {
	tb.Helper()
	keysOnce.Do(func() { rsaKey, rsaErr = rsa.GenerateKey(rand.Reader, 2048) })
	if rsaErr != nil {
		tb.Fatal(rsaErr)
	}
	return rsaKey
}

func digestOf(h crypto.Hash, msg string) []byte {
	w := h.New()
	w.Write([]byte(msg))
	return w.Sum(nil)
}

func newSigner(tb testing.TB, key crypto.Signer, c *Counters) *Signer {
	tb.Helper()
	s, err := New(key, Config{Counters: c})
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

// wantEngine checks which engine made the signatures counted so far.
func wantEngine(t *testing.T, c *Counters, native, goKey uint64) {
	t.Helper()
	if !Available() {
		goKey, native = goKey+native, 0
	}
	if got := c.OpenSSL.Load(); got != native {
		t.Errorf("%d signatures by OpenSSL, want %d", got, native)
	}
	if got := c.Go.Load(); got != goKey {
		t.Errorf("%d signatures by the Go key, want %d", got, goKey)
	}
}

func TestRSASignaturesVerify(t *testing.T) {
	key := testRSAKey(t)
	hashes := []crypto.Hash{crypto.SHA1, crypto.SHA224, crypto.SHA256, crypto.SHA384, crypto.SHA512}
	salts := []int{rsa.PSSSaltLengthEqualsHash, rsa.PSSSaltLengthAuto, 1, 20}
	var c Counters
	s := newSigner(t, key, &c)
	n := uint64(0)
	for _, h := range hashes {
		digest := digestOf(h, "transcript "+h.String())
		t.Run(h.String()+"/pkcs1v15", func(t *testing.T) {
			sig, err := s.Sign(rand.Reader, digest, h)
			if err != nil {
				t.Fatal(err)
			}
			if err := rsa.VerifyPKCS1v15(&key.PublicKey, h, digest, sig); err != nil {
				t.Fatalf("Go does not verify the signature: %v", err)
			}
			// PKCS #1 v1.5 is deterministic: byte for byte Go's.
			want, err := rsa.SignPKCS1v15(nil, key, h, digest)
			if err != nil {
				t.Fatal(err)
			}
			if string(sig) != string(want) {
				t.Error("signature differs from Go's")
			}
		})
		n++
		for _, salt := range salts {
			t.Run(fmt.Sprintf("%v/pss-salt%d", h, salt), func(t *testing.T) {
				opts := &rsa.PSSOptions{SaltLength: salt, Hash: h}
				sig, err := s.Sign(rand.Reader, digest, opts)
				if err != nil {
					t.Fatal(err)
				}
				// Verify with the salt length the signer claims.
				if err := rsa.VerifyPSS(&key.PublicKey, h, digest, sig, opts); err != nil {
					t.Fatalf("Go does not verify the signature: %v", err)
				}
				if salt == rsa.PSSSaltLengthAuto {
					// Auto means the largest salt when signing: the
					// signature must also verify with that exact length.
					max := (key.N.BitLen()-1+7)/8 - h.Size() - 2
					if err := rsa.VerifyPSS(&key.PublicKey, h, digest, sig, &rsa.PSSOptions{SaltLength: max}); err != nil {
						t.Fatalf("salt is not the largest (%d bytes): %v", max, err)
					}
				}
				if err := rsa.VerifyPSS(&key.PublicKey, h, digestOf(h, "other"), sig, opts); err == nil {
					t.Fatal("signature verifies for another digest")
				}
			})
			n++
		}
	}
	wantEngine(t, &c, n, 0)
	if Available() && !s.Native() {
		t.Errorf("key not held by OpenSSL after signing: %v", s.ImportError())
	}
}

// TLS 1.3 and TLS 1.2 signatures, as crypto/tls asks for them.
func TestRSATLSOptionsNative(t *testing.T) {
	var c Counters
	s := newSigner(t, testRSAKey(t), &c)
	for _, opts := range []crypto.SignerOpts{
		&rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256},
		&rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA384},
		&rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA512},
		crypto.SHA256, crypto.SHA384, crypto.SHA512, crypto.SHA1,
	} {
		if _, err := s.Sign(rand.Reader, digestOf(opts.HashFunc(), "x"), opts); err != nil {
			t.Fatalf("%v: %v", opts, err)
		}
	}
	wantEngine(t, &c, 7, 0)
}

// Valid options OpenSSL is not given are signed by the Go key, exactly as
// Go would.
func TestRSAGoKeySignsTheRest(t *testing.T) {
	key := testRSAKey(t)
	var c Counters
	s := newSigner(t, key, &c)
	// TLS 1.0's MD5+SHA-1 and a raw PKCS #1 v1.5 signature.
	for _, tc := range []struct {
		h      crypto.Hash
		digest []byte
	}{
		{crypto.MD5SHA1, make([]byte, 36)},
		{0, []byte("prehashed elsewhere")},
	} {
		sig, err := s.Sign(rand.Reader, tc.digest, tc.h)
		if err != nil {
			t.Fatalf("%v: %v", tc.h, err)
		}
		if err := rsa.VerifyPKCS1v15(&key.PublicKey, tc.h, tc.digest, sig); err != nil {
			t.Fatalf("%v: %v", tc.h, err)
		}
	}
	if got := c.Go.Load(); got != 2 {
		t.Errorf("%d signatures by the Go key, want 2", got)
	}
}

func TestWrongOptionsRefused(t *testing.T) {
	key := testRSAKey(t)
	var c Counters
	s := newSigner(t, key, &c)
	sha256Digest := digestOf(crypto.SHA256, "x")
	for _, tc := range []struct {
		name   string
		digest []byte
		opts   crypto.SignerOpts
	}{
		{"nil opts", sha256Digest, nil},
		{"empty digest", nil, crypto.SHA256},
		{"short digest", sha256Digest[:31], crypto.SHA256},
		{"long digest", append(sha256Digest, 0), crypto.SHA256},
		{"digest of another hash", sha256Digest, crypto.SHA384},
		{"pss digest of another hash", sha256Digest, &rsa.PSSOptions{Hash: crypto.SHA512}},
		{"pss without hash", sha256Digest, &rsa.PSSOptions{}},
		{"pss negative salt", sha256Digest, &rsa.PSSOptions{Hash: crypto.SHA256, SaltLength: -3}},
		{"pss salt too long", sha256Digest, &rsa.PSSOptions{Hash: crypto.SHA256, SaltLength: 256 - 32 - 1}},
		{"unknown hash", sha256Digest, crypto.Hash(200)},
		{"hash not linked", make([]byte, 16), crypto.MD4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sig, err := s.Sign(rand.Reader, tc.digest, tc.opts)
			if err == nil {
				t.Fatalf("signed (%d bytes), want an error", len(sig))
			}
		})
	}
	if n := c.OpenSSL.Load(); n != 0 {
		t.Errorf("OpenSSL made %d signatures for refused options", n)
	}
}

func TestECDSASignaturesVerify(t *testing.T) {
	for _, curve := range []elliptic.Curve{elliptic.P256(), elliptic.P384(), elliptic.P521()} {
		t.Run(curve.Params().Name, func(t *testing.T) {
			key, err := ecdsa.GenerateKey(curve, rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			var c Counters
			s := newSigner(t, key, &c)
			for _, h := range []crypto.Hash{crypto.SHA256, crypto.SHA384, crypto.SHA512} {
				digest := digestOf(h, "transcript")
				sig, err := s.Sign(rand.Reader, digest, h)
				if err != nil {
					t.Fatal(err)
				}
				if !ecdsa.VerifyASN1(&key.PublicKey, digest, sig) {
					t.Fatalf("%v: Go does not verify the signature", h)
				}
				if ecdsa.VerifyASN1(&key.PublicKey, digestOf(h, "other"), sig) {
					t.Fatalf("%v: signature verifies for another digest", h)
				}
			}
			wantEngine(t, &c, 3, 0)
		})
	}
}

func TestUnsupportedKeys(t *testing.T) {
	_, ed, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	small, err := rsa.GenerateKey(rand.Reader, 512)
	if err == nil {
		if _, err := New(small, Config{}); !errors.Is(err, ErrUnsupported) {
			t.Errorf("512-bit RSA: %v, want ErrUnsupported", err)
		}
	}
	p224, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []crypto.Signer{ed, p224} {
		if _, err := New(key, Config{}); !errors.Is(err, ErrUnsupported) {
			t.Errorf("%T: %v, want ErrUnsupported", key, err)
		}
	}
}

// The key goes to OpenSSL on the first signature, not before.
func TestImportIsLazy(t *testing.T) {
	s := newSigner(t, testRSAKey(t), nil)
	if s.Native() {
		t.Fatal("key imported before any signature")
	}
	if _, err := s.Sign(rand.Reader, digestOf(crypto.SHA256, "x"), crypto.SHA256); err != nil {
		t.Fatal(err)
	}
	if s.Native() != Available() {
		t.Fatalf("native = %v after a signature, OpenSSL available = %v (import error: %v)", s.Native(), Available(), s.ImportError())
	}
}

// A key whose public half OpenSSL does not reproduce is refused.
func TestImportChecksPublicKey(t *testing.T) {
	if !Available() {
		t.Skip("built without OpenSSL")
	}
	key := testRSAKey(t)
	other, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := importKey(key, &other.PublicKey); err == nil {
		t.Fatal("imported a key against another key's public half")
	}
	if _, err := importKey(key, &key.PublicKey); err != nil {
		t.Fatal(err)
	}
}

func TestConcurrentSigning(t *testing.T) {
	key := testRSAKey(t)
	var c Counters
	s := newSigner(t, key, &c)
	digest := digestOf(crypto.SHA256, "x")
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			for range 4 {
				sig, err := s.Sign(rand.Reader, digest, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256})
				if err == nil {
					err = rsa.VerifyPSS(&key.PublicKey, crypto.SHA256, digest, sig, nil)
				}
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	wantEngine(t, &c, 32, 0)
}

func TestDecryptUsesGoKey(t *testing.T) {
	key := testRSAKey(t)
	s := newSigner(t, key, nil)
	ct, err := rsa.EncryptPKCS1v15(rand.Reader, &key.PublicKey, []byte("premaster"))
	if err != nil {
		t.Fatal(err)
	}
	pt, err := s.Decrypt(rand.Reader, ct, nil)
	if err != nil || string(pt) != "premaster" {
		t.Fatalf("Decrypt = %q, %v", pt, err)
	}
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := newSigner(t, ec, nil).Decrypt(rand.Reader, ct, nil); err == nil {
		t.Fatal("an ECDSA signer decrypted")
	}
}

// After a failed import the Go key signs, and the import is not retried
// on every signature.
func TestFailedImportFallsBackToGo(t *testing.T) {
	if !Available() {
		t.Skip("built without OpenSSL: nothing is imported")
	}
	key := testRSAKey(t)
	var c Counters
	var reported []error
	// A key of a type importKey does not know, wrapped as RSA: the
	// import fails the way an OpenSSL refusal would.
	s := &Signer{key: mismatched{key, &key.PublicKey}, kind: kindRSA, counters: &c,
		importFailed: func(err error) { reported = append(reported, err) }}
	digest := digestOf(crypto.SHA256, "x")
	for range 2 {
		sig, err := s.Sign(rand.Reader, digest, crypto.SHA256)
		if err != nil {
			t.Fatal(err)
		}
		if err := rsa.VerifyPKCS1v15(&key.PublicKey, crypto.SHA256, digest, sig); err != nil {
			t.Fatal(err)
		}
	}
	if s.Native() || c.Go.Load() != 2 || c.OpenSSL.Load() != 0 {
		t.Fatalf("native %v, OpenSSL %d, Go %d: want the Go key only", s.Native(), c.OpenSSL.Load(), c.Go.Load())
	}
	if len(reported) != 1 || s.ImportError() == nil {
		t.Fatalf("import failure reported %d times (%v), ImportError %v; want once", len(reported), reported, s.ImportError())
	}
}

// mismatched is an RSA key under another type, which importKey refuses.
type mismatched struct {
	*rsa.PrivateKey
	pub *rsa.PublicKey
}

func (m mismatched) Public() crypto.PublicKey { return m.pub }
