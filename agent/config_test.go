package agent

import (
	"bytes"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/singularity-ng/singularity-edge/certs"
)

func TestApplyEnvironment(t *testing.T) {
	env := map[string]string{
		"EDGE_ADMIN_TOKEN":    "tok",
		"EDGE_ENCRYPTION_KEY": "key",
		"EDGE_COOKIE_KEY":     "cookie",
		"FLY_MACHINE_ID":      "148e21ea7e3289",
		"FLY_REGION":          "syd",
		"FLY_PRIVATE_IP":      "fdaa:0:1:a7b:1::2",
	}
	cfg := DefaultConfig()
	cfg.ApplyEnvironment(func(k string) string { return env[k] })
	if cfg.AdminToken != "tok" || cfg.EncryptionKey != "key" || cfg.CookieKey != "cookie" {
		t.Errorf("secrets not taken from the environment: %+v", cfg)
	}
	if cfg.NodeName != "148e21ea7e3289" || cfg.Region != "syd" {
		t.Errorf("node %q region %q", cfg.NodeName, cfg.Region)
	}
	if cfg.AdminAddr != "[fdaa:0:1:a7b:1::2]:4000" {
		t.Errorf("admin address on Fly = %q, want the 6PN address", cfg.AdminAddr)
	}

	local := DefaultConfig()
	local.ApplyEnvironment(func(string) string { return "" })
	if local.AdminAddr != "127.0.0.1:4000" || local.Region != "local" {
		t.Errorf("defaults changed without FLY_* variables: %+v", local)
	}
}

// --backend-ca-file is read by Validate: a missing file or one without a
// certificate stops the agent with a usage error before its store opens
// (it was found only after the store was open, and exited with code 1).
func TestConfigValidateBackendCAFile(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "passwd")
	if err := os.WriteFile(notPEM, []byte("root:x:0:0::/root:/bin/sh\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		file, want string
	}{
		{filepath.Join(dir, "missing.pem"), "--backend-ca-file"},
		{notPEM, "no PEM certificate"},
		{dir, "--backend-ca-file"},
	} {
		cfg := DefaultConfig()
		cfg.BackendCAFile = tc.file
		if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("--backend-ca-file %s: %v, want an error containing %q", tc.file, err, tc.want)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	// The exec DNS provider builds from this variable alone.
	t.Setenv("EXEC_PATH", "/bin/true")
	tests := []struct {
		name    string
		mutate  func(*Config)
		wantErr string
	}{
		{"defaults", func(*Config) {}, ""},
		{"https only", func(c *Config) { c.HTTPAddr = "" }, ""},
		{"empty data dir", func(c *Config) { c.DataDir = " " }, "--data-dir"},
		{"no listener", func(c *Config) { c.HTTPAddr, c.HTTPSAddr = "", "" }, "at least one"},
		{"bad http addr", func(c *Config) { c.HTTPAddr = "8080" }, "--http-addr"},
		{"bad admin addr", func(c *Config) { c.AdminAddr = "localhost" }, "--admin-addr"},
		{"empty admin addr", func(c *Config) { c.AdminAddr = "" }, "--admin-addr"},
		// Refused by Validate (usage error, exit code 2) rather than later by
		// New (exit code 1).
		{"exposed admin without token", func(c *Config) { c.AdminAddr = "0.0.0.0:4000" }, "--admin-addr: admin API on a non-loopback address without a token"},
		{"exposed admin with token", func(c *Config) { c.AdminAddr, c.AdminToken = "0.0.0.0:4000", "t0ken" }, ""},
		{"malformed encryption key", func(c *Config) { c.EncryptionKey = "short" }, "EDGE_ENCRYPTION_KEY"},
		{"encryption key", func(c *Config) { c.EncryptionKey = strings.Repeat("ab", 32) }, ""},
		{"short cookie key", func(c *Config) { c.CookieKey = "short" }, "EDGE_COOKIE_KEY must be at least 16 characters"},
		{"tiny cache", func(c *Config) { c.BlockCacheSize = 1024 }, "--block-cache-size"},
		{"negative row cache", func(c *Config) { c.RowCacheSize = -1 }, "--row-cache-size"},
		{"tunnel event loops below -1", func(c *Config) { c.TunnelEventLoops = -2 }, "--tunnel-event-loops"},
		{"too many tunnel event loops", func(c *Config) { c.TunnelEventLoops = 1025 }, "--tunnel-event-loops"},
		{"zero drain", func(c *Config) { c.ShutdownTimeout = 0 }, "--shutdown-timeout"},
		{"bad log level", func(c *Config) { c.LogLevel = "loud" }, "--log-level"},
		{"empty node name", func(c *Config) { c.NodeName = "" }, "--node-name must not be empty"},
		{"blank node name", func(c *Config) { c.NodeName = "  " }, "--node-name must not be empty"},
		{"fly machine id", func(c *Config) { c.NodeName = "148e21ea7e3289" }, ""},
		{"longest node name", func(c *Config) { c.NodeName = strings.Repeat("n", MaxNodeNameLen) }, ""},
		{"node name too long", func(c *Config) { c.NodeName = strings.Repeat("n", MaxNodeNameLen+1) }, "--node-name is 129 bytes long: at most 128"},
		{"node name with a newline", func(c *Config) { c.NodeName = "edge-1\nlevel=error" }, `--node-name "edge-1\nlevel=error"`},
		{"node name not UTF-8", func(c *Config) { c.NodeName = "edge-\xff" }, "--node-name"},
		{"fly region", func(c *Config) { c.Region = "iad" }, ""},
		{"empty region", func(c *Config) { c.Region = "" }, `--region ""`},
		{"upper-case region", func(c *Config) { c.Region = "AMS" }, `--region "AMS"`},
		{"region with a space", func(c *Config) { c.Region = "us east" }, `--region "us east"`},
		{"region too long", func(c *Config) { c.Region = "europe-west1" }, `--region "europe-west1"`},
		{"access log sampled", func(c *Config) { c.AccessLog = "sample:100" }, ""},
		{"access log on", func(c *Config) { c.AccessLog = "on" }, ""},
		{"access log unknown", func(c *Config) { c.AccessLog = "verbose" }, `--access-log "verbose"`},
		{"access log sample 0", func(c *Config) { c.AccessLog = "sample:0" }, `--access-log "sample:0"`},
		{"no feed", func(c *Config) { c.FeedRetention = 0 }, "--feed-retention"},
		{"proxy protocol from a list", func(c *Config) { c.ProxyProtocolFrom = "10.0.0.0/8, fd00::1" }, ""},
		{"proxy protocol from nobody", func(c *Config) { c.ProxyProtocolFrom = "none" }, ""},
		{"proxy protocol from a name", func(c *Config) { c.ProxyProtocolFrom = "haproxy.internal" }, "--proxy-protocol-from"},
		{"pprof on loopback", func(c *Config) { c.PprofAddr = "127.0.0.1:6060" }, ""},
		{"pprof on a public address", func(c *Config) { c.PprofAddr = "0.0.0.0:6060" }, "--pprof-addr"},
		{"pprof without port", func(c *Config) { c.PprofAddr = "127.0.0.1" }, "--pprof-addr"},
		{"zero check budget", func(c *Config) { c.HealthCheckBudget = 0 }, "--health-check-budget"},
		{"NaN check budget", func(c *Config) { c.HealthCheckBudget = math.NaN() }, "--health-check-budget NaN"},
		{"infinite check budget", func(c *Config) { c.HealthCheckBudget = math.Inf(1) }, "--health-check-budget +Inf"},
		{"fractional check budget", func(c *Config) { c.HealthCheckBudget = 0.5 }, ""},
		{"zero check concurrency", func(c *Config) { c.HealthCheckConcurrency = 0 }, "--health-check-concurrency"},
		{"zero backend series", func(c *Config) { c.MetricsMaxBackends = 0 }, "--metrics-max-backends"},
		{"memory limit", func(c *Config) { c.MemoryLimit = 1 << 30 }, ""},
		{"tiny memory limit", func(c *Config) { c.MemoryLimit = 1 << 20 }, "--memory-limit"},
		{"acme limit off", func(c *Config) { c.ACMELimits.OrdersPerAccount = 0 }, ""},
		{"acme negative orders", func(c *Config) { c.ACMELimits.OrdersPerAccount = -1 }, "--acme-orders-per-account"},
		{"acme negative certs", func(c *Config) { c.ACMELimits.CertsPerRegisteredDomain = -5 }, "--acme-certs-per-domain"},
		{"acme negative duplicates", func(c *Config) { c.ACMELimits.DuplicateCerts = -1 }, "--acme-duplicate-certs"},
		{"acme negative failures", func(c *Config) { c.ACMELimits.FailedValidations = -1 }, "--acme-failed-validations"},
		{"acme negative pause", func(c *Config) { c.ACMELimits.PauseAfterFailures = -1 }, "--acme-pause-after-failures"},
		{"acme zero orders window", func(c *Config) { c.ACMELimits.OrdersWindow = 0 }, "--acme-orders-window"},
		{"acme negative certs window", func(c *Config) { c.ACMELimits.CertsWindow = -time.Hour }, "--acme-certs-window"},
		{"acme zero duplicate window", func(c *Config) { c.ACMELimits.DuplicateWindow = 0 }, "--acme-duplicate-window"},
		{"acme zero failed window", func(c *Config) { c.ACMELimits.FailedWindow = 0 }, "--acme-failed-window"},
		{"acme zero pause window", func(c *Config) { c.ACMELimits.PauseWindow = 0 }, "--acme-pause-window"},
		{"acme short lease", func(c *Config) { c.ACMELeaseTTL = time.Second }, "--acme-lease-ttl"},
		{"acme zero present timeout", func(c *Config) { c.ACMEPresentTimeout = 0 }, "--acme-present-timeout"},
		{"acme fast renew passes", func(c *Config) { c.ACMERenewInterval = time.Millisecond }, "--acme-renew-interval"},
		{"acme fallback directories", func(c *Config) {
			c.ACMEFallbackDirectories = []string{"https://acme.zerossl.example/directory", "https://ca.example/dir"}
		}, ""},
		{"acme fallback http", func(c *Config) { c.ACMEFallbackDirectories = []string{"http://ca.example/dir"} }, "--acme-fallback-directory"},
		{"acme fallback no host", func(c *Config) { c.ACMEFallbackDirectories = []string{"https:///dir"} }, "--acme-fallback-directory"},
		{"acme fallback empty", func(c *Config) { c.ACMEFallbackDirectories = []string{""} }, "--acme-fallback-directory"},
		{"acme fallback is the primary", func(c *Config) { c.ACMEFallbackDirectories = []string{c.ACMEDirectory} }, "the same as --acme-directory"},
		{"acme fallback twice", func(c *Config) {
			c.ACMEFallbackDirectories = []string{"https://ca.example/dir", "https://ca.example/dir"}
		}, "given twice"},
		{"acme fallback without primary", func(c *Config) {
			c.ACMEDirectory = ""
			c.ACMEFallbackDirectories = []string{"https://ca.example/dir"}
		}, "--acme-fallback-directory needs --acme-directory"},
		{"acme http-01 only", func(c *Config) { c.ACMEChallenges = []string{"http-01"} }, ""},
		{"acme tls-alpn-01 and http-01", func(c *Config) { c.ACMEChallenges = []string{"tls-alpn-01", "http-01"} }, ""},
		{"acme no challenges", func(c *Config) { c.ACMEChallenges = []string{} }, "--acme-challenges: want at least one"},
		{"acme unknown challenge", func(c *Config) { c.ACMEChallenges = []string{"http-01", "tls-sni-01"} }, `--acme-challenges "tls-sni-01"`},
		{"acme challenge with a space", func(c *Config) { c.ACMEChallenges = []string{"http-01", " tls-alpn-01"} }, `--acme-challenges " tls-alpn-01"`},
		{"acme challenge twice", func(c *Config) { c.ACMEChallenges = []string{"http-01", "http-01"} }, `--acme-challenges "http-01": given twice`},
		{"acme dns-01 without provider", func(c *Config) { c.ACMEChallenges = []string{"dns-01"} }, "--acme-challenges dns-01 needs --acme-dns-provider"},
		{"acme dns-01 with provider", func(c *Config) {
			c.ACMEDNSProvider, c.ACMEChallenges = "exec", []string{"dns-01", "http-01"}
		}, ""},
		{"acme off ignores its limits", func(c *Config) { c.ACMEDirectory = ""; c.ACMELimits.OrdersPerAccount = -1 }, ""},
		{"body rate off", func(c *Config) { c.MinBodyRate = 0 }, ""},
		{"negative body rate", func(c *Config) { c.MinBodyRate = -1 }, "--min-body-rate"},
		{"zero body grace", func(c *Config) { c.BodyRateGrace = 0 }, "--body-rate-grace"},
		{"zero exchanges per client", func(c *Config) { c.MaxBackendConnsPerClient = 0 }, "--max-backend-conns-per-client"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfig()
			tc.mutate(&cfg)
			err := cfg.Validate()
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("error %v, want one naming %s", err, tc.wantErr)
			}
		})
	}
}

// The issuers offer --acme-challenges as given; without it, today's pair
// plus dns-01 when a DNS provider is configured.
func TestACMEChallengesAsGiven(t *testing.T) {
	tests := []struct {
		name     string
		provider string
		given    []string
		want     string
	}{
		{"default", "", nil, "http-01,tls-alpn-01"},
		{"default with a DNS provider", "exec", nil, "http-01,tls-alpn-01,dns-01"},
		{"http-01 only", "", []string{"http-01"}, "http-01"},
		{"http-01 only with a DNS provider", "exec", []string{"http-01"}, "http-01"},
		{"order kept", "exec", []string{"dns-01", "tls-alpn-01"}, "dns-01,tls-alpn-01"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.ACMEDNSProvider, cfg.ACMEChallenges = tc.provider, tc.given
			if got := strings.Join(cfg.acmeChallenges(), ","); got != tc.want {
				t.Fatalf("challenges %s, want %s", got, tc.want)
			}
		})
	}
}

func TestDeriveCookieKey(t *testing.T) {
	enc := bytes.Repeat([]byte{7}, 32)
	a, err := deriveCookieKey("", enc)
	if err != nil || len(a) != 32 {
		t.Fatalf("derived key %x, %v", a, err)
	}
	b, _ := deriveCookieKey("", enc)
	if !bytes.Equal(a, b) {
		t.Fatal("two agents with the same encryption key derive different cookie keys")
	}
	if bytes.Equal(a, enc) {
		t.Fatal("the cookie key is the encryption key itself")
	}
	if k, err := deriveCookieKey("0123456789abcdef", enc); err != nil || string(k) != "0123456789abcdef" {
		t.Fatalf("explicit key ignored: %q %v", k, err)
	}
	if _, err := deriveCookieKey("short", nil); err == nil {
		t.Fatal("a short EDGE_COOKIE_KEY was accepted")
	}
	r1, _ := deriveCookieKey("", nil)
	r2, _ := deriveCookieKey("", nil)
	if len(r1) != 32 || bytes.Equal(r1, r2) {
		t.Fatal("random cookie keys are not random")
	}
}

func TestVersionString(t *testing.T) {
	if v := VersionString(); !strings.HasPrefix(v, Version+" (commit "+Commit+", go") {
		t.Errorf("VersionString() = %q", v)
	}
}

func TestParseTrustedProxies(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string
		nilv bool
		bad  bool
	}{
		{"", "", true, false},
		{"default", "", true, false},
		{"none", "[]", false, false},
		{"10.0.0.0/8, 192.0.2.7", "[10.0.0.0/8 192.0.2.7/32]", false, false},
		{"fdaa::/16", "[fdaa::/16]", false, false},
		{"10.0.0.0/33", "", false, true},
		{"proxy.example", "", false, true},
	} {
		got, err := ParseTrustedProxies(tc.in)
		if (err != nil) != tc.bad {
			t.Errorf("%q: err %v", tc.in, err)
			continue
		}
		if tc.bad {
			continue
		}
		if (got == nil) != tc.nilv || (!tc.nilv && fmt.Sprint(got) != tc.want) {
			t.Errorf("%q: got %v (nil=%v)", tc.in, got, got == nil)
		}
	}
}

// The budget limits and ACME durations reach the manager exactly as
// configured: a 0 count stays 0 (the limit off), never the default.
func TestACMEManagerConfigAsGiven(t *testing.T) {
	cfg := DefaultConfig()
	if cfg.ACMELimits != certs.DefaultBudgetLimits() {
		t.Fatalf("default limits %+v, want the budget's defaults", cfg.ACMELimits)
	}
	cfg.ACMELimits = certs.BudgetLimits{
		OrdersPerAccount: 0, OrdersWindow: 2 * time.Hour,
		CertsPerRegisteredDomain: 7, CertsWindow: 48 * time.Hour,
		DuplicateCerts: 1, DuplicateWindow: time.Hour,
		FailedValidations: 2, FailedWindow: 10 * time.Minute,
		PauseAfterFailures: 3, PauseWindow: 24 * time.Hour,
	}
	cfg.ACMELeaseTTL, cfg.ACMERenewInterval = 90*time.Second, 42*time.Second
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	m := cfg.managerConfig(zap.NewNop(), nil)
	if m.Limits != cfg.ACMELimits || m.LeaseTTL != 90*time.Second || m.Interval != 42*time.Second {
		t.Fatalf("manager config %+v, want the flags as given", m)
	}
}
