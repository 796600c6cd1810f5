#!/usr/bin/env bash
# Where a 4k QD1 I/O spends its time on the NBD path (fio -> nbdkit + pbrick
# plugin -> pbrick-target on 127.0.0.1, store in /dev/shm): per I/O, each
# server thread's context switches (voluntary = it slept and was woken), each
# process's CPU time and its system calls (strace -c). Three jobs, N I/Os each:
#   read        4k randread, QD1
#   write       4k randwrite, QD1
#   write+flush 4k randwrite, QD1, an NBD FLUSH after every write (fsync=1)
# The switch counts and CPU come from a time-based run without strace (strace
# slows every system call), sampled over a window inside it while the NBD
# connection and its nbdkit worker threads live; the syscall counts from a
# second run of N I/Os under strace -c -f.
# Nothing else than these processes is measured: run it on a quiet machine,
# or say how busy it was beside the numbers.
#
# Usage: bench/qd1-anatomy.sh [--setup pbrick|nbd2] [--build DIR] [--seconds S] [--ios N] [--out DIR]
#                             [--plugin-args 'KEY=VALUE ...']
#   --setup       pbrick (default), or nbd2: bench/nbd.sh's peer (b), nbdkit's
#                 nbd plugin -> a second nbdkit memory server, measured alike
#                 (its "brick" rows are then the memory server)
#   --build DIR   build tree with target/pbrick-target and
#                 gateway/nbdkit-pbrick-plugin.so (default build-bench/)
#   --seconds S   length of the counting run per job (default 6; window S - 2)
#   --ios N       I/Os of the strace run per job (default 5000)
#   --out DIR     keep the fio JSON and strace outputs in DIR
#   --plugin-args more nbdkit-pbrick-plugin parameters, e.g. 'poll-us=50'
#                 (pbrick setup only)
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/../scripts/lib.sh"

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }
build=$PBRICK_ROOT/build-bench ios=5000 seconds=6 out="" setup=pbrick plugin_args=()
while (($#)); do
  case $1 in
    --build) build=${2:?--build needs a directory}; shift 2 ;;
    --ios) ios=${2:?--ios needs a number}; shift 2 ;;
    --setup) setup=${2:?--setup needs pbrick or nbd2}; shift 2 ;;
    --seconds) seconds=${2:?--seconds needs a number}; shift 2 ;;
    --out) out=${2:?--out needs a directory}; shift 2 ;;
    --plugin-args) read -r -a plugin_args <<<"${2?--plugin-args needs parameters}"; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done
[[ $ios =~ ^[1-9][0-9]*$ ]] || die "--ios: expected a positive number, got '$ios'"
{ [[ $seconds =~ ^[1-9][0-9]*$ ]] && ((seconds >= 3)); } || die "--seconds: expected a whole number >= 3, got '$seconds'"
ensure_packages nbdkit libnbd-bin fio jq strace
target_bin=$build/target/pbrick-target
plugin=$build/gateway/nbdkit-pbrick-plugin.so
[ "$setup" = pbrick ] || [ "$setup" = nbd2 ] || die "--setup: pbrick or nbd2, not '$setup'"
if [ "$setup" = pbrick ] && { [ ! -x "$target_bin" ] || [ ! -f "$plugin" ]; }; then
  die "no pbrick-target or nbdkit-pbrick-plugin.so in $build (build them, or --build DIR)"
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/pbrick-anatomy.XXXXXX")
store=$(mktemp -d /dev/shm/pbrick-anatomy.XXXXXX)
logs=$tmp
if [ -n "$out" ]; then mkdir -p "$out" && logs=$(cd "$out" && pwd); fi
brick_pid="" nbd_pid="" strace_pids=()
cleanup() {
  local rc=$? p
  trap - EXIT INT TERM
  for p in "${strace_pids[@]}" "$nbd_pid" "$brick_pid"; do
    [ -n "$p" ] || continue
    kill -TERM "$p" 2>/dev/null || continue
    wait "$p" 2>/dev/null || true
  done
  rm -rf "$tmp" "$store"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

sock=$tmp/front.sock
uri="nbd+unix:///?socket=$sock"
if [ "$setup" = pbrick ]; then
  "$target_bin" --store "$store/brick.store" --size 1G --listen 127.0.0.1:0 --port-file "$tmp/brick.port" \
    --log-level warning >"$logs/brick.log" 2>&1 &
  brick_pid=$!
  for _ in $(seq 1 100); do [ -s "$tmp/brick.port" ] && break; sleep 0.1; done
  [ -s "$tmp/brick.port" ] || { cat "$logs/brick.log" >&2; die "pbrick-target did not start"; }
  nbdkit -f --exit-with-parent -U "$sock" "$plugin" target="127.0.0.1:$(cat "$tmp/brick.port")" size=512M \
    "${plugin_args[@]}" >"$logs/nbdkit.log" 2>&1 &
else
  nbdkit -f --exit-with-parent -U "$tmp/back.sock" memory 512M >"$logs/brick.log" 2>&1 &
  brick_pid=$!
  for _ in $(seq 1 100); do nbdinfo --size "nbd+unix:///?socket=$tmp/back.sock" >/dev/null 2>&1 && break; sleep 0.1; done
  nbdkit -f --exit-with-parent -U "$sock" nbd socket="$tmp/back.sock" >"$logs/nbdkit.log" 2>&1 &
fi
nbd_pid=$!
for _ in $(seq 1 100); do nbdinfo --size "$uri" >/dev/null 2>&1 && break; sleep 0.1; done
nbdinfo --size "$uri" >/dev/null || { cat "$logs/nbdkit.log" >&2; die "nbdkit did not start"; }

fio_job() { # fio_job TAG ARGS...: fio on the export, JSON into $logs/TAG.json
  local tag=$1
  shift
  fio --name="$tag" --ioengine=nbd --uri="$uri" --size=64M --bs=4k --iodepth=1 --output-format=json \
    --output="$logs/$tag.json" "$@" >/dev/null 2>"$logs/$tag.err" ||
    { cat "$logs/$tag.err" >&2; die "fio $tag failed"; }
}
fio_job fill --rw=write --bs=1M --iodepth=8

# threads PID: "tid comm voluntary nonvoluntary utime+stime" of every thread.
threads() {
  local t comm v n st f
  for t in /proc/"$1"/task/*; do
    read -r comm <"$t/comm" || continue
    v=$(awk '/^voluntary_ctxt_switches/ { print $2 }' "$t/status")
    n=$(awk '/^nonvoluntary_ctxt_switches/ { print $2 }' "$t/status")
    read -r st <"$t/stat"
    # shellcheck disable=SC2206  # the fields after "(comm) "
    f=(${st##*) })
    echo "${t##*/} ${comm// /_} $v $n $((f[11] + f[12]))"
  done
}

# process_ticks PID: utime+stime of the whole process, the threads that
# exited included (what a sum over the live threads misses).
process_ticks() {
  local st f
  read -r st <"/proc/$1/stat"
  # shellcheck disable=SC2206  # the fields after "(comm) "
  f=(${st##*) })
  echo $((f[11] + f[12]))
}

clk=$(getconf CLK_TCK)
echo "4k QD1 anatomy, $(date -u '+%F %T UTC'), $(nproc) CPUs, $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg);"
echo "setup $setup${plugin_args:+ (${plugin_args[*]})}; pbrick $(git -C "$PBRICK_ROOT" describe --always --dirty 2>/dev/null || echo unknown), $ios I/Os per job"
for job in read write write+flush; do
  case $job in
    read) args=(--rw=randread) ;;
    write) args=(--rw=randwrite) ;;
    write+flush) args=(--rw=randwrite --fsync=1) ;;
  esac
  tag=${job/+/-}
  fio_job "$tag" "${args[@]}" --time_based --runtime="$seconds" &
  fio_bg=$!
  sleep 1
  threads "$nbd_pid" >"$tmp/n0"
  threads "$brick_pid" >"$tmp/b0"
  pn0=$(process_ticks "$nbd_pid") pb0=$(process_ticks "$brick_pid")
  t0=$EPOCHREALTIME
  sleep $((seconds - 2))
  threads "$nbd_pid" >"$tmp/n1"
  threads "$brick_pid" >"$tmp/b1"
  pn1=$(process_ticks "$nbd_pid") pb1=$(process_ticks "$brick_pid")
  t1=$EPOCHREALTIME
  wait "$fio_bg"
  read -r iops n_sync mean p99 smean < <(jq -r '.jobs[0] | (if .read.total_ios > 0 then .read else .write end) as $d |
    "\($d.iops) \(.sync.total_ios // 0) \($d.clat_ns.mean / 1000) \(($d.clat_ns.percentile // {})["99.000000"] / 1000) \((.sync.lat_ns.mean // 0) / 1000)"' "$logs/$tag.json")
  n_io=$(awk -v i="$iops" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", i * (b - a) }')
  echo
  printf '== %s: %.0f IOPS (%d flushes in %d s); fio clat mean %.1f us, p99 %.1f us; flush mean %.1f us\n' \
    "$job" "$iops" "$n_sync" "$seconds" "$mean" "$p99" "$smean"
  echo "window of $((seconds - 2)) s, about $n_io I/Os"
  echo "per I/O, each thread that did something (nbdkit's workers and the engine's loops share the name), then the"
  echo "threads alive at both ends together, then the process (utime+stime of /proc/PID/stat: threads that started"
  echo "or ended in the window included):"
  printf '  %-8s %-24s %8s %8s %10s\n' process "thread (tid)" "vol cs" "invol cs" "CPU us"
  for p in nbdkit:n:$((pn1 - pn0)) brick:b:$((pb1 - pb0)); do
    IFS=: read -r pname pkey pticks <<<"$p"
    gone=$(join -v1 <(sort "$tmp/${pkey}0") <(sort "$tmp/${pkey}1") | wc -l)
    new=$(join -v2 <(sort "$tmp/${pkey}0") <(sort "$tmp/${pkey}1") | wc -l)
    join <(sort "$tmp/${pkey}0") <(sort "$tmp/${pkey}1") | awk -v n="$n_io" -v k="$clk" -v proc="$pname" \
      -v pt="$pticks" -v gone="$gone" -v new="$new" '
      { v = ($7 - $3) / n; iv = ($8 - $4) / n; c = ($9 - $5) * 1e6 / k / n
        if (v + iv >= 0.01 || c > 0) printf "  %-8s %-24s %8.2f %8.2f %10.1f\n", proc, $2 " (" $1 ")", v, iv, c
        tv += v; ti += iv; tc += c }
      END { printf "  %-8s %-24s %8.2f %8.2f %10.1f\n", proc, "threads at both ends", tv, ti, tc
            printf "  %-8s %-24s %8s %8s %10.1f\n", proc, "process", "-", "-", pt * 1e6 / k / n
            if (gone + new > 0) printf "  %-8s %d threads ended and %d started in the window\n", proc, gone, new }' |
      sort -k5 -t' ' -s
  done
  # The same job again under strace: system calls per I/O of each process.
  for p in nbdkit brick; do
    pid=$nbd_pid
    [ "$p" = brick ] && pid=$brick_pid
    strace -c -f -q -p "$pid" -o "$logs/strace.$tag.$p" &
    strace_pids+=($!)
  done
  sleep 1  # strace attaches to every thread
  fio_job "$tag.strace" "${args[@]}" --number_ios="$ios"
  for pid in "${strace_pids[@]}"; do kill -INT "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  strace_pids=()
  echo "system calls per I/O (strace -c -f, a second run of $ios I/Os; io_uring work inside the kernel is not a call):"
  for p in nbdkit brick; do
    awk -v n="$ios" -v proc="$p" '
      $1 ~ /^[0-9.]+$/ && NF >= 5 { calls = $4; name = $NF; if (NF == 6) calls = $4; if (calls ~ /^[0-9]+$/ && calls / n >= 0.05) out = out sprintf(" %s %.2f", name, calls / n) }
      $NF == "total" { total = $3 }
      END { printf "  %-7s%s\n", proc, out }' "$logs/strace.$tag.$p"
  done
done
