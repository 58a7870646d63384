// Package admin is the agent's management surface: the admin REST API
// (JSON over HTTP, bearer token), the HTML dashboard at /admin/dashboard and
// the Prometheus endpoint /metrics.
//
// The API is not on the proxy's hot path, so it uses net/http and its
// method-aware ServeMux. Every write is one store transaction that also
// performs every check the write depends on (the pool exists, the name is
// free, the certificate a pool names exists and no pool still uses a
// certificate being deleted, the pool has no backends left, no sibling
// backend has the address), so a rejected request changes nothing. The
// store detects conflicts on every row a transaction read or wrote and on
// every index partition it scanned (storage.Tx.BackendsByPool,
// PoolsByCertificate), and runs a conflicting transaction again: two
// concurrent requests to this agent cannot both pass a check that only
// one of them may pass, and a change set applied from a peer while a
// request's transaction runs makes it run again too. No admin-side lock is
// needed. Writes accepted at the same time by two different agents are
// reconciled by replication (last write wins per row), not by these checks.
//
// Request and response bodies are explicit DTOs, never the storage records:
// durations travel as integer milliseconds, observed state (health and
// counters) sits beside the configuration, and a certificate's private key
// is accepted on upload and never returned.
//
// # Routes
//
//	GET    /api/health                        200 ready, 503 starting (no token needed; says nothing else)
//	GET    /api/pools                         200 list
//	POST   /api/pools                         201 + Location, ETag; 400, 409 name/host taken or second default, 422
//	                                          (ssl_domain on a pool left in ssl_mode off: 422 ssl_mode)
//	GET    /api/pools/{name}                  200 + ETag; 404
//	PATCH  /api/pools/{name}                  200 + ETag; 400, 404, 409 host/default/backends, 412, 422 (name cannot change)
//	DELETE /api/pools/{name}[?cascade=true]   204; 404, 409 backends left, 412
//	GET    /api/pools/{name}/backends         200 list; 404 pool
//	POST   /api/pools/{name}/backends         201 + Location, ETag; 400, 404 pool, 409 address/id taken, 422
//	                                          a JSON array (at most 999): 201 {"items": [...]}, atomic, fields "[i].host"
//	GET    /api/pools/{name}/backends/{id}    200 + ETag; 404
//	PATCH  /api/pools/{name}/backends/{id}    200 + ETag; 400, 404, 409, 412, 422
//	DELETE /api/pools/{name}/backends/{id}    204; 404, 412
//	GET    /api/certificates                  200 list
//	POST   /api/certificates                  {"domain"} or {"domains": [...]} [?wait=45s]: ACME; 201 issued, 200 already valid,
//	                                          202 + Location still ordering after wait; 409 lease held or ACME off,
//	                                          422 names, or a profile the CA does not offer (nothing ordered or stored),
//	                                          429 held_back (+ Retry-After, error.held_back), 502 acme_failed
//	                                          {"certificate", "private_key"}: JSON upload, 201; 400, 409 duplicate, 413, 415, 422
//	POST   /api/certificates/upload           201 (JSON or multipart/form-data); as above
//	GET    /api/certificates/{id}             200 + ETag (ACME: renewal state); 404 (says why when an order is pending)
//	DELETE /api/certificates/{id}[?force=true] 204; 404, 409 pinned by a pool or only certificate of a served host, 412
//	POST   /api/certificates/{id}/renew       200; 404; 409 lease held, 409 not_supported (uploaded, or ACME off), 429, 502
//	GET    /api/audit                         200 list of configuration changes, newest first
//	GET    /api/cluster                       200 members by region
//	POST   /api/cluster/join  {"addresses"}   200 contacted; 400, 409 left, 422 addresses, 502 join_failed, 503 starting
//	POST   /api/cluster/leave[?wait=30s][&force=true] 200; 400 query, 409 members still missing writes (error.missing)
//	GET    /api/db                            200 store info
//	GET    /api/db/tables                     200 per-table size and memory, block cache
//	GET    /api/db/stats/{table}              200 RocksDB stats text; 404 table
//	POST   /api/db/compact/{table}            200; 404 table
//	POST   /api/db/backup      {"dir": "/abs"} 200; 400, 415, 422 dir relative/empty/unusable
//	POST   /api/db/checkpoint  {"dir": "/abs"} 201; 400, 409 dir exists, 415, 422
//	GET    /metrics                           Prometheus text; token unless loopback or MetricsPublic
//	GET    /admin/dashboard                   the dashboard page (carries no data; asks for the token)
//
// Writes of pools, backends and certificates (POST, PATCH, DELETE above,
// the upload routes; not an ACME request) take ?wait_all=10s: the answer
// comes once every alive member has applied the write, or is 504
// not_applied (the write is stored; error.missing names the members).
// A query parameter a route does not read is refused with 400 naming it.
//
// Every /api route but the health check answers 401 without the token.
// Without a configured token (loopback only) the same routes, and /metrics
// on loopback, answer 403 forbidden to what only a browser page sends: a
// Host that is not localhost or a loopback address (DNS rebinding), or a
// cross-origin Origin or Sec-Fetch-Site (cross-site requests).
// Every route may answer 413 (body over the limit), 415 (a body that is not
// JSON), 404 (unknown path) and 405 (known path, other method; Allow lists
// the methods).
//
// # Conventions
//
// Errors have one shape:
//
//	{"error": {"code": "invalid", "message": "...", "fields": [{"field": "port", "message": "..."}]}}
//
// 400 means the body or a query parameter could not be read (malformed
// JSON, with line and column; an unknown field; a field or query parameter
// given twice; a value of the wrong JSON type); 422 means it was read but a value is not acceptable. Both use the
// code "invalid" and name the fields. The full list of codes and statuses
// is at the Code constants.
//
// Lists take ?limit= (1 to 1000, default 100) and ?after=<the "next" of
// the previous page> and answer {"items": [...], "next": "<cursor or
// empty>"}. The cursor is the key of the last item, except for a pool's
// backends, which are listed by address, then id: "<scheme://host:port>
// <id>".
//
// ETag is the row version, "<hlc>-<origin node>". PATCH and DELETE honour
// If-Match (a list of tags, or *); a stale tag answers 412
// precondition_failed and changes nothing. An If-Match that is empty or
// not in that form (an unquoted tag, W/ without a quoted tag, * listed
// with tags) is a malformed precondition: 400 invalid naming the field
// "If-Match". If-None-Match is not read.
//
// Request bodies are apitypes specs: a field left out takes its default
// (create) or keeps its value (update); a field that was sent is validated
// as sent and stored, or refused (weight 0, port 0, rise 0 are refused,
// never replaced); null is refused for scalars. PATCH is a JSON merge
// patch validated as a whole: health_check merges field by field, metadata
// key by key (null deletes a key, "metadata": null every key), hosts is
// replaced. A PATCH that changes nothing answers 200 with the stored
// object and its ETag and writes nothing (no version, no audit row). A pool's name and a backend's id cannot change. Every checked
// relation to other rows (host names, the default pool, backend addresses)
// is an index lookup inside the write's transaction.
//
// A backend is given as {"url": "http://10.0.1.10:8080"} or as host, port
// and scheme, not both. Its response carries this node's view of it
// (healthy, available, ejected, current_connections, total_requests,
// last_check; local_source says whether it is live, stored or none yet) and
// every node's replicated observation beside it ("observations", one per
// node, with its region).
package admin
