"""Names derived from a replicator class name (ARCHITECTURE.md §2).

`PackageFileReplicator` gives `package_file`, `package_files`, `package_file_registry`, and so on.
Everything that needs a name asks this module, so one rename changes every surface at once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SUFFIX = "Replicator"
_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def snake_case(name: str) -> str:
    """`PackageFile` -> `package_file`; `LFSObject` -> `lfs_object`."""
    return _BOUNDARY.sub("_", name).lower()


def camel_case(snake: str) -> str:
    """`package_files` -> `packageFiles`."""
    head, *rest = snake.split("_")
    return head + "".join(part.capitalize() for part in rest)


def pascal_case(snake: str) -> str:
    """`package_file` -> `PackageFile`."""
    return "".join(part.capitalize() for part in snake.split("_"))


def pluralize(word: str) -> str:
    """Simple English plural of the last word: file -> files, entry -> entries, box -> boxes."""
    if re.search(r"(s|x|z|ch|sh)$", word):
        return word + "es"
    if re.search(r"[^aeiou]y$", word):
        return word[:-1] + "ies"
    return word + "s"


@dataclass(frozen=True)
class DerivedNames:
    """Every name ARCHITECTURE.md §2 derives for one replicator."""

    replicable_name: str
    replicable_name_plural: str

    @classmethod
    def for_class(cls, class_name: str, plural: str | None = None) -> DerivedNames:
        """Names for a replicator class called `class_name`."""
        base = class_name[: -len(SUFFIX)] if class_name.endswith(SUFFIX) else class_name
        singular = snake_case(base)
        return cls(singular, plural or pluralize(singular))

    @property
    def registry_table_name(self) -> str:
        """Tracking-database table holding this type's registries."""
        return f"{self.replicable_name}_registry"

    @property
    def registry_foreign_key(self) -> str:
        """Registry column holding the model record id."""
        return f"{self.replicable_name}_id"

    @property
    def states_table_name(self) -> str:
        """Primary-side verification state table (separate-table option)."""
        return f"{self.replicable_name}_states"

    @property
    def replication_flag_name(self) -> str:
        """Feature flag that turns replication of this type on or off."""
        return f"geo_{self.replicable_name}_replication"

    @property
    def graphql_field_name(self) -> str:
        """GraphQL field listing this type's registries."""
        return camel_case(self.replicable_name) + "Registries"

    @property
    def graphql_type_name(self) -> str:
        """GraphQL type of one registry."""
        return pascal_case(self.replicable_name) + "Registry"

    @property
    def registry_class_enum(self) -> str:
        """Value of the GraphQL registry-class enum."""
        return f"{self.replicable_name.upper()}_REGISTRY"

    @property
    def status_field_prefix(self) -> str:
        """Prefix of the status fields (`package_files_synced_count`)."""
        return f"{self.replicable_name_plural}_"

    @property
    def prometheus_prefix(self) -> str:
        """Prefix of the Prometheus gauges (`geo_package_files_synced`)."""
        return f"geo_{self.replicable_name_plural}_"

    def admin_path(self, node_id: int) -> str:
        """The admin UI page listing this type's registries on one node."""
        return f"/admin/geo/sites/{node_id}/replication/{self.replicable_name_plural}"

    def as_dict(self) -> dict[str, str]:
        """Every derived name, keyed by its attribute name (for clash checks and docs)."""
        return {
            "replicable_name": self.replicable_name,
            "replicable_name_plural": self.replicable_name_plural,
            "registry_table_name": self.registry_table_name,
            "registry_foreign_key": self.registry_foreign_key,
            "states_table_name": self.states_table_name,
            "replication_flag_name": self.replication_flag_name,
            "graphql_field_name": self.graphql_field_name,
            "graphql_type_name": self.graphql_type_name,
            "registry_class_enum": self.registry_class_enum,
            "status_field_prefix": self.status_field_prefix,
        }
