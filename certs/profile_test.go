package certs

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/singularity-ng/singularity-edge/internal/fielderr"
)

// profileIssuer is an issuer that only says which profiles it offers.
type profileIssuer struct {
	key      string
	profiles map[string]string
	err      error
}

func (p profileIssuer) Key() string { return p.key }
func (p profileIssuer) Issue(context.Context, IssueRequest) (*IssuedCertificate, error) {
	return nil, errors.New("profileIssuer does not issue")
}
func (p profileIssuer) Profiles(context.Context) (map[string]string, error) { return p.profiles, p.err }

// silentIssuer cannot say what it offers: no Profiles method.
type silentIssuer struct{}

func (silentIssuer) Key() string { return "silent" }
func (silentIssuer) Issue(context.Context, IssueRequest) (*IssuedCertificate, error) {
	return nil, errors.New("silentIssuer does not issue")
}

func TestCheckProfile(t *testing.T) {
	le := profileIssuer{key: "le", profiles: map[string]string{"classic": "", "shortlived": ""}}
	other := profileIssuer{key: "other", profiles: map[string]string{"tlsserver": ""}}
	none := profileIssuer{key: "none"}
	down := profileIssuer{key: "down", err: errors.New("connection refused")}
	for _, tc := range []struct {
		name    string
		issuers []Issuer
		profile string
		field   string // a substring of the field error; "" with err false: accepted
		err     bool   // an error that is not the input's fault
	}{
		{"offered", []Issuer{le}, "classic", "", false},
		{"offered by the second issuer", []Issuer{le, other}, "tlsserver", "", false},
		{"offered by none", []Issuer{le, other}, "default", "offers classic, shortlived, tlsserver", false},
		{"no profiles at all", []Issuer{none}, "classic", "offers no profiles", false},
		{"case matters", []Issuer{le}, "CLASSIC", "offers classic, shortlived", false},
		{"issuer that cannot say is trusted", []Issuer{le, silentIssuer{}}, "anything", "", false},
		{"offered despite a directory down", []Issuer{down, le}, "classic", "", false},
		{"directory down, not offered elsewhere", []Issuer{down, le}, "default", "", true},
		{"not a name, no CA asked", []Issuer{down}, "a b", "not a profile name", false},
		{"empty", []Issuer{le}, "", "is empty", false},
		{"too long", []Issuer{le}, strings.Repeat("x", 65), "at most 64", false},
		{"longest name", []Issuer{silentIssuer{}}, strings.Repeat("x", 64), "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := openStore(t)
			b := NewStoreBackend(s, nil)
			mcfg := DefaultManagerConfig()
			mcfg.Registerer = prometheus.NewPedanticRegistry()
			m, err := NewManager(mcfg, tc.issuers, b, b, oneMember("self"))
			if err != nil {
				t.Fatal(err)
			}
			err = m.CheckProfile(context.Background(), tc.profile)
			fields, isField := fielderr.From(err)
			switch {
			case tc.err:
				if err == nil || isField {
					t.Fatalf("CheckProfile(%q) = %v, want an error that is not a field error", tc.profile, err)
				}
			case tc.field == "":
				if err != nil {
					t.Fatalf("CheckProfile(%q) = %v, want nil", tc.profile, err)
				}
			default:
				if !isField || len(fields) != 1 || fields[0].Field != "profile" || !strings.Contains(fields[0].Message, tc.field) {
					t.Fatalf("CheckProfile(%q) = %v, want a field error on profile containing %q", tc.profile, err, tc.field)
				}
			}
		})
	}
}
