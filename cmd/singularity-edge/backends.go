package main

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/spf13/cobra"

	"github.com/singularity-ng/singularity-edge/apitypes"
)

// backendJSON is a backend as the admin API shows it: configuration and
// this node's view of it.
type backendJSON apitypes.Backend

// address renders the backend as a URL.
func (b *backendJSON) address() string {
	if b.URL != "" {
		return b.URL
	}
	u := url.URL{Scheme: b.Scheme, Host: fmt.Sprintf("%s:%d", b.Host, b.Port)}
	if b.Port == 0 {
		u.Host = b.Host
	}
	return u.String()
}

// state summarises health as this node sees it.
func (b *backendJSON) state() string {
	var s string
	switch {
	case b.Healthy == nil:
		s = "unchecked"
	case *b.Healthy:
		s = "healthy"
	default:
		s = "unhealthy"
	}
	if b.Ejected {
		s += ",ejected"
	}
	if b.Draining {
		s += ",draining"
	}
	return s
}

// regions summarises health by the observer's region: "iad up, syd down,
// ams 1/2 up" ("" before any node reported).
func (b *backendJSON) regions() string {
	parts := make([]string, 0, len(b.Regions))
	for _, r := range b.Regions {
		name := r.Region
		if name == "" {
			name = "(no region)"
		}
		switch r.State {
		case "healthy":
			parts = append(parts, name+" up")
		case "unhealthy":
			parts = append(parts, name+" down")
		default:
			parts = append(parts, fmt.Sprintf("%s %d/%d up", name, r.Healthy, r.Nodes))
		}
	}
	return strings.Join(parts, ", ")
}

func newBackendsCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "backends",
		Aliases: []string{"backend"},
		Short:   "List, add, change, drain and remove the backends of a pool",
		Long: `Manage the backends of a pool through the admin API of a running agent.

The agent is found at --api (env EDGE_API, default ` + defaultAPI + `); the admin
token comes from EDGE_ADMIN_TOKEN or --token-file.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	opts := addAPIFlags(cmd)
	cmd.AddCommand(
		newBackendsListCommand(opts),
		newBackendsShowCommand(opts),
		newBackendsAddCommand(opts),
		newBackendsUpdateCommand(opts),
		newBackendsRemoveCommand(opts),
		newBackendsDrainCommand(opts, true),
		newBackendsDrainCommand(opts, false),
	)
	return cmd
}

func backendsPath(pool string) string { return poolPath(pool) + "/backends" }

func backendPath(pool, id string) string { return backendsPath(pool) + "/" + url.PathEscape(id) }

// poolThenBackendCompletion completes POOL, then the backend ids of it.
func poolThenBackendCompletion(opts *apiOptions) func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
	pools := poolNameCompletion(opts)
	backends := keyCompletion(opts, func(args []string) string { return backendsPath(args[0]) }, "id", 1)
	return func(cmd *cobra.Command, args []string, prefix string) ([]string, cobra.ShellCompDirective) {
		if len(args) == 0 {
			return pools(cmd, args, prefix)
		}
		return backends(cmd, args, prefix)
	}
}

func newBackendsListCommand(opts *apiOptions) *cobra.Command {
	var lo *listOptions
	cmd := &cobra.Command{
		Use:               "list POOL",
		Short:             "List the backends of a pool with this agent's view of their health",
		Args:              exactArgs(1, "POOL"),
		ValidArgsFunction: poolNameCompletion(opts),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := opts.client(cmd)
			if err != nil {
				return err
			}
			page, err := c.list(cmd.Context(), backendsPath(args[0]), *lo)
			if err != nil {
				return err
			}
			if c.json {
				return printValue(c.stdout, page)
			}
			t := newTable(c.stdout, "ID", "ADDRESS", "WEIGHT", "REGION", "STATE", "BY REGION", "CONNECTIONS", "REQUESTS", "LAST CHECK", "LAST ERROR")
			for _, raw := range page.Items {
				var b backendJSON
				if err := decodeAnswer(&apiResponse{Body: raw}, &b); err != nil {
					return err
				}
				lastCheck := ""
				if b.LastCheck != nil {
					lastCheck = formatTime(*b.LastCheck)
				}
				t.row(b.ID, b.address(), fmt.Sprint(b.Weight), b.Region, b.state(), b.regions(),
					fmt.Sprint(b.CurrentConnections), fmt.Sprint(b.TotalRequests), lastCheck, b.LastError)
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

func newBackendsShowCommand(opts *apiOptions) *cobra.Command {
	return &cobra.Command{
		Use:               "show POOL ID",
		Aliases:           []string{"get"},
		Short:             "Show one backend: its configuration, this agent's view and every region's",
		Args:              exactArgs(2, "POOL", "ID"),
		ValidArgsFunction: poolThenBackendCompletion(opts),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := opts.client(cmd)
			if err != nil {
				return err
			}
			resp, err := c.getJSON(cmd.Context(), backendPath(args[0], args[1]), nil)
			if err != nil {
				return err
			}
			return showAnswer(c, resp.Body, func(b *backendJSON) error { return showBackend(c, b, resp.Header.Get("ETag")) })
		},
	}
}

func showBackend(c *apiClient, b *backendJSON, etag string) error {
	d := newDetails(c.stdout)
	d.line("ID", b.ID)
	d.line("Pool", b.PoolName)
	d.line("Address", b.address())
	d.line("Weight", fmt.Sprint(b.Weight))
	d.line("Region", b.Region)
	d.line("State here", b.state()+" ("+b.LocalSource+")")
	if b.LastCheck != nil {
		d.line("Last check", formatTime(*b.LastCheck))
	}
	if b.LastError != "" {
		d.line("Last error", b.LastError)
	}
	d.line("Requests", fmt.Sprintf("%d (%d failed, %d 5xx, %d retries), %d connections now",
		b.TotalRequests, b.TotalFailures, b.Status5xx, b.Retries, b.CurrentConnections))
	by := b.regions()
	if by == "" {
		by = "no node has reported yet"
	}
	d.line("By region", by)
	d.line("ETag", etag)
	if err := d.flush(); err != nil {
		return err
	}
	if len(b.Observations) == 0 {
		return nil
	}
	fmt.Fprintln(c.stdout)
	t := newTable(c.stdout, "REGION", "NODE", "HEALTH", "CONNECTIONS", "REQUESTS", "FAILURES", "LAST CHECK", "REPORTED", "LAST ERROR")
	for _, o := range b.Observations {
		health := "down"
		if o.Healthy {
			health = "up"
		}
		lastCheck := ""
		if o.LastCheck != nil {
			lastCheck = formatTime(*o.LastCheck)
		}
		t.row(o.Region, o.NodeID, health, fmt.Sprint(o.CurrentConnections), fmt.Sprint(o.TotalRequests),
			fmt.Sprint(o.TotalFailures), lastCheck, formatTime(o.UpdatedAt), o.LastError)
	}
	return t.flush()
}

// backendFlags binds the writable backend fields to flags; only the flags
// given are sent.
type backendFlags struct {
	id, host, scheme, region string
	port, weight             int
	sslVerify, draining      bool
	metadata, removeMetadata []string
	ifMatch                  string
}

func (bf *backendFlags) register(cmd *cobra.Command, update bool) {
	f := cmd.Flags()
	if !update {
		f.StringVar(&bf.id, "id", "", "backend id (default: generated)")
	}
	f.StringVar(&bf.host, "host", "", "backend host name or IP address")
	f.IntVar(&bf.port, "port", 0, "backend port (default: 80 for http, 443 for https)")
	f.StringVar(&bf.scheme, "scheme", "", "http or https; https is TLS to this backend in every pool mode (default: https for full, full_strict and passthrough pools, else http)")
	f.IntVar(&bf.weight, "weight", 0, "relative weight for weighted algorithms, 1 to 1000 (default 1; drain instead of 0)")
	f.StringVar(&bf.region, "region", "", "region of the backend, for --prefer-region pools")
	f.BoolVar(&bf.sslVerify, "ssl-verify", false, "verify the backend's TLS certificate, in any pool mode (full included)")
	metaHelp := "metadata entry KEY=VALUE (repeatable)"
	if update {
		f.BoolVar(&bf.draining, "draining", false, "stop (true) or resume (false) new requests to the backend")
		f.StringVar(&bf.ifMatch, "if-match", "", "apply only if the backend's ETag is still this one (from `backends show`)")
		f.StringArrayVar(&bf.removeMetadata, "remove-metadata", nil, "metadata key to remove (repeatable)")
		metaHelp += "; sets KEY and keeps the other keys, --metadata '' removes every key"
	}
	f.StringArrayVar(&bf.metadata, "metadata", nil, metaHelp)
	_ = cmd.RegisterFlagCompletionFunc("scheme", fixedCompletion("http", "https"))
}

// body returns the fields of the flags the user set, with url when given.
func (bf *backendFlags) body(cmd *cobra.Command, url string) (map[string]any, error) {
	f := cmd.Flags()
	body := map[string]any{}
	addrFlags := f.Changed("host") || f.Changed("port") || f.Changed("scheme")
	if url != "" && addrFlags {
		return nil, withExitCode(exitUsage, fmt.Errorf("give either a URL or --host/--port/--scheme, not both"))
	}
	if url != "" {
		body["url"] = url
	}
	set := func(flag, key string, v any) {
		if f.Lookup(flag) != nil && f.Changed(flag) {
			body[key] = v
		}
	}
	set("host", "host", bf.host)
	set("port", "port", bf.port)
	set("scheme", "scheme", bf.scheme)
	set("id", "id", bf.id)
	set("weight", "weight", bf.weight)
	set("region", "region", bf.region)
	set("ssl-verify", "ssl_verify", bf.sslVerify)
	set("draining", "draining", bf.draining)
	if md, ok, err := metadataBody(cmd, bf.metadata, bf.removeMetadata); err != nil {
		return nil, err
	} else if ok {
		body["metadata"] = md
	}
	return body, nil
}

func newBackendsAddCommand(opts *apiOptions) *cobra.Command {
	bf := &backendFlags{}
	var wait *waitAll
	cmd := &cobra.Command{
		Use:   "add POOL [URL]",
		Short: "Add a backend to a pool",
		Long: `Add a backend to a pool, given as a URL (http://10.0.1.10:8080) or with
--host, --port and --scheme. Flags left out take the agent's defaults
(scheme https for pools that speak TLS to their backends, else http; the
scheme's port; weight 1). An https backend gets TLS in every pool mode,
off and flexible included; its certificate is verified when the pool is
full_strict, when an off or flexible pool has --validate-backend-cert, or
with --ssl-verify. A flag given is sent as given: --weight 0 or --port 0
are refused, not replaced.`,
		Example: `  singularity-edge backends add web http://10.0.1.10:8080 --weight 3 --region iad
  singularity-edge backends add web --host app.internal --port 443 --scheme https --ssl-verify`,
		ValidArgsFunction: poolNameCompletion(opts),
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) < 1 || len(args) > 2 {
				return withExitCode(exitUsage, fmt.Errorf("%s expects POOL and an optional URL, got %d argument(s)", cmd.CommandPath(), len(args)))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			url := ""
			if len(args) == 2 {
				url = args[1]
			} else if !cmd.Flags().Changed("host") {
				return withExitCode(exitUsage, fmt.Errorf("give the backend as a URL (http://10.0.1.10:8080) or with --host"))
			}
			body, err := bf.body(cmd, url)
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
			resp, err := c.do(cmd.Context(), request{method: http.MethodPost, path: backendsPath(args[0]), body: body, query: q})
			if err != nil {
				return err
			}
			return showAnswer(c, resp.Body, func(b *backendJSON) error {
				_, err := fmt.Fprintf(c.stdout, "Backend %s (%s, weight %d) added to pool %s.\n", b.ID, b.address(), b.Weight, b.PoolName)
				return err
			})
		},
	}
	bf.register(cmd, false)
	wait = addWaitAllFlag(cmd)
	return cmd
}

func newBackendsUpdateCommand(opts *apiOptions) *cobra.Command {
	bf := &backendFlags{}
	var url string
	var wait *waitAll
	cmd := &cobra.Command{
		Use:   "update POOL ID",
		Short: "Change a backend (only the flags given)",
		Long: `Change a backend. Only the flags given are sent (a JSON merge patch); the
other fields keep their values. The address changes with --url or with
--host/--port/--scheme.`,
		Example: `  singularity-edge backends update web b-abc123 --weight 5
  singularity-edge backends update web b-abc123 --url https://10.0.1.11:8443`,
		Args:              exactArgs(2, "POOL", "ID"),
		ValidArgsFunction: poolThenBackendCompletion(opts),
		RunE: func(cmd *cobra.Command, args []string) error {
			if cmd.Flags().Changed("url") && url == "" {
				return withExitCode(exitUsage, fmt.Errorf("--url must not be empty"))
			}
			body, err := bf.body(cmd, url)
			if err != nil {
				return err
			}
			if len(body) == 0 {
				return withExitCode(exitUsage, fmt.Errorf("nothing to change: give at least one flag (see --help)"))
			}
			ifMatch, err := ifMatchFlag(cmd, bf.ifMatch)
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
			resp, err := c.do(cmd.Context(), request{method: http.MethodPatch, path: backendPath(args[0], args[1]), body: body, ifMatch: ifMatch, query: q})
			if err != nil {
				return err
			}
			return showAnswer(c, resp.Body, func(b *backendJSON) error {
				_, err := fmt.Fprintf(c.stdout, "Backend %s of pool %s updated (%s, weight %d%s).\n", b.ID, b.PoolName, b.address(), b.Weight, map[bool]string{true: ", draining"}[b.Draining])
				return err
			})
		},
	}
	cmd.Flags().StringVar(&url, "url", "", "new address as a URL (instead of --host/--port/--scheme)")
	bf.register(cmd, true)
	wait = addWaitAllFlag(cmd)
	return cmd
}

func newBackendsRemoveCommand(opts *apiOptions) *cobra.Command {
	var wait *waitAll
	cmd := &cobra.Command{
		Use:               "remove POOL ID",
		Aliases:           []string{"rm", "delete"},
		Short:             "Remove a backend from a pool",
		Long:              "Remove a backend at once; use `backends drain` first to let its requests finish.",
		Args:              exactArgs(2, "POOL", "ID"),
		ValidArgsFunction: poolThenBackendCompletion(opts),
		RunE: func(cmd *cobra.Command, args []string) error {
			q, err := wait.query(cmd, nil)
			if err != nil {
				return err
			}
			c, err := opts.client(cmd)
			if err != nil {
				return err
			}
			wait.extend(c)
			if _, err := c.do(cmd.Context(), request{method: http.MethodDelete, path: backendPath(args[0], args[1]), query: q}); err != nil {
				return err
			}
			return printDeleted(c, "backend", args[1])
		},
	}
	wait = addWaitAllFlag(cmd)
	return cmd
}

// newBackendsDrainCommand builds `drain` (no new requests, existing ones
// finish) and `undrain` (back into rotation).
func newBackendsDrainCommand(opts *apiOptions, drain bool) *cobra.Command {
	cmd := &cobra.Command{
		Use:               "drain POOL ID",
		Short:             "Stop sending new requests to a backend; requests in flight finish",
		Args:              exactArgs(2, "POOL", "ID"),
		ValidArgsFunction: poolThenBackendCompletion(opts),
	}
	if !drain {
		cmd.Use = "undrain POOL ID"
		cmd.Short = "Put a drained backend back into rotation"
	}
	wait := addWaitAllFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		q, err := wait.query(cmd, nil)
		if err != nil {
			return err
		}
		c, err := opts.client(cmd)
		if err != nil {
			return err
		}
		wait.extend(c)
		resp, err := c.do(cmd.Context(), request{method: http.MethodPatch, path: backendPath(args[0], args[1]), body: map[string]any{"draining": drain}, query: q})
		if err != nil {
			return err
		}
		return showAnswer(c, resp.Body, func(b *backendJSON) error {
			var err error
			if drain {
				_, err = fmt.Fprintf(c.stdout, "Backend %s of pool %s is draining: no new requests, %d in flight.\n", b.ID, args[0], b.CurrentConnections)
			} else {
				_, err = fmt.Fprintf(c.stdout, "Backend %s of pool %s is back in rotation.\n", b.ID, args[0])
			}
			return err
		})
	}
	return cmd
}
