package admin

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/singularity-ng/singularity-edge/apitypes"

	"github.com/singularity-ng/singularity-edge/internal/fielderr"
	"github.com/singularity-ng/singularity-edge/pools"
	"github.com/singularity-ng/singularity-edge/storage"
)

// poolSpecOnto applies the fields spec sent onto p: the defaults
// (pools.DefaultPool) for a create, the stored pool for an update. A few
// defaults follow another field, and they are taken only when the request
// leaves them out: the path and expected status of a check follow its
// type, hash_on follows the algorithm, validate_backend_cert follows
// ssl_mode, and a create's check timeout follows its interval.
func poolSpecOnto(p *storage.Pool, spec apitypes.PoolSpec, create bool) fielderr.List {
	var errs fielderr.List
	prevMode := pools.CanonicalSSLMode(p.SSLMode)
	prevDomain := p.SSLDomain
	apply(&errs, "name", spec.Name, &p.Name)
	apply(&errs, "algorithm", spec.Algorithm, &p.Algorithm)
	apply(&errs, "ssl_mode", spec.SSLMode, &p.SSLMode)
	apply(&errs, "ssl_domain", spec.SSLDomain, &p.SSLDomain)
	apply(&errs, "ssl_cert_id", spec.SSLCertID, &p.SSLCertID)
	if spec.Hosts.Set {
		// null and [] both leave the pool without further hosts.
		p.Hosts = append([]string(nil), spec.Hosts.Value...)
	}
	apply(&errs, "validate_backend_cert", spec.ValidateBackendCert, &p.ValidateBackendCert)
	applyMillis(&errs, "health_check_interval", spec.HealthCheckInterval, &p.HealthCheckInterval)
	if spec.HealthCheck.Null {
		errs.Add("health_check", nullMessage)
	}
	hc := spec.HealthCheck.Value
	hcType := hc.Type.Set && !hc.Type.Null
	apply(&errs, "health_check.type", hc.Type, &p.HealthCheck.Type)
	apply(&errs, "health_check.path", hc.Path, &p.HealthCheck.Path)
	apply(&errs, "health_check.expected_status", hc.ExpectedStatus, &p.HealthCheck.ExpectedStatus)
	applyMillis(&errs, "health_check.timeout", hc.Timeout, &p.HealthCheck.Timeout)
	apply(&errs, "health_check.rise", hc.Rise, &p.HealthCheck.Rise)
	apply(&errs, "health_check.fall", hc.Fall, &p.HealthCheck.Fall)
	apply(&errs, "health_check.max_fails", hc.MaxFails, &p.HealthCheck.MaxFails)
	applyMillis(&errs, "health_check.cooldown", hc.Cooldown, &p.HealthCheck.Cooldown)
	apply(&errs, "hash_on", spec.HashOn, &p.HashOn)
	apply(&errs, "sticky_cookie", spec.StickyCookie, &p.StickyCookie)
	apply(&errs, "prefer_region", spec.PreferRegion, &p.PreferRegion)
	apply(&errs, "fail_open", spec.FailOpen, &p.FailOpen)
	apply(&errs, "allow_http", spec.AllowHTTP, &p.AllowHTTP)
	if o := spec.AutoCert; o.Set && o.Null {
		errs.Add("auto_cert", nullMessage)
	} else if o.Set {
		p.NoAutoCert = !o.Value
	}
	apply(&errs, "hold_new_backends", spec.HoldNewBackends, &p.HoldNewBackends)
	apply(&errs, "default", spec.Default, &p.Default)
	apply(&errs, "backend_ca", spec.BackendCA, &p.BackendCA)
	apply(&errs, "backend_server_name", spec.BackendServerName, &p.BackendServerName)
	apply(&errs, "backend_client_cert_id", spec.BackendClientCertID, &p.BackendClientCertID)
	apply(&errs, "on_demand_tls", spec.OnDemandTLS, &p.OnDemandTLS)
	if spec.OnDemandAllow.Set {
		// null and [] both leave the pool without an allow-list.
		p.OnDemandAllow = append([]string(nil), spec.OnDemandAllow.Value...)
		if len(p.OnDemandAllow) == 0 {
			p.OnDemandAllow = nil
		}
	}
	apply(&errs, "on_demand_ask", spec.OnDemandAsk, &p.OnDemandAsk)
	apply(&errs, "on_demand_rate", spec.OnDemandRate, &p.OnDemandRate)
	if o := spec.OnDemandRate; o.Set && !o.Null && o.Value == 0 && !p.OnDemandTLS {
		// 0 is what a pool holds when nobody chose a rate, and turning
		// on_demand_tls on later fills in the default: sent, it is refused
		// as weight 0 is, never stored to be replaced. (With on-demand TLS
		// on, pools.ValidatePool refuses it.)
		errs.Add("on_demand_rate", fmt.Sprintf("must be between 1 and %d orders per minute, got 0", pools.MaxOnDemandRate))
	}
	applyMetadata(&errs, spec.Metadata, &p.Metadata, !create)
	// A new ssl_domain asks for TLS for that name, and ssl_mode off (the
	// default of a create) would serve it as plain HTTP only. No mode is
	// chosen for the client (DESIGN.md recommends full_strict, which
	// refuses http:// backends): a request that sets ssl_domain on a pool
	// whose mode stays off without saying so names the mode it wants,
	// "off" included.
	if d := strings.TrimSpace(spec.SSLDomain.Value); spec.SSLDomain.Present() && !spec.SSLMode.Set && d != "" &&
		!strings.EqualFold(d, prevDomain) && pools.CanonicalSSLMode(p.SSLMode) == pools.SSLModeOff {
		errs.Add("ssl_mode", sslModeForDomainMessage)
	}

	// Defaults that follow another field, for fields left out.
	if hcType && !hc.Path.Set && !hc.ExpectedStatus.Set {
		switch strings.ToLower(strings.TrimSpace(p.HealthCheck.Type)) {
		case pools.HealthCheckHTTP, pools.HealthCheckHTTPS:
			if p.HealthCheck.Path == "" {
				p.HealthCheck.Path = "/"
			}
		default:
			p.HealthCheck.Path, p.HealthCheck.ExpectedStatus = "", 0
		}
	}
	if spec.Algorithm.Present() && !spec.HashOn.Set {
		if strings.EqualFold(strings.TrimSpace(p.Algorithm), pools.AlgorithmConsistentHash) {
			if p.HashOn == "" {
				p.HashOn = pools.HashOnClientIP
			}
		} else {
			p.HashOn = ""
		}
	}
	// In full_strict and full the mode alone decides verification, so the
	// flag left out is the mode's value (true, false). Leaving those modes
	// resets it: the true a full_strict pool holds was the mode's, not a
	// choice the operator made for off, flexible or passthrough (and rows
	// stored before this rule cannot tell the two apart). Between those
	// three modes it is the operator's and stays. Sent, it is validated as
	// sent: full_strict with false and full with true are refused.
	if !spec.ValidateBackendCert.Set {
		switch mode := pools.CanonicalSSLMode(p.SSLMode); {
		case pools.ModeSetsVerification(mode):
			p.ValidateBackendCert = mode == pools.SSLModeFullStrict
		case pools.ModeSetsVerification(prevMode):
			p.ValidateBackendCert = false
		}
	}
	if spec.OnDemandTLS.Present() && p.OnDemandTLS && !spec.OnDemandRate.Set && p.OnDemandRate == 0 {
		p.OnDemandRate = pools.DefaultOnDemandRate
	}
	if create && spec.HealthCheckInterval.Present() && !hc.Timeout.Set &&
		p.HealthCheckInterval >= pools.MinHealthCheckInterval && p.HealthCheckInterval <= pools.MaxHealthCheckInterval {
		// Derived from a valid interval only, so that an interval out of
		// range is the one error, not also a timeout nobody sent.
		p.HealthCheck.Timeout = pools.DefaultTimeoutFor(p.HealthCheckInterval)
	}
	return errs
}

// errTooManyLeftovers: a create found more leftover backends than its
// transaction holds (see handleCreatePool).
var errTooManyLeftovers = errors.New("more leftover backends than one transaction holds")

// poolTxBackends is how many backends a pool's create or delete removes in
// its own transaction: one transaction holds storage.MaxChangeSetRows
// rows, and the pool and its audit row are two of them.
const poolTxBackends = storage.MaxChangeSetRows - 2

// deleteOrphanBackends deletes backends that name pool while no pool of
// that name exists (those of a pool just deleted with cascade, or left
// from a pool deleted on one node while another added to it), in
// transactions of at most storage.MaxChangeSetRows rows, until at most
// keep are left. It stops when a pool of that name exists again: that
// pool's create removed what was left. Such backends are neither shown
// nor routed; this only keeps them from piling up.
func (s *Server) deleteOrphanBackends(ctx context.Context, pool string, keep int) (int, []storage.Commit, error) {
	deleted := 0
	var commits []storage.Commit
	for {
		n := 0
		more := false
		commit, err := s.store.Update(ctx, func(tx *storage.Tx) error {
			n, more = 0, false
			if _, err := tx.Pool(pool); err == nil {
				return nil
			} else if !errors.Is(err, storage.ErrNotFound) {
				return err
			}
			bs, err := tx.BackendsByPoolPage(pool, "", keep+storage.MaxChangeSetRows+1)
			if err != nil {
				return err
			}
			if len(bs) <= keep {
				return nil
			}
			bs = bs[:min(len(bs)-keep, storage.MaxChangeSetRows)]
			for _, b := range bs {
				if err := tx.DeleteBackend(b.ID); err != nil {
					return err
				}
			}
			n, more = len(bs), true
			return nil
		})
		if err != nil {
			return deleted, commits, err
		}
		if !more {
			return deleted, commits, nil
		}
		deleted += n
		commits = append(commits, commit)
	}
}

// backendPages is the read of a pool's backends that its create and
// delete make inside their transaction (*storage.Tx).
type backendPages interface {
	BackendsByPoolPage(pool, after string, limit int) ([]storage.Backend, error)
}

// firstBackends returns the first n backends of pool (by address, then
// id), and whether the pool has more: a pool's create or delete reads no
// more of a large pool than its own commit removes, one row beyond to know
// that the rest must follow.
func firstBackends(tx backendPages, pool string, n int) ([]storage.Backend, bool, error) {
	page, err := tx.BackendsByPoolPage(pool, "", n+1)
	if err != nil {
		return nil, false, err
	}
	if len(page) > n {
		return page[:n], true, nil
	}
	return page, false, nil
}

// sslModeForDomainMessage refuses an ssl_domain sent without ssl_mode to a
// pool whose mode is off; it names every choice.
const sslModeForDomainMessage = "is required with ssl_domain while the pool's mode is off (the default): send full_strict " +
	"(TLS at the edge, verified TLS to https:// backends; recommended), full (TLS to backends, not verified), " +
	"flexible (TLS at the edge, HTTP to backends), passthrough (TLS relayed by SNI) or off (plain HTTP for this name, no TLS)"

// buildPool turns a request onto base into a validated pool.
func buildPool(base storage.Pool, spec apitypes.PoolSpec, create bool) (storage.Pool, error) {
	p := base
	p.Hosts = append([]string(nil), base.Hosts...)
	errs := poolSpecOnto(&p, spec, create)
	if err := pools.ValidatePool(&p); err != nil {
		fields, _ := fielderr.From(err)
		errs = append(errs, fields...)
	}
	if len(errs) > 0 {
		return p, errUnprocessable(errs)
	}
	return p, nil
}

func poolView(p storage.Pool) apitypes.Pool {
	hosts := p.Hosts
	if hosts == nil {
		hosts = []string{}
	}
	allow := p.OnDemandAllow
	if allow == nil {
		allow = []string{}
	}
	// What the pool does: a full row stored before the flag followed the
	// mode may still hold true, and full never verifies.
	verify := pools.VerifiesBackendCerts(p.SSLMode, p.ValidateBackendCert)
	return apitypes.Pool{
		Name:                p.Name,
		Algorithm:           p.Algorithm,
		SSLMode:             p.SSLMode,
		SSLDomain:           p.SSLDomain,
		SSLCertID:           p.SSLCertID,
		Hosts:               hosts,
		ValidateBackendCert: verify,
		HealthCheckInterval: p.HealthCheckInterval.Milliseconds(),
		HealthCheck: apitypes.HealthCheck{
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
		AutoCert:        !p.NoAutoCert,
		HoldNewBackends: p.HoldNewBackends,
		Default:         p.Default,
		Metadata:        p.Metadata,

		BackendCA:           p.BackendCA,
		BackendServerName:   p.BackendServerName,
		BackendClientCertID: p.BackendClientCertID,
		OnDemandTLS:         p.OnDemandTLS,
		OnDemandAllow:       allow,
		OnDemandAsk:         p.OnDemandAsk,
		OnDemandRate:        p.OnDemandRate,
		InsertedAt:          p.InsertedAt,
		UpdatedAt:           p.UpdatedAt,
		Version:             versionView(p.Version),
	}
}

func versionView(v storage.Version) apitypes.Version {
	return apitypes.Version{HLC: uint64(v.HLC), Origin: v.Origin, Seq: v.Seq}
}

// checkPoolRefs runs, inside the write's transaction, the checks that
// depend on other rows, each an index lookup: the named certificate
// exists and covers the pool's SSL domain; no other pool serves one of its
// host names (exact or wildcard, as ssl_domain or in hosts); no other pool
// is the default; and, when cur is the stored pool of an update whose TLS
// mode or check type changes, no backend of the pool would fail every
// request or check. The host and default lookups are guarded index
// partitions, so two requests claiming the same host cannot both commit.
func checkPoolRefs(tx *storage.Tx, p *storage.Pool, cur *storage.Pool) error {
	if id := p.BackendClientCertID; id != "" {
		_, err := tx.Certificate(id)
		if errors.Is(err, storage.ErrNotFound) {
			return errUnprocessable(fielderr.List{{Field: "backend_client_cert_id", Message: fmt.Sprintf("no certificate with id %q", id)}})
		}
		if err != nil {
			return err
		}
	}
	if p.SSLCertID != "" {
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
	}
	var conflicts fielderr.List
	claim := func(field, host string) error {
		owners, err := tx.PoolsByHost(host)
		if err != nil {
			return err
		}
		for _, o := range owners {
			if o.Name == p.Name {
				continue
			}
			where := "hosts"
			if strings.EqualFold(o.SSLDomain, host) {
				where = "ssl_domain"
			}
			conflicts.Add(field, fmt.Sprintf("host %q is already served by pool %q (its %s); a host name belongs to one pool, remove it there first", host, o.Name, where))
		}
		return nil
	}
	if p.SSLDomain != "" {
		if err := claim("ssl_domain", p.SSLDomain); err != nil {
			return err
		}
	}
	for _, h := range p.Hosts {
		if h == p.SSLDomain {
			continue
		}
		if err := claim("hosts", h); err != nil {
			return err
		}
	}
	if err := claimOnDemandPatterns(tx, p, &conflicts); err != nil {
		return err
	}
	if p.Default {
		defs, err := tx.DefaultPools()
		if err != nil {
			return err
		}
		for _, o := range defs {
			if o.Name != p.Name {
				conflicts.Add("default", fmt.Sprintf("pool %q is already the default pool; only one pool can be, set default to false there first", o.Name))
			}
		}
	}
	if len(conflicts) > 0 {
		return errConflictFields(conflicts)
	}
	if cur != nil && (cur.SSLMode != p.SSLMode || cur.HealthCheck.Type != p.HealthCheck.Type) {
		backends, err := tx.BackendsByPool(p.Name)
		if err != nil {
			return err
		}
		for i := range backends {
			if field, msg := pools.BackendMismatch(p, &backends[i]); field != "" {
				return errConflictFields(fielderr.List{{Field: field, Message: msg + fmt.Sprintf(" (backend %q); change or remove the backend first", backends[i].ID)}})
			}
		}
	}
	return nil
}

// certificateCovers reports whether one of c's names matches host the way a
// TLS client checks it: exactly, or by a wildcard for exactly one label. A
// wildcard host ("*.example.com") is covered only by the same wildcard.
func certificateCovers(c storage.Certificate, host string) bool {
	host = strings.ToLower(host)
	for _, n := range append([]string{c.Domain}, c.Names...) {
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
	resp, err := pageOf(rows, pg.Limit, func(p storage.Pool) string { return p.Name },
		func(p storage.Pool) (apitypes.Pool, error) { return s.poolResponse(r.Context(), p) })
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
	resp, err := s.poolResponse(r.Context(), p)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	w.Header().Set("ETag", etag(p.Version))
	writeJSON(w, http.StatusOK, resp)
}

func (s *Server) handleCreatePool(w http.ResponseWriter, r *http.Request) {
	wait, err := s.parseWaitAll(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var spec apitypes.PoolSpec
	if err := readStrict(w, r, s.cfg.MaxBodyBytes, &spec); err != nil {
		s.writeError(w, r, err)
		return
	}
	if !spec.Name.Set {
		s.writeError(w, r, errUnprocessable(fielderr.List{{Field: "name", Message: "is required"}}))
		return
	}
	p, err := buildPool(pools.DefaultPool(), spec, true)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var stored storage.Pool
	var ae storage.AuditEntry
	var removed, inTx int
	var commits []storage.Commit
	create := func(tx *storage.Tx) error {
		if _, err := tx.Pool(p.Name); err == nil {
			return errConflict("name", fmt.Sprintf("a pool named %q already exists", p.Name))
		} else if !errors.Is(err, storage.ErrNotFound) {
			return err
		}
		if err := checkPoolRefs(tx, &p, nil); err != nil {
			return err
		}
		// Backends naming a pool that does not exist are left from a pool
		// deleted on one node while a backend was added to it on another,
		// across a partition: the cascade removed only the backends its
		// node knew. Invisible until now, they would serve the new pool
		// unasked; a new pool starts empty, so they go in this commit
		// (tombstones, replicated with it).
		leftovers, more, err := firstBackends(tx, p.Name, poolTxBackends)
		if err != nil {
			return err
		}
		if more {
			return errTooManyLeftovers
		}
		for _, b := range leftovers {
			if err := tx.DeleteBackend(b.ID); err != nil {
				return err
			}
		}
		inTx = len(leftovers)
		stored = p
		if err := tx.PutPool(&stored); err != nil {
			return err
		}
		ae, err = s.recordAudit(tx, r, "create", "pool", stored.Name, nil, poolView(stored))
		return err
	}
	commit, err := s.store.Update(r.Context(), create)
	for attempt := 0; errors.Is(err, errTooManyLeftovers) && attempt < 3; attempt++ {
		// More leftovers than the create's transaction holds (every
		// check of the create passed): they go first, in transactions of
		// their own, then the create runs again.
		n, cs, derr := s.deleteOrphanBackends(r.Context(), p.Name, poolTxBackends)
		removed += n
		commits = append(commits, cs...)
		if derr != nil {
			err = derr
			break
		}
		commit, err = s.store.Update(r.Context(), create)
	}
	if errors.Is(err, errTooManyLeftovers) {
		err = &apiError{Status: http.StatusServiceUnavailable, Code: CodeUnavailable,
			Message: fmt.Sprintf("backends left from an earlier pool %q keep arriving by replication faster than they are removed; retry", p.Name)}
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	stored.Version = rowVersion(stored.Version, commit)
	removed += inTx
	if removed > 0 {
		s.logAudit(ae, zap.Int("leftover_backends_deleted", removed))
	} else {
		s.logAudit(ae)
	}
	if err := s.waitAll(w, r, wait, fmt.Sprintf("pool %q", stored.Name), append(commits, commit)...); err != nil {
		s.writeError(w, r, err)
		return
	}
	s.respondPool(w, r, http.StatusCreated, stored)
}

func (s *Server) handlePatchPool(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	wait, err := s.parseWaitAll(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var spec apitypes.PoolSpec
	if err := readStrict(w, r, s.cfg.MaxBodyBytes, &spec); err != nil {
		s.writeError(w, r, err)
		return
	}
	if spec.Name.Set && spec.Name.Value != name {
		s.writeError(w, r, errUnprocessable(fielderr.List{{Field: "name", Message: "cannot be changed; create a new pool and move the backends"}}))
		return
	}
	match, err := parseIfMatch(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var stored, before storage.Pool
	var ae storage.AuditEntry
	changed := false
	commit, err := s.store.Update(r.Context(), func(tx *storage.Tx) error {
		cur, err := tx.Pool(name)
		if err != nil {
			return notFoundAs(err, "name", fmt.Sprintf("no pool named %q", name))
		}
		if err := match.check(cur.Version); err != nil {
			return err
		}
		next, err := buildPool(cur, spec, false)
		if err != nil {
			return err
		}
		if err := checkPoolRefs(tx, &next, &cur); err != nil {
			return err
		}
		before, stored, changed = cur, next, !samePool(cur, next)
		if !changed {
			// Nothing to write: no new version to replicate, no audit
			// row; the answer is the stored pool and its ETag.
			return nil
		}
		if err := tx.PutPool(&stored); err != nil {
			return err
		}
		ae, err = s.recordAudit(tx, r, "update", "pool", name, poolView(before), poolView(stored))
		return err
	})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if !changed {
		if err := s.waitAllUnchanged(w, r, wait, fmt.Sprintf("pool %q, unchanged,", name), before.Version); err != nil {
			s.writeError(w, r, err)
			return
		}
		s.respondPool(w, r, http.StatusOK, before)
		return
	}
	stored.Version = rowVersion(stored.Version, commit)
	s.logAudit(ae)
	if err := s.waitAll(w, r, wait, fmt.Sprintf("the change of pool %q", name), commit); err != nil {
		s.writeError(w, r, err)
		return
	}
	s.respondPool(w, r, http.StatusOK, stored)
}

// samePool reports whether a and b hold the same configuration: every
// field but the ones the store sets when it writes (times, version).
// Slices and maps compare by content, so a list or map left empty equals
// one that is absent; a field added to storage.Pool later is compared
// without a change here.
func samePool(a, b storage.Pool) bool {
	if !slices.Equal(a.Hosts, b.Hosts) || !slices.Equal(a.OnDemandAllow, b.OnDemandAllow) || !maps.Equal(a.Metadata, b.Metadata) {
		return false
	}
	for _, p := range []*storage.Pool{&a, &b} {
		p.Hosts, p.OnDemandAllow, p.Metadata = nil, nil, nil
		p.InsertedAt, p.UpdatedAt, p.Version = time.Time{}, time.Time{}, storage.Version{}
	}
	return reflect.DeepEqual(a, b)
}

func (s *Server) handleDeletePool(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	cascade, err := boolQuery(r, "cascade")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
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
	var before storage.Pool
	var removed int
	var more bool
	var ae storage.AuditEntry
	commit, err := s.store.Update(r.Context(), func(tx *storage.Tx) error {
		cur, err := tx.Pool(name)
		if err != nil {
			return notFoundAs(err, "name", fmt.Sprintf("no pool named %q", name))
		}
		if err := match.check(cur.Version); err != nil {
			return err
		}
		// One transaction holds at most storage.MaxChangeSetRows rows:
		// the pool, its audit row and as many backends as fit go now,
		// the rest right after (deleteOrphanBackends). From this commit
		// on the pool is gone and its backends are neither shown nor
		// routed, so the delete takes effect at once, as one change.
		// It reads only the backends it removes (and whether there are
		// more), not the whole pool.
		first, rest, err := firstBackends(tx, name, poolTxBackends)
		if err != nil {
			return err
		}
		if len(first) > 0 && !cascade {
			count := fmt.Sprintf("%d backend(s)", len(first))
			if rest {
				count = fmt.Sprintf("more than %d backends", len(first))
			}
			return errConflict("name", fmt.Sprintf("pool %q still has %s; delete them first or pass ?cascade=true", name, count))
		}
		for _, b := range first {
			if err := tx.DeleteBackend(b.ID); err != nil {
				return err
			}
		}
		before, removed, more = cur, len(first), rest
		if err := tx.DeletePool(name); err != nil {
			return err
		}
		ae, err = s.recordAudit(tx, r, "delete", "pool", name, poolView(before), nil)
		return err
	})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	commits := []storage.Commit{commit}
	if more {
		// Detached from the client: the pool is deleted, and its
		// backends should not wait for a recreate to be removed.
		n, cs, err := s.deleteOrphanBackends(context.WithoutCancel(r.Context()), name, 0)
		removed += n
		commits = append(commits, cs...)
		if err != nil {
			s.logger.Warn("pool deleted, but some of its backends are still stored: they are neither shown nor routed, and go when a pool of this name is created",
				zap.String("pool", name), zap.Int("backends_deleted", removed), zap.Error(err))
		}
	}
	s.logAudit(ae, zap.Int("backends_deleted", removed))
	if err := s.waitAll(w, r, wait, fmt.Sprintf("the deletion of pool %q", name), commits...); err != nil {
		s.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) respondPool(w http.ResponseWriter, r *http.Request, status int, p storage.Pool) {
	resp, err := s.poolResponse(r.Context(), p)
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

// poolResponse shows a pool with the statistics of its backends: from the
// live routing table when it has the pool (memory only), else from this
// node's stored observations of the pool's backends.
//
// The stored statistics read what they need and hold one backend at a
// time: the pool's covering index in one scan, each entry decoded in
// place (its id and whether it drains), and each backend's observation by
// key. A transaction would keep every row it read until the answer was
// built: all of a pool of a million backends, with their observations.
func (s *Server) poolResponse(ctx context.Context, p storage.Pool) (apitypes.Pool, error) {
	resp := poolView(p)
	if lp := s.livePool(p.Name); lp != nil {
		st := lp.Stats()
		resp.Stats = apitypes.PoolStats{
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
	node := s.store.NodeID()
	err := s.store.ScanBackendsOfPool(ctx, p.Name, func(b *storage.BackendRef) error {
		resp.Stats.TotalBackends++
		o, err := s.store.GetObservation(ctx, node, string(b.ID))
		ok := err == nil
		if err != nil && !errors.Is(err, storage.ErrNotFound) {
			return err
		}
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
		return nil
	})
	return resp, err
}

// livePool returns the routing table's pool, or nil when the agent runs
// without one or the table does not have the pool yet.
func (s *Server) livePool(name string) *pools.Pool {
	if s.deps.Pools == nil {
		return nil
	}
	t := s.deps.Pools.Table()
	if t == nil {
		return nil
	}
	return t.Pool(name)
}

// notFoundAs turns storage.ErrNotFound into a 404 naming field; other
// errors pass through.
func notFoundAs(err error, field, message string) error {
	if errors.Is(err, storage.ErrNotFound) {
		return errNotFound(field, message)
	}
	return err
}
