package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/singularity-ng/singularity-edge/apitypes"
)

// poolAlgorithms lists the balancing algorithms the agent accepts, for
// help texts and completion (the agent validates).
func poolAlgorithms() []string {
	return []string{"round_robin", "least_connections", "weighted_round_robin", "random", "consistent_hash", "power_of_two_choices"}
}

// poolSSLModes lists the SSL modes the agent accepts.
func poolSSLModes() []string {
	return []string{"off", "flexible", "full", "full_strict", "passthrough"}
}

// poolJSON is a pool as the admin API shows it.
type poolJSON = apitypes.Pool

func newPoolsCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "pools",
		Aliases: []string{"pool"},
		Short:   "List, create, change and delete pools on a running agent",
		Long: `Manage pools through the admin API of a running agent.

The agent is found at --api (env EDGE_API, default ` + defaultAPI + `); the admin
token comes from EDGE_ADMIN_TOKEN or --token-file.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	opts := addAPIFlags(cmd)
	cmd.AddCommand(
		newPoolsListCommand(opts),
		newPoolsGetCommand(opts),
		newPoolsWriteCommand(opts, false),
		newPoolsWriteCommand(opts, true),
		newPoolsDeleteCommand(opts),
	)
	return cmd
}

func poolNameCompletion(opts *apiOptions) func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
	return keyCompletion(opts, func([]string) string { return "/api/pools" }, "name", 0)
}

func poolPath(name string) string { return "/api/pools/" + url.PathEscape(name) }

func newPoolsListCommand(opts *apiOptions) *cobra.Command {
	var lo *listOptions
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List pools",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := opts.client(cmd)
			if err != nil {
				return err
			}
			page, err := c.list(cmd.Context(), "/api/pools", *lo)
			if err != nil {
				return err
			}
			if c.json {
				return printValue(c.stdout, page)
			}
			t := newTable(c.stdout, "NAME", "ALGORITHM", "SSL MODE", "SSL DOMAIN", "HOSTS", "BACKENDS", "HEALTHY", "CONNECTIONS", "DEFAULT")
			for _, raw := range page.Items {
				var p poolJSON
				if err := json.Unmarshal(raw, &p); err != nil {
					return decodeAnswer(&apiResponse{Body: raw}, &p)
				}
				backends := fmt.Sprint(p.Stats.TotalBackends)
				healthy := fmt.Sprint(p.Stats.HealthyBackends)
				conns := fmt.Sprint(p.Stats.CurrentConnections)
				t.row(p.Name, p.Algorithm, p.SSLMode, p.SSLDomain, joinOrDash(p.Hosts), backends, healthy, conns, yesNo(p.Default))
			}
			if err := t.flush(); err != nil {
				return err
			}
			return printNext(c, page.Next)
		},
	}
	lo = addListFlags(cmd)
	return cmd
}

// printNext tells a person how to fetch the next page.
func printNext(c *apiClient, next string) error {
	if next == "" {
		return nil
	}
	_, err := fmt.Fprintf(c.stdout, "\nMore results: repeat with --after %s\n", next)
	return err
}

func newPoolsGetCommand(opts *apiOptions) *cobra.Command {
	return &cobra.Command{
		Use:               "get NAME",
		Short:             "Show one pool",
		Args:              exactArgs(1, "NAME"),
		ValidArgsFunction: poolNameCompletion(opts),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := opts.client(cmd)
			if err != nil {
				return err
			}
			resp, err := c.getJSON(cmd.Context(), poolPath(args[0]), nil)
			if err != nil {
				return err
			}
			return showAnswer(c, resp.Body, func(p *poolJSON) error { return showPool(c, p, resp.Header.Get("ETag")) })
		},
	}
}

func showPool(c *apiClient, p *poolJSON, etag string) error {
	d := newDetails(c.stdout)
	d.line("Name", p.Name)
	d.line("Algorithm", p.Algorithm)
	d.line("SSL mode", p.SSLMode)
	d.line("SSL domain", p.SSLDomain)
	d.line("SSL certificate", p.SSLCertID)
	d.line("Hosts", joinOrDash(p.Hosts))
	d.line("Default pool", yesNo(p.Default))
	d.line("Validate backend cert", yesNo(p.ValidateBackendCert))
	d.line("Health check interval", formatMillis(p.HealthCheckInterval))
	hc := p.HealthCheck
	d.line("Health check", fmt.Sprintf("type=%s path=%s expected_status=%d timeout=%s rise=%d fall=%d",
		orDash(hc.Type), orDash(hc.Path), hc.ExpectedStatus, formatMillis(hc.Timeout), hc.Rise, hc.Fall))
	d.line("Passive checks", fmt.Sprintf("max_fails=%d cooldown=%s", hc.MaxFails, formatMillis(hc.Cooldown)))
	d.line("Hash on", p.HashOn)
	d.line("Sticky cookie", p.StickyCookie)
	d.line("Prefer region", yesNo(p.PreferRegion))
	d.line("Fail open", yesNo(p.FailOpen))
	d.line("Plain HTTP allowed", yesNo(p.AllowHTTP))
	d.line("Automatic certificate", yesNo(p.AutoCert))
	d.line("Hold new backends", yesNo(p.HoldNewBackends))
	d.line("Backend CA bundle", caSummary(p.BackendCA))
	d.line("Backend server name", p.BackendServerName)
	d.line("Backend client cert", p.BackendClientCertID)
	d.line("On-demand TLS", onDemandSummary(p))
	d.line("Metadata", formatMetadata(p.Metadata))
	s := p.Stats
	d.line("Backends", fmt.Sprintf("%d total, %d healthy, %d unhealthy, %d draining (%s)", s.TotalBackends, s.HealthyBackends, s.UnhealthyBackends, s.DrainingBackends, orDash(s.Source)))
	d.line("Connections", fmt.Sprint(s.CurrentConnections))
	d.line("Requests", fmt.Sprintf("%d (%d failed)", s.TotalRequests, s.TotalFailures))
	d.line("Created", formatTime(p.InsertedAt))
	d.line("Updated", formatTime(p.UpdatedAt))
	d.line("ETag", etag)
	return d.flush()
}

// onDemandSummary is one line: off, or the allow-list, ask URL and rate.
func onDemandSummary(p *poolJSON) string {
	if !p.OnDemandTLS {
		return "no"
	}
	return fmt.Sprintf("yes allow=%s ask=%s rate=%d/min", joinOrDash(p.OnDemandAllow), orDash(p.OnDemandAsk), p.OnDemandRate)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// poolFlags binds the writable pool fields to flags. Only the flags given
// on the command line are sent: create leaves the rest to the agent's
// defaults, update (PATCH) leaves them unchanged.
type poolFlags struct {
	algorithm, sslMode, sslDomain, sslCertID string
	hosts                                    []string
	validateBackendCert                      bool
	healthCheckInterval                      time.Duration
	hcType, hcPath                           string
	hcExpectedStatus, hcRise, hcFall         int
	hcMaxFails                               int
	hcTimeout, hcCooldown                    time.Duration
	hashOn, stickyCookie                     string
	preferRegion, failOpen, holdNewBackends  bool
	allowHTTP, autoCert                      bool
	isDefault                                bool
	backendCAFile, backendServerName         string
	backendClientCertID                      string
	onDemandTLS                              bool
	onDemandAllow                            []string
	onDemandAsk                              string
	onDemandRate                             int
	metadata, removeMetadata                 []string
	ifMatch                                  string
}

func (pf *poolFlags) register(cmd *cobra.Command, update bool) {
	f := cmd.Flags()
	f.StringVar(&pf.algorithm, "algorithm", "", "balancing algorithm: "+strings.Join(poolAlgorithms(), ", "))
	f.StringVar(&pf.sslMode, "ssl-mode", "", "TLS handling: "+strings.Join(poolSSLModes(), ", "))
	f.StringVar(&pf.sslDomain, "ssl-domain", "", "primary host name the pool serves (and its certificate's domain); with a pool in ssl mode off, give --ssl-mode too ('off' included)")
	f.StringVar(&pf.sslCertID, "ssl-cert-id", "", "id of an uploaded certificate to present (default: by SNI)")
	hostsHelp := "further host name the pool serves, exact or *.wildcard (repeatable)"
	if update {
		hostsHelp += "; replaces the list, --host '' clears it"
	}
	f.StringArrayVar(&pf.hosts, "host", nil, hostsHelp)
	f.BoolVar(&pf.validateBackendCert, "validate-backend-cert", false, "verify backend certificates in off, flexible and passthrough pools (https:// backends, https checks); full_strict always verifies, full never")
	f.DurationVar(&pf.healthCheckInterval, "health-check-interval", 0, "time between active health checks, e.g. 10s")
	f.StringVar(&pf.hcType, "health-check-type", "", "active health check: tcp, http or https")
	f.StringVar(&pf.hcPath, "health-check-path", "", "request path of http(s) health checks")
	f.IntVar(&pf.hcExpectedStatus, "health-check-status", 0, "expected HTTP status of health checks (0: any 2xx/3xx)")
	f.DurationVar(&pf.hcTimeout, "health-check-timeout", 0, "time limit of one health check")
	f.IntVar(&pf.hcRise, "health-check-rise", 0, "consecutive passes that make a backend healthy")
	f.IntVar(&pf.hcFall, "health-check-fall", 0, "consecutive failures that make a backend unhealthy")
	f.IntVar(&pf.hcMaxFails, "max-fails", 0, "passive checks: consecutive errors that eject a backend, 1 to 100 (0 or -1: passive checks off; default 3)")
	f.DurationVar(&pf.hcCooldown, "cooldown", 0, "passive checks: how long an ejected backend stays out")
	f.StringVar(&pf.hashOn, "hash-on", "", `consistent_hash key: "client_ip" or "header:<Name>"`)
	f.StringVar(&pf.stickyCookie, "sticky-cookie", "", "name of a signed cookie that pins clients to a backend")
	f.BoolVar(&pf.preferRegion, "prefer-region", false, "prefer backends in the agent's own region")
	f.BoolVar(&pf.failOpen, "fail-open", false, "try unhealthy backends when none is healthy instead of answering 503")
	f.BoolVar(&pf.allowHTTP, "allow-http", false, "serve plain HTTP for a TLS pool instead of redirecting it to HTTPS")
	f.BoolVar(&pf.autoCert, "auto-cert", true, "obtain a certificate for --ssl-domain from the agent's ACME CA when none covers it (--auto-cert=false to opt out)")
	f.BoolVar(&pf.holdNewBackends, "hold-new-backends", false, "keep a new backend out of rotation until its first passing check")
	f.BoolVar(&pf.isDefault, "default", false, "serve host names no other pool claims")
	f.StringVar(&pf.backendCAFile, "backend-ca-file", "", "PEM file of the CAs that verify this pool's backend certificates ('' clears)")
	f.StringVar(&pf.backendServerName, "backend-server-name", "", "name sent as SNI to backends and verified (default: each backend's host)")
	f.StringVar(&pf.backendClientCertID, "backend-client-cert-id", "", "id of an uploaded certificate presented to backends that ask for one")
	f.BoolVar(&pf.onDemandTLS, "on-demand-tls", false, "give names routed here that no certificate covers one during their first handshake (needs --on-demand-allow or --on-demand-ask)")
	allowHelp := "on-demand TLS: host pattern allowed a certificate, exact or *.wildcard; also routes matching names here (repeatable)"
	if update {
		allowHelp += "; replaces the list, --on-demand-allow '' clears it"
	}
	f.StringArrayVar(&pf.onDemandAllow, "on-demand-allow", nil, allowHelp)
	f.StringVar(&pf.onDemandAsk, "on-demand-ask", "", "on-demand TLS: URL asked GET ?domain=<name> before each new name; a 2xx answer allows it ('' clears)")
	f.IntVar(&pf.onDemandRate, "on-demand-rate", 0, "on-demand TLS: orders per minute for this pool across the cluster (default 10)")
	metaHelp := "metadata entry KEY=VALUE (repeatable)"
	if update {
		metaHelp += "; sets KEY and keeps the other keys, --metadata '' removes every key"
		f.StringVar(&pf.ifMatch, "if-match", "", "apply only if the pool's ETag is still this one (from `pools get`)")
		f.StringArrayVar(&pf.removeMetadata, "remove-metadata", nil, "metadata key to remove (repeatable)")
	}
	f.StringArrayVar(&pf.metadata, "metadata", nil, metaHelp)
	_ = cmd.RegisterFlagCompletionFunc("algorithm", fixedCompletion(poolAlgorithms()...))
	_ = cmd.RegisterFlagCompletionFunc("ssl-mode", fixedCompletion(poolSSLModes()...))
	_ = cmd.RegisterFlagCompletionFunc("health-check-type", fixedCompletion("tcp", "http", "https"))
}

// body returns the JSON fields for the flags the user set.
func (pf *poolFlags) body(cmd *cobra.Command) (map[string]any, error) {
	f := cmd.Flags()
	body := map[string]any{}
	hc := map[string]any{}
	set := func(flag string, dst map[string]any, key string, v any) {
		if f.Changed(flag) {
			dst[key] = v
		}
	}
	set("algorithm", body, "algorithm", pf.algorithm)
	set("ssl-mode", body, "ssl_mode", pf.sslMode)
	set("ssl-domain", body, "ssl_domain", pf.sslDomain)
	set("ssl-cert-id", body, "ssl_cert_id", pf.sslCertID)
	if f.Changed("host") {
		// --host '' clears the list; every other value goes as typed, for
		// the agent to store or refuse (it never trims or lower-cases).
		hosts := []string{}
		for _, h := range pf.hosts {
			if h != "" {
				hosts = append(hosts, h)
			}
		}
		body["hosts"] = hosts
	}
	set("validate-backend-cert", body, "validate_backend_cert", pf.validateBackendCert)
	for _, d := range []struct {
		flag string
		v    time.Duration
	}{{"health-check-interval", pf.healthCheckInterval}, {"health-check-timeout", pf.hcTimeout}, {"cooldown", pf.hcCooldown}} {
		if f.Changed(d.flag) && (d.v < 0 || d.v%time.Millisecond != 0) {
			return nil, withExitCode(exitUsage, fmt.Errorf("--%s must be a positive whole number of milliseconds, not %s", d.flag, d.v))
		}
	}
	set("health-check-interval", body, "health_check_interval", pf.healthCheckInterval.Milliseconds())
	set("health-check-type", hc, "type", pf.hcType)
	set("health-check-path", hc, "path", pf.hcPath)
	set("health-check-status", hc, "expected_status", pf.hcExpectedStatus)
	set("health-check-timeout", hc, "timeout", pf.hcTimeout.Milliseconds())
	set("health-check-rise", hc, "rise", pf.hcRise)
	set("health-check-fall", hc, "fall", pf.hcFall)
	set("max-fails", hc, "max_fails", pf.hcMaxFails)
	set("cooldown", hc, "cooldown", pf.hcCooldown.Milliseconds())
	if len(hc) > 0 {
		body["health_check"] = hc
	}
	set("hash-on", body, "hash_on", pf.hashOn)
	set("sticky-cookie", body, "sticky_cookie", pf.stickyCookie)
	set("prefer-region", body, "prefer_region", pf.preferRegion)
	set("fail-open", body, "fail_open", pf.failOpen)
	set("allow-http", body, "allow_http", pf.allowHTTP)
	set("auto-cert", body, "auto_cert", pf.autoCert)
	set("hold-new-backends", body, "hold_new_backends", pf.holdNewBackends)
	set("default", body, "default", pf.isDefault)
	set("on-demand-tls", body, "on_demand_tls", pf.onDemandTLS)
	if f.Changed("on-demand-allow") {
		allow := []string{}
		for _, h := range pf.onDemandAllow {
			if h != "" {
				allow = append(allow, h)
			}
		}
		body["on_demand_allow"] = allow
	}
	set("on-demand-ask", body, "on_demand_ask", pf.onDemandAsk)
	set("on-demand-rate", body, "on_demand_rate", pf.onDemandRate)
	if f.Changed("backend-ca-file") {
		ca := ""
		if pf.backendCAFile != "" {
			b, err := os.ReadFile(pf.backendCAFile)
			if err != nil {
				return nil, withExitCode(exitUsage, fmt.Errorf("--backend-ca-file: %w", err))
			}
			ca = string(b)
		}
		body["backend_ca"] = ca
	}
	set("backend-server-name", body, "backend_server_name", pf.backendServerName)
	set("backend-client-cert-id", body, "backend_client_cert_id", pf.backendClientCertID)
	if md, ok, err := metadataBody(cmd, pf.metadata, pf.removeMetadata); err != nil {
		return nil, err
	} else if ok {
		body["metadata"] = md
	}
	return body, nil
}

// metadataBody builds the metadata of a request from --metadata and
// --remove-metadata: KEY=VALUE sets a key, a removed key is sent as null
// (an update deletes it), and a lone --metadata ” sends null for the
// whole map (every key removed). ok is false when neither flag was given.
func metadataBody(cmd *cobra.Command, set, remove []string) (any, bool, error) {
	f := cmd.Flags()
	if !f.Changed("metadata") && (f.Lookup("remove-metadata") == nil || !f.Changed("remove-metadata")) {
		return nil, false, nil
	}
	if len(set) == 1 && set[0] == "" && len(remove) == 0 {
		return nil, true, nil
	}
	m, err := parseMetadata(set)
	if err != nil {
		return nil, false, err
	}
	out := map[string]any{}
	for k, v := range m {
		out[k] = v
	}
	for _, k := range remove {
		if _, dup := out[k]; dup {
			return nil, false, withExitCode(exitUsage, fmt.Errorf("--metadata and --remove-metadata both name %q", k))
		}
		out[k] = nil
	}
	return out, true, nil
}

// parseMetadata turns KEY=VALUE flags into a map; an empty flag clears.
func parseMetadata(entries []string) (map[string]string, error) {
	m := map[string]string{}
	for _, e := range entries {
		if e == "" {
			continue
		}
		k, v, ok := strings.Cut(e, "=")
		if !ok || k == "" {
			return nil, withExitCode(exitUsage, fmt.Errorf("--metadata %q must be KEY=VALUE", e))
		}
		if prev, dup := m[k]; dup {
			return nil, withExitCode(exitUsage, fmt.Errorf("--metadata gives %q twice (%q and %q); give each key once", k, prev, v))
		}
		m[k] = v
	}
	return m, nil
}

// newPoolsWriteCommand builds `pools create` (POST) or `pools update` (PATCH).
func newPoolsWriteCommand(opts *apiOptions, update bool) *cobra.Command {
	pf := &poolFlags{}
	var wait *waitAll
	cmd := &cobra.Command{
		Use:   "create NAME",
		Short: "Create a pool",
		Long: `Create a pool. Flags left out take the agent's defaults (round_robin,
ssl_mode off, TCP health checks). A pool created with --ssl-domain needs
--ssl-mode too: full_strict (TLS at the edge, verified TLS to https://
backends; recommended), full, flexible (TLS at the edge, HTTP to
backends), passthrough, or off (plain HTTP for that name). The agent
refuses --ssl-domain alone (exit code 3) rather than serve the name
without TLS.`,
		Example: `  singularity-edge pools create web --algorithm least_connections \
      --ssl-mode full_strict --ssl-domain www.example.com --host example.com \
      --health-check-interval 10s --health-check-type http --health-check-path /healthz`,
		Args: exactArgs(1, "NAME"),
	}
	if update {
		cmd.Use = "update NAME"
		cmd.Short = "Change a pool (only the flags given)"
		cmd.Long = `Change a pool. Only the flags given are sent (a JSON merge patch); the
other fields keep their values, and changing one never edits another
(--ssl-domain leaves --host names alone). --host replaces the whole list;
--metadata sets keys and --remove-metadata removes them.`
		cmd.Example = `  singularity-edge pools update web --algorithm random --default=false`
		cmd.ValidArgsFunction = poolNameCompletion(opts)
	}
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		body, err := pf.body(cmd)
		if err != nil {
			return err
		}
		q, err := wait.query(cmd, nil)
		if err != nil {
			return err
		}
		c, err := opts.client(cmd)
		if err != nil {
			return err
		}
		wait.extend(c)
		req := request{method: http.MethodPost, path: "/api/pools", body: body, query: q}
		verb := "created"
		if update {
			if len(body) == 0 {
				return withExitCode(exitUsage, fmt.Errorf("nothing to change: give at least one flag (see --help)"))
			}
			ifMatch, err := ifMatchFlag(cmd, pf.ifMatch)
			if err != nil {
				return err
			}
			req = request{method: http.MethodPatch, path: poolPath(args[0]), body: body, ifMatch: ifMatch, query: q}
			verb = "updated"
		} else {
			body["name"] = args[0]
		}
		resp, err := c.do(cmd.Context(), req)
		if err != nil {
			return err
		}
		return showAnswer(c, resp.Body, func(p *poolJSON) error {
			_, err := fmt.Fprintf(c.stdout, "Pool %s %s (algorithm %s, ssl mode %s).\n", p.Name, verb, p.Algorithm, p.SSLMode)
			return err
		})
	}
	pf.register(cmd, update)
	wait = addWaitAllFlag(cmd)
	return cmd
}

// ifMatchFlag is the If-Match header of --if-match: none when the flag is
// not given. A value that is empty is refused rather than sent: the agent
// answers 400 to an empty If-Match, and sending none instead would make an
// unset variable in a script an unconditional update.
func ifMatchFlag(cmd *cobra.Command, value string) (string, error) {
	if !cmd.Flags().Changed("if-match") {
		return "", nil
	}
	if strings.TrimSpace(value) == "" {
		return "", withExitCode(exitUsage, errors.New("--if-match is empty: give the ETag the change depends on, or leave the flag out"))
	}
	return quoteETag(value), nil
}

// quoteETag accepts an ETag with or without its quotes.
func quoteETag(tag string) string {
	tag = strings.TrimSpace(tag)
	if tag == "" || tag == "*" || strings.HasPrefix(tag, `"`) || strings.HasPrefix(tag, "W/") {
		return tag
	}
	return `"` + tag + `"`
}

func newPoolsDeleteCommand(opts *apiOptions) *cobra.Command {
	var cascade bool
	var wait *waitAll
	cmd := &cobra.Command{
		Use:               "delete NAME",
		Short:             "Delete a pool",
		Long:              "Delete a pool. A pool that still has backends is refused unless --cascade deletes them too.",
		Args:              exactArgs(1, "NAME"),
		ValidArgsFunction: poolNameCompletion(opts),
		RunE: func(cmd *cobra.Command, args []string) error {
			q, err := wait.query(cmd, url.Values{})
			if err != nil {
				return err
			}
			c, err := opts.client(cmd)
			if err != nil {
				return err
			}
			wait.extend(c)
			if cascade {
				q.Set("cascade", "true")
			}
			if _, err := c.do(cmd.Context(), request{method: http.MethodDelete, path: poolPath(args[0]), query: q}); err != nil {
				var ae *apiError
				if !cascade && errors.As(err, &ae) && ae.Status == http.StatusConflict && ae.Code == "conflict" {
					ae.hint = "To delete the pool with its backends, add --cascade."
				}
				return err
			}
			return printDeleted(c, "pool", args[0])
		},
	}
	cmd.Flags().BoolVar(&cascade, "cascade", false, "also delete the pool's backends")
	wait = addWaitAllFlag(cmd)
	return cmd
}

// printDeleted confirms a deletion: a sentence for people, a small JSON
// object for scripts (the API answers 204 without a body).
func printDeleted(c *apiClient, kind, key string) error {
	if c.json {
		return printValue(c.stdout, map[string]any{"deleted": true, "kind": kind, "key": key})
	}
	_, err := fmt.Fprintf(c.stdout, "Deleted %s %s.\n", kind, key)
	return err
}

// exactArgs is cobra.ExactArgs with a usage exit code and a message that
// names the missing argument.
func exactArgs(n int, names ...string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return withExitCode(exitUsage, fmt.Errorf("%s expects %d argument(s) (%s), got %d", cmd.CommandPath(), n, strings.Join(names, " "), len(args)))
		}
		return nil
	}
}

// noArgs is cobra.NoArgs with a usage exit code; for a command group it
// names the unknown subcommand.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	if cmd.HasSubCommands() {
		return withExitCode(exitUsage, fmt.Errorf("unknown command %q for %q; see %s --help", args[0], cmd.CommandPath(), cmd.CommandPath()))
	}
	return withExitCode(exitUsage, fmt.Errorf("%s takes no arguments, got %q", cmd.CommandPath(), args))
}

// caSummary shows a CA bundle by its certificate count, not its PEM.
func caSummary(pemBundle string) string {
	if pemBundle == "" {
		return ""
	}
	n := strings.Count(pemBundle, "-----BEGIN CERTIFICATE-----")
	if n == 1 {
		return "1 certificate"
	}
	return fmt.Sprintf("%d certificates", n)
}
