# Helpers shared by the VM benchmarks (bench/peer-vm.bats, bench/rdma-vm.bats):
# a brick on tmpfs, a ublk gateway on it, a process's CPU ticks. The .bats file
# sets TARGET_BIN, GW_BIN, SHM, STORE_MIB, VOL_MIB and defines say().
# shellcheck shell=bash
# shellcheck disable=SC2034 # BRICK_*, GW_PID, DEV and TICKS are set for the caller

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
  for _ in $(seq 1 300); do
    if [ -s "$out" ]; then
      DEV=$(head -n1 "$out")
      [ -b "$DEV" ] && return 0
    fi
    if ! kill -0 "$GW_PID" 2>/dev/null; then
      say "pbrick-gateway attach --transport $transport exited without a device:"
      cat "$BATS_TEST_TMPDIR/$name.log" >&2
      return 1
    fi
    sleep 0.1
  done
  say "pbrick-gateway attach --transport $transport did not print a device within 30 s:"
  cat "$BATS_TEST_TMPDIR/$name.log" >&2
  return 1
}

# proc_ticks PID: sets TICKS to utime+stime of the process (all its threads).
proc_ticks() {
  local stat f
  read -r stat <"/proc/$1/stat" || { say "no /proc/$1/stat: the process is gone"; return 1; }
  # shellcheck disable=SC2206 # the fields after "(comm) ", from field 3 on
  f=(${stat##*) })
  TICKS=$((f[11] + f[12]))
}
