#!/usr/bin/env bats
# The brick API end to end: a real pbrick-target on a temporary store, driven
# by pbrickctl over TCP - and, in the system tier, the same file over RDMA
# (PBRICK_TRANSPORT=rdma on soft-RoCE), where one-sided access is checked by
# the NIC: every refusal there is a remote access error (EKEYREJECTED).
# Tests tagged transport-independent (usage, errno mapping, store space) do
# not depend on the transport: the RDMA run leaves them out (scripts/test).

load helpers

M2=$((2 * 1024 * 1024))

@test "stat reports capacity, usage and identity of a new store" {
  start_brick b
  run ctl --json stat
  assert_success
  # 64 MiB: 4 KiB superblock + map rounded to 2 MiB, then 31 slots.
  assert_equal "$(jq .capacity_blocks <<<"$output")" 31
  assert_equal "$(jq .free_blocks <<<"$output")" 31
  assert_equal "$(jq .allocated_blocks <<<"$output")" 0
  assert_equal "$(jq .protocol_version <<<"$output")" 1
  assert_equal "$(jq .block_size <<<"$output")" $M2
  [[ "$(jq -r .uuid <<<"$output")" =~ ^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$ ]]
  run ctl stat
  assert_success
  assert_line --regexp '^capacity +31 blocks \(62.0 MiB\)$'
}

@test "alloc, list, map, unmap and free change the brick's state as documented" {
  start_brick b
  run ctl alloc 0x0
  assert_success
  run ctl alloc 0x200000
  assert_success
  run ctl alloc $((10 * M2))
  assert_success
  run ctl --json list
  assert_success
  assert_equal "$(jq -c '[.extents[] | [.start, .blocks, .mapped]]' <<<"$output")" \
    '[["0x0",2,false],["0x1400000",1,false]]'
  assert_equal "$(jq .allocated_blocks <<<"$output")" 3

  hold_map 0x200000 --ro --shared
  run ctl --json list
  assert_equal "$(jq -c '[.extents[] | [.start, .blocks, .mapped]]' <<<"$output")" \
    '[["0x0",1,false],["0x200000",1,true],["0x1400000",1,false]]'
  run ctl --json stat
  assert_equal "$(jq .mapped_blocks <<<"$output")" 1
  release_map
  run ctl --json list
  assert_equal "$(jq -c '[.extents[] | .mapped] | unique' <<<"$output")" '[false]'

  run ctl free 0x0
  assert_success
  run ctl --json stat
  assert_equal "$(jq .allocated_blocks <<<"$output")" 2
  assert_equal "$(jq .free_blocks <<<"$output")" 29
}

@test "map returns a fresh handle each time, and unmap of an unmapped block is ENOENT" {
  start_brick b
  ctl alloc 0x400000
  run ctl --json map 0x400000
  assert_success
  first=$(jq -r .rkey <<<"$output")
  assert_equal "$(jq -r .flags <<<"$output")" "rw,exclusive"
  assert_equal "$(jq .length <<<"$output")" $M2
  run ctl --json map 0x400000
  second=$(jq -r .rkey <<<"$output")
  [ "$first" != "$second" ]
  run ctl unmap 0x400000
  assert_failure 1
  assert_output --partial 'ENOENT'
}

# bats test_tags=transport-independent
@test "errors: EINVAL, EEXIST, ENOENT, EBUSY, ENOSPC name the errno and the operation" {
  start_brick b --size 12M
  # The brick's EINVAL, with the rule broken (its reply carries no text).
  local op
  for op in alloc free map unmap; do
    run ctl $op 0x201000
    assert_failure 1
    assert_output "pbrickctl: $op 0x201000: ADDR must be a multiple of the 2.0 MiB block: Invalid argument (EINVAL)"
  done
  ctl alloc 0x0
  run ctl alloc 0x0
  assert_failure 1
  assert_output 'pbrickctl: alloc 0x0: File exists (EEXIST)'
  run ctl free 0x200000
  assert_failure 1
  assert_output 'pbrickctl: free 0x200000: No such file or directory (ENOENT)'
  run ctl map 0x200000
  assert_failure 1
  assert_output --partial 'map 0x200000'
  assert_output --partial '(ENOENT)'

  hold_map 0x0
  run ctl free 0x0
  assert_failure 1
  assert_output 'pbrickctl: free 0x0: Device or resource busy (EBUSY)'
  # An exclusive mapping keeps others out, shared or not.
  run ctl map 0x0 --shared --ro
  assert_failure 1
  assert_output --partial '(EBUSY)'
  release_map
  run ctl free 0x0
  assert_success

  # Fill the store (12 MiB: the first 2 MiB hold the superblock and the map).
  run ctl --json stat
  cap=$(jq .capacity_blocks <<<"$output")
  for i in $(seq 0 $((cap - 1))); do ctl alloc $((i * M2)); done
  run ctl alloc $((cap * M2))
  assert_failure 1
  assert_output "pbrickctl: alloc $(printf '0x%x' $((cap * M2))): No space left on device (ENOSPC)"
  ctl free 0x0
  run ctl alloc $((cap * M2))
  assert_success
}

# bats test_tags=transport-independent
@test "usage errors exit 2 and name the flag or argument" {
  start_brick b
  run ctl alloc
  assert_failure 2
  assert_output --partial 'alloc: expected ADDR'
  run ctl alloc 0xZZ
  assert_failure 2
  assert_output --partial "ADDR: invalid value '0xZZ'"
  run ctl frobnicate
  assert_failure 2
  assert_output --partial "unknown command 'frobnicate'"
  run "$CTL_BIN" stat
  assert_failure 2
  assert_output --partial '--target HOST:PORT (or --config FILE --brick NAME) is required'
  run "$CTL_BIN" --target 127.0.0.1:99999 stat
  assert_failure 2
  assert_output --partial 'port must be 1..65535'
  # --timeout takes its value either way, like every other option.
  run ctl --timeout=0 stat
  assert_failure 2
  assert_output --partial '--timeout: milliseconds, 1..3600000'
  run ctl --timeout=5000 stat
  assert_success
  assert_line --regexp '^capacity +'
}

@test "data written through pbrickctl write reads back byte-identical, across blocks" {
  start_brick b
  head -c $((5 * 1024 * 1024 + 12345)) /dev/urandom >"$BATS_TEST_TMPDIR/in"
  run ctl write 0x600000 777 <"$BATS_TEST_TMPDIR/in"
  assert_success
  ctl read 0x600000 777 $((5 * 1024 * 1024 + 12345)) >"$BATS_TEST_TMPDIR/out"
  assert_equal "$(sha "$BATS_TEST_TMPDIR/out")" "$(sha "$BATS_TEST_TMPDIR/in")"
  # The write touched 3 blocks starting at 0x600000 (777 + 5 MiB spills into the third).
  run ctl --json list
  assert_equal "$(jq -c '[.extents[] | [.start, .blocks]]' <<<"$output")" '[["0x600000",3]]'
  # Bytes around the written range are zeros: new blocks never leak old data.
  ctl read 0x600000 0 777 | cmp -s - <(head -c 777 /dev/zero)
}

@test "a freed block's data never reaches its next owner" {
  start_brick b --size 8M
  head -c $M2 /dev/urandom >"$BATS_TEST_TMPDIR/secret"
  ctl write 0x0 0 <"$BATS_TEST_TMPDIR/secret"
  ctl free 0x0
  # The store has 3 slots; allocate them all so the old slot is reused.
  run ctl --json stat
  cap=$(jq .capacity_blocks <<<"$output")
  for i in $(seq 1 "$cap"); do ctl alloc $((i * 0x40000000)); done
  for i in $(seq 1 "$cap"); do
    ctl read $((i * 0x40000000)) 0 2M | cmp - <(head -c $M2 /dev/zero)
  done
}

@test "one-sided READ/WRITE check the rkey, the range and the access mode" {
  local range_err=ERANGE access_err=EACCES
  if [ "$PBRICK_TRANSPORT" = rdma ]; then range_err=EKEYREJECTED access_err=EKEYREJECTED; fi
  start_brick b
  ctl alloc 0x0
  printf 'hello brick' | ctl write 0x0 0
  hold_map 0x0 --ro --shared
  run ctl rread "$HOLD_RKEY" "$HOLD_RADDR" 11
  assert_success
  assert_output 'hello brick'
  # Forged rkey.
  run ctl rread $(((HOLD_RKEY ^ 0x5a5a) & 0xffffffff)) "$HOLD_RADDR" 11
  assert_failure 1
  assert_output --partial '(EKEYREJECTED)'
  # Out of the handle's range: one byte past the end, and before the start.
  run ctl rread "$HOLD_RKEY" $((HOLD_RADDR + M2 - 4)) 5
  assert_failure 1
  assert_output --partial "($range_err)"
  run ctl rread "$HOLD_RKEY" $((HOLD_RADDR - 1)) 1
  assert_failure 1
  assert_output --partial "($range_err)"
  # Read-only handle refuses writes.
  run bash -c "printf x | '$CTL_BIN' --target $TARGET --transport $PBRICK_TRANSPORT rwrite $HOLD_RKEY $HOLD_RADDR"
  assert_failure 1
  assert_output --partial "($access_err)"
  run ctl read 0x0 0 11
  assert_output 'hello brick'
  # Revocation: once the mapping is gone, the rkey is dead.
  release_map
  run ctl rread "$HOLD_RKEY" "$HOLD_RADDR" 11
  assert_failure 1
  assert_output --partial '(EKEYREJECTED)'
  run ctl read 0x0 0 11
  assert_output 'hello brick'
}

@test "malformed input leaves the brick serving other clients" {
  requires python3
  [ "$PBRICK_TRANSPORT" = tcp ] || skip "inherent: garbage.py speaks TCP; over RDMA rdma.bats does this (rdma_probe garbage)"
  start_brick b
  ctl alloc 0x0
  printf 'still here' | ctl write 0x0 0
  run python3 "$BATS_TEST_DIRNAME/garbage.py" 127.0.0.1 "$BRICK_PORT"
  assert_success
  echo "$output"
  run ctl read 0x0 0 10
  assert_success
  assert_output 'still here'
  kill -0 "$BRICK_PID"
  # The brick logged why it closed the bad connections.
  grep -q 'closing connection' "$BATS_TEST_TMPDIR/b.log"
}

@test "a brick with a cluster key refuses clients without it" {
  head -c 32 /dev/urandom | base64 >"$BATS_TEST_TMPDIR/key"
  head -c 32 /dev/urandom | base64 >"$BATS_TEST_TMPDIR/other"
  chmod 600 "$BATS_TEST_TMPDIR/key" "$BATS_TEST_TMPDIR/other"
  start_brick b --key-file "$BATS_TEST_TMPDIR/key"
  run ctl stat
  assert_failure 1
  assert_output --partial 'requires the cluster key'
  assert_output --partial '(EACCES)'
  run ctl --key-file "$BATS_TEST_TMPDIR/other" stat
  assert_failure 1
  assert_output --partial '(EKEYREJECTED)'
  run ctl --key-file "$BATS_TEST_TMPDIR/key" alloc 0x0
  assert_success
  run ctl --key-file "$BATS_TEST_TMPDIR/key" --json stat
  assert_equal "$(jq .allocated_blocks <<<"$output")" 1
  # A raw client that skips AUTH is refused before any operation runs
  # (garbage.py speaks TCP framing only).
  if [ "$PBRICK_TRANSPORT" = tcp ]; then
    run python3 "$BATS_TEST_DIRNAME/garbage.py" --skip-auth 127.0.0.1 "$BRICK_PORT"
    assert_success
    assert_output --partial 'ALLOC before AUTH: status 13'
    run ctl --key-file "$BATS_TEST_TMPDIR/key" --json stat
    assert_equal "$(jq .allocated_blocks <<<"$output")" 1
  fi
  # A world-readable key file is refused by the daemon.
  chmod 644 "$BATS_TEST_TMPDIR/other"
  run timeout 20 "$TARGET_BIN" --store "$BATS_TEST_TMPDIR/x.store" --size 64M --listen 127.0.0.1:0 \
    --key-file "$BATS_TEST_TMPDIR/other"
  assert_failure 1
  assert_output --partial 'chmod 600'
}

# bats test_tags=transport-independent
@test "ALLOC on a full file system takes a free slot that still holds its space, not the one that lost it" {
  # A free slot whose space is gone (its zeroing's fallocate met a full file
  # system; here a hole punched from outside) is the lowest free slot, first
  # in line for every ALLOC; the others still hold theirs.
  local mnt=$BATS_TEST_TMPDIR/fs
  mkdir "$mnt"
  mount -t tmpfs -o size=80M pbrick-test "$mnt" || skip "inherent: needs to mount a tmpfs (run as root)"
  echo "$mnt" >>"$BATS_TEST_TMPDIR/unmount-after"
  "$TARGET_BIN" --store "$mnt/s.store" --size 64M --listen 127.0.0.1:0 --transport tcp \
    --port-file "$BATS_TEST_TMPDIR/full.port" 2>>"$BATS_TEST_TMPDIR/full.log" &
  BRICK_PID=$! BRICK_HOST=127.0.0.1
  wait_for_brick full
  # Slot 0, the lowest, starts at 2 MiB (the superblock and map before it).
  fallocate --punch-hole --offset $((2 << 20)) --length $((2 << 20)) "$mnt/s.store"
  dd if=/dev/zero of="$mnt/filler" bs=1M 2>/dev/null || true
  run df --output=avail -k "$mnt"
  assert_equal "$(echo "$output" | tail -1 | tr -d ' ')" 0
  run "$CTL_BIN" --target "$TARGET" --transport tcp alloc 0
  assert_success
  printf 'still here' | "$CTL_BIN" --target "$TARGET" --transport tcp write 0 100
  run "$CTL_BIN" --target "$TARGET" --transport tcp read 0 100 10
  assert_success
  assert_output 'still here'
  # And the next: the slot without space is tried first each time, then passed over.
  run "$CTL_BIN" --target "$TARGET" --transport tcp alloc $((2 << 20))
  assert_success
}

@test "--transport rdma refuses a store file on a file system that writes pages back, before it listens" {
  # The NIC's writes would bypass the page cache's write-back: PERSIST could
  # not make them durable (kernels before about 6.5 let such pages be registered).
  # The test's directory, or /var/tmp where /tmp is a tmpfs.
  local dir=$BATS_TEST_TMPDIR fs
  case $(stat -f -c %T "$dir") in tmpfs | ramfs | hugetlbfs) dir=/var/tmp ;; esac
  fs=$(stat -f -c %T "$dir")
  case $fs in tmpfs | ramfs | hugetlbfs) skip "inherent: needs a disk file system for the store, $dir is on $fs" ;; esac
  local store=$dir/pbrick-rdma-refusal.$$.store
  echo "$store" >>"$BATS_TEST_TMPDIR/remove-after"
  run timeout 20 "$TARGET_BIN" --store "$store" --size 64M --listen 127.0.0.1:0 --transport rdma
  assert_failure 1
  assert_output --partial "--transport rdma: the store $store is a file on a file system that writes pages back"
  assert_output --partial 'serve a devdax device, or use --transport tcp'
  refute_output --partial 'rdma_create_event_channel'
  # The same store over TCP serves.
  "$TARGET_BIN" --store "$store" --size 64M --listen 127.0.0.1:0 --transport tcp \
    --port-file "$BATS_TEST_TMPDIR/d.port" 2>>"$BATS_TEST_TMPDIR/d.log" &
  BRICK_PID=$! BRICK_HOST=127.0.0.1
  wait_for_brick d
  run "$CTL_BIN" --target "$TARGET" --transport tcp stat
  assert_success
  assert_output --partial 'capacity'
}

@test "--transport rdma on a host without RDMA fails with a clear error; a wrong transport is a usage error" {
  [ "$PBRICK_TRANSPORT" = tcp ] || skip "inherent: checks a host without RDMA, this run is over RDMA"
  [ ! -e /dev/infiniband/rdma_cm ] || skip "inherent: checks a host without RDMA, this one has /dev/infiniband/rdma_cm"
  # A store RDMA may register (tmpfs), so that the listener is what fails.
  local shm_store=/dev/shm/pbrick-tests$BATS_TEST_TMPDIR/r.store
  mkdir -p "${shm_store%/*}"
  run timeout 20 "$TARGET_BIN" --store "$shm_store" --size 64M --listen 127.0.0.1:0 --transport rdma
  rm -rf "/dev/shm/pbrick-tests$BATS_TEST_TMPDIR"
  assert_failure 1
  assert_output --partial 'listen rdma 127.0.0.1:0: rdma_create_event_channel (is the rdma_cm module loaded?)'
  run "$CTL_BIN" --target 127.0.0.1:7100 --transport rdma stat
  assert_failure 1
  assert_output --partial 'rdma connect 127.0.0.1:7100'
  assert_output --partial '(is the rdma_cm module loaded?)'
  run "$CTL_BIN" --target 127.0.0.1:7100 --transport infiniband stat
  assert_failure 2
  assert_output --partial "--transport: unknown transport 'infiniband' (expected tcp or rdma)"
  run timeout 20 "$TARGET_BIN" --store "$BATS_TEST_TMPDIR/r.store" --size 64M --listen 127.0.0.1:0 --persistence fast
  assert_failure 2
  assert_output --partial "--persistence: unknown persistence 'fast' (expected sync-read or rpc)"
}
