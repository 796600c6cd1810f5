# Helpers shared by the VM benchmarks (bench/peer-vm.bats, bench/rdma-vm.bats):
# a brick on tmpfs, a ublk gateway on it, a process's CPU ticks, fio's rdma
# engine between two processes. The .bats file sets TARGET_BIN, GW_BIN, SHM,
# STORE_MIB, VOL_MIB (and SIZE, RUNTIME, RDMA_HOST for fio_rdma_raw), defines
# say(), and calls bench_teardown in its teardown.
# shellcheck shell=bash
# shellcheck disable=SC2034 # BRICK_*, GW_PID, DEV, TICKS and RAW_SRV_PID are set for the caller

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
