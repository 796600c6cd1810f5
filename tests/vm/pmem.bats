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
# The ublk tests (ublk.bats) run on the same store in the same boot.

load helpers

M=$((1024 * 1024))

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
