package admin

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/singularity-ng/singularity-edge/apitypes"
	"github.com/singularity-ng/singularity-edge/certs"
	"github.com/singularity-ng/singularity-edge/internal/fielderr"
	"github.com/singularity-ng/singularity-edge/storage"
)

// Codes of ACME answers.
const (
	// CodeHeldBack: the rate-limit budget held an ACME order back (429).
	CodeHeldBack = "held_back"
	// CodeACMEFailed: the CA refused or the validation failed (502); the
	// message is the CA's problem, and the certificate's renewal state
	// keeps it as last_error.
	CodeACMEFailed = "acme_failed"
)

// ACME is the agent's certificate manager as the API uses it
// (*certs.Manager).
type ACME interface {
	// Obtain returns the certificate for names, ordering it when none is
	// stored or the stored one is due.
	Obtain(ctx context.Context, names []string, profile string) (storage.Certificate, error)
	// Status is a certificate's renewal state; an error wrapping
	// storage.ErrNotFound when the id has neither a certificate nor a
	// state.
	Status(ctx context.Context, id string) (certs.Status, error)
	// CheckProfile refuses a profile no issuer offers with a field
	// error for "profile"; any other error means the CA's directory could
	// not be read.
	CheckProfile(ctx context.Context, profile string) error
}

var _ ACME = (*certs.Manager)(nil)

// acmeError maps what the manager returns to the API's answer: a budget
// refusal is 429 with its reason and when it clears, another agent working
// on the certificate 409, a CA failure 502 with the CA's problem. The
// texts come from lego and the CA (problem details, URLs, names), never
// from key material.
func acmeError(err error) error {
	var hb *certs.HeldBackError
	switch {
	case errors.As(err, &hb):
		return &apiError{Status: http.StatusTooManyRequests, Code: CodeHeldBack, Message: hb.Error(), cause: err,
			heldBack: &apitypes.HeldBack{Limit: hb.Limit, Scope: hb.Scope, Count: hb.Count, Max: hb.Max,
				WindowSeconds: int64(hb.Window / time.Second), Until: hb.Until.UTC()}}
	case errors.Is(err, certs.ErrLeaseHeld):
		return &apiError{Status: http.StatusConflict, Code: CodeConflict,
			Message: "another agent is ordering or renewing this certificate now; retry later", cause: err}
	case errors.Is(err, certs.ErrNotACME):
		return &apiError{Status: http.StatusConflict, Code: CodeNotSupported, Message: err.Error(), cause: err}
	case errors.Is(err, certs.ErrNotPresented), errors.Is(err, certs.ErrNotOrdered):
		return &apiError{Status: http.StatusBadGateway, Code: CodeACMEFailed, Message: err.Error(), cause: err}
	}
	var ae *apiError
	if _, ok := fielderr.From(err); ok || errors.As(err, &ae) ||
		errors.Is(err, storage.ErrNotFound) || errors.Is(err, storage.ErrClosed) {
		return err
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return &apiError{Status: http.StatusBadGateway, Code: CodeACMEFailed, Message: "ACME order failed: " + err.Error(), cause: err}
}

// profileError is CheckProfile's refusal as the API's answer: a field
// error is the client's (422); a directory that cannot be read is the
// CA's (502), and nothing was ordered or stored.
func profileError(err error) error {
	if _, ok := fielderr.From(err); ok || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return &apiError{Status: http.StatusBadGateway, Code: CodeACMEFailed,
		Message: "the profile could not be checked against the CA's directory; nothing was ordered: " + err.Error(), cause: err}
}

// acmeRequestNames validates the ACME shape of POST /api/certificates.
func acmeRequestNames(in createCertificateInput) ([]string, error) {
	if in.Metadata != nil {
		return nil, fielderr.New("metadata", "is set on uploads only; an ACME certificate gets none")
	}
	switch {
	case in.Domain != "" && len(in.Domains) > 0:
		return nil, fielderr.New("domains", "give domain or domains, not both")
	case in.Domain != "":
		if msg := nameAsStored(in.Domain); msg != "" {
			return nil, fielderr.New("domain", msg)
		}
		names, err := certs.NormalizeNames("domain", []string{in.Domain})
		if fields, ok := fielderr.From(err); ok {
			// One name, one field: "domain", not "domain[0]".
			var out fielderr.List
			for _, f := range fields {
				out.Add("domain", f.Message)
			}
			return nil, out.Err()
		}
		return names, err
	case in.Domains != nil:
		if err := namesAsStored("domains", in.Domains); err != nil {
			return nil, err
		}
		return certs.NormalizeNames("domains", in.Domains)
	}
	return nil, fielderr.New("domain", "is required: the name to obtain a certificate for (or domains, or certificate and private_key to upload one)")
}

// namesAsStored refuses names that the certificate would hold in another
// form (case, the root's trailing dot) or twice: a request is stored as
// sent or refused, never rewritten.
func namesAsStored(field string, names []string) error {
	var errs fielderr.List
	for i, n := range names {
		if msg := nameAsStored(n); msg != "" {
			errs.Add(fmt.Sprintf("%s[%d]", field, i), msg)
			continue
		}
		if j := slices.Index(names[:i], n); j >= 0 {
			errs.Add(fmt.Sprintf("%s[%d]", field, i), fmt.Sprintf("%q repeats %s[%d]", n, field, j))
		}
	}
	return errs.Err()
}

// nameAsStored refuses a name that the certificate would hold in another
// form, or "" when it is in that form. The form is named to send only when
// a certificate can hold it: "A_B.test" and "a.." are no names in any case,
// and the refusal says what is wrong instead.
func nameAsStored(name string) string {
	want := certs.CanonicalName(name)
	if want == name {
		return ""
	}
	// NormalizeNames checks the name in the form the certificate holds,
	// which is want.
	if _, err := certs.NormalizeNames("name", []string{name}); err != nil {
		if fields, ok := fielderr.From(err); ok && len(fields) > 0 {
			return fields[0].Message
		}
		return err.Error()
	}
	return fmt.Sprintf("send %q (names are lower case, without the root's trailing dot)", want)
}

// maxIssueWait bounds ?wait=: the answer must leave before the server's
// write timeout.
func (s *Server) maxIssueWait() time.Duration {
	if s.cfg.WriteTimeout > 0 {
		return max(s.cfg.WriteTimeout-5*time.Second, time.Second)
	}
	return 5 * time.Minute
}

func (s *Server) issueWait(r *http.Request) (time.Duration, error) {
	wait := min(s.cfg.IssueWait, s.maxIssueWait())
	v := r.URL.Query().Get("wait")
	if v == "" {
		return wait, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		if n, nerr := strconv.Atoi(v); nerr == nil {
			d, err = time.Duration(n)*time.Second, nil
		}
	}
	if err != nil || d < 0 || d > s.maxIssueWait() {
		return 0, errInvalid("bad query parameter wait",
			fielderr.FieldError{Field: "wait", Message: fmt.Sprintf("must be a duration from 0s to %s (\"30s\")", s.maxIssueWait())})
	}
	return d, nil
}

// issueCertificate is POST /api/certificates with domain or domains. The
// order runs detached from the request, bounded by OrderTimeout: the
// answer is 201 (issued now) or 200 (a valid certificate for these names
// was already stored) when it completes within the wait, else 202 with
// Location, where the certificate appears and whose renewal state shows
// the attempt. An operator's client that goes away does not abandon an
// order the CA is already validating.
func (s *Server) issueCertificate(w http.ResponseWriter, r *http.Request, in createCertificateInput) {
	names, err := acmeRequestNames(in)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	// The request is checked before this agent's state is: a malformed
	// ?wait= is the client's mistake whether ACME is on or not, as on
	// every other route.
	wait, err := s.issueWait(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if s.deps.ACME == nil {
		s.writeError(w, r, &apiError{Status: http.StatusConflict, Code: CodeNotSupported,
			Message: "ACME is off on this agent (--acme-directory is empty); upload a certificate with certificate and private_key instead",
			Fields:  fielderr.List{{Field: "domain", Message: "ACME is off on this agent"}}})
		return
	}
	if in.Profile != "" {
		// Before the order: the manager saves the profile in the renewal
		// state and counts the order in the budget before the CA can
		// refuse a profile it does not offer.
		if err := s.deps.ACME.CheckProfile(r.Context(), in.Profile); err != nil {
			s.writeError(w, r, profileError(err))
			return
		}
	}
	id := certs.CertificateID(names)
	before, berr := s.store.GetCertificate(r.Context(), id)
	if berr != nil && !errors.Is(berr, storage.ErrNotFound) {
		s.writeError(w, r, berr)
		return
	}
	type result struct {
		c   storage.Certificate
		err error
	}
	done := make(chan result, 1)
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), s.cfg.OrderTimeout)
	start := time.Now()
	go func() {
		defer cancel()
		c, err := s.deps.ACME.Obtain(ctx, names, in.Profile)
		if err != nil {
			s.logger.Warn("acme order failed", zap.String("certificate", id), zap.Strings("names", names), zap.Error(err))
		}
		done <- result{c, err}
	}()
	s.extendWriteDeadline(w, wait)
	timer := time.NewTimer(wait)
	defer timer.Stop()
	location := "/api/certificates/" + url.PathEscape(id)
	select {
	case res := <-done:
		if res.err != nil {
			s.writeError(w, r, acmeError(res.err))
			return
		}
		status := http.StatusCreated
		if berr == nil && before.Fingerprint == res.c.Fingerprint {
			status = http.StatusOK
		}
		view := s.certificateViewWithRenewal(r.Context(), res.c)
		if status == http.StatusCreated {
			audit := view
			audit.Certificate, audit.Chain, audit.Renewal = "", "", nil
			// The manager stored the certificate in its own transaction
			// (under its lease); the audit row follows in one of its own.
			var ae storage.AuditEntry
			if _, err := s.store.Update(r.Context(), func(tx *storage.Tx) error {
				var err error
				ae, err = s.recordAudit(tx, r, "issue", "certificate", id, nil, audit)
				return err
			}); err != nil {
				s.logger.Warn("audit row of an issued certificate not written", zap.String("id", id), zap.Error(err))
			} else {
				s.logAudit(ae, zap.Duration("took", time.Since(start)))
			}
		}
		w.Header().Set("ETag", etag(res.c.Version))
		w.Header().Set("Location", location)
		writeJSON(w, status, view)
	case <-timer.C:
		w.Header().Set("Location", location)
		w.Header().Set("Retry-After", "5")
		writeJSON(w, http.StatusAccepted, apitypes.CertificateOrder{ID: id, Names: names, Status: certs.PhasePending,
			Message: fmt.Sprintf("the order is still running after %s; GET %s shows the certificate once issued, and its renewal state shows the attempt", wait, location)})
	}
}

// certificateViewWithRenewal is certificateView with the renewal state of
// an ACME certificate.
func (s *Server) certificateViewWithRenewal(ctx context.Context, c storage.Certificate) certificateResponse {
	v := certificateView(c, s.now())
	v.Renewal = s.renewalView(ctx, c)
	return v
}

// renewalView is the renewal state of an ACME certificate, nil for an
// uploaded one or when ACME is off. A state that cannot be read leaves
// the certificate shown without it (and a log line): the certificate
// itself is what the list is for.
func (s *Server) renewalView(ctx context.Context, c storage.Certificate) *apitypes.CertificateRenewal {
	if s.deps.ACME == nil || c.Provider != certs.ProviderACME {
		return nil
	}
	st, err := s.deps.ACME.Status(ctx, c.ID)
	if err != nil {
		s.logger.Warn("reading renewal state", zap.String("certificate", c.ID), zap.Error(err))
		return nil
	}
	return renewalOf(st)
}

func renewalOf(st certs.Status) *apitypes.CertificateRenewal {
	t := func(v time.Time) *time.Time {
		if v.IsZero() {
			return nil
		}
		v = v.UTC()
		return &v
	}
	rs := st.State
	out := &apitypes.CertificateRenewal{
		Phase: st.Phase, RenewAt: st.Decision.At.UTC(), RenewReason: st.Decision.Reason,
		LastAttempt: t(rs.LastAttempt), LastSuccess: t(rs.LastSuccess), LastError: rs.LastError, Failures: rs.Failures,
		Issuer: rs.Issuer, Profile: rs.Profile, Owner: st.Owner, LastOwner: rs.Owner, Blocked: rs.Blocked,
	}
	if rs.ARI != nil && !rs.ARI.Start.IsZero() {
		out.WindowStart, out.WindowEnd = t(rs.ARI.Start), t(rs.ARI.End)
	}
	if rs.HeldBack != "" {
		out.HeldBack, out.HeldBackUntil = rs.HeldBack, t(rs.HeldBackUntil)
	}
	next := rs.NextAttempt
	if st.Decision.NotBefore.After(next) {
		next = st.Decision.NotBefore
	}
	out.NextAttempt = t(next)
	if l := st.Lease; l != nil {
		out.Lease = &apitypes.Lease{Holder: l.Holder, Epoch: l.Epoch, Expires: l.Expires.UTC(), Held: st.Held}
	}
	return out
}

// pendingCertificate answers GET of a certificate id that is not stored:
// when it is an ACME certificate whose first order is running, failed or
// is held back, the 404 says so (a client polling after a 202 learns why
// it is not there yet).
func (s *Server) pendingCertificate(ctx context.Context, id string, notFound error) error {
	base := notFoundAs(notFound, "id", fmt.Sprintf("no certificate with id %q", id))
	if s.deps.ACME == nil {
		return base
	}
	st, err := s.deps.ACME.Status(ctx, id)
	if err != nil {
		return base
	}
	rs := st.State
	msg := fmt.Sprintf("certificate %q is not issued yet (%s)", id, st.Phase)
	switch {
	case rs.HeldBack != "":
		msg += ": " + rs.HeldBack
	case rs.LastError != "":
		msg += fmt.Sprintf(": the last attempt at %s failed: %s", rs.LastAttempt.UTC().Format(time.RFC3339), rs.LastError)
	case st.Held:
		msg += fmt.Sprintf(": %s is ordering it", st.Lease.Holder)
	}
	return &apiError{Status: http.StatusNotFound, Code: CodeNotFound, Message: msg,
		Fields: fielderr.List{{Field: "id", Message: msg}}}
}
