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
  nbdkit libnbd-bin qemu-utils fio
  ibverbs-providers rdma-core rdmacm-utils ibverbs-utils iproute2
  dpkg-dev lintian systemd-container
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
  apt-get update -q || die "apt-get update failed"
  apt-get install -y -q --no-install-recommends "${missing[@]}" || die "apt-get install failed: ${missing[*]}"
}

# build_tree DIR [cmake args...]: configure (once) and build.
build_tree() {
  local dir=$1
  shift
  if [ ! -f "$dir/build.ninja" ]; then
    cmake -S "$PBRICK_ROOT" -B "$dir" -G Ninja "$@" || die "cmake configure failed ($dir)"
  fi
  cmake --build "$dir" -j "$(nproc)" || die "build failed ($dir)"
}
