"""Real git repositories for tests: a bare repository with commits, a push, its refs.

Installed with geosync so that an application's contract tests can make the repositories its
`create()` hands to `RepositoryReplicatorContract`. Every command runs the system ``git`` with a
fixed identity and no user or system configuration (and no inherited ``GIT_*`` variables), so a
test behaves the same on every machine. None of geosync's own git code is used: the contract
checks geosync's mirroring against plain git.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

__all__ = ["create_bare_repository", "push_commit", "repository_refs"]

_COMMITTER = "geosync-test <test@example.invalid>"
_EPOCH = 1_700_000_000


def _git_env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("GIT_")}
    env.update(
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_TERMINAL_PROMPT="0",
        LC_ALL="C",
    )
    return env


def _git(repo: Path, *args: str, stdin: bytes | None = None, check: bool = True) -> str:
    """Run ``git --git-dir repo args``; its stdout, or `AssertionError` with git's stderr."""
    result = subprocess.run(
        ["git", "--git-dir", str(repo), *args],
        input=stdin,
        capture_output=True,
        env=_git_env(),
        timeout=60,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed in {repo}: {result.stderr.decode()}")
    return result.stdout.decode() if result.returncode == 0 else ""


def create_bare_repository(path: Path, branches: Iterable[str] = ("main",)) -> Path:
    """Create a bare repository at `path` (and its parents) with one commit on each branch.

    `HEAD` points at the first branch. No branches gives an empty repository. Returns `path`.
    """
    names = list(branches)
    path.parent.mkdir(parents=True, exist_ok=True)
    head = names[0] if names else "main"
    result = subprocess.run(
        ["git", "init", "--bare", "--quiet", f"--initial-branch={head}", str(path)],
        capture_output=True,
        env=_git_env(),
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(f"git init failed for {path}: {result.stderr.decode()}")
    for name in names:
        push_commit(path, name)
    return path


def push_commit(
    repo: Path,
    branch: str = "main",
    files: Mapping[str, bytes] | None = None,
    message: str = "a commit made by geosync.testing",
) -> str:
    """Do to the bare repository `repo` what a push does: one new commit on `branch`.

    The commit's parent is the branch's current tip (a new branch starts from no parent), its
    tree that tip's tree plus `files` (path -> content; by default one file that makes every
    commit distinct). Returns the new commit id.
    """
    tip = _git(
        repo, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}^{{commit}}", check=False
    )
    count = int(_git(repo, "rev-list", "--all", "--count") or "0")
    body = message.encode() + b"\n"
    stream = bytearray()
    stream += f"commit refs/heads/{branch}\n".encode()
    stream += f"committer {_COMMITTER} {_EPOCH + count} +0000\n".encode()
    stream += f"data {len(body)}\n".encode() + body
    if tip.strip():
        stream += f"from {tip.strip()}\n".encode()
    content = files if files is not None else {f"{branch}.txt": f"commit {count}\n".encode()}
    for name, data in content.items():
        stream += f"M 100644 inline {name}\ndata {len(data)}\n".encode() + data + b"\n"
    _git(repo, "fast-import", "--quiet", stdin=bytes(stream))
    return _git(repo, "rev-parse", f"refs/heads/{branch}").strip()


def repository_refs(repo: Path) -> list[str]:
    """Every ``"<object id> <ref name>"`` line of `repo`, as geosync's ref checksum reads them."""
    return _git(repo, "for-each-ref", "--format=%(objectname) %(refname)").splitlines()
