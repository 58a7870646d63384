package pools

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"strconv"

	"github.com/singularity-ng/singularity-edge/storage"
)

// BackendTLS is how the agent speaks TLS to one backend: whether the leg
// uses TLS at all, whether and against which roots the certificate is
// verified, the server name and the client certificate. The proxy's
// requests and the active health checks build their tls.Config from the
// same BackendTLS, so a backend that requests would reject (an
// unverifiable certificate in full_strict mode) fails its health check too.
type BackendTLS struct {
	// Enabled: the backend leg is TLS (pool mode full or full_strict, or
	// the backend's scheme is https, whatever the pool's mode).
	Enabled bool
	// Verify: the certificate chain and name are checked (full_strict;
	// validate_backend_cert in off, flexible and passthrough pools; the
	// backend's ssl_verify in any pool).
	Verify bool
	// ServerName is sent as SNI and verified: the pool's
	// backend_server_name, else the backend's host. Empty for a plain
	// leg whose checks speak no TLS either (nothing sends it).
	ServerName string
	// ClientCertID names the certificate presented when a backend asks
	// for one; empty for none.
	ClientCertID string

	roots       *x509.CertPool // nil = the system roots
	clientCerts ClientCertificateSource
	key         string
}

// ClientCertificateSource finds a certificate (with its private key) by id
// in the certificates table; certs.Cache.ByID satisfies it.
type ClientCertificateSource func(id string) (*tls.Certificate, bool)

// ErrClientCertificateMissing: the pool names a client certificate this
// agent does not have (not uploaded, or not replicated yet).
var ErrClientCertificateMissing = errors.New("backend client certificate not found")

// Key identifies the settings: connections (and health checkers) built
// from BackendTLS values with equal keys are interchangeable.
func (t *BackendTLS) Key() string { return t.key }

// Config returns a client tls.Config for the backend. nextProtos is the
// ALPN offer; sessions may be nil.
func (t *BackendTLS) Config(nextProtos []string, sessions tls.ClientSessionCache) *tls.Config {
	cfg := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		ServerName:         t.ServerName,
		InsecureSkipVerify: !t.Verify, //nolint:gosec // full mode: encrypted, deliberately not authenticated
		RootCAs:            t.roots,
		NextProtos:         nextProtos,
		ClientSessionCache: sessions,
	}
	if id := t.ClientCertID; id != "" {
		src := t.clientCerts
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if src != nil {
				if c, ok := src(id); ok && c != nil {
					return c, nil
				}
			}
			return nil, fmt.Errorf("%w: %s", ErrClientCertificateMissing, id)
		}
	}
	return cfg
}

// setBackendTLS gives every backend of p its TLS settings. A pool's CA
// bundle replaces the agent-wide roots for its backends; one that does not
// parse (validation refuses it, so only hand-built input) verifies nothing.
func (p *Pool) setBackendTLS(sp *storage.Pool, opts TableOptions) {
	pt := &poolTLS{roots: opts.BackendRootCAs, rootsID: "agent", clientCerts: opts.ClientCertificates}
	if sp.BackendCA != "" {
		pt.rootsID = caBundleID(sp.BackendCA)
		var err error
		if pt.roots, err = ParseCABundle(sp.BackendCA); err != nil {
			pt.roots = x509.NewCertPool()
		}
	}
	p.BackendServerName = sp.BackendServerName
	p.BackendClientCertID = sp.BackendClientCertID
	p.tlsBase = pt
	for _, b := range p.backends {
		p.assignTLS(b)
	}
}

// poolTLS is what a pool's backends derive their TLS settings from, kept
// with the pool so that a patch (patchPool) gives new backends the same
// settings without parsing the CA bundle again.
type poolTLS struct {
	roots       *x509.CertPool
	rootsID     string
	clientCerts ClientCertificateSource
	// A plain leg whose health checks speak no TLS either never uses its
	// settings: the pool's plain backends share one value (two: by
	// ssl_verify), where a value per backend would cost a million
	// allocations and a million distinct probe keys.
	plain [2]*BackendTLS
}

// assignTLS gives b, a backend being built into p, its TLS settings.
func (p *Pool) assignTLS(b *Backend) {
	pt := p.tlsBase
	if tlsLeg(p, b) || p.health.Type == HealthCheckHTTPS {
		b.tls = newBackendTLS(p, b, pt.roots, pt.rootsID, pt.clientCerts)
		return
	}
	i := 0
	if verifies(p, b) {
		i = 1
	}
	if pt.plain[i] == nil {
		t := newBackendTLS(p, b, pt.roots, pt.rootsID, pt.clientCerts)
		t.ServerName, t.key = "", plainTLSKey
		pt.plain[i] = t
	}
	b.tls = pt.plain[i]
}

// plainTLSKey is the Key of the settings of a plain leg that is checked
// without TLS: backends at one address share a probe whatever their
// pools' TLS settings, since none of them is used.
const plainTLSKey = "plain"

// TLS returns how the agent speaks TLS to b.
func (b *Backend) TLS() *BackendTLS {
	if b.tls == nil {
		return &BackendTLS{Enabled: b.Scheme == "https", Verify: b.SSLVerify, ServerName: b.Host, key: "default|" + b.Scheme + "|" + strconv.FormatBool(b.SSLVerify) + "|" + b.Host}
	}
	return b.tls
}

// newBackendTLS derives a backend's TLS settings from its pool. roots is
// the pool's CA bundle when it has one, else the agent-wide roots.
func newBackendTLS(p *Pool, b *Backend, roots *x509.CertPool, rootsID string, clientCerts ClientCertificateSource) *BackendTLS {
	t := &BackendTLS{
		Enabled:      tlsLeg(p, b),
		Verify:       verifies(p, b),
		ServerName:   b.Host,
		ClientCertID: p.BackendClientCertID,
		roots:        roots,
		clientCerts:  clientCerts,
	}
	if p.BackendServerName != "" {
		t.ServerName = p.BackendServerName
	}
	t.key = strconv.FormatBool(t.Enabled) + "|" + strconv.FormatBool(t.Verify) + "|" + t.ServerName + "|" + t.ClientCertID + "|" + rootsID
	return t
}

// tlsLeg reports whether the agent speaks TLS to b. An https:// backend
// gets TLS in every mode: the scheme is what the operator wrote for that
// backend, and off and flexible describe the client's side.
func tlsLeg(p *Pool, b *Backend) bool {
	return p.SSLMode == SSLModeFull || p.SSLMode == SSLModeFullStrict || b.Scheme == "https"
}

// verifies reports whether b's certificate is verified: as the pool's mode
// and validate_backend_cert say (VerifiesBackendCerts), or because the
// backend itself asks with ssl_verify.
func verifies(p *Pool, b *Backend) bool {
	return VerifiesBackendCerts(p.SSLMode, p.ValidateBackendCert) || b.SSLVerify
}

// ParseCABundle parses a PEM bundle of CA certificates; it fails when the
// bundle holds no certificate or a block that is not one.
func ParseCABundle(pemBundle string) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	rest := []byte(pemBundle)
	n := 0
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("CA bundle: a %q block, want CERTIFICATE", block.Type)
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("CA bundle: certificate %d: %w", n+1, err)
		}
		pool.AddCert(cert)
		n++
	}
	if n == 0 {
		return nil, errors.New("CA bundle: no PEM certificate found")
	}
	return pool, nil
}

// caBundleID names a CA bundle in BackendTLS keys.
func caBundleID(pemBundle string) string {
	sum := sha256.Sum256([]byte(pemBundle))
	return hex.EncodeToString(sum[:8])
}
