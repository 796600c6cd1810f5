#!/usr/bin/env bats
# The docs name the tests that check their claims (docs/persistence.md: every
# durability claim) and files of the tree; doc_refs.py finds each of them.

load helpers

root=$BATS_TEST_DIRNAME/../..

@test "docs: every test, gtest and file the docs and READMEs name exists" {
  requires python3
  local docs=("$root"/README.md "$root"/docs/*.md "$root"/tests/*/README.md "$root"/tests/*/*/README.md)
  run python3 "$BATS_TEST_DIRNAME/doc_refs.py" "$root" "${docs[@]}"
  assert_success
  # persistence.md alone names 30-odd tests: a count this low means the
  # references were not read, not that they all exist.
  [[ ${lines[-1]} =~ ^([0-9]+)\ references,\ 0\ not\ found$ ]] || fail "last line: ${lines[-1]}"
  ((BASH_REMATCH[1] >= 150)) || fail "only ${BASH_REMATCH[1]} references read"
}

@test "docs: a renamed test, gtest or file is reported with the doc's file and line" {
  requires python3
  local tree=$BATS_TEST_TMPDIR/tree
  mkdir -p "$tree/tests/vm" "$tree/target" "$tree/docs"
  # (Written so that bats does not take it for a test of this file.)
  printf '@%s "ublk: data survives a \\"restart\\"" {\n  true\n}\n' test >"$tree/tests/vm/ublk.bats"
  printf 'TEST(StoreTest, Reopens) {}\nTEST_F(ServerTest, Answers) {}\n' >"$tree/target/store_test.cc"
  printf 'add_executable(pbrick-target main.cc)\n' >"$tree/target/CMakeLists.txt"
  cat >"$tree/docs/claims.md" <<'DOC'
Checked by `tests/vm/ublk.bats` "ublk: data survives a "restart"" - no: quotes
end a name. Checked by `tests/vm/ublk.bats` "ublk: data
survives" and by `tests/vm/ublk.bats` ("data survives", "survives a").
`StoreTest.Reopens`, `ServerTest.Answers`, `StoreTest`, `target/pbrick-target`,
`target/store_test.cc`.

`StoreTest.Reopen`, `StoreTests.Reopens`, `ServerTestTest`,
`tests/vm/nbd.bats` "x", `tests/vm/ublk.bats` ("restarts"),
`target/pbrick-gateway`, `docs/missing.md`.
DOC
  run python3 "$BATS_TEST_DIRNAME/doc_refs.py" "$tree" "$tree/docs/claims.md"
  assert_failure 1
  local doc=$tree/docs/claims.md
  assert_output "$(printf '%s\n' \
    "$doc:1: tests/vm/ublk.bats has no test \"ublk: data survives a \"" \
    "$doc:2: tests/vm/ublk.bats has no test \"ublk: data survives\"" \
    "$doc:8: no file tests/vm/nbd.bats" \
    "$doc:8: tests/vm/ublk.bats has no test whose name contains \"restarts\"" \
    "$doc:7: no gtest StoreTest.Reopen" \
    "$doc:7: no gtest suite StoreTests (for StoreTests.Reopens)" \
    "$doc:7: no gtest suite ServerTestTest" \
    "$doc:9: no file target/pbrick-gateway" \
    "$doc:9: no file docs/missing.md" \
    "15 references, 9 not found")"
}
