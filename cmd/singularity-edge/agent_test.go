package main

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/singularity-ng/singularity-edge/agent"
	"github.com/singularity-ng/singularity-edge/certs"
)

func TestApplyEnvTwins(t *testing.T) {
	fs := pflag.NewFlagSet("agent", pflag.ContinueOnError)
	dataDir := fs.String("data-dir", "./data", "")
	httpAddr := fs.String("http-addr", ":8080", "")
	proxyProto := fs.Bool("proxy-protocol", false, "")
	if err := fs.Parse([]string{"--http-addr", ":9090"}); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"EDGE_DATA_DIR": "/var/lib/edge", "EDGE_HTTP_ADDR": ":1", "EDGE_PROXY_PROTOCOL": "true"}
	if err := applyEnvTwins(fs, func(k string) string { return env[k] }); err != nil {
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
	if err := applyEnvTwins(fs2, func(k string) string { return env[k] }); err == nil {
		t.Error("a malformed EDGE_PROXY_PROTOCOL was accepted")
	}
}

// The budget flags fill the agent's configuration as given (0 included:
// that limit off), their environment twins too, and bad values are a
// usage error naming the flag.
func TestACMEBudgetFlags(t *testing.T) {
	run := func(env map[string]string, args ...string) (agent.Config, error) {
		var got agent.Config
		cmd := newAgentCommandEnv(func(k string) string { return env[k] }, func(_ context.Context, c agent.Config) error {
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
