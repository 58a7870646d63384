package certs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/singularity-ng/singularity-edge/internal/fielderr"
)

func TestParseUpload(t *testing.T) {
	now := time.Now()
	root := newRoot(t, "Test Root")
	inter := root.intermediate(t, "Test Intermediate")
	other := newRoot(t, "Other Root")
	ecKey, ecKey2 := newECKey(t), newECKey(t)
	rsaKey := newRSAKey(t, 2048)
	rsaSmall := newRSAKey(t, 1024)
	edKey := newEd25519Key(t)

	ecLeaf := inter.sign(t, ecKey.Public(), leafSpec{cn: "www.example.com", dns: []string{"www.example.com", "Example.COM", "www.example.com"}, ips: []net.IP{net.ParseIP("192.0.2.1")}})
	rsaLeaf := inter.sign(t, rsaKey.Public(), leafSpec{cn: "rsa.example.com", dns: []string{"rsa.example.com"}})
	edLeaf := inter.sign(t, edKey.Public(), leafSpec{cn: "ed.example.com", dns: []string{"ed.example.com"}})
	wildLeaf := inter.sign(t, ecKey.Public(), leafSpec{cn: "not-a-san.example.com", dns: []string{"*.example.org", "example.org"}})
	expired := inter.sign(t, ecKey.Public(), leafSpec{dns: []string{"old.example.com"}, notBefore: now.Add(-90 * 24 * time.Hour), notAfter: now.Add(-time.Hour)})
	future := inter.sign(t, ecKey.Public(), leafSpec{dns: []string{"new.example.com"}, notBefore: now.Add(time.Hour)})
	withinSkew := inter.sign(t, ecKey.Public(), leafSpec{dns: []string{"skew.example.com"}, notBefore: now.Add(time.Minute)})
	caLeaf := root.sign(t, ecKey.Public(), leafSpec{cn: "Sneaky CA", dns: []string{"ca.example.com"}, isCA: true})
	cnOnly := inter.sign(t, ecKey.Public(), leafSpec{cn: "cn-only.example.com"})
	ipOnly := inter.sign(t, ecKey.Public(), leafSpec{ips: []net.IP{net.ParseIP("192.0.2.7")}})
	clientOnly := inter.sign(t, ecKey.Public(), leafSpec{dns: []string{"client.example.com"}, extUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	badNames := inter.sign(t, ecKey.Public(), leafSpec{dns: []string{"under_score.example.com", "a.*.example.com", "*.com", "-x.example.com"}})
	selfSigned := &issuer{cert: nil, key: ecKey2}
	selfSigned.cert = selfSignedLeaf(t, ecKey2, "self.example.com")
	otherLeaf := other.sign(t, ecKey.Public(), leafSpec{dns: []string{"other.example.com"}})
	smallRSALeaf := inter.sign(t, rsaSmall.Public(), leafSpec{dns: []string{"small.example.com"}})
	nonCASigner := &issuer{cert: inter.sign(t, ecKey2.Public(), leafSpec{cn: "Plain Server", dns: []string{"plain.example.com"}}), key: ecKey2}
	signedByNonCA := nonCASigner.sign(t, ecKey.Public(), leafSpec{dns: []string{"victim.example.com"}})

	ecPEM := certToPEM(ecLeaf)
	chain := inter.pem() + root.pem()
	encryptedKey := string(pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Headers: map[string]string{"Proc-Type": "4,ENCRYPTED", "DEK-Info": "AES-256-CBC,00112233445566778899AABBCCDDEEFF"}, Bytes: []byte("ciphertext")}))
	p224, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p224Key := pkcs8PEM(t, p224)
	ecParams := "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n"

	type want struct {
		domain      string
		names       []string
		chainCerts  int
		issuer      string
		keyPEMBlock string
	}
	cases := []struct {
		name                 string
		cert, key, chainPEM  string
		want                 *want
		errField, errContain string
	}{
		{name: "ecdsa sec1 with chain field", cert: ecPEM, key: sec1PEM(t, ecKey), chainPEM: chain,
			want: &want{domain: "www.example.com", names: []string{"www.example.com", "example.com"}, chainCerts: 2, issuer: "Test Intermediate"}},
		{name: "ecdsa pkcs8 with EC PARAMETERS block", cert: ecPEM, key: ecParams + pkcs8PEM(t, ecKey), chainPEM: inter.pem(),
			want: &want{domain: "www.example.com", names: []string{"www.example.com", "example.com"}, chainCerts: 1}},
		{name: "rsa pkcs1", cert: certToPEM(rsaLeaf), key: pkcs1PEM(rsaKey), chainPEM: inter.pem(),
			want: &want{domain: "rsa.example.com", names: []string{"rsa.example.com"}, chainCerts: 1}},
		{name: "rsa pkcs8", cert: certToPEM(rsaLeaf), key: pkcs8PEM(t, rsaKey),
			want: &want{domain: "rsa.example.com", names: []string{"rsa.example.com"}}},
		{name: "ed25519", cert: certToPEM(edLeaf), key: pkcs8PEM(t, edKey), chainPEM: inter.pem(),
			want: &want{domain: "ed.example.com", names: []string{"ed.example.com"}, chainCerts: 1}},
		{name: "wildcard, CN not among SANs", cert: certToPEM(wildLeaf), key: sec1PEM(t, ecKey), chainPEM: inter.pem(),
			want: &want{domain: "*.example.org", names: []string{"*.example.org", "example.org"}, chainCerts: 1}},
		{name: "full chain in certificate field is split", cert: "subject=CN = www.example.com\n" + ecPEM + chain, key: sec1PEM(t, ecKey),
			want: &want{domain: "www.example.com", names: []string{"www.example.com", "example.com"}, chainCerts: 2}},
		{name: "chain split across both fields", cert: ecPEM + inter.pem(), key: sec1PEM(t, ecKey), chainPEM: root.pem(),
			want: &want{domain: "www.example.com", names: []string{"www.example.com", "example.com"}, chainCerts: 2}},
		{name: "self-signed leaf without chain", cert: certToPEM(selfSigned.cert), key: pkcs8PEM(t, ecKey2),
			want: &want{domain: "self.example.com", names: []string{"self.example.com"}, issuer: "self.example.com"}},
		{name: "not yet valid but within clock skew", cert: certToPEM(withinSkew), key: sec1PEM(t, ecKey),
			want: &want{domain: "skew.example.com", names: []string{"skew.example.com"}}},

		{name: "empty certificate", cert: "  \n", key: sec1PEM(t, ecKey), errField: FieldCertificate, errContain: "is required"},
		{name: "empty key", cert: ecPEM, key: "", errField: FieldPrivateKey, errContain: "is required"},
		{name: "garbage certificate", cert: "hello world", key: sec1PEM(t, ecKey), errField: FieldCertificate, errContain: "is not PEM-encoded"},
		{name: "truncated certificate PEM", cert: ecPEM[:len(ecPEM)/2], key: sec1PEM(t, ecKey), errField: FieldCertificate, errContain: "malformed PEM block"},
		{name: "certificate block with garbage body", cert: "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n", key: sec1PEM(t, ecKey),
			errField: FieldCertificate, errContain: "PEM block 1 is not a valid X.509 certificate"},
		{name: "wrong block type in certificate", cert: "-----BEGIN PUBLIC KEY-----\naGVsbG8=\n-----END PUBLIC KEY-----\n", key: sec1PEM(t, ecKey),
			errField: FieldCertificate, errContain: `PEM block 1 is of type "PUBLIC KEY"`},
		{name: "key in certificate field", cert: ecPEM + sec1PEM(t, ecKey), key: sec1PEM(t, ecKey), errField: FieldCertificate, errContain: "contains a private key (PEM block 2)"},
		{name: "certificate in key field", cert: ecPEM, key: ecPEM, errField: FieldPrivateKey, errContain: "contains a certificate, not a private key"},
		{name: "garbage key", cert: ecPEM, key: "not a key", errField: FieldPrivateKey, errContain: "is not PEM-encoded"},
		{name: "key block with garbage body", cert: ecPEM, key: "-----BEGIN PRIVATE KEY-----\naGVsbG8=\n-----END PRIVATE KEY-----\n", errField: FieldPrivateKey, errContain: "is not a valid PKCS #8 private key"},
		{name: "sec1 label on pkcs8 body", cert: ecPEM, key: strings.ReplaceAll(pkcs8PEM(t, ecKey), "PRIVATE KEY", "EC PRIVATE KEY"), errField: FieldPrivateKey, errContain: "is not a valid SEC 1 EC private key"},
		{name: "encrypted legacy key", cert: ecPEM, key: encryptedKey, errField: FieldPrivateKey, errContain: "is encrypted"},
		{name: "encrypted pkcs8 key", cert: ecPEM, key: "-----BEGIN ENCRYPTED PRIVATE KEY-----\naGVsbG8=\n-----END ENCRYPTED PRIVATE KEY-----\n", errField: FieldPrivateKey, errContain: "is encrypted"},
		{name: "two keys", cert: ecPEM, key: sec1PEM(t, ecKey) + sec1PEM(t, ecKey2), errField: FieldPrivateKey, errContain: "more than one private key"},
		{name: "only EC parameters", cert: ecPEM, key: ecParams, errField: FieldPrivateKey, errContain: "contains no private key block"},
		{name: "openssh key", cert: ecPEM, key: "-----BEGIN OPENSSH PRIVATE KEY-----\naGVsbG8=\n-----END OPENSSH PRIVATE KEY-----\n", errField: FieldPrivateKey, errContain: "is an OpenSSH key"},
		{name: "dsa key", cert: ecPEM, key: "-----BEGIN DSA PRIVATE KEY-----\naGVsbG8=\n-----END DSA PRIVATE KEY-----\n", errField: FieldPrivateKey, errContain: `unsupported key type "DSA PRIVATE KEY"`},
		{name: "P-224 key", cert: ecPEM, key: p224Key, errField: FieldPrivateKey, errContain: "is an ECDSA key on curve P-224, which TLS does not use"},
		{name: "small rsa key", cert: certToPEM(smallRSALeaf), key: pkcs1PEM(rsaSmall), errField: FieldPrivateKey, errContain: "is a 1024-bit RSA key"},
		{name: "mismatched key same type", cert: ecPEM, key: sec1PEM(t, ecKey2), errField: FieldPrivateKey, errContain: "does not match the certificate's public key"},
		{name: "mismatched key type", cert: ecPEM, key: pkcs8PEM(t, edKey), errField: FieldPrivateKey, errContain: "is an Ed25519 key but the certificate has an ECDSA public key"},
		{name: "expired", cert: certToPEM(expired), key: sec1PEM(t, ecKey), errField: FieldCertificate, errContain: "expired at "},
		{name: "not yet valid", cert: certToPEM(future), key: sec1PEM(t, ecKey), errField: FieldCertificate, errContain: "is not valid before "},
		{name: "CA certificate as leaf", cert: certToPEM(caLeaf), key: sec1PEM(t, ecKey), errField: FieldCertificate, errContain: "is a CA certificate"},
		{name: "CA first, leaf later", cert: inter.pem() + ecPEM, key: sec1PEM(t, ecKey), errField: FieldCertificate, errContain: "the first certificate must be the server (leaf) certificate"},
		{name: "reversed chain", cert: ecPEM, key: sec1PEM(t, ecKey), chainPEM: root.pem() + inter.pem(), errField: FieldChain, errContain: "is in reverse order"},
		{name: "chain from another CA", cert: ecPEM, key: sec1PEM(t, ecKey), chainPEM: other.pem(), errField: FieldChain, errContain: `does not start with the leaf's issuer`},
		{name: "chain gap", cert: ecPEM, key: sec1PEM(t, ecKey), chainPEM: inter.pem() + other.pem(), errField: FieldChain, errContain: "chain certificate 1 (\"Test Intermediate\") was not issued by chain certificate 2 (\"Other Root\")"},
		{name: "chain starts with an unrelated non-CA certificate", cert: certToPEM(otherLeaf), key: sec1PEM(t, ecKey), chainPEM: certToPEM(selfSigned.cert),
			errField: FieldChain, errContain: "does not start with the leaf's issuer"},
		{name: "leaf signed by a non-CA certificate", cert: certToPEM(signedByNonCA), key: sec1PEM(t, ecKey), chainPEM: certToPEM(nonCASigner.cert) + chain,
			errField: FieldChain, errContain: `"Plain Server" is not a CA certificate, so it cannot have issued`},
		{name: "leaf twice", cert: ecPEM, key: sec1PEM(t, ecKey), chainPEM: ecPEM, errField: FieldChain, errContain: "contains the leaf certificate again"},
		{name: "leaf twice in certificate field", cert: ecPEM + ecPEM, key: sec1PEM(t, ecKey), errField: FieldCertificate, errContain: "contains the leaf certificate again"},
		{name: "duplicate intermediate", cert: ecPEM + inter.pem(), key: sec1PEM(t, ecKey), chainPEM: inter.pem(), errField: FieldChain, errContain: "twice"},
		{name: "garbage chain", cert: ecPEM, key: sec1PEM(t, ecKey), chainPEM: "junk", errField: FieldChain, errContain: "is not PEM-encoded"},
		{name: "CN only, no SAN", cert: certToPEM(cnOnly), key: sec1PEM(t, ecKey), errField: FieldCertificate, errContain: "has no DNS subject alternative names (only the common name"},
		{name: "IP SAN only", cert: certToPEM(ipOnly), key: sec1PEM(t, ecKey), errField: FieldCertificate, errContain: "has no DNS subject alternative names; SNI needs"},
		{name: "client auth only", cert: certToPEM(clientOnly), key: sec1PEM(t, ecKey), errField: FieldCertificate, errContain: "does not include TLS server authentication"},
		{name: "invalid DNS names", cert: certToPEM(badNames), key: sec1PEM(t, ecKey), errField: FieldCertificate, errContain: `"under_score.example.com" contains a character not allowed`},
		{name: "oversized certificate", cert: strings.Repeat("A", MaxFieldSize+1), key: sec1PEM(t, ecKey), errField: FieldCertificate, errContain: "at most"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseUpload(tc.cert, tc.key, tc.chainPEM, now)
			if err != nil {
				assertNoKeyMaterial(t, err.Error(), tc.key)
			}
			if tc.want == nil {
				if err == nil {
					t.Fatalf("ParseUpload succeeded; want error on %s containing %q", tc.errField, tc.errContain)
				}
				fields, ok := fielderr.From(err)
				if !ok {
					t.Fatalf("error %v is not a *fielderr.Error", err)
				}
				for _, f := range fields {
					if f.Field == tc.errField && strings.Contains(f.Message, tc.errContain) {
						return
					}
				}
				t.Fatalf("error %v has no %s error containing %q", err, tc.errField, tc.errContain)
			}
			if err != nil {
				t.Fatalf("ParseUpload: %v", err)
			}
			w := tc.want
			if got.Domain != w.domain {
				t.Errorf("Domain = %q, want %q", got.Domain, w.domain)
			}
			if strings.Join(got.Names, ",") != strings.Join(w.names, ",") {
				t.Errorf("Names = %q, want %q", got.Names, w.names)
			}
			if n := strings.Count(got.ChainPEM, "BEGIN CERTIFICATE"); n != w.chainCerts {
				t.Errorf("ChainPEM has %d certificates, want %d", n, w.chainCerts)
			}
			if n := strings.Count(got.CertificatePEM, "BEGIN CERTIFICATE"); n != 1 {
				t.Errorf("CertificatePEM has %d certificates, want 1", n)
			}
			if w.issuer != "" && got.Issuer != w.issuer {
				t.Errorf("Issuer = %q, want %q", got.Issuer, w.issuer)
			}
			if !strings.HasPrefix(got.PrivateKeyPEM, "-----BEGIN PRIVATE KEY-----") {
				t.Errorf("PrivateKeyPEM is not normalised to PKCS #8")
			}
			block, _ := pem.Decode([]byte(got.CertificatePEM))
			leaf, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			sum := sha256.Sum256(leaf.Raw)
			if got.Fingerprint != hex.EncodeToString(sum[:]) {
				t.Errorf("Fingerprint = %s, want SHA-256 of the leaf DER", got.Fingerprint)
			}
			if got.ID != got.Fingerprint[:IDLength] {
				t.Errorf("ID = %q, want the first %d hex digits of the fingerprint", got.ID, IDLength)
			}
			if !got.ExpiresAt.Equal(leaf.NotAfter) || !got.NotBefore.Equal(leaf.NotBefore) {
				t.Errorf("validity = %v..%v, want %v..%v", got.NotBefore, got.ExpiresAt, leaf.NotBefore, leaf.NotAfter)
			}
			if got.Provider != ProviderUpload {
				t.Errorf("Provider = %q", got.Provider)
			}
			if _, err := tls.X509KeyPair([]byte(got.CertificatePEM+got.ChainPEM), []byte(got.PrivateKeyPEM)); err != nil {
				t.Errorf("stored pair does not load: %v", err)
			}
			again, err := ParseUpload(tc.cert, tc.key, tc.chainPEM, now)
			if err != nil || again.ID != got.ID {
				t.Errorf("re-upload gave ID %v (err %v), want the same ID %s", again, err, got.ID)
			}
		})
	}
}

func TestParseUploadReportsEveryField(t *testing.T) {
	_, err := ParseUpload("nope", "nope", "nope", time.Now())
	var fe *fielderr.Error
	if !errors.As(err, &fe) {
		t.Fatalf("err = %v, want *fielderr.Error", err)
	}
	got := map[string]bool{}
	for _, f := range fe.Fields {
		got[f.Field] = true
	}
	for _, field := range []string{FieldCertificate, FieldPrivateKey, FieldChain} {
		if !got[field] {
			t.Errorf("no error for %s in %v", field, err)
		}
	}
}

func TestCheckDNSName(t *testing.T) {
	cases := map[string]string{
		"example.com":                    "",
		"a-b.example.com":                "",
		"*.example.com":                  "",
		"xn--bcher-kva.ch":               "",
		"localhost":                      "",
		"*":                              "is a wildcard for a top-level domain",
		"*.com":                          "is a wildcard for a top-level domain",
		"a.*.example.com":                "has a wildcard that is not the leftmost label",
		"a*.example.com":                 "has a wildcard that is not a whole label",
		"example.com.":                   "ends with a dot",
		"a..example.com":                 "has an empty label",
		"-a.example.com":                 "has a label that starts or ends with a hyphen",
		"a_b.example.com":                "contains a character not allowed in a host name",
		"intranet":                       "is not a fully qualified domain name",
		strings.Repeat("a", 64) + ".com": "has a label longer than 63 characters",
		"":                               "is empty",
	}
	for name, want := range cases {
		if got := checkDNSName(name); got != want {
			t.Errorf("checkDNSName(%q) = %q, want %q", name, got, want)
		}
	}
}

// assertNoKeyMaterial fails when any 12-character run of the key's base64
// body appears in msg.
func assertNoKeyMaterial(t *testing.T, msg, keyPEM string) {
	t.Helper()
	rest := []byte(keyPEM)
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return
		}
		body := string(pem.EncodeToMemory(&pem.Block{Type: "X", Bytes: block.Bytes}))
		body = strings.Join(strings.Split(body, "\n")[1:], "")
		for i := 0; i+12 <= len(body) && !strings.HasPrefix(body[i:], "-----"); i++ {
			if strings.Contains(msg, body[i:i+12]) {
				t.Fatalf("error message contains key material: %s", msg)
			}
		}
	}
}

func FuzzParseUpload(f *testing.F) {
	root := newRoot(f, "Fuzz Root")
	key := newECKey(f)
	leaf := root.sign(f, key.Public(), leafSpec{cn: "fuzz.example.com", dns: []string{"fuzz.example.com", "*.fuzz.example.com"}})
	leafPEM, keyPEM := certToPEM(leaf), sec1PEM(f, key)
	f.Add(leafPEM, keyPEM, root.pem())
	f.Add(leafPEM+root.pem(), pkcs8PEM(f, key), "")
	f.Add(root.pem(), keyPEM, leafPEM)
	f.Add("-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n", "-----BEGIN EC PRIVATE KEY-----\nMAA=\n-----END EC PRIVATE KEY-----\n", "")
	f.Add("", "", "")
	f.Add("garbage", "-----BEGIN", "-----END")
	now := time.Now()
	f.Fuzz(func(t *testing.T, certPEM, keyPEM, chainPEM string) {
		c, err := ParseUpload(certPEM, keyPEM, chainPEM, now)
		if err != nil {
			if _, ok := fielderr.From(err); !ok {
				t.Fatalf("error %v is not a *fielderr.Error", err)
			}
			assertNoKeyMaterial(t, err.Error(), keyPEM)
			return
		}
		if c.ID == "" || len(c.Names) == 0 || c.Domain == "" {
			t.Fatalf("accepted certificate without id or names: %+v", c)
		}
		if _, err := tls.X509KeyPair([]byte(c.CertificatePEM+c.ChainPEM), []byte(c.PrivateKeyPEM)); err != nil {
			t.Fatalf("accepted a pair tls cannot load: %v", err)
		}
	})
}

// `openssl req -x509` marks its self-signed certificates CA:TRUE; operators
// upload those for internal names, and they must be accepted as leaves,
// while a CA certificate issued by another CA still is not.
func TestParseUploadAcceptsSelfSignedCertificateMarkedCA(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(9),
		Subject:               pkix.Name{CommonName: "internal.example.com"},
		DNSNames:              []string{"internal.example.com", "alt.example.com"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseUpload(certToPEM(leaf), pkcs8PEM(t, key), "", time.Now())
	if err != nil {
		t.Fatalf("self-signed CA:TRUE server certificate rejected: %v", err)
	}
	if got.Domain != "internal.example.com" || len(got.Names) != 2 {
		t.Fatalf("domain %q names %v", got.Domain, got.Names)
	}
}
