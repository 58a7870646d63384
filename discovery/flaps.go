package discovery

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"net/url"

	"github.com/superfly/fly-go/flaps"
	"github.com/superfly/fly-go/tokens"
)

// FlapsBaseURL is the Machines API.
const FlapsBaseURL = "https://api.machines.dev"

// FlapsSource lists the started Machines of the app through the Machines API
// (fly-go's flaps client). It needs FLY_API_TOKEN and adds nothing DNS
// does not know when DNS works; it is there for when DNS is unhealthy.
type FlapsSource struct {
	app    string
	client *flaps.Client
}

// NewFlapsSource builds the client. baseURL "" is the public API; tests
// point it at a fixture. The base URL is applied by the HTTP transport
// rather than FLY_FLAPS_BASE_URL, which would change it for the whole
// process.
func NewFlapsSource(ctx context.Context, app, token, baseURL string) (*FlapsSource, error) {
	if app == "" {
		return nil, errors.New("Machines API discovery needs the app name (FLY_APP_NAME)")
	}
	if token == "" {
		return nil, errors.New("Machines API discovery needs FLY_API_TOKEN")
	}
	opts := flaps.NewClientOpts{Tokens: tokens.Parse(token), UserAgent: "singularity-edge"}
	if baseURL != "" && baseURL != FlapsBaseURL {
		u, err := url.Parse(baseURL)
		if err != nil || u.Scheme == "" || u.Host == "" {
			return nil, fmt.Errorf("Machines API base URL %q: want scheme://host", baseURL)
		}
		opts.Transport = rebase{to: u, next: http.DefaultTransport}
	}
	c, err := flaps.NewWithOptions(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("Machines API client: %w", err)
	}
	return &FlapsSource{app: app, client: c}, nil
}

// rebase sends every request to another scheme and host.
type rebase struct {
	to   *url.URL
	next http.RoundTripper
}

func (r rebase) RoundTrip(req *http.Request) (*http.Response, error) {
	req = req.Clone(req.Context())
	req.URL.Scheme = r.to.Scheme
	req.URL.Host = r.to.Host
	req.Host = r.to.Host
	return r.next.RoundTrip(req)
}

// Name is "machines-api".
func (s *FlapsSource) Name() string { return "machines-api" }

// Candidates lists the started Machines with a private address.
func (s *FlapsSource) Candidates(ctx context.Context) ([]Candidate, error) {
	machines, err := s.client.List(ctx, s.app, "")
	if err != nil {
		return nil, err
	}
	var out []Candidate
	for _, m := range machines {
		if m == nil || m.State != "started" || m.PrivateIP == "" {
			continue
		}
		a, err := netip.ParseAddr(m.PrivateIP)
		if err != nil {
			continue
		}
		out = append(out, Candidate{Addr: a.Unmap(), MachineID: m.ID, Region: m.Region, Source: s.Name()})
	}
	return out, nil
}
