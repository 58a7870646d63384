// Package osslsign signs TLS handshakes with OpenSSL's libcrypto instead of
// Go's crypto: a full handshake with an RSA-2048 certificate spends most of
// its CPU in the server's one signature, and Go's rsa.SignPSS takes about
// three times as long as OpenSSL's (0.82 ms against 0.26 ms on the machine
// the benchmarks ran on).
//
// A Signer wraps a Go private key. The key moves into OpenSSL on the first
// signature that needs it (so a certificate that is loaded but never served
// holds no native key), and the native key is freed when the Signer becomes
// unreachable. What OpenSSL is not asked to do (an option it is not given,
// a key it could not import, a build without cgo or with the noopenssl
// tag) the wrapped Go key does, with its own checks and errors.
package osslsign

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
)

// ErrUnsupported is returned by New for a key this package does not sign
// with: only RSA (1024 bits and more) and ECDSA on P-256, P-384 and P-521.
var ErrUnsupported = errors.New("osslsign: unsupported key")

// Counters counts the signatures made by the Signers that share it. The
// caller owns it (and typically exports it as a metric).
type Counters struct {
	// OpenSSL counts signatures made by libcrypto.
	OpenSSL atomic.Uint64
	// Go counts signatures made by the wrapped Go key: OpenSSL is not
	// available in this build, could not import the key, or is not given
	// these options.
	Go atomic.Uint64
}

// Config configures a Signer.
type Config struct {
	// Counters, when set, counts every signature by engine.
	Counters *Counters
	// ImportFailed, when set, is called once if OpenSSL cannot take the
	// key (the Go key signs from then on). The error names the failing
	// step, never key material.
	ImportFailed func(error)
}

// DefaultConfig returns the zero configuration: nothing counted.
func DefaultConfig() Config { return Config{} }

type keyKind int

const (
	kindRSA keyKind = iota + 1
	kindECDSA
)

// Signer is a crypto.Signer (and, for RSA keys, a crypto.Decrypter) that
// signs with OpenSSL. It is safe for concurrent use.
type Signer struct {
	key          crypto.Signer
	kind         keyKind
	counters     *Counters
	importFailed func(error)

	native atomic.Pointer[nativeKey]
	failed atomic.Bool // the import failed: the Go key signs from now on
	mu     sync.Mutex  // serializes the import
	err    error       // why the import failed; guarded by mu
}

// New wraps key, which must be an *rsa.PrivateKey or an *ecdsa.PrivateKey
// on a NIST curve; other keys give ErrUnsupported. Nothing is handed to
// OpenSSL until the first signature.
func New(key crypto.Signer, cfg Config) (*Signer, error) {
	s := &Signer{key: key, counters: cfg.Counters, importFailed: cfg.ImportFailed}
	switch k := key.(type) {
	case *rsa.PrivateKey:
		// Go refuses to sign with keys under 1024 bits; such a key stays
		// with Go, which says so.
		if k.N == nil || k.N.BitLen() < 1024 {
			bits := 0
			if k.N != nil {
				bits = k.N.BitLen()
			}
			return nil, fmt.Errorf("%w: RSA key of %d bits", ErrUnsupported, bits)
		}
		s.kind = kindRSA
	case *ecdsa.PrivateKey:
		switch k.Curve {
		case elliptic.P256(), elliptic.P384(), elliptic.P521():
		default:
			return nil, fmt.Errorf("%w: ECDSA curve %s", ErrUnsupported, k.Curve.Params().Name)
		}
		s.kind = kindECDSA
	default:
		return nil, fmt.Errorf("%w: %T", ErrUnsupported, key)
	}
	return s, nil
}

// Public returns the public half of the key.
func (s *Signer) Public() crypto.PublicKey { return s.key.Public() }

// Key returns the wrapped Go key.
func (s *Signer) Key() crypto.Signer { return s.key }

// Native reports whether the key is held by OpenSSL: false before the
// first signature, in a build without OpenSSL, or after a failed import.
func (s *Signer) Native() bool { return s.native.Load() != nil }

// ImportError returns why the key could not be moved into OpenSSL, or nil.
func (s *Signer) ImportError() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Sign signs digest as the wrapped key would: RSA keys take
// *rsa.PSSOptions (PSS) or a crypto.Hash (PKCS #1 v1.5) with SHA-1,
// SHA-224, SHA-256, SHA-384 or SHA-512, and digest must be that hash's
// size; ECDSA keys return an ASN.1 signature. OpenSSL draws its own
// randomness, so rand is used only when the Go key signs.
func (s *Signer) Sign(rand io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	req, err := s.request(digest, opts)
	if err != nil {
		return nil, err
	}
	if req.native {
		if nk := s.load(); nk != nil {
			sig, err := nk.sign(req, digest)
			if err != nil {
				return nil, err
			}
			if s.counters != nil {
				s.counters.OpenSSL.Add(1)
			}
			return sig, nil
		}
	}
	if s.counters != nil {
		s.counters.Go.Add(1)
	}
	return s.key.Sign(rand, digest, opts)
}

// Decrypt decrypts with the wrapped RSA key (Go's crypto): TLS uses it
// only for RSA key exchange, which is not among the default cipher
// suites.
func (s *Signer) Decrypt(rand io.Reader, msg []byte, opts crypto.DecrypterOpts) ([]byte, error) {
	d, ok := s.key.(crypto.Decrypter)
	if !ok {
		return nil, fmt.Errorf("osslsign: a %T key does not decrypt", s.key)
	}
	return d.Decrypt(rand, msg, opts)
}

// load returns the native key, importing it on first use; nil means the
// Go key signs.
func (s *Signer) load() *nativeKey {
	if nk := s.native.Load(); nk != nil {
		return nk
	}
	if !Available() || s.failed.Load() {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if nk := s.native.Load(); nk != nil {
		return nk
	}
	if s.err != nil {
		return nil
	}
	nk, err := importKey(s.key, s.key.Public())
	if err != nil {
		s.err = err
		s.failed.Store(true)
		if s.importFailed != nil {
			s.importFailed(err)
		}
		return nil
	}
	s.native.Store(nk)
	return nk
}

// Padding schemes, as OpenSSL numbers them (RSA_PKCS1_PADDING,
// RSA_PKCS1_PSS_PADDING); 0 for ECDSA.
const (
	padNone     = 0
	padPKCS1v15 = 1
	padPSS      = 6
)

// PSS salt lengths OpenSSL understands besides an explicit length.
const (
	saltEqualsHash = -1 // RSA_PSS_SALTLEN_DIGEST
	saltMax        = -2 // RSA_PSS_SALTLEN_MAX_SIGN, Go's PSSSaltLengthAuto
)

// signRequest is a validated signature request.
type signRequest struct {
	native  bool // OpenSSL signs it (else the Go key does)
	hash    crypto.Hash
	padding int
	salt    int
}

// request validates opts against the key and digest. Wrong options are
// refused here with an error, whichever engine would sign.
func (s *Signer) request(digest []byte, opts crypto.SignerOpts) (signRequest, error) {
	if opts == nil {
		return signRequest{}, errors.New("osslsign: nil SignerOpts")
	}
	if len(digest) == 0 {
		return signRequest{}, errors.New("osslsign: empty digest")
	}
	h := opts.HashFunc()
	if s.kind == kindECDSA {
		// ECDSA signs the digest whatever opts say, as Go's does
		// (truncated to the curve's order).
		return signRequest{native: true, hash: h, padding: padNone}, nil
	}
	if h > crypto.BLAKE2b_512 {
		// crypto.Hash.Size panics past the last hash it knows.
		return signRequest{}, fmt.Errorf("osslsign: unknown hash %d", uint(h))
	}
	if h != 0 && len(digest) != h.Size() {
		return signRequest{}, fmt.Errorf("osslsign: digest is %d bytes, %v needs %d", len(digest), h, h.Size())
	}
	pss, isPSS := opts.(*rsa.PSSOptions)
	if isPSS {
		// Go's PSS hashes the salted digest again with h: it must be
		// linked in (Go's key panics otherwise).
		if h == 0 || !h.Available() {
			return signRequest{}, fmt.Errorf("osslsign: PSS needs an available hash, not %v", h)
		}
		req := signRequest{native: nativeHash(h), hash: h, padding: padPSS}
		switch {
		case pss.SaltLength == rsa.PSSSaltLengthEqualsHash:
			req.salt = saltEqualsHash
		case pss.SaltLength == rsa.PSSSaltLengthAuto:
			req.salt = saltMax
		case pss.SaltLength > 0:
			// As Go checks it: the salt must fit the encoded message.
			emLen := (s.key.Public().(*rsa.PublicKey).N.BitLen() - 1 + 7) / 8
			if pss.SaltLength > emLen-h.Size()-2 {
				return signRequest{}, fmt.Errorf("osslsign: PSS salt length %d too large for the key", pss.SaltLength)
			}
			req.salt = pss.SaltLength
		default:
			return signRequest{}, fmt.Errorf("osslsign: invalid PSS salt length %d", pss.SaltLength)
		}
		return req, nil
	}
	// PKCS #1 v1.5. Hash 0 (a raw, prefix-less signature) and the hashes
	// OpenSSL is not asked for (MD5+SHA-1 of TLS 1.0) go to the Go key.
	return signRequest{native: nativeHash(h), hash: h, padding: padPKCS1v15}, nil
}

// nativeHash reports whether OpenSSL signs with hash h.
func nativeHash(h crypto.Hash) bool {
	switch h {
	case crypto.SHA1, crypto.SHA224, crypto.SHA256, crypto.SHA384, crypto.SHA512:
		return true
	}
	return false
}
