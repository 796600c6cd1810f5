# Helpers shared by the benchmarks that run on this host over NBD
# (bench/nbd.sh, bench/tier.sh, bench/mirror.sh): the build they measure,
# servers started in the background and stopped whatever happens, a server's
# CPU ticks, fio over NBD with the servers' CPU sampled inside the measured
# time, the machine header and a percentile. Source it after scripts/lib.sh.
#
# The caller sets, before using them: tmp (a scratch directory, removed at the
# end like every directory in hb_dirs), logs (where server logs go, NAME.log),
# ramp and runtime (fio's seconds), size_bytes (what run_fio's jobs span),
# sock[SETUP] (each setup's NBD socket) and front_of[SETUP] / back_of[SETUP]
# (the server names whose CPU is counted as front end and back end; back_of
# may name several, summed, or none).
# shellcheck shell=bash
# shellcheck disable=SC2034,SC2154 # target_bin... are for the caller; tmp, logs... come from it

# hb_build DIR: the tree a benchmark measures. Sets target_bin, plugin,
# ctl_bin and build_type; configures and builds DIR (Release) when one of
# them is missing, and brings it up to date otherwise.
hb_build() {
  local dir=$1
  target_bin=$dir/target/pbrick-target
  plugin=$dir/gateway/nbdkit-pbrick-plugin.so
  ctl_bin=$dir/ctl/pbrickctl
  if [ ! -x "$target_bin" ] || [ ! -f "$plugin" ] || [ ! -x "$ctl_bin" ]; then
    ensure_packages "${PBRICK_BUILD_PACKAGES[@]}"
    say "building pbrick (Release) in $dir" >&2
    build_tree "$dir" -DCMAKE_BUILD_TYPE=Release -DPBRICK_TESTS=OFF >&2
  else
    # Up to date with the tree whose commit the header names.
    cmake --build "$dir" -j "$(nproc)" >&2 || die "build failed ($dir)"
  fi
  [ -x "$target_bin" ] || die "no pbrick-target in $dir/target"
  [ -f "$plugin" ] || die "no nbdkit-pbrick-plugin.so in $dir/gateway"
  [ -x "$ctl_bin" ] || die "no pbrickctl in $dir/ctl"
  build_type=$(sed -n 's/^CMAKE_BUILD_TYPE:[A-Z]*=//p' "$dir/CMakeCache.txt" 2>/dev/null || true)
}

# --- servers, stopped whatever happens -----------------------------------------
hb_pids=()   # running servers, in start order
hb_names=()  # their names (logs are $logs/NAME.log)
hb_dirs=()   # removed at the end
declare -A pid_of  # server name -> pid
fio_pid=""
hb_cleanup() {
  local rc=$? i pid
  trap - EXIT INT TERM
  if [ -n "$fio_pid" ]; then  # timeout passes the TERM on to fio
    kill -TERM "$fio_pid" 2>/dev/null || true
    wait "$fio_pid" 2>/dev/null || true
  fi
  # Newest first, so a front end stops before the server behind it.
  for ((i = ${#hb_pids[@]} - 1; i >= 0; i--)); do
    pid=${hb_pids[i]}
    kill -TERM "$pid" 2>/dev/null || continue
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  for i in "${hb_dirs[@]}"; do [ -z "$i" ] || rm -rf "$i"; done
  exit "$rc"
}
trap hb_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

started() {  # started NAME PID
  hb_names+=("$1")
  hb_pids+=("$2")
  pid_of[$1]=$2
}

# hb_kill NAME: kill -9 of server NAME (a crash, on purpose); it is no longer
# counted as running.
hb_kill() {
  local i pid=${pid_of[$1]}
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  for i in "${!hb_pids[@]}"; do
    [ "${hb_pids[i]}" != "$pid" ] || unset 'hb_pids[i]' 'hb_names[i]'
  done
  hb_pids=("${hb_pids[@]}")
  hb_names=("${hb_names[@]}")
  unset 'pid_of[$1]'
}

# check_servers: dies, with the tail of its log, if a server is gone.
check_servers() {
  local i dead=""
  for i in "${!hb_pids[@]}"; do
    if ! kill -0 "${hb_pids[i]}" 2>/dev/null; then
      printf 'error: server %s (pid %s) exited; the end of %s:\n' "${hb_names[i]}" "${hb_pids[i]}" \
        "$logs/${hb_names[i]}.log" >&2
      tail -n 20 "$logs/${hb_names[i]}.log" >&2
      dead+=" ${hb_names[i]}"
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

# start_brick NAME HOST:PORT ARGS...: pbrick-target listening on HOST:PORT
# (port 0: any free one) or on unix:/PATH with ARGS (--store, --size, ...);
# waits until it serves; sets brick_port (empty for a unix socket). A restart
# of NAME appends to its log ($logs/NAME.log), so the first run's lines stay.
declare -A hb_brick_seen
start_brick() {
  local name=$1 listen=$2 pid port_file=()
  shift 2
  rm -f "$tmp/$name.port"
  [ -n "${hb_brick_seen[$name]:-}" ] || : >"$logs/$name.log"
  hb_brick_seen[$name]=1
  [[ $listen == unix:* ]] || port_file=(--port-file "$tmp/$name.port")
  "$target_bin" --listen "$listen" "${port_file[@]}" "$@" >>"$logs/$name.log" 2>&1 &
  pid=$!
  started "$name" "$pid"
  # Serving: its port file is written, or (a unix socket, which has no port)
  # it answers STAT.
  serving() {
    if ((${#port_file[@]})); then [ -s "$tmp/$name.port" ]; else "$ctl_bin" --target "$listen" stat >/dev/null 2>&1; fi
  }
  for _ in $(seq 1 100); do
    serving && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if ! serving; then
    tail -n 20 "$logs/$name.log" >&2
    die "pbrick-target $name did not start (log: $logs/$name.log)"
  fi
  brick_port=""
  ((${#port_file[@]})) && brick_port=$(cat "$tmp/$name.port")
  return 0
}

# --- CPU ------------------------------------------------------------------------
clk=$(getconf CLK_TCK)
# proc_ticks NAME...: utime+stime ticks of the named servers (all their
# threads), summed; 0 for none.
proc_ticks() {
  local stat fields name sum=0
  for name in "$@"; do
    read -r stat <"/proc/${pid_of[$name]}/stat" || continue
    # shellcheck disable=SC2206  # the fields after "(comm) ", from field 3 on
    fields=(${stat##*) })
    sum=$((sum + fields[11] + fields[12]))
  done
  echo "$sum"
}

# --- fio ---------------------------------------------------------------------------
failures=0
declare -A cpu_ticks  # TAG.SETUP -> "front-ticks back-ticks seconds"

# run_fio SETUP TAG TIMEOUT FIO-ARGS...: one fio run on SETUP's socket into
# $logs/TAG.SETUP.json, over size_bytes. With cpu_window set, the servers' CPU
# is sampled meanwhile (sample_cpu). A failure is counted in failures and
# returns 1; a dead server stops the benchmark.
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

# sample_cpu SETUP TAG: while fio runs, the servers' CPU ticks over a window
# from 0.5 s after the ramp for $cpu_window seconds, into cpu_ticks[TAG.SETUP];
# turned into time per I/O with the job's IOPS (fio counts no I/O of the ramp,
# so the window stays inside the measured time).
sample_cpu() {
  local setup=$1 tag=$2 f0 b0 f1 b1 t0 t1
  # shellcheck disable=SC2086  # back_of may name several servers
  {
    sleep "$(awk -v r="$ramp" 'BEGIN { print r + 0.5 }')"
    f0=$(proc_ticks ${front_of[$setup]})
    b0=$(proc_ticks ${back_of[$setup]})
    t0=$EPOCHREALTIME
    sleep "$cpu_window"
    f1=$(proc_ticks ${front_of[$setup]})
    b1=$(proc_ticks ${back_of[$setup]})
    t1=$EPOCHREALTIME
  }
  cpu_ticks[$tag.$setup]="$((f1 - f0)) $((b1 - b0)) $(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')"
}

# cpu_per_io TAG SETUP IOPS: "front+back" server CPU µs per I/O (front alone
# when SETUP has no back end), or "-".
cpu_per_io() {
  local c=${cpu_ticks[$1.$2]:-} i=${3:-}
  if [ -z "$c" ] || [ -z "$i" ]; then echo "-"; return; fi
  awk -v c="$c" -v i="$i" -v k="$clk" -v back="${back_of[$2]}" 'BEGIN {
    split(c, f, " "); n = i * f[3]
    if (n <= 0) { print "-"; exit }
    if (back == "") printf "%.1f", f[1] * 1e6 / k / n
    else printf "%.1f+%.1f", f[1] * 1e6 / k / n, f[2] * 1e6 / k / n }'
}

# fio_row JSON DIR: "IOPS MiB/s clat-mean-µs clat-p99-µs sync-mean-µs
# sync-p99-µs" of DIR (read or write) of a fio JSON result, tab-separated.
fio_row() {
  jq -r --arg d "$2" '.jobs[0] | .sync as $s | .[$d] |
    [.iops, .bw_bytes / 1048576, .clat_ns.mean / 1000,
     ((.clat_ns.percentile // {})["99.000000"] // 0) / 1000,
     (($s.lat_ns.mean // 0) / 1000), ((($s.lat_ns.percentile // {})["99.000000"] // 0) / 1000)] | @tsv' "$1"
}

# --- reporting ---------------------------------------------------------------------
# machine_header: the machine, kernel and tools lines of a result's header.
machine_header() {
  echo "  machine : $(nproc) CPUs, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)," \
    "$(awk '/^MemTotal/ { printf "%.0f GiB RAM", $2 / 1048576 }' /proc/meminfo)"
  echo "  kernel  : $(uname -sr)"
  echo "  tools   : $(fio --version), $(nbdkit --version | head -n 1)"
}

load_avg() { cut -d' ' -f1-3 /proc/loadavg; }

# pct P: the P-th percentile of the numbers on stdin (one a line), divided by
# 1000, or "-" when there are none.
pct() {
  sort -n | awk -v p="$1" '{ v[NR] = $1 } END { if (!NR) { print "-"; exit }
    i = int(NR * p / 100 + 0.999); if (i < 1) i = 1; printf "%.2f", v[i] / 1000 }'
}
