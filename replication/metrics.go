package replication

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	handshakes        *prometheus.CounterVec
	pushed            prometheus.Counter
	pushFrames        prometheus.Counter
	pushDropped       prometheus.Counter
	applied           *prometheus.CounterVec
	syncRounds        prometheus.Counter
	tooStale          prometheus.Counter
	snapshotBytes     *prometheus.CounterVec
	bootstrapFailures prometheus.Counter
	purged            prometheus.Counter
	ready             prometheus.GaugeFunc
}

func newMetrics(reg prometheus.Registerer, e *Engine) *metrics {
	m := &metrics{
		handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "singularity_edge_replication_rejected_streams_total",
			Help: "Replication streams refused, by reason: tls (no valid key: the frames are never read), cluster_id, protocol, encryption_key (the peer's EDGE_ENCRYPTION_KEY differs), other.",
		}, []string{"reason"}),
		pushFrames: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "singularity_edge_replication_push_frames_total", Help: "Push frames sent to peers; pushed sets ÷ frames is the coalescing under load.",
		}),
		pushed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "singularity_edge_replication_pushed_sets_total", Help: "Local change sets sent to peers (one per peer).",
		}),
		pushDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "singularity_edge_replication_push_dropped_total", Help: "Queued pushes dropped because a peer's queue was full (catch-up fetches them).",
		}),
		applied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "singularity_edge_replication_applied_sets_total", Help: "Remote change sets applied, by path (push, sync).",
		}, []string{"path"}),
		syncRounds: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "singularity_edge_replication_sync_rounds_total", Help: "Anti-entropy rounds completed.",
		}),
		tooStale: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "singularity_edge_replication_too_stale_total", Help: "Sync answers saying this node is behind a tombstone purge and must rebuild.",
		}),
		snapshotBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "singularity_edge_replication_snapshot_bytes_total", Help: "Snapshot bytes streamed, by direction.",
		}, []string{"direction"}),
		bootstrapFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "singularity_edge_replication_bootstrap_failures_total", Help: "Failed bootstrap attempts from a peer.",
		}),
		purged: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "singularity_edge_replication_purged_tombstones_total", Help: "Tombstones purged with the members' watermarks.",
		}),
		ready: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "singularity_edge_replication_ready",
			Help: "1 while this node holds the cluster's state and its EDGE_ENCRYPTION_KEY is not different from that of every peer holding it.",
		}, func() float64 {
			if e.replicationReady() {
				return 1
			}
			return 0
		}),
	}
	for _, r := range []string{"tls", "cluster_id", "protocol", "encryption_key", "other"} {
		m.handshakes.WithLabelValues(r)
	}
	if reg != nil {
		reg.MustRegister(m.handshakes, m.pushed, m.pushFrames, m.pushDropped, m.applied, m.syncRounds, m.tooStale,
			m.snapshotBytes, m.bootstrapFailures, m.purged, m.ready, &peerCollector{e: e})
	}
	return m
}

func (m *metrics) handshakeFailure(err error) {
	var rej *RejectError
	switch {
	case errors.As(err, &rej) && rej.Code == rejectDifferentCluster:
		m.handshakes.WithLabelValues("cluster_id").Inc()
	case errors.As(err, &rej) && rej.Code == rejectProto:
		m.handshakes.WithLabelValues("protocol").Inc()
	case errors.As(err, &rej) && rej.Code == rejectEncryptionKey:
		m.handshakes.WithLabelValues("encryption_key").Inc()
	case errors.As(err, &rej):
		m.handshakes.WithLabelValues("other").Inc()
	default:
		m.handshakes.WithLabelValues("tls").Inc()
	}
}

// peerCollector exports the per-peer status at scrape time.
type peerCollector struct{ e *Engine }

var (
	descPending = prometheus.NewDesc("singularity_edge_replication_peer_pending_sets", "This node's change sets the peer has not acknowledged.", []string{"peer"}, nil)
	descLag     = prometheus.NewDesc("singularity_edge_replication_peer_lag_seconds", "Age of the oldest change set the peer has not acknowledged.", []string{"peer"}, nil)
	descBytes   = prometheus.NewDesc("singularity_edge_replication_peer_bytes_total", "Bytes on replication streams with the peer, by direction.", []string{"peer", "direction"}, nil)
	descUp      = prometheus.NewDesc("singularity_edge_replication_peer_connected", "1 while an outbound stream to the peer is up.", []string{"peer"}, nil)
)

func (c *peerCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descPending
	ch <- descLag
	ch <- descBytes
	ch <- descUp
}

func (c *peerCollector) Collect(ch chan<- prometheus.Metric) {
	for id, st := range c.e.Status() {
		ch <- prometheus.MustNewConstMetric(descPending, prometheus.GaugeValue, float64(st.PendingChanges), id)
		ch <- prometheus.MustNewConstMetric(descLag, prometheus.GaugeValue, st.LagSeconds, id)
		ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(st.BytesIn), id, "in")
		ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(st.BytesOut), id, "out")
		up := 0.0
		if st.Connected {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, up, id)
	}
}
