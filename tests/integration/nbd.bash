# Helpers for the NBD tests: nbdkit serving a pbrick volume through
# nbdkit-pbrick-plugin.so on a unix socket. Load after helpers.
# shellcheck shell=bash

PLUGIN_SO="$PBRICK_BIN_DIR/gateway/nbdkit-pbrick-plugin.so"

# start_nbd [--name NAME] [plugin params...]: starts nbdkit serving a volume of
# the last started brick (target=$TARGET size=1G, then the given params, which
# override those: later values win) on $BATS_TEST_TMPDIR/NAME.sock (NAME
# defaults to nbd) and waits until it answers. Sets NBD_URI, NBD_SOCK, NBD_PID
# and NBD_LOG (NAME.nbdkit.log). Fails, showing the log, when nbdkit exits or
# does not answer within 10 s.
#
# nbdkit runs in the foreground (-f) in a session of its own (setsid), so a
# terminal signal to the test's process group does not reach it, with fd 3
# closed so bats does not wait for it. Call it from the test's shell, not a
# subshell: --exit-with-parent ends nbdkit when its parent exits, so nothing
# outlives an aborted run. PBRICK_NBDKIT_VERBOSE=1 adds -v (every request is
# logged to NAME.nbdkit.log).
start_nbd() {
  local name=nbd
  if [ "${1:-}" = "--name" ]; then
    name=$2
    shift 2
  fi
  NBD_SOCK="$BATS_TEST_TMPDIR/$name.sock"
  NBD_LOG="$BATS_TEST_TMPDIR/$name.nbdkit.log"
  local pidfile="$BATS_TEST_TMPDIR/$name.nbdkit.pid"
  rm -f "$NBD_SOCK" "$pidfile"
  setsid nbdkit -f ${PBRICK_NBDKIT_VERBOSE:+-v} --exit-with-parent -U "$NBD_SOCK" -P "$pidfile" \
    "$PLUGIN_SO" target="$TARGET" size=1G "$@" </dev/null >>"$NBD_LOG" 2>&1 3>&- &
  local spid=$!
  echo "$spid" >>"$BATS_TEST_TMPDIR/nbd_pids"
  NBD_URI="nbd+unix:///?socket=$NBD_SOCK"
  export NBD_URI NBD_SOCK NBD_LOG
  local i
  for i in $(seq 1 200); do
    if [ -S "$NBD_SOCK" ] && [ -s "$pidfile" ] && nbdinfo --can connect "$NBD_URI" 2>/dev/null; then
      NBD_PID=$(cat "$pidfile")
      export NBD_PID
      [ "$NBD_PID" = "$spid" ] || echo "$NBD_PID" >>"$BATS_TEST_TMPDIR/nbd_pids"
      return 0
    fi
    if ! kill -0 "$spid" 2>/dev/null; then
      echo "nbdkit exited during start:" >&2
      cat "$NBD_LOG" >&2
      return 1
    fi
    sleep 0.05
  done
  echo "nbdkit did not answer within 10 s:" >&2
  cat "$NBD_LOG" >&2
  return 1
}

# stop_nbd [PID]: stops nbdkit (the last started by default) and waits for it.
stop_nbd() {
  local pid=${1:-${NBD_PID:-}}
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  timeout 10 tail --pid="$pid" -f /dev/null || kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  return 0
}

# nbd_teardown: stops every nbdkit this test started. Call it from teardown()
# before brick_teardown, so nbdkit never retries against a vanished brick.
nbd_teardown() {
  if [ -f "$BATS_TEST_TMPDIR/nbd_pids" ]; then
    local pid
    while read -r pid; do
      stop_nbd "$pid"
    done <"$BATS_TEST_TMPDIR/nbd_pids"
  fi
  return 0
}

# qio CMD...: runs qemu-io on the export, one -c per argument.
qio() {
  local args=() c
  for c in "$@"; do args+=(-c "$c"); done
  qemu-io -f raw "$NBD_URI" "${args[@]}"
}

# assert_qio_ok: after `run qio ...`, asserts qemu-io succeeded and printed no
# failed verification and no error (some versions exit 0 after a failed -P).
assert_qio_ok() {
  assert_success
  refute_output --partial 'Pattern verification failed'
  refute_output --regexp '(failed|error|Error)'
}

# The brick's data extents: a volume keeps its label area (two blocks at
# 0x8000000000000000 + 2 * base, docs/layout.md "Volume label") above every
# data address; label.bats checks that area, these helpers leave it out.
DATA_EXTENTS='[.extents[] | select(.start | test("^0x([0-9a-f]{1,15}|[0-7][0-9a-f]{15})$"))]'
# brick_list: the brick's data extents as [[start, blocks], ...] (compact JSON).
brick_list() { ctl --json list | jq -c "$DATA_EXTENTS | map([.start, .blocks])"; }
# data_blocks: how many data blocks the brick holds.
data_blocks() { ctl --json list | jq "$DATA_EXTENTS | map(.blocks) | add // 0"; }

# restart_brick NAME [start_brick args...]: starts brick NAME again on its
# store and on the port it had (BRICK_PORT), so clients reconnect to it.
restart_brick() {
  local name=$1
  shift
  start_brick "$name" "$@" --listen "127.0.0.1:$BRICK_PORT"
}
