#!/usr/bin/env python3
"""Checks that the tests and files the documentation names exist.

Usage: doc_refs.py ROOT DOC...

docs/persistence.md backs each durability claim with the test that checks
it, and the other docs name tests and files the same way; a test renamed or
removed would leave a claim that names nothing. Read from each DOC (its
lines joined, so that a reference may wrap):

  `tests/vm/ublk.bats` "NAME"        a bats test named NAME in that file
  `tests/vm/ublk.bats` ("A", "B")    tests in that file whose names contain
                                     A, and B (a quotation from a name)
  `Suite.Name`                       a gtest TEST/TEST_F/TEST_P in a
                                     *_test.cc under ROOT
  `SomethingTest`                    a gtest suite of that name
  `dir/file` (dir a top-level directory of the tree: tests/, target/, ...)
                                     a file or directory under ROOT, or what
                                     the CMakeLists.txt of its directory
                                     builds (target/pbrick-target)

Prints DOC:LINE: and what is missing for each reference not found, then
"N references, M not found"; exits 1 if any is missing.
"""
import bisect
import pathlib
import re
import sys

TOP_DIRS = ("tests", "target", "gateway", "common", "config", "scripts", "bench", "systemd", "docs", "ctl")


def bats_names(root):
    names = {}
    for f in list(root.glob("tests/**/*.bats")) + list(root.glob("bench/*.bats")):
        found = set()
        for m in re.finditer(r'^@test\s+"((?:[^"\\]|\\.)*)"', f.read_text(), re.M):
            found.add(" ".join(m.group(1).replace('\\"', '"').split()))
        names[str(f.relative_to(root))] = found
    return names


def gtests(root):
    tests, suites = set(), set()
    for f in root.glob("**/*_test.cc"):
        if any(part.startswith("build") for part in f.relative_to(root).parts):
            continue
        for m in re.finditer(r"^\s*TEST(?:_F|_P)?\(\s*(\w+)\s*,\s*(\w+)\s*\)", f.read_text(), re.M):
            tests.add(f"{m.group(1)}.{m.group(2)}")
            suites.add(m.group(1))
    return tests, suites


def built_by_cmake(root, path):
    """Whether PATH names what its directory's CMakeLists.txt builds."""
    cmake = root / path.parent / "CMakeLists.txt"
    if not cmake.is_file():
        return False
    name = path.name
    for suffix in (".so", ".a"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    name = name.removeprefix("lib")
    return re.search(r"add_(?:executable|library)\(\s*" + re.escape(name) + r"\s", cmake.read_text()) is not None


class Flat:
    """A document's words joined by single spaces, with each word's line."""

    def __init__(self, text):
        self.starts, self.lines, words, pos = [], [], [], 0
        for lineno, line in enumerate(text.splitlines(), 1):
            for word in line.split():
                self.starts.append(pos)
                self.lines.append(lineno)
                words.append(word)
                pos += len(word) + 1
        self.text = " ".join(words)

    def line_of(self, offset):
        return self.lines[bisect.bisect_right(self.starts, offset) - 1]


def check(root, doc, bats, tests, suites):
    flat = Flat(doc.read_text())
    refs, missing = 0, []

    def miss(m, what):
        missing.append(f"{doc}:{flat.line_of(m.start())}: {what}")

    for m in re.finditer(r'`((?:tests|bench)/[\w/.-]+\.bats)` (?:"([^"]+)"|\(((?:"[^"]+",? ?)+)\))', flat.text):
        refs += 1
        file = m.group(1)
        if file not in bats:
            miss(m, f"no file {file}")
        elif m.group(2) is not None:
            if m.group(2) not in bats[file]:
                miss(m, f'{file} has no test "{m.group(2)}"')
        else:
            for quoted in re.findall(r'"([^"]+)"', m.group(3)):
                if not any(quoted in name for name in bats[file]):
                    miss(m, f'{file} has no test whose name contains "{quoted}"')
    for m in re.finditer(r"`([A-Z]\w*)\.([A-Z]\w*)`", flat.text):
        refs += 1
        if m.group(1) not in suites:
            miss(m, f"no gtest suite {m.group(1)} (for {m.group(1)}.{m.group(2)})")
        elif f"{m.group(1)}.{m.group(2)}" not in tests:
            miss(m, f"no gtest {m.group(1)}.{m.group(2)}")
    for m in re.finditer(r"`([A-Z]\w*Test)`", flat.text):
        refs += 1
        if m.group(1) not in suites:
            miss(m, f"no gtest suite {m.group(1)}")
    # Not a bats file named with its tests (above).
    for m in re.finditer(r"`((?:" + "|".join(TOP_DIRS) + r")/[\w/.@-]+)`(?! \(?\")", flat.text):
        refs += 1
        path = pathlib.Path(m.group(1).rstrip("/."))
        if not (root / path).exists() and not built_by_cmake(root, path):
            miss(m, f"no file {path}")
    return refs, missing


def main():
    if len(sys.argv) < 3:
        sys.exit("usage: doc_refs.py ROOT DOC...")
    root = pathlib.Path(sys.argv[1])
    bats = bats_names(root)
    tests, suites = gtests(root)
    refs, missing = 0, []
    for doc in sys.argv[2:]:
        n, m = check(root, pathlib.Path(doc), bats, tests, suites)
        refs += n
        missing += m
    for line in missing:
        print(line)
    print(f"{refs} references, {len(missing)} not found")
    sys.exit(1 if missing else 0)


if __name__ == "__main__":
    main()
