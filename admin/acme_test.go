package admin

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/singularity-ng/singularity-edge/certs"
	"github.com/singularity-ng/singularity-edge/storage"
)

func TestACMEError(t *testing.T) {
	hb := &certs.HeldBackError{Limit: "orders_per_account", Scope: "https://ca/dir", Count: 250, Max: 250, Window: 3 * time.Hour, Until: time.Now()}
	for _, tc := range []struct {
		err    error
		status int
		code   string
		msg    string
	}{
		{fmt.Errorf("renew: %w", hb), http.StatusTooManyRequests, CodeHeldBack, "orders_per_account"},
		{fmt.Errorf("%w: cert/x held by b", certs.ErrLeaseHeld), http.StatusConflict, CodeConflict, "another agent"},
		{fmt.Errorf("x: %w", storage.ErrNotFound), http.StatusNotFound, CodeNotFound, "not found"},
		{errors.New("acme: error: 400 :: urn:ietf:params:acme:error:connection :: could not resolve"), http.StatusInternalServerError, CodeInternal, "see the agent's log"},
	} {
		ae := toAPIError(acmeError(tc.err))
		if ae == nil || ae.Status != tc.status || ae.Code != tc.code || !strings.Contains(ae.Message, tc.msg) {
			t.Errorf("acmeError(%v) = %+v", tc.err, ae)
		}
	}
}
