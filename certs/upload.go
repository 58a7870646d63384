// Package certs validates uploaded TLS certificates and keeps an in-memory
// SNI index of the certificates table, fed by the storage change feed, so
// that a TLS handshake never touches RocksDB.
package certs

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/singularity-ng/singularity-edge/internal/fielderr"
	"github.com/singularity-ng/singularity-edge/storage"
)

// JSON field names of an upload, used in field errors.
const (
	FieldCertificate = "certificate"
	FieldPrivateKey  = "private_key"
	FieldChain       = "chain"
)

// ProviderUpload marks certificates that an operator uploaded.
const ProviderUpload = "upload"

const (
	// ClockSkew is how far in the future a certificate's NotBefore may lie
	// and still be accepted: certificates issued seconds ago by a CA whose
	// clock runs slightly ahead of ours are fine.
	ClockSkew = 5 * time.Minute

	// MaxFieldSize bounds each PEM field of an upload. A leaf with a long
	// chain is a few KiB; anything near this is not a certificate.
	MaxFieldSize = 256 << 10

	// MaxChainLength bounds the intermediates (and optional root) sent with a leaf.
	MaxChainLength = 8

	// MinRSABits is the smallest RSA modulus accepted; public CAs stopped
	// issuing smaller keys years ago and Go's TLS stack refuses < 1024.
	MinRSABits = 2048

	// IDLength is the number of hex digits of the SHA-256 fingerprint used
	// as the ID of an uploaded certificate.
	IDLength = 16
)

// chainCert is one certificate of the chain with the field it came from, so
// that an error points at the input the operator has to fix.
type chainCert struct {
	cert  *x509.Certificate
	field string
}

// ParseUpload validates an uploaded certificate, its private key and its
// chain and returns the record to store. Bad input yields a *fielderr.Error
// naming the JSON field (certificate, private_key, chain); messages never
// contain key material.
//
// The certificate field holds the leaf first and may carry the chain after
// it (a "fullchain.pem"); chainPEM adds further chain certificates. The
// chain must be ordered from the leaf's issuer upward.
func ParseUpload(certPEM, keyPEM, chainPEM string, now time.Time) (*storage.Certificate, error) {
	var errs fielderr.List

	certBlocks := decodeCertificates(FieldCertificate, certPEM, true, &errs)
	chainBlocks := decodeCertificates(FieldChain, chainPEM, false, &errs)
	key := decodePrivateKey(keyPEM, &errs)
	if len(errs) > 0 {
		return nil, errs.Err()
	}

	leaf := certBlocks[0]
	chain := make([]chainCert, 0, len(certBlocks)-1+len(chainBlocks))
	for _, c := range certBlocks[1:] {
		chain = append(chain, chainCert{cert: c, field: FieldCertificate})
	}
	for _, c := range chainBlocks {
		chain = append(chain, chainCert{cert: c, field: FieldChain})
	}

	// A self-signed certificate made with `openssl req -x509` carries
	// CA:TRUE by default; it is still the server's own certificate, so it is
	// accepted as a leaf when it names DNS hosts and signed itself.
	if leaf.IsCA && !(len(chain) == 0 && isSelfSignedServerCert(leaf)) {
		if i := firstNonCA(chain); i >= 0 {
			errs.Add(FieldCertificate, fmt.Sprintf("the first certificate must be the server (leaf) certificate, but it is the CA certificate %s; the leaf %s comes later in %s",
				describe(leaf), describe(chain[i].cert), chain[i].field))
		} else {
			errs.Add(FieldCertificate, fmt.Sprintf("is a CA certificate (%s), not a server certificate", describe(leaf)))
		}
		return nil, errs.Err()
	}
	if len(chain) > MaxChainLength {
		errs.Add(FieldChain, fmt.Sprintf("has %d certificates; at most %d are accepted", len(chain), MaxChainLength))
	}

	checkLeaf(leaf, now, &errs)
	names := leafNames(leaf, &errs)
	checkKeyMatch(leaf, key, &errs)
	checkChain(leaf, chain, &errs)
	if len(errs) > 0 {
		return nil, errs.Err()
	}

	var chainOut strings.Builder
	for _, c := range chain {
		chainOut.Write(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.cert.Raw}))
	}
	leafOut := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf.Raw}))
	keyOut, err := encodePrivateKey(key)
	if err != nil {
		return nil, fielderr.New(FieldPrivateKey, "cannot be re-encoded as PKCS #8")
	}
	// The cache loads the pair with tls.X509KeyPair; refuse anything it
	// would refuse, so that a stored certificate is always servable.
	if _, err := tls.X509KeyPair([]byte(leafOut+chainOut.String()), []byte(keyOut)); err != nil {
		return nil, fielderr.New(FieldPrivateKey, "is not usable with the certificate for TLS")
	}

	sum := sha256.Sum256(leaf.Raw)
	fingerprint := hex.EncodeToString(sum[:])
	return &storage.Certificate{
		ID:             fingerprint[:IDLength],
		Domain:         primaryName(leaf, names),
		Names:          names,
		CertificatePEM: leafOut,
		PrivateKeyPEM:  keyOut,
		ChainPEM:       chainOut.String(),
		Issuer:         issuerName(leaf),
		NotBefore:      leaf.NotBefore.UTC(),
		ExpiresAt:      leaf.NotAfter.UTC(),
		Provider:       ProviderUpload,
		Fingerprint:    fingerprint,
	}, nil
}

// decodeCertificates parses every PEM block of a certificate field. Text
// around the blocks (openssl's "subject=" lines, comments) is ignored.
func decodeCertificates(field, data string, required bool, errs *fielderr.List) []*x509.Certificate {
	if strings.TrimSpace(data) == "" {
		if required {
			errs.Add(field, "is required (PEM, -----BEGIN CERTIFICATE-----)")
		}
		return nil
	}
	if len(data) > MaxFieldSize {
		errs.Add(field, fmt.Sprintf("is %d bytes; at most %d are accepted", len(data), MaxFieldSize))
		return nil
	}
	var certs []*x509.Certificate
	rest := []byte(data)
	for n := 1; ; n++ {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		switch {
		case block.Type == "CERTIFICATE":
		case isPrivateKeyType(block.Type):
			errs.Add(field, fmt.Sprintf("contains a private key (PEM block %d); send it in %s", n, FieldPrivateKey))
			return nil
		default:
			errs.Add(field, fmt.Sprintf("PEM block %d is of type %q; expected CERTIFICATE", n, block.Type))
			return nil
		}
		if len(block.Headers) > 0 {
			errs.Add(field, fmt.Sprintf("PEM block %d has headers; a certificate block has none", n))
			return nil
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			errs.Add(field, fmt.Sprintf("PEM block %d is not a valid X.509 certificate: %v", n, err))
			return nil
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		if bytes.Contains([]byte(data), []byte("-----BEGIN")) {
			errs.Add(field, "contains a malformed PEM block (check the BEGIN/END lines and the base64 body)")
		} else {
			errs.Add(field, "is not PEM-encoded (expected -----BEGIN CERTIFICATE-----)")
		}
		return nil
	}
	if bytes.Contains(rest, []byte("-----BEGIN")) {
		errs.Add(field, fmt.Sprintf("contains a malformed PEM block after certificate %d", len(certs)))
		return nil
	}
	return certs
}

func isPrivateKeyType(t string) bool {
	return strings.HasSuffix(t, "PRIVATE KEY")
}

// decodePrivateKey parses the private key field. Underlying parser errors
// are not quoted: they could echo fragments of the key.
func decodePrivateKey(data string, errs *fielderr.List) crypto.Signer {
	if strings.TrimSpace(data) == "" {
		errs.Add(FieldPrivateKey, "is required (PEM, -----BEGIN PRIVATE KEY-----)")
		return nil
	}
	if len(data) > MaxFieldSize {
		errs.Add(FieldPrivateKey, fmt.Sprintf("is %d bytes; at most %d are accepted", len(data), MaxFieldSize))
		return nil
	}
	var key crypto.Signer
	rest := []byte(data)
	sawBlock := false
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		sawBlock = true
		switch block.Type {
		case "EC PARAMETERS":
			// `openssl ecparam -genkey` writes the curve before the key.
			continue
		case "CERTIFICATE":
			errs.Add(FieldPrivateKey, "contains a certificate, not a private key; send certificates in "+FieldCertificate+" or "+FieldChain)
			return nil
		case "ENCRYPTED PRIVATE KEY":
			errs.Add(FieldPrivateKey, "is encrypted with a passphrase; upload the decrypted key")
			return nil
		case "OPENSSH PRIVATE KEY":
			errs.Add(FieldPrivateKey, "is an OpenSSH key; a TLS key is PEM (-----BEGIN PRIVATE KEY-----), e.g. from openssl or the CA's tooling")
			return nil
		case "PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY":
		default:
			if isPrivateKeyType(block.Type) {
				errs.Add(FieldPrivateKey, fmt.Sprintf("has unsupported key type %q; use RSA, ECDSA or Ed25519", block.Type))
			} else {
				errs.Add(FieldPrivateKey, fmt.Sprintf("has a PEM block of type %q; expected PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY", block.Type))
			}
			return nil
		}
		if _, encrypted := block.Headers["DEK-Info"]; encrypted || block.Headers["Proc-Type"] == "4,ENCRYPTED" {
			errs.Add(FieldPrivateKey, "is encrypted with a passphrase; upload the decrypted key")
			return nil
		}
		if key != nil {
			errs.Add(FieldPrivateKey, "contains more than one private key")
			return nil
		}
		k, msg := parsePrivateKey(block)
		if msg != "" {
			errs.Add(FieldPrivateKey, msg)
			return nil
		}
		key = k
	}
	if key == nil {
		switch {
		case sawBlock:
			errs.Add(FieldPrivateKey, "contains no private key block")
		case bytes.Contains([]byte(data), []byte("-----BEGIN")):
			errs.Add(FieldPrivateKey, "contains a malformed PEM block (check the BEGIN/END lines and the base64 body)")
		default:
			errs.Add(FieldPrivateKey, "is not PEM-encoded (expected -----BEGIN PRIVATE KEY-----)")
		}
		return nil
	}
	return key
}

// parsePrivateKey returns the key or a message for the operator.
func parsePrivateKey(block *pem.Block) (crypto.Signer, string) {
	var parsed any
	var err error
	switch block.Type {
	case "RSA PRIVATE KEY":
		parsed, err = x509.ParsePKCS1PrivateKey(block.Bytes)
		if err != nil {
			return nil, "is not a valid PKCS #1 RSA private key"
		}
	case "EC PRIVATE KEY":
		parsed, err = x509.ParseECPrivateKey(block.Bytes)
		if err != nil {
			return nil, "is not a valid SEC 1 EC private key (supported curves: P-256, P-384, P-521)"
		}
	default:
		parsed, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		if err != nil {
			return nil, "is not a valid PKCS #8 private key (RSA, ECDSA or Ed25519)"
		}
	}
	switch k := parsed.(type) {
	case *rsa.PrivateKey:
		if bits := k.N.BitLen(); bits < MinRSABits {
			return nil, fmt.Sprintf("is a %d-bit RSA key; at least %d bits are required", bits, MinRSABits)
		}
		return k, ""
	case *ecdsa.PrivateKey:
		switch k.Curve {
		case elliptic.P256(), elliptic.P384(), elliptic.P521():
			return k, ""
		}
		return nil, fmt.Sprintf("is an ECDSA key on curve %s, which TLS does not use; use P-256, P-384 or P-521", k.Curve.Params().Name)
	case ed25519.PrivateKey:
		return k, ""
	default:
		return nil, fmt.Sprintf("has unsupported key algorithm %s; use RSA, ECDSA or Ed25519", keyAlgorithm(parsed))
	}
}

// encodePrivateKey normalises the key to PKCS #8 so that every stored key
// has one format whatever the operator sent.
func encodePrivateKey(key crypto.Signer) (string, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return "", err
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})), nil
}

func keyAlgorithm(k any) string {
	switch k.(type) {
	case *rsa.PrivateKey, *rsa.PublicKey:
		return "RSA"
	case *ecdsa.PrivateKey, *ecdsa.PublicKey:
		return "ECDSA"
	case ed25519.PrivateKey, ed25519.PublicKey:
		return "Ed25519"
	default:
		return fmt.Sprintf("%T", k)
	}
}

// checkLeaf verifies that the leaf can serve TLS now.
func checkLeaf(leaf *x509.Certificate, now time.Time, errs *fielderr.List) {
	if now.After(leaf.NotAfter) {
		errs.Add(FieldCertificate, fmt.Sprintf("expired at %s", leaf.NotAfter.UTC().Format(time.RFC3339)))
	}
	if now.Add(ClockSkew).Before(leaf.NotBefore) {
		errs.Add(FieldCertificate, fmt.Sprintf("is not valid before %s", leaf.NotBefore.UTC().Format(time.RFC3339)))
	}
	if len(leaf.ExtKeyUsage) > 0 && !hasServerAuth(leaf.ExtKeyUsage) {
		errs.Add(FieldCertificate, "its extended key usage does not include TLS server authentication")
	}
	if leaf.KeyUsage != 0 && leaf.KeyUsage&(x509.KeyUsageDigitalSignature|x509.KeyUsageKeyEncipherment) == 0 {
		errs.Add(FieldCertificate, "its key usage allows neither digital signature nor key encipherment")
	}
	switch leaf.SignatureAlgorithm {
	case x509.MD2WithRSA, x509.MD5WithRSA, x509.SHA1WithRSA, x509.DSAWithSHA1, x509.ECDSAWithSHA1:
		errs.Add(FieldCertificate, fmt.Sprintf("is signed with %s, which TLS clients reject", leaf.SignatureAlgorithm))
	}
}

func hasServerAuth(usages []x509.ExtKeyUsage) bool {
	for _, u := range usages {
		if u == x509.ExtKeyUsageServerAuth || u == x509.ExtKeyUsageAny {
			return true
		}
	}
	return false
}

// leafNames returns the leaf's DNS SANs, lower-cased and de-duplicated, in
// certificate order. IP SANs are allowed but are not names an SNI lookup
// can use, so they are not returned.
func leafNames(leaf *x509.Certificate, errs *fielderr.List) []string {
	names := make([]string, 0, len(leaf.DNSNames))
	seen := make(map[string]bool, len(leaf.DNSNames))
	for _, raw := range leaf.DNSNames {
		name := strings.ToLower(raw)
		if msg := checkDNSName(name); msg != "" {
			errs.Add(FieldCertificate, fmt.Sprintf("subject alternative name %q %s", raw, msg))
			continue
		}
		if !seen[name] {
			seen[name] = true
			names = append(names, name)
		}
	}
	if len(leaf.DNSNames) == 0 {
		if leaf.Subject.CommonName != "" {
			errs.Add(FieldCertificate, fmt.Sprintf("has no DNS subject alternative names (only the common name %q, which TLS clients ignore)", leaf.Subject.CommonName))
		} else {
			errs.Add(FieldCertificate, "has no DNS subject alternative names; SNI needs at least one")
		}
	}
	return names
}

// checkDNSName returns "" for a valid host name (optionally with a leading
// "*." wildcard label) or the reason it is not one.
func checkDNSName(name string) string {
	if name == "" {
		return "is empty"
	}
	if len(name) > 253 {
		return "is longer than 253 characters"
	}
	if strings.HasSuffix(name, ".") {
		return "ends with a dot"
	}
	labels := strings.Split(name, ".")
	for i, label := range labels {
		if label == "*" {
			if i != 0 {
				return "has a wildcard that is not the leftmost label"
			}
			if len(labels) < 3 {
				return "is a wildcard for a top-level domain"
			}
			continue
		}
		if label == "" {
			return "has an empty label"
		}
		if len(label) > 63 {
			return "has a label longer than 63 characters"
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return "has a label that starts or ends with a hyphen"
		}
		for j := 0; j < len(label); j++ {
			c := label[j]
			switch {
			case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-':
			case c == '*':
				return "has a wildcard that is not a whole label"
			default:
				return "contains a character not allowed in a host name"
			}
		}
	}
	if len(labels) == 1 && labels[0] != "localhost" {
		// Single-label names are allowed only for well-known local use.
		return "is not a fully qualified domain name"
	}
	return ""
}

// checkKeyMatch verifies that the private key belongs to the leaf.
func checkKeyMatch(leaf *x509.Certificate, key crypto.Signer, errs *fielderr.List) {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	pub, ok := leaf.PublicKey.(equaler)
	if !ok {
		errs.Add(FieldCertificate, fmt.Sprintf("has unsupported public key algorithm %s; use RSA, ECDSA or Ed25519", leaf.PublicKeyAlgorithm))
		return
	}
	if pub.Equal(key.Public()) {
		return
	}
	certAlg, keyAlg := keyAlgorithm(leaf.PublicKey), keyAlgorithm(key)
	if certAlg != keyAlg {
		errs.Add(FieldPrivateKey, fmt.Sprintf("is an %s key but the certificate has an %s public key", keyAlg, certAlg))
		return
	}
	errs.Add(FieldPrivateKey, "does not match the certificate's public key")
}

// checkChain verifies that each certificate is signed by the next one, so
// that clients receive a path they can build without reordering.
func checkChain(leaf *x509.Certificate, chain []chainCert, errs *fielderr.List) {
	for i, c := range chain {
		if bytes.Equal(c.cert.Raw, leaf.Raw) {
			errs.Add(c.field, "contains the leaf certificate again; send it only once, first in "+FieldCertificate)
			return
		}
		for j := 0; j < i; j++ {
			if bytes.Equal(c.cert.Raw, chain[j].cert.Raw) {
				errs.Add(c.field, fmt.Sprintf("contains the certificate %s twice", describe(c.cert)))
				return
			}
		}
	}
	child := leaf
	for i, c := range chain {
		if err := child.CheckSignatureFrom(c.cert); err != nil {
			var notCA x509.ConstraintViolationError
			switch {
			case errors.As(err, &notCA) && child.CheckSignatureFrom(chainAsCA(c.cert)) == nil:
				errs.Add(c.field, fmt.Sprintf("certificate %s is not a CA certificate, so it cannot have issued %s", describe(c.cert), describe(child)))
			case i == 0 && reversedChainVerifies(leaf, chain):
				errs.Add(c.field, "is in reverse order; list the leaf's issuer first, then its issuer, up to the root")
			case i == 0:
				errs.Add(c.field, fmt.Sprintf("does not start with the leaf's issuer: %s was not issued by %s (the leaf names %q as issuer)",
					describe(leaf), describe(c.cert), nameOf(leaf.Issuer.CommonName, leaf.Issuer.Organization)))
			default:
				errs.Add(c.field, fmt.Sprintf("is out of order: chain certificate %d (%s) was not issued by chain certificate %d (%s)",
					i, describe(child), i+1, describe(c.cert)))
			}
			return
		}
		child = c.cert
	}
}

// chainAsCA returns a copy of c marked as a CA, to tell "signed by a
// certificate that may not sign" apart from "not signed by it at all".
func chainAsCA(c *x509.Certificate) *x509.Certificate {
	ca := *c
	ca.BasicConstraintsValid = true
	ca.IsCA = true
	ca.KeyUsage |= x509.KeyUsageCertSign
	return &ca
}

// reversedChainVerifies reports whether the chain would be valid in the
// opposite order, which is the most common ordering mistake.
func reversedChainVerifies(leaf *x509.Certificate, chain []chainCert) bool {
	if len(chain) < 2 {
		return false
	}
	child := leaf
	for i := len(chain) - 1; i >= 0; i-- {
		if child.CheckSignatureFrom(chain[i].cert) != nil {
			return false
		}
		child = chain[i].cert
	}
	return true
}

func firstNonCA(chain []chainCert) int {
	for i, c := range chain {
		if !c.cert.IsCA {
			return i
		}
	}
	return -1
}

// describe names a certificate for an error message: subject and serial
// are public and enough to find it in a bundle.
func describe(c *x509.Certificate) string {
	if c.Subject.CommonName == "" && len(c.Subject.Organization) == 0 && len(c.DNSNames) > 0 {
		return fmt.Sprintf("%q", c.DNSNames[0])
	}
	return fmt.Sprintf("%q", nameOf(c.Subject.CommonName, c.Subject.Organization))
}

func nameOf(cn string, org []string) string {
	switch {
	case cn != "":
		return cn
	case len(org) > 0:
		return org[0]
	default:
		return "(no subject name)"
	}
}

// primaryName picks the name the certificate is listed under: the common
// name when it is one of the SANs (what the operator asked the CA for),
// else the first DNS SAN.
func primaryName(leaf *x509.Certificate, names []string) string {
	cn := strings.ToLower(leaf.Subject.CommonName)
	for _, n := range names {
		if n == cn {
			return n
		}
	}
	if len(names) > 0 {
		return names[0]
	}
	return ""
}

func issuerName(leaf *x509.Certificate) string {
	if leaf.Issuer.CommonName != "" {
		return leaf.Issuer.CommonName
	}
	if len(leaf.Issuer.Organization) > 0 {
		return leaf.Issuer.Organization[0]
	}
	return leaf.Issuer.String()
}

// isSelfSignedServerCert reports whether c is its own issuer and names at
// least one DNS host, as self-signed server certificates do.
func isSelfSignedServerCert(c *x509.Certificate) bool {
	return len(c.DNSNames) > 0 && bytes.Equal(c.RawIssuer, c.RawSubject) && c.CheckSignatureFrom(c) == nil
}
