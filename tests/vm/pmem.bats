#!/usr/bin/env bats
# The brick on persistent memory: an NVDIMM emulated by qemu (tests/vm/run with
# PBRICK_VM_STORE=fsdax or devdax; init makes the namespace). In the VM of
# tests/vm/run only; without an NVDIMM (PBRICK_VM_STORE=file) they skip.
#   1. the brick maps the store as persistent memory: its log says so (device-dax,
#      or a DAX file mapped with MAP_SYNC), the kernel agrees (/proc/PID/smaps:
#      the mapping of a DAX file has the synchronous-fault flag "sf"), and
#      `pbrickctl stat` reports the store as pmem
#   2. data written to the store survives kill -9 of the brick: a new brick on
#      the same store serves it back (checksums)
#   3. the platform's persistence domain (the NVDIMM region's sysfs
#      persistence_domain: cpu_cache under tests/vm/run's default eADR
#      platform) reaches the brick, and over RDMA a brick started without
#      --persistence sync-read serves a sync-read gateway on a cpu_cache
#      domain (data through ublk and its FLUSH, checksums) and refuses one on
#      any other
#   4. over soft-RoCE, declaring DDIO off (--persistence sync-read) does not
#      make sync-read durable on pmem: served on cpu_cache, refused on ADR
#      (PBRICK_VM_PMEM_PERSISTENCE=mem-ctrl, a boot of its own in scripts/test)
# The ublk tests (ublk.bats) run on the same store in the same boot.

load helpers

M=$((1024 * 1024))
GW_BIN="$PBRICK_BIN_DIR/gateway/pbrick-gateway"

setup() {
  require_vm
  case ${PBRICK_VM_STORE:-file} in
  fsdax | devdax) ;;
  *) skip "needs the emulated NVDIMM: tests/vm/run with PBRICK_VM_STORE=fsdax or devdax" ;;
  esac
  vm_store pmem 256M
  BRICK_HOST=$(brick_host)
}

teardown() {
  if [ -n "${GW_PID:-}" ]; then
    kill -TERM "$GW_PID" 2>/dev/null
    wait "$GW_PID" 2>/dev/null
  fi
  brick_teardown
  vm_store_remove
}

# pmem_brick_up: pbrick-target on the NVDIMM store ($VM_STORE); sets BRICK_PID, TARGET.
pmem_brick_up() {
  rm -f "$BATS_TEST_TMPDIR/pmem.port"
  "$TARGET_BIN" "${VM_STORE_ARGS[@]}" --listen "$BRICK_HOST:0" --transport "$PBRICK_TRANSPORT" \
    --port-file "$BATS_TEST_TMPDIR/pmem.port" 2>>"$BATS_TEST_TMPDIR/pmem.log" &
  BRICK_PID=$!
  wait_for_brick pmem
}

# wait_serving: until the brick's log has its "serving on" line, which says
# how it serves sync-read (written after the port file).
wait_serving() {
  local _
  for _ in $(seq 1 200); do
    grep -q 'serving on ' "$BATS_TEST_TMPDIR/pmem.log" && return 0
    sleep 0.05
  done
  echo "no 'serving on' line in the brick's log" >&2
  return 1
}

# store_vmflags PID PATH: the VmFlags of PID's mapping of PATH (smaps).
store_vmflags() {
  awk -v path="$2" '
    /^[0-9a-f]+-[0-9a-f]+ / { in_store = ($NF == path) }
    in_store && /^VmFlags:/ { sub(/^VmFlags: */, ""); print; exit }' "/proc/$1/smaps"
}

@test "pmem: the brick maps its NVDIMM store as persistent memory; stat reports pmem" {
  pmem_brick_up
  case $PBRICK_VM_STORE in
  fsdax)
    # The file system really is DAX, and the kernel maps the store synchronously.
    awk -v d="$PBRICK_VM_PMEM_DIR" '$2 == d && $3 == "ext4" {print $4}' /proc/mounts | grep -qE '(^|,)dax(=always)?(,|$)'
    grep -q "mapped store $VM_STORE: .*persistent memory, DAX file mapped with MAP_SYNC" "$BATS_TEST_TMPDIR/pmem.log"
    flags=$(store_vmflags "$BRICK_PID" "$VM_STORE")
    echo "# VmFlags of $VM_STORE: $flags" >&3
    [[ " $flags " == *" sf "* ]]
    ;;
  devdax)
    grep -q "mapped store $VM_STORE: .*persistent memory, device-dax" "$BATS_TEST_TMPDIR/pmem.log"
    [ -n "$(store_vmflags "$BRICK_PID" "$VM_STORE")" ]
    ;;
  esac
  run grep -E 'page cache|PMEM_IS_PMEM_FORCE' "$BATS_TEST_TMPDIR/pmem.log"
  assert_failure 1

  run ctl stat
  assert_success
  assert_line --regexp '^store +pmem$'
  run ctl --json stat
  assert_success
  assert_equal "$(jq -r .store <<<"$output")" pmem
  # The store is the whole device on devdax: superblock and map take the first
  # 2 MiB slot, the tail that does not fill a slot is unused.
  if [ "$PBRICK_VM_STORE" = devdax ]; then
    local dev_size
    dev_size=$(cat "/sys/bus/dax/devices/${VM_STORE#/dev/}/size")
    assert_equal "$(jq -r .capacity_blocks <<<"$output")" $((dev_size / (2 * M) - 1))
  else
    assert_equal "$(jq -r .capacity_blocks <<<"$output")" $((256 / 2 - 1))
  fi
}

@test "pmem: data on the NVDIMM store survives kill -9 of the brick (checksums)" {
  pmem_brick_up
  # 5 MiB across three blocks (0x400000 + 1 MiB .. 0xa00000), and a block far away.
  head -c $((5 * M)) /dev/urandom >"$BATS_TEST_TMPDIR/a"
  head -c $((2 * M)) /dev/urandom >"$BATS_TEST_TMPDIR/b"
  ctl write 0x400000 $((1 * M)) <"$BATS_TEST_TMPDIR/a"
  ctl write 0x6000000 0 <"$BATS_TEST_TMPDIR/b"
  stop_brick KILL
  pmem_brick_up
  ctl read 0x400000 $((1 * M)) $((5 * M)) >"$BATS_TEST_TMPDIR/a.back"
  ctl read 0x6000000 0 $((2 * M)) >"$BATS_TEST_TMPDIR/b.back"
  assert_equal "$(sha "$BATS_TEST_TMPDIR/a.back")" "$(sha "$BATS_TEST_TMPDIR/a")"
  assert_equal "$(sha "$BATS_TEST_TMPDIR/b.back")" "$(sha "$BATS_TEST_TMPDIR/b")"
  # The blocks are those written, no more.
  run ctl --json list
  assert_success
  assert_equal "$(jq -c '[.extents[] | [.start, .blocks]]' <<<"$output")" '[["0x400000",3],["0x6000000",1]]'
  grep -q "persistent memory" "$BATS_TEST_TMPDIR/pmem.log"
}

@test "pmem: the NVDIMM's persistence domain reaches the brick; on cpu_cache it serves sync-read over RDMA" {
  local regions domain
  regions=(/sys/bus/nd/devices/region*/persistence_domain)
  [ -r "${regions[0]}" ] || { echo "no NVDIMM region in sysfs" >&2; false; }
  domain=$(cat "${regions[0]}")
  echo "# the platform says: $domain (PBRICK_VM_PMEM_PERSISTENCE=${PBRICK_VM_PMEM_PERSISTENCE:-cpu})" >&3
  case ${PBRICK_VM_PMEM_PERSISTENCE:-cpu} in
  cpu) assert_equal "$domain" cpu_cache ;;
  mem-ctrl) assert_equal "$domain" memory_controller ;;
  esac
  pmem_brick_up # without --persistence: rpc, no DDIO declaration
  wait_serving
  grep -q "mapped store $VM_STORE: .*persistent memory.*, persistence domain $domain" "$BATS_TEST_TMPDIR/pmem.log"
  if [ "$PBRICK_TRANSPORT" != rdma ]; then
    grep -q "sync-read served (over TCP the brick persists before it answers)" "$BATS_TEST_TMPDIR/pmem.log"
    return 0
  fi
  local dev out=$BATS_TEST_TMPDIR/gw.out
  if [ "$domain" != cpu_cache ]; then
    grep -q "sync-read refused" "$BATS_TEST_TMPDIR/pmem.log"
    run "$GW_BIN" attach --target "$TARGET" --transport rdma --persistence sync-read --size 64M
    assert_failure 1
    assert_output --partial 'refuses sync-read persistence over RDMA'
    return 0
  fi
  grep -q "sync-read served (the store's persistence domain includes the CPU caches)" "$BATS_TEST_TMPDIR/pmem.log"
  "$GW_BIN" attach --target "$TARGET" --transport rdma --persistence sync-read --size 64M \
    >"$out" 2>>"$BATS_TEST_TMPDIR/gw.log" &
  GW_PID=$!
  for _ in $(seq 1 300); do
    dev=$(head -n1 "$out")
    [ -n "$dev" ] && [ -b "$dev" ] && break
    kill -0 "$GW_PID" || { cat "$BATS_TEST_TMPDIR/gw.log" >&2; false; }
    sleep 0.1
  done
  [ -b "$dev" ]
  head -c $((8 * M)) /dev/urandom >"$BATS_TEST_TMPDIR/d"
  # Writes, then the FLUSH (conv=fsync): sync-reads on the queue pairs that wrote.
  dd if="$BATS_TEST_TMPDIR/d" of="$dev" bs=1M oflag=direct conv=fsync status=none
  dd if="$dev" of="$BATS_TEST_TMPDIR/d.back" bs=1M count=8 iflag=direct status=none
  assert_equal "$(sha "$BATS_TEST_TMPDIR/d.back")" "$(sha "$BATS_TEST_TMPDIR/d")"
  kill -TERM "$GW_PID"
  wait "$GW_PID"
  GW_PID=
  run grep -i 'refused' "$BATS_TEST_TMPDIR/gw.log" "$BATS_TEST_TMPDIR/pmem.log"
  assert_failure 1
}

@test "pmem: over soft-RoCE a brick that declares DDIO off serves sync-read only on a cpu_cache domain" {
  # rxe writes into the registered pages with the CPU: the bytes stay in the
  # CPU caches whatever DDIO is, so on pmem only eADR makes them durable.
  local domain regions=(/sys/bus/nd/devices/region*/persistence_domain)
  domain=$(cat "${regions[0]}")
  rm -f "$BATS_TEST_TMPDIR/pmem.port"
  "$TARGET_BIN" "${VM_STORE_ARGS[@]}" --listen "$BRICK_HOST:0" --transport "$PBRICK_TRANSPORT" \
    --persistence sync-read --port-file "$BATS_TEST_TMPDIR/pmem.port" 2>>"$BATS_TEST_TMPDIR/pmem.log" &
  BRICK_PID=$!
  wait_for_brick pmem
  wait_serving
  if [ "$PBRICK_TRANSPORT" != rdma ]; then
    grep -q "sync-read served (over TCP the brick persists before it answers)" "$BATS_TEST_TMPDIR/pmem.log"
    return 0
  fi
  grep -q "rdma: serving through device .* (software: its copies are the CPU's" "$BATS_TEST_TMPDIR/pmem.log"
  if [ "$domain" = cpu_cache ]; then
    # Served for the domain's sake, not the declaration's.
    grep -q "sync-read served (the store's persistence domain includes the CPU caches)" "$BATS_TEST_TMPDIR/pmem.log"
    return 0
  fi
  grep -q "sync-read refused (DDIO off is declared, but the RDMA device is software" "$BATS_TEST_TMPDIR/pmem.log"
  run "$GW_BIN" attach --target "$TARGET" --transport rdma --persistence sync-read --size 64M
  assert_failure 1
  assert_output --partial 'refuses sync-read persistence over RDMA'
  grep -q "refused: sync-read persistence asked for, but this brick's RDMA device is software" \
    "$BATS_TEST_TMPDIR/pmem.log"
}
