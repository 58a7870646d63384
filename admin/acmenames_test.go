package admin

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/singularity-ng/singularity-edge/internal/fielderr"
)

// checkACMESendAsNamed fails unless every `send "X"` refusal of in's
// names names a name the order takes: with X in that field the field is
// refused for nothing but repeating another name. An order taken holds
// the names exactly as sent.
func checkACMESendAsNamed(t *testing.T, in createCertificateInput) {
	t.Helper()
	names, err := acmeRequestNames(in)
	if err == nil {
		want := in.Domains
		if in.Domain != "" {
			want = []string{in.Domain}
		}
		if !slices.Equal(names, want) {
			t.Fatalf("%q %q: taken as %q", in.Domain, in.Domains, names)
		}
		return
	}
	fields, ok := fielderr.From(err)
	if !ok {
		t.Fatalf("%q %q: %v is no field error", in.Domain, in.Domains, err)
	}
	for _, fe := range fields {
		m := sendNamed.FindStringSubmatch(fe.Message)
		if m == nil {
			continue
		}
		_, x, err := sentValue(m)
		if err != nil {
			t.Fatalf("%s: %q names no quoted value: %v", fe.Field, fe.Message, err)
		}
		again := in
		again.Domains = slices.Clone(in.Domains)
		switch i, isList := strings.CutPrefix(fe.Field, "domains["); {
		case fe.Field == "domain":
			again.Domain = x
		case isList:
			n, err := strconv.Atoi(strings.TrimSuffix(i, "]"))
			if err != nil || n >= len(again.Domains) {
				t.Fatalf("%q %q: %s names no name sent", in.Domain, in.Domains, fe.Field)
			}
			again.Domains[n] = x
		default:
			t.Fatalf("%q %q: %s: %q names no name field", in.Domain, in.Domains, fe.Field, fe.Message)
		}
		_, err = acmeRequestNames(again)
		list, _ := fielderr.From(err)
		for _, ae := range list {
			if ae.Field == fe.Field && !strings.Contains(ae.Message, "repeats") {
				t.Fatalf("%q %q: %s: %q; sent as told: %q", in.Domain, in.Domains, fe.Field, fe.Message, ae.Message)
			}
		}
	}
}

// TestACMENamesSendOnlyAValidName: a name refused for its spelling names
// the one to send only when that one is a name a certificate can hold;
// otherwise the refusal says what is wrong with it.
func TestACMENamesSendOnlyAValidName(t *testing.T) {
	tests := []struct {
		domain  string
		domains []string
		field   string
		msg     string
	}{
		{domain: "A.example.test", field: "domain", msg: `send "a.example.test"`},
		{domain: "a.example.test.", field: "domain", msg: `send "a.example.test"`},
		{domain: "A_B.test", field: "domain", msg: "character not allowed"},
		{domain: "a.test..", field: "domain", msg: "ends with a dot"},
		{domain: ".", field: "domain", msg: "is empty"},
		{domain: "-A.test", field: "domain", msg: "hyphen"},
		{domains: []string{"a.test", "B.test"}, field: "domains[1]", msg: `send "b.test"`},
		{domains: []string{"a.test", "B_C.test"}, field: "domains[1]", msg: "character not allowed"},
		{domains: []string{"A.test", "b..test."}, field: "domains[1]", msg: "empty label"},
		{domains: []string{"A.test", "b..test."}, field: "domains[0]", msg: `send "a.test"`},
		{domains: []string{"a.test", "."}, field: "domains[1]", msg: "is empty"},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%q%q", tt.domain, tt.domains), func(t *testing.T) {
			in := createCertificateInput{Domains: tt.domains}
			in.Domain = tt.domain
			_, err := acmeRequestNames(in)
			list, ok := fielderr.From(err)
			if !ok {
				t.Fatalf("want a field error on %s, got %v", tt.field, err)
			}
			found := false
			for _, fe := range list {
				found = found || fe.Field == tt.field && strings.Contains(fe.Message, tt.msg)
			}
			if !found {
				t.Fatalf("want %q on %s, got %v", tt.msg, tt.field, list)
			}
			checkACMESendAsNamed(t, in)
		})
	}
}

// FuzzACMENamesSendAsNamed runs checkACMESendAsNamed over a domain or a
// list of domains (names separated by commas).
func FuzzACMENamesSendAsNamed(f *testing.F) {
	for _, s := range []string{"A.test", "a.test.", "A_B.test", "a..", ".", "a.test,A.test", "*.A.test", "a,b,A"} {
		f.Add(false, s)
		f.Add(true, s)
	}
	f.Fuzz(func(t *testing.T, list bool, names string) {
		var in createCertificateInput
		if list {
			in.Domains = strings.Split(names, ",")
		} else {
			in.Domain = names
		}
		checkACMESendAsNamed(t, in)
	})
}
