# Singularity Edge build. `make run` and `make test` work on a fresh Debian 12
# machine: `make deps` installs the system packages they need when missing.
SHELL := /bin/bash
BIN := bin/singularity-edge
GO ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS := -X github.com/singularity-ng/singularity-edge/agent.Version=$(VERSION) -X github.com/singularity-ng/singularity-edge/agent.Commit=$(COMMIT)
export CGO_ENABLED := 1

# Packages `make test` needs on Debian/Ubuntu; chromium drives the dashboard test.
TEST_DEBS := librocksdb-dev gcc pkg-config chromium
# Packages the proxy comparison benchmark needs.
BENCH_DEBS := nginx libnginx-mod-stream haproxy caddy wrk curl openssl libssl-dev

.PHONY: all build run test test-short bench bench-storage bench-proxy-go bench-proxy bench-scale deps deps-bench fuzz vet fmt clean

all: build

build: deps
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/singularity-edge

run: build
	./$(BIN) agent --data-dir ./data

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

bench: bench-storage bench-proxy-go

bench-storage: deps
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 60m ./storage/bench/

bench-proxy-go: deps
	$(GO) test -run '^$$' -bench . -benchmem ./pools/ ./proxy/ ./certs/

# Side-by-side with nginx, HAProxy and Caddy (about 20 minutes; ROUNDS/DURATION/SCENARIOS pass through).
bench-proxy: build deps-bench
	scripts/bench-proxy.sh

# One agent at the seed's scale: 1,000 pools x 1,000 backends and 100,000
# ECDSA certificates, imported with `db import`; prints time to ready, memory,
# CPU at rest, admin API latency, /metrics size and proxy latency beside the
# goals (about 15 minutes; SCALE_FLAGS=-pools 100 -certs 10000 for a smaller run).
SCALE_FLAGS ?=
bench-scale: build
	$(GO) run ./scripts/benchscale -bin $(BIN) $(SCALE_FLAGS)

clean:
	rm -rf bin
