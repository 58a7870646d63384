package certs

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"
	"sync"
	"time"

	"go.uber.org/zap"
)

// ChallengeToken is a pending HTTP-01 or TLS-ALPN-01 challenge. The key
// authorization is public by design (the CA fetches it from any of our
// addresses); it is not a secret.
type ChallengeToken struct {
	Type      string    `json:"type"`
	Domain    string    `json:"domain"`
	Token     string    `json:"token"`
	KeyAuth   string    `json:"key_auth"`
	ExpiresAt time.Time `json:"expires_at"`
}

// ChallengeName is what a challenge is looked up by: the token for
// HTTP-01 (the request path carries it), the domain for TLS-ALPN-01 (the
// ClientHello's SNI carries it).
func (c ChallengeToken) ChallengeName() string {
	if c.Type == ChallengeHTTP01 {
		return c.Token
	}
	return normalizeName(c.Domain)
}

// ChallengeStore shares pending challenges with every agent, since the CA
// may validate against any region.
type ChallengeStore interface {
	// PresentChallenge stores c and returns only once every alive member
	// of the cluster holds it. An error means the CA must not be told
	// the challenge is ready.
	PresentChallenge(ctx context.Context, c ChallengeToken) error
	// RemoveChallenge deletes c (best effort: it also expires).
	RemoveChallenge(ctx context.Context, c ChallengeToken) error
	// LookupChallenge returns the live challenge of type typ and name
	// (see ChallengeName), or an error wrapping ErrNoChallenge.
	LookupChallenge(ctx context.Context, typ, name string) (ChallengeToken, error)
}

// ErrNoChallenge: no live challenge by that name.
var ErrNoChallenge = errors.New("certs: no pending challenge")

// ErrNotPresented: a challenge could not be made answerable on every
// agent, so the CA was not asked to validate it (and no validation
// failed there).
var ErrNotPresented = errors.New("certs: challenge not present on every agent")

// presenter is the lego challenge.Provider for HTTP-01 and TLS-ALPN-01
// of one issuance: Present writes through the store (and its wait for
// every member), so lego tells the CA only once all agents can answer.
type presenter struct {
	ctx   context.Context
	store ChallengeStore
	typ   string
	ttl   time.Duration
	wait  time.Duration // bounds PresentChallenge; 0: the issuance's context alone
	now   func() time.Time
}

func (p *presenter) token(domain, token, keyAuth string) ChallengeToken {
	return ChallengeToken{Type: p.typ, Domain: normalizeName(domain), Token: token, KeyAuth: keyAuth,
		ExpiresAt: p.now().Add(p.ttl).UTC()}
}

func (p *presenter) Present(domain, token, keyAuth string) error {
	ctx := p.ctx
	if p.wait > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, p.wait)
		defer cancel()
	}
	if err := p.store.PresentChallenge(ctx, p.token(domain, token, keyAuth)); err != nil {
		return fmt.Errorf("%w: %s for %s: %w", ErrNotPresented, p.typ, domain, err)
	}
	return nil
}

func (p *presenter) CleanUp(domain, token, keyAuth string) error {
	// Detached from the issuance's context: a cancelled issuance still
	// removes its tokens.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(p.ctx), 10*time.Second)
	defer cancel()
	return p.store.RemoveChallenge(ctx, p.token(domain, token, keyAuth))
}

// ChallengeResponder answers the challenges every agent shares; it
// implements proxy.ChallengeSource.
type ChallengeResponder struct {
	store   ChallengeStore
	log     *zap.Logger
	now     func() time.Time
	timeout time.Duration

	mu   sync.Mutex
	alpn map[string]alpnCert // key: domain + "\x00" + key authorization
}

type alpnCert struct {
	cert    *tls.Certificate
	expires time.Time
}

// maxALPNCerts bounds the cache of TLS-ALPN-01 certificates; pending
// challenges are few, so reaching it means entries are stale.
const maxALPNCerts = 1024

// NewChallengeResponder returns a responder reading from store.
func NewChallengeResponder(store ChallengeStore, log *zap.Logger) *ChallengeResponder {
	if log == nil {
		log = zap.NewNop()
	}
	return &ChallengeResponder{store: store, log: log, now: time.Now, timeout: 2 * time.Second,
		alpn: make(map[string]alpnCert)}
}

func (r *ChallengeResponder) lookup(typ, name string) (ChallengeToken, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), r.timeout)
	defer cancel()
	c, err := r.store.LookupChallenge(ctx, typ, name)
	if err != nil {
		if !errors.Is(err, ErrNoChallenge) {
			r.log.Warn("acme challenge lookup failed", zap.String("type", typ), zap.Error(err))
		}
		return ChallengeToken{}, false
	}
	return c, true
}

// HTTP01 returns the key authorization for token when it was issued for
// host.
func (r *ChallengeResponder) HTTP01(host, token string) (string, bool) {
	c, ok := r.lookup(ChallengeHTTP01, token)
	if !ok || normalizeName(c.Domain) != normalizeName(host) {
		return "", false
	}
	return c.KeyAuth, true
}

// TLSALPN01 returns the acme-tls/1 certificate for serverName (RFC 8737).
func (r *ChallengeResponder) TLSALPN01(serverName string) (*tls.Certificate, bool) {
	name := normalizeName(serverName)
	c, ok := r.lookup(ChallengeTLSALPN01, name)
	if !ok {
		return nil, false
	}
	key := name + "\x00" + c.KeyAuth
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if e, ok := r.alpn[key]; ok {
		return e.cert, true
	}
	cert, err := alpnChallengeCert(name, c.KeyAuth, now)
	if err != nil {
		r.log.Error("tls-alpn-01 certificate", zap.String("sni", name), zap.Error(err))
		return nil, false
	}
	if len(r.alpn) >= maxALPNCerts {
		for k, e := range r.alpn {
			if now.After(e.expires) {
				delete(r.alpn, k)
			}
		}
		if len(r.alpn) >= maxALPNCerts {
			clear(r.alpn)
		}
	}
	r.alpn[key] = alpnCert{cert: cert, expires: c.ExpiresAt}
	return cert, true
}

// idPeACMEIdentifier is RFC 8737's acmeIdentifier extension.
var idPeACMEIdentifier = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 1, 31}

// alpnChallengeCert builds the self-signed TLS-ALPN-01 certificate with an
// ECDSA P-256 key. lego's helper generates an RSA-2048 key per call, which
// costs a CPU-second under load on every agent that answers.
func alpnChallengeCert(domain, keyAuth string, now time.Time) (*tls.Certificate, error) {
	sum := sha256.Sum256([]byte(keyAuth))
	value, err := asn1.Marshal(sum[:])
	if err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:    serial,
		Subject:         pkix.Name{CommonName: "ACME challenge"},
		NotBefore:       now.Add(-time.Hour),
		NotAfter:        now.Add(24 * time.Hour),
		DNSNames:        []string{domain},
		ExtraExtensions: []pkix.Extension{{Id: idPeACMEIdentifier, Critical: true, Value: value}},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}
