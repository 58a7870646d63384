package pools

import (
	"context"
	"crypto/tls"
	"encoding/pem"
	"fmt"
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

// TestBackendTLSByMode: whether a backend leg speaks TLS and verifies, for
// each SSL mode, backend scheme, validate_backend_cert and ssl_verify, and
// a real handshake with the resulting tls.Config against a backend whose
// self-signed certificate nothing trusts: it completes exactly when the
// leg does not verify. An https:// backend gets TLS in every mode; full
// never verifies at the pool's word, even from a row that still holds
// validate_backend_cert true.
func TestBackendTLSByMode(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	t.Cleanup(srv.Close)
	addr := srv.Listener.Addr().String()
	for _, tc := range []struct {
		mode, scheme        string
		validate, sslVerify bool
		tls, verify         bool
	}{
		{mode: SSLModeOff, scheme: "http"},
		{mode: SSLModeOff, scheme: "https", tls: true},
		{mode: SSLModeOff, scheme: "https", validate: true, tls: true, verify: true},
		{mode: SSLModeFlexible, scheme: "http"},
		{mode: SSLModeFlexible, scheme: "https", tls: true},
		{mode: SSLModeFlexible, scheme: "https", validate: true, tls: true, verify: true},
		{mode: SSLModeFlexible, scheme: "https", sslVerify: true, tls: true, verify: true},
		{mode: SSLModeFull, scheme: "https", tls: true},
		{mode: SSLModeFull, scheme: "https", validate: true, tls: true},
		{mode: SSLModeFull, scheme: "https", sslVerify: true, tls: true, verify: true},
		{mode: SSLModeFullStrict, scheme: "https", validate: true, tls: true, verify: true},
		{mode: SSLModeFullStrict, scheme: "https", tls: true, verify: true},
	} {
		name := fmt.Sprintf("%s %s validate=%v ssl_verify=%v", tc.mode, tc.scheme, tc.validate, tc.sslVerify)
		t.Run(name, func(t *testing.T) {
			pool := storage.Pool{Name: "p", SSLMode: tc.mode, ValidateBackendCert: tc.validate, HealthCheckInterval: time.Hour,
				HealthCheck: storage.HealthCheck{Type: HealthCheckTCP, Timeout: time.Second, Rise: 1, Fall: 1}}
			b := backendFor(t, "b", "p", tc.scheme+"://"+addr)
			b.SSLVerify = tc.sslVerify
			bt := NewTable([]storage.Pool{pool}, []storage.Backend{b}, nil, TableOptions{}).Pool("p").Backend("b").TLS()
			if bt.Enabled != tc.tls || bt.Verify != tc.verify {
				t.Fatalf("TLS %v verify %v, want %v %v", bt.Enabled, bt.Verify, tc.tls, tc.verify)
			}
			if !bt.Enabled {
				return
			}
			conn, err := tls.Dial("tcp", addr, bt.Config(nil, nil))
			if err == nil {
				conn.Close()
			}
			if (err == nil) == tc.verify {
				t.Fatalf("handshake with a self-signed backend: %v, want it to fail=%v", err, tc.verify)
			}
		})
	}
}

func TestVerifiesBackendCerts(t *testing.T) {
	for _, tc := range []struct {
		mode     string
		validate bool
		want     bool
	}{
		{SSLModeFullStrict, true, true},
		{SSLModeFullStrict, false, true},
		{SSLModeFull, false, false},
		{SSLModeFull, true, false},
		{SSLModeFlexible, true, true},
		{SSLModeFlexible, false, false},
		{SSLModeOff, true, true},
		{SSLModePassthrough, true, true},
	} {
		if got := VerifiesBackendCerts(tc.mode, tc.validate); got != tc.want {
			t.Errorf("VerifiesBackendCerts(%s, %v) = %v, want %v", tc.mode, tc.validate, got, tc.want)
		}
	}
}
