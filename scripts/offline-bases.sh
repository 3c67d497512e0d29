#!/usr/bin/env bash
# Makes Docker base images from this host's own binaries, without any registry:
#
#   tb-node-base:local   runtime base: node, /bin/sh and a few core tools, CA certificates,
#                        and the system libraries node and the native npm modules link
#                        (zeromq, sharp: libresolv, onnxruntime-node: librt), checked with ldd
#   tb-node-build:local  the runtime base plus npm (for `RUN npm ci` in a build stage)
#   tb-redis:local       the host's redis-server and its libraries
#
# Usage: scripts/offline-bases.sh [node|build|redis|all]...   (default: all)
# Env:   TB_NODE          node binary to put in the images (default: the node on PATH;
#                         .ci/run puts Node 24 there)
#        TB_NODE_MODULES  node_modules whose native addons the runtime base must load
#                         (default: ./node_modules when present); checked by loading
#                         sharp, zeromq (and onnxruntime-node when installed) in the image
#        TB_BASE_TAG      tag of the three images (default: local)
#        TB_REBUILD=1     rebuild even when an image with the same inputs exists
#
# Each image carries the label tensorbroker.inputs: a hash of this script and of the
# binaries it copied. An image whose label matches is kept; any other is rebuilt.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[offline-bases] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
command -v docker >/dev/null || die "docker is not installed"

NODE=$(readlink -f "${TB_NODE:-$(command -v node || true)}")
[ -x "$NODE" ] || die "no node binary (set TB_NODE)"
NODE_MODULES=${TB_NODE_MODULES:-$PWD/node_modules}
SELF_HASH=$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-16)
TAG=${TB_BASE_TAG:-local}

# Host shell tools for the bases: what Dockerfile RUN lines and npm install scripts call.
TOOLS=(sh env cat cp mv rm mkdir rmdir ln chmod ls uname id sed grep tar gzip)
# glibc pieces native addons load besides what node links (sharp needs libresolv,
# onnxruntime-node librt), and the NSS modules getaddrinfo may load for /etc/hosts.
EXTRA_LIBS=(libresolv.so.2 librt.so.1 libdl.so.2 libpthread.so.0 libnss_files.so.2 libnss_dns.so.2)
LIBDIR=$(dirname "$(ldd "$NODE" | grep -o '/[^ ]*/libc\.so\.6')")

# Copies a file (following symlinks) to the same path under the rootfs.
put() {
  local src=$1 root=$2 dest=${3:-$1}
  mkdir -p "$root$(dirname "$dest")"
  cp -L "$src" "$root$dest"
}

# Copies every library ldd lists for an ELF file; fails on a library missing on the host.
put_libs() {
  local file=$1 root=$2 out
  out=$(ldd "$file" 2>&1) || return 0 # not a dynamic ELF for this machine
  if grep -q 'not found' <<<"$out"; then die "ldd $file: $(grep 'not found' <<<"$out" | tr -s ' \t\n' ' ')"; fi
  for lib in $(grep -o '/[^ )]*' <<<"$out"); do
    [ -e "$root$lib" ] || put "$lib" "$root"
  done
}

# Every shared object under the rootfs resolves inside the rootfs (ldd with the
# rootfs's library folders only, the way the image's loader will see them).
check_ldd() {
  local root=$1 bad=0 out
  while IFS= read -r f; do
    [ "$(head -c4 "$f" | tail -c3)" = ELF ] || continue
    out=$(LD_LIBRARY_PATH="$root$LIBDIR:$root/usr$LIBDIR" ldd "$f" 2>&1 || true)
    for lib in $(grep -o '=> /[^ )]*' <<<"$out" | cut -c4-); do
      case $lib in "$root"*) ;; *) [ -e "$root$lib" ] || { log "$f needs $lib, not in the image"; bad=1; } ;; esac
    done
    if grep -q 'not found' <<<"$out"; then log "$f: $(grep 'not found' <<<"$out" | tr -s ' \t\n' ' ')"; bad=1; fi
  done < <(find "$root" -type f \( -perm -u+x -o -name '*.so*' -o -name '*.node' \))
  [ $bad = 0 ] || die "libraries missing in $root"
}

base_files() {
  local root=$1
  mkdir -p "$root"/{tmp,root,home/node,etc/ssl/certs,usr/local/bin,bin,usr/bin}
  chmod 1777 "$root/tmp"
  printf 'root:x:0:0:root:/root:/bin/sh\nnode:x:1000:1000:node:/home/node:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnode:x:1000:\nnogroup:x:65534:\n' >"$root/etc/group"
  printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
  chown 1000:1000 "$root/home/node"
  if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
  else
    log "warning: no /etc/ssl/certs/ca-certificates.crt on this host (apt-get install ca-certificates)"
  fi
  for t in "${TOOLS[@]}"; do
    local p; p=$(command -v "$t") || die "$t is not installed on this host"
    p=$(readlink -f "$p")
    put "$p" "$root" "/usr/bin/$t"
    put_libs "$p" "$root"
  done
  ln -sf ../usr/bin/sh "$root/bin/sh"
  for l in "${EXTRA_LIBS[@]}"; do [ -e "$LIBDIR/$l" ] && put "$LIBDIR/$l" "$root"; done
  # /lib64/ld-linux-x86-64.so.2 etc. come in through ldd of node.
}

# Imports a rootfs as an image with the given label hash unless one with that hash exists.
import_image() {
  local root=$1 tag=$2 hash=$3; shift 3
  local tar; tar=$(mktemp --suffix=.tar)
  tar --numeric-owner -C "$root" -cf "$tar" .
  local changes=(--change "LABEL tensorbroker.inputs=$hash")
  for c in "$@"; do changes+=(--change "$c"); done
  docker import "${changes[@]}" "$tar" "$tag" >/dev/null
  rm -f "$tar"
  log "$tag: $(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}')"
}

current() { # label of an existing image, or nothing
  docker image inspect -f '{{index .Config.Labels "tensorbroker.inputs"}}' "$1" 2>/dev/null || true
}

native_addons() { # the linux-x64 glibc native files in node_modules (sharp, zeromq, onnxruntime-node, ...)
  [ -d "$NODE_MODULES" ] || return 0
  find "$NODE_MODULES" -path '*linux*x64*' -not -path '*musl*' -type f \( -name '*.node' -o -name '*.so*' \) 2>/dev/null | sort
}

NODE_ENV_CHANGES=('ENV PATH=/usr/local/bin:/usr/bin:/bin' 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' 'WORKDIR /')

make_node() {
  local tag=tb-node-base:$TAG
  local hash; hash=$(cat <(echo "$SELF_HASH") "$NODE" <(for t in "${TOOLS[@]}"; do readlink -f "$(command -v "$t")"; done) | sha256sum | cut -c1-16)
  if [ "${TB_REBUILD:-}" != 1 ] && [ "$(current $tag)" = "$hash" ]; then log "$tag is up to date ($hash)"; return; fi
  log "building $tag from $NODE ($("$NODE" --version))"
  local root; root=$(mktemp -d)/rootfs
  base_files "$root"
  put "$NODE" "$root" /usr/local/bin/node
  put_libs "$NODE" "$root"
  # The addons' own libraries (libvips, libonnxruntime) ship in node_modules: only the
  # system ones they need are copied; ldd them again against the rootfs.
  for f in $(native_addons); do
    out=$(LD_LIBRARY_PATH="$root$LIBDIR" ldd "$f" 2>&1 || true)
    for lib in $(grep -o '=> /[^ )]*' <<<"$out" | cut -c4-); do
      case $lib in "$NODE_MODULES"*|"$root"*) ;; *) [ -e "$root$lib" ] || put "$lib" "$root" ;; esac
    done
  done
  check_ldd "$root"
  import_image "$root" "$tag" "$hash" "${NODE_ENV_CHANGES[@]}"
  rm -rf "$(dirname "$root")"
  docker run --rm --network none "$tag" sh -c 'node -e "console.log(\"node\", process.version, \"openssl\", process.versions.openssl)"' >&2
  if [ -d "$NODE_MODULES/sharp" ]; then
    docker run --rm --network none -v "$NODE_MODULES:/check/node_modules:ro" -w /check "$tag" node -e "
      require('zeromq'); const s = require('sharp'); let ort = 'not installed';
      try { require.resolve('onnxruntime-node'); require('onnxruntime-node'); ort = 'ok'; } catch (e) { if (e.code !== 'MODULE_NOT_FOUND') throw e; }
      console.log('native modules load: zeromq ok, sharp (libvips ' + s.versions.vips + ') ok, onnxruntime-node ' + ort);" >&2
  fi
}

make_build() {
  make_node
  local tag=tb-node-build:$TAG
  local npm_dir; npm_dir=$(readlink -f "$(dirname "$(readlink -f "$(command -v npm)")")/..")
  [ -f "$npm_dir/package.json" ] || die "npm not found next to $(command -v npm)"
  local hash; hash=$(cat <(echo "$SELF_HASH") <(current "tb-node-base:$TAG") "$npm_dir/package.json" | sha256sum | cut -c1-16)
  if [ "${TB_REBUILD:-}" != 1 ] && [ "$(current $tag)" = "$hash" ]; then log "$tag is up to date ($hash)"; return; fi
  log "building $tag: tb-node-base:$TAG + npm $(node -p "require('$npm_dir/package.json').version") from $npm_dir"
  local dir; dir=$(mktemp -d)
  cp -a "$npm_dir" "$dir/npm"
  cat >"$dir/Dockerfile" <<EOF
FROM tb-node-base:$TAG
COPY npm /usr/local/lib/node_modules/npm
# npm trusts the host's CA bundle, as the host's npm does (a TLS proxy's CA included).
ENV npm_config_cafile=/etc/ssl/certs/ca-certificates.crt
RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm && ln -s ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx && npm --version
EOF
  DOCKER_BUILDKIT=0 docker build -q --pull=false --network none --label "tensorbroker.inputs=$hash" -t "$tag" "$dir" >/dev/null
  rm -rf "$dir"
  docker run --rm --network none "$tag" sh -c 'echo "npm $(npm --version) on node $(node --version)"' >&2
}

make_redis() {
  local tag=tb-redis:$TAG
  local bin; bin=$(readlink -f "$(command -v redis-server || true)")
  [ -x "$bin" ] || die "redis-server is not installed on this host (apt-get install redis-server)"
  local hash; hash=$(cat <(echo "$SELF_HASH") "$bin" | sha256sum | cut -c1-16)
  if [ "${TB_REBUILD:-}" != 1 ] && [ "$(current $tag)" = "$hash" ]; then log "$tag is up to date ($hash)"; return; fi
  log "building $tag from $(command -v redis-server) ($(redis-server --version | grep -o 'v=[^ ]*'))"
  local root; root=$(mktemp -d)/rootfs
  mkdir -p "$root"/{tmp,data,etc}
  chmod 1777 "$root/tmp"
  printf 'root:x:0:0:root:/root:/bin/sh\nredis:x:999:999:redis:/data:/bin/sh\n' >"$root/etc/passwd"
  printf 'root:x:0:\nredis:x:999:\n' >"$root/etc/group"
  chown 999:999 "$root/data"
  put "$bin" "$root" /usr/bin/redis-server
  put_libs "$bin" "$root"
  check_ldd "$root"
  import_image "$root" "$tag" "$hash" 'ENV PATH=/usr/bin:/bin' 'WORKDIR /data' 'USER redis' 'CMD ["redis-server"]'
  rm -rf "$(dirname "$root")"
  docker run --rm --network none "$tag" redis-server --version >&2
}

[ $# -gt 0 ] || set -- all
for what in "$@"; do
  case $what in
    node) make_node ;;
    build) make_build ;;
    redis) make_redis ;;
    all) make_build; make_redis ;;
    *) die "unknown image '$what' (node|build|redis|all)" ;;
  esac
done
