package agent

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/singularity-ng/singularity-edge/cluster"
	"github.com/singularity-ng/singularity-edge/storage"
)

// acmeCluster is the cluster as the ACME manager needs it: who is alive
// (to pick one renewer per certificate) and a wait until every alive member
// holds a write (a challenge token, before the CA is told). It reads the
// replication engine at call time, so a cluster of one (no engine) is the
// node alone and waits for nobody.
type acmeCluster struct{ a *Agent }

// Self is this node's id, as the other members know it.
func (c acmeCluster) Self() string { return c.a.store.NodeID() }

// Alive lists the ids of the alive members, this node included, sorted so
// that every member computes the same owner.
func (c acmeCluster) Alive() []string {
	self := c.a.store.NodeID()
	if c.a.repl == nil {
		return []string{self}
	}
	ids := []string{self}
	if c.a.member != nil && c.a.member.State() != "" {
		// Leaving or left: this node renews nothing any more (what it
		// stored would reach nobody); the others share its certificates.
		ids = nil
	}
	for _, m := range c.a.repl.Members() {
		if m.Self || m.ID == self || m.State != cluster.StateAlive {
			continue
		}
		ids = append(ids, m.ID)
	}
	sort.Strings(ids)
	return ids
}

// WaitReplicated returns once every alive member has applied commit. An
// alive member without a replication stream after the engine's grace
// (replication.Engine.WaitApplied) counts as missing: the CA may
// dial any region, so a token it cannot hold must fail the challenge
// before the CA is asked. Suspect, dead and departed members are not
// waited for.
func (c acmeCluster) WaitReplicated(ctx context.Context, commit storage.Commit) error {
	if c.a.repl == nil {
		return nil
	}
	res, err := c.a.repl.WaitApplied(ctx, commit.Version.Seq)
	var missing []string
	for _, m := range res.Missing {
		if m.State == string(cluster.StateAlive) {
			missing = append(missing, fmt.Sprintf("%s (%s)", m.Name, m.Reason))
		}
	}
	switch {
	case err != nil && len(missing) > 0:
		return fmt.Errorf("replicating to every alive member: %w; missing %s", err, strings.Join(missing, ", "))
	case err != nil:
		return fmt.Errorf("replicating to every alive member: %w", err)
	case len(missing) > 0:
		return fmt.Errorf("replicating to every alive member: missing %s", strings.Join(missing, ", "))
	}
	return nil
}
