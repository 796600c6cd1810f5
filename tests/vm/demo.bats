#!/usr/bin/env bats
# scripts/demo on a kernel with ublk (what `scripts/demo --vm` runs): the demo
# takes its ublk path, and a second run finds the first run's data.

load helpers

@test "demo: ublk path, twice, data of the first run survives" {
  require_vm
  [ -c /dev/ublk-control ] || skip "no /dev/ublk-control"
  export PBRICK_DEMO_NO_BUILD=1 PBRICK_BUILD_DIR=$PBRICK_BIN_DIR PBRICK_DEMO_DIR=$BATS_TEST_TMPDIR/demo
  run "$BATS_TEST_DIRNAME/../../scripts/demo"
  printf '# %s\n' "${lines[@]}" >&3
  assert_success
  assert_output --partial 'attaching volume vol0 as a ublk device'
  assert_output --regexp 'ublkb[0-9]+ +1G +4096 +2M'
  assert_output --partial 'blocks allocated in'
  run "$BATS_TEST_DIRNAME/../../scripts/demo"
  printf '# %s\n' "${lines[@]}" >&3
  assert_success
  assert_output --partial "the previous run's data survived"
  run "$BATS_TEST_DIRNAME/../../scripts/demo" stop
  assert_success
  assert_output --partial 'ublk gateway stopped'
  dev=$(head -n1 "$PBRICK_DEMO_DIR/device")
  for _ in $(seq 1 50); do [ -e "$dev" ] || break; sleep 0.1; done
  [ ! -e "$dev" ] || fail "$dev still exists after scripts/demo stop"
}
