#!/usr/bin/env bash
# Benchmark of first writes in the VM of tests/vm/run: how 4k reads of mapped
# blocks fare beside QD32 first writes to fresh blocks (each needing the
# block's ALLOC + MAP) on the same ublk queue, over soft-RoCE and TCP, for this
# build and optionally an older one, one table (bench/first-write-vm.bats).
# Usage: bench/first-write-vm.sh [--before BIN_DIR] [--runtime SECONDS] [--fresh BLOCKS] [--transports "rdma tcp"]
#   --before BIN_DIR  also measure the pbrick-gateway and pbrick-target of
#                     BIN_DIR (a build tree of another commit), row by row
# Environment: PBRICK_BIN_DIR (default build/, built if missing).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/../scripts/lib.sh"
# shellcheck source=bench/vm_host.bash
source "$(dirname "$0")/vm_host.bash"

usage="usage: bench/first-write-vm.sh [--before BIN_DIR] [--runtime SECONDS] [--fresh BLOCKS] [--transports LIST]"
while (($#)); do
  case $1 in
    --before)
      PBRICK_BENCH_BEFORE_BIN_DIR=$(cd "$2" && pwd) || die "--before $2: no such directory"
      export PBRICK_BENCH_BEFORE_BIN_DIR
      shift 2
      ;;
    --runtime) export PBRICK_BENCH_RUNTIME=$2; shift 2 ;;
    --fresh) export PBRICK_BENCH_FRESH_BLOCKS=$2; shift 2 ;;
    --transports) export PBRICK_BENCH_TRANSPORTS=$2; shift 2 ;;
    *) die "$usage" ;;
  esac
done
if [ -n "${PBRICK_BENCH_BEFORE_BIN_DIR:-}" ]; then
  for b in gateway/pbrick-gateway target/pbrick-target; do
    [ -x "$PBRICK_BENCH_BEFORE_BIN_DIR/$b" ] || die "--before $PBRICK_BENCH_BEFORE_BIN_DIR: no $b in it"
  done
fi
vm_bench_run first-write-vm.bats "soft-RoCE rxe0 on eth0" "fio jq ibverbs-providers librdmacm1 iproute2"
