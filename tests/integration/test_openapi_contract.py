"""The OpenAPI document is what the server does: schemathesis runs every one of its checks over
`/api/v4/openapi.json` against real servers on loopback.

The primary is served with an admin token; schemathesis reads the document from it and runs its
phases (coverage, fuzzing, stateful) with all checks, a fixed seed and a bounded number of cases.
Node-to-node operations get a `GL-Geo` token that the secondary signs for the exact path of each
case, so they are tested past authentication too; the cases that leave the token out or forge it
test their 401s. The secondary is served as well, for the operations only a secondary answers
(`current/failures`). No check is disabled; where a check's expectation is widened for one
operation, the reason is written next to it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlencode

import pytest
import schemathesis
from schemathesis.engine import Status, from_schema
from schemathesis.engine.events import FatalError, NonFatalError, ScenarioFinished

from geosync.app import Geo
from geosync.auth import create_admin_token, node_header
from geosync.testing import SitePair
from geosync.testing.servers import serve_in_thread
from geosync.web.app import create_app

SEED = 20_21
#: Cases per operation and phase; some 40 operations make a few thousand cases in all.
MAX_EXAMPLES = 10
#: Checks every run must have made at least once (schemathesis runs more where they apply).
CORE_CHECKS = {
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "positive_data_acceptance",
    "missing_required_header",
    "unsupported_method",
    "ignored_auth",
}

# git's request body is bytes; schemathesis sends it as it sends any binary body.
schemathesis.serializer.alias("application/x-git-upload-pack-request", "application/octet-stream")


@dataclass
class Outcome:
    """What a schemathesis run did: its cases, the checks it made, what failed."""

    cases: int = 0
    checks: set[str] = field(default_factory=set)
    failures: list[str] = field(default_factory=list)
    #: The statuses each operation answered ("GET /api/v4/geo_nodes": {200, 400, ...}).
    statuses: dict[str, set[int]] = field(default_factory=dict)


def _config(token: str, operations: list[dict[str, Any]] | None = None) -> Any:
    return schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "workers": 1,
            "request-timeout": 30,
            "headers": {"PRIVATE-TOKEN": token},
            "checks": {"enabled": True},
            "generation": {"max-examples": MAX_EXAMPLES, "database": "none"},
            "operations": operations or [],
        }
    )


def _sign_for(schema: Any, secondary: Geo) -> None:
    """Give every node-to-node case the token the secondary would send for it."""

    class NodeToken:
        """The secondary's `GL-Geo` header for exactly the path (and query) of a case."""

        def get(self, case: Any, ctx: Any) -> Geo:
            return secondary

        def set(self, case: Any, data: Geo, ctx: Any) -> None:
            path = unquote(case.formatted_path)
            if case.query and "/retrieve/" in case.operation.path and "{model" not in path:
                path += "?" + urlencode(case.query, doseq=True)  # a batch signs its id list
            case.headers = {**(case.headers or {}), "Authorization": node_header(data, path)}

    schema.auth(refresh_interval=None).apply_to(path_regex="^/api/v4/geo/")(NodeToken)


def run_schemathesis(schema: Any) -> Outcome:
    """Run every phase over `schema` and gather what each scenario found."""
    outcome = Outcome()
    for event in from_schema(schema).execute():
        if isinstance(event, ScenarioFinished):
            outcome.cases += len(event.recorder.cases)
            seen = outcome.statuses.setdefault(event.recorder.label, set())
            for interaction in event.recorder.interactions.values():
                if interaction.response is not None:
                    seen.add(interaction.response.status_code)
            for nodes in event.recorder.checks.values():
                for node in nodes:
                    outcome.checks.add(node.name)
                    if node.status == Status.FAILURE and node.failure_info is not None:
                        failure = node.failure_info.failure
                        outcome.failures.append(
                            f"{event.recorder.label}: {failure.title}\n{failure.message}\n"
                            f"{node.failure_info.code_sample}"
                        )
        elif isinstance(event, NonFatalError):
            outcome.failures.append(f"schemathesis could not test: {event.info.format()}")
        elif isinstance(event, FatalError):
            outcome.failures.append(f"schemathesis stopped: {event.exception!r}")
    return outcome


@pytest.fixture
def token(sites: SitePair) -> str:
    """An admin token valid on both sites (they share the main database)."""
    with sites.primary.main() as conn:
        return create_admin_token(conn, "contract", sites.primary.clock.now())


@pytest.fixture
def primary_url(sites: SitePair) -> Iterator[str]:
    """The primary served on loopback."""
    with sites.primary_served() as url:
        yield url


def assert_conforms(outcome: Outcome, least_cases: int) -> None:
    """No failure, and a run large enough to mean something."""
    assert not outcome.failures, "\n\n".join(outcome.failures[:10])
    assert outcome.cases >= least_cases, outcome.cases
    assert CORE_CHECKS <= outcome.checks, CORE_CHECKS - outcome.checks


def test_the_primary_answers_as_its_document_says(
    sites: SitePair, token: str, primary_url: str
) -> None:
    operations = [
        {
            # `geo_node_id` in a status must be the authenticated node's: a schema cannot say
            # which node that is, so a well-formed status naming another one is refused (422).
            "include-path": "/api/v4/geo/status",
            "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "401", "422"]}},
        }
    ]
    schema = schemathesis.openapi.from_url(
        primary_url + "api/v4/openapi.json", config=_config(token, operations)
    )
    _sign_for(schema, sites.secondary)

    outcome = run_schemathesis(schema)

    assert_conforms(outcome, least_cases=1500)
    node_to_node = {
        label: seen for label, seen in outcome.statuses.items() if " /api/v4/geo/" in label
    }
    assert len(node_to_node) == 6, sorted(node_to_node)
    for label, seen in node_to_node.items():  # refused without a token, answered with one
        assert 401 in seen and seen - {401, 405}, (label, seen)


def test_the_secondary_lists_its_failures_as_its_document_says(sites: SitePair, token: str) -> None:
    with serve_in_thread(create_app(sites.secondary)) as url:
        schema = schemathesis.openapi.from_url(
            url + "api/v4/openapi.json", config=_config(token)
        ).include(path_regex="/current/")
        outcome = run_schemathesis(schema)

    assert_conforms(outcome, least_cases=200)
