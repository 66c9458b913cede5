"""Names derived from replicator class names (ARCHITECTURE.md §2)."""

from __future__ import annotations

import pytest

from geosync.demo.replicators import PackageFileReplicator, SnippetReplicator, UploadReplicator
from geosync.names import DerivedNames, pluralize, snake_case
from geosync.replicator import Replicator


@pytest.mark.parametrize(
    ("class_name", "singular", "plural"),
    [
        ("UploadReplicator", "upload", "uploads"),
        ("PackageFileReplicator", "package_file", "package_files"),
        ("SnippetReplicator", "snippet", "snippets"),
        ("MergeRequestDiffReplicator", "merge_request_diff", "merge_request_diffs"),
        ("PagesDeploymentReplicator", "pages_deployment", "pages_deployments"),
        ("CiSecureFileReplicator", "ci_secure_file", "ci_secure_files"),
        ("ContainerRepositoryReplicator", "container_repository", "container_repositories"),
        (
            "DesignManagementRepositoryReplicator",
            "design_management_repository",
            "design_management_repositories",
        ),
        ("TerraformStateVersionReplicator", "terraform_state_version", "terraform_state_versions"),
        ("LfsObjectReplicator", "lfs_object", "lfs_objects"),
        ("LFSObjectReplicator", "lfs_object", "lfs_objects"),
        ("SSHKeyReplicator", "ssh_key", "ssh_keys"),
        ("Box2Replicator", "box2", "box2s"),
    ],
)
def test_replicable_names_follow_the_class_name(
    class_name: str, singular: str, plural: str
) -> None:
    names = DerivedNames.for_class(class_name)
    assert names.replicable_name == singular
    assert names.replicable_name_plural == plural


def test_package_file_replicator_derives_every_name_of_the_architecture_table() -> None:
    expected = {
        "replicable_name": "package_file",
        "replicable_name_plural": "package_files",
        "registry_table_name": "package_file_registry",
        "registry_foreign_key": "package_file_id",
        "states_table_name": "package_file_states",
        "replication_flag_name": "geo_package_file_replication",
        "graphql_field_name": "packageFileRegistries",
        "graphql_type_name": "PackageFileRegistry",
        "registry_class_enum": "PACKAGE_FILE_REGISTRY",
        "status_field_prefix": "package_files_",
        "prometheus_prefix": "geo_package_files_",
    }
    for attribute, value in expected.items():
        assert getattr(PackageFileReplicator, attribute) == value, attribute
    assert (
        PackageFileReplicator.names.admin_path(7) == "/admin/geo/sites/7/replication/package_files"
    )


@pytest.mark.parametrize(
    ("replicator", "graphql_field", "graphql_type", "enum", "flag"),
    [
        (UploadReplicator, "uploadRegistries", "UploadRegistry", "UPLOAD_REGISTRY",
         "geo_upload_replication"),
        (SnippetReplicator, "snippetRegistries", "SnippetRegistry", "SNIPPET_REGISTRY",
         "geo_snippet_replication"),
    ],
)  # fmt: skip
def test_single_word_replicators_derive_their_names(
    replicator: type[Replicator], graphql_field: str, graphql_type: str, enum: str, flag: str
) -> None:
    assert replicator.graphql_field_name == graphql_field
    assert replicator.graphql_type_name == graphql_type
    assert replicator.registry_class_enum == enum
    assert replicator.replication_flag_name == flag


def test_multi_word_names_are_camel_and_pascal_cased_per_word() -> None:
    names = DerivedNames.for_class("DesignManagementRepositoryReplicator")
    assert names.registry_table_name == "design_management_repository_registry"
    assert names.registry_foreign_key == "design_management_repository_id"
    assert names.graphql_field_name == "designManagementRepositoryRegistries"
    assert names.graphql_type_name == "DesignManagementRepositoryRegistry"
    assert names.registry_class_enum == "DESIGN_MANAGEMENT_REPOSITORY_REGISTRY"
    assert names.status_field_prefix == "design_management_repositories_"
    assert names.prometheus_prefix == "geo_design_management_repositories_"


def test_an_explicit_plural_is_used_for_every_plural_name() -> None:
    names = DerivedNames.for_class("PersonReplicator", "people")
    assert names.replicable_name == "person"
    assert names.replicable_name_plural == "people"
    assert names.status_field_prefix == "people_"
    assert names.prometheus_prefix == "geo_people_"
    assert names.admin_path(1) == "/admin/geo/sites/1/replication/people"
    assert names.registry_table_name == "person_registry"


@pytest.mark.parametrize(
    ("word", "plural"),
    [
        ("file", "files"),
        ("entry", "entries"),
        ("key", "keys"),
        ("box", "boxes"),
        ("status", "statuses"),
        ("patch", "patches"),
        ("wish", "wishes"),
    ],
)
def test_simple_english_plurals(word: str, plural: str) -> None:
    assert pluralize(word) == plural


def test_snake_case_splits_acronyms_from_the_next_word() -> None:
    assert snake_case("HTTPRequestLog") == "http_request_log"
    assert snake_case("PackageFile") == "package_file"
