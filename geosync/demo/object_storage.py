"""`geosync demo --object-storage`: the demo's blobs in an S3-compatible server on loopback.

The demo process starts moto's S3 server (`moto[server]`) on 127.0.0.1 and a free port, for as
long as it runs, and gives each site a bucket of its own: the primary's uploads and packages
under `s3://geosync-demo-primary/…`, the secondary's copies under `s3://geosync-demo-secondary/…`.
moto's server keeps its objects in the demo process's memory: they go when the demo ends.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

#: What moto accepts; any non-empty pair works against it.
ACCESS_KEY = "geosync-demo-key"
SECRET_KEY = "geosync-demo-secret"
REGION = "us-east-1"
#: The demo's blob storages, each a prefix in the site's bucket.
STORAGES = ("uploads", "packages")


def object_storage_missing() -> str | None:
    """Why the demo cannot run with object storage here (one line), or None."""
    missing = []
    try:
        import s3fs  # noqa: F401
    except ImportError:
        missing.append("geosync[s3]")
    try:
        import boto3  # noqa: F401
        from moto.server import ThreadedMotoServer  # noqa: F401
    except ImportError:
        missing.append("moto[server]")
    if not missing:
        return None
    quoted = " ".join(f"'{name}'" for name in missing)
    return f"it needs {' and '.join(missing)}: pip install {quoted}"


@dataclass(frozen=True)
class DemoBuckets:
    """The running S3 server's URL, and each site's blob storages in it."""

    endpoint: str

    def bucket(self, site: str) -> str:
        """The bucket of site `site`."""
        return f"geosync-demo-{site}"

    def storages(self, site: str) -> dict[str, dict[str, Any]]:
        """The `blob_storages` entries of site `site`: one prefix per storage in its bucket."""
        return {
            name: {
                "url": f"s3://{self.bucket(site)}/{name}",
                "endpoint_url": self.endpoint,
                "region": REGION,
                "access_key_id": ACCESS_KEY,
                "secret_access_key": SECRET_KEY,
            }
            for name in STORAGES
        }


@contextmanager
def demo_buckets(sites: tuple[str, ...] = ("primary", "secondary")) -> Iterator[DemoBuckets]:
    """moto's S3 server on loopback with a bucket per site, for the block."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        buckets = DemoBuckets(f"http://{host}:{port}")
        client = boto3.client(
            "s3",
            endpoint_url=buckets.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
        )
        for site in sites:
            client.create_bucket(Bucket=buckets.bucket(site))
        yield buckets
    finally:
        server.stop()
