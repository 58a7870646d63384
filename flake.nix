{
  description = "Singularity Edge: edge load balancer for Fly.io";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" "x86_64-darwin" "aarch64-darwin" ];
      forAll = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in {
      devShells = forAll (pkgs: {
        default = pkgs.mkShell {
          # grocksdb v1.7.14 builds against RocksDB 7.x headers.
          buildInputs = with pkgs; [ go gcc pkg-config rocksdb_7_10 snappy lz4 zstd bzip2 zlib ];
          nativeBuildInputs = with pkgs; [ gnumake curl chromium wrk nginx haproxy caddy ];
          CGO_ENABLED = "1";
        };
      });
    };
}
