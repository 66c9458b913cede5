"""A real S3-compatible server on loopback for tests (moto's server mode), and buckets in it.

Tests that need it call `moto_endpoint()`: it skips when moto is not installed, except under
CI (`CI=true`), where a missing moto is a failure: object storage is never left untested there.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from geosync.settings import ObjectStorage

#: What moto accepts; any non-empty pair works against it.
ACCESS_KEY = "geosync-test-key"
SECRET_KEY = "geosync-test-secret"
REGION = "us-east-1"


@contextmanager
def moto_endpoint() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 and a free port, for the block; yields its URL."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("moto[server] is not installed: object storage tests must run in CI")
        pytest.skip("moto[server] is not installed (pip install 'geosync[test]')")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def new_bucket(endpoint: str, **options: Any) -> ObjectStorage:
    """A fresh bucket on `endpoint` and an `ObjectStorage` for a prefix in it."""
    import boto3

    name = f"geosync-{secrets.token_hex(6)}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name=REGION,
    )
    client.create_bucket(Bucket=name)
    return ObjectStorage.model_validate(
        {
            "url": f"s3://{name}/blobs",
            "endpoint_url": endpoint,
            "region": REGION,
            "access_key_id": ACCESS_KEY,
            "secret_access_key": SECRET_KEY,
            **options,
        }
    )
