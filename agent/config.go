package agent

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// Config is everything the agent needs to start. Flags fill it, each with an
// EDGE_* environment twin; on Fly.io the FLY_* variables supply defaults.
type Config struct {
	DataDir   string
	HTTPAddr  string // public HTTP listener ("" = off)
	HTTPSAddr string // public HTTPS listener ("" = off)
	AdminAddr string // admin API, dashboard and /metrics

	NodeName string // human name of this node (FLY_MACHINE_ID on Fly)
	Region   string // FLY_REGION on Fly

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

	BlockCacheSize  int64         // RocksDB block cache, bytes
	ShutdownTimeout time.Duration // how long in-flight requests may take to drain

	// FeedRetention is how many change-feed entries are kept.
	FeedRetention uint64

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
	return Config{
		DataDir:         "./data",
		HTTPAddr:        ":8080",
		HTTPSAddr:       ":8443",
		AdminAddr:       "127.0.0.1:4000",
		NodeName:        host,
		Region:          "local",
		AccessLog:       "off",
		LogLevel:        "info",
		BlockCacheSize:  64 << 20,
		ShutdownTimeout: 15 * time.Second,

		FeedRetention: 100_000,

		App:          "singularity-edge",
		GossipPreset: "local",
	}
}

// ApplyEnvironment fills the fields that come from the environment: secrets,
// and the Fly.io defaults (which explicit flags override later).
func (c *Config) ApplyEnvironment(getenv func(string) string) {
	c.AdminToken = getenv("EDGE_ADMIN_TOKEN")
	c.EncryptionKey = getenv("EDGE_ENCRYPTION_KEY")
	c.CookieKey = getenv("EDGE_COOKIE_KEY")
	if v := getenv("FLY_MACHINE_ID"); v != "" {
		c.NodeName = v
	}
	if v := getenv("FLY_REGION"); v != "" {
		c.Region = v
	}
	// On Fly the admin API listens on the private 6PN address, reachable by
	// the other Machines of the app and `fly proxy`, never publicly.
	if v := getenv("FLY_PRIVATE_IP"); v != "" {
		c.AdminAddr = net.JoinHostPort(v, "4000")
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
	if _, err := c.replicationAddr(); err != nil {
		errs = append(errs, fmt.Errorf("--replication-addr: %w", err))
	}
	if c.GossipPreset != "fly" && c.GossipPreset != "local" {
		errs = append(errs, fmt.Errorf("--gossip-preset %q: want fly or local", c.GossipPreset))
	}
	if strings.TrimSpace(c.App) == "" {
		errs = append(errs, errors.New("--app must not be empty with gossip on"))
	}
	if c.GossipKey == "" {
		errs = append(errs, errors.New("EDGE_GOSSIP_KEY is required with --gossip-addr: gossip is always encrypted (generate one with `openssl rand -base64 32`)"))
	}
	return errs
}

// Validate reports configuration errors with the flag they come from.
func (c *Config) Validate() error {
	var errs []error
	if strings.TrimSpace(c.DataDir) == "" {
		errs = append(errs, errors.New("--data-dir must not be empty"))
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
	if c.AdminAddr == "" {
		errs = append(errs, errors.New("--admin-addr must not be empty"))
	}
	if c.BlockCacheSize < 1<<20 {
		errs = append(errs, fmt.Errorf("--block-cache-size %d is below 1 MiB", c.BlockCacheSize))
	}
	if c.FeedRetention == 0 {
		errs = append(errs, errors.New("--feed-retention must be at least 1"))
	}
	if c.ShutdownTimeout <= 0 {
		errs = append(errs, errors.New("--shutdown-timeout must be positive"))
	}
	errs = append(errs, c.validateCluster()...)
	switch strings.ToLower(c.LogLevel) {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("--log-level %q: want debug, info, warn or error", c.LogLevel))
	}
	return errors.Join(errs...)
}
