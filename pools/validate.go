package pools

import (
	"fmt"
	"net"
	"net/netip"
	"net/textproto"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/singularity-ng/singularity-edge/internal/fielderr"
	"github.com/singularity-ng/singularity-edge/storage"
)

// Balancing algorithms.
const (
	AlgorithmRoundRobin         = "round_robin"
	AlgorithmLeastConnections   = "least_connections"
	AlgorithmWeightedRoundRobin = "weighted_round_robin"
	AlgorithmRandom             = "random"
	AlgorithmConsistentHash     = "consistent_hash"
	AlgorithmPowerOfTwoChoices  = "power_of_two_choices"
)

// SSL modes.
const (
	SSLModeOff         = "off"
	SSLModeFlexible    = "flexible"
	SSLModeFull        = "full"
	SSLModeFullStrict  = "full_strict"
	SSLModePassthrough = "passthrough"
	// sslModeTerminate is the seed system's spelling of flexible; accepted
	// on input and stored as flexible.
	sslModeTerminate = "terminate"
)

// Health check types.
const (
	HealthCheckTCP   = "tcp"
	HealthCheckHTTP  = "http"
	HealthCheckHTTPS = "https"
)

// HashOn values.
const (
	HashOnClientIP     = "client_ip"
	hashOnHeaderPrefix = "header:"
)

// Defaults (for the fields a create request leaves out) and bounds.
const (
	DefaultAlgorithm           = AlgorithmRoundRobin
	DefaultSSLMode             = SSLModeOff
	DefaultHealthCheckInterval = 10 * time.Second
	MinHealthCheckInterval     = time.Second
	MaxHealthCheckInterval     = time.Hour
	DefaultHealthCheckTimeout  = 2 * time.Second
	MinHealthCheckTimeout      = 10 * time.Millisecond
	DefaultRise                = 2
	DefaultFall                = 3
	MaxRiseFall                = 10
	DefaultMaxFails            = 3
	MaxMaxFails                = 100
	// PassiveDisabled as health_check.max_fails turns passive ejection off,
	// as 0 does (nginx's max_fails=0); -1 is the older spelling, still
	// accepted and stored as sent. DefaultMaxFails is only for a request
	// that leaves max_fails out.
	PassiveDisabled  = -1
	DefaultCooldown  = 30 * time.Second
	MinCooldown      = time.Second
	MaxCooldown      = time.Hour
	DefaultWeight    = 1
	MaxWeight        = 1000
	MaxHosts         = 100
	MaxMetadataPairs = 64
	MaxMetadataKey   = 64
	MaxMetadataValue = 1024
	maxPathLength    = 1024
	maxNameLength    = 63
	maxIDLength      = 128
	maxHostLength    = 253
	maxCookieName    = 64
	maxHeaderName    = 64
)

// Algorithms lists the balancing algorithms in documentation order.
func Algorithms() []string {
	return []string{
		AlgorithmRoundRobin, AlgorithmLeastConnections, AlgorithmWeightedRoundRobin,
		AlgorithmRandom, AlgorithmConsistentHash, AlgorithmPowerOfTwoChoices,
	}
}

// SSLModes lists the SSL modes ValidatePool accepts ("terminate" is also
// accepted and stored as "flexible").
func SSLModes() []string {
	return []string{SSLModeOff, SSLModeFlexible, SSLModeFull, SSLModeFullStrict, SSLModePassthrough}
}

func algorithmKnown(a string) bool {
	for _, v := range Algorithms() {
		if v == a {
			return true
		}
	}
	return false
}

// DefaultPool returns the pool a create request starts from before the
// fields the client sent are applied: every field the API has a default
// for, at that default. It fills nothing in an existing pool: a zero the
// client sent is validated as zero (max_fails 0 turns passive checks off),
// never taken for a field left out.
func DefaultPool() storage.Pool {
	return storage.Pool{
		Algorithm:           DefaultAlgorithm,
		SSLMode:             DefaultSSLMode,
		HealthCheckInterval: DefaultHealthCheckInterval,
		HealthCheck: storage.HealthCheck{
			Type:     HealthCheckTCP,
			Timeout:  DefaultTimeoutFor(DefaultHealthCheckInterval),
			Rise:     DefaultRise,
			Fall:     DefaultFall,
			MaxFails: DefaultMaxFails,
			Cooldown: DefaultCooldown,
		},
	}
}

// DefaultTimeoutFor is the health check timeout used when none is given:
// DefaultHealthCheckTimeout, or half the interval when that is shorter, so
// that the defaults always validate.
func DefaultTimeoutFor(interval time.Duration) time.Duration {
	if interval > 0 && DefaultHealthCheckTimeout >= interval {
		return interval / 2
	}
	return DefaultHealthCheckTimeout
}

// CanonicalSSLMode returns mode the way it is stored: trimmed, lower case,
// and the seed's "terminate" spelled flexible. An unknown mode comes back
// lower-cased for ValidatePool to refuse.
func CanonicalSSLMode(mode string) string {
	mode = strings.ToLower(strings.TrimSpace(mode))
	if mode == sslModeTerminate {
		return SSLModeFlexible
	}
	return mode
}

// ModeSetsVerification reports whether ssl_mode alone decides if backend
// certificates are verified: full_strict always verifies and full never
// does, so for those two modes validate_backend_cert is part of the mode
// (true and false) rather than a choice of its own.
func ModeSetsVerification(mode string) bool {
	return mode == SSLModeFull || mode == SSLModeFullStrict
}

// VerifiesBackendCerts reports whether a pool with this ssl_mode and
// validate_backend_cert verifies its backends' certificates (a backend's
// own ssl_verify may ask for it too): full_strict always, full never, the
// other modes when validate_backend_cert says so. A full pool whose row
// still holds validate_backend_cert true (stored before the flag followed
// the mode) does not verify: full is what its operator chose.
func VerifiesBackendCerts(mode string, validateBackendCert bool) bool {
	switch mode {
	case SSLModeFullStrict:
		return true
	case SSLModeFull:
		return false
	}
	return validateBackendCert
}

// ValidatePool validates every field of p and the combinations of fields,
// without filling any default: a zero value is checked as the value it
// is. Values that are case-insensitive (algorithm, modes, host names) are
// stored in lower case; the pool name is a key and must already be lower
// case. The error is a *fielderr.Error listing every offending field
// (snake_case JSON names, nested fields as "health_check.rise").
func ValidatePool(p *storage.Pool) error {
	var errs fielderr.List

	if p.Name != strings.ToLower(p.Name) {
		errs.Add("name", fmt.Sprintf("must be lower case (pool names are keys); send %q", strings.ToLower(p.Name)))
	} else if msg := checkName(p.Name); msg != "" {
		errs.Add("name", msg)
	}

	p.Algorithm = strings.ToLower(strings.TrimSpace(p.Algorithm))
	if !algorithmKnown(p.Algorithm) {
		errs.Add("algorithm", fmt.Sprintf("unknown algorithm %q; valid: %s", p.Algorithm, strings.Join(Algorithms(), ", ")))
	}

	p.SSLMode = CanonicalSSLMode(p.SSLMode)
	switch p.SSLMode {
	case SSLModeOff, SSLModeFlexible, SSLModePassthrough:
	case SSLModeFull:
		if p.ValidateBackendCert {
			errs.Add("validate_backend_cert", "ssl_mode full never verifies backend certificates; leave validate_backend_cert out or set it to false (or use ssl_mode full_strict to verify them)")
		}
	case SSLModeFullStrict:
		if !p.ValidateBackendCert {
			errs.Add("validate_backend_cert", "full_strict always verifies backend certificates; leave validate_backend_cert out or set it to true (or use ssl_mode full)")
		}
	default:
		errs.Add("ssl_mode", fmt.Sprintf("unknown ssl mode %q; valid: %s (terminate is accepted as flexible)", p.SSLMode, strings.Join(SSLModes(), ", ")))
	}

	p.SSLDomain = strings.ToLower(strings.TrimSpace(p.SSLDomain))
	if p.SSLDomain != "" {
		if msg := checkServedHost(p.SSLDomain); msg != "" {
			errs.Add("ssl_domain", msg)
		}
	}
	p.SSLCertID = strings.TrimSpace(p.SSLCertID)
	if p.SSLCertID != "" {
		if msg := checkID(p.SSLCertID); msg != "" {
			errs.Add("ssl_cert_id", msg)
		}
		switch p.SSLMode {
		case SSLModeOff:
			errs.Add("ssl_cert_id", "a pool with ssl_mode off never presents a certificate; set ssl_mode or remove ssl_cert_id")
		case SSLModePassthrough:
			errs.Add("ssl_cert_id", "a passthrough pool never terminates TLS, so it presents no certificate; remove ssl_cert_id")
		}
	}

	if len(p.Hosts) > MaxHosts {
		errs.Add("hosts", fmt.Sprintf("at most %d host names, got %d", MaxHosts, len(p.Hosts)))
	} else {
		seen := make(map[string]int, len(p.Hosts))
		for i, h := range p.Hosts {
			h = strings.ToLower(strings.TrimSpace(h))
			p.Hosts[i] = h
			if msg := checkServedHost(h); msg != "" {
				errs.Add("hosts", fmt.Sprintf("hosts[%d] %q: %s", i, h, msg))
				continue
			}
			if j, dup := seen[h]; dup {
				errs.Add("hosts", fmt.Sprintf("hosts[%d] %q repeats hosts[%d]", i, h, j))
				continue
			}
			seen[h] = i
		}
		if len(p.Hosts) == 0 {
			p.Hosts = nil
		}
	}
	if p.SSLMode != SSLModeOff && p.SSLDomain == "" && len(p.Hosts) == 0 && !(p.SSLMode == SSLModePassthrough && p.Default) {
		errs.Add("ssl_domain", fmt.Sprintf("a pool with ssl_mode %s needs ssl_domain or hosts: TLS is routed by SNI host name", p.SSLMode))
	}

	if p.HealthCheckInterval < MinHealthCheckInterval || p.HealthCheckInterval > MaxHealthCheckInterval {
		errs.Add("health_check_interval", fmt.Sprintf("must be between %s and %s (milliseconds in JSON), got %s", MinHealthCheckInterval, MaxHealthCheckInterval, p.HealthCheckInterval))
	}
	validateHealthCheck(&p.HealthCheck, p.HealthCheckInterval, &errs)

	validateHashOn(p, &errs)

	p.StickyCookie = strings.TrimSpace(p.StickyCookie)
	if p.StickyCookie != "" {
		switch {
		case len(p.StickyCookie) > maxCookieName:
			errs.Add("sticky_cookie", fmt.Sprintf("at most %d characters", maxCookieName))
		case !isToken(p.StickyCookie):
			errs.Add("sticky_cookie", "not a valid cookie name (letters, digits and !#$%&'*+-.^_`|~ only)")
		case p.SSLMode == SSLModePassthrough:
			errs.Add("sticky_cookie", "sticky cookies need HTTP; a passthrough pool never sees cookies")
		}
	}

	validateBackendTLS(p, &errs)
	validateOnDemand(p, &errs)
	checkMetadata(p.Metadata, &errs)
	return errs.Err()
}

// maxCABundle bounds a pool's backend CA bundle (a few dozen certificates).
const maxCABundle = 256 << 10

// validateBackendTLS checks the pool's backend TLS settings as sent: a CA
// bundle that parses, a lower-case host name to send as SNI, a
// certificate id. Nothing is rewritten: a value that would need it is
// refused with the spelling to send instead.
func validateBackendTLS(p *storage.Pool, errs *fielderr.List) {
	if p.BackendCA != "" {
		if len(p.BackendCA) > maxCABundle {
			errs.Add("backend_ca", fmt.Sprintf("at most %d bytes of PEM", maxCABundle))
		} else if _, err := ParseCABundle(p.BackendCA); err != nil {
			errs.Add("backend_ca", err.Error())
		}
	}
	if n := p.BackendServerName; n != "" {
		if want := strings.ToLower(strings.TrimSpace(n)); want != n {
			errs.Add("backend_server_name", fmt.Sprintf("send it as %q (lower case, no spaces)", want))
		} else if msg := checkHostname(n); msg != "" {
			errs.Add("backend_server_name", msg)
		}
	}
	if id := p.BackendClientCertID; id != "" {
		if strings.TrimSpace(id) != id {
			errs.Add("backend_client_cert_id", fmt.Sprintf("send it as %q (no surrounding spaces)", strings.TrimSpace(id)))
		} else if msg := checkID(id); msg != "" {
			errs.Add("backend_client_cert_id", msg)
		}
	}
	if p.SSLMode == SSLModePassthrough && (p.BackendCA != "" || p.BackendServerName != "" || p.BackendClientCertID != "") {
		errs.Add("ssl_mode", "backend TLS settings (backend_ca, backend_server_name, backend_client_cert_id) need a pool that opens TLS to its backends; passthrough relays the client's TLS")
	}
}

func validateHealthCheck(hc *storage.HealthCheck, interval time.Duration, errs *fielderr.List) {
	hc.Type = strings.ToLower(strings.TrimSpace(hc.Type))
	switch hc.Type {
	case HealthCheckTCP:
		if hc.Path != "" {
			errs.Add("health_check.path", `only used by http and https checks; send "path": "" with type tcp`)
		}
		if hc.ExpectedStatus != 0 {
			errs.Add("health_check.expected_status", "only used by http and https checks; send 0 with type tcp")
		}
	case HealthCheckHTTP, HealthCheckHTTPS:
		switch {
		case !strings.HasPrefix(hc.Path, "/"):
			errs.Add("health_check.path", "must start with /")
		case len(hc.Path) > maxPathLength:
			errs.Add("health_check.path", fmt.Sprintf("at most %d characters", maxPathLength))
		case strings.ContainsFunc(hc.Path, func(r rune) bool { return r <= ' ' || r == 0x7f || r == '#' }):
			errs.Add("health_check.path", "must not contain spaces, control characters or #")
		}
		if hc.ExpectedStatus != 0 && (hc.ExpectedStatus < 100 || hc.ExpectedStatus > 599) {
			errs.Add("health_check.expected_status", fmt.Sprintf("must be between 100 and 599 (0 = any 2xx or 3xx), got %d", hc.ExpectedStatus))
		}
	default:
		errs.Add("health_check.type", fmt.Sprintf("unknown type %q; valid: tcp, http, https", hc.Type))
	}

	switch {
	case hc.Timeout < MinHealthCheckTimeout:
		errs.Add("health_check.timeout", fmt.Sprintf("must be at least %s, got %s", MinHealthCheckTimeout, hc.Timeout))
	case interval >= MinHealthCheckInterval && interval <= MaxHealthCheckInterval && hc.Timeout >= interval:
		// Compared with a valid interval only: an interval out of range is
		// reported on its own, not again as the timeout's fault.
		errs.Add("health_check.timeout", fmt.Sprintf("must be shorter than health_check_interval (%s), got %s", interval, hc.Timeout))
	}
	if hc.Rise < 1 || hc.Rise > MaxRiseFall {
		errs.Add("health_check.rise", fmt.Sprintf("must be between 1 and %d, got %d", MaxRiseFall, hc.Rise))
	}
	if hc.Fall < 1 || hc.Fall > MaxRiseFall {
		errs.Add("health_check.fall", fmt.Sprintf("must be between 1 and %d, got %d", MaxRiseFall, hc.Fall))
	}
	// 0 turns passive checks off as nginx's max_fails=0 does; -1 is the
	// older spelling of the same and stays accepted.
	if hc.MaxFails != PassiveDisabled && (hc.MaxFails < 0 || hc.MaxFails > MaxMaxFails) {
		errs.Add("health_check.max_fails", fmt.Sprintf("must be between 1 and %d, or 0 (or -1) to turn passive checks off, got %d", MaxMaxFails, hc.MaxFails))
	}
	if hc.Cooldown < MinCooldown || hc.Cooldown > MaxCooldown {
		errs.Add("health_check.cooldown", fmt.Sprintf("must be between %s and %s, got %s", MinCooldown, MaxCooldown, hc.Cooldown))
	}
}

func validateHashOn(p *storage.Pool, errs *fielderr.List) {
	p.HashOn = strings.TrimSpace(p.HashOn)
	if p.HashOn == "" {
		if p.Algorithm == AlgorithmConsistentHash {
			errs.Add("hash_on", fmt.Sprintf("consistent_hash needs a key: %q or \"header:<Header-Name>\" (left out, it defaults to %q)", HashOnClientIP, HashOnClientIP))
		}
		return
	}
	if p.Algorithm != AlgorithmConsistentHash {
		errs.Add("hash_on", `only used by the consistent_hash algorithm; send "hash_on": "" with another algorithm`)
		return
	}
	if strings.EqualFold(p.HashOn, HashOnClientIP) {
		p.HashOn = HashOnClientIP
		return
	}
	if len(p.HashOn) > len(hashOnHeaderPrefix) && strings.EqualFold(p.HashOn[:len(hashOnHeaderPrefix)], hashOnHeaderPrefix) {
		name := strings.TrimSpace(p.HashOn[len(hashOnHeaderPrefix):])
		switch {
		case len(name) > maxHeaderName:
			errs.Add("hash_on", fmt.Sprintf("header name longer than %d characters", maxHeaderName))
		case !isToken(name):
			errs.Add("hash_on", fmt.Sprintf("%q is not a valid header name", name))
		case p.SSLMode == SSLModePassthrough:
			errs.Add("hash_on", "a passthrough pool never sees HTTP headers; use client_ip")
		default:
			p.HashOn = hashOnHeaderPrefix + textproto.CanonicalMIMEHeaderKey(name)
		}
		return
	}
	errs.Add("hash_on", fmt.Sprintf("must be %q or \"header:<Header-Name>\", got %q", HashOnClientIP, p.HashOn))
}

// DefaultScheme is the scheme of a backend whose request left it out:
// https for pools that speak TLS to their backends (full, full_strict,
// passthrough), http otherwise.
func DefaultScheme(sslMode string) string {
	switch sslMode {
	case SSLModeFull, SSLModeFullStrict, SSLModePassthrough:
		return "https"
	}
	return "http"
}

// DefaultPort is the port of a backend whose request left it out.
func DefaultPort(scheme string) int {
	if scheme == "https" {
		return 443
	}
	return 80
}

// ValidateBackend validates every field of b without filling defaults;
// host, scheme and region are stored in lower case. The error is a
// *fielderr.Error.
func ValidateBackend(b *storage.Backend) error {
	var errs fielderr.List

	b.ID = strings.TrimSpace(b.ID)
	if b.ID != "" {
		if msg := checkID(b.ID); msg != "" {
			errs.Add("id", msg)
		}
	}
	b.PoolName = strings.ToLower(strings.TrimSpace(b.PoolName))
	if msg := checkName(b.PoolName); msg != "" {
		errs.Add("pool_name", msg)
	}

	b.Scheme = strings.ToLower(strings.TrimSpace(b.Scheme))
	if b.Scheme != "http" && b.Scheme != "https" {
		errs.Add("scheme", fmt.Sprintf("must be http or https, got %q", b.Scheme))
	}

	host, msg := normalizeBackendHost(b.Host)
	b.Host = host
	if msg != "" {
		errs.Add("host", msg)
	}

	if b.Port < 1 || b.Port > 65535 {
		errs.Add("port", fmt.Sprintf("must be between 1 and 65535, got %d", b.Port))
	}

	switch {
	case b.Weight == 0:
		errs.Add("weight", fmt.Sprintf("must be between 1 and %d; to stop new requests to a backend, set draining to true instead of weight 0", MaxWeight))
	case b.Weight < 1 || b.Weight > MaxWeight:
		errs.Add("weight", fmt.Sprintf("must be between 1 and %d, got %d", MaxWeight, b.Weight))
	}

	b.Region = strings.ToLower(strings.TrimSpace(b.Region))
	if b.Region != "" && !IsRegion(b.Region) {
		errs.Add("region", fmt.Sprintf("must be 2 to 10 lower-case letters or digits (a Fly region such as iad), got %q", b.Region))
	}

	checkMetadata(b.Metadata, &errs)
	return errs.Err()
}

// BackendMismatch says why backend b cannot serve pool p, or "" when it
// can: the combinations that would fail every request or every check.
// field is the pool field that makes the combination wrong ("ssl_mode" or
// "health_check.type"), so a caller can report it on either side.
func BackendMismatch(p *storage.Pool, b *storage.Backend) (field, msg string) {
	addr := b.Scheme + "://" + net.JoinHostPort(b.Host, strconv.Itoa(b.Port))
	switch {
	case p.SSLMode == SSLModePassthrough && b.Scheme == "http":
		return "ssl_mode", fmt.Sprintf("pool %q uses ssl_mode passthrough, which forwards the client's TLS unchanged, but backend %s speaks plain http; use an https:// backend", p.Name, addr)
	case (p.SSLMode == SSLModeFull || p.SSLMode == SSLModeFullStrict) && b.Scheme == "http":
		return "ssl_mode", fmt.Sprintf("pool %q uses ssl_mode %s, which speaks TLS to its backends, but backend %s is http; use https:// (or ssl_mode flexible for plain-HTTP backends)", p.Name, p.SSLMode, addr)
	case p.HealthCheck.Type == HealthCheckHTTP && b.Scheme == "https":
		return "health_check.type", fmt.Sprintf("pool %q checks its backends with plain http, but backend %s speaks TLS; use health_check.type https (or tcp)", p.Name, addr)
	}
	return "", ""
}

// BackendURL is a backend URL taken apart. Scheme is "" and Port 0 when
// the URL leaves them out, so a caller can tell a default from a value
// that was written.
type BackendURL struct {
	Host   string
	Port   int
	Scheme string
}

// SplitBackendURL splits a backend URL such as "http://10.0.1.10:8080"
// into host, port and scheme, without defaults: what the URL leaves out
// stays zero (the caller picks the scheme from the pool's mode, the port
// from the scheme). Paths, queries, fragments and user info are refused:
// a backend is an address, not a resource. IPv6 literals come in brackets
// ("http://[::1]:8080") and are returned without them.
func SplitBackendURL(raw string) (BackendURL, error) {
	fail := func(msg string) (BackendURL, error) {
		return BackendURL{}, fielderr.New("url", msg)
	}
	var scheme string
	s := strings.TrimSpace(raw)
	if s == "" {
		return fail("is required")
	}
	if len(s) > 2048 {
		return fail("longer than 2048 characters")
	}
	if i := strings.Index(s, "://"); i >= 0 {
		scheme = strings.ToLower(s[:i])
		s = s[i+3:]
		if scheme != "http" && scheme != "https" {
			return fail(fmt.Sprintf("scheme must be http or https, got %q", scheme))
		}
	}
	s = strings.TrimSuffix(s, "/")
	if strings.ContainsAny(s, "/?#") {
		return fail("must be scheme://host[:port] without a path, query or fragment")
	}
	if strings.Contains(s, "@") {
		return fail("must not contain user info")
	}
	if s == "" {
		return fail("host is missing")
	}

	hostPart, portPart := s, ""
	switch {
	case strings.HasPrefix(s, "["):
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return fail("unterminated IPv6 literal")
		}
		hostPart = s[1:end]
		rest := s[end+1:]
		if rest != "" {
			if rest[0] != ':' {
				return fail("unexpected characters after the IPv6 literal")
			}
			portPart = rest[1:]
			if portPart == "" {
				return fail("port is empty")
			}
		}
		if _, perr := netip.ParseAddr(hostPart); perr != nil || strings.Contains(hostPart, "%") {
			return fail(fmt.Sprintf("%q is not an IPv6 address", hostPart))
		}
	case strings.Count(s, ":") == 1:
		var serr error
		hostPart, portPart, serr = net.SplitHostPort(s)
		if serr != nil {
			return fail(serr.Error())
		}
		if portPart == "" {
			return fail("port is empty")
		}
	case strings.Count(s, ":") > 1:
		return fail("IPv6 addresses must be in brackets, e.g. http://[::1]:8080")
	}

	port := 0
	if portPart != "" {
		n, perr := strconv.Atoi(portPart)
		if perr != nil || n < 1 || n > 65535 || portPart[0] == '+' || portPart[0] == '-' {
			return fail(fmt.Sprintf("port must be a number between 1 and 65535, got %q", portPart))
		}
		port = n
	}
	host, msg := normalizeBackendHost(hostPart)
	if msg != "" {
		return fail("host " + msg)
	}
	return BackendURL{Host: host, Port: port, Scheme: scheme}, nil
}

// normalizeBackendHost accepts an IP address (IPv6 with or without
// brackets) or a DNS name, and returns it in canonical form.
func normalizeBackendHost(h string) (string, string) {
	h = strings.TrimSpace(h)
	if h == "" {
		return h, "is required"
	}
	if strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]") {
		h = h[1 : len(h)-1]
	}
	if addr, err := netip.ParseAddr(h); err == nil {
		if addr.Zone() != "" {
			return h, "IPv6 zones are not supported"
		}
		return addr.String(), ""
	}
	h = strings.ToLower(strings.TrimSuffix(h, "."))
	if msg := checkHostname(h); msg != "" {
		return h, msg
	}
	return h, ""
}

// checkName validates a pool name: [a-z0-9][a-z0-9-_.]{0,62}.
func checkName(s string) string {
	if s == "" {
		return "is required"
	}
	if len(s) > maxNameLength {
		return fmt.Sprintf("at most %d characters", maxNameLength)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		alnum := c >= 'a' && c <= 'z' || c >= '0' && c <= '9'
		if i == 0 && !alnum {
			return "must start with a lower-case letter or digit"
		}
		if !alnum && c != '-' && c != '_' && c != '.' {
			return fmt.Sprintf("may contain only a-z, 0-9, '-', '_' and '.', got %q", s)
		}
	}
	return ""
}

// checkID validates a record id: [A-Za-z0-9][A-Za-z0-9_.-]{0,127}.
func checkID(s string) string {
	if len(s) > maxIDLength {
		return fmt.Sprintf("at most %d characters", maxIDLength)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if i == 0 && !alnum {
			return "must start with a letter or digit"
		}
		if !alnum && c != '-' && c != '_' && c != '.' {
			return fmt.Sprintf("may contain only letters, digits, '-', '_' and '.', got %q", s)
		}
	}
	return ""
}

// checkServedHost validates a host name a pool serves: a DNS name, or a
// wildcard whose only "*" is a whole leading label ("*.example.com").
func checkServedHost(h string) string {
	if h == "" {
		return "must not be empty"
	}
	if strings.HasPrefix(h, "*.") {
		base := h[2:]
		if msg := checkHostname(base); msg != "" {
			return msg
		}
		if !strings.Contains(base, ".") {
			return "a wildcard needs at least two labels after *. (e.g. *.example.com)"
		}
		return ""
	}
	if strings.Contains(h, "*") {
		return "a wildcard is allowed only as the leading label (*.example.com)"
	}
	return checkHostname(h)
}

// checkHostname validates a lower-case DNS name of letter-digit-hyphen
// labels.
func checkHostname(h string) string {
	if h == "" {
		return "must not be empty"
	}
	if len(h) > maxHostLength {
		return fmt.Sprintf("longer than %d characters", maxHostLength)
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" {
			return fmt.Sprintf("%q has an empty label", h)
		}
		if len(label) > 63 {
			return fmt.Sprintf("%q has a label longer than 63 characters", h)
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Sprintf("%q has a label starting or ending with '-'", h)
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return fmt.Sprintf("%q is not a valid host name (letters, digits, '-' and '.' only)", h)
			}
		}
	}
	return ""
}

// IsRegion reports whether s can name a region: 2 to 10 lower-case
// letters or digits, as Fly's region codes are. A backend's region and the
// agent's --region share the rule, so that prefer_region can match them.
func IsRegion(s string) bool {
	if len(s) < 2 || len(s) > 10 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// isToken reports whether s is an RFC 9110 token, the syntax of header and
// cookie names.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

func checkMetadata(md map[string]string, errs *fielderr.List) {
	if len(md) > MaxMetadataPairs {
		errs.Add("metadata", fmt.Sprintf("at most %d entries, got %d", MaxMetadataPairs, len(md)))
		return
	}
	keys := make([]string, 0, len(md))
	for k := range md {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := md[k]
		switch {
		case k == "":
			errs.Add("metadata", "keys must not be empty")
		case len(k) > MaxMetadataKey:
			errs.Add("metadata", fmt.Sprintf("key %.20q... longer than %d bytes", k, MaxMetadataKey))
		case !isMetadataKey(k):
			errs.Add("metadata", fmt.Sprintf("key %q may contain only letters, digits and _ . - / :", k))
		case len(v) > MaxMetadataValue:
			errs.Add("metadata", fmt.Sprintf("value of %q longer than %d bytes", k, MaxMetadataValue))
		case !utf8.ValidString(v) || strings.ContainsFunc(v, func(r rune) bool { return r < ' ' || r == 0x7f }):
			errs.Add("metadata", fmt.Sprintf("value of %q must be UTF-8 text without control characters", k))
		}
	}
}

func isMetadataKey(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("_.-/:", c) >= 0) {
			return false
		}
	}
	return true
}
