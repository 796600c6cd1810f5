#!/usr/bin/env bash
# Benchmark of the ublk frontend in the VM of tests/vm/run: fio on /dev/ublkb0
# against the kernel's own NBD client on the pbrick nbdkit export and against a
# loop device over a tmpfs file, same jobs, one table of IOPS and ratios.
# Usage: bench/ublk-vm.sh [--runtime SECONDS] [--size SIZE]
# Environment: PBRICK_BIN_DIR (default build/, built if missing).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/../scripts/lib.sh"

while (($#)); do
  case $1 in
    --runtime) export PBRICK_BENCH_RUNTIME=$2; shift 2 ;;
    --size) export PBRICK_BENCH_SIZE=$2; shift 2 ;;
    *) die "usage: bench/ublk-vm.sh [--runtime SECONDS] [--size SIZE]" ;;
  esac
done
export PBRICK_BIN_DIR=${PBRICK_BIN_DIR:-$PBRICK_ROOT/build}
if [ ! -x "$PBRICK_BIN_DIR/gateway/pbrick-gateway" ]; then
  ensure_packages "${PBRICK_BUILD_PACKAGES[@]}"
  build_tree "$PBRICK_BIN_DIR" -DCMAKE_BUILD_TYPE=Release -DPBRICK_TESTS=OFF
fi
ensure_packages fio jq bc nbd-client
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-), host kernel $(uname -r)"
echo "guest: Debian bookworm-backports 6.12 under qemu (TCG unless KVM works): ratios matter, not IOPS"
"$PBRICK_ROOT/tests/vm/run" "$PBRICK_ROOT/bench/ublk-vm.bats" | sed -n 's/^# //p; /^not ok/p'
exit "${PIPESTATUS[0]}"
