"""Transactional events (ARCHITECTURE.md §4): written in the flush, gone with a rollback.

Every test runs on SQLite and PostgreSQL through the `sites` fixture.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest
from sqlalchemy import Connection, Table, event, select
from sqlalchemy.exc import DBAPIError

from geosync import Geo, RecordNotFound, Settings, UnsupportedEvent
from geosync.db.tables import geo_events, geo_feature_flags
from geosync.demo.models import PackageFile, Snippet, Upload
from geosync.demo.replicators import PackageFileReplicator, SnippetReplicator, UploadReplicator
from geosync.errors import ReadOnlyViolation
from geosync.events import publish_events, published_types
from geosync.flags import set_flag
from geosync.nodes import NodeStore
from geosync.testing import DatabaseFactory, SitePair, build_site_pair


def events(conn: Connection) -> list[dict[str, Any]]:
    """Every event row, oldest first."""
    rows = conn.execute(select(geo_events).order_by(geo_events.c.id))
    return [dict(row._mapping) for row in rows]


def committed_events(geo: Geo) -> list[dict[str, Any]]:
    """The events another connection can see."""
    with geo.main_engine.connect() as conn:
        return events(conn)


def add_upload(geo: Geo, path: str = "2026/a.png", namespace_id: int = 1) -> int:
    """Insert and commit an upload; returns its id."""
    with geo.session() as session:
        upload = Upload(path=path, namespace_id=namespace_id)
        session.add(upload)
        session.commit()
        return upload.id


def test_inserting_a_replicable_writes_created_in_the_same_transaction(sites: SitePair) -> None:
    with sites.primary.session() as session:
        upload = Upload(path="a.png", namespace_id=1)
        session.add(upload)
        session.flush()
        inside = events(session.connection())
        # The secondary reads the main database through its own (read-only) connection.
        assert committed_events(sites.secondary) == []
        session.commit()
        upload_id = upload.id
    assert [(e["replicable_name"], e["event_name"], e["payload"]) for e in inside] == [
        ("upload", "created", {"model_record_id": upload_id})
    ]
    (event,) = committed_events(sites.primary)
    assert event["payload"] == {"model_record_id": upload_id}
    assert event["created_at"] == sites.primary.clock.now()


def test_a_rolled_back_insert_leaves_no_event(sites: SitePair) -> None:
    with sites.primary.session() as session:
        session.add(Upload(path="a.png", namespace_id=1))
        session.flush()
        assert len(events(session.connection())) == 1
        session.rollback()
    assert committed_events(sites.primary) == []
    with sites.primary.main_engine.connect() as conn:
        assert conn.execute(select(Upload.__table__)).all() == []


def test_one_flush_of_several_records_writes_one_event_each_in_id_order(sites: SitePair) -> None:
    with sites.primary.session() as session:
        session.add_all([Upload(path=f"{i}.png", namespace_id=1) for i in range(3)])
        session.add(PackageFile(file_name="p.whl", namespace_id=2))
        session.commit()
    written = committed_events(sites.primary)
    assert sorted(e["replicable_name"] for e in written) == ["package_file"] + ["upload"] * 3
    assert [e["id"] for e in written] == sorted(e["id"] for e in written)
    assert {e["event_name"] for e in written} == {"created"}


def test_deleting_a_blob_records_its_location_in_the_payload(sites: SitePair) -> None:
    upload_id = add_upload(sites.primary, path="2026/01/cat.png")
    with sites.primary.session() as session:
        session.delete(session.get(Upload, upload_id))
        session.commit()
    deleted = committed_events(sites.primary)[-1]
    assert deleted["event_name"] == "deleted"
    assert deleted["payload"] == {
        "model_record_id": upload_id,
        "blob_path": "2026/01/cat.png",
        "storage": "uploads",
    }


def test_deleting_a_package_file_records_its_derived_path(sites: SitePair) -> None:
    with sites.primary.session() as session:
        package = PackageFile(file_name="lib-1.0.whl", namespace_id=42)
        session.add(package)
        session.commit()
        package_id = package.id
    with sites.primary.session() as session:
        session.delete(session.get(PackageFile, package_id))
        session.commit()
    assert committed_events(sites.primary)[-1]["payload"] == {
        "model_record_id": package_id,
        "blob_path": f"42/{package_id}/lib-1.0.whl",
        "storage": "packages",
    }


def test_deleting_a_repository_records_its_path(sites: SitePair) -> None:
    with sites.primary.session() as session:
        snippet = Snippet(title="hello", namespace_id=1)
        session.add(snippet)
        session.commit()
        snippet_id = snippet.id
    with sites.primary.session() as session:
        session.delete(session.get(Snippet, snippet_id))
        session.commit()
    deleted = committed_events(sites.primary)[-1]
    assert (deleted["replicable_name"], deleted["event_name"]) == ("snippet", "deleted")
    assert deleted["payload"] == {
        "model_record_id": snippet_id,
        "repository_path": f"snippets/000/{snippet_id}.git",
    }


def test_a_rolled_back_delete_leaves_no_event_and_does_not_leak_into_the_next_flush(
    sites: SitePair,
) -> None:
    upload_id = add_upload(sites.primary)
    with sites.primary.session() as session:
        session.delete(session.get(Upload, upload_id))
        session.flush()
        session.rollback()
        session.add(Upload(path="other.png", namespace_id=1))
        session.commit()
    written = committed_events(sites.primary)
    assert [e["event_name"] for e in written] == ["created", "created"]


def test_updating_a_mutable_blob_after_commit_writes_updated(sites: SitePair) -> None:
    with sites.primary.session() as session:
        package = PackageFile(file_name="lib.whl", namespace_id=1)
        session.add(package)
        session.flush()
        package_id = package.id
        session.commit()
        event_id = PackageFileReplicator(package, geo=sites.primary).handle_after_update()
    assert event_id is not None
    updated = committed_events(sites.primary)[-1]
    assert updated["id"] == event_id
    assert (updated["event_name"], updated["payload"]) == (
        "updated",
        {"model_record_id": package_id},
    )


def test_an_update_published_before_commit_joins_the_sessions_transaction(
    sites: SitePair,
) -> None:
    with sites.primary.session() as session:
        package = PackageFile(file_name="lib.whl", namespace_id=1)
        session.add(package)
        session.flush()
        package_id = package.id
        session.commit()
    with sites.primary.session() as session:
        record = session.get(PackageFile, package_id)
        assert record is not None
        record.size = 10
        PackageFileReplicator(record, geo=sites.primary).handle_after_update()
        session.rollback()
    assert [e["event_name"] for e in committed_events(sites.primary)] == ["created"]
    with sites.primary.session() as session:
        record = session.get(PackageFile, package_id)
        assert record is not None
        record.size = 20
        PackageFileReplicator(record, geo=sites.primary).handle_after_update()
        session.commit()
    assert [e["event_name"] for e in committed_events(sites.primary)] == ["created", "updated"]


def test_an_update_published_in_a_failed_transaction_is_rolled_back(sites: SitePair) -> None:
    with sites.primary.session() as session:
        package = PackageFile(file_name="lib.whl", namespace_id=1)
        session.add(package)
        session.commit()
        package_id = package.id
    replicator = PackageFileReplicator(model_record_id=package_id, geo=sites.primary)
    with pytest.raises(RuntimeError), sites.primary.main() as conn:
        assert replicator.handle_after_update(conn) is not None
        raise RuntimeError("the application's change failed")
    assert [e["event_name"] for e in committed_events(sites.primary)] == ["created"]


def test_updating_an_immutable_blob_is_an_unsupported_event(sites: SitePair) -> None:
    upload_id = add_upload(sites.primary)
    replicator = UploadReplicator(model_record_id=upload_id, geo=sites.primary)
    with pytest.raises(UnsupportedEvent, match=r"UploadReplicator does not publish 'updated'"):
        replicator.handle_after_update()
    with pytest.raises(UnsupportedEvent, match=r"'renamed'"):
        replicator.publish("renamed")
    assert [e["event_name"] for e in committed_events(sites.primary)] == ["created"]


def test_a_replicator_loads_its_record_by_id_on_first_use(sites: SitePair) -> None:
    upload_id = add_upload(sites.primary, path="lazy.png")
    replicator = UploadReplicator(model_record_id=upload_id, geo=sites.primary)
    assert replicator.model_record_id == upload_id
    assert replicator.model_record.path == "lazy.png"
    assert replicator.blob_path() == "lazy.png"


def test_a_replicator_for_a_missing_record_raises_record_not_found(sites: SitePair) -> None:
    replicator = SnippetReplicator(model_record_id=999, geo=sites.primary)
    with pytest.raises(RecordNotFound, match=r"Snippet 999 does not exist \(SnippetReplicator\)"):
        _ = replicator.model_record


def test_a_replicator_needs_a_record_or_an_id() -> None:
    with pytest.raises(TypeError, match="model_record or model_record_id"):
        UploadReplicator()


def test_no_event_when_the_flag_is_off_but_other_types_still_publish(sites: SitePair) -> None:
    with sites.primary.main() as conn:
        set_flag(
            conn, sites.primary.catalog, "geo_upload_replication", False, sites.primary.clock.now()
        )
    add_upload(sites.primary)
    with sites.primary.session() as session:
        session.add(PackageFile(file_name="p.whl", namespace_id=1))
        session.commit()
    assert [e["replicable_name"] for e in committed_events(sites.primary)] == ["package_file"]
    with sites.primary.main() as conn:
        set_flag(
            conn, sites.primary.catalog, "geo_upload_replication", True, sites.primary.clock.now()
        )
    add_upload(sites.primary)
    assert committed_events(sites.primary)[-1]["replicable_name"] == "upload"


def test_no_event_without_a_secondary_node(sites: SitePair) -> None:
    with sites.primary.main() as conn:
        NodeStore(sites.primary, conn).remove(sites.secondary_node.id)
    add_upload(sites.primary)
    assert committed_events(sites.primary) == []


def test_no_event_from_a_site_whose_node_is_a_secondary(sites: SitePair, tmp_path: Path) -> None:
    # A writable site that is not the primary (say, a demoted primary before its re-setup).
    settings = Settings.load(
        node_name="secondary",
        main_database_url=sites.primary.settings.main_database_url,
        secret_key_base=sites.primary.settings.secret_key_base.get_secret_value(),
        blob_storages={"uploads": tmp_path, "packages": tmp_path},
    )
    site = Geo(settings, list(sites.primary.catalog), clock=sites.primary.clock)
    try:
        upload_id = add_upload(site)
        with site.session() as session:
            package = PackageFile(file_name="p.whl", namespace_id=1)
            session.add(package)
            session.commit()
            assert PackageFileReplicator(package, geo=site).handle_after_update() is None
    finally:
        site.dispose()
    assert committed_events(sites.primary) == []
    assert sites.primary.load_record(Upload, upload_id) is not None


def test_no_event_for_a_replicator_outside_the_sites_catalog(
    tmp_path: Path, databases: DatabaseFactory
) -> None:
    pair = build_site_pair(tmp_path / "sites", [UploadReplicator], databases)
    try:
        cast(Table, PackageFile.__table__).create(pair.primary.main_engine)
        with pair.primary.session() as session:
            session.add(PackageFile(file_name="p.whl", namespace_id=1))
            session.add(Upload(path="u.png", namespace_id=1))
            session.commit()
        assert [e["replicable_name"] for e in committed_events(pair.primary)] == ["upload"]
    finally:
        pair.dispose()


def test_the_secondary_main_database_refuses_writes(sites: SitePair) -> None:
    with pytest.raises(DBAPIError, match=r"(?i)read-?only"):
        with sites.secondary.main_engine.begin() as conn:
            conn.execute(
                geo_feature_flags.insert().values(
                    name="geo_upload_replication",
                    enabled=False,
                    updated_at=sites.primary.clock.now(),
                )
            )
    with pytest.raises(DBAPIError, match=r"(?i)read-?only"), sites.secondary.session() as session:
        session.add(Upload(path="nope.png", namespace_id=1))
        session.commit()
    assert committed_events(sites.primary) == []


def statements_during(geo: Geo) -> tuple[list[str], Any]:
    """A list that collects the queries the site's main engine runs (not BEGIN), and its
    listener.
    """
    seen: list[str] = []

    def listener(*args: Any) -> None:
        if not str(args[2]).startswith("BEGIN"):
            seen.append(str(args[2]))

    event.listen(geo.main_engine, "before_cursor_execute", listener)
    return seen, listener


def test_one_query_tells_which_types_this_site_publishes_for(sites: SitePair) -> None:
    with sites.primary.main() as conn:
        set_flag(
            conn, sites.primary.catalog, "geo_upload_replication", False, sites.primary.clock.now()
        )
    seen, listener = statements_during(sites.primary)
    try:
        with sites.primary.main() as conn:
            types = [UploadReplicator, PackageFileReplicator, SnippetReplicator]
            published = published_types(sites.primary, conn, types)
    finally:
        event.remove(sites.primary.main_engine, "before_cursor_execute", listener)
    assert published == {PackageFileReplicator, SnippetReplicator}
    assert len(seen) == 1


def test_no_type_is_published_for_without_a_secondary_or_from_a_secondary(
    sites: SitePair,
) -> None:
    with sites.primary.main() as conn:
        assert published_types(sites.primary, conn, [UploadReplicator]) == {UploadReplicator}
        NodeStore(sites.primary, conn).remove(sites.secondary_node.id)
        assert published_types(sites.primary, conn, [UploadReplicator]) == set()
    with sites.secondary.main_engine.connect() as conn:
        assert published_types(sites.secondary, conn, [UploadReplicator]) == set()


def test_a_caller_that_knows_what_is_published_saves_the_check(sites: SitePair) -> None:
    upload_id, package_id = add_upload(sites.primary), 7
    rows = [
        (UploadReplicator, "checksum_succeeded", {"model_record_id": upload_id}),
        (PackageFileReplicator, "checksum_succeeded", {"model_record_id": package_id}),
    ]
    seen, listener = statements_during(sites.primary)
    try:
        with sites.primary.main() as conn:
            ids = publish_events(sites.primary, conn, rows, published={PackageFileReplicator})
    finally:
        event.remove(sites.primary.main_engine, "before_cursor_execute", listener)
    queries = [sql for sql in seen if "pg_notify" not in sql]  # PostgreSQL wakes the site's loops
    assert len(ids) == 1 and len(queries) == 1 and queries[0].startswith("INSERT INTO geo_events")
    last = committed_events(sites.primary)[-1]
    assert (last["id"], last["replicable_name"], last["payload"]) == (
        ids[0],
        "package_file",
        {"model_record_id": package_id},
    )


def test_a_secondary_refuses_a_main_database_transaction_before_it_reaches_the_database(
    sites: SitePair,
) -> None:
    with pytest.raises(ReadOnlyViolation, match="is a secondary: its main database is read-only"):
        with sites.secondary.main():
            pass  # pragma: no cover - never entered
    with sites.primary.main() as conn:  # the primary's own transactions are unaffected
        assert conn.execute(geo_feature_flags.select()).all() is not None
