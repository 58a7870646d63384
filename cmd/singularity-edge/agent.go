package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/singularity-ng/singularity-edge/agent"
)

func newAgentCommand() *cobra.Command { return newAgentCommandEnv(os.LookupEnv, agent.Run) }

// newAgentCommandEnv builds the agent command on an environment and a runner
// of its own, so that a test can see the configuration the agent would
// derive from, say, a Fly Machine's environment and fly.toml's [env].
// lookupEnv is os.LookupEnv's: a variable set to "" is not an unset one.
func newAgentCommandEnv(lookupEnv func(string) (string, bool), run func(context.Context, agent.Config) error) *cobra.Command {
	getenv := func(k string) string { v, _ := lookupEnv(k); return v }
	cfg := agent.DefaultConfig()
	cfg.ApplyEnvironment(getenv)
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the edge agent: proxy, health checks, admin API",
		Long: `Run the edge agent in the foreground until SIGTERM or SIGINT.

Every flag has an environment twin: --data-dir is EDGE_DATA_DIR, and so on
(--acme-fallback-directory is EDGE_ACME_FALLBACK_DIRECTORIES, comma-separated);
a flag given on the command line wins over its twin. A flag or twin set to the
empty string sets the flag to "" where that means something (EDGE_GOSSIP_ADDR=
is a cluster of one, EDGE_ACME_DIRECTORY= turns ACME off, --http-addr= closes
the HTTP listener); a flag that needs a value (--region=, EDGE_NODE_NAME=)
refuses it.
Secrets come only from the environment: EDGE_ADMIN_TOKEN, EDGE_ENCRYPTION_KEY,
EDGE_COOKIE_KEY, EDGE_GOSSIP_KEY and EDGE_GOSSIP_KEYS (extra accepted gossip
keys during a rotation), FLY_API_TOKEN. On Fly.io (FLY_APP_NAME set), FLY_REGION,
FLY_MACHINE_ID and FLY_PRIVATE_IP set the defaults of --region, --node-name and
--admin-addr (the 6PN address), --data-dir is /data (the volume) and
--health-addr 0.0.0.0:4001.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := errors.Join(refuseEmptyFlags(cmd.Flags()), applyEnvTwins(cmd.Flags(), lookupEnv)); err != nil {
				return withExitCode(exitUsage, err)
			}
			if err := cfg.Validate(); err != nil {
				return withExitCode(exitUsage, err)
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			return run(ctx, cfg)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.DataDir, "data-dir", cfg.DataDir, "directory of the RocksDB store (created on first start)")
	f.StringVar(&cfg.HTTPAddr, "http-addr", cfg.HTTPAddr, "public HTTP listener, empty to disable")
	f.StringVar(&cfg.HTTPSAddr, "https-addr", cfg.HTTPSAddr, "public HTTPS listener, empty to disable")
	f.StringVar(&cfg.AdminAddr, "admin-addr", cfg.AdminAddr, "admin API, dashboard and /metrics listener")
	f.StringVar(&cfg.HealthAddr, "health-addr", cfg.HealthAddr, "unauthenticated GET /healthz listener for platform checks, empty to disable")
	f.StringVar(&cfg.NodeName, "node-name", cfg.NodeName, fmt.Sprintf("name of this node in the cluster (its gossip name; at most %d bytes)", agent.MaxNodeNameLen))
	f.StringVar(&cfg.Region, "region", cfg.Region, "region of this node; pools may prefer backends in it")
	f.BoolVar(&cfg.ProxyProtocol, "proxy-protocol", cfg.ProxyProtocol, "expect a PROXY protocol v1/v2 header on public connections (Fly proxy_proto handler)")
	f.StringVar(&cfg.ProxyProtocolFrom, "proxy-protocol-from", cfg.ProxyProtocolFrom, `CIDRs whose PROXY headers name the client (from other peers the header is checked, its addresses ignored): "default" (Fly's proxy and loopback), "none", or a comma-separated list`)
	f.BoolVar(&cfg.AllowPoolHeader, "allow-pool-header", cfg.AllowPoolHeader, "let clients pick a pool with the X-Pool header")
	f.IntVar(&cfg.PublicHTTPSPort, "public-https-port", cfg.PublicHTTPSPort, "HTTPS port put into HTTP->HTTPS redirects (0: the HTTPS listener's; 443 on Fly.io)")
	f.StringVar(&cfg.TrustedProxies, "trusted-proxies", cfg.TrustedProxies, `CIDRs whose X-Forwarded-For/Forwarded/X-Real-IP are kept: "default" (Fly's proxy without --proxy-protocol), "none", or a comma-separated list`)
	f.IntVar(&cfg.MinBodyRate, "min-body-rate", cfg.MinBodyRate, "slowest average rate (bytes/s) at which a client may send a request body or read a response after --body-rate-grace (408 or cut off below it); 0 = off")
	f.DurationVar(&cfg.BodyRateGrace, "body-rate-grace", cfg.BodyRateGrace, "how long a body transfer may run before --min-body-rate applies")
	f.IntVar(&cfg.MaxBackendConnsPerClient, "max-backend-conns-per-client", cfg.MaxBackendConnsPerClient, "most backend requests in flight per client address, all its connections together (503 beyond; trusted proxies exempt)")
	f.StringVar(&cfg.BackendCAFile, "backend-ca-file", cfg.BackendCAFile, "PEM bundle added to the system roots to verify backend certificates")
	f.StringVar(&cfg.AccessLog, "access-log", cfg.AccessLog, `access log: "on", "off" or "sample:N" (one request in N)`)
	f.StringVar(&cfg.LogLevel, "log-level", cfg.LogLevel, "debug, info, warn or error")
	f.Float64Var(&cfg.HealthCheckBudget, "health-check-budget", cfg.HealthCheckBudget, "most active health checks started per second, all pools together")
	f.IntVar(&cfg.HealthCheckConcurrency, "health-check-concurrency", cfg.HealthCheckConcurrency, "most active health checks in flight")
	f.StringVar(&cfg.MetricsBackendPools, "metrics-backend-pools", cfg.MetricsBackendPools, `comma-separated pools whose backends get their own /metrics series ("*": all); others get pool-level series only`)
	f.IntVar(&cfg.MetricsMaxBackends, "metrics-max-backends", cfg.MetricsMaxBackends, "most backends with series of their own, all pools together")
	f.Int64Var(&cfg.MemoryLimit, "memory-limit", cfg.MemoryLimit, "soft limit in bytes on the agent's Go memory (the collector works harder near it); 0 = none")
	f.Int64Var(&cfg.GCHeadroom, "gc-headroom", cfg.GCHeadroom, "bytes the Go heap may grow past its live size before the next collection (large heaps rest near their live size); 0 = the runtime's pacing (GOGC)")
	f.IntVar(&cfg.TunnelEventLoops, "tunnel-event-loops", cfg.TunnelEventLoops, "event-loop threads relaying established passthrough connections (Linux with cgo): 0 = one per GOMAXPROCS, -1 = none (a goroutine per direction)")
	f.StringVar(&cfg.PprofAddr, "pprof-addr", cfg.PprofAddr, "serve Go profiles (net/http/pprof) on this loopback address; empty = off")
	f.BoolVar(&cfg.MetricsPublic, "metrics-public", cfg.MetricsPublic, "serve /metrics without the admin token")
	f.Int64Var(&cfg.BlockCacheSize, "block-cache-size", cfg.BlockCacheSize, "RocksDB block cache in bytes (bounds the store's memory)")
	f.Int64Var(&cfg.RowCacheSize, "row-cache-size", cfg.RowCacheSize, "cache of decoded rows (pools, backends, certificates) above RocksDB, in bytes; 0 turns it off")
	f.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", cfg.ShutdownTimeout, "how long in-flight requests may take to finish on shutdown")
	f.Uint64Var(&cfg.FeedRetention, "feed-retention", cfg.FeedRetention, "change-feed entries kept on disk")
	f.StringVar(&cfg.ACMEDirectory, "acme-directory", cfg.ACMEDirectory, "ACME directory URL (Let's Encrypt production by default; staging or any CA), empty to turn ACME off")
	f.StringSliceVar(&cfg.ACMEFallbackDirectories, "acme-fallback-directory", cfg.ACMEFallbackDirectories, "further ACME directory URL tried, in the order given, when the ones before it fail (repeatable or comma-separated; EDGE_ACME_FALLBACK_DIRECTORIES); same --acme-email and --acme-ca-bundle, without External Account Binding (EAB is for --acme-directory only)")
	f.StringVar(&cfg.ACMECABundle, "acme-ca-bundle", cfg.ACMECABundle, "PEM file of the CAs trusted for the ACME server's own TLS (a private CA, Pebble); empty: system roots")
	f.StringVar(&cfg.ACMEEmail, "acme-email", cfg.ACMEEmail, "contact email of the ACME account")
	f.StringVar(&cfg.ACMEDNSProvider, "acme-dns-provider", cfg.ACMEDNSProvider, "lego DNS provider for dns-01 (cloudflare, exec, httpreq), configured from its own environment variables")
	f.StringSliceVar(&cfg.ACMEChallenges, "acme-challenges", cfg.ACMEChallenges, "ACME challenge types offered to the CA, comma-separated from http-01, tls-alpn-01, dns-01 (default: http-01,tls-alpn-01, plus dns-01 with --acme-dns-provider); http-01 alone when :443 is passthrough-only or behind another TLS terminator")
	l := &cfg.ACMELimits
	f.IntVar(&l.OrdersPerAccount, "acme-orders-per-account", l.OrdersPerAccount, "ACME orders the cluster places per account (directory) per --acme-orders-window (Let's Encrypt: 300 per 3h); 0 = no limit")
	f.DurationVar(&l.OrdersWindow, "acme-orders-window", l.OrdersWindow, "window of --acme-orders-per-account")
	f.IntVar(&l.CertsPerRegisteredDomain, "acme-certs-per-domain", l.CertsPerRegisteredDomain, "certificates per registered domain (public suffix list) per --acme-certs-window (Let's Encrypt: 50 per 7 days); 0 = no limit")
	f.DurationVar(&l.CertsWindow, "acme-certs-window", l.CertsWindow, "window of --acme-certs-per-domain")
	f.IntVar(&l.DuplicateCerts, "acme-duplicate-certs", l.DuplicateCerts, "certificates for one exact set of names per --acme-duplicate-window (Let's Encrypt: 5 per 7 days); 0 = no limit")
	f.DurationVar(&l.DuplicateWindow, "acme-duplicate-window", l.DuplicateWindow, "window of --acme-duplicate-certs")
	f.IntVar(&l.FailedValidations, "acme-failed-validations", l.FailedValidations, "failed validations per name per --acme-failed-window before orders for it are held back (Let's Encrypt: 5 per hour); 0 = no limit")
	f.DurationVar(&l.FailedWindow, "acme-failed-window", l.FailedWindow, "window of --acme-failed-validations")
	f.IntVar(&l.PauseAfterFailures, "acme-pause-after-failures", l.PauseAfterFailures, "failures of a name without a success within --acme-pause-window that pause it here, long before Let's Encrypt would; 0 = no pause")
	f.DurationVar(&l.PauseWindow, "acme-pause-window", l.PauseWindow, "window of --acme-pause-after-failures")
	f.DurationVar(&cfg.ACMELeaseTTL, "acme-lease-ttl", cfg.ACMELeaseTTL, "term of a certificate's renewal lease; the owner extends it every third while an order runs")
	f.DurationVar(&cfg.ACMEPresentTimeout, "acme-present-timeout", cfg.ACMEPresentTimeout, "how long a challenge token may take to reach every alive member before the order fails (the CA is not told)")
	f.DurationVar(&cfg.ACMERenewInterval, "acme-renew-interval", cfg.ACMERenewInterval, "time between renewal scheduler passes (each shifted by up to 20%)")
	f.DurationVar(&cfg.OnDemandWait, "on-demand-wait", cfg.OnDemandWait, "on-demand TLS: how long a handshake waits for a certificate ordered for it (the order goes on after)")
	f.DurationVar(&cfg.OnDemandRefusalTTL, "on-demand-refusal-ttl", cfg.OnDemandRefusalTTL, "on-demand TLS: how long a refused name stays refused without asking again")
	f.DurationVar(&cfg.OnDemandAskTimeout, "on-demand-ask-timeout", cfg.OnDemandAskTimeout, "on-demand TLS: time limit of one call to a pool's ask URL")
	f.StringVar(&cfg.App, "app", cfg.App, "app name: the gossip label and the Fly DNS zone <app>.internal (FLY_APP_NAME on Fly)")
	f.StringVar(&cfg.GossipAddr, "gossip-addr", cfg.GossipAddr, "memberlist bind host:port, empty for a cluster of one (FLY_PRIVATE_IP:7946 on Fly)")
	f.StringVar(&cfg.ReplicationAddr, "replication-addr", cfg.ReplicationAddr, "replication listener host:port (default: gossip host, gossip port + 1)")
	f.StringSliceVar(&cfg.Join, "join", cfg.Join, "static seeds to join, comma-separated IP or IP:port")
	f.StringVar(&cfg.GossipPreset, "gossip-preset", cfg.GossipPreset, `failure-detector timings: "fly" (between regions) or "local"`)
	f.StringVar(&cfg.DNSServer, "dns-server", cfg.DNSServer, "Fly internal DNS server host:port for peer discovery ([fdaa::3]:53 on Fly, empty: off)")
	f.StringVar(&cfg.MachinesAPIURL, "machines-api-url", cfg.MachinesAPIURL, "Machines API base URL, used when FLY_API_TOKEN is set (default https://api.machines.dev)")
	// Empty means something for these: a listener or a feature off, nothing
	// given, or the built-in choice. Every other flag needs a value.
	allowEmpty(f, "http-addr", "https-addr", "health-addr", "pprof-addr",
		"trusted-proxies", "proxy-protocol-from", "backend-ca-file", "metrics-backend-pools",
		"acme-directory", "acme-fallback-directory", "acme-ca-bundle", "acme-email", "acme-dns-provider",
		"gossip-addr", "replication-addr", "join", "dns-server", "machines-api-url")
	// A list of directories reads better in the plural; the flag keeps the
	// singular because each occurrence names one.
	setEnvName(f, "acme-fallback-directory", "EDGE_ACME_FALLBACK_DIRECTORIES")
	return cmd
}

// Flag annotations of the agent command.
const (
	// emptyAnnotation marks a flag that may be set to "", on the command
	// line or by its EDGE_* twin.
	emptyAnnotation = "singularity-edge/empty"
	// envAnnotation names a flag's environment variable where it is not
	// the generic twin.
	envAnnotation = "singularity-edge/env"
)

// allowEmpty lets the named flags, and their twins, be set to "".
func allowEmpty(flags *pflag.FlagSet, names ...string) {
	for _, n := range names {
		if err := flags.SetAnnotation(n, emptyAnnotation, []string{"true"}); err != nil {
			panic(fmt.Sprintf("agent flags: %v", err)) // a misspelt name in the list above
		}
	}
}

// setEnvName gives flag name the environment variable env instead of its
// generic twin, which is then refused (see applyEnvTwins).
func setEnvName(flags *pflag.FlagSet, name, env string) {
	if err := flags.SetAnnotation(name, envAnnotation, []string{env}); err != nil {
		panic(fmt.Sprintf("agent flags: %v", err))
	}
}

// genericTwin is the EDGE_* variable a flag would have by the naming rule
// (--data-dir: EDGE_DATA_DIR).
func genericTwin(flag string) string {
	return "EDGE_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// envName is the environment variable of flag f.
func envName(f *pflag.Flag) string {
	if v := f.Annotations[envAnnotation]; len(v) == 1 {
		return v[0]
	}
	return genericTwin(f.Name)
}

// blank reports whether a value given to f says nothing: an empty or
// all-space string, or a list without items.
func blank(f *pflag.Flag) bool {
	if sv, ok := f.Value.(pflag.SliceValue); ok {
		return len(sv.GetSlice()) == 0
	}
	return strings.TrimSpace(f.Value.String()) == ""
}

// defaultNote is " (value)" for a flag whose default can be shown.
func defaultNote(f *pflag.Flag) string {
	if f.DefValue == "" || f.DefValue == "[]" {
		return ""
	}
	return " (" + f.DefValue + ")"
}

// refuseEmptyFlags refuses a flag given on the command line with an empty
// value (--region=, --node-name " ") where "" means nothing: it would
// otherwise start the agent with an empty name or region, which no check
// catches later. The EDGE_* twins are held to the same rule (applyEnvTwins).
func refuseEmptyFlags(flags *pflag.FlagSet) error {
	var errs []error
	flags.Visit(func(f *pflag.Flag) {
		if f.Annotations[emptyAnnotation] == nil && blank(f) {
			errs = append(errs, fmt.Errorf("--%s is given but empty, and needs a value: give one, or leave the flag out for the default%s",
				f.Name, defaultNote(f)))
		}
	})
	return errors.Join(errs...)
}

// applyEnvTwins sets every flag the command line did not set from its
// EDGE_* environment twin (--data-dir <- EDGE_DATA_DIR). A twin that is set
// counts even when empty: EDGE_GOSSIP_ADDR= turns gossip off, which is the
// only way to do it from fly.toml's [env]. A flag for which "" means nothing
// refuses an empty (or all-space) twin rather than silently keeping its
// default. A flag with a variable of its own (envAnnotation) refuses its
// generic twin, so that one setting never has two names to pick between.
func applyEnvTwins(flags *pflag.FlagSet, lookupEnv func(string) (string, bool)) error {
	var errs []error
	flags.VisitAll(func(f *pflag.Flag) {
		if f.Name == "help" { // cobra's --help is no setting
			return
		}
		name := envName(f)
		if generic := genericTwin(f.Name); generic != name {
			if _, ok := lookupEnv(generic); ok {
				errs = append(errs, fmt.Errorf("%s is not read: the variable of --%s is %s; set that one only", generic, f.Name, name))
				return
			}
		}
		if f.Changed {
			return
		}
		v, ok := lookupEnv(name)
		switch {
		case !ok:
		case strings.TrimSpace(v) == "" && f.Annotations[emptyAnnotation] == nil:
			errs = append(errs, fmt.Errorf("%s is set but empty, and --%s needs a value: set one, or unset %s for the default%s",
				name, f.Name, name, defaultNote(f)))
		default:
			if err := f.Value.Set(v); err != nil {
				errs = append(errs, fmt.Errorf("%s=%q: %w", name, v, err))
				return
			}
			if sv, ok := f.Value.(pflag.SliceValue); ok {
				// "a, b" in an environment file: the items, not their spaces.
				items := sv.GetSlice()
				for i := range items {
					items[i] = strings.TrimSpace(items[i])
				}
				if err := sv.Replace(items); err != nil {
					errs = append(errs, fmt.Errorf("%s=%q: %w", name, v, err))
				}
			}
		}
	})
	return errors.Join(errs...)
}
