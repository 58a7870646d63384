package admin

import (
	"context"
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/singularity-ng/singularity-edge/apitypes"
	"github.com/singularity-ng/singularity-edge/certs"
	"github.com/singularity-ng/singularity-edge/pools"
	"github.com/singularity-ng/singularity-edge/storage"
)

// Config configures the admin server. Start from DefaultConfig.
type Config struct {
	// Addr is the listen address of Start. Serve takes a listener instead.
	Addr string
	// Token is the bearer token (EDGE_ADMIN_TOKEN). Empty is allowed on a
	// loopback address only (see CheckExposure); then the API is open to
	// every local process.
	Token string
	// MaxBodyBytes bounds JSON request bodies; larger bodies get 413.
	MaxBodyBytes int64
	// MaxUploadBytes bounds certificate uploads (JSON or multipart).
	MaxUploadBytes int64

	ReadHeaderTimeout time.Duration
	ReadTimeout       time.Duration
	// WriteTimeout bounds ordinary requests. Compaction, backup and
	// checkpoint extend their own deadline to LongOperationTimeout.
	WriteTimeout         time.Duration
	IdleTimeout          time.Duration
	LongOperationTimeout time.Duration

	// Registerer receives the admin's collectors (request metrics).
	// Gatherer is what /metrics serves. Both nil: the server keeps a
	// private registry of its own collectors and serves that. Normally the
	// agent passes one *prometheus.Registry as both, shared with the other
	// packages; the singularity_edge_storage_* figures come from the store
	// registering on it (storage.Config.Registerer), not from admin.
	Registerer prometheus.Registerer
	Gatherer   prometheus.Gatherer
	// RegisterRuntimeCollectors adds the Go runtime and process collectors
	// to Registerer. Off by default so that an agent that registers them
	// itself (or a test that builds several servers on one registry) does
	// not register them twice.
	RegisterRuntimeCollectors bool
	// MetricsPublic serves /metrics without the token on every address.
	// Otherwise /metrics is open only on connections to a loopback address.
	MetricsPublic bool

	// IssueWait is how long POST /api/certificates waits for an ACME
	// order before answering 202 (the order goes on); ?wait= overrides it
	// up to WriteTimeout less 5 s. OrderTimeout bounds the order itself.
	IssueWait    time.Duration
	OrderTimeout time.Duration

	// Node describes this agent in /api/health and the dashboard.
	Node NodeInfo

	Logger *zap.Logger
}

// NodeInfo identifies the agent serving the API. ID defaults to the
// store's node id.
type NodeInfo struct {
	ID      string `json:"id"`
	Name    string `json:"name"`
	Region  string `json:"region"`
	Version string `json:"version"`
}

// Defaults of DefaultConfig.
const (
	DefaultAddr           = "127.0.0.1:4000"
	DefaultMaxBodyBytes   = 1 << 20
	DefaultMaxUploadBytes = 1 << 20
)

// DefaultConfig returns the configuration of a local agent.
func DefaultConfig() Config {
	return Config{
		Addr:                 DefaultAddr,
		MaxBodyBytes:         DefaultMaxBodyBytes,
		MaxUploadBytes:       DefaultMaxUploadBytes,
		ReadHeaderTimeout:    10 * time.Second,
		ReadTimeout:          30 * time.Second,
		WriteTimeout:         60 * time.Second,
		IdleTimeout:          120 * time.Second,
		LongOperationTimeout: 30 * time.Minute,
		IssueWait:            45 * time.Second,
		OrderTimeout:         10 * time.Minute,
		Logger:               zap.NewNop(),
	}
}

// Deps are the parts of the running agent the API reads and changes.
// Store is required; the others may be nil (see each).
type Deps struct {
	Store Store
	// Pools gives the live view of the routing table and health checks.
	// nil: the local view comes from this node's stored observations.
	Pools PoolStatus
	// Cluster lists the members. nil: this node alone, from Config.Node.
	Cluster Cluster
	// Membership joins and leaves the cluster on request (POST
	// /api/cluster/join, /api/cluster/leave). nil: the agent runs
	// without gossip, and both answer 409 not_supported.
	Membership Membership
	// Replication waits until every alive member has applied a write of
	// this node (?wait_all= on pool, backend and certificate writes).
	// nil: the agent runs alone, and such a wait returns at once.
	Replication Replication
	// Ready is closed once the agent can serve traffic (normally
	// pools.Manager.Ready()); until then /api/health answers 503. nil:
	// ready as soon as the store is open.
	Ready <-chan struct{}
	// Renewer renews ACME certificates. nil: renewal answers 409
	// not_supported ("ACME is not configured").
	Renewer Renewer
	// ACME obtains certificates (POST /api/certificates with domain)
	// and reports renewal state in certificate views. nil: ACME is off,
	// issuance answers 409 not_supported.
	ACME ACME
	// Now is the clock for certificate validity; nil means time.Now.
	Now func() time.Time
	// Secrets compares the secrets every node of a cluster must share
	// with the peers'. notReady is why this node cannot do its job ("":
	// it can): its EDGE_ENCRYPTION_KEY differs from that of every peer
	// holding the cluster's state, so it replicates nothing. warnings
	// are mismatches that degrade the cluster without stopping this
	// node (a sticky-cookie key that differs from a member's). Neither
	// names a key. nil: nothing to compare (an agent without gossip).
	Secrets func() (notReady string, warnings []string)
}

// Store is what the API needs of *storage.Store: transactional writes,
// paginated reads, observations and the operations of the `db` CLI.
type Store interface {
	NodeID() string
	Update(ctx context.Context, fn func(tx *storage.Tx) error) (storage.Commit, error)
	View(ctx context.Context, fn func(tx *storage.Tx) error) error
	GetPool(ctx context.Context, name string) (storage.Pool, error)
	GetBackend(ctx context.Context, id string) (storage.Backend, error)
	GetCertificate(ctx context.Context, id string) (storage.Certificate, error)
	ListPools(ctx context.Context, after string, limit int) ([]storage.Pool, error)
	ListBackendsByPool(ctx context.Context, pool, after string, limit int) ([]storage.Backend, error)
	ScanBackendsOfPool(ctx context.Context, pool string, fn func(r *storage.BackendRef) error) error
	GetObservation(ctx context.Context, nodeID, backendID string) (storage.Observation, error)
	ListCertificates(ctx context.Context, after string, limit int) ([]storage.Certificate, error)
	Observations(ctx context.Context, nodeID string) ([]storage.Observation, error)
	ListAudit(ctx context.Context, after string, limit int) ([]storage.AuditEntry, error)

	Info() storage.Info
	// Ready says whether the store can commit and serve (nil) or why not;
	// CheckWritable probes a write, so that health recovers by itself
	// once space is back.
	Ready() error
	CheckWritable() error
	TableStats(ctx context.Context) ([]storage.TableStats, error)
	RocksDBStats(table string) (string, error)
	Compact(ctx context.Context, table string) error
	Backup(ctx context.Context, backupDir string) (storage.BackupInfo, error)
	Checkpoint(ctx context.Context, dir string) error
}

// PoolStatus is the live routing table: what *pools.Manager knows in
// memory, fresher than the observations it persists. The API looks pools
// and backends up in it by name and id, so a response costs the same
// however many pools and backends the table holds. Table may return nil
// before the first table is built.
type PoolStatus interface {
	Table() *pools.Table
}

// Cluster lists the members of the cluster as this node sees them.
type Cluster interface {
	Members() []Member
}

// Membership changes this node's membership on an operator's request; the
// agent implements it over discovery and replication.
type Membership interface {
	// Join joins the members at addrs (validated host:port or IP
	// literals) and returns how many nodes answered. ErrNoNodeAnswered
	// and ErrLeft say why it did not.
	Join(ctx context.Context, addrs []string) (int, error)
	// Leave stops this node's writes, waits (until ctx ends) for every
	// alive member to hold this node's writes, and then leaves: it says
	// goodbye to the others, stops gossip and replication and reports
	// itself not ready. Unless force is set, a member still missing
	// writes when ctx ends makes it return ErrNotFlushed and stay in the
	// cluster (writes resume). The result names who holds what.
	Leave(ctx context.Context, force bool) (apitypes.ClusterLeft, error)
	// State is "" while this node is a member, "leaving" while Leave
	// flushes, "left" after.
	State() string
}

// Errors a Membership returns, which the API answers with their own status.
var (
	ErrNoNodeAnswered = errors.New("no node answered at the addresses given")
	ErrLeft           = errors.New("this node left the cluster; restart the agent to join again")
	ErrLeaving        = errors.New("this node is already leaving the cluster")
	ErrNotFlushed     = errors.New("some alive members do not hold every write of this node yet")
	ErrStarting       = errors.New("gossip is still starting; retry in a moment")
)

// Member and ReplicationStatus are the API's shapes (apitypes); the
// aliases keep the names the agent and the cluster layer use.
type (
	Member            = apitypes.Member
	ReplicationStatus = apitypes.ReplicationStatus
)

// Renewer renews an ACME certificate now and returns the stored result
// and the userActionRequired holds it lifted (also when it failed).
type Renewer interface {
	Renew(ctx context.Context, id string) (certs.Renewal, error)
}

// The agent passes these types; fail the build, not the wiring, if they
// drift from the interfaces.
var (
	_ Store      = (*storage.Store)(nil)
	_ PoolStatus = (*pools.Manager)(nil)
)
