#!/usr/bin/env bats
# A volume striped over three small bricks (pbrick-gateway --layout stripe)
# against a real kernel's ublk_drv, in the VM of tests/vm/run: larger than any
# one brick, ext4 round trip with checksums, fsck clean, each brick holds its
# share of the volume's blocks and nothing outside it. Runs over the
# transport and persistence method of PBRICK_TRANSPORT / PBRICK_PERSISTENCE,
# like ublk.bats (scripts/test runs it over RDMA).

load helpers
load ublk

# stripe_brick NAME PORT: a 64 MiB brick (31 blocks) on a file store at
# $(brick_host):PORT; sets BRICK_PID.
stripe_brick() {
  "$TARGET_BIN" --store "$(store_dir)/$1.store" --size 64M --listen "$(brick_host):$2" \
    --transport "$PBRICK_TRANSPORT" --persistence "$PERSISTENCE" 2>>"$BATS_TEST_TMPDIR/$1.log" &
  BRICK_PID=$!
  echo "$BRICK_PID" >>"$BATS_TEST_TMPDIR/pids"
  local i
  for i in $(seq 1 200); do
    "$CTL_BIN" --target "$(brick_host):$2" --transport "$PBRICK_TRANSPORT" stat >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  cat "$BATS_TEST_TMPDIR/$1.log" >&2
  return 1
}

@test "ublk: stripe over 3 bricks, larger than any one: ext4 round trip with checksums, fsck clean, a share on each brick" {
  local host i
  host=$(brick_host)
  for i in 0 1 2; do stripe_brick "s$i" $((7191 + i)); done
  # 160 MiB = 80 blocks: 27, 27 and 26 on bricks that hold 31 each.
  TARGET=$host:7191
  local more=(--target "$host:7192" --target "$host:7193" --layout stripe --size 160M -q 2 -d 32)
  gw_attach "${more[@]}"
  assert_equal "$(blockdev --getsize64 "$DEV")" $((160 * M))
  mkfs_mount
  make_tree "$MNT/tree"
  sha_tree "$MNT/tree" >"$BATS_TEST_TMPDIR/before"
  umount "$MNT"
  gw_detach
  for i in 0 1 2; do
    run "$CTL_BIN" --target "$host:$((7191 + i))" --transport "$PBRICK_TRANSPORT" --json list
    assert_success
    # The volume's label area (two blocks at 0x8000000000000000 + 2 * base,
    # here base 0) and data blocks, all inside this brick's third of the
    # volume (DATA_EXTENTS, nbd.bash: starts below 0x8000000000000000, which
    # bash arithmetic could not compare).
    local label='[.extents[] | select(.start | test("^0x[89a-f][0-9a-f]{15}$"))]'
    assert_equal "$(jq "$label | map(.blocks) | add" <<<"$output")" 2
    assert_equal "$(jq -c "$label | map(.start) - [\"0x8000000000000000\", \"0x8000000000200000\"]" <<<"$output")" '[]'
    local data
    data=$(jq -c "$DATA_EXTENTS" <<<"$output")
    (($(jq '[.[].blocks] | add // 0' <<<"$data") > 0))
    local start blocks
    while read -r start blocks; do
      ((start + blocks * 2 * M <= 27 * 2 * M))
    done < <(jq -r '.[] | "\(.start) \(.blocks)"' <<<"$data")
  done
  reattach_verify "${more[@]}"
}

# The first write to a fresh block waits for its ALLOC + MAP on the gateway's
# control worker, not on the queue: with the brick of that block stopped
# (SIGSTOP: its control connection stays up and does not answer), I/O to the
# other brick's mapped blocks on the same (only) queue still completes; the
# brick continued, the waiting write completes with its data.
@test "ublk: stripe: a brick that does not answer holds up only the first write to its block" {
  local host
  host=$(brick_host)
  stripe_brick f0 7194
  stripe_brick f1 7195
  local f1_pid=$BRICK_PID
  # shellcheck disable=SC2034 # gw_attach's first --target
  TARGET=$host:7194
  gw_attach --target "$host:7195" --layout stripe --size 32M -q 1 -d 32
  head -c $((64 * 1024)) /dev/urandom >"$BATS_TEST_TMPDIR/a"
  head -c 4096 /dev/urandom >"$BATS_TEST_TMPDIR/b"
  # Block 0 (brick f0) written and mapped.
  dd if="$BATS_TEST_TMPDIR/a" of="$DEV" bs=64k count=1 oflag=direct status=none

  kill -STOP "$f1_pid"
  # Block 1 (brick f1) is fresh: this write waits for the stopped brick.
  dd if="$BATS_TEST_TMPDIR/b" of="$DEV" bs=4k seek=$((2 * M / 4096)) count=1 oflag=direct status=none &
  local held=$!
  sleep 1
  kill -0 "$held" # still waiting
  # Block 0 on the same queue: read back and written, each within seconds.
  run timeout 10 dd if="$DEV" of="$BATS_TEST_TMPDIR/a.back" bs=64k count=1 iflag=direct status=none
  assert_success
  cmp "$BATS_TEST_TMPDIR/a" "$BATS_TEST_TMPDIR/a.back"
  run timeout 10 dd if="$BATS_TEST_TMPDIR/b" of="$DEV" bs=4k seek=1 count=1 oflag=direct status=none
  assert_success
  kill -0 "$held" # the held write is still waiting for its block

  kill -CONT "$f1_pid"
  wait "$held"
  dd if="$DEV" of="$BATS_TEST_TMPDIR/b.back" bs=4k skip=$((2 * M / 4096)) count=1 iflag=direct status=none
  cmp "$BATS_TEST_TMPDIR/b" "$BATS_TEST_TMPDIR/b.back"
  gw_detach
  [ -z "$(dmesg_problems)" ]
}
