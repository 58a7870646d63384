package pools

import (
	"context"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/singularity-ng/singularity-edge/storage"
)

// TestHealthCheckUsesRequestTLS: in full_strict mode a backend whose
// certificate requests cannot verify fails its TCP and HTTP checks too, with
// the reason in LastError; the pool's CA bundle and server name make both
// pass; a wrong server name fails them again.
func TestHealthCheckUsesRequestTLS(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	t.Cleanup(srv.Close)
	caPEM := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}))
	for _, tc := range []struct {
		name       string
		ca, sni    string
		pass       bool
		wantReason string
	}{
		{"system roots", "", "", false, "certificate"},
		{"pool CA bundle", caPEM, "", true, ""},
		{"pool CA and server name", caPEM, "example.com", true, ""},
		{"wrong server name", caPEM, "wrong.test", false, "wrong.test"},
	} {
		for _, typ := range []string{HealthCheckTCP, HealthCheckHTTP, HealthCheckHTTPS} {
			t.Run(tc.name+" "+typ, func(t *testing.T) {
				pool := storage.Pool{
					Name: "p", SSLMode: SSLModeFullStrict, BackendCA: tc.ca, BackendServerName: tc.sni,
					HealthCheckInterval: time.Hour,
					HealthCheck:         storage.HealthCheck{Type: typ, Path: "/", Timeout: 2 * time.Second, Rise: 1, Fall: 1},
				}
				b := backendFor(t, "b", "p", "http://"+srv.Listener.Addr().String())
				p := NewTable([]storage.Pool{pool}, []storage.Backend{b}, nil, TableOptions{}).Pool("p")
				be := p.Backend("b")
				if !be.TLS().Enabled || !be.TLS().Verify {
					t.Fatalf("full_strict backend TLS %+v", be.TLS())
				}
				c := newChecker(p.Name, be, *p.health)
				err := c.check(context.Background())
				be.live.recordCheck(be.Addr, p.health, err, time.Now())
				if tc.pass != (err == nil) {
					t.Fatalf("check error %v, want pass=%v", err, tc.pass)
				}
				if !tc.pass {
					if st := be.State(); !strings.Contains(st.LastError, tc.wantReason) || be.Healthy() {
						t.Fatalf("healthy=%v, last error %q, want it to mention %q", be.Healthy(), st.LastError, tc.wantReason)
					}
				}
			})
		}
	}
}

func TestParseCABundle(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	t.Cleanup(srv.Close)
	good := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}))
	for _, tc := range []struct {
		name, in string
		ok       bool
	}{
		{"one certificate", good, true},
		{"two certificates", good + good, true},
		{"empty", "", false},
		{"not PEM", "hello", false},
		{"a key", string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1}})), false},
		{"bad DER", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1, 2}})), false},
	} {
		if _, err := ParseCABundle(tc.in); (err == nil) != tc.ok {
			t.Errorf("%s: err %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}
