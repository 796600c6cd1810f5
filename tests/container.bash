# systemd as PID 1 in a systemd-nspawn container on an overlay of this
# machine's root (a tmpfs takes the writes), for the bats files that run the
# package's units under a real systemd: tests/integration/systemd_nspawn.bats
# (on the host) and tests/vm/systemd.bats (in the system-tier VM).
#
# One container per bats file, its state in $BATS_FILE_TMPDIR: upper/ (the
# tmpfs), root/ (the overlay), nspawn.pid, ct.pid (the container's PID 1),
# nspawn.log, boot.state. Call from setup_file: ct_mount_overlay, then
# ct_boot. The caller defines ct_teardown (stop what it started, then
# ct_stop and ct_unmount; safe to run twice and after a partial setup):
# these functions run it when they fail.
# shellcheck shell=bash

# in_ct CMD...: runs CMD inside the container: its namespaces and its root
# (-r: nspawn moves the container's root over / and chroots, so the mount
# namespace's own root is not it).
in_ct() { nsenter -t "$(cat "$BATS_FILE_TMPDIR/ct.pid")" -a -r -w "$@"; }

# unit_prop UNIT PROPERTY: one property's value.
unit_prop() { in_ct systemctl show -P "$2" "$1"; }

# ct_mount_overlay: the container's root: an overlay of / whose upper layer
# is a tmpfs.
ct_mount_overlay() {
  local dir=$BATS_FILE_TMPDIR
  mkdir -p "$dir/upper" "$dir/root"
  if ! mount -t tmpfs -o mode=0755 pbrick-ct "$dir/upper"; then
    echo "cannot mount a tmpfs on $dir/upper" >&2
    ct_teardown
    return 1
  fi
  mkdir -p "$dir/upper/u" "$dir/upper/w"
  if ! mount -t overlay pbrick-ct -o "lowerdir=/,upperdir=$dir/upper/u,workdir=$dir/upper/w" "$dir/root"; then
    echo "cannot mount an overlay on the root" >&2
    ct_teardown
    return 1
  fi
}

# ct_boot [--deadline SECONDS] [--poll SECONDS] [--on-pid1 FUNCTION] [--] [ARG...]:
# boots systemd (systemd.unit=basic.target: the host's own services, enabled
# in multi-user.target, stay off) in a container with a private network
# (only its loopback) on the overlay, and returns once systemctl
# is-system-running says running or degraded. --deadline bounds the whole
# boot (default 90: generous, the machine may be busy); --poll is the
# interval of the waits (default 0.1); FUNCTION runs with the PID of the
# container's PID 1 as soon as it is known. Each ARG starting with - is
# an extra systemd-nspawn option (--bind=...), every other one goes to the
# container's systemd (systemd.mask=...).
ct_boot() {
  local dir=$BATS_FILE_TMPDIR limit=90 poll=0.1 on_pid1=""
  while (($#)); do
    case $1 in
    --deadline) limit=$2 && shift 2 ;;
    --poll) poll=$2 && shift 2 ;;
    --on-pid1) on_pid1=$2 && shift 2 ;;
    --) shift && break ;;
    *) break ;;
    esac
  done
  # nspawn takes its options before the first word for the container's
  # systemd (it stops parsing there).
  local options=() init_args=() arg
  for arg in "$@"; do
    if [[ $arg == -* ]]; then options+=("$arg"); else init_args+=("$arg"); fi
  done
  systemd-nspawn --directory="$dir/root" --volatile=no --boot --register=no --keep-unit \
    --private-network --machine="pbrick-test-$$" "${options[@]}" systemd.unit=basic.target "${init_args[@]}" \
    </dev/null >"$dir/nspawn.log" 2>&1 3>&- &
  echo $! >"$dir/nspawn.pid"
  local pid="" deadline=$((SECONDS + limit))
  while ((SECONDS < deadline)); do
    # The container's PID 1: nspawn's child that runs systemd (nspawn
    # forks a short-lived helper first).
    pid=$(pgrep -x -P "$(cat "$dir/nspawn.pid")" systemd || true)
    [ -n "$pid" ] && break
    kill -0 "$(cat "$dir/nspawn.pid")" 2>/dev/null || break
    sleep "$poll"
  done
  if [ -z "$pid" ]; then
    echo "systemd-nspawn did not start systemd: $(cat "$dir/nspawn.log")" >&2
    ct_teardown
    return 1
  fi
  echo "$pid" >"$dir/ct.pid"
  [ -z "$on_pid1" ] || "$on_pid1" "$pid"
  while ((SECONDS < deadline)); do
    if [ -e "/proc/$pid/root/run/systemd/system" ]; then
      timeout $((deadline - SECONDS + 1)) nsenter -t "$pid" -a -r -w systemctl is-system-running --wait \
        >"$dir/boot.state" 2>&1 || true
      grep -qE '^(running|degraded)$' "$dir/boot.state" && break
    fi
    sleep "$poll"
  done
  if ! grep -qE '^(running|degraded)$' "$dir/boot.state" 2>/dev/null; then
    echo "the container did not boot within $limit s: $(cat "$dir/boot.state" "$dir/nspawn.log" 2>&1)" >&2
    ct_teardown
    return 1
  fi
}

# ct_stop TERM_WAIT: stops the container: SIGTERM to nspawn (it asks the
# container's systemd to stop its units and power off), up to TERM_WAIT
# seconds for that, then SIGKILL. Safe to run twice and after a partial setup.
ct_stop() {
  local dir=$BATS_FILE_TMPDIR term_wait=$1 pid init
  [ -f "$dir/nspawn.pid" ] || return 0
  pid=$(cat "$dir/nspawn.pid")
  init=$(pgrep -P "$pid" | tr '\n' ' ')
  kill -TERM "$pid" 2>/dev/null && { timeout "$term_wait" tail --pid="$pid" -f /dev/null || true; }
  # Still there (e.g. stopped while it started): SIGKILL to the
  # container's PID 1 ends every process in it, then nspawn.
  # shellcheck disable=SC2086 # a list of pids
  [ -z "$init" ] || kill -KILL $init 2>/dev/null || true
  kill -KILL "$pid" 2>/dev/null && { timeout 10 tail --pid="$pid" -f /dev/null || true; }
  rm -f "$dir/nspawn.pid"
  return 0
}

# ct_unmount: unmounts the overlay and its tmpfs (lazily when busy).
ct_unmount() {
  local dir=$BATS_FILE_TMPDIR
  if mountpoint -q "$dir/root"; then umount "$dir/root" || umount -l "$dir/root"; fi
  if mountpoint -q "$dir/upper"; then umount "$dir/upper" || umount -l "$dir/upper"; fi
  return 0
}
