package storage

import (
	"errors"
	"reflect"
	"testing"
	"time"
)

// What purge knows of the members survives a reopen as saved; a value
// that is not one is ErrCorrupt, not an empty list (which would let purge
// forget the members it waits for).
func TestPurgeMembersSurviveReopen(t *testing.T) {
	cfg := testConfig(t, t.TempDir())
	s, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := s.PurgeMembers(); err != nil || len(got) != 0 {
		t.Fatalf("before any save: %v %v, want none", got, err)
	}
	heard := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	want := map[string]PurgeMember{
		"b": {Name: "edge-b", Watermarks: map[string]uint64{"a": 5, "b": 9}, HeardAt: heard},
		"c": {Name: "edge-c", HeardAt: heard.Add(time.Hour), Live: true},
	}
	if err := s.SavePurgeMembers(want); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, err := s.PurgeMembers()
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("after a reopen: %+v %v, want %+v", got, err, want)
	}
	if err := s.base.PutCF(s.wo, s.cfs[cfMeta], []byte(metaPurgeMembers), []byte("{not json")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.PurgeMembers(); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("malformed purge members: %v, want ErrCorrupt", err)
	}
}
