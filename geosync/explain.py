"""`explain`: why one replicable is (or is not) replicated on this secondary, and what to do.

It gathers every fact an operator would otherwise dig out of two databases — the feature flag,
the selective sync scope, the record on the primary and its checksum, the registry row, the
retry time and the attempt history — and turns them into one diagnosis and one next step.
The result is a plain dataclass with a JSON form, shared by the CLI, the REST API and the UI.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from geosync.attempts import INTERRUPTED, PERMANENT, SITE_UNREACHABLE, Attempt, recent_attempts
from geosync.errors import ConfigurationError, GeoError, ValidationError
from geosync.flags import flag_enabled
from geosync.object_sync import left_to_store_now
from geosync.registry import Registry, RegistryRow
from geosync.scope import describe_scope, ids_in_scope
from geosync.states import SyncState, VerificationState

if TYPE_CHECKING:
    from geosync.app import Geo
    from geosync.nodes import Node
    from geosync.replicator import Replicator

#: Registry columns shown, in this order.
REGISTRY_FIELDS = (
    "state",
    "retry_count",
    "retry_at",
    "last_synced_at",
    "last_sync_failure",
    "missing_on_primary",
    "created_at",
    "pending_since",
    "local_path",
    "verification_state",
    "verification_started_at",
    "verification_retry_count",
    "verification_retry_at",
    "verified_at",
    "verification_checksum",
    "verification_failure",
    "checksum_mismatch",
    "verification_checksum_mismatched",
)


@dataclass(frozen=True)
class Explanation:
    """Everything known about one replicable on this secondary, with a diagnosis."""

    replicable_name: str
    model_record_id: int
    node_name: str
    flag_name: str
    flag_enabled: bool
    scope: str
    #: Whether the record is in this secondary's scope; None when it does not exist.
    in_scope: bool | None
    exists_on_primary: bool
    #: The primary's verification state (`succeeded`, ...) and checksum, when it has one.
    primary_verification_state: str | None
    primary_checksum: str | None
    #: The registry row (states as lower-case names), or None when there is none.
    registry: dict[str, Any] | None
    next_retry_at: datetime | None
    attempts: list[Attempt] = field(default_factory=list)
    #: Where this site keeps (or would keep) the copy: a file, or an object and its store.
    copy_location: str | None = None
    #: Whether this secondary leaves the item to the object store's own replication
    #: (`sync_object_storage` off, the primary's storage an object store: `geosync.object_sync`).
    left_to_object_storage: bool = False
    #: One or two sentences: what the situation is and why.
    summary: str = ""
    #: What an operator should do next ("Nothing to do." when all is well).
    next_step: str = ""

    def as_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form (timestamps as ISO 8601 strings)."""
        data = {name: _jsonable(getattr(self, name)) for name in self.__dataclass_fields__}
        data["attempts"] = [
            {name: _jsonable(getattr(a, name)) for name in a.__dataclass_fields__}
            for a in self.attempts
        ]
        return data


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    return value


# -- gathering the facts ----------------------------------------------------------------------


def explain(geo: Geo, name: str, model_record_id: int) -> Explanation:
    """Explain replicable `name` (singular or plural) number `model_record_id` on this site."""
    if model_record_id < 1:
        raise ValidationError(f"id must be a positive integer, got {model_record_id}")
    replicator = geo.catalog.get(name)
    if not geo.has_tracking_database:
        raise ConfigurationError(
            "explain describes replication on a secondary; this site has no tracking database"
            " (run it with a secondary's configuration)"
        )
    with geo.main_engine.connect() as main:
        node = geo.current_node(main)
        if node is None or node.primary:
            raise ConfigurationError(
                f"node {geo.settings.node_name!r} is not registered as a secondary"
            )
        enabled = flag_enabled(main, replicator)
        id_column = replicator.model.__table__.c.id
        exists = main.execute(select(id_column).where(id_column == model_record_id)).first()
        in_scope = bool(ids_in_scope(main, replicator, node, [model_record_id])) if exists else None
        primary_state = _primary_state(geo, main, replicator, model_record_id)
        left = left_to_store_now(main, node, replicator)
    with geo.tracking_engine.connect() as tracking:
        row = Registry(geo, replicator).get(tracking, model_record_id)
        attempts = recent_attempts(tracking, replicator.replicable_name, model_record_id)
    facts = Explanation(
        replicable_name=replicator.replicable_name,
        model_record_id=model_record_id,
        node_name=node.name,
        flag_name=replicator.replication_flag_name,
        flag_enabled=enabled,
        scope=describe_scope(node),
        in_scope=in_scope,
        exists_on_primary=exists is not None,
        primary_verification_state=primary_state[0],
        primary_checksum=primary_state[1],
        registry=_registry_view(row),
        next_retry_at=_next_retry(row),
        attempts=attempts,
        copy_location=_copy_location(geo, replicator, row),
        left_to_object_storage=left,
    )
    summary, next_step = diagnose(
        facts, node, row, geo.clock.now(), scrub_period=geo.settings.scrub_period
    )
    return replace(facts, summary=summary, next_step=next_step)


def _copy_location(geo: Geo, replicator: type[Replicator], row: RegistryRow | None) -> str | None:
    """The copy's place on this site: `object <key> in <store>` or `file <path>`; None when
    neither the registry row nor the strategy says (a repository, a row without a path)."""
    key = row.values.get("local_path") if row is not None else None
    if not key or getattr(replicator, "strategy", None) != "blob":
        return None
    try:
        store = replicator.store_of(geo.settings)  # type: ignore[attr-defined]
    except GeoError as exc:
        return f"unknown: {exc}"
    if store.local:
        return f"file {store.describe()}/{key}"
    return f"object {key} in {store.describe()}"


def _primary_state(
    geo: Geo, main: Any, replicator: type[Replicator], model_record_id: int
) -> tuple[str | None, str | None]:
    if not replicator.verification_enabled:
        return None, None
    from geosync.verification import primary_verifiable

    state = primary_verifiable(geo, replicator).get(main, model_record_id)
    if state is None:
        return None, None
    verification = VerificationState(state["verification_state"])
    checksum = (
        state["verification_checksum"] if verification == VerificationState.SUCCEEDED else None
    )
    return verification.name.lower(), checksum


def _registry_view(row: RegistryRow | None) -> dict[str, Any] | None:
    if row is None:
        return None
    view = {name: row.values.get(name) for name in REGISTRY_FIELDS}
    view["state"] = row.sync_state.name.lower()
    view["verification_state"] = row.verification.name.lower()
    return view


def _next_retry(row: RegistryRow | None) -> datetime | None:
    if row is None:
        return None
    if row.sync_state == SyncState.FAILED:
        return row.retry_at  # type: ignore[no-any-return]
    if row.verification == VerificationState.FAILED:
        return row.verification_retry_at  # type: ignore[no-any-return]
    return None


# -- the diagnosis ----------------------------------------------------------------------------


def diagnose(
    facts: Explanation,
    node: Node,
    row: RegistryRow | None,
    now: datetime,
    *,
    scrub_period: timedelta | None = None,
) -> tuple[str, str]:
    """The summary and next step for `facts`, checked from the most fundamental cause down;
    a verification older than `scrub_period` no longer counts as verified."""
    what = f"{facts.replicable_name} {facts.model_record_id}"
    if not facts.exists_on_primary:
        return _gone(what, row)
    if not facts.flag_enabled:
        return _flag_off(facts, row)
    if facts.left_to_object_storage:
        return _left_to_store(facts, node, row)
    if not facts.in_scope:
        return _out_of_scope(facts, node, row)
    if row is None:
        return (
            f"{what} is in scope but has no registry row yet.",
            "The consistency sweep (or the record's `created` event) creates it; make sure"
            " `geosync worker` runs on this secondary.",
        )
    interrupted = _interrupted(facts, "sync")
    if interrupted is not None and row.sync_state in (SyncState.PENDING, SyncState.FAILED):
        return _after_interruption(facts, row, interrupted, now)
    deferred = _newest(facts, "sync", SITE_UNREACHABLE)
    if deferred is not None and row.sync_state in (SyncState.PENDING, SyncState.FAILED):
        return _deferred(facts, row, deferred)
    if row.sync_state == SyncState.PENDING:
        return (
            f"{what} is queued for sync (pending since {_at(row.pending_since)}).",
            "Wait: workers take pending rows first, within the node's capacity; make sure"
            " `geosync worker` runs on this secondary.",
        )
    if row.sync_state == SyncState.STARTED:
        newer = (
            f" A newer change ({_at(row.pending_since)}) arrived meanwhile: the item is synced"
            " again as soon as this sync ends."
            if row.resync_requested
            else ""
        )
        return (
            f"{what} is being synced right now (started {_at(row.last_synced_at)}).{newer}",
            "Wait for the sync to finish; one that hangs is failed and retried automatically.",
        )
    if row.sync_state == SyncState.FAILED:
        return _failed(facts, row, now)
    return _synced(facts, row, now, scrub_period)


def _gone(what: str, row: RegistryRow | None) -> tuple[str, str]:
    if row is None:
        return (
            f"{what} does not exist on the primary (deleted, or never created):"
            " there is nothing to replicate.",
            "Nothing to do; check the id if you expected it to exist.",
        )
    return (
        f"{what} no longer exists on the primary, but this secondary still has its registry"
        " row (an orphan, e.g. its `deleted` event was pruned before it was read).",
        "Nothing to do: the consistency sweep removes the row and the local copy on its next"
        " pass (make sure `geosync worker` runs on this secondary).",
    )


def _flag_off(facts: Explanation, row: RegistryRow | None) -> tuple[str, str]:
    kept = " Its registry row and local copy are kept, but not synced." if row else ""
    return (
        f"Replication of {facts.replicable_name} is turned off (feature flag"
        f" {facts.flag_name}).{kept}",
        f"Turn it on, on the primary: `geosync flags enable {facts.flag_name}`.",
    )


def _left_to_store(facts: Explanation, node: Node, row: RegistryRow | None) -> tuple[str, str]:
    kept = " Its registry row and copy are kept as they are, but no longer synced." if row else ""
    return (
        f"{facts.replicable_name} {facts.model_record_id} is in the primary's object storage"
        " and this secondary leaves object-stored blobs to the store's own replication"
        f" (sync_object_storage is off): geosync neither copies nor verifies it.{kept}",
        "Nothing to do if the object store replicates the bucket to this site. To have geosync"
        f" copy and verify such blobs: `geosync node update {node.name} --sync-object-storage`"
        " on the primary.",
    )


def _out_of_scope(facts: Explanation, node: Node, row: RegistryRow | None) -> tuple[str, str]:
    removal = (
        " Its registry row and local copy are removed by the next consistency sweep." if row else ""
    )
    return (
        f"{facts.replicable_name} {facts.model_record_id} is out of scope: this secondary"
        f" replicates {facts.scope}, and the record is not part of it.{removal}",
        "If this secondary should hold it, widen its selective sync on the primary, e.g."
        f" `geosync node update {node.name} --selective-sync-namespace-ids ...` or"
        " `--selective-sync-type none`.",
    )


#: What to do about an interruption: nothing for the item; the worker is what stopped.
INTERRUPTED_STEP = (
    "Nothing to fix for this item: an interrupted sync is retried at once and keeps its"
    " retry count. If workers keep stopping, find out why in their logs, the service manager's"
    " and the kernel's (the OOM killer), and make sure `geosync worker` runs on this secondary."
)


def _interrupted(facts: Explanation, kind: str) -> Attempt | None:
    """The newest attempt of `kind`, when it was interrupted (its worker stopped or died)."""
    newest = next((a for a in facts.attempts if a.kind == kind), None)
    return newest if newest is not None and newest.outcome == INTERRUPTED else None


#: What to do about a sync deferred while its site was away: nothing for the item.
SITE_UNREACHABLE_STEP = (
    "Nothing to fix for this item: it keeps its retry count and syncs as soon as the site"
    " answers. Check the primary (its web server and its database) and the network;"
    " `geosync status` shows since when it is unreachable."
)


def _newest(facts: Explanation, kind: str, outcome: str) -> Attempt | None:
    """The newest attempt of `kind`, when its outcome was `outcome`."""
    newest = next((a for a in facts.attempts if a.kind == kind), None)
    return newest if newest is not None and newest.outcome == outcome else None


def _deferred(facts: Explanation, row: RegistryRow, attempt: Attempt) -> tuple[str, str]:
    what = f"{facts.replicable_name} {facts.model_record_id}"
    reason = attempt.message or "its site was unreachable"
    summary = f"The last sync of {what} (started {_at(attempt.started_at)}) was deferred: {reason}."
    if row.sync_state == SyncState.PENDING:
        return f"{summary} It is queued for sync again.", SITE_UNREACHABLE_STEP
    return (
        f"{summary} It had failed {row.retry_count} time(s) before, a count it keeps.",
        SITE_UNREACHABLE_STEP,
    )


def _after_interruption(
    facts: Explanation, row: RegistryRow, attempt: Attempt, now: datetime
) -> tuple[str, str]:
    what = f"{facts.replicable_name} {facts.model_record_id}"
    reason = attempt.message or "its worker stopped"
    summary = f"The last sync of {what} (started {_at(attempt.started_at)}) was interrupted: "
    summary += reason.removeprefix("Sync interrupted: ") + "."
    if row.sync_state == SyncState.PENDING:
        return f"{summary} It is queued for sync again.", INTERRUPTED_STEP
    earlier = _last_failure(facts)
    before = f" (the last: {earlier.message})" if earlier is not None and earlier.message else ""
    summary += (
        f" It had failed {row.retry_count} time(s) before{before}, a count it keeps;"
        f" {_retry_phrase(row.retry_at, now)}."
    )
    return summary, INTERRUPTED_STEP


def _last_failure(facts: Explanation) -> Attempt | None:
    return next((a for a in facts.attempts if a.outcome == "failed"), None)


def _failed(facts: Explanation, row: RegistryRow, now: datetime) -> tuple[str, str]:
    what = f"{facts.replicable_name} {facts.model_record_id}"
    retry = _retry_phrase(row.retry_at, now)
    failure = row.last_sync_failure or "no reason recorded"
    attempt = _last_failure(facts)
    error_class = attempt.error_class if attempt is not None else None
    resync = f"`geosync resync {facts.replicable_name} --id {facts.model_record_id}`"
    if row.missing_on_primary:
        return (
            f"Sync of {what} failed: the primary has the record but not its data ({failure});"
            f" {retry}.",
            "Restore the data on the primary (the source of truth); retries back off to every"
            f" 4 hours, and {resync} retries at once.",
        )
    if row.checksum_mismatch or error_class == "checksum_mismatch":
        local = row.verification_checksum_mismatched
        checksums = f" (this copy {local}, primary {facts.primary_checksum})" if local else ""
        return (
            f"The copy of {what} did not match the primary's checksum{checksums}; it is"
            f" downloaded again: {retry}.",
            "If the mismatch comes back, the primary's data changed without an `updated` event"
            " or a storage corrupts data: re-verify on the primary"
            f" (`geosync reverify {facts.replicable_name} --id {facts.model_record_id}` there).",
        )
    if error_class == "auth":
        step = (
            "Check that every site uses the primary's secret_key_base, that this node is"
            " enabled and that the clocks agree (`geosync check`)."
        )
    elif error_class == "config":
        step = "Fix the configuration the error names (`geosync check` lists problems)."
    elif error_class == PERMANENT:
        step = f"{_permanent_step(failure)} Then retry now with {resync}."
    elif "object storage" in failure:
        step = (
            "The object store was out of reach or failed; this retries by itself with a growing"
            " backoff. If it keeps failing, check the store's endpoint and health (`geosync"
            f" check`), or retry now with {resync}."
        )
    else:
        step = (
            "Transient errors retry by themselves with a growing backoff; if it keeps failing,"
            f" check the connection to the primary (`geosync check`), or retry now with {resync}."
        )
    label = f" ({error_class})" if error_class else ""
    return (
        f"Sync of {what} failed{label} after {row.retry_count} attempt(s): {failure}; {retry}.",
        step,
    )


#: What to fix for each permanent error, found by what its message says (`geosync.errors`).
_PERMANENT_STEPS = (
    (
        ("(unsafe_path)", "Unsafe path"),
        "Retrying will not help: the item's path leaves its storage (absolute, `..`, or a"
        " symlink out of the storage). Fix the record's path, or replace the symlink on the"
        " primary with the file itself.",
    ),
    (
        ("(not_a_file)",),
        "Retrying will not help: on the primary the item's path is not a regular file (a"
        " directory, a device, a FIFO). Put the file itself there.",
    ),
    (
        ("(unreadable)",),
        "The primary cannot read the item's file: fix its permissions on the primary.",
    ),
    (
        ("refused access",),
        "This site's object storage refuses the request: fix the storage's credentials"
        " (`access_key_id`, `secret_access_key`, or the AWS environment) or the bucket policy;"
        " `geosync check` says whether each object storage answers.",
    ),
    (
        ("No space left",),
        "This secondary's storage is full: free space on it (or grow it); syncs of other items"
        " fail the same way until then.",
    ),
    (
        ("does not know this record", "no longer exists"),
        "The record is gone on the primary: nothing to do, its deletion removes this row.",
    ),
)


def _permanent_step(failure: str) -> str:
    for marks, step in _PERMANENT_STEPS:
        if any(mark in failure for mark in marks):
            return step
    return "Retrying will not help by itself: fix the cause the error names."


def _synced(
    facts: Explanation, row: RegistryRow, now: datetime, scrub_period: timedelta | None
) -> tuple[str, str]:
    what = f"{facts.replicable_name} {facts.model_record_id}"
    if row.missing_on_primary:
        return (
            f"{what} is synced, but the primary has no data for it (missing on the primary).",
            "Restore it on the primary and publish an update; the secondary follows.",
        )
    verification = row.verification
    verified_at = row.verified_at
    if (
        verification == VerificationState.SUCCEEDED
        and scrub_period is not None
        and verified_at is not None
        and now - verified_at > scrub_period
    ):
        return (
            f"{what} is synced; its last verification ({_at(verified_at)}) is older than the"
            f" scrub period ({_duration(scrub_period)}), so it no longer counts as verified.",
            "Make sure `geosync worker` runs on this secondary and the scrub's rates"
            " (`scrub_items_per_second`, `scrub_bytes_per_second`) suit the data; or verify it"
            f" now: `geosync reverify {facts.replicable_name} --id {facts.model_record_id}`.",
        )
    if verification == VerificationState.SUCCEEDED:
        return (
            f"{what} is synced and verified: its checksum matches the primary's"
            f" (verified {_at(row.verified_at)}).",
            "Nothing to do.",
        )
    if verification in (VerificationState.PENDING, VerificationState.STARTED):
        interrupted = _interrupted(facts, "verification")
        again = (
            " again (the last one was interrupted: its worker stopped)"
            if interrupted is not None and verification == VerificationState.PENDING
            else ""
        )
        return (
            f"{what} is synced; its verification against the primary's checksum is"
            f" {verification.name.lower()}{again}.",
            "Wait: the verification workers check it shortly.",
        )
    if verification == VerificationState.FAILED:
        return (
            f"{what} is synced, but its verification failed: {row.verification_failure};"
            f" {_retry_phrase(row.verification_retry_at, now)}.",
            "It is re-verified automatically; if it keeps failing, resync it.",
        )
    if facts.primary_checksum is None:
        state = facts.primary_verification_state or "not started"
        return (
            f"{what} is synced but not verified: the primary has no checksum for it yet"
            f" (primary verification: {state}).",
            "Wait for the primary's verification (its worker must run); this copy is verified"
            " when the primary publishes the checksum.",
        )
    return (
        f"{what} is synced; it has not been verified against the primary's checksum yet.",
        f"Verify it now: `geosync reverify {facts.replicable_name} --id"
        f" {facts.model_record_id}` on this secondary.",
    )


def _retry_phrase(retry_at: datetime | None, now: datetime) -> str:
    if retry_at is None:
        return "no retry is scheduled"
    if retry_at <= now:
        return "the retry is due now (a worker takes it when capacity is free)"
    return f"next retry at {_at(retry_at)} (in {_duration(retry_at - now)})"


def _duration(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _at(moment: datetime | None) -> str:
    return moment.isoformat(timespec="seconds") if moment is not None else "an unknown time"
