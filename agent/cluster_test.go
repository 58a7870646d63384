package agent

import (
	"strings"
	"testing"
)

func TestClusterEnvironment(t *testing.T) {
	env := map[string]string{
		"FLY_APP_NAME":     "edge-prod",
		"FLY_PRIVATE_IP":   "fdaa:0:1:a7b:1::2",
		"FLY_MACHINE_ID":   "148e21ea7e3289",
		"EDGE_GOSSIP_KEY":  "k",
		"EDGE_GOSSIP_KEYS": "k2,k3",
		"FLY_API_TOKEN":    "tok",
	}
	cfg := DefaultConfig()
	cfg.ApplyEnvironment(func(k string) string { return env[k] })
	if cfg.App != "edge-prod" || cfg.GossipAddr != "[fdaa:0:1:a7b:1::2]:7946" || cfg.GossipPreset != "fly" ||
		cfg.DNSServer != "[fdaa::3]:53" || cfg.GossipKey != "k" || cfg.GossipKeys != "k2,k3" ||
		cfg.FlyAPIToken != "tok" || cfg.MachineID != "148e21ea7e3289" {
		t.Fatalf("Fly defaults: %+v", cfg)
	}
	if r, err := cfg.replicationAddr(); err != nil || r != "[fdaa:0:1:a7b:1::2]:7947" {
		t.Fatalf("replication address = %q %v, want gossip port + 1", r, err)
	}

	local := DefaultConfig()
	local.ApplyEnvironment(func(string) string { return "" })
	if local.GossipAddr != "" || local.GossipPreset != "local" || local.DNSServer != "" {
		t.Fatalf("gossip must be off without Fly or flags: %+v", local)
	}
}

func TestClusterValidate(t *testing.T) {
	const k = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=" // 32 bytes, base64
	tests := []struct {
		name    string
		mutate  func(*Config)
		wantErr string
	}{
		{"off", func(*Config) {}, ""},
		{"on", func(c *Config) { c.GossipAddr, c.GossipKey = "127.0.0.2:7946", k }, ""},
		{"explicit replication", func(c *Config) {
			c.GossipAddr, c.GossipKey, c.ReplicationAddr = "127.0.0.2:7946", k, "127.0.0.2:9000"
		}, ""},
		{"no key", func(c *Config) { c.GossipAddr = "127.0.0.2:7946" }, "EDGE_GOSSIP_KEY"},
		{"join without gossip", func(c *Config) { c.Join = []string{"10.0.0.1"} }, "--join needs --gossip-addr"},
		{"bad gossip addr", func(c *Config) { c.GossipAddr, c.GossipKey = "7946", k }, "--gossip-addr"},
		{"bad preset", func(c *Config) { c.GossipAddr, c.GossipKey, c.GossipPreset = "127.0.0.2:7946", k, "lan" }, "--gossip-preset"},
		{"port overflow", func(c *Config) { c.GossipAddr, c.GossipKey = "127.0.0.2:65535", k }, "--replication-addr"},
		{"replication on every IPv4 interface", func(c *Config) {
			c.GossipAddr, c.GossipKey, c.ReplicationAddr = "127.0.0.2:7946", k, "0.0.0.0:7947"
		}, "--replication-addr"},
		{"replication on every IPv6 interface", func(c *Config) {
			c.GossipAddr, c.GossipKey, c.ReplicationAddr = "127.0.0.2:7946", k, "[::]:7947"
		}, "--replication-addr"},
		{"replication without a host", func(c *Config) {
			c.GossipAddr, c.GossipKey, c.ReplicationAddr = "127.0.0.2:7946", k, ":7947"
		}, "--replication-addr"},
		{"replication by name", func(c *Config) {
			c.GossipAddr, c.GossipKey, c.ReplicationAddr = "127.0.0.2:7946", k, "edge.internal:7947"
		}, ""},
		// Found when discovery started, after the store had opened (exit
		// code 1); now usage errors naming the setting.
		{"malformed gossip key", func(c *Config) { c.GossipAddr, c.GossipKey = "127.0.0.2:7946", "k" }, "EDGE_GOSSIP_KEY"},
		{"malformed extra gossip key", func(c *Config) {
			c.GossipAddr, c.GossipKey, c.GossipKeys = "127.0.0.2:7946", k, "nope"
		}, "EDGE_GOSSIP_KEYS"},
		{"join a name", func(c *Config) {
			c.GossipAddr, c.GossipKey, c.Join = "127.0.0.2:7946", k, []string{"seed.internal"}
		}, `--join "seed.internal"`},
		{"join a bad port", func(c *Config) {
			c.GossipAddr, c.GossipKey, c.Join = "127.0.0.2:7946", k, []string{"10.0.0.1:99999"}
		}, `--join "10.0.0.1:99999"`},
		{"join", func(c *Config) {
			c.GossipAddr, c.GossipKey, c.Join = "127.0.0.2:7946", k, []string{"10.0.0.1", "[fdaa::2]:7946"}
		}, ""},
		{"dns server without port", func(c *Config) { c.GossipAddr, c.GossipKey, c.DNSServer = "127.0.0.2:7946", k, "fdaa::3" }, "--dns-server"},
		{"dns server", func(c *Config) { c.GossipAddr, c.GossipKey, c.DNSServer = "127.0.0.2:7946", k, "[fdaa::3]:53" }, ""},
		{"machines api over ftp", func(c *Config) {
			c.GossipAddr, c.GossipKey, c.MachinesAPIURL = "127.0.0.2:7946", k, "ftp://machines.example"
		}, "--machines-api-url"},
		{"machines api without host", func(c *Config) {
			c.GossipAddr, c.GossipKey, c.MachinesAPIURL = "127.0.0.2:7946", k, "https://"
		}, "--machines-api-url"},
		{"machines api fixture", func(c *Config) {
			c.GossipAddr, c.GossipKey, c.MachinesAPIURL = "127.0.0.2:7946", k, "http://127.0.0.1:4280"
		}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfig()
			tc.mutate(&cfg)
			err := cfg.Validate()
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want %q", err, tc.wantErr)
			}
		})
	}
}
