package agent

import (
	"context"
	"slices"
	"testing"

	"go.uber.org/zap"

	"github.com/singularity-ng/singularity-edge/storage"
)

// TestAutoCertWantedNames: only TLS-terminating pools with an
// ssl_domain, no pinned certificate and auto_cert on want a certificate;
// wildcards need DNS-01; for Let's Encrypt only public names qualify.
func TestAutoCertWantedNames(t *testing.T) {
	cfg := storage.DefaultConfig()
	cfg.Dir = t.TempDir()
	cfg.SyncWAL = false
	st, err := storage.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	pools := []*storage.Pool{
		{Name: "a-flexible", SSLMode: "flexible", SSLDomain: "shop.example.com"},
		{Name: "b-full", SSLMode: "full", SSLDomain: "api.example.com"},
		{Name: "c-off", SSLMode: "off", Hosts: []string{"plain.example.com"}},
		{Name: "d-passthrough", SSLMode: "passthrough", SSLDomain: "pass.example.com"},
		{Name: "e-opted-out", SSLMode: "flexible", SSLDomain: "manual.example.com", NoAutoCert: true},
		{Name: "f-pinned", SSLMode: "flexible", SSLDomain: "pinned.example.com", SSLCertID: "abc"},
		{Name: "g-wildcard", SSLMode: "flexible", SSLDomain: "*.wild.example.com"},
		{Name: "h-private", SSLMode: "flexible", SSLDomain: "site.test"},
	}
	if _, err := st.Update(context.Background(), func(tx *storage.Tx) error {
		for _, p := range pools {
			if err := tx.PutPool(p); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		wildcard, publicOnly bool
		want                 []string
	}{
		{false, false, []string{"shop.example.com", "api.example.com", "site.test"}},
		{true, false, []string{"shop.example.com", "api.example.com", "*.wild.example.com", "site.test"}},
		{true, true, []string{"shop.example.com", "api.example.com", "*.wild.example.com"}},
	} {
		a := &autoCert{store: st, wildcard: tc.wildcard, publicOnly: tc.publicOnly, log: zap.NewNop()}
		got, err := a.wantedNames(context.Background())
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("wildcard=%v publicOnly=%v: %v, %v; want %v", tc.wildcard, tc.publicOnly, got, err, tc.want)
		}
	}
}
