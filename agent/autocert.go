package agent

import (
	"context"
	"errors"
	"strings"
	"time"

	"go.uber.org/zap"
	"golang.org/x/net/publicsuffix"

	"github.com/singularity-ng/singularity-edge/certs"
	"github.com/singularity-ng/singularity-edge/pools"
	"github.com/singularity-ng/singularity-edge/storage"
)

// autoCertInterval is how often the agent looks for TLS pools whose
// ssl_domain no certificate covers, besides a pass after each change to
// the pools table. A pass reads the pools table (at most a few thousand
// rows) and looks names up in the in-memory SNI index.
const autoCertInterval = time.Minute

// autoCert obtains ACME certificates for TLS-terminating pools whose
// ssl_domain has none (unless the pool opts out with auto_cert: false).
// Each name is ordered by its certificate's owner only; a name whose
// first order failed or was held back waits for its next attempt time.
type autoCert struct {
	store   *storage.Store
	cache   *certs.Cache
	acme    *certs.Manager
	members certs.Members
	// wildcard: a DNS-01 provider is configured (a wildcard name can
	// only be validated over DNS).
	wildcard bool
	// publicOnly skips names outside the ICANN public suffixes (.test,
	// .internal, .localhost): Let's Encrypt refuses them by policy, and
	// each refused order would count against the account's limits.
	publicOnly bool
	log        *zap.Logger
	now        func() time.Time
	// ready is closed when the SNI index is loaded: before that every
	// name looks uncovered.
	ready <-chan struct{}
}

// wantedNames lists the ssl_domain of every pool that should get a
// certificate on its own.
func (a *autoCert) wantedNames(ctx context.Context) ([]string, error) {
	var out []string
	after := ""
	for {
		page, err := a.store.ListPools(ctx, after, 500)
		if err != nil {
			return nil, err
		}
		for _, p := range page {
			switch p.SSLMode {
			case pools.SSLModeFlexible, pools.SSLModeFull, pools.SSLModeFullStrict:
			default:
				continue
			}
			if p.NoAutoCert || p.SSLDomain == "" || p.SSLCertID != "" {
				continue
			}
			if strings.HasPrefix(p.SSLDomain, "*.") && !a.wildcard {
				continue
			}
			if a.publicOnly {
				if _, icann := publicsuffix.PublicSuffix(strings.TrimPrefix(p.SSLDomain, "*.")); !icann {
					continue
				}
			}
			out = append(out, p.SSLDomain)
		}
		if len(page) < 500 {
			return out, nil
		}
		after = page[len(page)-1].Name
	}
}

// covered reports whether a currently valid certificate serves name.
func (a *autoCert) covered(name string) bool {
	c, ok := a.cache.Lookup(name)
	if !ok {
		return false
	}
	return c.Leaf == nil || a.now().Before(c.Leaf.NotAfter)
}

// runOnce orders what is missing and returns how many orders it started.
func (a *autoCert) runOnce(ctx context.Context) (int, error) {
	names, err := a.wantedNames(ctx)
	if err != nil {
		return 0, err
	}
	ordered := 0
	for _, name := range names {
		if a.covered(name) {
			continue
		}
		id := certs.CertificateID([]string{name})
		if certs.Owner(id, a.members.Alive()) != a.members.Self() {
			continue
		}
		if st, err := a.acme.Status(ctx, id); err == nil && st.State.NextAttempt.After(a.now()) {
			continue // failed or held back: wait for the next attempt time
		} else if err != nil && !errors.Is(err, storage.ErrNotFound) {
			return ordered, err
		}
		ordered++
		if _, err := a.acme.Obtain(ctx, []string{name}, ""); err != nil {
			if ctx.Err() != nil {
				return ordered, ctx.Err()
			}
			if !errors.Is(err, certs.ErrLeaseHeld) {
				a.log.Warn("automatic certificate for a pool's ssl_domain failed", zap.String("domain", name), zap.Error(err))
			}
			continue
		}
		a.log.Info("automatic certificate issued for a pool's ssl_domain", zap.String("domain", name), zap.String("certificate", id))
	}
	return ordered, nil
}

// run makes a pass when the pools table changes and every
// autoCertInterval (which also retries names whose next attempt came)
// until ctx ends.
func (a *autoCert) run(ctx context.Context) error {
	select {
	case <-a.ready:
	case <-ctx.Done():
		return nil
	}
	wake := make(chan struct{}, 1)
	go a.watchPools(ctx, wake)
	t := time.NewTicker(autoCertInterval)
	defer t.Stop()
	for {
		if _, err := a.runOnce(ctx); err != nil && ctx.Err() == nil {
			a.log.Warn("automatic certificate pass failed", zap.Error(err))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-wake:
		}
	}
}

// watchPools signals wake after each commit that changes a pool. A
// subscription that ends early (the feed pruned past it) is started again
// from the newest commit; the ticker covers what it missed.
func (a *autoCert) watchPools(ctx context.Context, wake chan<- struct{}) {
	for ctx.Err() == nil {
		sub := a.store.Subscribe(ctx, a.store.LastIndex())
		for ev := range sub.Events() {
			for _, c := range ev.Set.Changes {
				if c.Table == storage.TablePools {
					select {
					case wake <- struct{}{}:
					default:
					}
					break
				}
			}
		}
		if err := sub.Err(); err != nil && ctx.Err() == nil {
			if errors.Is(err, storage.ErrClosed) {
				return
			}
			a.log.Info("pool watch restarted", zap.Error(err))
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
}
