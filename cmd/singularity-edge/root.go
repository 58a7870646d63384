package main

import (
	"github.com/spf13/cobra"

	"github.com/singularity-ng/singularity-edge/agent"
)

// Exit codes of the CLI. Scripts can rely on them.
const (
	exitFailure     = 1 // anything not listed below
	exitUsage       = 2 // bad flags or arguments
	exitInvalid     = 3 // the agent rejected the input (HTTP 400/422)
	exitNotFound    = 4 // the named object does not exist (HTTP 404)
	exitConflict    = 5 // duplicate or concurrent edit (HTTP 409/412)
	exitAuth        = 6 // missing or wrong admin token (HTTP 401/403)
	exitUnavailable = 7 // the agent or store cannot be reached
	exitHeldBack    = 8 // the ACME rate-limit budget held the order back (HTTP 429)
	exitNotApplied  = 9 // the change is stored, but an alive member did not apply it within --wait (HTTP 504 not_applied)
)

// exitCodeError carries a specific process exit code up to main.
type exitCodeError struct {
	code int
	err  error
}

func (e *exitCodeError) Error() string { return e.err.Error() }
func (e *exitCodeError) Unwrap() error { return e.err }

func withExitCode(code int, err error) error {
	if err == nil {
		return nil
	}
	return &exitCodeError{code: code, err: err}
}

func newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "singularity-edge",
		Short: "Edge load balancer for Fly.io: HTTP, TLS and SNI-passthrough proxy with health checks, managed through an admin API",
		Long: `Singularity Edge is one binary: ` + "`singularity-edge agent`" + ` runs the edge load balancer
(HTTP and HTTPS listeners, TLS termination, SNI passthrough, pools of backends
with active and passive health checks, state in an embedded RocksDB store, an
admin API, dashboard and Prometheus metrics), and every other command manages
a running agent through its admin API (or, for ` + "`db`" + `, also a stopped agent's
data directory).

Certificates come from Let's Encrypt (or any ACME CA), ordered ahead of time
or on demand at the first handshake, or are uploaded.

Agents started with --gossip-addr (on Fly.io, every Machine of the app) form a
cluster: each keeps the whole state and takes writes, and replicates them to
the others in the background; a new agent fills its store from a peer before
it says ready. ` + "`cluster`" + ` shows the members and their replication.`,
		Args:          noArgs,
		RunE:          func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
		SilenceUsage:  true,
		SilenceErrors: true,
		// --version prints what -ldflags stamped into the binary.
		Version: agent.VersionString(),
	}
	root.SetVersionTemplate("singularity-edge {{.Version}}\n")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return withExitCode(exitUsage, err) })
	// Each command lives in its own file (agent.go, db.go, pools.go, ...).
	root.AddCommand(newAgentCommand())
	root.AddCommand(newPoolsCommand())
	root.AddCommand(newBackendsCommand())
	root.AddCommand(newCertsCommand())
	root.AddCommand(newClusterCommand())
	root.AddCommand(newDBCommand())
	root.AddCommand(newAuditCommand())
	return root
}
