package integration

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/singularity-ng/singularity-edge/certs"
)

// returnsIssuer tells when its issuer's Issue returned, whoever was still
// waiting for it.
type returnsIssuer struct {
	certs.Issuer
	returned chan error
}

func (r *returnsIssuer) Issue(ctx context.Context, req certs.IssueRequest) (*certs.IssuedCertificate, error) {
	res, err := r.Issuer.Issue(ctx, req)
	r.returned <- err
	return res, err
}

var validStatus = regexp.MustCompile(`"status":\s*"valid"`)

// An order past OrderTimeout is abandoned, and so is the work behind it:
// with a CA whose authorization stays pending and that asks to be polled
// again in an hour, the issuer's call returns as soon as the order's
// context ends. Before, lego's poll slept without a context, half an hour
// to an hour and a half here, so the abandoned goroutine (with the lego
// client, the certificate's key and the presented token) outlived the
// order by that much, one more per abandoned order.
func TestAbandonedOrderEndsItsWork(t *testing.T) {
	e := startPebble(t)
	ed := newEdge(t, e, nil)
	// Pebble validates at once; the proxy shows every authorization and
	// challenge as still pending, and asks for the next poll in an hour.
	dir, caPEM := startPebbleProxy(t, e, nil, func(resp *http.Response) error {
		path := resp.Request.URL.Path
		if resp.Request.Method != http.MethodPost || !(strings.HasPrefix(path, "/authZ/") || strings.HasPrefix(path, "/chalZ/")) {
			return nil
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return err
		}
		body = validStatus.ReplaceAll(body, []byte(`"status": "pending"`))
		resp.Body = io.NopCloser(bytes.NewReader(body))
		resp.ContentLength = int64(len(body))
		resp.Header.Set("Content-Length", strconv.Itoa(len(body)))
		resp.Header.Set("Retry-After", "3600")
		return nil
	})
	iss := &returnsIssuer{Issuer: ed.issuer(t, e, func(c *certs.ACMEConfig) {
		c.DirectoryURL, c.CABundlePEM = dir, caPEM
		c.Challenges = []string{certs.ChallengeHTTP01}
	}), returned: make(chan error, 1)}
	m := ed.manager(t, "a", []certs.Issuer{iss}, func(c *certs.ManagerConfig) {
		c.Registerer = prometheus.NewRegistry()
		c.OrderTimeout = 3 * time.Second
	})
	_, err := m.Obtain(acmeCtx(t), []string{"stuck.example.com"}, "")
	if err == nil || !strings.Contains(err.Error(), "abandoned") {
		t.Fatalf("Obtain of a certificate whose authorization never completes: %v, want abandoned", err)
	}
	// A bound that only catches the old behaviour (30 to 90 minutes):
	// the call ends at the cancellation, whatever the machine's load.
	select {
	case err := <-iss.returned:
		if err == nil {
			t.Fatal("the abandoned order succeeded")
		}
		t.Logf("the abandoned order's call returned: %v", err)
	case <-time.After(2 * time.Minute):
		t.Fatal("the abandoned order's call is still waiting for the CA two minutes after the order was abandoned")
	}
}
