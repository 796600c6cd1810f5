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
  # Buffers the process could not map are refused before any device exists.
  run prlimit --as=$((1536 * 1024 * 1024)) "$GW_BIN" attach --target 127.0.0.1:1 --size 8M -d 4096
  assert_failure 2
  assert_output --partial '--depth 4096 x 1 queue(s) need 2.0 GiB of I/O buffers (512.0 KiB per tag), more than half'
  assert_output --partial 'lower --depth or --queues'
  run "$GW_BIN" attach --help
  assert_success
  assert_output --partial '--poll-us N'
  assert_output --partial '--pin-queues'
}

@test "a cluster file that cannot be read is --config's error, a volume it lacks --volume's" {
  run "$GW_BIN" attach --config "$BATS_TEST_TMPDIR/missing.yaml" --volume v0
  assert_failure 2
  assert_output --partial "--config: $BATS_TEST_TMPDIR/missing.yaml: No such file or directory"
  refute_output --partial 'pbrick-gateway: --volume:'
  cp "$BATS_TEST_DIRNAME/../../config/examples/single-node-tcp.yaml" "$BATS_TEST_TMPDIR/c.yaml"
  run "$GW_BIN" attach --config "$BATS_TEST_TMPDIR/c.yaml" --volume v9
  assert_failure 2
  assert_output --partial "--volume: no volume named 'v9' in $BATS_TEST_TMPDIR/c.yaml"
}

@test "detach and recover refuse operands they do not take" {
  run "$GW_BIN" detach -n 1 2
  assert_failure 2
  assert_output --partial "detach: unexpected argument '2'"
  run "$GW_BIN" recover -n 1 2
  assert_failure 2
  assert_output --partial "recover: unexpected argument '2'"
}
