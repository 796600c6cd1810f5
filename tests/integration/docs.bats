#!/usr/bin/env bats
# The docs name the tests that check their claims (docs/persistence.md: every
# durability claim) and files of the tree; doc_refs.py finds each of them.
# The man pages (docs/man) and each program's --help name the same options.

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

# long_options FILE: the --options FILE names, one per line, sorted, without
# --help (which not every page lists). man_options leaves out a man page's
# example blocks (.EX/.EE) and lines about other programs, whose options
# (systemctl --now, dpkg --purge) are not the page's own.
long_options() {
  grep -oE -- '--[a-z][a-z0-9-]*' "$1" | grep -vx -- --help | sort -u
}
man_options() {
  awk '/^\.EX/ {example = 1} /^\.EE/ {example = 0; next} !example' "$1" |
    grep -vE 'systemctl|journalctl|dpkg' | sed 's/\\-/-/g; s/\\f[BIRP]//g' >"$BATS_TEST_TMPDIR/page"
  long_options "$BATS_TEST_TMPDIR/page"
}

@test "docs: each program's man page names the options its --help names, and no others" {
  local prog name help man
  for prog in target/pbrick-target gateway/pbrick-gateway ctl/pbrickctl; do
    name=${prog#*/}
    "$PBRICK_BIN_DIR/$prog" --help >"$BATS_TEST_TMPDIR/$name.help" || fail "$name --help exited $?"
    help=$(long_options "$BATS_TEST_TMPDIR/$name.help")
    man=$(man_options "$root/docs/man/$name.8")
    (($(wc -l <<<"$help") >= 10)) || fail "$name --help names only: $help"
    [ "$man" = "$help" ] || fail "$name: only in --help: $(comm -23 <(echo "$help") <(echo "$man") | xargs);" \
      "only in docs/man/$name.8: $(comm -13 <(echo "$help") <(echo "$man") | xargs)"
  done
}

@test "docs: every long option pbrick-target and pbrick-gateway accept is in their --help" {
  local src prog accepted help
  for src in target/main.cc:target/pbrick-target gateway/gateway_main.cc:gateway/pbrick-gateway; do
    prog=${src#*:}
    # The getopt_long tables: {"name", required_argument, ...}.
    accepted=$(grep -oE '\{"[a-z][a-z0-9-]*", *(no|required|optional)_argument' "$root/${src%%:*}" |
      sed -E 's/^\{"([^"]+)".*/--\1/' | grep -vx -- --help | sort -u)
    (($(wc -l <<<"$accepted") >= 10)) || fail "${src%%:*}: read only: $accepted"
    "$PBRICK_BIN_DIR/$prog" --help >"$BATS_TEST_TMPDIR/help"
    help=$(long_options "$BATS_TEST_TMPDIR/help")
    [ -z "$(comm -23 <(echo "$accepted") <(echo "$help"))" ] ||
      fail "$prog accepts, and its --help does not name: $(comm -23 <(echo "$accepted") <(echo "$help") | xargs)"
  done
}
