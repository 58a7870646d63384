package main

import (
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/singularity-ng/singularity-edge/apitypes"
)

func newAuditCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Show the configuration changes recorded in the store",
		Long: `Show the audit table: one row per configuration change, newest first, with
who made it (address, request id, whether the admin token was required), what
changed ("field: old -> new") and when. The store keeps the newest rows only
(10,000 by default); it never records certificate PEM or key material.

The agent is found at --api (env EDGE_API, default ` + defaultAPI + `); the admin
token comes from EDGE_ADMIN_TOKEN or --token-file.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	opts := addAPIFlags(cmd)
	cmd.AddCommand(newAuditListCommand(opts))
	return cmd
}

func newAuditListCommand(opts *apiOptions) *cobra.Command {
	var lo *listOptions
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List configuration changes, newest first",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := opts.client(cmd)
			if err != nil {
				return err
			}
			page, err := c.list(cmd.Context(), "/api/audit", *lo)
			if err != nil {
				return err
			}
			if c.json {
				return printValue(c.stdout, page)
			}
			t := newTable(c.stdout, "TIME", "ACTION", "KIND", "OBJECT", "CHANGES", "REMOTE", "REQUEST ID")
			for _, raw := range page.Items {
				var e apitypes.AuditEntry
				if err := decodeAnswer(&apiResponse{Body: raw}, &e); err != nil {
					return err
				}
				changes := "-"
				if len(e.Changes) > 0 {
					changes = strings.Join(e.Changes, "; ")
				}
				t.row(e.Time.UTC().Format(time.RFC3339), e.Action, e.Kind, e.Object, changes, e.Remote, e.RequestID)
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
