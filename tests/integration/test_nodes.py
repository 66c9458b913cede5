"""Nodes (`geo_nodes`): one primary, unique names, trailing slashes, secrets encrypted at rest."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Connection, insert, select, update
from sqlalchemy.exc import IntegrityError

from geosync import ConfigurationError, InvalidTransition, NotFound, ValidationError
from geosync.db.tables import geo_nodes
from geosync.nodes import Node, NodeStore
from geosync.testing import SitePair


@pytest.fixture
def store(sites: SitePair) -> Iterator[NodeStore]:
    """A node store in one primary transaction, committed at the end of the test."""
    with sites.primary.main() as conn:
        yield NodeStore(sites.primary, conn)


def raw_row(conn: Connection, node_id: int) -> dict[str, object]:
    """Every stored column of one node."""
    row = conn.execute(select(geo_nodes).where(geo_nodes.c.id == node_id)).one()
    return dict(row._mapping)


def test_a_new_node_gets_gitlabs_defaults(store: NodeStore) -> None:
    node = store.add("tokyo", "https://tokyo.example.com")
    assert node.primary is False
    assert node.enabled is True
    assert (node.files_max_capacity, node.repos_max_capacity) == (10, 25)
    assert node.verification_max_capacity == 100
    assert node.container_repositories_max_capacity == 10
    assert node.selective_sync_type is None
    assert node.selective_sync_shards == []
    assert node.selective_sync_namespace_ids == []
    assert node.minimum_reverification_interval == 7
    assert node.sync_object_storage is False
    assert node.internal_url is None
    assert node.effective_internal_url == "https://tokyo.example.com/"


def test_urls_are_stored_with_a_trailing_slash(store: NodeStore) -> None:
    node = store.add("tokyo", "http://127.0.0.1:8080", internal_url="http://127.0.0.1:9090")
    assert node.url == "http://127.0.0.1:8080/"
    assert node.internal_url == "http://127.0.0.1:9090/"
    assert node.effective_internal_url == "http://127.0.0.1:9090/"
    assert store.add("paris", "http://127.0.0.1:8081/").url == "http://127.0.0.1:8081/"
    updated = store.update(node.id, url="http://127.0.0.1:7070", internal_url="http://127.0.0.1:6")
    assert (updated.url, updated.internal_url) == ("http://127.0.0.1:7070/", "http://127.0.0.1:6/")


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/", "127.0.0.1:8080", "http://", ""])
def test_a_url_that_is_not_http_is_refused(store: NodeStore, url: str) -> None:
    with pytest.raises(ValidationError, match=r"url must be an http:// or https:// URL"):
        store.add("tokyo", url)


def test_there_can_be_only_one_primary(sites: SitePair, store: NodeStore) -> None:
    with pytest.raises(InvalidTransition, match=r"node 'primary' is already the primary"):
        store.add("other", "http://127.0.0.1:3/", primary=True)
    with pytest.raises(InvalidTransition, match=r"node 'primary' is already the primary.*promote"):
        store.update(sites.secondary_node.id, primary=True)
    assert [n.name for n in store.list() if n.primary] == ["primary"]
    assert raw_row(store.connection, sites.secondary_node.id)["primary"] is False


def test_the_database_refuses_a_second_primary(sites: SitePair) -> None:
    with sites.primary.main() as conn:
        row = raw_row(conn, sites.secondary_node.id)
    row.update(id=None, name="rogue", access_key="rogue-key", primary=True)
    with pytest.raises(IntegrityError), sites.primary.main() as conn:
        conn.execute(insert(geo_nodes), {k: v for k, v in row.items() if k != "id"})
    with sites.primary.main() as conn:
        assert [n.name for n in NodeStore(sites.primary, conn).list() if n.primary] == ["primary"]


def test_two_promotions_at_once_leave_one_primary(sites: SitePair) -> None:
    """Both pass the store's check; the database stops the later one, which gets a clear error."""
    with sites.primary.main() as conn:  # a deployment with no primary yet
        conn.execute(update(geo_nodes).values(primary=False))
    later: list[BaseException] = []

    def promote_later() -> None:
        try:
            with sites.primary.main() as conn:
                NodeStore(sites.primary, conn).add("later", "http://127.0.0.1:4/", primary=True)
        except BaseException as exc:
            later.append(exc)

    with sites.primary.main() as conn:
        NodeStore(sites.primary, conn).add("first", "http://127.0.0.1:3/", primary=True)
        thread = threading.Thread(target=promote_later)
        thread.start()
        thread.join(0.5)  # the later one runs its check, then waits on the first's row
    thread.join(30)
    assert not thread.is_alive()
    assert len(later) == 1 and isinstance(later[0], InvalidTransition)
    # SQLite serialises the two writes, so the later one's own check sees the first primary;
    # PostgreSQL runs both checks before either commits, and the database stops the later one.
    expected = "meanwhile" if sites.primary.main_engine.dialect.name == "postgresql" else "already"
    assert expected in str(later[0])
    with sites.primary.main() as conn:
        assert [n.name for n in NodeStore(sites.primary, conn).list() if n.primary] == ["first"]


def test_promoting_a_secondary_demotes_the_primary(sites: SitePair, store: NodeStore) -> None:
    store.update(sites.secondary_node.id, enabled=False)
    promoted = store.promote(sites.secondary_node.id)
    assert promoted.primary and promoted.enabled
    assert [(n.name, n.primary) for n in store.list()] == [("secondary", True), ("primary", False)]
    store.remove(sites.primary_node.id)  # the former primary, now a secondary, can be retired
    assert [n.name for n in store.list()] == ["secondary"]


def test_a_plain_update_makes_a_node_primary_only_where_there_is_none(
    sites: SitePair, store: NodeStore
) -> None:
    store.connection.execute(update(geo_nodes).values(primary=False))
    assert store.update(sites.secondary_node.id, primary=True).primary


def test_the_primary_cannot_be_removed_demoted_or_disabled(
    sites: SitePair, store: NodeStore
) -> None:
    node_id = sites.primary_node.id
    before = raw_row(store.connection, node_id)
    with pytest.raises(InvalidTransition, match=r"primary and cannot be removed.*promote another"):
        store.remove(node_id)
    with pytest.raises(InvalidTransition, match=r"primary and cannot be demoted.*promote another"):
        store.update(node_id, primary=False)
    with pytest.raises(InvalidTransition, match=r"primary and cannot be disabled.*promote another"):
        store.update(node_id, files_max_capacity=3, enabled=False)
    assert raw_row(store.connection, node_id) == before
    assert store.problems(node_id, {"enabled": False, "primary": False}) == {
        "enabled": store.problems(node_id, {"enabled": False})["enabled"],
        "primary": store.problems(node_id, {"primary": False})["primary"],
    }
    assert "cannot be disabled" in store.problems(node_id, {"enabled": False})["enabled"]
    assert store.update(node_id, enabled=True, primary=True) == store.get(node_id)


def test_the_last_enabled_secondary_can_be_disabled_and_removed(
    sites: SitePair, store: NodeStore
) -> None:
    assert store.secondary_count(enabled_only=True) == 1
    store.update(sites.secondary_node.id, enabled=False)
    assert store.secondary_count(enabled_only=True) == 0
    assert store.secondary_count() == 1
    store.remove(sites.secondary_node.id)
    assert store.secondary_count() == 0


def test_names_are_unique(sites: SitePair, store: NodeStore) -> None:
    with pytest.raises(ValidationError, match=r"a node named 'secondary' already exists"):
        store.add(" secondary ", "http://127.0.0.1:3/")
    other = store.add("other", "http://127.0.0.1:3/")
    with pytest.raises(ValidationError, match=r"a node named 'primary' already exists"):
        store.update(other.id, name="primary")
    assert store.update(other.id, name="other").name == "other"


def test_an_empty_name_is_refused(store: NodeStore) -> None:
    with pytest.raises(ValidationError, match="name must not be empty"):
        store.add("  ", "http://127.0.0.1:3/")


def test_keys_are_generated_and_the_secret_is_stored_encrypted(
    sites: SitePair, store: NodeStore
) -> None:
    node = store.add("tokyo", "http://127.0.0.1:3/")
    secret_key_base = sites.primary.settings.secret_key_base.get_secret_value()
    secret = node.secret(secret_key_base)
    assert len(node.access_key) == 20
    assert len(secret) == 40
    stored = raw_row(store.connection, node.id)
    assert all(secret not in str(value) for value in stored.values())
    assert stored["encrypted_secret_access_key"] != secret
    assert secret not in repr(node)
    assert "encrypted_secret_access_key" not in node.as_dict()
    other = store.add("paris", "http://127.0.0.1:4/")
    assert other.access_key != node.access_key
    assert other.secret(secret_key_base) != secret


def test_a_secret_cannot_be_read_with_another_secret_key_base(sites: SitePair) -> None:
    with pytest.raises(ConfigurationError, match=r"setting 'secret_key_base': cannot decrypt"):
        sites.secondary_node.secret("x" * 40)


def test_the_current_node_is_the_one_named_in_the_settings(sites: SitePair) -> None:
    primary = sites.primary.current_node()
    secondary = sites.secondary.current_node()
    assert primary is not None and primary.name == "primary" and primary.primary
    assert secondary is not None and secondary.name == "secondary" and secondary.secondary
    assert sites.primary.is_primary()
    assert not sites.secondary.is_primary()
    found = sites.secondary.primary_node()
    assert found is not None and found.id == sites.primary_node.id


def test_settings_can_be_updated_and_are_checked(sites: SitePair, store: NodeStore) -> None:
    node = store.update(
        sites.secondary_node.id,
        enabled=False,
        files_max_capacity=3,
        selective_sync_type="namespaces",
        selective_sync_namespace_ids=["5", 2, 5],
        minimum_reverification_interval=30,
    )
    assert node.enabled is False
    assert node.files_max_capacity == 3
    assert node.selective_sync_type == "namespaces"
    assert node.selective_sync_namespace_ids == [2, 5]
    assert node.minimum_reverification_interval == 30
    assert node.updated_at == sites.primary.clock.now()


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"files_max_capacity": -1}, "files_max_capacity must be a whole number"),
        ({"repos_max_capacity": "many"}, "repos_max_capacity must be a whole number"),
        ({"minimum_reverification_interval": 0}, "minimum_reverification_interval must be"),
        ({"selective_sync_type": "everything"}, "selective_sync_type must be empty"),
        ({"selective_sync_namespace_ids": ["x"]}, "selective_sync_namespace_ids must be whole"),
        ({"colour": "blue"}, r"unknown node setting\(s\): colour"),
        ({"selective_sync_shards": "abc"}, "selective_sync_shards must be a list"),
        ({"enabled": "yes"}, "enabled must be true or false"),
        ({"internal_url": "gopher://x"}, "internal_url must be an http"),
    ],
)
def test_bad_settings_are_refused_by_name(
    sites: SitePair, store: NodeStore, changes: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ValidationError, match=problem):
        store.update(sites.secondary_node.id, **changes)
    with pytest.raises(ValidationError, match=problem):
        store.add("tokyo", "http://127.0.0.1:3/", **changes)


def test_nodes_are_found_by_name_or_id_and_removed(sites: SitePair, store: NodeStore) -> None:
    node = store.add("tokyo", "http://127.0.0.1:3/")
    assert store.by_name_or_id("tokyo").id == node.id
    assert store.by_name_or_id(str(node.id)).name == "tokyo"
    assert store.by_access_key(node.access_key) == node
    assert store.secondary_count() == 2
    store.remove(node.id)
    assert store.find("tokyo") is None
    assert store.secondary_count() == 1
    with pytest.raises(NotFound, match=f"node {node.id} not found"):
        store.remove(node.id)
    with pytest.raises(NotFound, match="node 'tokyo' not found"):
        store.by_name_or_id("tokyo")


def test_a_node_reads_back_equal_from_its_row(store: NodeStore) -> None:
    node = store.add("tokyo", "http://127.0.0.1:3/", selective_sync_shards=["default"])
    assert Node.from_row(raw_row(store.connection, node.id)) == node
    assert node.selective_sync_shards == ["default"]


def test_problems_names_every_refused_change_at_once_and_changes_nothing(
    sites: SitePair, store: NodeStore
) -> None:
    node = sites.secondary_node
    found = store.problems(
        node.id,
        {"name": "primary", "url": "ftp://x", "files_max_capacity": -1, "enabled": True},
    )

    assert set(found) == {"name", "url", "files_max_capacity"}
    assert found["name"] == "a node named 'primary' already exists"
    assert found["files_max_capacity"].startswith("files_max_capacity must be a whole number")
    assert store.problems(node.id, {"name": node.name, "repos_max_capacity": 3}) == {}
    assert store.get(node.id) == node
