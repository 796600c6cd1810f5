# The host side of the benchmarks that run in the VM of tests/vm/run
# (bench/chain-vm.sh, first-write-vm.sh, peer-vm.sh, rdma-vm.sh, ublk-vm.sh):
# the build they measure, the host programs the guest borrows, the header
# that says what ran where, and the run itself. Source it after scripts/lib.sh.
# shellcheck shell=bash

# vm_bench_run BATS NOTE PACKAGES [BINARY...]: runs bench/BATS in the VM and
# prints what its guest half reports (its "# " lines and any failed test),
# between a header (machine, guest, build; NOTE, when not empty, is added to
# the guest line) and the host's load at the end; exits with the run's status.
# PACKAGES (one word list) are the host programs the guest runs (fio, jq,
# ...); the build in PBRICK_BIN_DIR (default build/) is made, Release, when
# pbrick-gateway or one of the BINARY paths (relative to it) is missing, and
# brought up to date with the tree otherwise (the header names the tree's
# commit). A test the guest skipped (a missing tool, no ublk) is printed and
# fails the run: a table with rows left out is not a result.
vm_bench_run() {
  local bats=$1 note=$2 packages=$3 need build=0 rc out
  shift 3
  export PBRICK_BIN_DIR=${PBRICK_BIN_DIR:-$PBRICK_ROOT/build}
  for need in gateway/pbrick-gateway "$@"; do
    [ -x "$PBRICK_BIN_DIR/$need" ] || build=1
  done
  if ((build)); then
    ensure_packages "${PBRICK_BUILD_PACKAGES[@]}"
    build_tree "$PBRICK_BIN_DIR" -DCMAKE_BUILD_TYPE=Release -DPBRICK_TESTS=OFF
  else
    cmake --build "$PBRICK_BIN_DIR" -j "$(nproc)" >&2 || die "build failed ($PBRICK_BIN_DIR)"
  fi
  # shellcheck disable=SC2086 # a word list
  ensure_packages $packages
  echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-), host kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg) at start"
  echo "guest: Debian bookworm-backports 6.12 under qemu (TCG unless KVM works), ${PBRICK_VM_MEM:-4G}${note:+, $note}: ratios matter, not rates"
  echo "pbrick: $(git -C "$PBRICK_ROOT" describe --always --dirty 2>/dev/null || echo unknown), $(sed -n 's/^CMAKE_BUILD_TYPE:[A-Z]*=//p' "$PBRICK_BIN_DIR/CMakeCache.txt" 2>/dev/null) ($PBRICK_BIN_DIR)"
  out=$(mktemp)
  set +e
  "$PBRICK_ROOT/tests/vm/run" "$PBRICK_ROOT/bench/$bats" | tee "$out" | sed -n 's/^# //p; /^not ok/p; /^ok .* # skip/p'
  rc=${PIPESTATUS[0]}
  set -e
  if ((rc == 0)) && grep -q '^ok .* # skip' "$out"; then
    echo "FAILED: the guest skipped a benchmark (above): nothing it would have measured is in the table"
    rc=1
  fi
  rm -f "$out"
  echo "load $(cut -d' ' -f1-3 /proc/loadavg) at end"
  exit "$rc"
}
