# Helpers shared by the VM benchmarks (bench/*-vm.bats): a brick on tmpfs, a
# ublk gateway on it, a process's CPU ticks, one fio job with the CPU it cost,
# fio's rdma engine between two processes. The .bats file sets TARGET_BIN,
# GW_BIN, SHM, STORE_MIB, VOL_MIB (and SIZE, RUNTIME, RDMA_HOST for
# fio_rdma_raw; SIZE, RUNTIME, CLK and GW, BRICK for run_job), defines say(),
# and calls bench_teardown in its teardown.
# shellcheck shell=bash
# shellcheck disable=SC2034 # BRICK_*, GW_PID, DEV, TICKS, BUSY, RES and RAW_SRV_PID are set for the caller

# brick_on NAME TRANSPORT HOST [STORE]: pbrick-target on $SHM/NAME.store
# (tmpfs, STORE_MIB) or on the device STORE (a devdax device, used whole),
# listening on HOST:0 over TRANSPORT, --persistence rpc (BRICK_PERSISTENCE
# overrides it); sets BRICK_PID and TARGET.
brick_on() {
  local name=$1 transport=$2 store=(--store "$SHM/$1.store" --size "${STORE_MIB}M")
  BRICK_HOST=$3
  [ -z "${4:-}" ] || store=(--store "$4")
  rm -f "$BATS_TEST_TMPDIR/$name.port"
  "$TARGET_BIN" "${store[@]}" --listen "$BRICK_HOST:0" \
    --transport "$transport" --persistence "${BRICK_PERSISTENCE:-rpc}" --port-file "$BATS_TEST_TMPDIR/$name.port" \
    2>>"$BATS_TEST_TMPDIR/$name.log" &
  BRICK_PID=$!
  wait_for_brick "$name" || { say "the $transport brick did not start (log above)"; return 1; }
}

# gw_attach NAME TARGET TRANSPORT: pbrick-gateway attach in the background,
# -q 2 -d 64 as in bench/ublk-vm.bats (GW_QUEUES overrides -q), --persistence
# rpc (GW_PERSISTENCE overrides it), a volume of
# GW_VOL_MIB (default VOL_MIB), and the words of PBRICK_BENCH_GW_ARGS (e.g.
# "--poll-us 300"); waits for the device it prints; sets GW_PID and DEV. Logs go
# to $BATS_TEST_TMPDIR/NAME.log.
gw_attach() {
  local name=$1 target=$2 transport=$3 out=$BATS_TEST_TMPDIR/$1.out
  : >"$out"
  # shellcheck disable=SC2086 # PBRICK_BENCH_GW_ARGS is a list of words
  "$GW_BIN" attach --target "$target" --transport "$transport" --persistence "${GW_PERSISTENCE:-rpc}" \
    --size "${GW_VOL_MIB:-$VOL_MIB}M" \
    -q "${GW_QUEUES:-2}" -d 64 ${PBRICK_BENCH_GW_ARGS:-} >"$out" 2>>"$BATS_TEST_TMPDIR/$name.log" &
  GW_PID=$!
  echo "$GW_PID" >>"$BATS_TEST_TMPDIR/gw.pids"
  await_ready "$GW_PID" "pbrick-gateway attach --transport $transport" gw_printed_device "$out" && return 0
  cat "$BATS_TEST_TMPDIR/$name.log" >&2
  return 1
}

# gw_printed_device OUT: whether attach printed a block device to OUT (sets DEV).
gw_printed_device() {
  [ -s "$1" ] || return 1
  DEV=$(head -n1 "$1")
  [ -b "$DEV" ]
}

# await_ready PID WHAT CHECK [ARGS...]: runs CHECK ARGS every 0.1 s until it
# succeeds (returns 0); says so and returns 1 when the process PID (WHAT)
# exits first or 30 s pass.
await_ready() {
  local pid=$1 what=$2
  shift 2
  for _ in $(seq 1 300); do
    "$@" && return 0
    if ! kill -0 "$pid" 2>/dev/null; then
      say "$what exited before it was ready:"
      return 1
    fi
    sleep 0.1
  done
  say "$what was not ready within 30 s:"
  return 1
}

# gw_stop_all: for teardown: SIGTERM to every gateway gw_attach started that
# still runs, SIGKILL to one still there 20 s later.
gw_stop_all() {
  local pid
  [ -f "$BATS_TEST_TMPDIR/gw.pids" ] || return 0
  while read -r pid; do
    kill -TERM "$pid" 2>/dev/null || continue
    timeout 20 tail --pid="$pid" -f /dev/null || kill -KILL "$pid" 2>/dev/null || true
  done <"$BATS_TEST_TMPDIR/gw.pids"
}

# proc_ticks PID: sets TICKS to utime+stime of the process (all its threads).
proc_ticks() {
  local stat f
  read -r stat <"/proc/$1/stat" || { say "no /proc/$1/stat: the process is gone"; return 1; }
  # shellcheck disable=SC2206 # the fields after "(comm) ", from field 3 on
  f=(${stat##*) })
  TICKS=$((f[11] + f[12]))
}

# fio_rdma_raw LABEL VERB BS DEPTH PORT: fio's rdma engine between two fio
# processes over rxe0 (RDMA_HOST): a server (rw=read: DEPTH registered buffers
# of BS) and a client (rw=write, the side that works) that moves BS to/from
# them with one-sided RDMA VERB (read|write) at DEPTH, for RUNTIME s after 1 s
# ramp. The client's JSON is $BATS_TEST_TMPDIR/fio-LABEL.json, its numbers in
# the "write" section whatever VERB is (the server's log is appended to
# fio-LABEL.json.err when it failed). Returns the client's exit status.
fio_rdma_raw() {
  local label=$1 verb=$2 bs=$3 depth=$4 port=$5 rc=0
  local out=$BATS_TEST_TMPDIR/fio-$label.json srv=$BATS_TEST_TMPDIR/fio-$label.srv
  # cd: fio must not try to lay out a file in the read-only tree; stdbuf: its
  # "waiting for connection" reaches the log at once.
  (cd "$BATS_TEST_TMPDIR" && exec timeout -k 5 $((RUNTIME + 150)) stdbuf -oL fio --name=srv --ioengine=rdma \
    --port="$port" --rw=read --bs="$bs" --iodepth="$depth" --size="$SIZE") >"$srv" 2>&1 &
  RAW_SRV_PID=$!
  echo "$RAW_SRV_PID" >>"$BATS_TEST_TMPDIR/raw.pids"
  if ! await_ready "$RAW_SRV_PID" "fio rdma server for $label (port $port)" fio_rdma_listening "$srv" "$port"; then
    cat "$srv" >&2
    return 1
  fi
  (cd "$BATS_TEST_TMPDIR" && exec timeout -k 10 $((RUNTIME + 90)) fio --name=raw --ioengine=rdma \
    --hostname="$RDMA_HOST" --port="$port" --verb="$verb" --rw=write --bs="$bs" --iodepth="$depth" \
    --size="$SIZE" --runtime="$RUNTIME" --time_based --ramp_time=1 --output-format=json) \
    >"$out" 2>"$out.err" || rc=$?
  # The client's end tells the server to finish (not when it failed).
  if [ "$rc" != 0 ]; then
    kill -TERM "$RAW_SRV_PID" 2>/dev/null || true
  elif ! timeout 30 tail --pid="$RAW_SRV_PID" -f /dev/null; then
    say "fio rdma server for $label still runs 30 s after its client ended; killing it"
    kill -TERM "$RAW_SRV_PID" 2>/dev/null || true
  fi
  wait "$RAW_SRV_PID" 2>/dev/null || true
  RAW_SRV_PID=
  if [ "$rc" != 0 ]; then
    echo "--- server log:" >>"$out.err"
    cat "$srv" >>"$out.err"
  fi
  return "$rc"
}

# fio_rdma_listening LOG PORT: whether fio's rdma server (its output in LOG)
# waits for its client on PORT.
fio_rdma_listening() {
  grep -q 'waiting for connection' "$1" || rdma resource show cm_id 2>/dev/null | grep -q "state LISTEN .*:$2 "
}

# bench_teardown [LINES]: a benchmark's teardown after its own devices are
# gone: TERM to fio's rdma processes (raw.pids), the gateways (gw_stop_all),
# the bricks and their stores (vm_teardown); then the last LINES (default 30)
# lines of each log of the test, which bats shows when the test failed.
bench_teardown() {
  local pid log
  if [ -f "$BATS_TEST_TMPDIR/raw.pids" ]; then
    while read -r pid; do kill -TERM "$pid" 2>/dev/null || true; done <"$BATS_TEST_TMPDIR/raw.pids"
  fi
  gw_stop_all
  vm_teardown
  for log in "$BATS_TEST_TMPDIR"/*.log; do
    [ -s "$log" ] || continue
    echo "--- ${log##*/}:" >&2
    tail -n "${1:-30}" "$log" >&2
  done
  return 0
}

# sys_busy: sets BUSY to the guest's non-idle CPU ticks (all CPUs, /proc/stat);
# not steal time, which is the host's load, not work of the guest's.
sys_busy() {
  local u n s q sq
  read -r _ u n s _ _ q sq _ </proc/stat
  BUSY=$((u + n + s + q + sq))
}

# run_job LABEL DEV ENGINE RW BS DEPTH [FIO ARGS...]: one time-based fio job;
# meanwhile samples CPU over a window inside the measured time. Sets
# RES="rate mean_us p99_us sync_mean_us sync_p99_us sys_us_per_io gw_us brick_us":
# sys is the whole guest's busy time, gw and brick the utime+stime of the
# processes GW and BRICK (the setup's front and back, e.g. the ublk gateway or
# nbdkit, and the brick), "-" when GW is empty (a kernel-only setup).
run_job() {
  local label=$1 dev=$2 engine=$3 rw=$4 bs=$5 depth=$6
  shift 6
  local side=read out=$BATS_TEST_TMPDIR/fio-$label.json rc=0 fpid
  case $rw in *write) side="write" ;; esac
  timeout -k 10 $((RUNTIME + 90)) fio --name=b --filename="$dev" --direct=1 --ioengine="$engine" --rw="$rw" \
    --bs="$bs" --iodepth="$depth" --size="$SIZE" --runtime="$RUNTIME" --time_based --ramp_time=1 \
    --output-format=json "$@" >"$out" 2>"$out.err" &
  fpid=$!
  # The window: from 1.5 s after the start (past fio's start-up and ramp) for
  # RUNTIME - 1 s; CPU per I/O = busy time in the window / (rate x window).
  sleep 1.5
  local b0 b1 g0=0 g1=0 k0=0 k1=0 t0 t1
  sys_busy; b0=$BUSY
  [ -z "$GW" ] || { proc_ticks "$GW"; g0=$TICKS; proc_ticks "$BRICK"; k0=$TICKS; }
  t0=$EPOCHREALTIME
  sleep $((RUNTIME - 1))
  sys_busy; b1=$BUSY
  [ -z "$GW" ] || { proc_ticks "$GW"; g1=$TICKS; proc_ticks "$BRICK"; k1=$TICKS; }
  t1=$EPOCHREALTIME
  wait "$fpid" || rc=$?
  if [ "$rc" != 0 ]; then
    say "fio $label failed (exit $rc):"
    tail -n 20 "$out.err" >&2
    return 1
  fi
  local row
  row=$(sed -n '/^{/,$p' "$out" | jq -r --arg s "$side" '.jobs[0] |
    if .error != 0 then "error \(.error)" else
    [.[$s].iops, .[$s].clat_ns.mean / 1000, ((.[$s].clat_ns.percentile // {})["99.000000"] // 0) / 1000,
     ((.sync.lat_ns.mean // 0) / 1000), (((.sync.lat_ns.percentile // {})["99.000000"] // 0) / 1000)] | @tsv end') ||
    { say "fio $label: no JSON"; tail -n 20 "$out" "$out.err" >&2; return 1; }
  case $row in error*) say "fio $label: $row"; return 1 ;; esac
  RES=$(awk -v r="$row" -v t0="$t0" -v t1="$t1" -v b="$((b1 - b0))" -v g="$((g1 - g0))" -v k="$((k1 - k0))" \
    -v clk="$CLK" -v pb="${GW:+1}" 'BEGIN {
      split(r, f, "\t"); ios = f[1] * (t1 - t0)
      if (f[1] <= 0 || ios <= 0) { print "bad"; exit }
      us = 1e6 / clk / ios
      printf "%.1f %.1f %.1f %.1f %.1f %.1f %s %s", f[1], f[2], f[3], f[4], f[5], b * us,
        (pb ? sprintf("%.1f", g * us) : "-"), (pb ? sprintf("%.1f", k * us) : "-") }')
  [ "$RES" != bad ] || { say "fio $label: no I/O"; return 1; }
}
