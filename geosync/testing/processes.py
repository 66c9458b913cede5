"""Sites as real processes (`geosync serve` and `geosync worker`) for end-to-end tests."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from geosync.nodes import NodeStore
from geosync.settings import Settings
from geosync.testing.servers import free_port
from geosync.testing.sites import SitePair


@dataclass
class SiteProcesses:
    """One site's config file and its child processes, by role name."""

    name: str
    config: Path
    port: int
    logs: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """The site's base URL."""
        return f"http://127.0.0.1:{self.port}/"

    def start(self, role: str, *extra: str) -> subprocess.Popen[bytes]:
        """Start `geosync serve` (role "serve") or `geosync worker` (role "worker", "worker2")."""
        command = "serve" if role == "serve" else "worker"
        args = ["--port", str(self.port)] if command == "serve" else []
        log = (self.logs / f"{self.name}-{role}.log").open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "geosync", "--config", str(self.config), command, *args, *extra],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self.processes[role] = process
        if command == "serve":
            self._wait_listening(process)
        return process

    def _wait_listening(self, process: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{self.name} serve exited with {process.returncode}")
            try:
                httpx.get(self.url + "api/v4/openapi.json", timeout=1)
                return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.name} serve did not start listening")

    def stop(self, role: str, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Signal one process and wait for it; returns its exit code."""
        process = self.processes.pop(role)
        if process.poll() is None:
            process.send_signal(sig)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()

    def stop_all(self) -> None:
        """Stop every process of the site."""
        for role in list(self.processes):
            self.stop(role)


def site_processes(
    pair: SitePair, root: Path, replicators: str
) -> tuple[SiteProcesses, SiteProcesses]:
    """Write config files for both sites of `pair` and point the primary's node at its port."""
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    sites = []
    for name, geo in (("primary", pair.primary), ("secondary", pair.secondary)):
        port = free_port()
        settings: Settings = geo.settings.model_copy(
            update={"replicators": replicators, "internal_url": f"http://127.0.0.1:{port}/"}
        )
        config = root / f"{name}.toml"
        config.write_text(settings.to_toml(), encoding="utf-8")
        sites.append(SiteProcesses(name, config, port, logs))
    with pair.primary.main() as conn:
        store = NodeStore(pair.primary, conn)
        store.update(pair.primary_node.id, url=sites[0].url)
        store.update(pair.secondary_node.id, url=sites[1].url)
    return sites[0], sites[1]
