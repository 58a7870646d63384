package admin

import (
	"errors"
	"net/http"
	"sort"
	"strings"

	"github.com/singularity-ng/singularity-edge/apitypes"
	"github.com/singularity-ng/singularity-edge/storage"
)

// healthResponse is all GET /api/health tells an unauthenticated caller:
// the process answers (live) and it can serve (ready).
type healthResponse = apitypes.Health

// handleHealth answers 200 when ready and 503 while starting (the store is
// closed or the routing table is not built yet), so that a load balancer's
// check keeps traffic away until the agent can serve it.
func (s *Server) handleHealth(w http.ResponseWriter, r *http.Request) {
	warnings := s.Warnings()
	if status, reason := s.Readiness(); status != "" {
		writeJSON(w, http.StatusServiceUnavailable, healthResponse{Status: status, Live: true, Reason: reason, Warnings: warnings})
		return
	}
	writeJSON(w, http.StatusOK, healthResponse{Status: "ok", Live: true, Ready: true, Warnings: warnings})
}

// Warnings lists what degrades the cluster without making this node
// unready (a sticky-cookie key that differs from a member's); GET
// /api/health and the agent's /healthz both show them.
func (s *Server) Warnings() []string {
	if s.deps.Secrets == nil {
		return nil
	}
	_, w := s.deps.Secrets()
	return w
}

// Readiness says whether this node can do its job: an empty status when it
// can, else the status ("draining", "leaving", "left",
// "encryption_key_differs", "starting", "disk_full", "store_not_ready")
// and a reason that unauthenticated callers may read. GET /api/health answers it, and so does the agent's /healthz,
// so that the two never disagree.
func (s *Server) Readiness() (status, reason string) {
	if s.draining.Load() {
		return "draining", "this node is shutting down and finishing the requests it has"
	}
	switch st := s.membershipState(); st {
	case "leaving":
		return st, "this node is leaving the cluster: its writes are reaching the other members"
	case "left":
		return st, "this node left the cluster; stop it, or restart it to join again"
	}
	// Before "starting": a new node whose key differs is refused a
	// snapshot and never finishes starting; this says why.
	if s.deps.Secrets != nil {
		if why, _ := s.deps.Secrets(); why != "" {
			return "encryption_key_differs", why
		}
	}
	ready := s.store.Info().Running
	if ready && s.deps.Ready != nil {
		select {
		case <-s.deps.Ready:
		default:
			ready = false
		}
	}
	if !ready {
		return "starting", ""
	}
	return storeReadiness(s.store)
}

// storeProbe is the part of the store that readiness asks.
type storeProbe interface {
	Ready() error
	CheckWritable() error
}

// storeReadiness says whether st can commit and serve: an empty status when
// it can, else "disk_full" or "store_not_ready" and a reason that names no
// path or key (unauthenticated callers read it). A full disk or a store that
// is bootstrapping or resyncing a table is not ready. A failed commit is
// probed again here, so the node comes back without waiting for the next
// write. GET /api/health and the agent's health listener both answer from
// it, so the two never disagree about the store.
func storeReadiness(st storeProbe) (status, reason string) {
	err := st.Ready()
	if err != nil && (errors.Is(err, storage.ErrDiskFull) || !errors.Is(err, storage.ErrNotReady)) {
		if st.CheckWritable() == nil {
			err = st.Ready()
		}
	}
	switch {
	case err == nil:
		return "", ""
	case errors.Is(err, storage.ErrDiskFull):
		return "disk_full", "the node's disk is full; writes resume once space is freed"
	case errors.Is(err, storage.ErrNotReady) && !errors.Is(err, storage.ErrCommitFailed):
		// Bootstrap or resync: no paths or key material in these.
		return "store_not_ready", strings.TrimPrefix(err.Error(), storage.ErrNotReady.Error()+": ")
	default:
		return "store_not_ready", "the store cannot commit; see the agent log"
	}
}

// clusterResponse is GET /api/cluster: this node's id, every member, and a
// per-region summary.
type (
	clusterResponse = apitypes.Cluster
	regionSummary   = apitypes.RegionSummary
)

func (s *Server) handleCluster(w http.ResponseWriter, r *http.Request) {
	members := s.members()
	sort.Slice(members, func(i, j int) bool {
		if members[i].Region != members[j].Region {
			return members[i].Region < members[j].Region
		}
		if members[i].Name != members[j].Name {
			return members[i].Name < members[j].Name
		}
		return members[i].ID < members[j].ID
	})
	resp := clusterResponse{NodeID: s.cfg.Node.ID, Members: members, Regions: []regionSummary{}}
	for _, m := range members {
		if n := len(resp.Regions); n == 0 || resp.Regions[n-1].Region != m.Region {
			resp.Regions = append(resp.Regions, regionSummary{Region: m.Region})
		}
		rs := &resp.Regions[len(resp.Regions)-1]
		rs.Members++
		if m.State == "alive" {
			rs.Alive++
		}
	}
	writeJSON(w, http.StatusOK, resp)
}

// members returns the cluster's view, or this node alone when the agent
// runs without a membership layer: a node that answers is alive. Such a
// node gossips no readiness, so its own verdict (Readiness) is its ready
// flag, and `cluster status` and the dashboard agree with /api/health.
func (s *Server) members() []Member {
	if _, single := s.deps.Cluster.(SingleMember); single || s.deps.Cluster == nil {
		members := s.clusterMembers()
		status, _ := s.Readiness()
		for i := range members {
			if members[i].Self {
				members[i].Ready = status == ""
			}
		}
		return members
	}
	return s.clusterMembers()
}

// clusterMembers is members without the readiness of a single node.
func (s *Server) clusterMembers() []Member {
	if s.deps.Cluster != nil {
		members := s.deps.Cluster.Members()
		out := make([]Member, len(members))
		copy(out, members)
		for i := range out {
			if out[i].Addresses == nil {
				out[i].Addresses = map[string]string{}
			}
			if out[i].ID == s.cfg.Node.ID {
				out[i].Self = true
			}
		}
		return out
	}
	addrs := map[string]string{}
	if a := s.Addr(); a != nil {
		addrs["admin"] = a.String()
	}
	return []Member{{
		ID:        s.cfg.Node.ID,
		Name:      s.cfg.Node.Name,
		Region:    s.cfg.Node.Region,
		Addresses: addrs,
		State:     "alive",
		Version:   s.cfg.Node.Version,
		Self:      true,
	}}
}

// SingleMember is the Cluster of an agent without a membership layer: the
// given member, always. The agent builds it from its own configuration.
type SingleMember Member

// Members returns the one member.
func (m SingleMember) Members() []Member {
	member := Member(m)
	member.Self = true
	addrs := make(map[string]string, len(m.Addresses))
	for k, v := range m.Addresses {
		addrs[k] = v
	}
	member.Addresses = addrs
	return []Member{member}
}
