"""Sample content for the demo: blobs of mixed sizes and git repositories with real commits.

Everything is written through the application's own path — blobs through their replicator's
store (a directory or a bucket) and rows through an ORM session — so events and verification
work exactly as in a real application.
"""

from __future__ import annotations

import os
import random
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from geosync.app import Geo
from geosync.demo.models import PackageFile, Snippet, Upload
from geosync.demo.replicators import PackageFileReplicator, SnippetReplicator, UploadReplicator
from geosync.git import init_bare

NAMESPACES = (1, 2, 3, 4)
#: (weight, size range in bytes): mostly small files, some medium, a few large.
SIZE_MIX = ((80, (0, 64 * 1024)), (17, (64 * 1024, 1024 * 1024)), (3, (1024 * 1024, 8 * 1024**2)))


def random_size(rng: random.Random) -> int:
    """A blob size drawn from the demo's mix."""
    weights = [w for w, _ in SIZE_MIX]
    low, high = rng.choices([r for _, r in SIZE_MIX], weights)[0]
    return rng.randint(low, high)


def write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@dataclass
class Seeder:
    """Creates, updates and deletes the demo's replicables on the primary."""

    geo: Geo
    rng: random.Random

    def create_blob(self) -> tuple[str, int]:
        """One new Upload or PackageFile with random content; returns (replicable, id)."""
        data = self.rng.randbytes(random_size(self.rng))
        namespace = self.rng.choice(NAMESPACES)
        with self.geo.session() as session:
            if self.rng.random() < 0.5:
                name = f"{namespace}/{self.rng.getrandbits(64):016x}.bin"
                upload = Upload(path=name, namespace_id=namespace, size=len(data))
                UploadReplicator(upload, geo=self.geo).store_blob([data])
                session.add(upload)
                session.commit()
                return "upload", upload.id
            package = PackageFile(file_name="package.tgz", namespace_id=namespace, size=len(data))
            session.add(package)
            session.flush()
            PackageFileReplicator(package, geo=self.geo).store_blob([data])
            session.commit()
            return "package_file", package.id

    def update_package(self) -> int | None:
        """Rewrite a random package file (mutable blob) and publish `updated`."""
        with self.geo.session() as session:
            package = self._random(session, PackageFile)
            if package is None:
                return None
            data = self.rng.randbytes(random_size(self.rng))
            PackageFileReplicator(package, geo=self.geo).store_blob([data])
            package.size = len(data)
            package.replicator.handle_after_update()
            session.commit()
            return int(package.id)

    def delete_blob(self) -> int | None:
        """Delete a random upload: its row (publishing `deleted`), then its file."""
        with self.geo.session() as session:
            upload = self._random(session, Upload)
            if upload is None:
                return None
            bound = UploadReplicator(upload, geo=self.geo)
            session.delete(upload)
            session.commit()
        bound.blob_store().remove(bound.blob_path())
        return int(upload.id)

    def create_repository(self, commits: int = 3) -> int:
        """A new Snippet whose bare repository has `commits` real commits."""
        with self.geo.session() as session:
            snippet = Snippet(title="demo snippet", namespace_id=self.rng.choice(NAMESPACES))
            session.add(snippet)
            session.flush()
            repo = SnippetReplicator(snippet).repository_dir()
            init_bare(repo)
            add_commits(repo, "main", commits, self.rng)
            session.commit()
            return int(snippet.id)

    def push_to_repository(self) -> int | None:
        """New commits on a random snippet, sometimes on a new branch; publishes `updated`."""
        with self.geo.session() as session:
            snippet = self._random(session, Snippet)
            if snippet is None:
                return None
            branch = "main" if self.rng.random() < 0.7 else f"topic-{self.rng.getrandbits(24):06x}"
            repo = snippet.replicator.repository_dir()
            add_commits(repo, branch, self.rng.randint(1, 3), self.rng)
            snippet.replicator.handle_after_update()
            session.commit()
            return int(snippet.id)

    def delete_repository(self) -> int | None:
        """Delete a random snippet and its repository."""
        import shutil

        with self.geo.session() as session:
            snippet = self._random(session, Snippet)
            if snippet is None:
                return None
            repo = snippet.replicator.repository_dir()
            session.delete(snippet)
            session.commit()
        shutil.rmtree(repo, ignore_errors=True)
        return int(snippet.id)

    def _random(self, session: Session, model: type[Any]) -> Any:
        count = session.scalar(select(func.count()).select_from(model)) or 0
        if not count:
            return None
        return session.scalars(select(model).offset(self.rng.randrange(count)).limit(1)).first()


def add_commits(repo: Path, branch: str, count: int, rng: random.Random) -> None:
    """Append `count` commits to `branch` of the bare `repo` with `git fast-import`."""
    ref = f"refs/heads/{branch}"
    exists = (
        subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", ref],
            capture_output=True,
            check=False,
        ).returncode
        == 0
    )
    parent = ref if exists else None
    if parent is None and branch != "main":
        main_exists = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", "refs/heads/main"],
            capture_output=True,
            check=False,
        )
        parent = "refs/heads/main" if main_exists.returncode == 0 else None
    stream = bytearray()
    for n in range(count):
        content = f"line {rng.getrandbits(64):x}\n".encode() * rng.randint(1, 20)
        message = f"demo commit {n + 1}\n".encode()
        stream += f"commit {ref}\n".encode()
        stream += b"committer geosync demo <demo@example.invalid> 1700000000 +0000\n"
        stream += b"data %d\n" % len(message) + message
        if n == 0 and parent is not None:
            stream += f"from {parent}^0\n".encode()
        path = f"file-{rng.randint(1, 5)}.txt"
        stream += f"M 100644 inline {path}\n".encode() + b"data %d\n" % len(content) + content
    subprocess.run(
        ["git", "-C", str(repo), "fast-import", "--quiet"],
        input=bytes(stream),
        check=True,
        capture_output=True,
    )
