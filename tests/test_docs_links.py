"""The documentation is self-contained: every link between the repository's docs resolves.

- Every relative link (and image) in a Markdown file of the repository points at a file or
  folder that exists inside the repository, and a ``#anchor`` on a Markdown target names one
  of its headings (GitHub's slug rule: lower case, punctuation dropped, spaces to hyphens,
  ``-1``, ``-2`` … for repeated headings).
- Code and recipes cite the reference docs by repository path (``ingest/SENTINEL.md#land-cover``,
  ``train/METHODS.md#cmid``, ``shards/DESIGN.md#scale``); each such citation must name a doc
  that exists, and its anchor a heading of it.
- No file points at the team's shared docs folder outside the repository: a user's clone does
  not have it.

Files are those git knows (tracked, or new and not ignored); without git, the repository tree
minus ``.venv``, ``build``, ``demo`` and caches.
"""

from __future__ import annotations

import re
import subprocess
from functools import cache
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".git", ".venv", "build", "demo", "__pycache__", ".pytest_cache", "node_modules"}
#: the reference docs code cites by name
REFERENCE_DOCS = ("DESIGN", "METHODS", "SENTINEL", "STYLE", "TESTING")
#: the folder of team documents outside the repository (spelt in two parts so this file passes)
SHARED_DOCS = "shared" + "/docs"


def repo_files() -> list[str]:
    """Repository-relative POSIX paths of the project's files."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                             cwd=REPO, capture_output=True, check=True, timeout=60).stdout
        files = [f for f in out.decode().split("\0") if f]
    except (OSError, subprocess.SubprocessError):
        files = []
    if not files:
        files = [p.relative_to(REPO).as_posix() for p in REPO.rglob("*")
                 if p.is_file() and not SKIP_DIRS & set(p.relative_to(REPO).parts)]
    return sorted(f for f in files if (REPO / f).is_file())


def markdown_files() -> list[str]:
    return [f for f in repo_files() if f.endswith(".md")]


def text_files() -> list[str]:
    """Files that may cite docs: Python, Markdown, YAML, the Makefile and the CI scripts."""
    return [f for f in repo_files()
            if f.endswith((".py", ".md", ".yaml", ".yml")) or Path(f).name == "Makefile" or f.startswith(".ci/")]


# ------------------------------------------------------------------------------ markdown

_FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})")
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")
_HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"", re.IGNORECASE)


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(1-based line number, line) outside fenced code blocks."""
    out, fence = [], None
    for n, line in enumerate(text.split("\n"), start=1):
        m = _FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)[0] * len(m.group(1))
            continue
        if fence is not None:
            if line.strip().startswith(fence) and set(line.strip()) <= set(fence[0]):
                fence = None
            continue
        out.append((n, line))
    return out


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading's text: markup reduced to its text, lower case, every
    character but letters, digits, ``_``, ``-`` and spaces dropped, spaces turned into ``-``."""
    text = _CODE_SPAN.sub(lambda m: m.group(2).strip(), heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # links and images -> their text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.lower()
    text = "".join(c for c in text if c.isalnum() or c in "_- ")
    return text.replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    """Every anchor a Markdown file defines: heading slugs (repeats numbered) and HTML anchors."""
    seen: dict[str, int] = {}
    out: set[str] = set()
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        out.update(_HTML_ANCHOR.findall(line))
        m = _HEADING.match(line)
        if not m:
            continue
        slug = github_slug(m.group(2))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return frozenset(out)


def links(text: str) -> list[tuple[int, str]]:
    """(line, target) of every inline link and image outside code."""
    out = []
    for n, line in prose_lines(text):
        line = _CODE_SPAN.sub("", line)
        out += [(n, m.group(1)) for m in _LINK.finditer(line)]
    return out


def check_target(source: str, target: str) -> str | None:
    """Why a link ``target`` written in repository file ``source`` is broken, or None."""
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith("//"):
        return None  # a URL (https:, mailto:, …): not ours to check offline
    path_part, _, anchor = target.partition("#")
    base = REPO / source
    dest = base if not path_part else (base.parent / unquote(path_part)).resolve()
    try:
        dest.relative_to(REPO)
    except ValueError:
        return f"{target!r} points outside the repository"
    if not dest.exists():
        return f"{target!r}: no such file or folder"
    if anchor and dest.suffix == ".md" and dest.is_file() and anchor not in anchors(dest):
        return f"{target!r}: no heading with anchor #{anchor} in {dest.relative_to(REPO).as_posix()}"
    return None


# ------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("heading, slug", [
    ("Ingest (`eoforge ingest`)", "ingest-eoforge-ingest"),
    ("Which method works on my data? (`make compare`, `eoforge compare`)",
     "which-method-works-on-my-data-make-compare-eoforge-compare"),
    ("Member encoding: measured", "member-encoding-measured"),
    ("PerA — perfectly aligned pairs", "pera--perfectly-aligned-pairs"),
    ("Sentinel-2 DN offset", "sentinel-2-dn-offset"),
    ("`s1_unit` and [links](x.md)", "s1_unit-and-links"),
])
def test_github_slug(heading: str, slug: str) -> None:
    assert github_slug(heading) == slug


def test_repeated_headings_are_numbered(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text("# A\n\n## Notes\n\n```\n# not a heading\n```\n\n## Notes\n")
    assert anchors(doc) == {"a", "notes", "notes-1"}


@pytest.mark.parametrize("md", markdown_files())
def test_markdown_links_resolve(md: str) -> None:
    text = (REPO / md).read_text(encoding="utf-8")
    broken = [f"{md}:{n}: {why}" for n, target in links(text) if (why := check_target(md, target))]
    assert not broken, "broken links:\n" + "\n".join(broken)


_DOC_CITATION = re.compile(
    r"(?<![\w/.-])((?:[\w.-]+/)*(?:" + "|".join(REFERENCE_DOCS) + r")\.md)(#[\w-]+)?")


def test_code_cites_reference_docs_by_repository_path() -> None:
    """``train/METHODS.md#cmid`` in a docstring or recipe: the doc exists at that path from
    the repository root, and the anchor is one of its headings."""
    broken = []
    for f in text_files():
        if f.endswith(".md"):
            continue  # Markdown files link relatively; checked above
        for n, line in enumerate((REPO / f).read_text(encoding="utf-8", errors="replace").split("\n"), start=1):
            for m in _DOC_CITATION.finditer(line):
                doc, anchor = m.group(1), (m.group(2) or "")[1:]
                path = REPO / doc
                if not path.is_file():
                    broken.append(f"{f}:{n}: {m.group(0)!r}: no such doc in the repository (cite it by its path, "
                                  f"e.g. train/METHODS.md)")
                elif anchor and anchor not in anchors(path):
                    broken.append(f"{f}:{n}: {m.group(0)!r}: no heading with anchor #{anchor} in {doc}")
    assert not broken, "\n".join(broken)


def test_nothing_points_at_the_shared_docs_folder() -> None:
    hits = [f"{f}:{n}" for f in text_files()
            for n, line in enumerate((REPO / f).read_text(encoding="utf-8", errors="replace").split("\n"), start=1)
            if SHARED_DOCS in line]
    assert not hits, f"references to {SHARED_DOCS} (not in a user's clone; cite the in-repo doc): {hits}"
