#!/usr/bin/env bats
# RDMA-only behaviour, on soft-RoCE (rxe0 over eth0) in the VM of tests/vm/run:
#   1. revocation is done by the NIC: after UNMAP, a queue pair that kept the
#      old rkey gets a remote access error, and the brick keeps serving
#   2. malformed messages close only their own connection; a greeted
#      client's message that is not exactly one frame is refused (EBADMSG),
#      never glued to the next message
#   3. a brick that has not declared DDIO off refuses sync-read clients, with
#      a message on both sides
#   4. the data path does not run on the brick's CPU: its user+system time
#      while fio rewrites 256 MiB through /dev/ublkb0 is printed and bounded
#   5. the nbdkit plugin over RDMA (bounce buffers): data round-trips
#   6. before AUTH nothing of the store is reachable: HELLO names no rkey or
#      address, and the NIC refuses RDMA READs of peers that did not
#      authenticate, even through a real handle of another connection
#   7. a brick killed with -9 while a client is connected starts again at
#      once on the same RDMA port
#   8. a message (PERSIST) goes out after the one-sided WRITEs queued before
#      it on the same queue pair, as the WRITEs it covers must land first
#   9. the RDMA device removed under a brick (rdma link delete): the brick
#      exits 1 naming it, and serves its store again once started anew
#  10. a client that dies with replies on their way to it (a killed gateway)
#      loses its exclusive mapping (a volume's lock) at once, not once the
#      brick's QP has run out of retries
# The brick API tests (tests/integration/brick.bats) and the ublk tests run
# over RDMA as well (scripts/test runs them with PBRICK_TRANSPORT=rdma).

load helpers
load ../integration/nbd

GW_BIN="$PBRICK_BIN_DIR/gateway/pbrick-gateway"
PROBE_BIN="$PBRICK_BIN_DIR/tests/rdma/rdma_probe"
M=$((1024 * 1024))

setup() {
  require_vm
  PBRICK_TRANSPORT=rdma
  GW_PID=
}

teardown() {
  if [ -n "$GW_PID" ] && kill -0 "$GW_PID" 2>/dev/null; then
    kill -TERM "$GW_PID"
    timeout 20 tail --pid="$GW_PID" -f /dev/null || kill -KILL "$GW_PID"
  fi
  "$GW_BIN" detach -n 0 >/dev/null 2>&1 || true
  nbd_teardown 2>/dev/null || true
  brick_teardown
}

# cpu_ticks PID: user + system CPU time of PID so far, in clock ticks.
cpu_ticks() {
  local stat
  read -r stat <"/proc/$1/stat"
  # Fields after the command name (which may hold spaces): utime is 14, stime 15.
  stat=${stat##*) }
  # shellcheck disable=SC2086 # split on purpose
  set -- $stat
  echo $((${12} + ${13}))
}

# seconds TICKS: in seconds, two decimals.
seconds() { awk -v t="$1" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", t / hz }'; }

@test "rdma: UNMAP revokes the rkey in the NIC; the old handle fails on the same QP; the brick serves on" {
  start_brick b --log-level debug
  run "$PROBE_BIN" revoke "$TARGET" 0x200000
  printf '# %s\n' "${lines[@]}" >&3
  assert_success
  assert_output --partial "refused by the NIC"
  kill -0 "$BRICK_PID"
}

@test "rdma: a PERSIST goes out after the WRITEs queued before it on its queue pair" {
  start_brick b
  run "$PROBE_BIN" order "$TARGET" 0x400000
  printf '# %s\n' "${lines[@]}" >&3
  assert_success
  refute_output --partial "FAIL"
}

@test "rdma: a client killed with replies in flight loses its exclusive mapping at once" {
  start_brick b --log-level debug
  run "$PROBE_BIN" vanish "$TARGET" 0x600000
  printf '# %s\n' "${lines[@]}" >&3
  assert_success
  refute_output --partial "FAIL"
  assert_output --partial "another client maps it exclusively after"
  kill -0 "$BRICK_PID"
}

@test "rdma: malformed messages close their own connection only" {
  start_brick b
  run "$PROBE_BIN" garbage "$TARGET"
  printf '# %s\n' "${lines[@]}" >&3
  assert_success
  kill -0 "$BRICK_PID"
  grep -q 'closing connection' "$BATS_TEST_TMPDIR/b.log"
}

@test "rdma: a brick without DDIO off refuses sync-read clients with a clear error" {
  start_brick b --persistence rpc
  run "$GW_BIN" attach --target "$TARGET" --transport rdma --persistence sync-read --size 64M
  assert_failure 1
  assert_output --partial 'refuses sync-read persistence over RDMA'
  assert_output --partial 'DDIO'
  grep -q 'refused: sync-read persistence asked for' "$BATS_TEST_TMPDIR/b.log"
  # The same brick serves rpc clients.
  run ctl --json stat
  assert_success
}

@test "rdma: a brick killed with -9 under a connected client comes back at once on the same RDMA port" {
  start_brick b
  local port=$BRICK_PORT
  ctl alloc 0x0
  hold_map 0x0 # a client with a connection and a registered block at the kill
  stop_brick KILL
  # At once, on the same port. The kernel may still hold the old RDMA CM ids
  # for a moment, and the brick then waits for them (bind_with_retry, whose
  # unit test shows the retry); under rxe the port has been free in time.
  "$TARGET_BIN" --store "$(store_dir)/b.store" --listen "$BRICK_HOST:$port" --transport rdma \
    --port-file "$BATS_TEST_TMPDIR/b2.port" 2>>"$BATS_TEST_TMPDIR/b2.log" &
  BRICK_PID=$!
  wait_for_brick b2 || { cat "$BATS_TEST_TMPDIR/b2.log" >&2; false; }
  assert_equal "$BRICK_PORT" "$port"
  run ctl --json list
  assert_success
  assert_equal "$(jq "$DATA_EXTENTS | map(.blocks) | add // 0" <<<"$output")" 1
  if grep -h "address in use" "$BATS_TEST_TMPDIR/b2.log"; then
    echo "# the port was still held; bound after retrying" >&3
  fi
}

@test "rdma: the RDMA device removed under a brick: it exits with an error (to be started again), not serving nothing" {
  start_brick b
  ctl alloc 0x0
  hold_map 0x0  # a client connected at the removal
  # The removal may wait for the processes that hold the device to let go.
  timeout 60 rdma link delete rxe0 &
  local deleting=$! i rc=0
  for i in $(seq 1 200); do
    kill -0 "$BRICK_PID" 2>/dev/null || break
    sleep 0.1
  done
  local still=
  kill -0 "$BRICK_PID" 2>/dev/null && still=1 && kill -KILL "$BRICK_PID"
  wait "$BRICK_PID" || rc=$?
  kill -KILL "$HOLD_PID" 2>/dev/null || true
  wait "$deleting" || true
  rdma_host >/dev/null  # rxe0 back, for what follows
  [ -z "$still" ] || fail "the brick still ran 20 s after its RDMA device went away"
  assert_equal "$rc" 1
  grep -q "rdma: the RDMA device was removed (RDMA_CM_EVENT_DEVICE_REMOVAL)" "$BATS_TEST_TMPDIR/b.log" ||
    fail "$(cat "$BATS_TEST_TMPDIR/b.log")"
  # Started again on the device that came back, it serves the same store.
  "$TARGET_BIN" --store "$(store_dir)/b.store" --listen "$BRICK_HOST:0" --transport rdma \
    --port-file "$BATS_TEST_TMPDIR/b2.port" 2>>"$BATS_TEST_TMPDIR/b2.log" &
  BRICK_PID=$!
  wait_for_brick b2 || { cat "$BATS_TEST_TMPDIR/b2.log" >&2; false; }
  run ctl --json list
  assert_success
  assert_equal "$(jq "$DATA_EXTENTS | map(.blocks) | add // 0" <<<"$output")" 1
}

@test "rdma: fio rewriting 256 MiB through ublk costs the brick no CPU (data path is one-sided)" {
  requires fio
  [ -c /dev/ublk-control ] || skip "no /dev/ublk-control"
  start_brick b --size 300M --persistence sync-read
  local out=$BATS_TEST_TMPDIR/gw.out
  "$GW_BIN" attach --target "$TARGET" --transport rdma --persistence sync-read --size 256M -q 2 -d 32 \
    >"$out" 2>>"$BATS_TEST_TMPDIR/gw.log" &
  GW_PID=$!
  for _ in $(seq 1 300); do [ -s "$out" ] && break; sleep 0.1; done
  DEV=$(head -n1 "$out")
  [ -b "$DEV" ] || { cat "$BATS_TEST_TMPDIR/gw.log" >&2; false; }
  local job=(--name=w --filename="$DEV" --ioengine=io_uring --direct=1 --rw=write --bs=1M --iodepth=16
    --size=256M --end_fsync=1 --output-format=json)
  local c0 c1 c2
  c0=$(cpu_ticks "$BRICK_PID")
  fio "${job[@]}" >"$BATS_TEST_TMPDIR/fio1.json"
  c1=$(cpu_ticks "$BRICK_PID")
  fio "${job[@]}" >"$BATS_TEST_TMPDIR/fio2.json"
  c2=$(cpu_ticks "$BRICK_PID")
  {
    echo "# brick CPU (user+system) while fio writes 256 MiB over RDMA:"
    echo "#   first pass (ALLOC + MAP of 128 blocks, memory registration): $(seconds $((c1 - c0))) s"
    echo "#   second pass (the same 256 MiB again: data path only):         $(seconds $((c2 - c1))) s"
    echo "#   fio: first pass $(jq -r '.jobs[0].write.bw_bytes / 1048576 | floor' "$BATS_TEST_TMPDIR/fio1.json") MiB/s," \
      "second pass $(jq -r '.jobs[0].write.bw_bytes / 1048576 | floor' "$BATS_TEST_TMPDIR/fio2.json") MiB/s"
  } >&3
  # Data moved by the NICs (here: the kernel's rxe), never by the brick's
  # threads (under emulation the brick copying 256 MiB would take it
  # seconds); a tick or two of the brick's 1 s timer is all it may spend.
  (((c2 - c1) * 100 < 20 * $(getconf CLK_TCK)))
  # Every block was allocated and mapped once, by the control path.
  assert_equal "$(data_blocks)" 128
}

@test "rdma: the nbdkit plugin over RDMA round-trips data through its bounce buffers" {
  requires nbdkit nbdcopy
  start_brick b --size 256M
  start_nbd target="$TARGET" transport=rdma size=64M
  head -c $((24 * M + 4096)) /dev/urandom >"$BATS_TEST_TMPDIR/in"
  nbdcopy "$BATS_TEST_TMPDIR/in" "$NBD_URI"
  nbdcopy "$NBD_URI" "$BATS_TEST_TMPDIR/out"
  cmp -n $((24 * M + 4096)) "$BATS_TEST_TMPDIR/in" "$BATS_TEST_TMPDIR/out"
  # Zeros beyond what was written.
  cmp -i $((24 * M + 4096)) -n $((8 * M)) "$BATS_TEST_TMPDIR/out" /dev/zero
}

@test "rdma: nothing of the store is reachable before AUTH: no rkey in HELLO, the NIC refuses unauthenticated READs" {
  head -c 32 /dev/urandom | base64 >"$BATS_TEST_TMPDIR/key"
  chmod 600 "$BATS_TEST_TMPDIR/key"
  start_brick b --key-file "$BATS_TEST_TMPDIR/key"
  run "$PROBE_BIN" preauth "$TARGET" "$BATS_TEST_TMPDIR/key" 0x200000
  printf '# %s\n' "${lines[@]}" >&3
  [ "$status" -eq 0 ] || sed 's/^/# brick: /' "$BATS_TEST_TMPDIR/b.log" >&3
  assert_success
  refute_output --partial FAIL
  kill -0 "$BRICK_PID"
  grep -q 'refused: an RDMA client without AUTH_TRAILER' "$BATS_TEST_TMPDIR/b.log"
}
