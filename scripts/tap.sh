# Counting test results, for scripts/test. Source it; do not run it.
# shellcheck shell=bash disable=SC2154 # $results is the caller's
#
# Every result is passed, failed or skipped. The tiers produce TAP (bats does;
# ctest_to_tap below turns ctest's results into TAP, scripts/test the
# fuzzers') and tally_tap counts it:
#   ok N NAME                        passed
#   not ok N NAME                    failed
#   ok N NAME # skip inherent: WHY   skipped: the check cannot apply to this
#                                    run (a TCP-only check in an RDMA run)
#   ok N NAME # skip ANY OTHER WHY   failed: the test did not run although it
#                                    should have ("requires nbdinfo":
#                                    scripts/test installed every tool; "no
#                                    /dev/ublk-control": the VM has ublk)
# and a missing plan (1..N) or one the results do not add up to (bats
# stopped early) is one more failure. Each tier, or each run of one (the
# system tier's VM boots), then adds a summary row with record. A new one:
#   started=$SECONDS
#   ... write TAP to FILE ...
#   tally_tap LABEL FILE      # sets tap_passed tap_failed tap_skipped tap_note
#   record LABEL "$started" "$tap_note"
# (a failure tally_tap cannot see, such as a runner's exit status: add it to
# tap_failed before record, with a note that says why; run_tap does both).
#
# Rows and skips go to files in the directory $results, which the caller
# sets, not to variables: scripts/test runs the tiers of one lane in a
# subshell. The files:
#   counts            one line "PASSED FAILED SKIPPED" per row
#   rows              the summary's rows
#   skipped-inherent  "LABEL: TEST: REASON" for each skip that is allowed
#   skipped-failed    the same for each skip counted as a failure
#   finished          each function run_lane ran to its end
tap_passed=0 tap_failed=0 tap_skipped=0 tap_note=

duration() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }

# record LABEL STARTED [NOTE]: a summary row with the tap_* counts and the
# time since STARTED (the $SECONDS when it began). $results/counts gets one
# line "PASSED FAILED SKIPPED" per row, $results/rows the row itself.
record() {
  echo "$tap_passed $tap_failed $tap_skipped" >>"$results/counts"
  printf '%-32s %6d %6d %7d %7s  %s\n' "$1" "$tap_passed" "$tap_failed" "$tap_skipped" \
    "$(duration $((SECONDS - $2)))" "${3:-}" >>"$results/rows"
}

# record_failure LABEL STARTED REASON: a row for a tier that gave no results.
record_failure() {
  tap_passed=0 tap_failed=1 tap_skipped=0
  record "$1" "$2" "$3"
}

# run_lane NAME FUNCTION...: the functions in order, every output line
# prefixed with "NAME| " (scripts/test runs its lanes at once). Each function
# that returns is listed in $results/finished; one that does not (it, or a
# function before it, exited the lane) is not, and record_unfinished gives it
# a failed row.
run_lane() {
  local name=$1 f
  shift
  for f in "$@"; do
    "$f"
    echo "$f" >>"$results/finished"
  done 2>&1 | sed -u "s/^/$name| /"
}

# record_unfinished FUNCTION...: a failed row, labelled with the function's
# name less "tier_", for each FUNCTION run_lane did not list as finished.
record_unfinished() {
  local f
  for f in "$@"; do
    grep -qx "$f" "$results/finished" 2>/dev/null ||
      record_failure "${f#tier_}" "$SECONDS" "did not finish: its lane exited under it"
  done
}

# tally_tap LABEL TAP_FILE: counts the results in TAP_FILE (see above); lists
# each skip, with its reason, for the summary.
tally_tap() {
  local label=$1 line name reason planned
  tap_passed=0 tap_failed=0 tap_skipped=0 tap_note=
  while IFS= read -r line; do
    line=${line%$'\r'}
    if [[ $line =~ ^ok\ [0-9]+\ (.*)\ \#\ skip(\ +(.*))?$ ]]; then
      name=${BASH_REMATCH[1]} reason=${BASH_REMATCH[3]}
      name=${name% in [0-9]*ms} # bats --timing puts the duration there
      if [[ $reason == inherent:* ]]; then
        tap_skipped=$((tap_skipped + 1))
        echo "$label: $name: $reason" >>"$results/skipped-inherent"
      else
        tap_failed=$((tap_failed + 1))
        echo "$label: $name: ${reason:-(no reason given)}" >>"$results/skipped-failed"
      fi
    elif [[ $line =~ ^ok\ [0-9]+ ]]; then
      tap_passed=$((tap_passed + 1))
    elif [[ $line =~ ^not\ ok\ [0-9]+ ]]; then
      tap_failed=$((tap_failed + 1))
    fi
  done <"$2"
  planned=$(grep -m 1 -E '^1\.\.[0-9]+'$'\r''?$' "$2" | tr -d '\r' | cut -d. -f3)
  if [ -z "$planned" ]; then
    tap_failed=$((tap_failed + 1))
    tap_note="no test plan: the tests did not start"
  elif ((planned == 0)); then
    tap_failed=$((tap_failed + 1))
    tap_note="no tests to run"
  elif ((tap_passed + tap_failed + tap_skipped != planned)); then
    tap_note="stopped early: $((tap_passed + tap_failed + tap_skipped)) of $planned results"
    tap_failed=$((tap_failed + 1))
  fi
  return 0
}

# ctest_to_tap JUNIT_XML: ctest's results as TAP. A GTEST_SKIP() (ctest:
# "notrun" with <skipped>) is a skip with GTEST_SKIP's message as its reason,
# another test ctest did not run one with ctest's ("Unable to find
# executable"), a disabled test a skip "disabled"; tally_tap counts them all
# as failures, none of these reasons starting "inherent:".
ctest_to_tap() {
  python3 - "$1" <<'PY'
import re, sys, xml.etree.ElementTree as ET
try:
    cases = list(ET.parse(sys.argv[1]).getroot().iter("testcase"))
except (OSError, ET.ParseError) as e:
    sys.exit(f"ctest wrote no readable results: {e}")
print(f"1..{len(cases)}")
for n, c in enumerate(cases, 1):
    name, status = c.get("name"), c.get("status")
    if status == "run":
        print(f"ok {n} {name}")
    elif status == "notrun" and c.find("skipped") is not None:
        # gtest prints "FILE:LINE: Skipped", the message, "[  SKIPPED ] NAME";
        # else ctest's reason ("Unable to find executable", "SKIP_RETURN_CODE=77").
        m = re.search(r"Skipped\n(.*?)\[  SKIPPED \]", c.findtext("system-out") or "", re.S)
        reason = m.group(1) if m else c.find("skipped").get("message", "")
        print(f"ok {n} {name} # skip {' '.join(reason.split())}")
    elif status == "disabled":
        print(f"ok {n} {name} # skip disabled")
    else:
        print(f"not ok {n} {name}")
PY
}

# run_ctest LABEL BUILD_DIR STARTED: runs the tree's ctest, counts its results.
run_ctest() {
  local junit tap
  junit=$(mktemp) tap=$(mktemp)
  # --timeout: a test that hangs fails (ctest's "Timeout") instead of holding
  # the run; the longest takes seconds, under the sanitizers too.
  (cd "$2" && ctest --output-on-failure -j "$(nproc)" --timeout 300 --output-junit "$junit")
  if ctest_to_tap "$junit" >"$tap"; then
    tally_tap "$1" "$tap"
    [ "$tap_note" = "no tests to run" ] && tap_note="ctest found no tests (configured with PBRICK_TESTS=OFF?)"
    record "$1" "$3" "$tap_note"
  else
    record_failure "$1" "$3" "ctest did not report a result"
  fi
  rm -f "$junit" "$tap"
}

# run_tap LABEL NAME COMMAND...: COMMAND, which prints TAP, through tee; its
# results are the row LABEL. NAME is what the row's note calls COMMAND when
# it exits non-zero with no failed test (counted as one failure).
run_tap() {
  local label=$1 name=$2 started=$SECONDS log rc
  shift 2
  log=$(mktemp)
  "$@" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  tally_tap "$label" "$log"
  if ((rc != 0 && tap_failed == 0)); then
    tap_failed=1
    tap_note="${tap_note:+$tap_note; }$name exited $rc with no failed test"
  fi
  record "$label" "$started" "$tap_note"
  rm -f "$log"
}
