#!/usr/bin/env bats
# The ublk benchmark's guest half (bench/ublk-vm.sh boots the VM and runs it):
# fio on /dev/ublkb0 (pbrick-gateway -> brick over TCP), on /dev/nbd0 (the
# kernel's NBD client -> nbdkit with the pbrick plugin -> the same brick) and
# on a loop device over a tmpfs file (the kernel's own local block device),
# same jobs, one table. The brick's store is in memory too (/dev/shm), so no
# side pays for the guest's disk. Under emulation absolute numbers mean
# little; the ratios do.

load ../tests/vm/helpers

# The brick's store, in memory like the loop device's file.
store_dir() { mkdir -p /dev/shm/pbrick-bench && echo /dev/shm/pbrick-bench; }

SIZE=${PBRICK_BENCH_SIZE:-256M}
RUNTIME=${PBRICK_BENCH_RUNTIME:-5}
GW_BIN="$PBRICK_BIN_DIR/gateway/pbrick-gateway"

# fio_iops DEV RW BS DEPTH: IOPS of one time-based job (not rounded); fails,
# saying why, when fio does or its job reports an error.
fio_iops() {
  local side=read out
  case $2 in *write) side=write ;; esac
  out=$(fio --name=b --filename="$1" --direct=1 --ioengine=io_uring --rw="$2" --bs="$3" --iodepth="$4" \
    --size="$SIZE" --runtime="$RUNTIME" --time_based --ramp_time=1 --output-format=json \
    2>"$BATS_TEST_TMPDIR/fio.err") || { echo "# fio $2 $3 on $1 failed: $(cat "$BATS_TEST_TMPDIR/fio.err")" >&3; return 1; }
  jq -e ".jobs[0].error == 0 and .jobs[0].$side.iops > 0" <<<"$out" >/dev/null ||
    { echo "# fio $2 $3 on $1: job error $(jq '.jobs[0].error' <<<"$out")" >&3; return 1; }
  jq ".jobs[0].$side.iops" <<<"$out"
}

@test "fio: ublk vs kernel nbd vs loop on tmpfs" {
  require_vm
  [ -c /dev/ublk-control ] || skip "no /dev/ublk-control"
  start_brick bench --size 1G
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

  printf '# %-18s %10s %10s %10s %10s %10s\n' job ublk nbd loop ublk/nbd ublk/loop >&3
  local job rw bs depth u n l
  for job in "randread-4k-qd32 randread 4k 32" "randwrite-4k-qd32 randwrite 4k 32" \
    "read-1m-qd8 read 1M 8" "write-1m-qd8 write 1M 8" "randread-4k-qd1 randread 4k 1"; do
    read -r name rw bs depth <<<"$job"
    u=$(fio_iops "$UBLK" "$rw" "$bs" "$depth")
    n=$(fio_iops /dev/nbd0 "$rw" "$bs" "$depth")
    l=$(fio_iops "$LOOP" "$rw" "$bs" "$depth")
    printf '# %-18s %10.1f %10.1f %10.1f %10.2f %10.2f\n' "$name" "$u" "$n" "$l" \
      "$(echo "$u / $n" | bc -l)" "$(echo "$u / $l" | bc -l)" >&3
  done

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
