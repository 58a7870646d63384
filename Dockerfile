# syntax=docker/dockerfile:1
#
# Singularity Edge image: `make docker` builds it locally, `fly deploy` on
# Fly's builders. Two stages on Debian bookworm, because grocksdb v1.7.14
# links against RocksDB 7.x and bookworm ships exactly RocksDB 7.8.3
# (librocksdb-dev to build, librocksdb7.8 to run), and OpenSSL 3.0's
# libcrypto signs TLS handshakes (libssl-dev to build, libssl3 to run). test/integration/
# docker_test.go checks that the runtime packages below are the ones the
# binary links and that the build flags are the Makefile's.

# ---- build: cgo against bookworm's RocksDB headers --------------------------
FROM golang:1.26-bookworm AS build

RUN apt-get update \
 && apt-get install -y --no-install-recommends librocksdb-dev libssl-dev pkg-config \
 && rm -rf /var/lib/apt/lists/* \
 && test "$(pkg-config --modversion rocksdb)" = "7.8.3"

WORKDIR /src
# Modules first: this layer is reused until go.mod or go.sum change.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/root/go/pkg/mod go mod download

COPY . .
# The Makefile's GO_BUILD_FLAGS, with the version passed in by `make docker`.
ARG VERSION=dev
ARG COMMIT=unknown
ENV CGO_ENABLED=1
RUN --mount=type=cache,target=/root/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    go build -trimpath -ldflags "-X github.com/singularity-ng/singularity-edge/agent.Version=${VERSION} -X github.com/singularity-ng/singularity-edge/agent.Commit=${COMMIT}" \
      -o /out/singularity-edge ./cmd/singularity-edge \
 && /out/singularity-edge --help >/dev/null

# ---- runtime: the RocksDB shared library, CA roots, an unprivileged user ----
FROM debian:bookworm-slim AS runtime

# librocksdb7.8 brings the compression libraries RocksDB links (snappy, lz4,
# zstd, bz2, zlib) and gflags; libssl3 is libcrypto (internal/osslsign);
# ca-certificates lets the agent verify ACME servers and backends with
# full_strict. setpriv (util-linux) is already in the base image and drops
# root in the entrypoint.
RUN apt-get update \
 && apt-get install -y --no-install-recommends librocksdb7.8 libssl3 ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# A fixed uid/gid, so the ownership of a volume means the same thing in every
# image version.
RUN groupadd --system --gid 10001 edge \
 && useradd --system --uid 10001 --gid edge --home-dir /data --no-create-home --shell /usr/sbin/nologin edge

COPY --from=build /out/singularity-edge /usr/local/bin/singularity-edge
COPY docker/entrypoint.sh /usr/local/bin/entrypoint.sh

# The volume's mount point on Fly; the agent's Fly default as well.
ENV EDGE_DATA_DIR=/data EDGE_UID=10001 EDGE_GID=10001
# 8080/8443 proxy (Fly maps 80/443 here), 4000 admin API (6PN only on Fly),
# 4001 health listener.
EXPOSE 8080 8443 4000 4001

# The container starts as root only so that the entrypoint can hand a fresh,
# root-owned volume to the edge user; it then execs the agent as that user.
ENTRYPOINT ["/usr/local/bin/entrypoint.sh"]
CMD ["singularity-edge", "agent"]
