// Package cluster holds the types that describe the members of a Singularity
// Edge cluster as one node sees them. It has no dependencies of its own, so
// that discovery (which produces members), replication (which adds its view
// of each) and the admin API (which shows them) can share them without
// importing each other.
package cluster

import "time"

// State is a member's liveness as the failure detector sees it.
type State string

// The states of a member. Alive, Suspect and Dead mirror the failure
// detector (SWIM); Left is a member that said goodbye.
const (
	StateAlive   State = "alive"
	StateSuspect State = "suspect"
	StateDead    State = "dead"
	StateLeft    State = "left"
)

// Address roles used as keys of Member.Addresses.
const (
	AddrAdmin       = "admin"
	AddrGossip      = "gossip"
	AddrReplication = "replication"
	AddrPrivateIP   = "private_ip"
)

// Member is one agent of the cluster. Replication is nil until the
// replication layer reports on the member; the JSON then gains the object
// without changing the rest of the shape.
type Member struct {
	ID     string `json:"id"`
	Name   string `json:"name"`
	Region string `json:"region"`
	// MachineID is the Fly Machine id ("" off Fly).
	MachineID string `json:"machine_id,omitempty"`
	// Addresses by role: "admin", "gossip", "replication", "private_ip".
	Addresses map[string]string `json:"addresses"`
	// State is "alive", "suspect", "dead" or "left".
	State   State  `json:"state"`
	Version string `json:"version,omitempty"`
	// Ready is false while the member is still bootstrapping its store
	// from a peer; it serves no traffic until then. It says the member
	// holds the cluster's state (bootstrap and the first-node rule read
	// it), not that it can work: see Health.
	Ready bool `json:"ready"`
	// Health is the member's own readiness verdict, as its /healthz
	// answers it: "ok", or why it cannot do its job ("disk_full",
	// "store_not_ready", "starting", "draining", "leaving"). Empty when
	// the member does not gossip it (an older agent, or no gossip) or is
	// dead or gone. A member at disk_full is Ready (it holds the state)
	// but not healthy.
	Health string `json:"health,omitempty"`
	Self   bool   `json:"self"`
	// LastSeen is the last time the failure detector heard from the member
	// (for this node itself: now).
	LastSeen *time.Time `json:"last_seen,omitempty"`
	// RTTMS is the last probe round trip; ClockOffsetMS the member's wall
	// clock minus ours, the median of recent probe estimates
	// (remote - (local - rtt/2)).
	RTTMS         float64 `json:"rtt_ms"`
	ClockOffsetMS float64 `json:"clock_offset_ms"`
	// CookieKeyDiffers: the member signs sticky-session cookies with
	// another key than this node (its EDGE_COOKIE_KEY, or the key derived
	// from EDGE_ENCRYPTION_KEY, differs), so neither honours the other's
	// cookies. Known from the key's fingerprint in the member's gossip
	// metadata; false for a member too old to send one.
	CookieKeyDiffers bool               `json:"cookie_key_differs,omitempty"`
	Replication      *ReplicationStatus `json:"replication,omitempty"`
}

// ReplicationStatus is this node's replication view of one member.
type ReplicationStatus struct {
	// Connected: an authenticated replication stream to the member is up.
	Connected bool `json:"connected"`
	// PendingChanges counts this node's change sets the member has not
	// acknowledged.
	PendingChanges uint64 `json:"pending_changes"`
	// LagSeconds is how old the oldest change set the member has not
	// acknowledged is (0 when it holds everything).
	LagSeconds    float64    `json:"lag_seconds"`
	LastAppliedAt *time.Time `json:"last_applied_at,omitempty"`
	BytesIn       uint64     `json:"bytes_in"`
	BytesOut      uint64     `json:"bytes_out"`
	// LastContact is the last frame received from the member on a
	// replication stream.
	LastContact *time.Time `json:"last_contact,omitempty"`
	// LastError is the last reason the stream failed ("" when healthy).
	LastError string `json:"last_error,omitempty"`
	// EncryptionKeyDiffers: the member's EDGE_ENCRYPTION_KEY is not this
	// node's (or one of them has none), so streams with it are refused.
	EncryptionKeyDiffers bool `json:"encryption_key_differs,omitempty"`
}

// Source lists the members of the cluster as this node sees them.
type Source interface {
	Members() []Member
}
