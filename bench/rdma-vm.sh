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
# shellcheck source=bench/vm_host.bash
source "$(dirname "$0")/vm_host.bash"

while (($#)); do
  case $1 in
    --runtime) export PBRICK_BENCH_RUNTIME=$2; shift 2 ;;
    --size) export PBRICK_BENCH_SIZE=$2; shift 2 ;;
    *) die "usage: bench/rdma-vm.sh [--runtime SECONDS] [--size SIZE]" ;;
  esac
done
export PBRICK_VM_MEM=${PBRICK_VM_MEM:-4G}
# The guest runs the host's fio (its rdma engine needs librdmacm) and the rxe
# provider of libibverbs.
vm_bench_run rdma-vm.bats "soft-RoCE rxe0 on eth0" "fio jq ibverbs-providers librdmacm1 iproute2"
