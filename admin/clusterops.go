package admin

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/singularity-ng/singularity-edge/apitypes"
	"github.com/singularity-ng/singularity-edge/internal/fielderr"
)

// maxJoinAddresses bounds a join request: a join needs one live member,
// a few are for redundancy, hundreds are a mistake.
const maxJoinAddresses = 64

// defaultLeaveWait is how long a leave waits for the others to hold this
// node's writes unless ?wait= says otherwise.
const defaultLeaveWait = 30 * time.Second

// handleClusterJoin joins the members at the given gossip addresses:
// POST /api/cluster/join {"addresses": ["10.0.0.2:7946", "fdaa::3"]}.
func (s *Server) handleClusterJoin(w http.ResponseWriter, r *http.Request) {
	var in apitypes.ClusterJoin
	if err := readStrict(w, r, s.cfg.MaxBodyBytes, &in); err != nil {
		s.writeError(w, r, err)
		return
	}
	addrs, err := validateJoinAddresses(in.Addresses)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if s.deps.Membership == nil {
		s.writeError(w, r, errNoGossip())
		return
	}
	n, err := s.deps.Membership.Join(r.Context(), addrs)
	switch {
	case errors.Is(err, ErrNoNodeAnswered):
		s.writeError(w, r, &apiError{Status: http.StatusBadGateway, Code: CodeJoinFailed,
			Message: "no node answered at " + strings.Join(addrs, ", ") + " (is an agent listening there, with the same gossip key and app?)", cause: err})
		return
	case errors.Is(err, ErrLeft):
		s.writeError(w, r, errConflict("", ErrLeft.Error()))
		return
	case errors.Is(err, ErrStarting):
		s.writeError(w, r, &apiError{Status: http.StatusServiceUnavailable, Code: CodeUnavailable, Message: ErrStarting.Error()})
		return
	case err != nil:
		s.writeError(w, r, err)
		return
	}
	s.logger.Info("cluster join requested", zap.Strings("addresses", addrs), zap.Int("contacted", n),
		zap.String("request_id", requestID(r.Context())))
	writeJSON(w, http.StatusOK, apitypes.ClusterJoined{Addresses: addrs, Contacted: n})
}

// validateJoinAddresses checks every address as sent: an IP literal or
// IP:port with a port in 1-65535. Host names are refused, as for --join:
// the agent joins IP literals only.
func validateJoinAddresses(in []string) ([]string, error) {
	if len(in) == 0 {
		return nil, errUnprocessable(fielderr.List{{Field: "addresses", Message: "give at least one gossip address (IP or IP:port) of a member to join"}})
	}
	if len(in) > maxJoinAddresses {
		return nil, errUnprocessable(fielderr.List{{Field: "addresses", Message: fmt.Sprintf("at most %d addresses, not %d", maxJoinAddresses, len(in))}})
	}
	var errs fielderr.List
	out := make([]string, 0, len(in))
	for i, a := range in {
		field := "addresses[" + strconv.Itoa(i) + "]"
		if ip, err := netip.ParseAddr(a); err == nil {
			if ip.Zone() != "" || ip.IsUnspecified() {
				errs = append(errs, fielderr.FieldError{Field: field, Message: fmt.Sprintf("%q is not an address a member can listen on", a)})
				continue
			}
			out = append(out, ip.Unmap().String())
			continue
		}
		ap, err := netip.ParseAddrPort(a)
		switch {
		case err != nil:
			errs = append(errs, fielderr.FieldError{Field: field,
				Message: fmt.Sprintf("%q is not an IP address or IP:port (e.g. 10.0.0.2:7946 or [fdaa::2]:7946); host names are not accepted", a)})
		case ap.Port() == 0:
			errs = append(errs, fielderr.FieldError{Field: field, Message: fmt.Sprintf("%q: port 0 is not a gossip port", a)})
		case ap.Addr().Zone() != "" || ap.Addr().IsUnspecified():
			errs = append(errs, fielderr.FieldError{Field: field, Message: fmt.Sprintf("%q is not an address a member can listen on", a)})
		default:
			out = append(out, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()).String())
		}
	}
	if len(errs) > 0 {
		return nil, errUnprocessable(errs)
	}
	return out, nil
}

// handleClusterLeave leaves the cluster gracefully: POST
// /api/cluster/leave[?wait=30s][&force=true]. Writes stop, the others get
// this node's pending writes, then it says goodbye and reports itself not
// ready. Without force, a member that still misses writes after wait
// refuses the leave (409, the members in error.missing) and writes resume.
func (s *Server) handleClusterLeave(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query() // wait and force only: the route declares them (routes)
	force := false
	if v := q.Get("force"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			s.writeError(w, r, errInvalid("force must be true or false", fielderr.FieldError{Field: "force", Message: "must be true or false"}))
			return
		}
		force = b
	}
	wait := defaultLeaveWait
	if v := q.Get("wait"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			s.writeError(w, r, errInvalid("wait must be a positive duration such as 30s",
				fielderr.FieldError{Field: "wait", Message: "must be a positive duration such as 30s"}))
			return
		}
		wait = d
	}
	if limit := s.maxIssueWait(); wait > limit {
		s.writeError(w, r, errInvalid(fmt.Sprintf("wait must be at most %s (the API's write timeout less 5s)", limit),
			fielderr.FieldError{Field: "wait", Message: fmt.Sprintf("at most %s", limit)}))
		return
	}
	if s.deps.Membership == nil {
		s.writeError(w, r, errNoGossip())
		return
	}
	// The goodbye after the flush takes up to a few seconds more.
	s.extendWriteDeadline(w, wait+10*time.Second)
	ctx, cancel := context.WithTimeout(r.Context(), wait)
	defer cancel()
	if !s.writes.close(ctx) {
		s.writes.open()
		s.writeError(w, r, errConflict("", "not leaving: writes in flight did not finish within "+wait.String()+"; retry"))
		return
	}
	res, err := s.deps.Membership.Leave(ctx, force)
	if err != nil && s.membershipState() == "" {
		// Still a member (the leave was refused): take writes again.
		s.writes.open()
	}
	switch {
	case errors.Is(err, ErrNotFlushed):
		ae := errConflict("", "not leaving: "+describeMissing(res.Missing)+" after "+wait.String()+
			"; writes resume. Retry later, raise ?wait=, or leave with ?force=true (their writes then reach them only when this node comes back)")
		ae.missing = res.Missing
		s.writeError(w, r, ae)
		return
	case errors.Is(err, ErrLeft), errors.Is(err, ErrLeaving):
		s.writeError(w, r, errConflict("", err.Error()))
		return
	case err != nil:
		s.writeError(w, r, err)
		return
	}
	s.logger.Info("left the cluster on request", zap.Bool("flushed", res.Flushed), zap.Strings("applied", res.Applied),
		zap.Int("missing", len(res.Missing)), zap.Bool("force", force), zap.String("request_id", requestID(r.Context())))
	writeJSON(w, http.StatusOK, res)
}

func describeMissing(ms []apitypes.ClusterMissing) string {
	var parts []string
	for _, m := range ms {
		if m.Reason == "pending" || m.Reason == "not connected" {
			parts = append(parts, m.Name+" ("+m.Reason+")")
		}
	}
	if len(parts) == 0 {
		return "some members do not hold every write of this node"
	}
	return strings.Join(parts, ", ") + " do not hold every write of this node"
}

func errNoGossip() *apiError {
	return &apiError{Status: http.StatusConflict, Code: CodeNotSupported,
		Message: "this agent runs without gossip (start it with --gossip-addr to be part of a cluster)"}
}

func errLeavingNoWrites() *apiError {
	return &apiError{Status: http.StatusServiceUnavailable, Code: CodeUnavailable,
		Message: "this node is leaving or has left the cluster and takes no writes; write to another node"}
}

// writeGate counts the write requests in flight and, once closed, refuses
// new ones.
type writeGate struct {
	mu       sync.Mutex
	closed   bool
	inflight int
	idle     chan struct{} // closed when inflight drops to 0 while closed
}

// enter admits a write unless the gate is closed.
func (g *writeGate) enter() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return false
	}
	g.inflight++
	return true
}

func (g *writeGate) exit() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.inflight--
	if g.inflight == 0 && g.idle != nil {
		close(g.idle)
		g.idle = nil
	}
}

// close refuses new writes and waits for those in flight; false when ctx
// ended first (the gate stays closed until open).
func (g *writeGate) close(ctx context.Context) bool {
	g.mu.Lock()
	g.closed = true
	if g.inflight == 0 {
		g.mu.Unlock()
		return true
	}
	if g.idle == nil {
		g.idle = make(chan struct{})
	}
	idle := g.idle
	g.mu.Unlock()
	select {
	case <-idle:
		return true
	case <-ctx.Done():
		return false
	}
}

// open admits writes again.
func (g *writeGate) open() {
	g.mu.Lock()
	g.closed = false
	g.mu.Unlock()
}
