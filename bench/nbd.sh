#!/usr/bin/env bash
# NBD benchmark: pbrick's nbdkit plugin against two NBD peers, measured with
# fio's nbd engine on this machine, in one run.
#
#   (a) memory  nbdkit memory plugin: one hop, the reference
#   (b) nbd2    nbdkit nbd plugin forwarding to a second nbdkit memory server:
#               two hops, the same job pbrick does (NBD in, remote memory out)
#   (c) pbrick  nbdkit pbrick plugin -> pbrick-target over TCP 127.0.0.1, on a
#               file store in /dev/shm (so no disk is measured)
#
# Every NBD server listens on a unix socket in a temporary directory. Each
# target is first written once over the whole job size (1 MiB sequential) so
# reads hit real data, then every job runs on every setup, job by job. Beside
# every row: the servers' CPU time per I/O (utime+stime of each server process,
# from /proc/PID/stat, over a window inside the measured time), front end and
# back end apart. The QD1 rows and the fsync-every-write row (a FLUSH after
# each 4k write, at QD1) measure latency; their mean and p99 are compared.
#
# Usage: bench/nbd.sh [--build DIR] [--runtime SECONDS] [--size SIZE] [--out DIR]
#   --build DIR      build tree with target/pbrick-target and
#                    gateway/nbdkit-pbrick-plugin.so (default: build-bench/ under
#                    the repository; configured and built when they are missing)
#   --runtime SEC    measured seconds per job, after a 2 s ramp (default 10)
#   --size SIZE      bytes each job spans, e.g. 512M (default 512M); the exports
#                    are max(1G, SIZE)
#   --out DIR        keep fio's JSON results and the server logs in DIR
# Output: a header describing the machine, then one table (stdout). Progress
# goes to stderr. Exit status: 0 when every fio run succeeded, 1 otherwise.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/../scripts/lib.sh"

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }

build=""
runtime=10
size=512M
out=""
while (($#)); do
  case $1 in
    --build) build=${2:?--build needs a directory}; shift 2 ;;
    --runtime) runtime=${2:?--runtime needs seconds}; shift 2 ;;
    --size) size=${2:?--size needs a size}; shift 2 ;;
    --out) out=${2:?--out needs a directory}; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done
[[ $runtime =~ ^[1-9][0-9]*$ ]] || die "--runtime: expected whole seconds, got '$runtime'"
ramp=2

ensure_packages nbdkit libnbd-bin fio jq

# --- build -------------------------------------------------------------------
build=${build:-$PBRICK_ROOT/build-bench}
target_bin=$build/target/pbrick-target
plugin=$build/gateway/nbdkit-pbrick-plugin.so
ctl_bin=$build/ctl/pbrickctl
if [ ! -x "$target_bin" ] || [ ! -f "$plugin" ] || [ ! -x "$ctl_bin" ]; then
  ensure_packages "${PBRICK_BUILD_PACKAGES[@]}"
  say "building pbrick (Release) in $build"
  build_tree "$build" -DCMAKE_BUILD_TYPE=Release -DPBRICK_TESTS=OFF >&2
fi
[ -x "$target_bin" ] || die "no pbrick-target in $build/target"
[ -f "$plugin" ] || die "no nbdkit-pbrick-plugin.so in $build/gateway"
[ -x "$ctl_bin" ] || die "no pbrickctl in $build/ctl"
build_type=$(sed -n 's/^CMAKE_BUILD_TYPE:[A-Z]*=//p' "$build/CMakeCache.txt" 2>/dev/null || true)

# --- sizes and places --------------------------------------------------------
size_bytes=$(numfmt --from=iec "${size^^}" 2>/dev/null) || die "--size: cannot parse '$size'"
((size_bytes >= 4 << 20)) || die "--size: at least 4M"
((size_bytes % (1 << 20) == 0)) || die "--size: must be a multiple of 1M (the 1M jobs span it)"
block=$((2 << 20))
export_bytes=$((size_bytes > 1 << 30 ? size_bytes : 1 << 30))
export_bytes=$(((export_bytes + block - 1) / block * block))
store_bytes=$((2 * export_bytes))  # ample room for the store's map and slots

tmp=""
store_dir=""
# --- stopping the servers whatever happens --------------------------------------
pids=()   # servers, in start order
names=()  # their names (logs are $logs/NAME.log)
fio_pid=""
cleanup() {
  local rc=$? i pid
  trap - EXIT INT TERM
  if [ -n "$fio_pid" ]; then  # timeout passes the TERM on to fio
    kill -TERM "$fio_pid" 2>/dev/null || true
    wait "$fio_pid" 2>/dev/null || true
  fi
  # Newest first, so a front end stops before the server behind it.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    pid=${pids[i]}
    kill -TERM "$pid" 2>/dev/null || continue
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  [ -z "$tmp" ] || rm -rf "$tmp"
  [ -z "$store_dir" ] || [ "$store_dir" = "$tmp" ] || rm -rf "$store_dir"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

tmp=$(mktemp -d "${TMPDIR:-/tmp}/pbrick-bench.XXXXXX")
shm_free=$(df -P -B1 /dev/shm 2>/dev/null | awk 'NR == 2 { print $4 }' || true)
if [ -d /dev/shm ] && [ -w /dev/shm ] && [ -n "$shm_free" ] && ((shm_free > size_bytes + (256 << 20))); then
  store_dir=$(mktemp -d /dev/shm/pbrick-bench.XXXXXX)
else
  store_dir=$tmp
fi
logs=$tmp
if [ -n "$out" ]; then
  mkdir -p "$out"
  logs=$(cd "$out" && pwd)
fi

declare -A pid_of  # server name -> pid
started() {
  names+=("$1")
  pids+=("$2")
  pid_of[$1]=$2
}

# check_servers: dies, with the tail of its log, if a server is gone.
check_servers() {
  local i dead=""
  for i in "${!pids[@]}"; do
    if ! kill -0 "${pids[i]}" 2>/dev/null; then
      printf 'error: server %s (pid %s) exited; the end of %s:\n' "${names[i]}" "${pids[i]}" \
        "$logs/${names[i]}.log" >&2
      tail -n 20 "$logs/${names[i]}.log" >&2
      dead+=" ${names[i]}"
    fi
  done
  [ -z "$dead" ] || die "server(s) gone:$dead"
}

uri() { printf 'nbd+unix:///?socket=%s' "$1"; }

# wait_nbd SOCKET PID LOG: until an NBD client gets the export's size.
wait_nbd() {
  local sock=$1 pid=$2 log=$3
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || { tail -n 20 "$log" >&2; die "server for $sock exited (log: $log)"; }
    [ -S "$sock" ] && nbdinfo --size "$(uri "$sock")" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  tail -n 20 "$log" >&2
  die "server for $sock did not answer within 10 s (log: $log)"
}

# start_nbdkit NAME SOCKET ARGS...: nbdkit in the foreground of a background job.
start_nbdkit() {
  local name=$1 sock=$2
  shift 2
  nbdkit -f --exit-with-parent -U "$sock" "$@" >"$logs/$name.log" 2>&1 &
  started "$name" $!
  wait_nbd "$sock" "$!" "$logs/$name.log"
}

setups=(memory nbd2 pbrick)
declare -A label=(
  [memory]="(a) memory"
  [nbd2]="(b) nbd>memory"
  [pbrick]="(c) pbrick"
)
declare -A sock=(
  [memory]=$tmp/memory.sock
  [nbd2]=$tmp/nbd2.sock
  [pbrick]=$tmp/pbrick.sock
)

# --- servers ---------------------------------------------------------------------
say "starting the servers (exports of $export_bytes bytes; logs in $logs)" >&2
start_nbdkit memory "${sock[memory]}" memory "$export_bytes"

start_nbdkit nbd2-backend "$tmp/nbd2-backend.sock" memory "$export_bytes"
start_nbdkit nbd2 "${sock[nbd2]}" nbd socket="$tmp/nbd2-backend.sock"

"$target_bin" --store "$store_dir/brick.store" --size "$store_bytes" --listen 127.0.0.1:0 \
  --port-file "$tmp/brick.port" --log-level warning >"$logs/brick.log" 2>&1 &
brick_pid=$!
started brick "$brick_pid"
for _ in $(seq 1 100); do
  [ -s "$tmp/brick.port" ] && break
  kill -0 "$brick_pid" 2>/dev/null || break
  sleep 0.1
done
if [ ! -s "$tmp/brick.port" ]; then
  tail -n 20 "$logs/brick.log" >&2
  die "pbrick-target did not start (log: $logs/brick.log)"
fi
brick_port=$(cat "$tmp/brick.port")
start_nbdkit pbrick "${sock[pbrick]}" "$plugin" target="127.0.0.1:$brick_port" size="$export_bytes"

# --- header -----------------------------------------------------------------
commit=$(git -C "$PBRICK_ROOT" describe --always --dirty 2>/dev/null || echo unknown)
header() {
  echo "pbrick NBD benchmark, $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "  machine : $(nproc) CPUs, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)," \
    "$(awk '/^MemTotal/ { printf "%.0f GiB RAM", $2 / 1048576 }' /proc/meminfo)"
  echo "  kernel  : $(uname -sr)"
  echo "  tools   : $(fio --version), $(nbdkit --version | head -n 1)"
  echo "  pbrick  : $commit, build ${build_type:-?} ($build)"
  echo "  store   : $store_dir/brick.store ($store_bytes bytes, $(df -P "$store_dir" | awk 'NR == 2 { print $1 }'))"
  echo "  jobs    : fio ioengine=nbd, size=$size, ramp ${ramp} s + runtime ${runtime} s each," \
    "exports of $((export_bytes >> 20)) MiB on unix sockets"
  echo "  load    : $load_start at start"
}
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
header_text=$(header)
echo "$header_text" >&2

# --- fio -------------------------------------------------------------------
failures=0

# run_fio SETUP TAG TIMEOUT FIO-ARGS...: one fio run into $logs/TAG.SETUP.json.
run_fio() {
  local setup=$1 tag=$2 limit=$3
  shift 3
  local json=$logs/$tag.$setup.json err=$logs/$tag.$setup.err rc=0
  # In the background so that a signal runs the traps at once (bash defers
  # them while a foreground child runs); timeout puts fio in its own process
  # group and passes a TERM on to it.
  timeout -k 10 "$limit" \
    fio --name="$tag" --ioengine=nbd --uri="$(uri "${sock[$setup]}")" --size="$size_bytes" \
    --output-format=json --output="$json" "$@" 2>"$err" &
  fio_pid=$!
  if [ -n "${cpu_window:-}" ]; then sample_cpu "$setup" "$tag"; fi
  wait "$fio_pid" || rc=$?
  fio_pid=""
  if ((rc == 0)) && ! jq -e '.jobs[0].error == 0' "$json" >/dev/null 2>&1; then rc=1; fi
  if ((rc != 0)); then
    printf 'error: fio %s on %s failed (exit %d%s); stderr:\n' "$tag" "$setup" "$rc" \
      "$( ((rc == 124)) && echo ', timed out')" >&2
    tail -n 20 "$err" >&2
    failures=$((failures + 1))
    check_servers  # a dead server fails every later run: stop here
    return 1
  fi
}

# proc_ticks NAME: utime+stime ticks of server NAME (all its threads); 0 for "".
declare -A front_of=([memory]=memory [nbd2]=nbd2 [pbrick]=pbrick)
declare -A back_of=([memory]="" [nbd2]=nbd2-backend [pbrick]=brick)
proc_ticks() {
  local stat fields
  [ -n "$1" ] || { echo 0; return; }
  read -r stat <"/proc/${pid_of[$1]}/stat" || { echo 0; return; }
  # shellcheck disable=SC2206  # the fields after "(comm) ", from field 3 on
  fields=(${stat##*) })
  echo $((fields[11] + fields[12]))
}
clk=$(getconf CLK_TCK)
# sample_cpu SETUP TAG: while fio runs, the servers' CPU ticks over a window
# from 0.5 s after the ramp for $cpu_window seconds, into
# cpu_ticks[TAG.SETUP] = "front back seconds"; turned into time per I/O with
# the job's IOPS (fio counts no I/O of the ramp, so the window stays inside
# the measured time).
declare -A cpu_ticks
sample_cpu() {
  local setup=$1 tag=$2 f0 b0 f1 b1 t0 t1
  sleep "$(awk -v r="$ramp" 'BEGIN { print r + 0.5 }')"
  f0=$(proc_ticks "${front_of[$setup]}")
  b0=$(proc_ticks "${back_of[$setup]}")
  t0=$EPOCHREALTIME
  sleep "$cpu_window"
  f1=$(proc_ticks "${front_of[$setup]}")
  b1=$(proc_ticks "${back_of[$setup]}")
  t1=$EPOCHREALTIME
  cpu_ticks[$tag.$setup]="$((f1 - f0)) $((b1 - b0)) $(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')"
}
# cpu_per_io JOB SETUP: "front+back" server CPU µs per I/O (front alone for
# (a)), or "-".
cpu_per_io() {
  local c=${cpu_ticks[$1.$2]:-} i=${iops[$1.$2]:-}
  if [ -z "$c" ] || [ -z "$i" ]; then echo "-"; return; fi
  awk -v c="$c" -v i="$i" -v k="$clk" -v back="${back_of[$2]}" 'BEGIN {
    split(c, f, " "); n = i * f[3]
    if (n <= 0) { print "-"; exit }
    if (back == "") printf "%.1f", f[1] * 1e6 / k / n
    else printf "%.1f+%.1f", f[1] * 1e6 / k / n, f[2] * 1e6 / k / n }'
}

say "preconditioning: writing $size once on every target (1M sequential, QD8)" >&2
for s in "${setups[@]}"; do
  run_fio "$s" precondition 600 --rw=write --bs=1m --iodepth=8 ||
    die "could not precondition $s: its numbers would be meaningless"
  printf '  %-16s %8.0f MiB/s\n' "${label[$s]}" \
    "$(jq '.jobs[0].write.bw_bytes / 1048576' "$logs/precondition.$s.json")" >&2
done
# The gateway serves blocks it never wrote as zeros without asking the brick:
# make sure the reads below really go to the brick.
allocated=$("$ctl_bin" --target "127.0.0.1:$brick_port" --json stat | jq '.allocated_blocks') ||
  die "pbrickctl stat failed on the brick"
((allocated * block >= size_bytes)) ||
  die "after preconditioning the brick holds $allocated blocks, less than the $size the jobs read"
echo "  the brick holds $allocated blocks of 2 MiB" >&2

# name rw bs iodepth [extra fio args]
jobs=(
  "randread-4k-qd1 randread 4k 1"
  "randwrite-4k-qd1 randwrite 4k 1"
  "randwrite-4k-fsync1 randwrite 4k 1 --fsync=1"
  "randread-4k-qd32 randread 4k 32"
  "randwrite-4k-qd32 randwrite 4k 32"
  "write-1m-qd8 write 1m 8"
  "read-1m-qd8 read 1m 8"
  "randwrite-4k-qd32-fsync32 randwrite 4k 32 --fsync=32"
)
declare -A iops mibs mean p99 smean sp99
limit=$((ramp + runtime + 60))
cpu_window=$(awk -v r="$runtime" 'BEGIN { print (r > 1 ? r - 1 : r / 2) }')
for spec in "${jobs[@]}"; do
  read -r name rw bs qd extra <<<"$spec"
  case $rw in *read) ddir="read" ;; *) ddir="write" ;; esac
  for s in "${setups[@]}"; do
    say "$name on ${label[$s]}" >&2
    # shellcheck disable=SC2086  # $extra is zero or more fio options
    if run_fio "$s" "$name" "$limit" --rw="$rw" --bs="$bs" --iodepth="$qd" \
      --time_based --runtime="$runtime" --ramp_time="$ramp" $extra; then
      row=$(jq -r --arg d "$ddir" '.jobs[0] | .sync as $s | .[$d] |
        [.iops, .bw_bytes / 1048576, .clat_ns.mean / 1000,
         ((.clat_ns.percentile // {})["99.000000"] // 0) / 1000,
         (($s.lat_ns.mean // 0) / 1000), ((($s.lat_ns.percentile // {})["99.000000"] // 0) / 1000)] | @tsv' \
        "$logs/$name.$s.json") || row=""
      if [ -n "$row" ]; then
        read -r "iops[$name.$s]" "mibs[$name.$s]" "mean[$name.$s]" "p99[$name.$s]" \
          "smean[$name.$s]" "sp99[$name.$s]" <<<"$row"
      else
        echo "error: no $ddir results in $logs/$name.$s.json" >&2
        failures=$((failures + 1))
      fi
    fi
  done
done
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

# --- the table -----------------------------------------------------------------
# ratio JOB SETUP: pbrick's IOPS over SETUP's, or "-".
ratio() {
  local a=${iops[$1.pbrick]:-} b=${iops[$1.$2]:-}
  if [ -n "$a" ] && [ -n "$b" ]; then awk -v a="$a" -v b="$b" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'
  else echo "-"; fi
}
# verdict JOB: the targets are >= 0.8 x (a) for 4K randread QD32 and 1M
# sequential write, and >= 1.5 x (b) for every job.
verdict() {
  local ra rb
  ra=$(ratio "$1" memory)
  rb=$(ratio "$1" nbd2)
  [ "$ra" = - ] || [ "$rb" = - ] && { echo "n/a"; return; }
  awk -v ra="$ra" -v rb="$rb" -v job="$1" 'BEGIN {
    need_a = (job == "randread-4k-qd32" || job == "write-1m-qd8")
    out = ""
    if (need_a) out = out (ra >= 0.8 ? "(a) met" : "(a) MISSED") ", "
    out = out (rb >= 1.5 ? "(b) met" : "(b) MISSED")
    print out
  }'
}

echo
echo "$header_text"
echo "  load    : $load_end at end"
echo
# (µ is two bytes: one more column of width for the printf)
printf '%-26s %-15s %10s %9s %11s %11s  %s\n' job setup IOPS MiB/s "mean µs" "p99 µs" "server CPU µs/IO"
printf '%-26s %-15s %10s %9s %10s %10s  %s\n' "" "" "" "" "(clat)" "(clat)" "(front+back)"
for spec in "${jobs[@]}"; do
  read -r name _ <<<"$spec"
  for s in "${setups[@]}"; do
    if [ -n "${iops[$name.$s]:-}" ]; then
      printf '%-26s %-15s %10.0f %9.1f %10.1f %10.1f  %s\n' "$name" "${label[$s]}" \
        "${iops[$name.$s]}" "${mibs[$name.$s]}" "${mean[$name.$s]}" "${p99[$name.$s]}" "$(cpu_per_io "$name" "$s")"
    else
      printf '%-26s %-15s %10s %9s %10s %10s  %s\n' "$name" "${label[$s]}" FAILED - - - -
    fi
  done
done
echo
echo "server CPU: utime+stime per I/O over a window inside each job; front = the nbdkit fio talks to"
echo "((a), (b)'s nbd plugin, (c)'s pbrick plugin), back = (b)'s memory server, (c)'s brick."
echo
# The latency rows: one I/O in flight, so the time per I/O is the figure of merit.
echo "QD1 latency, mean/p99 µs (fsync row: write clat + flush mean/flush p99; fio's clat, no submission)"
printf '%-22s %-17s %-17s %-17s %12s %12s\n' job "(a) memory" "(b) nbd>memory" "(c) pbrick" "(c)/(b) time" "(c)/(b) p99"
for name in randread-4k-qd1 randwrite-4k-qd1 randwrite-4k-fsync1; do
  cells=()
  for s in "${setups[@]}"; do
    if [ -z "${iops[$name.$s]:-}" ]; then cells+=(-); continue; fi
    if [ "$name" = randwrite-4k-fsync1 ]; then
      cells+=("$(awk -v m="${mean[$name.$s]}" -v sm="${smean[$name.$s]}" -v sp="${sp99[$name.$s]}" \
        'BEGIN { printf "%.0f+%.0f/%.0f", m, sm, sp }')")
    else
      cells+=("$(printf '%.1f/%.1f' "${mean[$name.$s]}" "${p99[$name.$s]}")")
    fi
  done
  lm=- lp=-
  if [ -n "${iops[$name.pbrick]:-}" ] && [ -n "${iops[$name.nbd2]:-}" ]; then
    # Time per I/O from the rates (with the flush, for the fsync row); p99 of the read/write or of the flush.
    lm=$(awk -v a="${iops[$name.pbrick]}" -v b="${iops[$name.nbd2]}" 'BEGIN { printf "%.2f", b / a }')
    if [ "$name" = randwrite-4k-fsync1 ]; then
      lp=$(awk -v a="${sp99[$name.pbrick]}" -v b="${sp99[$name.nbd2]}" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')
    else
      lp=$(awk -v a="${p99[$name.pbrick]}" -v b="${p99[$name.nbd2]}" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')
    fi
  fi
  printf '%-22s %-17s %-17s %-17s %12s %12s\n' "$name" "${cells[@]}" "$lm" "$lp"
done
echo "(c)/(b) time: (c)'s time per I/O (1/IOPS) over (b)'s; target <= 1.00 for the QD1 rows (NBD 4k"
echo "QD1 latency at most the two-hop proxy's)."
echo "load: $load_start at start, $load_end at end. Other work on the machine slows every setup:"
echo "absolute numbers vary with it, ratios measured side by side in one run much less."
echo
echo "IOPS ratios (targets: pbrick >= 0.8 x (a) for randread-4k-qd32 and write-1m-qd8; >= 1.5 x (b))"
printf '%-26s %12s %12s   %s\n' job "pbrick/(a)" "pbrick/(b)" verdict
for spec in "${jobs[@]}"; do
  read -r name _ <<<"$spec"
  printf '%-26s %12s %12s   %s\n' "$name" "$(ratio "$name" memory)" "$(ratio "$name" nbd2)" "$(verdict "$name")"
done

# fio 3.33 turns --fsync=32 at QD32 into far more than one flush per 32 writes
# (it keeps issuing flushes while the write count sits on a multiple of 32):
# say how many the servers really got.
echo
printf 'flushes per write in randwrite-4k-qd32-fsync32 (as issued by fio):'
for s in "${setups[@]}"; do
  f=$logs/randwrite-4k-qd32-fsync32.$s.json
  r=$(jq -r '.jobs[0] | if .write.total_ios > 0 then .sync.total_ios / .write.total_ios else "-" end' "$f" 2>/dev/null) ||
    r="-"
  [ "$r" = - ] || r=$(printf '%.2f' "$r")
  printf '  %s %s' "${label[$s]%% *}" "$r"
done
echo

if ((failures > 0)); then
  echo
  echo "$failures fio run(s) failed; see the errors above${out:+ and the logs in $logs}" >&2
  exit 1
fi
