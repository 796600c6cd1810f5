#!/usr/bin/env bash
# Tiering benchmark: a working set four times a brick's fast tier against the
# same set fitting in it, through the NBD gateway on this machine; and the
# latency of a MAP that promotes a block from the slow tier.
#
#   fits   a brick whose fast tier (a file in /dev/shm) holds the whole
#          working set, over a slow tier it does not need
#   4x     a brick whose fast tier is a quarter of the working set, over a
#          slow tier (a file on the disk file system, O_DIRECT)
# Both are served by nbdkit with the pbrick plugin and max-mapped=16 (the
# gateway's least bound), so the only difference is where the brick keeps the
# blocks. The working set is written once (1 MiB sequential), then fio reads
# it at random, 4 KiB at QD1, zipf (theta 1.2: a hot set) and uniform (every
# block as likely: the worst case for the fast tier). Beside each row: the
# CPU time per I/O of nbdkit and the brick (utime+stime from /proc/PID/stat
# over the measured time) and the blocks moved during the job (the brick's
# "tiering: P promotions, D demotions since start" log lines).
#
# First touch: a 4 KiB read in each 2 MiB block in turn (QD1 and QD8): each
# maps its block, on 4x mostly a promotion (the promoted count says how many),
# on fits a MAP without a move; the difference of their latencies is what a
# promotion adds to an I/O.
#
# Promotion latency: on the 4x brick, `pbrickctl map` of blocks the brick
# lists on the slow tier (each MAP copies the block up, demoting a cold one
# first when no fast slot is free) and of blocks on the fast tier (the same
# command without a move), each timed around the whole command; p50 and p99 of
# both, and their difference, which is what the move adds.
#
# Usage: bench/tier.sh [--build DIR] [--runtime SECONDS] [--set SIZE] [--maps N] [--out DIR]
#   --build DIR      build tree with target/pbrick-target, ctl/pbrickctl and
#                    gateway/nbdkit-pbrick-plugin.so (default: build-bench/,
#                    configured and built when they are missing)
#   --runtime SEC    measured seconds per fio job, after a 2 s ramp (default 10)
#   --set SIZE       the working set (default 256M; the 4x fast tier is a
#                    quarter of it, at least 40M)
#   --maps N         MAPs timed of each kind (default 40)
#   --out DIR        keep fio's JSON results and the servers' logs in DIR
# Output: a header describing the machine, then the tables (stdout). Progress
# goes to stderr. Exit status: 0 when every run succeeded, 1 otherwise.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/../scripts/lib.sh"
# shellcheck source=bench/host_bench.bash
source "$(dirname "$0")/host_bench.bash"

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }

build="" runtime=10 set_size=256M maps=40 out=""
while (($#)); do
  case $1 in
    --build) build=${2:?--build needs a directory}; shift 2 ;;
    --runtime) runtime=${2:?--runtime needs seconds}; shift 2 ;;
    --set) set_size=${2:?--set needs a size}; shift 2 ;;
    --maps) maps=${2:?--maps needs a count}; shift 2 ;;
    --out) out=${2:?--out needs a directory}; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done
[[ $runtime =~ ^[1-9][0-9]*$ ]] || die "--runtime: expected whole seconds, got '$runtime'"
[[ $maps =~ ^[1-9][0-9]*$ ]] || die "--maps: expected a count, got '$maps'"
ramp=2
M=$((1 << 20))
set_bytes=$(numfmt --from=iec "${set_size^^}" 2>/dev/null) || die "--set: cannot parse '$set_size'"
((set_bytes >= 160 * M && set_bytes % (2 * M) == 0)) || die "--set: at least 160M, a multiple of 2M"
small_fast=$((set_bytes / 4))
big_fast=$((set_bytes + 64 * M))    # the set, the volume's label and lock, free slots
slow_bytes=$((2 * set_bytes + 64 * M))

ensure_packages nbdkit libnbd-bin fio jq

hb_build "${build:-$PBRICK_ROOT/build-bench}"

tmp=$(mktemp -d "${TMPDIR:-/var/tmp}/pbrick-tier-bench.XXXXXX")  # the slow tiers: a disk
shm=$(mktemp -d /dev/shm/pbrick-tier-bench.XXXXXX)               # the fast stores
hb_dirs+=("$tmp" "$shm")
logs=$tmp
if [ -n "$out" ]; then mkdir -p "$out" && logs=$(cd "$out" && pwd); fi

declare -A port
# start SETUP FAST_BYTES: its brick (fast store in /dev/shm, slow tier on disk)
# and its nbdkit at $tmp/SETUP.sock.
start() {
  local s=$1 fast=$2
  start_brick "$s.brick" 127.0.0.1:0 --store "$shm/$s.store" --size "$fast" --slow-store "$tmp/$s.slow" \
    --slow-size "$slow_bytes" --log-level info
  port[$s]=$brick_port
  start_nbdkit "$s.nbdkit" "$tmp/$s.sock" "$plugin" target="127.0.0.1:${port[$s]}" size="$set_bytes" max-mapped=16
}
ctl() { local s=$1; shift; "$ctl_bin" --target "127.0.0.1:${port[$s]}" "$@"; }
# moves SETUP: "P D", the brick's totals so far (its summary line comes within
# the second after a move).
moves() {
  sleep 1.2
  sed -n 's/.*tiering: \([0-9]*\) promotions, \([0-9]*\) demotions since start.*/\1 \2/p' \
    "$logs/$1.brick.log" | tail -n 1 | grep . || echo "0 0"
}

setups=(fits 4x)
start fits "$big_fast"
start 4x "$small_fast"
commit=$(git -C "$PBRICK_ROOT" describe --always --dirty 2>/dev/null || echo unknown)
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
header=$(
  echo "pbrick tiering benchmark, $(date -u '+%Y-%m-%d %H:%M UTC')"
  machine_header
  echo "  pbrick  : $commit, build ${build_type:-?}"
  echo "  set     : $((set_bytes / M)) MiB volume, nbdkit max-mapped=16; fast tiers: fits $((big_fast / M)) MiB," \
    "4x $((small_fast / M)) MiB (/dev/shm); slow tiers $((slow_bytes / M)) MiB on $(df -P "$tmp" | awk 'NR == 2 { print $1 }')" \
    "($(findmnt -no FSTYPE -T "$tmp"))"
  echo "  jobs    : fio ioengine=nbd, 4k randread QD1 (ramp ${ramp} s + ${runtime} s each); first touch: one 4k read per 2 MiB block"
  echo "  load    : $load_start at start"
)
echo "$header" >&2

say "writing the working set once on both (1 MiB sequential, QD8)" >&2
for s in "${setups[@]}"; do
  fio --name=fill --ioengine=nbd --uri="nbd+unix:///?socket=$tmp/$s.sock" --rw=write --bs=1m --iodepth=8 \
    --size="$set_bytes" --output-format=json --output="$logs/fill.$s.json" >&2 || die "fill of $s failed"
done

rows=()
# job NAME SETUP FIO-ARGS...: one measured fio run on SETUP, a table row.
job() {
  local name=$1 s=$2 p0 d0 p1 d1 c0 c1 t0 t1 rc=0 json
  shift 2
  say "$name on $s" >&2
  read -r p0 d0 < <(moves "$s")
  json=$logs/$name.$s.json
  timeout -k 10 $((ramp + runtime + 120)) fio --name=read --ioengine=nbd \
    --uri="nbd+unix:///?socket=$tmp/$s.sock" --size="$set_bytes" --output-format=json --output="$json" "$@" \
    2>"$json.err" &
  fio_pid=$!
  local timed=0
  [[ " $* " == *" --time_based "* ]] && timed=1
  ((timed)) && sleep "$ramp.5"
  c0=$(proc_ticks "$s.nbdkit" "$s.brick")
  t0=$EPOCHREALTIME
  # A time-based job measures inside its runtime (its rate); a job over the
  # set (first touch) until it ends, as its I/O count is the whole job's.
  if ((timed)); then
    for _ in $(seq 1 $(((runtime - 1) * 10))); do kill -0 "$fio_pid" 2>/dev/null || break; sleep 0.1; done
  else
    wait "$fio_pid" || rc=$?
  fi
  c1=$(proc_ticks "$s.nbdkit" "$s.brick")
  t1=$EPOCHREALTIME
  ((timed)) && { wait "$fio_pid" || rc=$?; }
  fio_pid=""
  if ((rc != 0)) || ! jq -e '.jobs[0].error == 0' "$json" >/dev/null 2>&1; then
    tail "$json.err" >&2
    failures=$((failures + 1))
    rows+=("| $name | $s | FAILED (fio exit $rc; $json.err) | | | | | |")
    return 0
  fi
  read -r p1 d1 < <(moves "$s")
  rows+=("$(jq -r --arg n "$name" --arg s "$s" --argjson c $((c1 - c0)) --argjson k "$clk" \
    --arg t0 "$t0" --arg t1 "$t1" --argjson timed "$timed" --arg mv "$((p1 - p0)) / $((d1 - d0))" '.jobs[0].read as $r |
    "| \($n) | \($s) | \($r.iops | floor) | \($r.clat_ns.mean / 1000 | floor) | " +
    "\($r.clat_ns.percentile["50.000000"] / 1000 | floor) | \($r.clat_ns.percentile["99.000000"] / 1000 | floor) | " +
    "\($c * 1e6 / $k / (if $timed == 1 then $r.iops * (($t1 | tonumber) - ($t0 | tonumber)) else $r.total_ios end) | floor) | \($mv) |"' "$json")")
}
for dist in zipf:1.2 random; do
  for s in "${setups[@]}"; do
    job "randread 4k QD1 ${dist%%:*}" "$s" --rw=randread --bs=4k --iodepth=1 --random_distribution="$dist" \
      --time_based --runtime="$runtime" --ramp_time="$ramp"
  done
done
# First touch: one 4 KiB read in every 2 MiB block, in order - each read
# maps its block (the gateway holds 16), on 4x mostly a promotion; at QD8
# eight such MAPs wait at once (their promotions share batches).
for qd in 1 8; do
  for s in "${setups[@]}"; do
    job "first touch QD$qd" "$s" --rw=read:$((2 * M - 4096)) --bs=4k --iodepth="$qd" \
      --io_size=$((set_bytes / (2 * M) * 4096))
  done
done

# map_times SETUP TIER N: the wall time (µs) of `pbrickctl map` of up to N
# blocks the brick lists on TIER, one a line.
map_times() {
  local s=$1 tier=$2 n=$3 a t0
  ctl "$s" --json list | jq -r --argjson t "$tier" \
    '.extents[] | select(.tier == $t and .mapped == false and (.start | test("^0x([0-9a-f]{1,15}|[0-7][0-9a-f]{15})$"))) |
     (.start | ltrimstr("0x")) as $h | range(0; .blocks) as $i | "\($h) \($i)"' |
    head -n "$n" | while read -r h i; do
      a=$(((16#$h) + i * 2 * M))
      t0=$EPOCHREALTIME
      ctl "$s" map "$a" >/dev/null || { echo "map $a failed" | tee -a "$logs/map-failures" >&2; continue; }
      awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%d\n", (b - a) * 1e6 }'
    done
}
say "promotion latency: pbrickctl map of $maps slow and $maps fast blocks on 4x" >&2
sleep 2  # the background demotion settles at its watermark
read -r p0 _ < <(moves 4x)
map_times 4x 1 "$maps" >"$logs/map-slow.txt"
read -r p1 _ < <(moves 4x)
map_times 4x 0 "$maps" >"$logs/map-fast.txt"
n_slow=$(wc -l <"$logs/map-slow.txt") n_fast=$(wc -l <"$logs/map-fast.txt")
((n_slow > 0 && n_fast > 0)) || { echo "no blocks to map (slow $n_slow, fast $n_fast)" >&2; failures=$((failures + 1)); }
if [ -s "$logs/map-failures" ]; then
  echo "$(wc -l <"$logs/map-failures") pbrickctl map calls failed (left out of the latencies)" >&2
  failures=$((failures + 1))
fi

echo "$header"
echo "  load    : $(cut -d' ' -f1-3 /proc/loadavg) at the end"
echo
echo "| job | setup | IOPS | mean µs | p50 µs | p99 µs | CPU µs/IO (nbdkit+brick) | promoted / demoted |"
echo "|---|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
echo
echo "| MAP (pbrickctl map, whole command) | n | p50 ms | p99 ms |"
echo "|---|---|---|---|"
echo "| of a slow block (promotion: $((p1 - p0)) moves) | $n_slow | $(pct 50 <"$logs/map-slow.txt") | $(pct 99 <"$logs/map-slow.txt") |"
echo "| of a fast block (no move) | $n_fast | $(pct 50 <"$logs/map-fast.txt") | $(pct 99 <"$logs/map-fast.txt") |"
((failures == 0))
