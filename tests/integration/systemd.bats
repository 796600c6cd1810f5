#!/usr/bin/env bats
# systemd integration: the installed unit files pass `systemd-analyze verify`,
# and the daemons speak the sd_notify protocol the units rely on (Type=notify,
# NotifyAccess=main, WatchdogSec=) to a stand-in notification socket
# (notify_listener.py).

bats_require_minimum_version 1.5.0

load helpers

PLUGIN_SO="$PBRICK_BIN_DIR/gateway/nbdkit-pbrick-plugin.so"
LISTENER="$BATS_TEST_DIRNAME/notify_listener.py"

teardown() {
  # nbdkit and the listener first, then the bricks.
  if [ -f "$BATS_TEST_TMPDIR/sd_pids" ]; then
    local pid
    while read -r pid; do
      kill -TERM "$pid" 2>/dev/null || continue
      timeout 5 tail --pid="$pid" -f /dev/null || kill -KILL "$pid" 2>/dev/null
      wait "$pid" 2>/dev/null
    done < <(tac "$BATS_TEST_TMPDIR/sd_pids")
  fi
  brick_teardown
}

# ---- install and verify the units ----

# need_systemd_analyze: fails (never skips) when systemd-analyze cannot run.
need_systemd_analyze() {
  command -v systemd-analyze >/dev/null 2>&1 ||
    fail "systemd-analyze not found: the unit files cannot be verified; install the 'systemd' package (Debian/Ubuntu: apt-get install systemd)"
  systemd-analyze --version >/dev/null 2>&1 ||
    fail "systemd-analyze cannot run here: $(systemd-analyze --version 2>&1 | head -n 3)"
}

# install_staged: `cmake --install` of the build dir with --prefix
# $BATS_FILE_TMPDIR/prefix, staged under DESTDIR=$BATS_FILE_TMPDIR/stage so
# that files installed to absolute paths cannot reach the real system. Once
# per file. Sets STAGE and PREFIX.
install_staged() {
  PREFIX="$BATS_FILE_TMPDIR/prefix"
  STAGE="$BATS_FILE_TMPDIR/stage"
  if [ ! -f "$BATS_FILE_TMPDIR/installed" ]; then
    DESTDIR=$STAGE cmake --install "$PBRICK_BIN_DIR" --prefix "$PREFIX" >"$BATS_FILE_TMPDIR/install.log" 2>&1 ||
      fail "cmake --install failed: $(cat "$BATS_FILE_TMPDIR/install.log")"
    touch "$BATS_FILE_TMPDIR/installed"
  fi
}

# staged NAME: the one installed file called NAME, wherever it landed.
staged() {
  local found
  found=$(find "$STAGE" -name "$1" \( -type f -o -type l \))
  [ -n "$found" ] || fail "cmake --install did not install $1; it installed: $(cd "$STAGE" && find . -type f)"
  [ "$(wc -l <<<"$found")" -eq 1 ] || fail "$1 installed more than once: $found"
  echo "$found"
}

# unit_dir: copies the installed units into $BATS_TEST_TMPDIR/units with the
# configured /usr/local paths pointing into the staged install (and the
# plugin's path at the staged plugin). Sets UNITS.
unit_dir() {
  install_staged
  UNITS="$BATS_TEST_TMPDIR/units"
  mkdir -p "$UNITS"
  local plugin unit_plugin u
  plugin=$(staged nbdkit-pbrick-plugin.so)
  for u in pbrick-target@.service pbrick-gateway@.service pbrick-nbd@.service; do
    u=$(staged "$u")
    unit_plugin=$(grep -o '[^ ]*/nbdkit-pbrick-plugin\.so' "$u" || true)
    sed -e "s|/usr/local/|$STAGE$PREFIX/|g" ${unit_plugin:+-e "s|$unit_plugin|$plugin|g"} \
      "$u" >"$UNITS/$(basename "$u")"
  done
}

# verify_unit FILE: `systemd-analyze verify FILE` must exit 0 and say nothing.
# verify reports many mistakes (an unknown key, an unparsable value, a line
# without '=') as warnings and still exits 0, so silence is the criterion.
verify_unit() {
  local out rc=0
  out=$(systemd-analyze verify "$1" 2>&1) || rc=$?
  if [ "$rc" -ne 0 ] || [ -n "$out" ]; then
    echo "systemd-analyze verify $(basename "$1"): exit $rc"
    [ -z "$out" ] || printf '  %s\n' "$out"
    return 1
  fi
}

@test "cmake --install --prefix installs every file under the prefix" {
  install_staged
  local outside
  outside=$(cd "$STAGE" && find . \( -type f -o -type l \) | sed 's|^\.||' | grep -v "^$PREFIX/" | tr '\n' ' ' || true)
  [ -z "$outside" ] || fail "installed outside --prefix $PREFIX (absolute install destinations): $outside"
  [ -x "$STAGE$PREFIX/bin/pbrick-target" ]
  [ -x "$STAGE$PREFIX/bin/pbrickctl" ]
}

@test "the installed units are filled in and pass systemd-analyze verify, template and instance" {
  need_systemd_analyze
  unit_dir
  local u
  for u in "$UNITS"/*.service; do
    ! grep -nE '@[A-Z_]+@' "$u" || fail "$(basename "$u"): placeholder left unfilled"
  done
  # What the units promise.
  grep -qx 'Type=notify' "$UNITS/pbrick-target@.service"
  grep -qx 'NotifyAccess=main' "$UNITS/pbrick-target@.service"
  grep -qE '^WatchdogSec=[1-9]' "$UNITS/pbrick-target@.service"
  grep -qx "ExecStartPre=$STAGE$PREFIX/bin/pbrickctl --config /etc/pbrick/cluster.yaml ddio apply --brick %i" \
    "$UNITS/pbrick-target@.service"
  grep -qx "ExecStart=$STAGE$PREFIX/bin/pbrick-target --config /etc/pbrick/cluster.yaml --brick %i" \
    "$UNITS/pbrick-target@.service"
  grep -qx 'Type=notify' "$UNITS/pbrick-nbd@.service"
  grep -q 'config=/etc/pbrick/cluster.yaml volume=%i' "$UNITS/pbrick-nbd@.service"
  grep -qx 'Type=notify' "$UNITS/pbrick-gateway@.service"
  # Every unit whose daemon may speak RDMA lets it pin memory and reach the
  # RDMA address families (a cluster file may say transport: rdma for any).
  for u in pbrick-target@.service pbrick-gateway@.service pbrick-nbd@.service; do
    grep -qx 'LimitMEMLOCK=infinity' "$UNITS/$u" || fail "$u: no LimitMEMLOCK=infinity (RDMA memory registration)"
    grep -qE '^RestrictAddressFamilies=.*AF_NETLINK' "$UNITS/$u" || fail "$u: AF_NETLINK not allowed (librdmacm)"
    grep -qE '^RestrictAddressFamilies=.*AF_IB' "$UNITS/$u" || fail "$u: AF_IB not allowed (librdmacm)"
  done
  # The gateway unit runs attach through pbrick-gateway-start, which recovers
  # the device a killed daemon left instead (tests/vm/systemd.bats).
  grep -qx "ExecStart=$STAGE$PREFIX/libexec/pbrick/pbrick-gateway-start %i" "$UNITS/pbrick-gateway@.service"
  grep -qx "ExecStartPost=$STAGE$PREFIX/libexec/pbrick/pbrick-gateway-start --record %i \$MAINPID" \
    "$UNITS/pbrick-gateway@.service"
  local start_script
  start_script=$(staged pbrick-gateway-start)
  [ -x "$start_script" ]
  # Configured for the default prefix, as the units are (unit_dir).
  grep -qx "gateway=/usr/local/bin/pbrick-gateway" "$start_script"
  grep -qx 'config=/etc/pbrick/cluster.yaml' "$start_script"
  grep -qx '.*exec "$gateway" attach --config "$config" --volume "$volume"' "$start_script"
  run "$start_script"
  assert_failure 2
  assert_output --partial 'usage: pbrick-gateway-start VOLUME'
  local plugin
  plugin=$(grep -o '[^ ]*/nbdkit-pbrick-plugin\.so' "$UNITS/pbrick-nbd@.service")
  [ -f "$plugin" ] || fail "pbrick-nbd@.service loads $plugin, which is not installed"

  # verify checks every ExecStart*= binary exists. It does not evaluate
  # ConditionPathExists= (/etc/pbrick/cluster.yaml), so that needs nothing.
  # A template is verified with a made-up instance; verify the instance names
  # the docs use as well.
  cp "$UNITS/pbrick-target@.service" "$UNITS/pbrick-target@brick0.service"
  cp "$UNITS/pbrick-nbd@.service" "$UNITS/pbrick-nbd@vol0.service"
  cp "$UNITS/pbrick-gateway@.service" "$UNITS/pbrick-gateway@vol0.service"
  local failed=0
  for u in pbrick-target@.service pbrick-target@brick0.service pbrick-nbd@.service pbrick-nbd@vol0.service \
    pbrick-gateway@.service pbrick-gateway@vol0.service; do
    verify_unit "$UNITS/$u" || failed=1
  done
  [ "$failed" -eq 0 ]
  # The installed binaries run: the unit's ExecStartPre= as systemd would run
  # it for brick0, with the single-node example standing in for the cluster file.
  local example pre
  example=$(cd "$BATS_TEST_DIRNAME/../../config/examples" && pwd)/single-node-tcp.yaml
  pre=$(sed -n 's/^ExecStartPre=//p' "$UNITS/pbrick-target@.service" |
    sed -e 's/%i/brick0/g' -e "s|/etc/pbrick/cluster.yaml|$example|g")
  # shellcheck disable=SC2086 # the command line, split as systemd splits it
  run $pre
  assert_success
  assert_output "brick brick0: ddio unmanaged applied"
  "$STAGE$PREFIX/bin/pbrick-target" --help >/dev/null
}

@test "the verify check fails on real unit errors (it is not vacuous)" {
  need_systemd_analyze
  unit_dir
  local src="$UNITS/pbrick-target@.service" bad="$BATS_TEST_TMPDIR/bad"
  mkdir -p "$bad"
  verify_unit "$src"
  # breakage NAME SED-EXPRESSION: the broken copy must fail verify_unit.
  breakage() {
    sed -e "$2" "$src" >"$bad/pbrick-target@.service"
    cmp -s "$src" "$bad/pbrick-target@.service" && fail "breakage $1 changed nothing"
    if verify_unit "$bad/pbrick-target@.service" >"$bad/$1.out"; then
      fail "systemd-analyze verify accepted a unit with $1"
    fi
  }
  breakage bad-type 's/^Type=notify$/Type=notifyy/'
  breakage unknown-key 's/^WatchdogSec=/WatchdogSex=/'
  breakage missing-equals 's/^Restart=on-failure$/Restart on-failure/'
  breakage bad-time 's/^WatchdogSec=.*/WatchdogSec=30 parsecs/'
  breakage bad-boolean 's/^NoNewPrivileges=yes$/NoNewPrivileges=perhaps/'
  breakage missing-binary 's|/bin/pbrick-target |/bin/pbrick-targett |'
  breakage bad-section 's/^\[Service\]$/[Servce]/'
  grep -q 'notifyy' "$bad/bad-type.out"
  grep -q 'pbrick-targett' "$bad/missing-binary.out"
}

# ---- the notify protocol ----

# start_listener: notify_listener.py on $BATS_TEST_TMPDIR/notify.sock, logging
# to NOTIFY_LOG; waits until it is bound. Sets NOTIFY_SOCK, NOTIFY_LOG.
start_listener() {
  NOTIFY_SOCK="$BATS_TEST_TMPDIR/notify.sock"
  NOTIFY_LOG="$BATS_TEST_TMPDIR/notify.log"
  rm -f "$NOTIFY_SOCK" "$NOTIFY_LOG"
  python3 "$LISTENER" "$NOTIFY_SOCK" "$NOTIFY_LOG" 2>"$BATS_TEST_TMPDIR/listener.err" 3>&- &
  LISTENER_PID=$!
  echo "$LISTENER_PID" >>"$BATS_TEST_TMPDIR/sd_pids"
  local i
  for i in $(seq 1 200); do
    grep -q ' LISTENING$' "$NOTIFY_LOG" 2>/dev/null && return 0
    kill -0 "$LISTENER_PID" 2>/dev/null || break
    sleep 0.05
  done
  fail "notify listener did not start: $(cat "$BATS_TEST_TMPDIR/listener.err")"
}

# wait_for_line TEXT SECONDS [COUNT]: waits until NOTIFY_LOG has COUNT (1)
# messages equal to TEXT.
wait_for_line() {
  local i count=${3:-1}
  for i in $(seq 1 $(($2 * 20))); do
    [ "$(messages | grep -cx "$1")" -ge "$count" ] && return 0
    sleep 0.05
  done
  return 1
}

# messages: the logged messages, without timestamp and pid.
messages() { [ -f "$NOTIFY_LOG" ] && cut -d' ' -f3- "$NOTIFY_LOG" | grep -vx LISTENING || true; }
# senders: the distinct sender pids.
senders() { grep -v ' LISTENING$' "$NOTIFY_LOG" | cut -d' ' -f2 | sort -u | tr '\n' ' ' | sed 's/ $//'; }
# first_index REGEX: 1-based index of the first message matching REGEX, or 0.
first_index() { messages | grep -nE "$1" | head -n 1 | cut -d: -f1 | grep . || echo 0; }

@test "pbrick-target: READY=1, STATUS=serving..., WATCHDOG=1 every WATCHDOG_USEC/2, STOPPING=1" {
  start_listener
  local port
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  # As systemd does: WATCHDOG_PID is the main process, so set it after the
  # fork and exec the daemon in that same process.
  NOTIFY_SOCKET=$NOTIFY_SOCK WATCHDOG_USEC=2000000 bash -c 'export WATCHDOG_PID=$$; exec "$@"' bash \
    "$TARGET_BIN" --store "$BATS_TEST_TMPDIR/b.store" --size 64M --listen "127.0.0.1:$port" \
    2>>"$BATS_TEST_TMPDIR/b.log" 3>&- &
  BRICK_PID=$!
  echo "$BRICK_PID" >>"$BATS_TEST_TMPDIR/pids"
  wait_for_line READY=1 10 || fail "no READY=1 within 10 s: $(cat "$NOTIFY_LOG" "$BATS_TEST_TMPDIR/b.log")"
  # READY=1 means serving: a client gets through right away.
  TARGET="127.0.0.1:$port"
  ctl alloc 0x0
  # The initial WATCHDOG=1 and two periodic ones (about 1 s apart).
  wait_for_line WATCHDOG=1 5 3 || fail "fewer than 3 WATCHDOG=1 within 5 s: $(cat "$NOTIFY_LOG")"
  kill -TERM "$BRICK_PID"
  local rc=0
  wait "$BRICK_PID" || rc=$?
  assert_equal "$rc" 0
  sleep 0.2 # the listener logs what is already queued
  cat "$NOTIFY_LOG"

  # Every message comes from the main process (NotifyAccess=main).
  assert_equal "$(senders)" "$BRICK_PID"
  # Order: READY=1 first, then STATUS=, WATCHDOG=1, ..., STOPPING=1 last.
  assert_equal "$(messages | head -n 1)" "READY=1"
  local ready status watchdog stopping n
  ready=$(first_index '^READY=1$')
  status=$(first_index '^STATUS=')
  watchdog=$(first_index '^WATCHDOG=1$')
  stopping=$(first_index '^STOPPING=1$')
  n=$(messages | wc -l)
  ((ready == 1 && status > ready && watchdog > status && stopping > watchdog)) ||
    fail "order: READY=1 at $ready, STATUS= at $status, WATCHDOG=1 at $watchdog, STOPPING=1 at $stopping"
  assert_equal "$stopping" "$n"
  assert_equal "$(messages | grep -c '^READY=1$')" 1
  assert_equal "$(messages | grep -c '^STOPPING=1$')" 1
  # STATUS says it serves, where, and (refreshed with the watchdog) what it holds.
  assert_equal "$(messages | grep '^STATUS=' | head -n 1)" \
    "STATUS=serving on 127.0.0.1:$port: 0 connections, 0/31 blocks allocated, 0 mapped"
  messages | grep -q "^STATUS=serving on 127.0.0.1:$port: [0-9]* connections, 1/31 blocks allocated" ||
    fail "no STATUS= after the alloc shows 1/31 blocks allocated"
  # The pings keep well inside WATCHDOG_USEC (2 s): every gap below 1.5 s.
  local gaps
  gaps=$(grep ' WATCHDOG=1$' "$NOTIFY_LOG" | awk 'NR > 1 { printf "%.3f\n", $1 - prev } { prev = $1 }')
  echo "watchdog gaps: $gaps"
  awk '$1 >= 1.5 { bad = 1 } END { exit bad }' <<<"$gaps" || fail "watchdog gap of 1.5 s or more: $gaps"
}

@test "pbrick-target sends no WATCHDOG=1 unless the watchdog is for it" {
  start_listener
  # No WATCHDOG_USEC: notify, but no pings.
  NOTIFY_SOCKET=$NOTIFY_SOCK start_brick a
  wait_for_line READY=1 10 || fail "no READY=1: $(cat "$NOTIFY_LOG")"
  local a_pid=$BRICK_PID
  # WATCHDOG_PID naming another process: the watchdog is not ours either.
  NOTIFY_SOCKET=$NOTIFY_SOCK WATCHDOG_USEC=1000000 WATCHDOG_PID=1 start_brick b
  wait_for_line READY=1 10 2 || fail "no second READY=1: $(cat "$NOTIFY_LOG")"
  sleep 1.2 # two would-be watchdog periods
  kill -TERM "$a_pid" "$BRICK_PID"
  wait "$a_pid" "$BRICK_PID" || true
  wait_for_line STOPPING=1 5 2 || fail "not two STOPPING=1: $(cat "$NOTIFY_LOG")"
  cat "$NOTIFY_LOG"
  assert_equal "$(messages | grep -c '^WATCHDOG=1$')" 0
}

@test "nbdkit with the pbrick plugin (config=, volume=): READY=1 + STATUS=serving once listening, STOPPING=1 on SIGTERM" {
  requires nbdkit nbdinfo
  start_brick b
  one_brick_cluster "$BATS_TEST_TMPDIR/cluster.yaml"
  start_listener
  local sock="$BATS_TEST_TMPDIR/nbd.sock" pidfile="$BATS_TEST_TMPDIR/nbd.pid"
  # As pbrick-nbd@.service runs it (--foreground, config=, volume=).
  NOTIFY_SOCKET=$NOTIFY_SOCK nbdkit --foreground --exit-with-parent --unix "$sock" -P "$pidfile" \
    "$PLUGIN_SO" config="$BATS_TEST_TMPDIR/cluster.yaml" volume=vol0 \
    </dev/null >>"$BATS_TEST_TMPDIR/nbdkit.log" 2>&1 3>&- &
  local nbd_pid=$!
  echo "$nbd_pid" >>"$BATS_TEST_TMPDIR/sd_pids"
  wait_for_line READY=1 10 || fail "no READY=1 within 10 s: $(cat "$NOTIFY_LOG" "$BATS_TEST_TMPDIR/nbdkit.log")"
  # READY=1 comes once nbdkit listens: a client connects right away.
  nbdinfo --can connect "nbd+unix:///?socket=$sock"
  # --foreground: the process we started is nbdkit's main process.
  assert_equal "$(cat "$pidfile")" "$nbd_pid"
  kill -TERM "$nbd_pid"
  timeout 10 tail --pid="$nbd_pid" -f /dev/null || fail "nbdkit did not exit on SIGTERM"
  wait_for_line STOPPING=1 5 || fail "no STOPPING=1: $(cat "$NOTIFY_LOG")"
  sleep 0.2
  cat "$NOTIFY_LOG"
  assert_equal "$(senders)" "$nbd_pid"
  run messages
  assert_equal "${lines[0]}" "READY=1"
  assert_equal "${lines[1]}" "STATUS=serving vol0 of 64.0 MiB on brick 127.0.0.1:$BRICK_PORT"
  assert_equal "${lines[-1]}" "STOPPING=1"
  assert_equal "${#lines[@]}" 3
  # READY=1 and STATUS= arrive in one datagram (same timestamp).
  assert_equal "$(grep -E ' (READY=1|STATUS=.*)$' "$NOTIFY_LOG" | cut -d' ' -f1 | sort -u | wc -l)" 1
}
