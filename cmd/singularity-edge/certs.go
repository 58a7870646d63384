package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/singularity-ng/singularity-edge/apitypes"
)

// maxPEMFileBytes bounds the files `certs upload` reads; a certificate
// with its chain is a few KiB.
const maxPEMFileBytes = 1 << 20

// certificateJSON is a certificate as the admin API shows it. The API
// never sends the private key.
type certificateJSON = apitypes.Certificate

func newCertsCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "certs",
		Aliases: []string{"certificates", "cert"},
		Short:   "Issue, renew, list, upload and delete TLS certificates",
		Long: `Manage TLS certificates through the admin API of a running agent: obtain
them from the agent's ACME CA (Let's Encrypt by default) with issue, or
upload your own. list and show include each ACME certificate's renewal state.

The agent is found at --api (env EDGE_API, default ` + defaultAPI + `); the admin
token comes from EDGE_ADMIN_TOKEN or --token-file. Private keys are sent on
upload only and never printed.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	opts := addAPIFlags(cmd)
	cmd.AddCommand(
		newCertsListCommand(opts),
		newCertsGetCommand(opts),
		newCertsIssueCommand(opts),
		newCertsRenewCommand(opts),
		newCertsUploadCommand(opts),
		newCertsDeleteCommand(opts),
	)
	return cmd
}

func certPath(id string) string { return "/api/certificates/" + url.PathEscape(id) }

func certIDCompletion(opts *apiOptions) func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
	return keyCompletion(opts, func([]string) string { return "/api/certificates" }, "id", 0)
}

func newCertsListCommand(opts *apiOptions) *cobra.Command {
	var lo *listOptions
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List certificates with their names and expiry",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := opts.client(cmd)
			if err != nil {
				return err
			}
			page, err := c.list(cmd.Context(), "/api/certificates", *lo)
			if err != nil {
				return err
			}
			if c.json {
				for i, raw := range page.Items {
					page.Items[i] = withoutPrivateKey(raw)
				}
				return printValue(c.stdout, page)
			}
			now := time.Now()
			t := newTable(c.stdout, "ID", "DOMAIN", "NAMES", "PROVIDER", "ISSUER", "EXPIRES", "RENEWAL", "NEXT ATTEMPT", "LAST ERROR")
			for _, raw := range page.Items {
				var ct certificateJSON
				if err := decodeAnswer(&apiResponse{Body: raw}, &ct); err != nil {
					return err
				}
				phase, next, lastErr := "-", "-", "-"
				if rn := ct.Renewal; rn != nil {
					phase = rn.Phase
					if rn.HeldBack != "" {
						phase += " (" + heldBackLimit(rn.HeldBack) + ")"
					}
					next = formatOptionalTime(nextAttempt(rn))
					lastErr = truncate(rn.LastError, 60)
				} else if ct.Provider == "upload" {
					phase = "manual"
				}
				t.row(ct.ID, ct.Domain, joinOrDash(ct.Names), ct.Provider, ct.Issuer, formatExpiry(ct.ExpiresAt, now), phase, next, lastErr)
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

func newCertsGetCommand(opts *apiOptions) *cobra.Command {
	var showPEM bool
	cmd := &cobra.Command{
		Use:               "show ID",
		Aliases:           []string{"get"},
		Short:             "Show one certificate and its renewal state (never its private key)",
		Args:              exactArgs(1, "ID"),
		ValidArgsFunction: certIDCompletion(opts),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := opts.client(cmd)
			if err != nil {
				return err
			}
			resp, err := c.getJSON(cmd.Context(), certPath(args[0]), nil)
			if err != nil {
				return err
			}
			return showAnswer(c, withoutPrivateKey(resp.Body), func(ct *certificateJSON) error {
				if showPEM {
					_, err := io.WriteString(c.stdout, ensureNewline(ct.Certificate)+ensureNewline(ct.Chain))
					return err
				}
				return showCertificate(c, ct)
			})
		},
	}
	cmd.Flags().BoolVar(&showPEM, "pem", false, "print the certificate and its chain as PEM (no key)")
	return cmd
}

func ensureNewline(s string) string {
	if s == "" || strings.HasSuffix(s, "\n") {
		return s
	}
	return s + "\n"
}

func showCertificate(c *apiClient, ct *certificateJSON) error {
	d := newDetails(c.stdout)
	d.line("ID", ct.ID)
	d.line("Domain", ct.Domain)
	d.line("Names", joinOrDash(ct.Names))
	d.line("Provider", ct.Provider)
	d.line("Issuer", ct.Issuer)
	d.line("Not before", formatTime(ct.NotBefore))
	d.line("Expires", formatExpiry(ct.ExpiresAt, time.Now()))
	d.line("Auto renew", yesNo(ct.AutoRenew))
	d.line("Fingerprint", ct.Fingerprint)
	d.line("Chain", fmt.Sprintf("%d certificate(s)", strings.Count(ct.Chain, "-----BEGIN CERTIFICATE-----")))
	d.line("Metadata", formatMetadata(ct.Metadata))
	d.line("Created", formatTime(ct.InsertedAt))
	d.line("Updated", formatTime(ct.UpdatedAt))
	if rn := ct.Renewal; rn != nil {
		renewalLines(d, rn)
	}
	return d.flush()
}

// withoutPrivateKey drops a "private_key" field from a JSON object. The
// API never sends one; this keeps the CLI from printing a key even if a
// mismatched agent did.
func withoutPrivateKey(raw []byte) []byte {
	var obj map[string]json.RawMessage
	if json.Unmarshal(raw, &obj) != nil {
		return raw
	}
	if _, ok := obj["private_key"]; !ok {
		return raw
	}
	delete(obj, "private_key")
	b, err := json.Marshal(obj)
	if err != nil {
		return raw
	}
	return b
}

func newCertsUploadCommand(opts *apiOptions) *cobra.Command {
	var certFile, keyFile, chainFile string
	var wait *waitAll
	cmd := &cobra.Command{
		Use:   "upload --cert FILE --key FILE [--chain FILE]",
		Short: "Upload a certificate and its private key",
		Long: `Upload a PEM certificate with its private key (RSA, ECDSA or Ed25519,
unencrypted). --cert may hold the full chain (leaf first); --chain adds
intermediates. The agent checks that the key matches, the chain is in
order and the certificate is valid now. A file name of "-" reads stdin.`,
		Example: `  singularity-edge certs upload --cert fullchain.pem --key privkey.pem`,
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if certFile == "" || keyFile == "" {
				return withExitCode(exitUsage, fmt.Errorf("--cert and --key are required"))
			}
			q, err := wait.query(cmd, nil)
			if err != nil {
				return err
			}
			stdinUsed := false
			read := func(flag, path string) (string, error) {
				if path == "-" {
					if stdinUsed {
						return "", withExitCode(exitUsage, fmt.Errorf("only one of --cert, --key and --chain can read stdin"))
					}
					stdinUsed = true
					return readLimited(cmd.InOrStdin(), flag, "stdin")
				}
				f, err := os.Open(path)
				if err != nil {
					return "", withExitCode(exitUsage, fmt.Errorf("--%s: %w", flag, err))
				}
				defer f.Close()
				return readLimited(f, flag, path)
			}
			certPEM, err := read("cert", certFile)
			if err != nil {
				return err
			}
			keyPEM, err := read("key", keyFile)
			if err != nil {
				return err
			}
			var chainPEM string
			if chainFile != "" {
				if chainPEM, err = read("chain", chainFile); err != nil {
					return err
				}
			}
			c, err := opts.client(cmd)
			if err != nil {
				return err
			}
			wait.extend(c)
			body := map[string]string{"certificate": certPEM, "private_key": keyPEM, "chain": chainPEM}
			resp, err := c.do(cmd.Context(), request{method: http.MethodPost, path: "/api/certificates/upload", body: body, query: q})
			if err != nil {
				return err
			}
			return showAnswer(c, withoutPrivateKey(resp.Body), func(ct *certificateJSON) error {
				_, err := fmt.Fprintf(c.stdout, "Certificate %s uploaded for %s (expires %s).\n",
					ct.ID, joinOrDash(ct.Names), formatExpiry(ct.ExpiresAt, time.Now()))
				return err
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&certFile, "cert", "", "PEM file with the certificate (leaf first, chain may follow)")
	f.StringVar(&keyFile, "key", "", "PEM file with the private key")
	f.StringVar(&chainFile, "chain", "", "PEM file with intermediate certificates")
	_ = cmd.MarkFlagFilename("cert", "pem", "crt", "cer")
	_ = cmd.MarkFlagFilename("key", "pem", "key")
	_ = cmd.MarkFlagFilename("chain", "pem", "crt", "cer")
	wait = addWaitAllFlag(cmd)
	return cmd
}

// readLimited reads a PEM input, refusing anything implausibly large.
// Errors name the file, never its content.
func readLimited(r io.Reader, flag, name string) (string, error) {
	b, err := io.ReadAll(io.LimitReader(r, maxPEMFileBytes+1))
	if err != nil {
		return "", withExitCode(exitUsage, fmt.Errorf("--%s: reading %s: %w", flag, name, err))
	}
	if len(b) > maxPEMFileBytes {
		return "", withExitCode(exitUsage, fmt.Errorf("--%s: %s is larger than %d bytes; it is not a PEM certificate or key", flag, name, maxPEMFileBytes))
	}
	return string(b), nil
}

func newCertsDeleteCommand(opts *apiOptions) *cobra.Command {
	var force bool
	var wait *waitAll
	cmd := &cobra.Command{
		Use:   "delete ID",
		Short: "Delete a certificate",
		Long: `Delete a certificate. The agent refuses while a pool pins it (ssl_cert_id),
and while it is the only certificate serving a host name of a TLS pool by
SNI (the next handshake for that name would fail); --force deletes it in
the second case anyway.`,
		Args:              exactArgs(1, "ID"),
		ValidArgsFunction: certIDCompletion(opts),
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
			if force {
				q.Set("force", "true")
			}
			if _, err := c.do(cmd.Context(), request{method: http.MethodDelete, path: certPath(args[0]), query: q}); err != nil {
				var ae *apiError
				if !force && errors.As(err, &ae) && ae.Status == http.StatusConflict && strings.Contains(ae.Message, "by SNI") {
					ae.Message = strings.Replace(ae.Message, "pass ?force=true", "add --force", 1)
				}
				return err
			}
			return printDeleted(c, "certificate", args[0])
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "delete even when it is the only certificate of a host a pool serves")
	wait = addWaitAllFlag(cmd)
	return cmd
}
