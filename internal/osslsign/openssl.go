//go:build cgo && !noopenssl

package osslsign

/*
#cgo LDFLAGS: -lcrypto
#include <string.h>
#include <openssl/opensslv.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#if OPENSSL_VERSION_NUMBER < 0x30000000L
#error "osslsign needs OpenSSL 3.0 or later; build with -tags noopenssl to sign with Go's crypto"
#endif

// The error of the failed call, and the thread's error queue cleared: a
// goroutine may run its next cgo call on another thread, so nothing may be
// left queued here.
static unsigned long osslsign_error(void) {
	unsigned long e = ERR_peek_last_error();
	ERR_clear_error();
	return e != 0 ? e : ERR_PACK(ERR_LIB_EVP, 0, ERR_R_INTERNAL_ERROR);
}

// osslsign_import parses a PKCS #1 (RSA) or SEC 1 (EC) private key and
// checks that its public half is spki, the SubjectPublicKeyInfo Go
// marshals for the same key. *mismatch is set when the key parsed but its
// public half differs.
static EVP_PKEY *osslsign_import(int type, const unsigned char *der, long derlen,
		const unsigned char *spki, long spkilen, unsigned long *err, int *mismatch) {
	const unsigned char *p = der;
	EVP_PKEY *k = d2i_PrivateKey(type, NULL, &p, derlen);
	if (k == NULL) {
		*err = osslsign_error();
		return NULL;
	}
	unsigned char *pub = NULL;
	int n = i2d_PUBKEY(k, &pub);
	if (n <= 0) {
		*err = osslsign_error();
		EVP_PKEY_free(k);
		return NULL;
	}
	if (n != spkilen || memcmp(pub, spki, n) != 0) {
		*mismatch = 1;
		OPENSSL_free(pub);
		EVP_PKEY_free(k);
		return NULL;
	}
	OPENSSL_free(pub);
	// The decoders may queue errors for the formats they tried first.
	ERR_clear_error();
	return k;
}

static const EVP_MD *osslsign_md(int hash) {
	// Go's crypto.Hash numbering.
	switch (hash) {
	case 3: return EVP_sha1();
	case 4: return EVP_sha224();
	case 5: return EVP_sha256();
	case 6: return EVP_sha384();
	case 7: return EVP_sha512();
	}
	return NULL;
}

// osslsign_sign signs tbs with k. pad is 0 for ECDSA, else an RSA padding
// mode (with saltlen for PSS); hash is a Go crypto.Hash, 0 for none.
static unsigned long osslsign_sign(EVP_PKEY *k, int pad, int saltlen, int hash,
		const unsigned char *tbs, size_t tbslen, unsigned char *sig, size_t *siglen) {
	EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, k, NULL);
	if (ctx == NULL || EVP_PKEY_sign_init(ctx) <= 0)
		goto fail;
	if (pad != 0) {
		if (EVP_PKEY_CTX_set_rsa_padding(ctx, pad) <= 0)
			goto fail;
		if (pad == RSA_PKCS1_PSS_PADDING && EVP_PKEY_CTX_set_rsa_pss_saltlen(ctx, saltlen) <= 0)
			goto fail;
		const EVP_MD *md = osslsign_md(hash);
		if (md == NULL || EVP_PKEY_CTX_set_signature_md(ctx, md) <= 0)
			goto fail;
	}
	if (EVP_PKEY_sign(ctx, sig, siglen, tbs, tbslen) <= 0)
		goto fail;
	EVP_PKEY_CTX_free(ctx);
	return 0;
fail:
	EVP_PKEY_CTX_free(ctx);
	return osslsign_error();
}
*/
import "C"

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
	"runtime"
	"unsafe"
)

// Available reports whether this build signs with OpenSSL.
func Available() bool { return true }

// nativeKey is a private key held by OpenSSL, freed when it becomes
// unreachable.
type nativeKey struct {
	pkey    *C.EVP_PKEY
	sigSize int
}

// importKey hands key to OpenSSL as DER, which is zeroed afterwards (the
// big-number copies Go's encoder makes on the way cannot be reached), and
// checks that OpenSSL derives pub from it.
func importKey(key crypto.Signer, pub crypto.PublicKey) (*nativeKey, error) {
	var (
		der   []byte
		ktype C.int
		err   error
	)
	switch k := key.(type) {
	case *rsa.PrivateKey:
		der, ktype = x509.MarshalPKCS1PrivateKey(k), C.EVP_PKEY_RSA
	case *ecdsa.PrivateKey:
		der, err = x509.MarshalECPrivateKey(k)
		ktype = C.EVP_PKEY_EC
	default:
		err = fmt.Errorf("%w: %T", ErrUnsupported, key)
	}
	defer clear(der)
	if err != nil {
		return nil, fmt.Errorf("osslsign: encoding the key: %w", err)
	}
	spki, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("osslsign: encoding the public key: %w", err)
	}
	var (
		code     C.ulong
		mismatch C.int
	)
	pkey := C.osslsign_import(ktype, (*C.uchar)(unsafe.Pointer(&der[0])), C.long(len(der)),
		(*C.uchar)(unsafe.Pointer(&spki[0])), C.long(len(spki)), &code, &mismatch)
	if pkey == nil {
		if mismatch != 0 {
			return nil, errors.New("osslsign: OpenSSL's public key differs from Go's")
		}
		return nil, fmt.Errorf("osslsign: importing the key: %w", opensslError(code))
	}
	nk := &nativeKey{pkey: pkey, sigSize: int(C.EVP_PKEY_get_size(pkey))}
	runtime.AddCleanup(nk, func(p *C.EVP_PKEY) { C.EVP_PKEY_free(p) }, pkey)
	return nk, nil
}

func (nk *nativeKey) sign(req signRequest, digest []byte) ([]byte, error) {
	sig := make([]byte, nk.sigSize)
	sigLen := C.size_t(len(sig))
	code := C.osslsign_sign(nk.pkey, C.int(req.padding), C.int(req.salt), C.int(req.hash),
		(*C.uchar)(unsafe.Pointer(&digest[0])), C.size_t(len(digest)),
		(*C.uchar)(unsafe.Pointer(&sig[0])), &sigLen)
	// The cleanup must not free the key while OpenSSL still uses it.
	runtime.KeepAlive(nk)
	if code != 0 {
		return nil, fmt.Errorf("osslsign: signing: %w", opensslError(code))
	}
	return sig[:sigLen], nil
}

// opensslError describes an OpenSSL error code; its text names the
// failing function and reason, never key material.
func opensslError(code C.ulong) error {
	var buf [256]C.char
	C.ERR_error_string_n(code, &buf[0], C.size_t(len(buf)))
	return errors.New(C.GoString(&buf[0]))
}
