# Singularity Edge build. `make run` and `make test` work on a fresh Debian 12
# machine: `make deps` installs the system packages they need when missing.
# Inside `nix develop` or without dpkg/apt-get it installs nothing and lists
# what is missing instead (scripts/deps.sh).
SHELL := /bin/bash
BIN := bin/singularity-edge
GO ?= go
export CGO_ENABLED := 1
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
# The Dockerfile builds with the same flags; test/integration/docker_test.go
# compares them.
GO_BUILD_FLAGS := -trimpath -ldflags "-X github.com/singularity-ng/singularity-edge/agent.Version=$(VERSION) -X github.com/singularity-ng/singularity-edge/agent.Commit=$(COMMIT)"
# Image name for `make docker`; FLY_APP for `make fly-deploy` (default: fly.toml's app).
IMAGE ?= singularity-edge:$(VERSION)
FLY_APP ?=

# Packages `make test` needs on Debian/Ubuntu; libssl-dev is OpenSSL's libcrypto,
# which signs TLS handshakes (internal/osslsign; `go build -tags noopenssl`
# builds without it), chromium drives the dashboard test, iproute2 the cluster tests'
# network namespaces, iptables their cut of one port.
TEST_DEBS := librocksdb-dev libssl-dev gcc g++ pkg-config chromium iproute2 iptables
# Packages the proxy comparison benchmark needs.
BENCH_DEBS := nginx libnginx-mod-stream haproxy caddy wrk curl openssl libssl-dev

.PHONY: all build run test test-short bench bench-storage bench-proxy-go bench-api bench-proxy bench-scale bench-cluster bench-wan deps deps-bench fuzz vet fmt clean docker fly-deploy

all: build

build: deps
	$(GO) build $(GO_BUILD_FLAGS) -o $(BIN) ./cmd/singularity-edge

# `make run` options: every agent flag has an EDGE_* twin in the environment,
# e.g. `EDGE_HTTP_ADDR=:9080 EDGE_ADMIN_ADDR=127.0.0.1:4100 EDGE_DATA_DIR=/tmp/edge make run`;
# further flags go in RUN_ARGS (`make run RUN_ARGS='--log-level debug'`).
export EDGE_DATA_DIR ?= ./data
RUN_ARGS ?=
run: build
	./$(BIN) agent $(RUN_ARGS)

deps:
	@scripts/deps.sh $(TEST_DEBS)

deps-bench:
	@scripts/deps.sh $(TEST_DEBS) $(BENCH_DEBS)

vet:
	$(GO) vet ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

test: deps
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) test -race -count=1 -timeout 15m ./...

test-short: deps
	$(GO) test -short -count=1 ./...

# Short fuzzing passes over every fuzz target (go test -fuzz runs one target at a time).
FUZZTIME ?= 20s
fuzz: deps
	@scripts/fuzz.sh $(FUZZTIME)

bench: bench-storage bench-proxy-go bench-api

bench-storage: deps
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 60m ./storage/bench/

# Backends created one by one through the admin API (real store, real HTTP):
# requests/s over the first and the last 1,000. BENCH_API_BACKENDS sets the
# total (the seed's scale is 1000000; about 10 minutes on a quiet 2-core machine).
BENCH_API_BACKENDS ?= 1000000
bench-api: deps
	BENCH_API_BACKENDS=$(BENCH_API_BACKENDS) $(GO) test -run '^$$' -bench BenchmarkAPIBackendLoad -benchtime 1x -timeout 120m ./admin/

bench-proxy-go: deps
	$(GO) test -run '^$$' -bench . -benchmem ./pools/ ./proxy/ ./certs/

# Side-by-side with nginx, HAProxy and Caddy (about 20 minutes; ROUNDS/DURATION/SCENARIOS pass through).
bench-proxy: build deps-bench
	scripts/bench-proxy.sh

# The image Fly runs, built locally (needs a Docker engine with BuildKit).
docker:
	docker build --build-arg VERSION=$(VERSION) --build-arg COMMIT=$(COMMIT) -t $(IMAGE) .

# Build on Fly's remote builder and roll the app's Machines one at a time
# (docs/runbooks/first-deploy.md sets the app up first).
fly-deploy:
	flyctl deploy --build-arg VERSION=$(VERSION) --build-arg COMMIT=$(COMMIT) $(if $(FLY_APP),--app $(FLY_APP))

# One agent at the seed's scale: 1,000 pools x 1,000 backends and 100,000
# ECDSA certificates, imported with `db import`; prints time to ready, memory,
# CPU at rest, admin API latency, /metrics size and proxy latency beside the
# goals (about 15 minutes; SCALE_FLAGS=-pools 100 -certs 10000 for a smaller run).
SCALE_FLAGS ?=
bench-scale: build
	$(GO) run ./scripts/benchscale -bin $(BIN) $(SCALE_FLAGS)

# Three agent processes on loopback take CLUSTER_RATE writes/s (default
# 1,000) for CLUSTER_DURATION through their admin APIs; prints replication
# lag p50/p99, CPU and RSS per agent beside the anchor (the same writes on
# one agent without peers, run first) and the goals (about 3 minutes).
CLUSTER_RATE ?= 1000
CLUSTER_DURATION ?= 1m
bench-cluster: build
	$(GO) run ./scripts/benchcluster -bin $(BIN) -rate $(CLUSTER_RATE) -duration $(CLUSTER_DURATION)

# Membership and replication across injected one-way delays between two
# regions (3 and 2 nodes), the fly preset beside the local one: suspicions,
# deaths, propagation p50/p99 to the last of 5 nodes and replication bytes per
# write (WAN_DURATION per case and delay; 0s: no added delay).
WAN_DURATION ?= 3m
WAN_DELAYS ?= 0s,80ms,150ms
bench-wan: deps
	EDGE_WAN_DURATION=$(WAN_DURATION) EDGE_WAN_DELAYS=$(WAN_DELAYS) $(GO) test -count=1 -timeout 60m -run '^$$' -bench PresetsAcrossRegions -benchtime 1x -v ./test/integration/wan/

clean:
	rm -rf bin
