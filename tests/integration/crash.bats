#!/usr/bin/env bats
# Crash consistency at the daemon level: kill -9 the brick while a client
# writes and sync-reads in a loop; every write acknowledged by a sync-read must
# survive, and the extent list must match what was written.
# tests/stress/crash-loop runs the same check for as many rounds as you like.

load helpers

@test "acknowledged writes survive kill -9 (20 rounds)" {
  run "$BATS_TEST_DIRNAME/../stress/crash-loop" --rounds "${PBRICK_CRASH_ROUNDS:-20}" \
    --bin-dir "$PBRICK_BIN_DIR" --work-dir "$BATS_TEST_TMPDIR"
  echo "$output"
  assert_success
  assert_line --regexp '^crash-loop: [0-9]+ rounds, [1-9][0-9]* acknowledged writes verified, 0 lost$'
}
