package admin

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/singularity-ng/singularity-edge/internal/fielderr"
	"github.com/singularity-ng/singularity-edge/pools"
	"github.com/singularity-ng/singularity-edge/storage"
)

// poolInput is the writable part of a pool in JSON. POST decodes it from
// zero values; PATCH decodes the body onto the current pool's input, so the
// fields the body leaves out keep their values (health_check merges field
// by field; hosts and metadata are replaced as a whole).
type poolInput struct {
	Name                string            `json:"name"`
	Algorithm           string            `json:"algorithm"`
	SSLMode             string            `json:"ssl_mode"`
	SSLDomain           string            `json:"ssl_domain"`
	SSLCertID           string            `json:"ssl_cert_id"`
	Hosts               []string          `json:"hosts"`
	ValidateBackendCert bool              `json:"validate_backend_cert"`
	HealthCheckInterval int64             `json:"health_check_interval"` // milliseconds
	HealthCheck         healthCheckJSON   `json:"health_check"`
	HashOn              string            `json:"hash_on"`
	StickyCookie        string            `json:"sticky_cookie"`
	PreferRegion        bool              `json:"prefer_region"`
	FailOpen            bool              `json:"fail_open"`
	AllowHTTP           bool              `json:"allow_http"`
	HoldNewBackends     bool              `json:"hold_new_backends"`
	Default             bool              `json:"default"`
	BackendCA           string            `json:"backend_ca"`
	BackendServerName   string            `json:"backend_server_name"`
	BackendClientCertID string            `json:"backend_client_cert_id"`
	Metadata            map[string]string `json:"metadata"`
}

// healthCheckJSON is storage.HealthCheck with durations in milliseconds.
type healthCheckJSON struct {
	Type           string `json:"type"`
	Path           string `json:"path"`
	ExpectedStatus int    `json:"expected_status"`
	Timeout        int64  `json:"timeout"` // milliseconds
	Rise           int    `json:"rise"`
	Fall           int    `json:"fall"`
	MaxFails       int    `json:"max_fails"` // -1 disables passive checks
	Cooldown       int64  `json:"cooldown"`  // milliseconds
}

// poolResponse is a pool as the API shows it: configuration, row metadata
// and the live statistics of its backends.
type poolResponse struct {
	poolInput
	InsertedAt time.Time       `json:"inserted_at"`
	UpdatedAt  time.Time       `json:"updated_at"`
	Version    storage.Version `json:"version"`
	Stats      poolStatsJSON   `json:"stats"`
}

// poolStatsJSON summarizes a pool's backends as this node sees them.
// Source says where the figures come from: "live" (the running routing
// table) or "stored" (this node's persisted observations, used before the
// routing table has picked the pool up or when the agent runs without it).
type poolStatsJSON struct {
	TotalBackends int `json:"total_backends"`
	// HealthyBackends can take new requests; UnhealthyBackends fail their
	// checks; DrainingBackends are draining whatever their health. In the
	// stored view a backend this node has not observed yet is in none of
	// the three.
	HealthyBackends    int    `json:"healthy_backends"`
	UnhealthyBackends  int    `json:"unhealthy_backends"`
	DrainingBackends   int    `json:"draining_backends"`
	CurrentConnections int64  `json:"current_connections"`
	TotalRequests      int64  `json:"total_requests"`
	TotalFailures      int64  `json:"total_failures"`
	Source             string `json:"source"`
}

// maxMillis is the largest millisecond count that fits a time.Duration.
const maxMillis = math.MaxInt64 / int64(time.Millisecond)

func millis(field string, ms int64, errs *fielderr.List) time.Duration {
	switch {
	case ms < 0:
		errs.Add(field, fmt.Sprintf("must not be negative (milliseconds), got %d", ms))
		return 0
	case ms > maxMillis:
		errs.Add(field, fmt.Sprintf("is too large (milliseconds), got %d", ms))
		return 0
	}
	return time.Duration(ms) * time.Millisecond
}

func poolInputFrom(p storage.Pool) poolInput {
	return poolInput{
		Name:                p.Name,
		Algorithm:           p.Algorithm,
		SSLMode:             p.SSLMode,
		SSLDomain:           p.SSLDomain,
		SSLCertID:           p.SSLCertID,
		Hosts:               p.Hosts,
		ValidateBackendCert: p.ValidateBackendCert,
		HealthCheckInterval: p.HealthCheckInterval.Milliseconds(),
		HealthCheck: healthCheckJSON{
			Type:           p.HealthCheck.Type,
			Path:           p.HealthCheck.Path,
			ExpectedStatus: p.HealthCheck.ExpectedStatus,
			Timeout:        p.HealthCheck.Timeout.Milliseconds(),
			Rise:           p.HealthCheck.Rise,
			Fall:           p.HealthCheck.Fall,
			MaxFails:       p.HealthCheck.MaxFails,
			Cooldown:       p.HealthCheck.Cooldown.Milliseconds(),
		},
		HashOn:          p.HashOn,
		StickyCookie:    p.StickyCookie,
		PreferRegion:    p.PreferRegion,
		FailOpen:        p.FailOpen,
		AllowHTTP:       p.AllowHTTP,
		HoldNewBackends: p.HoldNewBackends,
		Default:         p.Default,
		Metadata:        p.Metadata,

		BackendCA:           p.BackendCA,
		BackendServerName:   p.BackendServerName,
		BackendClientCertID: p.BackendClientCertID,
	}
}

// toPool converts the input and runs the pools package's validation. The
// error is a *fielderr.Error (422).
func (in poolInput) toPool() (storage.Pool, error) {
	var errs fielderr.List
	p := storage.Pool{
		Name:                in.Name,
		Algorithm:           in.Algorithm,
		SSLMode:             in.SSLMode,
		SSLDomain:           in.SSLDomain,
		SSLCertID:           in.SSLCertID,
		Hosts:               in.Hosts,
		ValidateBackendCert: in.ValidateBackendCert,
		HealthCheckInterval: millis("health_check_interval", in.HealthCheckInterval, &errs),
		HealthCheck: storage.HealthCheck{
			Type:           in.HealthCheck.Type,
			Path:           in.HealthCheck.Path,
			ExpectedStatus: in.HealthCheck.ExpectedStatus,
			Timeout:        millis("health_check.timeout", in.HealthCheck.Timeout, &errs),
			Rise:           in.HealthCheck.Rise,
			Fall:           in.HealthCheck.Fall,
			MaxFails:       in.HealthCheck.MaxFails,
			Cooldown:       millis("health_check.cooldown", in.HealthCheck.Cooldown, &errs),
		},
		HashOn:          in.HashOn,
		StickyCookie:    in.StickyCookie,
		PreferRegion:    in.PreferRegion,
		FailOpen:        in.FailOpen,
		AllowHTTP:       in.AllowHTTP,
		HoldNewBackends: in.HoldNewBackends,
		Default:         in.Default,
		Metadata:        in.Metadata,

		BackendCA:           in.BackendCA,
		BackendServerName:   in.BackendServerName,
		BackendClientCertID: in.BackendClientCertID,
	}
	if len(errs) > 0 {
		return p, errs.Err()
	}
	if err := pools.NormalizePool(&p); err != nil {
		return p, err
	}
	return p, nil
}

// checkPoolRefs runs, inside the write's transaction, the checks that
// depend on other rows: the named certificates exist, and the one served
// covers the pool's SSL domain.
func checkPoolRefs(tx *storage.Tx, p *storage.Pool) error {
	if id := p.BackendClientCertID; id != "" {
		_, err := tx.Certificate(id)
		if errors.Is(err, storage.ErrNotFound) {
			return errUnprocessable(fielderr.List{{Field: "backend_client_cert_id", Message: fmt.Sprintf("no certificate with id %q", id)}})
		}
		if err != nil {
			return err
		}
	}
	if p.SSLCertID == "" {
		return nil
	}
	c, err := tx.Certificate(p.SSLCertID)
	if errors.Is(err, storage.ErrNotFound) {
		return errUnprocessable(fielderr.List{{Field: "ssl_cert_id", Message: fmt.Sprintf("no certificate with id %q", p.SSLCertID)}})
	}
	if err != nil {
		return err
	}
	if p.SSLDomain != "" && !certificateCovers(c, p.SSLDomain) {
		return errUnprocessable(fielderr.List{{Field: "ssl_cert_id",
			Message: fmt.Sprintf("certificate %q (%s) does not cover ssl_domain %q", c.ID, strings.Join(c.Names, ", "), p.SSLDomain)}})
	}
	return nil
}

// certificateCovers reports whether one of c's names matches host the way a
// TLS client checks it: exactly, or by a wildcard for exactly one label. A
// wildcard host ("*.example.com") is covered only by the same wildcard.
func certificateCovers(c storage.Certificate, host string) bool {
	host = strings.ToLower(host)
	for _, n := range c.Names {
		n = strings.ToLower(n)
		if n == host {
			return true
		}
		if rest, ok := strings.CutPrefix(n, "*."); ok && !strings.HasPrefix(host, "*.") {
			if _, parent, found := strings.Cut(host, "."); found && parent == rest {
				return true
			}
		}
	}
	return false
}

func (s *Server) handleListPools(w http.ResponseWriter, r *http.Request) {
	pg, err := parsePage(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	rows, err := s.store.ListPools(r.Context(), pg.After, pg.Limit+1)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	view, err := s.loadPoolView(r.Context())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	resp, err := pageOf(rows, pg.Limit, func(p storage.Pool) string { return p.Name },
		func(p storage.Pool) (poolResponse, error) { return view.pool(r.Context(), p) })
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, resp)
}

func (s *Server) handleGetPool(w http.ResponseWriter, r *http.Request) {
	p, err := s.store.GetPool(r.Context(), r.PathValue("name"))
	if err != nil {
		s.writeError(w, r, notFoundAs(err, "name", fmt.Sprintf("no pool named %q", r.PathValue("name"))))
		return
	}
	view, err := s.loadPoolView(r.Context())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	resp, err := view.pool(r.Context(), p)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	w.Header().Set("ETag", etag(p.Version))
	writeJSON(w, http.StatusOK, resp)
}

func (s *Server) handleCreatePool(w http.ResponseWriter, r *http.Request) {
	var in poolInput
	if err := readStrict(w, r, s.cfg.MaxBodyBytes, &in); err != nil {
		s.writeError(w, r, err)
		return
	}
	p, err := in.toPool()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var stored storage.Pool
	commit, err := s.store.Update(r.Context(), func(tx *storage.Tx) error {
		if _, err := tx.Pool(p.Name); err == nil {
			return errConflict("name", fmt.Sprintf("a pool named %q already exists", p.Name))
		} else if !errors.Is(err, storage.ErrNotFound) {
			return err
		}
		if err := checkPoolRefs(tx, &p); err != nil {
			return err
		}
		stored = p
		return tx.PutPool(&stored)
	})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	stored.Version = rowVersion(stored.Version, commit)
	s.respondPool(w, r, http.StatusCreated, stored)
}

func (s *Server) handlePatchPool(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	var probe poolInput
	body, keys, err := readPatch(w, r, s.cfg.MaxBodyBytes, &probe)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if _, ok := keys["name"]; ok && strings.ToLower(strings.TrimSpace(probe.Name)) != name {
		s.writeError(w, r, errUnprocessable(fielderr.List{{Field: "name", Message: "cannot be changed; create a new pool and move the backends"}}))
		return
	}
	match, err := parseIfMatch(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var stored storage.Pool
	commit, err := s.store.Update(r.Context(), func(tx *storage.Tx) error {
		cur, err := tx.Pool(name)
		if err != nil {
			return notFoundAs(err, "name", fmt.Sprintf("no pool named %q", name))
		}
		if err := match.check(cur.Version); err != nil {
			return err
		}
		in := poolInputFrom(cur)
		// Arrays and maps are replaced, not merged, when present.
		if _, ok := keys["metadata"]; ok {
			in.Metadata = nil
		}
		if _, ok := keys["hosts"]; ok {
			in.Hosts = nil
		}
		if err := decodeStrict(body, &in); err != nil {
			return err
		}
		next, err := in.toPool()
		if err != nil {
			return err
		}
		if err := checkPoolRefs(tx, &next); err != nil {
			return err
		}
		next.InsertedAt = cur.InsertedAt
		stored = next
		return tx.PutPool(&stored)
	})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	stored.Version = rowVersion(stored.Version, commit)
	s.respondPool(w, r, http.StatusOK, stored)
}

func (s *Server) handleDeletePool(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	cascade, err := boolQuery(r, "cascade")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	match, err := parseIfMatch(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	_, err = s.store.Update(r.Context(), func(tx *storage.Tx) error {
		cur, err := tx.Pool(name)
		if err != nil {
			return notFoundAs(err, "name", fmt.Sprintf("no pool named %q", name))
		}
		if err := match.check(cur.Version); err != nil {
			return err
		}
		backends, err := tx.BackendsByPool(name)
		if err != nil {
			return err
		}
		if len(backends) > 0 && !cascade {
			return errConflict("name", fmt.Sprintf("pool %q still has %d backend(s); delete them first or pass ?cascade=true", name, len(backends)))
		}
		for _, b := range backends {
			if err := tx.DeleteBackend(b.ID); err != nil {
				return err
			}
		}
		return tx.DeletePool(name)
	})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) respondPool(w http.ResponseWriter, r *http.Request, status int, p storage.Pool) {
	view, err := s.loadPoolView(r.Context())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	resp, err := view.pool(r.Context(), p)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	w.Header().Set("ETag", etag(p.Version))
	if status == http.StatusCreated {
		w.Header().Set("Location", "/api/pools/"+url.PathEscape(p.Name))
	}
	writeJSON(w, status, resp)
}

// poolView computes pool statistics: from the live routing table when the
// pool is in it, else from this node's stored observations.
type poolView struct {
	s    *Server
	live map[string]pools.PoolStats
	obs  map[string]storage.Observation // this node's, by backend id
}

func (s *Server) loadPoolView(ctx context.Context) (*poolView, error) {
	v := &poolView{s: s, live: map[string]pools.PoolStats{}}
	if s.deps.Pools != nil {
		for _, st := range s.deps.Pools.Stats() {
			v.live[st.Name] = st
		}
	}
	obs, err := s.store.Observations(ctx, s.store.NodeID())
	if err != nil {
		return nil, err
	}
	v.obs = make(map[string]storage.Observation, len(obs))
	for _, o := range obs {
		v.obs[o.BackendID] = o
	}
	return v, nil
}

func (v *poolView) pool(ctx context.Context, p storage.Pool) (poolResponse, error) {
	resp := poolResponse{
		poolInput:  poolInputFrom(p),
		InsertedAt: p.InsertedAt,
		UpdatedAt:  p.UpdatedAt,
		Version:    p.Version,
	}
	if resp.Hosts == nil {
		resp.Hosts = []string{}
	}
	if st, ok := v.live[p.Name]; ok {
		resp.Stats = poolStatsJSON{
			TotalBackends:      st.TotalBackends,
			HealthyBackends:    st.HealthyBackends,
			UnhealthyBackends:  st.UnhealthyBackends,
			DrainingBackends:   st.DrainingBackends,
			CurrentConnections: st.CurrentConnections,
			TotalRequests:      st.TotalRequests,
			TotalFailures:      st.TotalFailures,
			Source:             "live",
		}
		return resp, nil
	}
	resp.Stats.Source = "stored"
	backends, err := v.s.store.ListBackendsByPool(ctx, p.Name, "", 0)
	if err != nil {
		return resp, err
	}
	resp.Stats.TotalBackends = len(backends)
	for _, b := range backends {
		o, ok := v.obs[b.ID]
		switch {
		case b.Draining:
			resp.Stats.DrainingBackends++
		case !ok:
		case o.Healthy:
			resp.Stats.HealthyBackends++
		default:
			resp.Stats.UnhealthyBackends++
		}
		if ok {
			resp.Stats.CurrentConnections += o.CurrentConnections
			resp.Stats.TotalRequests += o.TotalRequests
			resp.Stats.TotalFailures += o.TotalFailures
		}
	}
	return resp, nil
}

// notFoundAs turns storage.ErrNotFound into a 404 naming field; other
// errors pass through.
func notFoundAs(err error, field, message string) error {
	if errors.Is(err, storage.ErrNotFound) {
		return errNotFound(field, message)
	}
	return err
}
