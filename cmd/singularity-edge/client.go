package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/singularity-ng/singularity-edge/apitypes"
)

// Defaults of the flags every management command shares.
const (
	defaultAPI     = "http://127.0.0.1:4000"
	defaultTimeout = 10 * time.Second
	// maxResponseBytes bounds what the CLI reads from the agent; the
	// largest answers (full pages of certificates) stay far below it.
	maxResponseBytes = 64 << 20
	// listPageSize is the page size used when a list command fetches
	// every page; it is the admin API's maximum.
	listPageSize = 1000
)

// Output formats of --output.
const (
	outputTable = "table"
	outputJSON  = "json"
)

// apiOptions are the flags shared by the commands that talk to the admin API.
type apiOptions struct {
	api       string
	tokenFile string
	output    string
	timeout   time.Duration
}

// addAPIFlags registers the admin API flags as persistent flags of cmd, so
// that every subcommand of a command group accepts them.
func addAPIFlags(cmd *cobra.Command) *apiOptions {
	o := &apiOptions{}
	f := cmd.PersistentFlags()
	f.StringVar(&o.api, "api", defaultAPI, "admin API base URL (env EDGE_API)")
	f.StringVar(&o.tokenFile, "token-file", "", "file holding the admin token (default: env EDGE_ADMIN_TOKEN)")
	f.StringVarP(&o.output, "output", "o", outputTable, "output format: table or json")
	f.DurationVar(&o.timeout, "timeout", defaultTimeout, "time limit of each API request")
	_ = cmd.RegisterFlagCompletionFunc("output", fixedCompletion(outputTable, outputJSON))
	return o
}

// client resolves the flags and environment into an API client.
func (o *apiOptions) client(cmd *cobra.Command) (*apiClient, error) {
	switch o.output {
	case outputTable, outputJSON:
	default:
		return nil, withExitCode(exitUsage, fmt.Errorf("--output must be %q or %q, not %q", outputTable, outputJSON, o.output))
	}
	if o.timeout <= 0 {
		return nil, withExitCode(exitUsage, fmt.Errorf("--timeout must be positive, not %s", o.timeout))
	}
	raw := o.api
	if f := cmd.Flags().Lookup("api"); (f == nil || !f.Changed) && os.Getenv("EDGE_API") != "" {
		raw = os.Getenv("EDGE_API")
	}
	base, err := url.Parse(strings.TrimSuffix(raw, "/"))
	if err != nil || (base.Scheme != "http" && base.Scheme != "https") || base.Host == "" {
		return nil, withExitCode(exitUsage, fmt.Errorf("--api %q is not an http:// or https:// URL", raw))
	}
	token := os.Getenv("EDGE_ADMIN_TOKEN")
	if o.tokenFile != "" {
		b, err := os.ReadFile(o.tokenFile)
		if err != nil {
			return nil, withExitCode(exitUsage, fmt.Errorf("reading --token-file: %w", err))
		}
		token = strings.TrimSpace(string(b))
		if token == "" {
			return nil, withExitCode(exitUsage, fmt.Errorf("--token-file %s is empty", o.tokenFile))
		}
	}
	return &apiClient{
		base:    base,
		token:   token,
		timeout: o.timeout,
		json:    o.output == outputJSON,
		http:    &http.Client{Timeout: o.timeout},
		stdout:  cmd.OutOrStdout(),
	}, nil
}

// apiClient calls the admin API of a running agent.
type apiClient struct {
	base    *url.URL
	token   string
	timeout time.Duration
	json    bool // --output json
	http    *http.Client
	stdout  io.Writer
}

// apiResponse is a successful (2xx) answer.
type apiResponse struct {
	Status int
	Header http.Header
	Body   []byte
}

// request describes one API call.
type request struct {
	method  string
	path    string // already escaped, e.g. "/api/pools/" + url.PathEscape(name)
	query   url.Values
	body    any // JSON-encoded when not nil
	ifMatch string
}

// do sends req and returns the 2xx answer, or an error carrying the exit
// code that matches the failure.
func (c *apiClient) do(ctx context.Context, req request) (*apiResponse, error) {
	// req.path is already escaped: append it to the base as text, since
	// url.URL.Path would escape the escapes again.
	target := c.base.String() + req.path
	if q := req.query.Encode(); q != "" {
		target += "?" + q
	}
	var body io.Reader
	if req.body != nil {
		b, err := json.Marshal(req.body)
		if err != nil {
			return nil, fmt.Errorf("encoding the request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	hreq, err := http.NewRequestWithContext(ctx, req.method, target, body)
	if err != nil {
		return nil, withExitCode(exitUsage, fmt.Errorf("building the request: %w", err))
	}
	hreq.Header.Set("Accept", "application/json")
	hreq.Header.Set("User-Agent", "singularity-edge-cli")
	if req.body != nil {
		hreq.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		hreq.Header.Set("Authorization", "Bearer "+c.token)
	}
	if req.ifMatch != "" {
		hreq.Header.Set("If-Match", req.ifMatch)
	}
	resp, err := c.http.Do(hreq)
	if err != nil {
		return nil, withExitCode(exitUnavailable, c.transportError(err))
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
	if err != nil {
		return nil, withExitCode(exitUnavailable, fmt.Errorf("reading the answer of %s %s: %w", req.method, req.path, err))
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		ae := parseAPIError(resp.StatusCode, data)
		return nil, withExitCode(ae.exitCode(), ae)
	}
	return &apiResponse{Status: resp.StatusCode, Header: resp.Header, Body: data}, nil
}

// transportError explains why the agent could not be reached.
func (c *apiClient) transportError(err error) error {
	var nerr net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("cannot reach the agent at %s: connection refused (is `singularity-edge agent` running? set --api or EDGE_API)", c.base)
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &nerr) && nerr.Timeout():
		return fmt.Errorf("the agent at %s did not answer within %s (--timeout)", c.base, c.timeout)
	}
	return fmt.Errorf("cannot reach the agent at %s: %w", c.base, err)
}

// getJSON fetches path and decodes the JSON answer into out.
func (c *apiClient) getJSON(ctx context.Context, path string, out any) (*apiResponse, error) {
	resp, err := c.do(ctx, request{method: http.MethodGet, path: path})
	if err != nil {
		return nil, err
	}
	if out != nil {
		if err := decodeAnswer(resp, out); err != nil {
			return nil, err
		}
	}
	return resp, nil
}

// postJSON posts body (none when nil) to path and decodes the JSON answer
// into out.
func (c *apiClient) postJSON(ctx context.Context, path string, body, out any) error {
	resp, err := c.do(ctx, request{method: http.MethodPost, path: path, body: body})
	if err != nil {
		return err
	}
	return decodeAnswer(resp, out)
}

// showAnswer prints an answer body: as it is with --output json, else
// decoded into a T and shown to people by human.
func showAnswer[T any](c *apiClient, body []byte, human func(v *T) error) error {
	if c.json {
		return printJSON(c.stdout, body)
	}
	var v T
	if err := decodeAnswer(&apiResponse{Body: body}, &v); err != nil {
		return err
	}
	return human(&v)
}

// decodeAnswer decodes a successful answer, naming the failure when the
// agent speaks a shape this CLI does not know (a version mismatch).
func decodeAnswer(resp *apiResponse, out any) error {
	if err := json.Unmarshal(resp.Body, out); err != nil {
		return fmt.Errorf("the agent's answer is not the JSON this CLI expects (agent and CLI versions differ?): %w", err)
	}
	return nil
}

// listPage is the shape of every list answer.
type listPage struct {
	Items []json.RawMessage `json:"items"`
	Next  string            `json:"next"`
}

// listOptions select one page (limit > 0) or every page (limit 0).
type listOptions struct {
	limit int
	after string
	// limitSet: --limit was given, so 0 is the user's, not "every item".
	limitSet func() bool
}

func addListFlags(cmd *cobra.Command) *listOptions {
	o := &listOptions{}
	cmd.Flags().IntVar(&o.limit, "limit", 0, fmt.Sprintf("return at most this many items (1 to %d), one page (default: every item)", listPageSize))
	cmd.Flags().StringVar(&o.after, "after", "", "start after this key (the \"next\" of a previous page)")
	o.limitSet = func() bool { return cmd.Flags().Changed("limit") }
	return o
}

// check refuses a --limit the API would refuse, or that would otherwise
// read as "every item": --limit 0 asks for no items, not for all of them.
func (o listOptions) check() error {
	if o.limitSet != nil && o.limitSet() && (o.limit < 1 || o.limit > listPageSize) {
		return withExitCode(exitUsage, fmt.Errorf("--limit must be from 1 to %d, not %d; leave it out for every item", listPageSize, o.limit))
	}
	return nil
}

// list fetches a paginated collection: one page when opts.limit is set,
// else every page. The answer's next is the cursor after the last item
// returned ("" when there are no more).
func (c *apiClient) list(ctx context.Context, path string, opts listOptions) (listPage, error) {
	if err := opts.check(); err != nil {
		return listPage{}, err
	}
	var all listPage
	all.Items = []json.RawMessage{}
	after := opts.after
	for {
		q := url.Values{}
		if opts.limit > 0 {
			q.Set("limit", fmt.Sprint(opts.limit))
		} else {
			q.Set("limit", fmt.Sprint(listPageSize))
		}
		if after != "" {
			q.Set("after", after)
		}
		resp, err := c.do(ctx, request{method: http.MethodGet, path: path, query: q})
		if err != nil {
			return listPage{}, err
		}
		var page listPage
		if err := decodeAnswer(resp, &page); err != nil {
			return listPage{}, err
		}
		all.Items = append(all.Items, page.Items...)
		all.Next = page.Next
		if opts.limit > 0 || page.Next == "" || page.Next == after {
			return all, nil
		}
		after = page.Next
	}
}

// apiError is an error answer of the admin API.
type apiError struct {
	Status  int
	Code    string
	Message string
	Fields  []apitypes.FieldError
	// Missing names the members that do not hold a write (not_applied,
	// a refused cluster leave).
	Missing []apitypes.ClusterMissing
	// HeldBack details a 429 held_back answer.
	HeldBack *apitypes.HeldBack
	// hint is what the CLI adds for its own user (a flag to try).
	hint string
}

func parseAPIError(status int, body []byte) *apiError {
	var shape apitypes.ErrorBody
	ae := &apiError{Status: status}
	if err := json.Unmarshal(body, &shape); err == nil && shape.Error.Message != "" {
		ae.Code, ae.Message, ae.Fields = shape.Error.Code, shape.Error.Message, shape.Error.Fields
		ae.Missing, ae.HeldBack = shape.Error.Missing, shape.Error.HeldBack
		return ae
	}
	// Not our JSON (a proxy in between, or not the admin API at all).
	text := strings.TrimSpace(string(body))
	if len(text) > 200 {
		text = text[:200] + "..."
	}
	ae.Message = http.StatusText(status)
	if text != "" {
		ae.Message += ": " + text
	}
	return ae
}

// Error renders the message and every field error as a sentence.
func (e *apiError) Error() string {
	var b strings.Builder
	b.WriteString(sentence(e.Message))
	fields := e.Fields
	// A single field error is usually the message itself; do not repeat it.
	if len(fields) == 1 && strings.Contains(e.Message, fields[0].Message) {
		fields = nil
	}
	for _, f := range fields {
		b.WriteString("\n  ")
		if f.Field != "" {
			b.WriteString(f.Field + ": ")
		}
		b.WriteString(sentence(f.Message))
	}
	if e.Code == apitypes.CodeNotApplied {
		for _, m := range e.Missing {
			fmt.Fprintf(&b, "\n  %s (%s): %s", m.Name, m.State, m.Reason)
		}
	}
	if e.Status == http.StatusUnauthorized {
		b.WriteString("\n  Set EDGE_ADMIN_TOKEN (or --token-file) to the agent's admin token.")
	}
	if e.hint != "" {
		b.WriteString("\n  " + e.hint)
	}
	return b.String()
}

// sentence ends s with a full stop. The case is left alone: messages
// often start with a field or a quoted name.
func sentence(s string) string {
	s = strings.TrimSpace(s)
	if s == "" {
		return s
	}
	if !strings.HasSuffix(s, ".") && !strings.HasSuffix(s, "?") && !strings.HasSuffix(s, "!") {
		s += "."
	}
	return s
}

// exitCode maps the HTTP status to the CLI's exit codes.
func (e *apiError) exitCode() int {
	switch e.Status {
	case http.StatusBadRequest, http.StatusUnprocessableEntity, http.StatusRequestEntityTooLarge, http.StatusUnsupportedMediaType:
		return exitInvalid
	case http.StatusNotFound:
		return exitNotFound
	case http.StatusConflict, http.StatusPreconditionFailed:
		return exitConflict
	case http.StatusUnauthorized, http.StatusForbidden:
		return exitAuth
	case http.StatusTooManyRequests:
		return exitHeldBack
	case http.StatusBadGateway:
		if e.Code == "acme_failed" {
			return exitFailure // the CA said no; the agent answered
		}
		return exitUnavailable
	case http.StatusGatewayTimeout:
		if e.Code == apitypes.CodeNotApplied {
			return exitNotApplied // stored here; the cluster did not confirm it in time
		}
		return exitUnavailable
	case http.StatusServiceUnavailable:
		return exitUnavailable
	}
	return exitFailure
}

// exitCodeOf returns the process exit code for err, as main does.
func exitCodeOf(err error) int {
	if err == nil {
		return 0
	}
	var ec *exitCodeError
	if errors.As(err, &ec) {
		return ec.code
	}
	return exitFailure
}

// fixedCompletion completes a flag or argument from a fixed list.
func fixedCompletion(values ...string) func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
	return func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return values, cobra.ShellCompDirectiveNoFileComp
	}
}

// keyCompletion completes the first argument from the keys a list route
// returns, so that `pools get <TAB>` offers the pool names. Failures
// (agent down, no token) just offer nothing.
func keyCompletion(o *apiOptions, path func(args []string) string, key string, argIndex int) func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
	return func(cmd *cobra.Command, args []string, prefix string) ([]string, cobra.ShellCompDirective) {
		if len(args) != argIndex {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		c, err := o.client(cmd)
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
		defer cancel()
		page, err := c.list(ctx, path(args), listOptions{})
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		var out []string
		for _, raw := range page.Items {
			var item map[string]any
			if json.Unmarshal(raw, &item) != nil {
				continue
			}
			if v, ok := item[key].(string); ok && strings.HasPrefix(v, prefix) {
				out = append(out, v)
			}
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	}
}
