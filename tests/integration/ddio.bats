#!/usr/bin/env bats
# `pbrickctl ddio` and `pbrickctl --config F --brick B ddio apply` (the brick
# unit's ExecStartPre) against fake sysfs trees: real directories, real
# 4096-byte config-space files and real symlinks under $BATS_TEST_TMPDIR, found
# through PBRICK_SYSFS_ROOT. Register facts: docs/ddio.md.

bats_require_minimum_version 1.5.0

load helpers

# Register values with many unrelated bits set, so a write touching more than
# the documented bits shows up (as in config/ddio_test.cc). perfctrlsts_0
# 0xa5a55a8a: Use_Allocating_Flow_Wr (bit 7) and NoSnoopOpWrEn (bit 3) set;
# perfctrlsts_1 0x5a5aa5c5: TPHDIS (bit 9) clear, bit 8 set. DDIO is "on".
P0_ON=0xa5a55a8a
P1_ON=0x5a5aa5c5

ROOT_PORT=pci0000:17/0000:17:00.0
NIC=pci0000:17/0000:17:00.0/0000:18:00.0

setup() {
  SYSROOT="$BATS_TEST_TMPDIR/fake"
  mkdir -p "$SYSROOT/sys/class/net" "$SYSROOT/sys/devices"
  export PBRICK_SYSFS_ROOT=$SYSROOT
}

setup_file() {
  # Config space filler: byte i holds (7*i+3) & 0xff, so any stray write shows.
  python3 -c 'import sys; sys.stdout.buffer.write(bytes((i * 7 + 3) & 0xff for i in range(4096)))' \
    >"$BATS_FILE_TMPDIR/pattern.bin"
}

# le32 VALUE: the 4 bytes of VALUE, little-endian, as printf escapes.
le32() { printf '\\x%02x' $(($1 & 0xff)) $((($1 >> 8) & 0xff)) $((($1 >> 16) & 0xff)) $((($1 >> 24) & 0xff)); }

# add_pci REL VENDOR DEVICE P0 P1 [SIZE]: devices/REL with vendor, device and
# a SIZE-byte (4096) config file: the filler pattern, except the little-endian
# dwords P0 at 0x180 and P1 at 0x184.
add_pci() {
  local dir="$SYSROOT/sys/devices/$1" size=${6:-4096}
  mkdir -p "$dir"
  echo "$2" >"$dir/vendor"
  echo "$3" >"$dir/device"
  head -c "$size" "$BATS_FILE_TMPDIR/pattern.bin" >"$dir/config"
  if [ "$size" -ge $((0x188)) ]; then
    # shellcheck disable=SC2059
    printf "$(le32 "$4")$(le32 "$5")" | dd of="$dir/config" bs=1 seek=$((0x180)) conv=notrunc status=none
  fi
}

# add_netdev NAME REL: class/net/NAME/device -> ../../../devices/REL.
add_netdev() {
  mkdir -p "$SYSROOT/sys/class/net/$1"
  ln -s "../../../devices/$2" "$SYSROOT/sys/class/net/$1/device"
}

# add_virtual_netdev NAME: like a veth: class/net/NAME -> devices/virtual/net/NAME,
# which has no device link.
add_virtual_netdev() {
  mkdir -p "$SYSROOT/sys/devices/virtual/net/$1"
  ln -s "../../devices/virtual/net/$1" "$SYSROOT/sys/class/net/$1"
}

# root_port_tree VENDOR DEVICE [P0 P1]: a root port at 0000:17:00.0 with a
# Mellanox NIC 0000:18:00.0 below it, known as eth9.
root_port_tree() {
  add_pci "$ROOT_PORT" "$1" "$2" "${3:-$P0_ON}" "${4:-$P1_ON}"
  add_pci "$NIC" 0x15b3 0x1017 0 0
  add_netdev eth9 "$NIC"
}

config_of() { echo "$SYSROOT/sys/devices/$1/config"; }

# snap NAME: a byte-per-line xxd dump of the root port's config space.
snap() { xxd -c1 "$(config_of "$ROOT_PORT")" | cut -d' ' -f1,2 >"$BATS_TEST_TMPDIR/$1.hex"; }

# changed A B: "OFFSET: BYTE" for every byte of dump B that differs from A.
changed() {
  diff "$BATS_TEST_TMPDIR/$1.hex" "$BATS_TEST_TMPDIR/$2.hex" | sed -n 's/^> //p' | tr '\n' ' ' | sed 's/ $//'
}

mtime() { stat -c %y "$(config_of "$ROOT_PORT")"; }

# mark_mtime: sets MTIME to the root port config's mtime, then waits long
# enough for any later write to show in it (the kernel's file times advance
# with a coarse clock).
mark_mtime() {
  MTIME=$(mtime)
  sleep 0.05
}

@test "ddio off on a Skylake-SP root port changes exactly bytes 0x180 and 0x185" {
  root_port_tree 0x8086 0x2030
  # The tree as built: the registers in place, the filler around them.
  assert_equal "$(xxd -s 0x180 -l 8 -p "$(config_of "$ROOT_PORT")")" 8a5aa5a5c5a55a5a
  assert_equal "$(xxd -s 0x17f -l 1 -p "$(config_of "$ROOT_PORT")")" "$(printf '%02x' $(((0x17f * 7 + 3) & 255)))"
  assert_equal "$(xxd -s 0x188 -l 1 -p "$(config_of "$ROOT_PORT")")" "$(printf '%02x' $(((0x188 * 7 + 3) & 255)))"
  snap before
  local nic_sha
  nic_sha=$(sha "$(config_of "$NIC")")
  run --separate-stderr "$CTL_BIN" ddio off --netdev eth9
  assert_success
  snap off
  # 0x180: 0x8a -> 0x02 (Use_Allocating_Flow_Wr and NoSnoopOpWrEn cleared);
  # 0x185: 0xa5 -> 0xa7 (bit 1 of the byte: register bit 9, TPHDIS, set).
  # Nothing else: not bit 8 (the bit librpma's script flips), no other byte.
  assert_equal "$(changed before off)" "00000180: 02 00000185: a7"
  assert_equal "$(stat -c %s "$(config_of "$ROOT_PORT")")" 4096
  # off prints the state read back.
  assert_line --regexp '^eth9 +0000:18:00\.0 +0000:17:00\.0 +0x2030 +off +0xa5a55a02 +0x5a5aa7c5 *$'
  # The NIC's own config space is never touched.
  assert_equal "$(sha "$(config_of "$NIC")")" "$nic_sha"

  run --separate-stderr "$CTL_BIN" ddio status --netdev eth9 --json
  assert_success
  assert_equal "$(jq -c '.ports[0] | [.netdev, .function, .root_port, .vendor, .device, .state]' <<<"$output")" \
    '["eth9","0000:18:00.0","0000:17:00.0","0x8086","0x2030","off"]'
  assert_equal "$(jq -c '.ports[0] | [.perfctrlsts_0, .perfctrlsts_1]' <<<"$output")" '["0xa5a55a02","0x5a5aa7c5"]'
  assert_equal "$(jq -c '.ports[0] | [.use_allocating_flow_wr, .nosnoopopwren, .tphdis]' <<<"$output")" \
    '[false,false,true]'
  [[ "$(jq -r '.ports[0].platform' <<<"$output")" == *"Cascade Lake"* ]]

  # Idempotent: a second off does not write at all.
  mark_mtime
  run "$CTL_BIN" ddio off --netdev eth9
  assert_success
  snap off2
  assert_equal "$(changed off off2)" ""
  assert_equal "$(mtime)" "$MTIME"
}

@test "ddio on restores the reset values of bits 7 and 41 and leaves NoSnoopOpWrEn clear" {
  root_port_tree 0x8086 0x2030
  snap before
  run "$CTL_BIN" ddio off --netdev eth9
  assert_success
  snap off
  run --separate-stderr "$CTL_BIN" --json ddio on --netdev eth9
  assert_success
  snap on
  # 0x180: 0x02 -> 0x82 (bit 7 back); 0x185: 0xa7 -> 0xa5 (TPHDIS clear).
  assert_equal "$(changed off on)" "00000180: 82 00000185: a5"
  # Against the start only NoSnoopOpWrEn (0x180 bit 3) differs: off cleared it
  # and on does not set it again (docs/ddio.md).
  assert_equal "$(changed before on)" "00000180: 82"
  assert_equal "$(jq -c '.ports[0] | [.state, .perfctrlsts_0, .perfctrlsts_1, .use_allocating_flow_wr, .nosnoopopwren, .tphdis]' <<<"$output")" \
    '["on","0xa5a55a82","0x5a5aa5c5",true,false,false]'
}

@test "ddio status reads without writing: on, off and partial states" {
  root_port_tree 0x8086 0x2031
  snap before
  mark_mtime
  run --separate-stderr "$CTL_BIN" ddio status --netdev eth9
  assert_success
  assert_line --index 0 --regexp '^NETDEV +FUNCTION +ROOT-PORT +DEVICE +STATE +PERFCTRLSTS_0 +PERFCTRLSTS_1'
  assert_line --index 1 --regexp '^eth9 +0000:18:00\.0 +0000:17:00\.0 +0x2031 +on +0xa5a55a8a +0x5a5aa5c5 *$'
  snap after
  assert_equal "$(changed before after)" ""
  assert_equal "$(mtime)" "$MTIME"

  # Allocating flow off but TPHDIS clear: hinted writes may still allocate.
  add_pci pci0000:3a/0000:3a:00.0 0x8086 0x2032 0x00000000 0x00000000
  add_pci pci0000:3a/0000:3a:00.0/0000:3b:00.0 0x8086 0x1592 0 0
  add_netdev ens2 pci0000:3a/0000:3a:00.0/0000:3b:00.0
  # Exactly the documented "off" column.
  add_pci pci0000:5d/0000:5d:00.0 0x8086 0x2033 0x00000000 0x00000200
  add_pci pci0000:5d/0000:5d:00.0/0000:5e:00.0 0x8086 0x1592 0 0
  add_netdev ens3 pci0000:5d/0000:5d:00.0/0000:5e:00.0
  run --separate-stderr "$CTL_BIN" ddio status --netdev eth9 --netdev ens2 --netdev ens3 --json
  assert_success
  assert_equal "$(jq -c '[.ports[] | [.netdev, .root_port, .state]]' <<<"$output")" \
    '[["eth9","0000:17:00.0","on"],["ens2","0000:3a:00.0","partial"],["ens3","0000:5d:00.0","off"]]'
}

@test "Haswell-EP and Broadwell-EP root ports are supported too, and --netdev repeats" {
  add_pci pci0000:00/0000:00:02.0 0x8086 0x2f04 "$P0_ON" "$P1_ON"
  add_pci pci0000:00/0000:00:02.0/0000:01:00.0 0x8086 0x10fb 0 0
  add_netdev eth1 pci0000:00/0000:00:02.0/0000:01:00.0
  add_pci pci0000:80/0000:80:03.0 0x8086 0x6f08 "$P0_ON" "$P1_ON"
  add_pci pci0000:80/0000:80:03.0/0000:81:00.0 0x8086 0x10fb 0 0
  add_netdev eth2 pci0000:80/0000:80:03.0/0000:81:00.0
  run --separate-stderr "$CTL_BIN" ddio off --netdev eth1 --netdev eth2 --json
  assert_success
  assert_equal "$(jq -c '[.ports[] | [.netdev, .device, .state, .perfctrlsts_0, .perfctrlsts_1]]' <<<"$output")" \
    '[["eth1","0x2f04","off","0xa5a55a02","0x5a5aa7c5"],["eth2","0x6f08","off","0xa5a55a02","0x5a5aa7c5"]]'
  [[ "$(jq -r '.ports[0].platform' <<<"$output")" == *"Haswell"* ]]
  [[ "$(jq -r '.ports[1].platform' <<<"$output")" == *"Broadwell"* ]]
}

@test "the root port is found above a PCIe switch, in the kernel's own sysfs layout" {
  local rp=pci0000:3a/0000:3a:00.0
  local nic=$rp/0000:3b:00.0/0000:3c:01.0/0000:3d:00.1
  add_pci "$rp" 0x8086 0x2032 "$P0_ON" "$P1_ON"
  add_pci "$rp/0000:3b:00.0" 0x10b5 0x8747 0 0
  add_pci "$rp/0000:3b:00.0/0000:3c:01.0" 0x10b5 0x8747 0 0
  add_pci "$nic" 0x15b3 0x1017 0 0
  # class/net/NAME -> devices/.../net/NAME, whose device link points back up.
  mkdir -p "$SYSROOT/sys/devices/$nic/net/enp61s0f1"
  ln -s ../../../0000:3d:00.1 "$SYSROOT/sys/devices/$nic/net/enp61s0f1/device"
  ln -s "../../devices/$nic/net/enp61s0f1" "$SYSROOT/sys/class/net/enp61s0f1"
  local switch_sha
  switch_sha=$(sha "$(config_of "$rp/0000:3b:00.0")")
  run --separate-stderr "$CTL_BIN" ddio off --netdev enp61s0f1 --json
  assert_success
  assert_equal "$(jq -c '.ports[0] | [.function, .root_port, .state]' <<<"$output")" \
    '["0000:3d:00.1","0000:3a:00.0","off"]'
  assert_equal "$(sha "$(config_of "$rp/0000:3b:00.0")")" "$switch_sha"
}

@test "a non-Intel root port is refused before a byte is written" {
  root_port_tree 0x1022 0x1483
  snap before
  run --separate-stderr "$CTL_BIN" ddio off --netdev eth9
  assert_failure 1
  assert_equal "$output" ""
  assert_equal "$stderr" "pbrickctl ddio off: root port 0000:17:00.0 of eth9 is not an Intel device (vendor 0x1022): DDIO is an Intel Xeon feature, nothing to control here: Operation not supported (ENOTSUP)"
  run "$CTL_BIN" ddio status --netdev eth9
  assert_failure 1
  assert_output --partial 'is not an Intel device (vendor 0x1022)'
  snap after
  assert_equal "$(changed before after)" ""
}

@test "unknown Intel root ports are refused, naming the supported ids; Ice Lake points at the BIOS" {
  root_port_tree 0x8086 0x1234
  snap before
  run --separate-stderr "$CTL_BIN" ddio off --netdev eth9
  assert_failure 1
  [[ "$stderr" == "pbrickctl ddio off: root port 0000:17:00.0 of eth9 is an Intel device 0x1234 whose DDIO registers pbrick does not know; supported root ports: "* ]] ||
    fail "stderr: $stderr"
  [[ "$stderr" == *"0x2f01-0x2f0b"*"0x6f01-0x6f0b"*"0x2030-0x2033"*"(ENOTSUP)" ]] || fail "stderr: $stderr"
  snap after
  assert_equal "$(changed before after)" ""

  # A DMI port (different register block) is not a root port pbrick knows.
  echo 0x2020 >"$SYSROOT/sys/devices/$ROOT_PORT/device"
  run "$CTL_BIN" ddio off --netdev eth9
  assert_failure 1
  assert_output --partial 'Intel device 0x2020 whose DDIO registers pbrick does not know'

  echo 0x347a >"$SYSROOT/sys/devices/$ROOT_PORT/device"
  run --separate-stderr "$CTL_BIN" ddio off --netdev eth9
  assert_failure 1
  [[ "$stderr" == *"Ice Lake"*"disable DDIO in the BIOS setup instead"*"(ENOTSUP)" ]] || fail "stderr: $stderr"
  snap after
  assert_equal "$(changed before after)" ""
}

@test "a netdev without a PCI device link (veth) or an unknown one is refused with ENODEV" {
  root_port_tree 0x8086 0x2030
  add_virtual_netdev veth0
  snap before
  run --separate-stderr "$CTL_BIN" ddio off --netdev veth0
  assert_failure 1
  assert_equal "$stderr" "pbrickctl ddio off: network interface 'veth0' has no device in sysfs: it is a virtual interface (loopback, veth, bridge, tun, ...), not a PCIe NIC, so there is no root port whose DDIO could be set: No such device (ENODEV)"
  run --separate-stderr "$CTL_BIN" ddio status --netdev eth5
  assert_failure 1
  assert_equal "$stderr" "pbrickctl ddio status: no network interface 'eth5' ($SYSROOT/sys/class/net/eth5 is missing): No such device (ENODEV)"
  # Each --netdev on its own: eth9 is still handled, the exit status says one failed.
  run --separate-stderr "$CTL_BIN" ddio off --netdev veth0 --netdev eth9
  assert_failure 1
  assert_line --regexp '^eth9 .* off '
  [[ "$stderr" == *"'veth0' has no device in sysfs"* ]] || fail "stderr: $stderr"
  snap after
  assert_equal "$(changed before after)" "00000180: 02 00000185: a7"
}

@test "ddio usage errors exit 2" {
  root_port_tree 0x8086 0x2030
  run "$CTL_BIN" ddio
  assert_failure 2
  assert_output --partial 'missing command (status, off or on)'
  run "$CTL_BIN" ddio off
  assert_failure 2
  assert_output --partial '--netdev NAME is required'
  run "$CTL_BIN" ddio toggle --netdev eth9
  assert_failure 2
  assert_output --partial "unknown command 'toggle'"
  run "$CTL_BIN" ddio off --netdev
  assert_failure 2
  run "$CTL_BIN" ddio apply
  assert_failure 2
  assert_output --partial 'ddio apply needs --config FILE and --brick NAME'
}

# ---- ddio apply: what pbrick-target@.service runs as ExecStartPre ----

# cluster_file NAME NIC PERSISTENCE: a one-brick RDMA cluster file (DDIO only
# matters where a NIC writes into memory).
cluster_file() {
  CLUSTER="$BATS_TEST_TMPDIR/$1.yaml"
  cat >"$CLUSTER" <<EOF
cluster:
  name: lab
bricks:
  - name: b
    host: 127.0.0.1
    store: {path: /var/lib/pbrick/b.store, size: 1G}
    nic: ${2%\}}, rdma_device: mlx5_0}
    persistence: $3
    transport: rdma
EOF
}

@test "ddio apply, nic.ddio off + sync-read: turns DDIO off and says sync-read holds" {
  root_port_tree 0x8086 0x2030
  cluster_file sr '{netdev: eth9, ddio: off}' sync-read
  snap before
  # The unit's exact form: --config before the command, --brick after it.
  run --separate-stderr "$CTL_BIN" --config "$CLUSTER" ddio apply --brick b
  assert_success
  assert_equal "$output" "brick b: DDIO off on eth9 (root port 0000:17:00.0): sync-read persistence holds"
  snap after
  assert_equal "$(changed before after)" "00000180: 02 00000185: a7"
  # Again, as on every restart: nothing written, same verdict.
  mark_mtime
  run --separate-stderr "$CTL_BIN" --config "$CLUSTER" --brick b ddio apply
  assert_success
  assert_equal "$output" "brick b: DDIO off on eth9 (root port 0000:17:00.0): sync-read persistence holds"
  assert_equal "$(mtime)" "$MTIME"
}

@test "ddio apply refuses a sync-read brick when DDIO off does not stick" {
  # A config "file" that swallows writes and reads back zeros, like a
  # firmware-locked register (as root, chmod would not stop the write).
  add_pci "$ROOT_PORT" 0x8086 0x2030 0 0
  ln -sf /dev/zero "$(config_of "$ROOT_PORT")"
  add_pci "$NIC" 0x15b3 0x1017 0 0
  add_netdev eth9 "$NIC"
  cluster_file sr '{netdev: eth9, ddio: off}' sync-read
  run --separate-stderr "$CTL_BIN" --config "$CLUSTER" --brick b ddio apply
  assert_failure 1
  assert_equal "$output" ""
  [[ "$stderr" == "pbrickctl: brick b: ddio off: DDIO off on root port 0000:17:00.0 did not stick: "*"(EIO)" ]] ||
    fail "stderr: $stderr"
}

@test "ddio apply refuses a sync-read brick on a root port it cannot manage" {
  root_port_tree 0x1022 0x1483
  cluster_file sr '{netdev: eth9, ddio: off}' sync-read
  snap before
  run --separate-stderr "$CTL_BIN" --config "$CLUSTER" --brick b ddio apply
  assert_failure 1
  assert_equal "$output" ""
  [[ "$stderr" == "pbrickctl: brick b: ddio off: root port 0000:17:00.0 of eth9 is not an Intel device"*"(ENOTSUP)" ]] ||
    fail "stderr: $stderr"
  snap after
  assert_equal "$(changed before after)" ""
}

@test "a sync-read brick with ddio unmanaged never gets past validation, and nothing is written" {
  root_port_tree 0x8086 0x2030
  cluster_file srun '{netdev: eth9, ddio: unmanaged}' sync-read
  snap before
  run --separate-stderr "$CTL_BIN" --config "$CLUSTER" --brick b ddio apply
  assert_failure 1
  assert_equal "$output" ""
  assert_equal "$stderr" "pbrickctl: $CLUSTER:8:18: bricks[0].persistence: persistence 'sync-read' needs DDIO off on the storage NIC (nic.ddio is 'unmanaged'): with DDIO on, RDMA writes land in the CPU cache, outside the persistence domain, and a read does not flush them; set nic.ddio: off or use persistence: rpc"
  snap after
  assert_equal "$(changed before after)" ""
}

@test "ddio apply, nic.ddio on + rpc: a port already on is left on (not written); an off one is turned on" {
  root_port_tree 0x8086 0x2030
  cluster_file on '{netdev: eth9, ddio: on}' rpc
  snap before
  mark_mtime
  run --separate-stderr "$CTL_BIN" --config "$CLUSTER" --brick b ddio apply
  assert_success
  assert_equal "$output" "brick b: ddio on applied"
  snap after
  assert_equal "$(changed before after)" ""
  assert_equal "$(mtime)" "$MTIME"

  run "$CTL_BIN" ddio off --netdev eth9
  assert_success
  snap off
  run --separate-stderr "$CTL_BIN" --config "$CLUSTER" --brick b ddio apply
  assert_success
  snap on
  assert_equal "$(changed off on)" "00000180: 82 00000185: a5"
  run "$CTL_BIN" ddio status --netdev eth9 --json
  assert_equal "$(jq -r '.ports[0].state' <<<"$output")" on
}

@test "ddio apply, nic.ddio unmanaged: touches nothing, whatever the NIC" {
  root_port_tree 0x1022 0x1483
  add_virtual_netdev veth0
  cluster_file un '{netdev: veth0, ddio: unmanaged}' rpc
  snap before
  run --separate-stderr "$CTL_BIN" --config "$CLUSTER" --brick b ddio apply
  assert_success
  assert_equal "$output" "brick b: ddio unmanaged applied"
  snap after
  assert_equal "$(changed before after)" ""
  run "$CTL_BIN" --config "$CLUSTER" --brick nosuch ddio apply
  assert_failure 2
  assert_output --partial "no brick named 'nosuch'"
}

@test "a root port showing only the 256-byte legacy config space is refused, not misread" {
  add_pci "$ROOT_PORT" 0x8086 0x2030 0 0 256
  add_pci "$NIC" 0x15b3 0x1017 0 0
  add_netdev eth9 "$NIC"
  local sha_before
  sha_before=$(sha "$(config_of "$ROOT_PORT")")
  run --separate-stderr "$CTL_BIN" ddio off --netdev eth9
  assert_failure 1
  if [ "$(id -u)" -eq 0 ]; then
    [[ "$stderr" == *"extended (PCIe) config space"*"(EIO)" ]] || fail "stderr: $stderr"
  else
    [[ "$stderr" == *"(EACCES)" ]] || fail "stderr: $stderr"
  fi
  assert_equal "$(sha "$(config_of "$ROOT_PORT")")" "$sha_before"
  assert_equal "$(stat -c %s "$(config_of "$ROOT_PORT")")" 256
}
