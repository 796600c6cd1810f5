# The ublk tests' gateway and brick helpers (ublk.bats, stripe.bats): setup
# and teardown of one brick at $TARGET and one gateway, attach/detach, ext4
# helpers. Loaded after helpers.bash.
# shellcheck shell=bash

GW_BIN="$PBRICK_BIN_DIR/gateway/pbrick-gateway"
M=$((1024 * 1024))

setup() {
  require_vm
  [ -c /dev/ublk-control ] || skip "no /dev/ublk-control"
  PERSISTENCE=${PBRICK_PERSISTENCE:-sync-read}
  # A file on the scratch disk (/var/tmp), not in the guest's small /tmp
  # tmpfs. Over RDMA the store must be memory the kernel lets a NIC write
  # (tmpfs: /dev/shm, or devdax), not a file on a disk filesystem. Or the
  # emulated NVDIMM (PBRICK_VM_STORE). 256M holds what any test here writes
  # (a 1G thin volume takes only the blocks written); a file in /dev/shm is
  # allocated and zeroed when the brick creates it, 15 s for 1G under TCG.
  BRICK_STORE_SIZE=256M
  vm_store brick "$BRICK_STORE_SIZE"
  BRICK_STORE=$VM_STORE
  BRICK_PORT=7190
  TARGET=$(brick_host):$BRICK_PORT
  export TARGET BRICK_PORT
  GW_PID=
}

# wait_gone PID SECONDS: waits up to SECONDS for process PID to end.
wait_gone() {
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    kill -0 "$1" 2>/dev/null || return 0
    sleep 0.1
  done
  return 1
}

teardown() {
  # Unmounted in the background: the file system of a device whose daemon
  # died (a test that failed after a kill) cannot write back, and its unmount
  # waits until the device is removed below. A live daemon's takes seconds.
  # Its output goes nowhere: bats waits for whatever holds its own open.
  (
    for m in $(awk -v d="$BATS_TEST_TMPDIR" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r); do
      umount "$m" || umount -l "$m"
    done
  ) </dev/null >/dev/null 2>&1 3>&- &
  local unmounting=$!
  wait_gone "$unmounting" 30 || echo "# teardown: an unmount still waits; removing the device under it" >&3
  if [ -n "$GW_PID" ] && kill -0 "$GW_PID" 2>/dev/null; then
    kill -TERM "$GW_PID"
    timeout 20 tail --pid="$GW_PID" -f /dev/null || kill -KILL "$GW_PID"
  fi
  dmsetup remove --noudevsync pbrick-ublk-holder 2>/dev/null || true
  # A device left with its daemon gone and a file system on it is removed
  # only with --force; left, it would be the next test's device 0.
  "$GW_BIN" detach -n 0 >/dev/null 2>&1 || "$GW_BIN" detach -n 0 --force >/dev/null 2>&1 || true
  wait_gone "$unmounting" 30 || echo "# teardown: an unmount hangs" >&3
  brick_teardown
  vm_store_remove
  # Shown by bats when the test failed.
  if [ -s "$BATS_TEST_TMPDIR/gw.log" ]; then
    echo "--- gateway log:" >&2
    tail -n 40 "$BATS_TEST_TMPDIR/gw.log" >&2
  fi
}

# brick_up: pbrick-target on $BRICK_STORE ($BRICK_STORE_SIZE, or a whole devdax device) at
# $TARGET; the same store and port every time, so a restart finds its blocks.
brick_up() {
  "$TARGET_BIN" "${VM_STORE_ARGS[@]}" --listen "$TARGET" --transport "$PBRICK_TRANSPORT" \
    --persistence "$PERSISTENCE" "$@" 2>>"$BATS_TEST_TMPDIR/brick.log" &
  BRICK_PID=$!
  echo "$BRICK_PID" >>"$BATS_TEST_TMPDIR/pids"
  local i
  for i in $(seq 1 200); do
    ctl stat >/dev/null 2>&1 && return 0
    kill -0 "$BRICK_PID" 2>/dev/null || { cat "$BATS_TEST_TMPDIR/brick.log" >&2; return 1; }
    sleep 0.05
  done
  return 1
}

# gw_recover ID [ARGS...]: starts `pbrick-gateway recover -n ID ARGS...` in
# the background and waits for the device path it prints (its output is in
# recover.out); sets GW_PID. Fails, with the gateway's log, when the gateway
# exits first.
gw_recover() {
  local id=$1
  shift
  "$GW_BIN" recover -n "$id" "$@" >"$BATS_TEST_TMPDIR/recover.out" 2>>"$BATS_TEST_TMPDIR/gw.log" &
  GW_PID=$!
  local i
  for i in $(seq 1 300); do
    [ -s "$BATS_TEST_TMPDIR/recover.out" ] && return 0
    kill -0 "$GW_PID" 2>/dev/null || { cat "$BATS_TEST_TMPDIR/gw.log" >&2; return 1; }
    sleep 0.1
  done
  echo "pbrick-gateway recover did not print a device within 30 s" >&2
  return 1
}

# gw_attach ARGS...: starts `pbrick-gateway attach` in the background, waits
# for the device path it prints; sets GW_PID and DEV.
gw_attach() {
  local out=$BATS_TEST_TMPDIR/gw.out
  : >"$out"
  "$GW_BIN" attach --target "$TARGET" --transport "$PBRICK_TRANSPORT" --persistence "$PERSISTENCE" "$@" \
    >"$out" 2>>"$BATS_TEST_TMPDIR/gw.log" &
  GW_PID=$!
  local i
  for i in $(seq 1 300); do
    if [ -s "$out" ]; then
      DEV=$(head -n1 "$out")
      [ -b "$DEV" ] && return 0
    fi
    kill -0 "$GW_PID" 2>/dev/null || { cat "$BATS_TEST_TMPDIR/gw.log" >&2; return 1; }
    sleep 0.1
  done
  echo "pbrick-gateway attach did not print a device within 30 s" >&2
  cat "$BATS_TEST_TMPDIR/gw.log" >&2
  return 1
}

# gw_detach: SIGTERM, and the gateway must exit 0 and the device go away.
gw_detach() {
  kill -TERM "$GW_PID"
  local rc=0
  wait "$GW_PID" || rc=$?
  GW_PID=
  [ "$rc" = 0 ] || { echo "gateway exited $rc" >&2; cat "$BATS_TEST_TMPDIR/gw.log" >&2; return 1; }
  local i
  for i in $(seq 1 50); do
    [ -e "$DEV" ] || return 0
    sleep 0.1
  done
  echo "$DEV still exists after detach" >&2
  return 1
}

# mkfs_mount: a fresh ext4 on $DEV, mounted at MNT ($BATS_TEST_TMPDIR/mnt).
mkfs_mount() {
  mkfs.ext4 -q -F "$DEV"
  MNT=$BATS_TEST_TMPDIR/mnt
  mkdir -p "$MNT"
  mount "$DEV" "$MNT"
}

# reattach_verify ATTACH_ARGS...: attaches again, and the tree at $MNT/tree
# has the checksums of $BATS_TEST_TMPDIR/before; fsck finds nothing; detaches;
# the kernel logged no problem.
reattach_verify() {
  gw_attach "$@"
  mount "$DEV" "$MNT"
  sha_tree "$MNT/tree" >"$BATS_TEST_TMPDIR/after"
  umount "$MNT"
  diff "$BATS_TEST_TMPDIR/before" "$BATS_TEST_TMPDIR/after"
  fsck.ext4 -f -n "$DEV"
  gw_detach
  [ -z "$(dmesg_problems)" ]
}

# make_tree DIR: a checksummable tree of every size class: a 6 MiB file over
# several 2 MiB blocks, 12 mid-sized ones (up to 128 KiB) in nested
# directories, 40 small ones, an empty one. In one process: under emulation
# every process costs 0.1-0.25 s, and a loop of `head`s took 5-15 s a tree.
make_tree() {
  python3 - "$1" <<'EOF'
import os, random, sys
d = sys.argv[1]
def put(path, size):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(os.urandom(size))
put(f"{d}/big/random6M", 6 << 20)
for i in range(1, 13):
    put(f"{d}/mid/a/{'' if i % 2 else 'b/'}f{i}", random.randrange(131072) + i)
for i in range(1, 41):
    put(f"{d}/small/s{i}", random.randrange(4096) + 1)
put(f"{d}/empty", 0)
EOF
}
