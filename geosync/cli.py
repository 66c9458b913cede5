"""The `geosync` command line (Typer + Rich).

Every option is also a `GEOSYNC_*` environment variable (resolved by `Settings`). A user mistake
is one clear line on stderr and exit code 1, never a traceback. `--config`/`-c` goes before the
subcommand or after it (`geosync status -c site.toml`); `GEOSYNC_CONFIG` works too.
"""

from __future__ import annotations

import functools
import inspect
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy import exc as sa_exc

from geosync import __version__
from geosync.app import Geo
from geosync.db.engines import error_line
from geosync.errors import GeoError
from geosync.nodes import NODE_SETTINGS, NodeSetting
from geosync.settings import Settings

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML settings file.", envvar="GEOSYNC_CONFIG"),
]
#: The same option after a subcommand (`geosync status -c x.toml`); it beats the one before.
SubcommandConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML settings file.", allow_from_autoenv=False),
]
#: Commands that read no settings, so take no `--config` of their own.
WITHOUT_CONFIG = frozenset({"demo"})


class State:
    """What the options resolved: the config file path, for commands to load lazily."""

    config: Path | None = None


class GeoTyper(typer.Typer):
    """A Typer whose every command also accepts `--config`/`-c` after its name, so the option
    works wherever a user puts it; the root callback takes it before the subcommand."""

    def command(  # type: ignore[override]
        self, name: str | None = None, **kwargs: Any
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Register a command as Typer does, with the shared `--config` option added."""
        register = super().command(name, **kwargs)

        def decorator(function: Callable[..., Any]) -> Callable[..., Any]:
            if name in WITHOUT_CONFIG:
                return register(function)
            register(_accepting_config(function))
            return function

        return decorator


def _accepting_config(function: Callable[..., Any]) -> Callable[..., Any]:
    """`function` with a keyword `config` option that sets `State.config` when given."""
    signature = inspect.signature(function, eval_str=True)
    if "config" in signature.parameters:
        return function

    @functools.wraps(function)
    def wrapper(*args: Any, config: Path | None = None, **kwargs: Any) -> Any:
        if config is not None:
            State.config = config
        return function(*args, **kwargs)

    option = inspect.Parameter(
        "config", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=SubcommandConfigOption
    )
    wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*signature.parameters.values(), option]
    )
    wrapper.__annotations__ = {
        **{n: p.annotation for n, p in signature.parameters.items()},
        "config": SubcommandConfigOption,
    }
    return wrapper


def _typer(**options: Any) -> GeoTyper:
    return GeoTyper(no_args_is_help=True, **options)


app = _typer(
    name="geosync",
    help="Multi-site replication for Python applications.",
    pretty_exceptions_enable=False,
    add_completion=False,
)
db_app = _typer(help="Database schema.")
node_app = _typer(help="Sites (nodes) of this deployment.")
flags_app = _typer(help="Per-type replication feature flags.")
jobs_app = _typer(help="Bulk resync and reverify jobs of this site.")
app.add_typer(db_app, name="db")
app.add_typer(node_app, name="node")
app.add_typer(flags_app, name="flags")
app.add_typer(jobs_app, name="jobs")

console = Console()
err_console = Console(stderr=True)
T = TypeVar("T")


def _print_version(value: bool) -> None:
    if value:
        sys.stdout.write(f"geosync {__version__}\n")
        raise typer.Exit()


@app.callback()
def root(
    config: ConfigOption = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            allow_from_autoenv=False,  # GEOSYNC_VERSION may well mean something else
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    """geosync: replicate blobs, git repositories and databases to secondary sites."""
    State.config = config


def load_settings() -> Settings:
    """The settings of this invocation."""
    return Settings.load(State.config)


def load_geo() -> Geo:
    """The site of this invocation, with its catalog."""
    return Geo(load_settings())


def open_engines(geo: Geo) -> None:
    """Create the site's engines now, so that a database setting geosync cannot use is one line
    before a service starts, not an error inside it (connecting is left to the service)."""
    _ = geo.main_engine
    if geo.has_tracking_database:
        _ = geo.tracking_engine


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn geosync's errors into one red line and exit code 1."""
    try:
        yield
    except GeoError as exc:
        _print_error(str(exc))
        raise typer.Exit(1) from None
    except (sa_exc.OperationalError, sa_exc.ProgrammingError) as exc:
        # Unreachable database, missing schema: the operator's to fix, not a crash.
        reason = error_line(exc)
        _print_error(f"database: {reason} (is it reachable, and has `geosync db upgrade` run?)")
        raise typer.Exit(1) from None
    except sa_exc.SQLAlchemyError as exc:  # any other database failure: still one line
        _print_error(f"database: {error_line(exc)}")
        raise typer.Exit(1) from None


def _print_error(message: str) -> None:
    err_console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)


def run(action: Callable[[], T]) -> T:
    """Run `action` with user errors reported cleanly."""
    with user_errors():
        return action()


def print_json(data: Any) -> None:
    """Machine-readable output on stdout."""
    sys.stdout.write(json.dumps(data, indent=2, default=str, sort_keys=True) + "\n")


# -- db --------------------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate this site's databases (framework and derived tables)."""
    from geosync.db.schema import upgrade

    def action() -> None:
        report = upgrade(load_geo())
        for database, revision in report.applied.items():
            note = f"upgraded to {revision}" if revision else "already current"
            console.print(f"{database} database: {note}")
        for table in report.created_tables:
            console.print(f"created table {table}")
        for column in report.created_columns:
            console.print(f"added column {column}")
        for index in report.created_indexes:
            console.print(f"created index {index}")

    run(action)


# -- nodes ------------------------------------------------------------------------------------

NODE_COLUMNS = ("id", "name", "url", "primary", "enabled", "selective_sync_type")


def _setting_option(setting: NodeSetting) -> Any:
    """The CLI option of one node setting; lists are comma-separated."""
    switch = "--" + setting.name.replace("_", "-")
    if setting.kind == "flag":
        off = "--" + (setting.off_switch or "no-" + setting.name.replace("_", "-"))
        return Annotated[bool | None, typer.Option(f"{switch}/{off}", help=setting.help)]
    kind = int if setting.kind == "count" else str
    return Annotated[kind | None, typer.Option(switch, help=setting.help)]


def _node_settings(options: dict[str, Any]) -> dict[str, Any]:
    """The settings an operator gave, in `NodeStore`'s terms."""
    settings = {k: v for k, v in options.items() if v is not None}
    if settings.get("selective_sync_type") in ("", "none"):
        settings["selective_sync_type"] = None
    for setting in NODE_SETTINGS:
        if setting.kind in ("ids", "names") and setting.name in settings:
            parts = settings[setting.name].split(",")
            settings[setting.name] = [part for part in parts if part.strip()]
    return settings


def _with_setting_options(command: Callable[..., None]) -> Callable[..., None]:
    """`command` with one option per node setting, given to it as its `settings` dict."""
    signature = inspect.signature(command, eval_str=True)
    own = [p for name, p in signature.parameters.items() if name != "settings"]
    options = [
        inspect.Parameter(
            s.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=_setting_option(s)
        )
        for s in NODE_SETTINGS
    ]

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> None:
        given = {s.name: kwargs.pop(s.name) for s in NODE_SETTINGS}
        command(**kwargs, settings=_node_settings(given))

    wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*own, *options]
    )
    wrapper.__annotations__ = {p.name: p.annotation for p in (*own, *options)}
    return wrapper


@node_app.command("add")
@_with_setting_options
def node_add(
    name: str,
    url: str,
    primary: Annotated[bool, typer.Option("--primary", help="This node is the primary.")] = False,
    *,
    settings: dict[str, Any],
) -> None:
    """Register a node (run on the primary)."""
    from geosync.nodes import NodeStore

    def action() -> None:
        geo = load_geo()
        with geo.main() as conn:
            node = NodeStore(geo, conn).add(name, url, primary=primary, **settings)
        role = "primary" if node.primary else "secondary"
        console.print(f"added {role} node {node.name} (id {node.id}) at {node.url}")

    run(action)


@node_app.command("list")
def node_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List every node."""
    from geosync.nodes import NodeStore

    def action() -> None:
        geo = load_geo()
        with geo.main_engine.connect() as conn:
            nodes = NodeStore(geo, conn).list()
        if as_json:
            print_json([n.as_dict() for n in nodes])
            return
        table = Table(*NODE_COLUMNS)
        for node in nodes:
            table.add_row(*(str(getattr(node, column)) for column in NODE_COLUMNS))
        console.print(table)

    run(action)


@node_app.command("update")
@_with_setting_options
def node_update(
    node: Annotated[str, typer.Argument(help="Node name or id.")],
    name: Annotated[str | None, typer.Option()] = None,
    url: Annotated[str | None, typer.Option()] = None,
    *,
    settings: dict[str, Any],
) -> None:
    """Change a node's settings (run on the primary)."""
    from geosync.nodes import NodeStore

    def action() -> None:
        geo = load_geo()
        changes = {**settings, **{k: v for k, v in (("name", name), ("url", url)) if v is not None}}
        with geo.main() as conn:
            store = NodeStore(geo, conn)
            found = store.by_name_or_id(node)
            updated = store.update(found.id, **changes)
            left = store.secondary_count(enabled_only=True)
        console.print(f"updated node {updated.name} (id {updated.id})")
        if found.secondary and found.enabled and not updated.enabled and left == 0:
            _warn_no_secondary()

    run(action)


@node_app.command("remove")
def node_remove(node: Annotated[str, typer.Argument(help="Node name or id.")]) -> None:
    """Remove a node (run on the primary)."""
    from geosync.nodes import NodeStore

    def action() -> None:
        geo = load_geo()
        with geo.main() as conn:
            store = NodeStore(geo, conn)
            found = store.by_name_or_id(node)
            store.remove(found.id)
            left = store.secondary_count(enabled_only=True)
        console.print(f"removed node {found.name}")
        if found.enabled and left == 0:
            _warn_no_secondary()

    run(action)


@node_app.command("promote")
def node_promote(node: Annotated[str, typer.Argument(help="Node name or id.")]) -> None:
    """Move the primary role in the node registry to another node (run on the primary).

    Only the registration changes: no database is promoted and no process is reconfigured, so
    this is not a failover; use it to retire a primary's record once another site is primary.
    """
    from geosync.nodes import NodeStore

    def action() -> None:
        geo = load_geo()
        with geo.main() as conn:
            store = NodeStore(geo, conn)
            promoted = store.promote(store.by_name_or_id(node).id)
        console.print(f"promoted node {promoted.name} (id {promoted.id}) to primary")

    run(action)


def _warn_no_secondary() -> None:
    # GitLab allows it; the operator may be retiring the last secondary on purpose.
    err_console.print(
        "[yellow]warning:[/yellow] no enabled secondary is left: nothing replicates the primary",
        highlight=False,
        soft_wrap=True,
    )


# -- flags ------------------------------------------------------------------------------------


@flags_app.command("list")
def flags_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Show every replication flag and whether it is on."""
    from geosync.flags import list_flags

    def action() -> None:
        geo = load_geo()
        with geo.main_engine.connect() as conn:
            flags = list_flags(conn, geo.catalog)
        if as_json:
            print_json(
                [{"name": f.name, "enabled": f.enabled, "default": f.default} for f in flags]
            )
            return
        table = Table("flag", "enabled", "default")
        for flag in flags:
            table.add_row(flag.name, str(flag.enabled).lower(), str(flag.default).lower())
        console.print(table)

    run(action)


def _set_flag(name: str, enabled: bool) -> None:
    from geosync.flags import set_flag

    def action() -> None:
        geo = load_geo()
        with geo.main() as conn:
            flag = set_flag(conn, geo.catalog, name, enabled, geo.clock.now())
        console.print(f"{flag.name} is now {'enabled' if flag.enabled else 'disabled'}")

    run(action)


@flags_app.command("enable")
def flags_enable(name: str) -> None:
    """Turn a replication flag on (run on the primary)."""
    _set_flag(name, True)


@flags_app.command("disable")
def flags_disable(name: str) -> None:
    """Turn a replication flag off (run on the primary)."""
    _set_flag(name, False)


# -- admin tokens -----------------------------------------------------------------------------


@app.command("admin-token")
def admin_token(
    action_name: Annotated[str, typer.Argument(metavar="create", help="Only 'create' for now.")],
    name: Annotated[str, typer.Option(help="What the token is for.")] = "admin",
    non_admin: Annotated[
        bool, typer.Option("--non-admin", help="A token that may not use admin APIs.")
    ] = False,
) -> None:
    """Create an admin API token; it is printed once and stored hashed."""
    from geosync.auth import create_admin_token

    def action() -> None:
        if action_name != "create":
            raise GeoError(f"unknown admin-token action {action_name!r} (use: create)")
        geo = load_geo()
        with geo.main() as conn:
            token = create_admin_token(conn, name, geo.clock.now(), admin=not non_admin)
        sys.stdout.write(token + "\n")

    run(action)


# -- verification -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Requeue:
    """One kind of operator re-queue (`reverify` or `resync`): its functions and its words."""

    one: Callable[[Geo, Any, int], None]
    action: str
    outcome: str


def _requeue(
    kind: Requeue, name: str, record_id: int | None, all_records: bool, failed: bool, wait: bool
) -> None:
    from geosync.errors import ValidationError

    def action() -> None:
        if (record_id is None) == (not all_records):
            raise ValidationError("give exactly one of --id ID or --all")
        if failed and not all_records:
            raise ValidationError("--failed only goes with --all")
        if wait and not all_records:
            raise ValidationError("--wait only goes with --all")
        geo = load_geo()
        replicator = geo.catalog.get(name)
        if record_id is not None:
            kind.one(geo, replicator, record_id)
            console.print(f"{replicator.replicable_name} {record_id} queued for {kind.outcome}")
            return
        _bulk_requeue(geo, replicator, kind, failed, wait)

    run(action)


def _bulk_requeue(geo: Geo, replicator: Any, kind: Requeue, failed: bool, wait: bool) -> None:
    """`--all`: queue one bulk job; with `wait`, work it here behind a progress bar."""
    from geosync import jobs
    from geosync.states import SyncState, VerificationState

    action = jobs.JobAction(kind.action)
    filters = jobs.JobFilters()
    if failed and action == jobs.JobAction.RESYNC:
        filters = jobs.JobFilters(replication_state=SyncState.FAILED)
    elif failed:
        filters = jobs.JobFilters(verification_state=VerificationState.FAILED)
    job = jobs.create_job(geo, replicator, action, filters, jobs.cli_creator())
    if not wait:
        console.print(
            f"job {job.id} queued: {action} of {job.total}"
            f" {'failed ' if failed else ''}{replicator.replicable_name_plural}"
            f" (follow it with `geosync jobs show {job.id}`)"
        )
        return
    job = _with_progress(geo, f"re-queueing {replicator.replicable_name_plural}", job)
    if job.state != jobs.JobState.DONE:
        reason = f": {job.error}" if job.error else ""
        raise GeoError(f"job {job.id} {job.state} after {job.processed} rows{reason}")
    what = "failed " if failed else ""
    plural = replicator.replicable_name_plural
    console.print(f"{job.processed} {what}{plural} queued for {kind.outcome} (job {job.id})")


def _with_progress(geo: Geo, label: str, job: Any) -> Any:
    """Run `job`'s batches here (beside any worker: the job row keeps them apart) behind a
    progress bar until it ends; returns the job as it ended."""
    from rich.progress import Progress

    from geosync.jobs import run_job_batch

    with Progress(console=err_console, transient=True) as progress:
        task = progress.add_task(label, total=max(job.total, 1))
        while job.state.active:
            job = run_job_batch(geo, job.id)
            progress.update(task, completed=job.processed, total=max(job.total, job.processed))
    return job


NameArgument = Annotated[str, typer.Argument(help="Replicable name, e.g. upload or uploads.")]
IdOption = Annotated[int | None, typer.Option("--id", help="One record's id.")]
AllOption = Annotated[bool, typer.Option("--all", help="Every record of the type.")]
FailedOption = Annotated[bool, typer.Option("--failed", help="With --all: only failed ones.")]
WaitOption = Annotated[
    bool,
    typer.Option("--wait", help="With --all: run the job here with a progress bar until it ends."),
]


@app.command("reverify")
def reverify(
    name: NameArgument,
    record_id: IdOption = None,
    all_records: AllOption = False,
    failed: FailedOption = False,
    wait: WaitOption = False,
) -> None:
    """Queue verification again: the primary's checksums, or this secondary's copies.

    `--all` queues a bulk job (see `geosync jobs`) and returns; `--wait` follows it to its end.
    """
    from geosync import reverification as r

    kind = Requeue(r.reverify_one, "reverify", "verification")
    _requeue(kind, name, record_id, all_records, failed, wait)


@app.command("resync")
def resync(
    name: NameArgument,
    record_id: IdOption = None,
    all_records: AllOption = False,
    failed: FailedOption = False,
    wait: WaitOption = False,
) -> None:
    """Sync again on this secondary: one registry, or all synced (or failed) ones.

    `--all` queues a bulk job (see `geosync jobs`) and returns; `--wait` follows it to its end.
    """
    from geosync import resync as r

    _requeue(Requeue(r.resync_one, "resync", "sync"), name, record_id, all_records, failed, wait)


# -- bulk jobs ------------------------------------------------------------------------------

JOB_COLUMNS = ("id", "type", "action", "state", "progress", "created by", "created", "error")


def _job_row(job: Any) -> list[str]:
    data = job.as_json()
    return [
        str(job.id),
        job.replicable_name,
        data["action"],
        data["state"],
        f"{job.processed}/{job.total}",
        job.created_by or "",
        data["created_at"],
        job.error or "",
    ]


@jobs_app.command("list")
def jobs_list(
    state: Annotated[
        list[str] | None,
        typer.Option(help="Only jobs in this state (repeatable): queued, running, done, ..."),
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many jobs (1 to 1000).")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print the jobs as a JSON list.")] = False,
) -> None:
    """This site's bulk jobs, newest first."""
    from geosync.errors import ValidationError
    from geosync.jobs import JobState, list_jobs

    def action() -> None:
        try:
            states = None if not state else [JobState(s.lower()) for s in state]
        except ValueError:
            choices = ", ".join(JobState)
            raise ValidationError(f"unknown job state in {state} (use: {choices})") from None
        found = list_jobs(load_geo(), states=states, limit=limit)
        if as_json:
            print_json([job.as_json() for job in found])
            return
        table = Table(*JOB_COLUMNS)
        for job in found:
            table.add_row(*(escape(cell) for cell in _job_row(job)))
        console.print(table)

    run(action)


@jobs_app.command("show")
def jobs_show(
    job_id: Annotated[int, typer.Argument(help="The job's id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the job as JSON.")] = False,
) -> None:
    """One bulk job: what it does, its filters and how far it got."""
    from geosync.jobs import get_job

    def action() -> None:
        data = get_job(load_geo(), job_id).as_json()
        if as_json:
            print_json(data)
            return
        for key, value in data.items():
            shown = json.dumps(value) if isinstance(value, dict) else value
            console.print(f"{key}: {escape(str(shown))}", highlight=False)

    run(action)


@jobs_app.command("cancel")
def jobs_cancel(job_id: Annotated[int, typer.Argument(help="The job's id.")]) -> None:
    """Cancel a queued or running job; it stops before its next batch."""
    from geosync.jobs import cancel_job

    def action() -> None:
        job = cancel_job(load_geo(), job_id)
        console.print(f"job {job.id} cancelled after {job.processed} of {job.total} rows")

    run(action)


# -- explain --------------------------------------------------------------------------------


@app.command("explain")
def explain(
    name: Annotated[str, typer.Argument(help="Replicable name, e.g. upload or uploads.")],
    record_id: Annotated[int, typer.Argument(help="The model record's id.")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Why one item is or is not replicated on this secondary, and what to do next."""
    from geosync.explain import explain as explain_item
    from geosync.explain_view import render_explanation

    def action() -> None:
        explanation = explain_item(load_geo(), name, record_id)
        if as_json:
            print_json(explanation.as_dict())
        else:
            render_explanation(explanation, console)

    run(action)


# -- registries -----------------------------------------------------------------------------


@app.command("registries")
def registries(
    name: NameArgument,
    state: Annotated[
        str | None, typer.Option(help="Only this sync state: pending, started, synced, failed.")
    ] = None,
    verification: Annotated[
        str | None,
        typer.Option(
            help="Only this verification state: pending, started, succeeded, failed, disabled."
        ),
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many rows (1 to 1000).")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as a JSON list.")] = False,
) -> None:
    """List one type's registry rows on this secondary, newest (highest id) first."""
    from geosync.registry_view import list_registries, listing_json, listing_table

    def action() -> None:
        listing = list_registries(load_geo(), name, state, verification, limit)
        if as_json:
            print_json(listing_json(listing))
        else:
            console.print(listing_table(listing))

    run(action)


# -- failover -------------------------------------------------------------------------------


@app.command("promote")
def promote(
    plan_only: Annotated[
        bool, typer.Option("--plan", help="Only show what a promotion now would lose.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="With --plan: print it as JSON.")] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Promote even though the plan shows data loss.")
    ] = False,
    planned: Annotated[
        bool,
        typer.Option(
            "--planned",
            help="Make the old primary read-only, wait until the plan is clean, then promote.",
        ),
    ] = False,
    primary_database_url: Annotated[
        str | None,
        typer.Option(help="With --planned: the old primary's main database (superuser)."),
    ] = None,
    timeout: Annotated[
        float, typer.Option(min=1, help="With --planned: give up after this many seconds.")
    ] = 300.0,
) -> None:
    """Make this secondary the primary (failover), or with --plan show what that would lose.

    Refuses, naming the loss, when the plan shows data loss, unless --force. Safe to run again.
    """
    from geosync.promotion import promote as promote_site
    from geosync.promotion_plan import promotion_plan
    from geosync.promotion_view import render_plan

    def action() -> None:
        from geosync.errors import ValidationError

        if as_json and not plan_only:
            raise ValidationError("--json only goes with --plan")
        if primary_database_url is not None and not planned:
            raise ValidationError("--primary-database-url only goes with --planned")
        geo = load_geo()
        if plan_only:
            found = promotion_plan(geo)
            if as_json:
                print_json(found.as_json())
            else:
                render_plan(found, console)
            return

        def progress(found: Any) -> None:
            left = "; ".join(found.losses()) or "nothing"
            err_console.print(f"waiting for a clean plan: {escape(left)}", highlight=False)

        done = promote_site(
            geo,
            force=force,
            planned=planned,
            primary_database_url=primary_database_url,
            timeout=timeout,
            progress=progress,
        )
        for step in done.steps:
            console.print(f"- {escape(step)}", highlight=False, soft_wrap=True)
        console.print("[bold]now:[/bold]")
        for line in done.restart:
            console.print(f"- {escape(line)}", highlight=False, soft_wrap=True)

    run(action)


@app.command("reattach")
def reattach(
    as_json: Annotated[bool, typer.Option("--json", help="Print the counts as JSON.")] = False,
) -> None:
    """Seed this secondary's registries from the copies already here (a former primary brought
    back): copies whose checksum matches the primary's are marked synced without a transfer."""
    from geosync.reattach import reattach as reattach_site

    def action() -> None:
        report = reattach_site(load_geo())
        if as_json:
            print_json(report.as_json())
            return
        for line in report.lines():
            console.print(escape(line), highlight=False, soft_wrap=True)

    run(action)


# -- services ---------------------------------------------------------------------------------


@app.command("serve")
def serve(
    host: Annotated[
        str, typer.Option(envvar="GEOSYNC_HOST", help="Address to bind.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="GEOSYNC_PORT", help="Port to bind.")] = 8080,
    processes: Annotated[
        int,
        typer.Option(
            envvar="GEOSYNC_SERVE_PROCESSES",
            min=1,
            help="Web processes sharing the port (each replaced if it dies).",
        ),
    ] = 1,
) -> None:
    """Run this site's web application (node-to-node API, REST API, metrics)."""
    import socket

    from geosync.allocator import tune_for_streaming
    from geosync.log import configure
    from geosync.web.server import ProcessGroup, listen
    from geosync.web.server import serve as serve_site

    def start(sock: socket.socket | None) -> None:
        geo = load_geo()
        open_engines(geo)
        configure(geo.settings.log_format, geo.settings.log_level)
        tune_for_streaming()
        serve_site(geo, host, port, sock)

    def action() -> int:
        if processes == 1:
            start(None)
            return 0
        settings = load_settings()  # a setting geosync cannot use is one line, before any fork
        configure(settings.log_format, settings.log_level)
        return ProcessGroup(lambda sock: run(lambda: start(sock)), listen(host, port)).run(
            processes
        )

    code = run(action)
    if code:
        raise typer.Exit(code)


@app.command("worker")
def worker(
    metrics_port: Annotated[
        int | None,
        typer.Option(
            envvar="GEOSYNC_METRICS_PORT",
            help="Serve this worker's metrics (sync lag, skipped events) on 127.0.0.1:PORT.",
        ),
    ] = None,
) -> None:
    """Run this site's background loops until SIGTERM or SIGINT."""
    from geosync.allocator import tune_for_streaming
    from geosync.log import configure
    from geosync.metrics import start_metrics_server
    from geosync.worker import run_until_stopped, tune_thread_switching

    def action() -> None:
        geo = load_geo()
        open_engines(geo)
        configure(geo.settings.log_format, geo.settings.log_level)
        tune_for_streaming()
        tune_thread_switching()
        if metrics_port is not None:
            start_metrics_server(geo, metrics_port)
        run_until_stopped(geo)

    run(action)


# -- status and preflight ----------------------------------------------------------------------


@app.command("status")
def status(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Show every node's replication status and health (this site's computed now)."""
    from geosync.status_view import render_status, status_json

    def action() -> None:
        geo = load_geo()
        if as_json:
            print_json(status_json(geo))
        else:
            render_status(geo, console)

    run(action)


@app.command("check")
def check() -> None:
    """Preflight: settings, databases and roles, node registration, clock, git, storages."""
    from geosync.preflight import run_checks

    failures = warnings = 0
    for result in run_checks(load_geo):
        mark = "[green]ok[/green]  " if result.ok else "[red]FAIL[/red]"
        if result.warning:
            mark = "[yellow]warn[/yellow]"
        # One line per result and per fix, however narrow the terminal (or a pipe's 80 columns).
        console.print(
            f"{mark} {result.name}: {escape(result.message)}", highlight=False, soft_wrap=True
        )
        failures += not result.ok
        warnings += result.warning
        if result.fix is not None:
            console.print(f"      fix: {escape(result.fix)}", highlight=False, soft_wrap=True)
    if failures:
        err_console.print(f"[red]{failures} check(s) failed[/red]")
        raise typer.Exit(1)
    console.print(f"all checks passed ({warnings} warning(s))" if warnings else "all checks passed")


@app.command("demo")
def demo(
    directory: Annotated[
        Path | None, typer.Option("--dir", help="Where to put the sites (default: a new temp dir).")
    ] = None,
    blobs: Annotated[int, typer.Option(min=0, help="Blobs to seed, across blob types.")] = 200,
    repos: Annotated[int, typer.Option(min=0, help="Git repositories to seed.")] = 10,
    churn: Annotated[bool, typer.Option(help="Keep creating, updating and deleting.")] = False,
    churn_seconds: Annotated[
        float, typer.Option(min=0, help="How long churn lasts with --exit-when-synced.")
    ] = 15.0,
    exit_when_synced: Annotated[
        bool, typer.Option(help="Exit 0 once the secondary is complete and verified.")
    ] = False,
    timeout: Annotated[float, typer.Option(min=1, help="Give up after this many seconds.")] = 300,
    as_json: Annotated[bool, typer.Option("--json", help="Print final status as JSON.")] = False,
    seed: Annotated[int | None, typer.Option(help="Random seed for reproducible content.")] = None,
    keep: Annotated[
        bool, typer.Option("--keep", help="Keep the temp dir at exit (a --dir is always kept).")
    ] = False,
    postgres: Annotated[
        bool,
        typer.Option(
            "--postgres",
            help="Production topology: PostgreSQL primary, streaming standby and tracking"
            " clusters, two web processes per site, three secondary workers.",
        ),
    ] = False,
    object_storage: Annotated[
        bool,
        typer.Option(
            "--object-storage",
            help="Keep both sites' blobs in buckets of an S3 server (moto) the demo runs on"
            " loopback; needs geosync[s3] and moto[server].",
        ),
    ] = False,
) -> None:
    """Run a primary and a secondary on this machine and replicate sample data live.

    Prints both sites' URLs, config files and an admin token for their REST API.
    """
    from geosync.demo.runner import DemoOptions, run_demo

    options = DemoOptions(
        directory=directory,
        blobs=blobs,
        repos=repos,
        churn=churn,
        churn_seconds=churn_seconds,
        exit_when_synced=exit_when_synced,
        timeout=timeout,
        as_json=as_json,
        seed=seed,
        keep=keep,
        postgres=postgres,
        object_storage=object_storage,
    )
    code = run(lambda: run_demo(options))
    raise typer.Exit(code)


def main() -> None:
    """Console-script entry point; every option also reads GEOSYNC_<COMMAND>_<OPTION>."""
    app(auto_envvar_prefix="GEOSYNC")
