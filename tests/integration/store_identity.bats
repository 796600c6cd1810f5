#!/usr/bin/env bats
# A volume talks only to the store it was opened on: a brick that serves
# another store behind the same address (replaced, or reformatted) is refused
# by every connection of the gateway, its I/O fails, and no read ever returns
# that store's zeros in place of the volume's data.

load helpers
load nbd

setup() {
  requires nbdkit nbdinfo qemu-io jq setsid
}

teardown() {
  nbd_teardown
  brick_teardown
}

@test "nbdkit refuses a freshly formatted brick on the old brick's port: EIO, never zeros, both uuids logged" {
  start_brick b
  ours=$(ctl --json stat | jq -r .uuid)
  start_nbd timeout=5000
  run qio "write -P 0x5a 0 3M" flush
  assert_qio_ok
  kill -KILL "$BRICK_PID"
  wait "$BRICK_PID" 2>/dev/null || true
  sleep 0.3
  # Another store (a new file, formatted at start) on the same port.
  start_brick other --listen "127.0.0.1:$BRICK_PORT"
  theirs=$(ctl --json stat | jq -r .uuid)
  # Two lines: under bats' errexit a failed test before && would pass unseen.
  [ -n "$theirs" ]
  [ "$theirs" != "$ours" ]
  SECONDS=0
  # Flushed data, as it is and as the other store would serve it (zeros).
  run qio "read -P 0x5a 0 3M"
  assert_failure
  assert_output --partial 'Input/output error'
  run qio "read -P 0 0 64k"
  assert_failure
  assert_output --partial 'Input/output error'
  # A write to a mapped block, a write that allocates, a flush.
  run qio "write -P 0x77 0 4k"
  assert_failure
  assert_output --partial 'Input/output error'
  run qio "write -P 0x77 8M 4k"
  assert_failure
  assert_output --partial 'Input/output error'
  run qio flush
  assert_failure
  # Refused at once, not waited out as an unreachable brick (timeout=5000).
  ((SECONDS < 5))
  grep -q "serves store $theirs, not store $ours" "$NBD_LOG"
  # Nothing was allocated on the other store.
  assert_equal "$(brick_list)" '[]'
  kill -0 "$NBD_PID"

  # The right brick back on the port: the flushed data is there.
  stop_brick TERM
  restart_brick b
  run qio "read -P 0x5a 0 3M" "write -P 0x77 8M 4k" "read -P 0x77 8M 4k" flush
  assert_qio_ok
  assert_equal "$(brick_list)" '[["0x0",2],["0x800000",1]]'
}
