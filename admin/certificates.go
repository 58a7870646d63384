package admin

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/singularity-ng/singularity-edge/apitypes"
	"github.com/singularity-ng/singularity-edge/certs"
	"github.com/singularity-ng/singularity-edge/internal/fielderr"
	"github.com/singularity-ng/singularity-edge/pools"
	"github.com/singularity-ng/singularity-edge/storage"
)

// uploadInput is a certificate upload: PEM text of the leaf (optionally
// followed by its chain), the private key and further chain certificates.
type uploadInput = apitypes.CertificateUpload

// createCertificateInput is POST /api/certificates: an upload
// (certificate and private_key) or an ACME request (domain or domains,
// apitypes.CertificateRequest), told apart by which fields are set.
type createCertificateInput struct {
	apitypes.CertificateUpload
	Domains []string `json:"domains"`
	Profile string   `json:"profile"`
}

func (in createCertificateInput) isUpload() bool {
	return in.Certificate != "" || in.PrivateKey != "" || in.Chain != ""
}

// certificateResponse shows a certificate. It has no field for the private
// key: the key goes in on upload and never comes out.
type certificateResponse = apitypes.Certificate

func certificateView(c storage.Certificate, now time.Time) certificateResponse {
	names := c.Names
	if names == nil {
		names = []string{}
	}
	left := c.ExpiresAt.Sub(now)
	return certificateResponse{
		ID:          c.ID,
		Domain:      c.Domain,
		Names:       names,
		Issuer:      c.Issuer,
		NotBefore:   c.NotBefore,
		ExpiresAt:   c.ExpiresAt,
		DaysLeft:    int(math.Floor(left.Hours() / 24)),
		Expired:     left <= 0,
		Fingerprint: c.Fingerprint,
		Provider:    c.Provider,
		AutoRenew:   c.AutoRenew,
		Certificate: c.CertificatePEM,
		Chain:       c.ChainPEM,
		Metadata:    c.Metadata,
		InsertedAt:  c.InsertedAt,
		UpdatedAt:   c.UpdatedAt,
		Version:     versionView(c.Version),
	}
}

func (s *Server) handleListCertificates(w http.ResponseWriter, r *http.Request) {
	pg, err := parsePage(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	rows, err := s.store.ListCertificates(r.Context(), pg.After, pg.Limit+1)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	now := s.now()
	resp, err := pageOf(rows, pg.Limit, func(c storage.Certificate) string { return c.ID },
		func(c storage.Certificate) (certificateResponse, error) {
			v := certificateView(c, now)
			v.Renewal = s.renewalView(r.Context(), c)
			return v, nil
		})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, resp)
}

func (s *Server) handleGetCertificate(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	c, err := s.store.GetCertificate(r.Context(), id)
	if errors.Is(err, storage.ErrNotFound) {
		s.writeError(w, r, s.pendingCertificate(r.Context(), id, err))
		return
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	w.Header().Set("ETag", etag(c.Version))
	writeJSON(w, http.StatusOK, s.certificateViewWithRenewal(r.Context(), c))
}

// handleCreateCertificate is POST /api/certificates: an ACME request
// ({"domain": ...} or {"domains": [...]}, the original API's create
// route) or a JSON upload.
func (s *Server) handleCreateCertificate(w http.ResponseWriter, r *http.Request) {
	var in createCertificateInput
	if err := readStrict(w, r, s.cfg.MaxUploadBytes, &in); err != nil {
		s.writeError(w, r, err)
		return
	}
	// The route's two kinds of request each read one of its parameters;
	// the other is refused rather than ignored.
	q := r.URL.Query()
	if !in.isUpload() {
		if q.Has(waitAllParam) {
			msg := "is for uploads; an ACME certificate reaches the other members by replication (its challenge tokens already wait for every alive member); use wait for the order"
			s.writeError(w, r, errInvalid(waitAllParam+" "+msg, fielderr.FieldError{Field: waitAllParam, Message: msg}))
			return
		}
		s.issueCertificate(w, r, in)
		return
	}
	if q.Has("wait") {
		msg := "is for ACME requests (how long to wait for the order); an upload waits for the other members with " + waitAllParam
		s.writeError(w, r, errInvalid("wait "+msg, fielderr.FieldError{Field: "wait", Message: msg}))
		return
	}
	var errs fielderr.List
	if in.Domains != nil {
		errs.Add("domains", "is for ACME requests; an upload takes its names from the certificate")
	}
	if in.Profile != "" {
		errs.Add("profile", "is for ACME requests")
	}
	if len(errs) > 0 {
		s.writeError(w, r, errUnprocessable(errs))
		return
	}
	s.storeUpload(w, r, in.CertificateUpload)
}

// handleUploadCertificate is POST /api/certificates/upload: JSON, or a
// multipart form whose parts certificate, private_key and chain are files
// or plain values.
func (s *Server) handleUploadCertificate(w http.ResponseWriter, r *http.Request) {
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if mt == "multipart/form-data" {
		in, err := readMultipartUpload(w, r, s.cfg.MaxUploadBytes)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		s.storeUpload(w, r, in)
		return
	}
	body, err := readBodyTyped(w, r, s.cfg.MaxUploadBytes, "application/json", "multipart/form-data")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var in uploadInput
	if err := decodeStrict(body, &in); err != nil {
		s.writeError(w, r, err)
		return
	}
	s.storeUpload(w, r, in)
}

// readBodyTyped is readJSONBody with a 415 message that lists every type the
// route reads.
func readBodyTyped(w http.ResponseWriter, r *http.Request, limit int64, want ...string) ([]byte, error) {
	if err := requireMediaType(r, want...); err != nil {
		return nil, err
	}
	return readBody(w, r, limit)
}

// Upload fields beside the PEM parts, named as in the JSON body
// (apitypes.CertificateUpload), so that a form and a JSON upload take the
// same fields and get the same answers.
const (
	uploadFieldMetadata = "metadata" // a JSON object of strings
	uploadFieldDomain   = "domain"   // refused by storeUpload, with the reason
)

// isUploadField reports whether name is a part an upload form may carry.
func isUploadField(name string) bool {
	switch name {
	case certs.FieldCertificate, certs.FieldPrivateKey, certs.FieldChain, uploadFieldMetadata, uploadFieldDomain:
		return true
	}
	return false
}

func readMultipartUpload(w http.ResponseWriter, r *http.Request, limit int64) (uploadInput, error) {
	var in uploadInput
	r.Body = http.MaxBytesReader(w, r.Body, limit)
	mr, err := r.MultipartReader()
	if err != nil {
		return in, errInvalid("malformed multipart form: " + err.Error())
	}
	seen := map[string]bool{}
	for {
		part, err := mr.NextPart()
		// Only a bare io.EOF is the closing delimiter; a body that ends
		// without one comes back as a wrapped EOF and is malformed.
		if err == io.EOF { //nolint:errorlint // see above
			break
		}
		if err != nil {
			return in, multipartError(err)
		}
		name := part.FormName()
		if !isUploadField(name) {
			_ = part.Close()
			if name == "" {
				return in, errInvalid("a multipart part has no form field name")
			}
			return in, errInvalid("unknown field "+fmt.Sprintf("%q", name), fielderr.FieldError{Field: name, Message: "unknown field"})
		}
		if seen[name] {
			_ = part.Close()
			return in, errInvalid("field "+name+" given twice", fielderr.FieldError{Field: name, Message: "given more than once"})
		}
		seen[name] = true
		value, err := io.ReadAll(part)
		_ = part.Close()
		if err != nil {
			return in, multipartError(err)
		}
		switch name {
		case certs.FieldCertificate:
			in.Certificate = string(value)
		case certs.FieldPrivateKey:
			in.PrivateKey = string(value)
		case certs.FieldChain:
			in.Chain = string(value)
		case uploadFieldDomain:
			in.Domain = string(value)
		case uploadFieldMetadata:
			if err := json.Unmarshal(value, &in.Metadata); err != nil {
				return in, errUnprocessable(fielderr.List{{Field: uploadFieldMetadata,
					Message: "must be a JSON object of string values, as in a JSON upload"}})
			}
		}
	}
	return in, nil
}

func multipartError(err error) error {
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return toAPIError(err)
	}
	return errInvalid("malformed multipart form: " + err.Error())
}

// storeUpload validates the upload with certs.ParseUpload and stores it in
// one transaction that also rejects a certificate stored before. The ID is
// derived from the leaf's fingerprint, so the same certificate uploaded
// twice is a 409 naming the existing id.
func (s *Server) storeUpload(w http.ResponseWriter, r *http.Request, in uploadInput) {
	wait, err := s.parseWaitAll(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if in.Domain != "" && in.Certificate == "" && in.PrivateKey == "" {
		s.writeError(w, r, errUnprocessable(fielderr.List{{Field: "domain",
			Message: "an upload takes certificate and private_key; POST /api/certificates with domain obtains a certificate from ACME"}}))
		return
	}
	if in.Domain != "" {
		s.writeError(w, r, errUnprocessable(fielderr.List{{Field: "domain", Message: "is taken from the certificate; leave it out of an upload"}}))
		return
	}
	c, err := certs.ParseUpload(in.Certificate, in.PrivateKey, in.Chain, s.now())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	c.Metadata = in.Metadata
	if err := checkCertificateMetadata(c.Metadata); err != nil {
		s.writeError(w, r, err)
		return
	}
	var stored storage.Certificate
	var ae storage.AuditEntry
	commit, err := s.store.Update(r.Context(), func(tx *storage.Tx) error {
		if old, err := tx.Certificate(c.ID); err == nil {
			return errConflict(certs.FieldCertificate, fmt.Sprintf("this certificate is already stored with id %q (domain %s)", old.ID, old.Domain))
		} else if !errors.Is(err, storage.ErrNotFound) {
			return err
		}
		stored = *c
		if err := tx.PutCertificate(&stored); err != nil {
			return err
		}
		ae, err = s.recordAudit(tx, r, "create", "certificate", stored.ID, nil, certificateView(stored, s.now()))
		return err
	})
	if errors.Is(err, storage.ErrEncryptionKey) {
		s.writeError(w, r, &apiError{Status: http.StatusConflict, Code: CodeNotSupported,
			Message: "this agent has no usable encryption key (EDGE_ENCRYPTION_KEY), so it cannot store private keys", cause: err})
		return
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	stored.Version = rowVersion(stored.Version, commit)
	s.logAudit(ae)
	if err := s.waitAll(w, r, wait, fmt.Sprintf("certificate %q", stored.ID), commit); err != nil {
		s.writeError(w, r, err)
		return
	}
	w.Header().Set("ETag", etag(stored.Version))
	w.Header().Set("Location", "/api/certificates/"+url.PathEscape(stored.ID))
	writeJSON(w, http.StatusCreated, certificateView(stored, s.now()))
}

// Bounds of certificate metadata, the same as pools and backends have.
const (
	maxCertMetadataPairs = 64
	maxCertMetadataKey   = 64
	maxCertMetadataValue = 1024
)

func checkCertificateMetadata(md map[string]string) error {
	var errs fielderr.List
	if len(md) > maxCertMetadataPairs {
		errs.Add("metadata", fmt.Sprintf("at most %d entries, got %d", maxCertMetadataPairs, len(md)))
		return errs.Err()
	}
	for k, v := range md {
		switch {
		case k == "" || len(k) > maxCertMetadataKey:
			errs.Add("metadata", fmt.Sprintf("keys must be 1 to %d bytes", maxCertMetadataKey))
		case len(v) > maxCertMetadataValue:
			errs.Add("metadata", fmt.Sprintf("value of %q longer than %d bytes", k, maxCertMetadataValue))
		case strings.ContainsFunc(k+v, func(r rune) bool { return r < ' ' || r == 0x7f || r == '\uFFFD' }):
			errs.Add("metadata", fmt.Sprintf("entry %q must be UTF-8 text without control characters", k))
		}
		if len(errs) > 0 {
			break
		}
	}
	return errs.Err()
}

// handleDeleteCertificate deletes a certificate unless a pool still names
// it in ssl_cert_id (409); the check and the delete share a transaction.
// handleDeleteCertificate refuses (409) to delete a certificate a pool
// pins with ssl_cert_id, and one that a TLS-terminating pool serves by SNI
// for one of its host names when no other certificate covers that name:
// the next handshake for it would fail. ?force=true deletes it anyway
// (the pinning check stays: change the pool first).
func (s *Server) handleDeleteCertificate(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	force, err := boolQuery(r, "force")
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
	var before storage.Certificate
	var orphaned []string
	var ae storage.AuditEntry
	commit, err := s.store.Update(r.Context(), func(tx *storage.Tx) error {
		cur, err := tx.Certificate(id)
		if err != nil {
			return notFoundAs(err, "id", fmt.Sprintf("no certificate with id %q", id))
		}
		if err := match.check(cur.Version); err != nil {
			return err
		}
		// The index scan is guarded: a pool that starts using the
		// certificate concurrently makes one of the two transactions
		// conflict and run again.
		users, err := tx.PoolsByCertificate(cur.ID)
		if err != nil {
			return err
		}
		if len(users) > 0 {
			names := make([]string, len(users))
			for i, p := range users {
				names[i] = p.Name
			}
			return errConflict("id", fmt.Sprintf("certificate %q is used by pool(s) %s (ssl_cert_id); change them first", id, strings.Join(names, ", ")))
		}
		orphaned, err = hostsLeftWithoutCertificate(tx, cur, s.now())
		if err != nil {
			return err
		}
		if len(orphaned) > 0 && !force {
			return errConflict("id", fmt.Sprintf("certificate %q is the only one serving %s by SNI; upload a replacement first, or pass ?force=true to delete it anyway", id, strings.Join(orphaned, ", ")))
		}
		before = cur
		if err := certs.DeleteRenewalState(tx, id, s.now()); err != nil {
			return err
		}
		if err := tx.DeleteCertificate(id); err != nil {
			return err
		}
		ae, err = s.recordAudit(tx, r, "delete", "certificate", id, certificateView(before, s.now()), nil)
		return err
	})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	extra := []zap.Field{zap.Bool("force", force)}
	if len(orphaned) > 0 {
		extra = append(extra, zap.Strings("hosts_without_certificate", orphaned))
		s.logger.Warn("certificate deleted while pools still serve its hosts; TLS handshakes for them will fail",
			zap.String("id", id), zap.Strings("hosts", orphaned))
	}
	s.logAudit(ae, extra...)
	if err := s.waitAll(w, r, wait, fmt.Sprintf("the deletion of certificate %q", id), commit); err != nil {
		s.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// hostsLeftWithoutCertificate lists, as "host (pool p)", the host names
// that TLS-terminating pools serve by SNI, that c covers and that no other
// unexpired certificate covers. It reads the pools (a table of at most a
// few thousand rows) and, per covered host, the certificate index.
func hostsLeftWithoutCertificate(tx *storage.Tx, c storage.Certificate, now time.Time) ([]string, error) {
	all, err := tx.Pools("", 0)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, p := range all {
		switch p.SSLMode {
		case pools.SSLModeFlexible, pools.SSLModeFull, pools.SSLModeFullStrict:
		default:
			continue
		}
		if p.SSLCertID != "" {
			continue // pinned to another certificate
		}
		hosts := append([]string{}, p.Hosts...)
		if p.SSLDomain != "" && !slices.Contains(hosts, p.SSLDomain) {
			hosts = append([]string{p.SSLDomain}, hosts...)
		}
		for _, h := range hosts {
			if !certificateCovers(c, h) {
				continue
			}
			covered, err := otherCertificateCovers(tx, c.ID, h, now)
			if err != nil {
				return nil, err
			}
			if !covered {
				out = append(out, fmt.Sprintf("%s (pool %s)", h, p.Name))
			}
		}
	}
	return out, nil
}

// otherCertificateCovers reports whether an unexpired certificate other
// than id covers host: by its exact name or by the wildcard of its parent.
func otherCertificateCovers(tx *storage.Tx, id, host string, now time.Time) (bool, error) {
	names := []string{host}
	if _, parent, ok := strings.Cut(host, "."); ok && !strings.HasPrefix(host, "*.") {
		names = append(names, "*."+parent)
	}
	for _, n := range names {
		certs, err := tx.CertificatesByDomain(n)
		if err != nil {
			return false, err
		}
		for _, o := range certs {
			if o.ID != id && now.Before(o.ExpiresAt) {
				return true, nil
			}
		}
	}
	return false, nil
}

// handleRenewCertificate answers honestly: uploaded certificates are
// renewed by uploading a new one, and ACME renewal needs a Renewer.
func (s *Server) handleRenewCertificate(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	c, err := s.store.GetCertificate(r.Context(), id)
	if err != nil {
		s.writeError(w, r, notFoundAs(err, "id", fmt.Sprintf("no certificate with id %q", id)))
		return
	}
	if c.Provider != "acme" {
		s.writeError(w, r, &apiError{Status: http.StatusConflict, Code: CodeNotSupported,
			Message: fmt.Sprintf("certificate %q was uploaded (provider %q); renew it by uploading its replacement and pointing the pools at the new id", id, c.Provider)})
		return
	}
	if s.deps.Renewer == nil {
		s.writeError(w, r, &apiError{Status: http.StatusConflict, Code: CodeNotSupported,
			Message: "acme not configured: this agent cannot renew certificates"})
		return
	}
	res, err := s.deps.Renewer.Renew(r.Context(), id)
	if len(res.LiftedHolds) > 0 {
		s.auditLiftedHolds(r, id, res.LiftedHolds, err)
	}
	if err != nil {
		s.writeError(w, r, acmeError(err))
		return
	}
	w.Header().Set("ETag", etag(res.Certificate.Version))
	writeJSON(w, http.StatusOK, s.certificateViewWithRenewal(r.Context(), res.Certificate))
}

// liftedHoldsView is what an explicit renewal changed besides the
// certificate: the CA's userActionRequired holds it lifted, by issuer.
type liftedHoldsView struct {
	UserActionHold []string `json:"user_action_hold,omitempty"`
}

// auditLiftedHolds records that a renewal lifted cluster-wide holds: the
// operator, not the agent, decided the CA's action was done. The manager
// lifted them in its own transactions; the audit row follows in one of
// its own, whatever the order's outcome (a CA that refuses again sets a
// new hold).
func (s *Server) auditLiftedHolds(r *http.Request, id string, issuers []string, orderErr error) {
	var ae storage.AuditEntry
	if _, err := s.store.Update(r.Context(), func(tx *storage.Tx) error {
		var err error
		ae, err = s.recordAudit(tx, r, "renew", "certificate", id, liftedHoldsView{UserActionHold: issuers}, liftedHoldsView{})
		return err
	}); err != nil {
		s.logger.Warn("audit row of a lifted userActionRequired hold not written", zap.String("id", id), zap.Error(err))
		return
	}
	s.logAudit(ae, zap.NamedError("order_error", orderErr))
}
