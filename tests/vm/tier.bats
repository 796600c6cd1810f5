#!/usr/bin/env bats
# A tiered brick under the ublk frontend, in the VM of tests/vm/run (skips
# outside it): the fast store a file on tmpfs (/dev/shm: memory, which an RDMA
# NIC may write), the slow tier a file on the scratch disk (/var/tmp, ext4,
# O_DIRECT), a volume more than twice the fast tier, and a gateway bound to 16
# mapped blocks. ext4 is filled beyond the fast tier (blocks are demoted),
# detached, attached again and read back with checksums: every block read from
# the slow tier is promoted by its MAP, over TCP or RDMA (PBRICK_TRANSPORT),
# with either persistence method (PBRICK_PERSISTENCE).

load helpers
load ublk

# The fast store: 40 MiB = 19 blocks; 16 mapped by the gateway, its lock
# block, and the brick's low watermark of 2 free fast blocks fill it.
tier_brick_up() {
  VM_STORE=/dev/shm/pbrick-tier-$$.store
  rm -f "$VM_STORE"
  VM_STORE_ARGS=(--store "$VM_STORE" --size 40M --slow-store "$BATS_TEST_TMPDIR/brick.slow" --slow-size 256M)
  brick_up
}

# tier_moves: "P D", the promotions and demotions in the brick's last
# "tiering: P promotions, D demotions since start" line ("0 0" before any);
# the brick logs one in the second after blocks moved, so wait that long first.
tier_moves() {
  sleep 1.2
  sed -n 's/.*tiering: \([0-9]*\) promotions, \([0-9]*\) demotions since start.*/\1 \2/p' \
    "$BATS_TEST_TMPDIR/brick.log" | tail -n 1 | grep . || echo "0 0"
}

# tier_blocks TIER: the volume's data blocks the brick lists on TIER (0 fast,
# 1 slow), the label and lock blocks above 2^63 aside.
tier_blocks() {
  ctl --json list | jq --argjson t "$1" \
    '[.extents[] | select(.tier == $t and (.start | test("^0x([0-9a-f]{1,15}|[0-7][0-9a-f]{15})$"))) | .blocks] | add // 0'
}

@test "tier: ext4 on a volume 2.4x the fast tier, --max-mapped 16: demoted on write, promoted on read, checksums" {
  local t0=$EPOCHSECONDS
  tier_brick_up
  run ctl --json stat
  assert_success
  assert_equal "$(jq .fast_capacity_blocks <<<"$output")" 19
  gw_attach --size 96M -q 1 -d 32 --max-mapped 16
  mkfs_mount
  mkdir -p "$MNT/tree"
  # 56 MiB in 4 MiB files, more than the fast tier holds (one process: see
  # make_tree).
  python3 -c 'import os, sys
for i in range(1, 15):
    with open(f"{sys.argv[1]}/f{i}", "wb") as f:
        f.write(os.urandom(4 << 20))' "$MNT/tree"
  make_tree "$MNT/tree/small"
  sha_tree "$MNT/tree" >"$BATS_TEST_TMPDIR/before"
  sync
  run ctl --json stat
  assert [ "$(jq .mapped_blocks <<<"$output")" -le 17 ]
  umount "$MNT"
  gw_detach
  local slow fast p0 d0 p1 d1
  slow=$(tier_blocks 1) fast=$(tier_blocks 0)
  echo "# after writing: $fast data blocks on the fast tier, $slow on the slow tier" >&3
  # 28 blocks of files alone, at most 17 of them on the 19 fast blocks.
  assert [ "$slow" -ge 10 ]
  read -r p0 d0 < <(tier_moves)
  assert [ "$d0" -ge 10 ]

  # A fresh attachment (the device's page cache went with the last one): each
  # block read is mapped, and a block on the slow tier promoted first.
  gw_attach --size 96M -q 1 -d 32 --max-mapped 16
  mount "$DEV" "$MNT"
  sha_tree "$MNT/tree" >"$BATS_TEST_TMPDIR/after"
  run ctl --json stat
  assert [ "$(jq .mapped_blocks <<<"$output")" -le 17 ]
  umount "$MNT"
  diff "$BATS_TEST_TMPDIR/before" "$BATS_TEST_TMPDIR/after"
  fsck.ext4 -f -n "$DEV"
  gw_detach
  read -r p1 d1 < <(tier_moves)
  echo "# reading back: $((p1 - p0)) promotions, $((d1 - d0)) demotions; $((EPOCHSECONDS - t0)) s in all" >&3
  assert [ "$((p1 - p0))" -ge 8 ]
  assert [ "$((d1 - d0))" -ge 1 ]
  assert [ -z "$(dmesg_problems)" ]
}
