package pools

import (
	"strings"

	"github.com/singularity-ng/singularity-edge/storage"
)

// Fixtures for pools and backends built in tests. In a Go literal a field
// left out and a field set to zero look the same, so here a zero means
// "not set" and takes the API's default for a field left out; the API
// itself never does this (a zero that was sent is validated as zero).

// testPoolRow completes p the way a create request that sent only p's
// non-zero fields would, then validates it.
func testPoolRow(p *storage.Pool) error {
	d := DefaultPool()
	p.Name = strings.ToLower(strings.TrimSpace(p.Name))
	if p.Algorithm == "" {
		p.Algorithm = d.Algorithm
	}
	if p.SSLMode == "" {
		p.SSLMode = d.SSLMode
	}
	if CanonicalSSLMode(p.SSLMode) == SSLModeFullStrict {
		p.ValidateBackendCert = true
	}
	if p.HealthCheckInterval == 0 {
		p.HealthCheckInterval = d.HealthCheckInterval
	}
	hc := &p.HealthCheck
	if hc.Type == "" {
		hc.Type = d.HealthCheck.Type
	}
	if t := strings.ToLower(hc.Type); (t == HealthCheckHTTP || t == HealthCheckHTTPS) && hc.Path == "" {
		hc.Path = "/"
	}
	if hc.Timeout == 0 {
		hc.Timeout = DefaultTimeoutFor(p.HealthCheckInterval)
	}
	if hc.Rise == 0 {
		hc.Rise = d.HealthCheck.Rise
	}
	if hc.Fall == 0 {
		hc.Fall = d.HealthCheck.Fall
	}
	if hc.MaxFails == 0 {
		hc.MaxFails = d.HealthCheck.MaxFails
	}
	if hc.Cooldown == 0 {
		hc.Cooldown = d.HealthCheck.Cooldown
	}
	if p.HashOn == "" && strings.EqualFold(p.Algorithm, AlgorithmConsistentHash) {
		p.HashOn = HashOnClientIP
	}
	if p.OnDemandTLS && p.OnDemandRate == 0 {
		p.OnDemandRate = DefaultOnDemandRate
	}
	return ValidatePool(p)
}

// testBackendRow completes b (scheme http, the scheme's port, weight 1)
// and validates it.
func testBackendRow(b *storage.Backend) error {
	if b.Scheme == "" {
		b.Scheme = "http"
	}
	if b.Port == 0 {
		b.Port = DefaultPort(strings.ToLower(b.Scheme))
	}
	if b.Weight == 0 {
		b.Weight = DefaultWeight
	}
	return ValidateBackend(b)
}

// testBackendURL splits raw as the API does for a pool that speaks plain
// HTTP to its backends: scheme http and the scheme's port when left out.
func testBackendURL(raw string) (host string, port int, scheme string, err error) {
	u, err := SplitBackendURL(raw)
	if err != nil {
		return "", 0, "", err
	}
	if u.Scheme == "" {
		u.Scheme = DefaultScheme(SSLModeOff)
	}
	if u.Port == 0 {
		u.Port = DefaultPort(u.Scheme)
	}
	return u.Host, u.Port, u.Scheme, nil
}
