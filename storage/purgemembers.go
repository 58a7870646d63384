package storage

import (
	"encoding/json"
	"fmt"
	"time"
)

// metaPurgeMembers keeps what the cluster's purge last knew of each member
// (JSON, node id -> PurgeMember). Membership after a restart knows only
// the members it can reach: one that was dead before would no longer hold
// purge back although it has not been gone for the eviction time. It is
// this node's own view, so neither a snapshot nor an ingest carries it.
const metaPurgeMembers = "purge_members"

// PurgeMember is what tombstone purge knew of one member when it was
// saved (SavePurgeMembers).
type PurgeMember struct {
	Name string `json:"name,omitempty"`
	// Watermarks is the member's contiguous watermark per origin as it last
	// reported it; nil when it never did (it then holds every origin at
	// zero).
	Watermarks map[string]uint64 `json:"watermarks,omitempty"`
	// HeardAt is the last time anything was heard from the member.
	HeardAt time.Time `json:"heard_at"`
	// Live: the member was alive or suspect when saved, so it may have
	// been heard after HeardAt.
	Live bool `json:"live,omitempty"`
}

// SavePurgeMembers replaces the saved members, synced.
func (s *Store) SavePurgeMembers(members map[string]PurgeMember) error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	b, err := json.Marshal(members)
	if err != nil {
		return fmt.Errorf("storage: encode purge members: %w", err)
	}
	// After a failed write, as for a commit: the log may end torn.
	if err := s.resumeAfterFailure(); err != nil {
		return s.noteWriteError(err)
	}
	if err := s.base.PutCF(s.wo, s.cfs[cfMeta], []byte(metaPurgeMembers), b); err != nil {
		return s.noteWriteError(fmt.Errorf("storage: save purge members: %w", err))
	}
	s.noteWriteOK()
	return nil
}

// PurgeMembers returns the members last saved with SavePurgeMembers (none
// before the first save).
func (s *Store) PurgeMembers() (map[string]PurgeMember, error) {
	if err := s.enter(); err != nil {
		return nil, err
	}
	defer s.leave()
	b, err := s.getRaw(cfMeta, []byte(metaPurgeMembers))
	if err != nil || b == nil {
		return nil, err
	}
	var out map[string]PurgeMember
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, corruptError(cfMeta, fmt.Errorf("malformed purge members: %w", err))
	}
	return out, nil
}
