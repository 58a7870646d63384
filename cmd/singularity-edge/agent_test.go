package main

import (
	"context"
	"io"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/singularity-ng/singularity-edge/agent"
	"github.com/singularity-ng/singularity-edge/certs"
)

// lookupIn is os.LookupEnv over a map: a key present with "" is set.
func lookupIn(env map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := env[k]; return v, ok }
}

func TestApplyEnvTwins(t *testing.T) {
	fs := pflag.NewFlagSet("agent", pflag.ContinueOnError)
	dataDir := fs.String("data-dir", "./data", "")
	httpAddr := fs.String("http-addr", ":8080", "")
	proxyProto := fs.Bool("proxy-protocol", false, "")
	if err := fs.Parse([]string{"--http-addr", ":9090"}); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"EDGE_DATA_DIR": "/var/lib/edge", "EDGE_HTTP_ADDR": ":1", "EDGE_PROXY_PROTOCOL": "true"}
	if err := applyEnvTwins(fs, lookupIn(env)); err != nil {
		t.Fatal(err)
	}
	if *dataDir != "/var/lib/edge" || !*proxyProto {
		t.Errorf("environment twins not applied: data-dir %q proxy-protocol %v", *dataDir, *proxyProto)
	}
	if *httpAddr != ":9090" {
		t.Errorf("an explicit flag lost to its environment twin: %q", *httpAddr)
	}
	env["EDGE_PROXY_PROTOCOL"] = "maybe"
	fs2 := pflag.NewFlagSet("agent", pflag.ContinueOnError)
	fs2.Bool("proxy-protocol", false, "")
	if err := applyEnvTwins(fs2, lookupIn(env)); err == nil {
		t.Error("a malformed EDGE_PROXY_PROTOCOL was accepted")
	}
}

// An EDGE_* twin set to "" sets its flag to "" where empty means something
// (a listener or feature off, nothing given, the built-in choice), and is
// refused, naming the variable, everywhere else; an explicit flag still
// wins. Every flag of the agent command is in the table, so a new flag has
// to be put on one side or the other.
func TestEmptyEnvTwins(t *testing.T) {
	// Empty means something for these.
	emptyOK := map[string]bool{
		"http-addr": true, "https-addr": true, "health-addr": true, "pprof-addr": true,
		"trusted-proxies": true, "proxy-protocol-from": true, "backend-ca-file": true, "metrics-backend-pools": true,
		"acme-directory": true, "acme-fallback-directory": true, "acme-ca-bundle": true,
		"acme-email": true, "acme-dns-provider": true,
		"gossip-addr": true, "replication-addr": true, "join": true, "dns-server": true,
		"machines-api-url": true,
	}
	// Each needs a value: "" is no address, level, size, duration, switch
	// or name it could use (or, for --acme-challenges, no challenge at all).
	needsValue := []string{
		"data-dir", "admin-addr", "node-name", "region", "proxy-protocol", "allow-pool-header",
		"public-https-port", "min-body-rate", "body-rate-grace", "max-backend-conns-per-client",
		"access-log", "log-level", "health-check-budget", "health-check-concurrency",
		"metrics-max-backends", "memory-limit", "gc-headroom", "tunnel-event-loops", "metrics-public",
		"block-cache-size", "row-cache-size", "shutdown-timeout", "feed-retention", "acme-challenges",
		"acme-orders-per-account", "acme-orders-window", "acme-certs-per-domain", "acme-certs-window",
		"acme-duplicate-certs", "acme-duplicate-window", "acme-failed-validations", "acme-failed-window",
		"acme-pause-after-failures", "acme-pause-window", "acme-lease-ttl", "acme-present-timeout",
		"acme-renew-interval", "on-demand-wait", "on-demand-refusal-ttl", "on-demand-ask-timeout",
		"app", "gossip-preset",
	}
	run := func(env map[string]string, args ...string) (agent.Config, *pflag.FlagSet, bool, error) {
		var got agent.Config
		ran := false
		cmd := newAgentCommandEnv(lookupIn(env), func(_ context.Context, c agent.Config) error {
			got, ran = c, true
			return nil
		})
		// As under the root command: a value pflag cannot parse is a usage error.
		cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return withExitCode(exitUsage, err) })
		cmd.SetArgs(args)
		cmd.SetOut(io.Discard)
		cmd.SetErr(io.Discard)
		err := cmd.Execute()
		return got, cmd.Flags(), ran, err
	}

	_, flags, _, _ := run(nil)
	// Each flag's variable: the generic twin, or the name it has instead.
	twin := func(flag string) string { return envName(flags.Lookup(flag)) }
	flags.VisitAll(func(f *pflag.Flag) {
		if f.Name != "help" && !emptyOK[f.Name] && !slices.Contains(needsValue, f.Name) {
			t.Errorf("--%s is in neither list of this test: may %s be empty?", f.Name, twin(f.Name))
		}
	})
	for name := range emptyOK {
		t.Run(name, func(t *testing.T) {
			_, flags, ran, err := run(map[string]string{twin(name): ""})
			if err != nil || !ran {
				t.Fatalf("%s= refused: %v", twin(name), err)
			}
			if v := flags.Lookup(name).Value.String(); v != "" && v != "[]" {
				t.Errorf("%s= left --%s at %q", twin(name), name, v)
			}
		})
	}
	for _, name := range needsValue {
		t.Run(name, func(t *testing.T) {
			for _, v := range []string{"", "  "} {
				_, _, ran, err := run(map[string]string{twin(name): v})
				if err == nil || ran || !strings.Contains(err.Error(), twin(name)+" is set but empty") || exitCodeOf(err) != exitUsage {
					t.Errorf("%s=%q: %v (exit %d, ran %v), want a usage error naming the variable", twin(name), v, err, exitCodeOf(err), ran)
				}
			}
		})
	}
	// The command line is held to the same rule as the twins: --region=
	// is refused where EDGE_REGION= is, and --http-addr= is taken where
	// EDGE_HTTP_ADDR= is.
	for _, name := range needsValue {
		t.Run("flag "+name, func(t *testing.T) {
			_, _, ran, err := run(nil, "--"+name+"=")
			if err == nil || ran || exitCodeOf(err) != exitUsage {
				t.Fatalf("--%s=: %v (exit %d, ran %v), want a usage error", name, err, exitCodeOf(err), ran)
			}
			if !strings.Contains(err.Error(), "--"+name) {
				t.Errorf("--%s=: %v, want the flag named", name, err)
			}
		})
	}
	for _, name := range []string{"node-name", "region", "access-log", "app", "gossip-preset", "data-dir", "log-level"} {
		_, _, ran, err := run(nil, "--"+name, "  ")
		if err == nil || ran || exitCodeOf(err) != exitUsage || !strings.Contains(err.Error(), "--"+name+" is given but empty") {
			t.Errorf("--%s '  ': %v (exit %d, ran %v), want a usage error naming the flag", name, err, exitCodeOf(err), ran)
		}
	}
	for name := range emptyOK {
		t.Run("flag "+name, func(t *testing.T) {
			_, flags, ran, err := run(nil, "--"+name+"=")
			if err != nil || !ran {
				t.Fatalf("--%s= refused: %v", name, err)
			}
			if v := flags.Lookup(name).Value.String(); v != "" && v != "[]" {
				t.Errorf("--%s= left it at %q", name, v)
			}
		})
	}

	// What the empty twins are for, on a Fly Machine: gossip and ACME off
	// from fly.toml's [env], where nothing else can turn them off.
	env := flyMachineEnv("edge-test")
	env["EDGE_GOSSIP_ADDR"], env["EDGE_ACME_DIRECTORY"], env["EDGE_HTTP_ADDR"] = "", "", ""
	cfg, _, _, err := run(env)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.GossipAddr != "" || cfg.ACMEDirectory != "" || cfg.HTTPAddr != "" {
		t.Errorf("on Fly with empty twins: gossip %q acme %q http %q, want all off", cfg.GossipAddr, cfg.ACMEDirectory, cfg.HTTPAddr)
	}
	if cfg, _, _, err = run(flyMachineEnv("edge-test")); err != nil || cfg.GossipAddr == "" || cfg.ACMEDirectory == "" {
		t.Errorf("on Fly without the twins: gossip %q acme %q (%v), want the defaults", cfg.GossipAddr, cfg.ACMEDirectory, err)
	}
	// The command line still wins over an empty twin.
	cfg, _, _, err = run(map[string]string{"EDGE_HTTP_ADDR": "", "EDGE_DATA_DIR": ""}, "--http-addr", "127.0.0.1:9080", "--data-dir", "/tmp/edge")
	if err != nil || cfg.HTTPAddr != "127.0.0.1:9080" || cfg.DataDir != "/tmp/edge" {
		t.Errorf("flags beside empty twins: http %q data %q (%v), want the flags' values", cfg.HTTPAddr, cfg.DataDir, err)
	}
	// cobra's --help has no twin.
	if _, _, _, err := run(map[string]string{"EDGE_HELP": ""}); err != nil {
		t.Errorf("EDGE_HELP= read as a twin: %v", err)
	}
	// Several refused twins are reported together.
	_, _, _, err = run(map[string]string{"EDGE_DATA_DIR": "", "EDGE_LOG_LEVEL": ""})
	if err == nil || !strings.Contains(err.Error(), "EDGE_DATA_DIR") || !strings.Contains(err.Error(), "EDGE_LOG_LEVEL") {
		t.Errorf("two empty twins that need values: %v, want both named", err)
	}
}

// --acme-fallback-directory has one environment variable, the documented
// EDGE_ACME_FALLBACK_DIRECTORIES; the generic twin EDGE_ACME_FALLBACK_DIRECTORY
// is refused with a sentence naming the right one, alone or beside it, so
// that neither is silently preferred or ignored.
func TestACMEFallbackDirectoriesEnv(t *testing.T) {
	run := func(env map[string]string, args ...string) (agent.Config, bool, error) {
		var got agent.Config
		ran := false
		cmd := newAgentCommandEnv(lookupIn(env), func(_ context.Context, c agent.Config) error {
			got, ran = c, true
			return nil
		})
		cmd.SetArgs(args)
		cmd.SetOut(io.Discard)
		cmd.SetErr(io.Discard)
		return got, ran, cmd.Execute()
	}
	const plural, singular = "EDGE_ACME_FALLBACK_DIRECTORIES", "EDGE_ACME_FALLBACK_DIRECTORY"
	cfg, _, err := run(map[string]string{plural: "https://a.example/dir, https://b.example/dir"})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(cfg.ACMEFallbackDirectories, " "); got != "https://a.example/dir https://b.example/dir" {
		t.Errorf("%s: fallback directories %q, want both in order, without their spaces", plural, got)
	}
	cfg, _, err = run(map[string]string{plural: "https://a.example/dir"}, "--acme-fallback-directory", "https://c.example/dir")
	if err != nil || strings.Join(cfg.ACMEFallbackDirectories, " ") != "https://c.example/dir" {
		t.Errorf("flag beside %s: %q (%v), want the flag's value", plural, cfg.ACMEFallbackDirectories, err)
	}
	if cfg, _, err = run(map[string]string{plural: ""}); err != nil || len(cfg.ACMEFallbackDirectories) != 0 {
		t.Errorf("%s=: %q (%v), want none", plural, cfg.ACMEFallbackDirectories, err)
	}
	for _, env := range []map[string]string{
		{singular: "https://a.example/dir"},
		{singular: "https://a.example/dir", plural: "https://b.example/dir"},
		{singular: ""},
	} {
		_, ran, err := run(env)
		if err == nil || ran || exitCodeOf(err) != exitUsage ||
			!strings.Contains(err.Error(), singular+" is not read") || !strings.Contains(err.Error(), plural) {
			t.Errorf("%v: %v (exit %d, ran %v), want a usage error naming both variables", env, err, exitCodeOf(err), ran)
		}
	}
	// The generic twin is refused even when the flag is given: it is a
	// setting the operator believes in, and it is not read.
	if _, ran, err := run(map[string]string{singular: "https://a.example/dir"}, "--acme-fallback-directory", "https://c.example/dir"); err == nil || ran {
		t.Errorf("%s beside the flag: %v (ran %v), want refused", singular, err, ran)
	}
}

// The budget flags fill the agent's configuration as given (0 included:
// that limit off), their environment twins too, and bad values are a
// usage error naming the flag.
func TestACMEBudgetFlags(t *testing.T) {
	run := func(env map[string]string, args ...string) (agent.Config, error) {
		var got agent.Config
		cmd := newAgentCommandEnv(lookupIn(env), func(_ context.Context, c agent.Config) error {
			got = c
			return nil
		})
		cmd.SetArgs(args)
		cmd.SetOut(io.Discard)
		cmd.SetErr(io.Discard)
		return got, cmd.Execute()
	}
	cfg, err := run(map[string]string{"EDGE_ACME_PAUSE_AFTER_FAILURES": "9"},
		"--acme-orders-per-account", "0", "--acme-orders-window", "90m",
		"--acme-certs-per-domain", "12", "--acme-certs-window", "72h",
		"--acme-duplicate-certs", "2", "--acme-duplicate-window", "24h",
		"--acme-failed-validations", "3", "--acme-failed-window", "30m",
		"--acme-pause-window", "48h", "--acme-lease-ttl", "10m",
		"--acme-present-timeout", "5s", "--acme-renew-interval", "30s")
	if err != nil {
		t.Fatal(err)
	}
	want := certs.BudgetLimits{
		OrdersPerAccount: 0, OrdersWindow: 90 * time.Minute,
		CertsPerRegisteredDomain: 12, CertsWindow: 72 * time.Hour,
		DuplicateCerts: 2, DuplicateWindow: 24 * time.Hour,
		FailedValidations: 3, FailedWindow: 30 * time.Minute,
		PauseAfterFailures: 9, PauseWindow: 48 * time.Hour,
	}
	if cfg.ACMELimits != want {
		t.Errorf("limits %+v\nwant %+v", cfg.ACMELimits, want)
	}
	if cfg.ACMELeaseTTL != 10*time.Minute || cfg.ACMEPresentTimeout != 5*time.Second || cfg.ACMERenewInterval != 30*time.Second {
		t.Errorf("lease %s present %s interval %s", cfg.ACMELeaseTTL, cfg.ACMEPresentTimeout, cfg.ACMERenewInterval)
	}
	if cfg, err = run(nil); err != nil || cfg.ACMELimits != certs.DefaultBudgetLimits() {
		t.Errorf("defaults: %v %+v", err, cfg.ACMELimits)
	}
	for _, bad := range [][]string{
		{"--acme-orders-per-account", "-1"},
		{"--acme-certs-window", "0s"},
		{"--acme-lease-ttl", "1s"},
		{"--acme-present-timeout", "0s"},
	} {
		_, err := run(nil, bad...)
		if err == nil || !strings.Contains(err.Error(), bad[0]) || exitCodeOf(err) != exitUsage {
			t.Errorf("%v: %v (exit %d), want a usage error naming the flag", bad, err, exitCodeOf(err))
		}
	}
}

// The root help names flags and commands; each must exist, so the text
// cannot drift from the binary unnoticed.
func TestRootHelpNamesWhatExists(t *testing.T) {
	root := newRootCommand()
	agentCmd, _, err := root.Find([]string{"agent"})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range regexp.MustCompile(`--([a-z][a-z-]*)`).FindAllStringSubmatch(root.Long, -1) {
		if agentCmd.Flags().Lookup(m[1]) == nil {
			t.Errorf("root help names --%s, which the agent does not have", m[1])
		}
	}
	for _, m := range regexp.MustCompile("`([a-z-]+(?: [a-z-]+)*)`").FindAllStringSubmatch(root.Long, -1) {
		args := strings.Fields(strings.TrimPrefix(m[1], "singularity-edge "))
		if c, rest, err := root.Find(args); err != nil || len(rest) > 0 || c == root {
			t.Errorf("root help names `%s`, which is no command", m[1])
		}
	}
}

// A node name longer than agent.MaxNodeNameLen is refused before the agent
// starts, from the flag and from its twin alike, with exit code 2.
func TestNodeNameTooLong(t *testing.T) {
	long := strings.Repeat("n", agent.MaxNodeNameLen+1)
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
	}{
		{"flag", nil, []string{"--node-name", long}},
		{"twin", map[string]string{"EDGE_NODE_NAME": long}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ran := false
			cmd := newAgentCommandEnv(lookupIn(tc.env), func(context.Context, agent.Config) error {
				ran = true
				return nil
			})
			cmd.SetArgs(tc.args)
			cmd.SetOut(io.Discard)
			cmd.SetErr(io.Discard)
			err := cmd.Execute()
			if err == nil || ran || exitCodeOf(err) != exitUsage || !strings.Contains(err.Error(), "--node-name is 129 bytes long") {
				t.Errorf("%v (exit %d, ran %v), want a usage error with the bound", err, exitCodeOf(err), ran)
			}
		})
	}
}
