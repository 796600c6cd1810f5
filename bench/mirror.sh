#!/usr/bin/env bash
# Mirror benchmark: a mirrored volume against a single-brick volume through
# pbrick's nbdkit plugin on this machine, measured with fio's nbd engine in one
# run, job by job; then the resync of a brick that missed writes.
#
#   single  one pbrick-target, layout single
#   mirror  two pbrick-targets, layout=mirror copies=2 (every block on both)
# Every brick keeps a file store in /dev/shm (so no disk is measured) and
# listens on 127.0.0.1; each nbdkit serves on a unix socket. Both volumes are
# first written once over the job size (1 MiB sequential) so reads hit real
# data. Beside every row: the servers' CPU time per I/O (utime+stime from
# /proc/PID/stat over a window inside the measured time), nbdkit and the
# bricks (summed) apart; and the mirror/single ratios.
#
# Resync: on the mirror, kill -9 of its second brick, RESYNC written (1 MiB
# sequential from offset 0, whole 2 MiB blocks: RESYNC/2 MiB dirty blocks),
# the brick restarted on the same store and port; the gateway copies the
# dirty blocks and logs "brick H:P resynced: N blocks copied (K copied again
# after a write) in S s, R MiB/s", which is reported. Then the same again
# with fio writing (4k random, QD32, over the job size) from before the
# restart until the resync ends: its write rate while the brick is down and
# while it resyncs (fio's bandwidth log, split at the log lines).
#
# Usage: bench/mirror.sh [--build DIR] [--runtime SECONDS] [--size SIZE] [--resync SIZE] [--out DIR]
#   --build DIR      build tree with target/pbrick-target, ctl/pbrickctl and
#                    gateway/nbdkit-pbrick-plugin.so (default: build-bench/,
#                    configured and built when they are missing)
#   --runtime SEC    measured seconds per job, after a 2 s ramp (default 10)
#   --size SIZE      bytes each job spans (default 256M)
#   --resync SIZE    bytes written while the brick is down (default 256M, a
#                    multiple of 2M)
#   --out DIR        keep fio's JSON results and the server logs in DIR
# Output: a header describing the machine, then the tables (stdout). Progress
# goes to stderr. Exit status: 0 when every fio run succeeded and both
# resyncs completed, 1 otherwise.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/../scripts/lib.sh"
# shellcheck source=bench/host_bench.bash
source "$(dirname "$0")/host_bench.bash"

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }

build="" runtime=10 size=256M resync=256M out=""
while (($#)); do
  case $1 in
    --build) build=${2:?--build needs a directory}; shift 2 ;;
    --runtime) runtime=${2:?--runtime needs seconds}; shift 2 ;;
    --size) size=${2:?--size needs a size}; shift 2 ;;
    --resync) resync=${2:?--resync needs a size}; shift 2 ;;
    --out) out=${2:?--out needs a directory}; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done
[[ $runtime =~ ^[1-9][0-9]*$ ]] || die "--runtime: expected whole seconds, got '$runtime'"
ramp=2
M=$((1 << 20))
block=$((2 * M))
size_bytes=$(numfmt --from=iec "${size^^}" 2>/dev/null) || die "--size: cannot parse '$size'"
((size_bytes >= 4 * M && size_bytes % M == 0)) || die "--size: at least 4M, a multiple of 1M"
resync_bytes=$(numfmt --from=iec "${resync^^}" 2>/dev/null) || die "--resync: cannot parse '$resync'"
((resync_bytes >= block && resync_bytes % block == 0)) || die "--resync: at least 2M, a multiple of 2M"
# At least 1 GiB, so that the blocks a resync copies are a part of the volume.
volume_bytes=$((size_bytes > resync_bytes ? size_bytes : resync_bytes))
volume_bytes=$((volume_bytes > 1 << 30 ? volume_bytes : 1 << 30))
volume_bytes=$(((volume_bytes + block - 1) / block * block))
store_bytes=$((2 * volume_bytes + 64 * M))  # the volume, its label, and room for the store's map

ensure_packages nbdkit libnbd-bin fio jq
build=${build:-$PBRICK_ROOT/build-bench}
hb_build "$build"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/pbrick-mirror-bench.XXXXXX")
shm=$(mktemp -d /dev/shm/pbrick-mirror-bench.XXXXXX)
hb_dirs+=("$tmp" "$shm")
logs=$tmp
if [ -n "$out" ]; then mkdir -p "$out" && logs=$(cd "$out" && pwd); fi

setups=(single mirror)
declare -A sock=([single]=$tmp/single.sock [mirror]=$tmp/mirror.sock)
declare -A front_of=([single]=single [mirror]=mirror)
declare -A back_of=([single]=single-brick [mirror]="mirror-brick0 mirror-brick1")
declare -A port

say "starting the servers (volumes of $((volume_bytes / M)) MiB; logs in $logs)" >&2
# brick NAME [PORT]: a brick on $shm/NAME.store (0: any free port).
brick() {
  start_brick "$1" "127.0.0.1:${2:-0}" --store "$shm/$1.store" --size "$store_bytes" --log-level warning
  port[$1]=$brick_port
}
brick single-brick
brick mirror-brick0
brick mirror-brick1
start_nbdkit single "${sock[single]}" "$plugin" target="127.0.0.1:${port[single-brick]}" size="$volume_bytes"
mirror_b1=127.0.0.1:${port[mirror-brick1]}
start_nbdkit mirror "${sock[mirror]}" "$plugin" target="127.0.0.1:${port[mirror-brick0]},$mirror_b1" \
  layout=mirror copies=2 size="$volume_bytes"

commit=$(git -C "$PBRICK_ROOT" describe --always --dirty 2>/dev/null || echo unknown)
load_start=$(load_avg)
header=$(
  echo "pbrick mirror benchmark, $(date -u '+%Y-%m-%d %H:%M UTC')"
  machine_header
  echo "  pbrick  : $commit, build ${build_type:-?}"
  echo "  volumes : $((volume_bytes / M)) MiB; single: 1 brick; mirror: 2 bricks, copies=2 (nbdkit plugin," \
    "default queues/depth/leg-timeout); stores in /dev/shm, TCP 127.0.0.1"
  echo "  jobs    : fio ioengine=nbd over $((size_bytes / M)) MiB, ramp ${ramp} s + runtime ${runtime} s each"
  echo "  load    : $load_start at start"
)
echo "$header" >&2

say "preconditioning: writing $((size_bytes / M)) MiB once on both (1M sequential, QD8)" >&2
for s in "${setups[@]}"; do
  run_fio "$s" precondition 600 --rw=write --bs=1m --iodepth=8 ||
    die "could not precondition $s: its numbers would be meaningless"
done
# The gateway serves blocks it never wrote as zeros without asking a brick:
# make sure the reads below really go to the bricks.
for b in single-brick mirror-brick0 mirror-brick1; do
  n=$("$ctl_bin" --target "127.0.0.1:${port[$b]}" --json stat | jq '.allocated_blocks') ||
    die "pbrickctl stat failed on $b"
  ((n * block >= size_bytes)) || die "after preconditioning $b holds $n blocks, less than the $size the jobs read"
done

# name rw bs iodepth
jobs=(
  "randwrite-4k-qd1 randwrite 4k 1"
  "randread-4k-qd1 randread 4k 1"
  "randwrite-4k-qd32 randwrite 4k 32"
  "randread-4k-qd32 randread 4k 32"
  "write-1m-qd8 write 1m 8"
)
declare -A iops mibs mean p99
limit=$((ramp + runtime + 60))
cpu_window=$(awk -v r="$runtime" 'BEGIN { print (r > 1 ? r - 1 : r / 2) }')
for spec in "${jobs[@]}"; do
  read -r name rw bs qd <<<"$spec"
  case $rw in *read) ddir="read" ;; *) ddir="write" ;; esac
  for s in "${setups[@]}"; do
    say "$name on $s" >&2
    if run_fio "$s" "$name" "$limit" --rw="$rw" --bs="$bs" --iodepth="$qd" \
      --time_based --runtime="$runtime" --ramp_time="$ramp"; then
      if row=$(fio_row "$logs/$name.$s.json" "$ddir"); then
        read -r "iops[$name.$s]" "mibs[$name.$s]" "mean[$name.$s]" "p99[$name.$s]" _ _ <<<"$row"
      else
        echo "error: no $ddir results in $logs/$name.$s.json" >&2
        failures=$((failures + 1))
      fi
    fi
  done
done
cpu_window=""

# --- resync --------------------------------------------------------------------
resync_failures=0
resync_limit=$((60 + resync_bytes / M / 4))  # seconds: far beyond 4 MiB/s
log=$logs/mirror.log

# wait_line REGEX SECONDS: until a line of the mirror's log matching REGEX
# appears after the first $seen lines; prints it. Fails after SECONDS.
wait_line() {
  local deadline=$((SECONDS + $2)) line
  while ((SECONDS < deadline)); do
    line=$(tail -n "+$((seen + 1))" "$log" | grep -m 1 -E "$1") && { echo "$line"; return 0; }
    kill -0 "${pid_of[mirror]}" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}

# degrade: kill -9 of the mirror's second brick, then $resync_bytes written
# from offset 0, so that its blocks are dirty; seen = the log's lines before.
degrade() {
  seen=$(wc -l <"$log")
  say "kill -9 of mirror-brick1 ($mirror_b1); writing $((resync_bytes / M)) MiB" >&2
  hb_kill mirror-brick1
  local saved=$size_bytes
  size_bytes=$resync_bytes
  run_fio mirror "$1" 600 --rw=write --bs=1m --iodepth=8 || { size_bytes=$saved; return 1; }
  size_bytes=$saved
  wait_line "brick $mirror_b1 is stale" 5 >/dev/null || {
    echo "error: no 'brick $mirror_b1 is stale' in $log after the writes" >&2
    return 1
  }
}

# resynced TAG: waits for the resync's lines; sets rs_dirty[TAG] ("N of M"),
# rs_line[TAG] (blocks, again, seconds, MiB/s) and t_back/t_done (when the
# lines were seen, EPOCHREALTIME).
declare -A rs_dirty rs_line
resynced() {
  local tag=$1 line
  if ! line=$(wait_line "brick $mirror_b1 is back: resyncing" 30); then
    echo "error: the gateway did not take $mirror_b1 back within 30 s of its restart; the end of $log:" >&2
    tail -n 20 "$log" >&2
    return 1
  fi
  t_back=$EPOCHREALTIME
  rs_dirty[$tag]=$(sed -n 's/.*resyncing \([0-9]*\) dirty blocks of \([0-9]*\).*/\1 of \2/p' <<<"$line")
  if ! line=$(wait_line "brick $mirror_b1 resynced: " "$resync_limit"); then
    echo "error: the resync of $mirror_b1 did not finish within $resync_limit s; the end of $log:" >&2
    tail -n 20 "$log" >&2
    return 1
  fi
  t_done=$EPOCHREALTIME
  rs_line[$tag]=$(sed -n 's/.*resynced: \([0-9]*\) blocks copied (\([0-9]*\) copied again after a write) in \([0-9.]*\) s, \([0-9.]*\) MiB\/s.*/\1 \2 \3 \4/p' <<<"$line")
  [ -n "${rs_line[$tag]}" ] || { echo "error: cannot parse the resync line: $line" >&2; return 1; }
  wait_line "brick $mirror_b1 is in sync \(generation" 10 >/dev/null ||
    { echo "error: no 'is in sync' line for $mirror_b1 after its resync" >&2; return 1; }
}

# Quiet: nothing else runs while the brick resyncs.
if degrade resync-dirty; then
  say "restarting mirror-brick1 on its store and port; waiting for the resync" >&2
  brick mirror-brick1 "${mirror_b1##*:}"
  resynced quiet || resync_failures=$((resync_failures + 1))
else
  resync_failures=$((resync_failures + 1))
fi

# Under writes: fio writes from before the restart until the resync ended.
declare -A wr  # down|resync -> MiB/s from fio's bandwidth log
if ((resync_failures == 0)) && degrade resync-dirty2; then
  say "fio 4k randwrite QD32 on the mirror; restarting mirror-brick1 under it" >&2
  bwlog=$logs/resync-under-writes
  rm -f "$bwlog"_bw*.log
  fio --name=resync-under-writes --ioengine=nbd --uri="$(uri "${sock[mirror]}")" --size="$size_bytes" \
    --rw=randwrite --bs=4k --iodepth=32 --time_based --runtime=$((resync_limit + 60)) \
    --write_bw_log="$bwlog" --log_avg_msec=100 \
    --output-format=json --output="$logs/resync-under-writes.json" 2>"$logs/resync-under-writes.err" &
  fio_pid=$!
  t_fio=$EPOCHREALTIME
  sleep "$runtime"
  t_restart=$EPOCHREALTIME
  brick mirror-brick1 "${mirror_b1##*:}"
  rs_ok=1
  resynced writes || { rs_ok=0; resync_failures=$((resync_failures + 1)); }
  # fio ends on SIGINT with its results (status 128, a line before the JSON).
  kill -INT "$fio_pid" 2>/dev/null || true
  rc=0
  wait "$fio_pid" || rc=$?
  fio_pid=""
  ((rc != 128)) || rc=0
  if ((rc != 0)) || ! sed -n '/^{/,$p' "$logs/resync-under-writes.json" | jq -e '.jobs[0].error == 0' >/dev/null 2>&1; then
    echo "error: fio writing during the resync failed (exit $rc):" >&2
    tail -n 20 "$logs/resync-under-writes.err" >&2
    failures=$((failures + 1))
  elif ((rs_ok)); then
    # fio's log: msec since its start, KiB/s over the last 100 ms, ...
    split_rates() {
      awk -F', *' -v t0="$t_fio" -v a="$1" -v b="$2" 'BEGIN { lo = (a - t0) * 1000; hi = (b - t0) * 1000 }
        $1 > lo + 100 && $1 <= hi { s += $2; n++ } END { if (n) printf "%.1f", s / n / 1024; else print "-" }' \
        "$bwlog"_bw.*log
    }
    wr[down]=$(split_rates "$t_fio" "$t_restart")
    wr[resync]=$(split_rates "$t_back" "$t_done")
  fi
elif ((resync_failures == 0)); then
  resync_failures=$((resync_failures + 1))
fi
load_end=$(load_avg)

# --- the tables ------------------------------------------------------------------
r() { awk -v a="$1" -v b="$2" 'BEGIN { if (a != "" && b != "" && b > 0) printf "%.2f", a / b; else print "-" }'; }
cpu_sum() { awk -v c="$1" 'BEGIN { n = split(c, f, "+"); s = 0; for (i = 1; i <= n; i++) s += f[i]; printf "%.1f", s }'; }
echo "$header"
echo "  load    : $load_end at end"
echo
echo "| job | setup | IOPS | MiB/s | mean µs | p99 µs | CPU µs/IO nbdkit+bricks |"
echo "|---|---|---|---|---|---|---|"
for spec in "${jobs[@]}"; do
  read -r name _ <<<"$spec"
  for s in "${setups[@]}"; do
    k=$name.$s
    if [ -n "${iops[$k]:-}" ]; then
      printf '| %s | %s | %.0f | %.1f | %.1f | %.1f | %s |\n' "$name" "$s" "${iops[$k]}" "${mibs[$k]}" \
        "${mean[$k]}" "${p99[$k]}" "$(cpu_per_io "$name" "$s" "${iops[$k]}")"
    else
      echo "| $name | $s | FAILED | - | - | - | - |"
    fi
  done
done
echo
echo "mirror/single: IOPS (or MiB/s), mean and p99 latency, CPU per I/O (nbdkit+bricks)"
echo
echo "| job | IOPS | mean | p99 | CPU |"
echo "|---|---|---|---|---|"
for spec in "${jobs[@]}"; do
  read -r name _ <<<"$spec"
  a=$name.mirror b=$name.single
  cm=$(cpu_per_io "$name" mirror "${iops[$a]:-}") cs=$(cpu_per_io "$name" single "${iops[$b]:-}")
  [ "$cm" = - ] || cm=$(cpu_sum "$cm")
  [ "$cs" = - ] || cs=$(cpu_sum "$cs")
  [ "$cm" = - ] || [ "$cs" = - ] && cr=- || cr=$(r "$cm" "$cs")
  echo "| $name | $(r "${iops[$a]:-}" "${iops[$b]:-}") | $(r "${mean[$a]:-}" "${mean[$b]:-}") |" \
    "$(r "${p99[$a]:-}" "${p99[$b]:-}") | $cr |"
done
echo
echo "Resync of a brick killed (-9) and restarted on its store, $((resync_bytes / M)) MiB written while it was down"
echo
echo "| resync | dirty blocks (of the volume) | blocks copied | copied again | seconds | MiB/s |"
echo "|---|---|---|---|---|---|"
for tag in quiet writes; do
  if [ -n "${rs_line[$tag]:-}" ]; then
    read -r nb na secs rate <<<"${rs_line[$tag]}"
    label=$([ "$tag" = quiet ] && echo "nothing else running" || echo "fio 4k randwrite QD32 meanwhile")
    echo "| $label | ${rs_dirty[$tag]} | $nb | $na | $secs | $rate |"
  else
    echo "| $tag | FAILED | - | - | - | - |"
  fi
done
if [ -n "${wr[resync]:-}" ]; then
  echo
  echo "fio 4k randwrite QD32 on the mirror: ${wr[down]} MiB/s with the brick down (one copy)," \
    "${wr[resync]} MiB/s while it resyncs; in sync: $(if [ -n "${mibs[randwrite-4k-qd32.mirror]:-}" ]; then
      awk -v m="${mibs[randwrite-4k-qd32.mirror]}" 'BEGIN { printf "%.1f MiB/s", m }'
    else echo "FAILED (no rate)"; fi) (table above)."
fi
echo
echo "load: $load_start at start, $load_end at end."

if ((failures > 0 || resync_failures > 0)); then
  echo "$failures fio run(s) and $resync_failures resync(s) failed; see the errors above${out:+ and the logs in $logs}" >&2
  exit 1
fi
