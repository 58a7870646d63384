package admin

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/singularity-ng/singularity-edge/apitypes"
	"github.com/singularity-ng/singularity-edge/internal/fielderr"
	"github.com/singularity-ng/singularity-edge/storage"
)

// waitAllParam is the query parameter of wait-for-all: how long a write
// waits, after its local commit, until every alive member has applied it.
const waitAllParam = "wait_all"

// Replication is the cluster's wait-for-all as the API needs it; the agent
// implements it over the replication engine.
type Replication interface {
	// WaitApplied returns once every member alive when it is called has
	// applied commit (a change set of this node), or ctx ends (then an
	// error). missing names the members that do not hold it, with their
	// state at the call and the reason: an alive member among them means
	// the write did not reach it (pending, not connected, or refused for
	// its encryption key); suspect, dead or departed members are named
	// but never waited for.
	WaitApplied(ctx context.Context, commit storage.Commit) (missing []apitypes.ClusterMissing, err error)
}

// parseWaitAll reads ?wait_all= before anything is stored: 0 when it is
// absent, else a duration from 1ms to the API's write timeout less 5s
// (the answer must leave before the server gives up on it).
func (s *Server) parseWaitAll(r *http.Request) (time.Duration, error) {
	raw := r.URL.Query().Get(waitAllParam)
	if raw == "" {
		return 0, nil
	}
	limit := s.maxIssueWait()
	d, err := time.ParseDuration(raw)
	if err != nil || d < time.Millisecond || d > limit {
		msg := fmt.Sprintf("must be a duration from 1ms to %s, such as 10s (leave it out not to wait)", limit)
		return 0, errInvalid(waitAllParam+" "+msg, fielderr.FieldError{Field: waitAllParam, Message: msg})
	}
	return d, nil
}

// extendWriteDeadline gives the answer of a request that waits (wait_all,
// an ACME order's wait, a cluster leave) wait and 5 s more from now: the
// server's WriteTimeout runs from the request's headers, so a body that
// took its time and a commit would otherwise eat into the wait the client
// asked for, and the answer would be a closed connection. wait itself is
// bounded by maxIssueWait.
func (s *Server) extendWriteDeadline(w http.ResponseWriter, wait time.Duration) {
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(wait + 5*time.Second))
}

// waitAllUnchanged is ?wait_all= for a write that found nothing to change
// (a PATCH to the values stored): the client still asks that every alive
// member hold what the answer shows. When this node wrote that version,
// it is waited for as the write's own commit would be; a version another
// node wrote reached this one through replication, and spreading it is
// its origin's (this node cannot wait for another's change set).
func (s *Server) waitAllUnchanged(w http.ResponseWriter, r *http.Request, wait time.Duration, what string, v storage.Version) error {
	if v.Origin != s.store.NodeID() {
		return nil
	}
	return s.waitAll(w, r, wait, what, storage.Commit{Version: v})
}

// waitAll runs after a write committed, when the request asked for
// ?wait_all=: it waits until every alive member has applied its commits
// (one, or several for a cascade that deletes more backends than one
// transaction holds), all within wait. nil when they have (or the agent
// runs alone); otherwise a 504 not_applied that says the write is stored
// and names the members that did not apply it, so that a client does not
// repeat a write that took effect.
func (s *Server) waitAll(w http.ResponseWriter, r *http.Request, wait time.Duration, what string, commits ...storage.Commit) error {
	if wait <= 0 || s.deps.Replication == nil || len(commits) == 0 {
		return nil
	}
	s.extendWriteDeadline(w, wait)
	// The commit is done: a cluster leave may close the write gate now,
	// its flush covers this commit. Holding the gate for the wait would
	// make a leave time out behind a client's read-your-writes wait.
	if info := infoFrom(r.Context()); info != nil && info.endWrite != nil {
		info.endWrite()
	}
	ctx, cancel := context.WithTimeout(r.Context(), wait)
	defer cancel()
	var (
		missing []apitypes.ClusterMissing
		err     error
		failed  []string
		last    storage.Commit
	)
	for _, c := range commits {
		last = c
		missing, err = s.deps.Replication.WaitApplied(ctx, c)
		failed = failed[:0]
		for _, m := range missing {
			if m.State == "alive" {
				failed = append(failed, fmt.Sprintf("%s (%s)", m.Name, m.Reason))
			}
		}
		if err != nil || len(failed) > 0 {
			break
		}
	}
	if err == nil && len(failed) == 0 {
		return nil
	}
	if len(failed) == 0 {
		// The wait ended without naming anyone (the client went away).
		failed = append(failed, "the wait ended early")
	}
	if missing == nil {
		missing = []apitypes.ClusterMissing{}
	}
	return &apiError{Status: http.StatusGatewayTimeout, Code: apitypes.CodeNotApplied,
		Message: fmt.Sprintf("%s is stored on this node (commit %d), but not every alive member applied it within %s: %s; replication goes on and brings it to them once they are connected, so do not repeat the write",
			what, last.Version.Seq, wait, strings.Join(failed, ", ")),
		missing: missing, cause: err}
}
