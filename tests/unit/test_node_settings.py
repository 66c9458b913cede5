"""A node's editable settings are declared once; the table, the record, the REST API's
parameters and shape and the CLI's options all follow that declaration."""

from __future__ import annotations

import typer.main

from geosync.cli import app
from geosync.db.tables import geo_nodes
from geosync.nodes import NODE_SETTINGS, Node
from geosync.web.rest import NodeOut, _NodeParamsModel

#: Columns that are not settings: identity, role, keys and timestamps.
NOT_SETTINGS = {
    "id", "name", "url", "primary", "access_key", "encrypted_secret_access_key",
    "created_at", "updated_at",
}  # fmt: skip
NAMES = {setting.name for setting in NODE_SETTINGS}


def test_every_setting_is_a_column_and_a_field_with_the_declared_default() -> None:
    columns = {column.name for column in geo_nodes.columns}
    assert columns - NOT_SETTINGS == NAMES
    assert NAMES <= set(Node.__dataclass_fields__)
    for setting in NODE_SETTINGS:
        default = getattr(geo_nodes.c[setting.name].default, "arg", None)
        if default is not None and not callable(default):
            assert default == setting.default, setting.name


def test_the_rest_api_takes_and_shows_every_setting() -> None:
    assert NAMES <= set(_NodeParamsModel.model_fields)
    assert NAMES <= set(NodeOut.model_fields)
    schema = NodeOut.model_json_schema()
    assert NAMES <= set(schema["required"])


def _options(*path: str) -> set[str]:
    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]  # type: ignore[attr-defined]
    return {param.name for param in command.params if param.name is not None}


def test_the_cli_has_one_option_per_setting_on_add_and_update() -> None:
    assert NAMES <= _options("node", "add")
    assert NAMES <= _options("node", "update")
    assert {"primary"} <= _options("node", "add") - NAMES
    assert {"name", "url"} <= _options("node", "update") - NAMES
