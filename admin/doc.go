// Package admin is the agent's management surface: the admin REST API
// (JSON over HTTP, bearer token), the HTML dashboard at /admin/dashboard and
// the Prometheus endpoint /metrics.
//
// The API is not on the proxy's hot path, so it uses net/http and its
// method-aware ServeMux. Every write is one store transaction that also
// performs every check the write depends on (the pool exists, the name is
// free, the certificate a pool names exists, the pool has no backends left),
// so a rejected request changes nothing and two concurrent requests cannot
// both pass a check that only one of them may pass.
//
// Request and response bodies are explicit DTOs, never the storage records:
// durations travel as integer milliseconds, observed state (health and
// counters) sits beside the configuration, and a certificate's private key
// is accepted on upload and never returned.
package admin
