"""The contract kit works for an application of one's own, from docs/adding-a-data-type.md alone.

The guide's complete example (the fenced blocks whose first line names a file) is written out as
a throwaway application under `tmp_path`, outside this repository, and pytest runs it in a child
process that sees only that directory and the installed geosync: its blob type (no namespaces)
and its repository type (selective sync by namespace) must pass the kit. A replicator pointing
at the wrong place must make the kit fail.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pytest

import geosync
import geosync.testing

pytestmark = pytest.mark.slow

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "adding-a-data-type.md"
BLOCK = re.compile(r"^```python\n# (?P<path>[\w./-]+\.py)\n(?P<body>.*?)^```", re.M | re.S)
TEST_MODULE = "tests/test_replication.py"
SHARED = [
    "test_created_record_is_synced_verified_then_deleted",
    "test_secondary_holds_what_its_selective_sync_selects",
    "test_flag_off_creates_no_registry_and_syncs_nothing",
    "test_resource_missing_on_primary_is_recorded",
]
#: What must pass for each type; the kit skips nothing.
BLOB_PASSED = {*SHARED, "test_rewritten_blob_is_synced_again_or_refused_when_immutable"}
REPOSITORY_PASSED = {*SHARED, "test_push_then_handle_after_update_is_mirrored"}
REGISTRY_PASSED = {
    "test_a_created_record_gets_a_pending_row",
    "test_only_its_own_claim_settles_a_sync",
    "test_a_failure_counts_its_retry_and_loses_to_a_newer_change",
    "test_resync_moves_a_settled_row_back_and_delete_removes_it",
    "test_a_verification_claim_succeeds_only_as_itself",
    "test_a_verification_failure_counts_its_retry",
}
#: The line of the guide's blob replicator that says where an attachment's file is.
BLOB_PATH_LINE = "        return str(self.model_record.stored_as)\n"


def example_files() -> dict[str, str]:
    """The guide's example: file path -> content, in the order the guide shows them."""
    files = {m["path"]: f"# {m['path']}\n{m['body']}" for m in BLOCK.finditer(GUIDE.read_text())}
    assert files, f"{GUIDE.name} has no example blocks"
    return files


def write_application(root: Path, files: dict[str, str]) -> None:
    """The example as a directory of its own, with a pytest configuration of its own."""
    for relative, text in files.items():
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    # Makes `root` pytest's rootdir: no configuration or conftest of this repository applies.
    (root / "pytest.ini").write_text("[pytest]\naddopts = --strict-markers\n")


@dataclass
class Run:
    """One pytest run of the throwaway application."""

    returncode: int
    output: str
    #: Test name (class::function) -> "passed", "failed", "error" or "skipped".
    outcomes: dict[str, str]

    def names(self, cls: str, outcome: str) -> set[str]:
        """The tests of class `cls` with `outcome`."""
        prefix = f"{cls}::"
        return {
            name.removeprefix(prefix)
            for name, found in self.outcomes.items()
            if name.startswith(prefix) and found == outcome
        }

    def summary(self) -> dict[str, int]:
        """The counts of pytest's last line ("10 passed, 2 skipped in 9.1s")."""
        last = self.output.strip().splitlines()[-1]
        return {word: int(count) for count, word in re.findall(r"(\d+) (\w+)", last)}


def run_pytest(root: Path, *args: str) -> Run:
    """`python -m pytest` in `root`, seeing only `root` and the installed packages."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("GEOSYNC_", "PYTEST_", "PYTHON"))
    }
    env["PYTHONPATH"] = str(root)
    report = root / "report.xml"
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA"]
    result = subprocess.run(
        [*command, f"--junitxml={report}", *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    outcomes: dict[str, str] = {}
    if report.exists():
        for case in ET.parse(report).getroot().iter("testcase"):
            name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
            found = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
            outcomes[name] = found[0] if found else "passed"
    return Run(result.returncode, result.stdout + result.stderr, outcomes)


def test_the_example_imports_only_public_geosync_names() -> None:
    public = {"geosync": set(geosync.__all__), "geosync.testing": set(geosync.testing.__all__)}
    seen = set()
    for path, text in example_files().items():
        for node in ast.walk(ast.parse(text, path)):
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("geosync.") for a in node.names), path
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("geosync"):
                assert node.module in public, f"{path} imports from {node.module}"
                names = {alias.name for alias in node.names}
                assert names <= public[node.module], f"{path}: {names - public[node.module]}"
                seen.add(node.module)
            if isinstance(node, ast.ImportFrom):
                assert (node.module or "").split(".")[0] != "tests", path
    assert seen == set(public)


def test_the_guides_example_passes_the_contract_kit(tmp_path: Path) -> None:
    files = example_files()
    assert {"myapp/models.py", "myapp/replicators.py", TEST_MODULE} <= set(files)
    write_application(tmp_path, files)

    run = run_pytest(tmp_path, TEST_MODULE)

    assert run.returncode == 0, run.output
    counts = run.summary()
    assert counts.get("failed", 0) == 0 and counts.get("error", 0) == 0, run.output
    expected = len(BLOB_PASSED) + len(REPOSITORY_PASSED) + len(REGISTRY_PASSED)
    assert counts["passed"] == expected, run.output
    assert run.names("TestAttachmentReplicator", "passed") == BLOB_PASSED
    assert run.names("TestAttachmentReplicator", "skipped") == set()
    assert run.names("TestWikiReplicator", "passed") == REPOSITORY_PASSED
    assert run.names("TestWikiReplicator", "skipped") == set()
    assert run.names("TestWikiRegistry", "passed") == REGISTRY_PASSED


def test_a_replicator_pointing_at_the_wrong_file_fails_the_kit(tmp_path: Path) -> None:
    files = example_files()
    replicators = files["myapp/replicators.py"]
    assert replicators.count(BLOB_PATH_LINE) == 1
    files["myapp/replicators.py"] = replicators.replace(
        BLOB_PATH_LINE, BLOB_PATH_LINE.replace("return ", 'return "misplaced/" + ')
    )
    write_application(tmp_path, files)

    run = run_pytest(tmp_path, f"{TEST_MODULE}::TestAttachmentReplicator")

    assert run.returncode == 1, run.output
    assert run.names("TestAttachmentReplicator", "failure") == BLOB_PASSED, run.output
    assert run.summary().get("passed", 0) == 0, run.output
    assert "where AttachmentReplicator says its resource is" in run.output
    assert "misplaced" in run.output
