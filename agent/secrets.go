package agent

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/singularity-ng/singularity-edge/cluster"
)

// Every node of a cluster must share two secrets besides the gossip key:
// EDGE_ENCRYPTION_KEY (private keys travel sealed with it; replication
// compares its fingerprint in the stream handshake and refuses a peer
// whose key differs) and the sticky-cookie key (EDGE_COOKIE_KEY, else
// derived from EDGE_ENCRYPTION_KEY; its fingerprint is in the gossip
// metadata). secretCheck turns both comparisons into the agent's
// readiness, health warnings and metrics.

// keyCheck is what secretCheck needs of the replication engine.
type keyCheck interface {
	KeyIsolated() (bool, []string)
}

// memberSource lists the members with their replication view.
type memberSource interface {
	Members() []cluster.Member
}

type secretCheck struct {
	keys    keyCheck
	members memberSource
}

// verdict is admin.Deps.Secrets: not ready when this node's encryption key
// differs from that of every peer holding the cluster's state (it cannot
// replicate, and a new node never gets a snapshot); a warning, not a
// failed check, when a member's cookie key differs. A differing cookie
// key costs stickiness across the two nodes, not service; failing the
// check for it would take every node of a two-node cluster out of
// rotation for a loss of stickiness, and nothing says which key is the
// right one. Neither text names a key, nor a member: /healthz is
// unauthenticated, and the log and /api/cluster name the members.
func (c secretCheck) verdict() (string, []string) {
	var notReady string
	if isolated, _ := c.keys.KeyIsolated(); isolated {
		notReady = "this node's EDGE_ENCRYPTION_KEY differs from that of every peer that holds the cluster's state, " +
			"so it replicates nothing; set the same EDGE_ENCRYPTION_KEY on every node"
	}
	var warnings []string
	if n := c.count(func(m cluster.Member) bool { return m.CookieKeyDiffers }); n > 0 {
		warnings = append(warnings, "cookie_key_differs: "+plural(n, "member signs", "members sign")+
			" sticky-session cookies with another key than this node, so a client moving between them loses its backend; "+
			"set the same EDGE_COOKIE_KEY (or, without one, the same EDGE_ENCRYPTION_KEY) on every node")
	}
	return notReady, warnings
}

// count is the number of alive members other than this node for which
// differs holds.
func (c secretCheck) count(differs func(cluster.Member) bool) int {
	n := 0
	for _, m := range c.members.Members() {
		if !m.Self && m.State == cluster.StateAlive && differs(m) {
			n++
		}
	}
	return n
}

// register adds singularity_edge_cluster_secret_mismatch_members{secret}:
// the alive members whose encryption key or cookie key differs from this
// node's.
func (c secretCheck) register(reg prometheus.Registerer) {
	if reg == nil {
		return
	}
	for secret, differs := range map[string]func(cluster.Member) bool{
		"encryption_key": func(m cluster.Member) bool { return m.Replication != nil && m.Replication.EncryptionKeyDiffers },
		"cookie_key":     func(m cluster.Member) bool { return m.CookieKeyDiffers },
	} {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "singularity_edge_cluster_secret_mismatch_members",
			Help:        "Alive members whose secret differs from this node's, by secret (encryption_key: EDGE_ENCRYPTION_KEY, replication refused; cookie_key: the sticky-session cookie key).",
			ConstLabels: prometheus.Labels{"secret": secret},
		}, func() float64 { return float64(c.count(differs)) }))
	}
}

func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return strconv.Itoa(n) + " " + many
}
