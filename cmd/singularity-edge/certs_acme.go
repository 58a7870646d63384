package main

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/singularity-ng/singularity-edge/apitypes"
)

// issueGrace is what the CLI adds to --wait for its own request timeout:
// the agent answers 202 at --wait, and the answer must still arrive.
const issueGrace = 15 * time.Second

func newCertsIssueCommand(opts *apiOptions) *cobra.Command {
	var profile string
	var wait time.Duration
	cmd := &cobra.Command{
		Use:   "issue DOMAIN [DOMAIN...]",
		Short: "Obtain a certificate from the agent's ACME CA",
		Long: `Obtain one certificate for the names given (the first is the primary name)
from the agent's ACME CA (--acme-directory; Let's Encrypt by default). The
agent answers when the certificate is issued and served, or after --wait with
the order still running: then "certs show ID" shows it once issued.

A certificate for the same names that is valid and not yet due is returned
as it is, without an order. Exit codes: 0 issued (or already valid, or still
running after --wait), 3 a name is refused, 5 another agent is ordering it,
8 the rate-limit budget holds the order back (the reason says until when),
1 the CA refused or validation failed.`,
		Example: `  singularity-edge certs issue example.com
  singularity-edge certs issue example.com www.example.com --profile shortlived`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return withExitCode(exitUsage, fmt.Errorf("give at least one domain name"))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if wait < 0 {
				return withExitCode(exitUsage, fmt.Errorf("--wait must not be negative, not %s", wait))
			}
			c, err := opts.client(cmd)
			if err != nil {
				return err
			}
			if need := wait + issueGrace; c.http.Timeout < need {
				c.http.Timeout, c.timeout = need, need
			}
			q := url.Values{"wait": {wait.String()}}
			body := apitypes.CertificateRequest{Domains: args, Profile: profile}
			resp, err := c.do(cmd.Context(), request{method: http.MethodPost, path: "/api/certificates", query: q, body: body})
			if err != nil {
				return err
			}
			if resp.Status == http.StatusAccepted {
				return showAnswer(c, resp.Body, func(o *apitypes.CertificateOrder) error {
					_, err := fmt.Fprintf(c.stdout, "Order for %s still running after %s; `singularity-edge certs show %s` shows it once issued.\n",
						joinOrDash(o.Names), wait, o.ID)
					return err
				})
			}
			return showAnswer(c, withoutPrivateKey(resp.Body), func(ct *certificateJSON) error {
				verb := "issued"
				if resp.Status == http.StatusOK {
					verb = "already valid, not ordered again"
				}
				_, err := fmt.Fprintf(c.stdout, "Certificate %s for %s %s (expires %s).\n",
					ct.ID, joinOrDash(ct.Names), verb, formatExpiry(ct.ExpiresAt, time.Now()))
				return err
			})
		},
	}
	cmd.Flags().StringVar(&profile, "profile", "", `CA certificate profile ("classic", "tlsserver", "shortlived") where the CA offers them`)
	cmd.Flags().DurationVar(&wait, "wait", 45*time.Second, "how long the agent waits for the order before answering that it is still running (at most its write timeout less 5s)")
	return cmd
}

func newCertsRenewCommand(opts *apiOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "renew ID",
		Short: "Renew an ACME certificate now",
		Long: `Order a new certificate for an ACME certificate's names now, whatever its
renewal time. The current certificate keeps serving until the new one is
stored. A CA's userActionRequired hold (phase action_required) is lifted for
its issuer and one order placed there: run this once you have acted at the
CA; if it refuses again, the hold is set again. Exit codes as for "certs
issue"; an uploaded certificate is 5.`,
		Args:              exactArgs(1, "ID"),
		ValidArgsFunction: certIDCompletion(opts),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := opts.client(cmd)
			if err != nil {
				return err
			}
			// An order takes seconds to minutes: wait like issue does.
			if need := 45*time.Second + issueGrace; c.http.Timeout < need {
				c.http.Timeout, c.timeout = need, need
			}
			resp, err := c.do(cmd.Context(), request{method: http.MethodPost, path: certPath(args[0]) + "/renew"})
			if err != nil {
				return err
			}
			return showAnswer(c, withoutPrivateKey(resp.Body), func(ct *certificateJSON) error {
				_, err := fmt.Fprintf(c.stdout, "Certificate %s renewed (expires %s, fingerprint %s).\n",
					ct.ID, formatExpiry(ct.ExpiresAt, time.Now()), ct.Fingerprint)
				return err
			})
		},
	}
	return cmd
}

// renewalLines adds an ACME certificate's renewal state to "certs show".
func renewalLines(d *details, rn *apitypes.CertificateRenewal) {
	d.line("Renewal", rn.Phase)
	d.line("Renew at", formatTime(rn.RenewAt)+" ("+rn.RenewReason+")")
	if rn.WindowStart != nil && rn.WindowEnd != nil {
		d.line("CA window", formatTime(*rn.WindowStart)+" to "+formatTime(*rn.WindowEnd))
	}
	d.line("Next attempt", formatOptionalTime(nextAttempt(rn)))
	d.line("Last attempt", formatOptionalTime(rn.LastAttempt))
	d.line("Last success", formatOptionalTime(rn.LastSuccess))
	d.line("Last error", rn.LastError)
	d.line("Failures", fmt.Sprint(rn.Failures))
	if rn.HeldBack != "" {
		d.line("Held back", rn.HeldBack)
	}
	if rn.Blocked != "" {
		d.line("Blocked", rn.Blocked)
	}
	d.line("ACME issuer", rn.Issuer)
	if rn.Profile != "" {
		d.line("Profile", rn.Profile)
	}
	d.line("Owner", rn.Owner)
	if l := rn.Lease; l != nil {
		state := "expired"
		if l.Held {
			state = "held"
		}
		d.line("Lease", fmt.Sprintf("%s epoch %d, %s until %s", l.Holder, l.Epoch, state, formatTime(l.Expires)))
	} else {
		d.line("Lease", "")
	}
}

// nextAttempt is the next order time: the backoff or hold when one is
// set, else the renewal time.
func nextAttempt(rn *apitypes.CertificateRenewal) *time.Time {
	if rn.NextAttempt != nil && rn.NextAttempt.After(rn.RenewAt) {
		return rn.NextAttempt
	}
	t := rn.RenewAt
	return &t
}

func formatOptionalTime(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return formatTime(*t)
}

// heldBackLimit picks the limit's name out of the budget's reason
// ("held back: duplicate_certs for ...").
func heldBackLimit(reason string) string {
	r := strings.TrimPrefix(reason, "held back: ")
	if i := strings.IndexByte(r, ' '); i > 0 {
		return r[:i]
	}
	return r
}

func truncate(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if s == "" {
		return "-"
	}
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}
