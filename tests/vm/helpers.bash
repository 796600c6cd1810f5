# Common setup for the system tests: they run inside the VM tests/vm/run
# boots (a real Debian kernel, the host's root read-only as /, /tmp a tmpfs,
# TMPDIR=/var/tmp a scratch disk; see README.md), on top of the integration
# helpers (start_brick, ctl, start_nbd, ...).
# shellcheck shell=bash

# Under emulation every process costs 50-250 ms, and bats loads all of this
# again for each test: these helpers avoid spawning where bash can do it.
VM_TESTS_DIR=${BASH_SOURCE[0]%/*}

# Debian's load.bash of bats-support and bats-assert runs dirname for every
# file it sources (15 processes per test): source those files directly, and
# make the integration helpers' load of the two loaders a no-op meanwhile.
vm_load_bats_libs() {
  local f
  for f in /usr/lib/bats/bats-support/src/{output,error,lang}.bash /usr/lib/bats/bats-assert/src/*.bash; do
    [ -f "$f" ] || return 1
    # shellcheck disable=SC1090
    source "$f" || return 1
  done
}
if vm_load_bats_libs; then
  load() {
    case $1 in /usr/lib/bats/bats-support/load.bash | /usr/lib/bats/bats-assert/load.bash) return 0 ;; esac
    bats_load_safe "$@" || exit 1
  }
fi
# shellcheck disable=SC2218 # load is bats'
load "$VM_TESTS_DIR/../integration/helpers"
# shellcheck disable=SC2218
load "$VM_TESTS_DIR/../integration/nbd"
# bats' own definition again.
load() {
  if ! bats_load_safe "$@"; then
    exit 1
  fi
}

# Everything here drives a real kernel (module loading, block devices): only
# inside the VM, never on the host that runs tests/vm/run. Not an "inherent:"
# skip: scripts/test runs these files in the VM only, so a skip there is a
# failure.
require_vm() {
  [ "${PBRICK_VM:-}" = 1 ] || skip "system test: runs inside the VM (tests/vm/run)"
}

# dev_sectors DEV: its size in 512-byte sectors, per sysfs (0 when absent).
dev_sectors() {
  local n=0
  read -r n <"/sys/block/${1#/dev/}/size" 2>/dev/null || n=0
  echo "$n"
}

# nbd_attach DEV: connects the kernel NBD client DEV (/dev/nbdN) to the export
# of the last start_nbd (its unix socket) and waits until DEV has its size.
nbd_attach() {
  local dev=$1
  # The default export (nbd-client warns that it uses newstyle for it).
  nbd-client -unix "$NBD_SOCK" "$dev" -b 4096 -t 30 >/dev/null || return 1
  echo "$dev" >>"$BATS_TEST_TMPDIR/nbd_devs"
  for _ in {1..100}; do
    [ "$(dev_sectors "$dev")" -gt 0 ] && return 0
    sleep 0.1
  done
  echo "$dev did not get a size after nbd-client" >&2
  return 1
}

# nbd_detach DEV: disconnects it and waits until the kernel let it go.
nbd_detach() {
  local dev=$1
  nbd-client -d "$dev" >/dev/null || return 1
  for _ in {1..100}; do
    [ -e "/sys/block/${dev#/dev/}/pid" ] || [ "$(dev_sectors "$dev")" != 0 ] || return 0
    sleep 0.1
  done
  echo "$dev is still connected after nbd-client -d" >&2
  return 1
}

# vm_teardown: unmounts what the test mounted under $BATS_TEST_TMPDIR and
# detaches its NBD devices before the daemons behind them stop, so a failed
# test does not leave the kernel retrying I/O against a vanished server.
vm_teardown() {
  local m dev _ mounts=()
  while read -r _ m _; do
    [[ $m == "$BATS_TEST_TMPDIR"/* ]] && mounts=("$m" "${mounts[@]}")
  done </proc/mounts
  for m in "${mounts[@]}"; do # the last mounted first
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
  done
  if [ -f "$BATS_TEST_TMPDIR/nbd_devs" ]; then
    while read -r dev; do
      nbd-client -d "$dev" >/dev/null 2>&1
    done <"$BATS_TEST_TMPDIR/nbd_devs"
  fi
  nbd_teardown
  brick_teardown
}

# sha_tree DIR: "sha256  path" of every regular file under DIR, sorted, and
# "type size path" of everything (so missing and extra files show too).
sha_tree() {
  (cd "$1" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0r sha256sum &&
    find . -printf '%y %s %p\n' | grep -v '^d ' | LC_ALL=C sort -k3)
}

# dmesg_problems: the kernel log lines that fail a run (tests/vm/run checks
# the same after the last test).
dmesg_problems() { dmesg | grep -E 'BUG:|WARNING:|I/O error|Oops|blocked for more than' || true; }

# --- the store of the ublk tests' brick (PBRICK_VM_STORE) ---------------------
# tests/vm/run gives the VM an emulated NVDIMM for PBRICK_VM_STORE=fsdax or
# devdax, and init makes a namespace on it (see init):
#   file (default)  a file in store_dir: the scratch disk (ext4, page cache),
#                   or /dev/shm over RDMA;
#   fsdax           a file on the ext4 mounted -o dax at PBRICK_VM_PMEM_DIR: the
#                   brick maps it with MAP_SYNC (not over RDMA: the kernel does
#                   not let a NIC pin fsdax pages);
#   devdax          the whole device PBRICK_VM_PMEM_DEV (its size is the store's).
# vm_store NAME SIZE: a blank store for NAME: sets VM_STORE (its path) and
# VM_STORE_ARGS (pbrick-target's --store and, on files, --size SIZE).
# shellcheck disable=SC2034 # VM_STORE_ARGS is for the caller
vm_store() {
  local name=$1 size=$2
  case ${PBRICK_VM_STORE:-file} in
  file)
    VM_STORE=$(store_dir)/$name.store || return 1
    rm -f "$VM_STORE"
    VM_STORE_ARGS=(--store "$VM_STORE" --size "$size")
    ;;
  fsdax)
    [ "$PBRICK_TRANSPORT" != rdma ] || {
      echo "PBRICK_VM_STORE=fsdax: an RDMA brick cannot register fsdax memory; use devdax" >&2
      return 1
    }
    [ -d "${PBRICK_VM_PMEM_DIR:-}" ] || {
      echo "PBRICK_VM_STORE=fsdax but no DAX file system (PBRICK_VM_PMEM_DIR='${PBRICK_VM_PMEM_DIR:-}'): run under tests/vm/run" >&2
      return 1
    }
    VM_STORE=$PBRICK_VM_PMEM_DIR/$name.store
    rm -f "$VM_STORE"
    VM_STORE_ARGS=(--store "$VM_STORE" --size "$size")
    ;;
  devdax)
    [ -c "${PBRICK_VM_PMEM_DEV:-}" ] || {
      echo "PBRICK_VM_STORE=devdax but no device-dax device (PBRICK_VM_PMEM_DEV='${PBRICK_VM_PMEM_DEV:-}'): run under tests/vm/run" >&2
      return 1
    }
    VM_STORE=$PBRICK_VM_PMEM_DEV
    devdax_wipe "$VM_STORE" || return 1
    VM_STORE_ARGS=(--store "$VM_STORE")
    ;;
  *)
    echo "PBRICK_VM_STORE must be file, fsdax or devdax, not '$PBRICK_VM_STORE'" >&2
    return 1
    ;;
  esac
}

# vm_store_remove: gives back the space of the last vm_store (a file); a
# devdax store stays until the next vm_store wipes it.
vm_store_remove() {
  case ${VM_STORE:-} in '' | /dev/*) ;; *) rm -f "$VM_STORE" ;; esac
}

# devdax_wipe DEV: zeroes the store's superblock and block map at the start of
# a device-dax device, so the next brick on it formats a new store (a zero
# superblock over a map that is not is a damaged store, which it refuses).
# Device-dax has no read/write system calls, only mmap (in units of its 2 MiB
# alignment).
devdax_wipe() {
  python3 -c '
import mmap, os, sys
rdev = os.stat(sys.argv[1]).st_rdev
with open("/sys/dev/char/%d:%d/size" % (os.major(rdev), os.minor(rdev))) as f:
    size = int(f.read())
block = 2 << 20
# The superblock (4 KiB) and 16 bytes of map per 2 MiB slot, at most one slot
# per 2 MiB of the device (target/media_util.h), rounded up to the alignment.
end = min(size, (4096 + 16 * (size // block) + block - 1) // block * block)
fd = os.open(sys.argv[1], os.O_RDWR)
m = mmap.mmap(fd, end)
m[:end] = bytes(end)
m.close()
' "$1" || { echo "cannot wipe the superblock of $1" >&2; return 1; }
}
