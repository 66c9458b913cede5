"""An application's own engines and sessions (`Geo.bind`): they publish events in the same
transaction as `Geo.session()` does, and a flush through an engine no site is bound to warns.

Every test runs on SQLite and PostgreSQL through the `sites` fixture.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, scoped_session, sessionmaker
from structlog.testing import capture_logs

from geosync import ConfigurationError, UnboundEngineWarning
from geosync.db.tables import geo_events
from geosync.demo.models import Base, PackageFile, Upload
from geosync.demo.replicators import PackageFileReplicator, UploadReplicator
from geosync.primary.verification import PrimaryVerificationLoop
from geosync.states import VerificationState
from geosync.testing import DatabaseFactory, build_site_pair
from geosync.testing.sites import SitePair
from geosync.testing.workers import run_worker, wait_for
from geosync.worker import Worker

try:
    from tests import verifyutil as vu
except ModuleNotFoundError:  # tests/ is not a package and the project root is not on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests import verifyutil as vu

S = VerificationState
SessionFactory = Callable[[Engine], AbstractContextManager[Session]]


@pytest.fixture
def app_engine(sites: SitePair) -> Iterator[Engine]:
    """The application's own engine on the primary's main database, made without geosync."""
    engine = create_engine(sites.primary.settings.main_database_url)
    yield engine
    engine.dispose()


def events(session_or_conn: Any) -> list[tuple[str, str, dict[str, Any]]]:
    """(replicable, event, payload) of every event row, oldest first."""
    rows = session_or_conn.execute(select(geo_events).order_by(geo_events.c.id))
    return [(r.replicable_name, r.event_name, r.payload) for r in rows]


def committed_events(sites: SitePair) -> list[tuple[str, str, dict[str, Any]]]:
    """The events another connection can see (one that takes no write lock on SQLite)."""
    with sites.primary.main_reads() as conn:
        return events(conn)


@contextmanager
def plain_session(engine: Engine) -> Iterator[Session]:
    with Session(engine) as session:
        yield session


@contextmanager
def made_by_sessionmaker(engine: Engine) -> Iterator[Session]:
    with sessionmaker(bind=engine)() as session:
        yield session


@contextmanager
def on_a_connection(engine: Engine) -> Iterator[Session]:
    with engine.connect() as conn, Session(bind=conn) as session:
        yield session


@contextmanager
def scoped(engine: Engine) -> Iterator[Session]:
    registry = scoped_session(sessionmaker(bind=engine))
    try:
        yield registry()
    finally:
        registry.remove()


@contextmanager
def binds_per_model(engine: Engine) -> Iterator[Session]:
    with Session(binds={Base: engine}) as session:  # no default bind at all
        yield session


SESSIONS: list[SessionFactory] = [
    plain_session,
    made_by_sessionmaker,
    on_a_connection,
    scoped,
    binds_per_model,
]


@pytest.mark.parametrize("make_session", SESSIONS, ids=lambda f: f.__name__)
def test_every_session_on_a_bound_engine_publishes_in_its_own_transaction(
    sites: SitePair, app_engine: Engine, make_session: SessionFactory
) -> None:
    sites.primary.bind(app_engine)
    with make_session(app_engine) as session:
        session.add(Upload(path="gone.png", namespace_id=1))
        session.flush()
        inside = session.connection(bind_arguments={"mapper": Upload})
        assert [e[:2] for e in events(inside)] == [("upload", "created")]
        assert committed_events(sites) == []
        session.rollback()
    assert committed_events(sites) == []
    with make_session(app_engine) as session:
        upload = Upload(path="kept.png", namespace_id=1)
        session.add(upload)
        session.commit()
        upload_id = upload.id
    assert committed_events(sites) == [("upload", "created", {"model_record_id": upload_id})]
    # The primary's verification state came with it, in the same transaction.
    state = vu.state_of(sites.primary, UploadReplicator, upload_id)
    assert state is not None and state["verification_state"] == S.PENDING
    with make_session(app_engine) as session:
        session.delete(session.get(Upload, upload_id))
        session.commit()
    assert committed_events(sites)[-1] == (
        "upload",
        "deleted",
        {"model_record_id": upload_id, "blob_path": "kept.png", "storage": "uploads"},
    )
    assert vu.state_of(sites.primary, UploadReplicator, upload_id) is None


def test_an_update_through_a_bound_engine_joins_its_transaction_and_requeues_the_checksum(
    sites: SitePair, app_engine: Engine
) -> None:
    sites.primary.bind(app_engine)
    with Session(app_engine) as session:
        package = PackageFile(file_name="lib.whl", namespace_id=1)
        session.add(package)
        session.commit()
        package_id = package.id
    with sites.primary.main() as conn:  # as if verified once
        conn.execute(
            update(PackageFile)
            .where(PackageFile.id == package_id)
            .values(verification_state=S.SUCCEEDED, verification_checksum="a" * 64)
        )
    with Session(app_engine) as session:
        record = session.get(PackageFile, package_id)
        assert record is not None
        record.size = 10
        # No geo given: the replicator finds the site through the record's bound engine.
        assert PackageFileReplicator(record).handle_after_update() is not None
        session.rollback()
    assert [e[1] for e in committed_events(sites)] == ["created"]
    with Session(app_engine) as session:
        record = session.get(PackageFile, package_id)
        assert record is not None
        record.size = 20
        PackageFileReplicator(record).handle_after_update()
        session.commit()
    assert committed_events(sites)[-1] == (
        "package_file",
        "updated",
        {"model_record_id": package_id},
    )
    state = vu.state_of(sites.primary, PackageFileReplicator, package_id)
    assert state is not None
    assert (state["verification_state"], state["verification_checksum"]) == (S.PENDING, None)


def test_binding_again_is_harmless(sites: SitePair, app_engine: Engine) -> None:
    sites.primary.bind(app_engine)
    sites.primary.bind(app_engine, app_engine)
    with Session(app_engine) as session:
        session.add(Upload(path="once.png", namespace_id=1))
        session.commit()
    assert [e[:2] for e in committed_events(sites)] == [("upload", "created")]


def test_an_engine_belongs_to_one_site(sites: SitePair, app_engine: Engine) -> None:
    sites.primary.bind(app_engine)
    with pytest.raises(ConfigurationError) as raised:
        sites.secondary.bind(app_engine)
    message = str(raised.value)
    assert "already bound to site 'primary'" in message and "site 'secondary'" in message
    assert "\n" not in message
    with pytest.raises(ConfigurationError, match="already bound to site 'secondary'"):
        sites.primary.bind(sites.secondary.main_engine)
    with pytest.raises(ConfigurationError, match=r"takes SQLAlchemy engines.*not Connection"):
        with app_engine.connect() as conn:
            sites.primary.bind(conn)  # type: ignore[arg-type]
    # The refused bindings changed nothing: the engine still publishes to the primary.
    with Session(app_engine) as session:
        session.add(Upload(path="p.png", namespace_id=1))
        session.commit()
    assert [e[:2] for e in committed_events(sites)] == [("upload", "created")]


def test_a_secondary_accepts_the_binding_and_publishes_nothing(
    sites: SitePair, app_engine: Engine
) -> None:
    sites.secondary.bind(app_engine)  # every site runs the same start-up code
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnboundEngineWarning)
        with Session(app_engine) as session:
            session.add(Upload(path="s.png", namespace_id=1))
            session.commit()
    assert committed_events(sites) == []


def _unbound_engine(sites: SitePair, backend: str) -> Engine:
    """Another engine on the primary's database that no site knows; on PostgreSQL its URL has
    a password (the server trusts every local connection), which must never be shown.
    """
    url = make_url(sites.primary.settings.main_database_url)
    if backend == "postgres":
        url = url.set(password="hunter2-never-shown")
    return create_engine(url)


def test_an_unbound_engine_warns_once_per_engine_and_names_the_fix(
    sites: SitePair, backend: str
) -> None:
    first, second = _unbound_engine(sites, backend), _unbound_engine(sites, backend)
    try:
        with capture_logs() as logs, pytest.warns(UnboundEngineWarning) as caught:
            with Session(first) as session:
                upload = Upload(path="a.png", namespace_id=1)
                session.add(upload)
                session.commit()
                upload_id = upload.id
        (warning,) = caught
        message = str(warning.message)
        assert message.startswith("Upload records were flushed through Engine(")
        assert "no events were published" in message and "geo.bind(engine)" in message
        assert "hunter2" not in message
        assert warning.filename == __file__  # points at the application's commit
        (line,) = [entry for entry in logs if entry["log_level"] == "warning"]
        assert line["fix"] == "geo.bind(engine)" and line["models"] == ["Upload"]
        assert "hunter2" not in repr(line)
        # The flush was not refused: the record exists, without an event.
        assert sites.primary.load_record(Upload, upload_id) is not None
        assert committed_events(sites) == []
        with warnings.catch_warnings(record=True) as again:
            warnings.simplefilter("always")
            with Session(first) as session:
                session.delete(session.get(Upload, upload_id))
                session.add(Upload(path="b.png", namespace_id=1))
                session.commit()
        assert [w for w in again if issubclass(w.category, UnboundEngineWarning)] == []
        with pytest.warns(UnboundEngineWarning, match="Upload records were flushed"):
            with Session(second) as session:
                session.add(Upload(path="c.png", namespace_id=1))
                session.commit()
    finally:
        first.dispose()
        second.dispose()


def test_sessions_on_a_sites_own_engine_and_connections_never_warn(sites: SitePair) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnboundEngineWarning)
        with sites.primary.main() as conn, Session(bind=conn) as session:
            session.add(Upload(path="own.png", namespace_id=1))
            session.flush()
        assert sites.secondary.load_record(Upload, 1) is not None  # reads the read-only engine
        with sites.primary.session() as session:
            session.delete(session.scalars(select(Upload)).one())
            session.commit()
    assert [e[1] for e in committed_events(sites)] == ["created", "deleted"]


def test_a_process_with_no_site_at_all_is_warned(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        from sqlalchemy import create_engine
        from sqlalchemy.orm import Session
        from geosync.demo.models import Upload

        engine = create_engine("sqlite:///{tmp_path / "app.db"}")
        Upload.__table__.create(engine)
        with Session(engine) as session:
            session.add(Upload(path="a.png", namespace_id=1))
            session.commit()
        print("committed")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "committed"
    assert "UnboundEngineWarning: Upload records were flushed through" in done.stderr
    assert "geo.bind(engine)" in done.stderr


def test_a_commit_through_a_bound_engine_wakes_the_local_verification_loop(
    tmp_path: Path, databases: DatabaseFactory
) -> None:
    # A poll interval far longer than the test may take: only the commit's wake-up can explain
    # a prompt checksum.
    pair = build_site_pair(tmp_path / "sites", [UploadReplicator], databases, poll_interval=60)
    engine = create_engine(pair.primary.settings.main_database_url)
    try:
        pair.primary.bind(engine)
        storage = pair.primary.settings.blob_storage("uploads")
        for name in ("first", "second"):
            vu.write(storage / f"{name}.bin", name.encode())
        worker = Worker(pair.primary, [PrimaryVerificationLoop])
        with run_worker(worker):
            first = _commit_upload(engine, "first.bin")
            wait_for(lambda: _verified(pair, first), timeout=20, what="the first checksum")
            time.sleep(0.5)  # the loop has gone back to its long sleep
            started = time.monotonic()
            second = _commit_upload(engine, "second.bin")
            wait_for(lambda: _verified(pair, second), timeout=20, what="the second checksum")
            assert time.monotonic() - started < timedelta(seconds=10).total_seconds()
    finally:
        engine.dispose()
        pair.dispose()


def _commit_upload(engine: Engine, path: str) -> int:
    with sessionmaker(bind=engine)() as session:
        upload = Upload(path=path, namespace_id=1)
        session.add(upload)
        session.commit()
        return int(upload.id)


def _verified(pair: SitePair, record_id: int) -> bool:
    state = vu.state_of(pair.primary, UploadReplicator, record_id)
    return state is not None and state["verification_state"] == S.SUCCEEDED
