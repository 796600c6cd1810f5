#!/usr/bin/env bats
# pbrick-gateway attach's flags: a bad value is a usage error (exit 2) that
# names the flag, before any device or brick is touched, so these run on a
# host without ublk.

load helpers

GW_BIN="$PBRICK_BIN_DIR/gateway/pbrick-gateway"

@test "attach usage errors exit 2 and name the flag" {
  run "$GW_BIN" attach --target 127.0.0.1:1 --size 8M --poll-us 1001
  assert_failure 2
  assert_output --partial '--poll-us must be 0..1000 us'
  run "$GW_BIN" attach --target 127.0.0.1:1 --size 8M --poll-us fast
  assert_failure 2
  assert_output --partial '--poll-us must be 0..1000 us'
  run "$GW_BIN" attach --target 127.0.0.1:1 --size 8M --pin-queues=yes
  assert_failure 2
  assert_output --partial "unknown or incomplete option '--pin-queues=yes'"
  run "$GW_BIN" attach --target 127.0.0.1:1 --size 8M -q 0
  assert_failure 2
  assert_output --partial '--queues must be 1..64'
  run "$GW_BIN" attach --target 127.0.0.1:1 --size 8M -d 5000
  assert_failure 2
  assert_output --partial '--depth must be 1..4096'
  run "$GW_BIN" attach --help
  assert_success
  assert_output --partial '--poll-us N'
  assert_output --partial '--pin-queues'
}
