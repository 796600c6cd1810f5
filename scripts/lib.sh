# Shared helpers for scripts/demo and scripts/test. Source it; do not run it.
# shellcheck shell=bash

PBRICK_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PBRICK_ROOT

# Debian packages the build, the tests and the demo need.
PBRICK_BUILD_PACKAGES=(
  cmake ninja-build g++ pkg-config
  liburing-dev libpmem-dev libyaml-cpp-dev libsystemd-dev libssl-dev
  libgtest-dev nbdkit-plugin-dev libibverbs-dev librdmacm-dev
)
# What the demo runs: the NBD server and clients it shows the volume with.
PBRICK_DEMO_PACKAGES=(
  nbdkit libnbd-bin
)
PBRICK_TEST_PACKAGES=(
  clang libclang-rt-14-dev
  bats bats-assert bats-support
  python3 procps psmisc jq xxd systemd
  nbdkit libnbd-bin qemu-utils fio python3-fusepy
  ibverbs-providers rdma-core rdmacm-utils ibverbs-utils iproute2
  dpkg-dev lintian systemd-container ccache
)

say() { printf '\n==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Installs whichever of the given packages are missing (apt-get update first).
# Idempotent: does nothing when everything is there.
ensure_packages() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  ((${#missing[@]} == 0)) && return 0
  if [ "$(id -u)" -ne 0 ]; then
    die "missing packages: ${missing[*]} (run as root, or install them: apt-get install ${missing[*]})"
  fi
  say "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # One install at a time: lanes of scripts/test (and tests/vm/run) may need
  # packages at once, and a second apt-get fails at once on apt's locks.
  (
    flock 9 || exit 1
    apt-get update -q || die "apt-get update failed"
    apt-get install -y -q --no-install-recommends "${missing[@]}" || die "apt-get install failed: ${missing[*]}"
  ) 9>/run/pbrick-apt.lock || exit 1
}

# tree_is_configured DIR [-DNAME=VALUE...]: succeeds when DIR is a configured
# Ninja tree whose cache holds every NAME=VALUE given; fails when it is missing
# or any option differs (for example a tree configured with PBRICK_TESTS=OFF
# when the tests need ON). Arguments other than -D are not compared.
tree_is_configured() {
  local dir=$1 arg name value cached
  shift
  [ -f "$dir/build.ninja" ] && [ -f "$dir/CMakeCache.txt" ] || return 1
  for arg in "$@"; do
    [[ $arg == -D*=* ]] || continue
    name=${arg#-D}
    value=${name#*=}
    name=${name%%=*}
    name=${name%%:*}
    cached=$(grep -E -m 1 "^$name:[A-Z]+=" "$dir/CMakeCache.txt") || return 1
    [ "${cached#*=}" = "$value" ] || return 1
  done
}

# build_tree DIR [cmake args...] [-- TARGET...]: configures DIR - again when
# its cached options differ from the -D options given, so that trees shared by
# scripts/demo and scripts/test (or a tree the user configured) get what the
# caller asks for - and builds the given targets (default: all).
build_tree() {
  local dir=$1 args=() targets=() t
  shift
  while (($#)) && [ "$1" != -- ]; do args+=("$1"); shift; done
  (($#)) && shift
  for t in "$@"; do targets+=(--target "$t"); done
  if ! tree_is_configured "$dir" "${args[@]}"; then
    if [ -f "$dir/CMakeCache.txt" ]; then
      echo "reconfiguring $dir: its cached options differ from ${args[*]}"
      # CMake answers a new compiler in an existing cache by deleting the
      # cache and configuring with the compiler alone, every other -D option
      # dropped: a tree configured with another compiler starts afresh.
      for t in "${args[@]}"; do
        [[ $t == -DCMAKE_C_COMPILER=* || $t == -DCMAKE_CXX_COMPILER=* ]] || continue
        tree_is_configured "$dir" "$t" && continue
        echo "reconfiguring $dir from scratch: it was configured with another compiler than ${t#-D}"
        rm -rf "$dir/CMakeCache.txt" "$dir/CMakeFiles"
        break
      done
    fi
    cmake -S "$PBRICK_ROOT" -B "$dir" -G Ninja "${args[@]}" || die "cmake configure failed ($dir)"
  fi
  cmake --build "$dir" -j "$(nproc)" "${targets[@]}" || die "build failed ($dir)"
}
