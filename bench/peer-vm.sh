#!/usr/bin/env bash
# pbrick against the kernel's NVMe over Fabrics in the VM of tests/vm/run:
# fio on /dev/ublkbN (pbrick-gateway -> brick, store on tmpfs; over RDMA also
# with sync-read to a brick on an emulated eADR NVDIMM) and on
# /dev/nvmeXnY (nvme connect -> nvmet, namespace on a brd ramdisk), over TCP
# (127.0.0.1; pbrick also to a brick on a unix socket) and over RDMA
# (soft-RoCE rxe0), the same jobs, one table of
# rates, ratios, mean and p99 latency (QD1 and fsync rows) and CPU per I/O,
# then the floor of a 4k QD1 I/O in the VM (null_blk; a ublk read the
# gateway answers without the brick; a loopback TCP round trip between two
# processes; one one-sided RDMA READ and WRITE at a time between two fio
# processes over rxe0).
# Usage: bench/peer-vm.sh [--runtime SECONDS] [--size SIZE] [--gateway-args "ARGS"]
#   --runtime SEC   measured seconds per job after a 1 s ramp (default 4, at least 3)
#   --size SIZE     bytes each job spans (default 128M)
#   --gateway-args "ARGS"  more pbrick-gateway attach flags for both gateways,
#                   e.g. "--poll-us 300" or "--pin-queues"
# Environment: PBRICK_BIN_DIR (default build/, built if missing); PBRICK_VM_MEM
# (default 4G: two stores in the guest's /dev/shm and two ramdisks);
# PBRICK_VM_STORE (default devdax: an emulated NVDIMM whose platform declares
# eADR, for the RDMA sync-read setup; "file" leaves it out).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/../scripts/lib.sh"
# shellcheck source=bench/vm_host.bash
source "$(dirname "$0")/vm_host.bash"

while (($#)); do
  case $1 in
    --runtime) export PBRICK_BENCH_RUNTIME=${2:?--runtime needs seconds}; shift 2 ;;
    --size) export PBRICK_BENCH_SIZE=${2:?--size needs a size}; shift 2 ;;
    --gateway-args) export PBRICK_BENCH_GW_ARGS=${2?--gateway-args needs flags}; shift 2 ;;
    *) die "usage: bench/peer-vm.sh [--runtime SECONDS] [--size SIZE] [--gateway-args \"ARGS\"]" ;;
  esac
done
export PBRICK_VM_MEM=${PBRICK_VM_MEM:-4G}
export PBRICK_VM_STORE=${PBRICK_VM_STORE:-devdax} PBRICK_VM_PMEM_SIZE=${PBRICK_VM_PMEM_SIZE:-1G}
# The guest runs the host's programs: fio, nvme-cli, the rxe provider.
vm_bench_run peer-vm.bats "" "fio jq nvme-cli ibverbs-providers librdmacm1 iproute2" bench/tcp_round_trip
