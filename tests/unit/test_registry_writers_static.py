"""No geosync module but the registry (and verification, for its own columns) builds an
UPDATE or DELETE of a registry table: a static check that complements the runtime one of
tests/integration/test_registry_writers.py (which aliasing cannot fool)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import geosync

OWNERS = {"registry.py", "verification.py"}
WRITE_SQL = re.compile(r"\b(UPDATE|DELETE\s+FROM)\s+\"?\w*_registry\b", re.IGNORECASE)


def offenders(source: str) -> list[str]:
    """The UPDATE/DELETE constructs of `source` that name a registry table."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            target = ast.unparse(node.args[0])
            if name in {"update", "delete"} and "registr" in target:
                found.append(f"{name}({target})")
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if WRITE_SQL.search(node.value):
                found.append(node.value[:60])
    return found


def test_the_check_finds_a_direct_write_of_a_registry_table() -> None:
    assert offenders("conn.execute(delete(registry.table).where(x))") == ["delete(registry.table)"]
    assert offenders("text('UPDATE upload_registry SET state = 0')")
    assert offenders("update(geo_leases).values(holder=h)") == []


def test_no_module_but_the_owners_writes_registry_rows() -> None:
    root = Path(geosync.__file__).parent
    found = {
        str(path.relative_to(root)): hits
        for path in sorted(root.rglob("*.py"))
        if path.name not in OWNERS or path.parent != root
        if (hits := offenders(path.read_text()))
    }
    assert found == {}
