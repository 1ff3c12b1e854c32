"""The READMEs' commands run: every shell block marked `<!-- runnable -->` in README.md and the
four stage READMEs is run with bash, in order, on fresh demo data.

The blocks are written as a user types them in the repository root (`demo/raw`, `demo/ds`,
`demo/run-pera`, recipes under `ingest/`, `train/`, `eval/`). Here they run in a temporary
folder that holds links to the checkout's files and folders but its own, empty `demo/` and
`build/`, so nothing is written into the checkout and nothing left there by `make demo` is
read. `eoforge` and `python` are the ones of the interpreter running the tests.

Blocks run in order (README.md first, then ingest/, shards/, train/, eval/), each with
`bash -euo pipefail`, so a later block may use what an earlier one wrote (the tour's dataset
and run); selecting one block runs the blocks before it first. Blocks are a few seconds each
on the 6 km demo area; the whole file takes about two minutes on 2 cores.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
READMES = ["README.md", "ingest/README.md", "shards/README.md", "train/README.md", "eval/README.md"]
MARKER = "<!-- runnable -->"
FRONT_PAGE_MAX_BYTES = 15 * 1024
BLOCK_TIMEOUT_S = 600
# what a block must not see of the checkout: the demo outputs and build folder of `make demo`
NOT_LINKED = {"demo", "build", ".git", ".pytest_cache"}


@dataclass(frozen=True)
class Block:
    readme: str
    line: int  # 1-based line of the opening fence
    code: str

    @property
    def id(self) -> str:
        return f"{self.readme}:{self.line}"


_FENCE = re.compile(r"^```(\w*)\s*$")


def extract_blocks(readme: str, text: str) -> list[Block]:
    """The shell blocks right after a `<!-- runnable -->` line (blank lines between allowed).
    A marker followed by anything else is an error, so a typo never silently skips a block."""
    lines = text.split("\n")
    blocks = []
    for i, line in enumerate(lines):
        if line.strip() != MARKER:
            continue
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        m = _FENCE.match(lines[j]) if j < len(lines) else None
        if not m or m.group(1) not in ("bash", "sh", "shell", "console"):
            raise ValueError(f"{readme}:{i + 1}: {MARKER} is not followed by a ```bash block")
        end = next((k for k in range(j + 1, len(lines)) if lines[k].strip() == "```"), None)
        if end is None:
            raise ValueError(f"{readme}:{j + 1}: unclosed code block")
        blocks.append(Block(readme, j + 1, "\n".join(lines[j + 1 : end]) + "\n"))
    return blocks


def all_blocks() -> list[Block]:
    out = []
    for readme in READMES:
        path = REPO / readme
        if path.exists():
            out.extend(extract_blocks(readme, path.read_text(encoding="utf-8")))
    return out


BLOCKS = all_blocks()


class Runner:
    """Runs the blocks in order in one work folder, each at most once."""

    def __init__(self, work: Path):
        self.work = work
        self.done = 0
        self.failed: str | None = None
        bindir = os.path.dirname(sys.executable)
        self.env = {
            **os.environ,
            "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
            "MPLBACKEND": "Agg",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        self.env.pop("VIRTUAL_ENV", None)

    def run_through(self, index: int) -> None:
        while self.done <= index:
            if self.failed:
                pytest.fail(f"an earlier block failed: {self.failed}")
            block = BLOCKS[self.done]
            proc = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", block.code],
                cwd=self.work,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=BLOCK_TIMEOUT_S,
            )
            self.done += 1
            if proc.returncode != 0:
                self.failed = block.id
                pytest.fail(
                    f"{block.id}: exit status {proc.returncode}\n--- block\n{block.code}"
                    f"--- stdout (tail)\n{proc.stdout[-3000:]}\n--- stderr (tail)\n{proc.stderr[-3000:]}"
                )


@pytest.fixture(scope="module")
def runner(tmp_path_factory) -> Runner:
    work = tmp_path_factory.mktemp("readme")
    for entry in REPO.iterdir():
        if entry.name not in NOT_LINKED:
            (work / entry.name).symlink_to(entry)
    return Runner(work)


def test_front_page_is_small_and_links_the_stage_readmes():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.encode("utf-8")) <= FRONT_PAGE_MAX_BYTES
    for stage in ("ingest", "shards", "train", "eval"):
        assert (REPO / stage / "README.md").is_file()
        assert f"]({stage}/README.md" in text, f"README.md does not link {stage}/README.md"


def test_every_readme_has_runnable_blocks():
    per_readme = {b.readme for b in BLOCKS}
    assert per_readme == set(READMES), f"READMEs without a runnable block: {set(READMES) - per_readme}"


def test_extract_blocks_rejects_a_stray_marker():
    good = extract_blocks("x.md", f"{MARKER}\n\n```bash\necho hi\n```\n")
    assert [b.code for b in good] == ["echo hi\n"] and good[0].line == 3
    with pytest.raises(ValueError, match="not followed"):
        extract_blocks("x.md", f"{MARKER}\n```python\nprint(1)\n```\n")


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=[b.id for b in BLOCKS])
def test_runnable_block(runner: Runner, index: int):
    runner.run_through(index)
