// Package replication moves change sets between the agents of a cluster:
// every local commit is pushed to every alive member, members exchange
// bookkeeping and fetch exactly what they miss ("their ranges minus mine")
// on every (re)connection and periodically, an empty node bootstraps from a
// snapshot of the nearest ready peer before it reports ready, and a writer
// can wait until every alive member applied its write.
//
// The store is reached through the Store interface defined here, by its
// consumer; the agent adapts the storage package to it. Membership comes
// from discovery through the Membership interface. Peers talk over TLS 1.3
// streams whose certificates are derived from the gossip secrets (see
// transport.go for why TLS rather than a hand-made handshake), carrying
// length-prefixed frames of bounded size.
package replication
