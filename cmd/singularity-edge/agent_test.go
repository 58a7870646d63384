package main

import (
	"testing"

	"github.com/spf13/pflag"
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
