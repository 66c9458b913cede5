"""The guides' commands, run as written: the quickstart and the operations walkthrough.

Each guide's runnable blocks (see `tests.docblocks`) become one bash script, run in a fresh
directory with this environment's `geosync` first on PATH, on free loopback ports. The add-a-data-
type guide's example is run by `test_external_app_contracts.py`, which builds its package.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from geosync.testing.servers import free_port
from tests.docblocks import Block, blocks, failed_block, script

ROOT = Path(__file__).resolve().parents[2]
OPERATIONS = ROOT / "docs" / "operations.md"
README = ROOT / "README.md"
WALKTHROUGH = "Two sites on one machine"
#: The quickstart's `make test` is what CI itself runs; a test running it would run itself.
NOT_RUN_HERE = ("make test",)

pytestmark = pytest.mark.slow


def run_script(text: str, cwd: Path, env: dict[str, str], timeout: float) -> None:
    """Run `text` with bash in `cwd`; on failure show the block that failed and its output."""
    process = subprocess.Popen(
        ["bash", "-c", text],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        pytest.fail(f"the guide did not finish in {timeout:.0f} s at {failed_block(err)}\n{err}")
    finally:
        try:  # whatever a failed script left running in the background
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if process.returncode != 0:
        pytest.fail(
            f"{failed_block(err)} failed with exit code {process.returncode}\n"
            f"--- stdout\n{out[-4000:]}\n--- stderr\n{err[-6000:]}"
        )


def guide_env(**extra: str) -> dict[str, str]:
    """The environment a reader has: this virtualenv's tools first on PATH, no GEOSYNC_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEOSYNC_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def test_every_runnable_block_of_the_walkthrough_is_run() -> None:
    found = blocks(OPERATIONS, WALKTHROUGH)
    assert [b for b in found if b.language == "sh"], "the walkthrough shows no commands"
    shown = {b.language for b in found if not b.runs}
    assert shown <= {"text", "json", "console"}, f"blocks neither run nor output: {shown}"


def test_operations_walkthrough_runs_as_written(tmp_path: Path) -> None:
    env = guide_env(PRIMARY_PORT=str(free_port()), SECONDARY_PORT=str(free_port()))
    found = blocks(OPERATIONS, WALKTHROUGH)
    run_script(script(OPERATIONS, found), tmp_path, env, timeout=240)
    logs = tmp_path / "logs"
    for name in ("primary-serve", "primary-worker", "secondary-serve", "secondary-worker"):
        text = (logs / f"{name}.log").read_text(encoding="utf-8")
        assert "Traceback" not in text, f"{name}: {text[-3000:]}"
    assert (tmp_path / "secondary" / "uploads" / "1" / "hello.txt").read_text() == (
        "hello from the primary\n"
    )


def quickstart_commands() -> list[Block]:
    """The quickstart's runnable blocks, with the lines CI runs itself left out."""
    kept = []
    for block in blocks(README, "Quickstart"):
        lines = [
            line
            for line in block.text.splitlines(keepends=True)
            if not line.strip().startswith(NOT_RUN_HERE)
        ]
        kept.append(Block(block.language, "".join(lines), block.line, block.file))
    return kept


def test_quickstart_runs_as_written(tmp_path: Path) -> None:
    found = quickstart_commands()
    assert any("make demo" in b.text for b in found if b.runs)
    # The same `make demo`, on less data: the demo's own e2e test covers its full size.
    env = guide_env(
        DEMO_ARGS="--blobs 20 --repos 2 --exit-when-synced --timeout 180",
        MAKEFLAGS="",
    )
    run_script(f"cd {ROOT}\n" + script(README, found), tmp_path, env, timeout=300)
