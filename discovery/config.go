package discovery

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// DefaultGossipPort is memberlist's customary port.
const DefaultGossipPort = 7946

// Timings are the failure detector's knobs (memberlist's names).
type Timings struct {
	ProbeInterval       time.Duration
	ProbeTimeout        time.Duration
	SuspicionMult       int
	SuspicionMaxMult    int
	GossipInterval      time.Duration
	GossipNodes         int
	GossipToTheDeadTime time.Duration
	PushPullInterval    time.Duration
	TCPTimeout          time.Duration
	IndirectChecks      int
	RetransmitMult      int
	// UDPBufferSize is the largest gossip packet. Fly's 6PN is IPv6 over
	// WireGuard; 1232 (the IPv6 minimum MTU of 1280 less headers) never
	// fragments.
	UDPBufferSize int
	// DeadNodeReclaimTime is how soon a dead member's name can be taken
	// by a node at another address: a Machine restarted on a new 6PN
	// address keeps its name and must be let back in.
	DeadNodeReclaimTime time.Duration
}

// Config configures Discovery. Start from FlyConfig or LocalConfig.
type Config struct {
	// Name is the member's name: the Fly Machine id on Fly, --node-name
	// elsewhere. It is stable across restarts and address changes.
	Name string
	// BindAddr is the gossip listener (host:port), the private address
	// on Fly. AdvertiseAddr is what the others dial; it defaults to
	// BindAddr and must be set when BindAddr is unspecified (:: or
	// 0.0.0.0), because an unspecified address cannot be dialed.
	BindAddr      string
	AdvertiseAddr string
	// App names the cluster's gossip Label, so agents of another app in
	// the same organization never merge with this one.
	App string
	// Meta is what this node advertises (ClusterID included).
	Meta Meta
	// Keys encrypt gossip; required.
	Keys Keys

	Timings Timings
	// Sources are asked every ResolveInterval (StartupResolveInterval
	// until the first other member is alive).
	Sources                []Source
	ResolveInterval        time.Duration
	StartupResolveInterval time.Duration
	// PeersFile keeps the last known members ("" = not kept). They are
	// joined when every source fails or finds nothing.
	PeersFile string
	// PeersMaxAge drops remembered members not seen for this long, and
	// forgets a dead or departed member not seen alive for this long. It
	// must exceed replication's EvictAfter (purge waits for a member heard
	// from within that time).
	PeersMaxAge time.Duration
	// JoinParallel bounds concurrent join attempts.
	JoinParallel int

	// Health returns this node's readiness verdict ("ok", or the status
	// that says why not, as /healthz answers it); it is gossiped as
	// Meta.Health whenever it changes, asked every HealthInterval. nil
	// gossips none (the members then see "" for this node).
	Health         func() string
	HealthInterval time.Duration

	// WrapTransport, when set, wraps memberlist's UDP/TCP transport
	// before memberlist starts: latency or loss injection in tests
	// (this kernel-independent path stands in where tc netem is
	// missing). nil uses the transport as is.
	WrapTransport func(memberlist.Transport) memberlist.Transport

	Logger     *zap.Logger
	Registerer prometheus.Registerer
	// Now is the clock (tests); nil means time.Now.
	Now func() time.Time
}

// FlyConfig is for agents on Fly.io: regions are up to ~300 ms apart, so
// probes wait longer than a cross-world round trip and suspicion lasts long
// enough that a lost packet or two does not declare a region dead, while a
// dead Machine is still noticed within about 15 s (not memberlist's WAN
// minute).
func FlyConfig() Config {
	return Config{
		App: "singularity-edge",
		Timings: Timings{
			ProbeInterval:       2 * time.Second,
			ProbeTimeout:        1500 * time.Millisecond,
			SuspicionMult:       5,
			SuspicionMaxMult:    6,
			GossipInterval:      200 * time.Millisecond,
			GossipNodes:         4,
			GossipToTheDeadTime: 60 * time.Second,
			PushPullInterval:    30 * time.Second,
			TCPTimeout:          10 * time.Second,
			IndirectChecks:      3,
			RetransmitMult:      4,
			UDPBufferSize:       1232,
			DeadNodeReclaimTime: 30 * time.Second,
		},
		ResolveInterval:        30 * time.Second,
		StartupResolveInterval: 5 * time.Second,
		PeersMaxAge:            72 * time.Hour,
		JoinParallel:           8,
		HealthInterval:         2 * time.Second,
		Logger:                 zap.NewNop(),
	}
}

// LocalConfig is for agents on one machine or LAN (development, tests):
// memberlist's local timings, fast re-resolution and name reclaim.
func LocalConfig() Config {
	c := FlyConfig()
	c.Timings = Timings{
		ProbeInterval:       time.Second,
		ProbeTimeout:        200 * time.Millisecond,
		SuspicionMult:       3,
		SuspicionMaxMult:    6,
		GossipInterval:      100 * time.Millisecond,
		GossipNodes:         3,
		GossipToTheDeadTime: 15 * time.Second,
		PushPullInterval:    15 * time.Second,
		TCPTimeout:          2 * time.Second,
		IndirectChecks:      1,
		RetransmitMult:      2,
		UDPBufferSize:       1400,
		DeadNodeReclaimTime: 2 * time.Second,
	}
	c.ResolveInterval = 5 * time.Second
	c.StartupResolveInterval = time.Second
	return c
}

// DefaultConfig is FlyConfig: the deployment target.
func DefaultConfig() Config { return FlyConfig() }

// ConfigForPreset returns the preset by name: "fly" or "local".
func ConfigForPreset(name string) (Config, error) {
	switch name {
	case "fly", "":
		return FlyConfig(), nil
	case "local":
		return LocalConfig(), nil
	}
	return Config{}, fmt.Errorf("gossip preset %q: want fly or local", name)
}

// label is the memberlist Label of the app's cluster.
func (c *Config) label() string { return "singularity-edge/" + c.App }

// resolved holds the parsed addresses.
type resolved struct {
	bind, advertise netip.AddrPort
}

func (c *Config) validate() (resolved, error) {
	var r resolved
	var errs []error
	if c.Name == "" {
		errs = append(errs, errors.New("node name is empty"))
	}
	if c.App == "" {
		errs = append(errs, errors.New("app name is empty (it names the gossip label)"))
	}
	if len(c.Keys.Primary) == 0 {
		errs = append(errs, ErrNoGossipKey)
	}
	if c.Meta.ClusterID == "" {
		errs = append(errs, errors.New("cluster id is empty"))
	}
	bind, err := parseHostPort(c.BindAddr)
	if err != nil {
		errs = append(errs, fmt.Errorf("gossip address %q: %w", c.BindAddr, err))
	}
	adv := bind
	if c.AdvertiseAddr != "" {
		if adv, err = parseHostPort(c.AdvertiseAddr); err != nil {
			errs = append(errs, fmt.Errorf("gossip advertise address %q: %w", c.AdvertiseAddr, err))
		}
	}
	if err == nil && adv.Addr().IsUnspecified() {
		errs = append(errs, fmt.Errorf("gossip address %q is unspecified: bind the private address (FLY_PRIVATE_IP) or set an advertise address, because peers cannot dial %s", c.BindAddr, adv.Addr()))
	}
	if adv.Port() == 0 && bind.Port() != 0 {
		adv = netip.AddrPortFrom(adv.Addr(), bind.Port())
	}
	if _, err := c.Meta.Encode(); err != nil {
		errs = append(errs, err)
	}
	if c.ResolveInterval <= 0 || c.StartupResolveInterval <= 0 {
		errs = append(errs, errors.New("resolve intervals must be positive"))
	}
	if c.Health != nil && c.HealthInterval <= 0 {
		errs = append(errs, errors.New("health interval must be positive"))
	}
	if c.JoinParallel <= 0 {
		c.JoinParallel = 1
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	r.bind, r.advertise = bind, adv
	return r, errors.Join(errs...)
}

func parseHostPort(s string) (netip.AddrPort, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return netip.AddrPort{}, err
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("want an IP literal: %w", err)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("port: %w", err)
	}
	return netip.AddrPortFrom(a.Unmap(), uint16(p)), nil
}
