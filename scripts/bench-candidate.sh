#!/usr/bin/env bash
# The benchmark harness's candidate (../shared/bench/proxy/run.sh): starts one
# agent on a fresh data directory and creates, through the admin API, the pools
# the harness describes:
#   S1/S2  host $TLS_SERVER_NAME, round robin over $BACKEND1 and $BACKEND2,
#          TLS terminated with $TLS_CERT/$TLS_KEY (ssl_mode flexible)
#   S3     SNI $PASSTHROUGH_SNI spliced to $TLS_BACKEND (ssl_mode passthrough)
# It stays in the foreground and stops the agent on SIGTERM/SIGINT.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${EDGE_BIN:-$here/bin/singularity-edge}
: "${CANDIDATE_HTTP_PORT:?} ${CANDIDATE_TLS_PORT:?} ${BACKEND1:?} ${BACKEND2:?} ${TLS_CERT:?} ${TLS_KEY:?}"
admin_port=${EDGE_BENCH_ADMIN_PORT:-24000}
api=http://127.0.0.1:$admin_port
data=$(mktemp -d /tmp/edge-bench.XXXXXX)
export EDGE_ADMIN_TOKEN=bench-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')
export EDGE_ENCRYPTION_KEY=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')

# The harness probes the ports as soon as they open, so the pools must exist
# by then: a first agent on ephemeral proxy ports takes the configuration
# through the API and stops; the measured agent then starts on the same data
# directory with the harness's ports.
call() { # call METHOD PATH [JSON]
	curl -sS --fail-with-body -X "$1" -H "Authorization: Bearer $EDGE_ADMIN_TOKEN" \
		-H 'Content-Type: application/json' ${3:+--data "$3"} "$api$2" >/dev/null
}
json_file() { python3 -c 'import json,sys; print(json.dumps(open(sys.argv[1]).read()))' "$1"; }

"$bin" agent --data-dir "$data" --http-addr 127.0.0.1:0 --https-addr 127.0.0.1:0 \
	--admin-addr "127.0.0.1:$admin_port" --log-level warn &
setup=$!
trap 'kill -TERM $setup 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 1 100); do curl -sf "$api/api/health" >/dev/null && break; sleep 0.1; done
call POST /api/certificates/upload "{\"certificate\": $(json_file "$TLS_CERT"), \"private_key\": $(json_file "$TLS_KEY")}"
call POST /api/pools "{\"name\": \"bench\", \"algorithm\": \"round_robin\", \"ssl_mode\": \"flexible\", \"allow_http\": true, \"ssl_domain\": \"${TLS_SERVER_NAME:-bench.test}\"}"
call POST /api/pools/bench/backends "{\"url\": \"http://$BACKEND1\"}"
call POST /api/pools/bench/backends "{\"url\": \"http://$BACKEND2\"}"
if [ -n "${TLS_BACKEND:-}" ]; then
	call POST /api/pools "{\"name\": \"passthrough\", \"algorithm\": \"round_robin\", \"ssl_mode\": \"passthrough\", \"ssl_domain\": \"${PASSTHROUGH_SNI:-pt.bench.test}\"}"
	call POST /api/pools/passthrough/backends "{\"host\": \"${TLS_BACKEND%:*}\", \"port\": ${TLS_BACKEND##*:}, \"scheme\": \"https\"}"
fi
kill -TERM $setup
wait $setup

# S1 asks for bench.test over plain HTTP and S2 over HTTPS, so the pool has
# allow_http (plain HTTP proxied, not redirected). Termination and
# passthrough share one listener, as on :443 in production, so
# scripts/bench-proxy.sh gives the harness the same port for S2 and S3.
"$bin" agent --data-dir "$data" --http-addr "127.0.0.1:$CANDIDATE_HTTP_PORT" --https-addr "127.0.0.1:$CANDIDATE_TLS_PORT" \
	--admin-addr "127.0.0.1:$admin_port" --access-log off --log-level warn &
agent=$!
trap 'kill -TERM $agent 2>/dev/null; wait $agent; rm -rf "$data"' EXIT
trap 'exit 0' TERM INT
wait $agent
