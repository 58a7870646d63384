//go:build !cgo || noopenssl

package osslsign

import (
	"crypto"
	"errors"
)

// Available reports whether this build signs with OpenSSL: not without
// cgo or with the noopenssl tag, where every Signer signs with its Go key.
func Available() bool { return false }

var errNoOpenSSL = errors.New("osslsign: built without OpenSSL (no cgo, or the noopenssl tag)")

// nativeKey is never made in this build.
type nativeKey struct{}

func importKey(crypto.Signer, crypto.PublicKey) (*nativeKey, error) { return nil, errNoOpenSSL }

func (*nativeKey) sign(signRequest, []byte) ([]byte, error) { return nil, errNoOpenSSL }
