package admin

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base32"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"reflect"
	"sort"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/singularity-ng/singularity-edge/apitypes"

	"github.com/singularity-ng/singularity-edge/internal/fielderr"
	"github.com/singularity-ng/singularity-edge/pools"
	"github.com/singularity-ng/singularity-edge/storage"
)

// backendSpecOnto applies the fields spec sent onto b: an empty backend
// of pool for a create, the stored backend for an update. The address is
// url or host/port/scheme, not both. Left out on create, scheme defaults
// to what the pool speaks to its backends (pools.DefaultScheme) and port
// to the scheme's.
func backendSpecOnto(b *storage.Backend, spec apitypes.BackendSpec, pool storage.Pool, create bool) fielderr.List {
	var errs fielderr.List
	if spec.URL.Set && (spec.Host.Set || spec.Port.Set || spec.Scheme.Set) {
		errs.Add("url", "give either url or host/port/scheme, not both")
		return errs
	}
	apply(&errs, "id", spec.ID, &b.ID)
	portSet, schemeSet := spec.Port.Present(), spec.Scheme.Present()
	switch {
	case spec.URL.Null:
		errs.Add("url", nullMessage)
	case spec.URL.Set:
		u, err := pools.SplitBackendURL(spec.URL.Value)
		if err != nil {
			fields, _ := fielderr.From(err)
			return append(errs, fields...)
		}
		b.Host, portSet, schemeSet = u.Host, u.Port != 0, u.Scheme != ""
		b.Scheme = u.Scheme
		if !schemeSet {
			b.Scheme = pools.DefaultScheme(pool.SSLMode)
		}
		b.Port = u.Port
		if !portSet {
			b.Port = pools.DefaultPort(b.Scheme)
		}
	default:
		apply(&errs, "host", spec.Host, &b.Host)
		apply(&errs, "port", spec.Port, &b.Port)
		apply(&errs, "scheme", spec.Scheme, &b.Scheme)
		if create && !spec.Scheme.Set {
			b.Scheme = pools.DefaultScheme(pool.SSLMode)
		}
		if create && !spec.Port.Set {
			b.Port = pools.DefaultPort(strings.ToLower(strings.TrimSpace(b.Scheme)))
		}
	}
	apply(&errs, "weight", spec.Weight, &b.Weight)
	apply(&errs, "ssl_verify", spec.SSLVerify, &b.SSLVerify)
	apply(&errs, "region", spec.Region, &b.Region)
	apply(&errs, "draining", spec.Draining, &b.Draining)
	applyMetadata(&errs, spec.Metadata, &b.Metadata, !create)
	return errs
}

// buildBackend turns a request onto base into a validated backend of pool.
func buildBackend(base storage.Backend, spec apitypes.BackendSpec, pool storage.Pool, create bool) (storage.Backend, error) {
	b := base
	errs := backendSpecOnto(&b, spec, pool, create)
	if len(errs) == 0 {
		if err := pools.ValidateBackend(&b); err != nil {
			fields, _ := fielderr.From(err)
			errs = append(errs, fields...)
		}
	}
	if len(errs) == 0 {
		if _, msg := pools.BackendMismatch(&pool, &b); msg != "" {
			field := "scheme"
			if spec.URL.Set {
				field = "url"
			}
			errs.Add(field, msg)
		}
	}
	if len(errs) > 0 {
		return b, errUnprocessable(errs)
	}
	return b, nil
}

// newBackendID returns a random id: "b-" and 16 base32 characters (80 bits).
func newBackendID() string {
	var raw [10]byte
	_, _ = rand.Read(raw[:]) // crypto/rand.Read never fails on supported platforms
	return "b-" + strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(raw[:]))
}

// checkBackendAddress runs inside the transaction: no other backend of the
// pool has b's address. It is one lookup in a guarded index partition, so
// it costs the same however many backends the pool has, and two requests
// adding the same address cannot both commit.
func checkBackendAddress(tx *storage.Tx, b *storage.Backend, addrField string) error {
	same, err := tx.BackendsByAddress(b.PoolName, backendURL(*b))
	if err != nil {
		return err
	}
	for _, o := range same {
		if o.ID != b.ID {
			return errConflict(addrField, fmt.Sprintf("pool %q already has backend %q at %s", b.PoolName, o.ID, backendURL(o)))
		}
	}
	return nil
}

func backendURL(b storage.Backend) string {
	return storage.BackendAddress(b.Scheme, b.Host, b.Port)
}

func (s *Server) handleListBackends(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	pg, err := parsePage(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	after, err := backendPosition(pg.After)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var resp apitypes.List[apitypes.Backend]
	err = s.store.View(r.Context(), func(tx *storage.Tx) error {
		if _, err := tx.Pool(name); err != nil {
			return notFoundAs(err, "pool_name", fmt.Sprintf("no pool named %q", name))
		}
		rows, err := tx.BackendsByPoolPage(name, after, pg.Limit+1)
		if err != nil {
			return err
		}
		resp, err = pageOf(rows, pg.Limit, backendCursor,
			func(b storage.Backend) (apitypes.Backend, error) { return s.backendResponse(tx, b) })
		return err
	})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, resp)
}

// backendCursor is the "next" of a page of a pool's backends, which the
// store lists by address, then id: the last backend's address and id
// with a space between (storage.BackendPosition has a NUL there, which a
// URL carries badly; no address holds a space).
func backendCursor(b storage.Backend) string {
	return storage.BackendAddress(b.Scheme, b.Host, b.Port) + " " + b.ID
}

// backendPosition is the store's position for after, a cursor
// backendCursor gave ("" from the start).
func backendPosition(after string) (string, error) {
	if after == "" {
		return "", nil
	}
	addr, id, ok := strings.Cut(after, " ")
	if !ok || addr == "" || id == "" {
		msg := `must be the "next" of the previous page: a backend's address and id, with a space between`
		return "", errInvalid("after "+msg, fielderr.FieldError{Field: "after", Message: msg})
	}
	return addr + "\x00" + id, nil
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

// handleCreateBackend takes one backend (a JSON object) or many (a JSON
// array of at most apitypes.MaxBulkBackends). An array is atomic: every
// item is validated and checked in one transaction, and one refused item
// refuses them all, its index leading the field names ("[3].host").
func (s *Server) handleCreateBackend(w http.ResponseWriter, r *http.Request) {
	pool := r.PathValue("name")
	wait, err := s.parseWaitAll(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	body, err := readJSONBody(w, r, s.cfg.MaxBodyBytes)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	bulk := len(bytes.TrimSpace(body)) > 0 && bytes.TrimSpace(body)[0] == '['
	var specs []apitypes.BackendSpec
	if bulk {
		if specs, err = decodeStrictItems[apitypes.BackendSpec](body); err != nil {
			s.writeError(w, r, err)
			return
		}
		switch {
		case len(specs) == 0:
			s.writeError(w, r, errInvalid("the array is empty; send at least one backend"))
			return
		case len(specs) > apitypes.MaxBulkBackends:
			s.writeError(w, r, errInvalid(fmt.Sprintf("at most %d backends per request, got %d", apitypes.MaxBulkBackends, len(specs))))
			return
		}
	} else {
		var one apitypes.BackendSpec
		if err := decodeStrict(body, &one); err != nil {
			s.writeError(w, r, err)
			return
		}
		specs = []apitypes.BackendSpec{one}
	}
	created := make([]storage.Backend, len(specs))
	var ae storage.AuditEntry
	commit, err := s.store.Update(r.Context(), func(tx *storage.Tx) error {
		p, err := tx.Pool(pool)
		if err != nil {
			return notFoundAs(err, "pool_name", fmt.Sprintf("no pool named %q", pool))
		}
		for i, spec := range specs {
			b, err := s.createOne(tx, p, spec)
			if err != nil {
				if bulk {
					return prefixFields(err, fmt.Sprintf("[%d].", i))
				}
				return err
			}
			created[i] = b
		}
		if bulk {
			ae, err = s.recordAudit(tx, r, "create", "backends", pool, nil, bulkAuditView(created))
		} else {
			ae, err = s.recordAudit(tx, r, "create", "backend", created[0].ID, nil, backendConfigView(created[0]))
		}
		return err
	})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	for i := range created {
		created[i].Version = rowVersion(created[i].Version, commit)
	}
	what := fmt.Sprintf("backend %q", created[0].ID)
	if bulk {
		what = fmt.Sprintf("the %d backends of pool %q", len(created), pool)
		s.logAudit(ae, zap.Int("count", len(created)),
			zap.String("first", created[0].ID), zap.String("last", created[len(created)-1].ID))
	} else {
		s.logAudit(ae)
	}
	if err := s.waitAll(w, r, wait, what, commit); err != nil {
		s.writeError(w, r, err)
		return
	}
	if bulk {
		resp := apitypes.BulkBackends{Items: make([]apitypes.Backend, 0, len(created))}
		err := s.store.View(r.Context(), func(tx *storage.Tx) error {
			for i, b := range created {
				if !specs[i].ID.Set { // see the single create below
					resp.Items = append(resp.Items, s.backendView(b, nil))
					continue
				}
				v, err := s.backendResponse(tx, b)
				if err != nil {
					return err
				}
				resp.Items = append(resp.Items, v)
			}
			return nil
		})
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		writeJSON(w, http.StatusCreated, resp)
		return
	}
	if !specs[0].ID.Set {
		// A generated id is new to every node: nothing can have
		// observed the backend yet, so there are no observations to
		// read.
		s.writeBackend(w, http.StatusCreated, created[0], s.backendView(created[0], nil))
		return
	}
	s.respondBackend(w, r, http.StatusCreated, created[0])
}

// createOne validates and puts one new backend of pool p inside tx.
func (s *Server) createOne(tx *storage.Tx, p storage.Pool, spec apitypes.BackendSpec) (storage.Backend, error) {
	chosenID := spec.ID.Present() && strings.TrimSpace(spec.ID.Value) != ""
	base := storage.Backend{PoolName: p.Name, Weight: pools.DefaultWeight}
	if !chosenID && !spec.ID.Set {
		base.ID = newBackendID()
	}
	b, err := buildBackend(base, spec, p, true)
	if err != nil {
		return b, err
	}
	if b.ID == "" {
		return b, errUnprocessable(fielderr.List{{Field: "id", Message: "must not be empty; leave it out for a generated id"}})
	}
	if _, err := tx.Backend(b.ID); err == nil {
		if chosenID {
			return b, errConflict("id", fmt.Sprintf("a backend with id %q already exists", b.ID))
		}
		// 80 random bits collided: vanishingly unlikely, but an
		// overwrite would be silent, so refuse.
		return b, errConflict("id", "generated id collided with an existing backend; retry")
	} else if !errors.Is(err, storage.ErrNotFound) {
		return b, err
	}
	addrField := "host"
	if spec.URL.Set {
		addrField = "url"
	}
	if err := checkBackendAddress(tx, &b, addrField); err != nil {
		return b, err
	}
	stored := b
	if err := tx.PutBackend(&stored); err != nil {
		return b, err
	}
	return stored, nil
}

// prefixFields puts prefix before every field name of an API error (the
// item index of a bulk request).
func prefixFields(err error, prefix string) error {
	ae := toAPIError(err)
	cp := *ae
	cp.Fields = make(fielderr.List, len(ae.Fields))
	for i, f := range ae.Fields {
		cp.Fields[i] = fielderr.FieldError{Field: prefix + f.Field, Message: f.Message}
	}
	cp.Message = prefix + " " + ae.Message
	if len(cp.Fields) == 1 {
		cp.Message = cp.Fields[0].Field + ": " + cp.Fields[0].Message
	}
	return &cp
}

func (s *Server) handlePatchBackend(w http.ResponseWriter, r *http.Request) {
	pool, id := r.PathValue("name"), r.PathValue("id")
	wait, err := s.parseWaitAll(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var spec apitypes.BackendSpec
	if err := readStrict(w, r, s.cfg.MaxBodyBytes, &spec); err != nil {
		s.writeError(w, r, err)
		return
	}
	if spec.ID.Set && spec.ID.Value != id {
		s.writeError(w, r, errUnprocessable(fielderr.List{{Field: "id", Message: "cannot be changed"}}))
		return
	}
	match, err := parseIfMatch(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	addrField := "host"
	if spec.URL.Set {
		addrField = "url"
	}
	var stored, before storage.Backend
	var ae storage.AuditEntry
	changed := false
	commit, err := s.store.Update(r.Context(), func(tx *storage.Tx) error {
		cur, err := txBackendOfPool(tx, pool, id)
		if err != nil {
			return err
		}
		if err := match.check(cur.Version); err != nil {
			return err
		}
		p, err := tx.Pool(pool)
		if err != nil {
			return notFoundAs(err, "pool_name", fmt.Sprintf("no pool named %q", pool))
		}
		next, err := buildBackend(cur, spec, p, false)
		if err != nil {
			return err
		}
		if err := checkBackendAddress(tx, &next, addrField); err != nil {
			return err
		}
		before, stored, changed = cur, next, !sameBackend(cur, next)
		if !changed {
			// Nothing to write: no new version to replicate, no audit
			// row; the answer is the stored backend and its ETag.
			return nil
		}
		if err := tx.PutBackend(&stored); err != nil {
			return err
		}
		ae, err = s.recordAudit(tx, r, "update", "backend", id, backendConfigView(before), backendConfigView(stored))
		return err
	})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if !changed {
		if err := s.waitAllUnchanged(w, r, wait, fmt.Sprintf("backend %q, unchanged,", id), before.Version); err != nil {
			s.writeError(w, r, err)
			return
		}
		s.respondBackend(w, r, http.StatusOK, before)
		return
	}
	stored.Version = rowVersion(stored.Version, commit)
	s.logAudit(ae, zap.String("pool", pool))
	if err := s.waitAll(w, r, wait, fmt.Sprintf("the change of backend %q", id), commit); err != nil {
		s.writeError(w, r, err)
		return
	}
	s.respondBackend(w, r, http.StatusOK, stored)
}

// sameBackend reports whether a and b hold the same configuration: every
// field but the ones the store sets when it writes (times, version), as
// samePool does for pools.
func sameBackend(a, b storage.Backend) bool {
	if !maps.Equal(a.Metadata, b.Metadata) {
		return false
	}
	for _, p := range []*storage.Backend{&a, &b} {
		p.Metadata = nil
		p.InsertedAt, p.UpdatedAt, p.Version = time.Time{}, time.Time{}, storage.Version{}
	}
	return reflect.DeepEqual(a, b)
}

func (s *Server) handleDeleteBackend(w http.ResponseWriter, r *http.Request) {
	pool, id := r.PathValue("name"), r.PathValue("id")
	wait, err := s.parseWaitAll(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	match, err := parseIfMatch(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var before storage.Backend
	var ae storage.AuditEntry
	commit, err := s.store.Update(r.Context(), func(tx *storage.Tx) error {
		cur, err := txBackendOfPool(tx, pool, id)
		if err != nil {
			return err
		}
		if err := match.check(cur.Version); err != nil {
			return err
		}
		before = cur
		if err := tx.DeleteBackend(id); err != nil {
			return err
		}
		ae, err = s.recordAudit(tx, r, "delete", "backend", id, backendConfigView(before), nil)
		return err
	})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.logAudit(ae, zap.String("pool", pool))
	if err := s.waitAll(w, r, wait, fmt.Sprintf("the deletion of backend %q", id), commit); err != nil {
		s.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) respondBackend(w http.ResponseWriter, r *http.Request, status int, b storage.Backend) {
	var resp apitypes.Backend
	err := s.store.View(r.Context(), func(tx *storage.Tx) (err error) {
		resp, err = s.backendResponse(tx, b)
		return err
	})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeBackend(w, status, b, resp)
}

// writeBackend writes resp, the view of b.
func (s *Server) writeBackend(w http.ResponseWriter, status int, b storage.Backend, resp apitypes.Backend) {
	w.Header().Set("ETag", etag(b.Version))
	if status == http.StatusCreated {
		w.Header().Set("Location", "/api/pools/"+url.PathEscape(b.PoolName)+"/backends/"+url.PathEscape(b.ID))
	}
	writeJSON(w, status, resp)
}

// backendConfigView is the configuration part of a backend's view, for
// audit lines.
func backendConfigView(b storage.Backend) apitypes.Backend {
	return apitypes.Backend{
		ID: b.ID, PoolName: b.PoolName, Host: b.Host, Port: b.Port, Scheme: b.Scheme,
		Weight: b.Weight, SSLVerify: b.SSLVerify, Region: b.Region, Draining: b.Draining, Metadata: b.Metadata,
	}
}

// backendResponse shows backend b: its configuration, this node's live
// view from the routing table (looked up by id) and every node's stored
// observation of it (one index partition of b's own). Its cost does not
// depend on how many backends exist.
func (s *Server) backendResponse(tx *storage.Tx, b storage.Backend) (apitypes.Backend, error) {
	obs, err := tx.ObservationsOf(b.ID)
	if err != nil {
		return apitypes.Backend{}, err
	}
	return s.backendView(b, obs), nil
}

// backendView shows backend b with the observations obs of it.
func (s *Server) backendView(b storage.Backend, obs []storage.Observation) apitypes.Backend {
	resp := backendConfigView(b)
	resp.URL = backendURL(b)
	resp.InsertedAt, resp.UpdatedAt, resp.Version = b.InsertedAt, b.UpdatedAt, versionView(b.Version)
	resp.LocalSource = "none"
	resp.Observations = []apitypes.Observation{}
	sort.Slice(obs, func(i, j int) bool {
		if obs[i].Region != obs[j].Region {
			return obs[i].Region < obs[j].Region
		}
		return obs[i].NodeID < obs[j].NodeID
	})
	node := s.store.NodeID()
	for _, o := range obs {
		resp.Observations = append(resp.Observations, apitypes.Observation{
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
		if o.NodeID == node && resp.LocalSource == "none" {
			healthy := o.Healthy
			available := o.Healthy && !b.Draining
			resp.Healthy, resp.Available = &healthy, &available
			resp.CurrentConnections = o.CurrentConnections
			resp.TotalRequests = o.TotalRequests
			resp.TotalFailures = o.TotalFailures
			resp.LatencyAvgMS = float64(o.LatencyAvg) / float64(time.Millisecond)
			resp.LastCheck = timePtr(o.LastCheck)
			resp.LastError = o.LastError
			resp.LocalSource = "stored"
		}
	}
	if lp := s.livePool(b.PoolName); lp != nil {
		if lb := lp.Backend(b.ID); lb != nil {
			st := lb.State()
			healthy, available := st.Healthy, st.Available
			resp.Healthy, resp.Available = &healthy, &available
			resp.Ejected = st.Ejected
			resp.EjectedUntil = timePtr(st.EjectedUntil)
			resp.CurrentConnections = st.CurrentConnections
			resp.TotalRequests = st.TotalRequests
			resp.TotalFailures = st.TotalFailures
			resp.Status5xx, resp.Retries = st.Status5xx, st.Retries
			resp.DownSince = timePtr(st.DownSince)
			resp.Ejections = st.Ejections
			resp.ChecksPassed = st.ChecksPassed
			resp.ChecksFailed = st.ChecksFailed
			resp.LatencyAvgMS = float64(st.LatencyAvg) / float64(time.Millisecond)
			resp.LastCheck = timePtr(st.LastCheck)
			resp.LastError = st.LastError
			resp.LocalSource = "live"
		}
	}
	resp.Regions = regionHealth(resp, node, s.cfg.Node.Region)
	return resp
}

// regionHealth sums up the observations of b by the observer's region.
// This node's live view, when it has one, stands in for its stored
// observation, which may be up to a flush interval old.
func regionHealth(b apitypes.Backend, self, selfRegion string) []apitypes.RegionHealth {
	type tally struct{ nodes, healthy int }
	by := map[string]*tally{}
	add := func(region string, healthy bool) {
		t := by[region]
		if t == nil {
			t = &tally{}
			by[region] = t
		}
		t.nodes++
		if healthy {
			t.healthy++
		}
	}
	live := b.LocalSource == "live" && b.Healthy != nil
	for _, o := range b.Observations {
		if o.NodeID == self && live {
			continue
		}
		add(o.Region, o.Healthy)
	}
	if live {
		add(selfRegion, *b.Healthy)
	}
	out := make([]apitypes.RegionHealth, 0, len(by))
	for region, t := range by {
		state := "mixed"
		switch t.healthy {
		case t.nodes:
			state = "healthy"
		case 0:
			state = "unhealthy"
		}
		out = append(out, apitypes.RegionHealth{Region: region, State: state, Nodes: t.nodes, Healthy: t.healthy})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Region < out[j].Region })
	return out
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}
