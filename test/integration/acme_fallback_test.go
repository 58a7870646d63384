package integration

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/singularity-ng/singularity-edge/apitypes"
)

// TestACMEFallbackDirectory runs an agent whose --acme-directory is a
// closed port and whose --acme-fallback-directory is Pebble: the order
// fails on the primary, the fallback issues, and the renewal state
// records the fallback as the certificate's issuer (so renewals and ARI
// go to the CA that issued it).
func TestACMEFallbackDirectory(t *testing.T) {
	e := startPebble(t)
	token := newToken(t)
	bundle := filepath.Join(t.TempDir(), "pebble-ca.pem")
	if err := os.WriteFile(bundle, e.CAPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	primary := "https://" + freeAddr(t) + "/dir" // nothing listens there
	a := &agentProc{
		t: t, dataDir: t.TempDir(), http: e.httpAddr, https: e.tlsAddr, admin: freeAddr(t),
		env: append(os.Environ(), "EDGE_ADMIN_TOKEN="+token, "EDGE_ENCRYPTION_KEY="+newToken(t)+newToken(t)),
	}
	a.start("--acme-directory", primary, "--acme-fallback-directory", e.Dir,
		"--acme-ca-bundle", bundle, "--acme-email", "ops@acme.test")
	t.Cleanup(a.stop)

	code, _, body := a.apiRaw(token, "POST", "/api/certificates", map[string]any{"domain": "fallback.acme.test"})
	if code != http.StatusCreated {
		t.Fatalf("POST: %d %s", code, body)
	}
	var ct apitypes.Certificate
	if err := json.Unmarshal([]byte(body), &ct); err != nil {
		t.Fatal(err)
	}
	if ct.Renewal == nil || ct.Renewal.Issuer != e.Dir || ct.Renewal.LastSuccess == nil {
		t.Fatalf("renewal state %s: want issuer %s (the fallback)", body, e.Dir)
	}
	if n := e.Orders(); n != 1 {
		t.Fatalf("pebble saw %d orders, want 1", n)
	}
}
