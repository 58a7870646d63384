package discovery

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/singularity-ng/singularity-edge/cluster"
)

type metrics struct {
	droppedPackets *prometheus.CounterVec
	rejected       *prometheus.CounterVec
	resolveErrors  *prometheus.CounterVec
	joins          *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer, d *Discovery) *metrics {
	m := &metrics{
		droppedPackets: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "singularity_edge_gossip_dropped_total",
			Help: "Inbound gossip packets and streams discarded, by reason (decrypt: not encrypted with an accepted key; label: another app; malformed).",
		}, []string{"reason"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "singularity_edge_gossip_rejected_members_total",
			Help: "Nodes refused as members, by reason (cluster_id, meta).",
		}, []string{"reason"}),
		resolveErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "singularity_edge_discovery_source_errors_total",
			Help: "Failed lookups of a discovery source.",
		}, []string{"source"}),
		joins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "singularity_edge_discovery_joins_total",
			Help: "Join attempts of candidates that were not alive members, by result.",
		}, []string{"result"}),
	}
	for _, r := range []string{"decrypt", "label", "malformed"} {
		m.droppedPackets.WithLabelValues(r)
	}
	if reg != nil {
		members := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "singularity_edge_cluster_members_alive",
			Help: "Members the failure detector considers alive, this node included.",
		}, func() float64 {
			n := 0
			for _, mem := range d.Members() {
				if mem.State == cluster.StateAlive {
					n++
				}
			}
			return float64(n)
		})
		reg.MustRegister(m.droppedPackets, m.rejected, m.resolveErrors, m.joins, members)
	}
	return m
}

func (m *metrics) dropped(reason string) { m.droppedPackets.WithLabelValues(reason).Inc() }
