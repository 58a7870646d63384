package agent

import (
	"context"

	"github.com/singularity-ng/singularity-edge/admin"
	"github.com/singularity-ng/singularity-edge/apitypes"
	"github.com/singularity-ng/singularity-edge/replication"
	"github.com/singularity-ng/singularity-edge/storage"
)

// adminWait is the replication engine's wait-for-all as the admin API
// offers it to callers (?wait_all=): the same wait an ACME challenge token
// makes (replication.Engine.WaitApplied), its result in the API's shape.
type adminWait struct{ repl *replication.Engine }

var _ admin.Replication = adminWait{}

// WaitApplied implements admin.Replication.
func (w adminWait) WaitApplied(ctx context.Context, commit storage.Commit) ([]apitypes.ClusterMissing, error) {
	res, err := w.repl.WaitApplied(ctx, commit.Version.Seq)
	missing := make([]apitypes.ClusterMissing, 0, len(res.Missing))
	for _, m := range res.Missing {
		missing = append(missing, apitypes.ClusterMissing{Name: m.Name, NodeID: m.NodeID, State: m.State, Reason: m.Reason})
	}
	return missing, err
}
