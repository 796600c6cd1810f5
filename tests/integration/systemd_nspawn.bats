#!/usr/bin/env bats
# shellcheck disable=SC2016 # awk programs and dpkg-query formats run in the container
# The Debian package under a real systemd: a container (systemd-nspawn) boots
# systemd as PID 1 on an overlay of this host's root (a tmpfs takes the
# writes), the package is installed with dpkg, and the units run the daemons
# as an admin would: enable --now, kill, a hung brick, ordering, removal.
#
# The package is $PBRICK_DEB (scripts/test builds it) or, without it, made
# here with scripts/package. One container serves the whole file; the tests
# run in order and the last one removes the package.

bats_require_minimum_version 1.5.0

load helpers
load ../container

ROOT_DIR=$(cd "$BATS_TEST_DIRNAME/../.." && pwd)

# need_tool CMD PACKAGE: fails (never skips) when CMD is missing.
need_tool() {
  command -v "$1" >/dev/null 2>&1 || fail "$1 not found: install the Debian package $2"
}

# ct_teardown: stops the container and unmounts the overlay; safe to run
# twice and after a partial setup.
ct_teardown() {
  ct_stop 20
  ct_unmount
}

# upper_files: what the container changed, as paths below its root (the
# overlay's upper layer), leaving out what any boot or dpkg run changes.
upper_files() {
  (cd "$BATS_FILE_TMPDIR/upper/u" && find . -mindepth 1 \( -type f -o -type l -o -type c \) | sed 's|^\.||') |
    grep -vE '^/(var/lib/(dpkg|systemd|man-db)|var/log|var/cache|tmp|var/tmp|root|etc/(ld\.so\.cache|machine-id|mtab))(/|$)' |
    sort || true
}

setup_file() {
  local dir=$BATS_FILE_TMPDIR
  command -v systemd-nspawn >/dev/null || return 0 # the first test says so
  DEB=${PBRICK_DEB:-}
  if [ -z "$DEB" ]; then
    DEB=$(PBRICK_BUILD_DIR="$PBRICK_BIN_DIR" "$ROOT_DIR/scripts/package" 2>"$dir/package.log" | tail -n 1) || {
      echo "scripts/package failed: $(tail -n 20 "$dir/package.log")" >&2
      return 1
    }
  fi
  echo "$DEB" >"$dir/deb.path"
  ct_mount_overlay || return 1
  ct_boot --deadline 90 --poll 0.1 || return 1
  upper_files >"$dir/before-install.files"
  in_ct sh -c 'cat > /run/pbrick.deb' <"$DEB"
  if ! in_ct dpkg -i /run/pbrick.deb >"$dir/dpkg-i.log" 2>&1; then
    echo "dpkg -i failed: $(cat "$dir/dpkg-i.log")" >&2
    ct_teardown
    return 1
  fi
}

teardown_file() { ct_teardown; }

setup() {
  need_tool systemd-nspawn systemd-container
  need_tool nsenter util-linux
  [ -f "$BATS_FILE_TMPDIR/ct.pid" ] || fail "no container: $(cat "$BATS_FILE_TMPDIR/nspawn.log" 2>/dev/null)"
  DEB=$(cat "$BATS_FILE_TMPDIR/deb.path")
}

# wait_active UNIT SECONDS [NOT_PID]: until UNIT is active (with a main pid
# other than NOT_PID).
wait_active() {
  local _
  for _ in $(seq 1 $(($2 * 10))); do
    if [ "$(unit_prop "$1" ActiveState)" = active ] && [ "$(unit_prop "$1" MainPID)" != "${3:-x}" ] &&
      [ "$(unit_prop "$1" MainPID)" != 0 ]; then
      return 0
    fi
    sleep 0.1
  done
  in_ct systemctl status --no-pager "$1" || true
  return 1
}

NBD_URI='nbd+unix:///?socket=/run/pbrick/vol0.sock'

# vol_sum: sha256 of vol0's first 4 MiB (blocks 0 and 1) read through the export.
vol_sum() {
  in_ct sh -c "rm -f /run/vol.out && qemu-img dd -f raw -O raw bs=1M count=4 if='$NBD_URI' of=/run/vol.out &&
    sha256sum /run/vol.out && rm /run/vol.out" | cut -d' ' -f1
}

@test "package: lintian reports no errors" {
  need_tool lintian lintian
  run lintian --fail-on error --tag-display-limit 0 "$DEB"
  echo "$output"
  assert_success
  refute_output --regexp '^E: '
}

@test "dpkg -i: binaries, plugin in nbdkit's directory, units, man pages, state dir; nothing started" {
  cat "$BATS_FILE_TMPDIR/dpkg-i.log"
  assert_equal "$(in_ct dpkg-query -W -f='${Status}' pbrick)" "install ok installed"
  # Every Depends: is satisfied (dpkg -i would have failed otherwise) and
  # names the shared libraries the binaries link.
  local depends
  depends=$(dpkg-deb -f "$DEB" Depends)
  echo "Depends: $depends"
  local names
  names=$(sed -e 's/ ([^)]*)//g' -e 's/, /\n/g' <<<"$depends")
  for lib in libc6 libstdc++6 liburing2 libpmem1 libibverbs1 librdmacm1 libsystemd0 libssl3 libyaml-cpp0.7; do
    grep -qxF "$lib" <<<"$names" || fail "Depends lacks $lib: $depends"
  done
  in_ct test -x /usr/bin/pbrick-target
  in_ct test -x /usr/bin/pbrick-gateway
  in_ct test -x /usr/bin/pbrickctl
  local plugindir
  plugindir=$(in_ct nbdkit --dump-config | sed -n 's/^plugindir=//p')
  in_ct test -f "$plugindir/nbdkit-pbrick-plugin.so"
  # nbdkit finds it by its short name.
  in_ct nbdkit pbrick --version
  for page in pbrick-target.8 pbrick-gateway.8 pbrickctl.8 pbrick-cluster.yaml.5; do
    in_ct test -f "/usr/share/man/man${page##*.}/$page.gz"
  done
  run in_ct man -w pbrick-cluster.yaml
  assert_output /usr/share/man/man5/pbrick-cluster.yaml.5.gz
  in_ct pbrickctl config check /etc/pbrick/cluster.yaml
  # The state directory, for root only.
  assert_equal "$(in_ct stat -c '%a %U' /var/lib/pbrick)" "700 root"
  # daemon-reload ran: systemd knows the templates.
  run in_ct systemctl list-unit-files --no-legend 'pbrick-*'
  assert_line --regexp '^pbrick-target@\.service +(disabled|indirect) '
  assert_line --regexp '^pbrick-nbd@\.service '
  assert_line --regexp '^pbrick-gateway@\.service '
  # Installing starts and enables nothing.
  assert_equal "$(in_ct systemctl list-units --all --no-legend 'pbrick-*' | wc -l)" 0
  assert_equal "$(in_ct find /etc/systemd/system -name 'pbrick-*' | wc -l)" 0
}

@test "systemctl enable --now pbrick-target@brick0: active after READY=1, STATUS= in systemctl status" {
  in_ct systemctl enable --now pbrick-target@brick0
  # Type=notify: enable --now returns once the brick said READY=1.
  assert_equal "$(unit_prop pbrick-target@brick0 ActiveState)" active
  assert_equal "$(unit_prop pbrick-target@brick0 Type)" notify
  in_ct test -L /etc/systemd/system/multi-user.target.wants/pbrick-target@brick0.service
  run in_ct systemctl status --no-pager pbrick-target@brick0
  echo "$output"
  assert_line --regexp '^ +Active: active \(running\)'
  assert_line --regexp '^ +Status: "serving on 127\.0\.0\.1:7100: [0-9]+ connections, 0/[0-9]+ blocks allocated'
  run in_ct pbrickctl --target 127.0.0.1:7100 stat
  assert_success
  # The store of the shipped cluster file, in the state directory.
  in_ct test -f /var/lib/pbrick/brick0.store
}

@test "pbrick-nbd@vol0 exports vol0: nbdinfo reads it, data written through it reads back" {
  in_ct systemctl start pbrick-nbd@vol0
  assert_equal "$(unit_prop pbrick-nbd@vol0 ActiveState)" active
  run in_ct nbdinfo --size "$NBD_URI"
  assert_success
  assert_output 1073741824
  run in_ct systemctl status --no-pager pbrick-nbd@vol0
  assert_line --regexp 'Status: "serving vol0 of 1\.0 GiB on brick 127\.0\.0\.1:7100"'
  # 4 MiB of random data: two 2 MiB blocks.
  head -c 4M /dev/urandom >"$BATS_FILE_TMPDIR/data"
  sha256sum <"$BATS_FILE_TMPDIR/data" | cut -d' ' -f1 >"$BATS_FILE_TMPDIR/data.sum"
  in_ct nbdcopy --flush - "$NBD_URI" <"$BATS_FILE_TMPDIR/data"
  assert_equal "$(vol_sum)" "$(cat "$BATS_FILE_TMPDIR/data.sum")"
  run in_ct pbrickctl --target 127.0.0.1:7100 --json list
  # The data blocks, then the volume's label area (docs/layout.md "Volume label").
  assert_equal "$(jq -c '[.extents[] | [.start, .blocks]]' <<<"$output")" \
    '[["0x0",2],["0x8000000000000000",1],["0x8000000000200000",1]]'
}

@test "systemctl kill -s KILL: Restart= brings the brick back and the export resumes" {
  local old restarts
  old=$(unit_prop pbrick-target@brick0 MainPID)
  restarts=$(unit_prop pbrick-target@brick0 NRestarts)
  in_ct systemctl kill -s KILL pbrick-target@brick0
  wait_active pbrick-target@brick0 15 "$old" || fail "the brick did not come back within 15 s"
  assert_equal "$(unit_prop pbrick-target@brick0 NRestarts)" $((restarts + 1))
  # The same nbdkit (it was not restarted) serves the flushed data again.
  assert_equal "$(unit_prop pbrick-nbd@vol0 NRestarts)" 0
  assert_equal "$(vol_sum)" "$(cat "$BATS_FILE_TMPDIR/data.sum")"
}

@test "pbrick-nbd@vol0 killed (SIGKILL): Restart= serves the export again on its socket" {
  local old restarts
  old=$(unit_prop pbrick-nbd@vol0 MainPID)
  restarts=$(unit_prop pbrick-nbd@vol0 NRestarts)
  in_ct systemctl kill -s KILL pbrick-nbd@vol0
  wait_active pbrick-nbd@vol0 15 "$old" || fail "the export did not come back within 15 s"
  assert_equal "$(unit_prop pbrick-nbd@vol0 NRestarts)" $((restarts + 1))
  assert_equal "$(vol_sum)" "$(cat "$BATS_FILE_TMPDIR/data.sum")"
}

@test "a hung brick (SIGSTOP) is killed by the watchdog and restarted (WatchdogSec=3s drop-in)" {
  # The shipped 30 s would make this test wait a minute: a runtime drop-in
  # shortens it, as an admin would with systemctl edit --runtime.
  in_ct mkdir -p /run/systemd/system/pbrick-target@brick0.service.d
  printf '[Service]\nWatchdogSec=3s\n' | in_ct sh -c 'cat > /run/systemd/system/pbrick-target@brick0.service.d/watchdog.conf'
  in_ct systemctl daemon-reload
  in_ct systemctl restart pbrick-target@brick0
  assert_equal "$(unit_prop pbrick-target@brick0 WatchdogUSec)" 3s
  local old restarts
  old=$(unit_prop pbrick-target@brick0 MainPID)
  restarts=$(unit_prop pbrick-target@brick0 NRestarts)
  # Pings keep it alive past WatchdogSec.
  sleep 4
  assert_equal "$(unit_prop pbrick-target@brick0 MainPID)" "$old"
  local start=$SECONDS
  in_ct systemctl kill -s STOP pbrick-target@brick0
  # WatchdogSec (3 s), then SIGABRT (systemd sends SIGCONT after it, so a
  # stopped brick takes it), RestartSec (2 s) and the start.
  wait_active pbrick-target@brick0 10 "$old" || fail "not restarted within 10 s"
  echo "restarted after $((SECONDS - start)) s"
  assert_equal "$(unit_prop pbrick-target@brick0 NRestarts)" $((restarts + 1))
  run in_ct journalctl -u pbrick-target@brick0 --no-pager -o cat
  assert_line --partial 'Watchdog timeout'
  assert_equal "$(vol_sum)" "$(cat "$BATS_FILE_TMPDIR/data.sum")"
  in_ct rm -r /run/systemd/system/pbrick-target@brick0.service.d
  in_ct systemctl daemon-reload
}

@test "journalctl -u shows the brick's own messages with their priorities" {
  # A malformed frame makes the brick warn.
  in_ct python3 -c 'import socket; s = socket.create_connection(("127.0.0.1", 7100)); s.sendall(b"x" * 32); s.recv(64)' || true
  local pid
  pid=$(unit_prop pbrick-target@brick0 MainPID)
  for _ in $(seq 1 50); do
    in_ct journalctl -u pbrick-target@brick0 _PID="$pid" -p warning --no-pager -o cat | grep -q 'closing connection' && break
    sleep 0.1
  done
  run in_ct journalctl -u pbrick-target@brick0 _PID="$pid" --no-pager -o json
  # The <N> prefix became PRIORITY=, and is gone from the message.
  local entries
  entries=$(jq -r '"\(.PRIORITY) \(.MESSAGE)"' <<<"$output")
  echo "$entries"
  grep -qE '^6 store /var/lib/pbrick/brick0\.store: [0-9]+ blocks of 2 MiB' <<<"$entries" ||
    fail "no info (6) message about the store"
  grep -qE '^4 127\.0\.0\.1:[0-9]+: closing connection' <<<"$entries" || fail "no warning (4) about the malformed frame"
  ! grep -qE '^[0-9] <[0-9]>' <<<"$entries" || fail "a <N> prefix was left in a message"
  # journalctl -p filters by it.
  run in_ct journalctl -u pbrick-target@brick0 _PID="$pid" -p warning --no-pager -o cat
  refute_output --partial 'blocks of 2 MiB'
}

@test "pbrick-gateway@vol0 where ublk cannot be had fails, saying why (it is not skipped as done)" {
  # The container has no /dev/ublk-control and cannot load ublk_drv (this
  # host's kernel has none): the unit's modprobe runs, attach names the
  # missing device, and the unit fails rather than being skipped by a
  # condition checked before the modprobe could create the node.
  run in_ct systemctl start pbrick-gateway@vol0
  assert_failure
  run in_ct journalctl -u pbrick-gateway@vol0 --no-pager -o cat
  assert_output --partial 'open /dev/ublk-control (is ublk_drv loaded?)'
  in_ct systemctl stop pbrick-gateway@vol0
  in_ct systemctl reset-failed pbrick-gateway@vol0 || true
}

@test "a gateway next to its brick (README's drop-in): a brick crash leaves it running; stops go gateway first" {
  # How a gateway on the brick's host declares the dependency (README).
  in_ct mkdir -p /run/systemd/system/pbrick-nbd@vol0.service.d
  printf '[Unit]\nWants=pbrick-target@brick0.service\nAfter=pbrick-target@brick0.service\n' |
    in_ct sh -c 'cat > /run/systemd/system/pbrick-nbd@vol0.service.d/brick.conf'
  in_ct systemctl daemon-reload
  in_ct systemctl restart pbrick-nbd@vol0 || { in_ct journalctl -u pbrick-nbd@vol0 --no-pager | tail -n 30; false; }
  # A brick that crashes is restarted alone: its gateway reconnects. (A
  # Requires= here would make systemd restart the gateway with it, and a
  # ublk gateway's restart deletes its device under whatever uses it.)
  local gw_pid brick_pid
  gw_pid=$(unit_prop pbrick-nbd@vol0 MainPID)
  brick_pid=$(unit_prop pbrick-target@brick0 MainPID)
  in_ct systemctl kill -s KILL pbrick-target@brick0
  wait_active pbrick-target@brick0 15 "$brick_pid" || fail "the brick did not come back within 15 s"
  sleep 1
  assert_equal "$(unit_prop pbrick-nbd@vol0 MainPID)" "$gw_pid"
  assert_equal "$(vol_sum)" "$(cat "$BATS_FILE_TMPDIR/data.sum")"
  # Stopped in one transaction, as at shutdown (shutdown.target conflicts
  # with every unit; `systemctl stop A B` would be two transactions, whose
  # jobs are not ordered against each other), the gateway stops first.
  local since
  since=$(in_ct date '+%Y-%m-%d %H:%M:%S')
  sleep 1
  printf '[Unit]\nConflicts=pbrick-target@brick0.service pbrick-nbd@vol0.service\n' |
    in_ct sh -c 'cat > /run/systemd/system/pbrick-stop-both.target'
  in_ct systemctl daemon-reload
  in_ct systemctl start pbrick-stop-both.target
  in_ct systemctl stop pbrick-stop-both.target
  in_ct rm /run/systemd/system/pbrick-stop-both.target
  in_ct systemctl daemon-reload
  assert_equal "$(unit_prop pbrick-target@brick0 ActiveState)" inactive
  assert_equal "$(unit_prop pbrick-nbd@vol0 ActiveState)" inactive
  run in_ct journalctl _PID=1 --since "$since" --no-pager -o cat
  echo "$output"
  local nbd_stopped brick_stopping
  nbd_stopped=$(grep -n '^Stopped pbrick-nbd@vol0\.service\|^Stopped pbrick NBD export of volume vol0' <<<"$output" | head -n 1 | cut -d: -f1)
  brick_stopping=$(grep -n '^Stopping pbrick-target@brick0\.service\|^Stopping pbrick brick brick0' <<<"$output" | head -n 1 | cut -d: -f1)
  [ -n "$nbd_stopped" ] && [ -n "$brick_stopping" ] || fail "no stop messages for both units"
  ((nbd_stopped < brick_stopping)) || fail "the brick was stopped before the gateway that needs it"
  # Starting the gateway brings its brick up first, and the data is there.
  in_ct systemctl start pbrick-nbd@vol0
  assert_equal "$(unit_prop pbrick-target@brick0 ActiveState)" active
  assert_equal "$(vol_sum)" "$(cat "$BATS_FILE_TMPDIR/data.sum")"
}

@test "a store outside /var/lib/pbrick is read-only to the brick until ReadWritePaths= has it (docs/config.md)" {
  local dropin=/run/systemd/system/pbrick-target@brick0.service.d/store-dir.conf
  in_ct systemctl stop pbrick-nbd@vol0 pbrick-target@brick0
  in_ct mkdir -p /srv/pbrick "${dropin%/*}"
  # The shipped file puts the store in ${PBRICK_STATE_DIR:-/var/lib/pbrick}.
  printf '[Service]\nEnvironment=PBRICK_STATE_DIR=/srv/pbrick\n' | in_ct sh -c "cat > $dropin"
  in_ct systemctl daemon-reload
  run in_ct systemctl start pbrick-target@brick0
  assert_failure
  run in_ct journalctl -u pbrick-target@brick0 --no-pager -o cat -n 30
  assert_output --partial '/srv/pbrick/brick0.store'
  assert_output --partial 'Read-only file system'
  in_ct systemctl stop pbrick-target@brick0
  in_ct systemctl reset-failed pbrick-target@brick0
  # The drop-in docs/config.md gives.
  printf 'ReadWritePaths=/srv/pbrick\n' | in_ct sh -c "cat >> $dropin"
  in_ct systemctl daemon-reload
  in_ct systemctl start pbrick-target@brick0 ||
    fail "$(in_ct journalctl -u pbrick-target@brick0 --no-pager -o cat -n 20)"
  in_ct test -f /srv/pbrick/brick0.store
  in_ct systemctl stop pbrick-target@brick0
  in_ct rm "$dropin" /srv/pbrick/brick0.store
  in_ct systemctl daemon-reload
}

@test "a brick whose store is not there yet restarts past systemd's start limit and serves once it appears" {
  # As a devdax namespace made late in boot, or an RDMA device coming back
  # after a removal stopped the brick: each start fails at once. Restart=
  # must keep trying for longer than the default start limit (5 starts in
  # 10 s), or the unit stays failed when the store shows up.
  local dropin=/run/systemd/system/pbrick-target@brick0.service.d/late-store.conf
  in_ct mkdir -p "${dropin%/*}"
  printf '[Service]\nEnvironment=PBRICK_STATE_DIR=/var/lib/pbrick/late\n' | in_ct sh -c "cat > $dropin"
  in_ct systemctl daemon-reload
  in_ct systemctl start --no-block pbrick-target@brick0
  local restarts=0
  for _ in $(seq 1 300); do
    restarts=$(unit_prop pbrick-target@brick0 NRestarts)
    ((restarts >= 7)) && break
    [ "$(unit_prop pbrick-target@brick0 ActiveState)" != failed ] ||
      fail "the unit gave up after $restarts restarts: $(in_ct systemctl status --no-pager pbrick-target@brick0)"
    sleep 0.1
  done
  ((restarts >= 7)) || fail "only $restarts restarts in 30 s"
  run in_ct journalctl -u pbrick-target@brick0 --no-pager -o cat -n 40
  assert_output --partial '/var/lib/pbrick/late/brick0.store'
  in_ct mkdir /var/lib/pbrick/late
  wait_active pbrick-target@brick0 10 || fail "the brick did not start within 10 s of its store's directory appearing"
  in_ct test -f /var/lib/pbrick/late/brick0.store
  in_ct systemctl stop pbrick-target@brick0
  in_ct rm -r "$dropin" /var/lib/pbrick/late
  in_ct systemctl daemon-reload
}

@test "hardening: the daemons ran under it; systemd-analyze security scores reported" {
  in_ct systemctl start pbrick-target@brick0 pbrick-nbd@vol0
  in_ct nbdinfo --can connect "$NBD_URI"
  assert_equal "$(unit_prop pbrick-target@brick0 ActiveState)" active
  assert_equal "$(unit_prop pbrick-nbd@vol0 ActiveState)" active
  # The settings are in force in the running services.
  local pid
  pid=$(unit_prop pbrick-target@brick0 MainPID)
  assert_equal "$(in_ct awk '/^NoNewPrivs:/ {print $2}' "/proc/$pid/status")" 1
  # ProtectSystem=strict: the brick sees / read-only, its state directory writable.
  run in_ct awk '$5 == "/" { print $6 }' "/proc/$pid/mountinfo"
  assert_output --regexp '^ro(,|$)'
  run in_ct awk '$5 == "/var/lib/pbrick" { print $6 }' "/proc/$pid/mountinfo"
  assert_output --regexp '^rw(,|$)'
  local unit score
  for unit in pbrick-target@brick0 pbrick-nbd@vol0 pbrick-gateway@vol0; do
    run in_ct systemd-analyze security --no-pager "$unit.service"
    score=$(grep -o 'Overall exposure level for [^:]*: [0-9.]* [A-Z]*' <<<"$output" | sed 's/.*: //')
    [ -n "$score" ] || fail "no exposure level for $unit: $output"
    echo "# systemd-analyze security $unit: $score" >&3
    # Whatever the score, not UNSAFE (9.0 and above).
    awk -v s="${score%% *}" 'BEGIN { exit !(s < 9.0) }' || fail "$unit: exposure $score"
  done
}

@test "dpkg -r leaves only configuration and state; dpkg --purge removes those too" {
  local installed
  installed=$(in_ct dpkg -L pbrick)
  in_ct dpkg -r pbrick
  # prerm stopped the running instances.
  assert_equal "$(in_ct systemctl list-units --state=active --no-legend 'pbrick-*' | wc -l)" 0
  local f left=()
  while read -r f; do
    [ "$f" = /etc/pbrick/cluster.yaml ] && continue
    in_ct test -d "$f" && continue # shared directories such as /usr/bin
    ! in_ct test -e "$f" || left+=("$f")
  done <<<"$installed"
  ((${#left[@]} == 0)) || fail "dpkg -r left: ${left[*]}"
  comm -13 "$BATS_FILE_TMPDIR/before-install.files" <(upper_files) >"$BATS_FILE_TMPDIR/after-remove.files"
  cat "$BATS_FILE_TMPDIR/after-remove.files"
  # Only configuration (the conffile, the enable link) and state (the store).
  run grep -vE '^(/etc/pbrick/cluster\.yaml|/etc/systemd/system/multi-user\.target\.wants/pbrick-target@brick0\.service|/var/lib/pbrick/brick0\.store)$' \
    "$BATS_FILE_TMPDIR/after-remove.files"
  assert_output ''
  grep -qx /var/lib/pbrick/brick0.store "$BATS_FILE_TMPDIR/after-remove.files"
  grep -qx /etc/pbrick/cluster.yaml "$BATS_FILE_TMPDIR/after-remove.files"

  in_ct dpkg --purge pbrick
  run comm -13 "$BATS_FILE_TMPDIR/before-install.files" <(upper_files)
  assert_output ''
  in_ct test ! -e /var/lib/pbrick
  in_ct test ! -e /etc/pbrick
  assert_equal "$(in_ct dpkg-query -W -f='${Status}' pbrick 2>/dev/null || true)" ""
}
