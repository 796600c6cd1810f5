#!/usr/bin/env bats
# The store across daemon restarts: what was allocated and written survives, a
# store is never reformatted or resized by accident.

load helpers

@test "allocations and data survive a clean restart" {
  start_brick b
  head -c 3000000 /dev/urandom >"$BATS_TEST_TMPDIR/in"
  ctl write 0x800000 100 <"$BATS_TEST_TMPDIR/in"
  ctl alloc 0x40000000
  before_list=$(ctl --json list)
  before_uuid=$(ctl --json stat | jq -r .uuid)
  stop_brick TERM
  grep -q 'shutting down' "$BATS_TEST_TMPDIR/b.log"
  start_brick b
  assert_equal "$(ctl --json list)" "$before_list"
  assert_equal "$(ctl --json stat | jq -r .uuid)" "$before_uuid"
  ctl read 0x800000 100 3000000 >"$BATS_TEST_TMPDIR/out"
  assert_equal "$(sha "$BATS_TEST_TMPDIR/out")" "$(sha "$BATS_TEST_TMPDIR/in")"
}

@test "SIGTERM and SIGINT stop the daemon cleanly with exit 0" {
  local rc
  start_brick b
  kill -TERM "$BRICK_PID"
  rc=0
  wait "$BRICK_PID" || rc=$?
  assert_equal "$rc" 0
  start_brick b
  kill -INT "$BRICK_PID"
  rc=0
  wait "$BRICK_PID" || rc=$?
  assert_equal "$rc" 0
  assert_equal "$(grep -c 'shutting down' "$BATS_TEST_TMPDIR/b.log")" 2
}

@test "a size mismatch is refused and the store is left untouched" {
  start_brick b
  ctl alloc 0x0
  stop_brick
  before=$(sha "$BATS_TEST_TMPDIR/b.store")
  run timeout 20 "$TARGET_BIN" --store "$BATS_TEST_TMPDIR/b.store" --size 128M --listen 127.0.0.1:0
  assert_failure 1
  assert_output --partial 'refusing to resize'
  assert_equal "$(sha "$BATS_TEST_TMPDIR/b.store")" "$before"
}

@test "a file that is not a pbrick store is refused unless --force-format" {
  head -c $((64 * 1024 * 1024)) /dev/urandom >"$BATS_TEST_TMPDIR/b.store"
  before=$(sha "$BATS_TEST_TMPDIR/b.store")
  run timeout 20 "$TARGET_BIN" --store "$BATS_TEST_TMPDIR/b.store" --size 64M --listen 127.0.0.1:0
  assert_failure 1
  assert_output --partial 'not a pbrick store'
  assert_equal "$(sha "$BATS_TEST_TMPDIR/b.store")" "$before"
  start_brick b --force-format
  run ctl --json stat
  assert_equal "$(jq .allocated_blocks <<<"$output")" 0
}

@test "--force-format wipes an existing store" {
  start_brick b
  ctl alloc 0x0
  uuid=$(ctl --json stat | jq -r .uuid)
  stop_brick
  start_brick b --force-format
  run ctl --json stat
  assert_equal "$(jq .allocated_blocks <<<"$output")" 0
  [ "$(jq -r .uuid <<<"$output")" != "$uuid" ]
}

@test "daemon usage errors name the flag" {
  run timeout 20 "$TARGET_BIN" --store "$BATS_TEST_TMPDIR/s" --size 12Q --listen 127.0.0.1:0
  assert_failure 2
  assert_output --partial "--size: invalid value '12Q'"
  run timeout 20 "$TARGET_BIN" --store "$BATS_TEST_TMPDIR/s" --size 64M
  assert_failure 2
  assert_output --partial '--listen is required'
  run timeout 20 "$TARGET_BIN" --store "$BATS_TEST_TMPDIR/s" --size 64M --listen nowhere
  assert_failure 2
  assert_output --partial "--listen: invalid address 'nowhere'"
  run timeout 20 "$TARGET_BIN" --store "$BATS_TEST_TMPDIR/s" --listen 127.0.0.1:0
  assert_failure 1
  assert_output --partial 'size'
  [ ! -e "$BATS_TEST_TMPDIR/s" ]
}

@test "two bricks cannot listen on the same port" {
  start_brick a
  run timeout 20 "$TARGET_BIN" --store "$BATS_TEST_TMPDIR/c.store" --size 64M --listen "127.0.0.1:$BRICK_PORT"
  assert_failure 1
  assert_output --partial 'Address already in use'
}

@test "two bricks cannot serve the same store: the second exits at once, the first serves on, the store intact" {
  start_brick a
  ctl alloc 0x400000
  before=$(ctl --json list)
  local a_pid=$BRICK_PID a_port=$BRICK_PORT
  run timeout 20 "$TARGET_BIN" --store "$(store_dir)/a.store" --size 64M --listen "$(brick_host):0" \
    --transport "$PBRICK_TRANSPORT"
  assert_failure 1
  assert_output --partial "--store: $(store_dir)/a.store is in use by another process (another pbrick-target"
  kill -0 "$a_pid"
  assert_equal "$BRICK_PORT" "$a_port"
  assert_equal "$(ctl --json list)" "$before"
  run ctl --json stat
  assert_success
  assert_equal "$(jq .allocated_blocks <<<"$output")" 1
}

# unix_brick NAME SOCK: a brick on store NAME listening on unix:SOCK, serving.
unix_brick() {
  "$TARGET_BIN" --store "$(store_dir)/$1.store" --size 64M --listen "unix:$2" 2>>"$BATS_TEST_TMPDIR/$1.log" &
  BRICK_PID=$!
  echo "$BRICK_PID" >>"$BATS_TEST_TMPDIR/pids"
  local i
  for i in $(seq 1 200); do
    "$CTL_BIN" --target "unix:$2" stat >/dev/null 2>&1 && return 0
    kill -0 "$BRICK_PID" || { cat "$BATS_TEST_TMPDIR/$1.log" >&2; return 1; }
    sleep 0.05
  done
  return 1
}

@test "a brick stopping removes its unix socket only while the path is still its own" {
  [ "$PBRICK_TRANSPORT" = tcp ] || skip "inherent: a unix socket serves the TCP transport only"
  local sock=$BATS_TEST_TMPDIR/b.sock
  unix_brick a "$sock"
  local a_pid=$BRICK_PID
  # Another brick took the path over (as one started while this one drains
  # does: it finds nobody accepting and binds anew).
  mv "$sock" "$sock.a"
  unix_brick b "$sock"
  local b_uuid
  b_uuid=$("$CTL_BIN" --target "unix:$sock" --json stat | jq -r .uuid)
  kill -TERM "$a_pid"
  wait "$a_pid" || fail "brick a exited $?"
  [ -S "$sock" ] || fail "brick a removed the socket brick b serves on"
  run "$CTL_BIN" --target "unix:$sock" --json stat
  assert_success
  assert_equal "$(jq -r .uuid <<<"$output")" "$b_uuid"
  # Its own path it does remove.
  stop_brick TERM
  [ ! -e "$sock" ]
}
