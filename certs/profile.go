package certs

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/singularity-ng/singularity-edge/internal/fielderr"
)

// ProfileOfferer is an Issuer that can say which certificate profiles its
// CA offers (the directory's meta.profiles, draft-ietf-acme-profiles).
type ProfileOfferer interface {
	// Profiles maps each offered profile's name to its description.
	Profiles(ctx context.Context) (map[string]string, error)
}

// maxProfileLen bounds a profile name. The draft gives names no grammar;
// the CAs that offer profiles use short words ("classic", "tlsserver",
// "shortlived").
const maxProfileLen = 64

// ErrInvalidProfile: the profile is not a profile name, or no issuer's CA
// offers it. Every such refusal is a *ProfileError.
var ErrInvalidProfile = errors.New("certs: invalid acme profile")

// ProfileError refuses a certificate profile. It matches
// ErrInvalidProfile with errors.Is and unwraps to a field error for
// "profile" (the admin API's 422).
type ProfileError struct {
	Profile string
	// Offered lists the profiles the CAs offer, sorted; empty when they
	// offer none or the name was refused before any CA was asked.
	Offered []string
	// Stored: the profile was not asked for now but kept in the
	// certificate's renewal state by an earlier order.
	Stored bool
	field  error
}

func (e *ProfileError) Error() string {
	msg := e.field.Error()
	if f, ok := fielderr.From(e.field); ok && len(f) == 1 {
		msg = f[0].Message
	}
	return "certs: profile " + msg
}

// Is makes errors.Is(err, ErrInvalidProfile) true.
func (e *ProfileError) Is(target error) bool { return target == ErrInvalidProfile }

// Unwrap returns the field error.
func (e *ProfileError) Unwrap() error { return e.field }

// asStored returns the refusal of a profile kept in the renewal state by
// an earlier order, saying how to get out of it; other errors are
// returned as they are.
func asStored(err error) error {
	var pe *ProfileError
	if !errors.As(err, &pe) {
		return err
	}
	offered := "order the certificate again naming a profile the CA offers (" + strings.Join(pe.Offered, ", ") + ")"
	if len(pe.Offered) == 0 {
		offered = "the CA offers no profiles now"
	}
	return &ProfileError{Profile: pe.Profile, Offered: pe.Offered, Stored: true,
		field: fielderr.New("profile", fmt.Sprintf("%q, kept from an earlier order of this certificate, is not offered by the CA, so it is not ordered or renewed: %s, or delete the certificate and order it again without a profile", pe.Profile, offered))}
}

// CheckProfile refuses, before anything is stored or counted, a profile
// that no issuer can order: an order for it would be refused by every
// issuer after the budget counted it, and the failure and the profile
// would be saved in the certificate's renewal state, where every later
// renewal would ask for it again. The refusal is a field error for
// "profile" naming the profiles that are offered. An issuer that cannot
// say what it offers is trusted to try. When a directory that might offer
// the profile cannot be read, the error is not a field error: the input
// may be right.
func (m *Manager) CheckProfile(ctx context.Context, profile string) error {
	if err := checkProfileName(profile); err != nil {
		return err
	}
	offered := map[string]bool{}
	var errs []error
	for _, iss := range m.issuers {
		po, ok := iss.(ProfileOfferer)
		if !ok {
			return nil
		}
		ps, err := po.Profiles(ctx)
		if err != nil {
			errs = append(errs, fmt.Errorf("reading the profiles of %s: %w", iss.Key(), err))
			continue
		}
		if _, ok := ps[profile]; ok {
			return nil
		}
		for name := range ps {
			offered[name] = true
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("certs: checking profile %q: %w", profile, errors.Join(errs...))
	}
	if len(offered) == 0 {
		return &ProfileError{Profile: profile, field: fielderr.New("profile", fmt.Sprintf("%q is not offered: the CA offers no profiles; leave profile empty", profile))}
	}
	names := make([]string, 0, len(offered))
	for name := range offered {
		names = append(names, name)
	}
	slices.Sort(names)
	return &ProfileError{Profile: profile, Offered: names,
		field: fielderr.New("profile", fmt.Sprintf("%q is not offered by the CA; it offers %s", profile, strings.Join(names, ", ")))}
}

// checkProfileName refuses what cannot be a profile name before a CA is
// asked: empty, long, or anything but letters, digits, '-', '_' and '.'.
func checkProfileName(p string) error {
	refuse := func(msg string) error { return &ProfileError{Profile: p, field: fielderr.New("profile", msg)} }
	if p == "" {
		return refuse("is empty; leave it out for the CA's default profile")
	}
	if len(p) > maxProfileLen {
		return refuse(fmt.Sprintf("is %d characters long; a profile name has at most %d", len(p), maxProfileLen))
	}
	for _, c := range p {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_', c == '.':
		default:
			return refuse(fmt.Sprintf("%q is not a profile name: it has only letters, digits, '-', '_' and '.' (\"classic\", \"shortlived\")", p))
		}
	}
	return nil
}
