package main

import (
	"fmt"
	"sort"
	"strings"

	"github.com/spf13/cobra"

	"github.com/singularity-ng/singularity-edge/apitypes"
)

// clusterJSON is GET /api/cluster; memberJSON one of its members.
type (
	clusterJSON = apitypes.Cluster
	memberJSON  = apitypes.Member
)

func newClusterCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cluster",
		Short: "Show the cluster as the agent sees it",
		Long: `Show the members of the cluster through the admin API of a running agent.

The agent is found at --api (env EDGE_API, default ` + defaultAPI + `); the admin
token comes from EDGE_ADMIN_TOKEN or --token-file.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	opts := addAPIFlags(cmd)
	cmd.AddCommand(newClusterMachinesCommand(opts)) // machines.go: Fly's Machines API, not the agent
	cmd.AddCommand(&cobra.Command{
		Use:     "status",
		Aliases: []string{"members"},
		Short:   "List the members of the cluster, their state and replication lag",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := opts.client(cmd)
			if err != nil {
				return err
			}
			resp, err := c.getJSON(cmd.Context(), "/api/cluster", nil)
			if err != nil {
				return err
			}
			return showAnswer(c, resp.Body, func(cl *clusterJSON) error { return showCluster(c, cl) })
		},
	})
	return cmd
}

func showCluster(c *apiClient, cl *clusterJSON) error {
	alive := 0
	for _, m := range cl.Members {
		if m.State == "alive" {
			alive++
		}
	}
	regions := make([]string, 0, len(cl.Regions))
	for _, r := range cl.Regions {
		name := r.Region
		if name == "" {
			name = "(no region)"
		}
		regions = append(regions, fmt.Sprintf("%s %d/%d", name, r.Alive, r.Members))
	}
	d := newDetails(c.stdout)
	d.line("Node", cl.NodeID)
	d.line("Members", fmt.Sprintf("%d alive of %d", alive, len(cl.Members)))
	d.line("Regions (alive/total)", strings.Join(regions, ", "))
	if err := d.flush(); err != nil {
		return err
	}
	fmt.Fprintln(c.stdout)
	t := newTable(c.stdout, "NAME", "ID", "REGION", "STATE", "ADDRESSES", "VERSION", "REPLICATION", "LAST SEEN")
	for _, m := range cl.Members {
		name := m.Name
		if m.Self {
			name = strings.TrimSpace(name + " (this node)")
		}
		repl := ""
		if r := m.Replication; r != nil {
			state := "disconnected"
			if r.Connected {
				state = "connected"
			}
			repl = fmt.Sprintf("%s, %d pending, lag %.1fs", state, r.PendingChanges, r.LagSeconds)
		}
		lastSeen := ""
		if m.LastSeen != nil {
			lastSeen = formatTime(*m.LastSeen)
		}
		t.row(name, m.ID, m.Region, string(m.State), formatAddresses(m.Addresses), m.Version, repl, lastSeen)
	}
	return t.flush()
}

func formatAddresses(addrs map[string]string) string {
	roles := make([]string, 0, len(addrs))
	for role := range addrs {
		roles = append(roles, role)
	}
	sort.Strings(roles)
	parts := make([]string, len(roles))
	for i, role := range roles {
		parts[i] = role + "=" + addrs[role]
	}
	return strings.Join(parts, " ")
}
