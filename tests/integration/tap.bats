#!/usr/bin/env bats
# scripts/tap.sh, which scripts/test counts every result with: a skip without
# an "inherent:" reason, a missing or short plan, a runner's non-zero exit
# and a ctest failure are failures; nothing is dropped from the summary.

load helpers

setup() {
  results=$BATS_TEST_TMPDIR/results
  mkdir "$results"
  # shellcheck source=../../scripts/tap.sh
  source "$BATS_TEST_DIRNAME/../../scripts/tap.sh"
}

# tap FILE LINE...: a TAP file.
tap() {
  local file=$1
  shift
  printf '%s\n' "$@" >"$file"
}

@test "tally_tap: passes, failures, inherent skips, and other skips counted as failures" {
  local t=$BATS_TEST_TMPDIR/t.tap
  tap "$t" 1..5 'ok 1 first in 12ms' 'not ok 2 second in 3ms' \
    'ok 3 over rdma in 5ms # skip inherent: this run is over TCP' \
    'ok 4 needs a tool in 1ms # skip requires nbdinfo' 'ok 5 bare skip # skip'
  tally_tap label "$t"
  [ "$tap_passed $tap_failed $tap_skipped" = "1 3 1" ] || fail "counted $tap_passed $tap_failed $tap_skipped"
  [ -z "$tap_note" ]
  assert_equal "$(cat "$results/skipped-inherent")" "label: over rdma: inherent: this run is over TCP"
  assert_equal "$(cat "$results/skipped-failed")" \
    "$(printf '%s\n' 'label: needs a tool: requires nbdinfo' 'label: bare skip: (no reason given)')"
}

@test "tally_tap: a missing plan, an empty plan and a plan the results fall short of are failures" {
  local t=$BATS_TEST_TMPDIR/t.tap
  tap "$t" 'ok 1 first'
  tally_tap label "$t"
  [ "$tap_passed $tap_failed" = "1 1" ]
  [ "$tap_note" = "no test plan: the tests did not start" ]
  tap "$t" 1..0
  tally_tap label "$t"
  [ "$tap_passed $tap_failed" = "0 1" ]
  [ "$tap_note" = "no tests to run" ]
  tap "$t" 1..3 'ok 1 first' 'ok 2 second'
  tally_tap label "$t"
  [ "$tap_passed $tap_failed" = "2 1" ]
  [ "$tap_note" = "stopped early: 2 of 3 results" ]
  # Carriage returns (a serial console's TAP) change nothing.
  tap "$t" $'1..2\r' $'ok 1 first\r' $'ok 2 second # skip inherent: why\r'
  tally_tap label "$t"
  [ "$tap_passed $tap_failed $tap_skipped" = "1 0 1" ]
  [ -z "$tap_note" ]
}

@test "run_tap: a runner that exits non-zero with every test passed is one failure, named in its row" {
  run_tap "some tier" runner bash -c 'printf "1..2\nok 1 a\nok 2 b\n"; exit 3'
  read -r passed failed skipped <"$results/counts"
  [ "$passed $failed $skipped" = "2 1 0" ] || fail "counted $passed $failed $skipped"
  assert_equal "$(wc -l <"$results/rows")" 1
  grep -E '^some tier +2 +1 +0 +0m0[0-9]s  runner exited 3 with no failed test$' "$results/rows" ||
    fail "row: $(cat "$results/rows")"
  # A failed test speaks for itself; its runner's exit adds nothing.
  run_tap "other tier" runner bash -c 'printf "1..1\nnot ok 1 a\n"; exit 1'
  [ "$(sed -n 2p "$results/counts")" = "0 1 0" ]
  # And a runner that succeeds with every test passed is a clean row.
  run_tap "clean tier" runner bash -c 'printf "1..1\nok 1 a\n"'
  [ "$(sed -n 3p "$results/counts")" = "1 0 0" ]
  grep -E '^clean tier +1 +0 +0 +0m0[0-9]s  $' "$results/rows"
}

@test "ctest_to_tap: run, failed, skipped with GTEST_SKIP's message, disabled; unreadable results fail" {
  local junit=$BATS_TEST_TMPDIR/junit.xml
  cat >"$junit" <<'XML'
<?xml version="1.0" encoding="UTF-8"?>
<testsuite name="Linux-c++" tests="4" failures="1" disabled="1" skipped="1">
  <testcase name="Suite.Passes" classname="Suite" time="0.1" status="run"><system-out>ok</system-out></testcase>
  <testcase name="Suite.Fails" classname="Suite" time="0.1" status="fail"><failure message="Failed"/></testcase>
  <testcase name="Suite.Skips" classname="Suite" time="0.1" status="notrun">
    <skipped message="Skipped"/>
    <system-out>x_test.cc:12: Skipped
no RDMA device here
[  SKIPPED ] Suite.Skips (0 ms)</system-out>
  </testcase>
  <testcase name="Suite.Off" classname="Suite" time="0" status="disabled"><skipped/></testcase>
</testsuite>
XML
  run ctest_to_tap "$junit"
  assert_success
  assert_equal "$output" "$(printf '%s\n' 1..4 'ok 1 Suite.Passes' 'not ok 2 Suite.Fails' \
    'ok 3 Suite.Skips # skip no RDMA device here' 'ok 4 Suite.Off # skip disabled')"
  # So a GTEST_SKIP counts as a failure unless its message says "inherent:".
  ctest_to_tap "$junit" >"$BATS_TEST_TMPDIR/t.tap"
  tally_tap unit "$BATS_TEST_TMPDIR/t.tap"
  [ "$tap_passed $tap_failed $tap_skipped" = "1 3 0" ]
  printf '<testsuite' >"$junit"
  run ctest_to_tap "$junit"
  assert_failure
  assert_output --partial "ctest wrote no readable results"
}

@test "run_ctest: a real ctest's passes, failures, unrunnable tests and empty trees, each in its row" {
  requires cmake ctest
  local src=$BATS_TEST_TMPDIR/src
  mkdir -p "$src"
  cat >"$src/CMakeLists.txt" <<'CMAKE'
cmake_minimum_required(VERSION 3.16)
project(tap_test NONE)
enable_testing()
add_test(NAME passes COMMAND true)
add_test(NAME fails COMMAND false)
add_test(NAME missing COMMAND /nonexistent/program)
add_test(NAME skips COMMAND sh -c "exit 77")
set_tests_properties(skips PROPERTIES SKIP_RETURN_CODE 77)
CMAKE
  cmake -S "$src" -B "$BATS_TEST_TMPDIR/tree" >/dev/null
  # scripts/test runs without errexit (so here behind ||): ctest exits
  # non-zero, and the row counts what its results say.
  run_ctest unit "$BATS_TEST_TMPDIR/tree" "$SECONDS" >"$BATS_TEST_TMPDIR/ctest.out" || fail "run_ctest failed"
  [ "$(cat "$results/counts")" = "1 3 0" ] || fail "counted $(cat "$results/counts")"
  grep -qx 'unit: missing: Unable to find executable' "$results/skipped-failed"
  grep -qx 'unit: skips: SKIP_RETURN_CODE=77' "$results/skipped-failed"
  # A tree without tests, and a directory that is no tree: failures, saying so.
  sed -i '/add_test\|set_tests_properties/d' "$src/CMakeLists.txt"
  cmake -S "$src" -B "$BATS_TEST_TMPDIR/empty" >/dev/null
  run_ctest sanitize "$BATS_TEST_TMPDIR/empty" "$SECONDS" >/dev/null || fail "run_ctest failed"
  [ "$(sed -n 2p "$results/counts")" = "0 1 0" ]
  grep -E '^sanitize +0 +1 +0 +0m0[0-9]s  ctest found no tests' "$results/rows" || fail "rows: $(cat "$results/rows")"
  run_ctest fuzz "$BATS_TEST_TMPDIR/nothing-here" "$SECONDS" >/dev/null 2>&1 || fail "run_ctest failed"
  [ "$(sed -n 3p "$results/counts")" = "0 1 0" ]
  grep -E '^fuzz +0 +1 +0 +0m0[0-9]s  ctest did not report a result$' "$results/rows" || fail "rows: $(cat "$results/rows")"
}

@test "run_lane: a tier that exits its lane, and those after it, are failed rows, not missing ones" {
  tier_passes() { echo "one"; echo "two" >&2; }
  tier_exits() { echo "about to exit"; exit 3; }
  tier_pass() { echo "never printed"; } # a name inside a finished one's
  run run_lane units tier_passes tier_exits tier_pass
  assert_success
  # Every line, stderr too, carries the lane's name.
  assert_output "$(printf '%s\n' 'units| one' 'units| two' 'units| about to exit')"
  assert_equal "$(cat "$results/finished")" tier_passes
  record_unfinished tier_passes tier_exits tier_pass system_vm_runs
  [ "$(cat "$results/counts")" = "$(printf '%s\n' '0 1 0' '0 1 0' '0 1 0')" ] || fail "counted $(cat "$results/counts")"
  local rows
  rows=$(sed -E 's/ +/ /g' "$results/rows")
  assert_equal "$rows" "$(printf '%s\n' 'exits 0 1 0 0m00s did not finish: its lane exited under it' \
    'pass 0 1 0 0m00s did not finish: its lane exited under it' \
    'system_vm_runs 0 1 0 0m00s did not finish: its lane exited under it')"
}
