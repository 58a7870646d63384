package admin

import (
	"fmt"

	"github.com/singularity-ng/singularity-edge/internal/fielderr"
	"github.com/singularity-ng/singularity-edge/storage"
)

// claimOnDemandPatterns adds a conflict for each on_demand_allow pattern
// another on-demand pool lists already: a pattern routes names to one
// pool, like a host. One guarded index partition per pattern, so two
// concurrent claims conflict and one retries into this check.
func claimOnDemandPatterns(tx *storage.Tx, p *storage.Pool, conflicts *fielderr.List) error {
	if !p.OnDemandTLS {
		return nil
	}
	for i, pat := range p.OnDemandAllow {
		owners, err := tx.PoolsByOnDemandPattern(pat)
		if err != nil {
			return err
		}
		for _, o := range owners {
			if o.Name != p.Name {
				conflicts.Add(fmt.Sprintf("on_demand_allow[%d]", i),
					fmt.Sprintf("pattern %q is already in the on_demand_allow of pool %q; a pattern routes names to one pool, remove it there first", pat, o.Name))
			}
		}
	}
	return nil
}
