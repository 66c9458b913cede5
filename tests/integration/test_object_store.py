"""The object store against a real moto S3 server on loopback: atomic writes, one-line errors."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from geosync.errors import ChecksumMismatch, StorageError
from geosync.secondary.sync import error_class
from geosync.settings import ObjectStorage
from geosync.storage.object_store import ObjectStore
from geosync.testing.object_storage import ACCESS_KEY, REGION, SECRET_KEY, moto_endpoint, new_bucket

PART = 5 * 1024 * 1024


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with moto_endpoint() as url:
        yield url


def test_a_blob_is_visible_only_whole_and_matching(s3_endpoint: str) -> None:
    store = ObjectStore(new_bucket(s3_endpoint), part_size=PART)
    data = os.urandom(2 * PART + 100)
    pieces = [data[i : i + (1 << 20)] for i in range(0, len(data), 1 << 20)]
    with pytest.raises(ChecksumMismatch):
        store.write("a/big.bin", pieces, expected_sha256="0" * 64)
    assert not store.exists("a/big.bin")
    written = store.write("a/big.bin", pieces, expected_sha256=hashlib.sha256(data).hexdigest())
    assert written.bytes == len(data) and store.sha256("a/big.bin") == written.sha256
    assert store.list_page("a/").keys == ["a/big.bin"]
    assert store.remove("a/big.bin") and not store.remove("a/big.bin")


def test_a_writer_killed_mid_upload_leaves_no_object(s3_endpoint: str) -> None:
    config = new_bucket(s3_endpoint)
    writer = textwrap.dedent(f"""
        import os, time
        from geosync.settings import ObjectStorage
        from geosync.storage.object_store import ObjectStore
        from geosync.testing.object_storage import ACCESS_KEY, REGION, SECRET_KEY
        config = ObjectStorage(url={config.url!r}, endpoint_url={s3_endpoint!r}, region=REGION,
                               access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY)
        def chunks():
            for _ in range(3):
                yield os.urandom({PART})
            print("parts sent", flush=True)
            time.sleep(60)
            yield b"never"
        ObjectStore(config, part_size={PART}).write("killed.bin", chunks())
    """)
    child = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "parts sent"
    finally:
        child.kill()
        child.wait(10)
    store = ObjectStore(config)
    assert not store.exists("killed.bin")
    assert store.list_page().keys == []


def test_wrong_credentials_are_one_clear_line() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}  # moto then checks every key
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        config = new_bucket_unchecked(f"http://127.0.0.1:{port}")
        with pytest.raises(StorageError) as raised:
            ObjectStore(config).exists("anything")
        message = raised.value.message
        assert "\n" not in message and "refused access" in message
        assert "geosync-test-secret" not in message
        assert raised.value.permanent  # retrying cannot help until the credentials are fixed
        assert error_class(raised.value) == "permanent"
    finally:
        server.kill()
        server.wait(10)


def test_a_store_out_of_reach_is_a_transient_failure() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    store = ObjectStore(new_bucket_unchecked(f"http://127.0.0.1:{port}"))

    with pytest.raises(StorageError) as raised:
        store.exists("anything")

    assert "\n" not in raised.value.message and "failed" in raised.value.message
    assert not raised.value.permanent
    assert error_class(raised.value) == "transient"


def new_bucket_unchecked(endpoint: str) -> ObjectStorage:
    """An `ObjectStorage` naming a bucket on a server that refuses every key."""
    return ObjectStorage(
        url="s3://geosync-refused/blobs",
        endpoint_url=endpoint,
        region=REGION,
        access_key_id=SecretStr(ACCESS_KEY),
        secret_access_key=SecretStr(SECRET_KEY),
    )
