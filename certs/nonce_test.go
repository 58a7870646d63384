package certs

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// memAccounts is an AccountStore in memory.
type memAccounts struct {
	mu   sync.Mutex
	acct *Account
}

func (m *memAccounts) LoadAccount(_ context.Context, directory string) (Account, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.acct == nil {
		return Account{}, fmt.Errorf("%w: %s", ErrNoAccount, directory)
	}
	return *m.acct, nil
}

func (m *memAccounts) SaveAccount(_ context.Context, a Account) (Account, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.acct == nil {
		m.acct = &a
	}
	return *m.acct, nil
}

func (m *memAccounts) DropAccount(context.Context, string, string) error { return nil }

// nonceRefusingCA is an ACME server in memory (an http.RoundTripper, so
// that it runs inside a synctest bubble) that answers every POST to
// refuse with badNonce and calls refused with the count so far. Like a
// network, it fails a request whose context has ended.
type nonceRefusingCA struct {
	refuse  string
	refused func(n int)
	mu      sync.Mutex
	n       int
}

func (ca *nonceRefusingCA) RoundTrip(r *http.Request) (*http.Response, error) {
	if err := r.Context().Err(); err != nil {
		return nil, err
	}
	const u = "https://ca.test"
	resp := &http.Response{StatusCode: http.StatusOK, Header: http.Header{}, Request: r}
	resp.Header.Set("Replay-Nonce", fmt.Sprintf("nonce-%d", time.Now().UnixNano()))
	resp.Header.Set("Content-Type", "application/json")
	var body any
	switch {
	case r.URL.Path == "/dir":
		body = map[string]any{"newNonce": u + "/nonce", "newAccount": u + "/account", "newOrder": u + "/order",
			"revokeCert": u + "/revoke", "keyChange": u + "/key-change"}
	case r.URL.Path == "/nonce":
	case r.Method == http.MethodPost && r.URL.Path == ca.refuse:
		resp.StatusCode = http.StatusBadRequest
		resp.Header.Set("Content-Type", "application/problem+json")
		body = map[string]any{"type": "urn:ietf:params:acme:error:badNonce", "detail": "JWS has an invalid anti-replay nonce", "status": 400}
		ca.mu.Lock()
		ca.n++
		n := ca.n
		ca.mu.Unlock()
		defer ca.refused(n)
	default:
		resp.StatusCode = http.StatusNotFound
		body = map[string]any{"type": "urn:ietf:params:acme:error:malformed", "detail": "not here", "status": 404}
	}
	var buf bytes.Buffer
	if body != nil {
		_ = json.NewEncoder(&buf).Encode(body)
	}
	resp.Body = io.NopCloser(&buf)
	return resp, nil
}

// An order cancelled while it waits to send again a request the CA
// refused for its nonce (badNonce) returns at once with the context's
// error. lego retries a badNonce itself, with waits of 200 ms growing to
// 5 s that see no context, so a shutdown or a lost lease waited them
// out. The CA lives in a synctest bubble: time there moves only when
// every goroutine waits, so a return without any wait is one at the
// same instant as the cancel. Each case also shows the refused request
// sent again before the cancel.
func TestBadNonceRetryEndsWithContext(t *testing.T) {
	for _, tc := range []struct {
		name string
		// refuse is the path refused; stored says whether an account
		// is stored (without one, the order registers first).
		refuse string
		stored bool
	}{
		{name: "new order", refuse: "/order", stored: true},
		{name: "account registration", refuse: "/account", stored: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				var cancelledAt time.Time
				ca := &nonceRefusingCA{refuse: tc.refuse, refused: func(n int) {
					if n == 2 {
						cancelledAt = time.Now()
						cancel()
					}
				}}
				accounts := &memAccounts{}
				if tc.stored {
					accounts.acct = &Account{Directory: "https://ca.test/dir", URI: "https://ca.test/account/1", KeyPEM: pkcs8PEM(t, newECKey(t))}
				}
				cfg := DefaultACMEConfig()
				cfg.DirectoryURL = "https://ca.test/dir"
				cfg.Challenges, cfg.DNS01Provider = []string{ChallengeDNS01}, slowDNSProvider{}
				// net/http keeps a timer goroutine per request until its
				// body is closed, which lego does not do for a nonce's
				// HEAD: it ends with the client's timeout.
				defer time.Sleep(4 * cfg.HTTPTimeout)
				iss, err := NewACMEIssuer(cfg, accounts, nil)
				if err != nil {
					t.Fatal(err)
				}
				iss.transport = ca
				_, err = iss.Issue(ctx, IssueRequest{Names: []string{"nonce.example.com"}})
				if !errors.Is(err, context.Canceled) {
					t.Fatalf("Issue = %v, want context.Canceled", err)
				}
				if cancelledAt.IsZero() {
					t.Fatalf("the CA refused %d requests, want the refused one sent again", ca.n)
				}
				if waited := time.Since(cancelledAt); waited != 0 {
					t.Fatalf("Issue returned %s after its context ended: it waited to retry", waited)
				}
			})
		})
	}
}
