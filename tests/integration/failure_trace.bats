#!/usr/bin/env bats
# tests/bats/failure_trace.bash: a failing test's report names the same line
# and command as with bats's DEBUG trap, in setup, the test, helpers,
# bats-assert and teardown; and the DEBUG trap is off in a test.

load helpers

setup() {
  CASES="$BATS_TEST_DIRNAME/fixtures/failure_trace_cases.bats"
}

# reports ENV...: bats's TAP for the cases, with bats's trap and with the file's.
reports() {
  env "$@" bats --tap "$CASES" >"$BATS_TEST_TMPDIR/stock" 2>&1 || true
  env "$@" FAILURE_TRACE=1 bats --tap "$CASES" >"$BATS_TEST_TMPDIR/ours" 2>&1 || true
}

# reports_agree: the two reports are equal but for the traps the case "the
# traps in a test" prints.
reports_agree() {
  diff <(grep -v '^# \(DEBUG\|ERR\):' "$BATS_TEST_TMPDIR/stock") <(grep -v '^# \(DEBUG\|ERR\):' "$BATS_TEST_TMPDIR/ours")
}

@test "failure_trace: reports name the failing line as bats's own do" {
  reports
  # What each report says, checked once against the file (not only against
  # bats's own report, which could be wrong the same way).
  grep -qE '^# \(in test file .*/failure_trace_cases\.bats, line 28\)$' "$BATS_TEST_TMPDIR/ours"
  grep -qF "#   \`[ 2 -eq 3 ]' failed" "$BATS_TEST_TMPDIR/ours"
  grep -qE "^# \(from function \`fails_in_double_brackets' in file .*/failure_trace_cases\.bats, line 19,$" \
    "$BATS_TEST_TMPDIR/ours"
  grep -qF "#   \`x=\$(exit 3)' failed with status 3" "$BATS_TEST_TMPDIR/ours"
  grep -qE '^# \(in test file .*/failure_trace_cases\.bats, line 41\)$' "$BATS_TEST_TMPDIR/ours"
  grep -qx 'ok 9 failures that do not fail the test' "$BATS_TEST_TMPDIR/ours"
  reports_agree
}

@test "failure_trace: a failure in setup or teardown is named as bats names it" {
  reports FAIL_IN_SETUP=1
  grep -qE "^# \(from function \`setup' in test file .*/failure_trace_cases\.bats, line 12\)$" \
    "$BATS_TEST_TMPDIR/ours"
  reports_agree
  reports FAIL_IN_TEARDOWN=1
  grep -qE "^# \(from function \`teardown' in test file .*/failure_trace_cases\.bats, line 16\)$" \
    "$BATS_TEST_TMPDIR/ours"
  reports_agree
}

@test "failure_trace: no DEBUG trap in a test, the ERR trap takes the trace" {
  reports
  grep -qx "# DEBUG:trap -- 'bats_debug_trap \"\$BASH_SOURCE\"' DEBUG" "$BATS_TEST_TMPDIR/stock"
  grep -qx '# DEBUG:' "$BATS_TEST_TMPDIR/ours"
  grep -q '^# ERR:trap -- .*trace_failed_command' "$BATS_TEST_TMPDIR/ours"
}

@test "failure_trace: a test that ends in a bare exit fails, and only its report names no line" {
  reports EXIT_CASE=1
  grep -qx 'not ok 11 a bare exit' "$BATS_TEST_TMPDIR/stock"
  grep -qx 'not ok 11 a bare exit' "$BATS_TEST_TMPDIR/ours"
  grep -qE '^# \(in test file .*/failure_trace_cases\.bats, line 63\)$' "$BATS_TEST_TMPDIR/stock"
  # bats's report has the location and "`...exit 4' failed with status 4";
  # this file's neither, and nothing bats's has not (the traps' lines aside).
  local only
  only=$(reports_agree) && fail "the reports are equal"
  [ "$(grep -c '^<' <<<"$only")" -eq 2 ] && ! grep -q '^>' <<<"$only" || fail "$only"
}
