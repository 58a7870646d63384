package agent

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/singularity-ng/singularity-edge/certs"
	"github.com/singularity-ng/singularity-edge/proxy"
)

// validateACME checks the ACME flags; an empty directory turns ACME off.
func (c *Config) validateACME() error {
	if c.ACMEDirectory == "" {
		if len(c.ACMEFallbackDirectories) > 0 {
			return errors.New("--acme-fallback-directory needs --acme-directory (an empty --acme-directory turns ACME off)")
		}
		return nil
	}
	var errs []error
	if !httpsURL(c.ACMEDirectory) {
		errs = append(errs, fmt.Errorf("--acme-directory %q: want an https:// URL", c.ACMEDirectory))
	}
	seen := map[string]bool{c.ACMEDirectory: true}
	for _, d := range c.ACMEFallbackDirectories {
		switch {
		case !httpsURL(d):
			errs = append(errs, fmt.Errorf("--acme-fallback-directory %q: want an https:// URL", d))
		case d == c.ACMEDirectory:
			errs = append(errs, fmt.Errorf("--acme-fallback-directory %q: the same as --acme-directory", d))
		case seen[d]:
			errs = append(errs, fmt.Errorf("--acme-fallback-directory %q: given twice", d))
		}
		seen[d] = true
	}
	if c.ACMECABundle != "" {
		if _, err := os.Stat(c.ACMECABundle); err != nil {
			errs = append(errs, fmt.Errorf("--acme-ca-bundle: %w", err))
		}
	}
	if (c.ACMEEABKeyID == "") != (c.ACMEEABHMACKey == "") {
		errs = append(errs, errors.New("EDGE_ACME_EAB_KID and EDGE_ACME_EAB_HMAC must be set together"))
	}
	if c.ACMEDNSProvider != "" {
		if _, err := certs.DNSProviderFromEnv(c.ACMEDNSProvider); err != nil {
			errs = append(errs, fmt.Errorf("--acme-dns-provider: %w", err))
		}
	}
	errs = append(errs, c.validateACMEChallenges()...)
	l := c.ACMELimits
	for _, f := range []struct {
		count, window string
		n             int
		d             time.Duration
	}{
		{"--acme-orders-per-account", "--acme-orders-window", l.OrdersPerAccount, l.OrdersWindow},
		{"--acme-certs-per-domain", "--acme-certs-window", l.CertsPerRegisteredDomain, l.CertsWindow},
		{"--acme-duplicate-certs", "--acme-duplicate-window", l.DuplicateCerts, l.DuplicateWindow},
		{"--acme-failed-validations", "--acme-failed-window", l.FailedValidations, l.FailedWindow},
		{"--acme-pause-after-failures", "--acme-pause-window", l.PauseAfterFailures, l.PauseWindow},
	} {
		if f.n < 0 {
			errs = append(errs, fmt.Errorf("%s %d: want 0 (limit off) or more", f.count, f.n))
		}
		if f.d <= 0 {
			errs = append(errs, fmt.Errorf("%s %s: want a positive duration", f.window, f.d))
		}
	}
	if c.ACMELeaseTTL < minACMELeaseTTL {
		errs = append(errs, fmt.Errorf("--acme-lease-ttl %s: want at least %s (the lease is extended every third of it)", c.ACMELeaseTTL, minACMELeaseTTL))
	}
	if c.ACMEPresentTimeout <= 0 {
		errs = append(errs, fmt.Errorf("--acme-present-timeout %s: want a positive duration", c.ACMEPresentTimeout))
	}
	if c.ACMERenewInterval < time.Second {
		errs = append(errs, fmt.Errorf("--acme-renew-interval %s: want at least 1s", c.ACMERenewInterval))
	}
	return errors.Join(errs...)
}

// validateACMEChallenges checks --acme-challenges when it was given: a
// non-empty list of known types, each once, dns-01 only with a provider.
func (c *Config) validateACMEChallenges() []error {
	if c.ACMEChallenges == nil {
		return nil
	}
	if len(c.ACMEChallenges) == 0 {
		return []error{errors.New("--acme-challenges: want at least one of http-01, tls-alpn-01, dns-01")}
	}
	var errs []error
	seen := map[string]bool{}
	for _, ch := range c.ACMEChallenges {
		switch {
		case ch != certs.ChallengeHTTP01 && ch != certs.ChallengeTLSALPN01 && ch != certs.ChallengeDNS01:
			errs = append(errs, fmt.Errorf("--acme-challenges %q: want http-01, tls-alpn-01 or dns-01", ch))
		case seen[ch]:
			errs = append(errs, fmt.Errorf("--acme-challenges %q: given twice", ch))
		case ch == certs.ChallengeDNS01 && c.ACMEDNSProvider == "":
			errs = append(errs, errors.New("--acme-challenges dns-01 needs --acme-dns-provider"))
		}
		seen[ch] = true
	}
	return errs
}

// acmeChallenges is the challenge types the issuers offer: --acme-challenges
// as given, or http-01 and tls-alpn-01 plus dns-01 with a DNS provider.
func (c *Config) acmeChallenges() []string {
	if c.ACMEChallenges != nil {
		return c.ACMEChallenges
	}
	chs := []string{certs.ChallengeHTTP01, certs.ChallengeTLSALPN01}
	if c.ACMEDNSProvider != "" {
		chs = append(chs, certs.ChallengeDNS01)
	}
	return chs
}

// httpsURL reports whether s is an absolute https URL with a host. ACME
// directories are https only: the account key signs every request, but
// the directory itself and the certificates come back over that channel.
func httpsURL(s string) bool {
	u, err := url.Parse(s)
	return err == nil && u.Scheme == "https" && u.Host != ""
}

// minACMELeaseTTL keeps lease extensions (every third of the term) well
// apart from the store's and the network's delays.
const minACMELeaseTTL = 3 * time.Second

// managerConfig is the ACME manager's configuration from the flags, the
// limits and durations as given.
func (c *Config) managerConfig(log *zap.Logger, registry prometheus.Registerer) certs.ManagerConfig {
	mcfg := certs.DefaultManagerConfig()
	mcfg.Logger = log
	mcfg.Registerer = registry
	mcfg.Limits = c.ACMELimits
	mcfg.LeaseTTL = c.ACMELeaseTTL
	mcfg.Interval = c.ACMERenewInterval
	return mcfg
}

// buildACME builds the ACME manager and the challenge responder the proxy
// answers with; both nil when ACME is off.
func (a *Agent) buildACME(registry prometheus.Registerer) (proxy.ChallengeSource, error) {
	cfg := a.cfg
	if cfg.ACMEDirectory == "" {
		return nil, nil
	}
	// lego logs through a package-level logger: one destination for the
	// process, set here once, before any issuer runs.
	certs.RouteLegoLog(a.logger)
	log := a.logger.Named("acme")
	// A challenge token reaches every alive member before the CA is told.
	members := acmeCluster{a: a}
	backend := certs.NewStoreBackend(a.store, members)

	icfg := certs.DefaultACMEConfig()
	icfg.DirectoryURL = cfg.ACMEDirectory
	icfg.Email = cfg.ACMEEmail
	icfg.EABKeyID, icfg.EABHMACKey = cfg.ACMEEABKeyID, cfg.ACMEEABHMACKey
	icfg.Logger = log
	icfg.PresentTimeout = cfg.ACMEPresentTimeout
	if cfg.ACMECABundle != "" {
		pem, err := os.ReadFile(cfg.ACMECABundle)
		if err != nil {
			return nil, fmt.Errorf("--acme-ca-bundle: %w", err)
		}
		icfg.CABundlePEM = pem
	}
	// A provider with dns-01 left out of --acme-challenges is not built:
	// the issuer would never ask it.
	if slices.Contains(cfg.acmeChallenges(), certs.ChallengeDNS01) {
		p, err := certs.DNSProviderFromEnv(cfg.ACMEDNSProvider)
		if err != nil {
			return nil, err
		}
		icfg.DNS01Provider = p
	}
	icfg.Challenges = cfg.acmeChallenges()
	iss, err := certs.NewACMEIssuer(icfg, backend, backend)
	if err != nil {
		return nil, err
	}
	issuers := []certs.Issuer{iss}
	for _, dir := range cfg.ACMEFallbackDirectories {
		// EAB credentials belong to one CA's account: a fallback
		// directory registers without them.
		fcfg := icfg
		fcfg.DirectoryURL = dir
		fcfg.EABKeyID, fcfg.EABHMACKey = "", ""
		fiss, err := certs.NewACMEIssuer(fcfg, backend, backend)
		if err != nil {
			return nil, fmt.Errorf("--acme-fallback-directory %q: %w", dir, err)
		}
		issuers = append(issuers, fiss)
	}
	m, err := certs.NewManager(cfg.managerConfig(log, registry), issuers, backend, backend, members)
	if err != nil {
		return nil, err
	}
	a.acme = m
	a.auto = &autoCert{store: a.store, cache: a.certs, acme: m, members: members, wildcard: slices.Contains(cfg.acmeChallenges(), certs.ChallengeDNS01),
		publicOnly: strings.HasPrefix(cfg.ACMEDirectory, "https://acme-v02.api.letsencrypt.org/") ||
			strings.HasPrefix(cfg.ACMEDirectory, "https://acme-staging-v02.api.letsencrypt.org/"),
		log: a.logger.Named("autocert"), now: time.Now, ready: a.certs.Ready()}
	log.Info("acme enabled", zap.String("directory", cfg.ACMEDirectory), zap.Strings("fallback_directories", cfg.ACMEFallbackDirectories), zap.Strings("challenges", icfg.Challenges))
	a.challenges = certs.NewChallengeResponder(a.store, log)
	if registry != nil {
		if err := registry.Register(a.challenges); err != nil {
			return nil, fmt.Errorf("agent: registering acme challenge metrics: %w", err)
		}
	}
	return a.challenges, nil
}
