package admin

import (
	"errors"
	"net/http"

	"github.com/singularity-ng/singularity-edge/certs"
)

// CodeHeldBack: the rate-limit budget held an ACME order back.
const CodeHeldBack = "held_back"

// acmeError maps what a Renewer returns to the API's answer: a budget
// refusal is 429 with its reason, another agent working on the
// certificate 409. Anything else goes through toAPIError (a CA failure is
// a 500 whose cause stays in the log; the certificate's renewal state
// keeps the last error).
func acmeError(err error) error {
	var hb *certs.HeldBackError
	switch {
	case errors.As(err, &hb):
		return &apiError{Status: http.StatusTooManyRequests, Code: CodeHeldBack, Message: hb.Error(), cause: err}
	case errors.Is(err, certs.ErrLeaseHeld):
		return &apiError{Status: http.StatusConflict, Code: CodeConflict,
			Message: "another agent is renewing this certificate now; retry later", cause: err}
	case errors.Is(err, certs.ErrNotACME):
		return &apiError{Status: http.StatusConflict, Code: CodeNotSupported, Message: err.Error(), cause: err}
	}
	return err
}
