#!/usr/bin/env bats
# The peer benchmark's guest half (bench/peer-vm.sh boots the VM and runs it):
# pbrick against the kernel's own NVMe over Fabrics, same transport, same jobs,
# one run, job by job on each setup so noise hits them alike:
#   pbrick/tcp   fio on /dev/ublkbN of pbrick-gateway --transport tcp -> brick
#                on 127.0.0.1 (store in /dev/shm)
#   nvme/tcp     fio on /dev/nvmeXnY of `nvme connect -t tcp` -> nvmet on
#                127.0.0.1, namespace a brd ramdisk
#   pbrick/unix  the same gateway -> a brick on a unix socket (a gateway on
#                its brick's host); its ratios are against nvme/tcp
#   pbrick/rdma  the same gateway --transport rdma -> brick over rxe0
#   pbrick/rdma-sr  the same over rxe0, --persistence sync-read, to a brick on
#                the emulated NVDIMM (devdax) whose platform declares eADR (the
#                caches are durable, so a FLUSH is one RDMA READ per queue
#                pair that wrote); when the VM has one (PBRICK_VM_STORE=devdax)
#   nvme/rdma    `nvme connect -t rdma` -> nvmet over rxe0, another brd ramdisk
#                (the peer of both RDMA setups)
# The gateways: -q 2 -d 64, --persistence rpc but for rdma-sr. nvmet is set up through
# configfs, one subsystem per transport (two subsystems with one namespace
# each, so native multipath never merges them into one device).
# Then the floor of a 4k QD1 read in this VM: null_blk (block layer and fio
# only), a pbrick read the gateway answers without the brick (ublk's round
# trip through user space), and a bare request/reply between two processes
# over loopback TCP (bench/tcp_round_trip: what the brick leg costs at least);
# over RDMA, one one-sided 4 KiB READ and WRITE at a time between two fio
# processes (fio's rdma engine: what the RDMA leg costs at least).
# Reported: rate, mean and p99 latency (QD1 and fsync rows), the ratios
# pbrick/NVMe-oF, and CPU per I/O: the whole guest's busy time (what the
# kernel target's threads cost has no process of its own) and, for pbrick,
# the gateway's and the brick's. Under emulation absolute numbers mean little;
# the ratios do.

load ../tests/vm/helpers
load vm_bench

SIZE=${PBRICK_BENCH_SIZE:-128M}
RUNTIME=${PBRICK_BENCH_RUNTIME:-4}
GW_BIN="$PBRICK_BIN_DIR/gateway/pbrick-gateway"
M=$((1024 * 1024))
CFS=/sys/kernel/config/nvmet
NQN_PREFIX=nqn.2026-01.io.pbrick.bench

say() { echo "peer-vm: $*" >&2; }

# modules NAME...: modprobe from the cached kernel tree (tests/vm/run's
# initramfs does not carry the NVMe modules).
modules() {
  local m
  for m in "$@"; do
    modprobe -d "$PBRICK_VM_MODROOT" "$m" || { say "modprobe $m failed"; return 1; }
  done
}

# nvmet_export N TRTYPE ADDR PORT RAMDEV: subsystem $NQN_PREFIX.N with
# namespace 1 on RAMDEV, on nvmet port N (TRTYPE at ADDR:PORT).
nvmet_export() {
  local n=$1 trtype=$2 addr=$3 svc=$4 ram=$5 s=$CFS/subsystems/$NQN_PREFIX.$1
  mkdir "$s" || return 1
  echo 1 >"$s/attr_allow_any_host"
  mkdir "$s/namespaces/1"
  echo -n "$ram" >"$s/namespaces/1/device_path"
  echo 1 >"$s/namespaces/1/enable" || { say "cannot enable the namespace on $ram"; return 1; }
  mkdir "$CFS/ports/$n"
  echo "$trtype" >"$CFS/ports/$n/addr_trtype"
  echo ipv4 >"$CFS/ports/$n/addr_adrfam"
  echo "$addr" >"$CFS/ports/$n/addr_traddr"
  echo "$svc" >"$CFS/ports/$n/addr_trsvcid"
  ln -s "$s" "$CFS/ports/$n/subsystems/" || { say "cannot enable nvmet port $n ($trtype $addr:$svc)"; return 1; }
  echo "$n" >>"$BATS_TEST_TMPDIR/nvmet.ports"
}

nvme_namespaces() {
  local b
  for b in /sys/block/nvme*; do
    b=${b##*/}
    [[ $b =~ ^nvme[0-9]+n[0-9]+$ ]] && echo "$b" # not the hidden per-path nvmeXcYnZ
  done
  return 0
}

# nvme_attach N TRTYPE ADDR PORT: nvme connect to subsystem N; sets DEV.
nvme_attach() {
  local n=$1 before b
  before=" $(nvme_namespaces | tr '\n' ' ') "
  nvme connect -t "$2" -a "$3" -s "$4" -n "$NQN_PREFIX.$n" --hostnqn="$HOSTNQN" --hostid="$HOSTID" \
    >"$BATS_TEST_TMPDIR/connect.$n" 2>&1 || { say "nvme connect -t $2 failed:"; cat "$BATS_TEST_TMPDIR/connect.$n" >&2; return 1; }
  echo "$NQN_PREFIX.$n" >>"$BATS_TEST_TMPDIR/nvme.nqns"
  for _ in $(seq 1 100); do
    for b in $(nvme_namespaces); do
      [[ $before == *" $b "* ]] && continue
      DEV=/dev/$b
      [ -b "$DEV" ] && return 0
    done
    sleep 0.1
  done
  say "no new nvme namespace after nvme connect -t $2"
  return 1
}

@test "fio: pbrick ublk vs kernel NVMe-oF over tcp and rdma" {
  require_vm
  [ -c /dev/ublk-control ] || skip "no /dev/ublk-control"
  command -v nvme >/dev/null || { say "nvme-cli is missing (bench/peer-vm.sh installs it)"; false; }
  SIZE_BYTES=$(numfmt --from=iec "${SIZE^^}") || { say "--size $SIZE: not a size"; false; }
  ((RUNTIME >= 3)) || { say "--runtime: at least 3 s (the CPU window is runtime - 1 s)"; false; }
  VOL_MIB=$(((SIZE_BYTES + 2 * M - 1) / (2 * M) * 2))
  ((VOL_MIB >= 64)) || VOL_MIB=64
  # The gateways' volumes are twice the measured range: the half never
  # written is the floor rows' (a read of a block the volume never wrote is
  # answered by the gateway without the brick). Stores are sparse on tmpfs.
  GW_VOL_MIB=$((2 * VOL_MIB))
  STORE_MIB=$((GW_VOL_MIB + 32))
  SHM=/dev/shm/pbrick-tests$BATS_TEST_TMPDIR # removed by brick_teardown
  mkdir -p "$SHM"
  CLK=$(getconf CLK_TCK)

  modules configfs nvmet nvmet-tcp nvmet-rdma nvme-fabrics nvme-tcp nvme-rdma
  mountpoint -q /sys/kernel/config || mount -t configfs configfs /sys/kernel/config
  [ -d "$CFS" ] || { say "no $CFS after modprobe nvmet"; false; }
  RDMA_HOST=$(rdma_host) || { say "no soft-RoCE: rdma link add rxe0 type rxe netdev eth0 failed"; false; }
  [ -n "$RDMA_HOST" ] || { say "eth0 has no IPv4 address"; false; }

  # Two brd ramdisks of the volume's size (rd_size in KiB), one per transport.
  if [ ! -b /dev/ram1 ]; then
    rmmod brd 2>/dev/null || true
    modprobe -d "$PBRICK_VM_MODROOT" brd rd_nr=2 rd_size=$((VOL_MIB * 1024)) ||
      { say "modprobe brd rd_nr=2 failed"; false; }
  fi
  [ -b /dev/ram0 ] && [ -b /dev/ram1 ] || { say "no /dev/ram0 and /dev/ram1 after modprobe brd"; false; }
  local uuid
  uuid=$(cat /proc/sys/kernel/random/uuid)
  HOSTNQN=nqn.2014-08.org.nvmexpress:uuid:$uuid HOSTID=$uuid
  nvmet_export 1 tcp 127.0.0.1 4420 /dev/ram0
  nvmet_export 2 rdma "$RDMA_HOST" 4421 /dev/ram1

  brick_on tcp-brick tcp 127.0.0.1
  TCP_BRICK=$BRICK_PID
  # The unix socket's brick (no port: ready once it says where it serves).
  local unix_sock=$BATS_TEST_TMPDIR/brick.sock
  "$TARGET_BIN" --store "$SHM/unix-brick.store" --size "${STORE_MIB}M" --listen "unix:$unix_sock" \
    --persistence rpc 2>>"$BATS_TEST_TMPDIR/unix-brick.log" &
  UNIX_BRICK=$!
  echo "$UNIX_BRICK" >>"$BATS_TEST_TMPDIR/pids"
  await_ready "$UNIX_BRICK" "pbrick-target --listen unix:$unix_sock" \
    grep -q "serving on unix:$unix_sock" "$BATS_TEST_TMPDIR/unix-brick.log" ||
    { cat "$BATS_TEST_TMPDIR/unix-brick.log" >&2; false; }
  brick_on rdma-brick rdma "$RDMA_HOST"
  RDMA_BRICK=$BRICK_PID
  local sr=0
  if [ -c "${PBRICK_VM_PMEM_DEV:-}" ]; then
    sr=1
    devdax_wipe "$PBRICK_VM_PMEM_DEV"
    brick_on rdma-dax-brick rdma "$RDMA_HOST" "$PBRICK_VM_PMEM_DEV"
    SR_BRICK=$BRICK_PID
    grep -q "sync-read served (the store's persistence domain includes the CPU caches)" \
      "$BATS_TEST_TMPDIR/rdma-dax-brick.log" ||
      { say "the devdax brick does not serve sync-read (no eADR platform?):"; cat "$BATS_TEST_TMPDIR/rdma-dax-brick.log" >&2; false; }
  fi
  declare -A dev gw brick
  gw_attach gw-tcp "127.0.0.1:$(cat "$BATS_TEST_TMPDIR/tcp-brick.port")" tcp
  dev[pbrick/tcp]=$DEV gw[pbrick/tcp]=$GW_PID brick[pbrick/tcp]=$TCP_BRICK
  gw_attach gw-unix "unix:$unix_sock" tcp
  dev[pbrick/unix]=$DEV gw[pbrick/unix]=$GW_PID brick[pbrick/unix]=$UNIX_BRICK
  gw_attach gw-rdma "$RDMA_HOST:$(cat "$BATS_TEST_TMPDIR/rdma-brick.port")" rdma
  dev[pbrick/rdma]=$DEV gw[pbrick/rdma]=$GW_PID brick[pbrick/rdma]=$RDMA_BRICK
  if ((sr)); then
    GW_PERSISTENCE=sync-read gw_attach gw-rdma-sr "$RDMA_HOST:$(cat "$BATS_TEST_TMPDIR/rdma-dax-brick.port")" rdma
    dev[pbrick/rdma-sr]=$DEV gw[pbrick/rdma-sr]=$GW_PID brick[pbrick/rdma-sr]=$SR_BRICK
  fi
  nvme_attach 1 tcp 127.0.0.1 4420
  dev[nvme/tcp]=$DEV gw[nvme/tcp]='' brick[nvme/tcp]=''
  nvme_attach 2 rdma "$RDMA_HOST" 4421
  dev[nvme/rdma]=$DEV gw[nvme/rdma]='' brick[nvme/rdma]=''
  local setups=(pbrick/tcp nvme/tcp pbrick/unix pbrick/rdma nvme/rdma) s nets=(tcp unix rdma)
  # The NVMe-oF setup each pbrick one is compared with.
  declare -A peer=([tcp]=nvme/tcp [unix]=nvme/tcp [rdma]=nvme/rdma [rdma-sr]=nvme/rdma)
  if ((sr)); then setups+=(pbrick/rdma-sr); nets+=(rdma-sr); fi
  local wc=""
  for s in "${setups[@]}"; do
    wc+=" $s=${dev[$s]}($(cat "/sys/block/${dev[$s]#/dev/}/queue/write_cache"))"
  done

  # Precondition: real data over the measured range (pbrick serves blocks it
  # never wrote as zeros without asking the brick; brd likewise for pages).
  for s in "${setups[@]}"; do
    timeout 600 fio --name=fill --filename="${dev[$s]}" --direct=1 --ioengine=io_uring --rw=write --bs=1M \
      --iodepth=8 --size="$SIZE" --output-format=terse >"$BATS_TEST_TMPDIR/fill.out" 2>&1 ||
      { say "preconditioning $s (${dev[$s]}) failed:"; tail -n 20 "$BATS_TEST_TMPDIR/fill.out" >&2; false; }
  done

  declare -A res
  local job name engine rw bs depth extra unit lat
  local jobs=(
    "randread-4k-qd32 io_uring randread 4k 32 IOPS -"
    "randwrite-4k-qd32 io_uring randwrite 4k 32 IOPS -"
    "read-1m-qd8 io_uring read 1M 8 MiB/s -"
    "write-1m-qd8 io_uring write 1M 8 MiB/s -"
    "randread-4k-qd1 io_uring randread 4k 1 IOPS lat"
    "randwrite-4k-qd1 io_uring randwrite 4k 1 IOPS lat"
    "randwrite-4k-fsync1 psync randwrite 4k 1 IOPS sync"
  )
  for job in "${jobs[@]}"; do
    read -r name engine rw bs depth unit lat <<<"$job"
    extra=()
    [ "$lat" != sync ] || extra=(--fsync=1)
    for s in "${setups[@]}"; do
      GW=${gw[$s]} BRICK=${brick[$s]}
      run_job "$name.${s/\//-}" "${dev[$s]}" "$engine" "$rw" "$bs" "$depth" "${extra[@]}"
      # bs=1M: IOPS are MiB/s, and CPU per I/O is CPU per MiB.
      res[$name.$s]=$RES
      echo "measured: $name $s $RES"
    done
  done

  # The floor of a QD1 read in this VM, in the same run: null_blk (the block
  # layer and fio, no device: irqmode=0 completes in the submitter) and a
  # pbrick read the gateway answers itself (a block the volume never wrote:
  # ublk's round trip through the gateway, no brick). Any ublk server pays the
  # second; the kernel's NVMe-oF/TCP pays neither user-space round trip.
  if [ ! -b /dev/nullb0 ]; then
    modprobe -d "$PBRICK_VM_MODROOT" null_blk nr_devices=1 queue_mode=2 irqmode=0 gb=1 bs=4096 ||
      { say "modprobe null_blk failed"; false; }
  fi
  [ -b /dev/nullb0 ] || { say "no /dev/nullb0 after modprobe null_blk"; false; }
  GW='' BRICK=''
  run_job floor-nullb /dev/nullb0 io_uring randread 4k 1
  res[floor.nullb]=$RES
  echo "measured: randread-4k-qd1 null_blk $RES"
  GW=${gw[pbrick/tcp]} BRICK=${brick[pbrick/tcp]}
  run_job floor-unwritten "${dev[pbrick/tcp]}" io_uring randread 4k 1 --offset=$((VOL_MIB * M))
  res[floor.unwritten]=$RES
  echo "measured: randread-4k-qd1 pbrick/tcp unwritten half $RES"
  # The brick leg's own floor: a 64-byte request and a 4 KiB reply between two
  # processes over loopback TCP, one at a time (bench/tcp_round_trip.cc).
  local rtt
  rtt=$("$PBRICK_BIN_DIR/bench/tcp_round_trip" 2000) || { say "bench/tcp_round_trip failed"; false; }
  res[floor.rtt]=$(awk '{ print $4, $6, $8, $10 }' <<<"$rtt")
  echo "measured: $rtt"
  # The RDMA leg's own floor: one 4 KiB one-sided RDMA READ, then WRITE, at a
  # time between two fio processes over rxe0 (fio's rdma engine: no block
  # layer, no gateway, no brick; its client sleeps on a completion channel
  # as the gateway's rings do). Its CPU per I/O is the client's (fio's
  # usr+sys share of the run); the server does nothing per I/O.
  ulimit -l unlimited 2>/dev/null || true # fio's rdma engine registers its buffers
  local verb raw
  for verb in read write; do
    raw=$BATS_TEST_TMPDIR/fio-floor-rdma-$verb.json
    fio_rdma_raw "floor-rdma-$verb" "$verb" 4k 1 $((7400 + ${#verb})) ||
      { say "fio's rdma engine, a 4k RDMA $verb at QD1, failed:"; tail -n 30 "$raw.err" >&2; false; }
    res[floor.rdma-$verb]=$(sed -n '/^{/,$p' "$raw" | jq -r '.jobs[0] | if .error != 0 then "error \(.error)" else
      [.write.iops, .write.clat_ns.mean / 1000, ((.write.clat_ns.percentile // {})["99.000000"] // 0) / 1000,
       (.usr_cpu + .sys_cpu) / 100 / .write.iops * 1e6] | @tsv end') ||
      { say "fio rdma $verb: no JSON"; tail -n 20 "$raw" "$raw.err" >&2; false; }
    case ${res[floor.rdma-$verb]} in error* | "") say "fio rdma $verb: ${res[floor.rdma-$verb]:-no result}"; false ;; esac
    echo "measured: 4k RDMA $verb QD1, fio rdma engine: ${res[floor.rdma-$verb]}"
  done

  # One line per job and transport: rates, ratio, latencies, CPU.
  local t p n rp rn
  {
    printf '# \n'
    printf '# devices (write_cache):%s\n' "$wc"
    printf '# %-20s %-5s %-6s %10s %10s %6s  %-21s %-21s %-17s %s\n' job net unit pbrick nvme-of ratio \
      "pbrick mean/p99 us" "nvme mean/p99 us" "sys CPU us/IO p|n" "pbrick gw+brick us/IO"
    for job in "${jobs[@]}"; do
      read -r name engine rw bs depth unit lat <<<"$job"
      for t in "${nets[@]}"; do
        read -r -a p <<<"${res[$name.pbrick/$t]}"
        read -r -a n <<<"${res[$name.${peer[$t]}]}"
        rp=- rn=-
        if [ "$lat" = lat ]; then
          rp="${p[1]}/${p[2]}" rn="${n[1]}/${n[2]}"
        elif [ "$lat" = sync ]; then # the write plus its fsync: write clat + flush lat
          rp=$(awk -v a="${p[1]}" -v b="${p[3]}" -v c="${p[4]}" 'BEGIN { printf "%.0f+%.0f/%.0f", a, b, c }')
          rn=$(awk -v a="${n[1]}" -v b="${n[3]}" -v c="${n[4]}" 'BEGIN { printf "%.0f+%.0f/%.0f", a, b, c }')
        fi
        awk -v j="$name" -v t="$t" -v u="$unit" -v a="${p[0]}" -v b="${n[0]}" -v rp="$rp" -v rn="$rn" \
          -v sp="${p[5]}" -v sn="${n[5]}" -v g="${p[6]}" -v k="${p[7]}" -v unit="$unit" 'BEGIN {
          c = (unit == "MiB/s") ? "/MiB" : ""
          printf "# %-20s %-5s %-6s %10.1f %10.1f %6.2f  %-21s %-21s %-17s %s\n", j, t, u, a, b, (b > 0 ? a / b : 0),
            rp, rn, sprintf("%.0f|%.0f%s", sp, sn, c), sprintf("%s+%s%s", g, k, c) }'
      done
    done
    printf '# \n'
    printf '# floor of randread-4k-qd1 (io_uring, direct), same run: IOPS, mean/p99 us, sys CPU us/IO, gw+brick us/IO\n'
    local f
    for f in "null_blk (irqmode=0): block layer + fio:nullb" \
      "pbrick/tcp, never-written half: + ublk round trip via gateway:unwritten" \
      "pbrick/tcp, written: + brick over TCP:/randread-4k-qd1.pbrick/tcp" \
      "nvme/tcp (nvmet, brd):/randread-4k-qd1.nvme/tcp"; do
      local key=${f##*:}
      if [[ $key == /* ]]; then key=${key#/}; else key=floor.$key; fi
      read -r -a p <<<"${res[$key]}"
      printf '# %-52s %8.1f  %9s  %6s  %s\n' "${f%:*}" "${p[0]}" "${p[1]}/${p[2]}" "${p[5]}" "${p[6]}+${p[7]}"
    done
    read -r -a p <<<"${res[floor.rtt]}"
    printf '# %-52s %8s  %9s  %6s  %s\n' "loopback TCP round trip, 2 processes, 64 B + 4 KiB" - "${p[0]}/${p[1]}" - \
      "${p[2]}+${p[3]} (client+server)"
    printf '# \n'
    printf '# floor of 4k QD1 over RDMA (rxe0), same run: IOPS, mean/p99 us, sys CPU us/IO, gw+brick (or client) us/IO\n'
    read -r -a p <<<"${res[floor.unwritten]}"
    printf '# %-52s %8.1f  %9s  %6s  %s\n' "ublk round trip via gateway (never-written half, above)" "${p[0]}" \
      "${p[1]}/${p[2]}" "${p[5]}" "${p[6]}+${p[7]}"
    local rdma_setups=(pbrick/rdma nvme/rdma)
    ((sr == 0)) || rdma_setups=(pbrick/rdma pbrick/rdma-sr nvme/rdma)
    for verb in read write; do
      read -r -a p <<<"${res[floor.rdma-$verb]}"
      printf '# %-52s %8.1f  %9s  %6s  %s\n' "fio rdma engine: one-sided 4k RDMA $verb, 2 processes" "${p[0]}" \
        "$(printf '%.1f/%.1f' "${p[1]}" "${p[2]}")" - "$(printf '%.1f' "${p[3]}") (client)"
      for s in "${rdma_setups[@]}"; do
        read -r -a p <<<"${res[rand$verb-4k-qd1.$s]}"
        printf '# %-52s %8.1f  %9s  %6s  %s\n' "$s, rand$verb-4k-qd1 (above)" "${p[0]}" "${p[1]}/${p[2]}" "${p[5]}" \
          "${p[6]}+${p[7]}"
      done
    done
    printf '# \n'
    printf '# pbrick: pbrick-gateway attach -q 2 -d 64 --persistence rpc%s, ublk -> brick (store /dev/shm);\n' \
      "${PBRICK_BENCH_GW_ARGS:+ $PBRICK_BENCH_GW_ARGS}"
    printf '# unix: the same to a brick on a unix socket (--listen unix:PATH); its ratios are against nvme/tcp.\n'
    if ((sr)); then
      printf '# rdma-sr: the same with --persistence sync-read, brick on %s (devdax, persistence domain\n' "$PBRICK_VM_PMEM_DEV"
      printf '# cpu_cache); its ratios are against nvme/rdma.\n'
    fi
    printf '# nvme-of: nvme connect -> nvmet (configfs), namespace a brd ramdisk; tcp on 127.0.0.1, rdma over\n'
    printf '# rxe0 (%s). fio direct=1, size %s, %s s after 1 s ramp; io_uring, the fsync row psync with\n' "$RDMA_HOST" "$SIZE" "$RUNTIME"
    printf '# --fsync=1 (its latency: write clat + fsync mean / fsync p99). ratio = pbrick / nvme-of rate.\n'
    printf '# CPU per I/O (per MiB on 1M rows) over a %s s window inside each job: sys = the whole guest busy\n' $((RUNTIME - 1))
    printf '# (fio included; p = pbrick, n = nvme-of); gw+brick = pbrick-gateway + pbrick-target utime+stime.\n'
  } >&3

  for s in "${setups[@]}"; do
    [[ $s == pbrick/* ]] || continue
    kill -TERM "${gw[$s]}"
    wait "${gw[$s]}" || { say "gateway $s exited non-zero on SIGTERM"; false; }
  done
  : >"$BATS_TEST_TMPDIR/gw.pids"
  [ -z "$(dmesg_problems)" ] || { say "kernel log:"; dmesg_problems >&2; false; }
}

teardown() {
  local nqn n
  if [ -f "$BATS_TEST_TMPDIR/nvme.nqns" ]; then
    while read -r nqn; do nvme disconnect -n "$nqn" >/dev/null 2>&1 || true; done <"$BATS_TEST_TMPDIR/nvme.nqns"
  fi
  if [ -f "$BATS_TEST_TMPDIR/nvmet.ports" ]; then
    while read -r n; do
      rm -f "$CFS/ports/$n/subsystems/$NQN_PREFIX.$n"
      rmdir "$CFS/ports/$n" 2>/dev/null
      echo 0 >"$CFS/subsystems/$NQN_PREFIX.$n/namespaces/1/enable" 2>/dev/null
      rmdir "$CFS/subsystems/$NQN_PREFIX.$n/namespaces/1" "$CFS/subsystems/$NQN_PREFIX.$n" 2>/dev/null
    done <"$BATS_TEST_TMPDIR/nvmet.ports"
  fi
  bench_teardown
}
