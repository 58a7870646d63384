package certs

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/go-acme/lego/v4/acme"
	"github.com/go-acme/lego/v4/acme/api"
	"github.com/go-acme/lego/v4/certcrypto"
	"github.com/go-acme/lego/v4/certificate"
	legolog "github.com/go-acme/lego/v4/log"
)

// orderer places one order and follows it to a certificate, the way
// lego's Certifier.Obtain does (new order, authorizations solved by
// ctxResolver, a CSR for a fresh key, finalization), with every wait
// bounded by the order's context.
//
// Why not lego's: after finalizing, Certifier polls the order every
// Timeout/60 for Timeout without a context (platform/wait.For, which
// also polls on through errors), so an order abandoned while the CA was
// still processing it left its goroutine polling, each request failing
// on the cancelled context, until Timeout; an order the CA declared
// invalid was polled until Timeout too. Certifier exports no step
// between finalizing and that poll, hence this flow over lego's api
// client and CSR helper.
type orderer struct {
	ctx      context.Context
	core     *api.Core
	resolver *ctxResolver
	keyType  certcrypto.KeyType
	// timeout bounds the wait for the CA to issue after finalization
	// (Certifier's Timeout).
	timeout time.Duration
}

// authzRequestGap spaces the requests for an order's authorizations as
// lego does (certificate.DefaultOverallRequestLimit per second).
const authzRequestGap = time.Second / certificate.DefaultOverallRequestLimit

// obtain orders a certificate for names (validated, ASCII) and returns it
// with its fresh key, the leaf alone in Certificate and the rest of the
// chain in IssuerCertificate.
func (o *orderer) obtain(names []string, opts api.OrderOptions) (*certificate.Resource, error) {
	if len(names) == 0 {
		return nil, errors.New("no names to order a certificate for")
	}
	legolog.Infof("[%s] acme: Obtaining SAN certificate", strings.Join(names, ", "))
	order, err := retryNonce(o.ctx, func() (acme.ExtendedOrder, error) { return o.core.Orders.NewWithOptions(names, &opts) })
	if err != nil {
		return nil, err
	}
	authzs, err := o.authorizations(order)
	if err == nil {
		err = o.resolver.Solve(authzs)
	}
	if err != nil {
		o.deactivate(order)
		return nil, err
	}
	legolog.Infof("[%s] acme: Validations succeeded; requesting certificates", strings.Join(names, ", "))
	return o.finalize(names, order)
}

func (o *orderer) authorizations(order acme.ExtendedOrder) ([]acme.Authorization, error) {
	out := make([]acme.Authorization, 0, len(order.Authorizations))
	for i, u := range order.Authorizations {
		if i > 0 {
			if err := sleepCtx(o.ctx, authzRequestGap); err != nil {
				return nil, err
			}
		}
		authz, err := retryNonce(o.ctx, func() (acme.Authorization, error) { return o.core.Authorizations.Get(u) })
		if err != nil {
			return nil, fmt.Errorf("authorization %s: %w", u, err)
		}
		out = append(out, authz)
	}
	return out, nil
}

// deactivate gives up the order's authorizations that are not valid, as
// lego does after a failed validation; with the context ended there is
// nothing to ask.
func (o *orderer) deactivate(order acme.ExtendedOrder) {
	for _, u := range order.Authorizations {
		if o.ctx.Err() != nil {
			return
		}
		authz, err := retryNonce(o.ctx, func() (acme.Authorization, error) { return o.core.Authorizations.Get(u) })
		if err != nil || authz.Status == acme.StatusValid {
			continue
		}
		if err := retryNonceErr(o.ctx, func() error { return o.core.Authorizations.Deactivate(u) }); err != nil {
			legolog.Infof("Unable to deactivate the authorization %s: %v", u, err)
		}
	}
}

// finalize sends the CSR of a fresh key and waits for the certificate:
// every timeout/60 while the CA processes the order (lego's cadence), at
// most timeout in all, and never past the order's context.
func (o *orderer) finalize(names []string, order acme.ExtendedOrder) (*certificate.Resource, error) {
	key, err := certcrypto.GeneratePrivateKey(o.keyType)
	if err != nil {
		return nil, err
	}
	// The first name is the subject's common name when it fits (64
	// characters), and every identifier of the order is a SAN.
	var cn string
	if len(names[0]) <= 64 {
		cn = names[0]
	}
	var san []string
	if cn != "" {
		san = append(san, cn)
	}
	for _, id := range order.Identifiers {
		if id.Value != cn {
			san = append(san, id.Value)
		}
	}
	csr, err := certcrypto.CreateCSR(key, certcrypto.CSROptions{Domain: cn, SAN: san})
	if err != nil {
		return nil, err
	}
	cur, err := retryNonce(o.ctx, func() (acme.ExtendedOrder, error) { return o.core.Orders.UpdateForCSR(order.Finalize, csr) })
	if err != nil {
		return nil, err
	}
	timeout := o.timeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	interval := timeout / 60
	deadline := time.Now().Add(timeout)
	var lastErr error
	for {
		switch cur.Status {
		case acme.StatusValid:
			var cert, chain []byte
			err := retryNonceErr(o.ctx, func() (err error) {
				cert, chain, err = o.core.Certificates.Get(cur.Certificate, false)
				return err
			})
			if err != nil {
				return nil, err
			}
			legolog.Infof("[%s] Server responded with a certificate.", names[0])
			return &certificate.Resource{Domain: names[0], CertURL: cur.Certificate, CertStableURL: cur.Certificate,
				PrivateKey: certcrypto.PEMEncode(key), Certificate: cert, IssuerCertificate: chain}, nil
		case acme.StatusInvalid:
			return nil, fmt.Errorf("invalid order: %w", cur.Err())
		}
		if err := sleepCtx(o.ctx, interval); err != nil {
			return nil, err
		}
		if !time.Now().Before(deadline) {
			if lastErr != nil {
				return nil, fmt.Errorf("certificate: the CA did not issue within %s (order %s): last error: %w", timeout, cur.Status, lastErr)
			}
			return nil, fmt.Errorf("certificate: the CA did not issue within %s (order %s)", timeout, cur.Status)
		}
		next, err := retryNonce(o.ctx, func() (acme.ExtendedOrder, error) { return o.core.Orders.Get(order.Location) })
		switch {
		case o.ctx.Err() != nil:
			return nil, context.Cause(o.ctx)
		case err != nil:
			// A failed poll is tried again, as lego does: the order
			// is the CA's, and one error says nothing about it.
			lastErr = err
		default:
			cur = next
		}
	}
}
