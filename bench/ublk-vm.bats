#!/usr/bin/env bats
# The ublk benchmark's guest half (bench/ublk-vm.sh boots the VM and runs it):
# fio on /dev/ublkb0 (pbrick-gateway -> brick over TCP), on /dev/nbd0 (the
# kernel's NBD client -> nbdkit with the pbrick plugin -> the same brick) and
# on a loop device over a tmpfs file (the kernel's own local block device),
# same jobs, one table. The brick's store is in memory too (/dev/shm), so no
# side pays for the guest's disk. Under emulation absolute numbers mean
# little; the ratios do.

load ../tests/vm/helpers
load vm_bench

# The brick's store, in memory like the loop device's file.
store_dir() { mkdir -p /dev/shm/pbrick-bench && echo /dev/shm/pbrick-bench; }

SIZE=${PBRICK_BENCH_SIZE:-256M}
RUNTIME=${PBRICK_BENCH_RUNTIME:-5}
GW_BIN="$PBRICK_BIN_DIR/gateway/pbrick-gateway"

say() { echo "ublk-vm: $*" >&2; }

@test "fio: ublk vs kernel nbd vs loop on tmpfs" {
  require_vm
  [ -c /dev/ublk-control ] || skip "no /dev/ublk-control"
  ((RUNTIME >= 3)) || { say "--runtime: at least 3 s (the CPU window is runtime - 1 s)"; false; }
  CLK=$(getconf CLK_TCK)
  start_brick bench --size 1G
  local brick=$BRICK_PID
  "$GW_BIN" attach --target "$TARGET" --size 1G -q 2 -d 64 >"$BATS_TEST_TMPDIR/gw.out" \
    2>"$BATS_TEST_TMPDIR/gw.log" &
  GW_PID=$!
  for _ in $(seq 1 300); do [ -s "$BATS_TEST_TMPDIR/gw.out" ] && break; sleep 0.1; done
  UBLK=$(head -n1 "$BATS_TEST_TMPDIR/gw.out")
  [ -b "$UBLK" ] || { cat "$BATS_TEST_TMPDIR/gw.log" >&2; false; }
  start_nbd target="$TARGET" size=1G base=0x40000000
  nbd_attach /dev/nbd0
  truncate -s 1G /tmp/bench-loop.img
  LOOP=$(losetup -f --show /tmp/bench-loop.img)

  # Precondition: real data everywhere, so no device answers reads from holes.
  for dev in "$UBLK" /dev/nbd0 "$LOOP"; do
    fio --name=fill --filename="$dev" --direct=1 --ioengine=io_uring --rw=write --bs=1M --iodepth=8 \
      --size="$SIZE" --output-format=terse >/dev/null
  done

  # Per device: its front and back processes for run_job's CPU columns.
  local -A front=([ublk]=$GW_PID [nbd]=$NBD_PID [loop]="") path=([ublk]=$UBLK [nbd]=/dev/nbd0 [loop]=$LOOP)
  local rows=() job name rw bs depth d
  local -A rate mean sys srv
  for job in "randread-4k-qd32 randread 4k 32" "randwrite-4k-qd32 randwrite 4k 32" \
    "read-1m-qd8 read 1M 8" "write-1m-qd8 write 1M 8" "randread-4k-qd1 randread 4k 1" \
    "randwrite-4k-qd1 randwrite 4k 1"; do
    read -r name rw bs depth <<<"$job"
    for d in ublk nbd loop; do
      GW=${front[$d]} BRICK=$brick
      run_job "$name.$d" "${path[$d]}" io_uring "$rw" "$bs" "$depth"
      local r
      read -ra r <<<"$RES"
      rate[$d]=${r[0]} mean[$d]=${r[1]} sys[$d]=${r[5]}
      # gateway (or nbdkit) + brick
      srv[$d]=$([ "${r[6]}" = - ] && echo - || echo "${r[6]}+${r[7]}")
    done
    rows+=("$(printf '%-18s %10.1f %10.1f %10.1f %8.2f %9.2f  %-24s %-22s %s' "$name" "${rate[ublk]}" \
      "${rate[nbd]}" "${rate[loop]}" "$(echo "${rate[ublk]} / ${rate[nbd]}" | bc -l)" \
      "$(echo "${rate[ublk]} / ${rate[loop]}" | bc -l)" "${mean[ublk]}|${mean[nbd]}|${mean[loop]}" \
      "${sys[ublk]}|${sys[nbd]}|${sys[loop]}" "${srv[ublk]}|${srv[nbd]}")")
    # On stdout: bats shows it when a later step fails, so what was measured is not lost.
    echo "measured: ${rows[-1]}"
  done
  {
    printf '# %-18s %10s %10s %10s %8s %9s  %-24s %-22s %s\n' job ublk nbd loop ublk/nbd ublk/loop \
      "mean us u|n|l" "guest CPU us/IO u|n|l" "servers us/IO u|n"
    printf '# %s\n' "${rows[@]}"
    printf '# rates: IOPS (MiB/s on the 1M rows); ratios of rates, higher is better for ublk. mean: fio'"'"'s\n'
    printf '# completion latency. guest CPU: the whole guest'"'"'s busy time per I/O (fio and the kernel\n'
    printf '# included); servers: utime+stime per I/O of pbrick-gateway + brick (u) and nbdkit + brick (n).\n'
    printf '# An I/O of the 1M rows is 1 MiB. CPU over %s s inside each %s s job.\n' "$((RUNTIME - 1))" "$RUNTIME"
  } >&3

  losetup -d "$LOOP"
  LOOP=
  nbd_detach /dev/nbd0
  kill -TERM "$GW_PID"
  wait "$GW_PID"
  GW_PID=
}

teardown() {
  [ -n "${LOOP:-}" ] && losetup -d "$LOOP" 2>/dev/null
  if [ -n "${GW_PID:-}" ] && kill -TERM "$GW_PID" 2>/dev/null; then wait "$GW_PID" 2>/dev/null; fi
  vm_teardown
  rm -rf /dev/shm/pbrick-bench
}
