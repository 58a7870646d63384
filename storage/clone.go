package storage

import (
	"maps"
	"slices"
	"time"
)

// The store copies records on the way in and out so that a caller mutating
// a returned value (its maps and slices included) never changes what the
// store holds. Normalization makes a record equal to what decoding its
// encoding yields: UTC times without monotonic readings, nil for empty
// slices and maps.

func normTime(t time.Time) time.Time {
	if t.IsZero() {
		return time.Time{}
	}
	return t.UTC().Round(0)
}

func cloneStrings(s []string) []string {
	if len(s) == 0 {
		return nil
	}
	return slices.Clone(s)
}

func cloneMeta(m map[string]string) map[string]string {
	if len(m) == 0 {
		return nil
	}
	return maps.Clone(m)
}

func cloneCertificate(c Certificate) Certificate {
	c.Names = cloneStrings(c.Names)
	c.Metadata = cloneMeta(c.Metadata)
	c.NotBefore = normTime(c.NotBefore)
	c.ExpiresAt = normTime(c.ExpiresAt)
	c.InsertedAt = normTime(c.InsertedAt)
	c.UpdatedAt = normTime(c.UpdatedAt)
	return c
}

func clonePool(p Pool) Pool {
	p.Hosts = cloneStrings(p.Hosts)
	p.OnDemandAllow = cloneStrings(p.OnDemandAllow)
	p.Metadata = cloneMeta(p.Metadata)
	p.InsertedAt = normTime(p.InsertedAt)
	p.UpdatedAt = normTime(p.UpdatedAt)
	return p
}

func cloneBackend(b Backend) Backend {
	b.Metadata = cloneMeta(b.Metadata)
	b.InsertedAt = normTime(b.InsertedAt)
	b.UpdatedAt = normTime(b.UpdatedAt)
	return b
}

func cloneObservation(o Observation) Observation {
	o.LastCheck = normTime(o.LastCheck)
	o.UpdatedAt = normTime(o.UpdatedAt)
	return o
}
