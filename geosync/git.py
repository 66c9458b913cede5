"""Git helpers shared by both sites: the repository checksum, mirroring and safe deletion.

Everything runs the system ``git`` binary (never a library) so the on-disk format, the protocol and
the transport are exactly what operators get from their distribution's git.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from geosync import child_processes
from geosync.errors import (
    GeoError,
    Interrupted,
    NotFound,
    PrimaryMissing,
    PrimaryUnreachable,
    TransferError,
    ValidationError,
)
from geosync.file_locks import hold_new, temp_name
from geosync.paths import resolve_inside

__all__ = [
    "EMPTY_CHECKSUM",
    "init_bare",
    "mirror_repository",
    "remove_repository",
    "repository_checksum",
    "resolve_inside",
]

EMPTY_CHECKSUM = "0" * 40
"""The checksum of a repository without refs."""

_LOCAL_TIMEOUT = 300.0
"""Seconds a local git command (for-each-ref, init, config) may take before it is killed."""

_CANCEL_POLL = 0.2
"""Seconds between two looks at a transfer's cancel event while git runs."""

_STDERR_LIMIT = 500
"""Characters of git's stderr kept in an error message (the tail, where the fatal line is)."""

_TRANSFER_CONFIG = (
    "-c",
    "protocol.version=2",
    "-c",
    "credential.helper=",  # no helper may store, supply or prompt for credentials
    "-c",
    "http.followRedirects=false",  # extra headers would follow a redirect to any host
)
"""Config for clone and fetch; not secret, so it may be in argv."""

_KEPT_GIT_ENV = (
    "GIT_SSL_",
    "GIT_HTTP_",
    "GIT_PROXY_",
    "GIT_EXEC_PATH",
    "GIT_CONFIG_GLOBAL",
    "GIT_CONFIG_SYSTEM",
    "GIT_CONFIG_NOSYSTEM",
)
"""Operator settings for git's HTTP stack and config files that mirroring keeps."""

_REDACTED = "[REDACTED]"

_AUTH_FAILED = re.compile(
    r"authentication failed|returned error: 40[13]\b|could not read (username|password)"
    r"|terminal prompts disabled",
    re.IGNORECASE,
)
_NOT_FOUND = re.compile(r"returned error: 404\b|\bnot found\b", re.IGNORECASE)
#: What git's HTTP client says when the primary does not answer at all (refused, reset, timed
#: out, nothing sent back) or a proxy in front of it has no upstream (502, 503, 504).
_UNREACHABLE = re.compile(
    r"failed to connect|couldn't connect|connection refused|connection reset|timed out"
    r"|empty reply from server|recv failure|returned error: 50[234]\b",
    re.IGNORECASE,
)
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")


def _git_env(extra_config: Sequence[tuple[str, str]] = ()) -> dict[str, str]:
    """Return a child environment that never prompts and drops risky inherited ``GIT_*`` variables.

    Inherited ``GIT_DIR``, ``GIT_TRACE_CURL`` or ``GIT_CONFIG_PARAMETERS`` would redirect the
    command or print secrets; TLS, proxy and config-file settings are kept. ``extra_config`` goes
    in ``GIT_CONFIG_KEY_<n>``/``GIT_CONFIG_VALUE_<n>`` so secret values never appear in argv.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("GIT_") or key.startswith(_KEPT_GIT_ENV)
    }
    env["GIT_TERMINAL_PROMPT"] = "0"
    env["GIT_ASKPASS"] = shutil.which("true") or "/bin/true"
    env["SSH_ASKPASS"] = env["GIT_ASKPASS"]
    env["LC_ALL"] = "C"  # git's messages in English, so failures can be classified
    if extra_config:
        env["GIT_CONFIG_COUNT"] = str(len(extra_config))
        for index, (key, value) in enumerate(extra_config):
            env[f"GIT_CONFIG_KEY_{index}"] = key
            env[f"GIT_CONFIG_VALUE_{index}"] = value
    return env


def _run(
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = _LOCAL_TIMEOUT,
    input: bytes | None = None,
    what: str = "git",
    limit: float | None = None,
    cancel: threading.Event | None = None,
    holds: Sequence[int] = (),
) -> subprocess.CompletedProcess[bytes]:
    """Run ``git`` with ``args`` in its own process group and kill the whole group on timeout,
    on a set ``cancel`` (a shutdown) or when this process dies (`geosync.child_processes`).

    A plain ``subprocess.run`` kills only git itself; its helpers (``git-remote-http``,
    ``index-pack``) would keep the pipes open and the wait would hang. ``holds`` are descriptors
    git and its helpers inherit (flocks), so a hold lasts while any of them could still write.
    ``what`` and ``limit`` only word the timeout message.
    """
    try:
        process = child_processes.start(
            ["git", *args],
            stdin=subprocess.DEVNULL if input is None else subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env) if env is not None else _git_env(),
            cwd=cwd,
            pass_fds=holds,
        )
    except OSError as exc:
        raise TransferError(f"Cannot run git: {exc}") from exc
    try:
        stdout, stderr = _communicate(process, input, timeout, cancel)
    except subprocess.TimeoutExpired as exc:
        _kill_group(process)
        process.communicate()
        shown = timeout if limit is None else limit
        raise TransferError(f"{what} timed out after {shown:g} s") from exc
    except BaseException:
        _kill_group(process)
        process.communicate()
        raise
    finally:
        child_processes.ended(process)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _communicate(
    process: subprocess.Popen[bytes],
    input: bytes | None,
    timeout: float,
    cancel: threading.Event | None,
) -> tuple[bytes, bytes]:
    """Wait for ``process``, looking at ``cancel`` every `_CANCEL_POLL` s; `Interrupted` when
    it is set."""
    deadline = time.monotonic() + max(timeout, 0.001)
    while True:
        left = deadline - time.monotonic()
        step = left if cancel is None else min(left, _CANCEL_POLL)
        try:
            return process.communicate(input, timeout=max(step, 0.001))
        except subprocess.TimeoutExpired:
            if time.monotonic() >= deadline:
                raise
        if cancel is not None and cancel.is_set():
            raise Interrupted("git interrupted: the worker is shutting down")


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """Kill ``process`` and every helper it started (they share its process group)."""
    child_processes.kill_group(process)


def _git_dir(repo_dir: Path) -> Path:
    """Return the git directory of ``repo_dir``: itself when bare, else its ``.git``."""
    dot_git = repo_dir / ".git"
    return dot_git if dot_git.exists() else repo_dir


def _is_repository(git_dir: Path) -> bool:
    """Tell whether ``git_dir`` is itself a bare repository (never a repository above it)."""
    if not git_dir.is_dir():
        return False
    result = _run(["--git-dir", str(git_dir), "rev-parse", "--git-dir"])
    return result.returncode == 0


def repository_checksum(repo_dir: Path) -> str:
    """Return the repository checksum of §6: the XOR of SHA-1("<object id> <ref name>") over refs.

    Refs only, as ``git for-each-ref`` lists them (no HEAD); no refs gives 40 zeros.
    """
    if not repo_dir.is_dir():
        raise NotFound(f"Repository not found: {repo_dir}")
    result = _run(
        [
            "--git-dir",
            str(_git_dir(repo_dir)),
            "for-each-ref",
            "--format=%(objectname) %(refname)",
        ]
    )
    if result.returncode != 0:
        raise GeoError(f"git for-each-ref failed in {repo_dir}: {_tail(result.stderr)}")
    value = 0
    for line in result.stdout.split(b"\n"):
        if line:
            value ^= int.from_bytes(hashlib.sha1(line, usedforsecurity=False).digest(), "big")
    return f"{value:040x}"


def init_bare(repo_dir: Path) -> None:
    """Create an empty bare repository at ``repo_dir`` (and its parents) for apps, demo and tests.

    Running it on an existing repository is harmless (git re-initialises without losing data).
    """
    repo_dir.parent.mkdir(parents=True, exist_ok=True)
    result = _run(["-c", "init.defaultBranch=main", "init", "--bare", "--quiet", str(repo_dir)])
    if result.returncode != 0:
        raise GeoError(f"git init failed for {repo_dir}: {_tail(result.stderr)}")


def mirror_repository(
    url: str,
    dest: Path,
    *,
    headers: dict[str, str],
    timeout: float,
    cancel: threading.Event | None = None,
    holds: Sequence[int] = (),
) -> None:
    """Make ``dest`` an exact mirror of the repository at ``url`` (all refs, forced, pruned).

    First time: ``git clone --mirror`` into a temp dir renamed into place on success; afterwards
    ``git fetch --prune``. ``headers`` go to git through the environment, never argv or the URL.
    A set ``cancel`` kills git (`Interrupted`); git inherits ``holds`` (the mirror's lock) and
    the temp dir's hold, so neither is free while any git process of this sync lives.
    """
    if not url or url.startswith("-") or any(ch in url for ch in "\r\n\0"):
        raise ValidationError("Invalid repository URL")
    secrets_to_scrub = _check_headers(headers)
    env = _git_env([("http.extraHeader", f"{name}: {value}") for name, value in headers.items()])
    deadline = time.monotonic() + timeout

    if _is_repository(dest):
        _probe(
            "fetch", url, ["--git-dir", str(dest)], None, env, deadline, secrets_to_scrub, timeout
        )
        _fetch(
            url,
            dest,
            env=env,
            deadline=deadline,
            scrub=secrets_to_scrub,
            timeout=timeout,
            cancel=cancel,
            holds=holds,
        )
        return

    dest.parent.mkdir(parents=True, exist_ok=True)
    _probe("clone", url, [], dest.parent, env, deadline, secrets_to_scrub, timeout)
    tmp, held = _temp_dir(dest.parent)
    try:
        result = _run(
            [*_TRANSFER_CONFIG, "clone", "--mirror", "--quiet", "--", url, str(tmp)],
            env=env,
            timeout=_remaining(deadline, timeout),
            what="git clone",
            limit=timeout,
            cancel=cancel,
            holds=(*holds, held),
        )
        if result.returncode != 0:
            raise _transfer_error("clone", result.stderr, secrets_to_scrub)
        _move_into_place(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        os.close(held)

    if not _is_repository(dest):  # someone else's directory won the race and is not a repository
        raise TransferError(f"Cannot put the mirror in place at {dest}")


def _temp_dir(parent: Path) -> tuple[Path, int]:
    """A new empty temp directory in `parent` for a clone, and the descriptor that holds it.

    Held until the descriptor is closed, so the stuck sweep knows a clone in progress from one
    a killed worker left (`geosync.file_locks`).
    """
    while True:
        tmp = temp_name(parent)
        try:
            tmp.mkdir()
            fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY)
        except (FileExistsError, FileNotFoundError):  # a name taken, or swept at once
            continue
        if hold_new(fd, tmp):
            return tmp, fd
        os.close(fd)


def _probe(
    command: str,
    url: str,
    git_dir: Sequence[str],
    cwd: Path | None,
    env: Mapping[str, str],
    deadline: float,
    scrub: Sequence[str],
    timeout: float,
) -> None:
    """Check that ``url`` answers git's smart HTTP protocol v2 before ``command`` touches disk.

    git silently falls back to the dumb HTTP protocol when a server answers ``info/refs`` with any
    200 that is not a smart advertisement (a login page, a misrouted proxy): it then sees zero
    refs, so a clone is "empty" and ``fetch --prune`` deletes every ref of the mirror. The probe
    asks git's own HTTP helper for a v2 connection (one small GET) and refuses anything else.
    """
    scheme = urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        return  # no dumb fallback outside HTTP
    probe_env = dict(env)
    if cwd is not None:  # never read the config of a repository that happens to contain cwd
        probe_env["GIT_CEILING_DIRECTORIES"] = str(cwd.resolve())
    result = _run(
        [*git_dir, *_TRANSFER_CONFIG, f"remote-{scheme}", "origin", url],
        env=probe_env,
        cwd=cwd,
        timeout=_remaining(deadline, timeout),
        input=b"stateless-connect git-upload-pack\n",
        what=f"git {command}",
        limit=timeout,
    )
    if result.stdout.startswith(b"\n000eversion 2\n"):
        return
    if result.returncode != 0 and not result.stdout.startswith(b"fallback"):
        raise _transfer_error(command, result.stderr, scrub)
    raise TransferError(
        "The primary did not answer with git smart HTTP protocol v2; is the URL a Geo repository "
        "endpoint?"
    )


def _fetch(
    url: str,
    dest: Path,
    *,
    env: Mapping[str, str],
    deadline: float,
    scrub: Sequence[str],
    timeout: float,
    cancel: threading.Event | None,
    holds: Sequence[int],
) -> None:
    """Point ``origin`` of the mirror at ``url`` and fetch all refs, forced and pruned."""
    git_dir = ["--git-dir", str(dest)]
    result = _run(
        [*git_dir, "config", "remote.origin.url", url], timeout=_remaining(deadline, timeout)
    )
    if result.returncode != 0:
        raise TransferError(f"Cannot set the remote URL of {dest}: {_tail(result.stderr)}")
    result = _run(
        [
            *git_dir,
            *_TRANSFER_CONFIG,
            "fetch",
            "--quiet",
            "--prune",
            "--force",
            "--no-write-fetch-head",
            "origin",
            "+refs/*:refs/*",
        ],
        env=env,
        timeout=_remaining(deadline, timeout),
        what="git fetch",
        limit=timeout,
        cancel=cancel,
        holds=holds,
    )
    if result.returncode != 0:
        raise _transfer_error("fetch", result.stderr, scrub)


def _move_into_place(tmp: Path, dest: Path) -> None:
    """Rename the finished clone ``tmp`` to ``dest``; a leftover non-repository there is replaced.

    The caller has checked that ``dest`` is not a repository; if another worker renamed a mirror
    into place meanwhile, ours is dropped and theirs is kept.
    """
    try:
        tmp.rename(dest)
        return
    except OSError:
        if not dest.exists() or _is_repository(dest):
            return
    trash = temp_name(dest.parent)  # not held: if the worker dies now, it is rubbish anyway
    dest.rename(trash)
    try:
        tmp.rename(dest)
    finally:
        shutil.rmtree(trash, ignore_errors=True)


def _remaining(deadline: float, timeout: float) -> float:
    """Return the seconds left before ``deadline``; raise `TransferError` if there are none."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TransferError(f"git transfer timed out after {timeout:g} s")
    return left


def _check_headers(headers: Mapping[str, str]) -> list[str]:
    """Reject header names or values that could smuggle more config; return the values to scrub.

    The secret parts of every value (the whole value and each word of it) are scrubbed from
    anything git prints.
    """
    scrub: list[str] = []
    for name, value in headers.items():
        if not _HEADER_NAME.match(name):
            raise ValidationError("Invalid HTTP header name")
        if any(ch in value for ch in "\r\n\0"):
            raise ValidationError(f"Invalid value for HTTP header {name}")
        scrub.append(value)
        for word in re.split(r"[\s:]+", value):
            if len(word) >= 8:
                scrub.append(word)
    return sorted(set(scrub), key=len, reverse=True)


def _scrub(text: str, secret_values: Sequence[str]) -> str:
    """Replace every secret in ``text`` with a marker, longest first."""
    for secret in sorted(secret_values, key=len, reverse=True):
        if secret.strip():
            text = text.replace(secret, _REDACTED)
    return text


def _tail(stderr: bytes, secret_values: Sequence[str] = ()) -> str:
    """Return the last `_STDERR_LIMIT` characters of git's stderr, secrets removed, on one line."""
    text = _scrub(stderr.decode("utf-8", "replace"), secret_values)
    text = " | ".join(line.strip() for line in text.splitlines() if line.strip())
    if len(text) > _STDERR_LIMIT:
        text = "…" + text[-_STDERR_LIMIT:]
    return text or "no error output"


def _transfer_error(command: str, stderr: bytes, secret_values: Sequence[str]) -> TransferError:
    """Map a failed clone or fetch to `PrimaryMissing` (404) or `TransferError` (the rest)."""
    text = stderr.decode("utf-8", "replace")
    detail = _tail(stderr, secret_values)
    if _AUTH_FAILED.search(text):
        return TransferError(f"git {command} failed: authentication failed ({detail})")
    if _NOT_FOUND.search(text):
        return PrimaryMissing(f"The primary does not have this repository ({detail})")
    if _UNREACHABLE.search(text):
        return PrimaryUnreachable(f"git {command} failed: {detail}")
    return TransferError(f"git {command} failed: {detail}")


def remove_repository(root: Path, relative: str) -> bool:
    """Delete the repository directory ``root/relative``; return False if it was not there.

    Idempotent, and refuses (`ValidationError`) any path that is not strictly inside ``root``.
    Empty parent directories up to ``root`` are removed too.
    """
    target = resolve_inside(root, relative)
    link = root.resolve() / PurePosixPath(relative)
    if link.is_symlink():  # the link is the copy; never delete what it points to
        link.unlink()
        _prune_empty_parents(link.parent, root.resolve())
        return True
    if not target.exists():
        return False
    if not target.is_dir():
        raise ValidationError(f"Not a repository directory: {relative!r}")
    shutil.rmtree(target)
    _prune_empty_parents(target.parent, root.resolve())
    return True


def _prune_empty_parents(directory: Path, root: Path) -> None:
    """Remove ``directory`` and its parents while they are empty, stopping before ``root``."""
    while directory != root and directory.is_relative_to(root):
        try:
            directory.rmdir()
        except OSError:
            return
        directory = directory.parent
