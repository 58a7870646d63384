package agent

import (
	"errors"
	"fmt"
	"net/url"
	"os"
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
		return nil
	}
	var errs []error
	u, err := url.Parse(c.ACMEDirectory)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		errs = append(errs, fmt.Errorf("--acme-directory %q: want an https:// URL", c.ACMEDirectory))
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
	return errors.Join(errs...)
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
	if cfg.ACMECABundle != "" {
		pem, err := os.ReadFile(cfg.ACMECABundle)
		if err != nil {
			return nil, fmt.Errorf("--acme-ca-bundle: %w", err)
		}
		icfg.CABundlePEM = pem
	}
	if cfg.ACMEDNSProvider != "" {
		p, err := certs.DNSProviderFromEnv(cfg.ACMEDNSProvider)
		if err != nil {
			return nil, err
		}
		icfg.DNS01Provider = p
	}
	iss, err := certs.NewACMEIssuer(icfg, backend, backend)
	if err != nil {
		return nil, err
	}
	mcfg := certs.DefaultManagerConfig()
	mcfg.Logger = log
	mcfg.Registerer = registry
	m, err := certs.NewManager(mcfg, []certs.Issuer{iss}, backend, backend, members)
	if err != nil {
		return nil, err
	}
	a.acme = m
	a.auto = &autoCert{store: a.store, cache: a.certs, acme: m, members: members, wildcard: cfg.ACMEDNSProvider != "",
		publicOnly: strings.HasPrefix(cfg.ACMEDirectory, "https://acme-v02.api.letsencrypt.org/") ||
			strings.HasPrefix(cfg.ACMEDirectory, "https://acme-staging-v02.api.letsencrypt.org/"),
		log: a.logger.Named("autocert"), now: time.Now, ready: a.certs.Ready()}
	log.Info("acme enabled", zap.String("directory", cfg.ACMEDirectory))
	return certs.NewChallengeResponder(backend, log), nil
}
