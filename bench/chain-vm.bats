#!/usr/bin/env bats
# The guest half of bench/chain-vm.sh: syncs chained to lone writes, on and
# off, in one boot. For each setup (tcp: a brick on 127.0.0.1; rdma rpc: a
# brick over rxe0 with PERSIST) one brick serves two volumes at different
# bases, one gateway each (-q 2 -d 64, --persistence rpc): one as built, one
# with --no-chained-syncs. fio writes 4k at random with an fsync after each
# write (psync, QD1) on one device, then on the other, ROUNDS times, so noise
# hits both alike. Reported per round and gateway: writes/s, the write's and
# the fsync's mean latency, and the gateway's and the brick's CPU per fsync'd
# write (utime+stime over a window inside the job).

load ../tests/vm/helpers
load vm_bench

SIZE=${PBRICK_BENCH_SIZE:-32M}
RUNTIME=${PBRICK_BENCH_RUNTIME:-4}
ROUNDS=${PBRICK_BENCH_ROUNDS:-2}
GW_BIN="$PBRICK_BIN_DIR/gateway/pbrick-gateway"
M=$((1024 * 1024))

say() { echo "chain-vm: $*" >&2; }

# fsync_job LABEL DEV GW BRICK: one time-based fio job; sets RES="iops
# write_us fsync_us gw_us brick_us" (CPU per fsync'd write).
fsync_job() {
  local label=$1 dev=$2 gw=$3 brick=$4 out=$BATS_TEST_TMPDIR/fio-$1.json rc=0 fpid
  timeout -k 10 $((RUNTIME + 90)) fio --name=b --filename="$dev" --direct=1 --ioengine=psync --rw=randwrite \
    --bs=4k --fsync=1 --size="$SIZE" --runtime="$RUNTIME" --time_based --ramp_time=1 --output-format=json \
    >"$out" 2>"$out.err" &
  fpid=$!
  sleep 1.5
  local g0 g1 k0 k1 t0 t1
  proc_ticks "$gw"; g0=$TICKS; proc_ticks "$brick"; k0=$TICKS; t0=$EPOCHREALTIME
  sleep $((RUNTIME - 1))
  proc_ticks "$gw"; g1=$TICKS; proc_ticks "$brick"; k1=$TICKS; t1=$EPOCHREALTIME
  wait "$fpid" || rc=$?
  ((rc == 0)) || { say "fio $label failed (exit $rc):"; tail -n 20 "$out.err" >&2; return 1; }
  local row
  row=$(sed -n '/^{/,$p' "$out" | jq -r '.jobs[0] | if .error != 0 then "error \(.error)" else
    [.write.iops, .write.clat_ns.mean / 1000, (.sync.lat_ns.mean // 0) / 1000] | @tsv end') ||
    { say "fio $label: no JSON"; return 1; }
  case $row in error*) say "fio $label: $row"; return 1 ;; esac
  RES=$(awk -v r="$row" -v t0="$t0" -v t1="$t1" -v g="$((g1 - g0))" -v k="$((k1 - k0))" -v clk="$CLK" 'BEGIN {
    split(r, f, "\t"); ios = f[1] * (t1 - t0)
    if (ios <= 0) { print "bad"; exit }
    us = 1e6 / clk / ios
    printf "%.1f %.0f %.0f %.0f %.0f", f[1], f[2], f[3], g * us, k * us }')
  [ "$RES" != bad ] || { say "fio $label: no I/O"; return 1; }
}

@test "fsync after each write: chained syncs on and off, same brick, same boot" {
  require_vm
  [ -c /dev/ublk-control ] || skip "no /dev/ublk-control"
  SIZE_BYTES=$(numfmt --from=iec "${SIZE^^}") || { say "--size $SIZE: not a size"; false; }
  ((RUNTIME >= 3)) || { say "--runtime: at least 3 s (the CPU window is runtime - 1 s)"; false; }
  VOL_MIB=$(((SIZE_BYTES + 2 * M - 1) / (2 * M) * 2))
  STORE_MIB=$((2 * VOL_MIB + 64))
  SHM=/dev/shm/pbrick-tests$BATS_TEST_TMPDIR # removed by brick_teardown
  mkdir -p "$SHM"
  CLK=$(getconf CLK_TCK)
  RDMA_HOST=$(rdma_host) || { say "no soft-RoCE: rdma link add rxe0 type rxe netdev eth0 failed"; false; }
  [ -n "$RDMA_HOST" ] || { say "eth0 has no IPv4 address"; false; }

  declare -A dev gw brick
  local net target base_b=$((VOL_MIB * M))
  for net in tcp rdma; do
    if [ "$net" = tcp ]; then brick_on "$net-brick" tcp 127.0.0.1; else brick_on "$net-brick" rdma "$RDMA_HOST"; fi
    target=$BRICK_HOST:$(cat "$BATS_TEST_TMPDIR/$net-brick.port")
    brick[$net]=$BRICK_PID
    gw_attach "gw-$net-on" "$target" "$net"
    dev[$net/on]=$DEV gw[$net/on]=$GW_PID
    PBRICK_BENCH_GW_ARGS="--base $base_b --no-chained-syncs" gw_attach "gw-$net-off" "$target" "$net"
    dev[$net/off]=$DEV gw[$net/off]=$GW_PID
  done
  local s
  for s in tcp/on tcp/off rdma/on rdma/off; do
    timeout 600 fio --name=fill --filename="${dev[$s]}" --direct=1 --ioengine=io_uring --rw=write --bs=1M \
      --iodepth=8 --size="$SIZE" --output-format=terse >"$BATS_TEST_TMPDIR/fill.out" 2>&1 ||
      { say "filling $s failed:"; tail -n 20 "$BATS_TEST_TMPDIR/fill.out" >&2; false; }
  done

  local r rows=()
  for ((r = 1; r <= ROUNDS; r++)); do
    for net in tcp rdma; do
      for s in on off; do
        fsync_job "$net-$s-$r" "${dev[$net/$s]}" "${gw[$net/$s]}" "${brick[$net]}"
        # shellcheck disable=SC2086 # RES is five words
        rows+=("$(printf '%-5s %-6s %5d %10s %9s %9s %11s %11s' "$net" "$s" "$r" $RES)")
        echo "measured: $net $s round $r: $RES"
      done
    done
  done

  {
    printf '# \n'
    printf '# %-5s %-6s %5s %10s %9s %9s %11s %11s\n' net chain round writes/s write_us fsync_us gw_us/write brick_us/wr
    printf '# %s\n' "${rows[@]}"
    printf '# \n'
    printf '# on: pbrick-gateway attach -q 2 -d 64 --persistence rpc as built (a sync chained to each lone write\n'
    printf '# while a FLUSH follows every write); off: the same with --no-chained-syncs, another volume on the same\n'
    printf '# brick. tcp: brick on 127.0.0.1; rdma: brick over rxe0 (%s); stores in /dev/shm. fio psync 4k\n' "$RDMA_HOST"
    printf '# randwrite --fsync=1 over %s, %s s after 1 s ramp, the four jobs in turn each round. CPU per write:\n' \
      "$SIZE" "$RUNTIME"
    printf '# utime+stime of the gateway / the brick over a %s s window inside the job.\n' $((RUNTIME - 1))
  } >&3

  for s in tcp/on tcp/off rdma/on rdma/off; do
    kill -TERM "${gw[$s]}"
    wait "${gw[$s]}" || { say "gateway $s exited non-zero on SIGTERM"; false; }
  done
  : >"$BATS_TEST_TMPDIR/gw.pids"
  [ -z "$(dmesg_problems)" ] || { say "kernel log:"; dmesg_problems >&2; false; }
}

teardown() {
  bench_teardown 20
}
