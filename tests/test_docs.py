"""The documentation stays true to the tree: fast, offline checks of README.md and docs/.

- docs/layout.md lists every module of the four packages, and only modules that exist;
- every relative markdown link in README.md and docs/*.md resolves to a file;
- README.md stays an entry point (at most 250 lines);
- nothing points at design notes outside the repository, and the docs do not ask users for
  paths outside it.
"""

import ast
import os
import re
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(REPO, "docs")
LAYOUT = os.path.join(DOCS, "layout.md")
PACKAGES = ("trainer", "models", "explainability", "benchmarks")
README_MAX_LINES = 250

# Built at runtime so that this file does not contain the strings it searches for.
OUTSIDE_DESIGN_NOTES = ("DESIGN" + ".md", "../shared" + "/DESIGN")
OUTSIDE_PATH = ".." + "/shared"
# Where text that could point outside the repository lives (the whole tree but run
# outputs, virtualenvs and caches).
SCANNED_FILES = ("README.md", "setup.py", "Makefile", "MANIFEST.in")
SCANNED_DIRS = ("docs", "trainer", "models", "explainability", "benchmarks", "tests",
                "notebooks", "colab", "cloud", "configs", ".ci")
SKIPPED_DIRS = {"__pycache__", ".ipynb_checkpoints", ".pytest_cache", ".hypothesis"}

# [text](target) or [text](target "title"); images (![alt](src)) match too. Code is not
# scanned: fenced blocks and inline code spans are removed first, and a target never holds
# brackets or parentheses (so "f([x](y))" inside an indented code block is no link).
LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^()\[\]\s<>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1", re.S | re.M)
INLINE_CODE = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.S)
MODULE_PATH = re.compile(r"`((?:%s)/[\w/]*\w+\.py)`" % "|".join(PACKAGES))


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def _rel(path):
    return os.path.relpath(path, REPO).replace(os.sep, "/")


def _markdown_files():
    files = [os.path.join(REPO, "README.md")]
    if os.path.isdir(DOCS):
        files += sorted(os.path.join(DOCS, name) for name in os.listdir(DOCS)
                        if name.endswith(".md"))
    return files


def _tracked_files():
    """Repository-relative paths git tracks (staged included), or None outside a git
    checkout. New modules count once they are added; a tracked file deleted from the
    working tree does not count."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--", *PACKAGES],
                             cwd=REPO, capture_output=True, check=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    paths = [p for p in out.stdout.decode("utf-8").split("\0") if p]
    return [p for p in paths if os.path.isfile(os.path.join(REPO, p))] if paths else None


def _walked_files():
    paths = []
    for package in PACKAGES:
        for root, dirs, names in os.walk(os.path.join(REPO, package)):
            dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS)
            paths += [_rel(os.path.join(root, name)) for name in names]
    return paths


def _holds_code(path):
    """False for an ``__init__.py`` that holds nothing but a docstring (or nothing)."""
    tree = ast.parse(_read(os.path.join(REPO, path)))
    body = tree.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]
    return bool(body)


def repository_modules():
    paths = _tracked_files()
    if paths is None:
        paths = _walked_files()
    modules = set()
    for path in paths:
        if not path.endswith(".py") or "__pycache__" in path.split("/"):
            continue
        if os.path.basename(path) == "__init__.py" and not _holds_code(path):
            continue
        modules.add(path)
    return modules


def layout_modules():
    return set(MODULE_PATH.findall(_read(LAYOUT)))


def test_layout_lists_only_modules_that_exist():
    missing = sorted(p for p in layout_modules() if not os.path.isfile(os.path.join(REPO, p)))
    assert not missing, ("docs/layout.md lists modules that do not exist (moved or removed? "
                         f"update docs/layout.md): {missing}")


def test_layout_lists_every_module():
    unlisted = sorted(repository_modules() - layout_modules())
    assert not unlisted, ("modules missing from docs/layout.md (add each as a `path` list "
                          f"line with its job): {unlisted}")


def test_layout_finds_the_modules_it_checks():
    # Guards the two tests above against a regex or a git call that silently finds nothing.
    assert "trainer/task.py" in layout_modules()
    assert "trainer/task.py" in repository_modules()


def _links(path):
    text = INLINE_CODE.sub("", FENCE.sub("", _read(path)))
    return [m.group(1) for m in LINK.finditer(text)]


@pytest.mark.parametrize("path", _markdown_files(), ids=_rel)
def test_relative_links_resolve(path):
    broken = []
    for target in _links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http(s):, mailto:, ...
            continue
        file_part = target.split("#", 1)[0].split("?", 1)[0]
        if not file_part:  # an anchor in the same file
            continue
        resolved = os.path.normpath(os.path.join(os.path.dirname(path), file_part))
        if not os.path.exists(resolved):
            broken.append(target)
        elif not _rel(resolved) or _rel(resolved).startswith(".."):
            broken.append(f"{target} (outside the repository)")
    assert not broken, f"{_rel(path)}: links that do not resolve: {broken}"


def test_the_link_check_finds_links():
    # Guards the link test against a pattern that silently matches nothing.
    assert any(link.startswith("docs/") for link in _links(os.path.join(REPO, "README.md")))


def test_readme_is_an_entry_point():
    lines = _read(os.path.join(REPO, "README.md")).count("\n")
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines, more than {README_MAX_LINES}: move reference material "
        "to docs/ and link it")


def _scanned_text_files():
    paths = [os.path.join(REPO, name) for name in SCANNED_FILES]
    for directory in SCANNED_DIRS:
        for root, dirs, names in os.walk(os.path.join(REPO, directory)):
            dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS)
            paths += [os.path.join(root, name) for name in sorted(names)
                      if not name.endswith((".pyc", ".pyo"))]
    for path in paths:
        if not os.path.isfile(path):
            continue
        try:
            yield path, _read(path)
        except (UnicodeDecodeError, OSError):
            continue  # binary files cannot point anywhere


def test_nothing_points_at_design_notes_outside_the_repository():
    offenders = [f"{_rel(path)} mentions {needle!r}"
                 for path, text in _scanned_text_files()
                 for needle in OUTSIDE_DESIGN_NOTES if needle in text]
    assert not offenders, ("design notes outside the repository are not shipped with it; "
                           f"point at docs/ instead: {offenders}")


def test_docs_ask_for_no_path_outside_the_repository():
    offenders = [_rel(path) for path in _markdown_files() if OUTSIDE_PATH in _read(path)]
    assert not offenders, (f"{offenders} mention {OUTSIDE_PATH!r}: write a placeholder "
                           "such as --data_dir PATH instead")
