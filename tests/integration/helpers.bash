# Common setup for the integration tests: real pbrick-target daemons on
# temporary stores, driven over TCP on 127.0.0.1 - or over RDMA when
# PBRICK_TRANSPORT=rdma (the system tier runs brick.bats so inside the VM, on
# soft-RoCE over eth0: see rdma_host).
# shellcheck shell=bash

load '/usr/lib/bats/bats-support/load.bash'
load '/usr/lib/bats/bats-assert/load.bash'
# Failure locations from the ERR trap instead of bats's trap before every command.
load "${BASH_SOURCE[0]%/*}/../bats/failure_trace"

: "${PBRICK_BIN_DIR:?PBRICK_BIN_DIR must point at the build directory}"
TARGET_BIN="$PBRICK_BIN_DIR/target/pbrick-target"
CTL_BIN="$PBRICK_BIN_DIR/ctl/pbrickctl"

# requires CMD...: skips the test, naming what is missing. scripts/test
# installs every tool the tests use and counts such a skip as a failure; a
# skip that is right even there says why with a reason starting "inherent:".
requires() {
  local c
  for c in "$@"; do
    command -v "$c" >/dev/null 2>&1 || skip "requires $c: not found in PATH"
  done
}

PBRICK_TRANSPORT=${PBRICK_TRANSPORT:-tcp}

# rdma_host: the IPv4 address of eth0 with a soft-RoCE device on it (made on
# first use), where RDMA bricks listen. Fails when there is no RDMA.
rdma_host() {
  if ! rdma link show 2>/dev/null | grep -q 'netdev eth0'; then
    rdma link add rxe0 type rxe netdev eth0 >&2 || return 1
  fi
  ip -4 -o addr show dev eth0 | awk '{split($4, a, "/"); print a[1]; exit}'
}

# The address bricks listen on for this transport.
brick_host() {
  if [ "$PBRICK_TRANSPORT" = rdma ]; then
    [ -n "${PBRICK_RDMA_HOST:-}" ] || PBRICK_RDMA_HOST=$(rdma_host) || return 1
    echo "$PBRICK_RDMA_HOST"
  else
    echo 127.0.0.1
  fi
}

# store_dir: where start_brick puts stores. Over RDMA the brick registers store
# memory for remote write, which the kernel allows for tmpfs (and devdax) but
# not for files on disk filesystems such as the VM's scratch disk.
store_dir() {
  if [ "$PBRICK_TRANSPORT" = rdma ]; then
    mkdir -p "/dev/shm/pbrick-tests$BATS_TEST_TMPDIR" && echo "/dev/shm/pbrick-tests$BATS_TEST_TMPDIR"
  else
    echo "$BATS_TEST_TMPDIR"
  fi
}

# one_brick_cluster FILE [VOLUME-KEYS]: writes a cluster file of the brick
# start_brick started last (b0 on 127.0.0.1:$BRICK_PORT) and one 64 MiB
# volume vol0 at base 0 on it; VOLUME-KEYS (", key: value" ...) are added to
# the volume's flow mapping.
one_brick_cluster() {
  cat >"$1" <<EOF
cluster: {name: t}
bricks:
  - {name: b0, host: 127.0.0.1, port: $BRICK_PORT, store: {path: /var/lib/pbrick/b0.store, size: 64M}}
volumes:
  - {name: vol0, size: 64M, brick: b0, base: 0x0${2:-}}
EOF
}

# start_brick NAME [pbrick-target args...]: starts a brick on
# $BATS_TEST_TMPDIR/NAME.store (64M unless --size is given) and sets
# BRICK_PID, BRICK_PORT, TARGET. Logs go to $BATS_TEST_TMPDIR/NAME.log.
start_brick() {
  local name=$1
  shift
  local size=(--size 64M)
  local a
  for a in "$@"; do [ "$a" = "--size" ] && size=(); done
  rm -f "$BATS_TEST_TMPDIR/$name.port"
  BRICK_HOST=$(brick_host) || return 1
  "$TARGET_BIN" --store "$(store_dir)/$name.store" "${size[@]}" --listen "$BRICK_HOST:0" \
    --transport "$PBRICK_TRANSPORT" --port-file "$BATS_TEST_TMPDIR/$name.port" "$@" \
    2>>"$BATS_TEST_TMPDIR/$name.log" &
  BRICK_PID=$!
  wait_for_brick "$name"
}

# wait_for_brick NAME: after starting pbrick-target with --port-file
# $BATS_TEST_TMPDIR/NAME.port as BRICK_PID, waits until it serves; sets
# BRICK_PORT and TARGET and records the pid for teardown.
wait_for_brick() {
  local name=$1 i
  echo "$BRICK_PID" >>"$BATS_TEST_TMPDIR/pids"
  for i in $(seq 1 400); do
    if [ -s "$BATS_TEST_TMPDIR/$name.port" ]; then
      BRICK_PORT=$(cat "$BATS_TEST_TMPDIR/$name.port")
      TARGET="${BRICK_HOST:-127.0.0.1}:$BRICK_PORT"
      export TARGET BRICK_PORT BRICK_PID
      return 0
    fi
    if ! kill -0 "$BRICK_PID" 2>/dev/null; then
      echo "pbrick-target exited during start:" >&2
      cat "$BATS_TEST_TMPDIR/$name.log" >&2
      return 1
    fi
    sleep 0.05
  done
  echo "pbrick-target did not start within 20 s" >&2
  return 1
}

# stop_brick [SIGNAL]: stops the last started brick and waits for it.
stop_brick() {
  local sig=${1:-TERM}
  kill "-$sig" "$BRICK_PID" 2>/dev/null || true
  wait "$BRICK_PID" 2>/dev/null || true
}

ctl() { "$CTL_BIN" --target "$TARGET" --transport "$PBRICK_TRANSPORT" "$@"; }

# brick_teardown: stops every brick started by this test (and a held map),
# then unmounts what $BATS_TEST_TMPDIR/unmount-after names and removes the
# files $BATS_TEST_TMPDIR/remove-after names (one path a line: a test's
# mounts, its files outside its directory).
# The default teardown; a .bats file that starts more (nbd.bash's nbdkit)
# defines its own teardown() that stops those first and then calls this.
brick_teardown() {
  if [ -f "$BATS_TEST_TMPDIR/pids" ]; then
    local pid
    while read -r pid; do
      kill -TERM "$pid" 2>/dev/null || continue
      timeout 5 tail --pid="$pid" -f /dev/null || kill -KILL "$pid" 2>/dev/null
      wait "$pid" 2>/dev/null
    done <"$BATS_TEST_TMPDIR/pids"
  fi
  if [ -f "$BATS_TEST_TMPDIR/unmount-after" ]; then
    local mnt
    while read -r mnt; do umount -- "$mnt" 2>/dev/null; done <"$BATS_TEST_TMPDIR/unmount-after"
  fi
  if [ -f "$BATS_TEST_TMPDIR/remove-after" ]; then
    local path
    while read -r path; do rm -f -- "$path"; done <"$BATS_TEST_TMPDIR/remove-after"
  fi
  [ -n "${HOLD_PID:-}" ] && kill -KILL "$HOLD_PID" 2>/dev/null || true
  rm -rf "/dev/shm/pbrick-tests$BATS_TEST_TMPDIR"
  return 0
}

teardown() { brick_teardown; }

# sha FILE: its sha256.
sha() { sha256sum "$1" | cut -d' ' -f1; }

# hold_map ADDR [map flags...]: keeps a mapping open in a background pbrickctl
# (until release_map); sets HOLD_PID, HOLD_RKEY, HOLD_RADDR.
hold_map() {
  local fifo="$BATS_TEST_TMPDIR/hold.fifo" out="$BATS_TEST_TMPDIR/hold.out"
  rm -f "$fifo" "$out"
  mkfifo "$fifo"
  "$CTL_BIN" --target "$TARGET" --transport "$PBRICK_TRANSPORT" --json map "$@" --hold <"$fifo" >"$out" 2>&1 &
  HOLD_PID=$!
  exec {HOLD_FD}>"$fifo"
  local i
  for i in $(seq 1 100); do
    if [ -s "$out" ]; then
      HOLD_RKEY=$(jq -r .rkey "$out") || { cat "$out" >&2; return 1; }
      HOLD_RADDR=$(jq -r .remote_addr "$out")
      return 0
    fi
    kill -0 "$HOLD_PID" 2>/dev/null || { cat "$out" >&2; return 1; }
    sleep 0.05
  done
  return 1
}

release_map() {
  exec {HOLD_FD}>&-
  wait "$HOLD_PID"
}
