"""GraphQL mutations over real HTTP on both databases: one registry resynced or reverified, a
record re-checksummed on the primary, and bulk actions that become jobs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from geosync.clock import FrozenClock
from geosync.demo.replicators import UploadReplicator
from geosync.registry import Registry
from geosync.states import SyncState, VerificationState
from geosync.testing import SitePair
from geosync.verification import primary_verifiable
from tests.graphql_client import COUNT, GraphQLSite, seed, served_graphql

UPDATE = """mutation($id: ID!, $action: GeoRegistryAction!) {
  geoRegistriesUpdate(input: {registryId: $id, action: $action, clientMutationId: "m1"}) {
    clientMutationId errors
    registry { ... on UploadRegistry { id uploadId state verificationState retryCount } } } }"""
GID = "gid://geosync/Geo::UploadRegistry/"


@pytest.fixture
def secondary_api(sites: SitePair, clock: FrozenClock) -> Iterator[GraphQLSite]:
    seed(sites, clock)
    with served_graphql(sites, sites.secondary) as site:
        yield site


@pytest.fixture
def primary_api(sites: SitePair, clock: FrozenClock) -> Iterator[GraphQLSite]:
    seed(sites, clock)
    with served_graphql(sites, sites.primary) as site:
        yield site


def update(api: GraphQLSite, registry_id: str, action: str) -> dict[str, Any]:
    payload: dict[str, Any] = api.run(UPDATE, {"id": registry_id, "action": action})[
        "geoRegistriesUpdate"
    ]
    return payload


def test_resync_moves_a_synced_registry_to_pending(
    secondary_api: GraphQLSite, sites: SitePair
) -> None:
    payload = update(secondary_api, f"{GID}3", "RESYNC")

    assert payload["errors"] == [] and payload["clientMutationId"] == "m1"
    assert payload["registry"]["state"] == "PENDING"
    with sites.secondary.tracking_engine.connect() as conn:
        row = Registry(sites.secondary, UploadReplicator).require(conn, 3)
    assert row.sync_state is SyncState.PENDING


def test_resync_of_a_pending_registry_is_refused_in_errors_and_changes_nothing(
    secondary_api: GraphQLSite,
) -> None:
    payload = update(secondary_api, f"{GID}1", "RESYNC")

    assert payload["errors"] and "pending" in payload["errors"][0]
    assert payload["registry"]["state"] == "PENDING"


def test_reverify_queues_the_copy_for_verification(secondary_api: GraphQLSite) -> None:
    bare = """mutation { geoRegistriesUpdate(input: {registryId: "6", action: REVERIFY,
        registryClass: UPLOAD_REGISTRY}) { errors registry { ... on UploadRegistry {
        state verificationState } } } }"""
    classless = secondary_api.errors(UPDATE, {"id": "6", "action": "REVERIFY"})
    payload = secondary_api.run(bare)["geoRegistriesUpdate"]

    assert "give registryClass" in classless[0]
    assert payload["errors"] == []
    assert payload["registry"]["verificationState"] == "PENDING"
    assert payload["registry"]["state"] == "SYNCED"


def test_unknown_registries_and_foreign_ids_answer_errors_not_data(
    secondary_api: GraphQLSite,
) -> None:
    missing = update(secondary_api, f"{GID}999", "RESYNC")
    foreign = secondary_api.errors(UPDATE, {"id": "gid://geosync/Upload/3", "action": "RESYNC"})
    bad = secondary_api.errors(UPDATE, {"id": "three", "action": "RESYNC"})
    action = secondary_api.errors(UPDATE, {"id": f"{GID}3", "action": "DELETE"})

    assert missing["registry"] is None
    assert "does not exist" in missing["errors"][0]
    assert "not represent a Geo registry" in foreign[0]
    assert "not a valid Global ID" in bad[0]
    assert "DELETE" in action[0]


def test_the_primary_refuses_registry_mutations_in_errors(primary_api: GraphQLSite) -> None:
    payload = update(primary_api, f"{GID}3", "RESYNC")

    assert payload["registry"] is None
    assert "secondary" in payload["errors"][0]


CHECKSUM = """mutation($id: ID!) {
  geoModelRecordChecksum(input: {modelClass: UPLOAD, recordIdentifier: $id}) {
    errors modelRecord { recordIdentifier checksumInformation { checksumState } } } }"""


def test_the_primary_checksums_one_record_again(primary_api: GraphQLSite, sites: SitePair) -> None:
    verifiable = primary_verifiable(sites.primary, UploadReplicator)
    with sites.primary.main() as conn:
        claims = verifiable.claim(conn, 100)
        verifiable.succeeded_many(conn, [(c, "d" * 64) for c in claims])

    payload = primary_api.run(CHECKSUM, {"id": "gid://geosync/Upload/7"})["geoModelRecordChecksum"]
    missing = primary_api.run(CHECKSUM, {"id": "999"})["geoModelRecordChecksum"]

    assert payload["errors"] == []
    assert payload["modelRecord"]["checksumInformation"]["checksumState"] == "PENDING"
    with sites.primary.main_engine.connect() as conn:
        states = verifiable.count_by_state(conn)
    assert states[VerificationState.PENDING] == 1
    assert missing["modelRecord"] is None and "999" in missing["errors"][0]


BULK = """mutation($action: GeoRegistriesBulkAction!, $state: ReplicationStateEnum) {
  geoRegistriesBulkUpdate(input: {registryClass: UPLOAD_REGISTRY, action: $action,
      replicationState: $state}) {
    errors registryClass job { id state total processed createdBy replicableName action
      filters { replicationState verificationState ids } } } }"""
JOBS = "{ geoBulkJobs { id state processed total action } }"


def run_to_end(site: Any, job_id: str) -> Any:
    from geosync.jobs import JobState, run_job_batch

    number = int(job_id.rsplit("/", 1)[1])
    for _ in range(20):
        job = run_job_batch(site, number)
        if job.state not in (JobState.QUEUED, JobState.RUNNING):
            return job
    raise AssertionError("the job did not end")


def test_a_bulk_resync_is_a_job_that_moves_only_the_matching_rows(
    secondary_api: GraphQLSite, sites: SitePair
) -> None:
    created = secondary_api.run(BULK, {"action": "RESYNC_ALL", "state": "FAILED"})
    payload = created["geoRegistriesBulkUpdate"]
    second = secondary_api.run(BULK, {"action": "RESYNC_ALL", "state": None})
    listed = secondary_api.run(JOBS)["geoBulkJobs"]

    job = payload["job"]
    assert payload["errors"] == [] and payload["registryClass"] == "UPLOAD_REGISTRY"
    assert (job["state"], job["total"], job["processed"]) == ("QUEUED", 4, 0)
    assert job["createdBy"].startswith("ops (token ")
    assert job["filters"] == {"replicationState": "FAILED", "verificationState": None, "ids": None}
    refused = second["geoRegistriesBulkUpdate"]
    assert refused["job"] is None and "already" in refused["errors"][0]
    assert [j["id"] for j in listed] == [job["id"]]

    finished = run_to_end(sites.secondary, job["id"])
    with sites.secondary.tracking_engine.connect() as conn:
        counts = Registry(sites.secondary, UploadReplicator).count_by_state(conn)
    assert finished.processed == 4
    assert counts[SyncState.FAILED] == 0 and counts[SyncState.SYNCED] == 10
    shown = secondary_api.run(f'{{ geoBulkJob(id: "{job["id"]}") {{ state processed }} }}')
    assert shown["geoBulkJob"] == {"state": "DONE", "processed": 4}


def test_a_queued_job_is_cancelled_and_a_finished_one_cannot_be(
    secondary_api: GraphQLSite, sites: SitePair
) -> None:
    cancel = """mutation($id: ID!) { geoBulkJobCancel(input: {id: $id}) {
        errors job { state finishedAt } } }"""
    job = secondary_api.run(BULK, {"action": "REVERIFY_ALL", "state": None})[
        "geoRegistriesBulkUpdate"
    ]["job"]
    cancelled = secondary_api.run(cancel, {"id": job["id"]})["geoBulkJobCancel"]
    again = secondary_api.run(cancel, {"id": job["id"]})["geoBulkJobCancel"]
    missing = secondary_api.run(cancel, {"id": "gid://geosync/Geo::BulkJob/999"})

    assert cancelled["errors"] == [] and cancelled["job"]["state"] == "CANCELLED"
    assert cancelled["job"]["finishedAt"] is not None
    assert again["errors"] and again["job"]["state"] == "CANCELLED"
    assert missing["geoBulkJobCancel"]["job"] is None
    assert missing["geoBulkJobCancel"]["errors"]
    with sites.secondary.tracking_engine.connect() as conn:
        counts = Registry(sites.secondary, UploadReplicator).count_by_state(conn)
    assert counts[SyncState.SYNCED] == 10  # nothing was touched


def test_the_primary_rechecksums_matching_records_as_a_job(
    primary_api: GraphQLSite, sites: SitePair
) -> None:
    verifiable = primary_verifiable(sites.primary, UploadReplicator)
    with sites.primary.main() as conn:
        claims = verifiable.claim(conn, 100)
        verifiable.succeeded_many(conn, [(c, "e" * 64) for c in claims])
    bulk = """mutation { geoModelRecordsBulkChecksum(input: {modelClass: UPLOAD,
        ids: ["gid://geosync/Upload/2", "5", "9"]}) { errors modelClass job { id total } } }"""
    refused = primary_api.run(BULK, {"action": "RESYNC_ALL", "state": None})

    payload = primary_api.run(bulk)["geoModelRecordsBulkChecksum"]

    assert payload["errors"] == [] and payload["modelClass"] == "UPLOAD"
    assert payload["job"]["total"] == 3
    assert "secondary" in refused["geoRegistriesBulkUpdate"]["errors"][0]
    run_to_end(sites.primary, payload["job"]["id"])
    with sites.primary.main_engine.connect() as conn:
        states = verifiable.count_by_state(conn)
    assert states[VerificationState.PENDING] == 3
    assert states[VerificationState.SUCCEEDED] == COUNT - 3
