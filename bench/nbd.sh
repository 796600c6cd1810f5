#!/usr/bin/env bash
# NBD benchmark: pbrick's nbdkit plugin against three NBD peers, measured with
# fio's nbd engine on this machine, in one run.
#
#   (a)  memory  nbdkit memory plugin: one hop, the reference
#   (b)  nbd2    nbdkit nbd plugin forwarding to a second nbdkit memory server
#                over a unix socket: two hops, the same job pbrick does (NBD
#                in, remote memory out)
#   (b') nbd2tcp (b) with its second hop over TCP 127.0.0.1, the transport
#                pbrick's second hop has
#   (c)  pbrick  nbdkit pbrick plugin -> pbrick-target over TCP 127.0.0.1, on a
#                file store in /dev/shm (so no disk is measured)
#   (c') pbrickunix (c) with its second hop on a unix socket, as (b)'s is: a
#                second brick on a store of its own listening on unix:PATH
#
# Every NBD server fio talks to listens on a unix socket in a temporary directory. Each
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
# shellcheck source=bench/host_bench.bash
source "$(dirname "$0")/host_bench.bash"

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
hb_build "$build"

# --- sizes and places --------------------------------------------------------
size_bytes=$(numfmt --from=iec "${size^^}" 2>/dev/null) || die "--size: cannot parse '$size'"
((size_bytes >= 4 << 20)) || die "--size: at least 4M"
((size_bytes % (1 << 20) == 0)) || die "--size: must be a multiple of 1M (the 1M jobs span it)"
block=$((2 << 20))
export_bytes=$((size_bytes > 1 << 30 ? size_bytes : 1 << 30))
export_bytes=$(((export_bytes + block - 1) / block * block))
store_bytes=$((2 * export_bytes))  # ample room for the store's map and slots

tmp=$(mktemp -d "${TMPDIR:-/tmp}/pbrick-bench.XXXXXX")
hb_dirs+=("$tmp")
shm_free=$(df -P -B1 /dev/shm 2>/dev/null | awk 'NR == 2 { print $4 }' || true)
if [ -d /dev/shm ] && [ -w /dev/shm ] && [ -n "$shm_free" ] && ((shm_free > size_bytes + (256 << 20))); then
  store_dir=$(mktemp -d /dev/shm/pbrick-bench.XXXXXX)
  hb_dirs+=("$store_dir")
else
  store_dir=$tmp
fi
logs=$tmp
if [ -n "$out" ]; then
  mkdir -p "$out"
  logs=$(cd "$out" && pwd)
fi

setups=(memory nbd2 nbd2tcp pbrick pbrickunix)
declare -A label=(
  [memory]="(a) memory"
  [nbd2]="(b) nbd>memory"
  [nbd2tcp]="(b') over TCP"
  [pbrick]="(c) pbrick"
  [pbrickunix]="(c') pbrick unix"
)
declare -A sock=(
  [memory]=$tmp/memory.sock
  [nbd2]=$tmp/nbd2.sock
  [nbd2tcp]=$tmp/nbd2tcp.sock
  [pbrick]=$tmp/pbrick.sock
  [pbrickunix]=$tmp/pbrickunix.sock
)

# --- servers ---------------------------------------------------------------------
say "starting the servers (exports of $export_bytes bytes; logs in $logs)" >&2
start_nbdkit memory "${sock[memory]}" memory "$export_bytes"

start_nbdkit nbd2-backend "$tmp/nbd2-backend.sock" memory "$export_bytes"
start_nbdkit nbd2 "${sock[nbd2]}" nbd socket="$tmp/nbd2-backend.sock"

# (b'): (b) with its back hop over loopback TCP, as pbrick's gateway reaches
# its brick, on a port nothing listens on yet.
b2_port=""
for p in $(seq 10810 10899); do
  if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then b2_port=$p && break; fi
done
[ -n "$b2_port" ] || die "no free TCP port in 10810-10899 for the (b') memory server"
nbdkit -f --exit-with-parent -i 127.0.0.1 -p "$b2_port" memory "$export_bytes" >"$logs/nbd2tcp-backend.log" 2>&1 &
started nbd2tcp-backend $!
for _ in $(seq 1 100); do nbdinfo --size "nbd://127.0.0.1:$b2_port" >/dev/null 2>&1 && break; sleep 0.1; done
nbdinfo --size "nbd://127.0.0.1:$b2_port" >/dev/null ||
  { tail -n 20 "$logs/nbd2tcp-backend.log" >&2; die "the (b') memory server on 127.0.0.1:$b2_port did not answer"; }
start_nbdkit nbd2tcp "${sock[nbd2tcp]}" nbd hostname=127.0.0.1 port="$b2_port"

start_brick brick 127.0.0.1:0 --store "$store_dir/brick.store" --size "$store_bytes" --log-level warning
start_nbdkit pbrick "${sock[pbrick]}" "$plugin" target="127.0.0.1:$brick_port" size="$export_bytes"
tcp_brick_port=$brick_port
# (c'): the same on a brick of its own that listens on a unix socket.
start_brick brickunix "unix:$tmp/brick.sock" --store "$store_dir/brickunix.store" --size "$store_bytes" \
  --log-level warning
start_nbdkit pbrickunix "${sock[pbrickunix]}" "$plugin" target="unix:$tmp/brick.sock" size="$export_bytes"

# --- header -----------------------------------------------------------------
commit=$(git -C "$PBRICK_ROOT" describe --always --dirty 2>/dev/null || echo unknown)
header() {
  echo "pbrick NBD benchmark, $(date -u '+%Y-%m-%d %H:%M UTC')"
  machine_header
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
# The CPU counted per setup (host_bench.bash's sample_cpu): front = the nbdkit
# fio talks to, back = the server behind it.
declare -A front_of=([memory]=memory [nbd2]=nbd2 [nbd2tcp]=nbd2tcp [pbrick]=pbrick [pbrickunix]=pbrickunix)
declare -A back_of=([memory]="" [nbd2]=nbd2-backend [nbd2tcp]=nbd2tcp-backend [pbrick]=brick
  [pbrickunix]=brickunix)

say "preconditioning: writing $size once on every target (1M sequential, QD8)" >&2
for s in "${setups[@]}"; do
  run_fio "$s" precondition 600 --rw=write --bs=1m --iodepth=8 ||
    die "could not precondition $s: its numbers would be meaningless"
  printf '  %-16s %8.0f MiB/s\n' "${label[$s]}" \
    "$(jq '.jobs[0].write.bw_bytes / 1048576' "$logs/precondition.$s.json")" >&2
done
# The gateway serves blocks it never wrote as zeros without asking the brick:
# make sure the reads below really go to the brick.
for t in "127.0.0.1:$tcp_brick_port" "unix:$tmp/brick.sock"; do
  allocated=$("$ctl_bin" --target "$t" --json stat | jq '.allocated_blocks') ||
    die "pbrickctl stat failed on the brick at $t"
  ((allocated * block >= size_bytes)) ||
    die "after preconditioning the brick at $t holds $allocated blocks, less than the $size the jobs read"
  echo "  the brick at $t holds $allocated blocks of 2 MiB" >&2
done

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
      row=$(fio_row "$logs/$name.$s.json" "$ddir") || row=""
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
        "${iops[$name.$s]}" "${mibs[$name.$s]}" "${mean[$name.$s]}" "${p99[$name.$s]}" "$(cpu_per_io "$name" "$s" "${iops[$name.$s]}")"
    else
      printf '%-26s %-15s %10s %9s %10s %10s  %s\n' "$name" "${label[$s]}" FAILED - - - -
    fi
  done
done
echo
echo "server CPU: utime+stime per I/O over a window inside each job; front = the nbdkit fio talks to"
echo "((a), (b)'s and (b')'s nbd plugin, (c)'s pbrick plugin), back = their memory server, (c)'s brick."
echo
# The latency rows: one I/O in flight, so the time per I/O is the figure of merit.
echo "QD1 latency, mean/p99 µs (fsync row: write clat + flush mean/flush p99; fio's clat, no submission)"
printf '%-22s %-17s %-17s %-17s %-17s %-17s %12s %12s %13s %13s\n' job "(a) memory" "(b) nbd>memory" \
  "(b') over TCP" "(c) pbrick" "(c') unix" "(c)/(b) time" "(c)/(b) p99" "(c)/(b') time" "(c')/(b) time"
# time_ratio JOB SETUP OVER: SETUP's time per I/O (1/IOPS) over OVER's, or "-".
time_ratio() {
  local a=${iops[$1.$2]:-} b=${iops[$1.$3]:-}
  if [ -n "$a" ] && [ -n "$b" ]; then awk -v a="$a" -v b="$b" 'BEGIN { printf "%.2f", b / a }'; else echo "-"; fi
}
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
  # Time per I/O from the rates (with the flush, for the fsync row); p99 of the read/write or of the flush.
  lp=-
  if [ -n "${iops[$name.pbrick]:-}" ] && [ -n "${iops[$name.nbd2]:-}" ]; then
    if [ "$name" = randwrite-4k-fsync1 ]; then
      lp=$(awk -v a="${sp99[$name.pbrick]}" -v b="${sp99[$name.nbd2]}" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')
    else
      lp=$(awk -v a="${p99[$name.pbrick]}" -v b="${p99[$name.nbd2]}" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')
    fi
  fi
  printf '%-22s %-17s %-17s %-17s %-17s %-17s %12s %12s %13s %13s\n' "$name" "${cells[@]}" \
    "$(time_ratio "$name" pbrick nbd2)" "$lp" "$(time_ratio "$name" pbrick nbd2tcp)" "$(time_ratio "$name" pbrickunix nbd2)"
done
echo "(c)/(b) time: (c)'s time per I/O (1/IOPS) over (b)'s; target <= 1.00 for the QD1 rows (NBD 4k"
echo "QD1 latency at most the two-hop proxy's). (c)/(b') time: the same against (b) with its second"
echo "hop over loopback TCP, as (c)'s is. (c')/(b) time: pbrick with its second hop on a unix socket,"
echo "as (b)'s is (a gateway on its brick's host): the two designs on equal transports both ways."
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
  # Only a run of this invocation that succeeded (a file of an earlier one
  # may be there in a reused --out).
  if [ -z "${iops[randwrite-4k-qd32-fsync32.$s]:-}" ]; then
    printf '  %s %s' "${label[$s]%% *}" -
    continue
  fi
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
