package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/singularity-ng/singularity-edge/apitypes"

	"github.com/singularity-ng/singularity-edge/internal/fielderr"
	"github.com/singularity-ng/singularity-edge/storage"
)

// Error codes of the JSON error shape. Clients switch on the code, never on
// the message. Status codes and codes go together as follows:
//
//	400 invalid                 the body, a query parameter or If-Match cannot be read:
//	                            malformed JSON, an unknown field, a value of the wrong JSON
//	                            type, an empty or malformed If-Match
//	422 invalid                 the body was read but a value is not acceptable: unknown
//	                            algorithm, port out of range, relative directory, ...
//	401 unauthorized            missing or wrong bearer token
//	403 forbidden               a tokenless API refused a browser's cross-origin request or a
//	                            Host that does not name the loopback interface
//	404 not_found               no such object, or no such route
//	405 method_not_allowed      the route exists, the method does not (Allow lists the others)
//	409 conflict                duplicate name, object still in use, concurrent update
//	409 not_supported           the request is understood but this agent cannot do it (renewal
//	                            of an uploaded certificate, ACME not configured)
//	412 precondition_failed     If-Match names a version that is no longer current
//	413 too_large               the body exceeds the configured limit
//	415 unsupported_media_type  the Content-Type is not one the route reads
//	502 join_failed             no node answered at the addresses of a cluster join
//	504 not_applied             the write is stored here, but an alive member did not apply it
//	                            within ?wait_all= (error.missing names who); do not repeat it
//	500 internal                anything else; the message never carries the cause's details
const (
	CodeInvalid              = apitypes.CodeInvalid
	CodeNotFound             = apitypes.CodeNotFound
	CodeConflict             = apitypes.CodeConflict
	CodePreconditionFailed   = apitypes.CodePreconditionFailed
	CodeUnauthorized         = apitypes.CodeUnauthorized
	CodeForbidden            = apitypes.CodeForbidden
	CodeTooLarge             = apitypes.CodeTooLarge
	CodeUnsupportedMediaType = apitypes.CodeUnsupportedMediaType
	CodeMethodNotAllowed     = apitypes.CodeMethodNotAllowed
	CodeNotSupported         = apitypes.CodeNotSupported
	CodeInternal             = apitypes.CodeInternal
	CodeInsufficientStorage  = apitypes.CodeInsufficientStorage
	CodeUnavailable          = apitypes.CodeUnavailable
	CodeJoinFailed           = apitypes.CodeJoinFailed
	CodeNotApplied           = apitypes.CodeNotApplied
)

// apiError is a failed request on its way to the client. Handlers return it
// (also from inside a store transaction, which aborts the transaction) and
// writeError turns it into the one JSON error shape.
type apiError struct {
	Status  int
	Code    string
	Message string
	Fields  fielderr.List
	// heldBack details a 429 held_back answer.
	heldBack *apitypes.HeldBack
	// missing details a refused cluster leave (409).
	missing []apitypes.ClusterMissing
	// cause is logged, never sent: it may carry internal details.
	cause error
}

func (e *apiError) Error() string {
	if e.cause != nil {
		return fmt.Sprintf("%s: %s: %v", e.Code, e.Message, e.cause)
	}
	return e.Code + ": " + e.Message
}

func (e *apiError) Unwrap() error { return e.cause }

func errInvalid(message string, fields ...fielderr.FieldError) *apiError {
	return &apiError{Status: http.StatusBadRequest, Code: CodeInvalid, Message: message, Fields: fields}
}

// errUnprocessable is a well-formed request whose values are not acceptable.
func errUnprocessable(fields fielderr.List) *apiError {
	msg := "invalid input"
	if len(fields) == 1 {
		msg = fields[0].Field + ": " + fields[0].Message
	}
	return &apiError{Status: http.StatusUnprocessableEntity, Code: CodeInvalid, Message: msg, Fields: fields}
}

func errField(status int, code, field, message string) *apiError {
	return &apiError{Status: status, Code: code, Message: message, Fields: fielderr.List{{Field: field, Message: message}}}
}

func errNotFound(field, message string) *apiError {
	return errField(http.StatusNotFound, CodeNotFound, field, message)
}

// errConflictFields is a 409 naming every conflicting field.
func errConflictFields(fields fielderr.List) *apiError {
	msg := "conflict"
	if len(fields) == 1 {
		msg = fields[0].Field + ": " + fields[0].Message
	} else if len(fields) > 1 {
		msg = fmt.Sprintf("%d conflicts, see fields", len(fields))
	}
	return &apiError{Status: http.StatusConflict, Code: CodeConflict, Message: msg, Fields: fields}
}

func errConflict(field, message string) *apiError {
	if field == "" {
		return &apiError{Status: http.StatusConflict, Code: CodeConflict, Message: message}
	}
	return errField(http.StatusConflict, CodeConflict, field, message)
}

func errInternal(cause error) *apiError {
	return &apiError{Status: http.StatusInternalServerError, Code: CodeInternal, Message: "internal error; see the agent's log", cause: cause}
}

// toAPIError classifies any error a handler may meet. Validation errors from
// pools and certs become 422 with their fields; storage sentinels map to
// their status; everything else is internal and its text stays in the log.
func toAPIError(err error) *apiError {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae
	}
	if fields, ok := fielderr.From(err); ok {
		return errUnprocessable(fields)
	}
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		return &apiError{Status: http.StatusRequestEntityTooLarge, Code: CodeTooLarge,
			Message: fmt.Sprintf("request body exceeds %d bytes", mbe.Limit)}
	case errors.Is(err, storage.ErrNotFound):
		return &apiError{Status: http.StatusNotFound, Code: CodeNotFound, Message: "not found"}
	case errors.Is(err, storage.ErrInvalid):
		// The store's own checks (key and index sizes) back up the
		// pools and certs validation; its messages carry no key material.
		return &apiError{Status: http.StatusUnprocessableEntity, Code: CodeInvalid, Message: err.Error(), cause: err}
	case errors.Is(err, storage.ErrDiskFull):
		// The cause is the condition, not a bug: say it, and that it
		// heals by itself once space is freed.
		return &apiError{Status: http.StatusInsufficientStorage, Code: CodeInsufficientStorage,
			Message: "the node's disk is full: nothing was stored; writes resume by themselves once space is freed", cause: err}
	case errors.Is(err, storage.ErrTooLarge):
		return &apiError{Status: http.StatusRequestEntityTooLarge, Code: CodeTooLarge, Message: err.Error(), cause: err}
	case errors.Is(err, storage.ErrNotReady):
		return &apiError{Status: http.StatusServiceUnavailable, Code: CodeUnavailable, Message: err.Error(), cause: err}
	case errors.Is(err, storage.ErrClosed):
		return &apiError{Status: http.StatusServiceUnavailable, Code: CodeInternal,
			Message: "the store is closed; the agent is shutting down", cause: err}
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return &apiError{Status: http.StatusServiceUnavailable, Code: CodeInternal,
			Message: "the request was cancelled or timed out", cause: err}
	}
	return errInternal(err)
}

// writeError sends the JSON error shape. The message and fields are built
// by this package from input names and validation texts; an internal cause
// goes to the log only, so neither stored secrets nor paths leak.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	ae := toAPIError(err)
	switch {
	case ae.Code == CodeNotApplied:
		// The write is stored; the cluster is slow or partitioned.
		s.logger.Warn("write not applied by every alive member within wait_all",
			zap.String("request_id", requestID(r.Context())),
			zap.String("method", r.Method),
			zap.String("path", r.URL.Path),
			zap.Any("missing", ae.missing))
	case ae.Status >= 500:
		s.logger.Error("admin request failed",
			zap.String("request_id", requestID(r.Context())),
			zap.String("method", r.Method),
			zap.String("path", r.URL.Path),
			zap.Error(err))
	}
	if ae.Status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="singularity-edge"`)
	}
	body := apitypes.ErrorBody{Error: apitypes.ErrorDetail{Code: ae.Code, Message: ae.Message, HeldBack: ae.heldBack, Missing: ae.missing}}
	if hb := ae.heldBack; hb != nil {
		w.Header().Set("Retry-After", strconv.Itoa(max(1, int(math.Ceil(time.Until(hb.Until).Seconds())))))
	}
	for _, f := range ae.Fields {
		body.Error.Fields = append(body.Error.Fields, apitypes.FieldError{Field: f.Field, Message: f.Message})
	}
	writeJSON(w, ae.Status, body)
}

// writeJSON writes v with status. Encoding our own DTOs cannot fail in a way
// the client could be told about once the header is out, so the error is
// dropped deliberately.
func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		b = []byte(`{"error":{"code":"internal","message":"encoding the response failed"}}`)
	}
	h := w.Header()
	h.Set("Content-Type", "application/json; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}
