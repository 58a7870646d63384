{
  description = "Singularity Edge: edge load balancer for Fly.io (dev shell)";

  # Two pins, both locked in flake.lock:
  # - nixpkgs (nixos-unstable of 2026-02-23) for Go 1.26, which go.mod
  #   requires, and the tools;
  # - nixpkgs-rocksdb (nixos-24.11) only for rocksdb_7_10: grocksdb's minor
  #   versions follow RocksDB's majors, and v1.7.14 is built and tested here
  #   against RocksDB 7.x (Debian bookworm's 7.8.3 in CI and in the image),
  #   while nixpkgs' default rocksdb is a later major. 7.10.2 is the 7.x
  #   release nixpkgs packages; its headers are a superset of 7.8's.
  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";
    nixpkgs-rocksdb.url = "github:NixOS/nixpkgs/nixos-24.11";
  };

  outputs = { self, nixpkgs, nixpkgs-rocksdb }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" "x86_64-darwin" "aarch64-darwin" ];
      forAll = f: nixpkgs.lib.genAttrs systems (system: f {
        pkgs = nixpkgs.legacyPackages.${system};
        rocksdbPkgs = nixpkgs-rocksdb.legacyPackages.${system};
      });
    in {
      devShells = forAll ({ pkgs, rocksdbPkgs }:
        let
          go = pkgs.go_1_26;
          rocksdb = rocksdbPkgs.rocksdb_7_10;
        in
        assert pkgs.lib.versions.majorMinor go.version == "1.26";
        assert pkgs.lib.versions.major rocksdb.version == "7";
        {
          default = pkgs.mkShell {
            # Linked by cgo: grocksdb's LDFLAGS are -lrocksdb -lstdc++ -lm
            # -lzstd -llz4 -lz -lsnappy; internal/osslsign's -lcrypto
            # (OpenSSL 3).
            buildInputs = [ rocksdb ] ++ (with pkgs; [ zstd lz4 zlib snappy bzip2 openssl ]);
            nativeBuildInputs = [ go ] ++ (with pkgs; [
              pkg-config
              gnumake
              flyctl # fly deploy, fly ssh console: docs/runbooks/
              pebble # Let's Encrypt's ACME test server (the certificate tests)
              dnsutils # dig, for Fly's internal DNS (<app>.internal, vms.<app>.internal)
              curl
              openssl
            ]) ++ pkgs.lib.optionals pkgs.stdenv.isLinux (with pkgs; [
              iproute2 # ip netns, tc netem: the cluster's partition and latency tests
              iptables
              util-linux # setpriv, as the image's entrypoint uses it
              chromium # the dashboard's browser test
            ]);
            CGO_ENABLED = "1";
            shellHook = ''
              echo "singularity-edge dev shell: $(go version | cut -d' ' -f3), RocksDB ${rocksdb.version}"
            '';
          };
        });
    };
}
