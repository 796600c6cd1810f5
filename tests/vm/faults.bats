#!/usr/bin/env bats
# A real fault below a brick, in the VM of tests/vm/run (skips outside it):
# the brick's store is a file on ext4 over device-mapper, and the table is
# switched so that the store file's own extents answer every I/O with an error
# (dm "error" target) while the rest of the file system (journal, metadata)
# keeps working. The ublk device on top must fail its FLUSH (fsync of the
# block device) with EIO, keep failing it until the brick restarts, and then
# flush again with every flushed byte intact. docs/persistence.md, "Failed
# persistence".

load helpers

GW_BIN="$PBRICK_BIN_DIR/gateway/pbrick-gateway"
M=$((1024 * 1024))
DM_NAME=pbrick-faults

setup() {
  require_vm
  [ -c /dev/ublk-control ] || skip "no /dev/ublk-control"
  requires dmsetup losetup filefrag mkfs.ext4
  GW_PID= LOOP=
  DMESG_CLEAN_BEFORE=
  [ -z "$(dmesg_problems)" ] && DMESG_CLEAN_BEFORE=1
}

teardown() {
  if [ -n "$GW_PID" ] && kill -0 "$GW_PID" 2>/dev/null; then
    kill -TERM "$GW_PID"
    timeout 20 tail --pid="$GW_PID" -f /dev/null || kill -KILL "$GW_PID"
  fi
  "$GW_BIN" detach -n 0 >/dev/null 2>&1 || true
  brick_teardown
  umount "$BATS_TEST_TMPDIR/fs" 2>/dev/null || umount -l "$BATS_TEST_TMPDIR/fs" 2>/dev/null || true
  dmsetup remove --noudevsync "$DM_NAME" 2>/dev/null || true
  [ -n "$LOOP" ] && losetup -d "$LOOP" 2>/dev/null || true
  if [ -s "$BATS_TEST_TMPDIR/gw.log" ]; then
    echo "--- gateway log:" >&2
    tail -n 20 "$BATS_TEST_TMPDIR/gw.log" >&2
  fi
}

# dm_table ERROR_STORE: the table of $DM_NAME over $LOOP: linear everywhere,
# or (ERROR_STORE=1) the "error" target over the extents of the store file.
dm_table() {
  local sectors=$1 error_store=$2 pos=0 start len
  if [ "$error_store" = 1 ]; then
    # filefrag -v lines "N: lstart.. lend: pstart.. pend: len: ...", in 4K blocks.
    while read -r start len; do
      ((start > pos)) && echo "$pos $((start - pos)) linear $LOOP $pos"
      echo "$start $len error"
      pos=$((start + len))
    done < <(filefrag -v -b4096 "$STORE" |
      awk -F'[: .]+' '/^ *[0-9]+:/ {print $5 * 8, ($6 - $5 + 1) * 8}' | sort -n)
  fi
  ((pos < sectors)) && echo "$pos $((sectors - pos)) linear $LOOP $pos"
  return 0
}

dm_switch() {
  dm_table "$DM_SECTORS" "$1" >"$BATS_TEST_TMPDIR/table"
  dmsetup suspend --noudevsync "$DM_NAME"
  dmsetup load "$DM_NAME" "$BATS_TEST_TMPDIR/table"
  dmsetup resume --noudevsync "$DM_NAME"
}

gw_attach() {
  local out=$BATS_TEST_TMPDIR/gw.out i
  "$GW_BIN" attach --target "$TARGET" --size 64M -q 1 -d 16 >"$out" 2>>"$BATS_TEST_TMPDIR/gw.log" &
  GW_PID=$!
  for i in $(seq 1 300); do
    [ -s "$out" ] && DEV=$(head -n1 "$out") && [ -b "$DEV" ] && return 0
    kill -0 "$GW_PID" 2>/dev/null || break
    sleep 0.1
  done
  cat "$BATS_TEST_TMPDIR/gw.log" >&2
  return 1
}

# write_sync PATTERN_FILE OFFSET_MIB: direct write, then fsync of the device
# (a FLUSH); dd's exit status and message tell how the flush went.
write_sync() {
  dd if="$1" of="$DEV" bs=1M seek="$2" oflag=direct conv=fsync,notrunc status=none
}

@test "ublk FLUSH fails with EIO when the brick's store device fails, until the brick restarts; later flushes intact" {
  truncate -s 256M "$BATS_TEST_TMPDIR/disk.img"
  LOOP=$(losetup -f --show "$BATS_TEST_TMPDIR/disk.img")
  DM_SECTORS=$((256 * M / 512))
  STORE=$BATS_TEST_TMPDIR/fs/b.store
  echo "0 $DM_SECTORS linear $LOOP 0" | dmsetup create --noudevsync "$DM_NAME"
  dmsetup mknodes "$DM_NAME"
  mkfs.ext4 -q -F "/dev/mapper/$DM_NAME"
  mkdir -p "$BATS_TEST_TMPDIR/fs"
  mount "/dev/mapper/$DM_NAME" "$BATS_TEST_TMPDIR/fs"
  start_brick b --store "$STORE" --size 128M
  gw_attach
  for p in a b c; do head -c $M /dev/urandom >"$BATS_TEST_TMPDIR/$p"; done

  write_sync "$BATS_TEST_TMPDIR/a" 0

  dm_switch 1
  run write_sync "$BATS_TEST_TMPDIR/b" 0
  assert_failure
  assert_output --partial 'Input/output error'
  grep -q 'fdatasync of the store: Input/output error' "$BATS_TEST_TMPDIR/b.log"

  # The device works again; what its failed write-back lost stays lost, so
  # the brick keeps failing every sync point.
  dm_switch 0
  run write_sync "$BATS_TEST_TMPDIR/b" 2
  assert_failure
  assert_output --partial 'Input/output error'

  # Restarted, the brick persists again (the gateway reconnects on its own).
  stop_brick TERM
  restart_brick b --store "$STORE" --size 128M
  write_sync "$BATS_TEST_TMPDIR/c" 4

  # What the successful flushes covered, read back from the device after
  # another restart with the page cache dropped.
  stop_brick TERM
  echo 3 >/proc/sys/vm/drop_caches
  restart_brick b --store "$STORE" --size 128M
  cmp "$BATS_TEST_TMPDIR/c" <(dd if="$DEV" bs=1M skip=4 count=1 iflag=direct status=none)
  # Block 0 held a, then b failed to flush over it: either may be there, never a mix of other data.
  local got
  got=$(dd if="$DEV" bs=1M count=1 iflag=direct status=none | sha256sum | cut -d' ' -f1)
  [[ $got == "$(sha "$BATS_TEST_TMPDIR/a")" || $got == "$(sha "$BATS_TEST_TMPDIR/b")" ]]

  # The kernel logged the injected errors (the store's device, the ublk
  # FLUSH) and nothing else: clear them so tests/vm/run's dmesg check keeps
  # meaning what it says, but only when the log was clean before this test.
  local unexpected
  unexpected=$(dmesg_problems | grep -vE "dm-[0-9]+|ublkb[0-9]+|EXT4-fs warning .*I/O error|Buffer I/O error" || true)
  [ -z "$unexpected" ] || { echo "unexpected kernel errors: $unexpected" >&2; false; }
  if [ -n "$DMESG_CLEAN_BEFORE" ]; then dmesg -C; fi
}
