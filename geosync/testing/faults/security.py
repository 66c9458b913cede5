"""Faults of trust: requests to the primary's node-to-node API that must get nothing, and
clocks that disagree between sites.

Bad requests are sent byte for byte as written (`http.client`, which leaves `..` in a path
alone): forged, expired, not-yet-valid, over-long and mis-scoped tokens, a disabled node's token,
and paths that try to leave the storage or the repository with a token valid for exactly that
path. Not one byte of a file may be served to any of them; a valid request is the control.

Clock skew moves the secondary's injected clock against the primary's. Blob tokens live 60 s and
are checked with a 60 s leeway (ARCHITECTURE.md §8): a secondary up to 60 s ahead or 120 s behind
still syncs; beyond that it is refused, says why, and syncs once its clock is right again.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import random
import secrets
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select

from geosync.auth import (
    BLOB_TOKEN_TTL,
    REPOSITORY_TOKEN_TTL,
    request_data,
    sign_request,
)
from geosync.demo.models import Snippet, Upload
from geosync.demo.replicators import UploadReplicator
from geosync.nodes import Node, NodeStore
from geosync.registry import Registry
from geosync.resync import resync_all
from geosync.states import SyncState
from geosync.testing.faults.base import FaultContext, Row
from geosync.testing.faults.harness import (
    KiB,
    Stopwatch,
    add_uploads,
    check_blobs,
    seconds,
    site_pair,
    state_counts,
    wait_until,
)
from geosync.testing.git import create_bare_repository, push_commit
from geosync.testing.sites import SitePair
from geosync.testing.workers import secondary_worker
from geosync.wire import batch_path, repository_base_path, retrieve_path

SECRET = b"geosync-fault-secret-"
LEEWAY = 60


# -- forged tokens and traversal -------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """One kind of request the primary must refuse: its path and how its header is made."""

    name: str
    path: str
    header: Callable[[], str | None]
    method: str = "GET"


@dataclass(frozen=True)
class Signer:
    """Signs node headers as a node would, at the secondary's time."""

    node: Node
    secret: str
    now: Callable[[], datetime]

    def sign(self, path: str, *, ttl: timedelta = BLOB_TOKEN_TTL, shift: float = 0.0) -> str:
        """A header for `path`, issued `shift` seconds from now."""
        issued = self.now() + timedelta(seconds=shift)
        return sign_request(self.node, self.secret, request_data(path), issued, ttl)

    def unsigned(self, path: str) -> str:
        """A header whose token says `alg: none` and carries no signature."""
        now = int(self.now().timestamp())
        claims = {"data": request_data(path), "iat": now, "exp": now + 60}
        parts = [json.dumps({"alg": "none", "typ": "JWT"}), json.dumps(claims)]
        encoded = [base64.urlsafe_b64encode(p.encode()).rstrip(b"=").decode() for p in parts]
        return f"GL-Geo {self.node.access_key}:{encoded[0]}.{encoded[1]}."


def signer(pair: SitePair, node: Node) -> Signer:
    """A signer for `node` with its real secret."""
    secret = node.secret(pair.secondary.settings.secret_key_base.get_secret_value())
    return Signer(node, secret, pair.secondary.clock.now)


@dataclass(frozen=True)
class Targets:
    """What the probes aim at: a served upload, a repository, unsafe uploads, another node."""

    upload: int
    other_upload: int
    snippet: int
    escape: int
    symlink: int
    disabled: Node
    secrets: tuple[bytes, ...]


def plant_targets(pair: SitePair, outside: Path) -> Targets:
    """Files worth stealing: an upload, a repository, a secret outside the storage (reached by
    an upload whose path escapes and one that is a symlink), and a disabled node."""
    marks = tuple(SECRET + secrets.token_hex(8).encode() for _ in range(3))
    storage = pair.primary.settings.blob_storage("uploads")
    outside.mkdir(parents=True)
    (outside / "secret.bin").write_bytes(marks[0] * 64)
    (storage / "ok").mkdir(parents=True, exist_ok=True)
    (storage / "ok/served.bin").write_bytes(marks[1] * 64)
    (storage / "ok/other.bin").write_bytes(marks[1] * 32)
    (storage / "ok/link.bin").symlink_to(outside / "secret.bin")
    escape = os.path.relpath(outside / "secret.bin", storage)
    root = pair.primary.settings.repository_storage_root
    assert root is not None
    with pair.primary.session() as session:
        uploads = [
            Upload(path=p, namespace_id=1, size=0)
            for p in ("ok/served.bin", "ok/other.bin", escape, "ok/link.bin")
        ]
        snippet = Snippet(title="secret", namespace_id=1)
        session.add_all([*uploads, snippet])
        session.flush()
        repo = create_bare_repository(root / snippet.disk_path)
        push_commit(repo, "main", {"secret.txt": marks[2]})
        session.commit()
        ids = [u.id for u in uploads]
        snippet_id = snippet.id
    with pair.primary.main() as conn:
        store = NodeStore(pair.primary, conn)
        disabled = store.add("retired", "http://127.0.0.1:3/")
        store.update(disabled.id, enabled=False)
    return Targets(ids[0], ids[1], snippet_id, ids[2], ids[3], disabled, marks)


def probes(pair: SitePair, targets: Targets) -> list[Probe]:
    """Every kind of request that must get nothing, each aimed at a file that exists."""
    me, retired = signer(pair, pair.secondary_node), signer(pair, targets.disabled)
    forger = Signer(pair.secondary_node, secrets.token_urlsafe(30), pair.secondary.clock.now)
    blob = retrieve_path("upload", targets.upload)
    other = retrieve_path("upload", targets.other_upload)
    batch = batch_path("upload", [targets.upload])
    repo = repository_base_path("snippet", targets.snippet)
    refs = repo + "/info/refs?service=git-upload-pack"
    escape, link = retrieve_path("upload", targets.escape), retrieve_path("upload", targets.symlink)
    traversal = f"/api/v4/geo/retrieve/upload/{targets.upload}/../../../../../../etc/passwd"
    encoded = f"/api/v4/geo/retrieve/upload/{targets.upload}%2f..%2f..%2f..%2fetc%2fpasswd"
    return [
        Probe("no header", blob, lambda: None),
        Probe("malformed header", blob, lambda: "Bearer " + secrets.token_hex(16)),
        Probe("unknown access key", blob, lambda: "GL-Geo nokey:abc.def.ghi"),
        Probe("forged: wrong secret", blob, lambda: forger.sign(blob)),
        Probe("forged: alg none", blob, lambda: me.unsigned(blob)),
        Probe("disabled node's token", blob, lambda: retired.sign(blob)),
        Probe("expired beyond the leeway", blob, lambda: me.sign(blob, shift=-(60 + LEEWAY + 5))),
        Probe("issued in the future", blob, lambda: me.sign(blob, shift=LEEWAY + 30)),
        Probe("lifetime too long", blob, lambda: me.sign(blob, ttl=timedelta(hours=2))),
        Probe("mis-scoped: other item", blob, lambda: me.sign(other)),
        Probe("mis-scoped: blob token on a batch", batch, lambda: me.sign(blob)),
        Probe("mis-scoped: blob token on git", refs, lambda: me.sign(blob)),
        Probe(
            "mis-scoped: git token on a blob", blob, lambda: me.sign(repo, ttl=REPOSITORY_TOKEN_TTL)
        ),
        Probe("traversal: ../ after the id", traversal, lambda: me.sign(traversal)),
        Probe("traversal: encoded %2f..", encoded, lambda: me.sign(encoded)),
        Probe(
            "traversal: ../ in the git path",
            repo + "/../../../../../etc/passwd",
            lambda: me.sign(repo, ttl=REPOSITORY_TOKEN_TTL),
        ),
        Probe(
            "git: dumb HTTP object read",
            repo + "/objects/info/packs",
            lambda: me.sign(repo, ttl=REPOSITORY_TOKEN_TTL),
        ),
        Probe(
            "git: push (receive-pack)",
            repo + "/info/refs?service=git-receive-pack",
            lambda: me.sign(repo, ttl=REPOSITORY_TOKEN_TTL),
        ),
        Probe("record path escapes the storage", escape, lambda: me.sign(escape)),
        Probe("record is a symlink out of the storage", link, lambda: me.sign(link)),
    ]


def raw_request(base: str, probe: Probe) -> tuple[int, bytes]:
    """Send `probe` with its path exactly as written; (status, body)."""
    origin = urlsplit(base)
    conn = http.client.HTTPConnection(origin.hostname or "127.0.0.1", origin.port, timeout=15)
    try:
        conn.putrequest(probe.method, probe.path, skip_accept_encoding=True)
        header = probe.header()
        if header is not None:
            conn.putheader("Authorization", header)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _json_message(body: bytes) -> bool:
    """Whether `body` is a JSON object with a `message`."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return False
    return isinstance(parsed, dict) and bool(parsed.get("message"))


def forged_tokens_and_traversal(ctx: FaultContext, size: int) -> Row:
    """`size` requests cycling through every kind of `probes`: not one byte may be served."""
    with site_pair(ctx, "tokens") as pair:
        targets = plant_targets(pair, ctx.root / "outside")
        kinds = probes(pair, targets)
        statuses: Counter[int] = Counter()
        served = leaked = 0
        wrong: set[str] = set()
        unexplained: set[str] = set()
        with pair.primary_served() as base:
            me = signer(pair, pair.secondary_node)
            blob = retrieve_path("upload", targets.upload)
            control = raw_request(base, Probe("valid", blob, lambda: me.sign(blob)))
            for n in range(size):
                probe = kinds[n % len(kinds)]
                status, body = raw_request(base, probe)
                statuses[status] += 1
                if status < 400:
                    served += len(body)
                    wrong.add(probe.name)
                if any(mark in body for mark in targets.secrets):
                    leaked += 1
                    wrong.add(probe.name)
                if not _json_message(body):
                    unexplained.add(probe.name)
    server_errors = sum(n for status, n in statuses.items() if status >= 500)
    control_ok = control[0] == 200 and targets.secrets[1] in control[1]
    passed = served == 0 and leaked == 0 and server_errors == 0 and control_ok and not unexplained
    codes = ", ".join(f"{n}x {status}" for status, n in sorted(statuses.items()))
    return Row(
        scenario="forged tokens and traversal",
        done=f"{size} requests over {len(kinds)} kinds: forged, expired, future, over-long,"
        " mis-scoped and disabled-node tokens; ../ and encoded traversal; unsafe records",
        expected="every one refused with a 4xx and a JSON message; 0 bytes served; no 5xx",
        measured=(
            f"{codes}; {served} bytes served, {leaked} bodies with secret content"
            + (f" (from: {', '.join(sorted(wrong))})" if wrong else "")
            + (f"; no JSON message from: {', '.join(sorted(unexplained))}" if unexplained else "")
            + f"; control request with a valid token: {control[0]}, {len(control[1])} bytes"
        ),
        passed=passed,
        figures={
            "requests": size,
            "kinds": len(kinds),
            "bytes_served": served,
            "leaks": leaked,
            "server_errors": server_errors,
            "refused": sum(n for status, n in statuses.items() if 400 <= status < 500),
            "control_ok": float(control_ok),
            "without_message": len(unexplained),
        },
        backend=ctx.backend,
    )


# -- clock skew ------------------------------------------------------------------------------------


class SkewedClock:
    """The real time moved by `offset` seconds (changeable while the site runs): the secondary's
    clock ahead of (positive) or behind (negative) the primary's."""

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset

    def now(self) -> datetime:
        """The skewed time."""
        return datetime.now(UTC) + timedelta(seconds=self.offset)


class CountedBodies:
    """An ASGI wrapper counting the body bytes of the primary's successful blob retrievals
    (a refusal's JSON message is not a file)."""

    def __init__(self) -> None:
        self.bytes = 0

    def wrap(self, app: Any) -> Any:
        """`app` with the counter in front of it."""

        async def counted(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http" or "/geo/retrieve/" not in scope["path"]:
                await app(scope, receive, send)
                return

            status = 0

            async def counting_send(message: Any) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                elif message["type"] == "http.response.body" and status < 300:
                    self.bytes += len(message.get("body", b""))
                await send(message)

            await app(scope, receive, counting_send)

        return counted


@dataclass
class SkewResult:
    """One offset's outcome."""

    offset: float
    synced: int
    total: int
    bytes: int
    failure: str = ""
    recovered: bool = True


def _failure_of(pair: SitePair, ids: list[int]) -> tuple[int, str]:
    """How many of `ids` have failed at least once, and one failure message."""
    registry = Registry(pair.secondary, UploadReplicator)
    t = registry.table
    with pair.secondary.tracking_engine.connect() as conn:
        rows = conn.execute(
            select(t.c.last_sync_failure).where(registry.key.in_(ids), t.c.retry_count >= 1)
        ).all()
    return len(rows), str(rows[0][0]) if rows else ""


def _in_state(pair: SitePair, ids: list[int], state: SyncState) -> int:
    registry = Registry(pair.secondary, UploadReplicator)
    t = registry.table
    with pair.secondary.tracking_engine.connect() as conn:
        rows = conn.execute(
            select(t.c.state).where(registry.key.in_(ids), t.c.state == int(state))
        ).all()
    return len(rows)


def _synced(pair: SitePair, ids: list[int]) -> int:
    return _in_state(pair, ids, SyncState.SYNCED)


@contextmanager
def skewed_sites(
    ctx: FaultContext, name: str
) -> Iterator[tuple[SitePair, SkewedClock, CountedBodies]]:
    """A pair on the real clock whose secondary's clock can be skewed, the primary served with
    its blob bodies counted, the secondary's sync loops running."""
    with site_pair(ctx, name) as pair:
        clock = SkewedClock()
        pair.secondary.clock = clock
        counter = CountedBodies()
        with pair.primary_served(counter.wrap), secondary_worker(pair):
            yield pair, clock, counter


def _run_offset(
    pair: SitePair,
    clock: SkewedClock,
    counter: CountedBodies,
    offset: float,
    count: int,
    rng: random.Random,
    refused: bool,
) -> SkewResult:
    """New uploads synced under `offset`: all synced, or (`refused`) all failed once, then the
    clock corrected and the failed rows resynced."""
    clock.offset = offset
    start = counter.bytes
    ids = list(
        add_uploads(
            pair, [rng.randint(1, 16 * KiB) for _ in range(count)], rng, f"skew{int(offset):+d}"
        )
    )
    if not refused:
        wait_until(lambda: _synced(pair, ids) == count, 30 + count * 0.1)
        return SkewResult(offset, _synced(pair, ids), count, counter.bytes - start)
    wait_until(lambda: _failure_of(pair, ids)[0] == count, 30 + count * 0.1)
    failed, message = _failure_of(pair, ids)
    synced, sent = _synced(pair, ids), counter.bytes - start
    clock.offset = 0.0
    # A retry in flight now still carries a skewed token: let it fail before the resync, which
    # leaves rows being synced alone.
    wait_until(lambda: _in_state(pair, ids, SyncState.STARTED) == 0, 30)
    for _ in resync_all(pair.secondary, UploadReplicator, failed_only=True):
        pass
    recovered = wait_until(lambda: _synced(pair, ids) == count, 30 + count * 0.1)
    return SkewResult(offset, synced, count, sent, message if failed == count else "", recovered)


def _skew_row(
    ctx: FaultContext, name: str, offsets: tuple[float, ...], size: int, refused: bool
) -> Row:
    rng = random.Random(ctx.seed)
    count = max(2, size // len(offsets))
    clock_watch = Stopwatch()
    with skewed_sites(ctx, name.replace(" ", "-")) as (pair, clock, counter):
        results = [_run_offset(pair, clock, counter, o, count, rng, refused) for o in offsets]
        paths = {}
        with pair.primary.session() as session:
            paths = {u.id: u.path for u in session.query(Upload).all()}
        check = check_blobs(pair, paths)
        counts = state_counts(pair.secondary, UploadReplicator)
    cells = []
    for r in results:
        if refused:
            cells.append(
                f"{r.offset:+.0f} s: {r.synced}/{r.total} synced, {r.bytes} bytes served,"
                f" failure {r.failure.rsplit(' - ', 1)[-1][:60]!r}; after the clock was"
                " corrected and a resync"
                f" {'all synced' if r.recovered else 'NOT all synced'}"
            )
        else:
            cells.append(f"{r.offset:+.0f} s: {r.synced}/{r.total} synced")
    if refused:
        passed = all(
            r.synced == 0 and r.bytes == 0 and "Token" in r.failure and r.recovered for r in results
        )
    else:
        passed = all(r.synced == r.total for r in results)
    passed = passed and check.clean and counts[SyncState.SYNCED] == len(paths)
    return Row(
        scenario=name,
        done=(
            f"secondary clock {', '.join(f'{o:+.0f} s' for o in offsets)} against the primary's,"
            f" {count} new blobs each"
        ),
        expected=(
            "refused with 0 bytes served and a failure naming the token; syncs after the clock"
            " is corrected"
            if refused
            else "everything syncs (tokens live 60 s, checked with a 60 s leeway)"
        ),
        measured="; ".join(cells) + f"; {check.describe()} ({seconds(clock_watch.seconds())})",
        passed=passed,
        figures={
            "synced_skewed": sum(r.synced for r in results),
            "bytes_served_skewed": sum(r.bytes for r in results) if refused else 0,
            "recovered": float(all(r.recovered for r in results)),
            "missing": check.missing,
            "differing": check.differing,
            "partial": check.partial,
        },
        backend=ctx.backend,
    )


def clock_skew_within_leeway(ctx: FaultContext, size: int) -> Row:
    """The secondary's clock 50 s ahead, then 110 s behind: tokens still valid, all syncs."""
    return _skew_row(ctx, "clock skew within the leeway", (50.0, -110.0), size, refused=False)


def clock_skew_beyond_leeway(ctx: FaultContext, size: int) -> Row:
    """The secondary's clock 90 s ahead, then 200 s behind: every request refused, 0 bytes."""
    return _skew_row(ctx, "clock skew beyond the leeway", (90.0, -200.0), size, refused=True)
