package main

import (
	"context"
	"net"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/singularity-ng/singularity-edge/agent"
)

// flyToml is the part of fly.toml the agent's configuration must agree with.
type flyToml struct {
	App         string            `toml:"app"`
	KillSignal  string            `toml:"kill_signal"`
	KillTimeout int               `toml:"kill_timeout"`
	Env         map[string]string `toml:"env"`
	Deploy      struct {
		Strategy string `toml:"strategy"`
	} `toml:"deploy"`
	Mounts []struct {
		Source                  string `toml:"source"`
		Destination             string `toml:"destination"`
		InitialSize             string `toml:"initial_size"`
		AutoExtendSizeThreshold int    `toml:"auto_extend_size_threshold"`
		AutoExtendSizeIncrement string `toml:"auto_extend_size_increment"`
	} `toml:"mounts"`
	Services []struct {
		Protocol     string `toml:"protocol"`
		InternalPort int    `toml:"internal_port"`
		Ports        []struct {
			Port              int      `toml:"port"`
			Handlers          []string `toml:"handlers"`
			ProxyProtoOptions struct {
				Version string `toml:"version"`
			} `toml:"proxy_proto_options"`
		} `toml:"ports"`
		TCPChecks  []map[string]any `toml:"tcp_checks"`
		HTTPChecks []map[string]any `toml:"http_checks"`
	} `toml:"services"`
	Checks map[string]struct {
		Type   string `toml:"type"`
		Port   int    `toml:"port"`
		Path   string `toml:"path"`
		Method string `toml:"method"`
	} `toml:"checks"`
}

// flyMachineEnv is what the platform sets in a Machine of the app, plus the
// secrets `fly secrets set` adds.
func flyMachineEnv(app string) map[string]string {
	return map[string]string{
		"FLY_APP_NAME":        app,
		"FLY_REGION":          "ams",
		"FLY_MACHINE_ID":      "3d8d9e1bd40e89",
		"FLY_PRIVATE_IP":      "fdaa:2:5a5c:a7b:18c:4c0e:2d1f:2",
		"EDGE_ADMIN_TOKEN":    "0123456789abcdef0123456789abcdef",
		"EDGE_ENCRYPTION_KEY": strings.Repeat("ab", 32),
		"EDGE_GOSSIP_KEY":     "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
	}
}

// TestFlyTomlMatchesAgent reads fly.toml with a TOML parser and checks it
// against the configuration the agent command derives from a Machine's
// environment (platform variables, secrets, and fly.toml's own [env]).
func TestFlyTomlMatchesAgent(t *testing.T) {
	var ft flyToml
	md, err := toml.DecodeFile("../../fly.toml", &ft)
	if err != nil {
		t.Fatalf("fly.toml: %v", err)
	}
	if len(md.Undecoded()) > 0 && testing.Verbose() {
		t.Logf("keys not checked here: %v", md.Undecoded())
	}

	env := flyMachineEnv(ft.App)
	for k, v := range ft.Env {
		if strings.HasPrefix(k, "FLY_") {
			t.Errorf("[env] sets %s: Fly rejects FLY_* names there", k)
		}
		env[k] = v
	}
	var cfg agent.Config
	cmd := newAgentCommandEnv(lookupIn(env), func(_ context.Context, c agent.Config) error {
		cfg = c
		return nil
	})
	cmd.SetArgs(nil)
	if err := cmd.Execute(); err != nil {
		t.Fatalf("the agent refuses fly.toml's environment: %v", err)
	}

	// Secrets never in [env].
	secretName := regexp.MustCompile(`(?i)TOKEN|KEY|SECRET|PASSWORD`)
	for k := range ft.Env {
		if secretName.MatchString(k) {
			t.Errorf("[env] holds %s, which looks like a secret: use `fly secrets set`", k)
		}
	}
	// Every [env] key is an agent flag's twin, so a typo cannot go unnoticed.
	for k := range ft.Env {
		flag := strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(k, "EDGE_"), "_", "-"))
		if !strings.HasPrefix(k, "EDGE_") || cmd.Flags().Lookup(flag) == nil {
			t.Errorf("[env] %s is not the twin of any agent flag", k)
		}
	}

	// Node identity and private addresses from the platform.
	if cfg.NodeName != env["FLY_MACHINE_ID"] || cfg.Region != env["FLY_REGION"] {
		t.Errorf("node %q region %q, want the Machine id and region", cfg.NodeName, cfg.Region)
	}
	if host, _, _ := net.SplitHostPort(cfg.AdminAddr); host != env["FLY_PRIVATE_IP"] {
		t.Errorf("admin API on %s, want the 6PN address", cfg.AdminAddr)
	}

	// Volume at the data directory, with a size and auto-extend.
	if len(ft.Mounts) != 1 {
		t.Fatalf("%d [[mounts]], want one volume per Machine", len(ft.Mounts))
	}
	m := ft.Mounts[0]
	if m.Destination != cfg.DataDir {
		t.Errorf("volume mounted at %s, agent data dir is %s", m.Destination, cfg.DataDir)
	}
	if m.InitialSize == "" || m.AutoExtendSizeThreshold == 0 || m.AutoExtendSizeIncrement == "" {
		t.Errorf("volume without initial size or auto-extend: %+v", m)
	}

	// Raw TCP services on 80 and 443 with PROXY v2 into the agent's listeners.
	wantInternal := map[int]int{80: portOf(t, cfg.HTTPAddr), 443: portOf(t, cfg.HTTPSAddr)}
	seen := map[int]bool{}
	for _, s := range ft.Services {
		if s.Protocol != "tcp" {
			t.Errorf("service on %d: protocol %q, want tcp", s.InternalPort, s.Protocol)
		}
		if len(s.TCPChecks) == 0 {
			t.Errorf("service on %d has no TCP check", s.InternalPort)
		}
		if len(s.HTTPChecks) > 0 {
			t.Errorf("service on %d has an HTTP check: it would arrive without the PROXY header", s.InternalPort)
		}
		for _, p := range s.Ports {
			want, ok := wantInternal[p.Port]
			if !ok {
				t.Errorf("public port %d is not one the agent serves", p.Port)
				continue
			}
			seen[p.Port] = true
			if s.InternalPort != want {
				t.Errorf("public %d -> internal %d, agent listens on %d", p.Port, s.InternalPort, want)
			}
			if strings.Join(p.Handlers, ",") != "proxy_proto" || p.ProxyProtoOptions.Version != "v2" {
				t.Errorf("public %d: handlers %v version %q, want only proxy_proto v2 (the agent terminates TLS)", p.Port, p.Handlers, p.ProxyProtoOptions.Version)
			}
			if !cfg.ProxyProtocol {
				t.Errorf("public %d sends PROXY headers but the agent does not read them", p.Port)
			}
		}
	}
	for port := range wantInternal {
		if !seen[port] {
			t.Errorf("no service for public port %d", port)
		}
	}

	// The HTTP check dials the health listener on 0.0.0.0.
	if cfg.HealthAddr == "" {
		t.Fatal("no health listener on Fly")
	}
	host, _, _ := net.SplitHostPort(cfg.HealthAddr)
	if host != "" && host != "0.0.0.0" && host != "::" {
		t.Errorf("health listener on %s: Fly's checker needs 0.0.0.0", cfg.HealthAddr)
	}
	httpChecks := 0
	for name, c := range ft.Checks {
		if c.Type != "http" {
			continue
		}
		httpChecks++
		if c.Port != portOf(t, cfg.HealthAddr) || c.Path != agent.HealthPath {
			t.Errorf("check %s dials :%d%s, health listener is %s%s", name, c.Port, c.Path, cfg.HealthAddr, agent.HealthPath)
		}
		if c.Port == portOf(t, cfg.AdminAddr) {
			t.Errorf("check %s dials the admin API, which is on the 6PN address behind a token", name)
		}
	}
	if httpChecks == 0 {
		t.Error("fly.toml has no HTTP check")
	}

	// Stop: the signal the agent drains on, and time for the drain.
	if ft.KillSignal != "SIGTERM" && ft.KillSignal != "SIGINT" {
		t.Errorf("kill_signal %q: the agent drains on SIGTERM or SIGINT", ft.KillSignal)
	}
	if kill := time.Duration(ft.KillTimeout) * time.Second; kill < cfg.ShutdownTimeout+5*time.Second {
		t.Errorf("kill_timeout %s leaves no time for the %s drain and the store's close", kill, cfg.ShutdownTimeout)
	}
	if ft.Deploy.Strategy != "rolling" {
		t.Errorf("deploy strategy %q: Machines with volumes are replaced in place (rolling)", ft.Deploy.Strategy)
	}
}

func portOf(t *testing.T, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("%q: %v", addr, err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatalf("%q: %v", addr, err)
	}
	return n
}
