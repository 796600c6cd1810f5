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
# shellcheck source=bench/vm_host.bash
source "$(dirname "$0")/vm_host.bash"

usage="usage: bench/chain-vm.sh [--runtime SECONDS] [--size SIZE] [--rounds N]"
while (($#)); do
  case $1 in
    --runtime) export PBRICK_BENCH_RUNTIME=${2:?--runtime needs seconds}; shift 2 ;;
    --size) export PBRICK_BENCH_SIZE=${2:?--size needs a size}; shift 2 ;;
    --rounds) export PBRICK_BENCH_ROUNDS=${2:?--rounds needs a number}; shift 2 ;;
    *) die "$usage" ;;
  esac
done
# The guest runs the host's fio and the rxe provider of libibverbs.
vm_bench_run chain-vm.bats "" "fio jq ibverbs-providers librdmacm1 iproute2"
