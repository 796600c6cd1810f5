#!/usr/bin/env bash
# Syncs chained to lone writes, on and off, in one boot of the VM of
# tests/vm/run: fio writes with an fsync after each write (psync, QD1) on two
# volumes of one brick, one gateway as built and one with --no-chained-syncs,
# in turn, over TCP (127.0.0.1) and over RDMA with rpc (soft-RoCE rxe0). One
# line per job: writes/s, the write's and the fsync's mean latency, and the
# gateway's and the brick's CPU per fsync'd write (bench/chain-vm.bats).
# Usage: bench/chain-vm.sh [--runtime SECONDS] [--size SIZE] [--rounds N]
#   --runtime SEC   measured seconds per job after a 1 s ramp (default 4, at least 3)
#   --size SIZE     bytes each job spans (default 32M)
#   --rounds N      times the four jobs run in turn (default 2)
# Environment: PBRICK_BIN_DIR (default build/, built if missing).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/../scripts/lib.sh"

usage="usage: bench/chain-vm.sh [--runtime SECONDS] [--size SIZE] [--rounds N]"
while (($#)); do
  case $1 in
    --runtime) export PBRICK_BENCH_RUNTIME=${2:?--runtime needs seconds}; shift 2 ;;
    --size) export PBRICK_BENCH_SIZE=${2:?--size needs a size}; shift 2 ;;
    --rounds) export PBRICK_BENCH_ROUNDS=${2:?--rounds needs a number}; shift 2 ;;
    *) die "$usage" ;;
  esac
done
export PBRICK_BIN_DIR=${PBRICK_BIN_DIR:-$PBRICK_ROOT/build}
if [ ! -x "$PBRICK_BIN_DIR/gateway/pbrick-gateway" ]; then
  ensure_packages "${PBRICK_BUILD_PACKAGES[@]}"
  build_tree "$PBRICK_BIN_DIR" -DCMAKE_BUILD_TYPE=Release -DPBRICK_TESTS=OFF
fi
# The guest runs the host's fio and the rxe provider of libibverbs.
ensure_packages fio jq ibverbs-providers librdmacm1 iproute2
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-), host kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg) at start"
echo "guest: Debian bookworm-backports 6.12 under qemu (TCG unless KVM works): ratios matter, not rates"
echo "pbrick: $(git -C "$PBRICK_ROOT" describe --always --dirty 2>/dev/null || echo unknown), $(sed -n 's/^CMAKE_BUILD_TYPE:[A-Z]*=//p' "$PBRICK_BIN_DIR/CMakeCache.txt" 2>/dev/null) ($PBRICK_BIN_DIR)"
set +e
"$PBRICK_ROOT/tests/vm/run" "$PBRICK_ROOT/bench/chain-vm.bats" | sed -n 's/^# //p; /^not ok/p'
rc=${PIPESTATUS[0]}
set -e
echo "load $(cut -d' ' -f1-3 /proc/loadavg) at end"
exit "$rc"
