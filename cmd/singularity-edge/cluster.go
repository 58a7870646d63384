package main

import (
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"

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
		Short: "Show the cluster as the agent sees it; join or leave it",
		Long: `Show the members of the cluster through the admin API of a running agent,
make the agent join members at given addresses, or take it out gracefully.

The agent is found at --api (env EDGE_API, default ` + defaultAPI + `); the admin
token comes from EDGE_ADMIN_TOKEN or --token-file.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	opts := addAPIFlags(cmd)
	cmd.AddCommand(newClusterMachinesCommand(opts)) // machines.go: Fly's Machines API, not the agent
	cmd.AddCommand(newClusterJoinCommand(opts), newClusterLeaveCommand(opts))
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

func newClusterJoinCommand(opts *apiOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "join ADDR...",
		Short: "Make the agent join the members at these gossip addresses",
		Long: `Join the cluster through one or more of its members, now, without a restart:
each ADDR is a member's gossip address, an IP literal or IP:port (the
cluster's gossip port when left out), e.g. 10.0.0.2:7946 or [fdaa::2]:7946.
Host names are not accepted. One member that answers is enough: the others
are learnt from it. A node that has not yet filled its store from a peer can
be joined too.

Exit codes: 3 an address is not valid, 7 no node answered (or the agent is
unreachable), 5 the agent left the cluster (restart it to join again), 5 with
not_supported when the agent runs without --gossip-addr.`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return withExitCode(exitUsage, fmt.Errorf("%s expects at least one gossip address (IP or IP:port)", cmd.CommandPath()))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := opts.client(cmd)
			if err != nil {
				return err
			}
			resp, err := c.do(cmd.Context(), request{method: http.MethodPost, path: "/api/cluster/join",
				body: apitypes.ClusterJoin{Addresses: args}})
			if err != nil {
				return err
			}
			return showAnswer(c, resp.Body, func(j *apitypes.ClusterJoined) error {
				_, err := fmt.Fprintf(c.stdout, "Joined: %d node(s) answered at %s. See the members with `singularity-edge cluster status`.\n",
					j.Contacted, strings.Join(j.Addresses, ", "))
				return err
			})
		},
	}
}

func newClusterLeaveCommand(opts *apiOptions) *cobra.Command {
	var wait time.Duration
	var force bool
	cmd := &cobra.Command{
		Use:   "leave",
		Short: "Leave the cluster gracefully (the agent then reports itself not ready)",
		Long: `Take the agent out of the cluster before stopping it: it stops taking writes,
waits until every alive member holds the writes it made (up to --wait), says
goodbye to the others (they show it as "left", not dead), stops gossip and
replication, and answers /api/health with 503 "left" so traffic goes
elsewhere. Stop the agent afterwards; starting it again joins it again.

If some alive member still misses writes after --wait, the agent stays in
the cluster, takes writes again, and the command exits 5 naming them; with
--force it leaves anyway (those writes reach them when the node comes back).

Exit codes: 5 not every member holds this node's writes (or already left, or
not_supported without --gossip-addr), 7 the agent is unreachable.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if wait <= 0 {
				return withExitCode(exitUsage, fmt.Errorf("--wait must be positive, not %s", wait))
			}
			c, err := opts.client(cmd)
			if err != nil {
				return err
			}
			if need := wait + 10*time.Second; c.http.Timeout < need {
				c.http.Timeout, c.timeout = need, need
			}
			q := url.Values{"wait": {wait.String()}}
			if force {
				q.Set("force", "true")
			}
			resp, err := c.do(cmd.Context(), request{method: http.MethodPost, path: "/api/cluster/leave", query: q})
			if err != nil {
				return err
			}
			return showAnswer(c, resp.Body, func(l *apitypes.ClusterLeft) error {
				msg := "Left the cluster: every alive member holds this node's writes."
				if !l.Flushed {
					var names []string
					for _, m := range l.Missing {
						if m.Reason == "pending" || m.Reason == "not connected" {
							names = append(names, m.Name+" ("+m.Reason+")")
						}
					}
					msg = "Left the cluster (forced): " + strings.Join(names, ", ") + " did not hold every write of this node."
				}
				_, err := fmt.Fprintln(c.stdout, msg+" The agent reports itself not ready; stop it now.")
				return err
			})
		},
	}
	cmd.Flags().DurationVar(&wait, "wait", 30*time.Second, "how long to wait for the other members to hold this node's writes")
	cmd.Flags().BoolVar(&force, "force", false, "leave even if some alive member does not hold every write of this node")
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
	t := newTable(c.stdout, "NAME", "ID", "REGION", "MACHINE", "STATE", "READY", "ADDRESSES", "VERSION", "REPLICATION", "CLOCK OFFSET", "LAST SEEN")
	for _, m := range cl.Members {
		name := m.Name
		if m.Self {
			name = strings.TrimSpace(name + " (this node)")
		}
		repl := ""
		if r := m.Replication; r != nil {
			state := "disconnected"
			switch {
			case r.EncryptionKeyDiffers:
				// Never connects until an operator acts: say what to fix.
				state = "refused: EDGE_ENCRYPTION_KEY differs"
			case r.Connected:
				state = "connected"
			}
			repl = fmt.Sprintf("%s, %d pending, lag %.1fs", state, r.PendingChanges, r.LagSeconds)
		}
		lastSeen := ""
		if m.LastSeen != nil {
			lastSeen = formatTime(*m.LastSeen)
		}
		// Yes when the member holds the cluster's state and its own
		// health check passes (an older agent gossips no health).
		ready := "no"
		switch {
		case m.Health != "" && m.Health != "ok":
			ready = "no (" + m.Health + ")"
		case m.Ready:
			ready = "yes"
		}
		offset := ""
		if !m.Self {
			offset = fmt.Sprintf("%+.0fms", m.ClockOffsetMS)
		}
		t.row(name, m.ID, m.Region, m.MachineID, string(m.State), ready, formatAddresses(m.Addresses), m.Version, repl, offset, lastSeen)
	}
	if err := t.flush(); err != nil {
		return err
	}
	// Replication works across a differing cookie key, so no column says
	// so; stickiness between the two does not.
	var differ []string
	for _, m := range cl.Members {
		if m.CookieKeyDiffers {
			differ = append(differ, m.Name)
		}
	}
	if len(differ) > 0 {
		_, err := fmt.Fprintf(c.stdout, "\nWarning: the sticky-session cookie key of %s differs from this node's: a client moving between them loses its backend; "+
			"set the same EDGE_COOKIE_KEY (or, without one, the same EDGE_ENCRYPTION_KEY) on every node.\n", strings.Join(differ, ", "))
		return err
	}
	return nil
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
