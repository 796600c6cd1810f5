#!/usr/bin/env bash
# Benchmark of the ublk frontend in the VM of tests/vm/run: fio on /dev/ublkb0
# against the kernel's own NBD client on the pbrick nbdkit export and against a
# loop device over a tmpfs file, same jobs, one table of IOPS and ratios.
# Usage: bench/ublk-vm.sh [--runtime SECONDS] [--size SIZE]
# Environment: PBRICK_BIN_DIR (default build/, built if missing).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/../scripts/lib.sh"
# shellcheck source=bench/vm_host.bash
source "$(dirname "$0")/vm_host.bash"

while (($#)); do
  case $1 in
    --runtime) export PBRICK_BENCH_RUNTIME=$2; shift 2 ;;
    --size) export PBRICK_BENCH_SIZE=$2; shift 2 ;;
    *) die "usage: bench/ublk-vm.sh [--runtime SECONDS] [--size SIZE]" ;;
  esac
done
vm_bench_run ublk-vm.bats "" "fio jq bc nbd-client"
