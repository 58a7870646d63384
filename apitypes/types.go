package apitypes

import (
	"time"

	"github.com/singularity-ng/singularity-edge/cluster"
)

// Error codes of the error shape. Clients switch on the code, never on the
// message.
const (
	CodeInvalid              = "invalid"                // 400 unreadable body or query; 422 unacceptable value
	CodeNotFound             = "not_found"              // 404
	CodeConflict             = "conflict"               // 409 taken name or host, object in use, concurrent update
	CodePreconditionFailed   = "precondition_failed"    // 412 If-Match no longer current
	CodeUnauthorized         = "unauthorized"           // 401
	CodeForbidden            = "forbidden"              // 403 a browser's cross-origin or rebound request to a tokenless API
	CodeTooLarge             = "too_large"              // 413
	CodeUnsupportedMediaType = "unsupported_media_type" // 415
	CodeMethodNotAllowed     = "method_not_allowed"     // 405
	CodeNotSupported         = "not_supported"          // 409 understood, but this agent cannot do it
	CodeInternal             = "internal"               // 500
	CodeInsufficientStorage  = "insufficient_storage"   // 507 the node's disk is full
	CodeUnavailable          = "unavailable"            // 503 the store cannot commit or is not ready
	CodeJoinFailed           = "join_failed"            // 502 no node answered at the addresses given
	CodeNotApplied           = "not_applied"            // 504 stored here, not applied by every alive member within ?wait_all=
)

// ErrorBody is the shape of every error response.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail says what failed; Fields name the offending inputs by their
// JSON names ("health_check.rise", "[3].host" in a bulk request).
type ErrorDetail struct {
	Code    string       `json:"code"`
	Message string       `json:"message"`
	Fields  []FieldError `json:"fields,omitempty"`
	// HeldBack is set with code "held_back" (HTTP 429).
	HeldBack *HeldBack `json:"held_back,omitempty"`
	// Missing is set when a cluster leave is refused (HTTP 409): the
	// members that do not hold every write of this node yet; and with
	// code "not_applied" (HTTP 504): the members that did not apply the
	// write within ?wait_all= (the write itself is stored).
	Missing []ClusterMissing `json:"missing,omitempty"`
}

// HeldBack says which rate limit held an ACME order back and when it
// clears.
type HeldBack struct {
	Limit         string    `json:"limit"` // orders_per_account, certs_per_registered_domain, duplicate_certs, failed_validations, paused
	Scope         string    `json:"scope"`
	Count         int       `json:"count"`
	Max           int       `json:"max"`
	WindowSeconds int64     `json:"window_seconds"`
	Until         time.Time `json:"until"`
}

// FieldError is what is wrong with one input field.
type FieldError struct {
	Field   string `json:"field"`
	Message string `json:"message"`
}

// List is the shape of every list: a page of items and the cursor to pass
// as ?after= for the next page ("" on the last page).
type List[T any] struct {
	Items []T    `json:"items"`
	Next  string `json:"next"`
}

// Version is a row's version: hybrid logical clock, writer node, sequence.
type Version struct {
	HLC    uint64 `json:"hlc"`
	Origin string `json:"origin"`
	Seq    uint64 `json:"seq"`
}

// PoolSpec is the writable part of a pool (POST /api/pools, PATCH
// /api/pools/{name}). PATCH is a JSON merge patch: health_check merges
// field by field, metadata key by key (a null value deletes the key,
// "metadata": null deletes every key), hosts is replaced as a whole.
type PoolSpec struct {
	Name                Optional[string]          `json:"name,omitzero"`
	Algorithm           Optional[string]          `json:"algorithm,omitzero"`
	SSLMode             Optional[string]          `json:"ssl_mode,omitzero"`
	SSLDomain           Optional[string]          `json:"ssl_domain,omitzero"`
	SSLCertID           Optional[string]          `json:"ssl_cert_id,omitzero"`
	Hosts               Optional[[]string]        `json:"hosts,omitzero"`
	ValidateBackendCert Optional[bool]            `json:"validate_backend_cert,omitzero"`
	HealthCheckInterval Optional[int64]           `json:"health_check_interval,omitzero"` // milliseconds
	HealthCheck         Optional[HealthCheckSpec] `json:"health_check,omitzero"`
	HashOn              Optional[string]          `json:"hash_on,omitzero"`
	StickyCookie        Optional[string]          `json:"sticky_cookie,omitzero"`
	PreferRegion        Optional[bool]            `json:"prefer_region,omitzero"`
	FailOpen            Optional[bool]            `json:"fail_open,omitzero"`
	AllowHTTP           Optional[bool]            `json:"allow_http,omitzero"`
	// AutoCert (default true): a TLS-terminating pool whose ssl_domain no
	// certificate covers gets one from the agent's ACME CA.
	AutoCert            Optional[bool]     `json:"auto_cert,omitzero"`
	HoldNewBackends     Optional[bool]     `json:"hold_new_backends,omitzero"`
	Default             Optional[bool]     `json:"default,omitzero"`
	BackendCA           Optional[string]   `json:"backend_ca,omitzero"`             // PEM bundle verifying backend certificates
	BackendServerName   Optional[string]   `json:"backend_server_name,omitzero"`    // SNI sent to backends and verified
	BackendClientCertID Optional[string]   `json:"backend_client_cert_id,omitzero"` // certificate presented to backends
	Metadata            Optional[Metadata] `json:"metadata,omitzero"`

	// On-demand TLS: a name routed to the pool that no certificate covers
	// gets one during its first handshake when it matches on_demand_allow
	// (exact or *.wildcard patterns, which also route names here) and the
	// on_demand_ask URL, when set, answers 2xx to GET ?domain=<name>.
	// on_demand_rate: orders per minute for the pool across the cluster
	// (default 10 when on_demand_tls is turned on).
	OnDemandTLS   Optional[bool]     `json:"on_demand_tls,omitzero"`
	OnDemandAllow Optional[[]string] `json:"on_demand_allow,omitzero"`
	OnDemandAsk   Optional[string]   `json:"on_demand_ask,omitzero"`
	OnDemandRate  Optional[int]      `json:"on_demand_rate,omitzero"`
}

// Metadata is a request's metadata: a null value deletes the key in a
// PATCH and is refused in a POST.
type Metadata map[string]*string

// HealthCheckSpec is the writable part of a pool's health checks.
type HealthCheckSpec struct {
	Type           Optional[string] `json:"type,omitzero"`
	Path           Optional[string] `json:"path,omitzero"`
	ExpectedStatus Optional[int]    `json:"expected_status,omitzero"` // 0: any 2xx or 3xx
	Timeout        Optional[int64]  `json:"timeout,omitzero"`         // milliseconds
	Rise           Optional[int]    `json:"rise,omitzero"`
	Fall           Optional[int]    `json:"fall,omitzero"`
	MaxFails       Optional[int]    `json:"max_fails,omitzero"` // 0 or -1: passive checks off
	Cooldown       Optional[int64]  `json:"cooldown,omitzero"`  // milliseconds
}

// Pool is a pool as the API shows it: configuration, row metadata and the
// statistics of its backends as this node sees them.
type Pool struct {
	Name                string            `json:"name"`
	Algorithm           string            `json:"algorithm"`
	SSLMode             string            `json:"ssl_mode"`
	SSLDomain           string            `json:"ssl_domain"`
	SSLCertID           string            `json:"ssl_cert_id"`
	Hosts               []string          `json:"hosts"`
	ValidateBackendCert bool              `json:"validate_backend_cert"`
	HealthCheckInterval int64             `json:"health_check_interval"` // milliseconds
	HealthCheck         HealthCheck       `json:"health_check"`
	HashOn              string            `json:"hash_on"`
	StickyCookie        string            `json:"sticky_cookie"`
	PreferRegion        bool              `json:"prefer_region"`
	FailOpen            bool              `json:"fail_open"`
	AllowHTTP           bool              `json:"allow_http"`
	AutoCert            bool              `json:"auto_cert"`
	HoldNewBackends     bool              `json:"hold_new_backends"`
	Default             bool              `json:"default"`
	BackendCA           string            `json:"backend_ca"`
	BackendServerName   string            `json:"backend_server_name"`
	BackendClientCertID string            `json:"backend_client_cert_id"`
	OnDemandTLS         bool              `json:"on_demand_tls"`
	OnDemandAllow       []string          `json:"on_demand_allow"`
	OnDemandAsk         string            `json:"on_demand_ask"`
	OnDemandRate        int               `json:"on_demand_rate"`
	Metadata            map[string]string `json:"metadata"`
	InsertedAt          time.Time         `json:"inserted_at"`
	UpdatedAt           time.Time         `json:"updated_at"`
	Version             Version           `json:"version"`
	Stats               PoolStats         `json:"stats"`
}

// HealthCheck is a pool's health check configuration.
type HealthCheck struct {
	Type           string `json:"type"`
	Path           string `json:"path"`
	ExpectedStatus int    `json:"expected_status"`
	Timeout        int64  `json:"timeout"` // milliseconds
	Rise           int    `json:"rise"`
	Fall           int    `json:"fall"`
	MaxFails       int    `json:"max_fails"` // 0 or -1: passive checks off
	Cooldown       int64  `json:"cooldown"`  // milliseconds
}

// PoolStats summarizes a pool's backends as this node sees them. Source is
// "live" (the running routing table) or "stored" (this node's persisted
// observations, before the routing table has the pool). Healthy backends
// can take new requests, unhealthy ones fail their checks, draining ones
// drain whatever their health; in the stored view a backend not observed
// yet is in none of the three.
type PoolStats struct {
	TotalBackends      int    `json:"total_backends"`
	HealthyBackends    int    `json:"healthy_backends"`
	UnhealthyBackends  int    `json:"unhealthy_backends"`
	DrainingBackends   int    `json:"draining_backends"`
	CurrentConnections int64  `json:"current_connections"`
	TotalRequests      int64  `json:"total_requests"`
	TotalFailures      int64  `json:"total_failures"`
	Source             string `json:"source"`
}

// BackendSpec is the writable part of a backend. The address is url
// ("http://10.0.1.10:8080") or host, port and scheme, not both. id is
// optional on create and cannot change. Weight 0 is refused: drain a
// backend with draining: true.
type BackendSpec struct {
	ID        Optional[string]   `json:"id,omitzero"`
	URL       Optional[string]   `json:"url,omitzero"`
	Host      Optional[string]   `json:"host,omitzero"`
	Port      Optional[int]      `json:"port,omitzero"`
	Scheme    Optional[string]   `json:"scheme,omitzero"`
	Weight    Optional[int]      `json:"weight,omitzero"`
	SSLVerify Optional[bool]     `json:"ssl_verify,omitzero"`
	Region    Optional[string]   `json:"region,omitzero"`
	Draining  Optional[bool]     `json:"draining,omitzero"`
	Metadata  Optional[Metadata] `json:"metadata,omitzero"`
}

// Backend is a backend's configuration, this node's view of it and every
// node's stored observation.
type Backend struct {
	ID         string            `json:"id"`
	PoolName   string            `json:"pool_name"`
	URL        string            `json:"url"`
	Host       string            `json:"host"`
	Port       int               `json:"port"`
	Scheme     string            `json:"scheme"`
	Weight     int               `json:"weight"`
	SSLVerify  bool              `json:"ssl_verify"`
	Region     string            `json:"region"`
	Draining   bool              `json:"draining"`
	Metadata   map[string]string `json:"metadata"`
	InsertedAt time.Time         `json:"inserted_at"`
	UpdatedAt  time.Time         `json:"updated_at"`
	Version    Version           `json:"version"`

	// This node's view. Healthy is null until this node has checked it.
	Healthy            *bool      `json:"healthy"`
	Available          *bool      `json:"available"` // healthy, not ejected, not draining
	Ejected            bool       `json:"ejected"`   // passive checks hold it out
	EjectedUntil       *time.Time `json:"ejected_until,omitempty"`
	CurrentConnections int64      `json:"current_connections"`
	TotalRequests      int64      `json:"total_requests"`
	TotalFailures      int64      `json:"total_failures"`
	Status5xx          int64      `json:"status_5xx"` // within total_failures
	Retries            int64      `json:"retries"`    // requests retried here after another backend failed
	// DownSince is when this node's checks marked it unhealthy; null
	// while healthy or when this node did not see the transition.
	DownSince    *time.Time `json:"down_since,omitempty"`
	Ejections    int64      `json:"ejections"`
	ChecksPassed int64      `json:"checks_passed"`
	ChecksFailed int64      `json:"checks_failed"`
	LatencyAvgMS float64    `json:"latency_avg_ms"`
	LastCheck    *time.Time `json:"last_check"`
	LastError    string     `json:"last_error,omitempty"`
	// LocalSource is "live", "stored" or "none" (not observed yet).
	LocalSource string `json:"local_source"`

	Observations []Observation `json:"observations"`
	// Regions sums up, per region, the health every node of it reports
	// (this node's live view in place of its stored one). A region no
	// node has reported on yet is absent.
	Regions []RegionHealth `json:"regions"`
}

// RegionHealth is a backend's health as the nodes of one region see it.
type RegionHealth struct {
	Region string `json:"region"`
	// State is "healthy" (every reporting node of the region reaches
	// it), "unhealthy" (none does) or "mixed".
	State   string `json:"state"`
	Nodes   int    `json:"nodes"`
	Healthy int    `json:"healthy"`
}

// Observation is one node's view of a backend, as replicated.
type Observation struct {
	NodeID             string     `json:"node_id"`
	Region             string     `json:"region"`
	Healthy            bool       `json:"healthy"`
	CurrentConnections int64      `json:"current_connections"`
	TotalRequests      int64      `json:"total_requests"`
	TotalFailures      int64      `json:"total_failures"`
	LatencyAvgMS       float64    `json:"latency_avg_ms"`
	LastCheck          *time.Time `json:"last_check"`
	LastError          string     `json:"last_error,omitempty"`
	UpdatedAt          time.Time  `json:"updated_at"`
}

// BulkBackends is the answer of POST /api/pools/{name}/backends with a
// JSON array: every backend created, in request order. The request is
// atomic: one invalid or conflicting item refuses all of them, with the
// item's index in the field names ("[3].host").
type BulkBackends struct {
	Items []Backend `json:"items"`
}

// MaxBulkBackends is the largest array POST /api/pools/{name}/backends
// takes in one request. The array is one transaction, and a transaction
// holds at most 1,000 rows (storage.MaxChangeSetRows), one of them the
// request's audit row.
const MaxBulkBackends = 999

// CertificateUpload is POST /api/certificates/upload as JSON.
type CertificateUpload struct {
	Certificate string            `json:"certificate"`
	PrivateKey  string            `json:"private_key"`
	Chain       string            `json:"chain"`
	Metadata    map[string]string `json:"metadata"`
	Domain      string            `json:"domain"`
}

// Certificate shows a certificate. It has no field for the private key:
// the key goes in on upload and never comes out.
type Certificate struct {
	ID          string            `json:"id"`
	Domain      string            `json:"domain"`
	Names       []string          `json:"names"`
	Issuer      string            `json:"issuer"`
	NotBefore   time.Time         `json:"not_before"`
	ExpiresAt   time.Time         `json:"expires_at"`
	DaysLeft    int               `json:"days_left"` // whole days until expiry; negative once expired
	Expired     bool              `json:"expired"`
	Fingerprint string            `json:"fingerprint"` // SHA-256 of the leaf, hex
	Provider    string            `json:"provider"`    // "acme" or "upload"
	AutoRenew   bool              `json:"auto_renew"`
	Certificate string            `json:"certificate"` // leaf PEM (public)
	Chain       string            `json:"chain"`       // intermediates PEM (public)
	Metadata    map[string]string `json:"metadata"`
	InsertedAt  time.Time         `json:"inserted_at"`
	UpdatedAt   time.Time         `json:"updated_at"`
	Version     Version           `json:"version"`
	// Renewal is the ACME renewal state; nil for uploaded certificates
	// and when this agent has ACME off.
	Renewal *CertificateRenewal `json:"renewal,omitempty"`
}

// CertificateRequest asks for an ACME certificate: POST /api/certificates
// with "domain" (the original API's shape) or "domains" (several names,
// the first one primary), never both.
type CertificateRequest struct {
	Domain  string   `json:"domain,omitempty"`
	Domains []string `json:"domains,omitempty"`
	// Profile is the CA's certificate profile ("classic", "tlsserver",
	// "shortlived") where the directory offers them; empty: the CA's
	// default.
	Profile string `json:"profile,omitempty"`
}

// CertificateOrder is the 202 answer of POST /api/certificates when the
// order outlasts the request's wait: the certificate will appear at
// Location (/api/certificates/{id}), whose renewal state shows progress.
type CertificateOrder struct {
	ID      string   `json:"id"`
	Names   []string `json:"names"`
	Status  string   `json:"status"` // "pending"
	Message string   `json:"message"`
}

// CertificateRenewal is an ACME certificate's renewal state. It holds no
// key material.
type CertificateRenewal struct {
	// Phase: "scheduled", "due", "retrying", "held_back", "blocked" (not
	// ordered until an operator acts; Blocked says why), "action_required"
	// (the CA answered userActionRequired: its account holder must act
	// there; HeldBack says until when nothing is ordered) or "pending" (no
	// certificate issued yet).
	Phase string `json:"phase"`
	// RenewAt is when renewal starts and RenewReason why then: "ari" (the
	// CA's window), "lifetime" (a third of it left) or "emergency".
	RenewAt     time.Time  `json:"renew_at"`
	RenewReason string     `json:"renew_reason"`
	WindowStart *time.Time `json:"window_start,omitempty"` // the CA's ARI window, when offered
	WindowEnd   *time.Time `json:"window_end,omitempty"`
	// NextAttempt is the earliest the next order may start (backoff or
	// held back); nil when nothing holds it.
	NextAttempt *time.Time `json:"next_attempt,omitempty"`
	LastAttempt *time.Time `json:"last_attempt,omitempty"`
	LastSuccess *time.Time `json:"last_success,omitempty"`
	LastError   string     `json:"last_error,omitempty"`
	Failures    int        `json:"failures"` // consecutive
	// HeldBack is the rate-limit budget's reason, until HeldBackUntil.
	HeldBack      string     `json:"held_back,omitempty"`
	HeldBackUntil *time.Time `json:"held_back_until,omitempty"`
	// Blocked says why nothing is ordered until an operator acts (the
	// stored profile is not offered by the CA) and what to do.
	Blocked string `json:"blocked,omitempty"`
	Issuer  string `json:"issuer,omitempty"` // the issuer (directory and account) of the current certificate
	Profile string `json:"profile,omitempty"`
	// Owner is the member that renews it now; LastOwner made the last
	// attempt.
	Owner     string `json:"owner"`
	LastOwner string `json:"last_owner,omitempty"`
	Lease     *Lease `json:"lease,omitempty"`
}

// Lease is the renewal lease of a certificate: one agent works on it at
// a time; Epoch grows at each take-over.
type Lease struct {
	Holder  string    `json:"holder"`
	Epoch   uint64    `json:"epoch"`
	Expires time.Time `json:"expires"`
	Held    bool      `json:"held"` // not yet expired
}

// Health is GET /api/health.
type Health struct {
	Status string `json:"status"` // "ok", "starting", "disk_full", "store_not_ready", "encryption_key_differs", "draining", "leaving" or "left"
	Live   bool   `json:"live"`
	Ready  bool   `json:"ready"`
	Reason string `json:"reason,omitempty"` // why not ready, when known
	// Warnings name what degrades the cluster without making this node
	// unready: a sticky-cookie key that differs from a member's.
	Warnings []string `json:"warnings,omitempty"`
}

// Cluster is GET /api/cluster.
type Cluster struct {
	NodeID  string          `json:"node_id"`
	Members []Member        `json:"members"`
	Regions []RegionSummary `json:"regions"`
}

// ClusterJoin is the body of POST /api/cluster/join: gossip addresses of
// members to join, each an IP literal or IP:port (the cluster's gossip
// port when left out).
type ClusterJoin struct {
	Addresses []string `json:"addresses"`
}

// ClusterJoined answers POST /api/cluster/join.
type ClusterJoined struct {
	// Addresses are the host:port addresses contacted.
	Addresses []string `json:"addresses"`
	// Contacted counts the nodes that answered (a node joins the whole
	// cluster through any one member).
	Contacted int `json:"contacted"`
}

// ClusterLeft answers POST /api/cluster/leave.
type ClusterLeft struct {
	// State is "left": the node said goodbye, stopped gossip and
	// replication, and reports itself not ready.
	State string `json:"state"`
	// Flushed is true when every alive member held every write of this
	// node before it left; with ?force=true it may be false, and Missing
	// names the members that did not.
	Flushed bool             `json:"flushed"`
	Applied []string         `json:"applied"`
	Missing []ClusterMissing `json:"missing"`
}

// ClusterMissing is a member that did not hold every write of the node
// when it left.
type ClusterMissing struct {
	Name   string `json:"name"`
	NodeID string `json:"node_id"`
	State  string `json:"state"`
	// Reason: "pending" (connected, not acknowledged yet), "not
	// connected" (alive, no replication stream), or the member's state
	// ("suspect", "dead", "left"; not waited for).
	Reason string `json:"reason"`
}

// RegionSummary counts the members of one region.
type RegionSummary struct {
	Region  string `json:"region"`
	Members int    `json:"members"`
	Alive   int    `json:"alive"`
}

// Member and ReplicationStatus are package cluster's types: discovery and
// replication fill them in, the API serves them as they are.
type (
	Member            = cluster.Member
	ReplicationStatus = cluster.ReplicationStatus
)

// AuditEntry is one configuration change (GET /api/audit, newest first):
// who asked, what changed as "field: old -> new", and when. Certificate
// PEM and key material never appear in Changes.
type AuditEntry struct {
	ID        string    `json:"id"`
	Time      time.Time `json:"time"`
	NodeID    string    `json:"node_id"`
	Action    string    `json:"action"`
	Kind      string    `json:"kind"`
	Object    string    `json:"object"`
	Changes   []string  `json:"changes"`
	Remote    string    `json:"remote"`
	UserAgent string    `json:"user_agent"`
	RequestID string    `json:"request_id"`
	Token     bool      `json:"token"`
}
