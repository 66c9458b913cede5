"""Repository transfer with the real git binary and a real uvicorn server on loopback.

The server's route mimics the primary's authorised repository endpoint: it calls
`git_http_backend` for a bare repository under a temp dir, behind a header check.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from geosync.errors import PrimaryMissing, PrimaryUnreachable, TransferError, ValidationError
from geosync.git import (
    _transfer_error,
    init_bare,
    mirror_repository,
    remove_repository,
    repository_checksum,
    resolve_inside,
)
from geosync.testing.servers import free_port
from geosync.web.git_http import git_http_backend

try:
    from tests import gitutil
except ModuleNotFoundError:  # tests/ is not a package and the project root is not on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests import gitutil

TOKEN = {"X-Test-Token": "ok"}
TIMEOUT = 30.0


@dataclass
class Server:
    """A running test server: where repositories live, its base URL and what it saw."""

    root: Path
    url: str
    seen: list[dict[str, str]] = field(default_factory=list)

    def repo_url(self, name: str) -> str:
        """Return the clone URL of the repository directory ``name`` under ``root``."""
        return f"{self.url}/repos/{name}.git"


async def _hang(request: Request) -> None:
    """Stall like an overloaded primary until the client gives up (at most 5 s)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not await request.is_disconnected():
        await asyncio.sleep(0.05)


def _make_app(server: Server) -> Starlette:
    """Build the test app: a header guard in front of `git_http_backend`, plus misbehaving repos."""

    async def repository(request: Request) -> Response:
        name = request.path_params["name"]
        server.seen.append(
            {"method": request.method, "path": request.url.path, **dict(request.headers)}
        )
        if request.headers.get("x-test-token") != "ok":
            return JSONResponse({"message": "401 Unauthorized"}, status_code=401)
        if name == "slow":
            await _hang(request)
        # "<mode>_<repo>": the advertisement works, the pack request (POST) fails or hangs.
        mode, _, real = name.partition("_")
        if mode in ("brokenpack", "slowpack") and real:
            name = real
            if request.method == "POST" and mode == "brokenpack":
                return PlainTextResponse("boom", status_code=500)
            if request.method == "POST":
                await _hang(request)
        if name == "garbage":
            return PlainTextResponse("this is not git")
        if "/" in name or name.startswith("."):
            return JSONResponse({"message": "bad name"}, status_code=400)
        return await git_http_backend(
            request, server.root / name, "/" + request.path_params["rest"]
        )

    route = Route(
        "/repos/{name}.git/{rest:path}", repository, methods=["GET", "POST", "PUT", "DELETE"]
    )
    return Starlette(routes=[route])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Run uvicorn on a free loopback port in a background thread for the whole module."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    state = Server(root=tmp_path_factory.mktemp("served"), url=f"http://127.0.0.1:{port}")
    config = uvicorn.Config(
        _make_app(state), log_level="warning", lifespan="off", timeout_graceful_shutdown=1
    )
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not uv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    yield state
    uv.should_exit = True
    thread.join(10)
    sock.close()


@pytest.fixture
def origin(server: Server, request: pytest.FixtureRequest) -> Path:
    """A fresh bare origin served by the test server (its dir name has no ``.git`` suffix)."""
    name = "origin_" + hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:10]
    return gitutil.make_bare(server.root / name)


def _mirror(server: Server, origin: Path, dest: Path) -> None:
    """Mirror ``origin`` through the test server into ``dest``."""
    mirror_repository(server.repo_url(origin.name), dest, headers=TOKEN, timeout=TIMEOUT)


def _expected_checksum(repo: Path) -> str:
    """Compute §6's checksum independently, straight from ``git for-each-ref`` output."""
    value = bytes(20)
    for line in gitutil.for_each_ref(repo):
        digest = hashlib.sha1(line.encode()).digest()
        value = bytes(a ^ b for a, b in zip(value, digest, strict=True))
    return value.hex()


def _assert_same(origin: Path, mirror: Path) -> None:
    """Assert the mirror has exactly the origin's refs and the same checksum."""
    assert gitutil.for_each_ref(mirror) == gitutil.for_each_ref(origin)
    assert repository_checksum(mirror) == repository_checksum(origin)
    assert repository_checksum(origin) == _expected_checksum(origin)


def _leftovers(parent: Path) -> list[str]:
    """Return the names of everything under ``parent`` (temp clones must not survive)."""
    return sorted(p.name for p in parent.iterdir()) if parent.exists() else []


# --- checksum -------------------------------------------------------------------------------------


def test_checksum_of_empty_repository_is_zeros(tmp_path: Path) -> None:
    init_bare(tmp_path / "empty")
    assert repository_checksum(tmp_path / "empty") == "0" * 40


def test_checksum_of_one_ref_is_sha1_of_its_line(tmp_path: Path) -> None:
    repo = gitutil.make_bare(tmp_path / "one")
    gitutil.seed_branches(repo, ["main"])
    (line,) = gitutil.for_each_ref(repo)
    assert repository_checksum(repo) == hashlib.sha1(line.encode()).hexdigest()


def test_checksum_matches_independent_computation(tmp_path: Path) -> None:
    repo = gitutil.make_bare(tmp_path / "many")
    gitutil.seed_branches(repo, [f"b{i}" for i in range(25)])
    work = gitutil.make_worktree(repo, tmp_path / "work")
    gitutil.git("checkout", "--quiet", "b3", cwd=work)
    gitutil.git("tag", "-a", "v1", "-m", "annotated", cwd=work)
    gitutil.git("tag", "light", cwd=work)
    gitutil.push(work, "v1", "light")
    checksum = repository_checksum(repo)
    assert len(checksum) == 40 and checksum == checksum.lower()
    assert checksum == _expected_checksum(repo)
    assert len(gitutil.for_each_ref(repo)) == 27


def test_checksum_of_missing_directory_fails(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="not found"):
        repository_checksum(tmp_path / "nope")


# --- mirroring ------------------------------------------------------------------------------------


def test_mirror_follows_every_kind_of_change(server: Server, origin: Path, tmp_path: Path) -> None:
    work = gitutil.make_worktree(origin, tmp_path / "work")
    gitutil.commit_file(work, "README", "one\n")
    gitutil.push(work, "HEAD:refs/heads/main")
    dest = tmp_path / "mirrors" / "a" / "repo.git"

    _mirror(server, origin, dest)  # first time: clone --mirror
    assert gitutil.git("--git-dir", str(dest), "rev-parse", "--is-bare-repository").strip() == (
        "true"
    )
    _assert_same(origin, dest)
    assert _leftovers(dest.parent) == ["repo.git"]

    gitutil.commit_file(work, "README", "two\n")  # new commits
    gitutil.commit_file(work, "src/app.py", "print(1)\n")
    gitutil.push(work, "HEAD:refs/heads/main")
    _mirror(server, origin, dest)
    _assert_same(origin, dest)

    gitutil.git("checkout", "--quiet", "-b", "feature", cwd=work)  # new branch
    gitutil.commit_file(work, "feature.txt", "f\n")
    gitutil.push(work, "feature")
    _mirror(server, origin, dest)
    _assert_same(origin, dest)
    assert any(line.endswith(" refs/heads/feature") for line in gitutil.for_each_ref(dest))

    gitutil.git("push", "--quiet", "origin", "--delete", "feature", cwd=work)  # deleted branch
    _mirror(server, origin, dest)
    _assert_same(origin, dest)
    assert not any(line.endswith(" refs/heads/feature") for line in gitutil.for_each_ref(dest))

    gitutil.git("checkout", "--quiet", "main", cwd=work)  # force-push rewritten history
    before = gitutil.git("rev-parse", "HEAD", cwd=work).strip()
    gitutil.git("reset", "--quiet", "--hard", "HEAD~1", cwd=work)
    gitutil.commit_file(work, "other.txt", "rewritten\n")
    gitutil.push(work, "HEAD:refs/heads/main", force=True)
    _mirror(server, origin, dest)
    _assert_same(origin, dest)
    assert before not in "\n".join(gitutil.for_each_ref(dest))

    gitutil.git("tag", "-a", "v1.0", "-m", "release", cwd=work)  # new tags
    gitutil.git("tag", "lightweight", cwd=work)
    gitutil.push(work, "v1.0", "lightweight")
    gitutil.git("update-ref", "refs/keep-around/x", "HEAD", cwd=work)  # a non-branch, non-tag ref
    gitutil.push(work, "refs/keep-around/x")
    _mirror(server, origin, dest)
    _assert_same(origin, dest)
    assert len(gitutil.for_each_ref(dest)) == 4
    assert _leftovers(dest.parent) == ["repo.git"]


def test_mirror_of_empty_repository(server: Server, origin: Path, tmp_path: Path) -> None:
    dest = tmp_path / "empty.git"
    _mirror(server, origin, dest)
    assert repository_checksum(dest) == "0" * 40
    gitutil.seed_branches(origin, ["main"])
    _mirror(server, origin, dest)
    _assert_same(origin, dest)


def test_changed_url_is_followed(server: Server, origin: Path, tmp_path: Path) -> None:
    gitutil.seed_branches(origin, ["main"])
    other = gitutil.make_bare(server.root / f"{origin.name}_moved")
    gitutil.seed_branches(other, ["elsewhere"])
    dest = tmp_path / "moved.git"
    _mirror(server, origin, dest)
    _mirror(server, other, dest)
    _assert_same(other, dest)
    url = gitutil.git("--git-dir", str(dest), "config", "remote.origin.url").strip()
    assert url == server.repo_url(other.name)


def test_protocol_v2_is_used(server: Server, origin: Path, tmp_path: Path) -> None:
    gitutil.seed_branches(origin, ["main"])
    server.seen.clear()
    _mirror(server, origin, tmp_path / "v2.git")
    protocols = {seen.get("git-protocol") for seen in server.seen}
    assert protocols == {"version=2"}
    # The endpoint passes the header through: git answers with a v2 capability advertisement.
    response = httpx.get(
        f"{server.repo_url(origin.name)}/info/refs",
        params={"service": "git-upload-pack"},
        headers={**TOKEN, "Git-Protocol": "version=2"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-git-upload-pack-advertisement"
    assert b"version 2" in response.content
    v0 = httpx.get(
        f"{server.repo_url(origin.name)}/info/refs",
        params={"service": "git-upload-pack"},
        headers=TOKEN,
    )
    assert b"version 2" not in v0.content and b"refs/heads/main" in v0.content


def test_chunked_and_gzipped_request_bodies(server: Server, origin: Path, tmp_path: Path) -> None:
    # 2,000 distinct wants make a ~100 KB request: git gzips it when it fits its post buffer
    # (1 MiB by default) and sends it chunked when it does not (here: a 64 KiB buffer).
    gitutil.seed_branches(origin, [f"branch-{i:04d}" for i in range(2000)])
    server.seen.clear()
    dest = tmp_path / "big.git"
    _mirror(server, origin, dest)
    _assert_same(origin, dest)
    posts = [seen for seen in server.seen if seen["method"] == "POST"]
    assert any(seen.get("content-encoding") == "gzip" for seen in posts)

    server.seen.clear()
    chunked = tmp_path / "chunked.git"
    gitutil.git(
        "-c",
        "http.extraHeader=X-Test-Token: ok",
        "-c",
        "http.postBuffer=65536",
        "-c",
        "protocol.version=2",
        "clone",
        "--mirror",
        "--quiet",
        server.repo_url(origin.name),
        str(chunked),
    )
    _assert_same(origin, chunked)
    posts = [seen for seen in server.seen if seen["method"] == "POST"]
    assert any(seen.get("transfer-encoding") == "chunked" for seen in posts)


# --- the endpoint refuses what it must ------------------------------------------------------------


def test_push_is_refused(server: Server, origin: Path, tmp_path: Path) -> None:
    work = gitutil.make_worktree(origin, tmp_path / "work")
    gitutil.commit_file(work, "README", "one\n")
    gitutil.push(work, "HEAD:refs/heads/main")
    refs_before = gitutil.for_each_ref(origin)
    gitutil.commit_file(work, "README", "pushed over http\n")
    result = subprocess.run(
        [
            *("git", "-c", "http.extraHeader=X-Test-Token: ok", "push"),
            *(server.repo_url(origin.name), "HEAD:refs/heads/main", "HEAD:refs/heads/new"),
        ],
        cwd=work,
        env={**gitutil.git_env(), "GIT_ASKPASS": "true"},
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert b"403" in result.stderr
    assert gitutil.for_each_ref(origin) == refs_before

    base = server.repo_url(origin.name)
    for response in (
        httpx.get(f"{base}/info/refs", params={"service": "git-receive-pack"}, headers=TOKEN),
        httpx.post(f"{base}/git-receive-pack", content=b"0000", headers=TOKEN),
    ):
        assert response.status_code == 403
        assert response.json() == {"message": "Pushing to a Geo endpoint is not allowed"}
    assert gitutil.for_each_ref(origin) == refs_before


def test_endpoint_serves_upload_pack_only(server: Server, origin: Path) -> None:
    base = server.repo_url(origin.name)
    for path in ("info/refs", "HEAD", "objects/info/packs", "config", "git-upload-archive"):
        response = httpx.get(f"{base}/{path}", headers=TOKEN)
        assert response.status_code == 404, path
        assert "message" in response.json()
    response = httpx.get(f"{base}/git-upload-pack", headers=TOKEN)
    assert response.status_code == 405
    missing = httpx.get(
        f"{server.repo_url('missing')}/info/refs",
        params={"service": "git-upload-pack"},
        headers=TOKEN,
    )
    assert missing.status_code == 404
    assert missing.json() == {"message": "Repository not found"}
    (server.root / "not_a_repo").mkdir(exist_ok=True)
    not_git = httpx.get(
        f"{server.repo_url('not_a_repo')}/info/refs",
        params={"service": "git-upload-pack"},
        headers=TOKEN,
    )
    assert not_git.status_code == 404
    assert not_git.json() == {"message": "Repository not found"}
    wrong_type = httpx.post(
        f"{base}/git-upload-pack",
        content=b"0000",
        headers={**TOKEN, "Content-Type": "text/plain"},
    )
    assert wrong_type.status_code == 415
    assert "application/x-git-upload-pack-request" in wrong_type.json()["message"]


def _backend_processes(root: Path) -> list[int]:
    """Return the ids of live processes whose CGI environment points at ``root``."""
    marker = f"GIT_PROJECT_ROOT={root}\0".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if marker in environ and ") Z " not in stat:
            found.append(int(entry.name))
    return found


def test_client_disconnect_kills_the_backend(server: Server, origin: Path) -> None:
    # A body announced as 1,000 bytes but cut short: git waits for the rest until it is killed.
    gitutil.seed_branches(origin, ["main"])
    request = (
        f"POST /repos/{origin.name}.git/git-upload-pack HTTP/1.1\r\n"
        f"Host: 127.0.0.1\r\nX-Test-Token: ok\r\nGit-Protocol: version=2\r\n"
        "Content-Type: application/x-git-upload-pack-request\r\nContent-Length: 1000\r\n\r\n"
        "0012command=fetch\n"
    ).encode()
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as client:
        client.sendall(request)
        deadline = time.monotonic() + 10
        while not _backend_processes(server.root):
            assert time.monotonic() < deadline, "git http-backend never started"
            time.sleep(0.02)
    deadline = time.monotonic() + 10
    while _backend_processes(server.root):
        assert time.monotonic() < deadline, "git http-backend survived the disconnect"
        time.sleep(0.05)


# --- failures on the secondary's side -------------------------------------------------------------


def test_missing_repository_is_primary_missing(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "mirrors" / "missing.git"
    with pytest.raises(PrimaryMissing):
        mirror_repository(server.repo_url("no-such-repo"), dest, headers=TOKEN, timeout=TIMEOUT)
    assert _leftovers(dest.parent) == []
    (server.root / "empty_dir").mkdir(exist_ok=True)  # a directory that is not a repository
    with pytest.raises(PrimaryMissing):
        mirror_repository(server.repo_url("empty_dir"), dest, headers=TOKEN, timeout=TIMEOUT)
    assert _leftovers(dest.parent) == []


def test_missing_auth_header_fails_cleanly(server: Server, origin: Path, tmp_path: Path) -> None:
    gitutil.seed_branches(origin, ["main"])
    dest = tmp_path / "mirrors" / "noauth.git"
    with pytest.raises(TransferError) as no_header:
        mirror_repository(server.repo_url(origin.name), dest, headers={}, timeout=TIMEOUT)
    secret = "wrong-secret-value-1234"
    with pytest.raises(TransferError) as bad_header:
        mirror_repository(
            server.repo_url(origin.name),
            dest,
            headers={"X-Test-Token": secret},
            timeout=TIMEOUT,
        )
    for caught in (no_header, bad_header):
        assert not isinstance(caught.value, PrimaryMissing)
        assert "authentication failed" in str(caught.value)
        assert secret not in str(caught.value)
    assert not dest.exists()
    assert _leftovers(dest.parent) == []


def test_failed_fetch_keeps_the_mirror(server: Server, origin: Path, tmp_path: Path) -> None:
    gitutil.seed_branches(origin, ["main"])
    dest = tmp_path / "kept.git"
    _mirror(server, origin, dest)
    refs = gitutil.for_each_ref(dest)
    gitutil.seed_branches(origin, ["later"])
    with pytest.raises(TransferError, match="authentication failed"):
        mirror_repository(server.repo_url(origin.name), dest, headers={}, timeout=TIMEOUT)
    assert gitutil.for_each_ref(dest) == refs
    # A 200 that is not git (a login page, a misrouted proxy) would make git fall back to the
    # dumb protocol, see no refs and prune them all: the smart-v2 probe refuses it first.
    with pytest.raises(TransferError, match="smart HTTP protocol v2"):
        mirror_repository(server.repo_url("garbage"), dest, headers=TOKEN, timeout=TIMEOUT)
    assert gitutil.for_each_ref(dest) == refs
    assert repository_checksum(dest) == _expected_checksum(dest)


def test_failed_first_clone_leaves_nothing(server: Server, origin: Path, tmp_path: Path) -> None:
    parent = tmp_path / "mirrors"
    with pytest.raises(TransferError, match="smart HTTP protocol v2"):
        mirror_repository(server.repo_url("garbage"), parent / "g.git", headers=TOKEN, timeout=10)
    assert _leftovers(parent) == []

    started = time.monotonic()
    with pytest.raises(TransferError, match="timed out"):
        mirror_repository(server.repo_url("slow"), parent / "s.git", headers=TOKEN, timeout=0.5)
    assert time.monotonic() - started < 3
    assert _leftovers(parent) == []

    # The clone itself starts (temp dir created) and then fails, or hangs and is killed.
    gitutil.seed_branches(origin, ["main"])
    with pytest.raises(TransferError) as caught:
        mirror_repository(
            server.repo_url(f"brokenpack_{origin.name}"),
            parent / "b.git",
            headers=TOKEN,
            timeout=10,
        )
    assert not isinstance(caught.value, PrimaryMissing)
    assert _leftovers(parent) == []
    started = time.monotonic()
    with pytest.raises(TransferError, match="timed out"):
        mirror_repository(
            server.repo_url(f"slowpack_{origin.name}"), parent / "t.git", headers=TOKEN, timeout=1
        )
    assert time.monotonic() - started < 4
    assert _leftovers(parent) == []


def test_header_values_are_scrubbed_from_errors() -> None:
    token = "GL-Geo abcdefghij:eyJhbGciOiJIUzI1NiJ9.payload.signature"
    stderr = f"fatal: unable to access: header {token} and the jwt {token.split(':')[1]}\n"
    error = _transfer_error("fetch", stderr.encode(), [token, token.split(":")[1], "abcdefghij"])
    assert "eyJ" not in str(error) and "abcdefghij" not in str(error)
    assert "[REDACTED]" in str(error)


def test_a_primary_that_does_not_answer_is_unreachable_not_the_repositorys_fault(
    tmp_path: Path,
) -> None:
    with pytest.raises(PrimaryUnreachable, match="git clone failed"):
        url = f"http://127.0.0.1:{free_port()}/x.git"
        mirror_repository(url, tmp_path / "d", headers={}, timeout=10)
    gateway = b"fatal: unable to access 'http://h/x.git/': The requested URL returned error: 503"
    assert isinstance(_transfer_error("fetch", gateway, []), PrimaryUnreachable)
    broken = b"fatal: unable to access 'http://h/x.git/': The requested URL returned error: 500"
    assert not isinstance(_transfer_error("fetch", broken, []), PrimaryUnreachable)


def test_mirror_rejects_injection(tmp_path: Path) -> None:
    for headers in ({"X-A": "ok\nX-B: evil"}, {"Bad Name": "v"}):
        with pytest.raises(ValidationError):
            mirror_repository(
                "http://127.0.0.1:1/x.git", tmp_path / "d", headers=headers, timeout=1
            )
    with pytest.raises(ValidationError):
        mirror_repository("--upload-pack=evil", tmp_path / "d", headers={}, timeout=1)
    assert not (tmp_path / "d").exists()


# --- deletion -------------------------------------------------------------------------------------


def test_remove_repository(tmp_path: Path) -> None:
    root = tmp_path / "root"
    repo = root / "@hashed" / "ab" / "cd" / "x.git"
    init_bare(repo)
    (root / "@hashed" / "ab" / "keep").mkdir()
    assert remove_repository(root, "@hashed/ab/cd/x.git") is True
    assert not repo.exists() and not repo.parent.exists()
    assert (root / "@hashed" / "ab" / "keep").is_dir()
    assert remove_repository(root, "@hashed/ab/cd/x.git") is False


def test_remove_repository_refuses_escapes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "x"
    outside.mkdir()
    (root / "link").symlink_to(outside)
    for relative in ("../x", str(outside), "/etc", "", ".", "a/../../x", "link/sub"):
        with pytest.raises(ValidationError):
            remove_repository(root, relative)
    with pytest.raises(ValidationError):
        resolve_inside(root, "link")
    assert outside.is_dir()
    assert resolve_inside(root, "a/b.git") == root.resolve() / "a" / "b.git"


def test_no_backend_processes_left(server: Server) -> None:
    assert _backend_processes(server.root) == []
    assert os.path.isdir(server.root)
