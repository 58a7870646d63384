package certs

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/singularity-ng/singularity-edge/internal/fielderr"
	"github.com/singularity-ng/singularity-edge/storage"
)

// recordingDNSProvider answers dns-01 by doing nothing; the test only
// needs an issuer that offers it.
type recordingDNSProvider struct{}

func (recordingDNSProvider) Present(domain, token, keyAuth string) error { return nil }
func (recordingDNSProvider) CleanUp(domain, token, keyAuth string) error { return nil }

func TestObtainWildcardNeedsDNS01(t *testing.T) {
	ctx := context.Background()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dir := "https://" + ln.Addr().String() + "/dir" // refuses connections once closed
	_ = ln.Close()

	for _, tc := range []struct {
		name       string
		challenges []string
		names      []string
		wantField  bool
	}{
		{"wildcard without dns-01", []string{ChallengeHTTP01, ChallengeTLSALPN01}, []string{"*.example.com"}, true},
		{"wildcard among plain names", []string{ChallengeHTTP01}, []string{"example.com", "*.example.com"}, true},
		{"wildcard with dns-01", []string{ChallengeHTTP01, ChallengeDNS01}, []string{"*.example.com"}, false},
		{"plain name without dns-01", []string{ChallengeHTTP01}, []string{"example.com"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := openStore(t)
			b := NewStoreBackend(s, nil)
			icfg := DefaultACMEConfig()
			icfg.DirectoryURL = dir
			icfg.HTTPTimeout = 2 * time.Second
			icfg.Challenges = tc.challenges
			icfg.DNS01Provider = recordingDNSProvider{}
			iss, err := NewACMEIssuer(icfg, b, b)
			if err != nil {
				t.Fatal(err)
			}
			mcfg := DefaultManagerConfig()
			mcfg.Registerer = prometheus.NewPedanticRegistry()
			m, err := NewManager(mcfg, []Issuer{iss}, b, b, oneMember("self"))
			if err != nil {
				t.Fatal(err)
			}
			_, err = m.Obtain(ctx, tc.names, "")
			if err == nil {
				t.Fatal("Obtain succeeded against a CA that refuses connections")
			}
			fields, isField := fielderr.From(err)
			if isField != tc.wantField {
				t.Fatalf("Obtain error %v: field error %v, want %v", err, isField, tc.wantField)
			}
			if !tc.wantField {
				return
			}
			if len(fields) == 0 || fields[0].Field != "domains" {
				t.Errorf("fields %+v, want one on domains", fields)
			}
			// Refused before anything was stored: no renewal state.
			names, _ := NormalizeNames("domains", tc.names)
			st, err := b.RenewalState(ctx, CertificateID(names))
			if err == nil && !st.LastAttempt.IsZero() {
				t.Errorf("renewal state written for a refused request: %+v", st)
			} else if err != nil && !errors.Is(err, storage.ErrNotFound) {
				t.Errorf("RenewalState: %v", err)
			}
		})
	}
}
