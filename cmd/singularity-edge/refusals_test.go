package main

import (
	"context"
	"encoding/json"
	"errors"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"

	"github.com/singularity-ng/singularity-edge/admin"
	"github.com/singularity-ng/singularity-edge/apitypes"
	"github.com/singularity-ng/singularity-edge/storage"
)

// realAgent is the admin API on a real store, for CLI tests that check
// what was (not) stored.
func realAgent(t *testing.T) *storage.Store {
	t.Helper()
	dbEnv(t)
	st := openTestStore(t, t.TempDir())
	t.Cleanup(func() { _ = st.Close() })
	cfg := admin.DefaultConfig()
	cfg.Token = token
	srv, err := admin.New(cfg, admin.Deps{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv.Handler())
	t.Cleanup(ts.Close)
	t.Setenv("EDGE_API", ts.URL)
	t.Setenv("EDGE_ADMIN_TOKEN", token)
	return st
}

type storeState struct {
	Pools    []storage.Pool
	Backends []storage.Backend
	Index    uint64
}

func stateOf(t *testing.T, st *storage.Store) storeState {
	t.Helper()
	ctx := context.Background()
	ps, err := st.ListPools(ctx, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	bs, err := st.ListBackends(ctx, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	return storeState{Pools: ps, Backends: bs, Index: st.LastIndex()}
}

func mustRun(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, code := runCLI(t, "", args...)
	if code != 0 {
		t.Fatalf("%v: exit %d: %s", args, code, errOut)
	}
	return out
}

// Every configuration the API refuses is refused through the CLI too,
// with the exit code of its class and a sentence naming the field and the
// other object, and the store is unchanged.
func TestCLIRefusedConfigurationsLeaveTheStoreUnchanged(t *testing.T) {
	st := realAgent(t)
	mustRun(t, "pools", "create", "web", "--ssl-mode", "flexible", "--ssl-domain", "www.example.test", "--host", "example.test", "--default")
	mustRun(t, "pools", "create", "wild", "--host", "*.apps.example.test")
	mustRun(t, "pools", "create", "pt", "--ssl-mode", "passthrough", "--ssl-domain", "pt.example.test")
	mustRun(t, "pools", "create", "checked", "--host", "checked.test", "--health-check-type", "http")
	mustRun(t, "backends", "add", "checked", "http://10.0.0.6:8080", "--id", "c1")
	before := stateOf(t, st)
	for _, tc := range []struct {
		name     string
		args     []string
		code     int
		mentions []string
	}{
		{"host takeover", []string{"pools", "create", "evil", "--host", "www.example.test"}, exitConflict, []string{"hosts", `pool "web"`}},
		{"wildcard takeover", []string{"pools", "create", "evil", "--host", "*.apps.example.test"}, exitConflict, []string{`pool "wild"`}},
		{"takeover by update", []string{"pools", "update", "wild", "--ssl-mode", "flexible", "--ssl-domain", "example.test"}, exitConflict, []string{"ssl_domain", `pool "web"`}},
		{"second default", []string{"pools", "create", "evil", "--default"}, exitConflict, []string{"default", `pool "web"`}},
		{"https backend under http checks", []string{"backends", "add", "checked", "https://10.0.0.9"}, exitInvalid, []string{"url", `pool "checked"`}},
		{"http backend on passthrough", []string{"backends", "add", "pt", "http://10.0.0.9:80"}, exitInvalid, []string{"passthrough"}},
		{"passthrough for an http backend", []string{"pools", "update", "checked", "--ssl-mode", "passthrough"}, exitConflict, []string{"ssl_mode", "10.0.0.6"}},
		{"TLS pool without host", []string{"pools", "create", "evil", "--ssl-mode", "full"}, exitInvalid, []string{"ssl_domain"}},
		{"weight 0", []string{"backends", "add", "wild", "http://10.0.0.9", "--weight", "0"}, exitInvalid, []string{"weight", "draining"}},
		{"weight 0 by update", []string{"backends", "update", "checked", "c1", "--weight", "0"}, exitInvalid, []string{"weight"}},
		{"port 0", []string{"backends", "add", "wild", "--host", "10.0.0.9", "--port", "0"}, exitInvalid, []string{"port"}},
		{"interval 0", []string{"pools", "create", "evil", "--health-check-interval", "0s"}, exitInvalid, []string{"health_check_interval"}},
		{"rise 0", []string{"pools", "create", "evil", "--health-check-rise", "0"}, exitInvalid, []string{"health_check.rise"}},
		{"upper-case name", []string{"pools", "create", "P11"}, exitInvalid, []string{"name", `"p11"`}},
		{"ssl domain without a mode", []string{"pools", "create", "evil", "--ssl-domain", "evil.example.test"}, exitInvalid, []string{"ssl_mode", "full_strict", "off"}},
		{"ssl domain without a mode by update", []string{"pools", "update", "wild", "--ssl-domain", "evil.example.test"}, exitInvalid, []string{"ssl_mode", "full_strict"}},
		{"--wait below 1ms", []string{"pools", "delete", "wild", "--wait", "0.5ms"}, exitUsage, []string{"--wait"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, errOut, code := runCLI(t, "", tc.args...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d: %s", code, tc.code, errOut)
			}
			for _, m := range tc.mentions {
				if !strings.Contains(errOut, m) {
					t.Errorf("message lacks %s: %s", m, errOut)
				}
			}
			if strings.Count(errOut, "error:") != 1 {
				t.Errorf("repeated prefix: %s", errOut)
			}
		})
	}
	if after := stateOf(t, st); !reflect.DeepEqual(before, after) {
		t.Fatalf("refused commands changed the store:\nbefore %+v\nafter  %+v", before, after)
	}
}

// `pools update --ssl-domain` changes ssl_domain and nothing else (the
// README's first steps do this to a pool with hosts).
func TestCLIUpdateOneFieldKeepsTheOthers(t *testing.T) {
	st := realAgent(t)
	mustRun(t, "pools", "create", "web", "--host", "example.test", "--host", "www.example.test", "--metadata", "team=edge", "--metadata", "tier=1")
	mustRun(t, "pools", "update", "web", "--ssl-mode", "flexible", "--ssl-domain", "www.example.test")
	p, err := st.GetPool(context.Background(), "web")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(p.Hosts, ",") != "example.test,www.example.test" || p.SSLDomain != "www.example.test" {
		t.Fatalf("hosts %v ssl_domain %q after --ssl-domain", p.Hosts, p.SSLDomain)
	}
	mustRun(t, "pools", "update", "web", "--remove-metadata", "tier")
	if p, _ = st.GetPool(context.Background(), "web"); !reflect.DeepEqual(p.Metadata, map[string]string{"team": "edge"}) {
		t.Fatalf("metadata after --remove-metadata tier: %v", p.Metadata)
	}

	mustRun(t, "backends", "add", "web", "http://10.0.0.1:8080", "--id", "b1")
	mustRun(t, "backends", "update", "web", "b1", "--weight", "5", "--draining")
	b, err := st.GetBackend(context.Background(), "b1")
	if err != nil || b.Weight != 5 || !b.Draining || b.Port != 8080 {
		t.Fatalf("backend after update: %+v %v", b, err)
	}
}

func TestCLIErrorsAsJSONAndUsageExitCodes(t *testing.T) {
	realAgent(t)
	_, errOut, code := runCLI(t, "", "pools", "create", "P11", "-o", "json")
	if code != exitInvalid {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var shape struct {
		apitypes.ErrorBody
		ExitCode int `json:"exit_code"`
	}
	if err := json.Unmarshal([]byte(errOut), &shape); err != nil || shape.Error.Code != "invalid" || shape.ExitCode != exitInvalid ||
		len(shape.Error.Fields) != 1 || shape.Error.Fields[0].Field != "name" {
		t.Fatalf("--output json error = %q (%v)", errOut, err)
	}
	_, errOut, code = runCLI(t, "", "pools", "get", "-o", "json")
	if code != exitUsage || !json.Valid([]byte(errOut)) || !strings.Contains(errOut, `"usage"`) {
		t.Fatalf("usage error with -o json: exit %d %s", code, errOut)
	}
	for _, args := range [][]string{{"bogus"}, {"pools", "bogus"}, {"pools", "list", "--no-such-flag"}, {"backends", "update", "web"}} {
		if _, errOut, code := runCLI(t, "", args...); code != exitUsage {
			t.Errorf("%v: exit %d, want %d (usage): %s", args, code, exitUsage, errOut)
		}
	}
}

func TestHumanMessageDropsPackagePrefixes(t *testing.T) {
	for in, want := range map[string]string{
		"storage: encryption key: this store holds keys":     "encryption key: this store holds keys",
		"--admin-addr: admin: storage: refused":              "--admin-addr: refused",
		"pool \"storage: x\" is fine: proxy: pools: nothing": "pool \"storage: x\" is fine: nothing",
	} {
		if got := humanMessage(errors.New(in)); got != want {
			t.Errorf("humanMessage(%q) = %q, want %q", in, got, want)
		}
	}
}

// Flag values the CLI cannot send as given are refused before any request,
// with the usage exit code and a sentence naming the flag: --limit 0 used
// to list every item (the flag's "not given" value), and a --metadata key
// given twice kept the last value without a word.
func TestCLIRefusesFlagValuesItWouldReplace(t *testing.T) {
	st := realAgent(t)
	mustRun(t, "pools", "create", "web", "--metadata", "team=edge")
	before := stateOf(t, st)
	for _, tc := range []struct {
		args     []string
		mentions string
	}{
		{[]string{"pools", "list", "--limit", "0"}, "--limit must be from 1 to 1000, not 0"},
		{[]string{"pools", "list", "--limit", "-5"}, "--limit must be from 1 to 1000, not -5"},
		{[]string{"backends", "list", "web", "--limit", "0"}, "--limit must be from 1 to 1000, not 0"},
		{[]string{"certs", "list", "--limit", "1001"}, "--limit must be from 1 to 1000, not 1001"},
		{[]string{"audit", "list", "--limit", "0"}, "--limit must be from 1 to 1000, not 0"},
		{[]string{"pools", "create", "api", "--metadata", "team=a", "--metadata", "team=b"}, `--metadata gives "team" twice`},
		{[]string{"pools", "update", "web", "--metadata", "team=a", "--metadata", "team=b"}, `--metadata gives "team" twice`},
		{[]string{"backends", "add", "web", "http://10.0.0.1:80", "--metadata", "k=1", "--metadata", "k=1"}, `--metadata gives "k" twice`},
	} {
		_, errOut, code := runCLI(t, "", tc.args...)
		if code != exitUsage || !strings.Contains(errOut, tc.mentions) {
			t.Errorf("%v: exit %d, want %d (usage) and %q: %s", tc.args, code, exitUsage, tc.mentions, errOut)
		}
	}
	if after := stateOf(t, st); !reflect.DeepEqual(before, after) {
		t.Fatalf("refused commands changed the store:\nbefore %+v\nafter  %+v", before, after)
	}
	if out := mustRun(t, "pools", "list", "--limit", "1"); !strings.Contains(out, "web") {
		t.Errorf("pools list --limit 1: %s", out)
	}
}
