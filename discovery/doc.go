// Package discovery finds the other agents of a Singularity Edge cluster and
// tells which of them are alive.
//
// Candidates come from several sources, merged: Fly's internal DNS
// (<app>.internal AAAA and vms.<app>.internal TXT, asked of the 6PN resolver
// through our own DNS client), the Machines API through fly-go's flaps
// client when a token is present, and static seeds (--join). Every
// ResolveInterval the sources are asked again and every candidate that is
// not an alive member is joined, so a region added with `flyctl regions add`
// needs no restart and two halves of a partition that declared each other
// dead merge again by themselves. The last known members are written to the
// data directory and used when every source fails (a DNS outage).
//
// Membership and failure detection are hashicorp/memberlist (SWIM with
// Lifeguard), used for nothing else: node metadata carries region, machine
// id, replication address, agent version, cluster id and readiness in a
// compact versioned encoding, gossip is always encrypted with a keyring
// from EDGE_GOSSIP_KEY plus EDGE_GOSSIP_KEYS, and a Label per app keeps
// other apps of the same organization out. Row data never travels over
// gossip; the replication package has its own streams.
package discovery
