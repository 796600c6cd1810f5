#!/usr/bin/env bats
# A corrupt map entry on a real brick's store: the brick refuses to start and
# names the entry instead of serving other data, and `pbrickctl fsck` (offline,
# read-only) reports it with a non-zero exit status.

load helpers

# flip_bit FILE OFFSET BIT: inverts one bit of FILE in place.
flip_bit() {
  python3 - "$@" <<'EOF'
import sys
path, offset, bit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with open(path, "r+b") as f:
    f.seek(offset)
    b = f.read(1)[0]
    f.seek(offset)
    f.write(bytes([b ^ (1 << bit)]))
EOF
}

fsck() { "$CTL_BIN" fsck "$@"; }

@test "a flipped bit in a map entry: the brick refuses to start naming the entry, fsck reports it" {
  requires python3 jq
  start_brick b
  local store; store="$(store_dir)/b.store"
  ctl alloc 0x0
  head -c 1000000 /dev/urandom >"$BATS_TEST_TMPDIR/in"
  ctl write 0x40000000 4096 <"$BATS_TEST_TMPDIR/in"  # map entry 1
  stop_brick

  run fsck --store "$store"
  assert_success
  assert_output --partial "layout version 2"
  assert_output --partial "2 blocks allocated"
  assert_output --partial "clean"
  run fsck --json --store "$store"
  assert_success
  assert_equal "$(jq -c '[.clean, .allocated_blocks, .problems]' <<<"$output")" '[true,2,[]]'

  # Bit 3 of the slot index in entry 1's location word (entry 1 is at 4096 + 16).
  flip_bit "$store" $((4096 + 16 + 8)) 3
  local corrupt
  corrupt=$(sha "$store")

  run timeout 20 "$TARGET_BIN" --store "$store" --size 64M --listen 127.0.0.1:0
  assert_failure 1
  assert_output --partial "map entry 1: checksum mismatch: key 0x40000003 (block 0x40000000)"
  assert_equal "$(sha "$store")" "$corrupt"

  run fsck --store "$store"
  assert_failure 1
  assert_output --partial "map entry 1: checksum mismatch: key 0x40000003 (block 0x40000000)"
  assert_output --partial "1 problem found"
  assert_output --partial "likely one flipped bit: bit 3 of the location word flipped: with it restored the entry is block 0x40000000 in slot 1"
  run fsck --json --store "$store"
  assert_failure 1
  assert_equal "$(jq -c '[.clean, .allocated_blocks, [.problems[].entry]]' <<<"$output")" '[false,1,[1]]'
  assert_equal "$(sha "$store")" "$corrupt"  # fsck never writes

  # With the bit restored, nothing was lost.
  flip_bit "$store" $((4096 + 16 + 8)) 3
  start_brick b
  ctl read 0x40000000 4096 1000000 >"$BATS_TEST_TMPDIR/out"
  assert_equal "$(sha "$BATS_TEST_TMPDIR/out")" "$(sha "$BATS_TEST_TMPDIR/in")"
}

@test "a flipped bit in a key: the block is not served at another address" {
  requires python3
  start_brick b
  local store; store="$(store_dir)/b.store"
  ctl alloc 0x40000000
  stop_brick
  # Bit 22 of entry 0's key: block 0x40000000 would become 0x40400000.
  flip_bit "$store" $((4096 + 2)) 6
  run timeout 20 "$TARGET_BIN" --store "$store" --size 64M --listen 127.0.0.1:0
  assert_failure 1
  assert_output --partial "map entry 0: checksum mismatch: key 0x40400003 (block 0x40400000)"
  run fsck --store "$store"
  assert_failure 1
  assert_output --partial "map entry 0: checksum mismatch"
  assert_output --partial "bit 22 of the key word flipped: with it restored the entry is block 0x40000000 in slot 0"
}

@test "fsck with a blank slow tier the store has not attached yet: clean, says so, in text and in JSON" {
  requires jq
  start_brick b
  ctl alloc 0x0
  stop_brick
  local store; store="$(store_dir)/b.store"
  truncate -s 64M "$BATS_TEST_TMPDIR/new.slow"
  run fsck --store "$store" --slow-store "$BATS_TEST_TMPDIR/new.slow"
  assert_success
  assert_output --partial "new.slow is not attached yet (blank, or its format was cut short)"
  assert_output --partial "clean"
  run fsck --json --store "$store" --slow-store "$BATS_TEST_TMPDIR/new.slow"
  assert_success
  assert_equal "$(jq -c '[.clean, .slow_tier_not_attached, .allocated_blocks]' <<<"$output")" '[true,true,1]'
}

@test "fsck: exit 3 when the store cannot be read, 1 for a file that is no store, 2 for usage" {
  run fsck --store "$BATS_TEST_TMPDIR/missing"
  assert_failure 3
  assert_output --partial "cannot read the store"
  assert_output --partial "missing"
  head -c $((8 * 1024 * 1024)) /dev/urandom >"$BATS_TEST_TMPDIR/junk"
  run fsck --store "$BATS_TEST_TMPDIR/junk"
  assert_failure 1
  assert_output --partial "superblock: not a pbrick store (bad magic)"
  run fsck
  assert_failure 2
  assert_output --partial "--store PATH is required"
  run fsck --store
  assert_failure 2
}

@test "a layout-version-1 store written by the previous brick opens with its data and is upgraded" {
  requires gunzip jq
  local store; store="$(store_dir)/v1.store"
  gunzip -c "$BATS_TEST_DIRNAME/fixtures/store-v1.img.gz" >"$store"
  run fsck --store "$store"
  assert_success
  assert_output --partial "layout version 1, uuid af6ec92a-ffe5-4a1d-80af-bf5fd6fb1b78, 3 slots, 2 blocks allocated"
  assert_output --partial "2 map entries without checksums"

  yes "pbrick layout v1 block 0x0" | head -c 1000000 >"$BATS_TEST_TMPDIR/low"
  yes "pbrick layout v1 block 0xffffffffffe00000" | head -c 2097152 >"$BATS_TEST_TMPDIR/top"
  local round
  for round in upgrade reopen; do
    start_brick v1 --size 8M
    run ctl --json stat
    assert_equal "$(jq -c '[.uuid, .allocated_blocks]' <<<"$output")" '["af6ec92a-ffe5-4a1d-80af-bf5fd6fb1b78",2]'
    ctl read 0x0 4096 1000000 >"$BATS_TEST_TMPDIR/out"
    assert_equal "$(sha "$BATS_TEST_TMPDIR/out")" "$(sha "$BATS_TEST_TMPDIR/low")"
    ctl read 0xffffffffffe00000 0 2M >"$BATS_TEST_TMPDIR/out"
    assert_equal "$(sha "$BATS_TEST_TMPDIR/out")" "$(sha "$BATS_TEST_TMPDIR/top")"
    stop_brick
  done
  assert_equal "$(grep -c 'upgraded from layout version 1 to 2: 2 map entries' "$BATS_TEST_TMPDIR/v1.log")" 1

  run fsck --store "$store"
  assert_success
  assert_output --partial "layout version 2, uuid af6ec92a-ffe5-4a1d-80af-bf5fd6fb1b78, 3 slots, 2 blocks allocated"
  assert_output --partial "clean"
}

@test "a bit flipped in the map while the brick runs quarantines that block: MAP, FREE and reads fail" {
  requires python3
  start_brick b
  local store; store="$(store_dir)/b.store"
  head -c 4096 /dev/urandom >"$BATS_TEST_TMPDIR/in"
  ctl write 0x0 0 <"$BATS_TEST_TMPDIR/in"
  ctl write 0x40000000 0 <"$BATS_TEST_TMPDIR/in"  # map entry 1
  # The store file is the brick's shared mapping: the flip reaches the running brick.
  flip_bit "$store" $((4096 + 16 + 8)) 0
  run ctl read 0x40000000 0 4096
  assert_failure 1
  assert_output --partial "EUCLEAN"
  run ctl free 0x40000000
  assert_failure 1
  assert_output --partial "EUCLEAN"
  run ctl alloc 0x40000000
  assert_failure 1
  assert_output --partial "EUCLEAN"
  grep -q "map entry 1 of the block changed on the medium" "$BATS_TEST_TMPDIR/b.log"
  # Other blocks are served as before.
  ctl read 0x0 0 4096 >"$BATS_TEST_TMPDIR/out"
  assert_equal "$(sha "$BATS_TEST_TMPDIR/out")" "$(sha "$BATS_TEST_TMPDIR/in")"
  stop_brick
  run timeout 20 "$TARGET_BIN" --store "$store" --size 64M --listen 127.0.0.1:0
  assert_failure 1
  assert_output --partial "map entry 1: checksum mismatch: key 0x40000003 (block 0x40000000)"
}

@test "fsck refuses a store a running brick serves (its map changes under the check), and checks it once stopped" {
  start_brick b
  local store; store="$(store_dir)/b.store"
  ctl alloc 0x40000000
  run fsck --store "$store"
  assert_failure 3
  assert_output --partial "$store is served by a running brick (it holds the store's lock): stop it first"
  stop_brick
  run fsck --store "$store"
  assert_success
}
