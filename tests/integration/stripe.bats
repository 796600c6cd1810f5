#!/usr/bin/env bats
# A volume striped over three bricks (layout stripe: block i on brick i mod 3
# at (i div 3) x 2 MiB), served over NBD by nbdkit-pbrick-plugin.so: data
# that outgrows any one brick, each brick's share of the blocks as the brick
# itself lists them, what one brick being down does to the volume, and the
# volume label refusing its bricks in another order or with one reformatted.

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

# start_bricks: three 64 MiB bricks (31 blocks each); sets T0 T1 T2, P0 P1
# P2 (their ports) and B0 B1 B2 (their pids).
start_bricks() {
  local i
  for i in 0 1 2; do
    start_brick "b$i"
    printf -v "T$i" %s "$TARGET"
    printf -v "P$i" %s "$BRICK_PORT"
    printf -v "B$i" %s "$BRICK_PID"
  done
}

# list_of TARGET: that brick's data extents as [[start, blocks], ...] (the
# volume's label area is left out: DATA_EXTENTS, nbd.bash).
list_of() {
  "$CTL_BIN" --target "$1" --transport "$PBRICK_TRANSPORT" --json list | jq -c "$DATA_EXTENTS | map([.start, .blocks])"
}

@test "stripe over 3 bricks: 96 MiB (more than any one brick holds) written and verified by fio; each brick holds its third" {
  start_bricks
  start_nbd target="$T0,$T1,$T2" layout=stripe size=96M
  local out="$BATS_TEST_TMPDIR/fio.json"
  local common=(--name=stripe --ioengine=nbd --uri="$NBD_URI" --rw=randwrite --bs=128k --iodepth=16
    --size=96M --verify=crc32c --verify_fatal=1 --verify_state_save=0 --output-format=json --output="$out")
  run fio "${common[@]}" --do_verify=1
  assert_success
  assert_equal "$(jq '.jobs[0].error' "$out")" 0
  assert_equal "$(jq '.jobs[0].read.io_bytes' "$out")" $((96 * 1024 * 1024))
  # A fresh fio on new connections after a flush reads the same.
  run qio flush
  assert_qio_ok
  run fio "${common[@]}" --verify_only=1
  assert_success
  assert_equal "$(jq '.jobs[0].error' "$out")" 0
  assert_equal "$(jq '.jobs[0].read.io_bytes' "$out")" $((96 * 1024 * 1024))
  # 48 blocks: 16 on each brick, at 0x0.. of each.
  assert_equal "$(list_of "$T0")" '[["0x0",16]]'
  assert_equal "$(list_of "$T1")" '[["0x0",16]]'
  assert_equal "$(list_of "$T2")" '[["0x0",16]]'
}

@test "stripe: block i lands on brick i mod 3 at base + (i div 3) x 2 MiB" {
  start_bricks
  start_nbd target="$T0,$T1,$T2" layout=stripe size=64M base=0x40000000
  # Blocks 4 (brick 1, second slot) and 8 (brick 2, third slot), one byte
  # pattern each; block 9 (brick 0, fourth slot) partly.
  run qio "write -P 0x41 $((4 * M2)) $M2" "write -P 0x42 $((8 * M2)) $M2" "write -P 0x43 $((9 * M2 + 4096)) 4096" \
    flush "read -P 0x41 $((4 * M2)) $M2" "read -P 0x42 $((8 * M2)) $M2" "read -P 0 $((9 * M2)) 4096" \
    "read -P 0x43 $((9 * M2 + 4096)) 4096"
  assert_qio_ok
  assert_equal "$(list_of "$T0")" '[["0x40600000",1]]'
  assert_equal "$(list_of "$T1")" '[["0x40200000",1]]'
  assert_equal "$(list_of "$T2")" '[["0x40400000",1]]'
  # Layout errors name the parameter.
  run start_nbd --name single target="$T0,$T1"
  assert_failure
  assert_output --partial 'layout=stripe spreads a volume over them'
  run start_nbd --name one layout=stripe
  assert_failure
  assert_output --partial 'layout=stripe takes at least two bricks'
}

@test "stripe: a brick down fails I/O to its blocks with EIO after timeout=; the other bricks' blocks go on; no wrong data" {
  start_bricks
  start_nbd target="$T0,$T1,$T2" layout=stripe size=64M timeout=1500
  local i cmds=()
  for i in 0 1 2 3 4 5; do cmds+=("write -P $((0x50 + i)) $((i * M2)) $M2"); done
  run qio "${cmds[@]}" flush
  assert_qio_ok
  kill -TERM "$B2"
  wait "$B2" 2>/dev/null || true
  # Blocks 0, 1, 3, 4 (bricks 0 and 1): read and rewritten, well within the timeout.
  SECONDS=0
  run qio "read -P 0x50 0 $M2" "read -P 0x51 $M2 $M2" "read -P 0x53 $((3 * M2)) $M2" \
    "read -P 0x54 $((4 * M2)) $M2" "write -P 0x61 $M2 4096" "read -P 0x61 $M2 4096" flush
  assert_qio_ok
  ((SECONDS < 2))
  # Blocks 2 and 5 (brick 2): EIO after about the timeout.
  local started=$(date +%s%N)
  run qio "read -P 0x52 $((2 * M2)) 64k"
  assert_failure
  assert_output --partial 'Input/output error'
  refute_output --partial 'Pattern verification failed'
  (($(date +%s%N) - started >= 1500000000))
  run qio "read 0 $((6 * M2))"
  assert_failure
  assert_output --partial 'Input/output error'
  grep -q "brick $T2 unreachable for 1500 ms" "$NBD_LOG"
  kill -0 "$NBD_PID"
  # Brick 2 back on its port: its blocks read what was written.
  BRICK_PORT=$P2 restart_brick b2
  run qio "read -P 0x52 $((2 * M2)) $M2" "read -P 0x55 $((5 * M2)) $M2" "read -P 0x61 $M2 4096" flush
  assert_qio_ok
}

# sums_of TARGET: sha256 of the volume's label slots (base 0) and of every data
# block on that brick, one per line (the holder record, rewritten by every
# writer, is left out).
sums_of() {
  local start blocks i
  TARGET=$1 ctl read 0x8000000000000000 0 8192 | sha256sum | cut -d' ' -f1
  while read -r start blocks; do
    for ((i = 0; i < blocks; i++)); do
      TARGET=$1 ctl read $((start + i * M2)) 0 "$M2" | sha256sum | cut -d' ' -f1
    done
  done < <(TARGET=$1 ctl --json list | jq -r "$DATA_EXTENTS | .[] | \"\(.start) \(.blocks)\"")
}

@test "stripe: the bricks in another order, or one brick reformatted, are refused naming the brick; no brick changes" {
  start_bricks
  start_nbd target="$T0,$T1,$T2" layout=stripe size=32M name=s0
  run qio "write -P 0x3c 0 20M" flush
  assert_qio_ok
  stop_nbd
  local s0 s1 s2
  s0=$(sums_of "$T0") s1=$(sums_of "$T1") s2=$(sums_of "$T2")
  # 10 data blocks over 3 bricks (4, 3, 3) plus each brick's label slots.
  assert_equal "$(wc -l <<<"$s0") $(wc -l <<<"$s1") $(wc -l <<<"$s2")" "5 4 4"

  run start_nbd --name swapped target="$T1,$T0,$T2" layout=stripe size=32M name=s0
  assert_failure
  grep -q "brick 0 ($T1) is brick 1 of volume .*: wrong brick order" "$BATS_TEST_TMPDIR/swapped.nbdkit.log" ||
    fail "$(cat "$BATS_TEST_TMPDIR/swapped.nbdkit.log")"
  assert_equal "$(sums_of "$T0")" "$s0"
  assert_equal "$(sums_of "$T1")" "$s1"
  assert_equal "$(sums_of "$T2")" "$s2"

  # Brick 2 reformatted: a new, empty store on the same address.
  kill -TERM "$B2"
  wait "$B2" 2>/dev/null || true
  rm -f "$(store_dir)/b2.store"
  BRICK_PORT=$P2 restart_brick b2
  run start_nbd --name reformatted target="$T0,$T1,$T2" layout=stripe size=32M name=s0
  assert_failure
  grep -q "brick 2 ($T2) serves store .*, but the label on brick 0 ($T0) names store .* a wrong or reformatted brick" \
    "$BATS_TEST_TMPDIR/reformatted.nbdkit.log" || fail "$(cat "$BATS_TEST_TMPDIR/reformatted.nbdkit.log")"
  assert_equal "$(sums_of "$T0")" "$s0"
  assert_equal "$(sums_of "$T1")" "$s1"
  assert_equal "$(TARGET=$T2 ctl --json list | jq -c '.extents')" '[]'
}
