package main

import (
	"fmt"
	"net/url"
	"time"

	"github.com/spf13/cobra"
)

// waitAllGrace is what the CLI adds to --wait for its own request
// timeout: the agent answers at --wait at the latest, and that answer
// must still arrive.
const waitAllGrace = 10 * time.Second

// waitAll is --wait of the commands that change pools, backends and
// certificates: the agent answers once every alive member of the cluster
// has applied the change (?wait_all=), so that the next command on any
// node reads it. Left out, the agent answers after its own commit.
type waitAll struct{ d time.Duration }

func addWaitAllFlag(cmd *cobra.Command) *waitAll {
	w := &waitAll{}
	cmd.Flags().DurationVar(&w.d, "wait", 0, "wait up to this long until every alive member has applied the change, e.g. 10s "+
		"(at most the agent's write timeout less 5s); exit code 9 names the members that did not. Left out: return after this node's commit")
	return w
}

// query adds wait_all to q when --wait was given; a --wait the agent would
// refuse is a usage error here.
func (w *waitAll) query(cmd *cobra.Command, q url.Values) (url.Values, error) {
	if !cmd.Flags().Changed("wait") {
		return q, nil
	}
	if w.d < time.Millisecond {
		return nil, withExitCode(exitUsage, fmt.Errorf("--wait must be at least 1ms, not %s (leave it out not to wait)", w.d))
	}
	if q == nil {
		q = url.Values{}
	}
	q.Set("wait_all", w.d.String())
	return q, nil
}

// extend lengthens c's request timeout to cover the wait.
func (w *waitAll) extend(c *apiClient) {
	if need := w.d + waitAllGrace; w.d > 0 && c.http.Timeout < need {
		c.http.Timeout, c.timeout = need, need
	}
}
