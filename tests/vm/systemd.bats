#!/usr/bin/env bats
# pbrick-gateway@.service under a real systemd, on the VM's real kernel with
# ublk_drv (tests/vm/run; the tests skip outside it): systemd boots as PID 1
# in a systemd-nspawn container on an overlay of the guest's root (a tmpfs
# takes the writes), with the Debian package ($PBRICK_DEB, built by
# scripts/package) unpacked into it. The container gets /dev/ublk-control;
# the device nodes the kernel makes later are mirrored into its /dev by this
# file (no udev in there).
#   1. systemctl start pbrick-gateway@vol0 -> /dev/ublkbN serves vol0's data
#   2. systemctl stop -> the device is gone
#   3. kill -9 of the gateway -> Restart= takes over the same device (recover):
#      same /dev/ublkbN, the data written before reads back

load helpers
load ../container

# ct_teardown: the mirror, the container, a device a killed gateway left
# behind, the overlay; safe to run twice and after a partial setup.
ct_teardown() {
  local dir=$BATS_FILE_TMPDIR
  if [ -f "$dir/mirror.pid" ]; then
    kill "$(cat "$dir/mirror.pid")" 2>/dev/null || true
    rm -f "$dir/mirror.pid"
  fi
  # SIGTERM: the container's systemd stops the units (the gateway deletes
  # its device) and powers off.
  ct_stop 60
  # A device a killed gateway left behind.
  local c
  for c in /sys/class/ublk-char/ublkc*; do
    [ -e "$c" ] && "$PBRICK_BIN_DIR/gateway/pbrick-gateway" detach -n "${c##*ublkc}" >/dev/null 2>&1
  done
  ct_unmount
}

# mirror_dev_nodes ROOT: a stand-in for udev: makes the ublk nodes the kernel
# announces in sysfs in ROOT/dev, until killed.
mirror_dev_nodes() {
  local root=$1 d name majmin
  while :; do
    for d in /sys/class/ublk-char/ublkc* /sys/block/ublkb*; do
      [ -e "$d/dev" ] || continue
      name=${d##*/}
      [ -e "$root/dev/$name" ] && continue
      read -r majmin <"$d/dev"
      if [[ $d == /sys/block/* ]]; then
        mknod "$root/dev/$name" b "${majmin%:*}" "${majmin#*:}" 2>/dev/null
      else
        mknod "$root/dev/$name" c "${majmin%:*}" "${majmin#*:}" 2>/dev/null
      fi
    done
    sleep 0.1
  done
}

# start_mirror PID: mirror_dev_nodes into the /dev of the container whose
# PID 1 is PID (its own tmpfs: reached through its root), in the background.
start_mirror() {
  mirror_dev_nodes "/proc/$1/root" </dev/null >/dev/null 2>&1 3>&- &
  echo $! >"$BATS_FILE_TMPDIR/mirror.pid"
}

setup_file() {
  [ "${PBRICK_VM:-}" = 1 ] || return 0 # setup() skips
  [ -c /dev/ublk-control ] || return 0
  local dir=$BATS_FILE_TMPDIR
  echo "$SECONDS" >"$dir/setup.start"
  if [ -z "${PBRICK_DEB:-}" ] || [ ! -f "$PBRICK_DEB" ]; then
    echo "PBRICK_DEB must name the package (scripts/package builds it): '${PBRICK_DEB:-}'" >&2
    return 1
  fi
  # nspawn needs the cgroup hierarchy the guest's init does not mount.
  mountpoint -q /sys/fs/cgroup || mount -t cgroup2 cgroup2 /sys/fs/cgroup
  ct_mount_overlay || return 1
  dpkg-deb -x "$PBRICK_DEB" "$dir/root"
  cat >"$dir/root/etc/pbrick/cluster.yaml" <<'EOF'
cluster: {name: vm}
bricks:
  - name: brick0
    host: 127.0.0.1
    port: 7100
    store: {path: /var/lib/pbrick/brick0.store, size: 128M}
volumes:
  - {name: vol0, size: 64M, brick: brick0, base: 0x0, queues: 1, depth: 16, frontend: ublk}
  - {name: vol1, size: 32M, brick: brick0, base: 0x4000000, queues: 1, depth: 16, frontend: ublk}
gateways:
  - {name: client0, host: 127.0.0.1, volumes: [vol0, vol1]}
EOF
  # Under emulation every process counts: boot without the units that only
  # tidy up a long-lived system (each took 5-20 s here).
  local skip=() u
  for u in systemd-tmpfiles-setup systemd-tmpfiles-setup-dev systemd-sysusers systemd-journal-flush \
    systemd-sysctl systemd-update-utmp; do
    skip+=("systemd.mask=$u.service")
  done
  ct_boot --deadline 120 --poll 0.2 --on-pid1 start_mirror -- \
    --bind=/dev/ublk-control "${skip[@]}" || return 1
  in_ct systemctl daemon-reload
  echo "$SECONDS" >"$dir/setup.end"
}

teardown_file() {
  [ ! -f "$BATS_FILE_TMPDIR/setup.start" ] || echo "# container set up in $(($(cat "$BATS_FILE_TMPDIR/setup.end" 2>/dev/null || echo 0) - $(cat "$BATS_FILE_TMPDIR/setup.start"))) s" >&3
  ct_teardown
}

setup() {
  require_vm
  [ -c /dev/ublk-control ] || skip "no /dev/ublk-control"
  [ -f "$BATS_FILE_TMPDIR/ct.pid" ] || fail "no container: $(cat "$BATS_FILE_TMPDIR/nspawn.log" 2>/dev/null)"
}

# gateway_dev: the device pbrick-gateway@vol0 says it serves (its STATUS=).
gateway_dev() { unit_prop pbrick-gateway@vol0 StatusText | grep -o '/dev/ublkb[0-9]*'; }

# dev_sum DEV: sha256 of the first 4 MiB of DEV (guest side, direct I/O).
dev_sum() { dd if="$1" bs=1M count=4 iflag=direct status=none | sha256sum | cut -d' ' -f1; }

@test "systemd: systemctl start pbrick-gateway@vol0 -> /dev/ublkbN serving vol0" {
  in_ct systemctl start pbrick-target@brick0
  in_ct systemctl start pbrick-gateway@vol0 ||
    fail "start failed: $(in_ct journalctl -u pbrick-gateway@vol0 --no-pager | tail -n 20)"
  assert_equal "$(unit_prop pbrick-gateway@vol0 ActiveState)" active
  local dev
  dev=$(gateway_dev) || fail "no device in STATUS=: $(unit_prop pbrick-gateway@vol0 StatusText)"
  echo "$dev" >"$BATS_FILE_TMPDIR/dev"
  assert_equal "$(dev_sectors "$dev")" $((64 * 2048))
  # The daemon of the unit serves it.
  run in_ct pbrick-gateway list
  assert_line --regexp "^${dev#/dev/ublkb} +live +1 +16 +$(unit_prop pbrick-gateway@vol0 MainPID)\$"
  head -c 4M /dev/urandom >"$BATS_FILE_TMPDIR/data"
  dd if="$BATS_FILE_TMPDIR/data" of="$dev" bs=1M oflag=direct conv=fsync status=none
  assert_equal "$(dev_sum "$dev")" "$(sha256sum <"$BATS_FILE_TMPDIR/data" | cut -d' ' -f1)"
}

@test "systemd: systemctl stop pbrick-gateway@vol0 -> the device is gone" {
  local dev
  dev=$(cat "$BATS_FILE_TMPDIR/dev")
  in_ct systemctl stop pbrick-gateway@vol0
  assert_equal "$(unit_prop pbrick-gateway@vol0 ActiveState)" inactive
  assert_equal "$(unit_prop pbrick-gateway@vol0 Result)" success
  [ ! -e "/sys/block/${dev#/dev/}" ] || fail "$dev is still there after stop"
  run in_ct pbrick-gateway list
  refute_output --regexp '^[0-9]+ '
}

@test "systemd: kill -9 of pbrick-gateway@vol0 -> Restart= recovers the same device, data intact" {
  in_ct systemctl start pbrick-gateway@vol0
  local dev old
  dev=$(gateway_dev)
  old=$(unit_prop pbrick-gateway@vol0 MainPID)
  assert_equal "$(dev_sum "$dev")" "$(sha256sum <"$BATS_FILE_TMPDIR/data" | cut -d' ' -f1)"
  in_ct systemctl kill -s KILL pbrick-gateway@vol0
  for _ in $(seq 1 60); do
    [ "$(unit_prop pbrick-gateway@vol0 ActiveState)" = active ] &&
      [ "$(unit_prop pbrick-gateway@vol0 MainPID)" != "$old" ] && break
    sleep 0.5
  done
  assert_equal "$(unit_prop pbrick-gateway@vol0 ActiveState)" active
  assert_equal "$(unit_prop pbrick-gateway@vol0 NRestarts)" 1
  # The same device, served by the new daemon; no second one.
  assert_equal "$(gateway_dev)" "$dev"
  run in_ct pbrick-gateway list
  assert_line --regexp "^${dev#/dev/ublkb} +live +1 +16 +$(unit_prop pbrick-gateway@vol0 MainPID)\$"
  assert_equal "$(grep -cE '^[0-9]+ ' <<<"$output")" 1
  run in_ct journalctl -u pbrick-gateway@vol0 --no-pager -o cat
  assert_line "volume vol0: taking over $dev, whose daemon died"
  assert_equal "$(dev_sum "$dev")" "$(sha256sum <"$BATS_FILE_TMPDIR/data" | cut -d' ' -f1)"
}

@test "systemd: a device id the unit remembers that went to another volume is not taken over" {
  local dev id
  dev=$(gateway_dev)
  id=${dev#/dev/ublkb}
  # The daemon dies and the unit is stopped before Restart= ran: the unit
  # keeps the id (not a clean stop), the quiesced device stays.
  in_ct systemctl kill -s KILL pbrick-gateway@vol0
  in_ct systemctl stop pbrick-gateway@vol0
  [ -e "/sys/class/ublk-char/ublkc$id" ] || fail "the device went with its daemon"
  # By hand: that device is removed, and vol1's gateway gets its id.
  in_ct pbrick-gateway detach -n "$id"
  in_ct systemctl start pbrick-gateway@vol1 ||
    fail "vol1: $(in_ct journalctl -u pbrick-gateway@vol1 --no-pager | tail -n 20)"
  assert_equal "$(unit_prop pbrick-gateway@vol1 StatusText | grep -o '/dev/ublkb[0-9]*')" "$dev"
  # vol0's unit attaches a device of its own; vol1's is left alone.
  in_ct systemctl start pbrick-gateway@vol0 ||
    fail "vol0: $(in_ct journalctl -u pbrick-gateway@vol0 --no-pager | tail -n 20)"
  local dev0
  dev0=$(gateway_dev)
  [ "$dev0" != "$dev" ] || fail "vol0 took over vol1's $dev"
  assert_equal "$(unit_prop pbrick-gateway@vol1 ActiveState)" active
  assert_equal "$(dev_sectors "$dev")" $((32 * 2048))
  assert_equal "$(dev_sum "$dev0")" "$(sha256sum <"$BATS_FILE_TMPDIR/data" | cut -d' ' -f1)"
  in_ct systemctl stop pbrick-gateway@vol0 pbrick-gateway@vol1
}
