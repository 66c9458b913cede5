"""`geosync demo`: a primary and a secondary on this machine, replicating sample data live.

Both sites run as real processes (web server and worker each) on free loopback ports with
embedded SQLite; the demo process plays the application, seeds data, shows progress and checks
that the secondary ends up holding every replicable, byte for byte.
"""

from __future__ import annotations

import json
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

from geosync.app import Geo
from geosync.auth import create_admin_token
from geosync.db.schema import upgrade
from geosync.demo.models import Base
from geosync.demo.seed import Seeder
from geosync.errors import GeoError
from geosync.nodes import NodeStore
from geosync.settings import Settings
from geosync.testing.servers import free_port

if TYPE_CHECKING:
    from geosync.demo.object_storage import DemoBuckets
    from geosync.demo.progress import DemoDisplay
    from geosync.demo.topology import Topology

REPLICATORS = "geosync.demo.replicators"
STOP_GRACE = 10.0
#: Seconds a site's web server may take to start listening.
SERVE_TIMEOUT = 60.0


@dataclass
class DemoOptions:
    """What `geosync demo` was asked to do."""

    directory: Path | None = None
    blobs: int = 200
    repos: int = 10
    churn: bool = False
    churn_seconds: float = 15.0
    exit_when_synced: bool = False
    timeout: float = 300.0
    as_json: bool = False
    seed: int | None = None
    #: Keep a scratch directory at exit (a `--dir` is always kept).
    keep: bool = False
    #: Production mode: PostgreSQL clusters (a primary, its streaming standby, a tracking
    #: database), two web processes per site and three workers on the secondary.
    postgres: bool = False
    #: The sites' blobs in buckets of an S3 server (moto's) the demo runs on loopback.
    object_storage: bool = False


@dataclass(frozen=True)
class DemoDatabases:
    """Where the demo's sites keep their databases: the primary's main database, the
    secondary's read-only view of it (the same SQLite file, or a streaming standby), and the
    secondary's tracking database. `replayed` blocks until the secondary's view has what the
    primary wrote so far."""

    primary_main: str
    secondary_main: str
    tracking: str
    replayed: Callable[[], None] = lambda: None

    @classmethod
    def sqlite(cls, root: Path) -> DemoDatabases:
        """The embedded default: SQLite files under `root`."""
        main = f"sqlite:///{root / 'primary' / 'main.db'}"
        return cls(main, main, f"sqlite:///{root / 'secondary' / 'tracking.db'}")


@dataclass
class Site:
    """One demo site: its config file, settings and running processes."""

    name: str
    root: Path
    port: int
    settings: Settings
    config: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    #: `geosync serve --processes` of this site.
    web_processes: int = 1
    #: `geosync worker` processes of this site.
    workers: int = 1

    @property
    def url(self) -> str:
        """The site's base URL."""
        return f"http://127.0.0.1:{self.port}/"

    def start(self, logs: Path) -> None:
        """Start the site's web server and workers as child processes (logs: `<site>-serve.log`,
        `<site>-worker.log`, `<site>-worker-2.log`, ...)."""
        serve = ["serve", "--port", str(self.port), "--processes", str(self.web_processes)]
        self.processes.append(self._start(logs / f"{self.name}-serve.log", serve))
        for n in range(1, self.workers + 1):
            self.processes.append(self._start(self.worker_log(logs, n), ["worker"]))

    def worker_log(self, logs: Path, n: int) -> Path:
        """The log file of the site's `n`-th worker (from 1)."""
        return logs / (f"{self.name}-worker.log" if n == 1 else f"{self.name}-worker-{n}.log")

    def worker_processes(self) -> list[subprocess.Popen[bytes]]:
        """The site's `geosync worker` processes, in start order."""
        return [p for p in self.processes if _command_of(p) == "worker"]

    def _start(self, log: Path, command: list[str]) -> subprocess.Popen[bytes]:
        with log.open("ab") as log_file:
            return subprocess.Popen(
                [sys.executable, "-m", "geosync", "--config", str(self.config), *command],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def stop(self) -> None:
        """SIGTERM the processes, then SIGKILL whatever is still running after a grace period."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for process in self.processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def wait_serving(self, timeout: float = SERVE_TIMEOUT) -> None:
        """Wait until the site's web server takes connections: a secondary started before its
        primary listens fails every first sync and waits out the retry backoff."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise GeoError(
                        f"the {self.name} site's web server did not listen within {timeout:.0f}"
                        f" s; see the logs under {self.root.parent / 'logs'}"
                    ) from None
                time.sleep(0.05)

    def check_alive(self) -> None:
        """Fail loudly if a process of this site died."""
        for process in self.processes:
            if process.poll() is not None:
                raise GeoError(
                    f"the {self.name} site's {_command_of(process)} process exited with"
                    f" {process.returncode}; see the logs under {self.root.parent / 'logs'}"
                )


def _command_of(process: subprocess.Popen[bytes]) -> str:
    args = process.args
    return str(args[5]) if isinstance(args, list) and len(args) > 5 else "child"


def _site(
    root: Path,
    name: str,
    secret: str,
    main: str,
    tracking: str | None,
    extra: dict[str, Any],
    buckets: DemoBuckets | None = None,
) -> Site:
    base = root / name
    storages: dict[str, Any] = {"uploads": base / "uploads", "packages": base / "packages"}
    for path in storages.values():
        path.mkdir(parents=True, exist_ok=True)
    if buckets is not None:
        storages = dict(buckets.storages(name))
    port = free_port()
    settings = Settings.load(
        node_name=name,
        main_database_url=main,
        tracking_database_url=tracking,
        blob_storages=storages,
        repository_storage_root=base / "repositories",
        internal_url=f"http://127.0.0.1:{port}/",
        secret_key_base=secret,
        replicators=REPLICATORS,
        **{"poll_interval": 0.5, **extra},
    )
    config = base / "geosync.toml"
    config.write_text(config_text(settings), encoding="utf-8")
    config.chmod(0o600)
    return Site(name, base, port, settings, config)


def config_text(settings: Settings) -> str:
    """The TOML config of a site, with durations in whole seconds: the form both the file and
    the `GEOSYNC_*` variables read (`to_toml` writes a timedelta's `str`)."""
    lines = []
    for line in settings.to_toml().splitlines():
        key, sep, _value = line.partition(" = ")
        value = getattr(settings, key, None) if sep and not line.startswith(" ") else None
        if isinstance(value, timedelta):
            line = f"{key} = {int(value.total_seconds())}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def prepare(
    root: Path,
    databases: DemoDatabases | None = None,
    node: dict[str, Any] | None = None,
    buckets: DemoBuckets | None = None,
    **settings: Any,
) -> tuple[Site, Site]:
    """Create both sites' settings, databases and nodes under `root` (SQLite files unless
    `databases` says otherwise; blobs in directories unless `buckets` gives each site its
    bucket); `node` sets the secondary node's fields (capacities, say), `settings` both sites'
    settings."""
    secret = secrets.token_urlsafe(32)
    for name in ("primary", "secondary"):
        (root / name).mkdir(parents=True, exist_ok=True)
    where = databases or DemoDatabases.sqlite(root)
    primary = _site(root, "primary", secret, where.primary_main, None, settings, buckets)
    secondary = _site(
        root, "secondary", secret, where.secondary_main, where.tracking, settings, buckets
    )
    geo = Geo(primary.settings)
    Base.metadata.create_all(geo.main_engine)
    upgrade(geo)
    with geo.main() as conn:
        store = NodeStore(geo, conn)
        store.add("primary", primary.url, primary=True)
        store.add("secondary", secondary.url, **(node or {}))
    geo.dispose()
    where.replayed()
    secondary_geo = Geo(secondary.settings)
    upgrade(secondary_geo)
    secondary_geo.dispose()
    return primary, secondary


def copies_identical(primary: Geo, secondary: Geo) -> list[str]:
    """Every replicable whose secondary copy differs from the primary's (empty when all match)."""
    problems: list[str] = []
    with primary.session() as session:
        for replicator_class in primary.catalog:
            for record in session.query(replicator_class.model).all():
                here = replicator_class(record, geo=primary)
                there = replicator_class(record, geo=secondary)
                try:  # each strategy's own checksum of each site's copy
                    same = here.checksum() == there.checksum()
                except (GeoError, OSError):
                    same = False
                if not same:
                    problems.append(f"{replicator_class.replicable_name} {record.id}")
    return problems


class Churn(threading.Thread):
    """Keeps creating, updating and deleting replicables on the primary for a while."""

    def __init__(self, seeder: Seeder, seconds: float | None, repos: bool) -> None:
        super().__init__(name="demo-churn", daemon=True)
        self.seeder = seeder
        self.deadline = time.monotonic() + seconds if seconds else None
        self.repos = repos
        self.stopped = threading.Event()
        self.operations = 0

    def run(self) -> None:
        """Perform a random operation about five times a second."""
        s = self.seeder
        weighted: list[tuple[Callable[[], object], int]] = [
            (s.create_blob, 4),
            (s.update_package, 3),
            (s.delete_blob, 2),
        ]
        if self.repos:
            weighted += [
                (s.push_to_repository, 3),
                (s.create_repository, 1),
                (s.delete_repository, 1),
            ]
        actions, weights = zip(*weighted, strict=True)
        while not self.stopped.wait(0.2):
            if self.deadline is not None and time.monotonic() > self.deadline:
                break
            s.rng.choices(actions, weights)[0]()
            self.operations += 1
        self.stopped.set()


def _interrupt(signum: int, frame: FrameType | None) -> NoReturn:
    """SIGTERM stops the demo as Ctrl-C does: both sites stopped, the scratch removed."""
    raise KeyboardInterrupt


@contextmanager
def _uninterrupted() -> Iterator[None]:
    """Ignore Ctrl-C and SIGTERM while the demo stops its sites and cleans up (bounded by
    `STOP_GRACE`): a second signal must not leave children running or the scratch behind."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _directory(options: DemoOptions) -> tuple[Path, bool]:
    """The demo's directory, and whether it is kept at exit (a `--dir` always is)."""
    if options.directory is None:
        return Path(tempfile.mkdtemp(prefix="geosync-demo-")).resolve(), options.keep
    root = options.directory.resolve()
    if root.exists() and any(root.iterdir()):
        raise GeoError(f"demo directory {root} is not empty: choose another with --dir")
    return root, True


def run_demo(options: DemoOptions) -> int:
    """Run the demo; returns the process exit code. A scratch directory is removed at exit."""
    from geosync.demo.progress import DemoDisplay
    from geosync.demo.topology import postgres_missing

    missing = postgres_missing() if options.postgres else None
    if missing is not None:
        raise GeoError(f"geosync demo --postgres: {missing}")
    if options.object_storage:
        from geosync.demo.object_storage import object_storage_missing

        if (missing := object_storage_missing()) is not None:
            raise GeoError(f"geosync demo --object-storage: {missing}")
    root, keep = _directory(options)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    display = DemoDisplay(quiet=options.as_json)
    code = 1
    try:
        with display:
            kept = "kept at exit" if keep else "removed at exit; --keep keeps it"
            display.say(f"geosync demo: a primary and a secondary in {root} ({kept})")
            code = _run(root, options, display)
            return code
    except KeyboardInterrupt:
        code = 130
        return code
    finally:
        with _uninterrupted():
            _leave(root, keep, code, display)
        signal.signal(signal.SIGTERM, previous)


def _leave(root: Path, keep: bool, code: int, display: DemoDisplay) -> None:
    """Say where the demo's data is, or remove the scratch directory."""
    if keep:
        display.say(f"demo data and logs kept in {root}")
        return
    shutil.rmtree(root, ignore_errors=True)
    if code not in (0, 130):
        display.say("removed the demo's directory; run with --keep to keep its logs")


def _run(root: Path, options: DemoOptions, display: DemoDisplay) -> int:
    """Prepare the topology, then run it; its processes (and clusters) are stopped however it
    ends, with Ctrl-C ignored meanwhile."""
    from geosync.demo.topology import topology

    stack = ExitStack()
    try:
        what = "PostgreSQL clusters and databases" if options.postgres else "the databases"
        with display.step(f"preparing {what}"):
            built = stack.enter_context(
                topology(root, postgres=options.postgres, object_storage=options.object_storage)
            )
        if built.buckets is not None:
            display.say(
                f"blobs in object storage: an S3 server (moto) at {built.buckets.endpoint},"
                f" buckets {built.buckets.bucket('primary')} and"
                f" {built.buckets.bucket('secondary')}"
            )
        return _run_sites(built, options, display)
    finally:
        with _uninterrupted():
            stack.close()


def _run_sites(built: Topology, options: DemoOptions, display: DemoDisplay) -> int:
    """Start both sites, seed, churn, watch until the secondary is complete."""
    from geosync.demo.progress import watch

    primary, secondary = built.sites
    primary_geo, secondary_geo = built.geo(primary), built.geo(secondary)
    seeder = Seeder(primary_geo, random.Random(options.seed))
    churn: Churn | None = None
    try:
        for site in built.sites:  # the primary first, listening before the secondary asks it
            with display.step(f"starting the {site.name}"):
                site.start(built.logs)
                site.wait_serving()
        display.say(access_text(primary, secondary, admin_token(primary_geo)))
        if built.clusters is not None:
            display.say(topology_text(built))
        _seed(seeder, options, display)
        if options.churn:
            seconds = options.churn_seconds if options.exit_when_synced else None
            churn = Churn(seeder, seconds, repos=options.repos > 0)
            churn.start()
        outcome = watch(primary_geo, secondary_geo, built.sites, churn, options, display)
        display.finish()
        if options.as_json:
            sys.stdout.write(json.dumps(outcome.report, indent=2, sort_keys=True) + "\n")
        else:
            display.say(outcome.message)
        return outcome.exit_code
    except KeyboardInterrupt:
        display.say("interrupted: stopping both sites")
        raise
    finally:
        if churn is not None:  # no change half made on the primary while it stops
            with _uninterrupted():
                churn.stopped.set()
                churn.join(STOP_GRACE)


def topology_text(built: Topology) -> str:
    """The lines that say where the production topology's databases and processes are."""
    clusters = built.clusters
    if clusters is None:
        return "embedded topology (SQLite)"
    return "\n".join(
        [
            "production topology (PostgreSQL):",
            f"  primary main database    {clusters.pair.primary.url('geosync_main')}",
            f"  standby of it            {clusters.pair.standby.url('geosync_main')}"
            "  (the secondary's main database, streaming replication)",
            f"  tracking database        {clusters.tracking.url('geosync_tracking')}",
            f"  web processes per site   {built.primary.web_processes}",
            f"  secondary workers        {built.secondary.workers}",
        ]
    )


def _seed(seeder: Seeder, options: DemoOptions, display: DemoDisplay) -> None:
    """Create the demo's initial blobs and repositories, counting them on the display."""
    if options.blobs:
        one_more = display.counter("seeding blobs", options.blobs)
        for _ in range(options.blobs):
            seeder.create_blob()
            one_more()
    if options.repos:
        one_more = display.counter("seeding repositories", options.repos)
        for _ in range(options.repos):
            seeder.create_repository()
            one_more()


def admin_token(geo: Geo) -> str:
    """A new admin token for the demo's REST API and admin UI (stored hashed in the primary's
    database, which the secondary reads too)."""
    with geo.main() as conn:
        return create_admin_token(conn, "geosync demo", geo.clock.now())


def geosync_command() -> str:
    """How to run `geosync` from here: this interpreter's console script (relative to the
    working directory when inside it, e.g. `.venv/bin/geosync`), else `python -m geosync`."""
    script = Path(sys.executable).parent / "geosync"
    if not script.is_file():
        return f"{sys.executable} -m geosync"
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script)


def access_text(primary: Site, secondary: Site, token: str) -> str:
    """The lines that tell a user how to look at the running sites."""
    command = geosync_command()
    return "\n".join(
        [
            "both sites are up:",
            f"  primary    {primary.url}  config {primary.config}",
            f"  secondary  {secondary.url}  config {secondary.config}",
            f"  admin token (REST API of both sites): {token}",
            "open the admin UI and sign in with that token:",
            f"  {secondary.url}admin/geo  (secondary)",
            f"  {primary.url}admin/geo  (primary)",
            "try:",
            f'  curl -H "PRIVATE-TOKEN: {token}" {primary.url}api/v4/geo_nodes',
            f"  {command} --config {secondary.config} status",
            f"  {command} --config {secondary.config} registries uploads",
            f"  {command} --config {primary.config} check",
        ]
    )


def node_report(geo: Geo) -> dict[str, Any]:
    """One node's status with GitLab's field names."""
    from geosync.status import compute_status

    status = compute_status(geo)
    return status.for_api()


__all__ = ["DemoOptions", "run_demo"]
