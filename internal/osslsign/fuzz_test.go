package osslsign

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"testing"
)

// FuzzSign feeds arbitrary digests and options: every call either fails
// with an error or returns a signature Go verifies, and OpenSSL signs
// nothing that Go would refuse.
func FuzzSign(f *testing.F) {
	f.Add([]byte("0123456789abcdef0123456789abcdef"), uint8(crypto.SHA256), true, int16(-1))
	f.Add([]byte("0123456789abcdef0123456789abcdef"), uint8(crypto.SHA256), false, int16(0))
	f.Add([]byte("short"), uint8(crypto.SHA512), true, int16(0))
	f.Add(make([]byte, 36), uint8(crypto.MD5SHA1), false, int16(0))
	f.Add([]byte{}, uint8(0), true, int16(300))
	key := testRSAKey(f)
	s := newSigner(f, key, nil)
	f.Fuzz(func(t *testing.T, digest []byte, hash uint8, pss bool, salt int16) {
		h := crypto.Hash(hash)
		var opts crypto.SignerOpts = h
		var pssOpts *rsa.PSSOptions
		if pss {
			pssOpts = &rsa.PSSOptions{Hash: h, SaltLength: int(salt)}
			opts = pssOpts
		}
		sig, err := s.Sign(rand.Reader, digest, opts)
		if err != nil {
			return
		}
		if pss {
			err = rsa.VerifyPSS(&key.PublicKey, h, digest, sig, pssOpts)
		} else {
			err = rsa.VerifyPKCS1v15(&key.PublicKey, h, digest, sig)
		}
		if err != nil {
			t.Fatalf("hash %v pss %v salt %d digest %d bytes: signature does not verify: %v", h, pss, salt, len(digest), err)
		}
	})
}
