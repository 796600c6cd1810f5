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

# idle_sockets_close_the_oldest: three sockets that never say HELLO, opened
# one after another, against a brick that allows two handshakes at once: the
# brick closes the first (EOF at once, not a read timeout) and keeps the
# other two.
idle_sockets_close_the_oldest() {
  local s1 s2 s3 line rc=0
  exec {s1}<>"/dev/tcp/127.0.0.1/$BRICK_PORT"
  sleep 0.2
  exec {s2}<>"/dev/tcp/127.0.0.1/$BRICK_PORT"
  sleep 0.2
  exec {s3}<>"/dev/tcp/127.0.0.1/$BRICK_PORT"
  read -r -t 5 -u "$s1" line || rc=$?
  ((rc == 1)) || fail "the oldest idle socket was not closed (read status $rc)"
  rc=0
  read -r -t 1 -u "$s2" line || rc=$?
  ((rc > 128)) || fail "the second idle socket was closed too (read status $rc)"
  exec {s1}>&- {s2}>&- {s3}>&-
  grep -q 'closing the oldest connection still in its handshake: 2 are (--max-handshakes)' \
    "$BATS_TEST_TMPDIR/b.log" || fail "no log line naming --max-handshakes: $(cat "$BATS_TEST_TMPDIR/b.log")"
}

@test "handshake: --max-handshakes 2 closes the oldest of three idle sockets; 0 is a usage error" {
  start_brick b --max-handshakes 2
  idle_sockets_close_the_oldest
  run timeout 20 "$TARGET_BIN" --store "$BATS_TEST_TMPDIR/x.store" --size 64M --listen 127.0.0.1:0 --max-handshakes 0
  assert_failure 2
  assert_output --partial '--max-handshakes: must be 1..65536'
  [ ! -e "$BATS_TEST_TMPDIR/x.store" ] || fail "a usage error created the store"
}

@test "handshake: max_handshakes from the cluster file's brick" {
  cat >"$BATS_TEST_TMPDIR/cluster.yaml" <<YAML
cluster:
  name: t
bricks:
  - name: brick0
    host: 127.0.0.1
    max_handshakes: 2
    store: {path: $BATS_TEST_TMPDIR/unused.store, size: 64M}
YAML
  # --store, --size and --listen (given by start_brick) win over the file.
  start_brick b --config "$BATS_TEST_TMPDIR/cluster.yaml" --brick brick0
  idle_sockets_close_the_oldest
}

@test "handshake: the brick probes an idle client connection (TCP keepalive, 30 s), so a dead peer's slot comes back" {
  start_brick b
  # The brick's end of an idle connection: established, its keepalive timer
  # running (/proc/net/tcp "tr" 02) and due within 30 s (3000 ticks of 10 ms).
  run timeout 30 python3 - "$BRICK_PORT" <<'PY'
import socket, sys, time
port = int(sys.argv[1])
c = socket.create_connection(("127.0.0.1", port))
time.sleep(0.5)
found = []
for line in open("/proc/net/tcp").read().splitlines()[1:]:
    f = line.split()
    if int(f[1].split(":")[1], 16) == port and f[3] == "01":
        tr, when = f[5].split(":")
        found.append((tr, int(when, 16)))
print("brick side:", found)
sys.exit(0 if found and all(tr == "02" and 0 < when <= 3000 for tr, when in found) else 1)
PY
  printf '# %s\n' "${lines[@]}" >&3
  assert_success
}
