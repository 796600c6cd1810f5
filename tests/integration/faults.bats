#!/usr/bin/env bats
# Persistence faults below a real brick: its store lives on a FUSE file system
# (faulty_fs.py) whose write-back and fsync fail on command, as a disk that
# lost its write cache would, and an NBD client on the gateway (nbdkit) sees
# what the brick reports. docs/persistence.md, "Failed persistence".

load helpers
load nbd

FAULTY_FS="$BATS_TEST_DIRNAME/faulty_fs.py"

setup() {
  requires nbdkit nbdinfo qemu-io setsid mountpoint umount
  [ -c /dev/fuse ] || skip "requires /dev/fuse"
  /usr/bin/python3 -c 'import fusepy' 2>/dev/null || skip "requires python3-fusepy"
  MNT="$BATS_TEST_TMPDIR/mnt"
  CONTROL="$BATS_TEST_TMPDIR/fault-control"
  mkdir -p "$BATS_TEST_TMPDIR/backing" "$MNT"
  setsid /usr/bin/python3 "$FAULTY_FS" "$BATS_TEST_TMPDIR/backing" "$MNT" "$CONTROL" \
    </dev/null >>"$BATS_TEST_TMPDIR/faulty_fs.log" 2>&1 3>&- &
  FS_PID=$!
  local i
  for i in $(seq 1 100); do
    mountpoint -q "$MNT" && return 0
    kill -0 "$FS_PID" 2>/dev/null || break
    sleep 0.05
  done
  cat "$BATS_TEST_TMPDIR/faulty_fs.log" >&2
  return 1
}

teardown() {
  nbd_teardown
  brick_teardown
  umount "$MNT" 2>/dev/null || umount -l "$MNT" 2>/dev/null || true
  kill -TERM "$FS_PID" 2>/dev/null || true
  wait "$FS_PID" 2>/dev/null || true
}

@test "a failed fdatasync under the brick fails the NBD FLUSH with EIO until the brick restarts; later flushes are intact" {
  truncate -s 64M "$MNT/b.store"
  start_brick b --store "$MNT/b.store"
  start_nbd
  run qio "write -P 0x11 0 1M" "write -P 0x55 2M 64k" flush
  assert_qio_ok

  # A write into an allocated block only reaches the brick's memory; the
  # flush's fdatasync writes it back and fails. (qemu-io writes through: it
  # flushes after each write and reports a failed one as a failed write.)
  echo fail >"$CONTROL"
  run qio "write -P 0x22 2M 64k" flush
  assert_failure
  assert_output --regexp '(write|flush) failed: Input/output error'
  [ "$(cat "$CONTROL.count")" -ge 1 ]
  grep -q 'pbrick: flush: Input/output error' "$NBD_LOG"
  grep -q 'fdatasync of the store.*Input/output error' "$BATS_TEST_TMPDIR/b.log"

  # The disk works again, but what the failed write-back lost is gone: no
  # later sync point of this brick may succeed over it.
  : >"$CONTROL"
  local failed_flushes
  failed_flushes=$(grep -c 'pbrick: flush: Input/output error' "$NBD_LOG")
  run qio flush  # (qemu-io prints nothing for a failed flush command)
  assert_failure
  (($(grep -c 'pbrick: flush: Input/output error' "$NBD_LOG") > failed_flushes))
  run qio "write -P 0x33 2M 64k" flush
  assert_failure
  assert_output --regexp '(write|flush) failed: Input/output error'
  grep -q 'every sync point .* answers EIO until the brick is restarted' "$BATS_TEST_TMPDIR/b.log"

  # A restarted brick serves and persists again.
  stop_brick TERM
  restart_brick b --store "$MNT/b.store"
  run qio "write -P 0x44 8M 64k" flush
  assert_qio_ok

  # What the successful flushes covered is on the file system's medium (the
  # backing file, read after one more restart, which drops the page cache).
  stop_brick TERM
  restart_brick b --store "$MNT/b.store"
  run qio "read -P 0x11 0 1M" "read -P 0x44 8M 64k"
  assert_qio_ok
}
