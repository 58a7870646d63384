package certs

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/go-acme/lego/v4/acme"
	legolog "github.com/go-acme/lego/v4/log"
)

// badNonceError is the CA's refusal of a request's nonce (RFC 8555 §6.5,
// badNonce): the request was not processed, and the same request with a
// fresh nonce may be sent again.
//
// Why the transport hands it back as an error: lego retries a badNonce
// itself, with a backoff whose waits (200 ms growing to 5 s, for 20 s)
// see no context, so a cancelled order or a shutdown waited them out.
// An error from the transport is one lego does not retry; the calls into
// lego are retried on the order's context instead (retryNonce).
type badNonceError struct {
	problem acme.ProblemDetails
}

func (e *badNonceError) Error() string {
	return fmt.Sprintf("the CA refused the request's nonce: %s", e.problem.Error())
}

// Unwrap gives the CA's problem: once the retries are spent, the caller
// sees it as lego's own NonceError would have shown it.
func (e *badNonceError) Unwrap() error { return &e.problem }

// Nonce retry bounds, as lego's (acme/api.Core.retrievablePost).
const (
	nonceRetryFirst   = 200 * time.Millisecond
	nonceRetryMax     = 5 * time.Second
	nonceRetryElapsed = 20 * time.Second
)

// retryNonce calls op, again while the CA refuses the nonce of its
// request, with lego's backoff, waiting on ctx: when ctx ends, it returns
// at once with an error wrapping the context's cause.
func retryNonce[T any](ctx context.Context, op func() (T, error)) (T, error) {
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval, bo.MaxInterval = nonceRetryFirst, nonceRetryMax
	v, err := backoff.Retry(ctx, func() (T, error) {
		v, err := op()
		var bn *badNonceError
		if err != nil && !errors.As(err, &bn) {
			return v, backoff.Permanent(err)
		}
		return v, err
	}, backoff.WithBackOff(bo), backoff.WithMaxElapsedTime(nonceRetryElapsed),
		backoff.WithNotify(func(err error, _ time.Duration) { legolog.Infof("retry due to: %v", err) }))
	if err != nil && ctx.Err() != nil && err == context.Cause(ctx) { //nolint:errorlint // backoff returns the bare cause
		// The wait for the next try ended with the context.
		return v, fmt.Errorf("waiting to send again a request the CA refused for its nonce: %w", err)
	}
	return v, err
}

// retryNonceErr is retryNonce for an op with no value.
func retryNonceErr(ctx context.Context, op func() error) error {
	_, err := retryNonce(ctx, func() (struct{}, error) { return struct{}{}, op() })
	return err
}
