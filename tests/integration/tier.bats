#!/usr/bin/env bats
# Brick tiering end to end: a small fast store over a larger slow tier (a file
# on the disk file system), data checked through NBD with fio and through
# pbrickctl, the slow tier's binding to its store, fsck of both tiers, and
# kill -9 of the brick while blocks move between the tiers.

load helpers
load nbd

M2=$((2 * 1024 * 1024))

setup() {
  requires nbdkit nbdinfo fio jq setsid
}

teardown() {
  nbd_teardown
  brick_teardown
}

# The slow tier lives on the disk file system (O_DIRECT), whatever the store.
slow_args() { echo "--slow-store $BATS_TEST_TMPDIR/$1.slow --slow-size $2"; }

@test "a brick refuses a slow tier of another brick, and starting without its own" {
  # shellcheck disable=SC2046
  start_brick a --size 16M $(slow_args a 64M)
  for i in $(seq 0 11); do
    head -c 4096 /dev/urandom | ctl write $((i * M2)) 0 >/dev/null
  done
  run ctl --json list
  assert_success
  # 7 fast slots: blocks 7.. landed on the slow tier.
  assert_equal "$(jq -c '[.extents[] | .tier] | unique' <<<"$output")" '[0,1]'
  run ctl --json stat
  assert_equal "$(jq -c '[.capacity_blocks, .fast_capacity_blocks, .slow_capacity_blocks]' <<<"$output")" '[38,7,31]'
  stop_brick
  # Another brick given a's slow tier.
  run timeout 20 "$TARGET_BIN" --store "$(store_dir)/b.store" --size 16M --slow-store "$BATS_TEST_TMPDIR/a.slow" \
    --slow-size 64M --listen 127.0.0.1:0
  assert_failure 1
  assert_output --regexp "slow tier: belongs to the store [0-9a-f-]+, not to this brick's store [0-9a-f-]+"
  # a without its slow tier.
  run timeout 20 "$TARGET_BIN" --store "$(store_dir)/a.store" --size 16M --listen 127.0.0.1:0
  assert_failure 1
  assert_output --partial "the store has a slow tier (superblock flag)"
  # a given a new, blank slow tier (its own lost): refused, and left blank.
  run timeout 20 "$TARGET_BIN" --store "$(store_dir)/a.store" --size 16M --slow-store "$BATS_TEST_TMPDIR/new.slow" \
    --slow-size 64M --listen 127.0.0.1:0
  assert_failure 1
  assert_output --partial "the slow tier given is blank"
  cmp -n $((64 << 20)) "$BATS_TEST_TMPDIR/new.slow" /dev/zero
  # --slow-size alone is a usage error.
  run timeout 20 "$TARGET_BIN" --store "$(store_dir)/a.store" --size 16M --slow-size 64M --listen 127.0.0.1:0
  assert_failure 2
  assert_output --partial "--slow-size needs --slow-store"
  run timeout 20 "$TARGET_BIN" --store "$(store_dir)/a.store" --size 16M --slow-store "$BATS_TEST_TMPDIR/a.slow" \
    --slow-size 64M --slow-low-watermark 0 --listen 127.0.0.1:0
  assert_failure 2
  assert_output --partial "--slow-low-watermark must be at least 1"
  run timeout 20 "$TARGET_BIN" --store "$(store_dir)/a.store" --size 16M --slow-store "$BATS_TEST_TMPDIR/a.slow" \
    --slow-size 64M --slow-demote-rate 1M --listen 127.0.0.1:0
  assert_failure 2
  assert_output --partial "--slow-demote-rate must be at least 2M"
  # The brick says what it was given.
  # shellcheck disable=SC2046
  start_brick a --size 16M $(slow_args a 64M) --slow-low-watermark 3 --slow-demote-rate 8M
  grep -q "low watermark 3 free fast blocks, demotion up to 8.0 MiB/s" "$BATS_TEST_TMPDIR/a.log" ||
    fail "the brick did not log its tiering settings: $(cat "$BATS_TEST_TMPDIR/a.log")"
}

@test "fsck --slow-store checks the slow tier's map entries and its binding; without it they go unchecked" {
  # shellcheck disable=SC2046
  start_brick f --size 16M $(slow_args f 64M)
  for i in $(seq 0 11); do
    head -c 4096 /dev/urandom | ctl write $((i * M2)) 0 >/dev/null
  done
  stop_brick
  local store slow
  store="$(store_dir)/f.store" slow="$BATS_TEST_TMPDIR/f.slow"
  run "$CTL_BIN" --json fsck --store "$store" --slow-store "$slow"
  assert_success
  assert_equal "$(jq -c '[.clean, .slow_slot_count, .allocated_blocks]' <<<"$output")" '[true,31,12]'
  # 7 fast slots for 12 blocks: at least 5 on the slow tier, their entries in
  # its map; one more when the background demotion freed a fast slot before
  # the brick stopped (it keeps a low watermark of free fast slots).
  local on_slow
  on_slow=$(jq '.slow_blocks' <<<"$output")
  ((on_slow >= 5 && on_slow <= 12)) || fail "$on_slow blocks on the slow tier, expected 5..12: $output"
  run "$CTL_BIN" fsck --store "$store" --slow-store "$slow"
  assert_success
  assert_output --partial "slow tier $slow, 31 slots, $on_slow of the blocks on it"
  assert_output --partial "clean"
  # One bit of the slow tier's first map entry (entry 7, after the store's 7).
  python3 -c 'import sys
with open(sys.argv[1], "r+b") as f:
    f.seek(4096 + 8); b = f.read(1); f.seek(4096 + 8); f.write(bytes([b[0] ^ 1]))' "$slow"
  run "$CTL_BIN" fsck --store "$store" --slow-store "$slow"
  assert_failure 1
  assert_output --regexp "map entry 7: .*checksum mismatch"
  # The store alone: the slow tier's entries are not read, and fsck says so
  # rather than calling the store clean.
  run "$CTL_BIN" fsck --store "$store"
  assert_success
  assert_output --partial "store $store: clean as far as checked; it has a slow tier whose map entries were not read"
  refute_output --partial "store $store: clean"$'\n'
  run "$CTL_BIN" --json fsck --store "$store"
  assert_success
  assert_equal "$(jq -c '[.clean, .slow_tier_unchecked]' <<<"$output")" '[true,true]'
  # A store without a slow tier is simply clean.
  start_brick h --size 16M
  stop_brick
  run "$CTL_BIN" --json fsck --store "$(store_dir)/h.store"
  assert_success
  assert_equal "$(jq -c '[.clean, .slow_tier_unchecked]' <<<"$output")" '[true,false]' 
  # A slow tier of another store.
  start_brick g --size 16M
  stop_brick
  run "$CTL_BIN" fsck --store "$(store_dir)/g.store" --slow-store "$slow"
  assert_failure 1
  assert_output --regexp "slow tier: belongs to the store [0-9a-f-]+, not to this brick's store"
}

@test "fio verify: 512 MiB volume through NBD on a 32 MiB fast + 1 GiB slow brick" {
  # shellcheck disable=SC2046
  start_brick b --size 32M $(slow_args b 1G)
  start_nbd size=512M max-mapped=16
  local out="$BATS_TEST_TMPDIR/fio.json"
  local common=(--name=pbrick --ioengine=nbd --uri="$NBD_URI" --rw=write --bs=1M --iodepth=8
    --size=512M --verify=crc32c --verify_fatal=1 --verify_state_save=0 --output-format=json --output="$out")
  run fio "${common[@]}" --do_verify=1
  assert_success
  assert_equal "$(jq '.jobs[0].error' "$out")" 0
  assert_equal "$(jq '.jobs[0].write.io_bytes' "$out")" $((512 * 1024 * 1024))
  assert_equal "$(jq '.jobs[0].read.io_bytes' "$out")" $((512 * 1024 * 1024))
  run ctl --json list
  assert_success
  # 256 data blocks, plus the volume's label and lock blocks (above 2^63).
  assert_equal "$(jq "$DATA_EXTENTS | map(.blocks) | add" <<<"$output")" 256
  assert_equal "$(jq .allocated_blocks <<<"$output")" 258
  assert_equal "$(jq -c "$DATA_EXTENTS | [.[] | .tier] | unique" <<<"$output")" '[0,1]'
  # The gateway's bound holds: at most 16 data blocks mapped at any time, plus
  # the lock block its attachment holds mapped (the one-writer lock).
  run ctl --json stat
  assert [ "$(jq .mapped_blocks <<<"$output")" -le 17 ]
  assert_equal "$(jq .fast_capacity_blocks <<<"$output")" 15
}

@test "MAP with every fast slot mapped: ENOBUFS; an unbounded gateway unmaps and retries" {
  # shellcheck disable=SC2046
  start_brick b --size 16M $(slow_args b 64M)
  for i in $(seq 0 7); do
    head -c 4096 /dev/urandom | ctl write $((i * M2)) 0 >/dev/null
  done
  # Seven holders map the seven fast slots' worth of blocks (promoting them).
  local fifo="$BATS_TEST_TMPDIR/hold.fifo" a fd holders=()
  mkfifo "$fifo"
  for a in 0 1 2 3 4 5 6; do
    "$CTL_BIN" --target "$TARGET" --json map $((a * M2)) --hold <"$fifo" >"$BATS_TEST_TMPDIR/hold$a" 2>&1 &
    holders+=($!)
    echo $! >>"$BATS_TEST_TMPDIR/pids"
  done
  exec {fd}>"$fifo"
  for a in 0 1 2 3 4 5 6; do
    for i in $(seq 1 200); do [ -s "$BATS_TEST_TMPDIR/hold$a" ] && break; sleep 0.05; done
    jq -e .rkey "$BATS_TEST_TMPDIR/hold$a" >/dev/null || fail "map $a: $(cat "$BATS_TEST_TMPDIR/hold$a")"
  done
  run ctl map $((7 * M2))
  assert_failure 1
  assert_output --partial "map 0xe00000: No buffer space available (ENOBUFS)"
  exec {fd}>&-
  wait "${holders[@]}"
  # No bound: the gateway maps until the brick refuses, then lets go.
  start_nbd size=64M
  run fio --name=p --ioengine=nbd --uri="$NBD_URI" --rw=write --bs=1M --iodepth=4 --size=64M \
    --verify=crc32c --verify_fatal=1 --verify_state_save=0 --do_verify=1 --output-format=json \
    --output="$BATS_TEST_TMPDIR/fio.json"
  assert_success
  assert_equal "$(jq '.jobs[0].error' "$BATS_TEST_TMPDIR/fio.json")" 0
  assert_equal "$(jq '.jobs[0].read.io_bytes' "$BATS_TEST_TMPDIR/fio.json")" $((64 * 1024 * 1024))
  # 32 blocks through 7 fast slots: the gateway had to let go (at most 7 mapped).
  run ctl --json stat
  assert [ "$(jq .mapped_blocks <<<"$output")" -le 7 ]
  assert [ "$(jq '.slow_capacity_blocks - .slow_free_blocks' <<<"$output")" -ge 25 ]
}

@test "kill -9 during promotion and demotion: every block intact after each restart" {
  local rounds=${PBRICK_TIER_CRASH_ROUNDS:-20} blocks=9 i r
  # shellcheck disable=SC2046
  start_brick c --size 16M $(slow_args c 64M)
  for i in $(seq 0 $((blocks - 1))); do
    head -c $((64 * 1024)) /dev/urandom >"$BATS_TEST_TMPDIR/d$i"
    ctl write $((i * M2)) $((i * 4096)) <"$BATS_TEST_TMPDIR/d$i" >/dev/null
  done
  for r in $(seq 1 "$rounds"); do
    # A storm: reading the blocks in turn maps each (promoting it, demoting another).
    (
      while :; do
        for i in $(shuf -i 0-$((blocks - 1))); do ctl read $((i * M2)) 0 4096 >/dev/null 2>&1; done
      done
    ) &
    local storm=$!
    sleep "0.$((RANDOM % 3 + 1))"
    kill -KILL "$BRICK_PID"
    kill "$storm"
    wait "$storm" 2>/dev/null || true
    wait "$BRICK_PID" 2>/dev/null || true
    # A fresh port: the killed brick's may be held for a while by its io_uring.
    # shellcheck disable=SC2046
    start_brick c --size 16M $(slow_args c 64M)
    # Every block in one read (one connection), then each block's data compared.
    ctl read 0 0 $((blocks * M2)) >"$BATS_TEST_TMPDIR/all" || fail "round $r: read after kill -9 failed"
    for i in $(seq 0 $((blocks - 1))); do
      cmp -n $((64 * 1024)) -i $((i * M2 + i * 4096)):0 "$BATS_TEST_TMPDIR/all" "$BATS_TEST_TMPDIR/d$i" ||
        fail "round $r: block $i differs after kill -9"
    done
  done
  run ctl --json list
  assert_equal "$(jq .allocated_blocks <<<"$output")" "$blocks"
}
