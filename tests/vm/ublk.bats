#!/usr/bin/env bats
# The ublk frontend (pbrick-gateway) against a real kernel's ublk_drv, in the
# VM of tests/vm/run (they skip outside it):
#   1. attach -q 2: /dev/ublkb0 with the right size and 2 hardware queues;
#      ext4 made, filled with a checksummed tree, detached (SIGTERM),
#      re-attached, verified, fsck clean; told to stop while mounted it
#      serves on until the unmount, and detach refuses; detach --force stops
#      a device held by device-mapper
#   2. fio verify=crc32c on the raw device: 4K and 128K random writes/reads,
#      iodepth 1 and 32, two jobs
#   3. blkdiscard of a 2 MiB-aligned range frees the blocks at the brick and
#      they read back as zeros
#   4. kill -9 of the gateway under fio; recover -n 0 brings the device back;
#      a mounted ext4 stays usable and fsck clean (detach, a .conf with a
#      value out of range, and one naming another volume than the one at its
#      base, are refused first, naming why, and leave the device recoverable)
#   5. brick crash (kill -9) and restart on the same port and store under a
#      mounted ext4: I/O resumes, flushed data reads back intact
#   6. -q 2 --pin-queues --poll-us 1000: each queue's thread runs on the CPUs
#      of its queue (sysfs mq/N/cpu_list), waits end by polling, fio verify
#   7. without --pin-queues the queue threads may run on every CPU
#   8. a writer that flushes after every write (fio psync --fsync=1, verify):
#      over RDMA with sync-read each lone write gets a sync-read chained
#      behind it (the gateway's log counts them), over TCP or rpc none does
# and the kernel logs no I/O error (tests/vm/run checks dmesg as well).
#
# The same file runs once per transport and persistence method:
# PBRICK_TRANSPORT=tcp|rdma (rdma: soft-RoCE on eth0, see rdma_host) and
# PBRICK_PERSISTENCE=sync-read|rpc (the brick declares DDIO off for sync-read),
# and per store: PBRICK_VM_STORE=file|fsdax|devdax (see vm_store in helpers.bash).
# Tests tagged transport-independent (the device's control: detach, stop,
# queues) run once, over TCP: the RDMA run leaves them out.

load helpers
load ublk

@test "ublk: attach -q 2, ext4 survives detach and re-attach" {
  brick_up
  gw_attach --size 1G -q 2 -d 32
  assert_equal "$DEV" /dev/ublkb0
  assert_equal "$(blockdev --getsize64 "$DEV")" $((1024 * M))
  assert_equal "$(ls /sys/block/ublkb0/mq | wc -l)" 2
  assert_equal "$(cat /sys/block/ublkb0/queue/logical_block_size)" 4096
  run "$GW_BIN" list --json
  assert_success
  assert_equal "$(jq -r '.[0].state' <<<"$output")" live
  assert_equal "$(jq -r '.[0].queues' <<<"$output")" 2

  mkfs_mount
  make_tree "$MNT/tree"
  sha_tree "$MNT/tree" >"$BATS_TEST_TMPDIR/before"
  sync
  umount "$MNT"
  gw_detach
  run "$GW_BIN" list --json
  assert_output "[]"

  reattach_verify --size 1G -q 2 -d 32
}

# fio_verify NAME BS IODEPTH: two jobs of random writes on disjoint 16 MiB
# ranges of $DEV, each verified (crc32c) by reading back, then read again
# with random reads verifying only.
fio_verify() {
  local name=$1 bs=$2 depth=$3 size=${4:-8M}
  local args=(--name="$name" --filename="$DEV" --ioengine=libaio --direct=1 --bs="$bs" --iodepth="$depth"
    --numjobs=2 --size="$size" --offset=0 --offset_increment=64M --verify=crc32c --verify_fatal=1
    --randrepeat=0 --group_reporting --output-format=terse)
  fio "${args[@]}" --rw=randwrite --do_verify=1 >"$BATS_TEST_TMPDIR/fio-$name.out" 2>&1 ||
    { cat "$BATS_TEST_TMPDIR/fio-$name.out" >&2; return 1; }
  fio "${args[@]}" --rw=randwrite --verify_only=1 >>"$BATS_TEST_TMPDIR/fio-$name.out" 2>&1 ||
    { cat "$BATS_TEST_TMPDIR/fio-$name.out" >&2; return 1; }
}

# bats test_tags=transport-independent
@test "ublk: told to stop with its ext4 still mounted, the gateway serves until the unmount, then stops; detach refuses; nothing lost" {
  brick_up
  gw_attach --size 1G -q 2 -d 32
  mkfs_mount
  # Written, not synced: dirty in the page cache when the gateway is told to
  # stop. Stopping the device under the mount would fail its writeback.
  make_tree "$MNT/tree"
  # detach refuses while it is mounted (a second one used to stop it anyway).
  run "$GW_BIN" detach -n 0
  assert_failure 1
  assert_output --partial "$DEV is in use (mounted?): unmount it first, or detach --force"
  run "$GW_BIN" detach -n 0
  assert_failure 1
  kill -0 "$GW_PID" || fail "detach stopped the gateway under a mounted file system"
  kill -TERM "$GW_PID"
  sleep 3
  kill -0 "$GW_PID" || fail "the gateway stopped under a mounted file system"
  [ -b "$DEV" ] || fail "$DEV went away under the mount"
  grep -q "$DEV is in use (mounted?): serving on until it is released" "$BATS_TEST_TMPDIR/gw.log" ||
    fail "no word of waiting: $(cat "$BATS_TEST_TMPDIR/gw.log")"
  # Still served: more files, and everything reads back.
  head -c $((3 * M)) /dev/urandom >"$MNT/tree/late"
  sha_tree "$MNT/tree" >"$BATS_TEST_TMPDIR/before"
  umount "$MNT"
  local rc=0
  timeout 60 tail --pid="$GW_PID" -f /dev/null || fail "the gateway did not stop once the device was released"
  wait "$GW_PID" || rc=$?
  GW_PID=
  assert_equal "$rc" 0
  [ ! -e "$DEV" ] || fail "$DEV is still there"
  reattach_verify --size 1G -q 2 -d 32
}

# --force stops a device in use under its holder (here device-mapper, which
# holds it exclusively without writing: no I/O error for the kernel log).
# bats test_tags=transport-independent
@test "ublk: detach refuses a device in use by device-mapper; detach --force stops it" {
  requires dmsetup
  brick_up
  gw_attach --size 64M -q 1 -d 8
  dmsetup create --noudevsync pbrick-ublk-holder --table "0 $(blockdev --getsz "$DEV") linear $DEV 0"
  run "$GW_BIN" detach -n 0
  assert_failure 1
  assert_output --partial "$DEV is in use (mounted?): unmount it first, or detach --force"
  kill -0 "$GW_PID" || fail "detach stopped the gateway of a device in use"
  # Forced, the gateway stops the device under its holder; the kernel
  # deletes it once the holder lets go, and only then does detach return.
  timeout 60 "$GW_BIN" detach -n 0 --force >"$BATS_TEST_TMPDIR/detach.out" 2>&1 &
  local detach_pid=$! i
  for i in $(seq 1 200); do
    grep -q "stopping while in use" "$BATS_TEST_TMPDIR/gw.log" && break
    sleep 0.1
  done
  grep -q "stopping while in use" "$BATS_TEST_TMPDIR/gw.log" || fail "no warning: $(cat "$BATS_TEST_TMPDIR/gw.log")"
  dmsetup remove --noudevsync pbrick-ublk-holder
  local rc=0
  wait "$detach_pid" || rc=$?
  [ "$rc" = 0 ] || fail "detach --force exited $rc: $(cat "$BATS_TEST_TMPDIR/detach.out")"
  rc=0
  timeout 30 tail --pid="$GW_PID" -f /dev/null || fail "the gateway still runs after detach --force"
  wait "$GW_PID" || rc=$?
  GW_PID=
  assert_equal "$rc" 0
  [ ! -e "$DEV" ] || fail "$DEV is still there"
}

@test "ublk: fio verify=crc32c, 4K and 128K, iodepth 1 and 32, two jobs" {
  requires fio
  brick_up
  gw_attach --size 1G -q 2 -d 32
  fio_verify 4k-qd1 4k 1 2M
  fio_verify 4k-qd32 4k 32 4M
  fio_verify 128k-qd1 128k 1 8M
  fio_verify 128k-qd32 128k 32 16M
  gw_detach
  [ -z "$(dmesg_problems)" ]
}

@test "ublk: -q 2 --pin-queues --poll-us: each queue's thread on its queue's CPUs; polling ends waits; fio verify" {
  requires fio
  brick_up
  gw_attach --size 1G -q 2 -d 32 --pin-queues --poll-us 1000
  local q comm tid allowed
  for q in 0 1; do
    allowed=
    for tid in /proc/"$GW_PID"/task/*; do
      read -r comm <"$tid/comm"
      [ "$comm" = "pbrick-q$q" ] && allowed=$(awk '/^Cpus_allowed_list/ {print $2}' "$tid/status")
    done
    [ -n "$allowed" ] || fail "no thread pbrick-q$q in the gateway"
    assert_equal "$allowed" "$(cat /sys/block/ublkb0/mq/$q/cpu_list | tr -d ' ')"
  done
  fio_verify 4k-qd1 4k 1 2M
  gw_detach
  # Each queue logs how its waits ended; the 4k QD1 job's replies (hundreds
  # of us here) come within the bound often.
  local won
  won=$(sed -n 's/.*queue [01]: --poll-us 1000: \([0-9]*\) waits ended by polling.*/\1/p' "$BATS_TEST_TMPDIR/gw.log" |
    awk '{s += $1} END {print s + 0}')
  ((won > 0)) || fail "no wait ended by polling: $(grep -- --poll-us "$BATS_TEST_TMPDIR/gw.log")"
  [ -z "$(dmesg_problems)" ]
}

# Without --pin-queues a queue's thread may run on every CPU the gateway may.
# bats test_tags=transport-independent
@test "ublk: queue threads are not pinned by default" {
  brick_up
  gw_attach --size 64M -q 2 -d 8
  local tid comm n=0
  for tid in /proc/"$GW_PID"/task/*; do
    read -r comm <"$tid/comm"
    [[ $comm == pbrick-q* ]] || continue
    n=$((n + 1))
    assert_equal "$(awk '/^Cpus_allowed_list/ {print $2}' "$tid/status")" \
      "$(awk '/^Cpus_allowed_list/ {print $2}' /proc/"$GW_PID"/status)"
  done
  assert_equal "$n" 2
  gw_detach
}

# ublk gives a device at most one queue per CPU and says so only in ADD_DEV's
# answer: asked for more, the gateway serves the queues the device has.
# bats test_tags=transport-independent
@test "ublk: --queues above the CPU count: the device's one queue per CPU are served, and the gateway says so" {
  brick_up
  local cpus
  cpus=$(nproc)
  gw_attach --size 64M -q $((cpus + 2)) -d 8
  assert_equal "$(ls /sys/block/${DEV#/dev/}/mq | wc -l)" "$cpus"
  assert_equal "$(grep -l '^pbrick-q' /proc/"$GW_PID"/task/*/comm | wc -l)" "$cpus"
  grep -q -- "--queues $((cpus + 2)): the kernel gave $DEV $cpus (at most one per CPU); serving $cpus" \
    "$BATS_TEST_TMPDIR/gw.log" || fail "no notice of the queue count: $(cat "$BATS_TEST_TMPDIR/gw.log")"
  run "$GW_BIN" list
  assert_line --regexp "^${DEV#/dev/ublkb} +live +$cpus +8 +$GW_PID\$"
  # Every queue carries I/O: one 4 KiB direct write and read per CPU.
  head -c 1M /dev/urandom >"$BATS_TEST_TMPDIR/data"
  local c
  for c in $(seq 0 $((cpus - 1))); do
    taskset -c "$c" dd if="$BATS_TEST_TMPDIR/data" of="$DEV" bs=4k count=1 skip="$c" seek="$c" oflag=direct \
      conv=notrunc status=none
  done
  cmp -n $((cpus * 4096)) "$BATS_TEST_TMPDIR/data" <(dd if="$DEV" bs=4k count="$cpus" iflag=direct status=none)
  gw_detach
  [ -z "$(dmesg_problems)" ]
}

# A FLUSH after a lone write finds it synced by the sync chained to it
# (volume_io.h SyncChaining): over RDMA with sync-read (a READ the brick's CPU
# never sees) and, since fio flushes after every write, over TCP and with rpc
# too (a sync the brick serves, chained only while every write is flushed).
# Then the same writes flushed every other write: over TCP and with rpc
# nothing is chained, each FLUSH sends its own.
@test "ublk: write + fsync at depth 1: syncs chained to lone writes; none over TCP when every other write is flushed; fio verify" {
  requires fio
  brick_up
  local chained sent
  fsync_round 1 2M -q 2
  echo "# $PBRICK_TRANSPORT, $PERSISTENCE: $chained of 512 writes had a sync chained" >&3
  echo "# the FLUSHes sent $sent syncs of their own" >&3
  # All but the first one or two (no FLUSH seen yet, or no pattern yet) and
  # any that found another op in flight; the FLUSHes after them sent (almost)
  # nothing of their own.
  ((chained >= 450 && chained <= 512)) || fail "expected 450..512 chained syncs, the log says $chained"
  ((sent <= 512 - chained + 8)) || fail "the FLUSHes sent $sent syncs of their own after $chained chained ones"

  # fsync every other write: over TCP and with rpc a chained sync would be
  # one more than the FLUSHes ask for: none. One queue: each queue judges the
  # pattern by the writes it carried itself.
  fsync_round 2 2M -q 1
  echo "# fsync every other write: $chained chained, the FLUSHes sent $sent" >&3
  if [ "$PBRICK_TRANSPORT" = rdma ] && [ "$PERSISTENCE" = sync-read ]; then
    ((chained >= 200)) || fail "expected the lone writes chained over RDMA sync-read, the log says $chained"
  else
    assert_equal "$chained" 0
    ((sent >= 250)) || fail "expected a sync per FLUSH (256), the log says $sent"
  fi

  # --no-chained-syncs: every FLUSH sends its own, whatever the pattern.
  fsync_round 1 1M -q 1 --no-chained-syncs
  echo "# --no-chained-syncs: $chained chained, the FLUSHes sent $sent" >&3
  assert_equal "$chained" 0
  ((sent >= 250)) || fail "expected a sync per FLUSH (256), the log says $sent"
}

# fsync_round N SIZE ATTACH-ARGS...: a gateway of its own (-d 8 and the
# args), fio 4k random writes over SIZE with an fsync every N writes,
# verified; sets the caller's `chained` and `sent` from the queues' exit
# reports (syncs chained to lone writes, and the FLUSHes' own).
fsync_round() {
  local every=$1 size=$2
  shift 2
  : >"$BATS_TEST_TMPDIR/gw.log"
  gw_attach --size 64M -d 8 "$@"
  fio --name=wf --filename="$DEV" --ioengine=psync --direct=1 --rw=randwrite --bs=4k --fsync="$every" \
    --size="$size" --verify=crc32c --verify_fatal=1 --do_verify=1 --output-format=terse \
    >"$BATS_TEST_TMPDIR/fio.out" 2>&1 || { cat "$BATS_TEST_TMPDIR/fio.out" >&2; false; }
  gw_detach
  read -r chained sent < <(awk '{
      if (match($0, /[0-9]+ syncs chained to lone writes, [0-9]+ syncs sent/)) {
        split(substr($0, RSTART, RLENGTH), f, " "); c += f[1]; s += f[7] } }
    END { print c + 0, s + 0 }' "$BATS_TEST_TMPDIR/gw.log")
}

# brick_has VADDR: the brick lists the 2 MiB block at VADDR (status 1: it
# does not; 2: the brick could not be asked). brick_lacks VADDR: it lists none
# there - a check that fails, unlike `! brick_has`, which bats does not count.
brick_has() {
  local want=$(($1)) start blocks listing extents
  listing=$(ctl --json list) && extents=$(jq -r '.extents[] | "\(.start) \(.blocks)"' <<<"$listing") || {
    fail "pbrickctl list failed: $listing"
    return 2
  }
  while read -r start blocks; do
    [ -n "$start" ] || continue
    ((want >= start && want < start + blocks * 2 * M)) && return 0
  done <<<"$extents"
  return 1
}
brick_lacks() {
  local status=0
  brick_has "$1" || status=$?
  ((status != 2)) || return 1
  ((status == 1)) || fail "the brick still lists a block at $1"
}

@test "ublk: blkdiscard frees whole 2 MiB blocks at the brick; blkdiscard -z keeps its range allocated; both read zeros" {
  brick_up
  gw_attach --size 1G -q 2 -d 32
  # Blocks 2..5 (4 MiB .. 12 MiB) written.
  dd if=/dev/urandom of="$DEV" bs=1M seek=4 count=8 oflag=direct status=none
  for b in 2 3 4 5; do brick_has $((b * 2 * M)); done
  # Whole blocks 2 and 3 freed.
  blkdiscard -o $((4 * M)) -l $((4 * M)) "$DEV"
  brick_lacks $((2 * 2 * M))
  brick_lacks $((3 * 2 * M))
  brick_has $((4 * 2 * M))
  cmp -n $((4 * M)) <(dd if="$DEV" bs=1M skip=4 count=4 iflag=direct status=none) /dev/zero
  # Part of block 4: zero-filled, the block stays.
  blkdiscard -o $((9 * M)) -l $((1 * M)) "$DEV"
  brick_has $((4 * 2 * M))
  cmp -n $((1 * M)) <(dd if="$DEV" bs=1M skip=9 count=1 iflag=direct status=none) /dev/zero
  # Zeroing (BLKZEROOUT: WRITE_ZEROES with NOUNMAP) of block 5 and of block
  # 7, never written: zeros are written, block 5 stays and block 7 is
  # allocated - the range must stay provisioned.
  blkdiscard -z -o $((10 * M)) -l $((2 * M)) "$DEV"
  blkdiscard -z -o $((14 * M)) -l $((2 * M)) "$DEV"
  cmp -n $((2 * M)) <(dd if="$DEV" bs=1M skip=10 count=2 iflag=direct status=none) /dev/zero
  cmp -n $((2 * M)) <(dd if="$DEV" bs=1M skip=14 count=2 iflag=direct status=none) /dev/zero
  brick_has $((5 * 2 * M))
  brick_has $((7 * 2 * M))
  gw_detach
  [ -z "$(dmesg_problems)" ]
}

@test "ublk: kill -9 of the gateway under fio; recover -n 0; ext4 stays usable and fsck clean" {
  requires fio
  brick_up
  gw_attach --size 1G -q 2 -d 32
  mkfs_mount
  fio --name=busy --directory="$MNT" --ioengine=libaio --direct=1 --bs=16k --iodepth=8 --numjobs=2 \
    --size=24M --rw=randwrite --verify=crc32c --verify_fatal=1 --do_verify=1 \
    >"$BATS_TEST_TMPDIR/fio.out" 2>&1 &
  local fio_pid=$!
  sleep 3
  # The daemon dies with fio's I/O in flight, or nothing is tested here.
  kill -0 "$fio_pid" || fail "fio ended before the kill: $(cat "$BATS_TEST_TMPDIR/fio.out")"
  kill -KILL "$GW_PID"
  wait "$GW_PID" 2>/dev/null || true
  GW_PID=
  run "$GW_BIN" list --json
  echo "# after kill: $output" >&3
  # detach does not stop the device under the mounted file system, whose
  # writes it holds: it points at recover, and the device stays recoverable.
  run "$GW_BIN" detach -n 0
  assert_failure 1
  assert_output --partial "/dev/ublkb0 is in use (mounted?) and its daemon is gone"
  assert_output --partial "pbrick-gateway recover -n 0, or detach --force"
  # A .conf recover cannot trust is refused before the device is touched,
  # naming the file and the key; the device then still recovers.
  local conf=/run/pbrick/ublk-0.conf
  cp "$conf" "$BATS_TEST_TMPDIR/conf.saved"
  sed -i '/^poll_us=/d' "$conf"
  echo poll_us=1001 >>"$conf"
  run "$GW_BIN" recover -n 0
  assert_failure 1
  assert_output --partial "$conf: poll_us must be 0..1000"
  # One that describes another volume than the device's (another attach of
  # the same id left it) is refused before the volume is opened.
  cp "$BATS_TEST_TMPDIR/conf.saved" "$conf"
  sed -i 's/^size=.*/size=2147483648/' "$conf"
  run timeout 60 "$GW_BIN" recover -n 0  # a recover that went ahead would serve in the foreground
  assert_failure 1
  assert_output --partial "$conf describes 2.0 GiB, 4096-byte blocks, but device 0 has 1.0 GiB"
  # The volume the device was attached to is in the file; another volume at
  # the same base (this one deleted, another made there) is not served under
  # the device: its file system and the writes in flight are this volume's.
  local uuid
  uuid=$(sed -n 's/^volume=//p' "$BATS_TEST_TMPDIR/conf.saved")
  grep -q "volume $uuid: labelled" "$BATS_TEST_TMPDIR/gw.log"
  cp "$BATS_TEST_TMPDIR/conf.saved" "$conf"
  sed -i 's/^volume=.*/volume=00000000-0000-4000-8000-000000000001/' "$conf"
  run timeout 60 "$GW_BIN" recover -n 0
  assert_failure 1
  assert_output --partial "is of volume $uuid, not of volume 00000000-0000-4000-8000-000000000001: another volume took its place"
  cp "$BATS_TEST_TMPDIR/conf.saved" "$conf"
  gw_recover 0
  assert_equal "$(cat "$BATS_TEST_TMPDIR/recover.out")" /dev/ublkb0
  run "$GW_BIN" list --json
  assert_equal "$(jq -r '.[0].state' <<<"$output")" live
  wait "$fio_pid" || { cat "$BATS_TEST_TMPDIR/fio.out" >&2; false; }
  echo hello >"$MNT/after-recover"
  sync
  assert_equal "$(cat "$MNT/after-recover")" hello
  umount "$MNT"
  fsck.ext4 -f -n "$DEV"
  gw_detach
  [ -z "$(dmesg_problems)" ]
}

@test "ublk: an attach that fails once the device exists removes it; the next attach gets the same id" {
  # The brick serves one connection past its handshake: the attach's control
  # connection gets it, its queues' data connections get EAGAIN.
  brick_up --max-connections 1
  run "$GW_BIN" attach --target "$TARGET" --transport "$PBRICK_TRANSPORT" --persistence "$PERSISTENCE" \
    --size 64M -q 2 -d 8
  assert_failure 1
  assert_output --partial "EAGAIN"
  refute_output --partial "remove the device with"
  local i
  for i in $(seq 1 50); do
    [ -e /dev/ublkc0 ] || break
    sleep 0.1
  done
  [ ! -e /dev/ublkc0 ] || fail "the failed attach left /dev/ublkc0"
  run "$GW_BIN" list --json
  assert_output "[]"
  stop_brick TERM
  brick_up
  gw_attach --size 64M -q 2 -d 8
  assert_equal "$DEV" /dev/ublkb0
  gw_detach
  [ -z "$(dmesg_problems)" ]
}

@test "ublk: recover while the brick refuses data connections: every queue starts, I/O resumes once it serves" {
  brick_up
  gw_attach --size 64M -q 2 -d 8
  head -c $((4 * M)) /dev/urandom >"$BATS_TEST_TMPDIR/data"
  dd if="$BATS_TEST_TMPDIR/data" of="$DEV" bs=1M oflag=direct conv=fsync status=none
  kill -KILL "$GW_PID"
  wait "$GW_PID" 2>/dev/null || true
  GW_PID=
  # The brick now serves one connection past its handshake: recover's
  # control connection gets it, the queues' data connections get EAGAIN.
  stop_brick TERM
  brick_up --max-connections 1
  gw_recover 0
  assert_equal "$(cat "$BATS_TEST_TMPDIR/recover.out")" /dev/ublkb0
  run "$GW_BIN" list --json
  assert_equal "$(jq -r '.[0].state' <<<"$output")" live
  grep -q "connecting again when it has I/O" "$BATS_TEST_TMPDIR/gw.log"
  # The brick serves as usual again: what was written reads back.
  stop_brick TERM
  brick_up
  cmp "$BATS_TEST_TMPDIR/data" <(dd if="$DEV" bs=1M count=4 iflag=direct status=none)
  gw_detach
  [ -z "$(dmesg_problems)" ]
}

@test "ublk: brick crash (kill -9) and restart under a mounted ext4: I/O resumes, flushed data intact" {
  brick_up
  gw_attach --size 1G -q 2 -d 32
  mkfs_mount
  make_tree "$MNT/before"
  sha_tree "$MNT/before" >"$BATS_TEST_TMPDIR/before.sha"
  sync # FLUSH: from here on the tree is durable at the brick
  stop_brick KILL
  sleep 1
  # Writes while the brick is away wait in the gateway (io timeout 30 s).
  head -c $((3 * M)) /dev/urandom >"$BATS_TEST_TMPDIR/during"
  (cp "$BATS_TEST_TMPDIR/during" "$MNT/during" && sync) &
  local writer=$!
  sleep 2
  brick_up
  wait "$writer"
  make_tree "$MNT/after"
  sync
  echo 3 >/proc/sys/vm/drop_caches
  cmp "$BATS_TEST_TMPDIR/during" "$MNT/during"
  sha_tree "$MNT/before" | diff "$BATS_TEST_TMPDIR/before.sha" -
  # The queues did lose the brick and came back.
  grep -q "reconnected to brick" "$BATS_TEST_TMPDIR/gw.log"
  umount "$MNT"
  fsck.ext4 -f -n "$DEV"
  gw_detach
  [ -z "$(dmesg_problems)" ]
}

@test "ublk: --config/--volume, --logical-block-size 512, list, detach -n; poll_us from the file, flags over it" {
  brick_up
  cat >"$BATS_TEST_TMPDIR/cluster.yaml" <<YAML
cluster:
  name: vmtest
bricks:
  - name: b0
    host: ${TARGET%:*}
    port: $BRICK_PORT
    transport: $PBRICK_TRANSPORT
    store: {path: "$BRICK_STORE", size: $BRICK_STORE_SIZE}
    nic: {netdev: eth0, rdma_device: rxe0, ddio: $([ "$PERSISTENCE" = sync-read ] && echo off || echo unmanaged)}
    persistence: $PERSISTENCE
volumes:
  - name: v0
    size: 64M
    brick: b0
    base: 0x20000000
    queues: 1
    depth: 16
    frontend: ublk
    poll_us: 40
    pin_queues: true
    chained_syncs: false
  - name: v1
    size: 64M
    brick: b0
    base: 0x40000000
gateways:
  - name: g0
    host: 127.0.0.1
    volumes: [v0]
YAML
  local out=$BATS_TEST_TMPDIR/gw.out
  "$GW_BIN" attach --config "$BATS_TEST_TMPDIR/cluster.yaml" --volume v0 --logical-block-size 512 \
    --no-pin-queues --chained-syncs >"$out" 2>>"$BATS_TEST_TMPDIR/gw.log" &
  GW_PID=$!
  local i
  for i in $(seq 1 300); do
    [ -s "$out" ] && [ -b "$(head -n1 "$out")" ] && break
    kill -0 "$GW_PID" 2>/dev/null || { cat "$BATS_TEST_TMPDIR/gw.log" >&2; false; }
    sleep 0.1
  done
  DEV=$(head -n1 "$out")
  assert_equal "$(blockdev --getsize64 "$DEV")" $((64 * M))
  assert_equal "$(cat /sys/block/${DEV#/dev/}/queue/logical_block_size)" 512
  assert_equal "$(ls /sys/block/${DEV#/dev/}/mq | wc -l)" 1
  # 512-byte direct I/O lands at base + offset on the brick.
  head -c 512 /dev/urandom >"$BATS_TEST_TMPDIR/sector"
  dd if="$BATS_TEST_TMPDIR/sector" of="$DEV" bs=512 seek=7 oflag=direct status=none
  cmp "$BATS_TEST_TMPDIR/sector" <(dd if="$DEV" bs=512 skip=7 count=1 iflag=direct status=none)
  brick_has 0x20000000
  brick_lacks 0
  run "$GW_BIN" list
  assert_success
  assert_line --regexp "^${DEV#/dev/ublkb} +live +1 +16 +$GW_PID\$"
  # The flags won over the file's pin_queues: true and chained_syncs: false.
  local conf=/run/pbrick/ublk-${DEV#/dev/ublkb}.conf
  grep -q '^poll_us=40$' "$conf" || fail "$(cat "$conf")"
  if grep -Eq '^(pin_queues|chained_syncs)=' "$conf"; then fail "$(cat "$conf")"; fi
  # replace from the file checks that it names the volume this device serves.
  run "$GW_BIN" replace -n "${DEV#/dev/ublkb}" --config "$BATS_TEST_TMPDIR/cluster.yaml" --volume v1
  assert_failure
  assert_output --partial "volume v1 (64.0 MiB at 0x40000000) is not the volume device ${DEV#/dev/ublkb} serves ('v0'"
  run "$GW_BIN" detach -n "${DEV#/dev/ublkb}"
  assert_success
  local rc=0
  wait "$GW_PID" || rc=$?
  GW_PID=
  assert_equal "$rc" 0
  [ ! -e "$DEV" ]
  run "$GW_BIN" list --json
  assert_output "[]"
  # The queue polled as the file said (it reports so when it stops).
  grep -Eq 'queue 0: --poll-us 40: [0-9]+ waits ended by polling' "$BATS_TEST_TMPDIR/gw.log" ||
    { grep -i poll "$BATS_TEST_TMPDIR/gw.log" >&2; false; }
}
