# Where a test failed, found when it fails instead of before every command.
# Loaded by tests/integration/helpers.bash, so by every bats file here.
#
# bats (1.8, Debian 12's) runs a DEBUG trap before each command of a test and
# keeps that command's stack trace, so that a failure can name its line. That
# costs about 0.4 ms per command on the build host and milliseconds under the
# system tier's emulated CPUs: in tests/vm/ublk.bats's boot bash took 36 s of
# the guest's 222 s of CPU with it, 19 s with no DEBUG trap at all, 26 s with
# this file (which keeps it for teardown).
# Bash 5 runs the ERR trap with the failing command's own line (bash 4 did
# not, which is why bats has the DEBUG trap), so each test here takes the
# stack trace in the ERR trap, once, from the command that failed, and then
# does what bats's ERR trap does. The report is the one bats prints, but for
# a test that ends in `exit N` with no failing command: it names no line.
#
# Teardown after a test that passed keeps bats's DEBUG trap: bats runs it as
# `teardown || status=$?`, where no ERR trap fires, and names the last command
# teardown ran. tests/integration/failure_trace.bats compares the reports.
#
# This file's own functions wrap two of bats's and are skipped in stack traces
# like bats's own (the directory is added to BATS_DEBUG_EXCLUDE_PATHS). With an
# older bash, or a bats without the functions used, bats's trap stays as it is.
# shellcheck shell=bash

# trace_failed_command STATUS: in the ERR trap, the failing command's status
# (bats_error_trap takes $? unless BATS_ERROR_STATUS has one) and its stack
# trace as bats_capture_stack_trace takes it (frames from the second caller
# on: this function is the first), without the frames of excluded files
# (bats, and bats-assert's functions) above the test's own: bats's DEBUG
# trap, which does not fire in those, names the test's line that called them.
# BATS_DEBUG_LAST_STACK_TRACE_IS_VALID tells bats_error_trap that the trace is
# the failing command's (and not one a DEBUG trap took after it).
trace_failed_command() {
  BATS_ERROR_STATUS=${BATS_ERROR_STATUS:-$1}
  bats_capture_stack_trace
  local entry file path excluded
  while ((${#BATS_DEBUG_LAST_STACK_TRACE[@]} > 1)); do
    entry=${BATS_DEBUG_LAST_STACK_TRACE[0]}
    file=${entry#* * }
    excluded=
    for path in "${BATS_DEBUG_EXCLUDE_PATHS[@]}"; do
      [[ ${file%/*} == "$path"* ]] && excluded=1 && break
    done
    [ -n "$excluded" ] || break
    BATS_DEBUG_LAST_STACK_TRACE=("${BATS_DEBUG_LAST_STACK_TRACE[@]:1}")
  done
  # shellcheck disable=SC2034 # read by bats_error_trap
  BATS_DEBUG_LAST_STACK_TRACE_IS_VALID=1
}

if ((BASH_VERSINFO[0] >= 5)) && ! declare -F stock_bats_test_begin >/dev/null &&
  declare -F bats_test_begin bats_teardown_trap bats_debug_trap bats_error_trap bats_capture_stack_trace \
    bats_add_debug_exclude_path >/dev/null; then
  # As bash names it in BASH_SOURCE, which is what bats compares.
  failure_trace_dir=${BASH_SOURCE[0]%/*}
  # bats's two functions, renamed (one process: this runs for every test).
  failure_trace_stock=$'\n'$(declare -f bats_test_begin bats_teardown_trap)
  failure_trace_stock=${failure_trace_stock//$'\n'bats_test_begin ()/$'\n'stock_bats_test_begin ()}
  eval "${failure_trace_stock//$'\n'bats_teardown_trap ()/$'\n'stock_bats_teardown_trap ()}"
  unset failure_trace_stock

  # The test function's first call (it runs setup): bats has just set its
  # DEBUG and ERR traps.
  bats_test_begin() {
    trap - DEBUG
    bats_add_debug_exclude_path "$failure_trace_dir"
    # A test that exits without a failing command (`exit N`) has no trace
    # (bats's would name the exit): not this function's line instead.
    # shellcheck disable=SC2034 # read by bats's report
    BATS_DEBUG_LAST_STACK_TRACE=() BATS_DEBUG_LASTLAST_STACK_TRACE=()
    trap 'trace_failed_command "$?"; bats_error_trap' ERR
    stock_bats_test_begin "$@"
  }

  # status_is N: returns N (sets $? for the next command of a || list).
  status_is() { return "$1"; }

  # bats_teardown_trap: bats's EXIT trap, or called after a test that
  # completed. After a completed test bats's DEBUG trap follows teardown
  # (after a failed one bats turns it off, keeping the failure's trace). It
  # reads the test's status from $? first: it gets it unchanged.
  bats_teardown_trap() {
    local status=$?
    if [ -n "${BATS_TEST_COMPLETED:-}" ]; then
      trap 'bats_debug_trap "$BASH_SOURCE"' DEBUG
    fi
    if ((status == 0)); then
      true
      stock_bats_teardown_trap "$@"
    else
      status_is "$status" || stock_bats_teardown_trap "$@"
    fi
  }
fi
