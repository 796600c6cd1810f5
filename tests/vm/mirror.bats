#!/usr/bin/env bats
# Mirrored volumes (pbrick-gateway --layout mirror: copy j of block i on brick
# (i + j) mod N; docs/layout.md "Mirror") served over ublk to a real kernel,
# in the VM of tests/vm/run (they skip outside it):
#   1. 2 copies on 2 bricks, fio verify=crc32c on /dev/ublkbN, one brick
#      killed (kill -9) under it: fio completes with no error, the device
#      stays up and reads back right, the kernel logs nothing, the gateway
#      logs the brick stale and the volume degraded; it detaches cleanly.
#   2. 2 copies on 4 bricks (RAID10-like): one brick down, the whole volume
#      is written and reads back right; the neighbour down too (the two
#      copies of every 4th block gone), reads and writes of those blocks fail
#      with EIO after the I/O timeout, the others still read back right,
#      never other data; SIGTERM still stops the gateway cleanly.
#   3. `list` shows a stale copy; `pbrick-gateway replace` swaps in an empty
#      brick under fio writes: every block is copied, the copies match
#      slot by slot, and with the other brick gone fio verifies every byte.
#   4. the gateway killed after a brick went stale: recover refuses without
#      --degraded, serves the right bytes with it; detach of the killed
#      daemon's device removes its files, so the next device of the id (a
#      volume of one brick) shows no copies in list.
# The mirror layout does not depend on the transport: scripts/test runs this
# file in its TCP boot.

load helpers
load ublk

# mirror_bricks N: N 64 MiB bricks (31 blocks each); sets T0.. (their
# addresses) and B0.. (their pids), and TARGET to T0 (gw_attach's first
# --target).
mirror_bricks() {
  local i
  for ((i = 0; i < $1; i++)); do
    start_brick "m$i" --persistence "$PERSISTENCE" || return 1
    printf -v "T$i" %s "$TARGET"
    printf -v "B$i" %s "$BRICK_PID"
  done
  TARGET=$T0
}

# kmsg_mark: a line in the kernel log where this test starts; kernel_problems
# prints the problem lines logged after it (I/O errors, ublk trouble, and
# what tests/vm/run fails a run for).
kmsg_mark() {
  KMSG_MARK="pbrick mirror.bats: test $BATS_TEST_NUMBER starts $EPOCHREALTIME"
  echo "$KMSG_MARK" >/dev/kmsg
  DMESG_CLEAN_BEFORE=
  [ -z "$(dmesg_problems)" ] && DMESG_CLEAN_BEFORE=1
  return 0
}
kernel_problems() {
  dmesg | awk -v m="$KMSG_MARK" 'found; index($0, m) {found = 1}' |
    grep -iE 'BUG:|WARNING:|I/O error|blk_update_request|Oops|blocked for more than|ublk.*(abort|error|fail|timeout)' || true
}

# block_io DEV EXPECTED GROUP...: I/O on 2 MiB volume blocks of DEV (O_DIRECT)
# from one process (each costs under emulation); each GROUP (an argument: ops
# separated by commas) runs at once, one thread an op, the groups in turn.
# Ops and their lines, in the order given:
#   rI  read block I: "r I ok" when it holds block I of the file EXPECTED,
#       "r I zeros" or "r I differs" when not, "r I ERRNO SECONDS" on an error
#   wI  write 2 MiB of 0x5a to block I: "w I ok", or "w I ERRNO SECONDS"
block_io() {
  python3 - "$@" <<'PY'
import errno, mmap, os, sys, threading, time
M2 = 2 << 20
fd = os.open(sys.argv[1], os.O_RDWR | os.O_DIRECT)
efd = os.open(sys.argv[2], os.O_RDONLY)

def run(op, out, k):
    kind, i = op[0], int(op[1:])
    buf = mmap.mmap(-1, M2)  # page-aligned, as O_DIRECT wants
    start = time.monotonic()
    try:
        if kind == "w":
            buf.write(b"\x5a" * M2)
            n = os.pwritev(fd, [buf], i * M2)
        else:
            n = os.preadv(fd, [buf], i * M2)
    except OSError as e:
        out[k] = "%s %d %s %.3f" % (kind, i, errno.errorcode.get(e.errno, e.errno), time.monotonic() - start)
        return
    if n != M2:
        out[k] = "%s %d short %d" % (kind, i, n)
    elif kind == "w":
        out[k] = "w %d ok" % i
    elif buf[:] == os.pread(efd, M2, i * M2):
        out[k] = "r %d ok" % i
    else:
        out[k] = "r %d %s" % (i, "zeros" if buf[:] == bytes(M2) else "differs")

for group in sys.argv[3:]:
    ops = group.split(",")
    out = [None] * len(ops)
    threads = [threading.Thread(target=run, args=(op, out, k)) for k, op in enumerate(ops)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print("\n".join(out), flush=True)
PY
}

@test "ublk: mirror, 2 copies: kill -9 a brick under fio verify; no error reaches fio or the kernel, the volume is degraded" {
  requires fio jq
  kmsg_mark
  mirror_bricks 2
  gw_attach --target "$T1" --layout mirror --copies 2 --size 16M --timeout 10000 --leg-timeout 500 -q 2 -d 32
  assert_equal "$(blockdev --getsize64 "$DEV")" $((16 * M))
  local out=$BATS_TEST_TMPDIR/fio.json stat=/sys/block/${DEV#/dev/}/stat
  local args=(--name=mirror --filename="$DEV" --ioengine=libaio --direct=1 --rw=randwrite --bs=16k --iodepth=8
    --size=16M --verify=crc32c --verify_fatal=1 --verify_state_save=0 --output-format=json)
  # Brick 1 dies once the device has completed 128 of fio's 1024 writes
  # (its write count, field 5 of the stat file), well before the last.
  (
    for _ in {1..600}; do
      read -r _ _ _ _ w _ <"$stat"
      if ((w >= 128)); then
        kill -9 "$B1"
        echo "$w" >"$BATS_TEST_TMPDIR/killed_at"
        exit 0
      fi
      sleep 0.05
    done
  ) &
  local killer=$!
  run fio "${args[@]}" --do_verify=1 --output="$out"
  wait "$killer"
  assert_success
  assert_equal "$(jq '.jobs[0].error' "$out")" 0
  assert_equal "$(jq '.jobs[0].write.io_bytes' "$out")" $((16 * M))
  assert_equal "$(jq '.jobs[0].read.io_bytes' "$out")" $((16 * M))
  # The kill landed while fio was writing: more writes completed after it.
  local killed_at w
  read -r killed_at <"$BATS_TEST_TMPDIR/killed_at"
  read -r _ _ _ _ w _ <"$stat"
  ((w > killed_at)) || fail "the brick died after fio's writes ($killed_at of $w)"
  # A write missed brick 1: it is stale, the volume degraded.
  grep -q "brick $T1 is stale (generation [0-9]*); the volume is degraded" "$BATS_TEST_TMPDIR/gw.log" ||
    fail "no 'brick $T1 is stale' in the gateway log"
  wait_states in-sync,stale 5
  grep -q "mirror: degraded: brick $T1 stale since" "$BATS_TEST_TMPDIR/gw.log" ||
    fail "no 'mirror: degraded' (the STATUS line's words) in the gateway log"
  # The device is still up and every block reads back right (from brick 0).
  run fio "${args[@]}" --verify_only=1 --output="$out"
  assert_success
  assert_equal "$(jq '.jobs[0].error' "$out")" 0
  assert_equal "$(jq '.jobs[0].read.io_bytes' "$out")" $((16 * M))
  gw_detach
  # Detached cleanly (SIGTERM): the next attach has nothing to repair.
  local seen
  seen=$(wc -l <"$BATS_TEST_TMPDIR/gw.log")
  gw_attach --target "$T1" --layout mirror --copies 2 --size 16M --timeout 10000 --leg-timeout 500 -q 2 -d 32 \
    --degraded
  if tail -n +$((seen + 1)) "$BATS_TEST_TMPDIR/gw.log" | grep -q "did not detach cleanly"; then
    fail "$(cat "$BATS_TEST_TMPDIR/gw.log")"
  fi
  gw_detach
  run kernel_problems
  assert_output ''
}

@test "ublk: mirror over 4 bricks, 2 copies: one brick down, no error; both copies down, EIO after the timeout, never other data" {
  kmsg_mark
  mirror_bricks 4
  # 16 blocks; block i's copies on bricks i mod 4 and (i + 1) mod 4.
  gw_attach --target "$T1" --target "$T2" --target "$T3" --layout mirror --copies 2 --size 32M \
    --timeout 3000 --leg-timeout 1000 -q 2 -d 32
  local data=$BATS_TEST_TMPDIR/data
  head -c $((32 * M)) /dev/urandom >"$data"

  # Brick 1 down (one copy of blocks 0, 1, 4, 5, ...): the whole volume is
  # written and reads back right.
  kill -9 "$B1"
  dd if="$data" of="$DEV" bs=2M oflag=direct status=none
  cmp "$data" <(dd if="$DEV" bs=2M iflag=direct status=none)
  grep -q "brick $T1 is stale (generation [0-9]*); the volume is degraded" "$BATS_TEST_TMPDIR/gw.log" ||
    fail "no 'brick $T1 is stale' in the gateway log"
  run kernel_problems
  assert_output ''

  # Brick 2 down too: blocks i with i mod 4 = 1 had their copies on bricks 1
  # and 2, both gone. Every other block has a copy on brick 0 or 3.
  kill -9 "$B2"
  local i lost=() kept=()
  for ((i = 0; i < 16; i++)); do
    if ((i % 4 == 1)); then lost+=("r$i"); else kept+=("r$i"); fi
  done
  local kept_ops lost_ops
  kept_ops=$(IFS=,; echo "${kept[*]}")
  lost_ops=$(IFS=,; echo "${lost[*]}")
  # The kept blocks; the lost ones and a write to one of them, all at once;
  # then kept ones again.
  run block_io "$DEV" "$data" "$kept_ops" "$lost_ops,w5" "r0,r2,r3,r6"
  assert_success
  local expected=() line n result secs
  for ((i = 0; i < 16; i++)); do ((i % 4 == 1)) || expected+=("r $i ok"); done
  assert_equal "${#lines[@]}" $((12 + 5 + 4))
  for ((i = 0; i < 12; i++)); do assert_equal "${lines[i]}" "${expected[i]}"; done
  for line in "${lines[@]:12:5}"; do
    read -r _ n result secs <<<"$line"
    ((n % 4 == 1)) || fail "unexpected line '$line'"
    # EIO, and only once the I/O timeout (3 s) has passed (secs has 3 decimals).
    [ "$result" = EIO ] || fail "block $n: '$line', not EIO"
    ((10#${secs/./} >= 3000 && 10#${secs/./} < 30000)) || fail "block $n failed after $secs s, not after the 3 s timeout"
  done
  assert_equal "${lines[17]}" "r 0 ok"
  assert_equal "${lines[18]}" "r 2 ok"
  assert_equal "${lines[19]}" "r 3 ok"
  assert_equal "${lines[20]}" "r 6 ok"
  grep -q "brick $T2 unreachable for 3000 ms" "$BATS_TEST_TMPDIR/gw.log" ||
    fail "no 'brick $T2 unreachable for 3000 ms' in the gateway log"
  # SIGTERM still stops the gateway (exit 0) and deletes the device.
  kill -TERM "$GW_PID"
  timeout 20 tail --pid="$GW_PID" -f /dev/null || fail "the gateway did not exit within 20 s of SIGTERM"
  local rc=0
  wait "$GW_PID" || rc=$?
  GW_PID=
  assert_equal "$rc" 0
  for i in {1..50}; do
    [ -e "$DEV" ] || break
    sleep 0.1
  done
  [ ! -e "$DEV" ] || fail "$DEV still exists after the gateway exited"

  # The kernel logged the failed I/O of the lost blocks (sectors of 512
  # bytes: block = sector / 4096) and nothing else. Clear them so
  # tests/vm/run's dmesg check keeps meaning what it says, but only when the
  # log was clean before this test.
  local problems sector bad=()
  problems=$(kernel_problems)
  [ -n "$problems" ] || fail "the kernel logged no I/O error for the lost blocks"
  while read -r line; do
    if [[ $line =~ I/O\ error,\ dev\ ${DEV#/dev/},\ sector\ ([0-9]+)\  ]]; then
      sector=${BASH_REMATCH[1]}
      ((sector / 4096 % 4 == 1)) && continue
    fi
    bad+=("$line")
  done <<<"$problems"
  ((${#bad[@]} == 0)) || fail "unexpected kernel log lines: $(printf '%s\n' "${bad[@]}")"
  if [ -n "$DMESG_CLEAN_BEFORE" ]; then
    dmesg -C
    echo "pbrick mirror.bats: the failed requests on the lost blocks checked and cleared from the log" >/dev/kmsg
  fi
}

# copy_sums TARGET: "SLOT SHA256" of each of the 8 data slots a 16 MiB
# 2-brick mirror uses on that brick, read straight from the brick.
copy_sums() {
  local slot
  for slot in 0 1 2 3 4 5 6 7; do
    echo "$slot $("$CTL_BIN" --target "$1" --transport "$PBRICK_TRANSPORT" read $((slot * 2 * M)) 0 $((2 * M)) |
      sha256sum | cut -d' ' -f1)"
  done
}

# mirror_list_states: each copy's state as `pbrick-gateway list --json` shows
# it for the one device, joined by commas.
mirror_list_states() { "$GW_BIN" list --json | jq -r '.[0].mirror.bricks | map(.state) | join(",")'; }

# wait_states WANT SECONDS: until mirror_list_states says WANT.
wait_states() {
  local i
  for ((i = 0; i < $2 * 5; i++)); do
    [ "$(mirror_list_states)" = "$1" ] && return 0
    sleep 0.2
  done
  fail "list shows copies $(mirror_list_states), not $1, after $2 s: $("$GW_BIN" list)"
}

@test "ublk: mirror: list shows the stale copy; replace swaps in an empty brick under writes; full copy, identical copies" {
  requires fio jq
  kmsg_mark
  mirror_bricks 3  # m2 is the empty brick that replaces m1
  gw_attach --target "$T1" --layout mirror --copies 2 --size 16M --timeout 10000 --leg-timeout 500 -q 1 -d 32
  local id=${DEV#/dev/ublkb}
  dd if=/dev/urandom of="$DEV" bs=2M count=8 oflag=direct status=none
  wait_states in-sync,in-sync 5

  # Brick 1 dies; a write misses it: list and the log show it stale.
  kill -9 "$B1"
  dd if=/dev/urandom of="$DEV" bs=4k count=1 seek=1000 oflag=direct status=none
  wait_states in-sync,stale 10
  run "$GW_BIN" list
  assert_output --regexp "copies: $T0 in-sync, $T1 stale since 20[0-9-]+T[0-9:]+Z"

  # Replaced by the empty brick while fio writes every block.
  local out=$BATS_TEST_TMPDIR/fio.json
  local args=(--name=replace --filename="$DEV" --ioengine=libaio --direct=1 --rw=randwrite --bs=64k --iodepth=8
    --size=16M --verify=crc32c --verify_state_save=0 --output-format=json --output="$out")
  fio "${args[@]}" --do_verify=0 &
  local fio_pid=$!
  sleep 0.5
  run "$GW_BIN" replace -n "$id" --brick "$T1" --target "$T2"
  assert_success
  assert_output "brick 1 ($T1) replaced by $T2; copying every block to it"
  wait "$fio_pid" || fail "fio failed during the replace: $(cat "$out")"
  assert_equal "$(jq '.jobs[0].error' "$out")" 0
  wait_states in-sync,in-sync 60
  grep -q "brick $T2 resynced: 8 blocks copied" "$BATS_TEST_TMPDIR/gw.log" || fail "no full copy in the gateway log"
  grep -q "^target=$T0,$T2$" "/run/pbrick/ublk-$id.conf" || fail "recover would not use the new brick"
  # Nor forget which volume the device serves (recover opens that one only).
  local uuid
  uuid=$(sed -n 's/^volume=//p' "/run/pbrick/ublk-$id.conf")
  [ -n "$uuid" ] || fail "the .conf the replace wrote names no volume"
  grep -q "volume $uuid: labelled" "$BATS_TEST_TMPDIR/gw.log" || fail "the .conf names volume $uuid, not the one attached"
  # The empty brick holds what brick 0 holds: slot 2k on one is slot 2k + 1 on the other.
  local s0 s2 slot sum
  s0=$(copy_sums "$T0") s2=$(copy_sums "$T2")
  declare -A on2
  while read -r slot sum; do on2[$slot]=$sum; done <<<"$s2"
  while read -r slot sum; do
    assert_equal "$sum" "${on2[$((slot ^ 1))]}"
  done <<<"$s0"
  # A brick that holds a label (brick 0's store) is refused, naming why.
  run "$GW_BIN" replace -n "$id" --brick "$T2" --target "$T0"
  assert_failure
  assert_output --partial "serves store"
  # Brick 0 gone: every byte fio wrote reads back from the new copy.
  kill -9 "$B0"
  run fio "${args[@]}" --verify_only=1
  assert_success
  assert_equal "$(jq '.jobs[0].error' "$out")" 0
  gw_detach
  run kernel_problems
  assert_output ''
}

@test "ublk: mirror: a gateway killed after a brick went stale recovers only with --degraded; detach then forgets its copies" {
  kmsg_mark
  mirror_bricks 2
  gw_attach --target "$T1" --layout mirror --copies 2 --size 16M --timeout 10000 --leg-timeout 500 -q 1 -d 8
  local id=${DEV#/dev/ublkb} data=$BATS_TEST_TMPDIR/data
  head -c $((16 * M)) /dev/urandom >"$data"
  dd if="$data" of="$DEV" bs=2M oflag=direct status=none
  # Brick 1 dies and a write misses it; then the gateway dies too.
  kill -9 "$B1"
  dd if=/dev/urandom of="$data" bs=4k count=1 seek=1000 conv=notrunc status=none
  dd if="$data" of="$DEV" bs=4k count=1 skip=1000 seek=1000 oflag=direct status=none
  wait_states in-sync,stale 10
  kill -9 "$GW_PID"
  wait "$GW_PID" 2>/dev/null || true
  GW_PID=
  # Without --degraded recover refuses at once (the device stays quiesced,
  # recoverable), naming the brick and the flag.
  run timeout 60 "$GW_BIN" recover -n "$id"
  assert_failure 1
  assert_output --partial "brick $T1 of a mirror is unreachable (--degraded, or degraded=true, runs the volume"
  gw_recover "$id" --degraded
  assert_equal "$(cat "$BATS_TEST_TMPDIR/recover.out")" "$DEV"
  # Killed, it never recorded a clean detach: the 8 written blocks are read
  # from one copy each until the repair is done.
  grep -q "its last writer did not detach cleanly: the copies of 8 written block(s) may differ" \
    "$BATS_TEST_TMPDIR/gw.log" || fail "$(cat "$BATS_TEST_TMPDIR/gw.log")"
  cmp "$data" <(dd if="$DEV" bs=2M iflag=direct status=none)
  wait_states in-sync,stale 10

  # Killed again; detach removes the device and what its daemon left, so the
  # next device of this id (a volume of one brick) shows no copies.
  kill -9 "$GW_PID"
  wait "$GW_PID" 2>/dev/null || true
  GW_PID=
  [ -e "/run/pbrick/ublk-$id.copies" ] || fail "the killed daemon left no copies file (nothing tested)"
  run "$GW_BIN" detach -n "$id"
  assert_success
  [ ! -e "/run/pbrick/ublk-$id.copies" ] || fail "detach left /run/pbrick/ublk-$id.copies"
  [ ! -e "/run/pbrick/ublk-$id.conf" ] || fail "detach left /run/pbrick/ublk-$id.conf"
  TARGET=$T0
  gw_attach --size 8M --base 0x40000000 -q 1 -d 8
  assert_equal "$DEV" "/dev/ublkb$id"
  run "$GW_BIN" list
  assert_success
  refute_output --partial "copies:"
  gw_detach
  run kernel_problems
  assert_output ''
}
