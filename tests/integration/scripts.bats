#!/usr/bin/env bats
# scripts/lib.sh, shared by scripts/demo and scripts/test: build_tree
# reconfigures a build tree whose cached options differ from what its caller
# needs (the demo once left build/ without tests, and scripts/test then found
# no tests in it).

load helpers

setup() {
  # shellcheck source=../../scripts/lib.sh
  source "$BATS_TEST_DIRNAME/../../scripts/lib.sh"
}

# fake_tree DIR CACHE_LINE...: a "configured" tree with these cache entries.
fake_tree() {
  local dir=$1
  shift
  mkdir -p "$dir"
  : >"$dir/build.ninja"
  printf '%s\n' '# This is the CMakeCache file.' "$@" >"$dir/CMakeCache.txt"
}

@test "tree_is_configured: true only when every -D option matches the tree's cache" {
  local t=$BATS_TEST_TMPDIR/t
  fake_tree "$t" 'CMAKE_BUILD_TYPE:STRING=RelWithDebInfo' 'PBRICK_TESTS:BOOL=OFF' 'PBRICK_WERROR:BOOL=ON'
  tree_is_configured "$t"
  tree_is_configured "$t" -DPBRICK_TESTS=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo
  tree_is_configured "$t" -DPBRICK_TESTS:BOOL=OFF -G Ninja
  run tree_is_configured "$t" -DPBRICK_TESTS=ON
  assert_failure
  run tree_is_configured "$t" -DCMAKE_BUILD_TYPE=Release -DPBRICK_TESTS=OFF
  assert_failure
  # An option the cache does not have yet.
  run tree_is_configured "$t" -DPBRICK_FUZZ=OFF
  assert_failure
  # Not configured at all, or not for Ninja.
  run tree_is_configured "$BATS_TEST_TMPDIR/none"
  assert_failure
  rm "$t/build.ninja"
  run tree_is_configured "$t" -DPBRICK_TESTS=OFF
  assert_failure
}

@test "build_tree reconfigures a tree configured without tests when the tests need them" {
  local b=$BATS_TEST_TMPDIR/b
  # As scripts/demo used to leave build/.
  cmake -S "$PBRICK_ROOT" -B "$b" -G Ninja -DPBRICK_TESTS=OFF >/dev/null
  run grep -c 'common_test' "$b/build.ninja"
  assert_output 0
  # rebuild_cache: a target that compiles nothing.
  run build_tree "$b" -DPBRICK_TESTS=ON -- rebuild_cache
  assert_success
  assert_output --partial "reconfiguring $b: its cached options differ from -DPBRICK_TESTS=ON"
  grep -qx 'PBRICK_TESTS:BOOL=ON' "$b/CMakeCache.txt"
  grep -q 'common_test' "$b/build.ninja"
  # Now the options match: left as it is.
  run build_tree "$b" -DPBRICK_TESTS=ON -- rebuild_cache
  assert_success
  refute_output --partial "reconfiguring"
}

@test "build_tree configures a tree another compiler configured from scratch, keeping every option" {
  requires clang++
  local b=$BATS_TEST_TMPDIR/b gcc clang
  gcc=$(command -v g++) clang=$(command -v clang++)
  cmake -S "$PBRICK_ROOT" -B "$b" -G Ninja -DCMAKE_CXX_COMPILER="$gcc" -DPBRICK_TESTS=OFF >/dev/null
  # CMake alone would drop the other options here (PBRICK_TESTS and
  # CMAKE_BUILD_TYPE back to their defaults).
  run build_tree "$b" -DCMAKE_CXX_COMPILER="$clang" -DCMAKE_BUILD_TYPE=Debug -DPBRICK_TESTS=OFF -- rebuild_cache
  assert_success
  assert_output --partial "reconfiguring $b from scratch: it was configured with another compiler than CMAKE_CXX_COMPILER=$clang"
  grep -qx "CMAKE_CXX_COMPILER:[A-Z]*=$clang" "$b/CMakeCache.txt"
  grep -qx 'CMAKE_BUILD_TYPE:STRING=Debug' "$b/CMakeCache.txt"
  grep -qx 'PBRICK_TESTS:BOOL=OFF' "$b/CMakeCache.txt"
  grep -qF "$clang \$DEFINES" "$b/CMakeFiles/rules.ninja" # after ccache, when scripts/test sets it as launcher
  run build_tree "$b" -DCMAKE_CXX_COMPILER="$clang" -DCMAKE_BUILD_TYPE=Debug -DPBRICK_TESTS=OFF -- rebuild_cache
  assert_success
  refute_output --partial "reconfiguring"
}
