#!/usr/bin/env bats
# Mirrored volumes (layout mirror: copy j of block i on brick (i + j) mod N at
# base + ((i div N) x copies + j) x 2 MiB) served over NBD by
# nbdkit-pbrick-plugin.so: every write reaches every copy, both bricks of a
# 2-copy mirror hold identical blocks, and the copies land where the layout
# says.

load helpers
load nbd

M2=$((2 * 1024 * 1024))

setup() {
  requires nbdkit nbdinfo qemu-io fio jq setsid
}

teardown() {
  nbd_teardown
  brick_teardown
}

# start_bricks N: N bricks; sets T0.., P0.. (their ports) and B0.. (their pids).
start_bricks() {
  local i
  for ((i = 0; i < $1; i++)); do
    start_brick "b$i"
    printf -v "T$i" %s "$TARGET"
    printf -v "P$i" %s "$BRICK_PORT"
    printf -v "B$i" %s "$BRICK_PID"
  done
}

# wait_gone PID: waits (up to 10 s) until process PID has exited.
wait_gone() {
  timeout 10 tail --pid="$1" -f /dev/null
  wait "$1" 2>/dev/null || true
}

# wait_for_log FILE REGEX: waits up to 20 s for a line matching REGEX.
wait_for_log() {
  local i
  for ((i = 0; i < 200; i++)); do
    grep -q "$2" "$1" && return 0
    sleep 0.1
  done
  fail "no line matching '$2' in $1 after 20 s: $(cat "$1")"
}

# assert_twin_copies TARGET0 TARGET1 N: the two bricks of a 2-brick mirror
# hold the same N blocks: copy 0 of block i is on brick i mod 2 at slot
# (i div 2) x 2, copy 1 on the other at the next slot, so slot 2k of one
# holds what slot 2k + 1 of the other holds.
assert_twin_copies() {
  local s0 s1 pairs=0 addr sum
  s0=$(sums_of "$1") s1=$(sums_of "$2")
  declare -A on1
  while read -r addr sum; do on1[$addr]=$sum; done <<<"$s1"
  while read -r addr sum; do
    assert_equal "$sum" "${on1[$(((addr / M2 ^ 1) * M2))]}"
    pairs=$((pairs + 1))
  done <<<"$s0"
  assert_equal "$pairs" "$3"
}

list_of() {
  "$CTL_BIN" --target "$1" --transport "$PBRICK_TRANSPORT" --json list | jq -c "$DATA_EXTENTS | map([.start, .blocks])"
}

# sums_of TARGET: "ADDRESS SHA256" of every data block on that brick, by
# address, read straight from the brick.
sums_of() {
  local start blocks i
  while read -r start blocks; do
    for ((i = 0; i < blocks; i++)); do
      echo "$((start + i * M2)) $(TARGET=$1 ctl read $((start + i * M2)) 0 "$M2" | sha256sum | cut -d' ' -f1)"
    done
  done < <(TARGET=$1 ctl --json list | jq -r "$DATA_EXTENTS | .[] | \"\(.start) \(.blocks)\"")
}

@test "mirror, 2 copies: fio verify; both bricks hold every block, identical" {
  start_bricks 2
  start_nbd target="$T0,$T1" layout=mirror copies=2 size=32M
  local out="$BATS_TEST_TMPDIR/fio.json"
  run fio --name=mirror --ioengine=nbd --uri="$NBD_URI" --rw=randwrite --bs=64k --iodepth=16 --size=32M \
    --verify=crc32c --verify_fatal=1 --verify_state_save=0 --do_verify=1 --output-format=json --output="$out"
  assert_success
  assert_equal "$(jq '.jobs[0].error' "$out")" 0
  assert_equal "$(jq '.jobs[0].read.io_bytes' "$out")" $((32 * 1024 * 1024))
  run qio flush
  assert_qio_ok
  # 16 blocks, one copy of each on each brick: 16 slots from 0x0.
  assert_equal "$(list_of "$T0")" '[["0x0",16]]'
  assert_equal "$(list_of "$T1")" '[["0x0",16]]'
  assert_twin_copies "$T0" "$T1" 16
}

@test "mirror: extents report the blocks written as data, the others as holes; nbdcopy keeps every byte" {
  requires nbdcopy
  start_bricks 2
  start_nbd target="$T0,$T1" layout=mirror copies=2 size=16M
  # Block 2 ([4M, 6M)) and block 5: on a mirror the copies of block i are
  # not unit i of the allocation map.
  run qio "write -P 0x6b $((2 * M2)) 64k" "write -P 0x6c $((5 * M2 + 4096)) 4096" flush
  assert_qio_ok
  run nbdinfo --map=base:allocation "$NBD_URI"
  assert_success
  # "OFFSET LENGTH TYPE DESCRIPTION", adjacent extents of one type merged.
  assert_equal "$(awk '{print $1, $2, $3}' <<<"$output")" "$(printf '%s\n' "0 $((2 * M2)) 3" \
    "$((2 * M2)) $M2 0" "$((3 * M2)) $((2 * M2)) 3" "$((5 * M2)) $M2 0" "$((6 * M2)) $((2 * M2)) 3")"
  nbdcopy "$NBD_URI" "$BATS_TEST_TMPDIR/copy.img"
  assert_equal "$(sha256sum <"$BATS_TEST_TMPDIR/copy.img")" "$(nbdcopy "$NBD_URI" - | sha256sum)"
  run qemu-io -f raw -r -c "read -P 0x6b $((2 * M2)) 64k" -c "read -P 0x6c $((5 * M2 + 4096)) 4096" \
    "$BATS_TEST_TMPDIR/copy.img"
  assert_success
  refute_output --partial "fail"
}

@test "mirror over 3 bricks, 2 copies: each copy lands where the layout says" {
  start_bricks 3
  start_nbd target="$T0,$T1,$T2" layout=mirror size=64M base=0x40000000
  # Block 4: copies on bricks 1 (slot 2) and 2 (slot 3). Block 5: bricks 2
  # (slot 2) and 0 (slot 3).
  run qio "write -P 0x41 $((4 * M2)) $M2" "write -P 0x42 $((5 * M2)) 4096" flush \
    "read -P 0x41 $((4 * M2)) $M2" "read -P 0x41 $((4 * M2)) $M2" "read -P 0x42 $((5 * M2)) 4096" \
    "read -P 0x42 $((5 * M2)) 4096" "read -P 0 $((5 * M2 + 4096)) 4096"
  assert_qio_ok
  assert_equal "$(list_of "$T0")" '[["0x40600000",1]]'
  assert_equal "$(list_of "$T1")" '[["0x40400000",1]]'
  assert_equal "$(list_of "$T2")" '[["0x40400000",2]]'
  assert_equal "$(TARGET=$T1 ctl read 0x40400000 0 $M2 | sha256sum)" "$(TARGET=$T2 ctl read 0x40600000 0 $M2 | sha256sum)"
  # Parameter errors name the parameter.
  run start_nbd --name three target="$T0,$T1" layout=mirror copies=3 size=8M
  assert_failure
  assert_output --partial 'layout=mirror with 3 copies takes at least 3 bricks, not 2'
  run start_nbd --name stripe target="$T0,$T1" layout=stripe copies=2 size=8M
  assert_failure
  assert_output --partial 'copies= goes with layout=mirror'
  run start_nbd --name rate target="$T0,$T1" layout=stripe resync-rate=10 size=8M
  assert_failure
  assert_output --partial 'resync-rate= goes with layout=mirror'
  run start_nbd --name rate2 target="$T0,$T1" layout=mirror resync-rate=-1 size=8M
  assert_failure
  assert_output --partial 'resync-rate'
  # The label keeps the copy count: the volume at 0x40000000 is refused with another.
  stop_nbd
  run start_nbd --name other target="$T0,$T1,$T2" layout=mirror copies=3 size=64M base=0x40000000
  assert_failure
  grep -q "keeps 2 copies by the label on brick 0 ($T0), but 3 were given" "$BATS_TEST_TMPDIR/other.nbdkit.log" ||
    fail "$(cat "$BATS_TEST_TMPDIR/other.nbdkit.log")"
}

@test "mirror: kill -9 a brick under fio verify; no error; gateway kill -9 while degraded keeps the copy stale until its resync" {
  start_bricks 2
  start_nbd target="$T0,$T1" layout=mirror size=32M timeout=3000 leg-timeout=300
  local out="$BATS_TEST_TMPDIR/fio.json"
  local common=(--name=mirror --ioengine=nbd --uri="$NBD_URI" --rw=randwrite --bs=16k --iodepth=8 --size=32M
    --verify=crc32c --verify_fatal=1 --verify_state_save=0 --output-format=json --output="$out")
  (sleep 0.3 && kill -9 "$B1") &
  local killer=$!
  run fio "${common[@]}" --do_verify=1
  wait "$killer"
  assert_success
  assert_equal "$(jq '.jobs[0].error' "$out")" 0
  assert_equal "$(jq '.jobs[0].read.io_bytes' "$out")" $((32 * 1024 * 1024))
  # A write missed brick 1 (only writes mark a copy stale): it is stale, the volume degraded.
  grep -q "brick $T1 is stale (generation [0-9]*); the volume is degraded" "$NBD_LOG" || fail "$(cat "$NBD_LOG")"
  run qio flush
  assert_qio_ok
  # The gateway dies while degraded.
  kill -9 "$NBD_PID"
  wait_gone "$NBD_PID"

  # Brick 1 back with its store (it holds the writes before the kill only):
  # the new attach takes the labels' word for it (stale, never read) and
  # resyncs it; then, with brick 0 gone, every byte reads back right from it.
  BRICK_PORT=$P1 restart_brick b1
  start_nbd --name again target="$T0,$T1" layout=mirror size=32M timeout=3000 leg-timeout=300
  grep -q "brick $T1 holds stale copies" "$NBD_LOG" || fail "$(cat "$NBD_LOG")"
  # Killed, the gateway never recorded a clean detach: every written block is
  # read from brick 0 alone until its copies are the same again.
  grep -q "its last writer did not detach cleanly: the copies of 16 written block(s) may differ" "$NBD_LOG" ||
    fail "$(cat "$NBD_LOG")"
  wait_for_log "$NBD_LOG" "brick $T1 resynced: [0-9]* blocks copied"
  wait_for_log "$NBD_LOG" "written before the unclean detach hold the same bytes again"
  run fio "${common[@]}" --uri="$NBD_URI" --verify_only=1
  assert_success
  assert_equal "$(jq '.jobs[0].error' "$out")" 0
  kill -9 "$B0"
  run fio "${common[@]}" --uri="$NBD_URI" --verify_only=1
  assert_success
  assert_equal "$(jq '.jobs[0].error' "$out")" 0
  assert_equal "$(jq '.jobs[0].read.io_bytes' "$out")" $((32 * 1024 * 1024))
}

@test "mirror: a brick back after missing writes gets only those blocks, then holds what the other holds" {
  start_bricks 2
  start_nbd target="$T0,$T1" layout=mirror size=32M timeout=3000 leg-timeout=300
  local cmds=() i
  for ((i = 0; i < 16; i++)); do cmds+=("write -P $((0x10 + i)) $((i * M2)) $M2"); done
  run qio "${cmds[@]}" flush
  assert_qio_ok
  kill -9 "$B1"
  wait_gone "$B1"
  # Three blocks written while brick 1 is down: 2, 5 (two writes) and 9.
  run qio "write -P 0x77 $((2 * M2 + 4096)) 64k" "write -P 0x78 $((5 * M2)) 4096" \
    "write -P 0x79 $((5 * M2 + M2 - 4096)) 4096" "write -P 0x7a $((9 * M2 + 8192)) 12k" flush
  assert_qio_ok
  grep -q "brick $T1 is stale" "$NBD_LOG" || fail "$(cat "$NBD_LOG")"
  BRICK_PORT=$P1 restart_brick b1
  wait_for_log "$NBD_LOG" "brick $T1 resynced: [0-9]* blocks copied"
  grep -q "brick $T1 is back: resyncing 3 dirty blocks of 16" "$NBD_LOG" || fail "$(cat "$NBD_LOG")"
  grep -q "brick $T1 resynced: 3 blocks copied" "$NBD_LOG" || fail "$(cat "$NBD_LOG")"
  grep -q "brick $T1 is in sync (generation [0-9]*)" "$NBD_LOG" || fail "$(cat "$NBD_LOG")"
  run qio flush
  assert_qio_ok
  # Both bricks hold identical copies, block by block, read from each brick.
  assert_twin_copies "$T0" "$T1" 16
  # The other brick gone: every byte reads back right from the resynced one.
  kill -9 "$B0"
  cmds=()
  for ((i = 0; i < 16; i++)); do
    case $i in
    2) cmds+=("read -P 0x12 $((2 * M2)) 4096" "read -P 0x77 $((2 * M2 + 4096)) 64k" "read -P 0x12 $((2 * M2 + 69632)) $((M2 - 69632))") ;;
    5) cmds+=("read -P 0x78 $((5 * M2)) 4096" "read -P 0x15 $((5 * M2 + 4096)) $((M2 - 8192))" "read -P 0x79 $((5 * M2 + M2 - 4096)) 4096") ;;
    9) cmds+=("read -P 0x19 $((9 * M2)) 8192" "read -P 0x7a $((9 * M2 + 8192)) 12k" "read -P 0x19 $((9 * M2 + 20480)) $((M2 - 20480))") ;;
    *) cmds+=("read -P $((0x10 + i)) $((i * M2)) $M2") ;;
    esac
  done
  run qio "${cmds[@]}"
  assert_qio_ok
}

@test "mirror: an attach with a brick unreachable needs degraded=true; that brick's copy turns stale" {
  start_bricks 2
  start_nbd target="$T0,$T1" layout=mirror size=8M
  run qio "write -P 0x11 0 64k" flush
  assert_qio_ok
  stop_nbd
  kill -9 "$B1"
  wait "$B1" 2>/dev/null || true
  run start_nbd --name missing target="$T0,$T1" layout=mirror size=8M timeout=1000 leg-timeout=200
  assert_failure
  grep -q "brick $T1 of a mirror is unreachable (--degraded, or degraded=true, runs the volume without it)" \
    "$BATS_TEST_TMPDIR/missing.nbdkit.log" || fail "$(cat "$BATS_TEST_TMPDIR/missing.nbdkit.log")"
  start_nbd --name degraded target="$T0,$T1" layout=mirror size=8M timeout=1000 leg-timeout=200 degraded=true
  grep -q "brick $T1 is stale" "$NBD_LOG" || fail "$(cat "$NBD_LOG")"
  # The first attachment stopped cleanly: nothing to repair.
  if grep -q "did not detach cleanly" "$NBD_LOG"; then fail "$(cat "$NBD_LOG")"; fi
  run qio "read -P 0x11 0 64k" "write -P 0x22 64k 64k" flush "read -P 0x22 64k 64k"
  assert_qio_ok
  stop_nbd
  # Brick 1 back: an attach with every brick keeps its copy stale (never
  # read) until the resync brought it in sync.
  BRICK_PORT=$P1 restart_brick b1
  start_nbd --name whole target="$T0,$T1" layout=mirror size=8M timeout=1000 leg-timeout=200
  grep -q "brick $T1 holds stale copies" "$NBD_LOG" || fail "$(cat "$NBD_LOG")"
  if grep -q "did not detach cleanly" "$NBD_LOG"; then fail "$(cat "$NBD_LOG")"; fi
  run qio "read -P 0x11 0 64k" "read -P 0x22 64k 64k" "read -P 0x11 0 64k" "read -P 0x22 64k 64k"
  assert_qio_ok
  wait_for_log "$NBD_LOG" "brick $T1 resynced: 1 blocks copied"
  kill -9 "$B0"
  run qio "read -P 0x11 0 64k" "read -P 0x22 64k 64k"
  assert_qio_ok
}
