#!/usr/bin/env bats
# The volume label and one writer per volume, end to end over NBD: a second
# read-write attach is refused with EBUSY naming the holder until the holder
# dies; read-only attaches share; a brick holding another volume's label, and
# a shrink, are refused with a clear error and change no byte of the brick;
# a grow is accepted. (Brick order and reformatted members of multi-brick
# volumes: stripe.bats over NBD, gateway/volume_label_test.cc VolumeClaimTest.*.)

load helpers
load nbd

LABEL=0x8000000000000000 # label block of the volume at base 0 (docs/layout.md)
M2=$((2 * 1024 * 1024))

setup() {
  requires nbdkit nbdinfo qemu-io jq setsid
}

teardown() {
  nbd_teardown
  brick_teardown
}

# brick_sums: sha256 of the label block's label slots (the holder record is
# rewritten by every writer) and of every data block of the brick.
brick_sums() {
  local start blocks i
  ctl read "$LABEL" 0 8192 | sha256sum | cut -d' ' -f1
  while read -r start blocks; do
    for ((i = 0; i < blocks; i++)); do
      ctl read $((start + i * M2)) 0 "$M2" | sha256sum | cut -d' ' -f1
    done
  done < <(ctl --json list | jq -r "$DATA_EXTENTS | .[] | \"\(.start) \(.blocks)\"")
}

@test "label: a second writer gets EBUSY naming the holder; after kill -9 of the holder it attaches; readers share" {
  start_brick b
  start_nbd --name first name=vol1 size=8M
  first=$NBD_PID writer_uri=$NBD_URI
  run qio "write -P 0x5a 0 3M" flush
  assert_qio_ok
  # The label block holds the committed label (magic, flags, name).
  ctl read "$LABEL" 0 64 >"$BATS_TEST_TMPDIR/label"
  assert_equal "$(head -c 8 "$BATS_TEST_TMPDIR/label")" PBRKVLBL
  assert_equal "$(od -An -tu4 -j12 -N4 "$BATS_TEST_TMPDIR/label" | tr -d ' ')" 1
  assert_equal "$(tail -c +57 "$BATS_TEST_TMPDIR/label" | head -c 4)" vol1

  run start_nbd --name second name=vol1 size=8M
  assert_failure
  grep -q "is held by nbdkit pid $first on $(hostname) since" "$BATS_TEST_TMPDIR/second.nbdkit.log" ||
    fail "no holder named in: $(cat "$BATS_TEST_TMPDIR/second.nbdkit.log")"
  grep -q "Device or resource busy (EBUSY)" "$BATS_TEST_TMPDIR/second.nbdkit.log"

  # A reader shares the volume with its writer, sees its data, cannot write.
  start_nbd --name reader size=8M read-only=true
  reader_uri=$NBD_URI
  assert_equal "$(nbdinfo --json "$reader_uri" | jq '.exports[0].is_read_only')" true
  run qemu-io -f raw -r -c "read -P 0x5a 0 3M" "$reader_uri"
  assert_success
  refute_output --partial 'Pattern verification failed'
  # What the writer writes after the reader attached, in blocks the reader
  # learned as never written, the reader reads once it is flushed; the rest
  # of such blocks read as zeros; no extent is reported as a hole.
  NBD_URI=$writer_uri run qio "write -P 0x6b 4M 64k" flush
  assert_qio_ok
  run qemu-io -f raw -r -c "read -P 0x6b 4M 64k" -c "read -P 0 $((4 * 1024 * 1024 + 65536)) 64k" \
    -c "read -P 0 6M 2M" "$reader_uri"
  assert_success
  refute_output --partial 'Pattern verification failed'
  run nbdinfo --map "$reader_uri"
  assert_success
  assert_equal "$(awk '{print $1, $2, $3}' <<<"$output")" "0 $((8 * 1024 * 1024)) 0"
  stop_nbd "$NBD_PID"

  kill -KILL "$first"
  wait "$first" 2>/dev/null || true
  start_nbd --name third name=vol1 size=8M
  run qio "read -P 0x5a 0 3M" "write -P 0x6b 4M 4k" flush
  assert_qio_ok
}

@test "label: another volume's brick and a shrink are refused and change nothing; a grow is accepted" {
  start_brick b
  start_nbd name=vol1 size=8M
  run qio "write -P 0x11 0 5M" flush
  assert_qio_ok
  stop_nbd
  before=$(brick_sums)

  # The brick holds vol1 at base 0: attaching "vol2" there is refused.
  run start_nbd --name wrong name=vol2 size=8M
  assert_failure
  grep -q "the label on brick 0 ($TARGET) names volume .* 'vol1', not 'vol2'" "$BATS_TEST_TMPDIR/wrong.nbdkit.log" ||
    fail "$(cat "$BATS_TEST_TMPDIR/wrong.nbdkit.log")"
  # A smaller size is a shrink: refused.
  run start_nbd --name small name=vol1 size=6M
  assert_failure
  grep -q "shrinking volume .* 'vol1' from 8.0 MiB to 6.0 MiB is refused" "$BATS_TEST_TMPDIR/small.nbdkit.log" ||
    fail "$(cat "$BATS_TEST_TMPDIR/small.nbdkit.log")"
  assert_equal "$(brick_sums)" "$before"

  # A grow: the label says 16 MiB, one generation later; the data is kept.
  gen=$(ctl read "$LABEL" 0 8192 | od -An -tu8 -j16 -N8 | tr -d ' ')
  gen2=$(ctl read "$LABEL" 4096 4096 | od -An -tu8 -j16 -N8 | tr -d ' ')
  ((gen2 > gen)) && gen=$gen2
  start_nbd name=vol1 size=16M
  assert_equal "$(nbdinfo --size "$NBD_URI")" $((16 * 1024 * 1024))
  run qio "read -P 0x11 0 5M" "write -P 0x22 14M 1M" "read -P 0x22 14M 1M" flush
  assert_qio_ok
  new=$(((gen + 1) % 2 * 4096))
  assert_equal "$(ctl read "$LABEL" "$new" 4096 | od -An -tu8 -j16 -N8 | tr -d ' ')" $((gen + 1))
  assert_equal "$(ctl read "$LABEL" "$new" 4096 | od -An -tu8 -j120 -N8 | tr -d ' ')" $((16 * 1024 * 1024))
}
