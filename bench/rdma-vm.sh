#!/usr/bin/env bash
# Benchmark of pbrick over RDMA in the VM of tests/vm/run (soft-RoCE, rdma_rxe):
# fio on /dev/ublkbN from pbrick-gateway over --transport rdma, on one from a
# gateway over --transport tcp (both bricks' stores on tmpfs), and fio's own
# rdma engine between two fio processes over the same rxe device (the raw
# transport's limit); same jobs, one table of rates and ratios, plus the
# bricks' CPU seconds per job.
# Usage: bench/rdma-vm.sh [--runtime SECONDS] [--size SIZE]
# Environment: PBRICK_BIN_DIR (default build/, built if missing);
# PBRICK_VM_MEM (default 4G here: two stores in the guest's /dev/shm).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/../scripts/lib.sh"

while (($#)); do
  case $1 in
    --runtime) export PBRICK_BENCH_RUNTIME=$2; shift 2 ;;
    --size) export PBRICK_BENCH_SIZE=$2; shift 2 ;;
    *) die "usage: bench/rdma-vm.sh [--runtime SECONDS] [--size SIZE]" ;;
  esac
done
export PBRICK_BIN_DIR=${PBRICK_BIN_DIR:-$PBRICK_ROOT/build}
export PBRICK_VM_MEM=${PBRICK_VM_MEM:-4G}
if [ ! -x "$PBRICK_BIN_DIR/gateway/pbrick-gateway" ]; then
  ensure_packages "${PBRICK_BUILD_PACKAGES[@]}"
  build_tree "$PBRICK_BIN_DIR" -DCMAKE_BUILD_TYPE=Release -DPBRICK_TESTS=OFF
fi
# The guest runs the host's fio (its rdma engine needs librdmacm) and the rxe
# provider of libibverbs.
ensure_packages fio jq ibverbs-providers librdmacm1 iproute2
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-), host kernel $(uname -r)"
echo "guest: Debian bookworm-backports 6.12 under qemu (TCG unless KVM works), $PBRICK_VM_MEM, soft-RoCE rxe0 on eth0: ratios matter, not rates"
"$PBRICK_ROOT/tests/vm/run" "$PBRICK_ROOT/bench/rdma-vm.bats" | sed -n 's/^# //p; /^not ok/p'
exit "${PIPESTATUS[0]}"
