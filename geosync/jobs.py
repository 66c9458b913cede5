"""Bulk jobs: `resync` and `reverify` of many rows as one background job (`geo_bulk_jobs`).

A bulk request (`geosync resync|reverify NAME --all`, a GraphQL bulk mutation) creates one job
row and returns at once; `BulkJobLoop` in the site's worker runs it in keyset batches of 1,000
rows, one short transaction each. Every batch re-reads (and locks) its job, so a cancel stops it
within one batch and two runners never run the same job's batches at once; it changes only the
rows that match the job's action and filters at that moment, and the keyset only moves forward,
so a job always ends. A crash rolls a batch's rows and the job's progress back together: a
resumed job processes each matching row exactly once.

A site's jobs live in the database that holds the state they change: a secondary's tracking
database (its registries), the primary's main database (its own verification state). This
module owns that table: every read and write of it is here.
"""

from __future__ import annotations

import os
import pwd
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from sqlalchemy import Column, Connection, Table, and_, func, insert, select, update
from sqlalchemy.exc import IntegrityError, OperationalError

from geosync.db.engines import error_line
from geosync.db.tables import main_bulk_jobs, tracking_bulk_jobs
from geosync.errors import InvalidTransition, NotFound, ValidationError
from geosync.log import get_logger
from geosync.loops import HOUSEKEEPING_START
from geosync.registry import Registry
from geosync.reverification import reverify_target
from geosync.states import SyncState, VerificationState, cut

if TYPE_CHECKING:
    from geosync.app import Geo
    from geosync.replicator import Replicator
    from geosync.worker import Worker

log = get_logger("jobs")

#: Rows one batch transaction reads and changes.
BATCH_SIZE = 1000
#: The worker loop that runs jobs (`create_job` wakes it).
LOOP_NAME = "bulk_jobs"
#: Seconds a loop round keeps running one job's batches before it lets the worker look around.
ROUND_SECONDS = 5.0
#: The most jobs `list_jobs` returns at once.
MAX_LISTED = 1000


class JobAction(StrEnum):
    """What a job does to each row: move it back to pending sync, or pending verification."""

    RESYNC = "resync"
    REVERIFY = "reverify"


class JobState(StrEnum):
    """Where a job is: queued and running are active; done, cancelled and failed are final."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"
    FAILED = "failed"

    @property
    def active(self) -> bool:
        """Whether the job still has work to do (a runner may take it)."""
        return self in ACTIVE


ACTIVE = (JobState.QUEUED, JobState.RUNNING)


@dataclass(frozen=True)
class JobFilters:
    """Which rows a job touches beyond its action's own condition (None: no filter).

    `ids` are registry row ids on a secondary and model record ids on the primary;
    `replication_state` filters a secondary's registries only.
    """

    ids: tuple[int, ...] | None = None
    replication_state: SyncState | None = None
    verification_state: VerificationState | None = None

    def as_json(self) -> dict[str, Any]:
        """The filters as stored and shown: ids as a list, states by lower-case name."""
        return {
            "ids": None if self.ids is None else list(self.ids),
            "replication_state": _state_name(self.replication_state),
            "verification_state": _state_name(self.verification_state),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobFilters:
        """The filters `as_json` stored."""
        ids = data.get("ids")
        sync, verification = data.get("replication_state"), data.get("verification_state")
        return cls(
            ids=None if ids is None else tuple(int(i) for i in ids),
            replication_state=None if sync is None else SyncState[sync.upper()],
            verification_state=None
            if verification is None
            else VerificationState[verification.upper()],
        )


def _state_name(state: SyncState | VerificationState | None) -> str | None:
    return None if state is None else state.name.lower()


@dataclass(frozen=True)
class BulkJob:
    """One bulk job as stored: what it does, to which rows, and how far it got."""

    id: int
    replicable_name: str
    action: JobAction
    filters: JobFilters
    created_by: str | None
    state: JobState
    processed: int
    total: int
    last_key: int | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime

    def as_json(self) -> dict[str, Any]:
        """The job as JSON: ISO 8601 timestamps in UTC, action and state in lower case.

        `total` is the number of matching rows when the job was created: an estimate for a
        progress bar, since rows change state while the job runs.
        """
        return {
            "id": self.id,
            "replicable_name": self.replicable_name,
            "action": str(self.action),
            "filters": self.filters.as_json(),
            "created_by": self.created_by,
            "state": str(self.state),
            "processed": self.processed,
            "total": self.total,
            "last_key": self.last_key,
            "error": self.error,
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "updated_at": _iso(self.updated_at),
        }


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- what a job changes ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Work:
    """The rows a job selects (its action's condition and its filters) and its change."""

    key: Column[Any]
    condition: Any
    page: Callable[[Connection, int, int], list[int]]
    apply: Callable[[Connection, list[int]], int]
    count: Callable[[Connection], int]


def _work(geo: Geo, replicator: type[Replicator], action: JobAction, filters: JobFilters) -> _Work:
    """The work of `action` on this site; `ConfigurationError` for a resync on the primary,
    `GeoError` for a reverify of a type that is not verified, `ValidationError` for filters
    this site cannot apply."""
    if action == JobAction.RESYNC:
        return _resync_work(Registry.of_secondary(geo, replicator, "resync"), filters)
    verifiable = reverify_target(geo, replicator).verifiable
    condition = and_(
        verifiable.reverify_condition(False),
        *_filter_terms(verifiable.table, verifiable.key, filters, verifiable.registry),
    )
    return _Work(
        verifiable.key,
        condition,
        lambda conn, after, limit: verifiable.next_keys(conn, condition, after, limit),
        lambda conn, keys: verifiable.pending_where(
            conn, and_(condition, verifiable.key.in_(keys))
        ),
        lambda conn: verifiable.count_where(conn, condition),
    )


def _resync_work(registry: Registry, filters: JobFilters) -> _Work:
    terms = _filter_terms(registry.table, registry.key, filters, True)
    narrowed = and_(*terms) if terms else None
    condition = and_(registry.resyncable(), *terms)
    return _Work(
        registry.key,
        condition,
        lambda conn, after, limit: registry.next_keys(conn, condition, after, limit),
        lambda conn, keys: registry.resync_many(conn, keys, where=narrowed),
        lambda conn: _count(conn, registry.table, condition),
    )


def _filter_terms(table: Table, key: Column[Any], filters: JobFilters, registry: bool) -> list[Any]:
    """The WHERE terms of `filters`: ids are the registry's row ids on a secondary, the
    records' ids (the state's key) on the primary."""
    c = table.c
    terms: list[Any] = []
    if filters.ids is not None:
        terms.append((c.id if registry else key).in_(list(filters.ids)))
    if filters.replication_state is not None:
        if not registry:
            raise ValidationError(
                "replication_state filters a secondary's registries: the primary has none"
            )
        terms.append(c.state == int(filters.replication_state))
    if filters.verification_state is not None:
        terms.append(c.verification_state == int(filters.verification_state))
    return terms


def _count(conn: Connection, table: Table, where: Any) -> int:
    return int(conn.execute(select(func.count()).select_from(table).where(where)).scalar_one())


# -- the table -------------------------------------------------------------------------------


def _table(geo: Geo) -> Table:
    """This site's jobs table: in the tracking database on a secondary, else the main one."""
    return tracking_bulk_jobs if geo.has_tracking_database else main_bulk_jobs


@contextmanager
def _writing(geo: Geo) -> Iterator[Connection]:
    """A write transaction on the database holding this site's jobs and state."""
    transaction = geo.tracking() if geo.has_tracking_database else geo.main()
    with transaction as conn:
        yield conn


@contextmanager
def _reading(geo: Geo) -> Iterator[Connection]:
    engine = geo.tracking_engine if geo.has_tracking_database else geo.main_engine
    with engine.connect() as conn:
        yield conn


def _job(row: Any) -> BulkJob:
    m = row._mapping
    return BulkJob(
        id=int(m["id"]),
        replicable_name=m["replicable_name"],
        action=JobAction(m["action"]),
        filters=JobFilters.from_json(dict(m["filters"])),
        created_by=m["created_by"],
        state=JobState(m["state"]),
        processed=int(m["processed"]),
        total=int(m["total"]),
        last_key=None if m["last_key"] is None else int(m["last_key"]),
        error=m["error"],
        created_at=m["created_at"],
        started_at=m["started_at"],
        finished_at=m["finished_at"],
        updated_at=m["updated_at"],
    )


def _read_job(conn: Connection, table: Table, job_id: int, *, lock: bool = False) -> BulkJob:
    """The job `job_id`, locked until commit with `lock` (SQLite's write transaction already
    holds the whole database), or `NotFound`."""
    query = select(table).where(table.c.id == job_id)
    row = conn.execute(query.with_for_update() if lock else query).first()
    if row is None:
        raise NotFound(f"bulk job {job_id} not found")
    return _job(row)


def _active_key(replicator: type[Replicator], action: JobAction) -> str:
    return f"{replicator.replicable_name}:{action}"


def _finished(now: datetime, state: JobState) -> dict[str, Any]:
    return {"state": state, "finished_at": now, "updated_at": now, "active_key": None}


# -- the public interface ----------------------------------------------------------------------


def create_job(
    geo: Geo,
    replicator: type[Replicator],
    action: JobAction,
    filters: JobFilters,
    created_by: str | None,
) -> BulkJob:
    """Queue a bulk `action` on `replicator`'s rows matching `filters`, and return at once.

    `total` counts the rows matching now. `InvalidTransition` while a job of the same type and
    action is queued or running (the unique `active_key` holds it under races too);
    `ConfigurationError` for a resync on the primary; `ValidationError` for a filter this site
    cannot apply. Wakes this process's workers; others find the job at their next poll.
    """
    work = _work(geo, replicator, action, filters)
    table = _table(geo)
    active = _active_key(replicator, action)
    now = geo.clock.now()
    try:
        with _writing(geo) as conn:
            _refuse_second(conn, table, active, replicator, action)
            job_id = conn.execute(
                insert(table)
                .values(
                    replicable_name=replicator.replicable_name,
                    action=str(action),
                    filters=filters.as_json(),
                    created_by=None if created_by is None else cut(created_by),
                    state=JobState.QUEUED,
                    processed=0,
                    total=work.count(conn),
                    active_key=active,
                    created_at=now,
                    updated_at=now,
                )
                .returning(table.c.id)
            ).scalar_one()
    except IntegrityError:
        raise InvalidTransition(_second_message(replicator, action, None)) from None
    from geosync.worker import notify_local_workers

    notify_local_workers(geo, LOOP_NAME)
    return get_job(geo, int(job_id))


def _refuse_second(
    conn: Connection, table: Table, active: str, replicator: type[Replicator], action: JobAction
) -> None:
    found = conn.execute(select(table.c.id).where(table.c.active_key == active)).scalar()
    if found is not None:
        raise InvalidTransition(_second_message(replicator, action, int(found)))


def _second_message(replicator: type[Replicator], action: JobAction, job_id: int | None) -> str:
    which = f"job {job_id}" if job_id is not None else "another job"
    hint = f"; cancel it with `geosync jobs cancel {job_id}`" if job_id is not None else ""
    return (
        f"a {action} job for {replicator.replicable_name_plural} is already queued or running"
        f" ({which}): wait for it to finish{hint}"
    )


def get_job(geo: Geo, job_id: int) -> BulkJob:
    """The job `job_id` of this site, or `NotFound`."""
    with _reading(geo) as conn:
        return _read_job(conn, _table(geo), job_id)


def list_jobs(
    geo: Geo, *, states: Collection[JobState] | None = None, limit: int = 50, offset: int = 0
) -> list[BulkJob]:
    """This site's jobs, newest first, only those in `states` when given; at most `limit`
    (1 to 1,000) after skipping `offset`."""
    if not 1 <= limit <= MAX_LISTED:
        raise ValidationError(f"limit must be between 1 and {MAX_LISTED}, got {limit}")
    table = _table(geo)
    query = select(table).order_by(table.c.id.desc()).limit(limit).offset(max(0, offset))
    if states is not None:
        query = query.where(table.c.state.in_([str(s) for s in states]))
    with _reading(geo) as conn:
        return [_job(row) for row in conn.execute(query)]


def job_counts(geo: Geo) -> dict[JobState, int]:
    """How many of this site's jobs are in each state (every state present; uses the state
    index), for the site's status."""
    table = _table(geo)
    counts = dict.fromkeys(JobState, 0)
    with _reading(geo) as conn:
        rows = conn.execute(select(table.c.state, func.count()).group_by(table.c.state))
        for state, count in rows:
            counts[JobState(state)] = int(count)
    return counts


def next_job(geo: Geo) -> BulkJob | None:
    """The oldest queued or running job of this site, or None (what a runner takes next)."""
    table = _table(geo)
    query = (
        select(table)
        .where(table.c.state.in_([str(s) for s in ACTIVE]))
        .order_by(table.c.id)
        .limit(1)
    )
    with _reading(geo) as conn:
        row = conn.execute(query).first()
    return None if row is None else _job(row)


def cancel_job(geo: Geo, job_id: int) -> BulkJob:
    """Cancel a queued or running job: its runner stops before its next batch (rows already
    changed stay changed). `InvalidTransition` when it already finished, `NotFound`."""
    table = _table(geo)
    with _writing(geo) as conn:
        job = _read_job(conn, table, job_id, lock=True)
        if not job.state.active:
            raise InvalidTransition(f"bulk job {job_id} is already {job.state}")
        conn.execute(
            update(table)
            .where(table.c.id == job_id)
            .values(**_finished(geo.clock.now(), JobState.CANCELLED))
        )
    log.info("bulk job cancelled", **_fields(job), processed=job.processed)
    return get_job(geo, job_id)


def run_job_batch(geo: Geo, job_id: int) -> BulkJob:
    """Run one batch of job `job_id` in one transaction and return the job after it.

    The batch locks the job row, stops if the job is no longer active, changes the next (up to)
    1,000 matching rows above `last_key` and records its progress, all in that transaction; with
    no rows left the job is done. An unexpected error marks the job failed with the error's first
    line; a database that is away (`OperationalError`) is raised, so the caller retries later.
    """
    table = _table(geo)
    try:
        with _writing(geo) as conn:
            before = _read_job(conn, table, job_id, lock=True)
            if not before.state.active:
                return before
            try:
                after = _batch(geo, conn, table, before)
            except OperationalError:
                raise
            except Exception as exc:  # a job boundary: the job fails once, it does not loop
                raise _BatchFailed from exc  # leaving the block rolls the batch back
    except _BatchFailed as failed:
        return _fail(geo, job_id, failed.__cause__ or failed)
    _log_progress(before, after)
    return after


class _BatchFailed(Exception):
    """A batch raised something unexpected (its `__cause__`): the job fails."""


def _batch(geo: Geo, conn: Connection, table: Table, job: BulkJob) -> BulkJob:
    replicator = geo.catalog.get(job.replicable_name)
    work = _work(geo, replicator, job.action, job.filters)
    now = geo.clock.now()
    keys = work.page(conn, job.last_key or 0, BATCH_SIZE)
    values: dict[str, Any] = {"state": JobState.RUNNING, "updated_at": now}
    if job.state == JobState.QUEUED:
        values["started_at"] = now
    if keys:
        changed = work.apply(conn, keys)
        values.update(processed=table.c.processed + changed, last_key=keys[-1])
    if len(keys) < BATCH_SIZE:  # nothing matched beyond this page: the job is done
        values.update(_finished(now, JobState.DONE))
    conn.execute(update(table).where(table.c.id == job.id).values(**values))
    return _read_job(conn, table, job.id)


def _fail(geo: Geo, job_id: int, exc: BaseException) -> BulkJob:
    message = cut(f"{type(exc).__name__}: {error_line(exc)}")
    table = _table(geo)
    with _writing(geo) as conn:
        conn.execute(
            update(table)
            .where(table.c.id == job_id, table.c.state.in_([str(s) for s in ACTIVE]))
            .values(error=message, **_finished(geo.clock.now(), JobState.FAILED))
        )
        job = _read_job(conn, table, job_id)
    log.error("bulk job failed", **_fields(job), error=message, exc_info=exc)
    return job


def _fields(job: BulkJob) -> dict[str, Any]:
    return {"job_id": job.id, "replicable_name": job.replicable_name, "action": str(job.action)}


def _log_progress(before: BulkJob, after: BulkJob) -> None:
    """One line when a job starts and one when it finishes."""
    if before.state == JobState.QUEUED:
        log.info("bulk job started", **_fields(after), total=after.total)
    if not after.state.active:
        seconds = None
        if after.started_at is not None and after.finished_at is not None:
            seconds = round((after.finished_at - after.started_at).total_seconds(), 3)
        log.info(
            "bulk job finished",
            **_fields(after),
            state=str(after.state),
            processed=after.processed,
            seconds=seconds,
        )


def cli_creator() -> str:
    """`created_by` of a job created from the command line: "cli" and the OS user."""
    try:
        user = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        user = f"uid {os.getuid()}"
    return f"cli ({user})"


# -- the worker loop ---------------------------------------------------------------------------


class BulkJobLoop:
    """Runs this site's jobs, oldest first, a bounded round of batches at a time.

    Several workers may run it against one database: the job row lock in each batch keeps two
    runners from running the same job's batches at once, and each batch starts from the last
    key the previous one committed.
    """

    name = LOOP_NAME
    start_after = HOUSEKEEPING_START

    def __init__(self, geo: Geo, worker: Worker) -> None:
        self.geo = geo
        self.stopping = worker.stopping

    def run_once(self) -> float:
        """Run the oldest active job for up to `ROUND_SECONDS`; 0 while work is waiting."""
        job = next_job(self.geo)
        if job is None:
            return self.geo.settings.poll_interval
        deadline = time.monotonic() + ROUND_SECONDS
        while job.state.active and time.monotonic() < deadline and not self.stopping.is_set():
            job = run_job_batch(self.geo, job.id)
        return 0.0
