"""The README's test citations are real: every `tests/<file>.py::<test>` (and `::<test>` continuing the
last file named, as in `tests/x.py::test_a`, `::test_b`) names a file that exists and defines that test
function; every `tests/<file>.py` it mentions exists. Parsed with ast, nothing is imported or run."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_CITATION = re.compile(r"(?<![\w/])(tests/[\w/.-]+?\.py)?::(\w+)")
_FILE = re.compile(r"(?<![\w/])tests/[\w/.-]+?\.py\b")


def cited_tests(text: str) -> list[tuple[str, str]]:
    """(file, test name) of every citation in ``text``, in order; a bare ``::name`` belongs to the last file."""
    out, last = [], None
    for match in _CITATION.finditer(text):
        last = match.group(1) or last
        assert last is not None, f"`::{match.group(2)}` cited before any test file"
        out.append((last, match.group(2)))
    return out


def defined_tests(path: Path) -> set[str]:
    """Names of the test functions of a test module: module level and in ``Test*`` classes."""
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = list(tree.body)
    nodes += [n for c in tree.body if isinstance(c, ast.ClassDef) and c.name.startswith("Test") for n in c.body]
    return {n.name for n in nodes if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and n.name.startswith("test")}


def test_the_parser_reads_continuations_and_files():
    text = ("see `tests/a/x.py::test_one`, `::test_two`, `tests/y.py` and `tests/z.py::test_three`; "
            "not `other/tests/w.py::test_no`")
    assert cited_tests(text) == [("tests/a/x.py", "test_one"), ("tests/a/x.py", "test_two"),
                                 ("tests/z.py", "test_three")]
    assert _FILE.findall(text) == ["tests/a/x.py", "tests/y.py", "tests/z.py"]


def test_every_test_the_readme_cites_exists():
    text = (ROOT / "README.md").read_text()
    cited = cited_tests(text)
    assert len(cited) >= 20, cited  # the reliability table alone cites more: the parser found them
    defined: dict[str, set[str]] = {}
    missing = []
    for file, name in cited:
        path = ROOT / file
        if not path.is_file():
            missing.append(f"{file} (no such file)")
            continue
        if name not in defined.setdefault(file, defined_tests(path)):
            missing.append(f"{file}::{name}")
    missing += [f"{file} (no such file)" for file in sorted(set(_FILE.findall(text))) if not (ROOT / file).is_file()]
    assert not missing, f"README.md cites tests that do not exist: {missing}"
