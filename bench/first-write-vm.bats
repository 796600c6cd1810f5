#!/usr/bin/env bats
# The first-write benchmark's guest half (bench/first-write-vm.sh boots the VM
# and runs it): what the first writes to fresh blocks do to the other I/O of
# the same ublk queue. On a gateway with one queue (-q 1 -d 64), so both jobs
# share it:
#   fresh   fio QD32 4k writes, each to a block never written (rw=write:2044k:
#           one 4k write at the start of each 2 MiB block): every one needs
#           the block's ALLOC + MAP from the brick (over RDMA the brick also
#           registers the block's memory)
#   mapped  fio QD1 (then QD4) 4k random reads of blocks written before
# `mapped` is measured alone, then with `fresh` beside it (exitall: it stops
# when `fresh` has written every one of its blocks), for each gateway given
# (the build measured and, with PBRICK_BENCH_BEFORE_BIN_DIR, an older one),
# over rdma (soft-RoCE) and tcp, each on a fresh brick with its store on
# tmpfs. Also the gateway's and the brick's CPU time per I/O of both jobs.
# Under emulation absolute numbers mean little; the comparisons do.

load ../tests/vm/helpers
load vm_bench

RUNTIME=${PBRICK_BENCH_RUNTIME:-5}
FRESH=${PBRICK_BENCH_FRESH_BLOCKS:-128} # fresh blocks per measurement
M=$((1024 * 1024))
MAPPED_MIB=64 # the blocks the reads go to, written first

say() { echo "first-write-vm: $*" >&2; }

# fio_json LABEL ARGS...: fio with JSON output to $BATS_TEST_TMPDIR/LABEL.json;
# sets OUT to that file.
fio_json() {
  local label=$1 rc=0
  shift
  OUT=$BATS_TEST_TMPDIR/$label.json
  timeout -k 10 300 fio --output-format=json --direct=1 --ioengine=io_uring --filename="$DEV" "$@" \
    >"$OUT" 2>"$OUT.err" || rc=$?
  if [ "$rc" != 0 ]; then
    say "fio $label failed (exit $rc):"
    tail -n 20 "$OUT.err" "$OUT" >&2
    return 1
  fi
  sed -i -n '/^{/,$p' "$OUT" # fio may print notes before its JSON
  local errs
  errs=$(jq '[.jobs[].error] | add' "$OUT") || { say "fio $label: no JSON"; return 1; }
  [ "$errs" = 0 ] || { say "fio $label: job error $errs"; tail -n 20 "$OUT.err" >&2; return 1; }
}

# read_stats FILE JOB: "IOPS mean_us p99_us ios" of the reads of job JOB.
read_stats() {
  jq -r --argjson j "$2" '.jobs[$j].read | "\(.iops) \(.clat_ns.mean / 1000) \(.clat_ns.percentile["99.000000"] / 1000) \(.total_ios)"' "$1"
}

# ticks: GW_T and BRICK_T, the CPU ticks of the gateway and the brick so far.
ticks() {
  proc_ticks "$GW_PID" && GW_T=$TICKS
  proc_ticks "$BRICK_PID" && BRICK_T=$TICKS
}

# measure NAME TRANSPORT BIN_DIR: a fresh brick and gateway from BIN_DIR;
# appends rows for QD1 and QD4 reads to `rows`.
measure() {
  local name=$1 transport=$2 bin=$3 host=127.0.0.1 depth
  # shellcheck disable=SC2034 # vm_bench.bash's brick_on and gw_attach run these
  TARGET_BIN=$bin/target/pbrick-target
  # shellcheck disable=SC2034
  GW_BIN=$bin/gateway/pbrick-gateway
  [ "$transport" = tcp ] || host=$RDMA_HOST
  brick_on "$name-brick" "$transport" "$host"
  GW_QUEUES=1 gw_attach "$name-gw" "$TARGET" "$transport"
  fio_json "$name-fill" --name=fill --rw=write --bs=1M --iodepth=8 --size="${MAPPED_MIB}M" || return 1
  local i=0 g0 b0 s mean p99 ios fresh_ios fresh_ms gw_us br_us alone
  for depth in 1 4; do
    ticks
    g0=$GW_T b0=$BRICK_T
    fio_json "$name-alone-qd$depth" --name=mapped --rw=randread --bs=4k --iodepth="$depth" \
      --size="${MAPPED_MIB}M" --time_based --runtime="$RUNTIME" || return 1
    ticks
    read -r s mean p99 ios < <(read_stats "$OUT" 0)
    gw_us=$(awk -v t=$((GW_T - g0)) -v k="$CLK" -v n="$ios" 'BEGIN { printf "%.0f", t / k * 1e6 / n }')
    br_us=$(awk -v t=$((BRICK_T - b0)) -v k="$CLK" -v n="$ios" 'BEGIN { printf "%.0f", t / k * 1e6 / n }')
    alone=$(awk -v s="$s" -v m="$mean" -v p="$p99" -v g="$gw_us" -v b="$br_us" \
      'BEGIN { printf "%8.0f %9.0f %9.0f %7s %7s", s, m, p, g, b }')

    # The fresh job's range: past the mapped blocks and the earlier runs'.
    local off=$((MAPPED_MIB * M + i * FRESH * 2 * M))
    i=$((i + 1))
    ticks
    g0=$GW_T b0=$BRICK_T
    fio_json "$name-fresh-qd$depth" --exitall \
      --name=fresh --rw=write:2044k --bs=4k --iodepth=32 --offset="$off" --size=$((FRESH * 2 * M)) \
      --name=mapped --rw=randread --bs=4k --iodepth="$depth" --offset=0 --size="${MAPPED_MIB}M" \
      --time_based --runtime=600 || return 1
    ticks
    read -r s mean p99 ios < <(read_stats "$OUT" 1)
    read -r fresh_ios fresh_ms < <(jq -r '.jobs[0] | "\(.write.total_ios) \(.job_runtime)"' "$OUT")
    if [ "$fresh_ios" != "$FRESH" ]; then
      say "$name: the fresh job wrote $fresh_ios blocks, not $FRESH"
      return 1
    fi
    gw_us=$(awk -v t=$((GW_T - g0)) -v k="$CLK" -v n=$((ios + fresh_ios)) 'BEGIN { printf "%.0f", t / k * 1e6 / n }')
    br_us=$(awk -v t=$((BRICK_T - b0)) -v k="$CLK" -v n=$((ios + fresh_ios)) 'BEGIN { printf "%.0f", t / k * 1e6 / n }')
    rows+=("$(awk -v n="$name qd$depth" -v a="$alone" -v s="$s" -v m="$mean" -v p="$p99" -v g="$gw_us" -v b="$br_us" \
      -v f="$fresh_ios" -v ms="$fresh_ms" 'BEGIN {
      printf "%-16s %s | %8.0f %9.0f %9.0f %7s %7s | %7.0f", n, a, s, m, p, g, b, f / (ms / 1000) }')")
    echo "measured: ${rows[-1]}" # bats shows it when a later step fails
  done
  kill -TERM "$GW_PID"
  wait "$GW_PID" || { say "$name: the gateway exited $? on SIGTERM"; return 1; }
  kill -TERM "$BRICK_PID"
  wait "$BRICK_PID" 2>/dev/null || true
  rm -f "$SHM/$name-brick.store"
}

@test "fio: reads of mapped blocks beside first writes to fresh blocks, one ublk queue" {
  require_vm
  [ -c /dev/ublk-control ] || skip "no /dev/ublk-control"
  command -v fio >/dev/null || skip "requires fio"
  VOL_MIB=$((MAPPED_MIB + 2 * FRESH * 2))
  # shellcheck disable=SC2034 # brick_on's store size
  STORE_MIB=$((VOL_MIB + 32))
  SHM=/dev/shm/pbrick-tests$BATS_TEST_TMPDIR # removed by brick_teardown
  mkdir -p "$SHM"
  CLK=$(getconf CLK_TCK)
  RDMA_HOST=$(rdma_host) || { say "no soft-RoCE: rdma link add rxe0 type rxe netdev eth0 failed"; false; }
  local sets=("after:$PBRICK_BIN_DIR")
  [ -z "${PBRICK_BENCH_BEFORE_BIN_DIR:-}" ] || sets=("before:$PBRICK_BENCH_BEFORE_BIN_DIR" "${sets[@]}")
  local rows=() transport set
  for transport in ${PBRICK_BENCH_TRANSPORTS:-rdma tcp}; do
    for set in "${sets[@]}"; do
      measure "$transport-${set%%:*}" "$transport" "${set#*:}"
    done
  done
  {
    printf '# \n'
    printf '# %-16s %-44s | %-44s | %s\n' "" "mapped reads alone" "mapped reads beside fresh QD32 writes" "fresh"
    printf '# %-16s %8s %9s %9s %7s %7s | %8s %9s %9s %7s %7s | %7s\n' gateway IOPS "mean us" "p99 us" "gw us" "br us" \
      IOPS "mean us" "p99 us" "gw us" "br us" "blk/s"
    printf '# %s\n' "${rows[@]}"
    printf '# \n'
    printf '# pbrick-gateway -q 1 -d 64 --persistence rpc, brick store on /dev/shm; fio io_uring direct=1 on one\n'
    printf '# queue: mapped = 4k randread over %s MiB written before (alone: %s s); fresh = 4k writes at QD32,\n' "$MAPPED_MIB" "$RUNTIME"
    printf '# one to each of %s never-written blocks (rw=write:2044k); the mapped job runs beside it until it is\n' "$FRESH"
    printf '# done (exitall). gw us / br us: CPU time (utime+stime) of the gateway / the brick per I/O of both jobs.\n'
  } >&3
  [ -z "$(dmesg_problems)" ] || { say "kernel log:"; dmesg_problems >&2; false; }
}

teardown() {
  bench_teardown 20
}
