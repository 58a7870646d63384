package certs

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-acme/lego/v4/acme"
	"github.com/go-acme/lego/v4/acme/api"
	"github.com/go-acme/lego/v4/certcrypto"
	"github.com/go-acme/lego/v4/certificate"
	"github.com/go-acme/lego/v4/challenge"
	"github.com/go-acme/lego/v4/challenge/dns01"
	"github.com/go-acme/lego/v4/lego"
	"github.com/go-acme/lego/v4/registration"
	"go.uber.org/zap"
)

// ProviderACME marks certificates obtained by the ACME manager.
const ProviderACME = "acme"

// Challenge types an ACMEIssuer can answer.
const (
	ChallengeHTTP01    = "http-01"
	ChallengeTLSALPN01 = "tls-alpn-01"
	ChallengeDNS01     = "dns-01"
)

// LetsEncryptProduction is the default directory.
const LetsEncryptProduction = lego.LEDirectoryProduction

// ACMEConfig configures one ACME issuer: one directory, one account.
type ACMEConfig struct {
	// DirectoryURL is the CA's ACME directory.
	DirectoryURL string
	// CABundlePEM, when set, is the only set of roots trusted for the
	// ACME server's own TLS (a private CA, Pebble). Empty: system roots.
	CABundlePEM []byte
	// Email is the account's contact address; empty registers without.
	Email string
	// EABKeyID and EABHMACKey bind the account to an existing one at CAs
	// that require External Account Binding. The HMAC key is base64url.
	EABKeyID   string
	EABHMACKey string
	// KeyType of each certificate's fresh key: "ec256" (default),
	// "ec384", "rsa2048", "rsa3072", "rsa4096".
	KeyType string
	// Challenges lists the challenge types to offer, in no particular
	// order (lego prefers tls-alpn-01, then http-01, then dns-01 among
	// those the CA offers). Default: http-01 and tls-alpn-01, plus dns-01
	// when DNS01Provider is set.
	Challenges []string
	// DNS01Provider answers dns-01 challenges (see DNSProviderFromEnv).
	DNS01Provider challenge.Provider
	// DNS01Resolvers are the recursive resolvers asked whether a dns-01
	// record is visible before the CA is told ("host:port"; default:
	// /etc/resolv.conf's). lego's DNS providers find a record's zone
	// through lego's own resolvers, which are process-wide: they are set
	// to these too, so every issuer of the process must agree.
	DNS01Resolvers []string
	// DNS01RecursiveOnly checks propagation on DNS01Resolvers only, not
	// on the zone's authoritative servers.
	DNS01RecursiveOnly bool
	// Profile is asked for when a request names none and the directory
	// offers it.
	Profile string
	// HTTPTimeout bounds each request to the CA.
	HTTPTimeout time.Duration
	// ChallengeTTL is how long a presented token stays answerable.
	ChallengeTTL time.Duration
	// PresentTimeout bounds Present's wait for every alive member to
	// hold a token. A member that is alive to the failure detector but
	// cut off from replication would otherwise hold the order until the
	// caller gives up; past it, Present fails and the CA is never told.
	PresentTimeout time.Duration
	Logger         *zap.Logger
	Now            func() time.Time
}

// DefaultACMEConfig returns Let's Encrypt production with ECDSA P-256.
func DefaultACMEConfig() ACMEConfig {
	return ACMEConfig{
		DirectoryURL:   LetsEncryptProduction,
		KeyType:        "ec256",
		HTTPTimeout:    30 * time.Second,
		ChallengeTTL:   15 * time.Minute,
		PresentTimeout: 30 * time.Second,
		Logger:         zap.NewNop(),
		Now:            time.Now,
	}
}

var keyTypes = map[string]certcrypto.KeyType{
	"ec256": certcrypto.EC256, "ec384": certcrypto.EC384,
	"rsa2048": certcrypto.RSA2048, "rsa3072": certcrypto.RSA3072, "rsa4096": certcrypto.RSA4096,
}

// Account is the ACME account of one directory, shared by the cluster.
type Account struct {
	Directory string `json:"directory"`
	Email     string `json:"email,omitempty"`
	// URI is the account URL (the "kid" of every request).
	URI string `json:"uri"`
	// Body is the account object the CA returned.
	Body json.RawMessage `json:"body,omitempty"`
	// KeyPEM is the account's private key: sealed at rest, never logged
	// or returned by the API.
	KeyPEM string `json:"-"`
}

// AccountStore keeps the one account per directory.
type AccountStore interface {
	// LoadAccount returns the directory's account or an error wrapping
	// ErrNoAccount.
	LoadAccount(ctx context.Context, directory string) (Account, error)
	// SaveAccount stores a newly registered account unless one exists
	// already, and returns the one that is stored: when two agents
	// register at once, both end up using the same account.
	SaveAccount(ctx context.Context, a Account) (Account, error)
	// DropAccount deletes the directory's stored account if it is still
	// the one at uri (the CA no longer knows it); another agent may have
	// stored a new one already, which stays.
	DropAccount(ctx context.Context, directory, uri string) error
}

// ErrNoAccount: no account is stored for the directory.
var ErrNoAccount = errors.New("certs: no ACME account for this directory")

// ACMEIssuer is an Issuer backed by lego. Each Issue builds a lego client
// bound to the call's context (lego's API takes none: the HTTP transport
// carries it), with challenge providers that write through challenges.
type ACMEIssuer struct {
	cfg        ACMEConfig
	keyType    certcrypto.KeyType
	accounts   AccountStore
	challenges ChallengeStore
	log        *zap.Logger
	transport  http.RoundTripper
	// dns checks that a dns-01 record is visible (dns-01 only).
	dns dnsChecker

	mu      sync.Mutex // serializes account set-up
	account *Account
	key     crypto.Signer
}

// NewACMEIssuer validates cfg and returns an issuer; nothing is sent to
// the CA until the first Issue.
func NewACMEIssuer(cfg ACMEConfig, accounts AccountStore, challenges ChallengeStore) (*ACMEIssuer, error) {
	def := DefaultACMEConfig()
	if cfg.DirectoryURL == "" {
		cfg.DirectoryURL = def.DirectoryURL
	}
	if cfg.KeyType == "" {
		cfg.KeyType = def.KeyType
	}
	if cfg.HTTPTimeout <= 0 {
		cfg.HTTPTimeout = def.HTTPTimeout
	}
	if cfg.ChallengeTTL <= 0 {
		cfg.ChallengeTTL = def.ChallengeTTL
	}
	if cfg.PresentTimeout <= 0 {
		cfg.PresentTimeout = def.PresentTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = def.Logger
	}
	if cfg.Now == nil {
		cfg.Now = def.Now
	}
	kt, ok := keyTypes[strings.ToLower(cfg.KeyType)]
	if !ok {
		return nil, fmt.Errorf("certs: acme key type %q: want one of ec256, ec384, rsa2048, rsa3072, rsa4096", cfg.KeyType)
	}
	if len(cfg.Challenges) == 0 {
		cfg.Challenges = []string{ChallengeHTTP01, ChallengeTLSALPN01}
		if cfg.DNS01Provider != nil {
			cfg.Challenges = append(cfg.Challenges, ChallengeDNS01)
		}
	}
	for _, c := range cfg.Challenges {
		switch c {
		case ChallengeHTTP01, ChallengeTLSALPN01:
			if challenges == nil {
				return nil, fmt.Errorf("certs: acme challenge %s needs a challenge store", c)
			}
		case ChallengeDNS01:
			if cfg.DNS01Provider == nil {
				return nil, errors.New("certs: acme challenge dns-01 needs a DNS provider")
			}
		default:
			return nil, fmt.Errorf("certs: acme challenge %q: want http-01, tls-alpn-01 or dns-01", c)
		}
	}
	if (cfg.EABKeyID == "") != (cfg.EABHMACKey == "") {
		return nil, errors.New("certs: acme external account binding needs both the key id and the HMAC key")
	}
	if accounts == nil {
		return nil, errors.New("certs: acme issuer needs an account store")
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DialContext = (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	tr.ResponseHeaderTimeout = cfg.HTTPTimeout
	if len(cfg.CABundlePEM) > 0 {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(cfg.CABundlePEM) {
			return nil, errors.New("certs: acme CA bundle holds no PEM certificate")
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	iss := &ACMEIssuer{cfg: cfg, keyType: kt, accounts: accounts, challenges: challenges,
		log: cfg.Logger.With(zap.String("directory", cfg.DirectoryURL)), transport: tr}
	if slices.Contains(cfg.Challenges, ChallengeDNS01) {
		iss.dns = dnsChecker{recursive: systemResolvers(), authoritative: !cfg.DNS01RecursiveOnly,
			recursiveAll: cfg.DNS01RecursiveOnly, timeout: defaultDNSTimeout, port: "53"}
		if len(cfg.DNS01Resolvers) > 0 {
			iss.dns.recursive = dns01.ParseNameservers(cfg.DNS01Resolvers)
			// The providers' zone lookups (dns01.FindZoneByFqdn) use
			// lego's process-wide resolvers; the option only sets them.
			_ = dns01.AddRecursiveNameservers(cfg.DNS01Resolvers)(nil)
		}
	}
	return iss, nil
}

// Key is the directory URL.
func (a *ACMEIssuer) Key() string { return a.cfg.DirectoryURL }

// OffersChallenge implements ChallengeOfferer.
func (a *ACMEIssuer) OffersChallenge(typ string) bool {
	return slices.Contains(a.cfg.Challenges, typ)
}

// callTransport is the HTTP transport of one call into lego. It attaches
// the caller's context to every request (lego's API takes none), so
// cancelling an issuance stops it at the next request.
//
// It also stops lego's silent fallback on "alreadyReplaced": lego answers
// that problem by placing the same order again without "replaces", but in
// this cluster the answer means another agent already renewed the
// certificate, and a second order would only spend the rate limits. The
// transport notes the problem and refuses the immediate retry to the same
// URL; Issue then reports ErrAlreadyReplaced.
//
// It keeps the terms-of-service link of a userActionRequired answer
// (RFC 8555 §7.3.3 sends it as a Link header, which lego drops), so that
// the operator is told where the new terms are.
//
// It returns a badNonce answer as a *badNonceError, which lego does not
// retry: retryNonce retries it on the context (see badNonceError).
type callTransport struct {
	ctx      context.Context
	base     http.RoundTripper
	replaced atomic.Pointer[string] // URL that answered alreadyReplaced
	terms    atomic.Pointer[string] // terms-of-service link of a userActionRequired answer
}

func (t *callTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if u := t.replaced.Load(); u != nil && r.Method == http.MethodPost && r.URL.String() == *u {
		return nil, ErrAlreadyReplaced
	}
	resp, err := t.base.RoundTrip(r.WithContext(t.ctx))
	if err != nil {
		return resp, err
	}
	switch resp.StatusCode {
	case http.StatusConflict, http.StatusForbidden:
	case http.StatusBadRequest:
		if r.Method != http.MethodPost {
			return resp, nil
		}
	default:
		return resp, nil
	}
	body, rerr := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	resp.Body = io.NopCloser(bytes.NewReader(body))
	if rerr != nil {
		return resp, nil
	}
	var pd acme.ProblemDetails
	if json.Unmarshal(body, &pd) != nil {
		return resp, nil
	}
	switch pd.Type {
	case acme.BadNonceErr:
		if resp.StatusCode == http.StatusBadRequest {
			pd.HTTPStatus, pd.Method, pd.URL = resp.StatusCode, r.Method, r.URL.String()
			return nil, &badNonceError{problem: pd}
		}
	case acme.AlreadyReplacedErr:
		u := r.URL.String()
		t.replaced.Store(&u)
	case userActionRequiredErr:
		if terms := linkRel(resp.Header, "terms-of-service"); terms != "" {
			t.terms.Store(&terms)
		}
	}
	return resp, nil
}

// userActionRequiredErr is RFC 8555's problem type for an account whose
// holder must act at the CA (for example agree to changed terms).
const userActionRequiredErr = "urn:ietf:params:acme:error:userActionRequired"

// linkRel returns the target of h's first Link header with relation rel
// (RFC 8288), "" when there is none.
func linkRel(h http.Header, rel string) string {
	for _, v := range h.Values("Link") {
		for _, link := range strings.Split(v, ",") {
			target, params, ok := strings.Cut(link, ";")
			target = strings.TrimSpace(target)
			if !ok || !strings.HasPrefix(target, "<") || !strings.HasSuffix(target, ">") {
				continue
			}
			for _, p := range strings.Split(params, ";") {
				k, v, _ := strings.Cut(strings.TrimSpace(p), "=")
				if strings.EqualFold(k, "rel") && strings.Trim(v, `"`) == rel {
					return target[1 : len(target)-1]
				}
			}
		}
	}
	return ""
}

// UserActionError is the CA's userActionRequired answer (RFC 8555
// §7.3.3): it takes no order from the account until its holder has
// acted at the CA, typically agreed to changed terms of service.
// Agreeing is the operator's decision, not the agent's.
type UserActionError struct {
	Issuer string // the issuer's Key (directory URL)
	// Instance is the page the CA points at for the action, Terms the
	// terms-of-service link it sent; either may be empty.
	Instance, Terms string
	Err             error
}

func (e *UserActionError) Error() string {
	msg := fmt.Sprintf("the CA at %s requires an action of the ACME account holder before it takes another order", e.Issuer)
	if e.Instance != "" {
		msg += " (see " + e.Instance + ")"
	}
	if e.Terms != "" {
		msg += "; its terms of service: " + e.Terms
	}
	return msg + ": " + e.Err.Error()
}

func (e *UserActionError) Unwrap() error { return e.Err }

// asUserAction returns err as a *UserActionError when it is the CA's
// userActionRequired problem; terms is the link the transport kept.
func (a *ACMEIssuer) asUserAction(err error, terms *string) error {
	var pd *acme.ProblemDetails
	if !errors.As(err, &pd) || pd.Type != userActionRequiredErr {
		return err
	}
	ua := &UserActionError{Issuer: a.Key(), Instance: pd.Instance, Err: err}
	if terms != nil {
		ua.Terms = *terms
	}
	return ua
}

func (a *ACMEIssuer) httpClient(ctx context.Context) (*http.Client, *callTransport) {
	tr := &callTransport{ctx: ctx, base: a.transport}
	return &http.Client{Timeout: 2 * a.cfg.HTTPTimeout, Transport: tr}, tr
}

// legoUser adapts an Account to lego's registration.User.
type legoUser struct {
	email string
	reg   *registration.Resource
	key   crypto.PrivateKey
}

func (u *legoUser) GetEmail() string                        { return u.email }
func (u *legoUser) GetRegistration() *registration.Resource { return u.reg }
func (u *legoUser) GetPrivateKey() crypto.PrivateKey        { return u.key }

// client returns a lego client for one call, with the account registered
// (once per directory for the whole cluster, through the account store).
func (a *ACMEIssuer) client(ctx context.Context) (*lego.Client, *callTransport, error) {
	acct, key, err := a.ensureAccount(ctx)
	if err != nil {
		return nil, nil, err
	}
	var body acme.Account
	if len(acct.Body) > 0 {
		if err := json.Unmarshal(acct.Body, &body); err != nil {
			return nil, nil, fmt.Errorf("certs: stored acme account: %w", err)
		}
	}
	return a.newClient(ctx, &legoUser{email: acct.Email, key: key,
		reg: &registration.Resource{URI: acct.URI, Body: body}})
}

func (a *ACMEIssuer) newClient(ctx context.Context, user *legoUser) (*lego.Client, *callTransport, error) {
	lc := lego.NewConfig(user)
	lc.CADirURL = a.cfg.DirectoryURL
	var tr *callTransport
	lc.HTTPClient, tr = a.httpClient(ctx)
	lc.UserAgent = userAgent
	lc.Certificate.KeyType = a.keyType
	lc.Certificate.Timeout = a.cfg.HTTPTimeout
	c, err := lego.NewClient(lc)
	if err != nil {
		return nil, nil, fmt.Errorf("certs: acme directory %s: %w", a.cfg.DirectoryURL, err)
	}
	return c, tr, nil
}

func (a *ACMEIssuer) ensureAccount(ctx context.Context) (Account, crypto.Signer, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.account != nil {
		return *a.account, a.key, nil
	}
	acct, err := a.accounts.LoadAccount(ctx, a.cfg.DirectoryURL)
	if err != nil && !errors.Is(err, ErrNoAccount) {
		return Account{}, nil, err
	}
	if errors.Is(err, ErrNoAccount) {
		if acct, err = a.register(ctx); err != nil {
			return Account{}, nil, err
		}
	}
	key, err := parseSigner(acct.KeyPEM)
	if err != nil {
		return Account{}, nil, fmt.Errorf("certs: stored acme account key: %w", err)
	}
	a.account, a.key = &acct, key
	return acct, key, nil
}

func (a *ACMEIssuer) register(ctx context.Context) (Account, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Account{}, err
	}
	user := &legoUser{email: a.cfg.Email, key: key}
	c, _, err := a.newClient(ctx, user)
	if err != nil {
		return Account{}, err
	}
	reg, err := retryNonce(ctx, func() (*registration.Resource, error) {
		if a.cfg.EABKeyID != "" {
			return c.Registration.RegisterWithExternalAccountBinding(registration.RegisterEABOptions{
				TermsOfServiceAgreed: true, Kid: a.cfg.EABKeyID, HmacEncoded: a.cfg.EABHMACKey})
		}
		return c.Registration.Register(registration.RegisterOptions{TermsOfServiceAgreed: true})
	})
	if err != nil {
		return Account{}, fmt.Errorf("certs: acme account registration at %s: %w", a.cfg.DirectoryURL, err)
	}
	body, err := json.Marshal(reg.Body)
	if err != nil {
		return Account{}, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return Account{}, err
	}
	acct := Account{Directory: a.cfg.DirectoryURL, Email: a.cfg.Email, URI: reg.URI, Body: body,
		KeyPEM: string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))}
	stored, err := a.accounts.SaveAccount(ctx, acct)
	if err != nil {
		return Account{}, fmt.Errorf("certs: saving acme account: %w", err)
	}
	if stored.URI != acct.URI {
		a.log.Info("another agent registered the acme account first; using it", zap.String("account", stored.URI))
	} else {
		a.log.Info("acme account registered", zap.String("account", stored.URI))
	}
	return stored, nil
}

func parseSigner(keyPEM string) (crypto.Signer, error) {
	block, _ := pem.Decode([]byte(keyPEM))
	if block == nil {
		return nil, errors.New("no PEM block")
	}
	k, _ := parsePrivateKey(block)
	if k == nil {
		return nil, errors.New("unsupported private key")
	}
	return k, nil
}

// Issue obtains a certificate for req.Names with a fresh key. When the
// CA says the stored account does not exist (a CA that lost or reset its
// accounts, a staging environment wiped), the account is forgotten, a
// new one registered (or another agent's new one taken) and the order
// placed once more: without it every order failed until an operator
// deleted the account row.
func (a *ACMEIssuer) Issue(ctx context.Context, req IssueRequest) (*IssuedCertificate, error) {
	res, err := a.issueOnce(ctx, req)
	if !isAccountGone(err) {
		return res, err
	}
	stale := a.forgetAccount()
	a.log.Warn("the CA does not know the stored acme account; registering a new one", zap.String("account", stale.URI), zap.Error(err))
	if stale.URI != "" {
		if derr := a.accounts.DropAccount(ctx, a.cfg.DirectoryURL, stale.URI); derr != nil {
			return nil, fmt.Errorf("%w (dropping the stale account: %w)", err, derr)
		}
	}
	return a.issueOnce(ctx, req)
}

// forgetAccount clears the cached account and returns it.
func (a *ACMEIssuer) forgetAccount() Account {
	a.mu.Lock()
	defer a.mu.Unlock()
	var stale Account
	if a.account != nil {
		stale = *a.account
	}
	a.account, a.key = nil, nil
	return stale
}

// isAccountGone reports whether err is the CA's "no such account"
// (RFC 8555 accountDoesNotExist).
func isAccountGone(err error) bool {
	var pd *acme.ProblemDetails
	return errors.As(err, &pd) && pd.Type == "urn:ietf:params:acme:error:accountDoesNotExist"
}

// orderer returns the flow of one order, over the stored account, with
// solvers and waits that end with ctx (orderer, ctxResolver).
func (a *ACMEIssuer) orderer(ctx context.Context) (*orderer, *callTransport, error) {
	acct, key, err := a.ensureAccount(ctx)
	if err != nil {
		return nil, nil, err
	}
	hc, tr := a.httpClient(ctx)
	core, err := api.New(hc, userAgent, a.cfg.DirectoryURL, acct.URI, key)
	if err != nil {
		return nil, nil, fmt.Errorf("certs: acme directory %s: %w", a.cfg.DirectoryURL, err)
	}
	res := newCtxResolver(ctx, core)
	if err := a.setChallenges(ctx, res); err != nil {
		return nil, nil, err
	}
	return &orderer{ctx: ctx, core: core, resolver: res, keyType: a.keyType, timeout: a.cfg.HTTPTimeout}, tr, nil
}

// userAgent is sent with every request to the CA.
const userAgent = "singularity-edge"

func (a *ACMEIssuer) issueOnce(ctx context.Context, req IssueRequest) (*IssuedCertificate, error) {
	o, tr, err := a.orderer(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNotOrdered, err)
	}
	profile := req.Profile
	if profile == "" {
		profile = a.cfg.Profile
	}
	if profile != "" {
		offered, err := a.Profiles(ctx)
		if err != nil {
			return nil, err
		}
		if _, ok := offered[profile]; !ok {
			return nil, fmt.Errorf("%w: profile %q is not offered by %s (offered: %s)", ErrNotOrdered, profile, a.cfg.DirectoryURL, strings.Join(slices.Sorted(mapKeys(offered)), ", "))
		}
	}
	res, err := o.obtain(req.Names, api.OrderOptions{Profile: profile, ReplacesCertID: req.ReplacesID})
	if err != nil {
		if tr.replaced.Load() != nil || isAlreadyReplaced(err) {
			return nil, fmt.Errorf("%w: %s", ErrAlreadyReplaced, req.ReplacesID)
		}
		return nil, fmt.Errorf("certs: acme order for %s at %s: %w", strings.Join(req.Names, ","), a.cfg.DirectoryURL, a.asUserAction(err, tr.terms.Load()))
	}
	block, _ := pem.Decode(res.Certificate)
	if block == nil {
		return nil, errors.New("certs: acme: the CA returned no certificate")
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("certs: acme: certificate from the CA: %w", err)
	}
	return &IssuedCertificate{
		CertificatePEM: string(pem.EncodeToMemory(block)),
		ChainPEM:       string(res.IssuerCertificate),
		PrivateKeyPEM:  string(res.PrivateKey),
		Leaf:           leaf,
		IssuerKey:      a.Key(),
	}, nil
}

func mapKeys(m map[string]string) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// caRetryAfter returns, when err is the CA's rateLimited problem with a
// Retry-After (RFC 8555 §6.6), when the CA allows the next order, at most
// maxCAHold from now.
func caRetryAfter(err error, now time.Time) (time.Time, bool) {
	var rl *acme.RateLimitedError
	if !errors.As(err, &rl) || rl.RetryAfter == "" {
		return time.Time{}, false
	}
	d, perr := api.ParseRetryAfter(rl.RetryAfter)
	if perr != nil || d <= 0 {
		return time.Time{}, false
	}
	return now.Add(min(d, maxCAHold)), true
}

// isValidationFailure reports whether err is the CA's refusal of the
// names: a problem of one of the types RFC 8555 (section 6.7) gives
// for a failed validation or a refused identifier, whether it came
// back from a request or as the challenge's own error. That is what the
// CA counts against a name. A transport error, a timeout, a 5xx, an
// answer that is not a problem document, or a problem with the account
// or the request (accountDoesNotExist, userActionRequired, badNonce,
// rateLimited, serverInternal, ...) is not: counted as failed
// validations, half a day of CA errors in the last tenth of a
// certificate's life reached the budget's pause and held the renewal
// back for up to the pause window after the CA recovered.
func isValidationFailure(err error) bool {
	var pd *acme.ProblemDetails
	if !errors.As(err, &pd) || pd.HTTPStatus >= http.StatusInternalServerError {
		return false
	}
	switch strings.TrimPrefix(pd.Type, "urn:ietf:params:acme:error:") {
	case "caa", "connection", "dns", "incorrectResponse", "rejectedIdentifier", "tls", "unauthorized", "unsupportedIdentifier":
		return true
	}
	return false
}

func isRateLimited(err error) bool {
	var rl *acme.RateLimitedError
	return errors.As(err, &rl)
}

func isAlreadyReplaced(err error) bool {
	var pd *acme.ProblemDetails
	return errors.As(err, &pd) && pd.Type == acme.AlreadyReplacedErr
}

// maxDirectorySize bounds the directory document read for its profiles;
// Let's Encrypt's is under 2 KiB.
const maxDirectorySize = 1 << 20

// Profiles reads the directory's offered profiles (draft-ietf-acme-profiles):
// name to description, empty when the CA offers none. It implements
// ProfileOfferer.
func (a *ACMEIssuer) Profiles(ctx context.Context) (map[string]string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.cfg.DirectoryURL, nil)
	if err != nil {
		return nil, err
	}
	hc, _ := a.httpClient(ctx)
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("certs: acme directory: %w", err)
	}
	defer resp.Body.Close()
	// Only a directory says which profiles are offered. A CA that is down
	// or rate-limits answers an error, often a JSON problem document,
	// which would decode as a directory offering none: the profile would
	// be refused as not offered (and a certificate's renewal blocked) for
	// a CA's passing outage.
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("certs: acme directory %s answered %s", a.cfg.DirectoryURL, resp.Status)
	}
	var dir acme.Directory
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxDirectorySize)).Decode(&dir); err != nil {
		return nil, fmt.Errorf("certs: acme directory: %w", err)
	}
	if dir.NewOrderURL == "" {
		return nil, fmt.Errorf("certs: acme directory %s has no newOrder URL: not a directory", a.cfg.DirectoryURL)
	}
	return dir.Meta.Profiles, nil
}

func (a *ACMEIssuer) setChallenges(ctx context.Context, r *ctxResolver) error {
	for _, ch := range a.cfg.Challenges {
		switch ch {
		case ChallengeHTTP01:
			r.setHTTP01(&presenter{ctx: ctx, store: a.challenges, typ: ChallengeHTTP01, ttl: a.cfg.ChallengeTTL, wait: a.cfg.PresentTimeout, now: a.cfg.Now})
		case ChallengeTLSALPN01:
			r.setTLSALPN01(&presenter{ctx: ctx, store: a.challenges, typ: ChallengeTLSALPN01, ttl: a.cfg.ChallengeTTL, wait: a.cfg.PresentTimeout, now: a.cfg.Now})
		case ChallengeDNS01:
			r.setDNS01(a.cfg.DNS01Provider, a.dns)
		default:
			return fmt.Errorf("certs: acme challenge %q: want http-01, tls-alpn-01 or dns-01", ch)
		}
	}
	return nil
}

// RenewalInfo asks the CA for leaf's suggested renewal window (ARI).
func (a *ACMEIssuer) RenewalInfo(ctx context.Context, leaf *x509.Certificate) (RenewalWindow, error) {
	c, _, err := a.client(ctx)
	if err != nil {
		return RenewalWindow{}, err
	}
	info, err := c.Certificate.GetRenewalInfo(certificate.RenewalInfoRequest{Cert: leaf})
	if err != nil {
		if errors.Is(err, api.ErrNoARI) {
			return RenewalWindow{}, fmt.Errorf("%w: %w", ErrNoRenewalInfo, err)
		}
		return RenewalWindow{}, fmt.Errorf("certs: acme renewal info: %w", err)
	}
	return RenewalWindow{Start: info.SuggestedWindow.Start.UTC(), End: info.SuggestedWindow.End.UTC(),
		RetryAfter: info.RetryAfter, ExplanationURL: info.ExplanationURL}, nil
}

// ReplacesID is RFC 9773's certificate identifier.
func (a *ACMEIssuer) ReplacesID(leaf *x509.Certificate) (string, error) {
	return certificate.MakeARICertID(leaf)
}
