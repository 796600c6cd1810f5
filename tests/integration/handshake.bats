#!/usr/bin/env bats
# Peers that have not completed HELLO (and AUTH) get a budget of their own and
# small buffers (docs/protocol.md §8.1): they can neither lock authenticated
# clients out of a brick nor make it hold memory for frames they never finish.
# TCP on 127.0.0.1 (the RDMA side is tests/vm/rdma.bats).

load helpers

FLOOD="$BATS_TEST_DIRNAME/handshake_flood.py"

setup() {
  requires python3
  PBRICK_TRANSPORT=tcp
  head -c 32 /dev/urandom | base64 >"$BATS_TEST_TMPDIR/key"
  chmod 600 "$BATS_TEST_TMPDIR/key"
}

teardown() { brick_teardown; }

@test "handshake: idle unauthenticated sockets do not lock keyed clients out of a --max-connections 16 brick" {
  start_brick b --key-file "$BATS_TEST_TMPDIR/key" --max-connections 16
  run timeout 60 python3 "$FLOOD" slots 127.0.0.1 "$BRICK_PORT" "$BATS_TEST_TMPDIR/key" 16
  printf '# %s\n' "${lines[@]}" >&3
  assert_success
  refute_output --partial FAIL
  kill -0 "$BRICK_PID"
  grep -q 'closing the oldest connection still in its handshake' "$BATS_TEST_TMPDIR/b.log"
}

@test "handshake: frames larger than HELLO/AUTH are refused on their header before the handshake" {
  start_brick b --key-file "$BATS_TEST_TMPDIR/key"
  run timeout 60 python3 "$FLOOD" frames 127.0.0.1 "$BRICK_PORT" "$BATS_TEST_TMPDIR/key" "$BRICK_PID"
  printf '# %s\n' "${lines[@]}" >&3
  assert_success
  refute_output --partial FAIL
  kill -0 "$BRICK_PID"
}
