"""`geosync reattach` on a former primary brought back as a secondary: copies already in place
whose checksum is the primary's are synced without a transfer, the rest queued; twice is once."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from sqlalchemy import select
from typer.testing import CliRunner

from geosync.app import Geo
from geosync.cli import app
from geosync.db.tables import geo_sync_attempts
from geosync.demo.models import Snippet
from geosync.demo.replicators import SnippetReplicator, UploadReplicator
from geosync.reattach import reattach
from geosync.registry import Registry
from geosync.secondary.cursor_state import stored_position
from geosync.states import SyncState, VerificationState
from geosync.testing import SitePair
from geosync.testing.workers import checksum_on_primary
from tests import gitutil
from tests import verifyutil as vu

runner = CliRunner()


def repositories(geo: Geo) -> Path:
    root = geo.settings.repository_storage_root
    assert root is not None
    return root


def snippet_with_history(sites: SitePair) -> tuple[int, str]:
    """A snippet whose repository has two branches on the primary; its path in the storage."""
    record_id = vu.add_snippet(sites.primary)
    path = Snippet(id=record_id).disk_path
    repo = gitutil.make_bare(repositories(sites.primary) / path)
    gitutil.seed_branches(repo, ["main", "topic"])
    return record_id, str(path)


def test_copies_in_place_are_synced_without_a_transfer_and_the_rest_queued(
    sites: SitePair,
) -> None:
    same = vu.add_upload(sites.primary, b"kept")
    changed = vu.add_upload(sites.primary, b"new content")
    missing = vu.add_upload(sites.primary, b"never copied")
    snippet, snippet_path = snippet_with_history(sites)
    checksum_on_primary(sites)
    vu.write(vu.upload_file(sites.secondary, same), b"kept")
    vu.write(vu.upload_file(sites.secondary, changed), b"old content")
    shutil.copytree(
        repositories(sites.primary) / snippet_path, repositories(sites.secondary) / snippet_path
    )

    report = reattach(sites.secondary)
    again = reattach(sites.secondary)

    seeded = {t.replicable_name_plural: t for t in report.types}
    assert (seeded["uploads"].synced_without_transfer, seeded["uploads"].queued_for_transfer) == (
        1,
        2,
    )
    assert seeded["snippets"].synced_without_transfer == 1
    uploads = Registry(sites.secondary, UploadReplicator)
    snippets = Registry(sites.secondary, SnippetReplicator)
    with sites.secondary.tracking_engine.connect() as conn:
        kept = uploads.require(conn, same)
        states = {i: uploads.require(conn, i).sync_state for i in (changed, missing)}
        repo = snippets.require(conn, snippet)
        attempts = conn.execute(select(geo_sync_attempts)).all()
        cursor = stored_position(conn)
    assert kept.sync_state == SyncState.SYNCED and kept.verification == VerificationState.SUCCEEDED
    assert kept.verification_checksum == vu.sha256(b"kept")
    assert repo.sync_state == SyncState.SYNCED and repo.verification == VerificationState.SUCCEEDED
    assert states == {changed: SyncState.PENDING, missing: SyncState.PENDING}
    assert sorted((a.model_record_id, a.outcome, a.bytes) for a in attempts) == sorted(
        [(same, "synced", None), (snippet, "synced", None)]
    )
    assert cursor == report.cursor_started_at and cursor is not None and cursor > 0
    assert {t.already_tracked for t in again.types} == {0, 1, 3}
    assert again.cursor_started_at is None


def test_cli_reattach_prints_the_counts_and_refuses_on_a_primary(sites: SitePair) -> None:
    vu.add_upload(sites.primary, b"one")
    config = sites.root / "secondary.toml"
    toml = sites.secondary.settings.to_toml()
    config.write_text('replicators = "geosync.demo.replicators"\n' + toml, encoding="utf-8")
    primary_config = sites.root / "primary.toml"
    toml = sites.primary.settings.to_toml()
    primary_config.write_text('replicators = "geosync.demo.replicators"\n' + toml, encoding="utf-8")

    done = runner.invoke(app, ["reattach", "--json", "-c", str(config)])
    on_primary = runner.invoke(app, ["reattach", "-c", str(primary_config)])

    assert done.exit_code == 0, done.output
    counts = {t["replicable_name_plural"]: t for t in json.loads(done.stdout)["types"]}
    assert counts["uploads"]["queued_for_transfer"] == 1
    assert on_primary.exit_code == 1 and "runs on a secondary" in on_primary.stderr
