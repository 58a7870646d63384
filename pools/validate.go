package pools

import (
	"fmt"
	"net"
	"net/netip"
	"net/textproto"
	"slices"
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
	// sslModeTerminate is the seed system's name for flexible; it is
	// refused with a message naming flexible.
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

// SSLModes lists the SSL modes ValidatePool accepts.
func SSLModes() []string {
	return []string{SSLModeOff, SSLModeFlexible, SSLModeFull, SSLModeFullStrict, SSLModePassthrough}
}

func algorithmKnown(a string) bool {
	return slices.Contains(Algorithms(), a)
}

func sslModeKnown(m string) bool {
	return slices.Contains(SSLModes(), m)
}

// What a value's stored form follows, for the messages that refuse
// another spelling of it.
const (
	keywordRule  = "values are lower case"
	hostNameRule = "host names are lower case, without the root's trailing dot"
	ipRule       = "IP addresses without brackets, IPv6 in its short lower-case form"
	hashOnRule   = "client_ip in lower case, header names in canonical case"
)

// lowerKeyword is the stored form of a keyword (an algorithm, a mode, a
// check type, a scheme, a region): no surrounding spaces, lower case.
func lowerKeyword(s string) string {
	return strings.ToLower(strings.TrimSpace(s))
}

// servedHostForm is the stored form of a host name a pool serves: no
// surrounding spaces, lower case, no trailing dot of the root.
func servedHostForm(h string) string {
	return strings.TrimSuffix(strings.ToLower(strings.TrimSpace(h)), ".")
}

// sendInstead refuses sent, a value that is acceptable only in another
// spelling, want: it says what differs and what to send. The validators
// never store want in its place: a value is stored as sent or refused, so
// that what a client reads back is what it wrote.
func sendInstead(sent, want, rule string) string {
	if strings.TrimSpace(sent) != sent {
		if strings.TrimSpace(sent) == want || rule == "" {
			return fmt.Sprintf("surrounding spaces; send %q", want)
		}
		return fmt.Sprintf("surrounding spaces; send %q (%s)", want, rule)
	}
	if rule == "" {
		return fmt.Sprintf("send %q", want)
	}
	return fmt.Sprintf("send %q (%s)", want, rule)
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

// CanonicalSSLMode returns the mode a spelling of it names: trimmed, lower
// case, and the seed's "terminate" as flexible. ValidatePool accepts only
// the stored spelling; the admin API uses this to derive the defaults that
// follow the mode from the mode a client meant, so that a request refused
// for its spelling of ssl_mode is refused for nothing else.
func CanonicalSSLMode(mode string) string {
	mode = lowerKeyword(mode)
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
// is. It changes nothing in p: a value is accepted only in the form it is
// stored in (keywords and host names in lower case, no surrounding
// spaces, no trailing dot, header names in canonical case, flexible rather
// than the seed's "terminate"), and another spelling of a valid value is
// refused with a message naming the one to send. The combinations are
// checked with the values a client meant, so that a request refused for a
// spelling is refused for nothing else. The error is a *fielderr.Error
// listing every offending field (snake_case JSON names, nested fields as
// "health_check.rise").
func ValidatePool(p *storage.Pool) error {
	var errs fielderr.List

	// Only a name that is valid in lower case is refused with the name to
	// send: "P 1" is refused for what makes "p 1" no name either.
	if lower := strings.ToLower(p.Name); lower != p.Name && checkName(lower) == "" {
		errs.Add("name", fmt.Sprintf("must be lower case (pool names are keys); send %q", lower))
	} else if msg := checkName(p.Name); msg != "" {
		errs.Add("name", msg)
	}

	algorithm := lowerKeyword(p.Algorithm)
	switch {
	case !algorithmKnown(algorithm):
		errs.Add("algorithm", fmt.Sprintf("unknown algorithm %q; valid: %s", p.Algorithm, strings.Join(Algorithms(), ", ")))
	case algorithm != p.Algorithm:
		errs.Add("algorithm", sendInstead(p.Algorithm, algorithm, keywordRule))
	}

	mode := CanonicalSSLMode(p.SSLMode)
	switch {
	case lowerKeyword(p.SSLMode) == sslModeTerminate:
		errs.Add("ssl_mode", fmt.Sprintf("%q is called %q; send %q", p.SSLMode, SSLModeFlexible, SSLModeFlexible))
	case !sslModeKnown(mode):
		errs.Add("ssl_mode", fmt.Sprintf("unknown ssl mode %q; valid: %s", p.SSLMode, strings.Join(SSLModes(), ", ")))
	case mode != p.SSLMode:
		errs.Add("ssl_mode", sendInstead(p.SSLMode, mode, keywordRule))
	}
	switch mode {
	case SSLModeFull:
		if p.ValidateBackendCert {
			errs.Add("validate_backend_cert", "ssl_mode full never verifies backend certificates; leave validate_backend_cert out or set it to false (or use ssl_mode full_strict to verify them)")
		}
	case SSLModeFullStrict:
		if !p.ValidateBackendCert {
			errs.Add("validate_backend_cert", "full_strict always verifies backend certificates; leave validate_backend_cert out or set it to true (or use ssl_mode full)")
		}
	}

	domain := servedHostForm(p.SSLDomain)
	if p.SSLDomain != "" {
		if msg := checkServedHost(domain); msg != "" {
			errs.Add("ssl_domain", msg)
		} else if domain != p.SSLDomain {
			errs.Add("ssl_domain", sendInstead(p.SSLDomain, domain, hostNameRule))
		}
	}
	if p.SSLCertID != "" {
		if id := strings.TrimSpace(p.SSLCertID); id == "" {
			errs.Add("ssl_cert_id", `only spaces; send "" for no certificate of the pool's own`)
		} else if msg := checkID(id); msg != "" {
			errs.Add("ssl_cert_id", msg)
		} else if id != p.SSLCertID {
			errs.Add("ssl_cert_id", sendInstead(p.SSLCertID, id, ""))
		}
		switch mode {
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
		for i, sent := range p.Hosts {
			h := servedHostForm(sent)
			if msg := checkServedHost(h); msg != "" {
				errs.Add("hosts", fmt.Sprintf("hosts[%d] %q: %s", i, sent, msg))
				continue
			}
			if j, dup := seen[h]; dup {
				errs.Add("hosts", fmt.Sprintf("hosts[%d] %q repeats hosts[%d]", i, sent, j))
				continue
			}
			seen[h] = i
			if h != sent {
				errs.Add("hosts", fmt.Sprintf("hosts[%d] %q: %s", i, sent, sendInstead(sent, h, hostNameRule)))
			}
		}
	}
	if mode != SSLModeOff && domain == "" && len(p.Hosts) == 0 && !(mode == SSLModePassthrough && p.Default) {
		errs.Add("ssl_domain", fmt.Sprintf("a pool with ssl_mode %s needs ssl_domain or hosts: TLS is routed by SNI host name", mode))
	}

	if p.HealthCheckInterval < MinHealthCheckInterval || p.HealthCheckInterval > MaxHealthCheckInterval {
		errs.Add("health_check_interval", fmt.Sprintf("must be between %s and %s (milliseconds in JSON), got %s", MinHealthCheckInterval, MaxHealthCheckInterval, p.HealthCheckInterval))
	}
	validateHealthCheck(p.HealthCheck, p.HealthCheckInterval, &errs)

	validateHashOn(p.HashOn, algorithm, mode, &errs)

	if p.StickyCookie != "" {
		cookie := strings.TrimSpace(p.StickyCookie)
		switch {
		case len(cookie) > maxCookieName:
			errs.Add("sticky_cookie", fmt.Sprintf("at most %d characters", maxCookieName))
		case !isToken(cookie):
			errs.Add("sticky_cookie", "not a valid cookie name (letters, digits and !#$%&'*+-.^_`|~ only)")
		case mode == SSLModePassthrough:
			errs.Add("sticky_cookie", "sticky cookies need HTTP; a passthrough pool never sees cookies")
		case cookie != p.StickyCookie:
			errs.Add("sticky_cookie", sendInstead(p.StickyCookie, cookie, ""))
		}
	}

	validateBackendTLS(p, mode, &errs)
	validateOnDemand(p, mode, &errs)
	checkMetadata(p.Metadata, &errs)
	return errs.Err()
}

// maxCABundle bounds a pool's backend CA bundle (a few dozen certificates).
const maxCABundle = 256 << 10

// validateBackendTLS checks the pool's backend TLS settings as sent: a CA
// bundle that parses, a lower-case host name to send as SNI, a
// certificate id. mode is the ssl_mode the client meant.
func validateBackendTLS(p *storage.Pool, mode string, errs *fielderr.List) {
	if p.BackendCA != "" {
		if len(p.BackendCA) > maxCABundle {
			errs.Add("backend_ca", fmt.Sprintf("at most %d bytes of PEM", maxCABundle))
		} else if _, err := ParseCABundle(p.BackendCA); err != nil {
			errs.Add("backend_ca", err.Error())
		}
	}
	if n := p.BackendServerName; n != "" {
		if want := servedHostForm(n); checkHostname(want) != "" {
			errs.Add("backend_server_name", checkHostname(want))
		} else if want != n {
			errs.Add("backend_server_name", sendInstead(n, want, hostNameRule))
		}
	}
	if id := p.BackendClientCertID; id != "" {
		if want := strings.TrimSpace(id); want == "" {
			errs.Add("backend_client_cert_id", `only spaces; send "" for no client certificate`)
		} else if msg := checkID(want); msg != "" {
			errs.Add("backend_client_cert_id", msg)
		} else if want != id {
			errs.Add("backend_client_cert_id", sendInstead(id, want, ""))
		}
	}
	if mode == SSLModePassthrough && (p.BackendCA != "" || p.BackendServerName != "" || p.BackendClientCertID != "") {
		errs.Add("ssl_mode", "backend TLS settings (backend_ca, backend_server_name, backend_client_cert_id) need a pool that opens TLS to its backends; passthrough relays the client's TLS")
	}
}

func validateHealthCheck(hc storage.HealthCheck, interval time.Duration, errs *fielderr.List) {
	typ := lowerKeyword(hc.Type)
	if typ != hc.Type && (typ == HealthCheckTCP || typ == HealthCheckHTTP || typ == HealthCheckHTTPS) {
		errs.Add("health_check.type", sendInstead(hc.Type, typ, keywordRule))
	}
	switch typ {
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

// validateHashOn checks hash_on for the algorithm and ssl_mode the client
// meant: client_ip, or "header:" and a header name in canonical case
// ("header:X-User-Id"), the form the balancer reads.
func validateHashOn(hashOn, algorithm, mode string, errs *fielderr.List) {
	if hashOn == "" {
		if algorithm == AlgorithmConsistentHash {
			errs.Add("hash_on", fmt.Sprintf("consistent_hash needs a key: %q or \"header:<Header-Name>\" (left out, it defaults to %q)", HashOnClientIP, HashOnClientIP))
		}
		return
	}
	if algorithm != AlgorithmConsistentHash {
		errs.Add("hash_on", `only used by the consistent_hash algorithm; send "hash_on": "" with another algorithm`)
		return
	}
	want := strings.TrimSpace(hashOn)
	if strings.EqualFold(want, HashOnClientIP) {
		want = HashOnClientIP
	} else if name, ok := cutPrefixFold(want, hashOnHeaderPrefix); ok {
		name = strings.TrimSpace(name)
		switch {
		case len(name) > maxHeaderName:
			errs.Add("hash_on", fmt.Sprintf("header name longer than %d characters", maxHeaderName))
			return
		case !isToken(name):
			errs.Add("hash_on", fmt.Sprintf("%q is not a valid header name", name))
			return
		case mode == SSLModePassthrough:
			errs.Add("hash_on", "a passthrough pool never sees HTTP headers; use client_ip")
			return
		}
		want = hashOnHeaderPrefix + textproto.CanonicalMIMEHeaderKey(name)
	} else {
		errs.Add("hash_on", fmt.Sprintf("must be %q or \"header:<Header-Name>\", got %q", HashOnClientIP, hashOn))
		return
	}
	if want != hashOn {
		errs.Add("hash_on", sendInstead(hashOn, want, hashOnRule))
	}
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

// ValidateBackend validates every field of b without filling defaults.
// Like ValidatePool it changes nothing in b: the id, pool name, scheme,
// host and region are accepted only in their stored form (no surrounding
// spaces; the pool name, scheme, host name and region in lower case, a
// host name without the root's trailing dot, an IP address without
// brackets and IPv6 in its short form), another spelling of a valid value
// is refused naming the one to send. The error is a *fielderr.Error.
func ValidateBackend(b *storage.Backend) error {
	var errs fielderr.List

	if b.ID != "" {
		if id := strings.TrimSpace(b.ID); id == "" {
			errs.Add("id", "only spaces; send an id, or leave id out for a generated one")
		} else if msg := checkID(id); msg != "" {
			errs.Add("id", msg)
		} else if id != b.ID {
			errs.Add("id", sendInstead(b.ID, id, ""))
		}
	}
	if pool := lowerKeyword(b.PoolName); checkName(pool) != "" {
		errs.Add("pool_name", checkName(pool))
	} else if pool != b.PoolName {
		errs.Add("pool_name", sendInstead(b.PoolName, pool, "pool names are lower case"))
	}

	switch scheme := lowerKeyword(b.Scheme); {
	case scheme != "http" && scheme != "https":
		errs.Add("scheme", fmt.Sprintf("must be http or https, got %q", b.Scheme))
	case scheme != b.Scheme:
		errs.Add("scheme", sendInstead(b.Scheme, scheme, keywordRule))
	}

	if host, rule, msg := backendHostForm(b.Host); msg != "" {
		errs.Add("host", msg)
	} else if host != b.Host {
		errs.Add("host", sendInstead(b.Host, host, rule))
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

	if b.Region != "" {
		if region := lowerKeyword(b.Region); !IsRegion(region) {
			errs.Add("region", fmt.Sprintf("must be 2 to 10 lower-case letters or digits (a Fly region such as iad), got %q", b.Region))
		} else if region != b.Region {
			errs.Add("region", sendInstead(b.Region, region, "regions are lower case"))
		}
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
// a backend is an address, not a resource; a lone "/" (the root, no path)
// may end the URL. The parts are taken as written: a URL whose scheme,
// host or port is not in its stored form (ValidateBackend's) is refused
// with the URL to send. IPv6 literals come in brackets
// ("http://[::1]:8080") and are returned without them.
func SplitBackendURL(raw string) (BackendURL, error) {
	fail := func(msg string) (BackendURL, error) {
		return BackendURL{}, fielderr.New("url", msg)
	}
	var scheme, sentScheme string
	s := strings.TrimSpace(raw)
	if s == "" {
		return fail("is required")
	}
	if len(s) > 2048 {
		return fail("longer than 2048 characters")
	}
	if i := strings.Index(s, "://"); i >= 0 {
		sentScheme = s[:i]
		scheme = strings.ToLower(sentScheme)
		s = s[i+3:]
		if scheme != "http" && scheme != "https" {
			return fail(fmt.Sprintf("scheme must be http or https, got %q", sentScheme))
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
	host, hostRule, msg := backendHostForm(hostPart)
	if msg != "" {
		return fail("host " + msg)
	}

	// The URL as it would be written from the parts stored: a URL written
	// otherwise is refused with this one to send.
	want := host
	if strings.Contains(host, ":") {
		want = "[" + host + "]"
	}
	if port != 0 {
		want += ":" + strconv.Itoa(port)
	}
	if sentScheme != "" {
		want = scheme + "://" + want
	}
	if raw != want && raw != want+"/" {
		var rules []string
		if sentScheme != scheme {
			rules = append(rules, "schemes are lower case")
		}
		if hostPart != host {
			rules = append(rules, hostRule)
		}
		if portPart != "" && portPart != strconv.Itoa(port) {
			rules = append(rules, "ports without leading zeros")
		}
		return fail(sendInstead(raw, want, strings.Join(rules, "; ")))
	}
	return BackendURL{Host: host, Port: port, Scheme: scheme}, nil
}

// backendHostForm returns the stored form of a backend host h, an IP
// address (IPv6 with or without brackets) or a DNS name, with the rule
// that form follows, or why h is no host.
func backendHostForm(h string) (host, rule, msg string) {
	h = strings.TrimSpace(h)
	if h == "" {
		return h, "", "is required"
	}
	if strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]") {
		h = h[1 : len(h)-1]
	}
	if addr, err := netip.ParseAddr(h); err == nil {
		if addr.Zone() != "" {
			return h, "", "IPv6 zones are not supported"
		}
		return addr.String(), ipRule, ""
	}
	h = strings.ToLower(strings.TrimSuffix(h, "."))
	if msg := checkHostname(h); msg != "" {
		return h, "", msg
	}
	return h, hostNameRule, ""
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
