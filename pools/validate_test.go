package pools

import (
	"errors"
	"fmt"
	"maps"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/singularity-ng/singularity-edge/internal/fielderr"
	"github.com/singularity-ng/singularity-edge/storage"
)

// TestDefaultPool: the pool a create request starts from, with the
// defaults for the fields a request leaves out; it validates as it is.
func TestDefaultPool(t *testing.T) {
	p := DefaultPool()
	want := storage.Pool{
		Algorithm:           AlgorithmRoundRobin,
		SSLMode:             SSLModeOff,
		HealthCheckInterval: 10 * time.Second,
		HealthCheck: storage.HealthCheck{
			Type: HealthCheckTCP, Timeout: 2 * time.Second, Rise: 2, Fall: 3, MaxFails: 3, Cooldown: 30 * time.Second,
		},
	}
	if fmt.Sprint(p) != fmt.Sprint(want) {
		t.Fatalf("default pool\n got %+v\nwant %+v", p, want)
	}
	p.Name = "web"
	if err := ValidatePool(&p); err != nil {
		t.Fatalf("the default pool does not validate: %v", err)
	}
}

// clonePool copies p with its own slices and maps, to tell whether
// ValidatePool changed anything.
func clonePool(p storage.Pool) storage.Pool {
	p.Hosts = slices.Clone(p.Hosts)
	p.OnDemandAllow = slices.Clone(p.OnDemandAllow)
	p.Metadata = maps.Clone(p.Metadata)
	return p
}

// TestValidatePoolStoredFormOnly: a value is accepted only in the form it
// is stored in. Every other spelling of a valid value is refused on its
// field alone, with a message naming the value to send, and ValidatePool
// changes nothing; that value, sent, is accepted and left as it is.
func TestValidatePoolStoredFormOnly(t *testing.T) {
	tls := func(p *storage.Pool) { p.SSLMode, p.SSLDomain = SSLModeFlexible, "a.example.com" }
	hashing := func(p *storage.Pool) { p.Algorithm = AlgorithmConsistentHash }
	tests := []struct {
		name        string
		base        func(p *storage.Pool) // what both spellings share
		sent, valid func(p *storage.Pool)
		field, msg  string
	}{
		{"algorithm case", nil,
			func(p *storage.Pool) { p.Algorithm = "Round_Robin" }, func(p *storage.Pool) { p.Algorithm = "round_robin" },
			"algorithm", `send "round_robin" (values are lower case)`},
		{"algorithm spaces", nil,
			func(p *storage.Pool) { p.Algorithm = " random " }, func(p *storage.Pool) { p.Algorithm = "random" },
			"algorithm", `surrounding spaces; send "random"`},
		{"algorithm that needs hash_on", func(p *storage.Pool) { p.HashOn = HashOnClientIP },
			func(p *storage.Pool) { p.Algorithm = "CONSISTENT_HASH" }, hashing,
			"algorithm", `send "consistent_hash"`},
		{"ssl_mode case", func(p *storage.Pool) { p.SSLDomain = "a.example.com"; p.ValidateBackendCert = true },
			func(p *storage.Pool) { p.SSLMode = "Full_Strict" }, func(p *storage.Pool) { p.SSLMode = SSLModeFullStrict },
			"ssl_mode", `send "full_strict" (values are lower case)`},
		{"ssl_mode spaces", func(p *storage.Pool) { p.SSLDomain = "a.example.com" },
			func(p *storage.Pool) { p.SSLMode = "passthrough " }, func(p *storage.Pool) { p.SSLMode = SSLModePassthrough },
			"ssl_mode", `surrounding spaces; send "passthrough"`},
		{"ssl_mode terminate", func(p *storage.Pool) { p.SSLDomain = "a.example.com" },
			func(p *storage.Pool) { p.SSLMode = "terminate" }, func(p *storage.Pool) { p.SSLMode = SSLModeFlexible },
			"ssl_mode", `"terminate" is called "flexible"; send "flexible"`},
		{"ssl_mode Terminate", func(p *storage.Pool) { p.SSLDomain = "a.example.com" },
			func(p *storage.Pool) { p.SSLMode = "Terminate" }, func(p *storage.Pool) { p.SSLMode = SSLModeFlexible },
			"ssl_mode", `"Terminate" is called "flexible"; send "flexible"`},
		{"ssl_domain case", func(p *storage.Pool) { p.SSLMode = SSLModeFlexible },
			func(p *storage.Pool) { p.SSLDomain = "Example.COM" }, func(p *storage.Pool) { p.SSLDomain = "example.com" },
			"ssl_domain", `send "example.com" (host names are lower case`},
		{"ssl_domain spaces", func(p *storage.Pool) { p.SSLMode = SSLModeFlexible },
			func(p *storage.Pool) { p.SSLDomain = " example.com" }, func(p *storage.Pool) { p.SSLDomain = "example.com" },
			"ssl_domain", `surrounding spaces; send "example.com"`},
		{"ssl_domain trailing dot", func(p *storage.Pool) { p.SSLMode = SSLModeFlexible },
			func(p *storage.Pool) { p.SSLDomain = "*.example.com." }, func(p *storage.Pool) { p.SSLDomain = "*.example.com" },
			"ssl_domain", `send "*.example.com" (host names are lower case, without the root's trailing dot)`},
		{"ssl_cert_id spaces", tls,
			func(p *storage.Pool) { p.SSLCertID = " Cert-1 " }, func(p *storage.Pool) { p.SSLCertID = "Cert-1" },
			"ssl_cert_id", `surrounding spaces; send "Cert-1"`},
		{"hosts case", nil,
			func(p *storage.Pool) { p.Hosts = []string{"a.example.com", "WWW.Example.com"} },
			func(p *storage.Pool) { p.Hosts = []string{"a.example.com", "www.example.com"} },
			"hosts", `hosts[1] "WWW.Example.com": send "www.example.com" (host names are lower case`},
		{"hosts wildcard case", nil,
			func(p *storage.Pool) { p.Hosts = []string{"*.Apps.example.com"} }, func(p *storage.Pool) { p.Hosts = []string{"*.apps.example.com"} },
			"hosts", `hosts[0] "*.Apps.example.com": send "*.apps.example.com"`},
		{"hosts spaces", nil,
			func(p *storage.Pool) { p.Hosts = []string{"example.com "} }, func(p *storage.Pool) { p.Hosts = []string{"example.com"} },
			"hosts", `hosts[0] "example.com ": surrounding spaces; send "example.com"`},
		{"hosts trailing dot", nil,
			func(p *storage.Pool) { p.Hosts = []string{"example.com."} }, func(p *storage.Pool) { p.Hosts = []string{"example.com"} },
			"hosts", `hosts[0] "example.com.": send "example.com"`},
		{"hosts of a TLS pool", func(p *storage.Pool) { p.SSLMode = SSLModeFlexible },
			func(p *storage.Pool) { p.Hosts = []string{"Example.com"} }, func(p *storage.Pool) { p.Hosts = []string{"example.com"} },
			"hosts", `hosts[0] "Example.com": send "example.com"`},
		{"health_check.type case", func(p *storage.Pool) { p.HealthCheck.Path = "/" },
			func(p *storage.Pool) { p.HealthCheck.Type = "HTTP" }, func(p *storage.Pool) { p.HealthCheck.Type = HealthCheckHTTP },
			"health_check.type", `send "http" (values are lower case)`},
		{"health_check.type spaces", nil,
			func(p *storage.Pool) { p.HealthCheck.Type = " tcp" }, func(p *storage.Pool) { p.HealthCheck.Type = HealthCheckTCP },
			"health_check.type", `surrounding spaces; send "tcp"`},
		{"hash_on client_ip case", hashing,
			func(p *storage.Pool) { p.HashOn = "Client_IP" }, func(p *storage.Pool) { p.HashOn = HashOnClientIP },
			"hash_on", `send "client_ip" (client_ip in lower case, header names in canonical case)`},
		{"hash_on spaces", hashing,
			func(p *storage.Pool) { p.HashOn = "client_ip " }, func(p *storage.Pool) { p.HashOn = HashOnClientIP },
			"hash_on", `surrounding spaces; send "client_ip"`},
		{"hash_on header prefix case", hashing,
			func(p *storage.Pool) { p.HashOn = "Header:X-User" }, func(p *storage.Pool) { p.HashOn = "header:X-User" },
			"hash_on", `send "header:X-User"`},
		{"hash_on header name case", hashing,
			func(p *storage.Pool) { p.HashOn = "header:x-user-id" }, func(p *storage.Pool) { p.HashOn = "header:X-User-Id" },
			"hash_on", `send "header:X-User-Id"`},
		{"hash_on header name spaces", hashing,
			func(p *storage.Pool) { p.HashOn = "header: X-User" }, func(p *storage.Pool) { p.HashOn = "header:X-User" },
			"hash_on", `send "header:X-User"`},
		{"sticky_cookie spaces", nil,
			func(p *storage.Pool) { p.StickyCookie = " Srv" }, func(p *storage.Pool) { p.StickyCookie = "Srv" },
			"sticky_cookie", `surrounding spaces; send "Srv"`},
		{"backend_server_name case", func(p *storage.Pool) {
			p.SSLMode, p.SSLDomain, p.ValidateBackendCert = SSLModeFullStrict, "a.example.com", true
		},
			func(p *storage.Pool) { p.BackendServerName = "B.Internal" }, func(p *storage.Pool) { p.BackendServerName = "b.internal" },
			"backend_server_name", `send "b.internal" (host names are lower case`},
		{"backend_client_cert_id spaces", func(p *storage.Pool) { p.SSLMode, p.SSLDomain = SSLModeFull, "a.example.com" },
			func(p *storage.Pool) { p.BackendClientCertID = "c1 " }, func(p *storage.Pool) { p.BackendClientCertID = "c1" },
			"backend_client_cert_id", `surrounding spaces; send "c1"`},
		{"on_demand_allow case", tls,
			func(p *storage.Pool) { p.OnDemandAllow = []string{"*.Shops.example.com"} },
			func(p *storage.Pool) { p.OnDemandAllow = []string{"*.shops.example.com"} },
			"on_demand_allow[0]", `"*.Shops.example.com": send "*.shops.example.com"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			build := func(spelling func(p *storage.Pool)) storage.Pool {
				p := DefaultPool()
				p.Name = "web"
				if tt.base != nil {
					tt.base(&p)
				}
				spelling(&p)
				return p
			}
			checkStoredFormOnly(t, build(tt.sent), build(tt.valid), clonePool, ValidatePool, tt.field, tt.msg)
		})
	}
}

// TestValidatePoolNameSendsOnlyAValidName: a name refused for its case
// names the lower-case name to send only when that name is one; a name
// that is wrong otherwise too is refused for what is wrong, never with a
// name to send that would be refused in turn.
func TestValidatePoolNameSendsOnlyAValidName(t *testing.T) {
	tests := []struct{ name, msg string }{
		{"P11", `send "p11"`},
		{"Web.Example_1", `send "web.example_1"`},
		{"P 1", "must start with a lower-case letter or digit"},
		{"pA b", "may contain only a-z"},
		{"wEb!", "may contain only a-z"},
		{"-Web", "must start with a lower-case letter or digit"},
		{"\u00c0x", "must start with a lower-case letter or digit"},
		{"x\u00c0", "may contain only a-z"},
		{strings.Repeat("W", maxNameLength+1), "at most 63 characters"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := DefaultPool()
			p.Name = tt.name
			err := ValidatePool(&p)
			expectFieldError(t, err, "name", tt.msg)
			list, _ := fielderr.From(err)
			for _, fe := range list {
				if fe.Field != "name" {
					continue
				}
				if m := sendValue.FindStringSubmatch(fe.Message); m != nil {
					p.Name = m[1]
					if err := ValidatePool(&p); err != nil {
						t.Errorf("%q: the name the message names is refused: %v", fe.Message, err)
					}
				}
			}
		})
	}
}

// sendValue finds the value a refusal names to send.
var sendValue = regexp.MustCompile(`send "([^"\\]*)"`)

func TestValidatePoolRejects(t *testing.T) {
	big := make(map[string]string)
	for i := 0; i <= MaxMetadataPairs; i++ {
		big[fmt.Sprintf("k%d", i)] = "v"
	}
	manyHosts := make([]string, MaxHosts+1)
	for i := range manyHosts {
		manyHosts[i] = fmt.Sprintf("h%d.example.com", i)
	}
	base := func(mod func(p *storage.Pool)) storage.Pool {
		p := DefaultPool()
		p.Name = "web"
		mod(&p)
		return p
	}
	tests := []struct {
		name    string
		pool    storage.Pool
		field   string
		message string // substring
	}{
		{"empty name", base(func(p *storage.Pool) { p.Name = "" }), "name", "required"},
		{"name with slash", base(func(p *storage.Pool) { p.Name = "a/b" }), "name", "may contain only"},
		{"name with space", base(func(p *storage.Pool) { p.Name = "a b" }), "name", "may contain only"},
		{"name starting with dash", base(func(p *storage.Pool) { p.Name = "-a" }), "name", "must start"},
		{"name too long", base(func(p *storage.Pool) { p.Name = strings.Repeat("a", 64) }), "name", "at most 63"},
		{"unknown algorithm", base(func(p *storage.Pool) { p.Algorithm = "fastest" }), "algorithm", "valid: round_robin, least_connections, weighted_round_robin, random, consistent_hash, power_of_two_choices"},
		{"unknown ssl mode", base(func(p *storage.Pool) { p.SSLMode = "tls" }), "ssl_mode", "unknown ssl mode"},
		{"backend CA not PEM", base(func(p *storage.Pool) { p.SSLMode = "full_strict"; p.BackendCA = "not a certificate" }), "backend_ca", "no PEM certificate"},
		{"backend server name invalid", base(func(p *storage.Pool) { p.SSLMode = "full_strict"; p.BackendServerName = "a b" }), "backend_server_name", "not a valid host name"},
		{"backend client cert id invalid", base(func(p *storage.Pool) { p.SSLMode = "full"; p.BackendClientCertID = "a/b" }), "backend_client_cert_id", "may contain only"},
		{"backend TLS on passthrough", base(func(p *storage.Pool) { p.SSLMode = "passthrough"; p.BackendServerName = "b.internal" }), "ssl_mode", "need a pool that opens TLS"},
		{"bad ssl domain", base(func(p *storage.Pool) { p.SSLDomain = "exa mple.com" }), "ssl_domain", "not a valid host name"},
		{"ssl domain double dot", base(func(p *storage.Pool) { p.SSLDomain = "a..com" }), "ssl_domain", "empty label"},
		{"ssl domain inner wildcard", base(func(p *storage.Pool) { p.SSLDomain = "a.*.example.com" }), "ssl_domain", "leading label"},
		{"ssl domain partial wildcard", base(func(p *storage.Pool) { p.SSLDomain = "*foo.example.com" }), "ssl_domain", "leading label"},
		{"ssl domain wildcard tld", base(func(p *storage.Pool) { p.SSLDomain = "*.com" }), "ssl_domain", "at least two labels"},
		{"ssl domain label dash", base(func(p *storage.Pool) { p.SSLDomain = "-a.example.com" }), "ssl_domain", "starting or ending"},
		{"ssl domain long label", base(func(p *storage.Pool) { p.SSLDomain = strings.Repeat("a", 64) + ".com" }), "ssl_domain", "longer than 63"},
		{"ssl domain too long", base(func(p *storage.Pool) { p.SSLDomain = strings.Repeat("abcdefghi.", 26) + "com" }), "ssl_domain", "longer than 253"},
		{"bad ssl cert id", base(func(p *storage.Pool) { p.SSLCertID = "a b" }), "ssl_cert_id", "may contain only"},
		{"bad host", base(func(p *storage.Pool) { p.Hosts = []string{"ok.example.com", "bad_host.com"} }), "hosts", "hosts[1]"},
		{"empty host", base(func(p *storage.Pool) { p.Hosts = []string{""} }), "hosts", "must not be empty"},
		{"too many hosts", base(func(p *storage.Pool) { p.Hosts = manyHosts }), "hosts", "at most 100"},
		{"interval too short", base(func(p *storage.Pool) { p.HealthCheckInterval = 500 * time.Millisecond }), "health_check_interval", "between 1s and 1h0m0s"},
		{"interval too long", base(func(p *storage.Pool) { p.HealthCheckInterval = 2 * time.Hour }), "health_check_interval", "between"},
		{"negative interval", base(func(p *storage.Pool) { p.HealthCheckInterval = -time.Second }), "health_check_interval", "between"},
		{"unknown check type", base(func(p *storage.Pool) { p.HealthCheck.Type = "icmp" }), "health_check.type", "valid: tcp, http, https"},
		{"path without slash", base(func(p *storage.Pool) { p.HealthCheck.Type = "http"; p.HealthCheck.Path = "health" }), "health_check.path", "start with /"},
		{"path with space", base(func(p *storage.Pool) { p.HealthCheck.Type = "http"; p.HealthCheck.Path = "/a b" }), "health_check.path", "must not contain"},
		{"path too long", base(func(p *storage.Pool) {
			p.HealthCheck.Type = "https"
			p.HealthCheck.Path = "/" + strings.Repeat("a", 1024)
		}), "health_check.path", "at most"},
		{"path on tcp", base(func(p *storage.Pool) { p.HealthCheck.Path = "/x" }), "health_check.path", "only used by http"},
		{"status on tcp", base(func(p *storage.Pool) { p.HealthCheck.ExpectedStatus = 200 }), "health_check.expected_status", "only used by http"},
		{"status too low", base(func(p *storage.Pool) { p.HealthCheck.Type = "http"; p.HealthCheck.ExpectedStatus = 99 }), "health_check.expected_status", "between 100 and 599"},
		{"status too high", base(func(p *storage.Pool) { p.HealthCheck.Type = "http"; p.HealthCheck.ExpectedStatus = 600 }), "health_check.expected_status", "between 100 and 599"},
		{"timeout not below interval", base(func(p *storage.Pool) { p.HealthCheck.Timeout = 10 * time.Second }), "health_check.timeout", "shorter than"},
		{"timeout tiny", base(func(p *storage.Pool) { p.HealthCheck.Timeout = time.Millisecond }), "health_check.timeout", "at least"},
		{"rise too high", base(func(p *storage.Pool) { p.HealthCheck.Rise = 11 }), "health_check.rise", "between 1 and 10"},
		{"rise negative", base(func(p *storage.Pool) { p.HealthCheck.Rise = -1 }), "health_check.rise", "between 1 and 10"},
		{"fall too high", base(func(p *storage.Pool) { p.HealthCheck.Fall = 11 }), "health_check.fall", "between 1 and 10"},
		{"max fails too high", base(func(p *storage.Pool) { p.HealthCheck.MaxFails = 101 }), "health_check.max_fails", "between 1 and 100"},
		{"max fails negative", base(func(p *storage.Pool) { p.HealthCheck.MaxFails = -2 }), "health_check.max_fails", "to turn passive checks off"},
		{"cooldown too short", base(func(p *storage.Pool) { p.HealthCheck.Cooldown = time.Millisecond }), "health_check.cooldown", "between"},
		{"cooldown too long", base(func(p *storage.Pool) { p.HealthCheck.Cooldown = 2 * time.Hour }), "health_check.cooldown", "between"},
		{"hash_on without consistent hash", base(func(p *storage.Pool) { p.HashOn = "client_ip" }), "hash_on", "only used by the consistent_hash"},
		{"hash_on unknown", base(func(p *storage.Pool) { p.Algorithm = AlgorithmConsistentHash; p.HashOn = "cookie:x" }), "hash_on", "must be"},
		{"hash_on bad header", base(func(p *storage.Pool) { p.Algorithm = AlgorithmConsistentHash; p.HashOn = "header:X User" }), "hash_on", "not a valid header name"},
		{"hash_on empty header", base(func(p *storage.Pool) { p.Algorithm = AlgorithmConsistentHash; p.HashOn = "header:" }), "hash_on", "must be"},
		{"hash_on header on passthrough", base(func(p *storage.Pool) {
			p.Algorithm = AlgorithmConsistentHash
			p.SSLMode = SSLModePassthrough
			p.HashOn = "header:X-User"
		}), "hash_on", "passthrough"},
		{"bad sticky cookie", base(func(p *storage.Pool) { p.StickyCookie = "a;b" }), "sticky_cookie", "not a valid cookie name"},
		{"long sticky cookie", base(func(p *storage.Pool) { p.StickyCookie = strings.Repeat("c", 65) }), "sticky_cookie", "at most 64"},
		{"sticky on passthrough", base(func(p *storage.Pool) { p.StickyCookie = "s"; p.SSLMode = "passthrough" }), "sticky_cookie", "passthrough"},
		{"too much metadata", base(func(p *storage.Pool) { p.Metadata = big }), "metadata", "at most 64 entries"},
		{"empty metadata key", base(func(p *storage.Pool) { p.Metadata = map[string]string{"": "v"} }), "metadata", "must not be empty"},
		{"bad metadata key", base(func(p *storage.Pool) { p.Metadata = map[string]string{"a b": "v"} }), "metadata", "may contain only"},
		{"long metadata key", base(func(p *storage.Pool) { p.Metadata = map[string]string{strings.Repeat("k", 65): "v"} }), "metadata", "longer than 64"},
		{"long metadata value", base(func(p *storage.Pool) { p.Metadata = map[string]string{"k": strings.Repeat("v", 1025)} }), "metadata", "longer than 1024"},
		{"control char metadata value", base(func(p *storage.Pool) { p.Metadata = map[string]string{"k": "a\nb"} }), "metadata", "control characters"},
		{"invalid utf8 metadata value", base(func(p *storage.Pool) { p.Metadata = map[string]string{"k": "\xff"} }), "metadata", "UTF-8"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := tt.pool
			expectFieldError(t, ValidatePool(&p), tt.field, tt.message)
		})
	}
}

func TestValidatePoolReportsEveryField(t *testing.T) {
	p := DefaultPool()
	p.Algorithm, p.SSLMode, p.HealthCheck.Rise = "x", "y", 50
	list, ok := fielderr.From(ValidatePool(&p))
	if !ok {
		t.Fatal("not a field error")
	}
	fields := map[string]bool{}
	for _, f := range list {
		fields[f.Field] = true
	}
	for _, f := range []string{"name", "algorithm", "ssl_mode", "health_check.rise"} {
		if !fields[f] {
			t.Errorf("missing error for %s in %v", f, list)
		}
	}
}

// TestValidateBackendStoredFormOnly: ValidatePool's rule for backends.
func TestValidateBackendStoredFormOnly(t *testing.T) {
	tests := []struct {
		name        string
		sent, valid func(b *storage.Backend)
		field, msg  string
	}{
		{"id spaces",
			func(b *storage.Backend) { b.ID = " b-1 " }, func(b *storage.Backend) { b.ID = "b-1" },
			"id", `surrounding spaces; send "b-1"`},
		{"id case is kept", // ids are case-sensitive: B-1 is stored as B-1
			func(b *storage.Backend) { b.ID = "B-1\t" }, func(b *storage.Backend) { b.ID = "B-1" },
			"id", `surrounding spaces; send "B-1"`},
		{"pool_name case",
			func(b *storage.Backend) { b.PoolName = "Web" }, func(b *storage.Backend) { b.PoolName = "web" },
			"pool_name", `send "web" (pool names are lower case)`},
		{"scheme case",
			func(b *storage.Backend) { b.Scheme = "HTTPS" }, func(b *storage.Backend) { b.Scheme = "https" },
			"scheme", `send "https" (values are lower case)`},
		{"scheme spaces",
			func(b *storage.Backend) { b.Scheme = "http " }, func(b *storage.Backend) { b.Scheme = "http" },
			"scheme", `surrounding spaces; send "http"`},
		{"host case",
			func(b *storage.Backend) { b.Host = "API.Internal" }, func(b *storage.Backend) { b.Host = "api.internal" },
			"host", `send "api.internal" (host names are lower case, without the root's trailing dot)`},
		{"host trailing dot",
			func(b *storage.Backend) { b.Host = "api.internal." }, func(b *storage.Backend) { b.Host = "api.internal" },
			"host", `send "api.internal"`},
		{"host spaces",
			func(b *storage.Backend) { b.Host = " 10.0.0.1" }, func(b *storage.Backend) { b.Host = "10.0.0.1" },
			"host", `surrounding spaces; send "10.0.0.1"`},
		{"host in brackets",
			func(b *storage.Backend) { b.Host = "[2001:db8::1]" }, func(b *storage.Backend) { b.Host = "2001:db8::1" },
			"host", `send "2001:db8::1" (IP addresses without brackets, IPv6 in its short lower-case form)`},
		{"host IPv6 upper case",
			func(b *storage.Backend) { b.Host = "2001:DB8::1" }, func(b *storage.Backend) { b.Host = "2001:db8::1" },
			"host", `send "2001:db8::1"`},
		{"host IPv6 long form",
			func(b *storage.Backend) { b.Host = "2001:db8:0:0:0:0:0:1" }, func(b *storage.Backend) { b.Host = "2001:db8::1" },
			"host", `send "2001:db8::1"`},
		{"region case",
			func(b *storage.Backend) { b.Region = "IAD" }, func(b *storage.Backend) { b.Region = "iad" },
			"region", `send "iad" (regions are lower case)`},
		{"region spaces",
			func(b *storage.Backend) { b.Region = " syd" }, func(b *storage.Backend) { b.Region = "syd" },
			"region", `surrounding spaces; send "syd"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			build := func(spelling func(b *storage.Backend)) storage.Backend {
				b := storage.Backend{PoolName: "web", Host: "10.0.0.1", Port: 8080, Scheme: "http", Weight: 1,
					Metadata: map[string]string{"k": "v"}}
				spelling(&b)
				return b
			}
			clone := func(b storage.Backend) storage.Backend {
				b.Metadata = maps.Clone(b.Metadata)
				return b
			}
			checkStoredFormOnly(t, build(tt.sent), build(tt.valid), clone, ValidateBackend, tt.field, tt.msg)
		})
	}
}

func TestValidateBackendRejects(t *testing.T) {
	base := func(mod func(b *storage.Backend)) storage.Backend {
		b := storage.Backend{PoolName: "web", Host: "10.0.0.1", Port: 80, Scheme: "http", Weight: 1}
		mod(&b)
		return b
	}
	tests := []struct {
		name    string
		b       storage.Backend
		field   string
		message string
	}{
		{"missing host", base(func(b *storage.Backend) { b.Host = "" }), "host", "required"},
		{"bad host", base(func(b *storage.Backend) { b.Host = "exa mple" }), "host", "not a valid host name"},
		{"wildcard host", base(func(b *storage.Backend) { b.Host = "*.example.com" }), "host", "not a valid host name"},
		{"host with port", base(func(b *storage.Backend) { b.Host = "example.com:80" }), "host", "not a valid host name"},
		{"ipv6 zone", base(func(b *storage.Backend) { b.Host = "fe80::1%eth0" }), "host", "zones"},
		{"port too high", base(func(b *storage.Backend) { b.Port = 65536 }), "port", "between 1 and 65535"},
		{"port negative", base(func(b *storage.Backend) { b.Port = -1 }), "port", "between 1 and 65535"},
		{"bad scheme", base(func(b *storage.Backend) { b.Scheme = "ftp" }), "scheme", "http or https"},
		{"weight too high", base(func(b *storage.Backend) { b.Weight = 1001 }), "weight", "between 1 and 1000"},
		{"weight negative", base(func(b *storage.Backend) { b.Weight = -5 }), "weight", "between 1 and 1000"},
		{"region too short", base(func(b *storage.Backend) { b.Region = "a" }), "region", "2 to 10"},
		{"region bad chars", base(func(b *storage.Backend) { b.Region = "us-east" }), "region", "2 to 10"},
		{"region too long", base(func(b *storage.Backend) { b.Region = "abcdefghijk" }), "region", "2 to 10"},
		{"bad id", base(func(b *storage.Backend) { b.ID = "a/b" }), "id", "may contain only"},
		{"id starting with dot", base(func(b *storage.Backend) { b.ID = ".a" }), "id", "must start"},
		{"id too long", base(func(b *storage.Backend) { b.ID = strings.Repeat("i", 129) }), "id", "at most 128"},
		{"missing pool", base(func(b *storage.Backend) { b.PoolName = "" }), "pool_name", "required"},
		{"bad pool", base(func(b *storage.Backend) { b.PoolName = "a b" }), "pool_name", "may contain only"},
		{"bad metadata", base(func(b *storage.Backend) { b.Metadata = map[string]string{"k": "\x00"} }), "metadata", "control"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := tt.b
			expectFieldError(t, ValidateBackend(&b), tt.field, tt.message)
		})
	}
}

// TestSplitBackendURL: what a URL leaves out stays zero, so that the
// caller can tell it from a value that was written.
func TestSplitBackendURL(t *testing.T) {
	tests := []struct {
		raw    string
		host   string
		port   int
		scheme string
	}{
		{"http://10.0.1.10:8080", "10.0.1.10", 8080, "http"},
		{"https://api.example.com", "api.example.com", 0, "https"},
		{"http://api.example.com:81/", "api.example.com", 81, "http"},
		{"10.0.0.1:9000", "10.0.0.1", 9000, ""},
		{"backend.internal", "backend.internal", 0, ""},
		{"http://[::1]:8080", "::1", 8080, "http"},
		{"https://[2001:db8::1]", "2001:db8::1", 0, "https"},
		{"https://[::ffff:10.0.0.1]:8443", "::ffff:10.0.0.1", 8443, "https"},
	}
	for _, tt := range tests {
		t.Run(tt.raw, func(t *testing.T) {
			u, err := SplitBackendURL(tt.raw)
			if err != nil {
				t.Fatalf("SplitBackendURL: %v", err)
			}
			if u.Host != tt.host || u.Port != tt.port || u.Scheme != tt.scheme {
				t.Fatalf("got %q %d %q, want %q %d %q", u.Host, u.Port, u.Scheme, tt.host, tt.port, tt.scheme)
			}
		})
	}
}

func TestSplitBackendURLRejects(t *testing.T) {
	tests := []struct{ raw, message string }{
		{"", "required"},
		{"ftp://a.b", "http or https"},
		{"http://", "host is missing"},
		{"http://a.b/path", "without a path"},
		{"http://a.b?x=1", "without a path"},
		{"http://a.b#f", "without a path"},
		{"http://user:pw@a.b", "user info"},
		{"http://a.b:0", "between 1 and 65535"},
		{"http://a.b:65536", "between 1 and 65535"},
		{"http://a.b:x", "between 1 and 65535"},
		{"http://a.b:+80", "between 1 and 65535"},
		{"http://a.b:", "port is empty"},
		{"http://::1", "brackets"},
		{"http://[::1", "unterminated"},
		{"http://[::1]x", "unexpected"},
		{"http://[::1]:", "port is empty"},
		{"http://[a.b]:80", "not an IPv6"},
		{"http://[fe80::1%25eth0]:80", "not an IPv6"},
		{"http://exa mple.com", "not a valid host name"},
		{"http://*.example.com", "not a valid host name"},
		{"http://" + strings.Repeat("a", 2100), "longer than 2048"},
	}
	for _, tt := range tests {
		t.Run(tt.raw, func(t *testing.T) {
			_, err := SplitBackendURL(tt.raw)
			expectFieldError(t, err, "url", tt.message)
		})
	}
}

// TestSplitBackendURLStoredFormOnly: a URL is taken as written; one whose
// scheme, host or port is written otherwise than stored is refused with
// the URL to send, which is accepted.
func TestSplitBackendURLStoredFormOnly(t *testing.T) {
	tests := []struct{ raw, msg, send string }{
		{" http://a.b:1 ", `surrounding spaces; send "http://a.b:1"`, "http://a.b:1"},
		{"HTTP://a.b:81", `send "http://a.b:81" (schemes are lower case)`, "http://a.b:81"},
		{"http://API.Example.com", `send "http://api.example.com" (host names are lower case, without the root's trailing dot)`, "http://api.example.com"},
		{"https://api.internal.:8443/", `send "https://api.internal:8443"`, "https://api.internal:8443"},
		{"http://[2001:DB8::1]:80", `send "http://[2001:db8::1]:80" (IP addresses without brackets, IPv6 in its short lower-case form)`, "http://[2001:db8::1]:80"},
		{"[2001:db8:0::1]", `send "[2001:db8::1]"`, "[2001:db8::1]"},
		{"http://[10.0.0.1]:80", `send "http://10.0.0.1:80"`, "http://10.0.0.1:80"},
		{"http://a.b:080", `send "http://a.b:80" (ports without leading zeros)`, "http://a.b:80"},
		{"HTTPS://X.Y", `send "https://x.y" (schemes are lower case; host names are lower case`, "https://x.y"},
	}
	for _, tt := range tests {
		t.Run(tt.raw, func(t *testing.T) {
			_, err := SplitBackendURL(tt.raw)
			expectFieldError(t, err, "url", tt.msg)
			if _, err := SplitBackendURL(tt.send); err != nil {
				t.Fatalf("the URL the message names is refused: %v", err)
			}
		})
	}
}

// FuzzSplitBackendURL checks that any accepted URL is written as its parts
// are (a lone "/" may end it), that with the scheme and port the admin API
// takes for what it leaves out it is a backend that ValidateBackend
// accepts, and that errors are field errors.
func FuzzSplitBackendURL(f *testing.F) {
	for _, s := range []string{
		"http://10.0.1.10:8080", "https://api.example.com", "[::1]:80", "http://[::1]", "a:1", "http://a.b:65535/",
		"http://user@a", "https://a.b:0", "http://[fe80::1%eth0]:1", "::1", "http://a..b", "HTTPS://X.Y",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		u, err := SplitBackendURL(raw)
		if err != nil {
			var fe *fielderr.Error
			if !errors.As(err, &fe) {
				t.Fatalf("error %v is not a *fielderr.Error", err)
			}
			return
		}
		written := u.Host
		if strings.Contains(u.Host, ":") {
			written = "[" + u.Host + "]"
		}
		if u.Port != 0 {
			written += fmt.Sprintf(":%d", u.Port)
		}
		if u.Scheme != "" {
			written = u.Scheme + "://" + written
		}
		if raw != written && raw != written+"/" {
			t.Fatalf("SplitBackendURL(%q) = %+v, which is written %q", raw, u, written)
		}
		if u.Scheme == "" {
			u.Scheme = DefaultScheme(SSLModeOff)
		}
		if u.Port == 0 {
			u.Port = DefaultPort(u.Scheme)
		}
		b := storage.Backend{PoolName: "p", Host: u.Host, Port: u.Port, Scheme: u.Scheme, Weight: DefaultWeight}
		if err := ValidateBackend(&b); err != nil {
			t.Fatalf("SplitBackendURL(%q) = %+v, which ValidateBackend rejects: %v", raw, u, err)
		}
		if b.Host != u.Host || b.Port != u.Port || b.Scheme != u.Scheme {
			t.Fatalf("SplitBackendURL(%q) = %+v, which ValidateBackend changed: %q %d %q", raw, u, b.Host, b.Port, b.Scheme)
		}
	})
}

func expectFieldError(t *testing.T, err error, field, message string) {
	t.Helper()
	if err == nil {
		t.Fatalf("accepted; want an error on %s", field)
	}
	list, ok := fielderr.From(err)
	if !ok {
		t.Fatalf("error %v is not a *fielderr.Error", err)
	}
	for _, fe := range list {
		if fe.Field == field {
			if !strings.Contains(fe.Message, message) {
				t.Fatalf("%s: message %q does not contain %q", field, fe.Message, message)
			}
			return
		}
	}
	t.Fatalf("no error on %s; got %v", field, list)
}

// ValidatePool checks a zero value as the value it is: the admin API fills
// defaults only for fields a request left out, so a zero that reaches
// ValidatePool was sent and must be refused, never replaced.
func TestValidatePoolRefusesInsteadOfReplacing(t *testing.T) {
	base := func(mut func(p *storage.Pool)) storage.Pool {
		p := DefaultPool()
		p.Name = "web"
		mut(&p)
		return p
	}
	tests := []struct {
		name, field, message string
		pool                 storage.Pool
	}{
		{"upper-case name", "name", `send "p11"`, base(func(p *storage.Pool) { p.Name = "P11" })},
		{"interval 0", "health_check_interval", "between", base(func(p *storage.Pool) { p.HealthCheckInterval = 0 })},
		{"rise 0", "health_check.rise", "between 1 and 10", base(func(p *storage.Pool) { p.HealthCheck.Rise = 0 })},
		{"fall 0", "health_check.fall", "between 1 and 10", base(func(p *storage.Pool) { p.HealthCheck.Fall = 0 })},
		{"cooldown 0", "health_check.cooldown", "between", base(func(p *storage.Pool) { p.HealthCheck.Cooldown = 0 })},
		{"timeout 0", "health_check.timeout", "at least", base(func(p *storage.Pool) { p.HealthCheck.Timeout = 0 })},
		{"empty type", "health_check.type", "unknown type", base(func(p *storage.Pool) { p.HealthCheck.Type = "" })},
		{"empty algorithm", "algorithm", "unknown algorithm", base(func(p *storage.Pool) { p.Algorithm = "" })},
		{"consistent hash without key", "hash_on", "needs a key", base(func(p *storage.Pool) { p.Algorithm = AlgorithmConsistentHash })},
		{"full_strict without verification", "validate_backend_cert", "always verifies", base(func(p *storage.Pool) {
			p.SSLMode, p.SSLDomain, p.ValidateBackendCert = SSLModeFullStrict, "a.example.com", false
		})},
		{"full with verification", "validate_backend_cert", "use ssl_mode full_strict", base(func(p *storage.Pool) {
			p.SSLMode, p.SSLDomain, p.ValidateBackendCert = SSLModeFull, "a.example.com", true
		})},
		{"cert on an off pool", "ssl_cert_id", "ssl_mode off", base(func(p *storage.Pool) { p.SSLCertID = "c1" })},
		{"cert on a passthrough pool", "ssl_cert_id", "never terminates", base(func(p *storage.Pool) {
			p.SSLMode, p.SSLDomain, p.SSLCertID = SSLModePassthrough, "a.example.com", "c1"
		})},
		{"TLS pool without host", "ssl_domain", "needs ssl_domain or hosts", base(func(p *storage.Pool) { p.SSLMode = SSLModeFlexible })},
		{"repeated host", "hosts", "repeats hosts[0]", base(func(p *storage.Pool) { p.Hosts = []string{"a.example.com", "A.example.com"} })},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := tt.pool
			expectFieldError(t, ValidatePool(&p), tt.field, tt.message)
		})
	}
	ok := base(func(p *storage.Pool) { p.HealthCheck.MaxFails = 0 })
	if err := ValidatePool(&ok); err != nil || ok.HealthCheck.MaxFails != 0 {
		t.Errorf("max_fails 0 (passive checks off, as nginx) = %v, stored %d", err, ok.HealthCheck.MaxFails)
	}
	def := base(func(p *storage.Pool) { p.SSLMode, p.Default = SSLModePassthrough, true })
	if err := ValidatePool(&def); err != nil {
		t.Errorf("a default passthrough pool without hosts catches every SNI name: %v", err)
	}
}

func TestValidateBackendRefusesZeros(t *testing.T) {
	good := storage.Backend{PoolName: "web", Host: "10.0.0.1", Port: 8080, Scheme: "http", Weight: 1}
	for _, tt := range []struct {
		name, field, message string
		mut                  func(b *storage.Backend)
	}{
		{"port 0", "port", "between 1 and 65535", func(b *storage.Backend) { b.Port = 0 }},
		{"weight 0", "weight", "draining", func(b *storage.Backend) { b.Weight = 0 }},
		{"empty scheme", "scheme", "http or https", func(b *storage.Backend) { b.Scheme = "" }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b := good
			tt.mut(&b)
			expectFieldError(t, ValidateBackend(&b), tt.field, tt.message)
		})
	}
}

func TestBackendMismatch(t *testing.T) {
	pool := func(mode, check string) *storage.Pool {
		return &storage.Pool{Name: "p", SSLMode: mode, HealthCheck: storage.HealthCheck{Type: check}}
	}
	be := func(scheme string) *storage.Backend {
		return &storage.Backend{Host: "10.0.0.1", Port: 8443, Scheme: scheme}
	}
	for _, tt := range []struct {
		name  string
		pool  *storage.Pool
		be    *storage.Backend
		field string
	}{
		{"http backend on passthrough", pool(SSLModePassthrough, "tcp"), be("http"), "ssl_mode"},
		{"http backend in full", pool(SSLModeFull, "tcp"), be("http"), "ssl_mode"},
		{"http backend in full_strict", pool(SSLModeFullStrict, "tcp"), be("http"), "ssl_mode"},
		{"http check on https backend", pool(SSLModeOff, "http"), be("https"), "health_check.type"},
		{"https check on https backend", pool(SSLModeFull, "https"), be("https"), ""},
		{"http backend flexible", pool(SSLModeFlexible, "http"), be("http"), ""},
		// An https:// backend is TLS to that backend whatever the mode.
		{"https backend flexible", pool(SSLModeFlexible, "tcp"), be("https"), ""},
		{"https backend off", pool(SSLModeOff, "https"), be("https"), ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			field, msg := BackendMismatch(tt.pool, tt.be)
			if field != tt.field {
				t.Errorf("field %q (%s), want %q", field, msg, tt.field)
			}
		})
	}
}

// checkStoredFormOnly checks a validator against one field spelt two ways:
// sent is refused on field alone with msg and left unchanged, and valid
// (the spelling msg names) is accepted unchanged.
func checkStoredFormOnly[T any](t *testing.T, sent, valid T, clone func(T) T, validate func(*T) error, field, msg string) {
	t.Helper()
	before := clone(sent)
	err := validate(&sent)
	expectFieldError(t, err, field, msg)
	list, _ := fielderr.From(err)
	for _, fe := range list {
		if fe.Field != field {
			t.Errorf("refused also on %s: %s", fe.Field, fe.Message)
		}
	}
	if !reflect.DeepEqual(sent, before) {
		t.Errorf("the validator changed what it refused:\n sent %+v\n  now %+v", before, sent)
	}
	before = clone(valid)
	if err := validate(&valid); err != nil {
		t.Fatalf("the spelling the message names is refused: %v", err)
	}
	if !reflect.DeepEqual(valid, before) {
		t.Errorf("the validator changed what it accepted:\n sent %+v\n  now %+v", before, valid)
	}
}
