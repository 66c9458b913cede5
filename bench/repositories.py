"""Benchmark: a secondary's first sync of repositories, beside plain `git clone --mirror`.

Creates a primary with Snippet repositories (one large: ~2,000 commits over ~500 files; 50
small), serves it with `geosync serve` in its own process, and times the secondary's scheduler +
sync service (threads of this process) mirroring them — claims, the node token, the protocol
probe, the clone into a temp dir, the rename, the registry rows — against plain
`git clone --mirror` of the same repositories from the same `git http-backend` (the same CGI
bridge under uvicorn, in its own process, without geosync's routing, authentication or
bookkeeping), with the same number of clones at once. Rounds alternate; medians are compared.

    .venv/bin/python bench/repositories.py                         # the issue's sizes, SQLite
    .venv/bin/python bench/repositories.py --large-commits 500 --small-count 10 --rounds 1
    .venv/bin/python bench/repositories.py --backend postgres

Targets (issue 5): within 1.3x of plain git for the large repository, within 2x for the 50
small ones. The primary's verification does not run, so syncs end without a checksum to compare.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from geosync.demo.models import Snippet
from geosync.demo.replicators import PackageFileReplicator, SnippetReplicator, UploadReplicator
from geosync.git import init_bare
from geosync.log import configure
from geosync.nodes import NodeStore
from geosync.registry import Registry
from geosync.states import SyncState
from geosync.testing import DatabaseFactory, SitePair, build_site_pair
from geosync.testing.processes import site_processes
from geosync.testing.servers import free_port
from geosync.testing.workers import secondary_worker, wait_for
from geosync.web.git_http import git_http_backend

POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
TARGETS = {"large": 1.3, "small": 2.0}


@dataclass(frozen=True)
class Scenario:
    """A set of repositories synced together."""

    name: str
    ids: list[int]
    disk_paths: list[str]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Sizes default to the issue's: 2,000 commits over 500 files, and 50 small repositories."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--large-commits", type=int, default=2000)
    parser.add_argument("--large-files", type=int, default=500)
    parser.add_argument("--small-count", type=int, default=50)
    parser.add_argument("--small-commits", type=int, default=5)
    parser.add_argument("--small-files", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="Timed rounds per contender.")
    parser.add_argument(
        "--concurrency", type=int, default=25, help="repos_max_capacity, and plain clones at once."
    )
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--postgres-url", default=POSTGRES_URL)
    parser.add_argument("--keep", action="store_true", help="Keep the scratch directory.")
    parser.add_argument("--serve-plain", nargs=2, metavar=("ROOT", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("large_commits", "large_files", "small_count", "small_commits", "small_files"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.rounds < 1 or args.concurrency < 1:
        parser.error("--rounds and --concurrency must be at least 1")
    return args


# -- content --------------------------------------------------------------------------------------


def history(commits: int, files: int, rng: random.Random) -> bytes:
    """A `git fast-import` stream: the first commit adds `files` files, later ones edit three."""
    stream = bytearray()
    contents = [_text(rng, 40) for _ in range(files)]
    for n in range(commits):
        message = f"commit {n}\n".encode()
        stream += b"commit refs/heads/main\n"
        stream += f"committer bench <bench@example.invalid> {1_700_000_000 + n} +0000\n".encode()
        stream += f"data {len(message)}\n".encode() + message
        touched = range(files) if n == 0 else rng.sample(range(files), min(3, files))
        for index in touched:
            if n:
                lines = contents[index].splitlines(keepends=True)
                lines[rng.randrange(len(lines))] = _text(rng, 1)
                contents[index] = "".join(lines)
            data = contents[index].encode()
            path = f"src/{index % 20:02d}/file-{index}.txt"
            stream += f"M 100644 inline {path}\ndata {len(data)}\n".encode() + data
    return bytes(stream)


def _text(rng: random.Random, lines: int) -> str:
    words = ("geo", "sync", "mirror", "ref", "pack", "object", "tree", "blob", "commit", "tag")
    return "".join(
        " ".join(rng.choice(words) for _ in range(8)) + f" {rng.getrandbits(32):08x}\n"
        for _ in range(lines)
    )


def create_repositories(
    sites: SitePair, name: str, count: int, commits: int, files: int, rng: random.Random
) -> Scenario:
    """`count` Snippet rows (publishing `created`), each with a bare repository of real commits."""
    root = sites.primary.settings.repository_storage_root
    assert root is not None
    with sites.primary.session() as session:
        snippets = [Snippet(title=name, namespace_id=1) for _ in range(count)]
        session.add_all(snippets)
        session.flush()
        for snippet in snippets:
            repo = root / snippet.disk_path
            init_bare(repo)
            subprocess.run(
                ["git", "--git-dir", str(repo), "fast-import", "--quiet"],
                input=history(commits, files, rng),
                check=True,
                capture_output=True,
            )
        session.commit()
        return Scenario(name, [s.id for s in snippets], [s.disk_path for s in snippets])


def pack_size(root: Path, scenario: Scenario) -> int:
    """Bytes of the scenario's repositories on the primary (objects and packs)."""
    return sum(
        path.stat().st_size
        for disk_path in scenario.disk_paths
        for path in (root / disk_path / "objects").rglob("*")
        if path.is_file()
    )


# -- plain git ------------------------------------------------------------------------------------


def plain_app(root: Path) -> Starlette:
    """The same `git http-backend` bridge, serving `/repos/<disk path>/…` with no geosync."""

    async def repository(request: Request) -> Response:
        name = request.path_params["name"]
        head, found, rest = name.partition(".git/")
        if not found or ".." in head.split("/"):
            return JSONResponse({"message": "404 Not Found"}, status_code=404)
        return await git_http_backend(request, root / (head + ".git"), "/" + rest)

    return Starlette(routes=[Route("/repos/{name:path}", repository, methods=["GET", "POST"])])


@contextmanager
def plain_server(root: Path) -> Iterator[str]:
    """This script's `--serve-plain` mode as a child process; yields its base URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve-plain", str(root), str(port)],
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: _listening(url), timeout=30, what="the plain git server")
        yield url
    finally:
        server.terminate()
        server.wait(30)


def _listening(url: str) -> bool:
    import httpx

    try:
        httpx.get(url + "repos/none", timeout=1)
    except httpx.TransportError:
        return False
    return True


def serve_plain(root: Path, port: int) -> None:
    """Serve `plain_app(root)` on 127.0.0.1:`port` until terminated."""
    import uvicorn

    uvicorn.run(plain_app(root), host="127.0.0.1", port=port, log_level="warning")


def plain_clones(url: str, scenario: Scenario, dest: Path, concurrency: int) -> float:
    """Seconds for `git clone --mirror` of every repository, `concurrency` at a time."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_TERMINAL_PROMPT="0", GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=os.devnull)

    def clone(disk_path: str) -> None:
        target = dest / disk_path
        subprocess.run(
            ["git", "clone", "--mirror", "--quiet", f"{url}repos/{disk_path}", str(target)],
            env=env,
            check=True,
            capture_output=True,
        )

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(clone, scenario.disk_paths))
    return time.perf_counter() - start


# -- geosync --------------------------------------------------------------------------------------


def synced_count(sites: SitePair, ids: Sequence[int]) -> int:
    """How many of `ids` are synced on the secondary."""
    registry = Registry(sites.secondary, SnippetReplicator)
    with sites.secondary.tracking_engine.connect() as conn:
        states = conn.execute(
            select(registry.table.c.state).where(registry.key.in_(list(ids)))
        ).scalars()
        return sum(1 for state in states if state == SyncState.SYNCED)


def geosync_sync(sites: SitePair, scenario: Scenario, notify: Callable[[], None]) -> float:
    """Seconds for the running secondary to mirror the scenario again from scratch: mirrors
    removed, rows made pending (as a first sync finds them), the scheduler woken.
    """
    root = sites.secondary.settings.repository_storage_root
    assert root is not None
    for disk_path in scenario.disk_paths:
        shutil.rmtree(root / disk_path, ignore_errors=True)
    registry = Registry(sites.secondary, SnippetReplicator)
    start = time.perf_counter()
    with sites.secondary.tracking() as conn:
        for model_id in scenario.ids:
            registry.resync(conn, model_id)
    notify()
    wait_for(
        lambda: synced_count(sites, scenario.ids) == len(scenario.ids),
        timeout=3600,
        what=f"{scenario.name} synced",
        interval=0.02,
    )
    return time.perf_counter() - start


@contextmanager
def running_secondary(sites: SitePair) -> Iterator[Callable[[], None]]:
    """The secondary's sync loops; yields the function that wakes them."""
    with secondary_worker(sites) as worker:
        yield worker.notify


def check_mirrors(sites: SitePair, scenario: Scenario) -> None:
    """A benchmark that mirrored nothing proves nothing: every mirror must have all refs."""
    primary = sites.primary.settings.repository_storage_root
    secondary = sites.secondary.settings.repository_storage_root
    assert primary is not None and secondary is not None
    for disk_path in scenario.disk_paths:
        refs = [
            subprocess.run(
                ["git", "--git-dir", str(root / disk_path), "for-each-ref"],
                capture_output=True,
                check=True,
            ).stdout
            for root in (primary, secondary)
        ]
        if not refs[0] or refs[0] != refs[1]:
            raise SystemExit(f"mirror of {disk_path} differs from the primary")


# -- the run --------------------------------------------------------------------------------------


def compare(
    sites: SitePair,
    scenario: Scenario,
    plain_url: str,
    scratch: Path,
    args: argparse.Namespace,
    notify: Callable[[], None],
) -> tuple[list[float], list[float]]:
    """Alternating rounds of plain git and geosync; returns the seconds of each round."""
    plain_dest = scratch / "plain" / scenario.name
    plain_clones(plain_url, scenario, plain_dest, args.concurrency)  # warm the page cache
    plain: list[float] = []
    geo: list[float] = []
    for _ in range(args.rounds):
        plain.append(plain_clones(plain_url, scenario, plain_dest, args.concurrency))
        geo.append(geosync_sync(sites, scenario, notify))
    check_mirrors(sites, scenario)
    return plain, geo


def report(title: str, size: int, plain: list[float], geo: list[float], target: float) -> bool:
    """One block of the report (medians, and the best rounds); the target is judged on the
    medians. Returns whether it was met.
    """
    ratio = statistics.median(geo) / statistics.median(plain)
    met = ratio <= target
    print(title + f" ({size / 1e6:.1f} MB on disk)")
    for label, runs in (("plain git clone --mirror", plain), ("geosync first sync", geo)):
        print(
            f"  {label:<26}{statistics.median(runs):8.3f} s median {min(runs):8.3f} s best"
            f"   {statistics.median(runs) / statistics.median(plain):5.2f}x plain"
            f" ({min(runs) / min(plain):.2f}x best)"
        )
    print(f"  [{'met' if met else 'MISSED'}] within {target}x of plain git")
    return met


def main(argv: Sequence[str] | None = None) -> None:
    """Build the sites and repositories, run both scenarios, print the numbers."""
    args = parse_args(argv)
    if args.serve_plain:
        serve_plain(Path(args.serve_plain[0]), int(args.serve_plain[1]))
        return
    configure("console", "error")
    scratch = Path(tempfile.mkdtemp(prefix="geosync-bench-repos-"))
    databases = DatabaseFactory(args.backend, scratch / "db", args.postgres_url)
    replicators = [UploadReplicator, PackageFileReplicator, SnippetReplicator]
    sites = build_site_pair(
        scratch / "sites", replicators, databases, poll_interval=0.05, backoff_scale=0.01
    )
    primary, _secondary = site_processes(sites, scratch, "geosync.demo.replicators")
    rng = random.Random(5)
    try:
        with sites.primary.main() as conn:
            NodeStore(sites.primary, conn).update(
                sites.secondary_node.id, repos_max_capacity=args.concurrency
            )
        started = time.perf_counter()
        large = create_repositories(sites, "large", 1, args.large_commits, args.large_files, rng)
        small = create_repositories(
            sites, "small", args.small_count, args.small_commits, args.small_files, rng
        )
        root = sites.primary.settings.repository_storage_root
        assert root is not None
        print(
            f"repository sync benchmark: {args.backend}, {os.cpu_count()} CPUs,"
            f" {args.concurrency} at once, median of {args.rounds}"
            f" (repositories made in {time.perf_counter() - started:.1f} s)"
        )
        everything = Scenario("all", large.ids + small.ids, large.disk_paths + small.disk_paths)
        primary.start("serve")
        with plain_server(root) as plain_url, running_secondary(sites) as notify:
            # The first sync of everything, driven by the `created` events (untimed warm-up).
            wait_for(
                lambda: synced_count(sites, everything.ids) == len(everything.ids),
                timeout=3600,
                what="initial sync",
            )
            results = [
                report(
                    f"large: 1 repository, {args.large_commits} commits over"
                    f" {args.large_files} files",
                    pack_size(root, large),
                    *compare(sites, large, plain_url, scratch, args, notify),
                    TARGETS["large"],
                ),
                report(
                    f"small: {args.small_count} repositories, {args.small_commits} commits each",
                    pack_size(root, small),
                    *compare(sites, small, plain_url, scratch, args, notify),
                    TARGETS["small"],
                ),
            ]
        print("targets: " + ("all met" if all(results) else "MISSED"))
    finally:
        primary.stop_all()
        sites.dispose()
        databases.cleanup()
        if args.keep:
            print(f"scratch directory kept: {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
