"""`explain` on a real secondary: the right diagnosis and next step for every situation an
operator asks about, from the library and from `geosync explain NAME ID [--json]`.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from geosync.attempts import Attempt, record_attempt
from geosync.cli import app
from geosync.clock import FrozenClock
from geosync.demo.models import Upload
from geosync.demo.replicators import UploadReplicator
from geosync.errors import ConfigurationError, NotFound, ValidationError
from geosync.explain import INTERRUPTED_STEP, explain
from geosync.flags import set_flag
from geosync.nodes import NodeStore
from geosync.registry import Registry
from geosync.secondary.verification import SecondaryVerificationLoop
from geosync.states import VerificationState
from geosync.testing import SitePair
from geosync.testing.workers import checksum_on_primary
from tests import verifyutil as vu
from tests.takeoverutil import claimed_by_killed_worker, sweep

runner = CliRunner()


def add_upload(sites: SitePair, content: bytes = b"data", namespace: int = 1) -> int:
    """An upload on the primary with a real file."""
    return vu.add_upload(sites.primary, content, namespace_id=namespace)


def record_failure(sites: SitePair, record_id: int, error_class: str, message: str) -> None:
    """A failed sync attempt in the history, as the sync service writes it."""
    now = sites.secondary.clock.now()
    attempt = Attempt("upload", record_id, "sync", now, now, "failed", error_class, message)
    with sites.secondary.tracking() as conn:
        record_attempt(conn, attempt)


def test_flag_off_says_so_and_how_to_turn_it_on(sites: SitePair) -> None:
    record_id = add_upload(sites)
    with sites.primary.main() as conn:
        set_flag(
            conn, sites.primary.catalog, "geo_upload_replication", False, sites.primary.clock.now()
        )

    result = explain(sites.secondary, "uploads", record_id)

    assert result.flag_enabled is False and result.registry is None
    assert "turned off" in result.summary and "geo_upload_replication" in result.summary
    assert (
        result.next_step
        == "Turn it on, on the primary: `geosync flags enable geo_upload_replication`."
    )


def test_out_of_scope_names_the_selection_and_how_to_widen_it(sites: SitePair) -> None:
    record_id = add_upload(sites, namespace=7)
    with sites.primary.main() as conn:
        NodeStore(sites.primary, conn).update(
            sites.secondary_node.id,
            selective_sync_type="namespaces",
            selective_sync_namespace_ids=[1, 2],
        )

    result = explain(sites.secondary, "upload", record_id)

    assert result.flag_enabled is True and result.in_scope is False
    assert result.scope == "selective sync by namespaces (1, 2)"
    assert "out of scope" in result.summary and "namespaces (1, 2)" in result.summary
    assert "geosync node update secondary" in result.next_step


def test_in_scope_without_a_registry_row_points_at_the_sweep(sites: SitePair) -> None:
    record_id = add_upload(sites)

    result = explain(sites.secondary, "upload", record_id)

    assert result.in_scope is True and result.registry is None
    assert "no registry row yet" in result.summary
    assert "consistency sweep" in result.next_step


def test_pending_is_queued_for_sync(sites: SitePair) -> None:
    record_id = add_upload(sites)
    with sites.secondary.tracking() as conn:
        Registry(sites.secondary, UploadReplicator).insert_pending(conn, [record_id])

    result = explain(sites.secondary, "upload", record_id)

    assert result.registry is not None and result.registry["state"] == "pending"
    assert "queued for sync" in result.summary
    assert result.next_retry_at is None


def test_a_sync_overtaken_by_a_newer_change_says_the_item_is_synced_again(
    sites: SitePair,
) -> None:
    record_id = add_upload(sites)
    registry = Registry(sites.secondary, UploadReplicator)
    with sites.secondary.tracking() as conn:
        registry.insert_pending(conn, [record_id])
        registry.start(conn, record_id)
    assert "newer change" not in explain(sites.secondary, "upload", record_id).summary
    with sites.secondary.tracking() as conn:
        registry.pending(conn, record_id)

    result = explain(sites.secondary, "upload", record_id)

    assert result.registry is not None and result.registry["state"] == "started"
    assert "being synced right now" in result.summary
    assert "newer change" in result.summary and "synced again" in result.summary


def test_failed_with_backoff_gives_the_next_retry_and_the_last_errors(
    sites: SitePair, clock: FrozenClock
) -> None:
    record_id = add_upload(sites)
    registry = Registry(sites.secondary, UploadReplicator)
    with sites.secondary.tracking() as conn:
        registry.insert_pending(conn, [record_id])
        registry.failed(
            conn,
            record_id,
            registry.start(conn, record_id),
            "Connection to the primary failed",
            "timed out",
        )
        retry_at = registry.failed(
            conn,
            record_id,
            registry.start(conn, record_id),
            "Connection to the primary failed",
            "reset",
        )
    record_failure(sites, record_id, "transient", "Connection to the primary failed: timed out")
    record_failure(sites, record_id, "transient", "Connection to the primary failed: reset")

    result = explain(sites.secondary, "upload", record_id)

    assert retry_at is not None
    assert result.next_retry_at == retry_at and retry_at > clock.now()
    assert result.registry is not None and result.registry["retry_count"] == 2
    assert "failed (transient) after 2 attempt(s)" in result.summary
    assert "next retry at" in result.summary and "reset" in result.summary
    assert [a.message for a in result.attempts] == [
        "Connection to the primary failed: reset",
        "Connection to the primary failed: timed out",
    ]
    assert "retry by themselves" in result.next_step

    clock.advance(timedelta(hours=2))
    assert "the retry is due now" in explain(sites.secondary, "upload", record_id).summary


def test_a_sync_its_dead_worker_left_is_queued_again_and_needs_nothing(sites: SitePair) -> None:
    record_id = add_upload(sites)
    with sites.secondary.tracking() as conn:
        Registry(sites.secondary, UploadReplicator).insert_pending(conn, [record_id])
    claims = claimed_by_killed_worker(sites.secondary, UploadReplicator, [record_id], "h:7:gone")
    sweep(sites.secondary)

    result = explain(sites.secondary, "upload", record_id)

    assert result.registry is not None and result.registry["state"] == "pending"
    assert result.summary == (
        f"The last sync of upload {record_id} (started {claims[record_id].at.isoformat()})"
        " was interrupted: the worker running it stopped (h:7:gone: its process is gone)."
        " It is queued for sync again."
    )
    assert result.next_step == INTERRUPTED_STEP
    assert [(a.kind, a.outcome) for a in result.attempts] == [("sync", "interrupted")]


def test_an_interrupted_retry_keeps_its_count_and_is_due_at_once(
    sites: SitePair, clock: FrozenClock
) -> None:
    record_id = add_upload(sites)
    registry = Registry(sites.secondary, UploadReplicator)
    with sites.secondary.tracking() as conn:
        registry.insert_pending(conn, [record_id])
        registry.failed(
            conn, record_id, registry.start(conn, record_id), "Connection reset by the primary"
        )
    record_failure(sites, record_id, "transient", "Connection reset by the primary")
    clock.advance(timedelta(hours=2))
    claimed_by_killed_worker(sites.secondary, UploadReplicator, [record_id], "h:8:gone")
    sweep(sites.secondary)

    result = explain(sites.secondary, "upload", record_id)

    assert result.registry is not None
    assert (result.registry["state"], result.registry["retry_count"]) == ("failed", 1)
    assert "was interrupted: the worker running it stopped (h:8:gone" in result.summary
    assert (
        "It had failed 1 time(s) before (the last: Connection reset by the primary), a count it"
        " keeps; the retry is due now"
    ) in result.summary
    assert result.next_step == INTERRUPTED_STEP
    assert "connection" not in result.next_step


def test_missing_on_primary_asks_to_restore_the_data(sites: SitePair) -> None:
    record_id = add_upload(sites)
    registry = Registry(sites.secondary, UploadReplicator)
    with sites.secondary.tracking() as conn:
        registry.insert_pending(conn, [record_id])
        registry.failed(
            conn,
            record_id,
            registry.start(conn, record_id),
            "File is missing on the primary: gone",
            missing_on_primary=True,
        )
    record_failure(sites, record_id, "primary_missing", "File is missing on the primary: gone")

    result = explain(sites.secondary, "upload", record_id)

    assert result.registry is not None and result.registry["missing_on_primary"] is True
    assert "the primary has the record but not its data" in result.summary
    assert result.next_step.startswith("Restore the data on the primary")
    assert result.attempts[0].error_class == "primary_missing"


def test_checksum_mismatch_shows_both_checksums_and_the_resync(sites: SitePair) -> None:
    record_id = add_upload(sites, b"the primary's bytes")
    checksum_on_primary(sites)
    vu.write(vu.upload_file(sites.secondary, record_id), b"rotten bytes")
    vu.make_synced(sites.secondary, UploadReplicator, record_id, verification=0)
    loop = SecondaryVerificationLoop(sites.secondary, threads=1)
    try:
        loop.run_once()
    finally:
        loop.close()

    result = explain(sites.secondary, "upload", record_id)

    assert result.registry is not None
    assert result.registry["state"] == "failed" and result.registry["checksum_mismatch"] is True
    assert result.primary_checksum == vu.sha256(b"the primary's bytes")
    assert "did not match the primary's checksum" in result.summary
    assert (
        vu.sha256(b"rotten bytes") in result.summary and result.primary_checksum in result.summary
    )
    assert "geosync reverify upload --id" in result.next_step


def test_synced_and_verified_needs_nothing(sites: SitePair) -> None:
    record_id = add_upload(sites)
    checksum_on_primary(sites)
    registry = Registry(sites.secondary, UploadReplicator)
    with sites.secondary.tracking() as conn:
        registry.insert_pending(conn, [record_id])
        started = registry.start(conn, record_id)
        registry.synced(
            conn,
            record_id,
            started,
            verification=VerificationState.SUCCEEDED,
            checksum=vu.sha256(b"data"),
            local_path=f"u/{record_id}.bin",
        )

    result = explain(sites.secondary, "upload", record_id)

    assert result.registry is not None
    assert (result.registry["state"], result.registry["verification_state"]) == (
        "synced",
        "succeeded",
    )
    assert "synced and verified" in result.summary
    assert result.next_step == "Nothing to do."


def test_a_verification_older_than_the_scrub_period_is_not_called_verified(
    sites: SitePair, clock: FrozenClock
) -> None:
    record_id = add_upload(sites)
    checksum_on_primary(sites)
    registry = Registry(sites.secondary, UploadReplicator)
    with sites.secondary.tracking() as conn:
        registry.insert_pending(conn, [record_id])
        started = registry.start(conn, record_id)
        registry.synced(
            conn,
            record_id,
            started,
            verification=VerificationState.SUCCEEDED,
            checksum=vu.sha256(b"data"),
            local_path=f"u/{record_id}.bin",
        )
    clock.advance(sites.secondary.settings.scrub_period + timedelta(minutes=1))

    result = explain(sites.secondary, "upload", record_id)

    assert "no longer counts as verified" in result.summary
    assert "synced and verified" not in result.summary
    assert f"geosync reverify upload --id {record_id}" in result.next_step


def test_synced_without_a_primary_checksum_waits_for_the_primary(sites: SitePair) -> None:
    record_id = add_upload(sites)
    vu.make_synced(sites.secondary, UploadReplicator, record_id, verification=4)

    result = explain(sites.secondary, "upload", record_id)

    assert result.primary_checksum is None and result.primary_verification_state == "pending"
    assert "the primary has no checksum for it yet" in result.summary


def test_orphan_of_a_deleted_record_is_left_to_the_sweep(sites: SitePair) -> None:
    record_id = add_upload(sites)
    vu.make_synced(sites.secondary, UploadReplicator, record_id)
    with sites.primary.session() as session:
        session.delete(session.get(Upload, record_id))
        session.commit()

    result = explain(sites.secondary, "upload", record_id)

    assert result.exists_on_primary is False and result.in_scope is None
    assert "orphan" in result.summary and "consistency sweep" in result.next_step


def test_bad_requests_are_clear_errors(sites: SitePair) -> None:
    with pytest.raises(NotFound, match="unknown replicable 'nope'"):
        explain(sites.secondary, "nope", 1)
    with pytest.raises(ValidationError, match="positive"):
        explain(sites.secondary, "upload", 0)
    with pytest.raises(ConfigurationError, match="secondary"):
        explain(sites.primary, "upload", 1)


# -- the CLI ------------------------------------------------------------------------------------


def write_config(sites: SitePair, path: Path) -> Path:
    """The secondary's settings as a TOML file naming the demo replicators."""
    path.write_text(
        'replicators = "geosync.demo.replicators"\n' + sites.secondary.settings.to_toml(),
        encoding="utf-8",
    )
    return path


def test_cli_explains_in_text_and_in_json(sites: SitePair, tmp_path: Path) -> None:
    record_id = add_upload(sites)
    registry = Registry(sites.secondary, UploadReplicator)
    with sites.secondary.tracking() as conn:
        registry.insert_pending(conn, [record_id])
        registry.failed(
            conn, record_id, registry.start(conn, record_id), "The primary refused the request: 401"
        )
    record_failure(sites, record_id, "auth", "The primary refused the request: 401")
    config = write_config(sites, tmp_path / "secondary.toml")

    text = runner.invoke(
        app, ["--config", str(config), "explain", "upload", str(record_id)], env={"COLUMNS": "200"}
    )
    as_json = runner.invoke(
        app, ["--config", str(config), "explain", "uploads", str(record_id), "--json"]
    )

    assert text.exit_code == 0, text.output
    assert "failed (auth)" in text.stdout and "secret_key_base" in text.stdout
    assert "last attempts" in text.stdout and "refused the request" in text.stdout
    assert as_json.exit_code == 0, as_json.output
    data = json.loads(as_json.stdout)
    assert data["registry"]["state"] == "failed" and data["flag_enabled"] is True
    assert data["attempts"][0]["error_class"] == "auth"
    assert data["next_retry_at"].startswith("20") and "secret_key_base" in data["next_step"]


def test_cli_reports_an_unknown_type_in_one_line(sites: SitePair, tmp_path: Path) -> None:
    config = write_config(sites, tmp_path / "secondary.toml")

    result = runner.invoke(app, ["--config", str(config), "explain", "widgets", "3"])

    assert result.exit_code == 1
    assert "unknown replicable 'widgets'" in result.output
    assert "Traceback" not in result.output
