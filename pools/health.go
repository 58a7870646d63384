package pools

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
)

// maxHealthBody is how much of a health-check response body is read (and
// discarded) so the server sees a complete exchange.
const maxHealthBody = 4 << 10

// checkerKey is everything a running checker depends on; a checker whose
// key changed is replaced.
type checkerKey struct {
	addr      string
	host      string
	sslVerify bool
	tlsKey    string // BackendTLS.Key: the same TLS settings as requests
	hc        healthConfig
}

func newCheckerKey(b *Backend, hc healthConfig) checkerKey {
	return checkerKey{addr: b.Addr, host: b.Host, sslVerify: b.SSLVerify, tlsKey: b.TLS().Key(), hc: hc}
}

// checker actively checks one backend: a TCP connect or an HTTP(S) GET
// every interval, with rise/fall thresholds. It writes the verdict into the
// backend's live state, where Pick sees it at once.
type checker struct {
	pool   string
	id     string
	key    checkerKey
	state  *backendState
	dialer net.Dialer
	client *http.Client // nil for tcp
	url    string
	// tls is the configuration requests use for this backend, nil when
	// its leg is plain: a TCP check then completes a TLS handshake too,
	// and HTTP checks go over TLS, so what requests would reject (an
	// unverifiable certificate in full_strict mode) fails the check.
	tls *tls.Config
}

func newChecker(pool string, b *Backend, hc healthConfig) *checker {
	c := &checker{
		pool:  pool,
		id:    b.ID,
		key:   newCheckerKey(b, hc),
		state: b.live,
		// A probe's connection lives for one check: TCP keep-alive
		// would only cost four setsockopt calls per check.
		dialer: net.Dialer{Timeout: hc.Timeout, KeepAlive: -1},
	}
	bt := b.TLS()
	if bt.Enabled {
		c.tls = bt.Config([]string{"http/1.1"}, nil)
	}
	if hc.Type == HealthCheckHTTP || hc.Type == HealthCheckHTTPS {
		scheme := hc.Type
		if c.tls != nil {
			scheme = HealthCheckHTTPS
		}
		c.url = scheme + "://" + b.Addr + hc.Path
		transport := &http.Transport{
			// Never through an environment proxy: the check is about this
			// backend, from this node.
			Proxy:       nil,
			DialContext: c.dialer.DialContext,
			// A fresh connection per check: a pooled connection could hide a
			// listener that no longer accepts.
			DisableKeepAlives:      true,
			TLSHandshakeTimeout:    hc.Timeout,
			ResponseHeaderTimeout:  hc.Timeout,
			MaxResponseHeaderBytes: 64 << 10,
		}
		if scheme == HealthCheckHTTPS {
			transport.TLSClientConfig = c.tls
			if transport.TLSClientConfig == nil {
				transport.TLSClientConfig = bt.Config([]string{"http/1.1"}, nil)
			}
		}
		c.client = &http.Client{
			Transport: transport,
			Timeout:   hc.Timeout,
			// A redirect is an answer: 3xx passes unless a status is expected.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	return c
}

// check performs one probe and returns nil when it passes.
func (c *checker) check(ctx context.Context) error {
	hc := c.key.hc
	ctx, cancel := context.WithTimeout(ctx, hc.Timeout)
	defer cancel()
	if c.client == nil {
		conn, err := c.dialer.DialContext(ctx, "tcp", c.key.addr)
		if err != nil {
			return err
		}
		if c.tls != nil {
			tc := tls.Client(conn, c.tls)
			err := tc.HandshakeContext(ctx)
			_ = tc.Close()
			if err != nil {
				return fmt.Errorf("TLS handshake as requests do it: %w", err)
			}
			return nil
		}
		return conn.Close()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.url, nil)
	if err != nil {
		return err
	}
	if hc.Host != "" {
		req.Host = hc.Host
	}
	req.Header.Set("User-Agent", "singularity-edge-health-check/1")
	resp, err := c.client.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxHealthBody))
	_ = resp.Body.Close()
	// The Host is named in the error: it is derived from the pool
	// (healthHost), and a backend that answers 404 or 421 to it tells the
	// operator which name it does not serve.
	if hc.ExpectedStatus != 0 {
		if resp.StatusCode != hc.ExpectedStatus {
			return fmt.Errorf("status %d for Host %s, expected %d", resp.StatusCode, req.Host, hc.ExpectedStatus)
		}
		return nil
	}
	if resp.StatusCode < 200 || resp.StatusCode > 399 {
		return fmt.Errorf("status %d for Host %s, expected 2xx or 3xx", resp.StatusCode, req.Host)
	}
	return nil
}
