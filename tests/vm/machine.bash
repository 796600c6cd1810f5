# Machines: guests of the system tier's kernel that run one role each (a
# brick, later an initiator) in the background while the test drives them from
# the host, and that can lose power. Source it from bash; see README.md
# ("Machines").
#
#   machine_prepare DIR                 once: kernel + initramfs (tests/vm/run
#                                       --prepare); DIR holds the machines'
#                                       jobs, logs and disks, the guests see it
#   machine_disk FILE SIZE              a sparse host file with a fresh ext4
#   machine_start NAME --disk FILE --job FILE [--forward HOSTPORT:GUESTPORT]...
#                 [--link LOCALPORT:REMOTEPORT:ADDRESS/PREFIX] [--mem SIZE] [--cpus N]
#                                       boots NAME in the background; the job
#                                       (bash, in the guest's tree) runs with
#                                       FILE mounted at /var/tmp; --link: a
#                                       second NIC, eth1 with ADDRESS, on a
#                                       link to the machine whose ports are
#                                       the other way round (UDP on 127.0.0.1)
#   machine_wait NAME REGEX [SECONDS]   until the job prints a matching line
#   machine_cut NAME                    power cut: SIGKILL of qemu
#   machine_stop_all                    cuts every machine still running
#   machine_console NAME [LINES]        the end of NAME's console (kernel log)
#   machine_free_port [udp]             a free TCP (UDP) port on 127.0.0.1
#
#   machine_start_brick NAME DISK HOSTPORT SIZE [pbrick-target args...] [-- machine_start args...]
#                                       a brick VM: pbrick-target serving
#                                       /var/tmp/brick.store (SIZE) of DISK,
#                                       reachable at 127.0.0.1:HOSTPORT (and at
#                                       port 7000 of its --link address: give
#                                       machine_start arguments after --);
#                                       returns once it serves
#
# A machine is one qemu process: 1 vCPU and 384M unless told otherwise, the
# host root read-only over 9p as in the bats VM, user networking with
# restrict=on (the guest reaches nothing) and forwards from 127.0.0.1 only,
# DISK as virtio-blk with cache=writeback: qemu writes what the guest writes
# to the host file and fdatasyncs it on the guest's flushes, so what the guest
# kernel had not written (a page cache no fdatasync covered) is lost with
# qemu, as at a power cut. (The host keeps what qemu wrote, flushed or not: a
# disk's volatile cache is not modelled.)
#
# Files in DIR: NAME.job (the job), NAME.out (the job's output: ttyS1),
# NAME.console (ttyS0: the kernel's messages), NAME.qemu (qemu's stderr).
# shellcheck shell=bash

MACHINE_VM_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MACHINE_DIR=
declare -A MACHINE_PID=()

machine_prepare() {
  MACHINE_DIR=$(realpath -m "$1")
  mkdir -p "$MACHINE_DIR" || return 1
  "$MACHINE_VM_DIR/run" --prepare "$MACHINE_DIR/boot.env" || return 1
  # shellcheck disable=SC1091 # written by run --prepare
  source "$MACHINE_DIR/boot.env"
}

machine_disk() {
  local file=$1 size=$2
  rm -f "$file"
  truncate -s "$size" "$file" &&
    mkfs.ext4 -q -F -m 0 -E lazy_itable_init=0,lazy_journal_init=0,nodiscard "$file"
}

machine_free_port() {
  python3 -c 'import socket, sys
s = socket.socket(type=socket.SOCK_DGRAM if sys.argv[1:] == ["udp"] else socket.SOCK_STREAM)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])' "$@"
}

machine_start() {
  local name=$1 disk='' job='' mem=384M cpus=1 fwd='' link=() append=''
  shift
  while (($#)); do
    case $1 in
    --disk) disk=$2 ;;
    --job) job=$2 ;;
    --mem) mem=$2 ;;
    --cpus) cpus=$2 ;;
    --forward) fwd+=",hostfwd=tcp:127.0.0.1:${2%%:*}-10.0.2.15:${2#*:}" ;;
    --link)
      # A point-to-point Ethernet over UDP: survives either end's restart.
      local ports=${2%:*} addr=${2##*:}
      local ip=${addr%/*}
      link=(-netdev "socket,id=n1,localaddr=127.0.0.1:${ports%%:*},udp=127.0.0.1:${ports#*:}"
        -device "virtio-net-pci,netdev=n1,romfile=,mac=52:54:00:7e:$(printf '%02x:%02x' "$(cut -d. -f3 <<<"$ip")" "${ip##*.}")")
      append+=" pbrick.eth1=$addr"
      ;;
    *) echo "machine_start: unknown argument $1" >&2 && return 2 ;;
    esac
    shift 2
  done
  [ -n "$MACHINE_DIR" ] || { echo "machine_start: call machine_prepare first" >&2; return 2; }
  [ -f "$disk" ] || { echo "machine_start $name: no disk '$disk'" >&2; return 2; }
  [ -f "$job" ] || { echo "machine_start $name: no job '$job'" >&2; return 2; }
  [ -z "${MACHINE_PID[$name]:-}" ] || { echo "machine_start: $name is running" >&2; return 2; }
  {
    echo '# written by tests/vm/machine.bash; run by tests/vm/init in the guest'
    printf '%s\n' "$VM_JOB_ENV"
    cat "$job"
  } >"$MACHINE_DIR/$name.job"
  : >"$MACHINE_DIR/$name.out"
  : >"$MACHINE_DIR/$name.console"
  # shellcheck disable=SC2054 # commas inside qemu option values
  "$VM_QEMU" "${VM_QEMU_ARGS[@]}" -m "$mem" -smp "$cpus" \
    -append "$VM_APPEND pbrick.modset=machine pbrick.job=$MACHINE_DIR/$name.job$append" \
    -netdev "user,id=n0,restrict=on$fwd" -device virtio-net-pci,netdev=n0,romfile= "${link[@]}" \
    -drive "file=$disk,if=virtio,format=raw,cache=writeback,discard=unmap" \
    -monitor none -serial "file:$MACHINE_DIR/$name.console" -serial "file:$MACHINE_DIR/$name.out" \
    </dev/null >"$MACHINE_DIR/$name.qemu" 2>&1 3>&- &
  MACHINE_PID[$name]=$!
}

machine_console() {
  tr -d '\r' <"$MACHINE_DIR/$1.console" | sed -E 's/\x1b(\[[0-9;?]*[A-Za-z]|c)//g' | grep -v '^\s*$' |
    tail -n "${2:-30}"
}

machine_wait() {
  local name=$1 regex=$2 seconds=${3:-120} pid=${MACHINE_PID[$1]:-} end
  end=$((SECONDS + seconds))
  while ((SECONDS < end)); do
    tr -d '\r' <"$MACHINE_DIR/$name.out" | grep -qE "$regex" && return 0
    if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
      echo "machine $name stopped before printing /$regex/:" >&2
      break
    fi
    if grep -q 'PBRICK-VM-ERROR' "$MACHINE_DIR/$name.out"; then
      echo "machine $name: guest setup failed:" >&2
      break
    fi
    sleep 0.1
  done
  ((SECONDS < end)) || echo "machine $name did not print /$regex/ within ${seconds}s:" >&2
  {
    cat "$MACHINE_DIR/$name.qemu"
    machine_console "$name" 20 | sed 's/^/console| /'
    tr -d '\r' <"$MACHINE_DIR/$name.out" | tail -n 20 | sed 's/^/out| /'
  } >&2
  return 1
}

machine_cut() {
  local pid=${MACHINE_PID[$1]:-}
  [ -n "$pid" ] || return 0
  kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  MACHINE_PID[$1]=
  return 0
}

machine_stop_all() {
  local name
  for name in "${!MACHINE_PID[@]}"; do machine_cut "$name"; done
}

# The brick's job: serve the store on the disk, then say where.
machine_start_brick() {
  local name=$1 disk=$2 hostport=$3 size=$4 targs=()
  shift 4
  while (($#)) && [ "$1" != -- ]; do targs+=("$1") && shift; done
  (($#)) && shift # the rest goes to machine_start
  {
    echo 'port=7000'
    printf 'args=('
    ((${#targs[@]})) && printf ' %q' "${targs[@]}"
    echo ' )'
    # shellcheck disable=SC2016 # expanded in the guest
    printf '%s\n' \
      "\"\$PBRICK_BIN_DIR/target/pbrick-target\" --store /var/tmp/brick.store --size $size \\" \
      '  --listen "0.0.0.0:$port" --port-file /run/brick.port "${args[@]}" 2>&1 &' \
      'brick=$!' \
      'while ! [ -s /run/brick.port ]; do' \
      '  kill -0 "$brick" 2>/dev/null || { wait "$brick"; echo "PBRICK-MACHINE-FAILED: pbrick-target exited with $?"; exit 1; }' \
      '  sleep 0.05' \
      'done' \
      'echo "PBRICK-MACHINE-READY brick on port $port"' \
      'wait "$brick"' \
      'echo "PBRICK-MACHINE-FAILED: pbrick-target exited with $?"'
  } >"$MACHINE_DIR/$name.brick-job"
  machine_start "$name" --disk "$disk" --forward "$hostport:7000" --job "$MACHINE_DIR/$name.brick-job" "$@" &&
    machine_wait "$name" '^PBRICK-MACHINE-(READY|FAILED)' "${MACHINE_BOOT_TIMEOUT:-120}" &&
    ! grep -q '^PBRICK-MACHINE-FAILED' "$MACHINE_DIR/$name.out" || {
    tr -d '\r' <"$MACHINE_DIR/$name.out" | tail -n 20 >&2
    machine_cut "$name"
    return 1
  }
}
