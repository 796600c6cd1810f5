#!/usr/bin/env bats
# The gateway end to end: nbdkit with nbdkit-pbrick-plugin.so serving a thin
# provisioned volume of a real brick, driven by NBD clients written elsewhere
# (nbdinfo, nbdcopy, qemu-img, qemu-io, fio) and checked against the data they
# wrote and the brick's own view of its blocks (pbrickctl list).

load helpers
load nbd

M2=$((2 * 1024 * 1024))
WRITER="$BATS_TEST_DIRNAME/nbd_flush_writer.py"

setup() {
  requires nbdkit nbdinfo nbdcopy qemu-img qemu-io fio jq python3 setsid
}

teardown() {
  nbd_teardown
  brick_teardown
}

@test "nbdinfo: a 1 GiB export that can flush, trim, zero, FUA and multi-conn" {
  start_brick b
  start_nbd
  run nbdinfo --json "$NBD_URI"
  assert_success
  export_json=$(jq -c '.exports[0]' <<<"$output")
  assert_equal "$(jq '."export-size"' <<<"$export_json")" $((1024 * 1024 * 1024))
  assert_equal "$(jq -c '[.can_flush, .can_trim, .can_zero, .can_fua, .can_multi_conn]' <<<"$export_json")" \
    '[true,true,true,true,true]'
  assert_equal "$(jq .is_read_only <<<"$export_json")" false
  assert_equal "$(jq .block_size_maximum <<<"$export_json")" $((16 * 1024 * 1024))
  # Connecting and reading never-written space allocated nothing.
  assert_equal "$(data_blocks)" 0
}

@test "nbdcopy: 256 MiB of random data in and back out, 128 blocks allocated from 0x0" {
  start_brick b --size 512M
  start_nbd
  head -c $((256 * 1024 * 1024)) /dev/urandom >"$BATS_TEST_TMPDIR/in"
  run nbdcopy --flush "$BATS_TEST_TMPDIR/in" "$NBD_URI"
  assert_success
  assert_equal "$(data_blocks)" 128
  assert_equal "$(brick_list)" '[["0x0",128]]'
  # The whole export back, over 4 new connections: the data, then zeros.
  run nbdcopy -C 4 "$NBD_URI" "$BATS_TEST_TMPDIR/out"
  assert_success
  assert_equal "$(stat -c %s "$BATS_TEST_TMPDIR/out")" $((1024 * 1024 * 1024))
  assert_equal "$(head -c $((256 * 1024 * 1024)) "$BATS_TEST_TMPDIR/out" | sha256sum | cut -d' ' -f1)" \
    "$(sha "$BATS_TEST_TMPDIR/in")"
  run cmp -n $((768 * 1024 * 1024)) -i $((256 * 1024 * 1024)):0 "$BATS_TEST_TMPDIR/out" /dev/zero
  assert_success
}

@test "qemu-img: convert a 64 MiB image into the export and back, compare" {
  start_brick b --size 256M
  start_nbd
  head -c $((64 * 1024 * 1024)) /dev/urandom >"$BATS_TEST_TMPDIR/in.img"
  run qemu-img convert -n -f raw -O raw "$BATS_TEST_TMPDIR/in.img" "$NBD_URI"
  assert_success
  run qemu-img convert -f raw -O raw "$NBD_URI" "$BATS_TEST_TMPDIR/out.img"
  assert_success
  assert_equal "$(stat -c %s "$BATS_TEST_TMPDIR/out.img")" $((1024 * 1024 * 1024))
  assert_equal "$(head -c $((64 * 1024 * 1024)) "$BATS_TEST_TMPDIR/out.img" | sha256sum | cut -d' ' -f1)" \
    "$(sha "$BATS_TEST_TMPDIR/in.img")"
  # The rest of the export reads as zeros: compare (non-strict) sees them equal.
  run qemu-img compare -f raw -F raw "$BATS_TEST_TMPDIR/in.img" "$NBD_URI"
  assert_success
  assert_output --partial 'Images are identical'
  # And it notices a difference: one byte changed in the middle.
  cp "$BATS_TEST_TMPDIR/in.img" "$BATS_TEST_TMPDIR/other.img"
  printf '\x00\x01' | dd of="$BATS_TEST_TMPDIR/other.img" bs=1 seek=$((33 * 1024 * 1024 + 7)) conv=notrunc status=none
  run qemu-img compare -f raw -F raw "$BATS_TEST_TMPDIR/other.img" "$NBD_URI"
  assert_failure 1
  assert_output --partial 'Content mismatch at offset 34603008'
  assert_equal "$(brick_list)" '[["0x0",32]]'
}

@test "qemu-io: patterns at unaligned offsets and across blocks; discard and write -z read back as zeros" {
  start_brick b
  start_nbd
  # Unaligned, straddling the 2 MiB boundary, a whole block, the last bytes.
  run qio "write -P 0xab 0 512" \
    "write -P 0xac 1000 3001" \
    "write -P 0xad $((M2 - 5000)) 10000" \
    "write -P 0xae $((3 * M2)) $M2" \
    "write -P 0xaf $((5 * M2 - 1)) $((M2 + 2))" \
    "write -P 0xb0 $((1024 * 1024 * 1024 - 4097)) 4097" \
    flush
  assert_qio_ok
  # Through a new connection: everything, and the zeros between.
  run qio "read -P 0xab 0 512" \
    "read -P 0 512 488" \
    "read -P 0xac 1000 3001" \
    "read -P 0 4001 $((M2 - 5000 - 4001))" \
    "read -P 0xad $((M2 - 5000)) 10000" \
    "read -P 0 $((M2 + 5000)) $((2 * M2 - 5000))" \
    "read -P 0xae $((3 * M2)) $M2" \
    "read -P 0 $((4 * M2)) $((M2 - 1))" \
    "read -P 0xaf $((5 * M2 - 1)) $((M2 + 2))" \
    "read -P 0 $((6 * M2 + 1)) 4096" \
    "read -P 0xb0 $((1024 * 1024 * 1024 - 4097)) 4097"
  assert_qio_ok
  assert_equal "$(brick_list)" '[["0x0",2],["0x600000",4],["0x3fe00000",1]]'
  # Overwrite inside the straddling write, FUA.
  run qio "write -f -P 0xc1 $((M2 - 100)) 200" \
    "read -P 0xad $((M2 - 5000)) 4900" \
    "read -P 0xc1 $((M2 - 100)) 200" \
    "read -P 0xad $((M2 + 100)) 4900"
  assert_qio_ok
  # Discard of a whole block: zeros, and the brick freed it.
  run qio "discard $((3 * M2)) $M2" "read -P 0 $((3 * M2)) $M2"
  assert_qio_ok
  assert_equal "$(brick_list)" '[["0x0",2],["0x800000",3],["0x3fe00000",1]]'
  # write -z of part of a block: zeros there, the pattern around it.
  run qio "write -z $((5 * M2 + 4096)) 65536" \
    "read -P 0xaf $((5 * M2 - 1)) 4097" \
    "read -P 0 $((5 * M2 + 4096)) 65536" \
    "read -P 0xaf $((5 * M2 + 4096 + 65536)) $((M2 + 1 - 4096 - 65536))"
  assert_qio_ok
  # Unaligned discard across the 2 MiB boundary: zero-filled, nothing freed.
  run qio "discard $((M2 - 3000)) 6000" \
    "read -P 0xad $((M2 - 5000)) 2000" \
    "read -P 0 $((M2 - 3000)) 6000" \
    "read -P 0xad $((M2 + 3000)) 2000" \
    flush
  assert_qio_ok
  assert_equal "$(brick_list)" '[["0x0",2],["0x800000",3],["0x3fe00000",1]]'
  # write -z over whole blocks, with partial ends (-u: may unmap).
  run qio "write -z -u $((5 * M2 - 1)) $((M2 + 2))" "read -P 0 $((5 * M2 - 1)) $((M2 + 2))" \
    "read -P 0 $((4 * M2)) $((3 * M2))"
  assert_qio_ok
  assert_equal "$(brick_list)" '[["0x0",2],["0x800000",1],["0xc00000",1],["0x3fe00000",1]]'
}

# fio_verify BS IODEPTH SIZE: random writes with crc32c headers, verified in
# the same run and again by a fresh fio (verify_only) on new connections.
fio_verify() {
  local bs=$1 depth=$2 size=$3 out="$BATS_TEST_TMPDIR/fio.json"
  local common=(--name=pbrick --ioengine=nbd --uri="$NBD_URI" --rw=randwrite --bs="$bs" --iodepth="$depth"
    --size="$size" --verify=crc32c --verify_fatal=1 --verify_state_save=0 --output-format=json --output="$out")
  run fio "${common[@]}" --do_verify=1
  assert_success
  local bytes=$(($(numfmt --from=iec "$size")))
  assert_equal "$(jq '.jobs[0].error' "$out")" 0
  assert_equal "$(jq '.jobs[0].write.io_bytes' "$out")" "$bytes"
  assert_equal "$(jq '.jobs[0].read.io_bytes' "$out")" "$bytes"
  refute_output --partial 'verify'
  run fio "${common[@]}" --verify_only=1
  assert_success
  assert_equal "$(jq '.jobs[0].error' "$out")" 0
  assert_equal "$(jq '.jobs[0].read.io_bytes' "$out")" "$bytes"
  refute_output --partial 'verify'
}

@test "fio nbd engine: randwrite + crc32c verify, bs=4k iodepth=1" {
  start_brick b
  start_nbd
  fio_verify 4k 1 24M
}

@test "fio nbd engine: randwrite + crc32c verify, bs=4k iodepth=32" {
  start_brick b
  start_nbd
  fio_verify 4k 32 48M
}

@test "fio nbd engine: randwrite + crc32c verify, bs=128k iodepth=1" {
  start_brick b
  start_nbd
  fio_verify 128k 1 48M
}

@test "fio nbd engine: randwrite + crc32c verify, bs=128k iodepth=32" {
  start_brick b --size 128M
  start_nbd
  fio_verify 128k 32 64M
  # The check is real: 4 KiB changed behind fio's back fail the verification.
  run qio "write -P 0x00 $((5 * M2 + 8192)) 4k"
  assert_qio_ok
  run fio --name=pbrick --ioengine=nbd --uri="$NBD_URI" --rw=randwrite --bs=128k --iodepth=32 --size=64M \
    --verify=crc32c --verify_state_save=0 --verify_only=1 --output-format=json --output="$BATS_TEST_TMPDIR/bad.json"
  assert_failure
  assert_output --partial "verify failed at file pbrick.0.0 offset $((5 * M2))"
  [ "$(jq '.jobs[0].error' "$BATS_TEST_TMPDIR/bad.json")" != 0 ]
}

@test "poll-us=: verified 4k QD1 and QD32 I/O with bounded polling; a bound above 1000 is refused" {
  start_brick b
  start_nbd poll-us=50
  fio_verify 4k 1 8M
  fio_verify 4k 32 8M
  stop_nbd
  run start_nbd --name toolong poll-us=1001
  assert_failure
  assert_output --partial 'pbrick: poll-us=1001: expected a number in 0..1000'
}

@test "poll_us: from the cluster file, unless poll-us= says otherwise" {
  start_brick b
  one_brick_cluster "$BATS_TEST_TMPDIR/cluster.yaml" ", poll_us: 40"
  # The plugin reports its polling at unload (nbdkit -v): only when it polled.
  PBRICK_NBDKIT_VERBOSE=1 start_nbd config="$BATS_TEST_TMPDIR/cluster.yaml" volume=vol0
  fio_verify 4k 1 4M
  stop_nbd
  grep -q 'pbrick: poll-us=40: [0-9]* waits ended by polling' "$NBD_LOG" ||
    fail "no poll-us=40 report at unload: $(grep -i poll "$NBD_LOG")"
  PBRICK_NBDKIT_VERBOSE=1 start_nbd --name off config="$BATS_TEST_TMPDIR/cluster.yaml" volume=vol0 poll-us=0
  fio_verify 4k 1 4M
  stop_nbd
  run grep -c 'waits ended by polling' "$NBD_LOG"
  assert_output 0
}

@test "chained_syncs: from the cluster file, unless chained-syncs= says otherwise" {
  start_brick b
  one_brick_cluster "$BATS_TEST_TMPDIR/cluster.yaml" ", chained_syncs: false"
  # A flush after every write: where chaining is on, the syncs go with the
  # writes; the plugin counts both kinds at unload.
  local cmds=() i
  for i in $(seq 0 15); do cmds+=("write -P $((i + 1)) $((i * 4096)) 4k" flush); done
  start_nbd config="$BATS_TEST_TMPDIR/cluster.yaml" volume=vol0
  run qio "${cmds[@]}"
  assert_qio_ok
  stop_nbd
  grep -Eq '(^|[^0-9])0 syncs chained to lone writes, [1-9][0-9]* syncs sent for FLUSH/FUA' "$NBD_LOG" ||
    fail "chained_syncs: false: $(grep -i 'syncs' "$NBD_LOG")"
  start_nbd --name on config="$BATS_TEST_TMPDIR/cluster.yaml" volume=vol0 chained-syncs=true
  run qio "${cmds[@]}" "read -P 1 0 4k" "read -P 16 $((15 * 4096)) 4k"
  assert_qio_ok
  stop_nbd
  grep -Eq '(^|[^0-9])[1-9][0-9]* syncs chained to lone writes' "$NBD_LOG" ||
    fail "chained-syncs=true over the file's false: $(grep -i 'syncs' "$NBD_LOG")"
}

@test "a client that never asked for block size limits: a 40 MiB write and read, one request each" {
  start_brick b --size 128M
  start_nbd
  # nbdkit hands such a request (up to 64 MiB) to the plugin whole; above
  # the 16 MiB it advertises, the plugin sends it in parts.
  run python3 "$WRITER" large "$NBD_SOCK" --bytes $((40 * 1024 * 1024 + 4097))
  assert_success
  assert_output "wrote and read back $((40 * 1024 * 1024 + 4097)) bytes in one request each"
}

@test "thin provisioning: writes allocate their blocks only, discard frees them, a zero without MAY_TRIM provisions" {
  start_brick b
  start_nbd
  run qio "write -P 0x11 0 $M2" "write -P 0x22 10M 64k" "write -P 0x33 800M 4k" flush
  assert_qio_ok
  assert_equal "$(data_blocks)" 3
  assert_equal "$(brick_list)" '[["0x0",1],["0xa00000",1],["0x32000000",1]]'
  # Reading never-written space, and zeroing it where holes may stay (-u:
  # MAY_TRIM), allocates nothing.
  run qio "read -P 0 $M2 8M" "read -P 0 512M $M2" "write -z -u 100M 4M" "write -z -u $((200 * 1024 * 1024 + 4096)) 8k" \
    "discard 300M 4k" "read -P 0 100M 4M" "read -P 0 200M $M2"
  assert_qio_ok
  assert_equal "$(brick_list)" '[["0x0",1],["0xa00000",1],["0x32000000",1]]'
  # Discard of one whole block frees it; it reads as zeros; the others stay.
  run qio "discard 10M $M2" "read -P 0 10M $M2" "read -P 0x11 0 $M2" "read -P 0x33 800M 4k"
  assert_qio_ok
  assert_equal "$(data_blocks)" 2
  assert_equal "$(brick_list)" '[["0x0",1],["0x32000000",1]]'
  # Writing there again allocates it again, with only the new data.
  run qio "write -P 0x44 $((10 * 1024 * 1024 + 512)) 512" "read -P 0 10M 512" \
    "read -P 0x44 $((10 * 1024 * 1024 + 512)) 512" "read -P 0 $((10 * 1024 * 1024 + 1024)) $((M2 - 1024))"
  assert_qio_ok
  assert_equal "$(brick_list)" '[["0x0",1],["0xa00000",1],["0x32000000",1]]'
  # A discard over 3 blocks with partial ends frees only the middle one.
  run qio "write -P 0x55 20M 6M" "discard 21M 4M" "read -P 0x55 20M 1M" "read -P 0 21M 4M" "read -P 0x55 25M 1M"
  assert_qio_ok
  assert_equal "$(brick_list)" '[["0x0",1],["0xa00000",1],["0x1400000",1],["0x1800000",1],["0x32000000",1]]'
  # Zeroing without -u (NO_HOLE: the range must stay provisioned, so later
  # writes cannot fail for space) writes zeros: an allocated block stays, the
  # holes are allocated, and all of it reads as zeros.
  run qio "write -z 20M $M2" "write -z 100M 4M" "read -P 0 20M $M2" "read -P 0 100M 4M"
  assert_qio_ok
  assert_equal "$(brick_list)" \
    '[["0x0",1],["0xa00000",1],["0x1400000",1],["0x1800000",1],["0x6400000",2],["0x32000000",1]]'
}

@test "base=: two volumes at different base addresses on one brick are independent" {
  start_brick b
  start_nbd --name a size=64M
  uri_a=$NBD_URI
  start_nbd --name v size=64M base=0x40000000
  uri_b=$NBD_URI
  run qemu-io -f raw "$uri_a" -c "write -P 0xa1 0 64k" -c "write -P 0xa2 $((3 * M2 - 4096)) 8192"
  assert_qio_ok
  # Nothing of it shows in the other volume.
  run qemu-io -f raw "$uri_b" -c "read -P 0 0 64k" -c "read -P 0 $((3 * M2 - 4096)) 8192"
  assert_qio_ok
  run qemu-io -f raw "$uri_b" -c "write -P 0xb1 0 64k" -c "write -P 0xb2 $((3 * M2 - 4096)) 8192" \
    -c "write -P 0xb3 $((31 * M2)) $M2"
  assert_qio_ok
  run qemu-io -f raw "$uri_a" -c "read -P 0xa1 0 64k" -c "read -P 0xa2 $((3 * M2 - 4096)) 8192" \
    -c "read -P 0 $((31 * M2)) $M2"
  assert_qio_ok
  run qemu-io -f raw "$uri_b" -c "read -P 0xb1 0 64k" -c "read -P 0xb2 $((3 * M2 - 4096)) 8192" \
    -c "read -P 0xb3 $((31 * M2)) $M2"
  assert_qio_ok
  assert_equal "$(brick_list)" \
    '[["0x0",1],["0x400000",2],["0x40000000",1],["0x40400000",2],["0x43e00000",1]]'
  # A discard in one frees its block only.
  run qemu-io -f raw "$uri_b" -c "discard 0 $M2" -c "read -P 0 0 $M2"
  assert_qio_ok
  run qemu-io -f raw "$uri_a" -c "read -P 0xa1 0 64k"
  assert_qio_ok
  assert_equal "$(brick_list)" '[["0x0",1],["0x400000",2],["0x40400000",2],["0x43e00000",1]]'
}

@test "records acknowledged by a completed FLUSH survive kill -9 of the brick (6 rounds)" {
  start_brick b --size 128M
  start_nbd timeout=20000
  local records=1500 round acked wpid rc
  for round in 1 2 3 4 5 6; do
    ack="$BATS_TEST_TMPDIR/ack.$round"
    : >"$ack"
    python3 "$WRITER" write "$NBD_SOCK" --round "$round" --records $records --flush-every 8 \
      --ack-log "$ack" >"$BATS_TEST_TMPDIR/writer.$round" 2>&1 3>&- &
    wpid=$!
    # Kill the brick mid-run, a little later each round, at a random point
    # between flushes.
    for _ in $(seq 1 400); do
      [ "$(wc -l <"$ack")" -ge $((4 * round)) ] && break
      kill -0 "$wpid" 2>/dev/null || break
      sleep 0.01
    done
    sleep "0.0$((RANDOM % 10))"
    kill -KILL "$BRICK_PID"
    wait "$BRICK_PID" 2>/dev/null || true
    # Odd rounds: the client dies with the brick; what its completed flushes
    # acknowledged must be there. Even rounds: it carries on through nbdkit.
    if ((round % 2)); then
      kill -KILL "$wpid"
      wait "$wpid" 2>/dev/null || true
    fi
    acked=$(tail -n 1 "$ack")
    echo "round $round: brick killed after ${acked:-0} acknowledged records" >&3
    [ "${acked:-0}" -gt 0 ] && [ "$acked" -lt $records ] || {
      cat "$BATS_TEST_TMPDIR/writer.$round"
      false
    }
    sleep 0.3
    restart_brick b --size 128M
    if ((round % 2 == 0)); then
      rc=0
      wait "$wpid" || rc=$?
      cat "$BATS_TEST_TMPDIR/writer.$round"
      assert_equal "$rc" 0
      assert_equal "$(tail -n 1 "$ack")" $records
    fi
    acked=$(tail -n 1 "$ack")
    run python3 "$WRITER" verify "$NBD_SOCK" --round "$round" --records "$acked"
    assert_success
    assert_output "verified $acked records"
    kill -0 "$NBD_PID"
  done
  # 1500 records of 64 KiB from 0x0: blocks 0..46.
  assert_equal "$(brick_list)" '[["0x0",47]]'
}

@test "the brick restarted under live fio I/O: fio finishes, verified, no errors" {
  start_brick b --size 256M
  start_nbd timeout=20000
  out="$BATS_TEST_TMPDIR/fio.json"
  common=(--name=live --ioengine=nbd --uri="$NBD_URI" --rw=randwrite --bs=16k --iodepth=16 --size=96M
    --verify=crc32c --verify_fatal=1 --verify_state_save=0 --output-format=json)
  fio "${common[@]}" --do_verify=1 --output="$out" >"$BATS_TEST_TMPDIR/fio.log" 2>&1 3>&- &
  fpid=$!
  # Once fio is writing, stop the brick for 2 s.
  for _ in $(seq 1 200); do
    [ "$(data_blocks)" -ge 4 ] && break
    sleep 0.02
  done
  stop_brick TERM
  kill -0 "$fpid" # fio was still running when the brick went away
  sleep 2
  kill -0 "$fpid" # and it waited for the brick
  restart_brick b --size 256M
  rc=0
  wait "$fpid" || rc=$?
  cat "$BATS_TEST_TMPDIR/fio.log"
  assert_equal "$rc" 0
  assert_equal "$(jq '.jobs[0].error' "$out")" 0
  assert_equal "$(jq '.jobs[0].write.io_bytes' "$out")" $((96 * 1024 * 1024))
  assert_equal "$(jq '.jobs[0].read.io_bytes' "$out")" $((96 * 1024 * 1024))
  refute grep -qi 'verify' "$BATS_TEST_TMPDIR/fio.log"
  # The data is there for a new client too.
  run fio "${common[@]}" --verify_only=1 --output="$out"
  assert_success
  assert_equal "$(jq '.jobs[0].error' "$out")" 0
  assert_equal "$(jq '.jobs[0].read.io_bytes' "$out")" $((96 * 1024 * 1024))
  # And nbdcopy in a loop across another restart (SIGKILL this time).
  head -c $((32 * 1024 * 1024)) /dev/urandom >"$BATS_TEST_TMPDIR/in"
  (for i in 1 2 3 4 5 6; do nbdcopy "$BATS_TEST_TMPDIR/in" "$NBD_URI" || exit 1; done) 3>&- &
  cpid=$!
  sleep 0.5
  stop_brick KILL
  sleep 1
  restart_brick b --size 256M
  rc=0
  wait "$cpid" || rc=$?
  assert_equal "$rc" 0
  nbdcopy "$NBD_URI" "$BATS_TEST_TMPDIR/out"
  assert_equal "$(head -c $((32 * 1024 * 1024)) "$BATS_TEST_TMPDIR/out" | sha256sum | cut -d' ' -f1)" \
    "$(sha "$BATS_TEST_TMPDIR/in")"
}

@test "a brick gone for longer than timeout= fails I/O with EIO; nbdkit lives on and serves when it returns" {
  start_brick b
  start_nbd timeout=1500
  run qio "write -P 0x5a 0 64k" flush
  assert_qio_ok
  stop_brick TERM
  # A read of written data, a write needing an allocation, a write to a mapped
  # block, a flush: each fails after about timeout.
  SECONDS=0
  run qio "read -P 0x5a 0 64k"
  assert_failure
  assert_output --partial 'Input/output error'
  run qio "write -P 0x77 4M 4k"
  assert_failure
  assert_output --partial 'Input/output error'
  run qio "write -P 0x77 0 4k"
  assert_failure
  assert_output --partial 'Input/output error'
  run qio flush
  assert_failure
  grep -q 'flush: brick .* unreachable' "$NBD_LOG"
  # (Not nbdcopy: on its first error it hangs up with requests in flight,
  # which makes nbdkit < 1.33.10 abort, see nbdkit commit 9d82aa4f.)
  run qio "read 0 8M"
  assert_failure
  assert_output --partial 'Input/output error'
  ((SECONDS < 30))
  # Reads of never-written blocks need no brick.
  run qio "read -P 0 8M 64k"
  assert_success
  refute_output --partial 'Pattern verification failed'
  kill -0 "$NBD_PID"
  grep -q 'unreachable for 1500 ms' "$NBD_LOG"
  restart_brick b
  # What was flushed before is there (outside the failed writes, whose ranges
  # are undefined now), and new I/O works.
  run qio "read -P 0x5a 4k 60k" "write -P 0x77 4M 4k" "read -P 0x77 4M 4k" flush
  assert_qio_ok
  run nbdcopy "$NBD_URI" null:
  assert_success
  assert_equal "$(brick_list)" '[["0x0",1],["0x400000",1]]'
}

@test "a keyed brick: key-file= works; without it or with a wrong key nbdkit says why" {
  head -c 32 /dev/urandom | base64 >"$BATS_TEST_TMPDIR/key"
  head -c 32 /dev/urandom | base64 >"$BATS_TEST_TMPDIR/other"
  chmod 600 "$BATS_TEST_TMPDIR/key" "$BATS_TEST_TMPDIR/other"
  start_brick b --key-file "$BATS_TEST_TMPDIR/key"
  start_nbd key-file="$BATS_TEST_TMPDIR/key"
  run qio "write -P 0x3c 1M 2M" "read -P 0x3c 1M 2M" flush
  assert_qio_ok
  run ctl --key-file "$BATS_TEST_TMPDIR/key" --json list
  assert_equal "$(jq -c "$DATA_EXTENTS | map([.start, .blocks])" <<<"$output")" '[["0x0",2]]'
  stop_nbd
  # Without a key: nbdkit does not start, and its log names the reason.
  run start_nbd --name nokey
  assert_failure
  assert_output --partial 'requires the cluster key'
  assert_output --partial 'EACCES'
  [ ! -S "$BATS_TEST_TMPDIR/nokey.sock" ] || ! nbdinfo --can connect "nbd+unix:///?socket=$BATS_TEST_TMPDIR/nokey.sock"
  # With the wrong key, likewise.
  run start_nbd --name wrong key-file="$BATS_TEST_TMPDIR/other"
  assert_failure
  assert_output --partial 'does not know our cluster key'
  assert_output --partial 'EKEYREJECTED'
  # A missing key file.
  run start_nbd --name missing key-file="$BATS_TEST_TMPDIR/nonexistent"
  assert_failure
  assert_output --partial 'key-file'
  assert_output --partial 'No such file'
  # The right key still works, and the data is there.
  start_nbd --name again key-file="$BATS_TEST_TMPDIR/key"
  run qio "read -P 0x3c 1M 2M" "read -P 0 0 1M"
  assert_qio_ok
}

@test "unix socket: a brick on this host serves the plugin and pbrickctl on unix:PATH, owner-only, gone at stop" {
  [ "$PBRICK_TRANSPORT" = tcp ] || skip "inherent: a unix socket serves the TCP transport only"
  local sock="$BATS_TEST_TMPDIR/b.sock"
  # What the brick refuses before it touches a store: a relative path, RDMA
  # on a unix socket, a port file for an address without a port.
  run timeout 20 "$TARGET_BIN" --store "$(store_dir)/b.store" --size 64M --listen unix:b.sock
  assert_failure 2
  assert_output --partial "--listen: invalid address 'unix:b.sock': expected unix:/ABSOLUTE/PATH"
  run timeout 20 "$TARGET_BIN" --store "$(store_dir)/b.store" --size 64M --listen "unix:$sock" --transport rdma
  assert_failure 2
  assert_output --partial "--listen unix:$sock: a unix socket is for --transport tcp; rdma needs HOST:PORT"
  run timeout 20 "$TARGET_BIN" --store "$(store_dir)/b.store" --size 64M --listen "unix:$sock" --port-file "$BATS_TEST_TMPDIR/p"
  assert_failure 2
  assert_output --partial "--port-file: --listen unix:$sock is a unix socket and has no port"
  [ ! -e "$(store_dir)/b.store" ]

  "$TARGET_BIN" --store "$(store_dir)/b.store" --size 128M --listen "unix:$sock" 2>>"$BATS_TEST_TMPDIR/b.log" &
  BRICK_PID=$!
  echo "$BRICK_PID" >>"$BATS_TEST_TMPDIR/pids"
  local i
  for i in $(seq 1 200); do
    grep -q "serving on unix:$sock" "$BATS_TEST_TMPDIR/b.log" && break
    kill -0 "$BRICK_PID" || { cat "$BATS_TEST_TMPDIR/b.log" >&2; false; }
    sleep 0.05
  done
  assert_equal "$(stat -c '%F %a' "$sock")" "socket 600"
  TARGET="unix:$sock"
  start_nbd size=64M
  head -c $((24 * 1024 * 1024 + 4096)) /dev/urandom >"$BATS_TEST_TMPDIR/in"
  run nbdcopy --flush "$BATS_TEST_TMPDIR/in" "$NBD_URI"
  assert_success
  run nbdcopy "$NBD_URI" "$BATS_TEST_TMPDIR/out"
  assert_success
  assert_equal "$(head -c $((24 * 1024 * 1024 + 4096)) "$BATS_TEST_TMPDIR/out" | sha256sum | cut -d' ' -f1)" \
    "$(sha "$BATS_TEST_TMPDIR/in")"
  assert_equal "$(data_blocks)" 13
  stop_nbd
  stop_brick
  [ ! -e "$sock" ]

  # The same brick from a cluster file whose brick says socket:, reached by
  # pbrickctl --config: the data the plugin wrote.
  cat >"$BATS_TEST_TMPDIR/cluster.yaml" <<EOF
cluster: {name: t}
bricks:
  - {name: b0, host: 127.0.0.1, socket: $sock, store: {path: $(store_dir)/b.store, size: 128M}}
volumes:
  - {name: vol0, size: 64M, brick: b0, base: 0x0}
EOF
  "$TARGET_BIN" --config "$BATS_TEST_TMPDIR/cluster.yaml" --brick b0 2>>"$BATS_TEST_TMPDIR/b.log" &
  BRICK_PID=$!
  echo "$BRICK_PID" >>"$BATS_TEST_TMPDIR/pids"
  local ctl_config=("$CTL_BIN" --config "$BATS_TEST_TMPDIR/cluster.yaml" --brick b0)
  for i in $(seq 1 200); do
    "${ctl_config[@]}" stat >/dev/null 2>&1 && break
    kill -0 "$BRICK_PID" || { cat "$BATS_TEST_TMPDIR/b.log" >&2; false; }
    sleep 0.05
  done
  assert_equal "$(stat -c '%F %a' "$sock")" "socket 600"
  "${ctl_config[@]}" read 0x200000 4096 4096 >"$BATS_TEST_TMPDIR/back"
  cmp "$BATS_TEST_TMPDIR/back" <(dd if="$BATS_TEST_TMPDIR/in" bs=4096 skip=513 count=1 status=none)
}
