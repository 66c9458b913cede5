"""Helpers for tests that need real git repositories, commits, branches and tags.

Every command runs the system ``git`` with a fixed identity and no user or system config, so tests
behave the same on every machine.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable
from pathlib import Path

IDENTITY = ("-c", "user.name=t", "-c", "user.email=t@example.invalid")


def git_env() -> dict[str, str]:
    """Return an environment without inherited ``GIT_*`` variables and without user config."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("GIT_")}
    env.update(
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_TERMINAL_PROMPT="0",
        GIT_AUTHOR_DATE="2024-01-01T00:00:00Z",
        GIT_COMMITTER_DATE="2024-01-01T00:00:00Z",
    )
    return env


def git(*args: str, cwd: Path | None = None, input: bytes | None = None) -> str:
    """Run ``git`` with the test identity; return stdout, raise with stderr if it fails."""
    result = subprocess.run(
        ["git", *IDENTITY, "-c", "init.defaultBranch=main", *args],
        cwd=cwd,
        input=input,
        capture_output=True,
        env=git_env(),
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(
            f"git {' '.join(args)} failed ({result.returncode}): {result.stderr.decode()}"
        )
    return result.stdout.decode()


def make_bare(path: Path) -> Path:
    """Create an empty bare repository at ``path`` and return it."""
    git("init", "--bare", "--quiet", str(path))
    return path


def make_worktree(origin: Path, path: Path) -> Path:
    """Clone ``origin`` (a local bare repository) into a work tree at ``path`` and return it."""
    git("clone", "--quiet", str(origin), str(path))
    return path


def commit_file(worktree: Path, name: str, content: str, message: str | None = None) -> str:
    """Write ``content`` to ``name`` in ``worktree``, commit it and return the commit id."""
    target = worktree / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(content)
    git("add", name, cwd=worktree)
    git("commit", "--quiet", "-m", message or f"update {name}", cwd=worktree)
    return git("rev-parse", "HEAD", cwd=worktree).strip()


def push(worktree: Path, *refspecs: str, force: bool = False) -> None:
    """Push ``refspecs`` (default: the current branch) from ``worktree`` to its origin."""
    args = ["push", "--quiet"]
    if force:
        args.append("--force")
    git(*args, "origin", *(refspecs or ("HEAD",)), cwd=worktree)


def for_each_ref(repo: Path) -> list[str]:
    """Return the ``<object id> <ref name>`` lines of ``repo``, as the checksum reads them."""
    out = git("--git-dir", str(repo), "for-each-ref", "--format=%(objectname) %(refname)")
    return out.splitlines()


def seed_branches(repo: Path, names: Iterable[str]) -> None:
    """Create one distinct root commit per branch name in bare ``repo``, fast, with fast-import."""
    stream = bytearray()
    for index, name in enumerate(names):
        message = f"commit {index}\n".encode()
        stream += f"commit refs/heads/{name}\n".encode()
        stream += f"committer t <t@example.invalid> {1_700_000_000 + index} +0000\n".encode()
        stream += f"data {len(message)}\n".encode() + message + b"\n"
    git("--git-dir", str(repo), "fast-import", "--quiet", input=bytes(stream))
