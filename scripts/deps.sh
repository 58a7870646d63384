#!/usr/bin/env bash
# Makes sure the system packages named on the command line (Debian names)
# are there before a build or a test run.
#
# On Debian and Ubuntu (dpkg and apt-get, no nix shell, no CGO_CFLAGS or
# CGO_LDFLAGS) it installs the missing ones with apt-get. Anywhere else
# (inside `nix develop`, on NixOS, on macOS) nothing is installed: what each package provides is checked
# directly (a command on PATH, a header and library the C compiler finds
# with CGO_CFLAGS and CGO_LDFLAGS), and exactly what is missing is printed.
# Either way the RocksDB found must be 7.x: grocksdb v1.7.14 (go.mod) is
# built against RocksDB 7 and does not compile against other majors.
set -euo pipefail

rocksdb_major=7
# Where a RocksDB 7 comes from, printed when the one found is not.
rocksdb_help="RocksDB 7.x is needed: grocksdb v1.7.14 (go.mod) builds only against RocksDB 7.
Get it one of these ways:
  - Debian 12 (bookworm): \`make deps\` installs librocksdb-dev 7.8.3
  - nix: \`nix develop\` (flake.nix pins RocksDB 7.10)
  - the container image: \`make docker\` (Debian 12 inside)
  - from source: RocksDB v7.10.2, \`make shared_lib && make install-shared PREFIX=/opt/rocksdb-7\`,
    then export CGO_CFLAGS=-I/opt/rocksdb-7/include CGO_LDFLAGS=-L/opt/rocksdb-7/lib
    LD_LIBRARY_PATH=/opt/rocksdb-7/lib
Ubuntu 22.04 and 24.04 ship RocksDB 6 and 8: their librocksdb-dev does not do."

# major VERSION prints the major of a Debian or plain version (1:7.8.3-2 -> 7).
major() {
	local v=${1#*:}
	echo "${v%%.*}"
}

# debian_mode: apt-get installs what is missing. Inside a nix shell the
# system's dpkg says nothing about what the shell provides, and with
# CGO_CFLAGS or CGO_LDFLAGS set the build uses libraries of one's own (a
# RocksDB 7 built from source on Ubuntu): the checks below run instead.
debian_mode() {
	[ -z "${IN_NIX_SHELL:-}" ] && [ -z "${CGO_CFLAGS:-}${CGO_LDFLAGS:-}" ] &&
		command -v dpkg-query >/dev/null && command -v apt-get >/dev/null
}

if debian_mode; then
	missing=()
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
	done
	if [ ${#missing[@]} -gt 0 ]; then
		sudo=""
		[ "$(id -u)" -eq 0 ] || sudo="sudo"
		echo "installing: ${missing[*]}" >&2
		$sudo apt-get update -qq
		for p in "${missing[@]}"; do
			# Refuse a RocksDB of another major before installing it.
			if [ "$p" = librocksdb-dev ]; then
				candidate=$(apt-cache policy librocksdb-dev | sed -n 's/^ *Candidate: *//p')
				if [ -z "$candidate" ] || [ "$candidate" = "(none)" ] || [ "$(major "$candidate")" != "$rocksdb_major" ]; then
					echo "this system's librocksdb-dev is ${candidate:-not available}" >&2
					echo "$rocksdb_help" >&2
					exit 1
				fi
			fi
		done
		DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	fi
	for p in "$@"; do
		if [ "$p" = librocksdb-dev ]; then
			v=$(dpkg-query -W -f='${Version}' librocksdb-dev)
			if [ "$(major "$v")" != "$rocksdb_major" ]; then
				echo "librocksdb-dev $v is installed" >&2
				echo "$rocksdb_help" >&2
				exit 1
			fi
		fi
	done
	exit 0
fi

# Direct checks. ${a[@]+"${a[@]}"} expands an empty array under set -u in
# bash 3.2 too (macOS's /bin/bash). cc and c++ are what cgo runs by default; CC, CXX,
# CGO_CFLAGS and CGO_LDFLAGS point it elsewhere, and so they do here.
cc=${CC:-cc}
cxx=${CXX:-c++}
# shellcheck disable=SC2206 # flags are words, as cgo splits them
cflags=(${CGO_CFLAGS:-})
# shellcheck disable=SC2206
ldflags=(${CGO_LDFLAGS:-})

# has_header HEADER: the C compiler finds HEADER.
has_header() {
	printf '#include <%s>\n' "$1" | "$cc" ${cflags[@]+"${cflags[@]}"} -E -x c - -o /dev/null >/dev/null 2>&1
}

# links LIB: a program linked with -lLIB builds.
links() {
	local out
	out=$(mktemp)
	printf 'int main(void) { return 0; }\n' | "$cc" ${cflags[@]+"${cflags[@]}"} -x c - -o "$out" ${ldflags[@]+"${ldflags[@]}"} "-l$1" >/dev/null 2>&1
	local rc=$?
	rm -f "$out"
	return $rc
}

# first_command CMD...: the first of the commands that is on PATH.
first_command() {
	for c in "$@"; do
		command -v "$c" >/dev/null && { echo "$c"; return 0; }
	done
	return 1
}

problems=() # what stops the build or the tests
notes=()    # what only some tests need; they skip without it

command -v "${GO:-go}" >/dev/null || problems+=("go: no '${GO:-go}' on PATH (Go 1.26, go.mod's version)")
for p in "$@"; do
	case "$p" in
	gcc)
		command -v "$cc" >/dev/null || problems+=("gcc: no C compiler '$cc' on PATH (cgo needs one; set CC to use another)")
		;;
	g++)
		command -v "$cxx" >/dev/null || problems+=("g++: no C++ compiler '$cxx' on PATH (RocksDB is C++; set CXX to use another)")
		;;
	pkg-config)
		command -v pkg-config >/dev/null || problems+=("pkg-config: not on PATH")
		;;
	librocksdb-dev)
		if ! command -v "$cc" >/dev/null || ! command -v "$cxx" >/dev/null; then
			problems+=("librocksdb-dev: not checked, no C or C++ compiler")
		elif ! has_header rocksdb/c.h; then
			problems+=("librocksdb-dev: the C compiler finds no rocksdb/c.h (RocksDB 7 headers; CGO_CFLAGS=-I... if they are elsewhere)")
		else
			# version.h is C++ (it includes <string>).
			v=$(printf '#include <rocksdb/version.h>\nROCKSDB_MAJOR.ROCKSDB_MINOR.ROCKSDB_PATCH\n' |
				"$cxx" ${cflags[@]+"${cflags[@]}"} -E -P -x c++ - 2>/dev/null | tr -d ' ' | grep -E '^[0-9]+\.[0-9]+\.[0-9]+$' | tail -n1 || true)
			if [ -z "$v" ]; then
				problems+=("librocksdb-dev: rocksdb/version.h gives no version")
			elif [ "$(major "$v")" != "$rocksdb_major" ]; then
				problems+=("librocksdb-dev: RocksDB $v found, 7.x needed"$'\n'"$rocksdb_help")
			elif ! links rocksdb; then
				problems+=("librocksdb-dev: RocksDB $v headers found, but -lrocksdb does not link (CGO_LDFLAGS=-L... if the library is elsewhere)")
			fi
		fi
		;;
	libssl-dev)
		if ! command -v "$cc" >/dev/null; then
			problems+=("libssl-dev: not checked, no C compiler")
		elif ! has_header openssl/evp.h || ! links crypto; then
			problems+=("libssl-dev: OpenSSL 3's libcrypto (openssl/evp.h, -lcrypto) not found (or build with \`go build -tags noopenssl\`)")
		fi
		;;
	chromium)
		first_command chromium chromium-browser >/dev/null ||
			notes+=("chromium: not on PATH; the dashboard's browser test skips without /usr/bin/chromium")
		;;
	iproute2)
		command -v ip >/dev/null ||
			notes+=("iproute2: no 'ip' on PATH; the cluster's partition and latency tests skip without it")
		;;
	iptables)
		command -v iptables >/dev/null ||
			notes+=("iptables: not on PATH; the cluster test that cuts the replication port skips without it")
		;;
	libnginx-mod-stream)
		# nginx's stream module (the TCP and SNI benchmarks): built in, or
		# a loadable module in nginx's modules path. Without nginx the
		# nginx entry says so.
		if command -v nginx >/dev/null; then
			build=$(nginx -V 2>&1 | tr ' ' '\n')
			modules=$(sed -n 's/^--modules-path=//p' <<<"$build")
			if grep -qx -- '--with-stream=dynamic' <<<"$build"; then
				[ -f "${modules:-/usr/lib/nginx/modules}/ngx_stream_module.so" ] ||
					problems+=("libnginx-mod-stream: no ngx_stream_module.so in ${modules:-/usr/lib/nginx/modules}")
			elif ! grep -qx -- '--with-stream' <<<"$build"; then
				problems+=("libnginx-mod-stream: this nginx is built without the stream module")
			fi
		fi
		;;
	*)
		# The other packages are named after the command they bring.
		command -v "$p" >/dev/null || problems+=("$p: not on PATH")
		;;
	esac
done

for n in ${notes[@]+"${notes[@]}"}; do
	echo "note: $n" >&2
done
[ ${#problems[@]} -eq 0 ] && exit 0
if [ -n "${IN_NIX_SHELL:-}" ]; then
	where="inside a nix shell: this project's \`nix develop\` provides all but the proxy benchmark's servers (nginx, haproxy, caddy, wrk)"
else
	where="install them with your package manager, or run \`nix develop\` (flake.nix)"
fi
echo "missing ($where):" >&2
for p in "${problems[@]}"; do
	echo "  - $p" >&2
done
exit 1
