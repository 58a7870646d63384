package admin

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/singularity-ng/singularity-edge/internal/fielderr"
	"github.com/singularity-ng/singularity-edge/pools"
	"github.com/singularity-ng/singularity-edge/storage"
)

// backendInput is the writable part of a backend. The address is either
// url ("http://10.0.1.10:8080") or host, port and scheme; giving url with
// any of the three is rejected as ambiguous. id is optional on create (a
// random id is generated) and cannot change.
type backendInput struct {
	ID        string            `json:"id"`
	URL       string            `json:"url"`
	Host      string            `json:"host"`
	Port      int               `json:"port"`
	Scheme    string            `json:"scheme"`
	Weight    int               `json:"weight"`
	SSLVerify bool              `json:"ssl_verify"`
	Region    string            `json:"region"`
	Draining  bool              `json:"draining"`
	Metadata  map[string]string `json:"metadata"`
}

// backendResponse is a backend's configuration, this node's view of it
// (the seed's healthy/current_connections/total_requests/last_check) and
// every node's stored observation beside it.
type backendResponse struct {
	ID         string            `json:"id"`
	PoolName   string            `json:"pool_name"`
	URL        string            `json:"url"`
	Host       string            `json:"host"`
	Port       int               `json:"port"`
	Scheme     string            `json:"scheme"`
	Weight     int               `json:"weight"`
	SSLVerify  bool              `json:"ssl_verify"`
	Region     string            `json:"region"`
	Draining   bool              `json:"draining"`
	Metadata   map[string]string `json:"metadata"`
	InsertedAt time.Time         `json:"inserted_at"`
	UpdatedAt  time.Time         `json:"updated_at"`
	Version    storage.Version   `json:"version"`

	// Local view. Healthy is null while this node has not checked the
	// backend yet.
	Healthy            *bool      `json:"healthy"`
	Available          *bool      `json:"available"` // healthy, not ejected, not draining
	Ejected            bool       `json:"ejected"`   // passive checks hold it out
	CurrentConnections int64      `json:"current_connections"`
	TotalRequests      int64      `json:"total_requests"`
	TotalFailures      int64      `json:"total_failures"`
	LastCheck          *time.Time `json:"last_check"`
	LastError          string     `json:"last_error,omitempty"`
	// LocalSource is "live" (the running routing table), "stored" (this
	// node's persisted observation) or "none" (not observed yet).
	LocalSource string `json:"local_source"`

	Observations []observationJSON `json:"observations"`
}

// observationJSON is one node's view of the backend, as replicated.
type observationJSON struct {
	NodeID             string     `json:"node_id"`
	Region             string     `json:"region"`
	Healthy            bool       `json:"healthy"`
	CurrentConnections int64      `json:"current_connections"`
	TotalRequests      int64      `json:"total_requests"`
	TotalFailures      int64      `json:"total_failures"`
	LatencyAvgMS       float64    `json:"latency_avg_ms"`
	LastCheck          *time.Time `json:"last_check"`
	LastError          string     `json:"last_error,omitempty"`
	UpdatedAt          time.Time  `json:"updated_at"`
}

func backendInputFrom(b storage.Backend) backendInput {
	return backendInput{
		ID:        b.ID,
		Host:      b.Host,
		Port:      b.Port,
		Scheme:    b.Scheme,
		Weight:    b.Weight,
		SSLVerify: b.SSLVerify,
		Region:    b.Region,
		Draining:  b.Draining,
		Metadata:  b.Metadata,
	}
}

// toBackend resolves url into host/port/scheme and validates with the
// pools package. explicitAddr says whether the request named host, port or
// scheme itself (for PATCH: in the body, not inherited from the record).
func (in backendInput) toBackend(pool string, explicitAddr bool) (storage.Backend, error) {
	b := storage.Backend{
		ID:        in.ID,
		PoolName:  pool,
		Host:      in.Host,
		Port:      in.Port,
		Scheme:    in.Scheme,
		Weight:    in.Weight,
		SSLVerify: in.SSLVerify,
		Region:    in.Region,
		Draining:  in.Draining,
		Metadata:  in.Metadata,
	}
	if in.URL != "" {
		if explicitAddr {
			return b, fielderr.New("url", "give either url or host/port/scheme, not both")
		}
		host, port, scheme, err := pools.ParseBackendURL(in.URL)
		if err != nil {
			if _, ok := fielderr.From(err); ok {
				return b, err
			}
			return b, fielderr.New("url", err.Error())
		}
		b.Host, b.Port, b.Scheme = host, port, scheme
	}
	if err := pools.NormalizeBackend(&b); err != nil {
		return b, err
	}
	return b, nil
}

// newBackendID returns a random id: "b-" and 16 base32 characters (80 bits).
func newBackendID() string {
	var raw [10]byte
	_, _ = rand.Read(raw[:]) // crypto/rand.Read never fails on supported platforms
	return "b-" + strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(raw[:]))
}

// checkBackendWrite runs, inside the transaction, the checks that depend on
// other rows: the pool exists, and no other backend of the pool has the
// same address.
func checkBackendWrite(tx *storage.Tx, b *storage.Backend, addrField string) error {
	if _, err := tx.Pool(b.PoolName); err != nil {
		return notFoundAs(err, "pool_name", fmt.Sprintf("no pool named %q", b.PoolName))
	}
	siblings, err := tx.BackendsByPool(b.PoolName)
	if err != nil {
		return err
	}
	for _, o := range siblings {
		if o.ID != b.ID && o.Host == b.Host && o.Port == b.Port && o.Scheme == b.Scheme {
			return errConflict(addrField, fmt.Sprintf("pool %q already has backend %q at %s", b.PoolName, o.ID, backendURL(o)))
		}
	}
	return nil
}

func backendURL(b storage.Backend) string {
	return b.Scheme + "://" + net.JoinHostPort(b.Host, strconv.Itoa(b.Port))
}

func (s *Server) handleListBackends(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	pg, err := parsePage(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if _, err := s.store.GetPool(r.Context(), name); err != nil {
		s.writeError(w, r, notFoundAs(err, "pool_name", fmt.Sprintf("no pool named %q", name)))
		return
	}
	rows, err := s.store.ListBackendsByPool(r.Context(), name, pg.After, pg.Limit+1)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	view, err := s.loadBackendView(r.Context(), name)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	resp, err := pageOf(rows, pg.Limit, func(b storage.Backend) string { return b.ID },
		func(b storage.Backend) (backendResponse, error) { return view.backend(b), nil })
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, resp)
}

func (s *Server) handleGetBackend(w http.ResponseWriter, r *http.Request) {
	b, err := s.backendOfPool(r.Context(), r.PathValue("name"), r.PathValue("id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.respondBackend(w, r, http.StatusOK, b)
}

// backendOfPool reads a backend and answers 404 unless it belongs to pool.
func (s *Server) backendOfPool(ctx context.Context, pool, id string) (storage.Backend, error) {
	b, err := s.store.GetBackend(ctx, id)
	return inPool(b, err, pool, id)
}

// txBackendOfPool is backendOfPool inside a write's transaction.
func txBackendOfPool(tx *storage.Tx, pool, id string) (storage.Backend, error) {
	b, err := tx.Backend(id)
	return inPool(b, err, pool, id)
}

// inPool turns the read of backend id into a 404 when it is absent or
// belongs to another pool than pool: backend routes are nested in a pool.
func inPool(b storage.Backend, err error, pool, id string) (storage.Backend, error) {
	if err != nil {
		return b, notFoundAs(err, "id", fmt.Sprintf("no backend %q in pool %q", id, pool))
	}
	if b.PoolName != pool {
		return b, errNotFound("id", fmt.Sprintf("no backend %q in pool %q", id, pool))
	}
	return b, nil
}

func (s *Server) handleCreateBackend(w http.ResponseWriter, r *http.Request) {
	pool := r.PathValue("name")
	var in backendInput
	if err := readStrict(w, r, s.cfg.MaxBodyBytes, &in); err != nil {
		s.writeError(w, r, err)
		return
	}
	explicit := in.Host != "" || in.Port != 0 || in.Scheme != ""
	chosenID := strings.TrimSpace(in.ID) != ""
	if !chosenID {
		in.ID = newBackendID()
	}
	b, err := in.toBackend(pool, explicit)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	addrField := "host"
	if in.URL != "" {
		addrField = "url"
	}
	var stored storage.Backend
	commit, err := s.store.Update(r.Context(), func(tx *storage.Tx) error {
		if _, err := tx.Backend(b.ID); err == nil {
			if chosenID {
				return errConflict("id", fmt.Sprintf("a backend with id %q already exists", b.ID))
			}
			// 80 random bits collided: vanishingly unlikely, but an
			// overwrite would be silent, so refuse.
			return errConflict("id", "generated id collided with an existing backend; retry")
		} else if !errors.Is(err, storage.ErrNotFound) {
			return err
		}
		if err := checkBackendWrite(tx, &b, addrField); err != nil {
			return err
		}
		stored = b
		return tx.PutBackend(&stored)
	})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	stored.Version = rowVersion(stored.Version, commit)
	s.respondBackend(w, r, http.StatusCreated, stored)
}

func (s *Server) handlePatchBackend(w http.ResponseWriter, r *http.Request) {
	pool, id := r.PathValue("name"), r.PathValue("id")
	var probe backendInput
	body, keys, err := readPatch(w, r, s.cfg.MaxBodyBytes, &probe)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if _, ok := keys["id"]; ok && strings.TrimSpace(probe.ID) != id {
		s.writeError(w, r, errUnprocessable(fielderr.List{{Field: "id", Message: "cannot be changed"}}))
		return
	}
	_, hasHost := keys["host"]
	_, hasPort := keys["port"]
	_, hasScheme := keys["scheme"]
	explicit := hasHost || hasPort || hasScheme
	addrField := "host"
	if _, ok := keys["url"]; ok {
		addrField = "url"
		if probe.URL == "" {
			s.writeError(w, r, errUnprocessable(fielderr.List{{Field: "url", Message: "must not be empty"}}))
			return
		}
	}
	match, err := parseIfMatch(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var stored storage.Backend
	commit, err := s.store.Update(r.Context(), func(tx *storage.Tx) error {
		cur, err := txBackendOfPool(tx, pool, id)
		if err != nil {
			return err
		}
		if err := match.check(cur.Version); err != nil {
			return err
		}
		in := backendInputFrom(cur)
		if _, ok := keys["metadata"]; ok {
			in.Metadata = nil
		}
		if err := decodeStrict(body, &in); err != nil {
			return err
		}
		next, err := in.toBackend(pool, explicit)
		if err != nil {
			return err
		}
		if err := checkBackendWrite(tx, &next, addrField); err != nil {
			return err
		}
		next.InsertedAt = cur.InsertedAt
		stored = next
		return tx.PutBackend(&stored)
	})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	stored.Version = rowVersion(stored.Version, commit)
	s.respondBackend(w, r, http.StatusOK, stored)
}

func (s *Server) handleDeleteBackend(w http.ResponseWriter, r *http.Request) {
	pool, id := r.PathValue("name"), r.PathValue("id")
	match, err := parseIfMatch(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	_, err = s.store.Update(r.Context(), func(tx *storage.Tx) error {
		cur, err := txBackendOfPool(tx, pool, id)
		if err != nil {
			return err
		}
		if err := match.check(cur.Version); err != nil {
			return err
		}
		return tx.DeleteBackend(id)
	})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) respondBackend(w http.ResponseWriter, r *http.Request, status int, b storage.Backend) {
	view, err := s.loadBackendView(r.Context(), b.PoolName)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	w.Header().Set("ETag", etag(b.Version))
	if status == http.StatusCreated {
		w.Header().Set("Location", "/api/pools/"+url.PathEscape(b.PoolName)+"/backends/"+url.PathEscape(b.ID))
	}
	writeJSON(w, status, view.backend(b))
}

// backendView holds what the responses of one pool's backends are built
// from: the live states of the routing table and the stored observations.
type backendView struct {
	nodeID string
	live   map[string]pools.BackendState
	obs    map[string][]storage.Observation // by backend id
}

func (s *Server) loadBackendView(ctx context.Context, pool string) (*backendView, error) {
	v := &backendView{nodeID: s.store.NodeID(), live: map[string]pools.BackendState{}, obs: map[string][]storage.Observation{}}
	if s.deps.Pools != nil {
		for _, st := range s.deps.Pools.BackendStates(pool) {
			v.live[st.ID] = st
		}
	}
	all, err := s.store.Observations(ctx, "")
	if err != nil {
		return nil, err
	}
	for _, o := range all {
		if o.PoolName == pool {
			v.obs[o.BackendID] = append(v.obs[o.BackendID], o)
		}
	}
	return v, nil
}

func (v *backendView) backend(b storage.Backend) backendResponse {
	resp := backendResponse{
		ID:           b.ID,
		PoolName:     b.PoolName,
		URL:          backendURL(b),
		Host:         b.Host,
		Port:         b.Port,
		Scheme:       b.Scheme,
		Weight:       b.Weight,
		SSLVerify:    b.SSLVerify,
		Region:       b.Region,
		Draining:     b.Draining,
		Metadata:     b.Metadata,
		InsertedAt:   b.InsertedAt,
		UpdatedAt:    b.UpdatedAt,
		Version:      b.Version,
		LocalSource:  "none",
		Observations: []observationJSON{},
	}
	obs := v.obs[b.ID]
	sort.Slice(obs, func(i, j int) bool {
		if obs[i].Region != obs[j].Region {
			return obs[i].Region < obs[j].Region
		}
		return obs[i].NodeID < obs[j].NodeID
	})
	for _, o := range obs {
		resp.Observations = append(resp.Observations, observationJSON{
			NodeID:             o.NodeID,
			Region:             o.Region,
			Healthy:            o.Healthy,
			CurrentConnections: o.CurrentConnections,
			TotalRequests:      o.TotalRequests,
			TotalFailures:      o.TotalFailures,
			LatencyAvgMS:       float64(o.LatencyAvg) / float64(time.Millisecond),
			LastCheck:          timePtr(o.LastCheck),
			LastError:          o.LastError,
			UpdatedAt:          o.UpdatedAt,
		})
		if o.NodeID == v.nodeID && resp.LocalSource == "none" {
			healthy := o.Healthy
			available := o.Healthy && !b.Draining
			resp.Healthy, resp.Available = &healthy, &available
			resp.CurrentConnections = o.CurrentConnections
			resp.TotalRequests = o.TotalRequests
			resp.TotalFailures = o.TotalFailures
			resp.LastCheck = timePtr(o.LastCheck)
			resp.LastError = o.LastError
			resp.LocalSource = "stored"
		}
	}
	if st, ok := v.live[b.ID]; ok {
		healthy, available := st.Healthy, st.Available
		resp.Healthy, resp.Available = &healthy, &available
		resp.Ejected = st.Ejected
		resp.CurrentConnections = st.CurrentConnections
		resp.TotalRequests = st.TotalRequests
		resp.TotalFailures = st.TotalFailures
		resp.LastCheck = timePtr(st.LastCheck)
		resp.LastError = st.LastError
		resp.LocalSource = "live"
	}
	return resp
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}
