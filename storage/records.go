package storage

import "time"

// Table names. They are the RocksDB column family names and the names used
// in change sets, exports and the admin API.
const (
	TableCertificates = "certificates"
	TablePools        = "pools"
	TableBackends     = "backends"
	TableObservations = "observations"
	TableACME         = "acme"
)

// HLC is a hybrid logical clock timestamp: milliseconds since the Unix epoch
// in the upper 48 bits and a logical counter in the lower 16. It stays close
// to wall time yet orders causally related events even when clocks drift.
type HLC uint64

// Version identifies one committed version of a row: the hybrid logical
// clock timestamp of the transaction that wrote it and the node that
// originated it. Versions are totally ordered by (HLC, Origin); that order is
// the last-write-wins rule used by Apply.
type Version struct {
	HLC    HLC    `json:"hlc"`
	Origin string `json:"origin"` // node id of the writer
	Seq    uint64 `json:"seq"`    // per-origin change-log sequence of the transaction
}

// Less reports whether v is older than w under last-write-wins.
func (v Version) Less(w Version) bool {
	if v.HLC != w.HLC {
		return v.HLC < w.HLC
	}
	return v.Origin < w.Origin
}

// IsZero reports whether v was never set.
func (v Version) IsZero() bool { return v.HLC == 0 && v.Origin == "" }

// Certificate is a TLS certificate with its private key. PrivateKeyPEM is
// held in clear in memory and encrypted at rest (AES-256-GCM).
type Certificate struct {
	ID             string            `json:"id"`
	Domain         string            `json:"domain"` // primary name; may be a wildcard such as *.example.com
	Names          []string          `json:"names"`  // every DNS name the certificate covers (SANs)
	CertificatePEM string            `json:"certificate"`
	PrivateKeyPEM  string            `json:"-"`
	ChainPEM       string            `json:"chain"`
	Issuer         string            `json:"issuer"`
	NotBefore      time.Time         `json:"not_before"`
	ExpiresAt      time.Time         `json:"expires_at"`
	AutoRenew      bool              `json:"auto_renew"`
	Provider       string            `json:"provider"` // "acme" or "upload"
	Fingerprint    string            `json:"fingerprint"`
	Metadata       map[string]string `json:"metadata,omitempty"`
	InsertedAt     time.Time         `json:"inserted_at"`
	UpdatedAt      time.Time         `json:"updated_at"`
	Version        Version           `json:"version"`
}

// HealthCheck configures a pool's active and passive health checks.
type HealthCheck struct {
	Type           string        `json:"type"`            // "tcp", "http" or "https"; "" = tcp
	Path           string        `json:"path"`            // http(s): request path, default "/"
	ExpectedStatus int           `json:"expected_status"` // http(s): 0 = any 2xx/3xx
	Timeout        time.Duration `json:"timeout"`
	Rise           int           `json:"rise"` // consecutive passes to become healthy
	Fall           int           `json:"fall"` // consecutive failures to become unhealthy
	// Passive checks: MaxFails consecutive connection errors or 5xx answers
	// eject a backend for Cooldown. MaxFails 0 disables passive ejection.
	MaxFails int           `json:"max_fails"`
	Cooldown time.Duration `json:"cooldown"`
}

// Pool is a named group of backends with a balancing algorithm and an SSL
// mode. Key: Name.
type Pool struct {
	Name                string        `json:"name"`
	Algorithm           string        `json:"algorithm"`
	SSLMode             string        `json:"ssl_mode"`
	SSLDomain           string        `json:"ssl_domain"`
	SSLCertID           string        `json:"ssl_cert_id"`
	Hosts               []string      `json:"hosts"` // further host names the pool serves (exact or *.wildcard)
	ValidateBackendCert bool          `json:"validate_backend_cert"`
	HealthCheckInterval time.Duration `json:"health_check_interval"`
	HealthCheck         HealthCheck   `json:"health_check"`
	// HashOn selects the key of consistent hashing: "client_ip" or
	// "header:<Name>". Empty for algorithms that do not hash.
	HashOn string `json:"hash_on"`
	// StickyCookie, when set, names a signed cookie that pins a client to a backend.
	StickyCookie string `json:"sticky_cookie"`
	// PreferRegion sends traffic to backends in the agent's own region while
	// any of them is healthy, and to the others only then.
	PreferRegion bool `json:"prefer_region"`
	// FailOpen tries unhealthy backends when none is healthy instead of 503.
	FailOpen bool `json:"fail_open"`
	// AllowHTTP serves plain HTTP requests for a pool that uses TLS instead
	// of redirecting them to HTTPS.
	AllowHTTP bool `json:"allow_http"`
	// NoAutoCert stops the agent from obtaining an ACME certificate for
	// SSLDomain when none covers it (the API's auto_cert: false). Stored
	// inverted so that rows written before the field existed keep the
	// default, on.
	NoAutoCert bool `json:"no_auto_cert"`
	// HoldNewBackends keeps a new backend out of rotation until its first
	// passing health check.
	HoldNewBackends bool `json:"hold_new_backends"`
	// Default marks the pool that serves hosts no other pool claims.
	Default bool `json:"default"`
	// BackendCA is a PEM bundle of the CAs that verify this pool's backend
	// certificates (instead of the agent's roots); BackendServerName the
	// name sent as SNI and verified (instead of each backend's host);
	// BackendClientCertID the certificate (by id, from the certificates
	// table) presented to backends that ask for one.
	BackendCA           string            `json:"backend_ca,omitempty"`
	BackendServerName   string            `json:"backend_server_name,omitempty"`
	BackendClientCertID string            `json:"backend_client_cert_id,omitempty"`
	Metadata            map[string]string `json:"metadata,omitempty"`
	InsertedAt          time.Time         `json:"inserted_at"`
	UpdatedAt           time.Time         `json:"updated_at"`
	Version             Version           `json:"version"`

	// On-demand TLS: a name routed to this pool that no certificate
	// covers gets one during its first handshake, when it matches
	// OnDemandAllow (exact or one-label *.wildcard patterns; they also
	// route matching names here) and, when OnDemandAsk is set, that URL
	// answers 2xx to GET ?domain=<name>. OnDemandRate bounds the pool's
	// on-demand orders per minute across the cluster.
	OnDemandTLS   bool     `json:"on_demand_tls,omitempty"`
	OnDemandAllow []string `json:"on_demand_allow,omitempty"`
	OnDemandAsk   string   `json:"on_demand_ask,omitempty"`
	OnDemandRate  int      `json:"on_demand_rate,omitempty"`
}

// Backend is one upstream server of a pool: configuration only. What an
// agent observes of it (health, counters) is an Observation. Key: ID.
type Backend struct {
	ID         string            `json:"id"`
	PoolName   string            `json:"pool_name"`
	Host       string            `json:"host"`
	Port       int               `json:"port"`
	Scheme     string            `json:"scheme"` // "http" or "https"
	Weight     int               `json:"weight"`
	SSLVerify  bool              `json:"ssl_verify"`
	Region     string            `json:"region"`
	Draining   bool              `json:"draining"` // no new requests; existing ones finish
	Metadata   map[string]string `json:"metadata,omitempty"`
	InsertedAt time.Time         `json:"inserted_at"`
	UpdatedAt  time.Time         `json:"updated_at"`
	Version    Version           `json:"version"`
}

// Observation is what one node sees of one backend. Each node writes only
// its own observations (key: NodeID + BackendID), so they never conflict;
// they replicate like any row so every region sees every region's view.
type Observation struct {
	NodeID             string        `json:"node_id"`
	BackendID          string        `json:"backend_id"`
	PoolName           string        `json:"pool_name"`
	Region             string        `json:"region"` // region of the observing node
	Healthy            bool          `json:"healthy"`
	CurrentConnections int64         `json:"current_connections"`
	TotalRequests      int64         `json:"total_requests"`
	TotalFailures      int64         `json:"total_failures"`
	BytesIn            int64         `json:"bytes_in"`
	BytesOut           int64         `json:"bytes_out"`
	LatencyAvg         time.Duration `json:"latency_avg"`
	LastCheck          time.Time     `json:"last_check"`
	LastError          string        `json:"last_error,omitempty"`
	UpdatedAt          time.Time     `json:"updated_at"`
	Version            Version       `json:"version"`
}
