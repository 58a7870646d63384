package agent

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/singularity-ng/singularity-edge/discovery"
	"github.com/singularity-ng/singularity-edge/replication"
	"github.com/singularity-ng/singularity-edge/storage"
)

// peersFileName keeps the last known members beside the store, for a DNS
// outage at start-up.
const peersFileName = "cluster-peers.json"

// newDiscovery builds the membership layer from the configuration, or nil
// when gossip is off. cookieFP is the fingerprint of the sticky-session
// cookie key; health is this node's readiness verdict, gossiped so that
// the members show whether it can do its job.
func newDiscovery(ctx context.Context, cfg Config, nodeID, cookieFP string, health func() string, logger *zap.Logger, reg prometheus.Registerer) (*discovery.Discovery, error) {
	if cfg.GossipAddr == "" {
		return nil, nil
	}
	keys, err := discovery.ParseKeys(cfg.GossipKey, cfg.GossipKeys)
	if err != nil {
		return nil, err
	}
	dcfg, err := discovery.ConfigForPreset(cfg.GossipPreset)
	if err != nil {
		return nil, err
	}
	replAddr, err := cfg.replicationAddr()
	if err != nil {
		return nil, err
	}
	dcfg.Name = cfg.NodeName
	dcfg.BindAddr = cfg.GossipAddr
	dcfg.App = cfg.App
	dcfg.Keys = keys
	dcfg.Meta = discovery.Meta{
		// Gossip admits members by app, not by the store's cluster id:
		// a new node has none until it bootstraps from a member it must
		// first find. Replication compares the stores' cluster ids in its
		// handshake, so a reseeded copy or another cluster of the same
		// app still exchanges no data.
		ClusterID:       "app:" + cfg.App,
		NodeID:          nodeID,
		MachineID:       cfg.MachineID,
		Region:          cfg.Region,
		ReplicationAddr: replAddr,
		AdminAddr:       cfg.AdminAddr,
		AgentVersion:    Version,
		CookieKeyFP:     cookieFP,
	}
	dcfg.Health = health
	dcfg.PeersFile = filepath.Join(cfg.DataDir, peersFileName)
	dcfg.Logger = logger.Named("discovery")
	dcfg.Registerer = reg
	if len(cfg.Join) > 0 {
		s, err := discovery.NewStaticSource(cfg.Join)
		if err != nil {
			return nil, err
		}
		dcfg.Sources = append(dcfg.Sources, s)
	}
	if cfg.DNSServer != "" {
		s, err := discovery.NewDNSSource(cfg.App, cfg.DNSServer, 0)
		if err != nil {
			return nil, fmt.Errorf("--dns-server: %w", err)
		}
		dcfg.Sources = append(dcfg.Sources, s)
	}
	if cfg.FlyAPIToken != "" {
		s, err := discovery.NewFlapsSource(ctx, cfg.App, cfg.FlyAPIToken, cfg.MachinesAPIURL)
		if err != nil {
			return nil, err
		}
		dcfg.Sources = append(dcfg.Sources, s)
	}
	return discovery.New(dcfg)
}

// newReplication builds the replication engine over the store, with the
// stream identities derived from the gossip keys.
func newReplication(cfg Config, store *storage.Store, members replication.Membership, logger *zap.Logger, reg prometheus.Registerer) (*replication.Engine, error) {
	keys, err := discovery.ParseKeys(cfg.GossipKey, cfg.GossipKeys)
	if err != nil {
		return nil, err
	}
	addr, err := cfg.replicationAddr()
	if err != nil {
		return nil, err
	}
	rocksCfg := replication.DefaultRocksConfig()
	rocksCfg.Registerer = reg
	rs, err := replication.NewRocksStore(store, rocksCfg)
	if err != nil {
		return nil, err
	}
	rcfg := replication.DefaultConfig()
	rcfg.Addr = addr
	rcfg.Name = cfg.NodeName
	rcfg.Region = cfg.Region
	rcfg.Secrets = append([][]byte{keys.Primary}, keys.Extra...)
	rcfg.Logger = logger.Named("replication")
	rcfg.Registerer = reg
	return replication.New(rcfg, rs, members)
}
