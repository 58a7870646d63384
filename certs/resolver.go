package certs

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/go-acme/lego/v4/acme"
	"github.com/go-acme/lego/v4/acme/api"
	"github.com/go-acme/lego/v4/challenge"
	"github.com/go-acme/lego/v4/challenge/http01"
	"github.com/go-acme/lego/v4/challenge/tlsalpn01"
	legolog "github.com/go-acme/lego/v4/log"
)

// ctxResolver solves an order's authorizations the way lego's own
// resolver does (one solver per authorization, tls-alpn-01 before
// http-01 before dns-01 among those the CA offers and we answer; DNS-01
// records presented together so they propagate together, or one after
// another for providers that ask for it), with one difference: every
// wait is bounded by the order's context.
//
// Why not lego's: its poll of a pending authorization sleeps without a
// context, up to ten times the CA's Retry-After per sleep and a hundred
// times in all. An order abandoned at OrderTimeout therefore left its
// goroutine (and the lego client, the certificate's fresh key, the
// presented token) behind until the sleep ended and the next request
// failed on the cancelled context; with a CA that sends a long
// Retry-After, for hours, and one more per abandoned order. lego lets a
// solver be built with any validation function (http01, tlsalpn01 and
// dns01.NewChallenge), but its resolver hard-wires its own, hence this
// one. The order's other waits end with the context too: the
// finalization poll (orderer) and the DNS-01 propagation wait with its
// DNS queries (dns01Solver).
type ctxResolver struct {
	ctx     context.Context
	core    *api.Core
	solvers map[challenge.Type]solver
}

type solver interface {
	Solve(authz acme.Authorization) error
}

type preSolver interface {
	PreSolve(authz acme.Authorization) error
}

type cleaner interface {
	CleanUp(authz acme.Authorization) error
}

type sequentialSolver interface {
	Sequential() (bool, time.Duration)
}

func newCtxResolver(ctx context.Context, core *api.Core) *ctxResolver {
	return &ctxResolver{ctx: ctx, core: core, solvers: map[challenge.Type]solver{}}
}

func (r *ctxResolver) setHTTP01(p challenge.Provider) {
	r.solvers[challenge.HTTP01] = http01.NewChallenge(r.core, r.validate, p)
}

func (r *ctxResolver) setTLSALPN01(p challenge.Provider) {
	r.solvers[challenge.TLSALPN01] = tlsalpn01.NewChallenge(r.core, r.validate, p)
}

// setDNS01 answers dns-01 with p, checking propagation with check; every
// wait of it, DNS queries included, ends with the order's context
// (dns01Solver).
func (r *ctxResolver) setDNS01(p challenge.Provider, check dnsChecker) {
	r.solvers[challenge.DNS01] = &dns01Solver{ctx: r.ctx, core: r.core, validate: r.validate, provider: p, check: check}
}

// choose returns the solver for authz: the first of its challenges, in
// descending type order (lego's deterministic choice), that we answer.
func (r *ctxResolver) choose(authz acme.Authorization) solver {
	chs := append([]acme.Challenge(nil), authz.Challenges...)
	sort.SliceStable(chs, func(i, j int) bool { return chs[i].Type > chs[j].Type })
	domain := challenge.GetTargetedDomain(authz)
	for _, ch := range chs {
		if s, ok := r.solvers[challenge.Type(ch.Type)]; ok {
			legolog.Infof("[%s] acme: use %s solver", domain, ch.Type)
			return s
		}
	}
	return nil
}

type chosen struct {
	authz  acme.Authorization
	solver solver
}

// Solve implements lego's certificate resolver: it returns the errors of
// the authorizations that failed, joined (errors.As finds the CA's
// problems in them).
func (r *ctxResolver) Solve(authzs []acme.Authorization) error {
	failures := map[string]error{}
	var together, oneByOne []chosen
	for _, authz := range authzs {
		domain := challenge.GetTargetedDomain(authz)
		if authz.Status == acme.StatusValid {
			continue // a recently validated authorization the CA reused
		}
		s := r.choose(authz)
		if s == nil {
			failures[domain] = fmt.Errorf("[%s] acme: none of the offered challenges is answered here", domain)
			continue
		}
		if seq, ok := s.(sequentialSolver); ok {
			if yes, _ := seq.Sequential(); yes {
				oneByOne = append(oneByOne, chosen{authz, s})
				continue
			}
		}
		together = append(together, chosen{authz, s})
	}
	r.solveTogether(together, failures)
	r.solveOneByOne(oneByOne, failures)
	if len(failures) == 0 {
		return nil
	}
	domains := make([]string, 0, len(failures))
	for d := range failures {
		domains = append(domains, d)
	}
	sort.Strings(domains)
	errs := make([]error, 0, len(domains))
	for _, d := range domains {
		errs = append(errs, fmt.Errorf("[%s] %w", d, failures[d]))
	}
	return errors.Join(errs...)
}

// dnsKey identifies a DNS-01 record: some CAs give two authorizations
// (a name and its wildcard) the same token, and a provider that keeps
// one TXT value per name must be asked once.
func dnsKey(authz acme.Authorization) (string, bool) {
	ch, err := challenge.FindChallenge(challenge.DNS01, authz)
	if err != nil || ch.Token == "" {
		return "", false
	}
	return authz.Identifier.Value + " " + ch.Token, true
}

// solveTogether presents every pre-solvable (DNS-01) record first, so
// they propagate together, then validates each, then cleans up.
func (r *ctxResolver) solveTogether(cs []chosen, failures map[string]error) {
	presented := map[string]bool{}
	var clean []chosen
	for _, c := range cs {
		if k, ok := dnsKey(c.authz); ok {
			if presented[k] {
				continue
			}
			presented[k] = true
		}
		clean = append(clean, c)
		if ps, ok := c.solver.(preSolver); ok && r.ctx.Err() == nil {
			if err := ps.PreSolve(c.authz); err != nil {
				failures[challenge.GetTargetedDomain(c.authz)] = err
			}
		}
	}
	defer func() {
		for _, c := range clean {
			cleanUp(c)
		}
	}()
	for _, c := range cs {
		domain := challenge.GetTargetedDomain(c.authz)
		if failures[domain] != nil {
			continue
		}
		if err := r.ctx.Err(); err != nil {
			failures[domain] = context.Cause(r.ctx)
			continue
		}
		if err := c.solver.Solve(c.authz); err != nil {
			failures[domain] = err
		}
	}
}

// solveOneByOne solves each authorization in turn, waiting the
// provider's interval between them.
func (r *ctxResolver) solveOneByOne(cs []chosen, failures map[string]error) {
	for i, c := range cs {
		domain := challenge.GetTargetedDomain(c.authz)
		if r.ctx.Err() != nil {
			failures[domain] = context.Cause(r.ctx)
			continue
		}
		if ps, ok := c.solver.(preSolver); ok {
			if err := ps.PreSolve(c.authz); err != nil {
				failures[domain] = err
				cleanUp(c)
				continue
			}
		}
		err := c.solver.Solve(c.authz)
		cleanUp(c)
		if err != nil {
			failures[domain] = err
			continue
		}
		if i < len(cs)-1 {
			_, interval := c.solver.(sequentialSolver).Sequential()
			if err := sleepCtx(r.ctx, interval); err != nil {
				continue // the next iteration records the cause
			}
		}
	}
}

func cleanUp(c chosen) {
	if cl, ok := c.solver.(cleaner); ok {
		if err := cl.CleanUp(c.authz); err != nil {
			legolog.Warnf("[%s] acme: cleaning up failed: %v", challenge.GetTargetedDomain(c.authz), err)
		}
	}
}

// defaultChallengeRetryAfter is the poll interval when the CA sends no
// Retry-After with a challenge (Boulder sends none), as lego's.
const defaultChallengeRetryAfter = 5 * time.Second

// validate tells the CA to validate chlg and polls its authorization
// until it is valid or invalid: the CA's Retry-After at first, growing
// by half up to ten times it, as lego's poll does, for at most a hundred
// times it, and never past the order's context.
func (r *ctxResolver) validate(core *api.Core, domain string, chlg acme.Challenge) error {
	accepted, err := retryNonce(r.ctx, func() (acme.ExtendedChallenge, error) { return core.Challenges.New(chlg.URL) })
	if err != nil {
		return fmt.Errorf("failed to initiate challenge: %w", err)
	}
	switch accepted.Status {
	case acme.StatusValid:
		return nil
	case acme.StatusPending, acme.StatusProcessing:
	case acme.StatusInvalid:
		return fmt.Errorf("invalid challenge: %w", accepted.Err())
	default:
		return fmt.Errorf("the server returned an unexpected challenge status: %s", accepted.Status)
	}
	retryAfter, err := api.ParseRetryAfter(accepted.RetryAfter)
	if err != nil || retryAfter <= 0 {
		retryAfter = defaultChallengeRetryAfter
	}
	deadline := time.Now().Add(100 * retryAfter)
	wait := retryAfter
	for {
		authz, err := retryNonce(r.ctx, func() (acme.Authorization, error) { return core.Authorizations.Get(accepted.AuthorizationURL) })
		if err != nil {
			return err
		}
		switch authz.Status {
		case acme.StatusValid:
			legolog.Infof("[%s] The server validated our request", domain)
			return nil
		case acme.StatusPending, acme.StatusProcessing:
		case acme.StatusInvalid:
			for _, ch := range authz.Challenges {
				if ch.Status == acme.StatusInvalid && ch.Error != nil {
					return fmt.Errorf("invalid authorization: %w", ch.Err())
				}
			}
			return errors.New("invalid authorization")
		default:
			return fmt.Errorf("the authorization state %s", authz.Status)
		}
		if time.Now().Add(wait).After(deadline) {
			return fmt.Errorf("the server didn't respond to our request (status=%s)", authz.Status)
		}
		if err := sleepCtx(r.ctx, wait); err != nil {
			return err
		}
		wait = min(wait*3/2, 10*retryAfter)
	}
}

// sleepCtx waits d or until ctx ends (then its cause).
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}
