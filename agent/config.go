package agent

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/singularity-ng/singularity-edge/admin"
	"github.com/singularity-ng/singularity-edge/certs"
	"github.com/singularity-ng/singularity-edge/discovery"
	"github.com/singularity-ng/singularity-edge/pools"
	"github.com/singularity-ng/singularity-edge/proxy"
	"github.com/singularity-ng/singularity-edge/storage"
)

// Config is everything the agent needs to start. Flags fill it, each with an
// EDGE_* environment twin; on Fly.io the FLY_* variables supply defaults.
type Config struct {
	DataDir   string
	HTTPAddr  string // public HTTP listener ("" = off)
	HTTPSAddr string // public HTTPS listener ("" = off)
	AdminAddr string // admin API, dashboard and /metrics

	// HealthAddr serves an unauthenticated GET /healthz that says only
	// "ready" or "not ready" ("" = off). Fly's health checker dials the
	// Machine's private IPv4 address, which cannot reach an admin API bound
	// to the 6PN address, so on Fly this listener answers the checks instead
	// of opening the admin API.
	HealthAddr string

	NodeName string // human name of this node (FLY_MACHINE_ID on Fly)
	Region   string // FLY_REGION on Fly

	// Fly is what the Fly.io runtime told this process; all empty elsewhere.
	Fly FlyEnvironment

	// Secrets come from the environment only, never from flags, so they do
	// not show up in `ps` or shell history.
	AdminToken    string // EDGE_ADMIN_TOKEN
	EncryptionKey string // EDGE_ENCRYPTION_KEY: 64 hex chars or base64 of 32 bytes
	CookieKey     string // EDGE_COOKIE_KEY: signs sticky-session cookies

	ProxyProtocol   bool   // accept PROXY protocol v1/v2 on the public listeners
	AllowPoolHeader bool   // honour the X-Pool request header
	AccessLog       string // "on", "off" or "sample:N"
	LogLevel        string // debug, info, warn, error
	MetricsPublic   bool   // serve /metrics without the token on non-loopback admin addresses
	// PprofAddr serves net/http/pprof on a loopback address ("" = off), for
	// profiling an agent under load without exposing it.
	PprofAddr string

	// HealthCheckBudget caps the active health checks this agent starts
	// per second, all pools together; HealthCheckConcurrency the checks
	// in flight.
	HealthCheckBudget      float64
	HealthCheckConcurrency int
	// MetricsBackendPools lists (comma-separated) the pools whose backends
	// get series of their own ("*": all); MetricsMaxBackends caps them.
	MetricsBackendPools string
	MetricsMaxBackends  int

	// MemoryLimit is a soft limit on the Go heap and runtime, in bytes
	// (runtime/debug.SetMemoryLimit; 0 = none, GOMEMLIMIT still applies):
	// near it the collector runs more often instead of letting the heap
	// grow to twice its live size. RocksDB's block cache is outside it.
	MemoryLimit int64
	// GCHeadroom bounds, in bytes, how far the Go heap may grow past its
	// live size before the next collection (the runtime's GOGC pacing
	// lets it double): large heaps, such as a million backends, rest near
	// their live size. 0 = the runtime's pacing; GOGC in the environment
	// also leaves the pacing alone.
	GCHeadroom int64
	// TunnelEventLoops is the number of event-loop threads relaying
	// established passthrough connections (proxy.Config.TunnelEventLoops):
	// 0 = one per GOMAXPROCS, -1 = none (a goroutine per direction, the
	// relay of builds without cgo).
	TunnelEventLoops int
	// PublicHTTPSPort goes into HTTP->HTTPS redirects: 0 = the HTTPS
	// listener's port; 443 on Fly.io, whose proxy maps 443 to 8443.
	PublicHTTPSPort int
	// TrustedProxies are CIDRs whose X-Forwarded-For/Forwarded/X-Real-IP are kept;
	// "default" = Fly's proxy range without --proxy-protocol, none with
	// it; "none" trusts nobody.
	TrustedProxies string
	// ProxyProtocolFrom are CIDRs whose PROXY headers name the client
	// (with --proxy-protocol); a header from any other peer is checked but
	// its addresses are ignored. "default" = Fly's proxy range and
	// loopback; "none" believes nobody.
	ProxyProtocolFrom string
	// BackendCAFile is a PEM bundle added to the system roots to verify
	// backend certificates (pools may carry their own bundle instead).
	BackendCAFile string
	// MinBodyRate (bytes/s, 0 = off) and BodyRateGrace bound how slowly a
	// client may send a request body or read a response body;
	// MaxBackendConnsPerClient bounds the backend exchanges in flight per
	// client address (see proxy.Config).
	MinBodyRate              int
	BodyRateGrace            time.Duration
	MaxBackendConnsPerClient int

	BlockCacheSize  int64         // RocksDB block cache, bytes
	RowCacheSize    int64         // decoded rows above RocksDB, bytes; 0 turns it off
	ShutdownTimeout time.Duration // how long in-flight requests may take to drain

	// FeedRetention is how many change-feed entries are kept.
	FeedRetention uint64

	// ACME (see acme.go): directory ("" turns ACME off), the CA bundle
	// trusted for its TLS, the contact email, a lego DNS provider for
	// dns-01 configured from its own environment variables, and External
	// Account Binding from EDGE_ACME_EAB_KID and EDGE_ACME_EAB_HMAC.
	ACMEDirectory   string
	ACMECABundle    string
	ACMEEmail       string
	ACMEDNSProvider string
	ACMEEABKeyID    string
	ACMEEABHMACKey  string
	// ACMEFallbackDirectories are further ACME directories
	// (--acme-fallback-directory, EDGE_ACME_FALLBACK_DIRECTORIES), tried
	// in order when the ones before fail; same email and CA bundle, no EAB.
	ACMEFallbackDirectories []string
	// ACMEChallenges are the challenge types offered to the CA
	// (--acme-challenges, EDGE_ACME_CHALLENGES), used as given; nil means
	// http-01 and tls-alpn-01, plus dns-01 with ACMEDNSProvider. Fewer
	// types fit a :443 that is passthrough-only or behind another TLS
	// terminator (no tls-alpn-01 there).
	ACMEChallenges []string
	// ACMELimits is the cluster-wide rate-limit budget (--acme-orders-*,
	// --acme-certs-*, --acme-duplicate-*, --acme-failed-*, --acme-pause-*),
	// used as given: a count of 0 turns that limit off.
	ACMELimits certs.BudgetLimits
	// ACMELeaseTTL is the renewal lease's term; the owner extends it
	// every third of it while an order runs.
	ACMELeaseTTL time.Duration
	// ACMEPresentTimeout bounds the wait for every alive member to hold
	// a challenge token before the CA is told.
	ACMEPresentTimeout time.Duration
	// ACMERenewInterval is the time between renewal scheduler passes.
	ACMERenewInterval time.Duration

	// On-demand TLS (see ondemand.go): how long a handshake waits for a
	// certificate obtained for it, how long a refused name stays refused,
	// and the time limit of one call to a pool's ask URL.
	OnDemandWait       time.Duration
	OnDemandRefusalTTL time.Duration
	OnDemandAskTimeout time.Duration

	// Cluster membership (discovery). Gossip is off when GossipAddr is
	// empty: the agent is then a cluster of one.
	App             string   // FLY_APP_NAME: names the gossip label and the DNS zone
	GossipAddr      string   // memberlist bind host:port (FLY_PRIVATE_IP:7946 on Fly)
	ReplicationAddr string   // replication streams; "" = gossip port + 1
	Join            []string // static seeds, IP or IP:port
	GossipPreset    string   // "fly" or "local" timings
	DNSServer       string   // Fly internal DNS ([fdaa::3]:53 on Fly; "" = no DNS source)
	MachinesAPIURL  string   // Machines API base URL (tests point it at a fixture)
	GossipKey       string   // EDGE_GOSSIP_KEY
	GossipKeys      string   // EDGE_GOSSIP_KEYS: extra accepted keys, comma-separated
	FlyAPIToken     string   // FLY_API_TOKEN: enables the Machines API source
	MachineID       string   // FLY_MACHINE_ID
}

// DefaultConfig returns the configuration of `make run`: data in ./data,
// proxy on :8080 and :8443, admin API on loopback.
func DefaultConfig() Config {
	host, _ := os.Hostname()
	pdef := proxy.DefaultConfig()
	return Config{
		DataDir:        "./data",
		HTTPAddr:       ":8080",
		HTTPSAddr:      ":8443",
		AdminAddr:      "127.0.0.1:4000",
		NodeName:       host,
		Region:         "local",
		AccessLog:      "off",
		LogLevel:       "info",
		BlockCacheSize: 64 << 20,
		RowCacheSize:   storage.DefaultConfig().RowCacheSize,

		HealthCheckBudget:      1000,
		GCHeadroom:             128 << 20,
		HealthCheckConcurrency: 256,
		MetricsMaxBackends:     10_000,
		ShutdownTimeout:        15 * time.Second,

		FeedRetention: 100_000,

		MinBodyRate:              pdef.MinBodyRate,
		BodyRateGrace:            pdef.BodyRateGrace,
		MaxBackendConnsPerClient: pdef.MaxBackendConnsPerClientAddr,

		ACMEDirectory:      certs.LetsEncryptProduction,
		ACMELimits:         certs.DefaultBudgetLimits(),
		ACMELeaseTTL:       certs.DefaultManagerConfig().LeaseTTL,
		ACMEPresentTimeout: certs.DefaultACMEConfig().PresentTimeout,
		ACMERenewInterval:  certs.DefaultManagerConfig().Interval,

		OnDemandWait:       certs.DefaultOnDemandConfig().Wait,
		OnDemandRefusalTTL: certs.DefaultOnDemandConfig().RefusalTTL,
		OnDemandAskTimeout: certs.DefaultOnDemandConfig().AskTimeout,
		App:                "singularity-edge",
		GossipPreset:       "local",
	}
}

// ApplyEnvironment fills the fields that come from the environment: secrets,
// and the Fly.io defaults (which explicit flags override later).
func (c *Config) ApplyEnvironment(getenv func(string) string) {
	c.AdminToken = getenv("EDGE_ADMIN_TOKEN")
	c.EncryptionKey = getenv("EDGE_ENCRYPTION_KEY")
	c.CookieKey = getenv("EDGE_COOKIE_KEY")
	c.ACMEEABKeyID, c.ACMEEABHMACKey = getenv("EDGE_ACME_EAB_KID"), getenv("EDGE_ACME_EAB_HMAC")
	c.Fly = flyEnvironment(getenv)
	if v := c.Fly.MachineID; v != "" {
		c.NodeName = v
	}
	if v := c.Fly.Region; v != "" {
		c.Region = v
	}
	if v := c.Fly.PrivateIP; v != "" {
		// On Fly the admin API listens on the private 6PN address, reachable
		// by the other Machines of the app and `fly proxy`, never publicly.
		c.AdminAddr = net.JoinHostPort(v, strconv.Itoa(FlyAdminPort))
	}
	if c.Fly.OnFly() {
		// The proxy keeps its all-interfaces defaults (:8080, :8443): Fly's
		// proxy reaches services through the Machine's private IPv4 address.
		c.DataDir = FlyDataDir
		c.HealthAddr = net.JoinHostPort("0.0.0.0", strconv.Itoa(FlyHealthPort))
		// Behind Fly's proxy clients reach :443 whatever the listener's port.
		c.PublicHTTPSPort = 443
	}
	c.applyClusterEnvironment(getenv)
}

// applyClusterEnvironment fills the cluster settings from the environment:
// the gossip secrets, and on Fly the gossip address on the 6PN address, the
// app's DNS zone and the WAN timings.
func (c *Config) applyClusterEnvironment(getenv func(string) string) {
	c.GossipKey = getenv("EDGE_GOSSIP_KEY")
	c.GossipKeys = getenv("EDGE_GOSSIP_KEYS")
	c.FlyAPIToken = getenv("FLY_API_TOKEN")
	c.MachineID = getenv("FLY_MACHINE_ID")
	if v := getenv("FLY_APP_NAME"); v != "" {
		c.App = v
		c.GossipPreset = "fly"
		c.DNSServer = "[fdaa::3]:53"
	}
	if v := getenv("FLY_PRIVATE_IP"); v != "" {
		c.GossipAddr = net.JoinHostPort(v, "7946")
	}
}

// checkDialable refuses a listen address that peers could not dial: the
// replication address is both bound and advertised to the other members,
// and an empty or unspecified host (":7947", "0.0.0.0:7947", "[::]:7947")
// would bind every interface, the public one included, and be
// advertised as an address nobody can reach.
func checkDialable(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if ip, perr := netip.ParseAddr(host); host == "" || (perr == nil && ip.IsUnspecified()) {
		return errors.New("peers dial this address, so it must name this node's private address (FLY_PRIVATE_IP), not every interface")
	}
	return nil
}

// replicationAddr is --replication-addr, or the gossip host at the gossip
// port + 1.
func (c *Config) replicationAddr() (string, error) {
	if c.ReplicationAddr != "" {
		return c.ReplicationAddr, nil
	}
	host, port, err := net.SplitHostPort(c.GossipAddr)
	if err != nil {
		return "", err
	}
	p, err := strconv.Atoi(port)
	if err != nil || p <= 0 || p >= 65535 {
		return "", fmt.Errorf("--gossip-addr port %q", port)
	}
	return net.JoinHostPort(host, strconv.Itoa(p+1)), nil
}

func (c *Config) validateCluster() []error {
	if c.GossipAddr == "" {
		if len(c.Join) > 0 {
			return []error{errors.New("--join needs --gossip-addr")}
		}
		return nil
	}
	var errs []error
	if _, _, err := net.SplitHostPort(c.GossipAddr); err != nil {
		errs = append(errs, fmt.Errorf("--gossip-addr %q: %w", c.GossipAddr, err))
	}
	if addr, err := c.replicationAddr(); err != nil {
		errs = append(errs, fmt.Errorf("--replication-addr: %w", err))
	} else if err := checkDialable(addr); err != nil {
		errs = append(errs, fmt.Errorf("--replication-addr %q: %w", addr, err))
	}
	if c.GossipPreset != "fly" && c.GossipPreset != "local" {
		errs = append(errs, fmt.Errorf("--gossip-preset %q: want fly or local", c.GossipPreset))
	}
	if strings.TrimSpace(c.App) == "" {
		errs = append(errs, errors.New("--app must not be empty with gossip on"))
	}
	if c.GossipKey == "" {
		errs = append(errs, errors.New("EDGE_GOSSIP_KEY is required with --gossip-addr: gossip is always encrypted (generate one with `openssl rand -base64 32`)"))
	} else if _, err := discovery.ParseKeys(c.GossipKey, c.GossipKeys); err != nil {
		errs = append(errs, err)
	}
	// The seeds and the DNS server are parsed here, as newDiscovery will,
	// so that a typo is a usage error before the store opens.
	if _, err := discovery.NewStaticSource(c.Join); err != nil {
		errs = append(errs, err)
	}
	if c.DNSServer != "" {
		if _, err := discovery.NewDNSSource(c.App, c.DNSServer, 0); err != nil {
			errs = append(errs, fmt.Errorf("--dns-server: %w", err))
		}
	}
	if c.MachinesAPIURL != "" {
		// Requests go to it over HTTP whatever its scheme says.
		if u, err := url.Parse(c.MachinesAPIURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("--machines-api-url %q: want an http:// or https:// URL", c.MachinesAPIURL))
		}
	}
	return errs
}

// MaxNodeNameLen bounds --node-name, in bytes. The name is the node's
// gossip member name: memberlist sends it in every alive message beside
// the member's metadata (up to 512 bytes), twice in suspect and dead
// messages and in probes, in UDP packets of at most 1232 bytes with the
// fly preset, and a broadcast that does not fit in one is never
// piggybacked (the others learn of the member only at the next
// push-pull). It is also in the replication handshake, every log line
// about the peer, the dashboard and /api/cluster. 128 holds a Linux host
// name (64), a DNS label (63) and a Fly Machine id (14) with room to
// spare, and keeps two names and the largest metadata inside one packet.
const MaxNodeNameLen = 128

// validateNodeName refuses a --node-name that is empty, too long for the
// gossip messages that carry it, or not printable UTF-8 text (the API
// would show invalid UTF-8 replaced, and control characters would forge
// lines in text logs).
func validateNodeName(name string) error {
	switch {
	case strings.TrimSpace(name) == "":
		return errors.New("--node-name must not be empty: it names this node in the cluster, the logs and the dashboard")
	case len(name) > MaxNodeNameLen:
		return fmt.Errorf("--node-name is %d bytes long: at most %d, because it is the node's gossip name and goes in every gossip packet about the node (a Fly Machine id or a host name fits)", len(name), MaxNodeNameLen)
	case !utf8.ValidString(name) || strings.ContainsFunc(name, unicode.IsControl):
		return fmt.Errorf("--node-name %q: want UTF-8 text without control characters, as it appears in the logs, the dashboard and /api/cluster", name)
	}
	return nil
}

// Validate reports configuration errors with the flag they come from.
func (c *Config) Validate() error {
	var errs []error
	if strings.TrimSpace(c.DataDir) == "" {
		errs = append(errs, errors.New("--data-dir must not be empty"))
	}
	if err := validateNodeName(c.NodeName); err != nil {
		errs = append(errs, err)
	}
	if !pools.IsRegion(c.Region) {
		errs = append(errs, fmt.Errorf("--region %q: want 2 to 10 lower-case letters or digits (a Fly region such as iad), as a backend's region, so that prefer_region pools can match them", c.Region))
	}
	if _, err := proxy.ParseAccessLog(c.AccessLog); err != nil {
		errs = append(errs, fmt.Errorf("--access-log %q: want on, off or sample:N with N at least 1", c.AccessLog))
	}
	if c.HTTPAddr == "" && c.HTTPSAddr == "" {
		errs = append(errs, errors.New("at least one of --http-addr and --https-addr is needed"))
	}
	for flag, addr := range map[string]string{"--http-addr": c.HTTPAddr, "--https-addr": c.HTTPSAddr, "--admin-addr": c.AdminAddr} {
		if addr == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			errs = append(errs, fmt.Errorf("%s %q: %w", flag, addr, err))
		}
	}
	if c.HealthAddr != "" {
		if _, _, err := net.SplitHostPort(c.HealthAddr); err != nil {
			errs = append(errs, fmt.Errorf("--health-addr %q: %w", c.HealthAddr, err))
		}
	}
	if c.AdminAddr == "" {
		errs = append(errs, errors.New("--admin-addr must not be empty"))
	} else if err := admin.CheckExposure(c.AdminAddr, c.AdminToken); err != nil {
		errs = append(errs, fmt.Errorf("--admin-addr: %w", err))
	}
	// The secrets are checked here too, so that a malformed one is a usage
	// error (exit code 2) like a bad flag, named by its variable.
	if c.EncryptionKey != "" {
		if _, err := storage.ParseEncryptionKey(c.EncryptionKey); err != nil {
			errs = append(errs, fmt.Errorf("EDGE_ENCRYPTION_KEY: %w", err))
		}
	}
	if c.CookieKey != "" && len(c.CookieKey) < minCookieKeyLen {
		errs = append(errs, fmt.Errorf("EDGE_COOKIE_KEY must be at least %d characters", minCookieKeyLen))
	}
	if c.PprofAddr != "" {
		if host, _, err := net.SplitHostPort(c.PprofAddr); err != nil {
			errs = append(errs, fmt.Errorf("--pprof-addr %q: %w", c.PprofAddr, err))
		} else if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
			errs = append(errs, fmt.Errorf("--pprof-addr %q: profiles are served on loopback only", c.PprofAddr))
		}
	}
	if c.BlockCacheSize < 1<<20 {
		errs = append(errs, fmt.Errorf("--block-cache-size %d is below 1 MiB", c.BlockCacheSize))
	}
	if c.RowCacheSize < 0 {
		errs = append(errs, fmt.Errorf("--row-cache-size %d: want 0 (off) or a size in bytes", c.RowCacheSize))
	}
	// !(x > 0) also catches NaN, which the rate limiter would read as no
	// limit at all; +Inf says that openly and is refused as well.
	if !(c.HealthCheckBudget > 0) || math.IsInf(c.HealthCheckBudget, 1) {
		errs = append(errs, fmt.Errorf("--health-check-budget %v must be a positive, finite number (checks per second)", c.HealthCheckBudget))
	}
	if c.HealthCheckConcurrency < 1 {
		errs = append(errs, fmt.Errorf("--health-check-concurrency %d must be at least 1", c.HealthCheckConcurrency))
	}
	if c.TunnelEventLoops < -1 || c.TunnelEventLoops > 1024 {
		errs = append(errs, fmt.Errorf("--tunnel-event-loops %d: want -1 (none), 0 (one per GOMAXPROCS) or up to 1024", c.TunnelEventLoops))
	}
	if c.GCHeadroom < 0 {
		errs = append(errs, fmt.Errorf("--gc-headroom %d: want 0 (the runtime's pacing) or a number of bytes", c.GCHeadroom))
	}
	if c.MemoryLimit < 0 || (c.MemoryLimit > 0 && c.MemoryLimit < 64<<20) {
		errs = append(errs, fmt.Errorf("--memory-limit %d: want 0 (none) or at least 64 MiB", c.MemoryLimit))
	}
	if c.MetricsMaxBackends < 1 {
		errs = append(errs, fmt.Errorf("--metrics-max-backends %d must be at least 1", c.MetricsMaxBackends))
	}
	if c.FeedRetention == 0 {
		errs = append(errs, errors.New("--feed-retention must be at least 1"))
	}
	if c.PublicHTTPSPort < 0 || c.PublicHTTPSPort > 65535 {
		errs = append(errs, fmt.Errorf("--public-https-port %d is not a port number", c.PublicHTTPSPort))
	}
	if c.BackendCAFile != "" {
		// Read here, before the store opens, so that a wrong path or file
		// is a usage error (exit code 2) like every other bad flag.
		if _, err := backendRoots(c.BackendCAFile); err != nil {
			errs = append(errs, err)
		}
	}
	if _, err := ParseTrustedProxies(c.TrustedProxies); err != nil {
		errs = append(errs, fmt.Errorf("--trusted-proxies: %w", err))
	}
	if _, err := ParseTrustedProxies(c.ProxyProtocolFrom); err != nil {
		errs = append(errs, fmt.Errorf("--proxy-protocol-from: %w", err))
	}
	if c.MinBodyRate < 0 {
		errs = append(errs, fmt.Errorf("--min-body-rate %d must not be negative (0 turns the bound off)", c.MinBodyRate))
	}
	if c.BodyRateGrace <= 0 {
		errs = append(errs, fmt.Errorf("--body-rate-grace %v must be positive", c.BodyRateGrace))
	}
	if c.MaxBackendConnsPerClient < 1 {
		errs = append(errs, fmt.Errorf("--max-backend-conns-per-client %d must be at least 1", c.MaxBackendConnsPerClient))
	}
	if c.ShutdownTimeout <= 0 {
		errs = append(errs, errors.New("--shutdown-timeout must be positive"))
	}
	if err := c.validateACME(); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, c.validateOnDemand()...)
	errs = append(errs, c.validateCluster()...)
	switch strings.ToLower(c.LogLevel) {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("--log-level %q: want debug, info, warn or error", c.LogLevel))
	}
	return errors.Join(errs...)
}

// ParseTrustedProxies turns the --trusted-proxies or --proxy-protocol-from
// value into prefixes: nil for "" or "default" (the proxy's default),
// empty for "none", else a comma-separated list of CIDRs or addresses.
func ParseTrustedProxies(v string) ([]netip.Prefix, error) {
	switch strings.TrimSpace(v) {
	case "", "default":
		return nil, nil
	case "none":
		return []netip.Prefix{}, nil
	}
	var out []netip.Prefix
	for _, s := range strings.Split(v, ",") {
		s = strings.TrimSpace(s)
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("%q is neither a CIDR nor an address", s)
		}
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}
