#!/usr/bin/env bats
# The first system tests: the kernel paths pbrick builds on, in the VM that
# tests/vm/run boots (a real Debian kernel; the host root read-only as /).
#   - the modules the frontends need are there: ublk_drv, nbd, rdma_rxe
#   - Soft-RoCE comes up on the guest's eth0
#   - the kernel NBD client on a pbrick volume (nbdkit + nbdkit-pbrick-plugin.so
#     + pbrick-target): ext4 made, filled, detached, re-attached and verified;
#     fstrim frees the brick's blocks
#   - and the kernel logged no BUG, WARNING or I/O error on the way.
# Run them with tests/vm/run (they skip outside the VM).

load helpers

M2=$((2 * 1024 * 1024))

setup() {
  require_vm
}

teardown() {
  [ ! -e /sys/class/infiniband/rxe0 ] || rdma link delete rxe0 || true
  vm_teardown
}

# pbrick volume of 512 MiB on a 1 GiB brick, served by nbdkit on a unix socket
# and attached as /dev/nbd0. Sets MNT (not mounted yet).
nbd_volume() {
  start_brick b --size 1G
  start_nbd size=512M
  nbd_attach /dev/nbd0
  assert_equal "$(blockdev --getsize64 /dev/nbd0)" $((512 * 1024 * 1024))
  MNT=$BATS_TEST_TMPDIR/mnt
  mkdir -p "$MNT"
}

# make_tree DIR: files of every kind and size class, in one process (under
# emulation a process costs up to a quarter second): a 12 MiB one that spans
# several 2 MiB blocks, mid-sized and small ones in nested directories, an
# empty file, a sparse one, a symlink and a hard link. The same every run.
make_tree() {
  python3 - "$1" <<'EOF'
import os, random, sys
d = sys.argv[1]
rnd = random.Random(20250520)
def put(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
put(f"{d}/big/random12M", rnd.randbytes(12 << 20))
for i in range(1, 17):
    put(f"{d}/mid/a/{'b/c/' if i % 3 == 0 else ''}f{i}", rnd.randbytes(rnd.randrange(4096, 256 << 10) + i))
for i in range(1, 65):
    put(f"{d}/small/{'x' if i % 2 else 'y'}/s{i}", rnd.randbytes(rnd.randrange(1, 4097)))
put(f"{d}/empty", b"")
with open(f"{d}/sparse", "wb") as f:
    f.truncate(16 << 20)
    f.seek((9 << 20) + 7)
    f.write(b"pbrick\n")
os.symlink("big/random12M", f"{d}/link")
os.link(f"{d}/small/x/s1", f"{d}/hardlink")
EOF
}

@test "modules: ublk_drv, nbd and rdma_rxe are loaded; /dev/ublk-control and /dev/nbd0 exist" {
  [ -c /dev/ublk-control ]
  [ -d /sys/module/ublk_drv ]
  [ -d /sys/module/nbd ]
  [ -b /dev/nbd0 ]
  [ -d /sys/module/rdma_rxe ]
  [ -d /sys/module/ext4 ]
  run uname -r
  assert_output "$PBRICK_VM_KERNEL"
}

@test "soft-RoCE: rdma link add rxe0 over eth0 comes up ACTIVE" {
  [ -d /sys/class/net/eth0 ] || fail "the VM has no eth0 (tests/vm/run gives it one)"
  run rdma link add rxe0 type rxe netdev eth0
  assert_success
  [ -d /sys/class/infiniband/rxe0 ]
  for _ in {1..50}; do
    run rdma link show rxe0/1
    [[ $output == *"state ACTIVE"* ]] && break
    sleep 0.1
  done
  assert_output --regexp '^link rxe0/1 state ACTIVE physical_state LINK_UP netdev eth0'
  run rdma link
  assert_output --partial 'rxe0'
  run rdma link delete rxe0
  assert_success
  [ ! -e /sys/class/infiniband/rxe0 ]
}

@test "kernel NBD client: ext4 on a pbrick volume survives detach and re-attach, thin on the brick" {
  nbd_volume
  # What the volume must hold afterwards, checksummed before it goes there.
  make_tree "$BATS_TEST_TMPDIR/src"
  sha_tree "$BATS_TEST_TMPDIR/src" >"$BATS_TEST_TMPDIR/want"

  run mkfs.ext4 -q -F -L pbrick /dev/nbd0
  assert_success
  mount /dev/nbd0 "$MNT"
  cp -a "$BATS_TEST_TMPDIR/src/." "$MNT/"
  sync
  umount "$MNT"
  nbd_detach /dev/nbd0
  [ "$(cat /sys/block/nbd0/size)" = 0 ]

  # A new connection: nothing may come from the page cache of the old one.
  nbd_attach /dev/nbd0
  mount -o ro /dev/nbd0 "$MNT"
  sha_tree "$MNT" >"$BATS_TEST_TMPDIR/got"
  run diff "$BATS_TEST_TMPDIR/want" "$BATS_TEST_TMPDIR/got"
  assert_success
  [ "$(stat -c %i "$MNT/hardlink")" = "$(stat -c %i "$MNT/small/x/s1")" ]
  [ "$(readlink "$MNT/link")" = big/random12M ]
  umount "$MNT"
  run fsck.ext4 -f -n /dev/nbd0
  assert_success
  nbd_detach /dev/nbd0

  # Thin: the brick holds what was written (at least the data, in 2 MiB
  # blocks) and far from all 256 blocks of the volume.
  local data blocks
  data=$(find "$BATS_TEST_TMPDIR/src" -type f -printf '%b\n' | awk '{s += $1 * 512} END {print s}')
  run ctl list
  assert_success
  run ctl --json list
  assert_success
  blocks=$(jq .allocated_blocks <<<"$output")
  echo "# $blocks blocks allocated for $((data / 1024)) KiB of files" >&3
  assert [ "$blocks" -ge $((data / M2)) ]
  assert [ "$blocks" -lt 64 ]
}

@test "kernel NBD client: fstrim on ext4 frees the brick's blocks of deleted files" {
  nbd_volume
  run mkfs.ext4 -q -F /dev/nbd0
  assert_success
  mount /dev/nbd0 "$MNT"
  local before filled after
  before=$(ctl --json list | jq .allocated_blocks)
  head -c $((16 * 1024 * 1024)) /dev/urandom >"$MNT/f"
  sync
  filled=$(ctl --json list | jq .allocated_blocks)
  assert [ "$filled" -ge $((before + 8)) ]
  rm "$MNT/f"
  sync # ext4 trims only blocks whose freeing is committed
  run fstrim -v "$MNT"
  assert_success
  after=$(ctl --json list | jq .allocated_blocks)
  echo "# blocks: $before after mkfs, $filled with 16 MiB, $after after rm + fstrim" >&3
  assert [ "$after" -le "$before" ]
  umount "$MNT"
  run fsck.ext4 -f -n /dev/nbd0
  assert_success
  nbd_detach /dev/nbd0
}

# Last in this file: what the tests above did to the kernel. (tests/vm/run
# checks the whole run's log the same way after the last file.)
@test "dmesg: no BUG, WARNING or I/O error" {
  run dmesg_problems
  assert_output ''
}
