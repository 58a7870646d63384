package main

import (
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/spf13/cobra"
)

// backendJSON is a backend as the admin API shows it: configuration and
// this node's view of it.
type backendJSON struct {
	ID                 string            `json:"id"`
	PoolName           string            `json:"pool_name"`
	URL                string            `json:"url"`
	Host               string            `json:"host"`
	Port               int               `json:"port"`
	Scheme             string            `json:"scheme"`
	Weight             int               `json:"weight"`
	SSLVerify          bool              `json:"ssl_verify"`
	Region             string            `json:"region"`
	Draining           bool              `json:"draining"`
	Metadata           map[string]string `json:"metadata"`
	Healthy            *bool             `json:"healthy"`
	Ejected            bool              `json:"ejected"`
	CurrentConnections int64             `json:"current_connections"`
	TotalRequests      int64             `json:"total_requests"`
	LastCheck          *time.Time        `json:"last_check"`
	LastError          string            `json:"last_error"`
}

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

func newBackendsCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "backends",
		Aliases: []string{"backend"},
		Short:   "List, add, drain and remove the backends of a pool",
		Long: `Manage the backends of a pool through the admin API of a running agent.

The agent is found at --api (env EDGE_API, default ` + defaultAPI + `); the admin
token comes from EDGE_ADMIN_TOKEN or --token-file.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	opts := addAPIFlags(cmd)
	cmd.AddCommand(
		newBackendsListCommand(opts),
		newBackendsAddCommand(opts),
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
			t := newTable(c.stdout, "ID", "ADDRESS", "WEIGHT", "REGION", "STATE", "CONNECTIONS", "REQUESTS", "LAST CHECK", "LAST ERROR")
			for _, raw := range page.Items {
				var b backendJSON
				if err := decodeAnswer(&apiResponse{Body: raw}, &b); err != nil {
					return err
				}
				lastCheck := ""
				if b.LastCheck != nil {
					lastCheck = formatTime(*b.LastCheck)
				}
				t.row(b.ID, b.address(), fmt.Sprint(b.Weight), b.Region, b.state(),
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

func newBackendsAddCommand(opts *apiOptions) *cobra.Command {
	var (
		id, host, scheme, region string
		port, weight             int
		sslVerify                bool
		metadata                 []string
	)
	cmd := &cobra.Command{
		Use:   "add POOL [URL]",
		Short: "Add a backend to a pool",
		Long: `Add a backend to a pool, given as a URL (http://10.0.1.10:8080) or with
--host, --port and --scheme. Flags left out take the agent's defaults
(scheme http, the scheme's port, weight 1).`,
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
			f := cmd.Flags()
			body := map[string]any{}
			addrFlags := f.Changed("host") || f.Changed("port") || f.Changed("scheme")
			switch {
			case len(args) == 2 && addrFlags:
				return withExitCode(exitUsage, fmt.Errorf("give either a URL or --host/--port/--scheme, not both"))
			case len(args) == 2:
				body["url"] = args[1]
			case !f.Changed("host"):
				return withExitCode(exitUsage, fmt.Errorf("give the backend as a URL (http://10.0.1.10:8080) or with --host"))
			}
			if f.Changed("host") {
				body["host"] = host
			}
			if f.Changed("port") {
				body["port"] = port
			}
			if f.Changed("scheme") {
				body["scheme"] = scheme
			}
			if f.Changed("id") {
				body["id"] = id
			}
			if f.Changed("weight") {
				body["weight"] = weight
			}
			if f.Changed("region") {
				body["region"] = region
			}
			if f.Changed("ssl-verify") {
				body["ssl_verify"] = sslVerify
			}
			if f.Changed("metadata") {
				m, err := parseMetadata(metadata)
				if err != nil {
					return err
				}
				body["metadata"] = m
			}
			c, err := opts.client(cmd)
			if err != nil {
				return err
			}
			resp, err := c.do(cmd.Context(), request{method: http.MethodPost, path: backendsPath(args[0]), body: body})
			if err != nil {
				return err
			}
			return showAnswer(c, resp.Body, func(b *backendJSON) error {
				_, err := fmt.Fprintf(c.stdout, "Backend %s (%s, weight %d) added to pool %s.\n", b.ID, b.address(), b.Weight, b.PoolName)
				return err
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&id, "id", "", "backend id (default: generated)")
	f.StringVar(&host, "host", "", "backend host name or IP address")
	f.IntVar(&port, "port", 0, "backend port (default: 80 for http, 443 for https)")
	f.StringVar(&scheme, "scheme", "", "http or https")
	f.IntVar(&weight, "weight", 0, "relative weight for weighted algorithms (default 1)")
	f.StringVar(&region, "region", "", "region of the backend, for --prefer-region pools")
	f.BoolVar(&sslVerify, "ssl-verify", false, "verify the backend's TLS certificate")
	f.StringArrayVar(&metadata, "metadata", nil, "metadata entry KEY=VALUE (repeatable)")
	_ = cmd.RegisterFlagCompletionFunc("scheme", fixedCompletion("http", "https"))
	return cmd
}

func newBackendsRemoveCommand(opts *apiOptions) *cobra.Command {
	return &cobra.Command{
		Use:               "remove POOL ID",
		Aliases:           []string{"rm", "delete"},
		Short:             "Remove a backend from a pool",
		Long:              "Remove a backend at once; use `backends drain` first to let its requests finish.",
		Args:              exactArgs(2, "POOL", "ID"),
		ValidArgsFunction: poolThenBackendCompletion(opts),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := opts.client(cmd)
			if err != nil {
				return err
			}
			if _, err := c.do(cmd.Context(), request{method: http.MethodDelete, path: backendPath(args[0], args[1])}); err != nil {
				return err
			}
			return printDeleted(c, "backend", args[1])
		},
	}
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
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		c, err := opts.client(cmd)
		if err != nil {
			return err
		}
		resp, err := c.do(cmd.Context(), request{method: http.MethodPatch, path: backendPath(args[0], args[1]), body: map[string]any{"draining": drain}})
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
