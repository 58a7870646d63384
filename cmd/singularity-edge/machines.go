package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
	fly "github.com/superfly/fly-go"
	"github.com/superfly/fly-go/flaps"
	"github.com/superfly/fly-go/tokens"

	"github.com/singularity-ng/singularity-edge/agent"
)

// defaultMachinesAPI is Fly's public Machines API.
const defaultMachinesAPI = "https://api.machines.dev"

// machinesJSON is what `cluster machines --output json` prints: the Machines
// API's view of the app, reduced to what an operator of the cluster needs.
type machinesJSON struct {
	App      string        `json:"app"`
	Machines []machineJSON `json:"machines"`
}

type machineJSON struct {
	ID           string      `json:"id"`
	Name         string      `json:"name"`
	Region       string      `json:"region"`
	State        string      `json:"state"`
	PrivateIP    string      `json:"private_ip"`
	Image        string      `json:"image"`
	ProcessGroup string      `json:"process_group,omitempty"`
	Checks       []checkJSON `json:"checks"`
	CreatedAt    string      `json:"created_at,omitempty"`
	UpdatedAt    string      `json:"updated_at,omitempty"`
}

type checkJSON struct {
	Name   string `json:"name"`
	Status string `json:"status"`
}

// newClusterMachinesCommand is `cluster machines`: the app's Fly Machines
// with their regions and states, straight from the Machines API, so that a
// Machine that never joined the cluster (crashed on start, stuck in a
// deploy) is visible beside `cluster status`.
func newClusterMachinesCommand(opts *apiOptions) *cobra.Command {
	var app, api string
	cmd := &cobra.Command{
		Use:   "machines",
		Short: "List the app's Fly Machines, regions and states from the Machines API",
		Long: `List the Fly Machines of the app with their region, state, health checks
and private address, from Fly's Machines API rather than from an agent.

The token comes from FLY_API_TOKEN (a read-only one is enough:
fly tokens create readonly). The app is --app or FLY_APP_NAME. --machines-api
(env FLY_FLAPS_BASE_URL, default ` + defaultMachinesAPI + `) points elsewhere,
for example at a proxy or a test fixture.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if app == "" {
				app = os.Getenv("FLY_APP_NAME")
			}
			if api == "" {
				api = os.Getenv("FLY_FLAPS_BASE_URL")
			}
			if api == "" {
				api = defaultMachinesAPI
			}
			return listMachines(cmd, opts, app, api, os.Getenv("FLY_API_TOKEN"))
		},
	}
	cmd.Flags().StringVarP(&app, "app", "a", "", "Fly app name (default: env FLY_APP_NAME)")
	cmd.Flags().StringVar(&api, "machines-api", "", "Machines API base URL (default: env FLY_FLAPS_BASE_URL, else "+defaultMachinesAPI+")")
	return cmd
}

func listMachines(cmd *cobra.Command, opts *apiOptions, app, api, token string) error {
	switch opts.output {
	case outputTable, outputJSON:
	default:
		return withExitCode(exitUsage, fmt.Errorf("--output must be %q or %q, not %q", outputTable, outputJSON, opts.output))
	}
	if opts.timeout <= 0 {
		return withExitCode(exitUsage, fmt.Errorf("--timeout must be positive, not %s", opts.timeout))
	}
	if strings.TrimSpace(token) == "" {
		return withExitCode(exitUsage, errors.New("set FLY_API_TOKEN to a Fly API token (a read-only one will do: fly tokens create readonly)"))
	}
	if app == "" {
		return withExitCode(exitUsage, errors.New("name the app with --app or FLY_APP_NAME"))
	}
	base, err := url.Parse(strings.TrimSuffix(api, "/"))
	if err != nil || (base.Scheme != "http" && base.Scheme != "https") || base.Host == "" {
		return withExitCode(exitUsage, fmt.Errorf("--machines-api %q is not an http:// or https:// URL", api))
	}

	ctx, cancel := context.WithTimeout(cmd.Context(), opts.timeout)
	defer cancel()
	client, err := flaps.NewWithOptions(ctx, flaps.NewClientOpts{
		UserAgent: "singularity-edge/" + agent.Version,
		Tokens:    tokens.Parse(token),
		// The client reads its base URL from the process environment only;
		// rebasing each request keeps --machines-api a plain flag.
		Transport: rebaseTransport{base: base, next: http.DefaultTransport},
	})
	if err != nil {
		return withExitCode(exitFailure, fmt.Errorf("Machines API client: %w", err))
	}
	machines, err := client.List(ctx, app, "")
	if err != nil {
		return machinesAPIError(app, base, err)
	}
	out := machinesJSON{App: app, Machines: make([]machineJSON, 0, len(machines))}
	for _, m := range machines {
		out.Machines = append(out.Machines, toMachineJSON(m))
	}
	sort.Slice(out.Machines, func(i, j int) bool {
		a, b := out.Machines[i], out.Machines[j]
		if a.Region != b.Region {
			return a.Region < b.Region
		}
		return a.ID < b.ID
	})
	w := cmd.OutOrStdout()
	return emit(w, opts.output == outputJSON, out, func() error { return showMachines(w, out) })
}

func toMachineJSON(m *fly.Machine) machineJSON {
	out := machineJSON{
		ID: m.ID, Name: m.Name, Region: m.Region, State: m.State, PrivateIP: m.PrivateIP,
		CreatedAt: m.CreatedAt, UpdatedAt: m.UpdatedAt, Checks: []checkJSON{},
	}
	if m.ImageRef.Repository != "" {
		out.Image = m.FullImageRef()
	}
	if m.Config != nil {
		out.ProcessGroup = m.ProcessGroup()
	}
	for _, c := range m.Checks {
		out.Checks = append(out.Checks, checkJSON{Name: c.Name, Status: string(c.Status)})
	}
	sort.Slice(out.Checks, func(i, j int) bool { return out.Checks[i].Name < out.Checks[j].Name })
	return out
}

func showMachines(w io.Writer, out machinesJSON) error {
	type count struct{ started, total int }
	perRegion := map[string]*count{}
	var regions []string
	for _, m := range out.Machines {
		c := perRegion[m.Region]
		if c == nil {
			c = &count{}
			perRegion[m.Region] = c
			regions = append(regions, m.Region)
		}
		c.total++
		if m.State == fly.MachineStateStarted {
			c.started++
		}
	}
	summary := make([]string, len(regions))
	for i, r := range regions {
		summary[i] = fmt.Sprintf("%s %d/%d", r, perRegion[r].started, perRegion[r].total)
	}
	d := newDetails(w)
	d.line("App", out.App)
	d.line("Machines", fmt.Sprint(len(out.Machines)))
	d.line("Regions (started/total)", joinOrDash(summary))
	if err := d.flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	t := newTable(w, "ID", "NAME", "REGION", "STATE", "CHECKS", "PRIVATE IP", "IMAGE", "UPDATED")
	for _, m := range out.Machines {
		t.row(m.ID, m.Name, m.Region, m.State, formatChecks(m.Checks), m.PrivateIP, m.Image, formatAPITime(m.UpdatedAt))
	}
	return t.flush()
}

// formatChecks shows "2/2 passing", or which checks do not pass.
func formatChecks(checks []checkJSON) string {
	if len(checks) == 0 {
		return "-"
	}
	passing := 0
	var failing []string
	for _, c := range checks {
		if c.Status == "passing" {
			passing++
		} else {
			failing = append(failing, c.Name+" "+c.Status)
		}
	}
	s := fmt.Sprintf("%d/%d passing", passing, len(checks))
	if len(failing) > 0 {
		s += " (" + strings.Join(failing, ", ") + ")"
	}
	return s
}

func formatAPITime(s string) string {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		if s == "" {
			return "-"
		}
		return s
	}
	return formatTime(t)
}

// machinesAPIError turns a Machines API failure into a sentence and the
// CLI's exit code.
func machinesAPIError(app string, base *url.URL, err error) error {
	var fe *flaps.FlapsError
	if errors.As(err, &fe) {
		switch fe.ResponseStatusCode {
		case http.StatusUnauthorized, http.StatusForbidden:
			return withExitCode(exitAuth, fmt.Errorf("the Machines API refused FLY_API_TOKEN for app %q (HTTP %d): %w", app, fe.ResponseStatusCode, fe.OriginalError))
		case http.StatusNotFound:
			return withExitCode(exitNotFound, fmt.Errorf("the Machines API knows no app %q (HTTP 404)", app))
		}
		return withExitCode(exitFailure, fmt.Errorf("the Machines API answered HTTP %d for app %q: %w", fe.ResponseStatusCode, app, fe.OriginalError))
	}
	var ne net.Error
	var oe *net.OpError
	if errors.As(err, &ne) || errors.As(err, &oe) || errors.Is(err, context.DeadlineExceeded) {
		return withExitCode(exitUnavailable, fmt.Errorf("the Machines API at %s cannot be reached: %w", base, err))
	}
	return withExitCode(exitFailure, fmt.Errorf("listing the Machines of %q: %w", app, err))
}

// rebaseTransport sends every request to base, keeping the path the client
// built under base's path.
type rebaseTransport struct {
	base *url.URL
	next http.RoundTripper
}

func (t rebaseTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r2 := r.Clone(r.Context())
	r2.URL.Scheme, r2.URL.Host, r2.Host = t.base.Scheme, t.base.Host, t.base.Host
	r2.URL.Path = strings.TrimSuffix(t.base.Path, "/") + r.URL.Path
	r2.URL.RawPath = ""
	return t.next.RoundTrip(r2)
}
