"""Repository replication in one process: the primary's web server, both sites' worker loops,
real bare repositories with real commits, pushed to with the real `git`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from structlog.testing import capture_logs

from geosync.auth import REPOSITORY_TOKEN_TTL, node_header, request_data, sign_request
from geosync.demo.models import Snippet
from geosync.demo.replicators import SnippetReplicator
from geosync.git import repository_checksum
from geosync.registry import Registry, RegistryRow
from geosync.reverification import reverify_one
from geosync.states import SyncState, VerificationState
from geosync.testing import SitePair
from geosync.testing.servers import HeldResponses
from geosync.testing.workers import primary_worker, secondary_worker, wait_for
from geosync.verification import primary_verifiable
from geosync.wire import repository_base_path
from tests import gitutil


@dataclass
class Repo:
    """A snippet on the primary: its id, its bare repository and a work tree pushing to it."""

    id: int
    disk_path: str
    primary: Path
    worktree: Path

    def mirror(self, sites: SitePair) -> Path:
        """Where the secondary keeps its mirror."""
        root = sites.secondary.settings.repository_storage_root
        assert root is not None
        return root / self.disk_path


def create_snippet(
    sites: SitePair, scratch: Path, *, commits: int = 2, with_repository: bool = True
) -> Repo:
    """A Snippet row (publishing `created`) whose bare repository holds `commits` real commits,
    written in the same transaction so the secondary never sees the row without them.
    """
    root = sites.primary.settings.repository_storage_root
    assert root is not None
    with sites.primary.session() as session:
        snippet = Snippet(title="snippet", namespace_id=1)
        session.add(snippet)
        session.flush()
        repo = Repo(snippet.id, snippet.disk_path, root / snippet.disk_path, scratch / "none")
        if with_repository:
            gitutil.make_bare(repo.primary)
            repo.worktree = gitutil.make_worktree(repo.primary, scratch / f"work-{snippet.id}")
            for n in range(commits):
                gitutil.commit_file(repo.worktree, f"file-{n}.txt", f"content {n}\n")
            if commits:
                gitutil.push(repo.worktree, "HEAD:refs/heads/main")
        session.commit()
    return repo


def publish_update(sites: SitePair, snippet_id: int) -> None:
    """What the application does after a push: `handle_after_update()` publishes `updated`."""
    with sites.primary.session() as session:
        snippet = session.get(Snippet, snippet_id)
        assert snippet is not None
        snippet.replicator.handle_after_update()
        session.commit()


def registry_row(sites: SitePair, snippet_id: int) -> RegistryRow | None:
    """The secondary's registry row of one snippet."""
    with sites.secondary.tracking_engine.connect() as conn:
        return Registry(sites.secondary, SnippetReplicator).get(conn, snippet_id)


def events_read(sites: SitePair) -> Callable[[], bool]:
    """Whether the secondary's log cursor has read every event the primary holds now."""
    from sqlalchemy import func, select

    from geosync.db.tables import geo_events
    from geosync.secondary.log_cursor import LogCursor

    with sites.primary.main() as conn:
        newest = conn.execute(select(func.max(geo_events.c.id))).scalar_one()

    def passed() -> bool:
        with sites.secondary.tracking_engine.connect() as conn:
            position = LogCursor(sites.secondary).position(conn)
        return position is not None and position >= newest

    return passed


def expected_checksum(repo: Path) -> str:
    """§6's checksum computed independently from `git for-each-ref` output."""
    value = 0
    for line in gitutil.for_each_ref(repo):
        value ^= int.from_bytes(hashlib.sha1(line.encode()).digest(), "big")
    return f"{value:040x}"


def primary_checksum(sites: SitePair, snippet_id: int) -> str | None:
    """The primary's stored checksum, once its verification succeeded."""
    with sites.primary.main_engine.connect() as conn:
        state = primary_verifiable(sites.primary, SnippetReplicator).get(conn, snippet_id)
    if state is None or state["verification_state"] != VerificationState.SUCCEEDED:
        return None
    return str(state["verification_checksum"])


def mirrored(sites: SitePair, repo: Repo) -> Callable[[], bool]:
    """The mirror has exactly the primary's refs and its registry row is synced."""

    def check() -> bool:
        mirror = repo.mirror(sites)
        if not (mirror / "HEAD").is_file():
            return False
        row = registry_row(sites, repo.id)
        same = gitutil.for_each_ref(mirror) == gitutil.for_each_ref(repo.primary)
        return same and row is not None and row.state == SyncState.SYNCED

    return check


def verified(sites: SitePair, repo: Repo) -> Callable[[], bool]:
    """Synced and verified, with the checksum the primary's refs give."""

    def check() -> bool:
        expected = expected_checksum(repo.primary)
        row = registry_row(sites, repo.id)
        return (
            mirrored(sites, repo)()
            and row is not None
            and row.verification_state == VerificationState.SUCCEEDED
            and row.verification_checksum == expected
            and primary_checksum(sites, repo.id) == expected
        )

    return check


def test_mirror_follows_commits_branches_deletes_force_pushes_and_tags(
    live_sites: SitePair, tmp_path: Path
) -> None:
    sites = live_sites
    repo = create_snippet(sites, tmp_path, commits=3)
    with sites.primary_served(), primary_worker(sites), secondary_worker(sites, verification=True):
        wait_for(mirrored(sites, repo), what="first clone")
        work = repo.worktree

        def change(what: str, *commands: tuple[str, ...]) -> None:
            before = gitutil.for_each_ref(repo.mirror(sites))
            for command in commands:
                gitutil.git(*command, cwd=work)
            assert gitutil.for_each_ref(repo.primary) != before, what
            publish_update(sites, repo.id)
            wait_for(mirrored(sites, repo), what=what)

        gitutil.commit_file(work, "file-0.txt", "changed\n")
        gitutil.commit_file(work, "new.txt", "new\n")
        change("new commits", ("push", "--quiet", "origin", "HEAD:refs/heads/main"))
        gitutil.git("checkout", "--quiet", "-b", "feature", cwd=work)
        gitutil.commit_file(work, "feature.txt", "feature\n")
        change("new branch", ("push", "--quiet", "origin", "feature"))
        change("deleted branch", ("push", "--quiet", "origin", "--delete", "feature"))
        gitutil.git("checkout", "--quiet", "main", cwd=work)
        gitutil.git("reset", "--quiet", "--hard", "HEAD~2", cwd=work)
        gitutil.commit_file(work, "rewritten.txt", "history rewritten\n")
        change("force-push", ("push", "--quiet", "--force", "origin", "HEAD:refs/heads/main"))
        gitutil.git("tag", "-a", "v1.0", "-m", "release", cwd=work)
        change("new tag", ("push", "--quiet", "origin", "v1.0"))

        refs = gitutil.for_each_ref(repo.mirror(sites))
        assert [line.split()[1] for line in refs] == ["refs/heads/main", "refs/tags/v1.0"]
        wait_for(verified(sites, repo), what="both sides verified with the expected checksum")
    expected = expected_checksum(repo.primary)
    assert repository_checksum(repo.mirror(sites)) == expected
    assert repository_checksum(repo.primary) == expected
    assert expected != "0" * 40


def test_corrupted_mirror_is_detected_and_repaired(live_sites: SitePair, tmp_path: Path) -> None:
    sites = live_sites
    repo = create_snippet(sites, tmp_path, commits=3)
    with sites.primary_served(), primary_worker(sites), secondary_worker(sites, verification=True):
        wait_for(verified(sites, repo), what="verified mirror")
        mirror = repo.mirror(sites)
        gitutil.git("--git-dir", str(mirror), "update-ref", "refs/heads/main", "main~2")
        assert gitutil.for_each_ref(mirror) != gitutil.for_each_ref(repo.primary)

        # The primary re-checksums (as its periodic re-verification does) and publishes
        # `checksum_succeeded`; the secondary then re-verifies its copy against it.
        reverify_one(sites.primary, SnippetReplicator, repo.id)

        def mismatch_seen() -> bool:
            from geosync.attempts import recent_attempts

            with sites.secondary.tracking_engine.connect() as conn:
                attempts = recent_attempts(conn, "snippet", repo.id)
            return any(a.error_class == "checksum_mismatch" for a in attempts)

        wait_for(mismatch_seen, what="the mismatch detected by verification")
        wait_for(verified(sites, repo), what="repaired and verified again")
    row = registry_row(sites, repo.id)
    assert row is not None and row.checksum_mismatch is False
    assert gitutil.for_each_ref(mirror) == gitutil.for_each_ref(repo.primary)


def test_repository_deleted_on_primary_is_removed_on_secondary(
    live_sites: SitePair, tmp_path: Path
) -> None:
    sites = live_sites
    doomed = create_snippet(sites, tmp_path)
    kept = create_snippet(sites, tmp_path)
    with sites.primary_served(), secondary_worker(sites):
        wait_for(lambda: mirrored(sites, doomed)() and mirrored(sites, kept)(), what="mirrors")
        with sites.primary.session() as session:
            session.delete(session.get(Snippet, doomed.id))
            session.commit()
        shutil.rmtree(doomed.primary)  # the application removes its repository
        wait_for(lambda: registry_row(sites, doomed.id) is None, what="registry row removed")
    assert not doomed.mirror(sites).exists()
    assert mirrored(sites, kept)()


def test_deleted_events_never_remove_anything_outside_the_mirror(
    live_sites: SitePair, tmp_path: Path
) -> None:
    from sqlalchemy import insert

    from geosync.db.tables import geo_events

    sites = live_sites
    kept = create_snippet(sites, tmp_path)
    precious = tmp_path / "precious"
    (precious / "objects").mkdir(parents=True)
    (precious / "HEAD").write_text("ref: refs/heads/main\n")
    parent = kept.mirror(sites).parent
    parent.mkdir(parents=True)
    (parent / "inside-link.git").symlink_to(kept.mirror(sites), target_is_directory=True)
    (parent / "outside-link.git").symlink_to(precious, target_is_directory=True)
    unsafe = ["../../../precious", str(precious), "snippets/000/outside-link.git", "snippets"]
    with sites.primary_served(), secondary_worker(sites):
        wait_for(mirrored(sites, kept), what="mirror")
        with sites.primary.main() as conn:
            for n, path in enumerate([*unsafe, "snippets/000/inside-link.git"]):
                payload = {"model_record_id": 9000 + n, "repository_path": path}
                conn.execute(
                    insert(geo_events).values(
                        replicable_name="snippet",
                        event_name="deleted",
                        payload=payload,
                        created_at=sites.primary.clock.now(),
                    )
                )
        wait_for(events_read(sites), what="the crafted events read")
        assert mirrored(sites, kept)()
    assert (precious / "HEAD").is_file()
    assert (parent / "outside-link.git").is_symlink()
    assert not os.path.lexists(parent / "inside-link.git")


def test_repository_missing_on_primary_is_synced_as_missing(
    live_sites: SitePair, tmp_path: Path
) -> None:
    sites = live_sites
    repo = create_snippet(sites, tmp_path, with_repository=False)
    with sites.primary_served(), secondary_worker(sites):

        def synced() -> bool:
            row = registry_row(sites, repo.id)
            return row is not None and row.state == SyncState.SYNCED

        wait_for(synced, what="row synced")
    row = registry_row(sites, repo.id)
    assert row is not None
    assert row.missing_on_primary is True
    assert row.last_sync_failure is None
    assert not repo.mirror(sites).exists()


def test_syncs_stay_within_repos_max_capacity(live_sites: SitePair, tmp_path: Path) -> None:
    from geosync.attempts import recent_attempts
    from geosync.nodes import NodeStore

    sites = live_sites
    with sites.primary.main() as conn:
        NodeStore(sites.primary, conn).update(sites.secondary_node.id, repos_max_capacity=2)
    repos = [create_snippet(sites, tmp_path, commits=1) for _ in range(6)]
    with sites.primary_served(), secondary_worker(sites):
        wait_for(lambda: all(mirrored(sites, repo)() for repo in repos), what="all mirrored")
    with sites.secondary.tracking_engine.connect() as conn:
        spans = [
            (attempt.started_at, attempt.finished_at)
            for repo in repos
            for attempt in recent_attempts(conn, "snippet", repo.id)
        ]
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = peak = 0
    for _at, step in edges:
        running += step
        peak = max(peak, running)
    assert len(spans) == 6
    assert peak <= 2


# --- what the primary's Geo endpoint refuses ---------------------------------------------------


def _pkt(line: str) -> bytes:
    data = line.encode()
    return f"{len(data) + 4:04x}".encode() + data


def _fetch_request(want: str) -> bytes:
    """A protocol v2 `fetch` asking for one commit (what a clone's second request sends)."""
    return _pkt("command=fetch\n") + b"0001" + _pkt(f"want {want}\n") + _pkt("done\n") + b"0000"


def test_fetch_needs_a_token_for_exactly_that_repository(
    live_sites: SitePair, tmp_path: Path
) -> None:
    sites = live_sites
    repo = create_snippet(sites, tmp_path)
    other = create_snippet(sites, tmp_path)
    head = gitutil.git("--git-dir", str(repo.primary), "rev-parse", "main").strip()
    node = sites.secondary.current_node()
    assert node is not None
    secret = node.secret(sites.secondary.settings.secret_key_base.get_secret_value())
    now = sites.secondary.clock.now()
    base = repository_base_path("snippet", repo.id)
    wrong_scope = sign_request(
        node,
        secret,
        request_data(repository_base_path("snippet", other.id)),
        now,
        REPOSITORY_TOKEN_TTL,
    )
    right = sign_request(node, secret, request_data(base), now, REPOSITORY_TOKEN_TTL)
    wrong_secret = sign_request(node, "x" * 40, request_data(base), now, REPOSITORY_TOKEN_TTL)
    v2 = {"Git-Protocol": "version=2"}
    post = {**v2, "Content-Type": "application/x-git-upload-pack-request"}

    with sites.primary_served() as url, httpx.Client(base_url=url.rstrip("/") + base) as http:

        def attempt(auth: dict[str, str]) -> tuple[httpx.Response, httpx.Response]:
            refs = http.get(
                "/info/refs", params={"service": "git-upload-pack"}, headers={**v2, **auth}
            )
            pack = http.post("/git-upload-pack", content=_fetch_request(head), headers=post | auth)
            return refs, pack

        for auth in ({}, {"Authorization": wrong_scope}, {"Authorization": wrong_secret}):
            for response in attempt(auth):
                assert response.status_code == 401
                assert response.json()["message"].startswith("401 Unauthorized")
                assert b"PACK" not in response.content
                assert head.encode() not in response.content

        refs, pack = attempt({"Authorization": right})  # the same requests, rightly scoped
        assert refs.status_code == 200 and b"version 2" in refs.content
        assert pack.status_code == 200 and b"PACK" in pack.content


def test_push_to_the_geo_endpoint_is_refused(live_sites: SitePair, tmp_path: Path) -> None:
    sites = live_sites
    repo = create_snippet(sites, tmp_path)
    before = gitutil.for_each_ref(repo.primary)
    gitutil.commit_file(repo.worktree, "pushed.txt", "over the Geo endpoint\n")
    base = repository_base_path("snippet", repo.id)
    header = node_header(sites.secondary, base, REPOSITORY_TOKEN_TTL)
    with sites.primary_served() as url:
        result = subprocess.run(
            [
                *("git", "-c", f"http.extraHeader=Authorization: {header}", "push"),
                *(url.rstrip("/") + base, "HEAD:refs/heads/main", "HEAD:refs/heads/other"),
            ],
            cwd=repo.worktree,
            env={**gitutil.git_env(), "GIT_ASKPASS": "true"},
            capture_output=True,
            timeout=60,
            check=False,
        )
    assert result.returncode != 0
    assert b"403" in result.stderr
    assert gitutil.for_each_ref(repo.primary) == before


def test_empty_repository_is_mirrored_with_zero_checksum(
    live_sites: SitePair, tmp_path: Path
) -> None:
    sites = live_sites
    repo = create_snippet(sites, tmp_path, commits=0)
    with sites.primary_served(), primary_worker(sites), secondary_worker(sites, verification=True):
        wait_for(verified(sites, repo), what="empty repository verified")
    assert primary_checksum(sites, repo.id) == "0" * 40


def _big_history(repo: Path, commits: int, files: int) -> None:
    """Append `commits` commits touching `files` files to `main` of bare `repo` (fast-import)."""
    stream = bytearray()
    for n in range(commits):
        message = f"commit {n}\n".encode()
        content = (f"{n} " * 200 + "\n").encode()
        stream += b"commit refs/heads/main\n"
        stream += f"committer t <t@example.invalid> {1_700_000_000 + n} +0000\n".encode()
        stream += f"data {len(message)}\n".encode() + message
        if n == 0:
            stream += b"from refs/heads/main^0\n"
        stream += f"M 100644 inline f{n % files}.txt\ndata {len(content)}\n".encode() + content
    gitutil.git("--git-dir", str(repo), "fast-import", "--quiet", input=bytes(stream))


def _held_pack() -> HeldResponses:
    """The primary's pack responses held after their first bytes: the clone is surely still
    running while the test changes the repository under it.
    """
    return HeldResponses(lambda path: path.endswith("/git-upload-pack"))


def test_update_during_a_running_sync_ends_with_the_newest_refs(
    live_sites: SitePair, tmp_path: Path
) -> None:
    sites = live_sites
    repo = create_snippet(sites, tmp_path, commits=1)
    _big_history(repo.primary, 3000, 500)
    pack = _held_pack()
    with sites.primary_served(pack.wrap), secondary_worker(sites):
        wait_for(pack.holding.is_set, what="first clone receiving its pack")
        _big_history(repo.primary, 1, 1)  # a push while the clone runs
        publish_update(sites, repo.id)
        wait_for(events_read(sites), what="the update read while the clone runs")
        pack.release()
        wait_for(mirrored(sites, repo), timeout=60, what="newest refs mirrored")
        with sites.secondary.tracking_engine.connect() as conn:
            from geosync.attempts import recent_attempts

            outcomes = [a.outcome for a in recent_attempts(conn, "snippet", repo.id)]
    assert "failed" not in outcomes


def test_delete_during_a_running_clone_leaves_no_mirror(
    live_sites: SitePair, tmp_path: Path
) -> None:
    sites = live_sites
    repo = create_snippet(sites, tmp_path, commits=1)
    _big_history(repo.primary, 3000, 500)
    root = sites.secondary.settings.repository_storage_root
    assert root is not None
    pack = _held_pack()
    with capture_logs() as logs, sites.primary_served(pack.wrap), secondary_worker(sites):
        wait_for(pack.holding.is_set, what="the clone receiving its pack")
        assert any(root.glob("snippets/*/tmp_*"))
        with sites.primary.session() as session:
            session.delete(session.get(Snippet, repo.id))
            session.commit()
        wait_for(lambda: registry_row(sites, repo.id) is None, what="registry row removed")
        pack.release()
    # Leaving the block waited for the clone, which finished after the deletion.
    ends = [e for e in logs if e.get("replicable") == "snippet" and e.get("id") == repo.id]
    assert [e["event"] for e in ends] == ["sync superseded by a newer change"]
    assert not repo.mirror(sites).exists()
    assert not list(root.glob("snippets/*/tmp_*"))
    with sites.secondary.tracking_engine.connect() as conn:
        from geosync.attempts import recent_attempts

        assert recent_attempts(conn, "snippet", repo.id) == []  # its history went with its row


def test_openapi_lists_the_two_git_endpoints_a_secondary_calls(sites: SitePair) -> None:
    import warnings

    from geosync.web.app import create_app

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # FastAPI warns about duplicate operation ids
        schema = create_app(sites.primary).openapi()
    repository = "/api/v4/geo/repositories/{replicable_name}/{model_record_id}.git"
    git_paths = sorted(p for p in schema["paths"] if p.startswith(repository))
    assert git_paths == [repository + "/git-upload-pack", repository + "/info/refs"]
    assert list(schema["paths"][repository + "/info/refs"]) == ["get"]
    assert list(schema["paths"][repository + "/git-upload-pack"]) == ["post"]


def test_a_shutdown_ends_a_sync_waiting_for_the_mirror_lock(
    live_sites: SitePair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading
    import time

    from geosync.file_locks import mirror_lock
    from geosync.secondary import scheduler

    monkeypatch.setattr(scheduler, "SHUTDOWN_GRACE", 1.0)
    sites = live_sites
    repo = create_snippet(sites, tmp_path, commits=1)
    lock = mirror_lock(repo.mirror(sites))
    held_elsewhere = threading.Event()
    done = threading.Event()

    def hold() -> None:  # another thread of this site, mid-sync of the same mirror
        with lock:
            held_elsewhere.set()
            done.wait(60)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        held_elsewhere.wait(10)
        with secondary_worker(sites):

            def started() -> bool:
                row = registry_row(sites, repo.id)
                return row is not None and row.state == SyncState.STARTED

            wait_for(started, what="the sync waiting for the mirror lock")
            stopping = time.monotonic()
        # The worker stopped soon after its grace, while the lock was still held: the wait was
        # cancelled, not left for the worker's join timeout to abandon.
        assert time.monotonic() - stopping < 15
        assert holder.is_alive()
        row = registry_row(sites, repo.id)
        assert row is not None and row.state != SyncState.SYNCED
        assert not repo.mirror(sites).exists()
    finally:
        done.set()
        holder.join(10)
