#!/usr/bin/env bats
# The RDMA benchmark's guest half (bench/rdma-vm.sh boots the VM and runs it),
# over soft-RoCE (rxe0 on eth0, see rdma_host):
#   ublk/rdma  fio on the /dev/ublkbN of pbrick-gateway --transport rdma
#              --persistence rpc, to a brick listening over RDMA on eth0
#   ublk/tcp   fio on the /dev/ublkbN of pbrick-gateway --transport tcp
#              --persistence rpc, to a second brick on 127.0.0.1
#   raw        fio's rdma engine, client and server in the guest over rxe0:
#              one-sided RDMA READ/WRITE of the same size and depth, the most
#              the transport gives
# Both stores are on tmpfs (/dev/shm), so the media is the same. Same jobs as
# bench/ublk-vm.bats, job by job on each setup so noise hits them alike; one
# table with mean latency and CPU per I/O beside each rate, and the bricks' CPU
# seconds at start-up and over the fill. Under emulation absolute numbers mean
# little; the ratios do.

load ../tests/vm/helpers
load vm_bench

SIZE=${PBRICK_BENCH_SIZE:-256M}
RUNTIME=${PBRICK_BENCH_RUNTIME:-5}
GW_BIN="$PBRICK_BIN_DIR/gateway/pbrick-gateway"
RAW_PORT0=18515
M=$((1024 * 1024))

# say MSG: why the benchmark stops (bats shows it; bench/rdma-vm.sh prints it).
say() { echo "rdma-vm: $*" >&2; }

# fio_result LABEL FILE SIDE UNIT RC: sets RATE to the IOPS (UNIT=IOPS) or MiB/s
# of SIDE (read|write) in fio's JSON output FILE, or says why there is none.
fio_result() {
  local label=$1 f=$2 side=$3 unit=$4 rc=$5 err
  RATE=
  if [ "$rc" != 0 ]; then
    say "fio $label failed (exit $rc$([ "$rc" = 124 ] && echo ", timed out"))"
    tail -n 30 "$f.err" >&2
    return 1
  fi
  # fio may print notes before its JSON.
  if ! read -r err RATE < <(sed -n '/^{/,$p' "$f" | jq -r --arg s "$side" --arg u "$unit" \
    '.jobs[0] | "\(.error) \(if $u == "IOPS" then .[$s].iops else .[$s].bw_bytes / 1048576 end)"'); then
    say "fio $label: no JSON result"
    tail -n 20 "$f.err" "$f" >&2
    return 1
  fi
  if [ "$err" != 0 ] || ! awk -v v="$RATE" 'BEGIN { exit !(v > 0) }'; then
    say "fio $label: error $err, $unit '$RATE'"
    tail -n 20 "$f.err" >&2
    return 1
  fi
}

# fio_raw LABEL VERB BS DEPTH PORT UNIT: fio's rdma engine at BS and DEPTH
# (vm_bench.bash's fio_rdma_raw); sets RATE, RAW_MEAN (its mean completion
# latency, us) and RAW_CPU (the client's usr+sys time per I/O, us; the server
# does nothing per I/O).
fio_raw() {
  local rc=0 f=$BATS_TEST_TMPDIR/fio-$1.json
  fio_rdma_raw "$1" "$2" "$3" "$4" "$5" || rc=$?
  fio_result "$1" "$f" write "$6" "$rc" || return 1
  read -r RAW_MEAN RAW_CPU < <(sed -n '/^{/,$p' "$f" | jq -r '.jobs[0] |
    "\(.write.clat_ns.mean / 1000) \((.usr_cpu + .sys_cpu) / 100 / .write.iops * 1e6)"') ||
    { say "fio $1: no latency or CPU in its JSON"; return 1; }
}

# gw_detach NAME PID DEV: SIGTERM; the gateway must exit 0 and DEV go away.
gw_detach() {
  local name=$1 pid=$2 dev=$3 rc=0
  kill -TERM "$pid"
  wait "$pid" || rc=$?
  if [ "$rc" != 0 ]; then
    say "gateway $name exited $rc on SIGTERM:"
    tail -n 40 "$BATS_TEST_TMPDIR/$name.log" >&2
    return 1
  fi
  for _ in $(seq 1 50); do
    [ -e "$dev" ] || return 0
    sleep 0.1
  done
  say "$dev still exists after its gateway ($name) exited"
  return 1
}

# cpu_row LABEL A0 A1 B0 B1: a line of the CPU table: the rdma brick's ticks
# A0 -> A1 and the tcp brick's B0 -> B1, in seconds.
cpu_row() {
  cpu+=("$(awk -v n="$1" -v k="$CLK" -v a="$2" -v b="$3" -v c="$4" -v d="$5" 'BEGIN {
    printf "%-18s %-28s %s", n, sprintf("%.2f -> %.2f (+%.2f)", a / k, b / k, (b - a) / k),
      sprintf("%.2f -> %.2f (+%.2f)", c / k, d / k, (d - c) / k) }')")
}

# brick_holds NAME TARGET TRANSPORT: the brick holds at least SIZE of blocks
# (a gateway serves blocks it never wrote as zeros without asking the brick).
brick_holds() {
  local blocks
  blocks=$("$CTL_BIN" --target "$2" --transport "$3" --json stat | jq -r .allocated_blocks) ||
    { say "pbrickctl stat failed on the $1 brick ($2)"; return 1; }
  if ((blocks * 2 * M < SIZE_BYTES)); then
    say "the $1 brick holds $blocks blocks of 2 MiB after the fill, less than $SIZE"
    return 1
  fi
}

@test "fio: ublk over rdma vs ublk over tcp vs fio's rdma engine" {
  require_vm
  [ -c /dev/ublk-control ] || skip "no /dev/ublk-control"
  command -v fio >/dev/null || skip "requires fio"
  fio --enghelp=rdma >/dev/null 2>&1 || skip "this fio has no rdma engine"
  ulimit -l unlimited 2>/dev/null || true # fio's rdma engine registers its buffers

  SIZE_BYTES=$(numfmt --from=iec "${SIZE^^}") || { say "--size $SIZE: not a size"; false; }
  ((RUNTIME >= 3)) || { say "--runtime: at least 3 s (the CPU window is runtime - 1 s)"; false; }
  # The volume spans the measured range; the store adds room for its map.
  VOL_MIB=$(((SIZE_BYTES + 2 * M - 1) / (2 * M) * 2))
  ((VOL_MIB >= 64)) || VOL_MIB=64
  STORE_MIB=$((VOL_MIB + 32))
  SHM=/dev/shm/pbrick-tests$BATS_TEST_TMPDIR # removed by brick_teardown
  mkdir -p "$SHM"
  local avail
  avail=$(df -m --output=avail /dev/shm | tail -n1)
  if ((avail < 2 * STORE_MIB + 64)); then
    say "/dev/shm has $avail MiB free; the two stores need $((2 * STORE_MIB)) MiB (lower --size or raise PBRICK_VM_MEM)"
    false
  fi

  RDMA_HOST=$(rdma_host) || { say "no soft-RoCE: rdma link add rxe0 type rxe netdev eth0 failed"; false; }
  [ -n "$RDMA_HOST" ] || { say "eth0 has no IPv4 address for RDMA CM"; false; }

  brick_on rdma-brick rdma "$RDMA_HOST"
  RDMA_BRICK_PID=$BRICK_PID RDMA_TARGET=$TARGET
  brick_on tcp-brick tcp 127.0.0.1
  TCP_BRICK_PID=$BRICK_PID TCP_TARGET=$TARGET
  gw_attach gw-rdma "$RDMA_TARGET" rdma
  GW_RDMA_PID=$GW_PID DEV_RDMA=$DEV
  gw_attach gw-tcp "$TCP_TARGET" tcp
  GW_TCP_PID=$GW_PID DEV_TCP=$DEV

  CLK=$(getconf CLK_TCK)
  local cpu=() r0 r1 t0 t1
  proc_ticks "$RDMA_BRICK_PID"
  r0=$TICKS
  proc_ticks "$TCP_BRICK_PID"
  t0=$TICKS
  cpu_row "start, attach" 0 "$r0" 0 "$t0"

  # Precondition: real data over the measured range, so reads reach the brick.
  local dev
  for dev in "$DEV_RDMA" "$DEV_TCP"; do
    timeout 600 fio --name=fill --filename="$dev" --direct=1 --ioengine=io_uring --rw=write --bs=1M \
      --iodepth=8 --size="$SIZE" --output-format=terse >"$BATS_TEST_TMPDIR/fill.out" 2>&1 ||
      { say "preconditioning $dev failed:"; tail -n 20 "$BATS_TEST_TMPDIR/fill.out" >&2; false; }
  done
  brick_holds rdma "$RDMA_TARGET" rdma
  brick_holds tcp "$TCP_TARGET" tcp
  proc_ticks "$RDMA_BRICK_PID"
  r1=$TICKS
  proc_ticks "$TCP_BRICK_PID"
  t1=$TICKS
  cpu_row "fill $SIZE (1M)" "$r0" "$r1" "$t0" "$t1"

  local rows=() n=0 name rw bs depth verb unit r t w fmt
  local -a rr tr
  for job in "randread-4k-qd32 randread 4k 32 read IOPS" "randwrite-4k-qd32 randwrite 4k 32 write IOPS" \
    "read-1m-qd8 read 1M 8 read MiB/s" "write-1m-qd8 write 1M 8 write MiB/s" \
    "randread-4k-qd1 randread 4k 1 read IOPS" "randwrite-4k-qd1 randwrite 4k 1 write IOPS"; do
    read -r name rw bs depth verb unit <<<"$job"
    # run_job's rate is IOPS, which at bs=1M is MiB/s.
    GW=$GW_RDMA_PID BRICK=$RDMA_BRICK_PID
    run_job "$name.rdma" "$DEV_RDMA" io_uring "$rw" "$bs" "$depth"
    read -ra rr <<<"$RES"
    GW=$GW_TCP_PID BRICK=$TCP_BRICK_PID
    run_job "$name.tcp" "$DEV_TCP" io_uring "$rw" "$bs" "$depth"
    read -ra tr <<<"$RES"
    fio_raw "$name.raw" "$verb" "$bs" "$depth" $((RAW_PORT0 + n)) "$unit"
    r=${rr[0]} t=${tr[0]} w=$RATE
    n=$((n + 1))
    fmt='%.0f'
    [ "$unit" = IOPS ] || fmt='%.1f'
    rows+=("$(awk -v n="$name" -v u="$unit" -v r="$r" -v t="$t" -v w="$w" -v f="$fmt" \
      -v lat="${rr[1]}|${tr[1]}|$(printf '%.1f' "$RAW_MEAN")" \
      -v cpu="${rr[6]}+${rr[7]}|${tr[6]}+${tr[7]}|$(printf '%.1f' "$RAW_CPU")" 'BEGIN {
      printf "%-18s %-6s %10s %10s %14s %9.2f %9.2f  %-22s %s", n, u, sprintf(f, r), sprintf(f, t), sprintf(f, w),
        r / t, r / w, lat, cpu }')")
    # On stdout: bats shows it when a later step fails, so what was measured is not lost.
    echo "measured: ${rows[-1]}"
  done

  {
    printf '# \n'
    printf '# %-18s %-6s %10s %10s %14s %9s %9s  %-22s %s\n' job unit ublk/rdma ublk/tcp "fio rdma (raw)" rdma/tcp \
      rdma/raw "mean us rdma|tcp|raw" "CPU us/IO rdma|tcp|raw"
    printf '# %s\n' "${rows[@]}"
    printf '# \n'
    printf '# ublk/rdma: pbrick-gateway --transport rdma -> brick on %s (rxe0); ublk/tcp: --transport tcp -> brick\n' "$RDMA_HOST"
    printf '# on 127.0.0.1; both -q 2 -d 64 --persistence rpc, stores on /dev/shm; fio io_uring direct=1,\n'
    printf '# size %s, %s s after 1 s ramp. fio rdma: fio'"'"'s rdma engine, client -> server over rxe0, one-sided\n' "$SIZE" "$RUNTIME"
    printf '# RDMA READ (read rows) or WRITE (write rows) of the same bs and iodepth; it has no offsets, so the\n'
    printf '# random 4k rows use sequential 4k READ/WRITE. It connects with initiator_depth=1: one RDMA READ in flight\n'
    printf '# per QP whatever iodepth is (the gateway asks for up to 16), so its read rows are a depth-1 READ rate.\n'
    printf '# rdma/tcp = ublk/rdma / ublk/tcp, rdma/raw = ublk/rdma / fio rdma (rates: higher is better).\n'
    printf '# mean: completion latency. CPU per I/O (per MiB on the 1M rows): gateway + brick utime+stime over\n'
    printf '# %s s inside each ublk job; raw: the fio client'"'"'s usr+sys share of its run.\n' "$((RUNTIME - 1))"
    printf '# \n'
    printf '# brick CPU seconds (utime+stime, /proc/PID/stat) before -> after\n'
    printf '# %-18s %-28s %s\n' "" "rdma brick" "tcp brick"
    printf '# %s\n' "${cpu[@]}"
  } >&3

  gw_detach gw-rdma "$GW_RDMA_PID" "$DEV_RDMA"
  GW_RDMA_PID=
  gw_detach gw-tcp "$GW_TCP_PID" "$DEV_TCP"
  GW_TCP_PID=
  [ -z "$(dmesg_problems)" ] || { say "kernel log:"; dmesg_problems >&2; false; }
}

teardown() {
  bench_teardown # stops the gateways and bricks, removes the stores, shows the logs
}
