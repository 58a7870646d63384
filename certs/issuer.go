package certs

import (
	"context"
	"crypto/x509"
	"errors"
	"time"
)

// Issuer obtains certificates from one certificate authority. The manager
// holds several and tries them in order until one succeeds, so a second
// CA (or a second account) takes over when the first refuses or is down.
type Issuer interface {
	// Key identifies the issuer in renewal state and in the budget's
	// per-account counters; for ACME it is the directory URL.
	Key() string
	// Issue obtains a certificate for req.Names with a fresh private key.
	Issue(ctx context.Context, req IssueRequest) (*IssuedCertificate, error)
}

// RenewalInformer is an Issuer that can say when the CA wants a
// certificate renewed (ACME Renewal Information, RFC 9773).
type RenewalInformer interface {
	// RenewalInfo returns the CA's suggested window for leaf, or an error
	// wrapping ErrNoRenewalInfo when the CA does not offer it.
	RenewalInfo(ctx context.Context, leaf *x509.Certificate) (RenewalWindow, error)
	// ReplacesID is the identifier of leaf that an order replacing it
	// names (RFC 9773 "replaces").
	ReplacesID(leaf *x509.Certificate) (string, error)
}

// ChallengeOfferer is an Issuer that validates names with ACME
// challenges and can say which it offers. The manager asks before an
// order that cannot succeed: a CA validates a wildcard name with dns-01
// only (RFC 8555 §8.4), so without it the order would fail at the CA
// after spending an order against the rate limits.
type ChallengeOfferer interface {
	// OffersChallenge reports whether the issuer answers challenge type
	// typ ("http-01", "tls-alpn-01", "dns-01").
	OffersChallenge(typ string) bool
}

// ErrNoRenewalInfo: the CA does not offer renewal information.
var ErrNoRenewalInfo = errors.New("certs: the CA offers no renewal information")

// ErrAlreadyReplaced: the CA says the certificate named as replaced was
// already replaced by another order, which in this cluster means another
// agent renewed it.
var ErrAlreadyReplaced = errors.New("certs: certificate already replaced")

// ErrNotOrdered: the issuer refused the request before placing an order
// (a profile the CA does not offer, no account).
var ErrNotOrdered = errors.New("certs: no order placed")

// IssueRequest is one order.
type IssueRequest struct {
	// Names are the DNS names, normalized (lower case, sorted, unique).
	Names []string
	// ReplacesID names the certificate this order replaces (ARI); empty
	// for a first issuance.
	ReplacesID string
	// Profile is the CA profile to ask for ("classic", "tlsserver",
	// "shortlived"); empty for the CA's default.
	Profile string
}

// IssuedCertificate is what an issuer returns: PEM, leaf first.
type IssuedCertificate struct {
	CertificatePEM string
	ChainPEM       string
	// PrivateKeyPEM is the fresh key of this certificate (PKCS #8 or
	// SEC 1). It goes to the store, sealed, and nowhere else.
	PrivateKeyPEM string
	Leaf          *x509.Certificate
	// IssuerKey is the Key of the issuer that issued it.
	IssuerKey string
}

// RenewalWindow is a CA's suggested renewal window.
type RenewalWindow struct {
	Start, End time.Time
	// RetryAfter is when to ask again (the CA's Retry-After).
	RetryAfter time.Duration
	// ExplanationURL points at the CA's reason for an early window.
	ExplanationURL string
}
