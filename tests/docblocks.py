"""The fenced code blocks of a Markdown guide, turned into one script a test runs as written.

Rules a guide follows so that every block it shows is run:
- a block whose first line is a comment naming a relative file (`# myapp/models.py`,
  `# primary.toml`) is that file's content: it is written there, in order;
- a `sh` block is run by bash, in order, all in one shell (variables, `cd` and background jobs
  carry over from block to block), with `set -euo pipefail`;
- a `python` block without a file name is run as a script by the environment's `python3`;
- any other block (`toml`, `text`, `json`, `console`) is shown output or reference and not run.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)
FILE_COMMENT = re.compile(r"^(?:#|//|--)\s*([\w./-]+\.\w+)\s*$")
RUNNABLE = ("sh", "python")


@dataclass(frozen=True)
class Block:
    """One fenced block: its language, its text, where it starts and the file it is, if any."""

    language: str
    text: str
    line: int
    file: str | None

    @property
    def runs(self) -> bool:
        """Whether the guide's reader is meant to run or write this block."""
        return self.file is not None or self.language in RUNNABLE


def blocks(markdown: Path, section: str | None = None) -> list[Block]:
    """The fenced blocks of `markdown` (only those under the `## section` heading if given)."""
    text = markdown.read_text(encoding="utf-8")
    offset = 0
    if section is not None:
        start = re.search(rf"^## {re.escape(section)}\s*$", text, re.MULTILINE)
        if start is None:
            raise LookupError(f"{markdown.name} has no section {section!r}")
        end = re.search(r"^## ", text[start.end() :], re.MULTILINE)
        offset = start.start()
        text = text[start.start() : start.end() + end.start() if end else len(text)]
    found = []
    for match in FENCE.finditer(text):
        body = match.group(2)
        first = body.splitlines()[0] if body else ""
        named = FILE_COMMENT.match(first)
        line = text.count("\n", 0, match.start()) + 1 + _lines_before(markdown, offset)
        found.append(Block(match.group(1), body, line, named.group(1) if named else None))
    return found


def _lines_before(markdown: Path, offset: int) -> int:
    return markdown.read_text(encoding="utf-8").count("\n", 0, offset)


def script(markdown: Path, found: list[Block]) -> str:
    """One bash script doing what the reader of `found` is told to do, in order.

    Before each block it prints `docs-block <file>:<line>` to stderr, so a failure names the
    block that failed.
    """
    parts = ["set -euo pipefail"]
    for block in found:
        if not block.runs:
            continue
        where = shlex.quote(f"docs-block {markdown.name}:{block.line}")
        parts.append(f"echo {where} >&2")
        if block.file is not None:
            parts.append(f'mkdir -p "$(dirname {shlex.quote(block.file)})"')
            parts.append(_heredoc(f"cat > {shlex.quote(block.file)}", block.text))
        elif block.language == "python":
            parts.append(_heredoc("python3 -", block.text))
        else:
            parts.append(block.text)
    return "\n".join(parts) + "\n"


def _heredoc(command: str, body: str) -> str:
    marker = "DOCS_BLOCK_END"
    if marker in body:
        raise ValueError(f"a block contains {marker}")
    return f"{command} <<'{marker}'\n{body}{marker}"


def failed_block(stderr: str) -> str:
    """The block a script's run stopped in, from its `docs-block` markers."""
    markers = [line for line in stderr.splitlines() if line.startswith("docs-block ")]
    return markers[-1].removeprefix("docs-block ") if markers else "(before the first block)"
